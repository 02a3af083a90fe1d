"""The reduced Newton (KKT) system of the interior-point method, dense.

Each interior-point step solves

    [ P   A^T ] [dx]   [rx]
    [ A  -W^2 ] [dy] = [rp]

where `W` is the Nesterov-Todd scaling on the conic rows and `0` on the equality
rows (whose slack is fixed at zero). Eliminating the conic multipliers gives the
normal-equations form `(P + B^T B) dx + E^T dy_E = rx + B^T W^{-1} rp_G` with
`B = W^{-1} G` (`G` the conic rows, `E` the equality rows): an `n x n`
positive-definite matrix, factorised by Cholesky when there are no equalities and
the equality rows entering through a Schur complement. A small regularisation keeps the
factorisation defined when `P + B^T B` is singular; the outer iteration, which
recomputes exact residuals every step, absorbs the resulting tiny direction error.

Late in a solve `W^{-2}` spans many orders of magnitude and `P + B^T B` becomes
ill-conditioned; in float32 the plain solve then loses most of its digits.
`solve_refined` adds iterative refinement against the unregularised system, which
recovers them as long as the factorisation is not wholly wrong. In float32 at
n=128 it is (refinement then diverges), so there `factorise(..., split=True)`
moves the strongly active rows of diagonally scaled cones (nonnegative rows; see
`AbstractCone.diagonal`) out of `P + B^T B` into the Schur complement, next to
the equality rows, where they cost no accuracy.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array

from .cone_base import AbstractScaling


class DiagonalScaling(AbstractScaling):
    """A diagonal `W = diag(w)` on every conic row (the backward's, see
    `kkt_solver.py`)."""

    w: Array

    def _column(self, v: Array) -> Array:
        return self.w.reshape(self.w.shape + (1,) * (v.ndim - 1))

    def scale(self, v: Array) -> Array:
        return self._column(v) * v

    def unscale(self, v: Array) -> Array:
        return v / self._column(v)

    def diagonal(self) -> Array | None:
        return self.w if self.w.shape[0] else None


# Rounding in forming `B^T B` is about `n eps` times its largest entry, so
# `eps * big` does not always keep Cholesky from breaking down (near the boundary
# of second-order cones especially); a retried step uses this much more.
_BOOST = 1e4
# `split` keeps a row out of `H` when its term in `diag(B^T B)` exceeds this many
# times `max(1, max|P|)`. Any value from 30 to 1000 solves all random QPs of
# `benchmarks/bench_qp.py` (n=128 and n=20, seeds 0-1) in float32 at 1e-5, with
# two rounds of refinement.
_SPLIT = 100.0


class Factorisation(eqx.Module):
    """A factorised reduced KKT system (internal)."""

    P: Array
    E: Array  # equality rows of A
    G: Array  # conic rows of A
    B: Array | None  # W^{-1} G with the kept rows zeroed (`split` only)
    L: Array  # Cholesky factor of H = P + B^T B + reg I
    C: Array  # E L^{-T}
    D: Array  # Cholesky factor of the Schur complement reg I + C C^T
    scaling: AbstractScaling
    # With `split`: which of the candidate rows are kept out of `H`, and the
    # candidates (indices into the conic rows; None: the first `len(kept)`). `E`
    # then holds the equality rows only, while `C` and `D` also cover the
    # candidates.
    kept: Array | None = None
    rows: Array | None = None


def _take(v: Array, rows: Array | None, k: int) -> Array:
    # (A slice when every row is a candidate, rather than a gather of all rows.)
    return v[:k] if rows is None else v[rows]


def _put(v: Array, rows: Array | None, u: Array) -> Array:
    return v.at[: u.shape[0]].set(u) if rows is None else v.at[rows].set(u)


def _split_rows(P, G, B, w, k):
    """Choose the diagonally scaled rows to keep out of the normal equations.

    A row whose term in `B^T B` dwarfs `P` (an active constraint late in a solve,
    where `y / s` grows like `1 / mu`) makes `H` as ill-conditioned as the spread
    of the scaling, which float32 cannot resolve: the refined solve then diverges
    (measured at n=128: its residual grows 10x over four rounds). Kept out of `H`
    and treated like an equality row, with `-W^2` for `-reg I`, such a row enters
    the Schur complement `W^2 + G H^{-1} G^T` instead, where nothing is lost: `H`
    holds only moderate terms, and a tiny `W^2` only adds to a diagonal. A
    nondegenerate solution has at most `n` active rows, so the `min(n, k)` rows
    with the largest terms are the candidates (the Schur complement's size).
    """
    n = P.shape[0]
    d = w**2
    term = jnp.sum(G[:k] ** 2, axis=1) / d  # the row's part of diag(B^T B)
    r = min(n, k)
    rows = None if r == k else jax.lax.top_k(term, r)[1]
    limit = _SPLIT * jnp.maximum(1, jnp.max(jnp.abs(P), initial=0))
    kept = _take(term, rows, r) > limit
    B = _put(B, rows, jnp.where(kept[:, None], 0, _take(B, rows, r)))
    extra = jnp.where(kept[:, None], _take(G, rows, r), 0)
    return B, (kept, rows, extra, jnp.where(kept, _take(d, rows, r), 1))


def factorise(
    P: Array,
    E: Array,
    G: Array,
    scaling: AbstractScaling,
    reg_scale: float | Array,
    boost: bool | Array = False,
    split: bool | None = None,
) -> Factorisation:
    """Factorise the reduced system for the given Nesterov-Todd scaling.

    `boost` (a traced boolean allowed) multiplies the dynamic part of the
    regularisation by `_BOOST`: for retrying a step whose factorisation broke down.
    `split` (static) keeps strongly active rows of the leading diagonally scaled
    cones (`scaling.diagonal()`) out of the normal equations (see `_split_rows`);
    `None`: below float64 only (float32 needs it, float64 does not).
    """
    n, p = P.shape[0], E.shape[0]
    if split is None:
        split = jnp.finfo(P.dtype).bits < 64
    B = scaling.unscale(G)
    moved = None
    diagonal = scaling.diagonal() if split else None
    if diagonal is not None:
        B, moved = _split_rows(P, G, B, diagonal, diagonal.shape[0])
    # (Cholesky reads only the lower triangle, but forming just that half by
    # blocks was slower: XLA spreads one large product over both cores of a
    # small machine better than three smaller ones and the copies that join them.)
    gram = B.T @ B
    # A constant floor plus machine precision times (a bound on) the largest pivot,
    # as Clarabel does. (Machine precision times each pivot's own size biases the
    # directions less, but lets Cholesky break down late in some solves.) The
    # largest diagonal entry bounds the pivots; it is read off the two terms, so
    # that the sum below is formed in one pass, regularisation included.
    eps = jnp.finfo(P.dtype).eps
    big = jnp.max(jnp.abs(jnp.diagonal(P) + jnp.diagonal(gram)), initial=0)
    reg = reg_scale + eps * big * jnp.where(boost, _BOOST, 1)
    # (`P.T`, which is `P`: XLA keeps the loop-invariant `P` in the column-major
    # layout that LAPACK wants for `H`; reading it transposed here spares the
    # matrix-vector products elsewhere a transposing copy of `P` every step.)
    H = P.T + gram + reg * jnp.eye(n, dtype=P.dtype)
    # Cholesky rather than LU: on CPU, batched LU spends much of its time turning
    # pivots into permutations, and the matrices here are positive definite.
    L = jsl.cholesky(H, lower=True)
    # The quasi-definite [[H, E^T], [E, -reg I]] = M diag(I, -I) M^T with
    # M = [[L, 0], [C, D]], C = E L^{-T} and D D^T = reg I + C C^T.
    if moved is not None:
        kept, rows, extra, d = moved
        # The kept rows' block of the quasi-definite system is -W^2, not -reg I.
        C = jsl.solve_triangular(L, jnp.concatenate([E, extra]).T, lower=True).T
        diag = jnp.concatenate([jnp.full((p,), reg, H.dtype), d])
        D = jsl.cholesky(jnp.diag(diag) + C @ C.T, lower=True)
        return Factorisation(P, E, G, B, L, C, D, scaling, kept, rows)
    # (Without `split`, `B` is not kept: the solves multiply by `G` and scale,
    # which spares writing `B` out every step; at n=128 the forward plus backward
    # took ~6% less.)
    C = jsl.solve_triangular(L, E.T, lower=True).T
    D = (
        jsl.cholesky(reg * jnp.eye(p, dtype=H.dtype) + C @ C.T, lower=True)
        if p
        else C[:, :0]
    )
    return Factorisation(P, E, G, None, L, C, D, scaling)


def _times_B(f: Factorisation, v: Array) -> Array:
    """`B v` with `B = W^{-1} G`."""
    if f.B is None:
        return f.scaling.unscale(f.G @ v)
    return f.B @ v


def _times_Bt(f: Factorisation, v: Array) -> Array:
    """`B^T v`."""
    if f.B is None:
        return f.G.T @ f.scaling.unscale(v)
    return f.B.T @ v


def solve(f: Factorisation, rx: Array, rp: Array) -> tuple[Array, Array]:
    """Solve the full system for right-hand sides `(rx, rp)` (vectors or columns)."""
    p = f.E.shape[0]
    rp_e, rp_g = rp[:p], rp[p:]
    t = f.scaling.unscale(rp_g)
    # The rows in the Schur complement: the equality rows, and with `split` the
    # kept rows, whose right-hand side enters there and whose `dy` comes from it.
    rs, rows, kept = rp_e, f.rows, None
    r = 0 if f.kept is None else f.kept.shape[0]
    if f.kept is not None:
        kept = f.kept.reshape(f.kept.shape + (1,) * (rp.ndim - 1))
        t = _put(t, rows, jnp.where(kept, 0, _take(t, rows, r)))
        rs = jnp.concatenate([rp_e, jnp.where(kept, _take(rp_g, rows, r), 0)])
    w1 = jsl.solve_triangular(f.L, rx + _times_Bt(f, t), lower=True)
    if rs.shape[0]:
        w2 = jsl.solve_triangular(f.D, rs - f.C @ w1, lower=True)
        dy_s = jsl.solve_triangular(f.D, -w2, lower=True, trans="T")
        w1 = w1 - f.C.T @ dy_s
    else:
        dy_s = rs
    dx = jsl.solve_triangular(f.L, w1, lower=True, trans="T")
    dy_g = f.scaling.unscale(_times_B(f, dx) - t)
    if kept is not None:
        dy_g = _put(dy_g, rows, jnp.where(kept, dy_s[p:], _take(dy_g, rows, r)))
    return dx, jnp.concatenate([dy_s[:p], dy_g], axis=0)


def residual(f: Factorisation, dx: Array, dy: Array, rx: Array, rp: Array):
    """`(rx, rp)` minus the unregularised system applied to `(dx, dy)`."""
    p = f.E.shape[0]
    dy_e, dy_g = dy[:p], dy[p:]
    ex = rx - f.P @ dx - f.E.T @ dy_e - f.G.T @ dy_g
    w2dy = f.scaling.scale(f.scaling.scale(dy_g))
    ep = rp - jnp.concatenate([f.E @ dx, f.G @ dx - w2dy], axis=0)
    return ex, ep


def refine(solve_fn, residual_fn, rhs: tuple[Array, ...], steps: int):
    """Iterative refinement of an approximate solver.

    `solve_fn(*rhs)` solves approximately (a regularised or otherwise perturbed
    factorisation); each of the `steps` rounds solves again for what the exact
    system leaves of the right-hand side, `residual_fn(u, rhs)`, and adds that
    correction. Shared by the interior point's KKT solves and the convex backward.
    """
    u = solve_fn(*rhs)
    for _ in range(steps):
        correction = solve_fn(*residual_fn(u, rhs))
        u = tuple(a + c for a, c in zip(u, correction))
    return u


def solve_refined(f: Factorisation, rx: Array, rp: Array, steps: int):
    """`solve`, then `steps` rounds of iterative refinement on the unregularised
    system: each solves again for what the regularisation and rounding left."""
    return refine(
        lambda a, b: solve(f, a, b),
        lambda u, r: residual(f, *u, *r),
        (rx, rp),
        steps,
    )
