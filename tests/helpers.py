"""Shared test helpers and a catalogue of small problems with reference answers.

Each problem's map is written once against an array namespace `xp`: the JAX version
(`jax.numpy`) is what the tests solve, and the NumPy version computes the reference
answer in float64 at import, independently of JAX and of its configuration (no
compilation, a few milliseconds). `problem.astype(dtype)` casts the initial state,
the arguments and the reference to `dtype`; every map is dtype-generic (constants
are Python scalars, matrices live in `args`), so it runs under strict dtype
promotion in float32 and float64 alike.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def central_difference(fn, x, eps=1e-6):
    """Gradient of a scalar `fn` at PyTree `x` by central differences."""
    flat, unravel = jfu.ravel_pytree(x)

    def at(v):
        return fn(unravel(v))

    # One compiled, batched evaluation of every perturbation: much faster than a
    # Python loop of eager solves.
    steps = eps * jnp.eye(flat.size, dtype=flat.dtype)
    row = flat[None, :]
    values = jax.jit(jax.vmap(at))(jnp.concatenate([row + steps, row - steps]))
    plus, minus = jnp.split(values, 2)
    return unravel((plus - minus) / (2 * eps))


def assert_tree_allclose(a, b, rtol, atol=0.0):
    la, ta = jtu.tree_flatten(a)
    lb, tb = jtu.tree_flatten(b)
    assert ta == tb, f"structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb, strict=True):
        assert jnp.shape(x) == jnp.shape(y)
        err = jnp.max(jnp.abs(x - y)) if jnp.size(x) else 0.0
        scale = jnp.max(jnp.abs(y)) if jnp.size(y) else 0.0
        assert err <= atol + rtol * scale, f"max abs err {err} vs scale {scale}"


def relative_error(a, b):
    fa, _ = jfu.ravel_pytree(a)
    fb, _ = jfu.ravel_pytree(b)
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def contractive_matrix(key, n, norm=0.6, dtype=jnp.float64):
    w = jax.random.normal(key, (n, n), dtype)
    return norm * w / jnp.linalg.norm(w, 2)


def max_abs_error(a, b) -> float:
    """The largest entrywise difference between two PyTrees of the same structure."""
    errors = jtu.tree_map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b)
    return float(max(jtu.tree_leaves(errors)))


# --- The catalogue --------------------------------------------------------------


def _cast(tree: Any, dtype: Any) -> Any:
    return jtu.tree_map(lambda x: jnp.asarray(x, dtype), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One test problem. Its arrays are float64 NumPy arrays; `astype` gives JAX
    arrays of any floating dtype.

    - `name`: the test id.
    - `kind`: `"fixed_point"` (`fn(y, args) -> y`), `"root"` (`fn(y, args) -> 0`),
        or `"ode"` (`fn(t, y, args) -> dy/dt` over `[t0, t1]`).
    - `fn`: the map, residual or vector field, in `jax.numpy`.
    - `y0`, `args`: the initial state and the arguments.
    - `solution`: the reference answer: the fixed point or root, or `y(t1)`.
    - `sensitivity`: for equilibria, `||(dF/dy)^-1||_inf` at the solution (`F` the
        residual, `f(y) - y` for a fixed point): a residual of max-norm `r` moves
        the answer by at most about `sensitivity * r`. Tests scale their
        comparisons with the reference by it. `1` for flows.
    - `t0`, `t1`: the time interval of a flow.
    """

    name: str
    kind: str
    fn: Callable
    y0: Any
    args: Any
    solution: Any
    sensitivity: float = 1.0
    t0: Any = 0.0
    t1: Any = 1.0

    def astype(self, dtype: Any) -> "Problem":
        # A flow's times too: under x64, Diffrax promotes the state to the dtype of
        # the times, and float64 times would make a float32 flow float64.
        return dataclasses.replace(
            self,
            y0=_cast(self.y0, dtype),
            args=_cast(self.args, dtype),
            solution=_cast(self.solution, dtype),
            t0=_cast(self.t0, dtype),
            t1=_cast(self.t1, dtype),
        )

    def residual(self, y: Any, args: Any) -> Any:
        """`F(y, args)`, zero at the answer of an equilibrium problem."""
        if self.kind == "fixed_point":
            return jtu.tree_map(lambda a, b: a - b, self.fn(y, args), y)
        assert self.kind == "root", self.kind
        return self.fn(y, args)

    def __repr__(self) -> str:
        return f"Problem({self.name!r})"


