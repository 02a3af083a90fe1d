"""A Lineax solver for the Jacobian of the cone-program residual.

The residual of [`unimplicit.ConeProgram`][] has the Jacobian

    [ P   A^T  0  ] [dx]
    [ A   0    I  ] [dy]
    [ 0   C_y  C_s] [ds]

with `C_y`, `C_s` block diagonal (one block per cone: the derivatives of the
complementarity residual). Eliminating `ds = r2 - A dx` leaves the `(n + m)` system

    K = [ P         A^T ]
        [ -C_s A    C_y ]

factorised once; the transposed system, which reverse mode solves, uses the same
factors. With only one-row cones (zero and nonnegative rows: QPs, LPs) `C_y`,
`C_s` are diagonal and the factorisation is the interior-point method's own normal-equations
Cholesky (`kkt.py`), used as a preconditioner and refined against `K` (at
`n = m = 128`, about 2x cheaper than LU of `K` on CPU); otherwise it is an LU of
`K`, about `((n + 2m) / (n + m))^3` times cheaper than LU on the whole Jacobian.

`ConeProgram.default_linear_solver` gives the solver the data behind the
Jacobian (`P`, `A` and the solution's `s`, `y`), from which it forms `C_y` and
`C_s` by differentiating the complementarity residual along a few "comb" vectors
(as many as the largest cone block). Without that data, it reads all four blocks
off the operator (`P` and `A` from `n` products with basis vectors in `x`), which
is only valid for this residual's structure: it is not a general-purpose solver.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from jaxtyping import Array, PyTree

from . import kkt
from .cones import Cones
from .data import PrimalDual


def _block_layout(cones: Cones):
    """Per row: the first row of its cone block, its offset in it, the block size."""
    start, offset, size = [], [], []
    row = 0
    for k in cones.block_sizes():
        start += [row] * k
        offset += list(range(k))
        size += [k] * k
        row += k
    return np.array(start, int), np.array(offset, int), np.array(size, int)


# Below this size the system is factorised by QR rather than LU: on CPU, batched LU
# spends more time turning its pivots into a permutation (a loop) than factorising,
# while Householder QR needs no pivots. Above it, LU's 3-4x fewer flops win.
_QR_MAX = 0


def _factor(K: Array) -> tuple[Array, Array]:
    if K.shape[0] <= _QR_MAX:
        return jnp.linalg.qr(K)
    return jsl.lu_factor(K)


def _solve(factor: tuple[Array, Array], rhs: Array, transposed: bool) -> Array:
    a, b = factor
    if a.shape[0] <= _QR_MAX:
        # K = Q R: K^{-1} v = R^{-1} Q^T v and K^{-T} v = Q R^{-T} v.
        if transposed:
            return a @ jsl.solve_triangular(b, rhs, trans="T")
        return jsl.solve_triangular(b, a.T @ rhs)
    return jsl.lu_solve((a, b), rhs, trans=1 if transposed else 0)


class _State(eqx.Module):
    lu: tuple[Array, Array]
    A: Array
    C_s: Array
    transposed: bool = eqx.field(static=True)


class _DiagonalState(eqx.Module):
    """Zero and nonnegative rows only: the Cholesky route (see `_diagonal_init`)."""

    factor: kkt.Factorisation
    P: Array
    A: Array
    c_y: Array
    c_s: Array
    zero: int = eqx.field(static=True)
    transposed: bool = eqx.field(static=True)


# Rounds of iterative refinement against the exact Jacobian.
_REFINE = 2


def _diagonal_init(P, A, c_y, c_s, zero):
    """Factorise a preconditioner for the Jacobian with zero and nonnegative rows.

    There `C_y = diag(s)`, `C_s = diag(y)` on the nonnegative rows and `(0, 1)` on
    the equality rows, so dividing the nonnegative rows by `-y` turns the system
    into the interior-point method's own quasi-definite one, `[[P, A^T], [A, -D]]`
    with `D = s / y` on those rows and `0` on the equality rows, solved by a
    Cholesky of `P + G^T D^{-1} G` (about a third of an LU of the `(n + m)`
    system, and batched Cholesky is much faster than batched LU on CPU).

    At a solution `D` spans about `1/tol^2`, and the normal equations then lose
    about as many digits. So `D` is floored at `sqrt(eps)` (relative to the scales
    of `P` and `G`) in the factorisation, which keeps it accurate, and the
    solve is refined against the exact system (`_diagonal_compute`): the floor
    changes only rows that are active to within `sqrt(eps)`, which refinement
    corrects quickly. In float32 that is not enough at n=128 (the IFT solve
    returned NaN on the random QPs of `benchmarks/bench_qp.py`), so there the
    factorisation also keeps strongly active rows out of the normal equations, as
    the forward's does (`kkt.factorise`'s `split`, on by default below float64).
    """
    G = A[zero:]
    eps = jnp.finfo(A.dtype).eps
    scale = jnp.maximum(1, jnp.max(jnp.abs(P), initial=0)) / jnp.maximum(
        1, jnp.max(jnp.sum(G * G, axis=1), initial=0)
    )
    d = jnp.maximum(c_y[zero:] / c_s[zero:], jnp.sqrt(eps) * scale)
    scaling = kkt.DiagonalScaling(jnp.sqrt(d))
    return kkt.factorise(P, A[:zero], G, scaling, float(eps) ** (2 / 3))


def _diagonal_apply(state: _DiagonalState, u1, u2):
    """The exact slack-eliminated Jacobian (or its transpose) times `(u1, u2)`."""
    P, A, c_y, c_s = state.P, state.A, state.c_y, state.c_s
    if state.transposed:
        return P @ u1 - A.T @ (c_s * u2), A @ u1 + c_y * u2
    return P @ u1 + A.T @ u2, -c_s * (A @ u1) + c_y * u2


def _diagonal_solve(state: _DiagonalState, r1, r2):
    """One solve through the factorisation (approximate: regularised)."""
    zero, c_y, c_s = state.zero, state.c_y, state.c_s
    if state.transposed:
        # P u1 - A^T (c_s u2) = r1, A u1 + c_y u2 = r2: with v = -c_s u2 this is
        # the quasi-definite system with right-hand side (r1, r2).
        u1, v = kkt.solve(state.factor, r1, r2)
        # On a nonnegative row, u2 = -v / y = (r2 - g^T u1) / s: take the form
        # that divides by the larger of the two.
        cy, cs = c_y[zero:], c_s[zero:]
        big = cs >= cy
        from_v = -v[zero:] / jnp.where(big, cs, 1)
        from_row = (r2[zero:] - state.A[zero:] @ u1) / jnp.where(big, 1, cy)
        u2_g = jnp.where(big, from_v, from_row)
        return u1, jnp.concatenate([-v[:zero], u2_g])
    # Rows of -c_s A u1 + c_y u2 = r2, divided by -c_s.
    return kkt.solve(state.factor, r1, -r2 / c_s)


def _diagonal_compute(state: _DiagonalState, r1, r2):
    def residual(u, r):
        k1, k2 = _diagonal_apply(state, *u)
        return r[0] - k1, r[1] - k2

    return kkt.refine(
        lambda a, b: _diagonal_solve(state, a, b), residual, (r1, r2), _REFINE
    )


class ConeKKTSolver(lx.AbstractLinearSolver):
    """Solve with the Jacobian of `ConeProgram.residual` by block elimination.

    **Arguments:**

    - `cones`: the cones of the program, giving the block structure.
    - `cholesky`: with only zero and nonnegative cones, solve through a refined
        normal-equations Cholesky (the default) rather than LU.
    - `data`: `(P, A, s, y, mu)`: the program's symmetric `P`, its `A`, the
        solution's slack and dual, and the smoothing, from which the Jacobian's
        blocks are formed directly. `None`: they are read off the operator, at
        the cost of `n` products with it.
    """

    cones: Cones
    cholesky: bool = eqx.field(static=True, default=True)
    data: tuple[Array, Array, Array, Array, float] | None = None

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        struct = operator.in_structure()
        if not isinstance(struct, PrimalDual):
            raise TypeError("ConeKKTSolver needs an operator on `PrimalDual` states.")
        n, m = struct.x.shape[0], struct.y.shape[0]
        dtype = struct.x.dtype
        start, offset, size = _block_layout(self.cones)
        width = int(size.max(initial=1))

        def mv(dx, dy, ds):
            return operator.mv(PrimalDual(dx, dy, ds))

        zn, zm = jnp.zeros(n, dtype), jnp.zeros(m, dtype)
        if self.data is None:
            cols = jax.vmap(lambda e: mv(e, zm, zm))(jnp.eye(n, dtype=dtype))
            P, A = cols.x.T, cols.y.T
            comp_y = lambda v: mv(zn, v, zm).s  # noqa: E731
            comp_s = lambda v: mv(zn, zm, v).s  # noqa: E731
        else:
            # Differentiate the complementarity residual alone: a product of the
            # whole operator with a probe also multiplies `P` and `A` by zeros,
            # which XLA does not skip.
            P, A, s, y, mu = self.data
            cones = self.cones
            comp_y = lambda v: jax.jvp(  # noqa: E731
                lambda u: cones.complementarity(s, u, mu), (y,), (v,)
            )[1]
            comp_s = lambda v: jax.jvp(  # noqa: E731
                lambda u: cones.complementarity(u, y, mu), (s,), (v,)
            )[1]
        if width == 1:
            # Only one-row blocks: C_y and C_s are diagonal, read off one probe each.
            c_y = comp_y(jnp.ones_like(zm))
            c_s = comp_s(jnp.ones_like(zm))
            if self.cholesky:
                zero = self.cones.zero
                factor = _diagonal_init(P, A, c_y, c_s, zero)
                return _DiagonalState(factor, P, A, c_y, c_s, zero, False)
            K = jnp.block([[P, A.T], [-c_s[:, None] * A, jnp.diag(c_y)]])
            return _State(_factor(K), A, jnp.diag(c_s), False)
        # Comb j has a one at offset j of every block; the products' rows give
        # column (start + j) of each block.
        combs = jnp.asarray(offset[None, :] == np.arange(width)[:, None], dtype)
        C_y = jax.vmap(comp_y)(combs)
        C_s = jax.vmap(comp_s)(combs)
        rows = np.repeat(np.arange(m), width)
        js = np.tile(np.arange(width), m)
        valid = js < size[rows]
        rows, js = rows[valid], js[valid]
        dense_cols = start[rows] + js

        def dense(C):
            return jnp.zeros((m, m), dtype).at[rows, dense_cols].set(C[js, rows])

        C_y, C_s = dense(C_y), dense(C_s)
        K = jnp.block([[P, A.T], [-C_s @ A, C_y]])
        return _State(_factor(K), A, C_s, False)

    def compute(
        self,
        state: _State | _DiagonalState,
        vector: PyTree[Array],
        options: dict[str, Any],
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        del options
        r1, r2, r3 = vector.x, vector.y, vector.s
        if isinstance(state, _DiagonalState):
            A, c_s = state.A, state.c_s
            if state.transposed:
                u1, u3 = _diagonal_compute(state, r1 - A.T @ r3, r2)
                out = PrimalDual(u1, r3 - c_s * u3, u3)
            else:
                dx, dy = _diagonal_compute(state, r1, r3 - c_s * r2)
                out = PrimalDual(dx, dy, r2 - A @ dx)
            return out, lx.RESULTS.successful, {}
        A, C_s = state.A, state.C_s
        n = A.shape[1]
        if state.transposed:
            rhs = jnp.concatenate([r1 - A.T @ r3, r2])
            sol = _solve(state.lu, rhs, transposed=True)
            u1, u3 = sol[:n], sol[n:]
            out = PrimalDual(u1, r3 - C_s.T @ u3, u3)
        else:
            rhs = jnp.concatenate([r1, r3 - C_s @ r2])
            sol = _solve(state.lu, rhs, transposed=False)
            dx, dy = sol[:n], sol[n:]
            out = PrimalDual(dx, dy, r2 - A @ dx)
        return out, lx.RESULTS.successful, {}

    def transpose(self, state: _State | _DiagonalState, options: dict[str, Any]):
        flipped = not state.transposed
        return dataclasses.replace(state, transposed=flipped), options

    def conj(self, state: _State, options: dict[str, Any]):
        return state, options

    def assume_full_rank(self) -> bool:
        return True
