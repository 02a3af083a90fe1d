from collections.abc import Callable
from typing import Any

import diffrax
from jaxtyping import Array, PyTree, Real

from .flow import AbstractFlow, as_saveat, check_initial_state, Time


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
