"""Training tools: Jacobian penalty, spectral normalisation, correction loss, radius."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import unimplicit as ui
from unimplicit import regularize as reg

from .helpers import contractive_matrix


N = 5


def _setup(key, norm=0.8):
    k1, k2 = jax.random.split(key)
    w = contractive_matrix(k1, N, norm)
    x = jax.random.normal(k2, (N,))

    def fn(z, args):
        w, x = args
        return jnp.tanh(w @ z + x)

    return fn, (w, x)


def test_hutchinson_estimates_frobenius_norm(getkey):
    fn, args = _setup(getkey())
    z = jnp.linspace(-1.0, 1.0, N)
    exact = jnp.sum(jax.jacobian(fn)(z, args) ** 2)
    estimate = reg.jacobian_frobenius(fn, z, args, getkey(), num_samples=4000)
    assert jnp.isclose(estimate, exact, rtol=0.05)
    # Differentiable in the parameters, with the exact gradient in expectation.
    grad = jax.grad(
        lambda a: reg.jacobian_frobenius(fn, z, a, getkey(), num_samples=4000)
    )
    exact_grad = jax.grad(lambda a: jnp.sum(jax.jacobian(fn)(z, a) ** 2))(args)
    g, e = grad(args)[0], exact_grad[0]
    assert jnp.linalg.norm(g - e) < 0.1 * jnp.linalg.norm(e)


def test_hutchinson_on_pytree_state(getkey):
    def fn(z, a):
        return {"u": a * z["v"], "v": jnp.sin(z["u"])}

    z = {"u": jnp.ones(2), "v": jnp.zeros(2)}
    est = reg.jacobian_frobenius(fn, z, 2.0, getkey(), num_samples=4000)
    # df/dz: du/dv = 2 I, dv/du = cos(1) I.
    assert jnp.isclose(est, 2 * (4 + jnp.cos(1.0) ** 2), rtol=0.05)


def test_spectral_radius_matches_eigenvalues(getkey):
    fn, args = _setup(getkey(), norm=0.9)
    z = ui.solve(
        ui.FixedPoint(fn), ui.Anderson(1e-10, 1e-10), args, y0=jnp.zeros(N)
    ).value
    exact = jnp.max(jnp.abs(jnp.linalg.eigvals(jax.jacobian(fn)(z, args))))
    estimate = reg.spectral_radius(fn, z, args, num_iters=400)
    assert jnp.isclose(estimate, exact, rtol=1e-2)
    # A rotation: complex dominant pair, where the plain power-iteration ratio
    # oscillates; the geometric mean still finds the radius.
    rot = 0.7 * jnp.array([[0.0, -1.0], [1.0, 0.0]])
    radius = reg.spectral_radius(lambda z, a: a @ z, jnp.ones(2), rot, num_iters=20)
    assert jnp.isclose(radius, 0.7)


def test_spectral_normalise_bounds_weights_and_keeps_the_rest(getkey):
    mlp = eqx.nn.MLP(3, 3, 8, 2, key=getkey())
    normed = reg.spectral_normalise(mlp, bound=0.5, num_iters=200)
    for layer, orig in zip(normed.layers, mlp.layers):
        assert jnp.linalg.norm(layer.weight, 2) <= 0.5 + 1e-6
        assert jnp.array_equal(layer.bias, orig.bias)
    # Already-small matrices are untouched.
    small = eqx.tree_at(lambda m: m.layers[0].weight, mlp, 0.01 * mlp.layers[0].weight)
    kept = reg.spectral_normalise(small, bound=0.5, where=lambda m: m.layers[0].weight)
    assert jnp.allclose(kept.layers[0].weight, small.layers[0].weight)
    # Only the selected matrices change.
    one = reg.spectral_normalise(
        mlp, bound=0.1, where=lambda m: [m.layers[1].weight], num_iters=200
    )
    assert jnp.array_equal(one.layers[0].weight, mlp.layers[0].weight)
    assert jnp.linalg.norm(one.layers[1].weight, 2) <= 0.1 + 1e-6


def test_spectral_normalise_makes_a_deq_cell_contractive(getkey):
    cell = eqx.nn.Linear(N, N, key=getkey())
    weight = 3.0 * cell.weight
    cell = eqx.tree_at(lambda c: c.weight, cell, weight)

    def fn(z, x, cell):
        return jnp.tanh(cell(z) + x)

    x = jax.random.normal(getkey(), (N,))
    normed = reg.spectral_normalise(cell, bound=0.9)
    z = ui.solve(
        ui.FixedPoint(lambda z, x: fn(z, x, normed)),
        ui.Anderson(1e-10, 1e-10),
        x,
        y0=jnp.zeros(N),
    ).value
    assert reg.spectral_radius(lambda z, x: fn(z, x, normed), z, x) < 0.9 + 1e-6

    # Gradients flow through the rescaling to the raw weights.
    def loss(c):
        return jnp.sum(reg.spectral_normalise(c, bound=0.9).weight ** 2)

    grad = eqx.filter_grad(loss)(cell)
    assert jnp.all(jnp.isfinite(grad.weight)) and jnp.any(grad.weight != 0)


def test_fixed_point_correction_loss(getkey):
    fn, args = _setup(getkey())
    y0 = jnp.zeros(N)
    states = reg.solver_trajectory(
        ui.Anderson(1e-10, 1e-10), fn, y0, args, num_steps=12, num_states=3
    )
    assert states.shape == (3, N)
    z_star = ui.solve(ui.FixedPoint(fn), ui.Anderson(1e-12, 1e-12), args, y0=y0).value
    assert jnp.allclose(states[-1], z_star, atol=1e-6)

    def task(z):
        return jnp.sum((z - 1.0) ** 2)

    loss = reg.fixed_point_correction(fn, states, args, task, decay=0.5)
    weights = jnp.array([0.25, 0.5, 1.0])
    manual = sum(w * task(fn(s, args)) for w, s in zip(weights, states)) / weights.sum()
    assert jnp.isclose(loss, manual)
    # Differentiable in the map's inputs (one step per state), not in the states.
    grad = jax.grad(lambda a: reg.fixed_point_correction(fn, states, a, task))(args)
    assert jnp.all(jnp.isfinite(grad[0])) and jnp.any(grad[0] != 0)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: reg.jacobian_frobenius(
                jnp.sin, jnp.ones(2), None, jax.random.PRNGKey(0), num_samples=0
            ),
            "num_samples",
        ),
        (
            lambda: reg.spectral_radius(jnp.sin, jnp.ones(2), None, num_iters=1),
            "num_iters",
        ),
        (lambda: reg.spectral_normalise(jnp.ones((2, 2)), bound=0.0), "bound"),
        (
            lambda: reg.spectral_normalise({"w": jnp.ones(3)}, where=lambda m: m["w"]),
            "two-dimensional",
        ),
        (
            lambda: reg.fixed_point_correction(
                jnp.sin, jnp.ones((2, 2)), None, jnp.sum, decay=1.5
            ),
            "decay",
        ),
        (
            lambda: reg.solver_trajectory(
                ui.Anderson(1e-6, 1e-6),
                jnp.sin,
                jnp.ones(2),
                None,
                num_steps=2,
                num_states=3,
            ),
            "num_states",
        ),
    ],
)
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
