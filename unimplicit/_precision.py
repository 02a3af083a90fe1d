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


def interior_point_defaults(dtype: Any, diagonal: bool) -> tuple[float, int]:
    """The interior point's default tolerance and rounds of KKT refinement.

    float64 solves are accurate enough unrefined (refining costs ~40% a step at
    small sizes). In float32 the normal equations' accuracy, not the method,
    limits the reachable tolerance. Keeping strongly active rows of diagonally
    scaled (nonnegative) cones out of them (`kkt.factorise`'s `split`) removes
    that limit there: the random QPs of `benchmarks/bench_qp.py` all solve at
    1e-4 unrefined (n=128, seeds 0-9; before, 124-127 of 128 with two rounds).
    One round would add margin at 1e-5 (all solved, against 127-128 of 128
    unrefined) for ~35% more time at n=128. Rows of other cones (second-order)
    stay in the normal equations, where two rounds keep the solves accurate
    enough for 1e-4. (The regularisation's default, `eps^(2/3)`, is `eps` below.)
    """
    if np.dtype(dtype) == np.float64:
        return 1e-8, 0
    return 1e-4, 0 if diagonal else 2
