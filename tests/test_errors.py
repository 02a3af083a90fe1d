"""Bad input gets a clear error, never a silent wrong answer."""

import re

import jax
import jax.numpy as jnp
import optimistix as optx
import pytest

import unimplicit as ui


FPI = optx.FixedPointIteration(rtol=1e-8, atol=1e-8)
AFFINE = ui.FixedPoint(lambda y, a: a * y + 1.0)  # converges iff |a| < 1


def test_y0_structure_mismatch_names_both():
    cond = ui.FixedPoint(lambda y, a: {"u": y, "v": y})
    with pytest.raises(ValueError, match=r"`y0` has PyTree structure.*u.*v"):
        ui.solve(cond, FPI, None, y0=jnp.zeros(2))


def test_y0_shape_mismatch_names_both():
    cond = ui.FixedPoint(lambda y, a: jnp.ones((3, 2)) @ y)
    with pytest.raises(
        ValueError, match=re.escape("float64[2]") + ".*" + re.escape("float64[3]")
    ):
        ui.solve(cond, FPI, None, y0=jnp.zeros(2))


def test_y0_dtype_mismatch_names_both():
    cond = ui.FixedPoint(lambda y, a: y.astype(jnp.float64) * a)
    with pytest.raises(TypeError, match="float32.*float64"):
        ui.solve(cond, FPI, jnp.array(0.5), y0=jnp.zeros(2, jnp.float32))


def test_y0_missing_and_integer():
    with pytest.raises(ValueError, match="needs an initial value"):
        ui.solve(AFFINE, FPI, 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        ui.solve(AFFINE, FPI, 0.5, y0=jnp.array(0))


def test_nonconvergence_raises_naming_residual_and_steps():
    solve = jax.jit(lambda a: ui.solve(AFFINE, FPI, a, y0=0.0, max_steps=10).value)
    with pytest.raises(Exception, match=r"residual norm [0-9.e+]+, after 10 steps"):
        jax.block_until_ready(solve(2.0))


def test_nonconvergence_without_throw_returns_value_and_code():
    sol = ui.solve(AFFINE, FPI, 2.0, y0=jnp.array(0.0), max_steps=10, throw=False)
    assert sol.result == ui.RESULTS.nonlinear_max_steps_reached
    assert float(sol.value) == 2.0**10 - 1  # the tenth iterate, returned as is
    assert int(sol.stats["num_steps"]) == 10


def test_vmap_failing_sample_leaves_others_alone():
    run = jax.jit(
        jax.vmap(lambda a: ui.solve(AFFINE, FPI, a, y0=jnp.array(0.0), throw=False))
    )
    both = run(jnp.array([0.5, 2.0, 0.25]))
    alone = run(jnp.array([0.5, 0.25]))
    assert list(both.result == ui.RESULTS.successful) == [True, False, True]
    assert bool((both.result == ui.RESULTS.nonlinear_max_steps_reached)[1])
    assert jnp.array_equal(both.value[jnp.array([0, 2])], alone.value)
    assert jnp.array_equal(
        both.stats["num_steps"][jnp.array([0, 2])], alone.stats["num_steps"]
    )


def test_nan_input_is_reported_nonfinite():
    sol = ui.solve(AFFINE, FPI, jnp.nan, y0=jnp.array(0.0), throw=False)
    assert sol.result == ui.RESULTS.nonfinite
    with pytest.raises(Exception, match="Nonfinite"):
        jax.block_until_ready(ui.solve(AFFINE, FPI, jnp.nan, y0=jnp.array(0.0)).value)


@pytest.mark.parametrize("max_steps", [0, -3])
def test_nonpositive_max_steps(max_steps):
    with pytest.raises(ValueError, match="positive int"):
        ui.solve(AFFINE, FPI, 0.5, y0=jnp.array(0.0), max_steps=max_steps)
    with pytest.raises(ValueError, match="positive int"):
        ui.DEQ(lambda z, x: z, max_steps=max_steps)


def test_backend_that_cannot_solve_lists_those_that_can():
    # The list is built from what the backends declare, not from the condition.
    ode = ui.ODE(lambda t, y, a: -y, 0.0, 1.0)
    with pytest.raises(
        ValueError,
        match="Newton cannot solve a ODE.*Backends that can: unimplicit.Diffrax",
    ):
        ui.solve(ode, optx.Newton(1e-6, 1e-6), y0=jnp.array(1.0))
    root = ui.Root(lambda y, a: y - a)
    with pytest.raises(
        ValueError, match="InteriorPoint cannot solve a Root.*unimplicit.Anderson"
    ):
        ui.solve(root, ui.InteriorPoint(), 1.0, y0=jnp.array(0.0))
    with pytest.raises(TypeError, match="must be an Optimistix solver"):
        ui.solve(root, "newton", 1.0, y0=jnp.array(0.0))


def test_wrong_adjoint_or_condition():
    with pytest.raises(TypeError, match="unimplicit.AbstractAdjoint"):
        ui.solve(AFFINE, FPI, 0.5, y0=jnp.array(0.0), adjoint=optx.ImplicitAdjoint())
    with pytest.raises(TypeError, match="PhantomAdjoint cannot differentiate a Root"):
        ui.solve(
            ui.Root(lambda y, a: y - a),
            optx.Newton(1e-8, 1e-8),
            1.0,
            y0=jnp.array(0.0),
            adjoint=ui.PhantomAdjoint(),
        )
    with pytest.raises(TypeError, match="condition"):
        ui.solve(lambda y, a: y, FPI, 1.0, y0=jnp.array(0.0))


def test_least_squares_local_minimum_is_not_a_root():
    # |y^2 + 1| has a minimum at 0 but no real root.
    cond = ui.Root(lambda y, a: y**2 + a)
    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)
    sol = ui.solve(cond, solver, 1.0, y0=jnp.array(0.5), throw=False)
    assert sol.result == ui.RESULTS.not_a_root
    good = ui.solve(cond, solver, -4.0, y0=jnp.array(1.0))
    assert jnp.allclose(good.value, 2.0)


