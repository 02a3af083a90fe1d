from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
from jaxtyping import Array, PyTree, Real

from .._adjoint import AbstractAdjoint
from .._flow.diffrax_backend import Diffrax
from .._flow.flow import as_saveat, DiffraxAdjoint, Time
from .._flow.ode import ODE
from .._solution import Solution
from .._solve import solve


class NeuralODE(eqx.Module):
    """A neural ODE: the solution at `t1` of `dy/dt = vector_field(t, y, args)`.

    Like `equinox.nn` layers it acts on one sample; `jax.vmap` it over a batch (or
    give it a batched state, so that the whole batch shares one adaptive step
    size, as torchdiffeq does).

    **Arguments:**

    - `vector_field`: an `eqx.Module` (or any callable) `vector_field(t, y, args)`.
    - `t0`, `t1`: the start and end times (`t1 < t0` integrates backwards).
    - `backend`: a [`unimplicit.Diffrax`][] backend; defaults to `Diffrax()`
        (Tsit5 with `PIDController(rtol=1e-3, atol=1e-6)`).
    - `adjoint`: how to differentiate; defaults to
        [`unimplicit.DiffraxAdjoint`][]`()` (Diffrax's checkpointed adjoint).
        `DiffraxAdjoint(diffrax.BacksolveAdjoint())` backsolves instead, and
        `UnrolledAdjoint(checkpoints)` sets the number of checkpoints.
    - `saveat`: `None` (return `y(t1)`, shaped like `y0`), an array of times
        (return `y` at each, stacked on a leading axis), or a `diffrax.SaveAt`.
    - `max_steps`: the bound on integrator steps.
    - `throw`: whether a failed solve raises (see [`unimplicit.solve`][]).
    """

    vector_field: Callable[[Any, PyTree, Any], PyTree]
    t0: Time
    t1: Time
    backend: Diffrax
    adjoint: AbstractAdjoint
    saveat: diffrax.SaveAt | None
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable[[Any, PyTree, Any], PyTree],
        t0: Time,
        t1: Time,
        backend: Diffrax | None = None,
        adjoint: AbstractAdjoint | None = None,
        saveat: diffrax.SaveAt | Real[Array, " times"] | None = None,
        max_steps: int = 4096,
        throw: bool = True,
    ):
        self.vector_field = vector_field
        self.t0 = t0
        self.t1 = t1
        self.backend = Diffrax() if backend is None else backend
        self.adjoint = DiffraxAdjoint() if adjoint is None else adjoint
        self.saveat = as_saveat(saveat)
        self.max_steps = max_steps
        self.throw = throw

    def solve(self, y0: PyTree[Array], args: PyTree = None) -> Solution:
        """Integrate from `y0` and return the whole [`unimplicit.Solution`][]."""
        return solve(
            ODE(self.vector_field, self.t0, self.t1, self.saveat),
            self.backend,
            args,
            y0=y0,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=self.throw,
        )

    def __call__(self, y0: PyTree[Array], args: PyTree = None) -> PyTree[Array]:
        """Return `y(t1)` (or `y` at the `saveat` times) for one sample `y0`."""
        return self.solve(y0, args).value
