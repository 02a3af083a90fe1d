from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from ._common import (
    AbstractSelfFreezingSolver,
    best_iterate,
    check_tolerances,
    is_concrete,
    stop_and_result,
    track_best,
)


def _cholesky_solve(a: Array, b: Array, eps: float) -> tuple[Array, Array]:
    """Solve `a x = b` for a small symmetric positive definite `a`, fully unrolled.

    The history is a handful of vectors, so the system is at most ~10x10. Unrolling it
    into scalar arithmetic lets XLA fuse the whole solve into a couple of elementwise
    kernels under `vmap`; a batched LAPACK call costs more than the cell evaluation it
    accompanies on CPU. Returns the solution and whether every pivot was healthy
    (relative to the largest diagonal entry), so the caller can fall back instead of
    trusting a near-singular factorisation.
    """
    m = a.shape[0]
    floor = eps * jnp.max(jnp.diagonal(a))
    ok = jnp.array(True)
    low: list[list[Any]] = [[None] * m for _ in range(m)]
    for j in range(m):
        pivot = a[j, j]
        for k in range(j):
            pivot = pivot - low[j][k] * low[j][k]
        ok = ok & (pivot > floor)
        diag = jnp.sqrt(jnp.maximum(pivot, floor))
        low[j][j] = diag
        for i in range(j + 1, m):
            off = a[i, j]
            for k in range(j):
                off = off - low[i][k] * low[j][k]
            low[i][j] = off / diag
    fwd: list[Any] = []
    for i in range(m):
        acc = b[i]
        for k in range(i):
            acc = acc - low[i][k] * fwd[k]
        fwd.append(acc / low[i][i])
    out: list[Any] = [None] * m
    for i in reversed(range(m)):
        acc = fwd[i]
        for k in range(i + 1, m):
            acc = acc - low[k][i] * out[k]
        out[i] = acc / low[i][i]
    return jnp.stack(out), ok


def mixing_weights(
    gram: Float[Array, "m m"],
    valid: Bool[Array, " m"],
    latest: Int[Array, ""],
    ridge: float,
) -> Float[Array, " m"]:
    """Anderson mixing weights from the Gram matrix of the stored residuals.

    Solves $\\min_\\alpha \\|G^T \\alpha\\|^2 + \\lambda \\sum_i \\|g_i\\|^2 \\alpha_i^2$ subject to
    $\\sum_i \\alpha_i = 1$, over the valid history slots only: the weights are
    $w / 1^T w$ with $(G G^T + \\lambda D) w = 1$, $D$ the diagonal of $G G^T$: the
    ridge is relative to each residual's squared norm. The system is solved after
    scaling it to unit diagonal, so residuals that differ by orders of magnitude (as
    they do late in a fast solve) neither fail the pivot test nor lose their weight
    to the ridge. Falls back to the plain step (all weight on the latest slot) when
    the scaled system is ill-conditioned (nearly collinear residuals) or non-finite.
    """
    m = gram.shape[0]
    dtype = gram.dtype
    both = valid[:, None] & valid[None, :]
    # Jacobi scaling: the residuals in the history shrink by orders of magnitude, and
    # relative to the largest one the newest would fail the pivot test (their Gram
    # entries span the square of that range). Scaled to unit diagonal, the system's
    # conditioning reflects only how close to collinear the residuals are.
    diag = jnp.where(valid, jnp.diagonal(gram), 1)
    inv = jnp.where(
        diag > 0, jax.lax.rsqrt(jnp.maximum(diag, jnp.finfo(dtype).tiny)), 0
    )
    eye = jnp.eye(m, dtype=dtype)
    # Invalid slots get an identity row and a zero right-hand side, so their weight is
    # exactly zero and the system stays fixed-size.
    scaled = gram * inv[:, None] * inv[None, :]
    system = jnp.where(both, scaled, 0) + eye * jnp.where(valid, ridge, 1)[None, :]
    rhs = jnp.where(valid, inv, 0)
    v, ok = _cholesky_solve(system, rhs, 10 * float(jnp.finfo(dtype).eps))
    w = v * inv
    total = jnp.sum(w)
    alpha = w / jnp.where(total == 0, 1, total)
    ok = ok & (total > 0) & jnp.all(jnp.isfinite(alpha))
    plain = (jnp.arange(m) == latest).astype(dtype)
    return jnp.where(ok, alpha, plain)


