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


def is_double(tree: PyTree) -> bool:
    """Whether any floating-point leaf of `tree` is float64 (trace-time)."""
    return any(jnp.asarray(x).dtype == jnp.float64 for x in jtu.tree_leaves(tree))


def dtype_of(tree: PyTree) -> Any:
    """The common floating-point dtype of the leaves of `tree`."""
    return jnp.result_type(*jtu.tree_leaves(tree))


def by_precision(tree: PyTree, single: Any, double: Any) -> Any:
    """`double` if `tree` holds float64 leaves, else `single`."""
    return double if is_double(tree) else single


def eps(dtype: Any) -> float:
    """Machine epsilon of `dtype`, as a Python float."""
    return float(np.finfo(dtype).eps)
