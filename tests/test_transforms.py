"""`solve` under every order of `jit`, `grad`, `jvp` and `vmap`, on every kind of
equilibrium; the open abstractions (a user's own condition); the one adjoint menu
(an unrolled adjoint on the Diffrax backend); and per-sample freezing under `vmap`.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
import pytest

import unimplicit as ui

from .helpers import central_difference


GRAD_RTOL = 1e-6
STEADY_RTOL = 1e-4
VMAP_RTOL = 1e-14
C = jnp.array([0.3, -0.2, 0.5])
A0 = 0.7


def _fixed_point(a):
    cond = ui.FixedPoint(lambda y, a: 0.5 * jnp.tanh(y) + a * C)
    return ui.solve(cond, ui.Anderson(1e-10, 1e-10), a, y0=jnp.zeros(3)).value


def _root(a):
    cond = ui.Root(lambda y, a: y**3 + y - a * C)
    return ui.solve(cond, optx.Newton(1e-10, 1e-10), a, y0=jnp.zeros(3)).value


_STEADY = ui.Diffrax(
    diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10)
)


def _steady_state(a):
    cond = ui.FixedPoint(lambda y, a: 0.5 * jnp.tanh(y) + a * C)
    return ui.solve(cond, _STEADY, a, y0=jnp.zeros(3), max_steps=4096).value


_QP_P = jnp.array([[2.0, 0.5], [0.5, 1.0]])
# x >= 0 (two nonnegative rows, -x + s = 0) and x0 + x1 <= 2.
_QP_A = jnp.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
_QP_B = jnp.array([0.0, 0.0, 2.0])


def _convex(a):
    # Strictly complementary at a = A0: x0 > 0 free, x1 = 0 active.
    q = jnp.array([-1.0, 0.5]) * a
    data = ui.ConeData(_QP_P, q, _QP_A, _QP_B)
    cond = ui.ConeProgram(ui.Cones(nonneg=3))
    return ui.solve(cond, ui.InteriorPoint(tol=1e-10), data).value.x


SOLVES = {
    "fixed_point": _fixed_point,
    "root": _root,
    "steady_state": _steady_state,
    "convex": _convex,
}


def _loss(solve):
    return lambda a: jnp.sum(jnp.sin(solve(a)))


@pytest.fixture(scope="module", params=sorted(SOLVES))
def case(request):
    loss = _loss(SOLVES[request.param])
    reference = float(central_difference(loss, jnp.array(A0), eps=1e-5))
    return request.param, loss, reference


def test_every_order_of_transformations(case):
    name, loss, reference = case
    rtol = STEADY_RTOL if name == "steady_state" else 1e-5
    a = jnp.array(A0)
    grads = {
        "grad(jit)": jax.grad(jax.jit(loss))(a),
        "jit(grad)": jax.jit(jax.grad(loss))(a),
        "filter_grad(filter_jit)": eqx.filter_grad(eqx.filter_jit(loss))(a),
        # Python floats as primal and tangent, eagerly and under jit.
        "jvp(jit)": jax.jvp(jax.jit(loss), (A0,), (1.0,))[1],
        "jit(jvp)": jax.jit(lambda x: jax.jvp(loss, (x,), (1.0,))[1])(a),
    }
    if name != "convex":  # (eager interior-point steps are slow to dispatch)
        grads["jvp"] = jax.jvp(loss, (A0,), (1.0,))[1]
    for order, g in grads.items():
        assert jnp.allclose(g, reference, rtol=rtol, atol=1e-9), (order, g, reference)
    # vmap outside and inside grad, and grad of a vmapped (batched) loss.
    batch = jnp.array([A0, A0])
    vmapped = {
        "vmap(grad(jit))": jax.vmap(jax.grad(jax.jit(loss)))(batch),
        "grad(vmap(jit))": jax.grad(lambda b: jnp.sum(jax.vmap(jax.jit(loss))(b)))(
            batch
        ),
    }
    for order, g in vmapped.items():
        assert jnp.allclose(g, reference, rtol=rtol, atol=1e-9), (order, g, reference)


def test_unrolled_adjoint_on_the_diffrax_backend():
    # The adjoint is an argument like any other, whatever the backend: unrolling a
    # steady-state integration with a bounded number of checkpoints.
    cond = ui.FixedPoint(lambda y, a: 0.5 * jnp.tanh(y) + a * C)

    def loss(a, adjoint):
        sol = ui.solve(
            cond, _STEADY, a, y0=jnp.zeros(3), adjoint=adjoint, max_steps=4096
        )
        return jnp.sum(jnp.sin(sol.value))

    unrolled = jax.grad(loss)(A0, ui.UnrolledAdjoint(checkpoints=4))
    implicit = jax.grad(loss)(A0, ui.ImplicitAdjoint())
    assert jnp.allclose(unrolled, implicit, rtol=STEADY_RTOL)


# --- a condition the library has never seen ----------------------------------------


class TanhCell(ui.AbstractEquilibrium):
    """The residual form of `y = tanh(W y + x)`, written by a user."""

    weight: jax.Array

    def residual(self, y, args):
        return jnp.tanh(self.weight @ y + args) - y

    def init(self, y0, args):
        return jnp.zeros_like(args) if y0 is None else y0

    def closure_convert(self, y0, args):
        return self

    def default_linear_solver(self, y, args):
        return lx.AutoLinearSolver(well_posed=True)

    def default_adjoint(self):
        return ui.ImplicitAdjoint()


_W = 0.4 * jnp.array([[0.5, -1.0, 0.2], [0.3, 0.1, -0.6], [-0.4, 0.8, 0.2]])
_X = jnp.array([0.5, -0.3, 0.9])
USER_BACKENDS = {
    "newton": optx.Newton(1e-10, 1e-10),
    "anderson": ui.Anderson(1e-10, 1e-10),
    "diffrax": _STEADY,
}


@pytest.mark.parametrize("backend", sorted(USER_BACKENDS))
def test_user_defined_condition_with_generic_backends(backend):
    def loss(weight):
        sol = ui.solve(TanhCell(weight), USER_BACKENDS[backend], _X, max_steps=4096)
        return jnp.sum(sol.value**2), sol

    (value, sol), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(_W)
    assert sol.result == ui.RESULTS.successful
    assert sol.stats["residual_norm"] < 1e-8
    reference = central_difference(lambda w: loss(w)[0], _W)
    rtol = STEADY_RTOL if backend == "diffrax" else GRAD_RTOL
    assert jnp.allclose(grad, reference, rtol=rtol, atol=1e-9)


# --- vmap: a sample's outcome does not depend on its batch ---------------------------


def _affine_tanh(y, a):
    # Elementwise, so that batching cannot change the arithmetic: only the loop can.
    return a[0] * jnp.tanh(y) + a[1] + a[2] * y


def test_batched_anderson_equals_unbatched():
    cond = ui.FixedPoint(_affine_tanh)
    backend = ui.Anderson(1e-10, 1e-10)
    # Fast, slow and non-converging (a[0] + a[2] > 1 near the origin) samples.
    args = jnp.array(
        [[0.5, 0.1, 0.0], [0.9, -0.3, 0.05], [0.3, 0.2, 0.6], [2.5, 0.1, 0.2]]
    )

    @jax.jit
    def one(a):
        sol = ui.solve(cond, backend, a, y0=jnp.zeros(3), max_steps=60, throw=False)
        return sol.value, sol.result, sol.stats["num_steps"]

    batched = jax.vmap(one)(args)
    steps = batched[2]
    assert len(set(steps.tolist())) > 1  # the samples really stop at different steps
    for i in range(args.shape[0]):
        alone = one(args[i])
        # Steps and statuses exactly. Values to a few units in the last place,
        # not bitwise: XLA compiles a batched product (the Gram row) differently
        # from an unbatched one, and that rounding may differ by CPU. A solver
        # state that kept moving after its sample finished (as before the loop
        # froze it) moved the value by about 1e-10 here.
        assert int(steps[i]) == int(alone[2]), i
        assert int(batched[1]._value[i]) == int(alone[1]._value), i
        assert jnp.allclose(batched[0][i], alone[0], rtol=VMAP_RTOL, atol=0), i


def test_pytree_outputs_compose_with_grad_of_jit():
    # A PyTree state through the same composition (grad of a jitted function).
    def fn(y, a):
        u, v = y
        return 0.5 * jnp.tanh(v) + a, 0.3 * jnp.cos(u)

    def loss(a):
        sol = ui.solve(ui.FixedPoint(fn), ui.Anderson(1e-10, 1e-10), a, y0=(0.0, 0.0))
        return sum(jnp.sum(x) for x in jtu.tree_leaves(sol.value))

    g = jax.grad(jax.jit(loss))(jnp.array(0.2))
    assert jnp.allclose(g, central_difference(loss, jnp.array(0.2)), rtol=GRAD_RTOL)