class _AndersonState(eqx.Module):
    f_hist: Array
    g_hist: Array
    gram: Array
    count: Array
    best_y: Array
    best_error: Array
    error: Array
    diverged: Array
    nonfinite: Array


class Anderson(AbstractSelfFreezingSolver, optx.AbstractFixedPointSolver):
    """Anderson acceleration for fixed-point problems $y = f(y)$.

    Keeps the last `history` evaluations $f(y_i)$ and residuals $g_i = f(y_i) - y_i$
    in a fixed-size ring buffer and proposes
    $y_{k+1} = \\sum_i \\alpha_i (f(y_i) - (1 - \\beta) g_i)$, with the weights
    $\\alpha$ minimising the ridge-regularised norm of $\\sum_i \\alpha_i g_i$ subject
    to $\\sum_i \\alpha_i = 1$ (Walker & Ni, 2011). The Gram matrix $G G^T$ is kept up
    to date with one new row per step, so the bookkeeping costs $O(m n)$ per step on
    top of the one evaluation of $f$. When the small solve is ill-conditioned it takes
    a plain (damped) fixed-point step instead.

    The returned value is the iterate that met the tolerance or else the one with the
    smallest residual 2-norm `||f(y) - y||_2` seen (the Gram matrix's diagonal: no
    extra pass over the state). If that residual grows past `divergence_ratio` times
    the smallest one, the solve stops with `RESULTS.nonlinear_divergence`; if it
    becomes non-finite, with `RESULTS.nonfinite`; either way it still returns that
    best iterate. Convergence is declared as for `optimistix.FixedPointIteration`:
    when `norm((f(y) - y) / (atol + rtol * |f(y)|)) < 1`.

    Works with `optimistix.fixed_point`, with `unimplicit.solve` on a `FixedPoint`
    condition, and with PyTree-valued states (raveled internally).
    """

    rtol: float
    atol: float
    history: int = eqx.field(static=True, default=5)
    mixing: float = 1.0
    ridge: float = 1e-4
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    divergence_ratio: float = 1e4

    def __check_init__(self):
        if not isinstance(self.history, int) or self.history < 1:
            raise ValueError(
                f"Anderson(history=...) must be a positive int, got {self.history!r}."
            )
        if is_concrete(self.mixing) and not 0 < self.mixing <= 1:
            raise ValueError(
                f"Anderson(mixing=...) must lie in (0, 1], got {self.mixing!r}."
            )
        if is_concrete(self.ridge) and self.ridge < 0:
            raise ValueError(
                f"Anderson(ridge=...) must be non-negative, got {self.ridge!r}."
            )
        check_tolerances("Anderson", self.rtol, self.atol, self.divergence_ratio)

    def _error(self, g: Array, flat_f: Array, unravel: Callable, dtype) -> Array:
        """The scaled error `norm(g / (atol + rtol |f|))`; only `error < 1` is used."""
        if self.norm is optx.max_norm:
            # For the max norm, `error < 1` is `|g_i| < atol + rtol |f_i|` for every
            # i (NaN fails both). Tested without the divide, as one elementwise
            # comparison and a boolean reduction: XLA's CPU backend runs the scaled
            # max as a slow float reduction (a third of a tanh cell's evaluation at
            # d = 256). The value then only says which side of one it is on.
            with jax.numpy_dtype_promotion("standard"):
                ok = jnp.all(jnp.abs(g) < self.atol + self.rtol * jnp.abs(flat_f))
            return jnp.where(ok, 0, jnp.inf).astype(dtype)
        with jax.numpy_dtype_promotion("standard"):
            scaled = g / (self.atol + self.rtol * jnp.abs(flat_f))
            return jnp.asarray(self.norm(unravel(scaled)), dtype)

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _AndersonState:
        del fn, args, options, f_struct, aux_struct, tags
        flat, _ = jfu.ravel_pytree(y)
        m, n = self.history, flat.size
        zeros = jnp.zeros((m, n), flat.dtype)
        error_dtype = jnp.finfo(flat.dtype).dtype
        inf = jnp.array(jnp.inf, error_dtype)
        return _AndersonState(
            f_hist=zeros,
            g_hist=zeros,
            gram=jnp.zeros((m, m), flat.dtype),
            count=jnp.array(0),
            best_y=flat,
            best_error=inf,
            error=inf,
            diverged=jnp.array(False),
            nonfinite=jnp.array(False),
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], _AndersonState, Any]:
        del options, tags
        flat_y, unravel = jfu.ravel_pytree(y)
        f_y, aux = fn(y, args)
        flat_f, _ = jfu.ravel_pytree(f_y)
        g = flat_f - flat_y
        error = self._error(g, flat_f, unravel, state.error.dtype)

        m = self.history
        # Once its own test holds, the solver keeps its iterate and everything its
        # result depends on (best iterate and residual, errors, flags), so that a
        # sample that finished under `vmap` while others run is frozen at O(n)
        # cost: `iterate` then need not copy every sample's history each step.
        # The history, its Gram matrix and the count of a stopped sample are
        # scratch, never read again for its result: keeping the buffers would
        # copy them, and a per-sample count would batch the small solve (the count
        # is unbatched under `vmap`, as every sample starts together: 1.9x the
        # bare cell's time per step instead of 1.2x at d=256, batch 128). So the
        # slot is an unbatched index: an in-place update.
        live = jnp.invert(self._stopped(state))
        count = eqxi.unvmap_max(state.count)
        slot = count % m
        keep = lambda new, old: jnp.where(live, new, old)
        f_hist = jax.lax.dynamic_update_index_in_dim(state.f_hist, flat_f, slot, 0)
        g_hist = jax.lax.dynamic_update_index_in_dim(state.g_hist, g, slot, 0)
        row = g_hist @ g
        onehot = jnp.arange(m) == slot
        gram = jnp.where(onehot[:, None], row[None, :], state.gram)
        gram = jnp.where(onehot[None, :], row[:, None], gram)
        valid = jnp.arange(m) <= state.count
        alpha = mixing_weights(gram, valid, slot, self.ridge)

        new_flat = alpha @ f_hist
        if self.mixing != 1:
            new_flat = new_flat - (1 - self.mixing) * (alpha @ g_hist)
        new_flat = keep(new_flat, flat_y)

        # The squared 2-norm of the residual is the new diagonal entry of the Gram
        # matrix: judging the best iterate by it costs no extra pass over `g`.
        size = jnp.sqrt(jnp.maximum(row[slot], 0)).astype(state.best_error.dtype)
        best_y, best_error, diverged = track_best(
            flat_y,
            size,
            error < 1,
            state.best_y,
            state.best_error,
            self.divergence_ratio,
        )
        # A non-finite residual makes the next (plain-step) iterate non-finite:
        # reported as such, also where Anderson runs outside `unimplicit.solve`.
        nonfinite = jnp.invert(jnp.isfinite(size))
        new_state = _AndersonState(
            f_hist=f_hist,
            g_hist=g_hist,
            gram=gram,
            count=state.count + 1,
            best_y=keep(best_y, state.best_y),
            best_error=keep(best_error, state.best_error),
            error=keep(error, state.error),
            diverged=keep(diverged, state.diverged),
            nonfinite=keep(nonfinite, state.nonfinite),
        )
        return unravel(new_flat), new_state, aux

    def _stopped(self, state: _AndersonState) -> Bool[Array, ""]:
        return stop_and_result(state.error, state.diverged, state.nonfinite)[0]

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return stop_and_result(state.error, state.diverged, state.nonfinite)

    def postprocess(
        self,
        fn: Callable,
        y: PyTree[Array],
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, args, options, tags, result
        # The 2-norm of the best iterate's residual, already evaluated: reported so
        # that `unimplicit.solve` need not evaluate the map again for its stats. (It
        # is infinite only if no step was taken.)
        stats = {"residual_norm": state.best_error}
        return best_iterate(y, state.best_y), aux, stats


Anderson.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance: stop once `norm((f(y) - y) / (atol + rtol * |f(y)|))`
    is below one.
- `atol`: absolute tolerance, as above.
- `history`: how many past evaluations are mixed (the ring-buffer size `m`). Memory
    is `2 m n + m^2` numbers for a state of size `n`, whatever `max_steps` is.
- `mixing`: the damping `beta` in `(0, 1]`; `1` mixes the evaluations `f(y_i)`
    undamped.
- `ridge`: Tikhonov regularisation of the least-squares problem for the weights,
    relative to each stored residual's squared norm.
- `norm`: the norm in the convergence test, `optimistix.max_norm` by default.
- `divergence_ratio`: stop with `RESULTS.nonlinear_divergence` once the residual
    2-norm exceeds this multiple of the smallest one seen.
"""
