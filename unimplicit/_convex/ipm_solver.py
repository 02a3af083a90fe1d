"""The interior point's main iteration, as an Optimistix-protocol solver.

Run by `unimplicit._iterate.iterate` on the iterate of the embedding
(`ipm_problem.py`), with the `Problem` as its `args`: each step is a Mehrotra
predictor-corrector step (`ipm_step.py`), rejected and retried shorter when
rounding spoils it, and the verdict (solved, infeasible, stalled, not finite) is a
`RESULTS` member in the solver's state.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from .._solution import RESULTS
from .._solver._common import AbstractSelfFreezingSolver
from .ipm_problem import Iterate, Measure, Problem, tree_where
from .ipm_step import direction


# Near the end (relative error below `stall_tol`), a step that makes the error
# this many times larger has hit the accuracy of the linear algebra.
_STALL_GROWTH = 10.0
# A rejected step is retried this much shorter; a sample stalls at its
# (`_RETRIES` + 1)-th rejection.
_RETRY_DAMPING = 0.25
# Near the end, a step that leaves the error above this fraction of what it was
# counts as a failure too (see `step`).
_SLOW = 0.9
_RETRIES = 2
# An accepted step shorter than this is followed by a pure centring step.
_JAMMED = 1e-3


class _State(eqx.Module):
    measure: Measure  # of the current iterate
    done: Array
    result: RESULTS
    rejected: Array  # rejected steps so far
    retry: Array  # whether the last step was rejected
    jammed: Array  # whether the last accepted step was very short


class MehrotraSolver(AbstractSelfFreezingSolver):
    """Mehrotra predictor-corrector steps on the embedding (internal).

    Self-freezing: a step from a finished state keeps the iterate, `done` and
    `result` (all that `terminate` and `postprocess` read).
    """

    def init(
        self, fn, y: Iterate, args: Problem, options, f_struct, aux_struct, tags
    ) -> _State:
        pb = args
        finite_input = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(a)) for a in (pb.P, pb.q, pb.A, pb.b)])
        )
        ms = pb.measure(y)
        members: Any = RESULTS
        result = members.where(finite_input, ms.result, members.nonfinite_input)
        false = jnp.array(False)
        return _State(ms, ms.done | ~finite_input, result, jnp.array(0), false, false)

    def step(self, fn, y: Iterate, args: Problem, options, state: _State, tags):
        pb, it, ms = args, y, state.measure
        # (Under `vmap`, `iterate` steps finished samples too: they must not move.)
        active = ~state.done
        d, alpha = direction(pb, it, ms, state.rejected > 0, state.jammed)
        alpha = jnp.where(state.retry, _RETRY_DAMPING, 1) * alpha
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
        rejected = state.rejected + (~ok | slow).astype(state.rejected.dtype)
        give_up = rejected > _RETRIES
        # Where the point did not move, the measure's vectors describe a rejected
        # candidate. The next step recomputes them only if it retries (below);
        # otherwise they feed steps that are never taken.
        ms_c = tree_where(ok, ms_c, ms)
        members: Any = RESULTS
        result = members.where(give_up, members.stalled, ms_c.result)
        result = members.where(active, result, state.result)
        done = jnp.where(active, ms_c.done | give_up, state.done)
        # A step this short means the point sits against the boundary of its cone,
        # far from the central path (aggressive second-order corrections can put it
        # there); the next step then only re-centres it.
        jammed = move & (alpha < _JAMMED)
        return new, _State(ms_c, done, result, rejected, ~ok, jammed), None

    def terminate(self, fn, y, args, options, state: _State, tags):
        return state.done, state.result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, None, {}
