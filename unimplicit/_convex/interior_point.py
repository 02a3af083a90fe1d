"""A primal-dual interior-point method for cone programs, in pure JAX.

The iteration works on the homogeneous self-dual embedding of
`min 1/2 x^T P x + q^T x  s.t.  A x + s = b, s ∈ K` (as in ECOS and Clarabel):

    P x + A^T y + q tau = 0,    A x + s - b tau = 0,
    q^T x + b^T y + x^T P x / tau + kappa = 0,    (s, y) ∈ K × K*,  tau, kappa >= 0.

Its solutions either have `tau > 0` (then `(x, y, s) / tau` is optimal) or
`kappa > 0`, in which case `y` certifies primal infeasibility (`A^T y = 0`,
`b^T y < 0`) or `x` dual infeasibility (`P x = 0`, `A x + s = 0`, `q^T x < 0`). Each
step is a Mehrotra predictor-corrector step with Nesterov-Todd scaling; see `kkt.py`
for the linear algebra. Under `jax.vmap` the loop runs until every sample stops,
and samples that stopped are frozen, so each reports its own status.
"""

from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from .._backend import AbstractBackend, BackendOutput, register_backend
from .._condition import AbstractCondition
from .._solution import RESULTS
from . import kkt
from .cone_program import AbstractConeCondition, ConeData, ConeProgram, PrimalDual


# Internal status codes, mapped to RESULTS at the end.
_RUNNING, _SOLVED, _PRIMAL_INF, _DUAL_INF, _NONFINITE, _STALLED = range(6)
_STEP_FRACTION = 0.99
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
# Near the end (relative error below `stall_tol`), a step that makes the error
# this many times larger has hit the accuracy of the linear algebra.
_STALL_GROWTH = 10.0
# A rejected step is retried this much shorter; a sample stalls at its
# (`_RETRIES` + 1)-th rejection.
_RETRY_DAMPING = 0.25
# Near the end, a step that leaves the error above this fraction of what it was
# counts as a failure too (see the step loop).
_SLOW = 0.9
_RETRIES = 2
_POLISH_STEPS = 3
# An accepted step shorter than this is followed by a pure centring step.
_JAMMED = 1e-3


class _Iterate(eqx.Module):
    x: Array
    y: Array
    s: Array
    tau: Array
    kappa: Array


class _Measure(eqx.Module):
    rx: Array  # P x + A^T y + q tau
    rp: Array  # A x + s - b tau
    rtau: Array
    Px: Array
    status: Array
    worst: Array  # the largest of the relative primal/dual residuals and gap


def _inf_norm(v: Array) -> Array:
    return jnp.max(jnp.abs(v), initial=0)


def _defaults(dtype: Any, soc: bool) -> tuple[float, int]:
    """Default tolerance and rounds of KKT refinement for a dtype.

    float64 solves are accurate enough unrefined (refining costs ~40% a step at
    small sizes). In float32 the normal equations' accuracy, not the method,
    limits the reachable tolerance. Keeping strongly active nonnegative rows out
    of them (`kkt.factorise`'s `split`) removes that limit for zero and
    nonnegative cones: the random QPs of `benchmarks/bench_qp.py` all solve at
    1e-4 unrefined (n=128, seeds 0-9; before, 124-127 of 128 with two rounds).
    One round would add margin at 1e-5 (all solved, against 127-128 of 128
    unrefined) for ~35% more time at n=128. Second-order rows stay in the normal
    equations, where two rounds keep the solves accurate enough for 1e-4.
    """
    if jnp.finfo(dtype).bits >= 64:
        return 1e-8, 0
    return 1e-4, 2 if soc else 0


