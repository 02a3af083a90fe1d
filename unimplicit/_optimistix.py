import functools as ft
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import PyTree

from ._adjoint import UnrolledAdjoint
from ._backend import AbstractBackend, BackendOutput, register_backend
from ._condition import (
    AbstractCondition,
    AbstractEquilibrium,
    AbstractFixedPoint,
    residual_two_norm,
)
from ._iterate import iterate
from ._misc import tree_two_norm
from ._solution import RESULTS
from ._solver.anderson import Anderson
from ._solver.broyden import Broyden


_SOLVER_KINDS = (
    optx.AbstractFixedPointSolver,
    optx.AbstractRootFinder,
    optx.AbstractLeastSquaresSolver,
    optx.AbstractMinimiser,
)


def is_optimistix_solver(x: Any) -> bool:
    return isinstance(x, _SOLVER_KINDS)


def _problem_fn(solver, condition: AbstractEquilibrium):
    # Present the condition in the form each kind of Optimistix solver expects: a
    # map for fixed-point solvers (the condition's own map, or `y + F(y)` for an
    # equilibrium given by its residual), the residual for root finders and
    # least-squares solvers, and half its squared norm for minimisers.
    if isinstance(solver, optx.AbstractFixedPointSolver):
        if isinstance(condition, AbstractFixedPoint):
            return lambda y, args: (condition.fixed_point_map(y, args), None)

        def picard(y, args):
            r = condition.residual(y, args)
            return jtu.tree_map(jnp.add, y, r), None

        return picard
    if isinstance(solver, optx.AbstractMinimiser):

        def objective(y, args):
            r = condition.residual(y, args)
            return 0.5 * sum(jnp.sum(x**2) for x in jtu.tree_leaves(r)), None

        return objective
    return lambda y, args: (condition.residual(y, args), None)


class OptimistixBackend(AbstractBackend):
    """Runs any Optimistix solver on an equilibrium condition.

    [`unimplicit.solve`][] wraps Optimistix solvers in this automatically. Root
    finders and least-squares solvers work on the residual `F`, minimisers on
    `|F|^2 / 2`, fixed-point solvers on the condition's map (`y + F(y, args)` for an
    equilibrium given only by its residual). The loop is the library's own
    (rather than `optimistix.root_find`), so that every sample of a `jax.vmap`
    stops on its own and statistics are per sample; `options={"trace": k}`
    records the residual norm of `y0` and the first `k - 1` iterates, at the price
    of one extra evaluation per step.
    """

    solver: optx.AbstractIterativeSolver

    def supports(self, condition: AbstractCondition) -> bool:
        return isinstance(condition, AbstractEquilibrium)

    def option_names(self) -> frozenset[str]:
        return frozenset({"trace"})

    def forward(
        self,
        condition: AbstractCondition,
        y0: PyTree,
        args: PyTree,
        *,
        max_steps: int,
        options: dict[str, Any],
        adjoint: Any,
    ) -> BackendOutput:
        assert isinstance(condition, AbstractEquilibrium)
        solver = self.solver
        trace_len = int(options.get("trace", 0))
        residual_norm = ft.partial(residual_two_norm, condition, args=args)

        out = iterate(
            solver,
            _problem_fn(solver, condition),
            y0,
            args,
            max_steps=max_steps,
            differentiable=adjoint is not None,
            checkpoints=(
                adjoint.checkpoints if isinstance(adjoint, UnrolledAdjoint) else None
            ),
            trace_len=trace_len,
            trace_fn=residual_norm,
        )
        y, result, stats = out.value, out.result, out.stats
        # A solver that already evaluated the residual of the value it returns may
        # report its 2-norm, which saves one evaluation of the map per solve.
        rnorm = stats.pop("residual_norm", None)
        if not isinstance(
            solver, (optx.AbstractFixedPointSolver, optx.AbstractRootFinder)
        ):
            # Least-squares solvers and minimisers stop at stationary points of the
            # residual norm, which need not be roots: check that this one is.
            rnorm = residual_norm(y) if rnorm is None else rnorm
            ok = rnorm <= solver.atol + solver.rtol * tree_two_norm(y)
            result = RESULTS.where(
                (result == RESULTS.successful) & jnp.invert(ok),
                RESULTS.not_a_root,  # pyright: ignore[reportArgumentType]
                result,
            )
        stats = {
            "num_steps": out.num_steps,
            "max_steps": jnp.asarray(max_steps),
            **stats,
        }
        if out.trace is not None:
            stats["residual_trace"] = out.trace
        rnorm = None if rnorm is None else jax.lax.stop_gradient(rnorm)
        return BackendOutput(y, result, stats, None, rnorm)


register_backend(
    "unimplicit.Anderson (fixed-point solver)",
    lambda: OptimistixBackend(Anderson(1e-6, 1e-6)),
)
register_backend(
    "unimplicit.Broyden (root finder)", lambda: OptimistixBackend(Broyden(1e-6, 1e-6))
)
register_backend(
    "an Optimistix root finder (optimistix.Newton, optimistix.Chord)",
    lambda: OptimistixBackend(optx.Newton(1e-6, 1e-6)),
)
register_backend(
    "an Optimistix least-squares solver (optimistix.LevenbergMarquardt) or "
    "minimiser (optimistix.BFGS)",
    lambda: OptimistixBackend(optx.LevenbergMarquardt(1e-6, 1e-6)),
)
register_backend(
    "an Optimistix fixed-point solver (optimistix.FixedPointIteration)",
    lambda: OptimistixBackend(optx.FixedPointIteration(1e-6, 1e-6)),
)
