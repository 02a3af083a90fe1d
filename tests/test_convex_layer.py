"""ConvexLayer against cvxpylayers (diffcp backend, tight tolerances), and bad input.

Each family builds a tiny DPP problem, solves it with both layers, and compares the
solution and the vector-Jacobian product of a fixed random cotangent, in float64.
One jitted `(values, vjp)` function per family keeps compile time down.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unimplicit as ui
from unimplicit._convex.interior_point import InteriorPoint
from unimplicit._layers.convex_layer import ConvexLayer

from .helpers import assert_tree_allclose


cp = pytest.importorskip("cvxpy")
cvxpylayers_jax = pytest.importorskip("cvxpylayers.jax")

RTOL = 1e-5
# SCS at eps=1e-12 is the most accurate diffcp forward on these problems; "dense"
# differentiates exactly; one job avoids spawning a process pool on 2 cores.
REFERENCE_ARGS = {
    "solve_method": "SCS",
    "eps": 1e-12,
    "max_iters": 200_000,
    "mode": "dense",
    "n_jobs_forward": 1,
    "n_jobs_backward": 1,
}
# The default tolerance (1e-8): tighter ones (1e-10, 1e-11) are past what float64
# reaches on some of these SOCPs, which then stall (see `RESULTS.stalled`).
BACKEND = InteriorPoint()


def _reference(problem, params, variables, duals, values, seed=0):
    """cvxpylayers' outputs, a random cotangent of their shape, and its VJP."""
    outs = list(variables) + [c.dual_variables[0] for c in duals]
    layer = cvxpylayers_jax.CvxpyLayer(problem, parameters=params, variables=outs)
    fn = functools.partial(layer, solver_args=REFERENCE_ARGS)
    out, vjp = jax.vjp(fn, *values)
    rng = np.random.default_rng(seed)
    cotangent = tuple(jnp.asarray(rng.normal(size=o.shape)) for o in out)
    return tuple(out), cotangent, vjp(cotangent)


_RUNS = {}


def _jitted_vjp(fn):
    """One jitted `(values, cotangent) -> (out, vjp)` per layer, shared by tests."""
    if id(fn) not in _RUNS:

        @jax.jit
        def run(values, cotangent):
            out, vjp = jax.vjp(fn, *values)
            return out, vjp(cotangent)

        _RUNS[id(fn)] = (fn, run)
    return _RUNS[id(fn)][1]


def _compare(fn, problem, params, variables, values, *, duals=()):
    """Compare `fn` (a layer, or a vmapped one) with cvxpylayers: values and a VJP."""
    values = tuple(jnp.asarray(v, jnp.float64) for v in values)
    ref_out, cotangent, ref_grad = _reference(problem, params, variables, duals, values)
    out, grad = _jitted_vjp(fn)(values, cotangent)
    assert_tree_allclose(tuple(out), ref_out, rtol=RTOL, atol=1e-8)
    assert_tree_allclose(tuple(grad), tuple(ref_grad), rtol=RTOL, atol=1e-8)


def _check(problem, params, variables, values, *, duals=(), vmap=False):
    layer = ConvexLayer(problem, params, variables, duals, backend=BACKEND)
    fn = jax.vmap(layer) if vmap else layer
    _compare(fn, problem, params, variables, values, duals=duals)


def _lp():
    x = cp.Variable(3)
    c, G, h = cp.Parameter(3), cp.Parameter((2, 3)), cp.Parameter(2)
    problem = cp.Problem(cp.Minimize(c @ x), [G @ x <= h, x >= -1, x <= 1])
    return problem, [c, G, h], [x]


def _lp_values(rng):
    G = rng.normal(size=(2, 3))
    return [rng.normal(size=3), G, G @ rng.uniform(-0.5, 0.5, 3) + 0.3]


@pytest.fixture(scope="module")
def lp():
    problem, params, variables = _lp()
    return problem, params, variables, ConvexLayer(*_lp(), backend=BACKEND)


def test_lp(lp):
    problem, params, variables, layer = lp
    rng = np.random.default_rng(1)
    _compare(layer, problem, params, variables, _lp_values(rng))


def test_qp_equalities_inequalities_and_duals():
    x = cp.Variable(4)
    q, A, b = cp.Parameter(4), cp.Parameter((1, 4)), cp.Parameter(1)
    G, h = cp.Parameter((3, 4)), cp.Parameter(3)
    L = np.array([[2.0, 0, 0, 0], [0.5, 1.5, 0, 0], [0, 0.3, 1, 0], [0.2, 0, 0, 1]])
    eq, ineq = A @ x == b, G @ x <= h
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), [eq, ineq])
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=4)
    Av, Gv = rng.normal(size=(1, 4)), rng.normal(size=(3, 4))
    values = [3 * rng.normal(size=4), Av, Av @ x0, Gv, Gv @ x0 + [0.1, 0.5, 1.0]]
    _check(problem, [q, A, b, G, h], [x], values, duals=[eq, ineq])