class _Problem(eqx.Module):
    P: Array
    q: Array
    A: Array
    b: Array
    blocks: tuple = eqx.field(static=True)
    zero: int = eqx.field(static=True)
    nu: int = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    inf_tol: float = eqx.field(static=True)
    reg: float = eqx.field(static=True)
    stall_tol: float = eqx.field(static=True)
    refinement: int = eqx.field(static=True)
    nb: Array  # |b|_inf
    nq: Array  # |q|_inf

    def measure(self, it: _Iterate) -> _Measure:
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
        nx, ny, ns = (_inf_norm(v) / tau for v in (it.x, it.y, it.s))
        pobj = (0.5 * xPx / tau + qx) / tau
        dobj = (-0.5 * xPx / tau - by) / tau
        pres = _inf_norm(rp) / tau / jnp.maximum(1, self.nb + nx + ns)
        dres = _inf_norm(rx) / tau / jnp.maximum(1, self.nq + nx + ny)
        gap = jnp.abs(pobj - dobj) / jnp.maximum(
            1, jnp.minimum(jnp.abs(pobj), jnp.abs(dobj))
        )
        worst = jnp.maximum(jnp.maximum(pres, dres), gap)
        solved = worst <= self.tol
        # Certificates are scale-free, so test them on the unnormalised iterate.
        itol = self.inf_tol
        primal_inf = (by < 0) & (_inf_norm(Aty) <= -itol * by)
        dual_inf = (
            (qx < 0) & (_inf_norm(Px) <= -itol * qx) & (_inf_norm(Ax_s) <= -itol * qx)
        )
        finite = jnp.isfinite(rtau) & jnp.all(jnp.isfinite(rx)) & jnp.isfinite(tau)
        status = jnp.where(
            ~finite,
            _NONFINITE,
            jnp.where(
                solved,
                _SOLVED,
                jnp.where(primal_inf, _PRIMAL_INF, jnp.where(dual_inf, _DUAL_INF, 0)),
            ),
        )
        return _Measure(rx, rp, rtau, Px, status, worst)

    def split(self, v):
        return v[: self.zero], v[self.zero :]

    def unit(self, dtype):
        return kkt.blockwise(
            self.blocks, lambda c, v: c.unit(dtype), self.b[self.zero :]
        )

    def product(self, u, v):
        return kkt.blockwise(self.blocks, lambda c, a, b: c.product(a, b), u, v)

    def divide(self, u, v):
        return kkt.blockwise(self.blocks, lambda c, a, b: c.divide(a, b), u, v)

    def max_step(self, u, du):
        return kkt.blockwise_min(self.blocks, lambda c, a, b: c.max_step(a, b), u, du)

    def margin(self, u):
        return kkt.blockwise_min(self.blocks, lambda c, a: c.margin(a), u)

    def interior(self, it: _Iterate) -> Array:
        return (
            (self.margin(self.split(it.s)[1]) > 0)
            & (self.margin(self.split(it.y)[1]) > 0)
            & (it.tau > 0)
            & (it.kappa > 0)
        )

    def scalings(self, s, y):
        out, start = [], 0
        for cone in self.blocks:
            stop = start + cone.dim
            out.append(cone.scaling(s[start:stop], y[start:stop]))
            start = stop
        return tuple(out)

    def factorise(self, scalings, boost: bool | Array = False):
        E, G = self.split(self.A)
        return kkt.factorise(self.P, E, G, self.blocks, scalings, self.reg, boost)


def _initial_point(pb: _Problem) -> _Iterate:
    # The least-squares-like point of CVXOPT: solve with W = I, then shift s and y
    # into the interior along the identity.
    dtype = pb.q.dtype
    e = pb.unit(dtype)
    f = pb.factorise(pb.scalings(e, e))
    x, y = kkt.solve_refined(f, -pb.q, pb.b, pb.refinement)
    y_e, y_c = pb.split(y)
    s_c = -y_c
    shift_s = -pb.margin(s_c)
    shift_y = -pb.margin(y_c)
    s_c = jnp.where(shift_s >= 0, s_c + (1 + shift_s) * e, s_c)
    y_c = jnp.where(shift_y >= 0, y_c + (1 + shift_y) * e, y_c)
    s = jnp.concatenate([jnp.zeros_like(y_e), s_c])
    y = jnp.concatenate([y_e, y_c])
    one = jnp.ones((), dtype)
    return _Iterate(x, y, s, one, one)


