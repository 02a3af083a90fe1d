"""Implicit-function-theorem gradients of FixedPoint and Root solves."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
import pytest

import unimplicit as ui

from .helpers import central_difference, contractive_matrix, relative_error


RTOL = 1e-6
TIGHT = 1e-13
FPI = optx.FixedPointIteration(rtol=TIGHT, atol=TIGHT)
NEWTON = optx.Newton(rtol=TIGHT, atol=TIGHT)
N = 3


class Cell(eqx.Module):
    """A PyTree-state cell: `z = {"a": ..., "b": ...}` coupled through tanh."""

    w: jax.Array
    u: jax.Array

    def __call__(self, z, x):
        a = jnp.tanh(self.w @ z["b"] + x)
        b = jnp.tanh(self.u @ z["a"] - 0.5 * x)
        return {"a": a, "b": b}


def _cell(key):
    k1, k2 = jax.random.split(key)
    return Cell(contractive_matrix(k1, N), contractive_matrix(k2, N))


def _z0():
    return {"a": jnp.zeros(N), "b": jnp.zeros(N)}


def _fixed_point_loss(cell, x, adjoint, backend):
    sol = ui.solve(
        ui.FixedPoint(cell), backend, x, y0=_z0(), adjoint=adjoint, max_steps=400
    )
    return jnp.sum(sol.value["a"] ** 2) + jnp.sum(jnp.sin(sol.value["b"]))


def _root_loss(w, x, adjoint, backend):
    # A closure over `w`: gradients must reach values the function closes over.
    fn = lambda y, a: y + 0.3 * jnp.tanh(w @ y) - a
    sol = ui.solve(ui.Root(fn), backend, x, y0=jnp.zeros(N), adjoint=adjoint)
    return jnp.sum(sol.value**3)


_grad_fp = eqx.filter_jit(eqx.filter_grad(_fixed_point_loss))
_grad_fp_x = jax.jit(jax.grad(_fixed_point_loss, argnums=1), static_argnums=(2, 3))
_grad_root = jax.jit(jax.grad(_root_loss, argnums=(0, 1)), static_argnums=(2, 3))


@pytest.mark.parametrize("backend", [FPI, NEWTON], ids=["fpi", "newton"])
def test_fixed_point_gradients_match_finite_differences(getkey, backend):
    cell = _cell(getkey())
    x = jax.random.normal(getkey(), (N,))
    adjoint = ui.ImplicitAdjoint()
    g_cell = _grad_fp(cell, x, adjoint, backend)
    g_x = _grad_fp_x(cell, x, adjoint, backend)
    fd_cell = central_difference(lambda c: _fixed_point_loss(c, x, adjoint, FPI), cell)
    fd_x = central_difference(lambda v: _fixed_point_loss(cell, v, adjoint, FPI), x)
    assert relative_error(g_cell, fd_cell) < RTOL
    assert relative_error(g_x, fd_x) < RTOL
    # ...and the gradient of the converged solve backpropagated through its steps.
    g_unrolled = _grad_fp(cell, x, ui.UnrolledAdjoint(), FPI)
    assert relative_error(g_cell, g_unrolled) < RTOL


def test_root_gradients_match_finite_differences_and_unrolled(getkey):
    w = contractive_matrix(getkey(), N, norm=1.0)
    x = jax.random.normal(getkey(), (N,))
    g_w, g_x = _grad_root(w, x, ui.ImplicitAdjoint(), NEWTON)
    fd_w = central_difference(lambda v: _root_loss(v, x, None, NEWTON), w)
    fd_x = central_difference(lambda v: _root_loss(w, v, None, NEWTON), x)
    assert relative_error(g_w, fd_w) < RTOL
    assert relative_error(g_x, fd_x) < RTOL
    u_w, u_x = _grad_root(w, x, ui.UnrolledAdjoint(), NEWTON)
    assert relative_error(g_w, u_w) < RTOL
    assert relative_error(g_x, u_x) < RTOL


def test_gradients_under_vmap_match_per_sample(getkey):
    cell = _cell(getkey())
    xs = jax.random.normal(getkey(), (2, N))
    adjoint = ui.ImplicitAdjoint()

    def batch_loss(c):
        return jnp.sum(jax.vmap(lambda v: _fixed_point_loss(c, v, adjoint, FPI))(xs))

    g_batch = eqx.filter_jit(eqx.filter_grad(batch_loss))(cell)
    g_each = [_grad_fp(cell, x, adjoint, FPI) for x in xs]
    g_sum = jax.tree_util.tree_map(lambda a, b: a + b, *g_each)
    assert relative_error(g_batch, g_sum) < 1e-10


def test_forward_mode_jvp_matches_reverse(getkey):
    cell = _cell(getkey())
    x = jax.random.normal(getkey(), (N,))
    t = jax.random.normal(getkey(), (N,))
    adjoint = ui.ImplicitAdjoint()
    f = lambda v: _fixed_point_loss(cell, v, adjoint, NEWTON)
    _, jvp = jax.jvp(f, (x,), (t,))
    g = _grad_fp_x(cell, x, adjoint, NEWTON)
    assert jnp.allclose(jvp, g @ t, rtol=1e-10)


def test_explicit_linear_solver(getkey):
    import lineax as lx

    cell = _cell(getkey())
    x = jax.random.normal(getkey(), (N,))
    g_lu = _grad_fp(cell, x, ui.ImplicitAdjoint(lx.LU()), FPI)
    g_gmres = _grad_fp(cell, x, ui.ImplicitAdjoint(), FPI)
    assert relative_error(g_lu, g_gmres) < 1e-8
