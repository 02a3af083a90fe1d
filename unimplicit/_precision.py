"""The one place that decides what float32 and float64 get by default.

Defaults that depend on precision (tolerances of backward solves, of the interior
point, whether a factorisation needs extra care) are read from here, so that the
policy is written once and can be read in one place.
"""

from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree


# The default backward solves of `FixedPoint` (Anderson-accelerated Neumann
# iteration, as (rtol, atol)) and `Root` (GMRES, rtol = atol). A small `atol` matters
# in float32: at 1e-6 the DEQ gradient error tripled (benchmarks/RESULTS.md).
NEUMANN_TOLERANCES = {"single": (1e-4, 1e-8), "double": (1e-10, 1e-12)}
KRYLOV_TOLERANCE = {"single": 1e-4, "double": 1e-10}


def is_double(tree: PyTree) -> bool:
    """Whether any floating-point leaf of `tree` is float64 (trace-time)."""
    return any(jnp.asarray(x).dtype == jnp.float64 for x in jtu.tree_leaves(tree))


def dtype_of(tree: PyTree) -> Any:
    """The common floating-point dtype of the leaves of `tree`."""
    return jnp.result_type(*jtu.tree_leaves(tree))


def by_precision(tree: PyTree, table: dict[str, Any]) -> Any:
    """`table["double"]` if `tree` holds float64 leaves, else `table["single"]`."""
    return table["double"] if is_double(tree) else table["single"]


def eps(dtype: Any) -> float:
    """Machine epsilon of `dtype`, as a Python float."""
    return float(np.finfo(dtype).eps)
