import abc
from typing import Any

import equinox as eqx
from jaxtyping import PyTree

from ._condition import AbstractCondition
from ._solution import RESULTS


class AbstractBackend(eqx.Module):
    """How the output of a condition is found.

    Optimistix solvers need no wrapping: [`unimplicit.solve`][] accepts them as they
    are. Subclass this for a backend of another kind (an ODE integrator, an
    interior-point method).
    """

    @abc.abstractmethod
    def supports(self, condition: AbstractCondition) -> bool:
        """Whether this backend can solve `condition`."""

    @abc.abstractmethod
    def forward(
        self,
        condition: AbstractCondition,
        y0: PyTree,
        args: PyTree,
        *,
        max_steps: int,
        options: dict[str, Any],
        differentiable: bool,
    ) -> tuple[PyTree, RESULTS, dict[str, Any], Any]:
        """Find the output of `condition`.

        **Arguments:**

        - `condition`: the condition to solve (one that `supports` accepted).
        - `y0`: the validated initial state (see `AbstractEquilibrium.init`).
        - `args`: the condition's inputs.
        - `max_steps`: a positive bound on the number of iterations.
        - `options`: backend-specific run-time options.
        - `differentiable`: if `False`, the call runs inside the implicit-function-
            theorem rule and is never differentiated (so `jax.lax.while_loop` is
            fine); if `True`, reverse-mode autodiff must work through it.

        **Returns:**

        A tuple `(value, result, stats, aux)`, per sample under `jax.vmap`.
        """
