import abc
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PyTree

from ._backend import AbstractBackend
from ._condition import AbstractEquilibrium, FixedPoint
from ._ift import implicit_solve
from ._misc import tree_stop_gradient
from ._solution import RESULTS


_Out = tuple[PyTree, RESULTS, dict[str, Any], Any]


class AbstractAdjoint(eqx.Module):
    """How the output of an equilibrium condition is differentiated."""

    @abc.abstractmethod
    def apply(
        self,
        backend: AbstractBackend,
        condition: AbstractEquilibrium,
        y0: PyTree,
        args: PyTree,
        *,
        max_steps: int,
        options: dict[str, Any],
    ) -> _Out:
        """Run `backend` on `condition`, attaching this adjoint's derivatives.

        **Returns:** `(value, result, stats, aux)` as from `AbstractBackend.forward`.
        """


def _forward(backend, y0, max_steps, options):
    def forward(inputs):
        condition, args = inputs
        value, result, stats, aux = backend.forward(
            condition,
            y0,
            args,
            max_steps=max_steps,
            options=options,
            differentiable=False,
        )
        return value, (result, stats, aux)

    return forward


def _residual(y, inputs):
    condition, args = inputs
    return condition.residual(y, args)


def _default_linear_solver(y, inputs):
    condition, args = inputs
    return condition.default_linear_solver(y, args)


class ImplicitAdjoint(AbstractAdjoint):
    """Differentiate by the implicit function theorem: one linear solve.

    At the solution `y*` of `F(y, θ) = 0`, the derivative is
    `dy*/dθ = -(∂F/∂y)^{-1} ∂F/∂θ`; reverse mode solves the transposed system. The
    forward iterations are not differentiated, so memory does not grow with their
    number.

    **Arguments:**

    - `linear_solver`: a Lineax solver for the system in `∂F/∂y`. `None` picks the
        condition's default, all matrix-free for `FixedPoint`/`Root`, so no
        Jacobian is ever materialised: for a `FixedPoint` (and so a `DEQ`),
        Anderson-accelerated fixed-point iteration on `u = w + u ∂f/∂y`
        ([`unimplicit.NeumannSolver`][] with `history=5`; `rtol=1e-4, atol=1e-8` in
        float32, `1e-10, 1e-12` in float64); for a `Root`, `lineax.GMRES`
        (tolerance `1e-4` in float32, `1e-10` in float64); for convex programs,
        a dense block elimination of the KKT system (refined normal-equations
        Cholesky with only equality and nonnegative rows, LU otherwise), chosen
        at the solution. A backward solve that fails (a singular
        `I - ∂f/∂y`, say) raises an error rather than returning NaN gradients.
    - `tags`: Lineax tags describing `∂F/∂y`, e.g. `lineax.symmetric_tag`.
    """

    linear_solver: lx.AbstractLinearSolver | None = None
    tags: frozenset[object] = frozenset()

    def apply(self, backend, condition, y0, args, *, max_steps, options) -> _Out:
        condition = condition.closure_convert(y0, args)
        # Without a solver given, the condition picks one at the solution.
        linear_solver = self.linear_solver
        if linear_solver is None:
            linear_solver = _default_linear_solver
        y0 = jax.lax.stop_gradient(y0)
        value, (result, stats, aux) = implicit_solve(
            _forward(backend, y0, max_steps, options),
            _residual,
            (condition, args),
            linear_solver,
            self.tags,
        )
        return value, result, stats, aux


class UnrolledAdjoint(AbstractAdjoint):
    """Differentiate by backpropagating through every solver iteration.

    Exact for the iterates actually computed, but its memory grows with the number
    of iterations. The loop is checkpointed, which trades some of that memory for
    recomputation. Mostly useful as a reference for the other adjoints.

    **Arguments:**

    - `checkpoints`: how many iterates an Optimistix-protocol loop stores for the
        backward pass; `None` lets Equinox choose (about the square root of
        `max_steps`), `max_steps` stores every iterate (plain backpropagation).
    """

    checkpoints: int | None = eqx.field(default=None, static=True)

    def apply(self, backend, condition, y0, args, *, max_steps, options) -> _Out:
        if self.checkpoints is not None:
            options = {**options, "checkpoints": self.checkpoints}
        return backend.forward(
            condition,
            y0,
            args,
            max_steps=max_steps,
            options=options,
            differentiable=True,
        )


class PhantomAdjoint(AbstractAdjoint):
    """Phantom gradients: differentiate a few damped steps taken at the solution.

    The forward value is the solver's. The gradient is that of
    `z_{k+1} = (1 - λ) z_k + λ f(z_k, args)` run for `steps` steps from the
    (non-differentiated) solution: a cheap approximation of the implicit gradient
    (Geng et al., 2021). `steps=1, damping=1.0` is Jacobian-free backpropagation
    (Fung et al., 2022). Only for `FixedPoint` conditions.

    **Arguments:**

    - `steps`: the number of differentiated steps `k >= 1`.
    - `damping`: the damping `λ` in `(0, 1]`.
    """

    steps: int = eqx.field(default=1, static=True)
    damping: float = eqx.field(default=1.0, static=True)

    def __check_init__(self):
        if self.steps < 1:
            raise ValueError(f"PhantomAdjoint needs steps >= 1, got {self.steps}.")
        if not 0 < self.damping <= 1:
            raise ValueError(
                f"PhantomAdjoint needs 0 < damping <= 1, got {self.damping}."
            )

    def apply(self, backend, condition, y0, args, *, max_steps, options) -> _Out:
        if not isinstance(condition, FixedPoint):
            raise TypeError(
                "PhantomAdjoint differentiates steps of a fixed-point map, so it "
                f"needs a FixedPoint condition, not {type(condition).__name__}. Use "
                "ImplicitAdjoint or UnrolledAdjoint instead."
            )
        inputs = tree_stop_gradient((condition, y0, args))
        value, result, stats, aux = backend.forward(
            inputs[0],
            inputs[1],
            inputs[2],
            max_steps=max_steps,
            options=options,
            differentiable=False,
        )
        y_star = jax.lax.stop_gradient(value)
        z = y_star
        lam = self.damping
        for _ in range(self.steps):
            fz = condition.fixed_point_map(z, args)
            z = jtu.tree_map(lambda a, b: (1 - lam) * a + lam * b, z, fz)
        # Straight-through: the value stays the solver's, the gradient is z's.
        value = jtu.tree_map(lambda s, a: s + (a - jax.lax.stop_gradient(a)), y_star, z)
        return value, result, stats, aux
