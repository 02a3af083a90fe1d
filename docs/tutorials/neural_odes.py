"""Tutorial 4: neural ODEs and SDEs.

An ODE's end state is another implicit layer: `y(t1)` is whatever satisfies
`dy/dt = f(t, y)` from `y(t0)`. This tutorial shows, with unimplicit's layers:

- intermediate times via `saveat` (an array of times returns `y` at each);
- time-reversibility: integrating back from `y(t1)` recovers `y(t0)`, which is
  what `diffrax.BacksolveAdjoint` uses to get gradients without storing the path;
- a neural SDE's sample paths (one key per path);
- a continuous normalising flow (`unimplicit.CNF`) trained on 2-D data;
- a DEQ and a neural ODE trained on the same classification task.

Run: `python docs/tutorials/neural_odes.py` (about a minute on 2 CPU cores;
`--smoke`: a few training steps, for CI).
"""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from _cli import parse_args

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# One fixed-step solver for every flow here: Tsit5 with steps of 0.1 (ten over
# [0, 1]). On the untrained field of part 1 it agrees with a tight adaptive solve
# to 2e-7, and unlike adaptive stepping with the default `max_steps=4096` it
# compiles and runs fast on a CPU.
FIXED = ui.Diffrax(
    diffrax.Tsit5(), dt0=0.1, stepsize_controller=diffrax.ConstantStepSize()
)
# The bound on integrator steps: enough for the longest flow here (20 steps).
MAX_STEPS = 32


