from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from .._adjoint import UnrolledAdjoint
from .._backend import AbstractBackend, BackendOutput, register_backend
from .._condition import AbstractCondition, AbstractEquilibrium
from .._misc import tree_allfinite
from .._solution import RESULTS
from .flow import AbstractFlow, DiffraxAdjoint
from .results import from_diffrax
from .steady_state import integrate_to_steady_state


def _diffrax_adjoint(adjoint: Any) -> diffrax.AbstractAdjoint:
    # What Diffrax differentiates with: the carried adjoint of a `DiffraxAdjoint`,
    # checkpointing with the given count for an `UnrolledAdjoint`, and the default
    # when the integration is not differentiated at all (inside the implicit rule).
    if isinstance(adjoint, DiffraxAdjoint):
        return adjoint.adjoint
    if isinstance(adjoint, UnrolledAdjoint):
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=adjoint.checkpoints)
    return diffrax.RecursiveCheckpointAdjoint()


class Diffrax(AbstractBackend):
    """Solve ODEs, SDEs and steady states with a Diffrax solver.

    For [`unimplicit.ODE`][] and [`unimplicit.SDE`][] conditions this is one
    `diffrax.diffeqsolve` call, differentiated by the adjoint given to
    [`unimplicit.solve`][]: [`unimplicit.DiffraxAdjoint`][] (by default, carrying
    `diffrax.RecursiveCheckpointAdjoint()`), or `UnrolledAdjoint(checkpoints)`.

    It also solves every equilibrium condition: [`unimplicit.FixedPoint`][]
    conditions by integrating `dy/dt = fn(y, args) - y`, [`unimplicit.Root`][]
    conditions by integrating `dy/dt = fn(y, args)`, and any other by integrating
    its residual, from `y0` until Diffrax's steady-state event
    fires (`‖dy/dt‖ < atol + rtol ‖y‖`). This finds stable steady states only: for a
    `Root`, `fn` must be a stable flow near the root (its Jacobian's eigenvalues in
    the left half-plane). The answer is differentiated like any equilibrium, by
    [`unimplicit.ImplicitAdjoint`][] by default.

    On tolerances for steady states: the event bounds the residual `dy/dt`, not the
    distance to the steady state, which can be larger by up to the norm of the
    inverse Jacobian of the residual: a map that contracts slowly needs tolerances
    well below the accuracy wanted. The implicit gradient is taken at the point
    returned and is only as accurate as that point. In float64, `rtol = atol =
    1e-9` on the `PIDController` (and so on the event) gives values and gradients
    that agree with Newton's to 1e-5 on a small contractive cell; in float32,
    tolerances much below `1e-7` cannot be reached: the integration then runs to
    `max_steps` and reports it.

    **Arguments:**

    - `solver`: a Diffrax solver, e.g. `diffrax.Tsit5()`, or `diffrax.Euler()` for
        SDEs.
    - `dt0`: the magnitude of the initial step size (positive; its sign follows the
        direction of integration). `None` lets an adaptive controller choose it.
    - `stepsize_controller`: a Diffrax step-size controller.
    - `progress_meter`: a Diffrax progress meter, e.g.
        `diffrax.TqdmProgressMeter()`.
    - `steady_state_rtol`, `steady_state_atol`: the tolerances of the steady-state
        event (in the controller's norm); `None` uses those of an adaptive
        `stepsize_controller`.
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    dt0: float | None = None
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
        rtol=1e-3, atol=1e-6
    )
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter()
    steady_state_rtol: float | None = None
    steady_state_atol: float | None = None

    def __check_init__(self):
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise TypeError(
                "`solver` must be a Diffrax solver such as `diffrax.Tsit5()`, not "
                f"{type(self.solver).__name__}."
            )
        if self.dt0 is not None and not self.dt0 > 0:
            raise ValueError(
                f"`dt0` is a step size magnitude and must be positive, got {self.dt0}"
                "; integration backwards in time (t1 < t0) is handled automatically."
            )
        if self.dt0 is None and not isinstance(
            self.stepsize_controller, diffrax.AbstractAdaptiveStepSizeController
        ):
            raise ValueError(
                "A constant step size (a non-adaptive `stepsize_controller`) needs "
                "`dt0`; pass `Diffrax(solver, dt0=...)`."
            )

    def supports(self, condition: AbstractCondition) -> bool:
        return isinstance(condition, (AbstractFlow, AbstractEquilibrium))

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
        del options
        if isinstance(condition, AbstractEquilibrium):
            return integrate_to_steady_state(
                condition,
                y0,
                args,
                solver=self.solver,
                dt0=self.dt0,
                stepsize_controller=self.stepsize_controller,
                progress_meter=self.progress_meter,
                rtol=self.steady_state_rtol,
                atol=self.steady_state_atol,
                max_steps=max_steps,
                adjoint=_diffrax_adjoint(adjoint),
            )
        assert isinstance(condition, AbstractFlow)
        dt0 = self.dt0
        if dt0 is not None:
            dt0 = jnp.where(
                jnp.asarray(condition.t1) >= jnp.asarray(condition.t0), dt0, -dt0
            )
        sol = diffrax.diffeqsolve(
            condition.terms(y0),
            self.solver,
            condition.t0,
            condition.t1,
            dt0,
            y0,
            args,
            saveat=(
                diffrax.SaveAt(t1=True)
                if condition.saveat is None
                else condition.saveat
            ),
            stepsize_controller=self.stepsize_controller,
            adjoint=_diffrax_adjoint(adjoint),
            max_steps=max_steps,
            throw=False,
            progress_meter=self.progress_meter,
        )
        result = from_diffrax(sol.result)
        # A non-finite initial state makes every step fail its error estimate, so
        # Diffrax would report max_steps; name the actual cause instead.
        inputs_finite = tree_allfinite(eqx.filter((y0, args), eqx.is_inexact_array))
        result = RESULTS.where(
            inputs_finite,
            result,
            RESULTS.nonfinite,  # pyright: ignore[reportArgumentType]
        )
        result = RESULTS.where(
            (result == RESULTS.successful) & jnp.invert(tree_allfinite(sol.ys)),
            RESULTS.nonfinite,  # pyright: ignore[reportArgumentType]
            result,
        )
        stats = {
            "num_steps": sol.stats["num_steps"],
            "num_accepted_steps": sol.stats["num_accepted_steps"],
            "num_rejected_steps": sol.stats["num_rejected_steps"],
            "max_steps": jnp.asarray(max_steps),
        }
        ys = sol.ys
        if condition.saveat is None:
            ys = jtu.tree_map(lambda x: x[0], ys)
        return BackendOutput(ys, result, stats)


register_backend(
    "unimplicit.Diffrax (flows; equilibria as steady states)", lambda: Diffrax()
)
