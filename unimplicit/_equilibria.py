"""The two equilibrium conditions users write by hand: fixed points and roots."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PyTree

from ._adjoint import ImplicitAdjoint
from ._condition import AbstractEquilibrium, AbstractFixedPoint
from ._linear_solver import NeumannSolver
from ._misc import check_same_structure, structure_of
from ._precision import by_precision, KRYLOV_TOLERANCE, NEUMANN_TOLERANCES


def _krylov_linear_solver(y: PyTree) -> lx.AbstractLinearSolver:
    # Matrix-free: the Jacobian is never materialised, and the transposed solve
    # only needs vector-Jacobian products.
    tol = by_precision(y, KRYLOV_TOLERANCE)
    return lx.GMRES(rtol=tol, atol=tol, restart=40, stagnation_iters=40)


def _fixed_point_linear_solver(y: PyTree) -> lx.AbstractLinearSolver:
    # The backward system of a fixed point, u = w + u df/dy, is itself a fixed-point
    # problem, and at a fixed point that a forward solver converged to, df/dy is
    # (nearly) a contraction: Anderson-accelerated iteration, as in the forward
    # pass, solves it. On the DEQ benchmarks it gives GMRES's gradient error in
    # 0.2-0.7x the time (GMRES builds its whole restart basis before it first
    # checks convergence), and unlike GMRES it did not stagnate in float32
    # training. Singular or expanding systems are reported as failures, not
    # returned.
    rtol, atol = by_precision(y, NEUMANN_TOLERANCES)
    return NeumannSolver(rtol=rtol, atol=atol, history=5)


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


class FixedPoint(AbstractFixedPoint):
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
        return self.fn(y, args)

    def residual(self, y: PyTree, args: PyTree) -> PyTree:
        return jtu.tree_map(jnp.subtract, self.fn(y, args), y)

    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        return _init_for_map(self.fn, y0, args, "FixedPoint", "`fn` (FixedPoint)")

    def closure_convert(self, y0: PyTree, args: PyTree) -> "FixedPoint":
        return FixedPoint(eqx.filter_closure_convert(self.fn, y0, args))

    def default_linear_solver(self, y: PyTree, args: PyTree) -> lx.AbstractLinearSolver:
        return _fixed_point_linear_solver(y)

    def default_adjoint(self) -> ImplicitAdjoint:
        return ImplicitAdjoint()


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

    def default_adjoint(self) -> ImplicitAdjoint:
        return ImplicitAdjoint()
