"""What a kind of cone provides, and the registry of kinds.

A cone program's slack `s` and dual `y` are split into consecutive blocks of rows:
first the equality rows (the zero cone, whose slack is fixed at zero and whose
dual is free: the KKT system treats them as equality constraints, not through a
cone), then one block per cone. Each kind of cone is one final `eqx.Module`
implementing `AbstractCone`, registered under the name its keyword takes in
[`unimplicit.Cones`][] (and in cvxpy's `ConeDims`). Everything else, the
interior point's steps, its KKT solves, the backward's block structure and the
cvxpy canonicalisation, talks to `AbstractCone` only.
"""

import abc
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, PyTree


class AbstractCone(eqx.Module):
    """A block of `dim` consecutive rows constrained to lie in one kind of cone.

    Vectors passed to the methods are the block's own rows, of shape `(dim,)`;
    `scale`/`unscale` also accept `(dim, k)` arrays, acting on each column.
    A kind becomes usable in [`unimplicit.Cones`][] by [`unimplicit.register_cone`][].
    """

    dim: eqx.AbstractVar[int]

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: Any) -> tuple["AbstractCone", ...]:
        """The blocks described by `spec`, the value of this kind's keyword in
        `Cones(...)` (also cvxpy's `ConeDims` entry): e.g. a row count, or a
        tuple of cone sizes. Raises `ValueError` for an invalid `spec`; an empty
        one (`0`, `()`) gives no block."""

    @abc.abstractmethod
    def degree(self) -> int:
        """The barrier parameter (number of 'eigenvalues') of the block."""

    @abc.abstractmethod
    def block_sizes(self) -> tuple[int, ...]:
        """How the block's rows group into independent cones (sizes summing to
        `dim`): the derivative of `product` is block diagonal with these blocks."""

    @abc.abstractmethod
    def diagonal(self) -> bool:
        """Whether the scaling `W` is diagonal, with `scaling` returning its diagonal
        as a `(dim,)` array. The float32 KKT solves can then move strongly active
        rows out of the normal equations, and the block needs no polishing."""

    @abc.abstractmethod
    def unit(self, dtype: Any) -> Float[Array, " dim"]:
        """The identity element `e` of the Jordan algebra (`s∘e = s`)."""

    @abc.abstractmethod
    def product(self, u: Array, v: Array) -> Array:
        """The Jordan product `u∘v`; complementarity is `s∘y = 0`."""

    @abc.abstractmethod
    def divide(self, u: Array, v: Array) -> Array:
        """The `w` with `u∘w = v`, for `u` in the interior of the cone."""

    @abc.abstractmethod
    def margin(self, u: Array) -> Array:
        """The smallest eigenvalue of `u`: positive exactly in the interior."""

    @abc.abstractmethod
    def max_step(self, u: Array, du: Array) -> Array:
        """The largest `a >= 0` with `u + a du` in the cone (`inf` if unbounded)."""

    @abc.abstractmethod
    def scaling(self, s: Array, y: Array) -> PyTree[Array]:
        """The Nesterov-Todd scaling `W` of an interior pair, with `W y = W^{-1} s`."""

    @abc.abstractmethod
    def scale(self, w: PyTree[Array], v: Array) -> Array:
        """`W v` (`W` is symmetric)."""

    @abc.abstractmethod
    def unscale(self, w: PyTree[Array], v: Array) -> Array:
        """`W^{-1} v`."""


class AbstractScaling(eqx.Module):
    """A Nesterov-Todd scaling `W` of the conic rows, as the KKT solves use it."""

    @abc.abstractmethod
    def scale(self, v: Array) -> Array:
        """`W v`, for `v` of shape `(m_c,)` or `(m_c, k)`."""

    @abc.abstractmethod
    def unscale(self, v: Array) -> Array:
        """`W^{-1} v`."""

    @abc.abstractmethod
    def diagonal(self) -> Array | None:
        """The diagonal of `W` on the leading rows where it is diagonal (its
        length is their number; trace-time), or `None` if there are none."""


class ConeKind(eqx.Module):
    """A registered kind of cone (internal): its keyword, class and cvxpy name."""

    name: str = eqx.field(static=True)
    cls: type[AbstractCone] = eqx.field(static=True)
    cvxpy: str | None = eqx.field(static=True)


# In the order of their rows, which is cvxpy's (and SCS's) order of cones.
_KINDS: dict[str, ConeKind] = {}


def register_cone(name: str, cls: type[AbstractCone], cvxpy: str | None = None):
    """Make a kind of cone usable as `Cones(..., name=spec)`.

    Kinds are laid out in the order they were registered (the built-in ones:
    nonnegative, then second-order), after the equality rows.

    **Arguments:**

    - `name`: the keyword of [`unimplicit.Cones`][], and the attribute of cvxpy's
        `ConeDims` that counts this kind (so that cvxpy problems using it
        canonicalise to it).
    - `cls`: the `AbstractCone` subclass; `cls.from_spec(spec)` builds the blocks.
    - `cvxpy`: the name of cvxpy's constraint class of this kind (in
        `cvxpy.constraints`), for reading duals out of cvxpy's cone program.
    """
    if not (isinstance(cls, type) and issubclass(cls, AbstractCone)):
        raise TypeError(f"register_cone: {cls!r} is not an AbstractCone subclass.")
    if name == "zero" or not name.isidentifier():
        raise ValueError(f"register_cone: {name!r} cannot name a cone kind.")
    known = _KINDS.get(name)
    if known is not None and known.cls is not cls:
        raise ValueError(f"register_cone: {name!r} already names {known.cls.__name__}.")
    _KINDS[name] = ConeKind(name, cls, cvxpy)


def cone_kinds() -> tuple[ConeKind, ...]:
    """The registered kinds, in the order of their rows."""
    return tuple(_KINDS.values())
