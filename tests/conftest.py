import jax
import pytest


# Gradient checks against finite differences need double precision.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """Returns a function producing fresh, reproducible PRNG keys."""
    key = jax.random.PRNGKey(5678)

    def _getkey():
        nonlocal key
        key, subkey = jax.random.split(key)
        return subkey

    return _getkey
