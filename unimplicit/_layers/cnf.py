import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree, Scalar

from .._adjoint import AbstractAdjoint
from .._flow.diffrax_backend import Diffrax
from .._flow.flow import DiffraxAdjoint, Time
from .._flow.ode import ODE
from .._solve import solve


class _AugmentedField(eqx.Module):
    # The instantaneous change of variables: d/dt (z, l) = (f(t, z), tr ∂f/∂z).
    # With the Hutchinson estimator the trace is `ε^T (∂f/∂z) ε` for one ε held
    # fixed along the whole path (one Jacobian-vector product per evaluation);
    # the exact trace costs `d` of them.
    vector_field: Callable[[Any, Array, Any], Array]
    exact: bool = eqx.field(static=True)

    def __call__(self, t, state, args):
        z, _ = state
        user_args, eps = args

        def f(z):
            return self.vector_field(t, z, user_args)

        if self.exact:
            fz, lin = jax.linearize(f, z)
            trace = jnp.trace(jax.vmap(lin)(jnp.eye(z.shape[0], dtype=z.dtype)))
        else:
            fz, jvp = jax.jvp(f, (z,), (eps,))
            trace = jnp.vdot(eps, jvp)
        return fz, trace


def _standard_normal_log_prob(z: Array) -> Array:
    return -0.5 * jnp.vdot(z, z) - 0.5 * z.shape[0] * math.log(2 * math.pi)


class CNF(eqx.Module):
    """A continuous normalising flow (FFJORD-style) with a standard-normal base.

    Data `x` at time `t0` flows along `dz/dt = vector_field(t, z, args)` to
    `z(t1)`, which is standard normal. The log-likelihood follows the
    instantaneous change of variables,
    `log p(x) = log N(z(t1); 0, I) + ∫ tr(∂f/∂z) dt`, integrated alongside `z` as
    one [`unimplicit.ODE`][]. Acts on one sample of shape `(d,)`; `jax.vmap` it.

    **Arguments:**

    - `vector_field`: `vector_field(t, z, args) -> dz/dt` for `z` of shape `(d,)`.
    - `t0`, `t1`: the data and base times (default `0` and `1`).
    - `trace`: `"exact"` (`d` Jacobian-vector products per evaluation) or
        `"hutchinson"` (one, with Rademacher noise; an unbiased estimate of the
        log-likelihood, which needs a `key`).
    - `backend`: a [`unimplicit.Diffrax`][] backend; defaults to `Diffrax()`.
    - `adjoint`: how to differentiate; defaults to
        [`unimplicit.DiffraxAdjoint`][]`()` (Diffrax's checkpointed adjoint).
        `DiffraxAdjoint(diffrax.BacksolveAdjoint())` backsolves instead, and
        `UnrolledAdjoint(checkpoints)` sets the number of checkpoints.
    - `max_steps`, `throw`: as for [`unimplicit.solve`][].
    """

    vector_field: Callable[[Any, Array, Any], Array]
    t0: Time
    t1: Time
    trace: str = eqx.field(static=True)
    backend: Diffrax
    adjoint: AbstractAdjoint
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable[[Any, Array, Any], Array],
        t0: Time = 0.0,
        t1: Time = 1.0,
        trace: str = "exact",
        backend: Diffrax | None = None,
        adjoint: AbstractAdjoint | None = None,
        max_steps: int = 4096,
        throw: bool = True,
    ):
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f'`trace` must be "exact" or "hutchinson", not {trace!r}.')
        self.vector_field = vector_field
        self.t0 = t0
        self.t1 = t1
        self.trace = trace
        self.backend = Diffrax() if backend is None else backend
        self.adjoint = DiffraxAdjoint() if adjoint is None else adjoint
        self.max_steps = max_steps
        self.throw = throw

    def _flow(self, z0: Array, start, end, args: PyTree, key: Any) -> tuple:
        if z0.ndim != 1:
            raise ValueError(
                f"CNF acts on one sample of shape (d,), got shape {z0.shape}; "
                "`jax.vmap` it over a batch."
            )
        if self.trace == "exact":
            eps = jnp.zeros_like(z0)
        else:
            if key is None:
                raise ValueError(
                    'A CNF with trace="hutchinson" needs a `key` for the noise of '
                    'the trace estimator (or use trace="exact").'
                )
            eps = jax.random.rademacher(key, z0.shape, dtype=z0.dtype)
        field = _AugmentedField(self.vector_field, self.trace == "exact")
        sol = solve(
            ODE(field, start, end),
            self.backend,
            (args, eps),
            y0=(z0, jnp.zeros((), z0.dtype)),
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=self.throw,
        )
        return sol.value

    def log_prob(
        self, x: Float[Array, " d"], args: PyTree = None, *, key: Any = None
    ) -> Scalar:
        """The log-likelihood of one data point `x`.

        **Arguments:**

        - `x`: a sample of shape `(d,)`.
        - `args`: passed to `vector_field`.
        - `key`: the noise of the Hutchinson estimator (unused for `"exact"`).

        **Returns:** `log p(x)`, a scalar.
        """
        z, delta = self._flow(x, self.t0, self.t1, args, key)
        return _standard_normal_log_prob(z) + delta

    def sample(
        self, key: Any, shape: tuple[int], args: PyTree = None
    ) -> tuple[Float[Array, " d"], Scalar]:
        """Draw one sample and its log-likelihood, by flowing base noise backwards.

        **Arguments:**

        - `key`: a `jax.random` key (split for the base noise and, for
            `"hutchinson"`, the trace noise).
        - `shape`: the sample shape `(d,)`.
        - `args`: passed to `vector_field`.

        **Returns:** `(x, log_prob)`.
        """
        base_key, trace_key = jax.random.split(key)
        z = jax.random.normal(base_key, shape, dtype=jnp.result_type(float))
        x, delta = self._flow(z, self.t1, self.t0, args, trace_key)
        # Flowing from t1 back to t0 accumulates -∫ tr, hence the minus.
        return x, _standard_normal_log_prob(z) - delta

    def __call__(
        self, x: Float[Array, " d"], args: PyTree = None, *, key: Any = None
    ) -> Scalar:
        """The log-likelihood of `x`: the same as `log_prob`."""
        return self.log_prob(x, args, key=key)
