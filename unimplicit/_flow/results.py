import diffrax
import jax.numpy as jnp

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


def _table():
    pairs = []
    for name, member in diffrax.RESULTS._name_to_item.items():
        ours = _RENAMED.get(name, name)
        if name == "successful":
            continue
        if ours not in RESULTS._name_to_item:
            ours = "nonlinear_divergence"  # a code from a newer Diffrax
        pairs.append((member, RESULTS._name_to_item[ours]))
    return pairs


_TABLE = _table()


def from_diffrax(result: diffrax.RESULTS) -> RESULTS:
    """Translate a Diffrax result code into an unimplicit one (works under vmap)."""
    out: RESULTS = RESULTS.successful  # pyright: ignore[reportAssignmentType]
    for theirs, ours in _TABLE:
        out = RESULTS.where(jnp.asarray(result == theirs), ours, out)
    return out