def test_deq_with_unknown_state_shape_errors_clearly():
    deq = ui.DEQ(lambda z, x: z[:2])  # the state is not shaped like the input
    with pytest.raises(ValueError, match="shapes"):
        deq(jnp.ones(3))


def test_vmap_throw_names_the_failing_sample():
    run = jax.jit(jax.vmap(lambda a: ui.solve(AFFINE, FPI, a, y0=jnp.array(0.0)).value))
    assert jnp.allclose(run(jnp.array([0.5, 0.25])), jnp.array([2.0, 4.0 / 3.0]))
    with pytest.raises(Exception, match=r"1 of 3 samples failed; first: #1"):
        jax.block_until_ready(run(jnp.array([0.5, 2.0, 0.25])))


def _forward(inputs):
    return inputs, None


def _residual(y, inputs):
    return y - inputs


def test_implicit_solve_refuses_a_forward_that_closes_over_arrays():
    # A closed-over array would escape an outer `jit` under `grad` (the bug the
    # check guards against): refused before anything is traced.
    captured = jnp.ones(2)
    solver = optx.Newton(1e-6, 1e-6).linear_solver
    with pytest.raises(AssertionError, match="`forward` must be a module-level"):
        ui.implicit_solve(lambda x: (x + captured, None), _residual, captured, solver)
    with pytest.raises(AssertionError, match="`residual` must be a module-level"):
        ui.implicit_solve(_forward, lambda y, x: y - captured, captured, solver)
    # A module-level function passes, and so does a partial binding no arrays.
    y, _ = ui.implicit_solve(_forward, _residual, captured, solver)
    assert jnp.array_equal(y, captured)


def test_adjoint_arguments_are_validated():
    with pytest.raises(ValueError, match="checkpoints=...\\) must be None or an int"):
        ui.UnrolledAdjoint(checkpoints=0)
    # (Under the test suite's jaxtyping hook the annotation check fires first, with
    # its own TypeError naming the class and the parameter; without it, ours.)
    with pytest.raises(TypeError, match=r"DiffraxAdjoint[\s\S]*adjoint"):
        ui.DiffraxAdjoint(ui.ImplicitAdjoint())  # pyright: ignore[reportArgumentType]
