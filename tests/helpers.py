import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu


def central_difference(fn, x, eps=1e-6):
    """Gradient of a scalar `fn` at PyTree `x` by central differences."""
    flat, unravel = jfu.ravel_pytree(x)

    def at(v):
        return fn(unravel(v))

    # One compiled, batched evaluation of every perturbation: much faster than a
    # Python loop of eager solves.
    steps = eps * jnp.eye(flat.size, dtype=flat.dtype)
    values = jax.jit(jax.vmap(at))(jnp.concatenate([flat + steps, flat - steps]))
    plus, minus = jnp.split(values, 2)
    return unravel((plus - minus) / (2 * eps))


def assert_tree_allclose(a, b, rtol, atol=0.0):
    la, ta = jtu.tree_flatten(a)
    lb, tb = jtu.tree_flatten(b)
    assert ta == tb, f"structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb, strict=True):
        assert jnp.shape(x) == jnp.shape(y)
        err = jnp.max(jnp.abs(x - y)) if jnp.size(x) else 0.0
        scale = jnp.max(jnp.abs(y)) if jnp.size(y) else 0.0
        assert err <= atol + rtol * scale, f"max abs err {err} vs scale {scale}"


def relative_error(a, b):
    fa, _ = jfu.ravel_pytree(a)
    fb, _ = jfu.ravel_pytree(b)
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def contractive_matrix(key, n, norm=0.6, dtype=jnp.float64):
    w = jax.random.normal(key, (n, n), dtype)
    return norm * w / jnp.linalg.norm(w, 2)
