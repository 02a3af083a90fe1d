from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from .._backend import BackendOutput
from .._condition import AbstractEquilibrium
from .._misc import tree_allfinite
from .._solution import RESULTS
from .results import from_diffrax


class _ResidualField(eqx.Module):
    # dy/dt = F(y, args): for a FixedPoint F = fn(y) - y, for a Root F = fn(y). A
    # stable steady state of this flow is a zero of F.
    condition: AbstractEquilibrium

    def __call__(self, t, y, args):
        del t
        return self.condition.residual(y, args)


def integrate_to_steady_state(
    condition: AbstractEquilibrium,
    y0: PyTree,
    args: PyTree,
    *,
    solver: diffrax.AbstractSolver,
    dt0: Any,
    stepsize_controller: diffrax.AbstractStepSizeController,
    progress_meter: diffrax.AbstractProgressMeter,
    rtol: float | None,
    atol: float | None,
    max_steps: int,
    adjoint: diffrax.AbstractAdjoint,
) -> BackendOutput:
    """Integrate `dy/dt = F(y, args)` from `y0` until Diffrax's steady-state event.

    The integration is never differentiated through here when the implicit adjoint
    is used (the implicit function theorem differentiates the residual at the
    answer); with the unrolled adjoint, `adjoint` (Diffrax's checkpointed loop)
    differentiates it.
    """
    dtype = jnp.result_type(*jtu.tree_leaves(y0))
    event = diffrax.Event(diffrax.steady_state_event(rtol=rtol, atol=atol))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_ResidualField(condition)),
        solver,
        jnp.zeros((), dtype),
        jnp.asarray(jnp.inf, dtype),
        dt0,
        y0,
        args,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=progress_meter,
    )
    assert sol.ys is not None
    y = jtu.tree_map(lambda x: x[0], sol.ys)
    # Without an event the solve can only have stopped at max_steps (t1 is
    # infinite), which `from_diffrax` already reports.
    result = from_diffrax(sol.result)
    result = RESULTS.where(
        tree_allfinite(eqx.filter((y0, args), eqx.is_inexact_array))
        & tree_allfinite(y),
        result,
        RESULTS.nonfinite,  # pyright: ignore[reportArgumentType]
    )
    stats = {
        "num_steps": sol.stats["num_steps"],
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        "max_steps": jnp.asarray(max_steps),
        "time": jnp.asarray(sol.ts)[0],
    }
    return BackendOutput(y, result, stats)
