from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._equilibria import FixedPoint
from .._misc import check_max_steps, structure_of
from .._solution import Solution
from .._solve import solve
from .._solver.anderson import Anderson


def _default_backend():
    return Anderson(rtol=1e-4, atol=1e-6)


class DEQ(eqx.Module):
    """A deep equilibrium layer: the fixed point `z* = cell(z*, x)`.

    The infinitely deep limit of a weight-tied, input-injected network. Like
    `equinox.nn` layers it acts on one sample; `jax.vmap` it over a batch. Its
    gradient comes from the implicit function theorem by default, so training
    memory does not depend on how many iterations the forward solve took.

    **Arguments:**

    - `cell`: an `eqx.Module` (or any callable) `cell(z, x) -> z`.
    - `backend`: how to find `z*`; any Optimistix solver or unimplicit backend.
        Defaults to Anderson acceleration with `rtol=1e-4, atol=1e-6`.
    - `adjoint`: how to differentiate; defaults to `ImplicitAdjoint()`.
    - `max_steps`: the bound on solver steps.
    - `throw`: whether a failed solve raises (see [`unimplicit.solve`][]).
    - `state`: the structure of `z` as a PyTree of `jax.ShapeDtypeStruct`s (or of
        arrays), used to build the zero initial state. If `None`, `z` is taken to
        have the structure of `x`.
    """

    cell: Any
    backend: Any
    adjoint: AbstractAdjoint
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    state: PyTree[jax.ShapeDtypeStruct] | None = eqx.field(static=True)

    def __init__(
        self,
        cell: Any,
        backend: Any = None,
        adjoint: AbstractAdjoint | None = None,
        max_steps: int = 256,
        throw: bool = True,
        state: PyTree | None = None,
    ):
        check_max_steps(max_steps)
        self.cell = cell
        self.backend = _default_backend() if backend is None else backend
        self.adjoint = ImplicitAdjoint() if adjoint is None else adjoint
        self.max_steps = max_steps
        self.throw = throw
        self.state = None if state is None else structure_of(state)

    def initial_state(self, x: PyTree) -> PyTree:
        """The zero initial state for input `x`."""
        struct = structure_of(x) if self.state is None else self.state
        return jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), struct)

    def solve(
        self, x: PyTree, z0: PyTree | None = None, *, options: dict | None = None
    ) -> Solution:
        """Solve for the fixed point and return the whole [`unimplicit.Solution`][].

        Useful for diagnostics: `stats["num_steps"]`, `stats["residual_norm"]`, and
        with `options={"trace": k}` a residual trace.
        """
        if z0 is None:
            z0 = self.initial_state(x)
        return solve(
            FixedPoint(self.cell),
            self.backend,
            x,
            y0=z0,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=self.throw,
            options=options,
        )

    def __call__(self, x: PyTree, z0: PyTree | None = None) -> PyTree:
        """Return the fixed point `z*` for input `x` (one sample)."""
        return self.solve(x, z0).value
