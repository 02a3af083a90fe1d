import abc
from collections.abc import Callable
from typing import Any, TYPE_CHECKING

import equinox as eqx
import jax
from jaxtyping import PyTree

from ._condition import AbstractCondition
from ._solution import RESULTS


if TYPE_CHECKING:
    from ._adjoint import AbstractAdjoint


class BackendOutput(eqx.Module):
    """What a backend's `forward` returns (per sample under `jax.vmap`).

    **Attributes:**

    - `value`: the solution, with the structure of the condition's state.
    - `result`: a [`unimplicit.RESULTS`][] member.
    - `stats`: the backend's own diagnostics, e.g. `num_steps` and `max_steps`.
        Statistics that hold for any backend (the residual norms of an
        equilibrium) are added by [`unimplicit.solve`][]; a backend leaves them out.
    - `aux`: auxiliary data, or `None`.
    - `residual_norm`: the two-norm of the condition's residual at `value`, if the
        backend has already computed it (saves one evaluation); else `None`.
    """

    value: PyTree
    result: RESULTS
    stats: dict[str, Any]
    aux: Any = None
    residual_norm: jax.Array | None = None


class AbstractBackend(eqx.Module):
    """How the output of a condition is found.

    Optimistix solvers need no wrapping: [`unimplicit.solve`][] accepts them as they
    are. Subclass this for a backend of another kind (an ODE integrator, an
    interior-point method). A backend declares what it can solve (`supports`) and
    which run-time options it takes (`option_names`); conditions know nothing of
    backends, so a new backend needs no change anywhere else.
    """

    @abc.abstractmethod
    def supports(self, condition: AbstractCondition) -> bool:
        """Whether this backend can solve `condition`."""

    @abc.abstractmethod
    def option_names(self) -> frozenset[str]:
        """The keys this backend accepts in `solve(..., options=...)`."""

    @abc.abstractmethod
    def forward(
        self,
        condition: AbstractCondition,
        y0: PyTree,
        args: PyTree,
        *,
        max_steps: int,
        options: dict[str, Any],
        adjoint: "AbstractAdjoint | None",
    ) -> BackendOutput:
        """Find the output of `condition`.

        **Arguments:**

        - `condition`: the condition to solve (one that `supports` accepted).
        - `y0`: the validated initial state (from `condition.init`).
        - `args`: the condition's inputs.
        - `max_steps`: a positive bound on the number of iterations.
        - `options`: run-time options, already checked against `option_names`.
        - `adjoint`: `None` if the call is never differentiated (it runs inside
            the implicit-function-theorem rule, so `jax.lax.while_loop` is fine);
            otherwise the adjoint that differentiates through it (reverse-mode
            autodiff must then work), which a backend may read, e.g. the
            checkpoints of an `UnrolledAdjoint` or the Diffrax adjoint of a
            `DiffraxAdjoint`.

        **Returns:**

        A [`unimplicit.BackendOutput`][].
        """


def backend_name(backend: AbstractBackend) -> str:
    inner = getattr(backend, "solver", None)
    return type(backend if inner is None else inner).__name__


def check_options(backend: AbstractBackend, options: dict[str, Any] | None) -> dict:
    """The shared validation of `options`: an unknown key is an error."""
    options = {} if options is None else dict(options)
    valid = backend.option_names()
    unknown = sorted(set(options) - valid)
    if unknown:
        accepted = ", ".join(repr(k) for k in sorted(valid)) or "none"
        raise ValueError(
            f"The backend {backend_name(backend)} got unknown options {unknown}; it "
            f"accepts: {accepted}. (The adjoint is passed as `adjoint=` and the "
            "step bound as `max_steps=` to `unimplicit.solve`, not as options.)"
        )
    return options


# Example instances of the known backends, by a name users recognise. The error for
# an unsupported condition-backend pair lists those whose `supports` accepts the
# condition: it is built from what backends declare, never from the conditions.
_REGISTRY: list[tuple[str, Callable[[], AbstractBackend]]] = []


def register_backend(name: str, example: Callable[[], AbstractBackend]) -> None:
    """Make a backend kind known to the error message of an unsupported pair."""
    _REGISTRY.append((name, example))


def backends_supporting(condition: AbstractCondition) -> list[str]:
    return [name for name, example in _REGISTRY if example().supports(condition)]