def _step(
    pb: _Problem,
    it: _Iterate,
    ms: _Measure,
    boost: bool | Array = False,
    centre: bool | Array = False,
) -> tuple[_Iterate, Array]:
    """The Mehrotra predictor-corrector direction on the embedding, and its step.

    With `centre` (a traced boolean allowed) the direction is a pure centring one
    instead (`sigma = 1`, no second-order terms): for a point that has jammed
    against the boundary of its cone.
    """
    zero = pb.zero
    tau, kappa = it.tau, it.kappa
    _, s_c = pb.split(it.s)
    _, y_c = pb.split(it.y)
    w = pb.scalings(s_c, y_c)
    lam = kkt.scale(pb.blocks, w, y_c)
    f = pb.factorise(w, boost)
    mu = (s_c @ y_c + tau * kappa) / (pb.nu + 1)

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
        ds_c = kkt.scale(pb.blocks, w, v - kkt.scale(pb.blocks, w, dy_c))
        dkappa = (d_tk - kappa * dtau) / tau
        return dx, dy, ds_c, dtau, dkappa

    def max_step(dy, ds_c, dtau, dkappa):
        a = jnp.minimum(pb.max_step(s_c, ds_c), pb.max_step(y_c, dy[zero:]))
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
    e = pb.unit(s_c.dtype)
    eta = 1 - sigma

    def correct(previous):
        _, dy_p, ds_p, dtau_p, dkappa_p = previous
        corr = pb.product(
            kkt.unscale(pb.blocks, w, ds_p), kkt.scale(pb.blocks, w, dy_p[zero:])
        )
        d_c = -pb.product(lam, lam) + sigma * mu * e - second * corr
        v = pb.divide(lam, d_c)
        rhs_p = -eta * ms.rp - jnp.concatenate([pad, kkt.scale(pb.blocks, w, v)])
        x1, y1 = kkt.solve_refined(f, -eta * ms.rx, rhs_p, pb.refinement)
        d_tk = -tau * kappa + sigma * mu - second * dtau_p * dkappa_p
        # The second-order part of x'Px/tau along the previous direction: the
        # linearised gap row misses it, and tau then drifts down every step.
        u = tau * previous[0] - it.x * dtau_p
        curv = second * (u @ (pb.P @ u)) / tau**3
        direction = assemble(x1, y1, v, eta, d_tk, curv)
        return direction, jnp.minimum(1, _STEP_FRACTION * max_step(*direction[1:]))

    def mu_after(direction, alpha):
        _, dy, ds_c, dtau, dkappa = direction
        s_new, y_new = s_c + alpha * ds_c, y_c + alpha * dy[zero:]
        return s_new @ y_new + (tau + alpha * dtau) * (kappa + alpha * dkappa)

    direction, alpha = correct(aff)
    for _ in range(_CORRECTIONS - 1):
        better, alpha2 = correct(direction)
        take = mu_after(better, alpha2) < mu_after(direction, alpha)
        direction = _tree_where(take, better, direction)
        alpha = jnp.where(take, alpha2, alpha)
    dx, dy, ds_c, dtau, dkappa = direction
    return _Iterate(dx, dy, jnp.concatenate([pad, ds_c]), dtau, dkappa), alpha


