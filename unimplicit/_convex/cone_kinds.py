"""The built-in kinds of cone: nonnegative orthants and second-order cones."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .cone_base import AbstractCone, register_cone


class NonnegativeCone(AbstractCone):
    """The nonnegative orthant `{s : s >= 0}` (self-dual)."""

    dim: int = eqx.field(static=True)

    @classmethod
    def from_spec(cls, spec: Any) -> tuple[AbstractCone, ...]:
        if isinstance(spec, bool) or not isinstance(spec, int) or spec < 0:
            raise ValueError(
                f"Cones: `nonneg` must be a nonnegative int, got {spec!r}."
            )
        return (cls(spec),) if spec else ()

    def degree(self) -> int:
        return self.dim

    def block_sizes(self) -> tuple[int, ...]:
        return (1,) * self.dim

    def diagonal(self) -> bool:
        return True

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

    @classmethod
    def from_spec(cls, spec: Any) -> tuple[AbstractCone, ...]:
        sizes = tuple(spec)
        for k in sizes:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(
                    "Cones: every second-order cone size must be an int >= 1, got "
                    f"soc={sizes!r}."
                )
        out: list[AbstractCone] = []
        i = 0
        while i < len(sizes):
            j = i
            while j < len(sizes) and sizes[j] == sizes[i]:
                j += 1
            out.append(cls(sizes[i], j - i))
            i = j
        return tuple(out)

    def _split(self, v):
        return v.reshape((self.count, self.size) + v.shape[1:])

    def degree(self) -> int:
        return self.count

    def block_sizes(self) -> tuple[int, ...]:
        return (self.size,) * self.count

    def diagonal(self) -> bool:
        return False

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


register_cone("nonneg", NonnegativeCone, cvxpy="NonNeg")
register_cone("soc", SecondOrderCones, cvxpy="SOC")
