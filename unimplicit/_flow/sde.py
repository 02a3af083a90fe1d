from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from jaxtyping import Array, PyTree, Real

from .flow import AbstractFlow, as_saveat, check_initial_state, Time


_LevyArea = (
    type[diffrax.BrownianIncrement]
    | type[diffrax.SpaceTimeLevyArea]
    | type[diffrax.SpaceTimeTimeLevyArea]
)


def _check_key(key: Any) -> Array:
    if key is None:
        raise ValueError(
            "An `SDE` needs a `jax.random` key to sample its Brownian motion: pass "
            "`key=jax.random.key(seed)` (for a layer, `layer(y0, key=key)`). The same "
            "key gives the same noise, so gradients under a fixed key are "
            "deterministic."
        )
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if not (typed and key.shape == ()) and not (
        key.dtype == jnp.uint32 and key.shape == (2,)
    ):
        raise TypeError(
            "`key` must be a single `jax.random` key (`jax.random.key(seed)` or "
            f"`jax.random.PRNGKey(seed)`), got dtype {key.dtype} and shape "
            f"{key.shape}. Under `jax.vmap`, split the key and map over it."
        )
    return key


class _Diagonal(eqx.Module):
    # A Module rather than a lambda, so that the parameters of `diffusion` stay
    # PyTree leaves of the term (which `diffrax.BacksolveAdjoint` differentiates).
    diffusion: Callable[[Any, PyTree, Any], Array]

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(self.diffusion(t, y, args))


def _concrete(x: Any) -> np.ndarray | None:
    # The value of `x` if it is known at trace time, else None.
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class SDE(AbstractFlow):
    """The Itô stochastic differential equation `dy = f(t, y) dt + g(t, y) dW`.

    The Brownian motion `W` is a `diffrax.VirtualBrownianTree` drawn from `key`:
    the same key gives the same path, so the solution is a deterministic,
    differentiable function of the parameters for a fixed key. The output is
    `y(t1)`, or the states at the times in `saveat`. Only `t0 < t1` is supported.

    **Arguments:**

    - `drift`: `drift(t, y, args) -> dy/dt`, with the structure of `y`.
    - `diffusion`: `diffusion(t, y, args)`. With `noise_shape=None` (diagonal
        noise) it returns an array shaped like `y`, multiplying each component
        of `dW` elementwise. Otherwise it returns an array of shape
        `y.shape + noise_shape`, contracted with `dW`.
    - `t0`, `t1`: the start and end times, `t0 < t1`.
    - `key`: a `jax.random` key for the Brownian motion (required).
    - `saveat`: `None`, an array of times, or a `diffrax.SaveAt` (as for
        [`unimplicit.ODE`][]).
    - `noise_shape`: the shape of the Brownian motion, or `None` for diagonal
        noise (one independent Brownian motion per component of `y`; `y` must
        then be a single array).
    - `brownian_tol`: the time resolution of the Brownian tree; defaults to
        `1e-3 * (t1 - t0)`. Pick it below the step size.
    - `levy_area`: the Lévy area the Brownian tree provides, for solvers that
        need one (e.g. `diffrax.SpaceTimeLevyArea` for `diffrax.ShARK`).
    """

    drift: Callable[[Any, PyTree, Any], PyTree]
    diffusion: Callable[[Any, PyTree, Any], Any]
    t0: Time
    t1: Time
    key: Array
    saveat: diffrax.SaveAt | None
    noise_shape: tuple[int, ...] | None = eqx.field(static=True)
    brownian_tol: Time | None
    levy_area: _LevyArea = eqx.field(static=True)

    def __init__(
        self,
        drift: Callable[[Any, PyTree, Any], PyTree],
        diffusion: Callable[[Any, PyTree, Any], Any],
        t0: Time,
        t1: Time,
        *,
        key: Any = None,
        saveat: diffrax.SaveAt | Real[Array, " times"] | None = None,
        noise_shape: tuple[int, ...] | None = None,
        brownian_tol: Time | None = None,
        levy_area: _LevyArea = diffrax.BrownianIncrement,
    ):
        for name, fn in (("drift", drift), ("diffusion", diffusion)):
            if not callable(fn):
                raise TypeError(
                    f"`{name}` must be a callable `{name}(t, y, args)`, not "
                    f"{type(fn).__name__}."
                )
        self.key = _check_key(key)
        c0, c1 = _concrete(t0), _concrete(t1)
        if c0 is not None and c1 is not None and not np.all(c0 < c1):
            raise ValueError(
                f"An `SDE` must run forwards in time, but got t0={t0} and t1={t1}. "
                "Reverse-time SDEs are not supported: reparameterise time, e.g. "
                "s = -t."
            )
        self.drift = drift
        self.diffusion = diffusion
        self.t0 = t0
        self.t1 = t1
        self.saveat = as_saveat(saveat)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.brownian_tol = brownian_tol
        self.levy_area = levy_area

    def init(self, y0: PyTree | None, args: PyTree) -> PyTree:
        y0 = check_initial_state(y0, "SDE")
        if self.noise_shape is None and not isinstance(y0, jax.Array):
            raise ValueError(
                "Diagonal noise (`noise_shape=None`) needs the state to be a single "
                f"array, but it is a {type(y0).__name__}. Pass `noise_shape=`."
            )
        return y0

    def terms(self, y0: PyTree) -> PyTree[diffrax.AbstractTerm]:
        dtype = jnp.result_type(*jtu.tree_leaves(y0))
        shape = jnp.shape(y0) if self.noise_shape is None else self.noise_shape
        t0 = eqx.error_if(
            jnp.asarray(self.t0, dtype),
            jnp.asarray(self.t0) >= jnp.asarray(self.t1),
            "An `SDE` must run forwards in time (t0 < t1).",
        )
        t1 = jnp.asarray(self.t1, dtype)
        tol = 1e-3 * (t1 - t0) if self.brownian_tol is None else self.brownian_tol
        brownian = diffrax.VirtualBrownianTree(
            t0,
            t1,
            tol=tol,
            shape=jax.ShapeDtypeStruct(shape, dtype),
            key=self.key,
            levy_area=self.levy_area,
        )
        if self.noise_shape is None:
            control = diffrax.ControlTerm(_Diagonal(self.diffusion), brownian)
        else:
            control = diffrax.ControlTerm(self.diffusion, brownian)
        return diffrax.MultiTerm(diffrax.ODETerm(self.drift), control)