def _centre(
    pb: _Problem,
    it: _Iterate,
    target: float | Array,
    steps: int,
    differentiable: bool,
) -> _Iterate:
    """Newton steps from a solution to the central-path point `s∘y = target e`."""
    zero = pb.zero
    e = pb.unit(pb.q.dtype)

    def error(it):
        _, s_c = pb.split(it.s)
        _, y_c = pb.split(it.y)
        ms = pb.measure(it)
        comp = pb.product(s_c, y_c) - target * e
        scale = 1 + _inf_norm(pb.b) + _inf_norm(pb.q)
        err = jnp.maximum(
            jnp.maximum(_inf_norm(ms.rx), _inf_norm(ms.rp)) / scale,
            _inf_norm(comp) / target,
        )
        return ms, err

    def cond(carry):
        _, err, k = carry
        return (err > pb.tol) & (k < steps)

    def body(carry):
        it, _, k = carry
        ms = pb.measure(it)
        _, s_c = pb.split(it.s)
        _, y_c = pb.split(it.y)
        w = pb.scalings(s_c, y_c)
        lam = kkt.scale(pb.blocks, w, y_c)
        v = pb.divide(lam, target * e - pb.product(lam, lam))
        pad = jnp.zeros((zero,), s_c.dtype)
        rhs_p = -ms.rp - jnp.concatenate([pad, kkt.scale(pb.blocks, w, v)])
        dx, dy = kkt.solve_refined(pb.factorise(w), -ms.rx, rhs_p, pb.refinement)
        ds_c = kkt.scale(pb.blocks, w, v - kkt.scale(pb.blocks, w, dy[zero:]))
        a = jnp.minimum(pb.max_step(s_c, ds_c), pb.max_step(y_c, dy[zero:]))
        a = jnp.minimum(1, _STEP_FRACTION * a)
        ds = jnp.concatenate([pad, ds_c])
        new = _Iterate(it.x + a * dx, it.y + a * dy, it.s + a * ds, it.tau, it.kappa)
        return new, error(new)[1], k + 1

    init = (it, error(it)[1], 0)
    if differentiable:
        it, _, _ = eqxi.while_loop(
            cond, body, init, max_steps=steps, kind="checkpointed"
        )
    else:
        it, _, _ = jax.lax.while_loop(cond, body, init)
    return it


def _to_result(status: Array, finite_input: Array) -> RESULTS:
    # (Enumeration members are typed as literals; pyright needs the Any.)
    members: Any = RESULTS
    result = members.where(finite_input, members.nonfinite, members.nonfinite_input)
    table: tuple[tuple[int, Any], ...] = (
        (_SOLVED, RESULTS.successful),
        (_PRIMAL_INF, RESULTS.primal_infeasible),
        (_DUAL_INF, RESULTS.dual_infeasible),
        (_STALLED, RESULTS.stalled),
        (_RUNNING, RESULTS.max_steps_reached),
    )
    for code, member in table:
        result = members.where(status == code, member, result)
    return result


def _tree_where(pred, a, b):
    return jax.tree_util.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