def test_constrained_least_squares_batched():
    x = cp.Variable(3)
    F, g = cp.Parameter((5, 3)), cp.Parameter(5)
    cons = [x >= 0, cp.sum(x) == 1]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - g)), cons)
    rng = np.random.default_rng(3)
    _check(problem, [F, g], [x], [rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5))])


def test_socp_norm_constraints():
    x = cp.Variable(3)
    c, A, b, d = cp.Parameter(3), cp.Parameter((2, 3)), cp.Parameter(2), cp.Parameter()
    cons = [cp.norm(A @ x + b) <= d, cp.norm(x) <= 2]
    problem = cp.Problem(cp.Minimize(c @ x), cons)
    rng = np.random.default_rng(4)
    values = [
        rng.normal(size=3),
        rng.normal(size=(2, 3)),
        0.1 * rng.normal(size=2),
        1.5,
    ]
    _check(problem, [c, A, b, d], [x], values)


def test_logistic_style_soc():
    # The soft hinge (sqrt(1 + z^2) - z) / 2 has the logistic loss's asymptotes
    # and is second-order-cone representable.
    w = cp.Variable(2)
    Z = cp.Parameter((4, 2))
    z = Z @ w
    loss = sum(cp.norm(cp.hstack([1.0, z[i]])) for i in range(4)) - cp.sum(z)
    problem = cp.Problem(cp.Minimize(loss / 2 + 0.1 * cp.sum_squares(w)))
    rng = np.random.default_rng(5)
    _check(problem, [Z], [w], [rng.normal(size=(4, 2))])


def test_projection_onto_simplex_vmap():
    # Batched by `jax.vmap` over the one-sample layer, not by the layer itself.
    x, p = cp.Variable(4), cp.Parameter(4)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0, cp.sum(x) == 1])
    rng = np.random.default_rng(6)
    _check(problem, [p], [x], [rng.normal(size=(3, 4))], vmap=True)


def test_portfolio_soc_mixed_batching():
    x = cp.Variable(3)
    mu, S = cp.Parameter(3), cp.Parameter((3, 3))
    cons = [cp.sum(x) == 1, x >= 0]
    problem = cp.Problem(cp.Minimize(-mu @ x + cp.norm(S @ x)), cons)
    rng = np.random.default_rng(7)
    S0 = 0.5 * rng.normal(size=(3, 3)) + np.eye(3)
    # `mu` batched, `S` shared across the batch.
    _check(problem, [mu, S], [x], [rng.normal(size=(2, 3)), S0])


# One test sample of examples/portfolio_soc.py (after 3 training steps) on which the
# interior point, with its three corrector passes, took a step that left the point
# against the boundary of the second-order cone; every later step was ~1e-20 long
# and the solve stalled at a residual of 6e-3. Jammed points now get a centring step.
_JAM_MU = [-0.0103757084731816, 0.012807166814812811, -0.03452696330350527,
           -0.005938307051528, 0.005884844009644816, -0.008050524836296022,
           0.05316929150664129, 0.04332297527276697]  # fmt: skip
_JAM_S_ROWS = [
    [0.028601718486547117, 0.0280780216996619, -0.005657178079043106,
     0.011608326949619562, 0.020981515909570193, 0.017541207365296022,
     0.018462242546073794, 0.02369005092077872],
    [0.03242113709934895, 0.0008450909446244267, 0.003910690085488288,
     0.012682422381942697, 0.00685780379822241, 0.018137874880729155,
     0.010806233520297977],
    [0.044200382166541444, 0.008199363238638279, 0.00575891743598219,
     0.014099258900737379, 0.008865076089394049, 0.004130826427072229],
    [0.04492353428967972, 0.010337395715602778, 0.015690287286246177,
     0.01788299640286948, 0.01894258627823666],
    [0.05351546351049022, 0.0018595789341552549, 0.017297945484324857,
     0.013832925499292232],
    [0.05162661016965879, 0.010774681355657418, 0.003209506472640046],
    [0.06706138476234688, 0.008391645886391595],
    [0.07464862990378016],
]  # fmt: skip


def test_jammed_socp_recovers():
    n = len(_JAM_MU)
    S0 = np.zeros((n, n))
    for i, row in enumerate(_JAM_S_ROWS):
        S0[i, i:] = row
    x = cp.Variable(n)
    mu, S = cp.Parameter(n), cp.Parameter((n, n))
    objective = cp.Maximize(mu @ x - 0.02 * cp.sum_squares(x))
    problem = cp.Problem(objective, [cp.norm(S @ x) <= 0.05, cp.sum(x) == 1, x >= 0])
    layer = ConvexLayer(problem, [mu, S], [x], backend=BACKEND)
    sol = jax.jit(layer.solve)(np.array(_JAM_MU), S0)
    assert sol.result == ui.RESULTS.successful
    mu.value, S.value = np.array(_JAM_MU), S0
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12)
    (value,) = layer.program.variables(sol.value)
    np.testing.assert_allclose(value, x.value, atol=1e-6)


