"""A primal-dual interior-point method for cone programs, in pure JAX: the backend.

The method works on the homogeneous self-dual embedding of the program
(`ipm_problem.py`) from CVXOPT's starting point (`ipm_init.py`), with Mehrotra
predictor-corrector steps and Nesterov-Todd scaling (`ipm_step.py`, driven by the
protocol solver of `ipm_solver.py`), and ends with a few centring steps
(`ipm_centre.py`). Both loops are `unimplicit._iterate.iterate`: under `jax.vmap`
each sample stops on its own and reports its own `RESULTS` member.
"""

import functools as ft
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from .. import _precision
from .._adjoint import UnrolledAdjoint
from .._backend import AbstractBackend, BackendOutput, register_backend
from .._condition import AbstractCondition
from .._iterate import iterate
from .._solution import RESULTS
from .cone_program import AbstractConeCondition
from .cones import Cones
from .data import ConeData, PrimalDual
from .ipm_centre import finish
from .ipm_init import initial_point
from .ipm_problem import inf_norm, Problem
from .ipm_solver import MehrotraSolver


class InteriorPoint(AbstractBackend):
    """A primal-dual interior-point method for cone programs, in pure JAX.

    Solves [`unimplicit.ConeProgram`][] conditions (zero, nonnegative and
    second-order cones, and any registered kind of cone) through their homogeneous
    self-dual embedding, with
    Mehrotra predictor-corrector steps and Nesterov-Todd scaling. Linear algebra is
    dense: one Cholesky factorisation of an `n x n` matrix per step (and one of
    `p x p` with `p` equality rows). Infeasible and unbounded programs
    stop with `RESULTS.primal_infeasible` / `RESULTS.dual_infeasible`; the value is
    then a (scaled) certificate: `y` for primal, `x` for dual infeasibility. When
    rounding errors stop progress short of `tol` (float32 with a tight `tol`), the
    result is `RESULTS.stalled` and the value the last iterate before the stall;
    running out of steps is `RESULTS.nonlinear_max_steps_reached`, as for every
    backend. Unknown `options` are refused (it takes none).

    Under `jax.vmap` all samples step in lock-step until each has stopped, and each
    reports its own result. A warm start `y0` is ignored (interior-point methods
    gain little from one).

    **Arguments:**

    - `tol`: relative tolerance on the primal and dual residuals and on the duality
        gap. `None`: `1e-8` in float64, `1e-4` in float32. A Python float or an
        array (a new value, traced under `jax.jit`, does not recompile; likewise
        for `infeasibility_tol` and `regularisation`).
    - `infeasibility_tol`: tolerance of the infeasibility certificates. `None`: as
        `tol`.
    - `max_steps`: the most interior-point steps (`unimplicit.solve`'s `max_steps`
        caps it further). Typical programs need 8 to 25.
    - `regularisation`: the constant diagonal regularisation of the reduced KKT
        matrix (machine precision times the pivots is added to it). `None`:
        `eps^(2/3)` of the dtype.
    - `refinement`: rounds of iterative refinement of each KKT solve. `None`: 0 in
        float64; in float32, 0 with only zero and nonnegative cones, else 2 (where
        the solves are otherwise too inaccurate to reach the default tolerance
        reliably). In float32, 1 adds margin for tolerances below the default.
    """

    # (Not static: a new tolerance, a `jnp.array` under `jax.jit` say, does not
    # recompile.)
    tol: float | Array | None = None
    infeasibility_tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=50)
    regularisation: float | Array | None = None
    refinement: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        for name in ("tol", "infeasibility_tol", "regularisation"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                positive = bool(np.all(np.asarray(value) > 0))
            except jax.errors.TracerArrayConversionError:
                continue  # (traced: only known at run time)
            if not positive:
                raise ValueError(f"InteriorPoint: `{name}` must be > 0, got {value}.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise TypeError("InteriorPoint: `max_steps` must be an int.")
        if self.max_steps < 1:
            raise ValueError("InteriorPoint: `max_steps` must be >= 1.")
        r = self.refinement
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
            raise ValueError(
                f"InteriorPoint: `refinement` must be an int >= 0 or None, got {r!r}."
            )

    def supports(self, condition: AbstractCondition) -> bool:
        return isinstance(condition, AbstractConeCondition)

    def option_names(self) -> frozenset[str]:
        return frozenset()

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
        del y0, options
        assert isinstance(condition, AbstractConeCondition)
        program = condition.cone_program()
        pb = self._problem(program.cones, condition.cone_data(args))
        max_steps = min(self.max_steps, max_steps)
        differentiable = adjoint is not None
        out = iterate(
            MehrotraSolver(),
            None,
            initial_point(pb),
            pb,
            max_steps=max_steps,
            differentiable=differentiable,
            checkpoints=(
                adjoint.checkpoints if isinstance(adjoint, UnrolledAdjoint) else None
            ),
            check_finite=False,
        )
        it, solved = out.value, out.result == RESULTS.successful
        # A solution is (x, y, s) / tau; a certificate is scaled to tau + kappa = 1.
        norm = jnp.where(solved, it.tau, it.tau + it.kappa)
        it = jtu.tree_map(lambda u: u / norm, it)
        it = finish(pb, it, solved, program.smoothing, max_steps, differentiable)
        stats = {"num_steps": out.num_steps, "max_steps": jnp.array(max_steps)}
        return BackendOutput(PrimalDual(it.x, it.y, it.s), out.result, stats)

    def _problem(self, cones: Cones, data: ConeData) -> Problem:
        dtype = data.q.dtype
        default_tol, default_refinement = _precision.interior_point_defaults(
            dtype, cones.diagonal()
        )
        tol = default_tol if self.tol is None else self.tol
        itol = tol if self.infeasibility_tol is None else self.infeasibility_tol
        reg = self.regularisation
        reg = _precision.eps(dtype) ** (2 / 3) if reg is None else reg
        refinement = self.refinement
        # (In the data's dtype, as a Python float would be converted.)
        as_dtype = ft.partial(jnp.asarray, dtype=dtype)
        return Problem(
            P=(data.P + data.P.T) / 2,
            q=data.q,
            A=data.A,
            b=data.b,
            cones=cones,
            tol=as_dtype(tol),
            inf_tol=as_dtype(itol),
            reg=as_dtype(reg),
            stall_tol=as_dtype(tol**0.5),
            refinement=default_refinement if refinement is None else refinement,
            nb=inf_norm(data.b),
            nq=inf_norm(data.q),
        )


register_backend("unimplicit.InteriorPoint (cone programs)", lambda: InteriorPoint())
