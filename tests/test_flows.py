"""ODE/SDE flows and steady states on Diffrax (issue 4).

Every problem is tiny (2-3 dimensions, a few dozen steps): compile time dominates,
so each compiled function is built once at module level and shared.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
import pytest

import unimplicit as ui

from .helpers import assert_tree_allclose, FLOWS


GRAD_RTOL = 1e-6  # layer vs the same model written with raw Diffrax
STEADY_RTOL = 1e-5  # steady state vs Newton / Anderson
TOL = 1e-8

jax.config.update("jax_enable_x64", True)

MLP = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0))
Y0 = jnp.array([0.7, -0.4])
CONTROLLER = diffrax.PIDController(rtol=TOL, atol=TOL)
BACKEND = ui.Diffrax(diffrax.Tsit5(), stepsize_controller=CONTROLLER)
TS = jnp.array([0.5, 1.0])


class Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y) - 0.3 * y


def _layer_loss(field, y0, adjoint):
    layer = ui.NeuralODE(
        field, 0.0, 1.0, backend=BACKEND, adjoint=ui.DiffraxAdjoint(adjoint), saveat=TS
    )
    return jnp.sum(layer(y0) ** 2)


def _raw_loss(field, y0, adjoint):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        0.0,
        1.0,
        None,
        y0,
        saveat=diffrax.SaveAt(ts=TS),
        stepsize_controller=CONTROLLER,
        adjoint=adjoint,
        max_steps=4096,
    )
    return jnp.sum(sol.ys**2)


_layer_grad = eqx.filter_jit(eqx.filter_value_and_grad(_layer_loss))
_raw_grad = eqx.filter_jit(eqx.filter_value_and_grad(_raw_loss))


@pytest.mark.parametrize(
    "adjoint",
    [
        diffrax.RecursiveCheckpointAdjoint(),
        diffrax.BacksolveAdjoint(stepsize_controller=CONTROLLER),
    ],
    ids=["recursive_checkpoint", "backsolve"],
)
def test_neural_ode_gradients_match_raw_diffrax(adjoint):
    ours = _layer_grad(Field(MLP), Y0, adjoint)
    theirs = _raw_grad(Field(MLP), Y0, adjoint)
    assert_tree_allclose(ours, theirs, rtol=GRAD_RTOL)


# --- SDE -------------------------------------------------------------------------

SDE_BACKEND = ui.Diffrax(
    diffrax.Euler(), dt0=0.05, stepsize_controller=diffrax.ConstantStepSize()
)


def _sde_layer_loss(params, key):
    theta, sigma = params
    sde = ui.NeuralSDE(
        lambda t, y, a: -theta * y,
        lambda t, y, a: sigma * jnp.ones_like(y),
        0.0,
        1.0,
        backend=SDE_BACKEND,
        brownian_tol=1e-3,
    )
    return jnp.sum(sde(Y0, key=key) ** 2)


def _sde_raw_loss(params, key):
    theta, sigma = params
    bm = diffrax.VirtualBrownianTree(
        0.0, 1.0, tol=1e-3, shape=jax.ShapeDtypeStruct((2,), Y0.dtype), key=key
    )
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, a: -theta * y),
        diffrax.ControlTerm(lambda t, y, a: sigma * jnp.eye(2), bm),
    )
    sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, 1.0, 0.05, Y0)
    return jnp.sum(sol.ys**2)


def test_sde_gradients_under_fixed_key_match_raw_diffrax():
    params = (jnp.array(0.8), jnp.array(0.5))
    key = jax.random.key(3)
    ours = jax.jit(jax.value_and_grad(_sde_layer_loss))(params, key)
    theirs = jax.jit(jax.value_and_grad(_sde_raw_loss))(params, key)
    assert_tree_allclose(ours, theirs, rtol=GRAD_RTOL)
    # A different key gives a different path.
    other = jax.jit(_sde_layer_loss)(params, jax.random.key(4))
    assert abs(float(other) - float(ours[0])) > 1e-3


# --- Steady states ---------------------------------------------------------------
# A FixedPoint solved by integrating dz/dt = cell(z, x) - z to a steady state must
# give the value and (implicit) gradient that Newton and Anderson give. A DEQ is
# exactly such a FixedPoint, so the layer is what is compared.

STEADY = ui.Diffrax(
    diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-9)
)
NEWTON = optx.Newton(rtol=1e-10, atol=1e-10)


class Cell(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, z, x):
        return jnp.tanh(0.5 * self.linear(z) + x)


# The same (cheap to compile) dense linear solver for every backend's IFT gradient:
# what is compared here is the forward solvers.
LU = ui.ImplicitAdjoint(lx.LU())


@eqx.filter_jit
@eqx.filter_value_and_grad(has_aux=True)
def _deq_loss(deq, x):
    sol = deq.solve(x)
    return jnp.sum(jnp.sin(sol.value)), (sol.result, sol.stats)


def test_steady_state_deq_matches_newton_and_anderson():
    cell = Cell(eqx.nn.Linear(3, 3, key=jax.random.PRNGKey(1)))
    x = jnp.array([0.2, -0.5, 1.0])
    deq = ui.DEQ(cell, backend=STEADY, adjoint=LU)
    (loss, (result, stats)), grads = _deq_loss(deq, x)
    assert result == ui.RESULTS.successful
    assert stats["residual_norm"] < 1e-7
    assert {"num_steps", "residual_norm", "relative_residual"} <= set(stats)
    others = [("newton", NEWTON)]
    if hasattr(ui, "Anderson"):
        others.append(("anderson", ui.Anderson(rtol=1e-11, atol=1e-11)))
    for name, backend in others:
        (loss2, _), grads2 = _deq_loss(ui.DEQ(cell, backend=backend, adjoint=LU), x)
        assert_tree_allclose(loss, loss2, rtol=STEADY_RTOL), name
        assert_tree_allclose(grads.cell, grads2.cell, rtol=STEADY_RTOL), name


def _root_loss(a, adjoint):
    # dy/dt = a - y^3 has the stable root a^(1/3).
    root = ui.Root(lambda y, a: a - y**3)
    sol = ui.solve(root, STEADY, a, y0=jnp.ones(2), adjoint=adjoint)
    return jnp.sum(sol.value)


@jax.jit
def _root_check(a):
    implicit = jax.value_and_grad(_root_loss)(a, LU)
    unrolled = jax.grad(_root_loss)(a, ui.UnrolledAdjoint())
    return implicit, unrolled


def test_steady_state_root_implicit_and_unrolled():
    a = jnp.array([1.5, 2.0])
    (value, grad), unrolled = _root_check(a)
    assert_tree_allclose(value, jnp.sum(a ** (1 / 3)), rtol=1e-6)
    assert_tree_allclose(grad, a ** (-2 / 3) / 3, rtol=1e-6)
    # Backpropagating through Diffrax's checkpointed integration agrees.
    assert_tree_allclose(unrolled, grad, rtol=STEADY_RTOL)


# --- CNF -------------------------------------------------------------------------


class CNFField(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, z, args):
        return self.mlp(jnp.append(z, t))


CNF_FIELD = CNFField(eqx.nn.MLP(3, 2, 8, 1, jnp.tanh, key=jax.random.PRNGKey(2)))
CNF_BACKEND = ui.Diffrax(stepsize_controller=diffrax.PIDController(1e-7, 1e-7))


@jax.jit
def _cnf_check(x, keys):
    exact = ui.CNF(CNF_FIELD, trace="exact", backend=CNF_BACKEND)
    # throw=False under vmap: `solve`'s throw check unrolls over the batch.
    hutch = ui.CNF(CNF_FIELD, trace="hutchinson", backend=CNF_BACKEND, throw=False)
    estimates = jax.vmap(lambda k: hutch.log_prob(x, key=k))(keys)
    sample, sample_log_prob = exact.sample(keys[0], x.shape)
    return estimates, exact.log_prob(x), sample_log_prob, exact.log_prob(sample)


def test_cnf_hutchinson_agrees_with_exact_within_sampling_error():
    keys = jax.random.split(jax.random.key(0), 256)
    estimates, reference, sample_log_prob, roundtrip = _cnf_check(
        jnp.array([0.3, -0.8]), keys
    )
    stderr = jnp.std(estimates) / jnp.sqrt(estimates.size)
    assert jnp.std(estimates) > 0  # the field's Jacobian is not diagonal
    assert abs(float(jnp.mean(estimates) - reference)) < 4 * float(stderr)
    # Sampling flows base noise backwards; the log-likelihood it returns is the
    # one `log_prob` gives that sample.
    assert_tree_allclose(roundtrip, sample_log_prob, rtol=1e-5)


# --- Bad input -------------------------------------------------------------------
# One field and one backend for all runtime failures, so that each of the two
# functions below compiles once: dy/dt = a0 y^2 + a1 y.
# With a = (1, 0) and y(0) = 1, y(t) = 1 / (1 - t) blows up at t = 1.
ERR_BACKEND = ui.Diffrax(dt0=0.01, stepsize_controller=CONTROLLER)


def _err_field(t, y, a):
    return a[0] * y**2 + a[1] * y


def _err_solve(y0, t0, t1, a, throw):
    ode = ui.ODE(_err_field, t0, t1)
    return ui.solve(ode, ERR_BACKEND, a, y0=y0, max_steps=32, throw=throw)


@jax.jit
def _err_run(y0, t0, t1, a):
    sol = _err_solve(y0, t0, t1, a, throw=False)
    return sol.value, sol.result, sol.stats["num_steps"]


_err_raise = jax.jit(lambda y0, t0, t1, a: _err_solve(y0, t0, t1, a, True).value)
BLOW_UP = jnp.array([1.0, 0.0])
DECAY = jnp.array([0.0, -1.0])


def test_blow_up_hits_max_steps_with_error_or_code():
    with pytest.raises(Exception, match=r"after 32 steps \(max_steps=32\)"):
        jax.block_until_ready(_err_raise(jnp.ones(1), 0.0, 2.0, BLOW_UP))
    _, result, num_steps = _err_run(jnp.ones(1), 0.0, 2.0, BLOW_UP)
    assert result == ui.RESULTS.nonlinear_max_steps_reached
    assert int(num_steps) == 32


def test_nonfinite_state_is_reported():
    nan = jnp.array([jnp.nan])
    with pytest.raises(Exception, match="Nonfinite"):
        jax.block_until_ready(_err_raise(nan, 0.0, 0.5, DECAY))
    _, result, _ = _err_run(nan, 0.0, 0.5, DECAY)
    assert result == ui.RESULTS.nonfinite


def test_backwards_time_ode_as_diffrax_and_sde_refused():
    # t1 < t0 integrates backwards, as Diffrax does: y' = -y from y(1) = 1.
    value, result, _ = _err_run(jnp.ones(1), 1.0, 0.0, DECAY)
    assert result == ui.RESULTS.successful
    assert_tree_allclose(value, jnp.full((1,), jnp.e), rtol=1e-6)  # y(t1), as y0
    with pytest.raises(ValueError, match="must run forwards in time"):
        ui.SDE(lambda t, y, a: y, lambda t, y, a: y, 1.0, 0.0, key=jax.random.key(0))


def test_sde_without_key_is_refused():
    sde = ui.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: y, 0.0, 1.0)
    with pytest.raises(ValueError, match="needs a `jax.random` key"):
        sde(Y0)
    with pytest.raises(TypeError, match="single `jax.random` key"):
        sde(Y0, key=jax.random.split(jax.random.key(0), 3))


def test_misuse_is_refused_clearly():
    decay = ui.ODE(lambda t, y, a: -y, 0.0, 1.0)
    with pytest.raises(TypeError, match="ImplicitAdjoint cannot differentiate a ODE"):
        ui.solve(decay, BACKEND, y0=Y0, adjoint=ui.ImplicitAdjoint())
    with pytest.raises(TypeError, match="Wrap a Diffrax adjoint"):
        ui.solve(decay, BACKEND, y0=Y0, adjoint=diffrax.BacksolveAdjoint())
    with pytest.raises(ValueError, match="needs an initial state"):
        ui.solve(decay, BACKEND)
    with pytest.raises(ValueError, match="unimplicit.Diffrax"):
        ui.solve(decay, NEWTON, y0=Y0)
    with pytest.raises(ValueError, match="must be positive"):
        ui.Diffrax(dt0=-0.1)
    with pytest.raises(ValueError, match="needs `dt0`"):
        ui.Diffrax(stepsize_controller=diffrax.ConstantStepSize())
    with pytest.raises(ValueError, match="unknown options"):
        ui.solve(decay, BACKEND, y0=Y0, options={"trace": 3})
    with pytest.raises(ValueError, match="needs a `key`"):
        ui.CNF(CNF_FIELD, trace="hutchinson").log_prob(Y0)
    with pytest.raises(ValueError, match='must be "exact" or "hutchinson"'):
        ui.CNF(CNF_FIELD, trace="diagonal")


def test_catalogue_flows_match_closed_form():
    # Each flow of the catalogue in float32 and float64, as one compiled module; the
    # float32 controller's tolerance stays well above float32's precision.
    tol = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float64): 1e-8}
    problems = [p.astype(dtype) for p in FLOWS for dtype in (jnp.float32, jnp.float64)]

    @jax.jit
    def run(y0s, argss):
        values = []
        for p, y0, args in zip(problems, y0s, argss):
            controller = diffrax.PIDController(rtol=tol[y0.dtype], atol=tol[y0.dtype])
            backend = ui.Diffrax(diffrax.Tsit5(), stepsize_controller=controller)
            sol = ui.solve(ui.ODE(p.fn, p.t0, p.t1), backend, args, y0=y0)
            values.append(sol.value)
        return values

    values = run([p.y0 for p in problems], [p.args for p in problems])
    for p, value in zip(problems, values, strict=True):
        assert value.dtype == p.y0.dtype, p.name
        assert_tree_allclose(value, p.solution, rtol=100 * tol[value.dtype])
