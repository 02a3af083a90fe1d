"""The abstract conditions: what the output `y` of an implicit layer satisfies.

This module holds interfaces only. The concrete conditions live beside the
machinery they need (`_equilibria.py`, `_flow/`, `_convex/`), so that nothing here
depends on a solver or an adjoint, and backends and adjoints can depend on it.
"""

import abc
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import PyTree

from ._misc import tree_stop_gradient, tree_two_norm


if TYPE_CHECKING:
    from ._adjoint import AbstractAdjoint


class AbstractCondition(eqx.Module):
    """What the output `y` of an implicit layer must satisfy, given inputs `args`.

    A condition says nothing about how `y` is found (that is the backend's job:
    each backend declares which conditions it can solve) nor, beyond its default,
    how it is differentiated (the adjoint's). Pass one to [`unimplicit.solve`][].
    """

    @abc.abstractmethod
    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        """Validate (or create) the initial state, raising at trace time if wrong."""

    @abc.abstractmethod
    def default_adjoint(self) -> "AbstractAdjoint":
        """The adjoint [`unimplicit.solve`][] uses when given none."""

    @abc.abstractmethod
    def measure(
        self, value: PyTree, args: PyTree, residual_norm: jax.Array | None
    ) -> dict[str, jax.Array]:
        """Statistics of a solution that hold for any backend (e.g. its residual).

        `residual_norm` is the backend's own measurement, if it made one, so that
        it need not be computed twice. Called once by `solve`, outside autodiff.
        """


class AbstractEquilibrium(AbstractCondition):
    """A condition `F(y, args) = 0` with a residual `F` that vanishes at the answer.

    Every equilibrium is differentiated by the same implicit-function-theorem rule
    (see [`unimplicit.ImplicitAdjoint`][]), which only needs `residual`, and can be
    solved by any generic backend: an Optimistix root finder, least-squares solver
    or minimiser on `F`, a fixed-point solver on `y + F(y, args)`, or
    `unimplicit.Diffrax`, which integrates `dy/dt = F(y, args)` to a steady state.

    A subclass implements `residual`, `init`, `closure_convert`,
    `default_linear_solver` and `default_adjoint` (usually
    `unimplicit.ImplicitAdjoint()`).
    """

    @abc.abstractmethod
    def residual(self, y: PyTree, args: PyTree) -> PyTree:
        """The residual `F(y, args)`: same structure as `y`, zero at a solution."""

    @abc.abstractmethod
    def closure_convert(self, y0: PyTree, args: PyTree) -> "AbstractEquilibrium":
        """Return an equivalent condition whose closed-over arrays are PyTree leaves.

        Needed so that values a user function closes over (for example network
        weights under `jax.grad`) are seen, and differentiated, by the custom JVP.
        """

    @abc.abstractmethod
    def default_linear_solver(self, y: PyTree, args: PyTree) -> lx.AbstractLinearSolver:
        """The Lineax solver that `ImplicitAdjoint()` uses when given none.

        It is chosen at the solution `y`, with the condition's `args`: a solver
        may use the data behind `∂F/∂y` directly rather than reading it off the
        operator.
        """

    def measure(
        self, value: PyTree, args: PyTree, residual_norm: jax.Array | None
    ) -> dict[str, jax.Array]:
        return residual_statistics(self, value, args, residual_norm)


class AbstractFixedPoint(AbstractEquilibrium):
    """An equilibrium given as a map: `y = fixed_point_map(y, args)`.

    Its residual is `fixed_point_map(y, args) - y`. Fixed-point solvers iterate the
    map itself, and [`unimplicit.PhantomAdjoint`][] differentiates steps of it.
    """

    @abc.abstractmethod
    def fixed_point_map(self, y: PyTree, args: PyTree) -> PyTree:
        """The map whose fixed point is the answer."""


def residual_two_norm(
    condition: AbstractEquilibrium, y: PyTree, args: PyTree
) -> jax.Array:
    """The two-norm of `condition.residual(y, args)`, in the dtype of `y`."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(y))
    return tree_two_norm(condition.residual(y, args)).astype(dtype)


def residual_statistics(
    condition: AbstractEquilibrium,
    value: PyTree,
    args: PyTree,
    residual_norm: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """The residual statistics of every equilibrium solve, computed in one place.

    `residual_norm` is the two-norm of `condition.residual(value, args)` and
    `relative_residual` that norm over the norm of `value` (floored at the dtype's
    smallest normal number), both in the dtype of `value`.
    """
    # Diagnostics only: nothing here is differentiated (with respect to the inputs
    # either, so that no tangent of the residual is ever formed).
    value, args = tree_stop_gradient((value, args))
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(value))
    if residual_norm is None:
        residual_norm = residual_two_norm(condition, value, args)
    rnorm = jax.lax.stop_gradient(jnp.asarray(residual_norm).astype(dtype))
    ynorm = tree_two_norm(value).astype(dtype)
    tiny = jnp.asarray(jnp.finfo(dtype).tiny, dtype)
    return {
        "residual_norm": rnorm,
        "relative_residual": rnorm / jnp.maximum(ynorm, tiny),
    }
