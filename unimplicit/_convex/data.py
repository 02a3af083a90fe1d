"""The data of a cone program and its primal-dual state.

(Apart from `cone_program.py` so that the condition and its KKT solver,
`kkt_solver.py`, both depend on them without depending on each other.)
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class ConeData(eqx.Module):
    """The data of the cone program `min 1/2 x^T P x + q^T x  s.t.  A x + s = b, s ∈ K`.

    This is cvxpy's and SCS's convention. The dual `y` lies in the dual cone `K*`
    and satisfies `P x + q + A^T y = 0`. All arrays are dense. The condition acts on
    one sample: for a batch, build a `ConeData` of batched arrays and `jax.vmap` over
    it. The cone `K` is given separately, by
    [`unimplicit.Cones`][] in [`unimplicit.ConeProgram`][].

    **Arguments:**

    - `P`: `(n, n)` positive semidefinite (zeros for a linear program). Only its
        symmetric part `(P + P^T) / 2` is used.
    - `q`: `(n,)` linear cost.
    - `A`: `(m, n)` constraint matrix, rows ordered as the cones.
    - `b`: `(m,)` right-hand side.
    """

    # (Shapes are checked by `ConeProgram`, with messages naming both shapes.)
    P: Float[Array, "..."] = eqx.field(converter=jnp.asarray)
    q: Float[Array, "..."] = eqx.field(converter=jnp.asarray)
    A: Float[Array, "..."] = eqx.field(converter=jnp.asarray)
    b: Float[Array, "..."] = eqx.field(converter=jnp.asarray)


class PrimalDual(eqx.Module):
    """A primal-dual point of a cone program: the state of [`unimplicit.ConeProgram`][].

    **Attributes:**

    - `x`: `(n,)` primal variable.
    - `y`: `(m,)` dual variable (one multiplier per row of `A`).
    - `s`: `(m,)` primal slack `b - A x`.
    """

    x: Float[Array, " n"]
    y: Float[Array, " m"]
    s: Float[Array, " m"]
