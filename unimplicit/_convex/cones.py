"""Cones of a cone program, and the per-kind operations an interior-point method needs.

A cone program's slack `s` and dual `y` are split into consecutive blocks of rows,
one per cone. Each kind of cone is one final `eqx.Module` implementing
`AbstractCone`: the identity element, the Jordan product and its inverse, the
largest step that stays inside the cone, and Nesterov-Todd scaling. Adding a kind
(PSD, exponential) means adding one class here and one field to `Cones`; the
solver only talks to `AbstractCone`.
"""

import abc
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


class AbstractCone(eqx.Module):
    """A block of `dim` consecutive rows constrained to lie in one kind of cone.

    Vectors passed to the methods are the block's own rows, of shape `(dim,)`;
    `scale`/`unscale` also accept `(dim, k)` arrays, acting on each column.
    """

    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def degree(self) -> int:
        """The barrier parameter (number of 'eigenvalues') of the block."""

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


class ZeroCone(eqx.Module):
    """The zero cone `{0}`: equality rows. Its dual cone is the whole space.

    It has no interior, so the interior-point method treats its rows as equality
    constraints rather than through `AbstractCone`.
    """

    dim: int = eqx.field(static=True)


class NonnegativeCone(AbstractCone):
    """The nonnegative orthant `{s : s >= 0}` (self-dual)."""

    dim: int = eqx.field(static=True)

    def degree(self) -> int:
        return self.dim

    def unit(self, dtype: Any) -> Array:
        return jnp.ones(self.dim, dtype)

    def product(self, u, v):
        return u * v

    def divide(self, u, v):
        return v / u

    def margin(self, u):
        return jnp.min(u, initial=jnp.inf)

    def max_step(self, u, du):
        ratio = jnp.where(du < 0, -u / jnp.where(du < 0, du, -1), jnp.inf)
        return jnp.min(ratio, initial=jnp.inf)

    def scaling(self, s, y):
        return jnp.sqrt(s / y)

    def scale(self, w, v):
        return w.reshape(w.shape + (1,) * (v.ndim - 1)) * v

    def unscale(self, w, v):
        return v / w.reshape(w.shape + (1,) * (v.ndim - 1))


def _jnorm(u):
    # sqrt(u0^2 - |u1|^2), factored to avoid cancellation near the boundary.
    r = jnp.linalg.norm(u[:, 1:], axis=1)
    return jnp.sqrt(jnp.maximum((u[:, 0] - r) * (u[:, 0] + r), 0))


def _flip(u):
    # J u with J = diag(1, -1, ..., -1).
    return jnp.concatenate([u[:, :1], -u[:, 1:]], axis=1)


