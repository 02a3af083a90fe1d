from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from ._adjoint import AbstractAdjoint
from ._backend import (
    AbstractBackend,
    backend_name,
    backends_supporting,
    check_options,
)
from ._condition import AbstractCondition
from ._misc import check_max_steps
from ._optimistix import is_optimistix_solver, OptimistixBackend
from ._solution import RESULTS, Solution


def _as_backend(backend: Any) -> AbstractBackend:
    if isinstance(backend, AbstractBackend):
        return backend
    if is_optimistix_solver(backend):
        return OptimistixBackend(backend)
    raise TypeError(
        "`backend` must be an Optimistix solver (e.g. `optimistix.Newton(rtol, atol)`) "
        f"or an `unimplicit.AbstractBackend`, not {type(backend).__name__}."
    )


def _check_pair(condition: AbstractCondition, backend: AbstractBackend) -> None:
    if backend.supports(condition):
        return
    able = backends_supporting(condition)
    hint = "; ".join(able) if able else "none of the library's own"
    raise ValueError(
        f"The backend {backend_name(backend)} cannot solve a "
        f"{type(condition).__name__} condition. Backends that can: {hint}."
    )


def _check_adjoint(condition: AbstractCondition, adjoint: Any) -> AbstractAdjoint:
    if adjoint is None:
        return condition.default_adjoint()
    if not isinstance(adjoint, AbstractAdjoint):
        hint = ""
        if isinstance(adjoint, diffrax.AbstractAdjoint):
            hint = (
                f" Wrap a Diffrax adjoint: `unimplicit.DiffraxAdjoint"
                f"({type(adjoint).__name__}())`."
            )
        raise TypeError(
            "`adjoint` must be an `unimplicit.AbstractAdjoint` (ImplicitAdjoint, "
            "UnrolledAdjoint, PhantomAdjoint, DiffraxAdjoint), not "
            f"{type(adjoint).__name__}.{hint}"
        )
    if not adjoint.supports(condition):
        raise TypeError(
            f"{type(adjoint).__name__} cannot differentiate a "
            f"{type(condition).__name__} condition; its default is "
            f"{type(condition.default_adjoint()).__name__}, and UnrolledAdjoint "
            "works with every condition."
        )
    return adjoint


def _inexact_to_array(x: Any) -> Any:
    # Python and NumPy floats in `args` become JAX arrays, so that they are traced
    # (and differentiated) like any other input instead of being baked in as
    # constants; ints and other leaves are left alone, as they may be static.
    if isinstance(x, float | complex) or (
        isinstance(x, np.ndarray | np.generic) and np.issubdtype(x.dtype, np.inexact)
    ):
        return jnp.asarray(x)
    return x


def _report_failure(result, residual, steps, max_steps):
    # Runs on the host with concrete values, so the message can name them.
    result = np.asarray(result)
    failed = result != RESULTS.successful._value
    if not failed.any():
        return
    index = np.argmax(failed.reshape(-1))
    code = int(result.reshape(-1)[index])
    # Residual and step count may be per sample or shared; NaN and -1 mean that the
    # backend did not report them.
    residual = float(np.broadcast_to(np.asarray(residual), result.shape).flat[index])
    steps = int(np.broadcast_to(np.asarray(steps), result.shape).flat[index])
    detail = []
    if not np.isnan(residual):
        detail.append(f"residual norm {residual:.3e}")
    if steps >= 0:
        detail.append(f"after {steps} steps (max_steps={max_steps})")
    where = ""
    if result.size > 1:
        where = (
            f" ({int(failed.sum())} of {result.size} samples failed; first: #{index})"
        )
    raise RuntimeError(
        f"unimplicit.solve did not succeed{where}: {', '.join(detail)}. "
        f"{RESULTS._index_to_message[code]} Pass `throw=False` to get the value "
        "and inspect `Solution.result` instead."
    )


