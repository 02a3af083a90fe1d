import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PyTree

from ._linear_solver import NeumannSolver
from ._misc import check_same_structure, structure_of


class AbstractCondition(eqx.Module):
    """What the output `y` of an implicit layer must satisfy, given inputs `args`.

    A condition says nothing about how `y` is found (that is the backend's job) or
    how it is differentiated (the adjoint's). Pass one to [`unimplicit.solve`][].
    """

    @abc.abstractmethod
    def backend_hint(self) -> str:
        """Names the backends able to solve this condition, for error messages."""


class AbstractEquilibrium(AbstractCondition):
    """A condition `F(y, args) = 0` with a residual `F` that vanishes at the answer.

    Every equilibrium is differentiated by the same implicit-function-theorem rule
    (see [`unimplicit.ImplicitAdjoint`][]), which only needs `residual`.
    """

    @abc.abstractmethod
    def residual(self, y: PyTree, args: PyTree) -> PyTree:
        """The residual `F(y, args)`: same structure as `y`, zero at a solution."""

    @abc.abstractmethod
    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        """Validate (or create) the initial state, raising at trace time if wrong."""

    @abc.abstractmethod
    def closure_convert(self, y0: PyTree, args: PyTree) -> "AbstractEquilibrium":
        """Return an equivalent condition whose closed-over arrays are PyTree leaves.

        Needed so that values a user function closes over (for example network
        weights under `jax.grad`) are seen, and differentiated, by the custom JVP.
        """

    @abc.abstractmethod
    def default_linear_solver(self, y: PyTree, args: PyTree) -> lx.AbstractLinearSolver:
        """The Lineax solver that `ImplicitAdjoint()` uses when given none.

        It is chosen at the solution `y`, with the condition's `args`: a solver
        may use the data behind `∂F/∂y` directly rather than reading it off the
        operator.
        """


def _is_double(y: PyTree) -> bool:
    return any(jnp.asarray(x).dtype == jnp.float64 for x in jtu.tree_leaves(y))


def _krylov_linear_solver(y: PyTree) -> lx.AbstractLinearSolver:
    # Matrix-free: the Jacobian is never materialised, and the transposed solve
    # only needs vector-Jacobian products.
    tol = 1e-10 if _is_double(y) else 1e-4
    return lx.GMRES(rtol=tol, atol=tol, restart=40, stagnation_iters=40)


def _fixed_point_linear_solver(y: PyTree) -> lx.AbstractLinearSolver:
    # The backward system of a fixed point, u = w + u df/dy, is itself a fixed-point
    # problem, and at a fixed point that a forward solver converged to, df/dy is
    # (nearly) a contraction: Anderson-accelerated iteration, as in the forward
    # pass, solves it. On the DEQ benchmarks it gives GMRES's gradient error in
    # 0.2-0.7x the time (GMRES builds its whole restart basis before it first
    # checks convergence), and unlike GMRES it did not stagnate in float32
    # training. A small `atol` matters in float32: at 1e-6 the gradient error
    # tripled (benchmarks/RESULTS.md, DEQ section). Singular or expanding systems
    # are reported as failures, not returned.
    if _is_double(y):
        return NeumannSolver(rtol=1e-10, atol=1e-12, history=5)
    return NeumannSolver(rtol=1e-4, atol=1e-8, history=5)


def _init_for_map(
    fn: Callable, y0: PyTree | None, args: PyTree, name: str, out: str
) -> PyTree:
    if y0 is None:
        raise ValueError(
            f"`{name}` needs an initial value: pass `y0=` to `unimplicit.solve` (for "
            "a `DEQ`, the layer builds a zero initial state for you)."
        )
    y0 = jtu.tree_map(jnp.asarray, y0)
    for leaf in jtu.tree_leaves(y0):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"`y0` must hold floating-point arrays, but got dtype {leaf.dtype}."
            )
    out_struct = jax.eval_shape(fn, y0, args)
    check_same_structure(out_struct, structure_of(y0), f"the output of {out}", "`y0`")
    return y0


class FixedPoint(AbstractEquilibrium):
    """The fixed-point condition `y = fn(y, args)`.

    Its residual is `fn(y, args) - y`. This is the condition of a deep equilibrium
    model: `fn` is the weight-tied cell, `args` its injected input.

    **Arguments:**

    - `fn`: a callable `fn(y, args) -> y`, returning a PyTree with the structure,
        shapes and dtypes of `y`. An `eqx.Module` (such as a network cell) works,
        and its parameters are differentiated.
    """

    fn: Callable[[PyTree, Any], PyTree]

    def fixed_point_map(self, y: PyTree, args: PyTree) -> PyTree:
        """Evaluate `fn(y, args)`."""
        return self.fn(y, args)

    def residual(self, y: PyTree, args: PyTree) -> PyTree:
        return jtu.tree_map(jnp.subtract, self.fn(y, args), y)

    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        return _init_for_map(self.fn, y0, args, "FixedPoint", "`fn` (FixedPoint)")

    def closure_convert(self, y0: PyTree, args: PyTree) -> "FixedPoint":
        return FixedPoint(eqx.filter_closure_convert(self.fn, y0, args))

    def default_linear_solver(self, y: PyTree, args: PyTree) -> lx.AbstractLinearSolver:
        return _fixed_point_linear_solver(y)

    def backend_hint(self) -> str:
        return (
            "a fixed-point solver (unimplicit.Anderson, "
            "optimistix.FixedPointIteration), a root finder (optimistix.Newton, "
            "optimistix.Chord, unimplicit.Broyden), a least-squares solver "
            "(optimistix.LevenbergMarquardt), a minimiser (optimistix.BFGS), or "
            "unimplicit.Diffrax (steady state)"
        )


class Root(AbstractEquilibrium):
    """The root condition `fn(y, args) = 0`.

    **Arguments:**

    - `fn`: a callable `fn(y, args)` returning a PyTree with the structure, shapes
        and dtypes of `y` (the system is square, so that the implicit function
        theorem applies).
    """

    fn: Callable[[PyTree, Any], PyTree]

    def residual(self, y: PyTree, args: PyTree) -> PyTree:
        return self.fn(y, args)

    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        return _init_for_map(self.fn, y0, args, "Root", "`fn` (Root)")

    def closure_convert(self, y0: PyTree, args: PyTree) -> "Root":
        return Root(eqx.filter_closure_convert(self.fn, y0, args))

    def default_linear_solver(self, y: PyTree, args: PyTree) -> lx.AbstractLinearSolver:
        return _krylov_linear_solver(y)

    def backend_hint(self) -> str:
        return (
            "a root finder (optimistix.Newton, optimistix.Chord, unimplicit.Broyden), "
            "a least-squares solver (optimistix.LevenbergMarquardt, "
            "optimistix.GaussNewton), a minimiser (optimistix.BFGS), or "
            "unimplicit.Diffrax (steady state)"
        )
