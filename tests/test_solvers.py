"""Anderson and Broyden on Optimistix-style fixed-point test problems."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
import pytest

import unimplicit as ui
from unimplicit._solver.anderson import mixing_weights

from .helpers import contractive_matrix


TOL = {jnp.float32: 1e-4, jnp.float64: 1e-8}
_W = contractive_matrix(jax.random.PRNGKey(0), 4, norm=0.9)


def _cos(y, args):
    return jnp.cos(y) * args


def _tanh(y, args):
    return jnp.tanh(_W.astype(y.dtype) @ y + args)


def _exp(y, args):
    # The fixed point solves y e^y = args.
    return args * jnp.exp(-y)


def _pytree(y, args):
    a, (b, c) = y
    return (
        0.5 * jnp.sin(b[:2]) + args,
        (0.3 * jnp.tanh(a).sum() + 0.1 * b, 0.5 * jnp.cos(c)),
    )


def _case(name, dtype):
    arr = lambda *x: jnp.array(x, dtype)
    if name == "cos":
        return _cos, arr(0.0, 0.5, 1.0), arr(1.0, 0.8, 0.5)
    if name == "tanh":
        return _tanh, jnp.zeros(4, dtype), arr(0.3, -0.2, 1.0, 0.1)
    if name == "exp":
        return _exp, arr(0.0, 0.0), arr(0.5, 1.0)
    y0 = (arr(0.0, 0.0), (arr(1.0, 1.0, 1.0), jnp.zeros((), dtype)))
    return _pytree, y0, arr(0.2, -0.1)


def _solvers(dtype):
    tol = TOL[dtype]
    return {
        "anderson": ui.Anderson(rtol=tol, atol=tol),
        "anderson_damped": ui.Anderson(rtol=tol, atol=tol, history=2, mixing=0.5),
        "broyden": ui.Broyden(rtol=tol, atol=tol, memory=3),
    }


def _max_residual(fn, y, args):
    res = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), fn(y, args), y)
    return max(jax.tree.leaves(res))


def _all_problems(dtype):
    # Every test map at once, as one dict-valued state: one compilation per solver
    # covers all of them, and exercises PyTree states of mixed shapes.
    cases = {name: _case(name, dtype) for name in ("cos", "tanh", "exp", "pytree")}

    def fn(y, args):
        return {name: cases[name][0](y[name], args[name]) for name in cases}

    y0 = {name: case[1] for name, case in cases.items()}
    args = {name: case[2] for name, case in cases.items()}
    return fn, y0, args


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_solvers_find_fixed_points(dtype):
    fn, y0, args = _all_problems(dtype)
    for name, solver in _solvers(dtype).items():
        sol = optx.fixed_point(fn, solver, y0, args, max_steps=200)
        dtypes = jax.tree.map(lambda x: x.dtype, sol.value)
        assert dtypes == jax.tree.map(lambda x: x.dtype, y0), name
        out = fn(sol.value, args)
        for problem in y0:
            res = _max_residual(lambda y, _: out[problem], sol.value[problem], None)
            assert res < 20 * TOL[dtype], (name, problem)


def test_solvers_through_unimplicit_solve_and_deq():
    fn, y0, args = _case("tanh", jnp.float64)
    assert isinstance(y0, jax.Array)
    ref = optx.fixed_point(fn, optx.FixedPointIteration(1e-13, 1e-13), y0, args)
    for solver in _solvers(jnp.float64).values():
        sol = ui.solve(ui.FixedPoint(fn), solver, args, y0=y0)
        assert sol.result == ui.RESULTS.successful
        assert jnp.allclose(sol.value, ref.value, atol=1e-7)
        assert float(sol.stats["relative_residual"]) < 1e-7
    root = ui.solve(
        ui.Root(lambda y, a: fn(y, a) - y), ui.Broyden(1e-10, 1e-10), args, y0=y0
    )
    assert jnp.allclose(root.value, ref.value, atol=1e-8)
    deq = ui.DEQ(fn, backend=ui.Anderson(1e-10, 1e-10))
    assert jnp.allclose(deq(args), ref.value, atol=1e-8)


def test_per_sample_results_under_vmap():
    # One sample is easy, one needs more steps, and y = y + 1 has no fixed point.
    def fn(y, a):
        return a[0] * jnp.tanh(y) + a[1] + a[2] * y

    args = jnp.array([[0.1, 0.5, 0.0], [0.95, 0.5, 0.0], [0.0, 1.0, 1.0]])
    y0 = jnp.zeros(3)

    for solver in (ui.Anderson(1e-8, 1e-8, history=1), ui.Broyden(1e-8, 1e-8)):

        @jax.jit
        @jax.vmap
        def run(a, solver=solver):
            return ui.solve(
                ui.FixedPoint(fn), solver, a, y0=y0, throw=False, max_steps=60
            )

        sol = run(args)
        ok = sol.result == ui.RESULTS.successful
        assert ok.tolist() == [True, True, False]
        steps = sol.stats["num_steps"]
        assert steps[0] < steps[1] and steps.shape == (3,)
        assert jnp.all(sol.stats["residual_norm"][:2] < 1e-6)


def test_anderson_max_norm_test_matches_scaled_error():
    # The default (max-norm) convergence test avoids the divide; any other norm
    # takes the general path. Wrapping `max_norm` forces that path: both must stop
    # at the same step with the same value.
    fn, y0, args = _case("tanh", jnp.float64)
    results = []
    for norm in (optx.max_norm, lambda x: optx.max_norm(x)):
        solver = ui.Anderson(1e-9, 1e-12, norm=norm)
        sol = ui.solve(ui.FixedPoint(fn), solver, args, y0=y0)
        results.append((sol.value, sol.stats["num_steps"]))
    (fast, fast_steps), (slow, slow_steps) = results
    assert fast_steps == slow_steps
    assert jnp.array_equal(fast, slow)


def test_anderson_reports_nonfinite_map():
    # A map that returns NaN is reported as non-finite, with the best finite
    # iterate.
    def fn(y, a):
        return jnp.where(y > a, jnp.nan, y + 0.2)

    sol = ui.solve(
        ui.FixedPoint(fn), ui.Anderson(1e-6, 1e-6), 0.5, y0=jnp.zeros(2), throw=False
    )
    assert sol.result == ui.RESULTS.nonfinite
    assert jnp.all(jnp.isfinite(sol.value))


def test_anderson_returns_best_iterate_on_diverging_map():
    # y = y + exp(2y) has no fixed point, and its residual grows with y: the
    # iterates blow up. (A map with a repelling fixed point, such as y^3 + 1, is no
    # test: Anderson's secant steps may find it or wander without diverging.)
    def fn(y, _):
        return y + jnp.exp(2 * y)

    y0 = jnp.array([0.5, 1.0])
    sol = ui.solve(ui.FixedPoint(fn), ui.Anderson(1e-6, 1e-8), y0=y0, throw=False)
    assert sol.result == ui.RESULTS.nonlinear_divergence
    assert jnp.array_equal(sol.value, y0)  # the best (first) iterate, still finite.
    with pytest.raises(Exception, match="Nonlinear solve diverged"):
        ui.solve(ui.FixedPoint(fn), ui.Anderson(1e-6, 1e-8), y0=y0)


def test_anderson_solves_linear_repelling_fixed_point():
    # Plain iteration diverges on y = 3y + 1; Anderson's secant step finds y = -1/2.
    sol = optx.fixed_point(lambda y, _: 3 * y + 1, ui.Anderson(1e-8, 1e-8), jnp.ones(2))
    assert jnp.allclose(sol.value, -0.5)


def test_mixing_weights_fall_back_to_plain_step():
    # Collinear residuals and no ridge: the small system is singular.
    g = jnp.array([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0]])
    gram = g @ g.T
    valid = jnp.array([True, True, False])
    weights = jax.jit(mixing_weights, static_argnums=3)
    alpha = weights(gram, valid, jnp.array(1), 0.0)
    assert alpha.tolist() == [0.0, 1.0, 0.0]
    # With a ridge the weights are finite, sum to one, and ignore the empty slot.
    alpha = weights(gram, valid, jnp.array(1), 1e-4)
    assert jnp.isclose(jnp.sum(alpha), 1.0) and alpha[2] == 0
    # And a healthy Gram matrix gives the least-squares weights.
    g = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    alpha = weights(g @ g.T, valid, jnp.array(1), 0.0)
    assert jnp.allclose(alpha, jnp.array([0.5, 0.5, 0.0]))


def test_anderson_without_ridge_still_converges():
    fn, y0, args = _case("tanh", jnp.float64)
    sol = optx.fixed_point(fn, ui.Anderson(1e-10, 1e-10, ridge=0.0), y0, args)
    assert _max_residual(fn, sol.value, args) < 1e-8


def test_memory_is_bounded():
    fn, y0, args = _case("tanh", jnp.float64)
    struct = jax.eval_shape(lambda: y0)

    def wrapped(y, a):
        return fn(y, a), None

    for solver, name in (
        (ui.Anderson(1e-6, 1e-6, history=3), "f_hist"),
        (ui.Broyden(1e-6, 1e-6, memory=3), "u_hist"),
    ):
        state = solver.init(wrapped, y0, args, {}, struct, None, frozenset())
        assert getattr(state, name).shape == (3, 4)
        sizes = sum(x.size for x in jax.tree.leaves(eqx.filter(state, eqx.is_array)))
        assert sizes < 10 * 4 + 40  # O(memory * n), independent of max_steps.


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ui.Anderson(1e-6, 1e-6, history=0), "history"),
        (lambda: ui.Anderson(1e-6, 1e-6, mixing=0.0), "mixing"),
        (lambda: ui.Anderson(1e-6, 1e-6, ridge=-1.0), "ridge"),
        (lambda: ui.Anderson(-1e-6, 1e-6), "non-negative"),
        (lambda: ui.Anderson(1e-6, 1e-6, divergence_ratio=0.5), "divergence_ratio"),
        (lambda: ui.Broyden(1e-6, 1e-6, memory=0), "memory"),
        (lambda: ui.Broyden(1e-6, -1.0), "non-negative"),
        (lambda: ui.NeumannSolver(1e-6, 1e-6, max_steps=0), "max_steps"),
        (lambda: ui.NeumannSolver(1e-6, 1e-6, history=-1), "history"),
    ],
)
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_broyden_refuses_non_square_system():
    with pytest.raises(ValueError, match="square system"):
        optx.root_find(lambda y, _: y[:2], ui.Broyden(1e-6, 1e-6), jnp.ones(3))


def test_neumann_refuses_non_square_operator():
    op = lx.MatrixLinearOperator(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(op, jnp.ones(2), ui.NeumannSolver(1e-6, 1e-6))


def test_mixing_weights_scale_invariant():
    # Residuals six orders of magnitude apart (as late in a fast solve) are still
    # mixed by least squares: almost all weight on the small one, not a plain step
    # on the latest slot.
    gram = jnp.diag(jnp.array([1e6, 1e-6, 0.0], jnp.float32))
    valid = jnp.array([True, True, False])
    alpha = jax.jit(mixing_weights, static_argnums=3)(gram, valid, jnp.array(0), 0.0)
    assert alpha[1] > 0.99 and alpha[2] == 0


def test_anderson_reports_residual_without_extra_evaluation():
    # `solve` takes the residual norm from Anderson's own evaluations instead of
    # evaluating the map once more; it must be that of the returned value.
    fn, y0, args = _case("tanh", jnp.float64)
    sol = ui.solve(ui.FixedPoint(fn), ui.Anderson(1e-6, 1e-8), args, y0=y0)
    expected = jnp.linalg.norm(fn(sol.value, args) - sol.value)
    assert jnp.allclose(sol.stats["residual_norm"], expected, rtol=1e-10)
