"""A kind of cone is one `AbstractCone` subclass and its registration.

`Orthant` below is the nonnegative cone written anew, outside the library: once
registered, the interior point, its KKT solves, the backward and `Cones` handle it
with nothing else changed, and it gives what the built-in nonnegative cone gives.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unimplicit as ui
from unimplicit._convex.cones import NonnegativeCone


# The same program with the same cone under two names: the same operations, so
# the same numbers up to rounding (they agree bitwise on the LP/QP here).
SAME_RTOL = 1e-10
# With the rows of the new cone after the second-order ones (its registration
# order), the KKT systems are permuted, which changes the rounding only.
PERMUTED_RTOL = 1e-7


class Orthant(ui.AbstractCone):
    """`{s : s >= 0}`, as a test's own kind of cone."""

    dim: int = eqx.field(static=True)

    @classmethod
    def from_spec(cls, spec: Any) -> tuple[ui.AbstractCone, ...]:
        if not isinstance(spec, int) or spec < 0:
            raise ValueError(f"orthant: a row count, got {spec!r}")
        return (cls(spec),) if spec else ()

    def degree(self):
        return self.dim

    def block_sizes(self):
        return (1,) * self.dim

    def diagonal(self):
        return True

    def unit(self, dtype):
        return jnp.ones(self.dim, dtype)

    def product(self, u, v):
        return u * v

    def divide(self, u, v):
        return v / u

    def margin(self, u):
        return jnp.min(u, initial=jnp.inf)

    def max_step(self, u, du):
        ratio = jnp.where(du < 0, -u / jnp.where(du < 0, du, -1), jnp.inf)
        return jnp.min(ratio, initial=jnp.inf)

    def scaling(self, s, y):
        return jnp.sqrt(s / y)

    def scale(self, w, v):
        return w.reshape(w.shape + (1,) * (v.ndim - 1)) * v

    def unscale(self, w, v):
        return v / w.reshape(w.shape + (1,) * (v.ndim - 1))


ui.register_cone("orthant", Orthant)


def _qp(seed, n=4, p=1, m=6, lp=False):
    # min 1/2 x'Px + q'x  s.t.  Ax = b, Gx <= h, inside a box (bounded LPs).
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    P = np.zeros((n, n)) if lp else M @ M.T / n + 0.1 * np.eye(n)
    x0 = rng.standard_normal(n)
    G = np.vstack([rng.standard_normal((m, n)), np.eye(n), -np.eye(n)])
    h = np.concatenate([G[:m] @ x0 + rng.uniform(0.1, 1, m), x0 + 2, 2 - x0])
    A = rng.standard_normal((p, n))
    data = ui.ConeData(
        P, rng.standard_normal(n), np.vstack([A, G]), np.concatenate([A @ x0, h])
    )
    return p, G.shape[0], jax.tree_util.tree_map(jnp.asarray, data)


def _loss(cones, data):
    sol = ui.solve(ui.ConeProgram(cones), ui.InteriorPoint(), data)
    v = sol.value
    return jnp.sum(jnp.sin(v.x)) + jnp.sum(v.y**2) + jnp.sum(jnp.cos(v.s)), sol


_value_and_grad = jax.jit(
    jax.value_and_grad(_loss, argnums=1, has_aux=True), static_argnums=0
)


def _assert_close(a, b, rtol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        scale = max(1.0, float(jnp.max(jnp.abs(v))))
        np.testing.assert_allclose(u, v, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("lp", [False, True])
def test_new_cone_matches_nonnegative(lp):
    p, m, data = _qp(3, lp=lp)
    (_, ours), g_ours = _value_and_grad(ui.Cones(zero=p, orthant=m), data)
    (_, ref), g_ref = _value_and_grad(ui.Cones(zero=p, nonneg=m), data)
    assert ours.result == ui.RESULTS.successful
    assert ref.result == ui.RESULTS.successful
    assert ours.stats["num_steps"] == ref.stats["num_steps"]
    _assert_close(ours.value, ref.value, SAME_RTOL)
    _assert_close(g_ours, g_ref, SAME_RTOL)


def _socp(seed, n=3):
    # min q'x  s.t.  |F x + g| <= c'x + d (one cone of size 3), a box.
    rng = np.random.default_rng(seed)
    q, x0 = rng.standard_normal(n), rng.standard_normal(n)
    F, g, c = (
        rng.standard_normal((2, n)),
        rng.standard_normal(2),
        rng.standard_normal(n),
    )
    d = np.linalg.norm(F @ x0 + g) - c @ x0 + 0.5
    box, box_h = np.vstack([np.eye(n), -np.eye(n)]), np.concatenate([x0 + 1, 1 - x0])
    soc, soc_h = np.vstack([-c, -F]), np.concatenate([[d], g])
    P = 0.1 * np.eye(n)
    return P, q, (box, box_h), (soc, soc_h)


def test_new_cone_after_second_order_rows():
    # The box rows as `orthant` rows, which come after the second-order ones
    # (registration order), against the same rows as `nonneg` rows before them.
    P, q, (box, box_h), (soc, soc_h) = _socp(5)
    k, r = box.shape[0], soc.shape[0]
    ours = ui.ConeData(P, q, np.vstack([soc, box]), np.concatenate([soc_h, box_h]))
    ref = ui.ConeData(P, q, np.vstack([box, soc]), np.concatenate([box_h, soc_h]))
    ours, ref = (jax.tree_util.tree_map(jnp.asarray, d) for d in (ours, ref))
    cones = ui.Cones(soc=(r,), orthant=k)
    assert cones.dim == k + r and cones.degree() == k + 1
    (_, sol), g_ours = _value_and_grad(cones, ours)
    (_, sol_ref), g_ref = _value_and_grad(ui.Cones(nonneg=k, soc=(r,)), ref)
    assert sol.result == ui.RESULTS.successful
    assert sol_ref.result == ui.RESULTS.successful
    perm = np.concatenate([np.arange(r, r + k), np.arange(r)])  # ours -> ref rows
    _assert_close(sol.value.x, sol_ref.value.x, PERMUTED_RTOL)
    _assert_close(sol.value.y[perm], sol_ref.value.y, PERMUTED_RTOL)
    _assert_close(sol.value.s[perm], sol_ref.value.s, PERMUTED_RTOL)
    _assert_close((g_ours.P, g_ours.q), (g_ref.P, g_ref.q), PERMUTED_RTOL)
    _assert_close(g_ours.A[perm], g_ref.A, PERMUTED_RTOL)
    _assert_close(g_ours.b[perm], g_ref.b, PERMUTED_RTOL)


def test_registry_errors():
    with pytest.raises(TypeError, match="unknown cone kinds \\['psd'\\]"):
        ui.Cones(psd=(3,))
    with pytest.raises(TypeError, match="AbstractCone"):
        ui.register_cone("bad", int)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="already names Orthant"):
        ui.register_cone("orthant", NonnegativeCone)
    with pytest.raises(ValueError, match="orthant: a row count"):
        ui.Cones(orthant=-1)
    assert ui.Cones(orthant=0) == ui.Cones()
