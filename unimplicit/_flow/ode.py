import abc
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree, Real

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

    Flows are differentiated by Diffrax's adjoints (pass one as `adjoint=` to
    [`unimplicit.solve`][]), not by the implicit function theorem.
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


class ODE(AbstractFlow):
    """The ordinary differential equation `dy/dt = vector_field(t, y, args)`.

    The output is `y(t1)` for the initial state `y(t0) = y0`, or the states at the
    times in `saveat`. `t1 < t0` integrates backwards in time, as in Diffrax.

    **Arguments:**

    - `vector_field`: a callable `vector_field(t, y, args) -> dy/dt`, with the
        structure of `y`. An `eqx.Module` (such as an MLP) works, and its
        parameters are differentiated.
    - `t0`, `t1`: the start and end times.
    - `saveat`: `None` (return `y(t1)`, shaped like `y0`), an array of times
        (return `y` at each, stacked along a new leading axis), or any
        `diffrax.SaveAt` (return what Diffrax returns as `ys`).
    """

    vector_field: Callable[[Any, PyTree, Any], PyTree]
    t0: Time
    t1: Time
    saveat: diffrax.SaveAt | None

    def __init__(
        self,
        vector_field: Callable[[Any, PyTree, Any], PyTree],
        t0: Time,
        t1: Time,
        saveat: diffrax.SaveAt | Real[Array, " times"] | None = None,
    ):
        if not callable(vector_field):
            raise TypeError(
                "`vector_field` must be a callable `vector_field(t, y, args)`, not "
                f"{type(vector_field).__name__}."
            )
        self.vector_field = vector_field
        self.t0 = t0
        self.t1 = t1
        self.saveat = as_saveat(saveat)

    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        return check_initial_state(y0, "ODE")

    def terms(self, y0: PyTree) -> PyTree[diffrax.AbstractTerm]:
        return diffrax.ODETerm(self.vector_field)

    def backend_hint(self) -> str:
        return "unimplicit.Diffrax (with any Diffrax ODE solver)"
