"""The convex-program condition: a DPP cvxpy problem as a parametric cone program."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, PyTree

from .._adjoint import ImplicitAdjoint
from .canonicalize import canonicalize, ParametricConeProgram
from .cone_program import AbstractConeCondition, ConeData, ConeProgram, PrimalDual


def _check_values(program: ParametricConeProgram, values: Any) -> tuple[Array, ...]:
    if not isinstance(values, (tuple, list)):
        raise TypeError(
            "ConvexProgram expects `args` to be a tuple of parameter values, in the "
            f"order of `parameters`, not {type(values).__name__}."
        )
    if len(values) != len(program.params):
        names = [slot.name for slot in program.params]
        raise ValueError(
            f"ConvexProgram expects {len(names)} parameter values ({names}), got "
            f"{len(values)}."
        )
    out = []
    for slot, value in zip(program.params, values):
        value = jnp.asarray(value)
        if value.shape != slot.shape:
            raise ValueError(
                f"Parameter {slot.name!r} has shape {slot.shape}, but its value has "
                f"shape {value.shape}."
            )
        if not (
            jnp.issubdtype(value.dtype, jnp.number)
            or jnp.issubdtype(value.dtype, jnp.bool_)
        ) or jnp.issubdtype(value.dtype, jnp.complexfloating):
            raise TypeError(
                f"Parameter {slot.name!r} must be real, got dtype {value.dtype}."
            )
        out.append(value)
    return tuple(out)


class ConvexProgram(AbstractConeCondition):
    """The condition "`y` solves this convex program at these parameter values".

    The cvxpy problem is canonicalised once, here, through cvxpy's parametric cone
    program (so it must be DPP). Its `args` are then the parameter values, in the
    order of `parameters`, and its state is the [`unimplicit.PrimalDual`][] point
    `(x, y, s)` of the cone program `min 1/2 x^T P x + q^T x  s.t.  A x + s = b,
    s ∈ K`, whose data is an affine function of the parameters. The residual is the
    cone program's, so gradients with respect to the parameters come from the one
    implicit-function-theorem rule. Solve it with [`unimplicit.InteriorPoint`][];
    [`unimplicit.ConvexLayer`][] wraps all of this as a layer.

    **Arguments:**

    - `problem`: a `cvxpy.Problem` that is convex (DCP) and DPP, whose cones are
        zero, nonnegative, second-order or another registered kind after
        canonicalisation.
    - `parameters`: all the problem's `cvxpy.Parameter`s, in the order their values
        are passed.
    - `variables`: the `cvxpy.Variable`s to read out of a solution.
    - `duals`: constraints of `problem` whose dual values to read out (default none).
        An equality or inequality constraint's dual has the constraint's shape; a
        `cvxpy.SOC` constraint's dual is its flat cone vector.
    - `smoothing`: `mu >= 0`; see [`unimplicit.ConeProgram`][].

    A problem that is not DCP or not DPP is refused with a `ValueError` giving
    cvxpy's reason.
    """

    program: ParametricConeProgram
    smoothing: float = eqx.field(static=True)

    def __init__(
        self,
        problem: Any,
        parameters: Sequence[Any],
        variables: Sequence[Any],
        duals: Sequence[Any] = (),
        *,
        smoothing: float = 0.0,
    ):
        self.program = canonicalize(problem, parameters, variables, duals)
        self.smoothing = smoothing

    def __check_init__(self):
        if not self.smoothing >= 0:
            raise ValueError(f"`smoothing` must be >= 0, got {self.smoothing}.")

    def cone_program(self) -> ConeProgram:
        return ConeProgram(self.program.cones, smoothing=self.smoothing)

    def cone_data(self, args: Sequence[ArrayLike]) -> ConeData:
        P, q, A, b = self.program.data(tuple(args))  # pyright: ignore
        return ConeData(P, q, A, b)

    def residual(self, y: PrimalDual, args: Sequence[ArrayLike]) -> PrimalDual:
        return self.cone_program().residual(y, self.cone_data(args))

    def init(self, y0: PrimalDual | None, args: Sequence[ArrayLike]) -> PrimalDual:
        values = _check_values(self.program, args)
        return self.cone_program().init(y0, self.cone_data(values))

    def closure_convert(self, y0: PyTree, args: PyTree) -> "ConvexProgram":
        # Everything the program holds is static NumPy data: nothing to convert.
        return self

    def default_linear_solver(self, y: PyTree, args: PyTree) -> lx.AbstractLinearSolver:
        return self.cone_program().default_linear_solver(y, self.cone_data(args))

    def default_adjoint(self) -> ImplicitAdjoint:
        return ImplicitAdjoint()

    def variables(self, value: PrimalDual) -> tuple[Array, ...]:
        """The requested variables' values, from a solution's primal `x`."""
        return self.program.split_primal(value.x)

    def duals(self, value: PrimalDual) -> tuple[Array, ...]:
        """The requested constraints' dual values, from a solution's dual `y`."""
        return self.program.split_dual(value.y)
