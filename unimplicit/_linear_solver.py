from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, PyTree, Scalar

from ._solver._common import is_concrete
from ._solver.anderson import Anderson


# A residual this many times the smallest one seen means the iteration diverges.
_DIVERGED = 1e4


class NeumannSolver(lx.AbstractLinearSolver):
    """Solves $(J - I) x = b$ by fixed-point (Neumann series) iteration.

    The operator given to it is $A = J - I$: the Jacobian of a fixed-point residual
    $f(z) - z$, which is exactly the system in the implicit-function-theorem
    derivative of a deep equilibrium model. Rewriting $A x = b$ as $x = J x - b$
    gives the iteration $x_{k+1} = x_k + A x_k - b$, which sums the Neumann series
    of $(I - J)^{-1}$ and converges whenever the spectral radius of $J$ is below
    one (as it is at the fixed point of a contractive map). In reverse mode JAX
    solves the transposed system, $u^T = w^T + u^T J$: equation (9) of the seed talk.
    With `history > 0` the iteration is Anderson-accelerated (see
    [`unimplicit.Anderson`][]), typically needing far fewer steps.

    Each step costs one product with the operator (one JVP, or one VJP when
    transposed); nothing of size $n^2$ is formed. Convergence is declared when
    `norm((A x - b) / (atol + rtol * |x|)) < 1`. A solve that does not converge
    within `max_steps` reports `lineax.RESULTS.max_steps_reached`, and one whose
    residual blows up (spectral radius of $J$ at least one, for example a singular
    $I - J$) reports `lineax.RESULTS.breakdown`; with `throw=True` (the default in
    `lineax.linear_solve` and in [`unimplicit.ImplicitAdjoint`][]) either raises
    instead of returning a wrong gradient.

    Use it as `ImplicitAdjoint(linear_solver=NeumannSolver(rtol, atol))`.
    """

    rtol: float
    atol: float
    max_steps: int = eqx.field(static=True, default=1000)
    history: int = eqx.field(static=True, default=0)
    norm: Callable[[PyTree], Scalar] = optx.max_norm

    def __check_init__(self):
        if (
            is_concrete(self.rtol)
            and is_concrete(self.atol)
            and min(self.rtol, self.atol) < 0
        ):
            raise ValueError(
                "NeumannSolver(rtol, atol) must be non-negative, got "
                f"rtol={self.rtol!r}, atol={self.atol!r}."
            )
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(
                "NeumannSolver(max_steps=...) must be a positive int, got "
                f"{self.max_steps!r}."
            )
        if not isinstance(self.history, int) or self.history < 0:
            raise ValueError(
                "NeumannSolver(history=...) must be a non-negative int, got "
                f"{self.history!r}."
            )

    def init(
        self, operator: lx.AbstractLinearOperator, options: dict[str, Any]
    ) -> lx.AbstractLinearOperator:
        del options
        if (
            eqx.tree_equal(operator.in_structure(), operator.out_structure())
            is not True
        ):
            raise ValueError(
                "NeumannSolver solves (J - I) x = b, so the operator must be square "
                "with equal input and output structures; got input "
                f"{operator.in_structure()} and output {operator.out_structure()}."
            )
        return lx.linearise(operator)

    def compute(
        self,
        state: lx.AbstractLinearOperator,
        vector: PyTree[Array],
        options: dict[str, Any],
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        operator = state
        x0 = options.get("y0", jtu.tree_map(jnp.zeros_like, vector))

        def step_map(x, _):
            ax = operator.mv(x)
            return jtu.tree_map(lambda xi, ai, bi: xi + ai - bi, x, ax, vector), None

        if self.history == 0:
            x, converged, diverged, num_steps = self._plain(step_map, x0)
        else:
            x, converged, diverged, num_steps = self._accelerated(step_map, x0)
        result = lx.RESULTS.where(
            converged,
            lx.RESULTS.successful,
            lx.RESULTS.where(
                diverged, lx.RESULTS.breakdown, lx.RESULTS.max_steps_reached
            ),
        )
        return x, result, {"num_steps": num_steps, "max_steps": self.max_steps}

    def _plain(self, step_map: Callable, x0: PyTree[Array]):
        # The bare iteration x <- x + A x - b, with only scalars of bookkeeping: in a
        # vmapped loop every carried array is copied each step, so keep it small.
        def cond_fun(carry):
            _, num_steps, error, _, diverged = carry
            return (error >= 1) & jnp.invert(diverged) & (num_steps < self.max_steps)

        def body_fun(carry):
            x, num_steps, _, smallest, _ = carry
            new_x, _ = step_map(x, None)
            r = (new_x**ω - x**ω).ω
            with jax.numpy_dtype_promotion("standard"):
                scale = (self.atol + self.rtol * ω(new_x).call(jnp.abs)).ω
                error = self.norm((r**ω / scale**ω).ω).astype(smallest.dtype)
            size = self.norm(r).astype(smallest.dtype)
            smallest = jnp.minimum(smallest, size)
            diverged = jnp.invert(jnp.isfinite(size)) | (size > _DIVERGED * smallest)
            return new_x, num_steps + 1, error, smallest, diverged

        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        inf = jnp.array(jnp.inf, jnp.finfo(dtype).dtype)
        init = (x0, jnp.array(0), inf, inf, jnp.array(False))
        x, num_steps, error, _, diverged = jax.lax.while_loop(cond_fun, body_fun, init)
        return x, error < 1, diverged, num_steps

    def _accelerated(self, step_map: Callable, x0: PyTree[Array]):
        solver = Anderson(
            rtol=self.rtol, atol=self.atol, history=self.history, norm=self.norm
        )
        tags = frozenset()
        solver_state = solver.init(step_map, x0, None, {}, None, None, tags)

        def cond_fun(carry):
            _, num_steps, _, done = carry
            return jnp.invert(done) & (num_steps < self.max_steps)

        def body_fun(carry):
            x, num_steps, s, _ = carry
            x, s, _ = solver.step(step_map, x, None, {}, s, tags)
            done, _ = solver.terminate(step_map, x, None, {}, s, tags)
            return x, num_steps + 1, s, done

        init = (x0, jnp.array(0), solver_state, jnp.array(False))
        x, num_steps, s, _ = jax.lax.while_loop(cond_fun, body_fun, init)
        x, _, _ = solver.postprocess(
            step_map, x, None, None, {}, s, tags, optx.RESULTS.successful
        )
        return x, s.error < 1, s.diverged, num_steps

    def transpose(
        self, state: lx.AbstractLinearOperator, options: dict[str, Any]
    ) -> tuple[lx.AbstractLinearOperator, dict[str, Any]]:
        # The initial guess belongs to the original system, not the transposed one.
        del options
        return state.transpose(), {}

    def conj(
        self, state: lx.AbstractLinearOperator, options: dict[str, Any]
    ) -> tuple[lx.AbstractLinearOperator, dict[str, Any]]:
        del options
        return lx.conj(state), {}

    def assume_full_rank(self) -> bool:
        return True


NeumannSolver.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance: stop once `norm((A x - b) / (atol + rtol * |x|))` is
    below one.
- `atol`: absolute tolerance, as above.
- `max_steps`: the most iterations (operator products) before reporting
    `lineax.RESULTS.max_steps_reached`.
- `history`: `0` for the plain Neumann iteration; `m > 0` to Anderson-accelerate it
    with the last `m` iterates.
- `norm`: the norm in the convergence test, `optimistix.max_norm` by default.
"""
