"""The one implicit-function-theorem rule shared by every equilibrium condition.

If `y*(θ)` solves `F(y, θ) = 0` and `∂F/∂y` is invertible there, then

    dy*/dθ = -(∂F/∂y)^{-1} ∂F/∂θ.

We attach that as a custom JVP to the forward solve. Reverse mode then comes for
free: JAX transposes the JVP, and Lineax transposes the linear solve, giving
`u^T (∂F/∂y) = -w^T` (for a fixed point, `u^T = w^T + u^T ∂f/∂y`). Nothing from the
forward iterations is kept: memory does not grow with the number of solver steps.
"""

import functools as ft
import inspect
import types
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PyTree


def implicit_solve(
    forward: Callable[[PyTree], tuple[PyTree, Any]],
    residual: Callable[[PyTree, PyTree], PyTree],
    inputs: PyTree,
    linear_solver: lx.AbstractLinearSolver
    | Callable[[PyTree, PyTree], lx.AbstractLinearSolver],
    tags: frozenset[object] = frozenset(),
) -> tuple[PyTree, Any]:
    """Run `forward` and differentiate its output by the implicit function theorem.

    **Arguments:**

    - `forward`: `inputs -> (y, extra)`. Never differentiated; `extra` (results,
        statistics) gets zero tangents.
    - `residual`: `(y, inputs) -> F`, with the structure of `y`, zero at `y`.
    - `inputs`: the PyTree differentiated through; its floating-point arrays get
        tangents.
    - `linear_solver`: the Lineax solver for `(∂F/∂y) v = -∂F/∂θ · t`, or a
        function `(y, inputs) -> solver` choosing one at the solution `y` (a
        module-level function: it is static). It must support `transpose` for
        reverse mode.
    - `tags`: Lineax tags describing `∂F/∂y` (e.g. `lineax.symmetric_tag`).

    `forward` and `residual` must not close over JAX arrays: pass those in `inputs`
    (see `AbstractEquilibrium.closure_convert`). As in Optimistix, this is
    enforced: each must be a module-level function, or a `functools.partial` of one
    whose bound arguments hold no arrays. (A closed-over tracer of an outer
    `jax.jit` would otherwise escape under `jax.grad`.)

    **Returns:**

    `forward(inputs)`, with tangents attached to `y`.
    """
    _assert_closes_over_no_arrays(forward, "forward")
    _assert_closes_over_no_arrays(residual, "residual")
    return _implicit(forward, residual, inputs, linear_solver, tags)


def _assert_closes_over_no_arrays(fn: Any, name: str) -> None:
    bound: list[Any] = []
    if isinstance(fn, ft.partial):
        bound = [fn.args, fn.keywords]
        fn = fn.func
    # (Decorators such as jaxtyping's runtime checks close over the function they
    # wrap, not over arrays: look through them.)
    fn = inspect.unwrap(fn)
    ok = isinstance(fn, types.FunctionType) and fn.__closure__ is None
    ok = ok and not any(isinstance(x, jax.Array) for x in jtu.tree_leaves(bound))
    if not ok:
        raise AssertionError(
            f"implicit_solve: `{name}` must be a module-level function (or a "
            "functools.partial of one binding no arrays); pass the arrays it uses "
            "through `inputs`."
        )


@eqx.filter_custom_jvp
def _implicit(forward, residual, inputs, linear_solver, tags):
    del residual, linear_solver, tags
    return forward(inputs)


@_implicit.def_jvp
def _implicit_jvp(primals, tangents):
    forward, residual, inputs, linear_solver, tags = primals
    # Under an eager `jax.jvp` of a Python float, the primal of the input arrives
    # as that float (and the tangent may be one too): make every input that has
    # a tangent an array again, so that it is seen as differentiable below.
    inputs = jtu.tree_map(
        lambda p, t: p if t is None else jnp.asarray(p),
        inputs,
        tangents[2],
        is_leaf=lambda x: x is None,
    )
    y, extra = forward(inputs)
    diff_inputs, static_inputs = eqx.partition(inputs, eqx.is_inexact_array)
    t_inputs = jtu.tree_map(
        lambda p, t: (
            None
            if p is None
            else (jnp.zeros_like(p) if t is None else jnp.asarray(t, p.dtype))
        ),
        diff_inputs,
        tangents[2],
        is_leaf=lambda x: x is None,
    )
    t_inputs = eqx.filter(t_inputs, eqx.is_inexact_array)

    def residual_of_inputs(d):
        return residual(y, eqx.combine(d, static_inputs))

    _, t_residual = jax.jvp(residual_of_inputs, (diff_inputs,), (t_inputs,))
    operator = lx.FunctionLinearOperator(
        jax.linearize(lambda z: residual(z, inputs), y)[1],
        jax.eval_shape(lambda: y),
        tags=tags,
    )
    rhs = jtu.tree_map(jnp.negative, t_residual)
    if not isinstance(linear_solver, lx.AbstractLinearSolver):
        linear_solver = linear_solver(y, inputs)
    t_y = lx.linear_solve(operator, rhs, linear_solver, throw=True).value
    t_extra = jtu.tree_map(lambda _: None, extra)
    return (y, extra), (t_y, t_extra)