def solve_cone_program(
    program: ConeProgram,
    data: ConeData,
    *,
    tol: float | None = None,
    infeasibility_tol: float | None = None,
    regularisation: float | None = None,
    refinement: int | None = None,
    max_steps: int = 50,
    differentiable: bool = False,
) -> tuple[PrimalDual, RESULTS, dict[str, Array]]:
    """Run the interior-point method on one cone program (vmap for a batch)."""
    cones = program.cones
    dtype = data.q.dtype
    default_tol, default_refinement = _defaults(dtype, bool(cones.soc))
    tol = default_tol if tol is None else tol
    eps = float(jnp.finfo(dtype).eps)
    pb = _Problem(
        P=(data.P + data.P.T) / 2,
        q=data.q,
        A=data.A,
        b=data.b,
        blocks=cones.blocks(),
        zero=cones.zero,
        nu=cones.degree(),
        tol=tol,
        inf_tol=tol if infeasibility_tol is None else infeasibility_tol,
        reg=eps ** (2 / 3) if regularisation is None else regularisation,
        stall_tol=tol**0.5,
        refinement=default_refinement if refinement is None else refinement,
        nb=_inf_norm(data.b),
        nq=_inf_norm(data.q),
    )
    finite_input = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(a)) for a in (pb.P, pb.q, pb.A, pb.b)])
    )
    it = _initial_point(pb)
    ms = pb.measure(it)
    ms = eqx.tree_at(
        lambda m: m.status, ms, jnp.where(finite_input, ms.status, _NONFINITE)
    )

    def running(ms, k):
        return (ms.status == _RUNNING) & (k < max_steps)

    def cond(carry):
        _, ms, k, _, _, _ = carry
        if differentiable:
            return running(ms, k)
        # Under `vmap`, a per-sample predicate makes the loop select between old
        # and new values of the whole carry at every step. Instead, loop while
        # any sample runs; finished samples take zero steps (below), and only
        # their status and step count are frozen.
        return eqxi.unvmap_any(running(ms, k))

    def body(carry):
        it, ms, k, rejected, retry, jammed = carry
        active = running(ms, k)
        d, alpha = _step(pb, it, ms, rejected > 0, jammed)
        alpha = jnp.where(retry, _RETRY_DAMPING, 1) * alpha
        # Rounding limits how far the iteration can go (float32 especially): a
        # step can leave the cone's interior, or (once the residuals reach the
        # accuracy of the KKT solves) make the point much worse, or Cholesky
        # can break down. Such a step is rejected and retried shorter, and the
        # sample's factorisations are regularised more strongly from then on; at
        # the `_RETRIES + 1`-th failure it stops at its last good iterate,
        # reported as stalled.
        candidate = jtu.tree_map(lambda u, du: u + alpha * du, it, d)
        ms_c = pb.measure(candidate)
        # `worst` is NaN if any of x, y, s, tau is (and `interior` checks kappa):
        # one scalar test instead of a reduction over every leaf.
        finite = jnp.isfinite(ms_c.worst)
        worse = (ms.worst <= pb.stall_tol) & (ms_c.worst > _STALL_GROWTH * ms.worst)
        ok = finite & pb.interior(candidate) & ~worse
        move = active & ok
        # (A select, not `alpha * 0`: a rejected step may hold NaNs.)
        new = jtu.tree_map(lambda u, du: u + jnp.where(move, alpha * du, 0), it, d)
        # Steps that barely lower the error near the end count as failures too:
        # there, only rounding keeps the iteration from its tolerance.
        slow = (ms.worst <= pb.stall_tol) & (ms_c.worst > _SLOW * ms.worst)
        rejected = rejected + (~ok | slow)
        give_up = rejected > _RETRIES
        # Where the point did not move, the measure's vectors describe a rejected
        # candidate. The next step recomputes them only if it retries (below);
        # otherwise they feed steps that are never taken.
        ms_c = _tree_where(ok, ms_c, ms)
        status = jnp.where(give_up, _STALLED, ms_c.status)
        status = jnp.where(active, status, ms.status)
        ms_c = eqx.tree_at(lambda m: m.status, ms_c, status)
        # A step this short means the point sits against the boundary of its cone,
        # far from the central path (aggressive second-order corrections can put it
        # there); the next step then only re-centres it.
        jammed = move & (alpha < _JAMMED)
        return new, ms_c, k + active, rejected, ~ok, jammed

    init = (it, ms, jnp.array(0), jnp.array(0), jnp.array(False), jnp.array(False))
    if differentiable:
        it, ms, steps, _, _, _ = eqxi.while_loop(
            cond, body, init, max_steps=max_steps, kind="checkpointed"
        )
    else:
        it, ms, steps, _, _, _ = jax.lax.while_loop(cond, body, init)

    solved = ms.status == _SOLVED
    norm = jnp.where(solved, it.tau, it.tau + it.kappa)
    it = _Iterate(it.x / norm, it.y / norm, it.s / norm, it.tau / norm, it.kappa / norm)
    if program.smoothing > 0:
        centred = _centre(pb, it, program.smoothing, max_steps, differentiable)
        it = _tree_where(solved, centred, it)
    elif cones.soc:
        # Mehrotra steps leave second-order blocks off-centre: s'y is small but
        # the vector part of s∘y decays only linearly, which costs accuracy in x
        # (about the square root of the gap). A few Newton steps towards the
        # central-path point at the reached complementarity realign them.
        _, s_c = pb.split(it.s)
        _, y_c = pb.split(it.y)
        mu = jnp.maximum(s_c @ y_c / cones.degree(), jnp.finfo(dtype).tiny)
        centred = _centre(
            pb, it, jax.lax.stop_gradient(mu), _POLISH_STEPS, differentiable
        )
        finite = jnp.all(jnp.isfinite(centred.x)) & jnp.all(jnp.isfinite(centred.y))
        it = _tree_where(solved & finite & pb.interior(centred), centred, it)
    value = PrimalDual(it.x, it.y, it.s)

    result = _to_result(ms.status, finite_input)
    stats = {"num_steps": steps, "max_steps": jnp.array(max_steps)}
    return value, result, stats


