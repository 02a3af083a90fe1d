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

from ._iterate import iterate
from ._misc import structure_of
from ._solution import RESULTS
from ._solver._common import is_concrete, stop_and_result
from ._solver.anderson import Anderson


# A residual this many times the smallest one seen means the iteration diverges.
_DIVERGED = 1e4


def _neumann_step(x, inputs):
    # x <- x + A x - b, whose fixed point solves A x = b.
    operator, vector = inputs
    ax = operator.mv(x)
    return jtu.tree_map(lambda xi, ai, bi: xi + ai - bi, x, ax, vector), None


class _NeumannState(eqx.Module):
    error: Array
    smallest: Array
    diverged: Array


class _NeumannIteration(optx.AbstractFixedPointSolver):
    # The bare iteration, with only scalars of bookkeeping: in a vmapped loop every
    # carried array is copied each step, so it keeps no history.
    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar]

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, args, options, f_struct, aux_struct, tags
        dtype = jnp.result_type(*jtu.tree_leaves(y))
        inf = jnp.array(jnp.inf, jnp.finfo(dtype).dtype)
        return _NeumannState(inf, inf, jnp.array(False))

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        new_y, aux = fn(y, args)
        r = (new_y**ω - y**ω).ω
        dtype = state.smallest.dtype
        with jax.numpy_dtype_promotion("standard"):
            scale = (self.atol + self.rtol * ω(new_y).call(jnp.abs)).ω
            error = self.norm((r**ω / scale**ω).ω).astype(dtype)
        size = self.norm(r).astype(dtype)
        smallest = jnp.minimum(state.smallest, size)
        diverged = jnp.invert(jnp.isfinite(size)) | (size > _DIVERGED * smallest)
        return new_y, _NeumannState(error, smallest, diverged), aux

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        return stop_and_result(state.error, state.diverged)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, state, tags, result
        return y, aux, {}


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
        if self.history == 0:
            solver = _NeumannIteration(self.rtol, self.atol, self.norm)
        else:
            solver = Anderson(
                rtol=self.rtol, atol=self.atol, history=self.history, norm=self.norm
            )
        out = iterate(
            solver,
            _neumann_step,
            x0,
            (operator, vector),
            max_steps=self.max_steps,
            f_struct=structure_of(x0),
            aux_struct=None,
            # Both iterations stop on a non-finite residual themselves; the loop's
            # own check would scan the linearised operator's arrays once and `x`
            # every step, in the backward pass of every solve.
            check_finite=False,
        )
        # Divergence, non-finite values: the series does not converge, which for a
        # linear solve is a breakdown (singular or expanding `I - J`).
        result = lx.RESULTS.where(
            out.result == RESULTS.successful,
            lx.RESULTS.successful,
            lx.RESULTS.where(
                out.result == RESULTS.nonlinear_max_steps_reached,
                lx.RESULTS.max_steps_reached,
                lx.RESULTS.breakdown,
            ),
        )
        return (
            out.value,
            result,
            {"num_steps": out.num_steps, "max_steps": self.max_steps},
        )

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
