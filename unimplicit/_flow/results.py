import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._solution import RESULTS


# Diffrax's codes that share a name and meaning with ours map across directly; the
# others are translated. A max-steps stop of an integrator is reported like that of
# any other iterative backend, and a collapsed step size (the usual sign of a
# blowing-up or very stiff field) as divergence.
_RENAMED = {
    "max_steps_reached": "nonlinear_max_steps_reached",
    "max_steps_rejected": "nonlinear_max_steps_reached",
    "dt_min_reached": "nonlinear_divergence",
    "internal_error": "nonlinear_divergence",
    "event_occurred": "successful",
}


def _table() -> np.ndarray:
    items = diffrax.RESULTS._name_to_item
    table = np.zeros(1 + max(int(x._value) for x in items.values()), np.int32)
    for name, member in items.items():
        ours = _RENAMED.get(name, name)
        if ours not in RESULTS._name_to_item:
            ours = "nonlinear_divergence"  # a code from a newer Diffrax
        table[int(member._value)] = int(RESULTS._name_to_item[ours]._value)
    return table


_TABLE = _table()


def from_diffrax(result: diffrax.RESULTS) -> RESULTS:
    """Translate a Diffrax result code into an unimplicit one (works under vmap)."""
    # One lookup rather than a chain of `where`s: this runs on every solve.
    value = jnp.asarray(_TABLE)[result._value]
    return eqx.tree_at(lambda r: r._value, RESULTS.successful, value)