class Field(eqx.Module):
    """A small MLP vector field `f(t, y)`."""

    mlp: eqx.nn.MLP

    def __init__(self, d, key, width=32):
        self.mlp = eqx.nn.MLP(d + 1, d, width, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        return self.mlp(jnp.concatenate([y, jnp.atleast_1d(t)]))


class DEQCell(eqx.Module):
    """`z -> W2 tanh(W1 z + U x)`: a contraction in `z` once `W1` and `W2` are
    rescaled to spectral norms below 1 (see `DEQClassifier`)."""

    inner: eqx.nn.Linear
    inject: eqx.nn.Linear
    outer: eqx.nn.Linear

    def __init__(self, d, key, width=32):
        k1, k2, k3 = jax.random.split(key, 3)
        self.inner = eqx.nn.Linear(d, width, use_bias=False, key=k1)
        self.inject = eqx.nn.Linear(2, width, key=k2)
        self.outer = eqx.nn.Linear(width, d, key=k3)

    def __call__(self, z, x):
        return self.outer(jnp.tanh(self.inner(z) + self.inject(x)))


class ODEClassifier(eqx.Module):
    """Lift x to 4-D (two zero channels), flow it for unit time, read out."""

    ode: ui.NeuralODE
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(self.ode(jnp.concatenate([x, jnp.zeros(2)])))


class DEQClassifier(eqx.Module):
    """Equilibrium state z* = cell(z*, x) (4-D), read out."""

    deq: ui.DEQ
    head: eqx.nn.Linear

    def __call__(self, x):
        # Spectral norms at most 0.95 for W1 and W2 make the cell a 0.9-contraction
        # in z, so the fixed point exists and Anderson and the backward solve
        # converge at every training step. Done inside the loss, so the stored
        # weights stay unconstrained.
        cell = ui.regularize.spectral_normalise(
            self.deq.cell, bound=0.95, where=lambda c: [c.inner.weight, c.outer.weight]
        )
        return self.head(eqx.tree_at(lambda d: d.cell, self.deq, cell)(x))


def moons(n, seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label, 1 - np.cos(t), np.cos(t))
    y = np.where(label, 0.5 - np.sin(t), np.sin(t))
    pts = np.stack([x, y], 1) + 0.08 * rng.normal(size=(n, 2))
    return jnp.asarray(pts - pts.mean(0), jnp.float32), jnp.asarray(label)


def nll(model, data, labels):
    del labels
    return -jnp.mean(jax.vmap(model.log_prob)(data))


def xent(model, data, labels):
    logits = jax.vmap(model)(data)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


OPTIM = optax.adam(1e-2)


# Jitted once at module level (the loss is static): each model compiles one step,
# reused for all its training steps.
@eqx.filter_jit
def train_step(model, opt_state, loss, data, labels):
    value, grads = eqx.filter_value_and_grad(loss)(model, data, labels)
    updates, opt_state = OPTIM.update(grads, opt_state, model)
    return eqx.apply_updates(model, updates), opt_state, value


def fit(model, loss, steps, data, labels):
    opt_state = OPTIM.init(eqx.filter(model, eqx.is_array))
    value = jnp.nan
    for _ in range(steps):
        model, opt_state, value = train_step(model, opt_state, loss, data, labels)
    return model, float(value)


@eqx.filter_jit
def end_loss(model, y0s):
    """sum |y(t1)|^2 over a batch of starts."""
    return jnp.sum(jax.vmap(model)(y0s) ** 2)


end_loss_grad = eqx.filter_jit(eqx.filter_grad(end_loss))


@eqx.filter_jit
def evaluate(model, points):
    return jax.vmap(model)(points)


def main():
    cli = parse_args(__doc__, smoke="a few training steps")
    steps = 3 if cli.smoke else 300
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    clock = time.perf_counter()

    # 1. saveat + 2. time-reversibility.
    field = Field(2, keys[0])
    times = jnp.linspace(0.0, 2.0, 41)
    forward = ui.NeuralODE(
        field, 0.0, 2.0, backend=FIXED, saveat=times, max_steps=MAX_STEPS
    )
    backward = ui.NeuralODE(field, 2.0, 0.0, backend=FIXED, max_steps=MAX_STEPS)
    y0s = jax.random.normal(keys[1], (6, 2))
    paths = evaluate(forward, y0s)  # (6, 41, 2): y at each saved time
    recovered = evaluate(backward, paths[:, -1])
    print(
        f"backsolve: max |y(0) - reversed y(2)| = "
        f"{float(jnp.max(jnp.abs(recovered - y0s))):.1e}"
    )
    # BacksolveAdjoint's gradient (it solves the adjoint ODE backwards from y(t1),
    # storing nothing), checked against a central finite difference of the loss
    # along a random direction in parameter space.
    backsolve = ui.NeuralODE(
        field,
        0.0,
        2.0,
        backend=FIXED,
        adjoint=ui.DiffraxAdjoint(diffrax.BacksolveAdjoint()),
        max_steps=MAX_STEPS,
    )
    grad = end_loss_grad(backsolve, y0s)
    params, static = eqx.partition(backsolve, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    direction = [
        jax.random.normal(k, leaf.shape)
        for k, leaf in zip(jax.random.split(keys[5], len(leaves)), leaves)
    ]
    norm = jnp.sqrt(sum(jnp.sum(v**2) for v in direction))
    direction = [v / norm for v in direction]  # a unit vector
    exact = sum(
        jnp.vdot(g, v)
        for g, v in zip(
            jax.tree_util.tree_leaves(eqx.filter(grad, eqx.is_array)), direction
        )
    )
    eps = 1e-2

    def shifted(sign):
        moved = [leaf + sign * eps * v for leaf, v in zip(leaves, direction)]
        model = eqx.combine(jax.tree_util.tree_unflatten(treedef, moved), static)
        return end_loss(model, y0s)

    finite = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    print(
        f"gradient: BacksolveAdjoint {float(exact):.6f} vs finite difference "
        f"{float(finite):.6f} (directional derivative; relative difference "
        f"{abs(float(exact - finite) / float(finite)):.0e})"
    )
    ax = axes[0]
    for path, rec in zip(paths, recovered):
        ax.plot(path[:, 0], path[:, 1], ".-", ms=2)
        ax.plot(*path[0], "ko", ms=7, mfc="none")
        ax.plot(*rec, "rx", ms=7)
    sde = ui.NeuralSDE(
        lambda t, y, a: -y,
        lambda t, y, a: 0.3 * jnp.ones_like(y),
        0.0,
        2.0,
        saveat=times,
    )
    sde_keys = jax.random.split(keys[2], 3)
    start = jnp.array([2.0, 2.0])
    sde_paths = eqx.filter_jit(jax.vmap(lambda k: sde(start, key=k)))(sde_keys)
    for path in sde_paths:
        ax.plot(path[:, 0], path[:, 1], color="grey", lw=0.8)
    ax.set_title("ODE paths via saveat (o start, x backsolved)\ngrey: SDE sample paths")
    print(f"[{time.perf_counter() - clock:.0f} s] saveat, backsolve, SDE")

    # 3. A continuous normalising flow on the moons.
    data, labels = moons(256, 0)
    cnf = ui.CNF(Field(2, keys[3]), backend=FIXED, max_steps=MAX_STEPS)
    cnf, value = fit(cnf, nll, steps, data, labels)
    print(f"CNF: mean negative log-likelihood after {steps} steps: {value:.3f}")
    xs, ys = jnp.linspace(-2, 2, 60), jnp.linspace(-1.5, 1.5, 45)
    grid = jnp.stack(jnp.meshgrid(xs, ys), -1)
    grid_points = grid.reshape(-1, 2)
    density = jnp.exp(evaluate(cnf.log_prob, grid_points))
    axes[1].contourf(xs, ys, density.reshape(grid.shape[:2]), 20)
    axes[1].scatter(data[:, 0], data[:, 1], s=2, c="w")
    axes[1].set_title(f"CNF density after {steps} steps (NLL {value:.2f})")
    print(f"[{time.perf_counter() - clock:.0f} s] CNF")

    # 4. A DEQ and a neural ODE on the same classification task.
    head_key, ode_key, deq_key = jax.random.split(keys[4], 3)
    ode_model = ODEClassifier(
        ui.NeuralODE(Field(4, ode_key), 0.0, 1.0, backend=FIXED, max_steps=MAX_STEPS),
        eqx.nn.Linear(4, 2, key=head_key),
    )
    deq_model = DEQClassifier(
        ui.DEQ(
            DEQCell(4, deq_key),
            backend=ui.Anderson(rtol=1e-3, atol=1e-4),
            # Anderson-accelerated Neumann iteration for the backward pass, as in
            # examples/deq_digits.py: robust in float32.
            adjoint=ui.ImplicitAdjoint(
                ui.NeumannSolver(rtol=1e-4, atol=1e-7, max_steps=100, history=5)
            ),
            max_steps=50,
            state=jax.ShapeDtypeStruct((4,), jnp.float32),
        ),
        eqx.nn.Linear(4, 2, key=head_key),
    )
    test, test_labels = moons(512, 1)
    for ax, (name, model) in zip(
        axes[2:], [("neural ODE", ode_model), ("DEQ", deq_model)]
    ):
        model, value = fit(model, xent, steps, data, labels)
        # The grid and the test points in one call: one compilation per model.
        pred = jnp.argmax(evaluate(model, jnp.concatenate([grid_points, test])), -1)
        pred, test_pred = pred[: len(grid_points)], pred[len(grid_points) :]
        acc = float(jnp.mean(test_pred == test_labels))
        print(f"{name}: test accuracy {acc:.3f} (training loss {value:.1e})")
        ax.contourf(xs, ys, pred.reshape(grid.shape[:2]), alpha=0.3, cmap="coolwarm")
        ax.scatter(data[:, 0], data[:, 1], c=labels, s=3, cmap="coolwarm")
        ax.set_title(f"{name} classifier: test accuracy {acc:.2f}")
        print(f"[{time.perf_counter() - clock:.0f} s] {name}")
    fig.tight_layout()
    cli.out.mkdir(parents=True, exist_ok=True)
    path = cli.out / "neural_odes.png"
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
