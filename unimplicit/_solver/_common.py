import equinox as eqx
import jax.flatten_util as jfu
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, PyTree


class AbstractSelfFreezingSolver(eqx.Module):
    """A solver whose `step` changes nothing once its own `terminate` holds.

    `unimplicit`'s loop freezes a finished sample under `jax.vmap` so that its
    outcome equals its unbatched one. For other solvers it does so by selecting
    the whole solver state each step, which for a solver with a history (Anderson,
    Broyden) means copying every sample's history. A subclass promises instead that
    a `step` from a state whose `terminate` is true returns the same iterate and
    state (at O(n) cost: it selects the slot it would write and its small fields),
    and the loop only freezes the iterate and its own bookkeeping.
    """


def track_best(
    y: Float[Array, " n"],
    size: Float[Array, ""],
    converged: Bool[Array, ""],
    best_y: Float[Array, " n"],
    best_size: Float[Array, ""],
    divergence_ratio: float,
) -> tuple[Float[Array, " n"], Float[Array, ""], Bool[Array, ""]]:
    """Update the best iterate seen so far and decide whether the solve diverged.

    The best iterate is judged by the unscaled residual `size`: a relative scale
    would favour iterates that have blown up. A converged iterate always wins, so a
    successful solve returns the iterate that met the tolerance. (`<` is False for
    NaN, so a non-finite residual never becomes best.) The solve has diverged once
    the residual is non-finite or exceeds `divergence_ratio` times the best one.

    **Returns:** `(best_y, best_size, diverged)`.
    """
    better = (size < best_size) | converged
    best_y = jnp.where(better, y, best_y)
    best_size = jnp.where(better, size, best_size)
    diverged = jnp.invert(jnp.isfinite(size)) | (size > divergence_ratio * best_size)
    return best_y, best_size, diverged


def stop_and_result(
    error: Float[Array, ""],
    diverged: Bool[Array, ""],
    nonfinite: Bool[Array, ""] | bool = False,
) -> tuple[Bool[Array, ""], optx.RESULTS]:
    """The shared `terminate` rule: stop on convergence (scaled error below one),
    or on divergence, which is then reported as `nonlinear_divergence`, or as
    `nonfinite` where the residual was not finite."""
    converged = error < 1
    diverged = diverged & jnp.invert(converged)
    result = optx.RESULTS.where(
        diverged, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful
    )
    result = optx.RESULTS.where(diverged & nonfinite, optx.RESULTS.nonfinite, result)
    return converged | diverged, result


def best_iterate(y: PyTree[Array], best_y: Float[Array, " n"]) -> PyTree[Array]:
    """The best flat iterate, unravelled into the structure of `y`. Before any step
    the best iterate is `y0` itself."""
    _, unravel = jfu.ravel_pytree(y)
    return unravel(best_y)


def is_concrete(x: object) -> bool:
    """Whether `x` is a Python number we can validate (not a traced value).

    Solvers are PyTrees: inside `jit` their numeric fields may be rebuilt from
    tracers, which cannot be compared; those were checked when first built.
    """
    return isinstance(x, (int, float))


def check_tolerances(name: str, rtol: float, atol: float, ratio: float) -> None:
    """Trace-time validation shared by the solvers' `__check_init__`."""
    if not all(is_concrete(x) for x in (rtol, atol, ratio)):
        return
    if rtol < 0 or atol < 0:
        raise ValueError(
            f"{name}(rtol, atol) must be non-negative, got rtol={rtol!r}, "
            f"atol={atol!r}."
        )
    if ratio <= 1:
        raise ValueError(f"{name}(divergence_ratio=...) must exceed 1, got {ratio!r}.")
