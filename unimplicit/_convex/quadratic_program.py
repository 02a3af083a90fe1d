"""A native array interface for quadratic programs, without cvxpy."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._adjoint import AbstractAdjoint
from .._solution import Solution
from .._solve import solve
from .cone_program import ConeData, ConeProgram
from .cones import Cones
from .interior_point import InteriorPoint


class QPSolution(eqx.Module):
    """The primal-dual solution of a [`unimplicit.QuadraticProgram`][].

    **Attributes:**

    - `x`: `(n,)` the minimiser.
    - `eq_dual`: `(p,)` multipliers of `A x = b`.
    - `ineq_dual`: `(m,)` multipliers of `G x <= h`, nonnegative.
    - `slack`: `(m,)` `h - G x`, nonnegative.

    They satisfy `Q x + q + A^T eq_dual + G^T ineq_dual = 0`.
    """

    x: Float[Array, " n"]
    eq_dual: Float[Array, " p"]
    ineq_dual: Float[Array, " m"]
    slack: Float[Array, " m"]


def _optional(a: Any) -> Array | None:
    return None if a is None else jnp.asarray(a)


def _pair(name_a: str, a: Any, name_b: str, b: Any) -> None:
    if (a is None) != (b is None):
        raise ValueError(
            f"QuadraticProgram: give both `{name_a}` and `{name_b}`, or neither."
        )


class QuadraticProgram(eqx.Module):
    """The quadratic program `min 1/2 x^T Q x + q^T x  s.t.  A x = b,  G x <= h`.

    A thin front end to [`unimplicit.ConeProgram`][] for users without cvxpy. It
    acts on one problem: build it from batched arrays and `jax.vmap` a function of
    it (or vmap `QuadraticProgram.solve` over the module) for a batch. Gradients
    with respect to every array come from the implicit function theorem.

    **Arguments:**

    - `Q`: `(n, n)` positive semidefinite (its symmetric part is used).
    - `q`: `(n,)`.
    - `A`, `b`: `(p, n)` and `(p,)` equality constraints, or both `None`.
    - `G`, `h`: `(m, n)` and `(m,)` inequality constraints, or both `None`.
    """

    # (Shapes are checked when solving, with messages naming both shapes.)
    Q: Float[Array, "..."] = eqx.field(converter=jnp.asarray)
    q: Float[Array, "..."] = eqx.field(converter=jnp.asarray)
    A: Float[Array, "..."] | None = eqx.field(default=None, converter=_optional)
    b: Float[Array, "..."] | None = eqx.field(default=None, converter=_optional)
    G: Float[Array, "..."] | None = eqx.field(default=None, converter=_optional)
    h: Float[Array, "..."] | None = eqx.field(default=None, converter=_optional)

    def __check_init__(self):
        _pair("A", self.A, "b", self.b)
        _pair("G", self.G, "h", self.h)

    def cone_form(self) -> tuple[Cones, ConeData]:
        """The equivalent cone program: equalities, then `h - G x >= 0`."""
        q = jnp.asarray(self.q)
        if q.ndim != 1:
            raise ValueError(
                f"QuadraticProgram: `q` must have shape (n,), got {q.shape}; for a "
                "batch, jax.vmap over the problem."
            )
        n, dtype = q.shape[0], q.dtype
        Q = jnp.asarray(self.Q, dtype)
        empty = (jnp.zeros((0, n), dtype), jnp.zeros((0,), dtype))
        A, b = empty if self.A is None else (self.A, self.b)
        G, h = empty if self.G is None else (self.G, self.h)
        A, b, G, h = (jnp.asarray(a, dtype) for a in (A, b, G, h))
        p, m = A.shape[0] if A.ndim == 2 else 0, G.shape[0] if G.ndim == 2 else 0
        expected = {"Q": (n, n), "A": (p, n), "b": (p,), "G": (m, n), "h": (m,)}
        for name, arr in zip(expected, (Q, A, b, G, h)):
            if arr.shape != expected[name]:
                raise ValueError(
                    f"QuadraticProgram: `{name}` has shape {arr.shape}, but {n} "
                    f"variables (from `q`) and the rows of `A`/`G` need "
                    f"{expected[name]}; for a batch, jax.vmap over the problem."
                )
        data = ConeData(Q, q, jnp.concatenate([A, G]), jnp.concatenate([b, h]))
        return Cones(zero=p, nonneg=m), data

    def solve(
        self,
        backend: InteriorPoint | None = None,
        *,
        adjoint: AbstractAdjoint | None = None,
        smoothing: float = 0.0,
        max_steps: int = 256,
        throw: bool = True,
    ) -> Solution:
        """Solve the program with [`unimplicit.solve`][].

        **Arguments:**

        - `backend`: the solver; `None` means `InteriorPoint()`.
        - `adjoint`: how to differentiate; `None` means the implicit function
            theorem with the structured KKT solver.
        - `smoothing`: `mu >= 0`; see [`unimplicit.ConeProgram`][].
        - `max_steps`: bound on interior-point steps.
        - `throw`: raise on failure (infeasible, unbounded, not converged) rather
            than report it in `Solution.result`.

        **Returns:**

        A [`unimplicit.Solution`][] whose `value` is a [`unimplicit.QPSolution`][].
        """
        cones, data = self.cone_form()
        sol = solve(
            ConeProgram(cones, smoothing),
            InteriorPoint() if backend is None else backend,
            data,
            adjoint=adjoint,
            max_steps=max_steps,
            throw=throw,
        )
        v, p = sol.value, cones.zero
        value = QPSolution(v.x, v.y[:p], v.y[p:], v.s[p:])
        return Solution(value=value, result=sol.result, stats=sol.stats, aux=sol.aux)
