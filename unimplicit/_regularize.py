"""Training tools for deep equilibrium models.

Jacobian regularisation (Bai, Koltun & Kolter, 2021), spectral normalisation of a
cell's weights, the fixed-point-correction loss (Bai et al., 2022) and a spectral
radius diagnostic. All are plain functions of a cell `fn(z, args) -> z`, so they
work on any `FixedPoint` map, PyTree states included.
"""

from collections.abc import Callable, Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

from ._iterate import iterate
from ._solution import RESULTS


def _flat_map(fn: Callable, z: PyTree, args: PyTree):
    flat, unravel = jfu.ravel_pytree(z)

    def flat_fn(v):
        return jfu.ravel_pytree(fn(unravel(v), args))[0]

    return flat, flat_fn


def jacobian_frobenius(
    fn: Callable[[PyTree, PyTree], PyTree],
    z: PyTree[Array],
    args: PyTree,
    key: PRNGKeyArray,
    *,
    num_samples: int = 1,
) -> Scalar:
    """Hutchinson estimate of $\\|\\partial f / \\partial z\\|_F^2$ at `z`.

    Uses $E_v \\|v^T J\\|^2 = \\mathrm{tr}(J J^T)$ for Gaussian probes $v$: one
    vector-Jacobian product per sample, no Jacobian formed. Differentiable with
    respect to `args` (and anything `fn` closes over), so it can be added to a loss
    to keep a DEQ's Jacobian small and its solves fast (Bai, Koltun & Kolter, 2021).
    Evaluate it at the fixed point, for example
    `jacobian_frobenius(cell, jax.lax.stop_gradient(z_star), x, key)`; divide by the
    state size for the per-dimension penalty of the paper.

    **Arguments:**

    - `fn`: the map `fn(z, args) -> z`.
    - `z`: where to evaluate the Jacobian (a PyTree).
    - `args`: the map's other input.
    - `key`: a PRNG key for the probes.
    - `num_samples`: how many probes to average.

    **Returns:**

    A non-negative scalar, an unbiased estimate of the squared Frobenius norm.
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be positive, got {num_samples}.")
    flat, flat_fn = _flat_map(fn, z, args)
    _, vjp = jax.vjp(flat_fn, flat)
    probes = jax.random.normal(key, (num_samples, flat.size), flat.dtype)
    (rows,) = jax.vmap(vjp)(probes)
    return jnp.sum(rows**2) / num_samples


def spectral_radius(
    fn: Callable[[PyTree, PyTree], PyTree],
    z: PyTree[Array],
    args: PyTree,
    *,
    num_iters: int = 50,
    key: PRNGKeyArray | None = None,
) -> Scalar:
    """Power-iteration estimate of the spectral radius of $\\partial f / \\partial z$.

    A stability diagnostic: at a fixed point $z^*$, a spectral radius below one means
    the fixed-point iteration converges locally, the backward system $I - J$ is
    invertible and the Neumann backward solver converges; values near one mean slow
    solves. The estimate is the geometric mean of the growth factors
    $\\|J v_k\\| / \\|v_k\\|$ over the second half of the iterations, which also
    converges when the dominant eigenvalues are a complex pair. Not differentiated.

    **Arguments:**

    - `fn`: the map `fn(z, args) -> z`.
    - `z`: where to evaluate the Jacobian, typically the fixed point.
    - `args`: the map's other input.
    - `num_iters`: the number of Jacobian-vector products.
    - `key`: a PRNG key for the start vector (a fixed key if `None`).

    **Returns:**

    A non-negative scalar.
    """
    if num_iters < 2:
        raise ValueError(f"`num_iters` must be at least 2, got {num_iters}.")
    flat, flat_fn = _flat_map(fn, jax.lax.stop_gradient(z), args)
    _, jvp = jax.linearize(flat_fn, flat)
    key = jax.random.PRNGKey(0) if key is None else key
    v = jax.random.normal(key, flat.shape, flat.dtype)
    # The library's one loop, for a fixed number of steps: it stops at `num_iters`
    # (reported as max steps reached, which is the intended end here).
    out = iterate(
        _PowerIteration(num_iters),
        _apply,
        v / jnp.linalg.norm(v),
        jvp,
        max_steps=num_iters,
        check_finite=False,
    )
    return jax.lax.stop_gradient(jnp.exp(out.stats["mean_log_growth"]))


def _apply(v, jvp):
    return jvp(v), None


class _PowerState(eqx.Module):
    step: Array
    sum_logs: Array


class _PowerIteration(eqx.Module):
    # Optimistix's solver protocol, so that `iterate` runs it: normalised
    # Jacobian-vector products, summing the log growth factors of the second half.
    num_iters: int = eqx.field(static=True)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, args, options, f_struct, aux_struct, tags
        return _PowerState(jnp.array(0), jnp.zeros((), y.dtype))

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        w, _ = fn(y, args)
        tiny = jnp.finfo(w.dtype).tiny
        size = jnp.maximum(jnp.linalg.norm(w), tiny)
        counted = state.step >= self.num_iters // 2
        sum_logs = state.sum_logs + jnp.where(counted, jnp.log(size), 0)
        return w / size, _PowerState(state.step + 1, sum_logs), None

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        return jnp.array(False), RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        counted = self.num_iters - self.num_iters // 2
        return y, aux, {"mean_log_growth": state.sum_logs / counted}


def _power_sigma(w: Array, num_iters: int, key: PRNGKeyArray) -> Array:
    # Power iteration on w^T w with the vectors held constant, then the Rayleigh
    # quotient u^T w v: its gradient is the usual spectral-normalisation gradient.
    mat = w.reshape(w.shape[0], -1)
    v = jax.random.normal(key, (mat.shape[1],), mat.dtype)
    fixed = jax.lax.stop_gradient(mat)

    def body(v, _):
        u = fixed @ v
        u = u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(mat.dtype).tiny)
        v = fixed.T @ u
        v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(mat.dtype).tiny)
        return v, None

    v, _ = jax.lax.scan(body, v / jnp.linalg.norm(v), None, length=num_iters)
    u = fixed @ v
    u = u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(mat.dtype).tiny)
    return u @ mat @ v


def _is_matrix(x: Any) -> bool:
    return eqx.is_inexact_array(x) and x.ndim == 2


def spectral_normalise(
    model: PyTree,
    *,
    bound: float = 1.0,
    where: Callable[[PyTree], Sequence[Array] | Array] | None = None,
    num_iters: int = 20,
    key: PRNGKeyArray | None = None,
) -> PyTree:
    """Rescale a cell's weight matrices so each has spectral norm at most `bound`.

    Each selected matrix $W$ becomes $W \\min(1, b / \\sigma(W))$, with $\\sigma(W)$
    estimated by power iteration. The estimate approaches $\\sigma(W)$ from below,
    so the bound holds to the accuracy of `num_iters` steps (slower when the top two
    singular values are close). Apply it inside the loss (`cell =
    spectral_normalise(cell, bound=0.9)`), so that gradients flow through the
    rescaling and the stored parameters stay unconstrained. A cell
    $z \\mapsto \\phi(W z + U x)$ with a 1-Lipschitz activation is then a
    contraction in $z$ whenever `bound < 1`, so its fixed point exists, is unique,
    and the forward and backward solves converge.

    **Arguments:**

    - `model`: an `eqx.Module` (or any PyTree) holding the weights.
    - `bound`: the largest spectral norm allowed, positive.
    - `where`: `model -> array or sequence of arrays` selecting the matrices, as in
        `eqx.tree_at`; `None` selects every two-dimensional floating-point array.
    - `num_iters`: power-iteration steps per matrix.
    - `key`: PRNG key for the start vectors (a fixed key if `None`).

    **Returns:**

    A PyTree like `model` with the selected matrices rescaled.
    """
    if bound <= 0:
        raise ValueError(f"`bound` must be positive, got {bound}.")
    key = jax.random.PRNGKey(0) if key is None else key

    def rescale(w: Array) -> Array:
        if not _is_matrix(w):
            raise ValueError(
                "spectral_normalise can only rescale two-dimensional floating-point "
                f"arrays, but `where` selected one of shape {jnp.shape(w)} and dtype "
                f"{jnp.result_type(w)}."
            )
        sigma = _power_sigma(w, num_iters, key)
        return w * jnp.minimum(1, bound / sigma)

    if where is None:
        return jtu.tree_map(lambda x: rescale(x) if _is_matrix(x) else x, model)
    selected = where(model)
    if isinstance(selected, (list, tuple)):
        return eqx.tree_at(where, model, [rescale(w) for w in selected])
    return eqx.tree_at(where, model, rescale(cast(Array, selected)))


def solver_trajectory(
    solver: optx.AbstractFixedPointSolver,
    fn: Callable[[PyTree, PyTree], PyTree],
    y0: PyTree[Array],
    args: PyTree,
    *,
    num_steps: int,
    num_states: int,
) -> PyTree[Array]:
    """Intermediate states of a fixed-point solver, for the correction loss.

    Runs `num_steps` steps of an Optimistix-protocol fixed-point solver (for example
    [`unimplicit.Anderson`][]) and keeps `num_states` iterates evenly spaced along the
    way, the last one being the final iterate. Nothing is differentiated.

    **Returns:**

    The states stacked along a new leading axis of size `num_states`.
    """
    if not 1 <= num_states <= num_steps:
        raise ValueError(
            f"Need 1 <= num_states <= num_steps, got num_states={num_states}, "
            f"num_steps={num_steps}."
        )
    y0, args = jax.lax.stop_gradient((y0, args))

    def wrapped(y, a):
        return fn(y, a), None

    tags = frozenset()
    struct = jax.eval_shape(lambda: y0)
    state = solver.init(wrapped, y0, args, {}, struct, None, tags)
    # Static, evenly spaced step indices; the last is the final iterate.
    index = np.linspace(0, num_steps - 1, num_states).round().astype(int)

    def body(carry, _):
        y, state = carry
        y, state, _ = solver.step(wrapped, y, args, {}, state, tags)
        return (y, state), y

    _, ys = jax.lax.scan(body, (y0, state), None, length=num_steps)
    return jtu.tree_map(lambda leaf: leaf[index], ys)


def fixed_point_correction(
    fn: Callable[[PyTree, PyTree], PyTree],
    states: PyTree[Array],
    args: PyTree,
    loss: Callable[[PyTree], Scalar],
    *,
    decay: float = 0.8,
) -> Scalar:
    """The fixed-point-correction loss over several solver states.

    For states $z_1, \\dots, z_K$ along the forward solve (see
    [`unimplicit.regularize.solver_trajectory`][]) this is
    $\\sum_k \\gamma^{K-k} \\ell(f(\\mathrm{sg}(z_k), x)) / \\sum_k \\gamma^{K-k}$:
    each state takes one differentiated step of the map (as in Jacobian-free
    backpropagation), and later states weigh more. It supervises the whole solver
    trajectory, which makes training less sensitive to how exactly the forward
    solve converged (Bai et al., 2022).

    **Arguments:**

    - `fn`: the map `fn(z, args) -> z`.
    - `states`: states stacked along a leading axis, first to last.
    - `args`: the map's other input (differentiated).
    - `loss`: `z -> scalar`, the task loss of a state.
    - `decay`: the weight ratio $\\gamma \\in (0, 1]$ between consecutive states.

    **Returns:**

    A scalar loss.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"`decay` must lie in (0, 1], got {decay}.")
    leaves = jtu.tree_leaves(states)
    if not leaves:
        raise ValueError("`states` holds no arrays.")
    num = leaves[0].shape[0]
    states = jax.lax.stop_gradient(states)
    losses = jax.vmap(lambda z: loss(fn(z, args)))(states)
    weights = decay ** jnp.arange(num - 1, -1, -1, dtype=losses.dtype)
    return jnp.sum(weights * losses) / jnp.sum(weights)
