"""The Mehrotra predictor-corrector direction of the interior point, and its step.

Nesterov-Todd scaling, on the homogeneous self-dual embedding (`ipm_problem.py`);
see `kkt.py` for the linear algebra.
"""

import jax.numpy as jnp
from jaxtyping import Array

from . import kkt
from .ipm_problem import Iterate, Measure, Problem, tree_where


STEP_FRACTION = 0.99
# tau may shrink by at most this fraction of itself per step: a first step that
# drives tau to the boundary (the embedding briefly "believing" infeasibility)
# otherwise costs several steps to recover from.
_TAU_FRACTION = 0.7
# Corrector passes. Each after the first re-estimates the second-order terms
# (those of s∘y, of tau*kappa and the curvature of the gap row's x'Px/tau) from
# the previous corrected direction; Mehrotra's estimate, from the predictor alone,
# misses the change of tau that the correction itself causes, which leaves the
# complementarity falling only ~10x a step near the end. A pass is kept where it
# lowers the complementarity reached. Random QPs at tol 1e-7: the slowest of 64
# samples (n=20) needs 7 steps with 3 passes, 11 with 1; of 128 (n=128) 10 vs 13.
_CORRECTIONS = 3


def direction(
    pb: Problem,
    it: Iterate,
    ms: Measure,
    boost: bool | Array = False,
    centre: bool | Array = False,
) -> tuple[Iterate, Array]:
    """The Mehrotra predictor-corrector direction on the embedding, and its step.

    With `centre` (a traced boolean allowed) the direction is a pure centring one
    instead (`sigma = 1`, no second-order terms): for a point that has jammed
    against the boundary of its cone. `boost` regularises the factorisation more
    strongly (for a retried step).
    """
    cones = pb.cones
    zero = cones.zero
    tau, kappa = it.tau, it.kappa
    _, s_c = pb.split(it.s)
    _, y_c = pb.split(it.y)
    w = cones.scaling(s_c, y_c)
    lam = w.scale(y_c)
    f = pb.factorise(w, boost)
    mu = (s_c @ y_c + tau * kappa) / (cones.degree() + 1)

    # Direction = (x1, y1) + dtau (x2, y2); the second part does not change within
    # the step, so solve it together with the predictor.
    pad = jnp.zeros((zero,), s_c.dtype)
    rhs_p_aff = -ms.rp + jnp.concatenate([pad, s_c])
    X, Y = kkt.solve_refined(
        f,
        jnp.stack([-ms.rx, -pb.q], 1),
        jnp.stack([rhs_p_aff, pb.b], 1),
        pb.refinement,
    )
    x2, y2 = X[:, 1], Y[:, 1]
    c = pb.q + 2 * ms.Px / tau
    den = c @ x2 + pb.b @ y2 - (it.x @ ms.Px) / tau**2 - kappa / tau

    def assemble(x1, y1, v, eta, d_tk, curv: float | Array = 0.0):
        dtau = (-eta * ms.rtau - curv - c @ x1 - pb.b @ y1 - d_tk / tau) / den
        dx, dy = x1 + dtau * x2, y1 + dtau * y2
        dy_c = dy[zero:]
        ds_c = w.scale(v - w.scale(dy_c))
        dkappa = (d_tk - kappa * dtau) / tau
        return dx, dy, ds_c, dtau, dkappa

    def max_step(dy, ds_c, dtau, dkappa):
        a = jnp.minimum(cones.max_step(s_c, ds_c), cones.max_step(y_c, dy[zero:]))
        for u, du, f in ((tau, dtau, _TAU_FRACTION), (kappa, dkappa, 1.0)):
            a = jnp.minimum(
                a, f * jnp.where(du < 0, -u / jnp.where(du < 0, du, -1), jnp.inf)
            )
        return a

    # Predictor (affine scaling).
    aff = assemble(X[:, 0], Y[:, 0], -lam, 1.0, -tau * kappa)
    dx_a, dy_a, ds_a, dtau_a, dkappa_a = aff
    alpha_a = jnp.minimum(1, max_step(dy_a, ds_a, dtau_a, dkappa_a))
    sigma = jnp.where(centre, 1, (1 - alpha_a) ** 3)
    second = jnp.where(centre, 0, 1)  # whether second-order terms are used

    # Corrector: centring plus Mehrotra's second-order term, estimated from the
    # previous direction (the predictor first, then the corrected direction).
    e = cones.unit(s_c.dtype)
    eta = 1 - sigma

    def correct(previous):
        _, dy_p, ds_p, dtau_p, dkappa_p = previous
        corr = cones.product(w.unscale(ds_p), w.scale(dy_p[zero:]))
        d_c = -cones.product(lam, lam) + sigma * mu * e - second * corr
        v = cones.divide(lam, d_c)
        rhs_p = -eta * ms.rp - jnp.concatenate([pad, w.scale(v)])
        x1, y1 = kkt.solve_refined(f, -eta * ms.rx, rhs_p, pb.refinement)
        d_tk = -tau * kappa + sigma * mu - second * dtau_p * dkappa_p
        # The second-order part of x'Px/tau along the previous direction: the
        # linearised gap row misses it, and tau then drifts down every step.
        u = tau * previous[0] - it.x * dtau_p
        curv = second * (u @ (pb.P @ u)) / tau**3
        direction = assemble(x1, y1, v, eta, d_tk, curv)
        return direction, jnp.minimum(1, STEP_FRACTION * max_step(*direction[1:]))

    def mu_after(direction, alpha):
        _, dy, ds_c, dtau, dkappa = direction
        s_new, y_new = s_c + alpha * ds_c, y_c + alpha * dy[zero:]
        return s_new @ y_new + (tau + alpha * dtau) * (kappa + alpha * dkappa)

    best, alpha = correct(aff)
    for _ in range(_CORRECTIONS - 1):
        better, alpha2 = correct(best)
        take = mu_after(better, alpha2) < mu_after(best, alpha)
        best = tree_where(take, better, best)
        alpha = jnp.where(take, alpha2, alpha)
    dx, dy, ds_c, dtau, dkappa = best
    return Iterate(dx, dy, jnp.concatenate([pad, ds_c]), dtau, dkappa), alpha
