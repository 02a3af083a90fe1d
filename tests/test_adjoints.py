"""Every adjoint against central finite differences (float64), on Anderson solves."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import pytest

import unimplicit as ui

from .helpers import central_difference, contractive_matrix


N = 3
FD_RTOL = 1e-6
FORWARD = ui.Anderson(rtol=1e-13, atol=1e-13)


class Cell(eqx.Module):
    weight: jax.Array
    bias: jax.Array

    def __call__(self, z, x):
        return jnp.tanh(self.weight @ z + x + self.bias)


def _cell(key, norm=0.8):
    k1, k2 = jax.random.split(key)
    return Cell(contractive_matrix(k1, N, norm), 0.3 * jax.random.normal(k2, (N,)))


def _loss(params, x, adjoint):
    sol = ui.solve(ui.FixedPoint(params), FORWARD, x, y0=jnp.zeros(N), adjoint=adjoint)
    return jnp.sum(jnp.sin(sol.value) * jnp.arange(1.0, N + 1))


_grad = eqx.filter_jit(jax.grad(_loss))
_ADJOINTS = {
    "gmres": ui.ImplicitAdjoint(lx.GMRES(rtol=1e-12, atol=1e-12)),
    "bicgstab": ui.ImplicitAdjoint(lx.BiCGStab(rtol=1e-12, atol=1e-12)),
    "neumann": ui.ImplicitAdjoint(ui.NeumannSolver(rtol=1e-13, atol=1e-13)),
    "neumann_anderson": ui.ImplicitAdjoint(
        ui.NeumannSolver(rtol=1e-13, atol=1e-13, history=3)
    ),
    "unrolled": ui.UnrolledAdjoint(),
}


@pytest.fixture(scope="module")
def problem():
    key = jax.random.PRNGKey(1)
    params = _cell(key)
    x = jnp.array([0.5, -0.2, 0.1])
    exact = central_difference(lambda p: _loss(p, x, ui.ImplicitAdjoint()), params)
    return params, x, exact


@pytest.mark.parametrize("name", sorted(_ADJOINTS))
def test_adjoint_matches_finite_differences(problem, name):
    params, x, exact = problem
    grad = _grad(params, x, _ADJOINTS[name])
    for g, e in zip(jax.tree.leaves(grad), jax.tree.leaves(exact)):
        assert jnp.allclose(g, e, rtol=FD_RTOL, atol=1e-9), name


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("steps, damping", [(1, 1.0), (5, 0.8)])
def test_phantom_gradient_is_aligned_with_exact(problem, steps, damping):
    params, x, exact = problem
    grad = _grad(params, x, ui.PhantomAdjoint(steps=steps, damping=damping))
    a, b = _flat(grad), _flat(exact)
    cosine = a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    assert cosine >= 0.9, cosine


def test_neumann_backward_under_vmap_matches_per_sample(problem):
    params, _, _ = problem
    xs = jnp.array([[0.5, -0.2, 0.1], [0.0, 1.0, -1.0]])
    adjoint = _ADJOINTS["neumann_anderson"]

    def batch_loss(p):
        return jnp.sum(jax.vmap(lambda x: _loss(p, x, adjoint))(xs))

    batched = eqx.filter_jit(jax.grad(batch_loss))(params)
    single = [_grad(params, x, adjoint) for x in xs]
    total = jax.tree.map(lambda a, b: a + b, *single)
    for g, e in zip(jax.tree.leaves(batched), jax.tree.leaves(total)):
        assert jnp.allclose(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("linear_solver", [None, ui.NeumannSolver(1e-10, 1e-10)])
def test_singular_backward_system_raises_instead_of_nan(linear_solver):
    # f(z, a) = z - z^3 + a has the fixed point z = 0 at a = 0, where df/dz = 1:
    # I - df/dz is singular, so no gradient exists.
    def fn(z, a):
        return z - z**3 + a

    def loss(a):
        sol = ui.solve(
            ui.FixedPoint(fn),
            FORWARD,
            a,
            y0=jnp.zeros(2),
            adjoint=ui.ImplicitAdjoint(linear_solver),
        )
        return jnp.sum(sol.value)

    with pytest.raises(Exception, match="linear solve|solver steps|breakdown"):
        jax.block_until_ready(jax.grad(loss)(jnp.zeros(2)))
