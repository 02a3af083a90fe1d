"""The seed talk's proof: an explicit 3-layer network is a weight-tied fixed point."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

import unimplicit as ui

from .helpers import relative_error


D_IN, D1, D2, D3 = 3, 4, 5, 2
EXACT = optx.FixedPointIteration(rtol=1e-14, atol=1e-14)


class ThreeLayers(eqx.Module):
    """f(x; [z1, z2, z3]) = [f1(x), f2(z1), f3(z2)] with ordinary dense layers."""

    f1: eqx.nn.Linear
    f2: eqx.nn.Linear
    f3: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.f1 = eqx.nn.Linear(D_IN, D1, key=k1)
        self.f2 = eqx.nn.Linear(D1, D2, key=k2)
        self.f3 = eqx.nn.Linear(D2, D3, key=k3)

    def explicit(self, x):
        return self.f3(jnp.tanh(self.f2(jnp.tanh(self.f1(x)))))

    def __call__(self, z, x):
        z1, z2, _ = z
        return (jnp.tanh(self.f1(x)), jnp.tanh(self.f2(z1)), self.f3(z2))


def _zeros(dtype=jnp.float64):
    return (jnp.zeros(D1, dtype), jnp.zeros(D2, dtype), jnp.zeros(D3, dtype))


def test_stacked_map_reaches_its_fixed_point_in_three_iterations(getkey):
    net = ThreeLayers(getkey())
    x = jax.random.normal(getkey(), (D_IN,))
    iterates = [_zeros()]
    for _ in range(4):
        iterates.append(net(iterates[-1], x))
    residual = [ui.FixedPoint(net).residual(z, x) for z in iterates]
    norms = [max(float(jnp.max(jnp.abs(r))) for r in res) for res in residual]
    assert norms[2] > 1e-3  # two applications are not enough ...
    assert norms[3] == 0.0  # ... three reach the fixed point exactly.
    assert jnp.array_equal(iterates[3][2], net.explicit(x))

    # The solver sees the same: its residual trace hits zero at iteration 3.
    deq = ui.DEQ(net, backend=EXACT, state=_zeros())
    sol = deq.solve(x, options={"trace": 6})
    trace = sol.stats["residual_trace"]
    assert trace[2] > 1e-3 and trace[3] == 0.0
    assert int(sol.stats["num_steps"]) == 4  # three to arrive, one to confirm.


def _explicit_loss(net, x):
    return jnp.sum(jnp.sin(net.explicit(x)))


def _deq_loss(net, x, adjoint):
    deq = ui.DEQ(net, backend=EXACT, adjoint=adjoint, state=_zeros())
    return jnp.sum(jnp.sin(deq(x)[2]))


def test_deq_matches_explicit_network_value_and_gradients(getkey):
    net = ThreeLayers(getkey())
    x = jax.random.normal(getkey(), (D_IN,))
    deq = ui.DEQ(net, backend=EXACT, state=_zeros())
    assert jnp.allclose(deq(x)[2], net.explicit(x), rtol=0, atol=1e-14)

    grad = eqx.filter_jit(eqx.filter_grad(_explicit_loss))
    g_net = grad(net, x)
    g_x = jax.grad(_explicit_loss, argnums=1)(net, x)
    for adjoint in (ui.ImplicitAdjoint(), ui.UnrolledAdjoint()):
        d_net = eqx.filter_jit(eqx.filter_grad(_deq_loss))(net, x, adjoint)
        d_x = jax.jit(jax.grad(_deq_loss, argnums=1), static_argnums=2)(net, x, adjoint)
        assert relative_error(d_net, g_net) < 1e-10
        assert relative_error(d_x, g_x) < 1e-10


def test_deq_batched_with_vmap_and_default_backend(getkey):
    net = ThreeLayers(getkey())
    xs = jax.random.normal(getkey(), (4, D_IN))
    deq = ui.DEQ(net, state=_zeros())
    out = eqx.filter_jit(lambda d, v: jax.vmap(d)(v))(deq, xs)
    assert out[2].shape == (4, D3)
    assert jnp.allclose(out[2], jax.vmap(net.explicit)(xs), atol=1e-5)
    sols = eqx.filter_jit(lambda d, v: jax.vmap(d.solve)(v))(deq, xs)
    assert sols.stats["num_steps"].shape == (4,)
    assert bool(jnp.all(sols.result == ui.RESULTS.successful))