def _np_flat(fn: Callable, y0: Any, args: Any):
    # A NumPy map on flat float64 vectors, and the unravelling back to `y0`'s shape.
    leaves, treedef = jtu.tree_flatten(y0)
    shapes = [np.shape(x) for x in leaves]
    splits = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

    def unravel(v):
        parts = np.split(v, splits)
        return treedef.unflatten([p.reshape(s) for p, s in zip(parts, shapes)])

    def ravel(tree):
        return np.concatenate([np.ravel(x) for x in jtu.tree_leaves(tree)])

    return (lambda v: ravel(fn(unravel(v), args))), ravel(y0), unravel


def _np_jacobian(fn: Callable, v: np.ndarray) -> np.ndarray:
    eps = 1e-6
    cols = [(fn(v + eps * e) - fn(v - eps * e)) / (2 * eps) for e in np.eye(v.size)]
    return np.stack(cols, axis=-1)


def _np_newton(residual: Callable, v: np.ndarray) -> np.ndarray:
    # Newton's method in float64 with a finite-difference Jacobian: the Jacobian's
    # error slows convergence but does not move the root. Fails loudly, at import,
    # if it does not reach machine precision.
    for _ in range(100):
        r = residual(v)
        if np.max(np.abs(r)) <= 1e-15 * max(1.0, np.max(np.abs(v))):
            return v
        v = v - np.linalg.solve(_np_jacobian(residual, v), r)
    raise AssertionError("the reference Newton iteration did not converge")


@functools.cache
def _jax_map(make: Callable) -> Callable:
    # One function object per map, so that problems sharing a map (of the same
    # shapes) share its compilations.
    return make(jnp)


def _equilibrium(
    name: str, kind: str, make: Callable, y0: Any, args: Any, warmup: int = 0
) -> Problem:
    """A fixed-point or root problem from `make(xp) -> fn`, its reference found in
    NumPy: `warmup` plain fixed-point steps from `y0`, then Newton."""
    np_fn, v, unravel = _np_flat(make(np), y0, args)
    if kind == "fixed_point":
        for _ in range(warmup):
            v = np_fn(v)

        def residual(v):
            return np_fn(v) - v

    else:
        residual = np_fn
    v = _np_newton(residual, v)
    jac_inv = np.linalg.inv(_np_jacobian(residual, v))
    sensitivity = float(np.max(np.sum(np.abs(jac_inv), axis=1)))
    return Problem(name, kind, _jax_map(make), y0, args, unravel(v), sensitivity)


_rng = np.random.default_rng(0)


def _contractive(n: int, norm: float) -> np.ndarray:
    w = _rng.standard_normal((n, n))
    return norm * w / np.linalg.norm(w, 2)


def _non_normal(n: int, diag: float, norm: float) -> np.ndarray:
    # Upper triangular, so its spectral radius is `diag`, with the strictly upper
    # part scaled (by bisection: the 2-norm grows with the scale) so that the 2-norm
    # is `norm`. Plain iteration contracts only asymptotically: the error first grows.
    upper = np.triu(_rng.standard_normal((n, n)), 1)
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        too_big = np.linalg.norm(diag * np.eye(n) + mid * upper, 2) > norm
        lo, hi = (lo, mid) if too_big else (mid, hi)
    return diag * np.eye(n) + lo * upper


def _tanh_cell(xp):
    def fn(y, args):
        w, x = args
        return xp.tanh(w @ y + x)

    return fn


def _cos(xp):
    def fn(y, args):
        return args * xp.cos(y)

    return fn


def _exp(xp):
    # The fixed point solves y e^y = args (the Lambert W function).
    def fn(y, args):
        return args * xp.exp(-y)

    return fn


def _pytree(xp):
    def fn(y, args):
        a, (b, c) = y
        return (
            0.5 * xp.sin(b[:2]) + args,
            (0.3 * xp.sum(xp.tanh(a)) + 0.1 * b, 0.5 * xp.cos(c)),
        )

    return fn


