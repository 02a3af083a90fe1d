"""The one iteration loop that drives every iterative solver in the library.

Optimistix-protocol solvers (ours and Optimistix's), the Neumann backward solve,
the interior point and the power iteration all run here: `init`, then `step` and
`terminate` until done, then `postprocess`.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, PyTree

from ._misc import tree_allfinite
from ._solution import RESULTS
from ._solver._common import AbstractSelfFreezingSolver


class Iterated(eqx.Module):
    """The outcome of [`iterate`][]: per sample under `jax.vmap`."""

    value: PyTree
    result: RESULTS
    num_steps: Array
    stats: dict[str, Any]
    aux: Any
    trace: Array | None


def _as_ours(result: Any) -> RESULTS:
    # Optimistix solvers speak `optimistix.RESULTS`; ours may speak ours already.
    return result if isinstance(result, RESULTS) else RESULTS.promote(result)


_OPTX_CODES = len(optx.RESULTS._name_to_item)


def _as_optimistix(result: RESULTS) -> optx.RESULTS:
    # For `postprocess`, which Optimistix types as taking its own results. Our
    # extra codes (after Optimistix's, see `RESULTS.promote`) have no counterpart
    # there and arrive as a generic failure; a solver that needs more reads its
    # own state.
    value = jnp.where(
        result._value < _OPTX_CODES,
        result._value,
        optx.RESULTS.nonlinear_divergence._value,
    )
    return eqx.tree_at(lambda r: r._value, optx.RESULTS.successful, value)


def iterate(
    solver: Any,
    fn: Callable | None,
    y0: PyTree,
    args: PyTree,
    *,
    max_steps: int,
    options: dict[str, Any] | None = None,
    differentiable: bool = False,
    checkpoints: int | None = None,
    tags: frozenset[object] = frozenset(),
    f_struct: PyTree | None = None,
    aux_struct: PyTree | None = None,
    trace_len: int = 0,
    trace_fn: Callable[[PyTree], Array] | None = None,
    check_finite: bool = True,
) -> Iterated:
    """Run `solver` (Optimistix's `init/step/terminate/postprocess` protocol).

    **Arguments:**

    - `solver`: anything with Optimistix's four solver methods.
    - `fn`, `y0`, `args`, `options`, `tags`: passed to those methods.
    - `max_steps`: the most `step` calls; stopping there is reported as
        `RESULTS.nonlinear_max_steps_reached`.
    - `differentiable`: `False` runs a `jax.lax.while_loop` (never differentiated);
        `True` a checkpointed loop that reverse-mode autodiff goes through, storing
        `checkpoints` iterates (`None`: Equinox's default).
    - `f_struct`, `aux_struct`: the output structures of `fn` given to `init`;
        computed from `fn` when not given.
    - `trace_len`, `trace_fn`: record `trace_fn(y)` for `y0` and the first
        `trace_len - 1` iterates.
    - `check_finite`: report `RESULTS.nonfinite` for non-finite inputs or iterates.

    Under `jax.vmap` each sample stops on its own: once finished, its iterate,
    solver state and statistics are frozen, and a sample's outcome equals its
    unbatched outcome (up to the rounding of batched arithmetic).
    """
    options = {} if options is None else options
    if f_struct is None and fn is not None:
        f_struct, aux_struct = jax.eval_shape(fn, y0, args)
    state = solver.init(fn, y0, args, options, f_struct, aux_struct, tags)
    dynamic_state, static_state = eqx.partition(state, eqx.is_array)
    if trace_len > 0:
        assert trace_fn is not None
        first = trace_fn(y0)
        trace = jnp.full((trace_len,), jnp.nan, first.dtype).at[0].set(first)
    else:
        trace = None

    # Under `vmap` a per-sample loop predicate makes JAX select between the old
    # and new carry, solver state included, for every sample at every step: that
    # freezes finished samples exactly. A self-freezing solver (one whose step
    # changes nothing once it has stopped) spares that copy of its state: the loop
    # then runs while any sample runs and freezes only the iterate and its own
    # bookkeeping.
    self_freezing = isinstance(solver, AbstractSelfFreezingSolver)

    def running(carry):
        _, step, _, done, result, _ = carry
        return jnp.invert(done) & (result == RESULTS.successful) & (step < max_steps)

    def cond_fun(carry):
        return eqxi.unvmap_any(running(carry)) if self_freezing else running(carry)

    def body_fun(carry):
        y, step, dynamic, done, result, trace = carry
        state = eqx.combine(static_state, dynamic)
        new_y, state, _ = solver.step(fn, y, args, options, state, tags)
        new_done, new_result = solver.terminate(fn, new_y, args, options, state, tags)
        new_result = _as_ours(new_result)
        if check_finite:
            new_result = RESULTS.where(
                tree_allfinite(new_y),
                new_result,
                RESULTS.nonfinite,  # pyright: ignore[reportArgumentType]
            )
        new_trace = trace
        if trace is not None:
            assert trace_fn is not None
            new_trace = trace.at[step + 1].set(trace_fn(new_y), mode="drop")
        dynamic, _ = eqx.partition(state, eqx.is_array)
        if not self_freezing:
            return new_y, step + 1, dynamic, new_done, new_result, new_trace
        active = running(carry)
        keep = lambda new, old: jnp.where(active, new, old)
        return (
            jtu.tree_map(keep, new_y, y),
            jnp.where(active, step + 1, step),
            dynamic,
            keep(new_done, done),
            RESULTS.where(active, new_result, result),
            None if trace is None else keep(new_trace, trace),
        )

    # As in Optimistix, a problem that is solved (or failed) at its initial state
    # takes no step.
    done, result = solver.terminate(fn, y0, args, options, state, tags)
    result = _as_ours(result)
    if check_finite:
        finite = tree_allfinite(eqx.filter((y0, args), eqx.is_inexact_array))
        result = RESULTS.where(finite, result, RESULTS.nonfinite)  # pyright: ignore[reportArgumentType]
    carry = (y0, jnp.array(0), dynamic_state, done, result, trace)
    if differentiable:
        final = eqxi.while_loop(
            cond_fun,
            body_fun,
            carry,
            max_steps=max_steps,
            kind="checkpointed",
            checkpoints=checkpoints,
        )
    else:
        final = jax.lax.while_loop(cond_fun, body_fun, carry)
    y, num_steps, dynamic, done, result, trace = final
    result = RESULTS.where(
        (result == RESULTS.successful) & jnp.invert(done),
        RESULTS.nonlinear_max_steps_reached,  # pyright: ignore[reportArgumentType]
        result,
    )
    state = eqx.combine(static_state, dynamic)
    y, aux, stats = solver.postprocess(
        fn, y, None, args, options, state, tags, _as_optimistix(result)
    )
    return Iterated(y, result, num_steps, dict(stats), aux, trace)
