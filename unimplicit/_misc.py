import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Scalar


def tree_two_norm(tree: PyTree[Array]) -> Scalar:
    """Two-norm of all the leaves of `tree` taken together."""
    leaves = [jnp.sum(jnp.abs(x) ** 2) for x in jtu.tree_leaves(tree)]
    if not leaves:
        return jnp.array(0.0)
    return jnp.sqrt(sum(leaves[1:], leaves[0]))


def tree_allfinite(tree: PyTree[Array]) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def structure_of(tree: PyTree) -> PyTree[jax.ShapeDtypeStruct]:
    """The structure, shapes and dtypes of `tree` (arrays or ShapeDtypeStructs)."""
    return jax.eval_shape(lambda: tree)


def describe(struct: PyTree[jax.ShapeDtypeStruct]) -> str:
    """A short human-readable rendering of a PyTree of ShapeDtypeStructs."""

    def leaf(x):
        return f"{x.dtype}{list(x.shape)}"

    return str(jtu.tree_map(leaf, struct)).replace("'", "")


def check_same_structure(
    expected: PyTree[jax.ShapeDtypeStruct],
    got: PyTree[jax.ShapeDtypeStruct],
    what_expected: str,
    what_got: str,
) -> None:
    """Raise a trace-time error naming both structures when they differ."""
    e_leaves, e_def = jtu.tree_flatten(expected)
    g_leaves, g_def = jtu.tree_flatten(got)
    if e_def != g_def:
        raise ValueError(
            f"{what_got} has PyTree structure {g_def}, but {what_expected} has "
            f"structure {e_def}. They must match: {describe(got)} vs "
            f"{describe(expected)}."
        )
    for e, g in zip(e_leaves, g_leaves):
        if e.shape != g.shape:
            raise ValueError(
                f"{what_got} has shapes {describe(got)}, but {what_expected} has "
                f"shapes {describe(expected)}. They must match."
            )
        if e.dtype != g.dtype:
            raise TypeError(
                f"{what_got} has dtypes {describe(got)}, but {what_expected} has "
                f"dtypes {describe(expected)}. They must match; cast the initial "
                "value or the function's output."
            )


def tree_stop_gradient(tree: PyTree) -> PyTree:
    """`jax.lax.stop_gradient` on the array leaves of `tree`, leaving others be."""
    return jtu.tree_map(
        lambda x: jax.lax.stop_gradient(x) if isinstance(x, jax.Array) else x, tree
    )


def check_max_steps(max_steps: object) -> None:
    """Trace-time check shared by `solve` and the layers that store `max_steps`."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int):
        raise TypeError(f"`max_steps` must be a positive int, not {max_steps!r}.")
    if max_steps <= 0:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps}.")
