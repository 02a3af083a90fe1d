from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import PyTree

from ._backend import AbstractBackend
from ._condition import AbstractCondition, FixedPoint, Root
from ._misc import tree_allfinite, tree_two_norm
from ._solution import RESULTS


_SOLVER_KINDS = (
    optx.AbstractFixedPointSolver,
    optx.AbstractRootFinder,
    optx.AbstractLeastSquaresSolver,
    optx.AbstractMinimiser,
)


def is_optimistix_solver(x: Any) -> bool:
    return isinstance(x, _SOLVER_KINDS)


def _problem_fn(solver, condition):
    # Present the condition in the form each kind of Optimistix solver expects: the
    # map itself for fixed-point solvers, the residual for root finders and
    # least-squares solvers, and half its squared norm for minimisers.
    if isinstance(solver, optx.AbstractFixedPointSolver):
        assert isinstance(condition, FixedPoint)
        return lambda y, args: (condition.fixed_point_map(y, args), None)
    if isinstance(solver, optx.AbstractMinimiser):

        def objective(y, args):
            r = condition.residual(y, args)
            return 0.5 * sum(jnp.sum(x**2) for x in jtu.tree_leaves(r)), None

        return objective
    return lambda y, args: (condition.residual(y, args), None)


class OptimistixBackend(AbstractBackend):
    """Runs any Optimistix solver on a `FixedPoint` or `Root` condition.

    [`unimplicit.solve`][] wraps Optimistix solvers in this automatically. The loop
    is our own (rather than `optimistix.fixed_point`/`root_find`) so that it can
    record per-sample residual statistics and, on request, a bounded residual trace
    (`options={"trace": k}`: the residual norm after each of the first `k` steps,
    at the price of one extra function evaluation per step).
    """

    solver: optx.AbstractIterativeSolver

    def supports(self, condition: AbstractCondition) -> bool:
        if isinstance(self.solver, optx.AbstractFixedPointSolver):
            return isinstance(condition, FixedPoint)
        return isinstance(condition, (FixedPoint, Root))

    def forward(
        self,
        condition: AbstractCondition,
        y0: PyTree,
        args: PyTree,
        *,
        max_steps: int,
        options: dict[str, Any],
        differentiable: bool,
    ) -> tuple[PyTree, RESULTS, dict[str, Any], Any]:
        assert isinstance(condition, (FixedPoint, Root))
        solver = self.solver
        options = dict(options)
        trace_len = int(options.pop("trace", 0))
        checkpoints = options.pop("checkpoints", None)
        tags = frozenset()
        fn = _problem_fn(solver, condition)
        f_struct, aux_struct = jax.eval_shape(fn, y0, args)
        state = solver.init(fn, y0, args, options, f_struct, aux_struct, tags)
        dynamic_state, static_state = eqx.partition(state, eqx.is_array)
        dtype = jnp.result_type(*jtu.tree_leaves(y0))

        def residual_norm(y):
            return tree_two_norm(condition.residual(y, args)).astype(dtype)

        trace = jnp.full((trace_len,), jnp.nan, dtype)
        if trace_len > 0:
            trace = trace.at[0].set(residual_norm(y0))

        def running(done, result):
            return jnp.invert(done) & (result == optx.RESULTS.successful)

        def cond_fun(carry):
            _, _, _, done, result, _ = carry
            if differentiable:
                return running(done, result)
            # Under `vmap`, a per-sample predicate makes the loop select between
            # old and new values of the *whole* carry (solver state included) at
            # every step. Instead, loop while any sample runs and freeze only the
            # small per-sample parts below; the solver's state keeps stepping on
            # finished samples, which is harmless as their `y` no longer changes.
            return eqxi.unvmap_any(running(done, result))

        def body_fun(carry):
            y, step, dynamic, done, result, trace = carry
            active = running(done, result)
            state = eqx.combine(static_state, dynamic)
            new_y, new_state, _ = solver.step(fn, y, args, options, state, tags)
            new_done, new_result = solver.terminate(
                fn, new_y, args, options, new_state, tags
            )
            new_result = optx.RESULTS.where(
                tree_allfinite(new_y), new_result, optx.RESULTS.nonfinite
            )
            new_trace = trace
            if trace_len > 0:
                new_trace = trace.at[step + 1].set(residual_norm(new_y), mode="drop")
            new_dynamic, _ = eqx.partition(new_state, eqx.is_array)
            if not differentiable:
                keep = lambda a, b: jnp.where(active, a, b)
                new_y = jtu.tree_map(keep, new_y, y)
                new_done = keep(new_done, done)
                new_result = optx.RESULTS.where(active, new_result, result)
                new_trace = keep(new_trace, trace)
            step = jnp.where(active, step + 1, step)
            return new_y, step, new_dynamic, new_done, new_result, new_trace

        # The loop speaks Optimistix's result type, which the solver's methods
        # expect; it is promoted to ours once the solver is done.
        init_result = optx.RESULTS.where(
            tree_allfinite((y0, args)),
            optx.RESULTS.successful,
            optx.RESULTS.nonfinite,
        )
        carry = (y0, jnp.array(0), dynamic_state, jnp.array(False), init_result, trace)
        if differentiable:
            final = eqxi.while_loop(
                cond_fun,
                body_fun,
                carry,
                max_steps=max_steps,
                kind="checkpointed",
                checkpoints=checkpoints,
            )
        else:
            final = eqxi.while_loop(
                cond_fun, body_fun, carry, max_steps=max_steps, kind="lax"
            )
        y, num_steps, dynamic, done, result, trace = final
        result = optx.RESULTS.where(
            (result == optx.RESULTS.successful) & jnp.invert(done),
            optx.RESULTS.nonlinear_max_steps_reached,
            result,
        )
        state = eqx.combine(static_state, dynamic)
        y, _, solver_stats = solver.postprocess(
            fn, y, None, args, options, state, tags, result
        )
        result = RESULTS.promote(result)
        # A solver that already evaluated the residual of the value it returns may
        # report its 2-norm, which saves one evaluation of the map per solve.
        rnorm = solver_stats.pop("residual_norm", None)
        if rnorm is None:
            rnorm = residual_norm(y)
        rnorm = jnp.asarray(rnorm, dtype)
        ynorm = tree_two_norm(y).astype(dtype)
        relative = rnorm / jnp.maximum(ynorm, jnp.finfo(dtype).tiny)
        if not isinstance(
            solver, (optx.AbstractFixedPointSolver, optx.AbstractRootFinder)
        ):
            # Least-squares solvers and minimisers stop at stationary points of the
            # residual norm, which need not be roots: check that this one is.
            ok = rnorm <= solver.atol + solver.rtol * ynorm
            result = RESULTS.where(
                (result == RESULTS.successful) & jnp.invert(ok),
                RESULTS.not_a_root,  # pyright: ignore[reportArgumentType]
                result,
            )
        result = RESULTS.where(
            tree_allfinite(y),
            result,
            RESULTS.nonfinite,  # pyright: ignore[reportArgumentType]
        )
        stats = {
            "num_steps": num_steps,
            "max_steps": jnp.asarray(max_steps),
            "residual_norm": rnorm,
            "relative_residual": relative,
            **solver_stats,
        }
        if trace_len > 0:
            stats["residual_trace"] = trace
        return y, result, stats, None