@eqx.filter_custom_jvp
def _check(value, code, residual, steps, max_steps):
    # Like `eqx.error_if`: reduce over any `vmap` first, so that the host is called
    # only on failure, and call it through a *pure* callback whose output `value`
    # depends on. (An effectful `jax.debug.callback`, even in a branch not taken,
    # takes every call off `jax.jit`'s fast dispatch path.)
    failed = eqxi.unvmap_any(code != RESULTS.successful._value)

    def report(value):
        def host(value, code, residual, steps):
            _report_failure(code, residual, steps, max_steps)
            return value

        struct = jax.eval_shape(lambda: value)
        return jax.pure_callback(
            host, struct, value, code, residual, steps, vmap_method="broadcast_all"
        )

    return jax.lax.cond(failed, report, lambda v: v, value)


@_check.def_jvp
def _check_jvp(primals, tangents):
    return _check(*primals), tangents[0]


def _raise_if_failed(value, result, stats, max_steps):
    dynamic, static = eqx.partition(value, eqx.is_array)
    residual = stats.get("residual_norm")
    steps = stats.get("num_steps")
    residual = jnp.asarray(jnp.nan) if residual is None else residual
    steps = jnp.asarray(-1) if steps is None else steps
    checked = _check(dynamic, result._value, residual, steps, max_steps)
    return eqx.combine(checked, static)


def solve(
    condition: AbstractCondition,
    backend: Any,
    args: PyTree = None,
    *,
    y0: PyTree = None,
    adjoint: Any = None,
    max_steps: int = 256,
    throw: bool = True,
    options: dict[str, Any] | None = None,
) -> Solution:
    """Find the output `y` of an implicit layer and make it differentiable.

    **Arguments:**

    - `condition`: what `y` satisfies, e.g. [`unimplicit.FixedPoint`][] or
        [`unimplicit.Root`][].
    - `backend`: how to find `y`: any Optimistix root finder, fixed-point solver,
        least-squares solver or minimiser, or an [`unimplicit.AbstractBackend`][]
        such as [`unimplicit.Anderson`][]-like solvers or `unimplicit.Diffrax`.
    - `args`: the inputs of the condition (differentiated).
    - `y0`: the initial guess (or initial state of a flow).
    - `adjoint`: how to differentiate: an [`unimplicit.AbstractAdjoint`][]. `None`
        takes the condition's default: [`unimplicit.ImplicitAdjoint`][] for
        equilibria, [`unimplicit.DiffraxAdjoint`][] (checkpointed) for ODE/SDE
        flows. [`unimplicit.UnrolledAdjoint`][] works with every condition,
        [`unimplicit.PhantomAdjoint`][] with fixed points.
    - `max_steps`: a positive bound on the number of solver steps.
    - `throw`: if `True`, a failed solve raises an error naming the residual
        reached and the steps taken. If `False`, the value is returned and the
        failure is reported in `Solution.result` (per sample under `jax.vmap`).
    - `options`: run-time options for the backend; e.g. `{"trace": k}` records the
        residual norm of `y0` and the first `k - 1` iterates of an
        Optimistix-protocol solver. Each backend lists the keys it accepts
        (`option_names()`); an unknown key is an error.

    **Returns:**

    A [`unimplicit.Solution`][].
    """
    if not isinstance(condition, AbstractCondition):
        raise TypeError(
            "`condition` must be an unimplicit condition such as `FixedPoint(fn)` or "
            f"`Root(fn)`, not {type(condition).__name__}."
        )
    check_max_steps(max_steps)
    backend = _as_backend(backend)
    _check_pair(condition, backend)
    adjoint = _check_adjoint(condition, adjoint)
    options = check_options(backend, options)
    args = jtu.tree_map(_inexact_to_array, args)
    y0 = condition.init(y0, args)
    out = adjoint.apply(
        backend, condition, y0, args, max_steps=max_steps, options=options
    )
    value, result, aux = out.value, out.result, out.aux
    stats = {**out.stats, **condition.measure(value, args, out.residual_norm)}
    if throw:
        value = _raise_if_failed(value, result, stats, max_steps)
    return Solution(value=value, result=result, stats=stats, aux=aux)
