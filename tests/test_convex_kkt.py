"""The interior point's KKT solves in float32, late in a solve (`kkt.py`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from unimplicit._convex import kkt
from unimplicit._convex.cones import Cones


# Relative error of the direction against a float64 solve.
SPLIT_RTOL_UNREFINED = 1e-3
SPLIT_RTOL_REFINED = 1e-5
# What the normal equations leave at the same point: they keep no digit.
NORMAL_MIN_ERROR = 1e-2


def _late_system(seed):
    # One equality and eight nonnegative rows, three of them active: `W^2 = s/y`
    # is ~1e-6 on those and ~1e6 on the others (a spread of 1e12, as at mu ~ 1e-6).
    rng = np.random.default_rng(seed)
    n, p, m = 6, 1, 8
    M = rng.standard_normal((n, n))
    P = M @ M.T / n + 0.1 * np.eye(n)
    E, G = rng.standard_normal((p, n)), rng.standard_normal((m, n))
    d = np.where(np.arange(m) < 3, 1e-6, 1e6) * rng.uniform(0.5, 2, m)
    rx, rp = rng.standard_normal(n), rng.standard_normal(p + m)
    K = np.block(
        [
            [P, E.T, G.T],
            [E, np.zeros((p, p)), np.zeros((p, m))],
            [G, np.zeros((m, p)), -np.diag(d)],
        ]
    )
    exact = np.linalg.solve(K, np.concatenate([rx, rp]))
    args = tuple(jnp.asarray(a, jnp.float32) for a in (P, E, G, np.sqrt(d), rx, rp))
    return args, m, exact


def _error(args, m, exact, split, refinement):
    P, E, G, w, rx, rp = args
    reg = float(jnp.finfo(jnp.float32).eps) ** (2 / 3)
    # The scaling of `m` nonnegative rows whose `W` is `diag(w)`.
    scaling = Cones(nonneg=m).scaling(w**2, jnp.ones_like(w))
    f = kkt.factorise(P, E, G, scaling, reg, split=split)
    dx, dy = kkt.solve_refined(f, rx, rp, refinement)
    u = np.concatenate([np.asarray(dx, np.float64), np.asarray(dy, np.float64)])
    return np.abs(u - exact).max() / np.abs(exact).max()


@pytest.mark.parametrize("seed", [0, 1])
def test_split_keeps_float32_solves_accurate(seed):
    args, m, exact = _late_system(seed)
    assert _error(args, m, exact, True, 0) < SPLIT_RTOL_UNREFINED
    assert _error(args, m, exact, True, 2) < SPLIT_RTOL_REFINED
    # The case is hard: the normal equations fail on it even after refinement.
    assert _error(args, m, exact, False, 2) > NORMAL_MIN_ERROR
