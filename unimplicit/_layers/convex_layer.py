from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._convex.interior_point import InteriorPoint
from .._convex.program import ConvexProgram
from .._solution import Solution
from .._solve import solve


class ConvexLayer(eqx.Module):
    """A differentiable convex-optimisation layer built from a DPP cvxpy problem.

    Called with parameter values, it returns the optimal values of `variables` (then
    the dual values of `duals`). The problem is canonicalised once, at construction;
    each call evaluates an affine map to cone-program data and solves it in pure JAX,
    so the layer works under `jax.jit`, `jax.vmap` and `jax.grad`, and on GPU.
    Gradients come from the implicit function theorem at the solution.

    As in cvxpylayers, a leading batch dimension on any parameter batches the solve
    (parameters without one are shared across the batch); `jax.vmap` over the layer
    works as well.

    **Arguments:**

    - `problem`: a `cvxpy.Problem` that is convex (DCP) and DPP.
    - `parameters`: all its `cvxpy.Parameter`s, in the order values are passed.
    - `variables`: the `cvxpy.Variable`s whose optimal values are returned.
    - `duals`: constraints whose optimal dual values are returned after the
        variables (default none).
    - `backend`: the solver; `InteriorPoint()` by default.
    - `adjoint`: how to differentiate; `ImplicitAdjoint()` by default (a dense
        block elimination of the cone-program residual's Jacobian: a refined
        normal-equations Cholesky with only equality and nonnegative rows, LU
        otherwise).
    - `smoothing`: `mu >= 0`: take the solution (and its gradient) at the central-path
        point `s∘y = mu e`, for smooth gradients at degenerate active sets.
    - `max_steps`: the bound on solver steps.
    - `throw`: if `True`, a failed solve (infeasible, unbounded, NaN input) raises;
        if `False`, inspect `ConvexLayer.solve(...).result` instead.
    """

    program: ConvexProgram
    backend: Any
    adjoint: AbstractAdjoint
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        problem: Any,
        parameters: Sequence[Any],
        variables: Sequence[Any],
        duals: Sequence[Any] = (),
        *,
        backend: Any = None,
        adjoint: AbstractAdjoint | None = None,
        smoothing: float = 0.0,
        max_steps: int = 256,
        throw: bool = True,
    ):
        self.program = ConvexProgram(
            problem, parameters, variables, duals, smoothing=smoothing
        )
        self.backend = InteriorPoint() if backend is None else backend
        self.adjoint = ImplicitAdjoint() if adjoint is None else adjoint
        self.max_steps = max_steps
        self.throw = throw

    def _batch_axes(self, values: tuple[Array, ...]) -> tuple[int | None, ...] | None:
        params = self.program.program.params
        if len(values) != len(params):
            names = [slot.name for slot in params]
            raise ValueError(
                f"ConvexLayer expects {len(names)} parameter values ({names}), got "
                f"{len(values)}."
            )
        axes, sizes = [], {}
        for slot, value in zip(params, values):
            if value.shape == slot.shape:
                axes.append(None)
            elif value.ndim == len(slot.shape) + 1 and value.shape[1:] == slot.shape:
                axes.append(0)
                sizes[slot.name] = value.shape[0]
            else:
                raise ValueError(
                    f"Parameter {slot.name!r} has shape {slot.shape} (or "
                    f"(batch, *{slot.shape}) when batched), but its value has shape "
                    f"{value.shape}."
                )
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Batched parameters disagree on the batch size: {sizes}.")
        return tuple(axes) if sizes else None

    def _solve(self, values: tuple[ArrayLike, ...]) -> tuple[Solution, bool]:
        arrays = []
        for value in values:
            value = jnp.asarray(value)
            if not jnp.issubdtype(value.dtype, jnp.inexact):
                value = value.astype(jnp.result_type(float))
            arrays.append(value)
        axes = self._batch_axes(tuple(arrays))

        def one(*args):
            return solve(
                self.program,
                self.backend,
                args,
                adjoint=self.adjoint,
                max_steps=self.max_steps,
                throw=self.throw,
            )

        batched = axes is not None
        sol = jax.vmap(one, in_axes=axes)(*arrays) if batched else one(*arrays)
        return sol, batched

    def solve(self, *values: ArrayLike) -> Solution:
        """Solve and return the whole [`unimplicit.Solution`][].

        Its `value` is the cone program's [`unimplicit.PrimalDual`][] point `(x, y,
        s)`; `result` and `stats` are per sample when batched.
        """
        return self._solve(values)[0]

    def __call__(self, *values: ArrayLike) -> tuple[Array, ...]:
        """The optimal `variables` (then `duals`) for these parameter values."""
        sol, batched = self._solve(values)
        program = self.program

        def split(value):
            return program.variables(value) + program.duals(value)

        return jax.vmap(split)(sol.value) if batched else split(sol.value)
