import jax
import pytest


# Gradient checks against finite differences need double precision.
jax.config.update("jax_enable_x64", True)
# As in Optimistix's own tests: implicit rank promotion and mixed-dtype arithmetic
# are errors, so that the library is written with explicit broadcasting and casts.
# (The library must not rely on these settings: it also runs under the defaults.)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """Returns a function producing fresh, reproducible PRNG keys."""
    key = jax.random.PRNGKey(5678)

    def _getkey():
        nonlocal key
        key, subkey = jax.random.split(key)
        return subkey

    return _getkey
