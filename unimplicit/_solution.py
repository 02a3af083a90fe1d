from typing import Any, Generic, TypeVar

import equinox as eqx
import optimistix as optx


_Y = TypeVar("_Y")
_Aux = TypeVar("_Aux")


# Extending Optimistix's enumeration keeps its members (and so Lineax's) and their
# codes valid here. Equinox compares members of one enumeration only: a result from
# an Optimistix API (`optimistix.fixed_point(..., unimplicit.Anderson(...))`) is
# compared with ours after `unimplicit.RESULTS.promote(result)`.
class RESULTS(optx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Outcome codes of `unimplicit.solve`, extending `optimistix.RESULTS`.

    Compare a result against a member (`sol.result == unimplicit.RESULTS.successful`)
    or turn it into its message with `unimplicit.RESULTS[sol.result]`. Under
    `jax.vmap` a result holds one code per sample. Every backend reports in these
    codes: running out of steps is `nonlinear_max_steps_reached` for all of them.
    A result of an Optimistix API (`optimistix.fixed_point` with an unimplicit
    solver, say) is an `optimistix.RESULTS`: `RESULTS.promote(result)` makes it
    comparable with these members.
    """

    not_a_root = (
        "The solver stopped at a point whose residual is not within tolerance: a "
        "least-squares or minimisation backend can stop at a local minimum of the "
        "residual norm that is not zero."
    )
    primal_infeasible = (
        "The convex program is primal infeasible: no point satisfies the constraints."
    )
    dual_infeasible = (
        "The convex program is dual infeasible: the objective is unbounded below."
    )
    linear_solve_failed = "The linear solve inside the solver failed."
    stalled = (
        "The interior-point method stalled before reaching its tolerance: rounding "
        "errors in its linear solves stopped further progress (in float32, try a "
        "looser `tol`). The value is the last iterate before the stall."
    )


class Solution(eqx.Module, Generic[_Y, _Aux]):
    """The output of [`unimplicit.solve`][].

    **Attributes:**

    - `value`: the solution `y`, with the structure of the condition's state.
    - `result`: a [`unimplicit.RESULTS`][] member (one per sample under `jax.vmap`).
    - `stats`: a dictionary of diagnostics. Equilibrium solves hold `num_steps`,
        `max_steps`, `residual_norm` (the two-norm of the residual at `value`) and
        `relative_residual` (that norm divided by the norm of `value`), and
        `residual_trace` when a trace was requested through `options`.
    - `aux`: auxiliary data from the backend, or `None`.
    """

    value: _Y
    result: RESULTS
    stats: dict[str, Any]
    aux: Any