def test_learned_quadratic_cost_box():
    x = cp.Variable(3)
    Q, p = cp.Parameter((3, 3)), cp.Parameter(3)
    cons = [x >= -1, x <= 1]
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Q @ x) + p @ x), cons)
    rng = np.random.default_rng(8)
    values = [np.eye(3) + 0.3 * rng.normal(size=(3, 3)), 2 * rng.normal(size=3)]
    _check(problem, [Q, p], [x], values)


def test_canonical_data_matches_cvxpy():
    # Sign conventions: our (P, q, A, b) are exactly what cvxpy hands a solver.
    from unimplicit._convex.canonicalize import canonicalize

    x, y = cp.Variable(3, nonneg=True), cp.Variable((2, 2))
    q, S, G = cp.Parameter(3), cp.Parameter((2, 2)), cp.Parameter((2, 3))
    M = np.array([[2.0, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 1]])
    cons = [cp.sum(x) == 1, y == S, cp.SOC(x[0] + 1, x[1:]), G @ x <= 3]
    objective = cp.quad_form(x, M) + q @ x + cp.sum(y)
    problem = cp.Problem(cp.Minimize(objective), cons)
    rng = np.random.default_rng(9)
    for param in (q, S, G):
        param.value = rng.normal(size=param.shape)
    program = canonicalize(problem, [G, q, S], [y, x], cons)
    P, qv, A, b = program.data([G.value, q.value, S.value])
    data, _, _ = problem.get_problem_data(solver=cp.CLARABEL)
    for ours, theirs in ((P, data["P"]), (A, data["A"])):
        np.testing.assert_allclose(ours, theirs.toarray(), atol=1e-14)
    np.testing.assert_allclose(qv, data["c"], atol=1e-14)
    np.testing.assert_allclose(b, data["b"], atol=1e-14)


# --- bad input ------------------------------------------------------------------


def test_not_dpp_refused():
    x, a, b = cp.Variable(), cp.Parameter(), cp.Parameter()
    problem = cp.Problem(cp.Minimize(a * b * x), [x >= 0, x <= 1])
    with pytest.raises(ValueError, match="not DPP"):
        ConvexLayer(problem, [a, b], [x])


def test_not_dcp_refused():
    x, a = cp.Variable(2), cp.Parameter(2)
    problem = cp.Problem(cp.Maximize(cp.sum_squares(x - a)), [x >= 0, x <= 1])
    with pytest.raises(ValueError, match="not convex.*DCP"):
        ConvexLayer(problem, [a], [x])


def test_unsupported_cone_refused():
    x, a = cp.Variable(2), cp.Parameter(2)
    problem = cp.Problem(cp.Minimize(cp.sum(cp.exp(x)) - a @ x))
    with pytest.raises(ValueError, match="registered cone kinds are supported"):
        ConvexLayer(problem, [a], [x])


def test_wrong_parameters_refused():
    problem, params, variables = _lp()
    with pytest.raises(ValueError, match="exactly the parameters"):
        ConvexLayer(problem, params[:2], variables)


def test_wrong_parameter_shape():
    problem, (c, G, h), variables = _lp()
    G = cp.Parameter((2, 3), name="G")
    problem = cp.Problem(cp.Minimize(c @ variables[0]), [G @ variables[0] <= h])
    layer = ConvexLayer(problem, [c, G, h], variables)
    values = _lp_values(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"'G' has shape \(2, 3\).*shape \(3, 2\)"):
        layer(values[0], values[1].T, values[2])
    with pytest.raises(ValueError, match="disagree on the batch size"):
        layer(np.zeros((2, 3)), np.zeros((3, 2, 3)), values[2])


def test_infeasible_unbounded_and_nan_inside_batch():
    x = cp.Variable(2)
    c, G, h = cp.Parameter(2), cp.Parameter((4, 2)), cp.Parameter(4)
    problem = cp.Problem(cp.Minimize(c @ x), [G @ x <= h])
    layer = ConvexLayer(problem, [c, G, h], [x], backend=BACKEND, throw=False)
    box = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    cs = np.array([[1.0, 2], [1, 2], [1, 1], [np.nan, 1]])
    Gs = np.stack([box, box, np.concatenate([box[:2], box[:2]]), box])
    hs = np.array([[1.0, 1, 1, 1], [-1, 1, -1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    sol = jax.jit(layer.solve)(cs, Gs, hs)
    expected = [
        ui.RESULTS.successful,
        ui.RESULTS.primal_infeasible,  # x0 <= -1 and x0 >= 1
        ui.RESULTS.dual_infeasible,  # min x0 + x1 with only upper bounds
        ui.RESULTS.nonfinite_input,
    ]
    for want in expected:
        assert np.array_equal(sol.result == want, [r == want for r in expected])
    # The other samples do not disturb the good one.
    assert_tree_allclose(sol.value.x[0], jnp.array([-1.0, -1.0]), rtol=0, atol=1e-7)


def test_nan_parameters_throw(lp):
    # Reuses test_lp's compiled function: NaN input raises from inside it.
    problem, params, variables, layer = lp
    c, G, h = _lp_values(np.random.default_rng(11))
    c[1] = np.nan
    values = tuple(jnp.asarray(v) for v in (c, G, h))
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(_jitted_vjp(layer)(values, (jnp.ones(3),)))
