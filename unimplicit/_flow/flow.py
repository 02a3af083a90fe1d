import abc
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree, Real

from .._adjoint import AbstractAdjoint
from .._backend import BackendOutput
from .._condition import AbstractCondition


# A time: a Python number or a scalar array (which may be traced).
Time = int | float | Real[Array, ""]


def as_saveat(saveat: Any) -> diffrax.SaveAt | None:
    """Validate `saveat`: `None` (just `y(t1)`), a `diffrax.SaveAt`, or times."""
    if saveat is None:
        return None
    if isinstance(saveat, diffrax.SaveAt):
        return saveat
    if isinstance(saveat, (jax.Array, np.ndarray, list, tuple)):
        ts = jnp.asarray(saveat)
        if ts.ndim != 1 or not jnp.issubdtype(ts.dtype, jnp.floating):
            raise ValueError(
                "`saveat` must be None (save y(t1)), a `diffrax.SaveAt`, or a "
                f"one-dimensional float array of times; got shape {ts.shape} and "
                f"dtype {ts.dtype}."
            )
        return diffrax.SaveAt(ts=ts)
    raise TypeError(
        "`saveat` must be None (save y(t1)), a `diffrax.SaveAt`, or a "
        f"one-dimensional array of times, not {type(saveat).__name__}."
    )


def check_initial_state(y0: PyTree | None, name: str) -> PyTree:
    """Validate the initial state of a flow at trace time."""
    if y0 is None:
        raise ValueError(
            f"An `{name}` condition needs an initial state: pass `y0=` to "
            "`unimplicit.solve`."
        )
    y0 = jtu.tree_map(jnp.asarray, y0)
    leaves = jtu.tree_leaves(y0)
    if not leaves:
        raise ValueError(f"The initial state of an `{name}` holds no arrays.")
    for leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"The initial state of an `{name}` must hold floating-point arrays, "
                f"but got dtype {leaf.dtype}."
            )
    return y0


class AbstractFlow(AbstractCondition):
    """A differential equation whose output is its solution at given times.

    Flows are differentiated through their integration: by default by
    [`unimplicit.DiffraxAdjoint`][] (Diffrax's checkpointed adjoint), not by the
    implicit function theorem.
    """

    t0: eqx.AbstractVar[Time]
    t1: eqx.AbstractVar[Time]
    # `None` means y(t1) alone, returned without a leading time axis.
    saveat: eqx.AbstractVar[diffrax.SaveAt | None]

    @abc.abstractmethod
    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        """Validate the initial state, raising at trace time if it is wrong."""

    @abc.abstractmethod
    def terms(self, y0: PyTree) -> PyTree[diffrax.AbstractTerm]:
        """The Diffrax terms of the equation, for an initial state like `y0`."""

    def default_adjoint(self) -> "DiffraxAdjoint":
        return DiffraxAdjoint()

    def measure(
        self, value: PyTree, args: PyTree, residual_norm: jax.Array | None
    ) -> dict[str, jax.Array]:
        # A flow has no residual: its backend's statistics say all there is.
        return {}


class DiffraxAdjoint(AbstractAdjoint):
    """Differentiate a flow through its integration, with a Diffrax adjoint.

    The default adjoint of [`unimplicit.ODE`][] and [`unimplicit.SDE`][] (and so of
    the `NeuralODE`, `NeuralSDE` and `CNF` layers).

    **Arguments:**

    - `adjoint`: a Diffrax adjoint: `diffrax.RecursiveCheckpointAdjoint()` (the
        default: discretise-then-optimise with checkpointing, exact for the
        computed path), `diffrax.BacksolveAdjoint()` (solves the adjoint ODE
        backwards: constant memory, approximate), or `diffrax.DirectAdjoint()`.
    """

    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()

    def __check_init__(self):
        if not isinstance(self.adjoint, diffrax.AbstractAdjoint):
            raise TypeError(
                "DiffraxAdjoint(adjoint) takes a Diffrax adjoint such as "
                "`diffrax.RecursiveCheckpointAdjoint()` or "
                f"`diffrax.BacksolveAdjoint()`, not {type(self.adjoint).__name__}."
            )

    def supports(self, condition: AbstractCondition) -> bool:
        return isinstance(condition, AbstractFlow)

    def apply(
        self, backend, condition, y0, args, *, max_steps, options
    ) -> BackendOutput:
        return backend.forward(
            condition, y0, args, max_steps=max_steps, options=options, adjoint=self
        )
