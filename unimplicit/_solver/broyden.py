import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, PyTree, Scalar

from ._common import (
    AbstractSelfFreezingSolver,
    best_iterate,
    check_tolerances,
    stop_and_result,
    track_best,
)


class _BroydenState(eqx.Module):
    u_hist: Array
    v_hist: Array
    prev_y: Array
    prev_g: Array
    count: Array
    best_y: Array
    best_error: Array
    error: Array
    diverged: Array


class Broyden(AbstractSelfFreezingSolver, optx.AbstractRootFinder):
    """Limited-memory "good" Broyden method for root finding, $g(y) = 0$.

    Keeps an approximation of the inverse Jacobian of $g$ as $-I + U^T V$, where
    the rows of $U$ and $V$ are rank-one updates held in a fixed-size buffer of
    `memory` slots: memory is `2 * memory * n` numbers whatever `max_steps` is. When
    the buffer is full the approximation restarts from $-I$ (overwriting only the
    oldest update instead breaks the secant conditions of the others and can make
    the iteration blow up). The initial $-I$ is the inverse Jacobian of $g(z) = f(z) - z$ for a map $f$
    with small derivative, which is how deep equilibrium models use it (Bai, Kolter
    & Koltun, 2019): on a `FixedPoint` condition the first step is a plain
    fixed-point step. Each step costs one evaluation of $g$.

    The returned value is the iterate that met the tolerance or else the one with the
    smallest residual `norm(g(y))` seen. If that residual grows past
    `divergence_ratio` times the smallest one, or becomes non-finite, the solve stops
    with `RESULTS.nonlinear_divergence` and still returns that best iterate.
    Convergence is declared when `norm(g(y) / (atol + rtol * |y|)) < 1`.

    Works with `optimistix.root_find`, `optimistix.fixed_point` (which finds a root
    of `f(y) - y`), and `unimplicit.solve` on `Root` and `FixedPoint` conditions, with
    PyTree-valued states (raveled internally).
    """

    rtol: float
    atol: float
    memory: int = eqx.field(static=True, default=10)
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    divergence_ratio: float = 1e4

    def __check_init__(self):
        if not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(
                f"Broyden(memory=...) must be a positive int, got {self.memory!r}."
            )
        check_tolerances("Broyden", self.rtol, self.atol, self.divergence_ratio)

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _BroydenState:
        del fn, args, options, aux_struct, tags
        flat, _ = jfu.ravel_pytree(y)
        f_size = sum(math.prod(x.shape) for x in jtu.tree_leaves(f_struct))
        if f_size != flat.size:
            raise ValueError(
                "Broyden needs a square system: the residual has "
                f"{f_size} entries but the state has {flat.size}."
            )
        zeros = jnp.zeros((self.memory, flat.size), flat.dtype)
        inf = jnp.array(jnp.inf, jnp.finfo(flat.dtype).dtype)
        return _BroydenState(
            u_hist=zeros,
            v_hist=zeros,
            prev_y=flat,
            prev_g=jnp.zeros_like(flat),
            count=jnp.array(0),
            best_y=flat,
            best_error=inf,
            error=inf,
            diverged=jnp.array(False),
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _BroydenState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], _BroydenState, Any]:
        del options, tags
        flat_y, unravel = jfu.ravel_pytree(y)
        g_tree, aux = fn(y, args)
        g, _ = jfu.ravel_pytree(g_tree)
        with jax.numpy_dtype_promotion("standard"):
            scaled = g / (self.atol + self.rtol * jnp.abs(flat_y))
            error = jnp.asarray(self.norm(unravel(scaled)), state.error.dtype)
        # Once its own test holds the solver keeps its iterate and what its result
        # depends on (best iterate, errors), so that a finished sample is frozen
        # under `vmap` at O(n) cost (see `AbstractSelfFreezingSolver`); its
        # memory and count are scratch from then on. Samples share an unbatched
        # step count, so an unbatched slot makes this an in-place update.
        live_sample = jnp.invert(stop_and_result(state.error, state.diverged)[0])
        keep = lambda new, old: jnp.where(live_sample, new, old)
        slot = eqxi.unvmap_max(state.count) % self.memory
        # When the buffer is full, restart from H = -I rather than overwrite the
        # oldest update: dropping one update breaks the secant conditions the later
        # ones were built on, and the approximation can blow up. Rows from before
        # the restart (at and after `slot`) are masked out of every product rather
        # than zeroed, which would copy the buffers.
        live = (jnp.arange(self.memory) < slot).astype(g.dtype)
        u_hist, v_hist = state.u_hist, state.v_hist

        # Good Broyden update of the inverse Jacobian H = -I + U^T V so that
        # H dg = dy:  H += (dy - H dg)(dy^T H) / (dy^T H dg). The products are
        # grouped so that each buffer is read twice per step.
        dy = flat_y - state.prev_y
        dg = g - state.prev_g
        v_dg, v_g = (v_hist @ jnp.stack([dg, g], axis=-1)).T * live[None, :]
        u_v_dg, u_v_g = jnp.stack([v_dg, v_g]) @ u_hist
        h_dg = -dg + u_v_dg
        new_v = -dy + ((u_hist @ dy) * live) @ v_hist
        denom = new_v @ dg
        new_u = (dy - h_dg) / jnp.where(denom == 0, 1, denom)
        scale = jnp.linalg.norm(new_v) * jnp.linalg.norm(dg)
        eps = jnp.finfo(g.dtype).eps
        usable = (
            (state.count > 0)
            & (jnp.abs(denom) > eps * scale)
            & jnp.all(jnp.isfinite(new_u))
            & jnp.all(jnp.isfinite(new_v))
        )
        new_u = jnp.where(usable, new_u, 0)
        new_v = jnp.where(usable, new_v, 0)
        u_hist = jax.lax.dynamic_update_index_in_dim(u_hist, new_u, slot, 0)
        v_hist = jax.lax.dynamic_update_index_in_dim(v_hist, new_v, slot, 0)

        # Newton-like step with the updated H: y - H g = y + g - U^T (V g).
        new_y = flat_y + g - u_v_g - new_u * (new_v @ g)
        new_y = jnp.where(jnp.all(jnp.isfinite(new_y)), new_y, flat_y + g)

        size = jnp.asarray(self.norm(g_tree), state.best_error.dtype)
        best_y, best_error, diverged = track_best(
            flat_y,
            size,
            error < 1,
            state.best_y,
            state.best_error,
            self.divergence_ratio,
        )
        new_state = _BroydenState(
            u_hist=u_hist,
            v_hist=v_hist,
            prev_y=keep(flat_y, state.prev_y),
            prev_g=keep(g, state.prev_g),
            count=state.count + 1,
            best_y=keep(best_y, state.best_y),
            best_error=keep(best_error, state.best_error),
            error=keep(error, state.error),
            diverged=keep(diverged, state.diverged),
        )
        return unravel(keep(new_y, flat_y)), new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _BroydenState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return stop_and_result(state.error, state.diverged)

    def postprocess(
        self,
        fn: Callable,
        y: PyTree[Array],
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _BroydenState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, args, options, tags, result
        return best_iterate(y, state.best_y), aux, {}


Broyden.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance: stop once `norm(g(y) / (atol + rtol * |y|))` is below
    one.
- `atol`: absolute tolerance, as above.
- `memory`: how many rank-one updates of the inverse Jacobian are kept before the
    approximation restarts from `-I`.
- `norm`: the norm in the convergence test, `optimistix.max_norm` by default.
- `divergence_ratio`: stop with `RESULTS.nonlinear_divergence` once the residual
    exceeds this multiple of the smallest residual seen.
"""