class SecondOrderCones(AbstractCone):
    """`count` consecutive second-order cones of equal `size`: `{(t, x) : t >= |x|}`.

    Cones of equal size are grouped so that the work is one batched operation.
    """

    size: int = eqx.field(static=True)
    count: int = eqx.field(static=True, default=1)

    @property
    def dim(self) -> int:  # pyright: ignore[reportIncompatibleVariableOverride]
        return self.size * self.count

    def _split(self, v):
        return v.reshape((self.count, self.size) + v.shape[1:])

    def degree(self) -> int:
        return self.count

    def unit(self, dtype: Any) -> Array:
        e = jnp.zeros((self.count, self.size), dtype).at[:, 0].set(1)
        return e.reshape(-1)

    def product(self, u, v):
        u, v = self._split(u), self._split(v)
        head = jnp.sum(u * v, axis=1, keepdims=True)
        tail = u[:, :1] * v[:, 1:] + v[:, :1] * u[:, 1:]
        return jnp.concatenate([head, tail], axis=1).reshape(-1)

    def divide(self, u, v):
        u, v = self._split(u), self._split(v)
        det = _jnorm(u) ** 2
        w0 = (u[:, 0] * v[:, 0] - jnp.sum(u[:, 1:] * v[:, 1:], axis=1)) / det
        w1 = (v[:, 1:] - w0[:, None] * u[:, 1:]) / u[:, :1]
        return jnp.concatenate([w0[:, None], w1], axis=1).reshape(-1)

    def margin(self, u):
        u = self._split(u)
        return jnp.min(u[:, 0] - jnp.linalg.norm(u[:, 1:], axis=1), initial=jnp.inf)

    def max_step(self, u, du):
        # The first positive root of a t^2 + 2 b t + c = <u + t du, J(u + t du)>,
        # written as c / (-b + sqrt(b^2 - a c)) to stay accurate.
        u, du = self._split(u), self._split(du)
        r = jnp.linalg.norm(u[:, 1:], axis=1)
        c = (u[:, 0] - r) * (u[:, 0] + r)
        b = u[:, 0] * du[:, 0] - jnp.sum(u[:, 1:] * du[:, 1:], axis=1)
        a = du[:, 0] ** 2 - jnp.sum(du[:, 1:] ** 2, axis=1)
        disc = b**2 - a * c
        denom = -b + jnp.sqrt(jnp.maximum(disc, 0))
        ok = (disc >= 0) & (denom > 0)
        step = jnp.where(ok, c / jnp.where(ok, denom, 1), jnp.inf)
        return jnp.min(step, initial=jnp.inf)

    def scaling(self, s, y):
        s, y = self._split(s), self._split(y)
        ns, ny = _jnorm(s), _jnorm(y)
        sb, yb = s / ns[:, None], y / ny[:, None]
        gamma = jnp.sqrt((1 + jnp.sum(sb * yb, axis=1)) / 2)
        # w is the normalised NT point (Q_w y = s); W is the quadratic
        # representation of its square root u = w^{1/2}.
        w = (sb + _flip(yb)) / (2 * gamma[:, None])
        u0 = jnp.sqrt((w[:, :1] + 1) / 2)
        u = jnp.concatenate([u0, w[:, 1:] / (2 * u0)], axis=1)
        return u, jnp.sqrt(ns / ny)

    def scale(self, w, v):
        # W = beta (2 w w^T - J), with <w, J w> = 1.
        w, beta = w
        v = self._split(v)
        extra = (1,) * (v.ndim - 2)
        wb = w.reshape(w.shape + extra)
        dot = jnp.sum(wb * v, axis=1, keepdims=True)
        out = 2 * wb * dot - _flip(v)
        return (beta.reshape(beta.shape + (1,) + extra) * out).reshape(
            (self.dim,) + v.shape[2:]
        )

    def unscale(self, w, v):
        # W^{-1} = (2 J w w^T J - J) / beta.
        w, beta = w
        v = self._split(v)
        extra = (1,) * (v.ndim - 2)
        jw = _flip(w).reshape(w.shape + extra)
        dot = jnp.sum(jw * v, axis=1, keepdims=True)
        out = 2 * jw * dot - _flip(v)
        return (out / beta.reshape(beta.shape + (1,) + extra)).reshape(
            (self.dim,) + v.shape[2:]
        )


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Cones: `{name}` must be a nonnegative int, got {value!r}.")


class Cones(eqx.Module):
    """The cone `K` of a cone program, as row counts.

    Rows of `A x + s = b` are ordered: `zero` equality rows (`s = 0`), then `nonneg`
    rows (`s >= 0`), then one block per entry of `soc`, each a second-order cone
    `{(t, u) : t >= |u|}` of that size. This matches cvxpy's and SCS's ordering.
    The object is static and hashable.

    **Arguments:**

    - `zero`: the number of equality rows.
    - `nonneg`: the number of nonnegative rows.
    - `soc`: the sizes of the second-order cones, each at least 1.
    """

    zero: int = eqx.field(static=True, default=0)
    nonneg: int = eqx.field(static=True, default=0)
    soc: tuple[int, ...] = eqx.field(static=True, default=(), converter=tuple)

    def __check_init__(self):
        _check_count("zero", self.zero)
        _check_count("nonneg", self.nonneg)
        for k in self.soc:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(
                    f"Cones: every second-order cone size must be an int >= 1, got "
                    f"soc={self.soc!r}."
                )

    @property
    def dim(self) -> int:
        """The total number of rows `m`."""
        return self.zero + self.nonneg + sum(self.soc)

    def blocks(self) -> tuple[AbstractCone, ...]:
        """The cones of the non-equality rows (after the `zero` rows), in order."""
        out: list[AbstractCone] = []
        if self.nonneg:
            out.append(NonnegativeCone(self.nonneg))
        i = 0
        while i < len(self.soc):
            j = i
            while j < len(self.soc) and self.soc[j] == self.soc[i]:
                j += 1
            out.append(SecondOrderCones(self.soc[i], j - i))
            i = j
        return tuple(out)

    def degree(self) -> int:
        """The barrier parameter of the whole cone (the equality rows add nothing)."""
        return sum(c.degree() for c in self.blocks())
