"""The interior point's starting point."""

import jax.numpy as jnp

from . import kkt
from .ipm_problem import Iterate, Problem


def initial_point(pb: Problem) -> Iterate:
    """The least-squares-like point of CVXOPT: solve with `W = I`, then shift `s`
    and `y` into the interior along the identity."""
    cones = pb.cones
    dtype = pb.q.dtype
    e = cones.unit(dtype)
    f = pb.factorise(cones.scaling(e, e))
    x, y = kkt.solve_refined(f, -pb.q, pb.b, pb.refinement)
    y_e, y_c = pb.split(y)
    s_c = -y_c
    shift_s = -cones.margin(s_c)
    shift_y = -cones.margin(y_c)
    s_c = jnp.where(shift_s >= 0, s_c + (1 + shift_s) * e, s_c)
    y_c = jnp.where(shift_y >= 0, y_c + (1 + shift_y) * e, y_c)
    s = jnp.concatenate([jnp.zeros_like(y_e), s_c])
    y = jnp.concatenate([y_e, y_c])
    one = jnp.ones((), dtype)
    return Iterate(x, y, s, one, one)
