"""Anderson and Broyden on the catalogue's fixed-point and root problems."""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
import pytest

import unimplicit as ui
from unimplicit._solver.anderson import mixing_weights

from .helpers import FIXED_POINTS, max_abs_error, PROBLEMS, ROOTS


# Solver tolerances; float32 stays well away from its precision (eps ~ 1e-7).
TOL = {jnp.float32: 1e-4, jnp.float64: 1e-8}
DTYPES = pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.float64], ids=lambda d: jnp.dtype(d).name
)
MAX_STEPS = 300
TANH = PROBLEMS["tanh"].astype(jnp.float64)

SOLVERS = {
    "anderson": lambda tol: ui.Anderson(rtol=tol, atol=tol),
    "anderson_damped": lambda tol: ui.Anderson(tol, tol, history=2, mixing=0.5),
    "broyden": lambda tol: ui.Broyden(rtol=tol, atol=tol, memory=3),
}


def _max_abs(tree):
    return float(max(jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)))


def _check_solution(problem, sol, tol):
    # Both solvers stop once |F_i| < atol + rtol |y_i| (Anderson: |f(y)_i|), so the
    # residual is at most tol (1 + max|y|), up to rounding: a factor 2 of margin.
    # To first order the error is at most the problem's sensitivity times that.
    assert sol.result == optx.RESULTS.successful
    assert jax.tree.map(lambda x: x.dtype, sol.value) == jax.tree.map(
        lambda x: x.dtype, problem.y0
    )
    bound = 2 * tol * (1 + _max_abs(problem.solution))
    assert _max_abs(problem.residual(sol.value, problem.args)) < bound
    assert max_abs_error(sol.value, problem.solution) < problem.sensitivity * bound


@functools.cache
def _solve_catalogue(dtype):
    # Every (solver, problem) pair of a dtype, each its own solve (nothing couples
    # them), in one compiled function: XLA compiles one module of many loops in a
    # fraction of the time of as many modules. Cached across the parametrised tests.
    runs = [(name, "fixed_point", p) for name in SOLVERS for p in FIXED_POINTS]
    runs += [("broyden", "root", p) for p in ROOTS]
    problems = [p.astype(dtype) for _, _, p in runs]

    @jax.jit
    def solve_all(y0s, argss):
        sols = []
        for (name, kind, _), p, y0, args in zip(runs, problems, y0s, argss):
            method = optx.fixed_point if kind == "fixed_point" else optx.root_find
            solver = SOLVERS[name](TOL[dtype])
            sols.append(
                method(p.fn, solver, y0, args, max_steps=MAX_STEPS, throw=False)
            )
        return sols

    sols = solve_all([p.y0 for p in problems], [p.args for p in problems])
    return {
        (name, p.name): (p, sol)
        for (name, _, _), p, sol in zip(runs, problems, sols, strict=True)
    }


@DTYPES
@pytest.mark.parametrize("problem", FIXED_POINTS, ids=lambda p: p.name)
@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_find_fixed_points(solver, problem, dtype):
    problem, sol = _solve_catalogue(dtype)[solver, problem.name]
    _check_solution(problem, sol, TOL[dtype])


@DTYPES
@pytest.mark.parametrize("problem", ROOTS, ids=lambda p: p.name)
def test_broyden_finds_roots(problem, dtype):
    problem, sol = _solve_catalogue(dtype)["broyden", problem.name]
    _check_solution(problem, sol, TOL[dtype])


def _max_norm(x):
    # `optx.max_norm` under another name: Anderson's general convergence test.
    return optx.max_norm(x)


@functools.cache
def _tanh_solutions():
    # The solves of the tests below on the tanh cell, compiled as one module.
    fn = TANH.fn
    runs: dict[str, tuple[ui.AbstractCondition, Any]] = {
        name: (ui.FixedPoint(fn), solver(1e-8)) for name, solver in SOLVERS.items()
    }
    runs["root"] = ui.Root(lambda y, a: fn(y, a) - y), ui.Broyden(1e-10, 1e-10)
    runs["max_norm"] = ui.FixedPoint(fn), ui.Anderson(1e-9, 1e-12)
    runs["scaled_norm"] = ui.FixedPoint(fn), ui.Anderson(1e-9, 1e-12, norm=_max_norm)
    runs["no_ridge"] = ui.FixedPoint(fn), ui.Anderson(1e-10, 1e-10, ridge=0.0)
    runs["residual"] = ui.FixedPoint(fn), ui.Anderson(1e-6, 1e-8)

    @jax.jit
    def solve_all(args, y0):
        sols = {name: ui.solve(c, s, args, y0=y0) for name, (c, s) in runs.items()}
        deq = ui.DEQ(fn, backend=ui.Anderson(1e-10, 1e-10), state=y0)
        return sols, deq(args)

    return solve_all(TANH.args, TANH.y0)


def test_solvers_through_unimplicit_solve_and_deq():
    sols, deq = _tanh_solutions()
    for name in SOLVERS:
        assert sols[name].result == ui.RESULTS.successful
        assert jnp.allclose(sols[name].value, TANH.solution, atol=1e-7)
        assert float(sols[name].stats["relative_residual"]) < 1e-7
    assert jnp.allclose(sols["root"].value, TANH.solution, atol=1e-8)
    assert jnp.allclose(deq, TANH.solution, atol=1e-8)


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
    sols, _ = _tanh_solutions()
    fast, slow = sols["max_norm"], sols["scaled_norm"]
    assert fast.stats["num_steps"] == slow.stats["num_steps"]
    assert jnp.array_equal(fast.value, slow.value)


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
    sols, _ = _tanh_solutions()
    assert _max_abs(TANH.residual(sols["no_ridge"].value, TANH.args)) < 1e-8


def test_memory_is_bounded():
    n = TANH.y0.size
    struct = jax.eval_shape(lambda: TANH.y0)

    def wrapped(y, a):
        return TANH.fn(y, a), None

    for solver, name in (
        (ui.Anderson(1e-6, 1e-6, history=3), "f_hist"),
        (ui.Broyden(1e-6, 1e-6, memory=3), "u_hist"),
    ):
        state = solver.init(wrapped, TANH.y0, TANH.args, {}, struct, None, frozenset())
        assert getattr(state, name).shape == (3, n)
        sizes = sum(x.size for x in jax.tree.leaves(eqx.filter(state, eqx.is_array)))
        assert sizes < 10 * n + 40  # O(memory * n), independent of max_steps.


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
    sol = _tanh_solutions()[0]["residual"]
    expected = jnp.linalg.norm(TANH.fn(sol.value, TANH.args) - sol.value)
    assert jnp.allclose(sol.stats["residual_norm"], expected, rtol=1e-10)
