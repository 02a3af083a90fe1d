"""The interior point's view of a cone program: its iterate, data and measures.

The iteration works on the homogeneous self-dual embedding of
`min 1/2 x^T P x + q^T x  s.t.  A x + s = b, s ∈ K` (as in ECOS and Clarabel):

    P x + A^T y + q tau = 0,    A x + s - b tau = 0,
    q^T x + b^T y + x^T P x / tau + kappa = 0,    (s, y) ∈ K × K*,  tau, kappa >= 0.

Its solutions either have `tau > 0` (then `(x, y, s) / tau` is optimal) or
`kappa > 0`, in which case `y` certifies primal infeasibility (`A^T y = 0`,
`b^T y < 0`) or `x` dual infeasibility (`P x = 0`, `A x + s = 0`, `q^T x < 0`).
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from .._solution import RESULTS
from . import kkt
from .cones import Cones


class Iterate(eqx.Module):
    """A point of the embedding (also used for a direction)."""

    x: Array
    y: Array
    s: Array
    tau: Array
    kappa: Array


class Measure(eqx.Module):
    """The residuals of an iterate, and the verdict they give."""

    rx: Array  # P x + A^T y + q tau
    rp: Array  # A x + s - b tau
    rtau: Array
    Px: Array
    worst: Array  # the largest of the relative primal/dual residuals and gap
    done: Array  # solved, infeasible, or not finite
    result: RESULTS  # which of them (`successful` while running)


def inf_norm(v: Array) -> Array:
    return jnp.max(jnp.abs(v), initial=0)


def tree_where(pred, a, b):
    return jtu.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


class Problem(eqx.Module):
    """A cone program's data and the method's tolerances (arrays of its dtype)."""

    P: Array
    q: Array
    A: Array
    b: Array
    cones: Cones = eqx.field(static=True)
    tol: Array
    inf_tol: Array
    reg: Array
    stall_tol: Array
    refinement: int = eqx.field(static=True)
    nb: Array  # |b|_inf
    nq: Array  # |q|_inf

    def measure(self, it: Iterate) -> Measure:
        P, q, A, b = self.P, self.q, self.A, self.b
        Px = P @ it.x
        Aty = A.T @ it.y
        rx = Px + Aty + q * it.tau
        Ax_s = A @ it.x + it.s
        rp = Ax_s - b * it.tau
        xPx = it.x @ Px
        qx, by = q @ it.x, b @ it.y
        rtau = qx + by + xPx / it.tau + it.kappa
        # Optimality of the normalised point (x, y, s) / tau, relative to the data.
        tau = it.tau
        nx, ny, ns = (inf_norm(v) / tau for v in (it.x, it.y, it.s))
        pobj = (0.5 * xPx / tau + qx) / tau
        dobj = (-0.5 * xPx / tau - by) / tau
        pres = inf_norm(rp) / tau / jnp.maximum(1, self.nb + nx + ns)
        dres = inf_norm(rx) / tau / jnp.maximum(1, self.nq + nx + ny)
        gap = jnp.abs(pobj - dobj) / jnp.maximum(
            1, jnp.minimum(jnp.abs(pobj), jnp.abs(dobj))
        )
        worst = jnp.maximum(jnp.maximum(pres, dres), gap)
        solved = worst <= self.tol
        # Certificates are scale-free, so test them on the unnormalised iterate.
        itol = self.inf_tol
        primal_inf = (by < 0) & (inf_norm(Aty) <= -itol * by)
        dual_inf = (
            (qx < 0) & (inf_norm(Px) <= -itol * qx) & (inf_norm(Ax_s) <= -itol * qx)
        )
        finite = jnp.isfinite(rtau) & jnp.all(jnp.isfinite(rx)) & jnp.isfinite(tau)
        # (Enumeration members are typed as literals; pyright needs the Any.)
        members: Any = RESULTS
        result = members.where(dual_inf, members.dual_infeasible, members.successful)
        result = members.where(primal_inf, members.primal_infeasible, result)
        result = members.where(solved, members.successful, result)
        result = members.where(finite, result, members.nonfinite)
        done = ~finite | solved | primal_inf | dual_inf
        return Measure(rx, rp, rtau, Px, worst, done, result)

    def split(self, v: Array) -> tuple[Array, Array]:
        """The equality rows of `v`, and its conic rows."""
        zero = self.cones.zero
        return v[:zero], v[zero:]

    def interior(self, it: Iterate) -> Array:
        return (
            (self.cones.margin(self.split(it.s)[1]) > 0)
            & (self.cones.margin(self.split(it.y)[1]) > 0)
            & (it.tau > 0)
            & (it.kappa > 0)
        )

    def factorise(self, scaling, boost: bool | Array = False) -> kkt.Factorisation:
        E, G = self.split(self.A)
        return kkt.factorise(self.P, E, G, scaling, self.reg, boost)
