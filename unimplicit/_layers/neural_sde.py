from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
from jaxtyping import Array, PyTree, Real

from .._adjoint import AbstractAdjoint
from .._flow.diffrax_backend import Diffrax
from .._flow.flow import as_saveat, DiffraxAdjoint, Time
from .._flow.sde import SDE
from .._solution import Solution
from .._solve import solve


class NeuralSDE(eqx.Module):
    """A neural SDE `dy = drift(t, y) dt + diffusion(t, y) dW`, in the Itô sense.

    Each call takes a `jax.random` key for the Brownian motion; under a fixed key
    the output is a deterministic, differentiable function of the parameters. Acts
    on one sample: `jax.vmap` it over a batch of initial states and keys.

    **Arguments:**

    - `drift`, `diffusion`: callables `(t, y, args)`; see [`unimplicit.SDE`][]
        for the shapes (diagonal noise by default).
    - `t0`, `t1`: the start and end times, `t0 < t1`.
    - `backend`: a [`unimplicit.Diffrax`][] backend with an SDE solver. Defaults
        to Euler-Maruyama with 100 constant steps over `[t0, t1]`.
    - `adjoint`: how to differentiate; defaults to
        [`unimplicit.DiffraxAdjoint`][]`()` (Diffrax's checkpointed adjoint).
        `DiffraxAdjoint(diffrax.BacksolveAdjoint())` backsolves instead, and
        `UnrolledAdjoint(checkpoints)` sets the number of checkpoints.
    - `saveat`: `None` (return `y(t1)`), an array of times, or a `diffrax.SaveAt`.
    - `noise_shape`, `brownian_tol`: as for [`unimplicit.SDE`][].
    - `max_steps`: the bound on integrator steps.
    - `throw`: whether a failed solve raises (see [`unimplicit.solve`][]).
    """

    drift: Callable[[Any, PyTree, Any], PyTree]
    diffusion: Callable[[Any, PyTree, Any], Any]
    t0: Time
    t1: Time
    backend: Diffrax
    adjoint: AbstractAdjoint
    saveat: diffrax.SaveAt | None
    noise_shape: tuple[int, ...] | None = eqx.field(static=True)
    brownian_tol: float | None
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        drift: Callable[[Any, PyTree, Any], PyTree],
        diffusion: Callable[[Any, PyTree, Any], Any],
        t0: float,
        t1: float,
        backend: Diffrax | None = None,
        adjoint: AbstractAdjoint | None = None,
        saveat: diffrax.SaveAt | Real[Array, " times"] | None = None,
        noise_shape: tuple[int, ...] | None = None,
        brownian_tol: float | None = None,
        max_steps: int = 4096,
        throw: bool = True,
    ):
        if backend is None:
            backend = Diffrax(
                diffrax.Euler(),
                dt0=abs(float(t1) - float(t0)) / 100,
                stepsize_controller=diffrax.ConstantStepSize(),
            )
        self.drift = drift
        self.diffusion = diffusion
        self.t0 = t0
        self.t1 = t1
        self.backend = backend
        self.adjoint = DiffraxAdjoint() if adjoint is None else adjoint
        self.saveat = as_saveat(saveat)
        self.noise_shape = noise_shape
        self.brownian_tol = brownian_tol
        self.max_steps = max_steps
        self.throw = throw

    def solve(
        self, y0: PyTree[Array], args: PyTree = None, *, key: Any = None
    ) -> Solution:
        """Integrate one sample path and return the whole [`unimplicit.Solution`][]."""
        condition = SDE(
            self.drift,
            self.diffusion,
            self.t0,
            self.t1,
            key=key,
            saveat=self.saveat,
            noise_shape=self.noise_shape,
            brownian_tol=self.brownian_tol,
        )
        return solve(
            condition,
            self.backend,
            args,
            y0=y0,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=self.throw,
        )

    def __call__(
        self, y0: PyTree[Array], args: PyTree = None, *, key: Any = None
    ) -> PyTree[Array]:
        """Return `y(t1)` (or `y` at the `saveat` times) for one sample path."""
        return self.solve(y0, args, key=key).value
