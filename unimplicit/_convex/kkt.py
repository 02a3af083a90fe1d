"""The reduced Newton (KKT) system of the interior-point method, dense.

Each interior-point step solves

    [ P   A^T ] [dx]   [rx]
    [ A  -W^2 ] [dy] = [rp]

where `W` is the Nesterov-Todd scaling on the conic rows and `0` on the equality
rows (whose slack is fixed at zero). Eliminating the conic multipliers gives the
normal-equations form `(P + B^T B) dx + E^T dy_E = rx + B^T W^{-1} rp_G` with
`B = W^{-1} G` (`G` the conic rows, `E` the equality rows): an `n x n`
positive-definite matrix, factorised by Cholesky when there are no equalities and
otherwise bordered by `E` and factorised by LU. A small regularisation keeps the
factorisation defined when `P + B^T B` is singular; the outer iteration, which
recomputes exact residuals every step, absorbs the resulting tiny direction error.
"""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, PyTree

from .cones import AbstractCone


def blockwise(blocks: Sequence[AbstractCone], fn, *vectors: Array) -> Array:
    """Apply `fn(cone, *parts)` to each cone's rows of `vectors` and concatenate."""
    out, start = [], 0
    for cone in blocks:
        stop = start + cone.dim
        out.append(fn(cone, *(v[start:stop] for v in vectors)))
        start = stop
    if not out:
        return vectors[0][:0]
    return jnp.concatenate(out)


def blockwise_min(blocks: Sequence[AbstractCone], fn, *vectors: Array) -> Array:
    """The minimum over cones of the scalar `fn(cone, *parts)` (`inf` if none)."""
    out, start = [], 0
    for cone in blocks:
        stop = start + cone.dim
        out.append(fn(cone, *(v[start:stop] for v in vectors)))
        start = stop
    if not out:
        return jnp.asarray(jnp.inf, vectors[0].dtype)
    return jnp.min(jnp.stack(out))


def scale(blocks, scalings, v):
    """`W v` on the conic rows."""
    return _apply(blocks, scalings, v, "scale")


def unscale(blocks, scalings, v):
    """`W^{-1} v` on the conic rows (`v` of shape `(m_c,)` or `(m_c, k)`)."""
    return _apply(blocks, scalings, v, "unscale")


def _apply(blocks, scalings, v, method):
    out, start = [], 0
    for cone, w in zip(blocks, scalings):
        stop = start + cone.dim
        out.append(getattr(cone, method)(w, v[start:stop]))
        start = stop
    if not out:
        return v
    return jnp.concatenate(out)


class Factorisation(eqx.Module):
    """A factorised reduced KKT system (internal)."""

    B: Array  # W^{-1} G
    factor: PyTree[Array]
    E: Array
    scalings: tuple
    blocks: tuple = eqx.field(static=True)
    bordered: bool = eqx.field(static=True)


def factorise(
    P: Array, E: Array, G: Array, blocks, scalings, reg_scale: float
) -> Factorisation:
    """Factorise the reduced system for the given Nesterov-Todd scalings."""
    n = P.shape[0]
    B = unscale(blocks, scalings, G)
    H = P + B.T @ B
    # A constant floor plus machine precision times the largest pivot (as Clarabel).
    eps = jnp.finfo(H.dtype).eps
    reg = reg_scale + eps * jnp.max(jnp.abs(jnp.diagonal(H)), initial=0)
    H = H + reg * jnp.eye(n, dtype=H.dtype)
    p = E.shape[0]
    if p:
        top = jnp.concatenate([H, E.T], axis=1)
        bottom = jnp.concatenate([E, -reg * jnp.eye(p, dtype=H.dtype)], axis=1)
        factor = jsl.lu_factor(jnp.concatenate([top, bottom], axis=0))
    else:
        factor = jsl.cho_factor(H)
    return Factorisation(B, factor, E, tuple(scalings), tuple(blocks), bool(p))


def solve(f: Factorisation, rx: Array, rp: Array) -> tuple[Array, Array]:
    """Solve the full system for right-hand sides `(rx, rp)` (vectors or columns)."""
    p = f.E.shape[0]
    rp_e, rp_g = rp[:p], rp[p:]
    t = unscale(f.blocks, f.scalings, rp_g)
    rhs = rx + f.B.T @ t
    if f.bordered:
        sol = jsl.lu_solve(f.factor, jnp.concatenate([rhs, rp_e], axis=0))
        dx, dy_e = sol[: rhs.shape[0]], sol[rhs.shape[0] :]
    else:
        dx, dy_e = jsl.cho_solve(f.factor, rhs), rp_e
    dy_g = unscale(f.blocks, f.scalings, f.B @ dx - t)
    return dx, jnp.concatenate([dy_e, dy_g], axis=0)
