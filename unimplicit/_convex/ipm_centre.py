"""Newton steps from a solution to a point of the central path, `s∘y = target e`.

For `smoothing` (the relaxed solution whose derivatives are smooth) and for
polishing blocks that Mehrotra steps leave off-centre. An Optimistix-protocol
solver, run by `unimplicit._iterate.iterate` with the `Problem` as its `args`.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._iterate import iterate
from .._solution import RESULTS
from .._solver._common import AbstractSelfFreezingSolver
from . import kkt
from .ipm_problem import inf_norm, Iterate, Problem, tree_where
from .ipm_step import STEP_FRACTION


_POLISH_STEPS = 3


def _error(pb: Problem, it: Iterate, target) -> Array:
    _, s_c = pb.split(it.s)
    _, y_c = pb.split(it.y)
    ms = pb.measure(it)
    comp = pb.cones.product(s_c, y_c) - target * pb.cones.unit(pb.q.dtype)
    scale = 1 + inf_norm(pb.b) + inf_norm(pb.q)
    return jnp.maximum(
        jnp.maximum(inf_norm(ms.rx), inf_norm(ms.rp)) / scale,
        inf_norm(comp) / target,
    )


class Centring(AbstractSelfFreezingSolver):
    """The Newton iteration towards `s∘y = target e` (internal); its state is the
    error of the current point, and it stops below the problem's `tol`."""

    target: float | Array

    def init(self, fn, y: Iterate, args: Problem, options, f_struct, aux_struct, tags):
        return _error(args, y, self.target)

    def step(self, fn, y: Iterate, args: Problem, options, state: Array, tags):
        pb, it, target, cones = args, y, self.target, args.cones
        zero = cones.zero
        e = cones.unit(pb.q.dtype)
        ms = pb.measure(it)
        _, s_c = pb.split(it.s)
        _, y_c = pb.split(it.y)
        w = cones.scaling(s_c, y_c)
        lam = w.scale(y_c)
        v = cones.divide(lam, target * e - cones.product(lam, lam))
        pad = jnp.zeros((zero,), s_c.dtype)
        rhs_p = -ms.rp - jnp.concatenate([pad, w.scale(v)])
        dx, dy = kkt.solve_refined(pb.factorise(w), -ms.rx, rhs_p, pb.refinement)
        ds_c = w.scale(v - w.scale(dy[zero:]))
        a = jnp.minimum(cones.max_step(s_c, ds_c), cones.max_step(y_c, dy[zero:]))
        a = jnp.minimum(1, STEP_FRACTION * a)
        ds = jnp.concatenate([pad, ds_c])
        new = Iterate(it.x + a * dx, it.y + a * dy, it.s + a * ds, it.tau, it.kappa)
        # A point already within tolerance stays (self-freezing: under `vmap`,
        # `iterate` steps finished samples too).
        going = state > pb.tol
        new = tree_where(going, new, it)
        return new, jnp.where(going, _error(pb, new, target), state), None

    def terminate(self, fn, y, args: Problem, options, state: Array, tags):
        return ~(state > args.tol), RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, None, {}


def centre(
    pb: Problem, it: Iterate, target, steps: int, differentiable: bool
) -> Iterate:
    """At most `steps` Newton steps from `it` towards `s∘y = target e`."""
    out = iterate(
        Centring(target),
        None,
        it,
        pb,
        max_steps=steps,
        differentiable=differentiable,
        check_finite=False,
    )
    return out.value


def finish(
    pb: Problem,
    it: Iterate,
    solved: Array,
    smoothing: float,
    max_steps: int,
    differentiable: bool,
) -> Iterate:
    """The point to return from a solution `it` (normalised to `tau = 1`): the
    central-path point at `smoothing` if that is positive, else `it` polished."""
    cones = pb.cones
    if smoothing > 0:
        centred = centre(pb, it, smoothing, max_steps, differentiable)
        return tree_where(solved, centred, it)
    if cones.diagonal():
        return it
    # Mehrotra steps leave blocks with a non-diagonal scaling (second-order
    # cones) off-centre: s'y is small but the off-diagonal part of s∘y decays only
    # linearly, which costs accuracy in x (about the square root of the gap). A
    # few Newton steps towards the central-path point at the reached
    # complementarity realign them.
    _, s_c = pb.split(it.s)
    _, y_c = pb.split(it.y)
    mu = jnp.maximum(s_c @ y_c / cones.degree(), jnp.finfo(pb.q.dtype).tiny)
    centred = centre(pb, it, jax.lax.stop_gradient(mu), _POLISH_STEPS, differentiable)
    finite = jnp.all(jnp.isfinite(centred.x)) & jnp.all(jnp.isfinite(centred.y))
    return tree_where(solved & finite & pb.interior(centred), centred, it)
