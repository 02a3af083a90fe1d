import abc
import functools as ft
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PyTree

from ._backend import AbstractBackend, BackendOutput
from ._condition import AbstractCondition, AbstractEquilibrium, AbstractFixedPoint
from ._ift import implicit_solve
from ._misc import tree_stop_gradient


class AbstractAdjoint(eqx.Module):
    """How the output of a condition is differentiated.

    An adjoint declares which conditions it can differentiate (`supports`) and runs
    the backend (`apply`), attaching its derivatives to the value.
    """

    @abc.abstractmethod
    def supports(self, condition: AbstractCondition) -> bool:
        """Whether this adjoint can differentiate `condition`."""

    @abc.abstractmethod
    def apply(
        self,
        backend: AbstractBackend,
        condition: AbstractCondition,
        y0: PyTree,
        args: PyTree,
        *,
        max_steps: int,
        options: dict[str, Any],
    ) -> BackendOutput:
        """Run `backend` on `condition`, attaching this adjoint's derivatives.

        **Returns:** the [`unimplicit.BackendOutput`][] of `backend.forward`.
        """


def _forward(inputs, max_steps):
    # Module-level (and so closing over nothing): every array it uses, the initial
    # state included, arrives through `inputs`, which the custom JVP sees. A
    # closed-over tracer would leak out of an outer `jax.jit` under `jax.grad`.
    backend, condition, y0, args, options = inputs
    out = backend.forward(
        condition, y0, args, max_steps=max_steps, options=options, adjoint=None
    )
    return out.value, eqx.tree_at(lambda o: o.value, out, None)


def _residual(y, inputs):
    _, condition, _, args, _ = inputs
    return condition.residual(y, args)


def _default_linear_solver(y, inputs):
    _, condition, _, args, _ = inputs
    return condition.default_linear_solver(y, args)


class ImplicitAdjoint(AbstractAdjoint):
    """Differentiate by the implicit function theorem: one linear solve.

    At the solution `y*` of `F(y, θ) = 0`, the derivative is
    `dy*/dθ = -(∂F/∂y)^{-1} ∂F/∂θ`; reverse mode solves the transposed system. The
    forward iterations are not differentiated, so memory does not grow with their
    number. The default adjoint of every equilibrium condition.

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

    def supports(self, condition: AbstractCondition) -> bool:
        return isinstance(condition, AbstractEquilibrium)

    def apply(
        self, backend, condition, y0, args, *, max_steps, options
    ) -> BackendOutput:
        assert isinstance(condition, AbstractEquilibrium)
        condition = condition.closure_convert(y0, args)
        # Without a solver given, the condition picks one at the solution.
        linear_solver = self.linear_solver
        if linear_solver is None:
            linear_solver = _default_linear_solver
        # The initial state is an input of the forward solve but not of the
        # answer: no tangent flows through it.
        y0 = jax.lax.stop_gradient(y0)
        value, out = implicit_solve(
            ft.partial(_forward, max_steps=max_steps),
            _residual,
            (backend, condition, y0, args, options),
            linear_solver,
            self.tags,
        )
        return eqx.tree_at(lambda o: o.value, out, value, is_leaf=lambda x: x is None)


class UnrolledAdjoint(AbstractAdjoint):
    """Differentiate by backpropagating through every solver iteration.

    Exact for the iterates actually computed, but its memory grows with the number
    of iterations. The loop is checkpointed, which trades some of that memory for
    recomputation. Mostly useful as a reference for the other adjoints. Works with
    every condition and backend (for a flow on `unimplicit.Diffrax`, it is
    `diffrax.RecursiveCheckpointAdjoint(checkpoints)`).

    **Arguments:**

    - `checkpoints`: how many iterates the loop stores for the backward pass;
        `None` lets Equinox (or Diffrax) choose (about the square root of
        `max_steps`), `max_steps` stores every iterate (plain backpropagation).
    """

    checkpoints: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        c = self.checkpoints
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(
                f"UnrolledAdjoint(checkpoints=...) must be None or an int >= 1, got "
                f"{c!r}."
            )

    def supports(self, condition: AbstractCondition) -> bool:
        return True

    def apply(
        self, backend, condition, y0, args, *, max_steps, options
    ) -> BackendOutput:
        return backend.forward(
            condition, y0, args, max_steps=max_steps, options=options, adjoint=self
        )


class PhantomAdjoint(AbstractAdjoint):
    """Phantom gradients: differentiate a few damped steps taken at the solution.

    The forward value is the solver's. The gradient is that of
    `z_{k+1} = (1 - λ) z_k + λ f(z_k, args)` run for `steps` steps from the
    (non-differentiated) solution: a cheap approximation of the implicit gradient
    (Geng et al., 2021, "On Training Implicit Models"). `steps=1, damping=1.0` is
    Jacobian-free backpropagation (Fung et al., 2022, "JFB: Jacobian-Free
    Backpropagation for Implicit Networks"). Only for fixed-point conditions.

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

    def supports(self, condition: AbstractCondition) -> bool:
        return isinstance(condition, AbstractFixedPoint)

    def apply(
        self, backend, condition, y0, args, *, max_steps, options
    ) -> BackendOutput:
        assert isinstance(condition, AbstractFixedPoint)
        inputs = tree_stop_gradient((condition, y0, args))
        out = backend.forward(
            *inputs, max_steps=max_steps, options=options, adjoint=None
        )
        y_star = jax.lax.stop_gradient(out.value)
        z = y_star
        lam = self.damping
        for _ in range(self.steps):
            fz = condition.fixed_point_map(z, args)
            z = jtu.tree_map(lambda a, b: (1 - lam) * a + lam * b, z, fz)
        # Straight-through: the value stays the solver's, the gradient is z's.
        value = jtu.tree_map(lambda s, a: s + (a - jax.lax.stop_gradient(a)), y_star, z)
        return eqx.tree_at(lambda o: o.value, out, value)
