"""The cone `K` of a cone program: equality rows, then blocks of registered kinds.

`Cones` is the one place that walks the blocks: every operation the interior point,
its KKT solves and the backward need is a loop over `AbstractCone` methods here,
so a new kind of cone is one `AbstractCone` subclass and its `register_cone`.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .cone_base import AbstractCone, AbstractScaling, cone_kinds
from .cone_kinds import (
    NonnegativeCone as NonnegativeCone,
    SecondOrderCones as SecondOrderCones,
)


def _pieces(blocks: tuple[AbstractCone, ...], v: Array) -> list[Array]:
    out, start = [], 0
    for cone in blocks:
        out.append(v[start : start + cone.dim])
        start += cone.dim
    return out


def _join(parts: list[Array], empty: Array) -> Array:
    return jnp.concatenate(parts) if parts else empty


class ConeScaling(AbstractScaling):
    """The scaling of each cone block, from [`Cones.scaling`][] (internal)."""

    blocks: tuple[AbstractCone, ...] = eqx.field(static=True)
    w: tuple[PyTree[Array], ...]

    def _apply(self, method: str, v: Array) -> Array:
        parts = _pieces(self.blocks, v)
        out = [getattr(c, method)(w, p) for c, w, p in zip(self.blocks, self.w, parts)]
        return _join(out, v)

    def scale(self, v: Array) -> Array:
        return self._apply("scale", v)

    def unscale(self, v: Array) -> Array:
        return self._apply("unscale", v)

    def diagonal(self) -> Array | None:
        parts = []
        for cone, w in zip(self.blocks, self.w):
            if not cone.diagonal():
                break
            parts.append(w)
        return jnp.concatenate(parts) if parts else None


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Cones: `{name}` must be a nonnegative int, got {value!r}.")


class Cones(eqx.Module):
    """The cone `K` of a cone program, as row counts per kind of cone.

    Rows of `A x + s = b` are ordered: `zero` equality rows (`s = 0`), then `nonneg`
    rows (`s >= 0`), then one block per entry of `soc`, each a second-order cone
    `{(t, u) : t >= |u|}` of that size, then the rows of any other registered kind
    (given by its keyword), in the order the kinds were registered. This matches
    cvxpy's and SCS's ordering. The object is static and hashable.

    **Arguments:**

    - `zero`: the number of equality rows.
    - `nonneg`: the number of nonnegative rows.
    - `soc`: the sizes of the second-order cones, each at least 1.
    - `**kinds`: the blocks of other registered kinds of cone, by their name
        (see `register_cone`).
    """

    zero: int = eqx.field(static=True)
    # (name, spec) of each kind present, in the order of the rows.
    kinds: tuple[tuple[str, Any], ...] = eqx.field(static=True)

    def __init__(self, zero: int = 0, nonneg: int = 0, soc: Any = (), **kinds: Any):
        _check_count("zero", zero)
        # (Lists become tuples: the object must stay hashable.)
        given = {"nonneg": nonneg, "soc": soc, **kinds}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        registered = {kind.name: kind for kind in cone_kinds()}
        unknown = sorted(set(given) - set(registered))
        if unknown:
            raise TypeError(
                f"Cones: unknown cone kinds {unknown}; the registered ones are "
                f"{sorted(registered)} (see `register_cone`)."
            )
        self.zero = zero
        self.kinds = tuple(
            (name, given[name])
            for name in registered
            if name in given and registered[name].cls.from_spec(given[name])
        )

    def spec(self, name: str) -> Any:
        """The spec of kind `name` (`0` or `()` if absent)."""
        for kind, spec in self.kinds:
            if kind == name:
                return spec
        return () if name == "soc" else 0

    @property
    def nonneg(self) -> int:
        return self.spec("nonneg")

    @property
    def soc(self) -> tuple[int, ...]:
        return self.spec("soc")

    def blocks(self) -> tuple[AbstractCone, ...]:
        """The cones of the non-equality rows (after the `zero` rows), in order."""
        classes = {kind.name: kind.cls for kind in cone_kinds()}
        return tuple(
            b for name, spec in self.kinds for b in classes[name].from_spec(spec)
        )

    @property
    def dim(self) -> int:
        """The total number of rows `m`."""
        return self.zero + sum(c.dim for c in self.blocks())

    def degree(self) -> int:
        """The barrier parameter of the whole cone (the equality rows add nothing)."""
        return sum(c.degree() for c in self.blocks())

    def diagonal(self) -> bool:
        """Whether every block's scaling is diagonal."""
        return all(c.diagonal() for c in self.blocks())

    def block_sizes(self) -> tuple[int, ...]:
        """Per row group, its size: the blocks of the complementarity's derivative
        (an equality row is its own group)."""
        return (1,) * self.zero + tuple(
            k for c in self.blocks() for k in c.block_sizes()
        )

    def complementarity(self, s: Array, y: Array, mu: float | Array = 0.0) -> Array:
        """The complementarity residual: `s` on equality rows, `s∘y - mu e` elsewhere."""
        parts = [s[: self.zero]]
        blocks = self.blocks()
        for cone, u, v in zip(
            blocks, _pieces(blocks, s[self.zero :]), _pieces(blocks, y[self.zero :])
        ):
            prod = cone.product(u, v)
            parts.append(prod - mu * cone.unit(prod.dtype))
        return jnp.concatenate(parts)

    # Operations on the conic rows (those after the equality rows), block by block.

    def unit(self, dtype: Any) -> Array:
        """The identity element `e` of the conic rows."""
        parts = [c.unit(dtype) for c in self.blocks()]
        return _join(parts, jnp.zeros((0,), dtype))

    def product(self, u: Array, v: Array) -> Array:
        return self._map("product", u, v)

    def divide(self, u: Array, v: Array) -> Array:
        return self._map("divide", u, v)

    def margin(self, u: Array) -> Array:
        """The smallest eigenvalue over all blocks (`inf` if there are none)."""
        return self._min("margin", u)

    def max_step(self, u: Array, du: Array) -> Array:
        """The largest step along `du` that stays in every cone."""
        return self._min("max_step", u, du)

    def scaling(self, s: Array, y: Array) -> ConeScaling:
        """The Nesterov-Todd scaling of an interior pair of conic rows."""
        blocks = self.blocks()
        w = tuple(
            c.scaling(a, b)
            for c, a, b in zip(blocks, _pieces(blocks, s), _pieces(blocks, y))
        )
        return ConeScaling(blocks, w)

    def _map(self, method: str, *vectors: Array) -> Array:
        blocks = self.blocks()
        pieces = [_pieces(blocks, v) for v in vectors]
        out = [getattr(c, method)(*p) for c, *p in zip(blocks, *pieces)]
        return _join(out, vectors[0][:0])

    def _min(self, method: str, *vectors: Array) -> Array:
        blocks = self.blocks()
        pieces = [_pieces(blocks, v) for v in vectors]
        out = [getattr(c, method)(*p) for c, *p in zip(blocks, *pieces)]
        if not out:
            return jnp.asarray(jnp.inf, vectors[0].dtype)
        return jnp.min(jnp.stack(out))