class InteriorPoint(AbstractBackend):
    """A primal-dual interior-point method for cone programs, in pure JAX.

    Solves [`unimplicit.ConeProgram`][] conditions (zero, nonnegative and
    second-order cones) through their homogeneous self-dual embedding, with
    Mehrotra predictor-corrector steps and Nesterov-Todd scaling. Linear algebra is
    dense: one Cholesky factorisation of an `n x n` matrix per step (and one of
    `p x p` with `p` equality rows). Infeasible and unbounded programs
    stop with `RESULTS.primal_infeasible` / `RESULTS.dual_infeasible`; the value is
    then a (scaled) certificate: `y` for primal, `x` for dual infeasibility. When
    rounding errors stop progress short of `tol` (float32 with a tight `tol`), the
    result is `RESULTS.stalled` and the value the last iterate before the stall.

    Under `jax.vmap` all samples step in lock-step until each has stopped, and each
    reports its own result. A warm start `y0` is ignored (interior-point methods
    gain little from one).

    **Arguments:**

    - `tol`: relative tolerance on the primal and dual residuals and on the duality
        gap. `None`: `1e-8` in float64, `1e-4` in float32.
    - `infeasibility_tol`: tolerance of the infeasibility certificates. `None`: as
        `tol`.
    - `max_steps`: the most interior-point steps (`unimplicit.solve`'s `max_steps`
        caps it further). Typical programs need 8 to 25.
    - `regularisation`: the constant diagonal regularisation of the reduced KKT
        matrix (machine precision times the pivots is added to it). `None`:
        `eps^(2/3)` of the dtype.
    - `refinement`: rounds of iterative refinement of each KKT solve. `None`: 0 in
        float64; in float32, 0 with only zero and nonnegative cones, else 2 (where
        the solves are otherwise too inaccurate to reach the default tolerance
        reliably). In float32, 1 adds margin for tolerances below the default.
    """

    tol: float | None = eqx.field(static=True, default=None)
    infeasibility_tol: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=50)
    regularisation: float | None = eqx.field(static=True, default=None)
    refinement: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        for name in ("tol", "infeasibility_tol", "regularisation"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"InteriorPoint: `{name}` must be > 0, got {value}.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise TypeError("InteriorPoint: `max_steps` must be an int.")
        if self.max_steps < 1:
            raise ValueError("InteriorPoint: `max_steps` must be >= 1.")
        r = self.refinement
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
            raise ValueError(
                f"InteriorPoint: `refinement` must be an int >= 0 or None, got {r!r}."
            )

    def supports(self, condition: AbstractCondition) -> bool:
        return isinstance(condition, AbstractConeCondition)

    def option_names(self) -> frozenset[str]:
        return frozenset()

    def forward(
        self,
        condition: AbstractCondition,
        y0: PyTree,
        args: PyTree,
        *,
        max_steps: int,
        options: dict[str, Any],
        adjoint: Any,
    ) -> BackendOutput:
        del y0, options
        assert isinstance(condition, AbstractConeCondition)
        value, result, stats = solve_cone_program(
            condition.cone_program(),
            condition.cone_data(args),
            tol=self.tol,
            infeasibility_tol=self.infeasibility_tol,
            regularisation=self.regularisation,
            refinement=self.refinement,
            max_steps=min(self.max_steps, max_steps),
            differentiable=adjoint is not None,
        )
        return BackendOutput(value, result, stats)


register_backend("unimplicit.InteriorPoint (cone programs)", lambda: InteriorPoint())