def _linear(xp):
    def fn(y, args):
        a, b = args
        return a @ y + b

    return fn


def _cubic(xp):
    # Elementwise a - y - y^3 / 2: decreasing, one real root per entry, Jacobian
    # near -I at the origin (as Broyden's initial guess assumes).
    def fn(y, args):
        return args - y - 0.5 * y**3

    return fn


def _coupled(xp):
    # b - M y - 0.1 y^3 with M = I + S, S skew-symmetric: a non-symmetric system.
    def fn(y, args):
        m, b = args
        return b - m @ y - 0.1 * y**3

    return fn


def _slow_matrix(eigenvalues: tuple[float, ...]) -> np.ndarray:
    q, _ = np.linalg.qr(_rng.standard_normal((len(eigenvalues),) * 2))
    return q @ np.diag(eigenvalues) @ q.T


_NON_NORMAL = _non_normal(6, diag=0.5, norm=1.3)
_SLOW = _slow_matrix((0.95, 0.9, 0.6, 0.2, -0.4))
_SKEW = np.triu(_rng.standard_normal((4, 4)), 1)
_SKEW = 0.3 * (_SKEW - _SKEW.T)


FIXED_POINTS = (
    # A contractive DEQ cell, ||W||_2 = 0.9.
    _equilibrium(
        "tanh",
        "fixed_point",
        _tanh_cell,
        np.zeros(6),
        (_contractive(6, 0.9), _rng.uniform(-1, 1, 6)),
        warmup=50,
    ),
    _equilibrium(
        "cos", "fixed_point", _cos, np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.8, 0.5])
    ),
    _equilibrium("exp", "fixed_point", _exp, np.zeros(2), np.array([0.5, 1.0])),
    # A PyTree state with leaves of three shapes, scalar included.
    _equilibrium(
        "pytree",
        "fixed_point",
        _pytree,
        (np.zeros(2), (np.ones(3), np.zeros(()))),
        np.array([0.2, -0.1]),
        warmup=20,
    ),
    # tanh(W z + x) with W non-normal: ||W||_2 = 1.3 but spectral radius 0.5.
    _equilibrium(
        "non_normal",
        "fixed_point",
        _tanh_cell,
        np.zeros(6),
        (_NON_NORMAL, _rng.uniform(-1, 1, 6)),
        warmup=200,
    ),
    # Linear, spectral radius 0.95: plain iteration needs ~400 steps for 1e-8, and
    # I - A is near-singular-ish (sensitivity ~20).
    _equilibrium(
        "slow", "fixed_point", _linear, np.zeros(5), (_SLOW, _rng.uniform(-1, 1, 5))
    ),
)

ROOTS = (
    _equilibrium("cubic", "root", _cubic, np.zeros(3), np.array([0.5, -1.0, 2.0])),
    _equilibrium(
        "coupled",
        "root",
        _coupled,
        np.zeros(4),
        (np.eye(4) + _SKEW, _rng.uniform(-1, 1, 4)),
    ),
)


def _decay(t, y, args):
    return -args * y


def _rotation(t, y, args):
    return jnp.stack([-args * y[1], args * y[0]])


def _rotated(y0: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * y0[0] - s * y0[1], s * y0[0] + c * y0[1]])


_DECAY_Y0, _DECAY_RATE = np.array([1.0, 2.0, -0.5]), np.array([0.5, 1.0, 2.0])
_ROTATION_Y0 = np.array([1.0, 0.5])

FLOWS = (
    # y' = -k y: y(t) = y0 exp(-k t).
    Problem(
        "decay", "ode", _decay, _DECAY_Y0, _DECAY_RATE, _DECAY_Y0 * np.exp(-_DECAY_RATE)
    ),
    # y' = w J y: a rotation by angle w t.
    Problem(
        "rotation",
        "ode",
        _rotation,
        _ROTATION_Y0,
        np.array(2.0),
        _rotated(_ROTATION_Y0, 2.0 * 1.5),
        t1=1.5,
    ),
)

PROBLEMS = {p.name: p for p in FIXED_POINTS + ROOTS + FLOWS}
