"""Tutorial 4: neural ODEs and SDEs.

An ODE's end state is another implicit layer: `y(t1)` is whatever satisfies
`dy/dt = f(t, y)` from `y(t0)`. This tutorial shows, with unimplicit's layers:

- intermediate times via `saveat` (an array of times returns `y` at each);
- time-reversibility: integrating back from `y(t1)` recovers `y(t0)`, which is
  what `diffrax.BacksolveAdjoint` uses to get gradients without storing the path;
- a neural SDE's sample paths (one key per path);
- a continuous normalising flow (`unimplicit.CNF`) trained briefly on 2-D data;
- a DEQ and a neural ODE trained on the same classification task.

Run: `python docs/tutorials/neural_odes.py` (`--smoke`: fewer training steps).
"""

import argparse
import pathlib

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


FIGURES = pathlib.Path(__file__).resolve().parents[1] / "figures"
# For training, a fixed-step solver: ten Tsit5 steps over [0, 1]. Adaptive stepping
# with the default `max_steps=4096` is accurate but slow to compile and run on CPU.
FIXED = ui.Diffrax(
    diffrax.Tsit5(), dt0=0.1, stepsize_controller=diffrax.ConstantStepSize()
)


class Field(eqx.Module):
    """A small MLP vector field `f(t, y)`."""

    mlp: eqx.nn.MLP

    def __init__(self, d, key, width=32):
        self.mlp = eqx.nn.MLP(d + 1, d, width, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        return self.mlp(jnp.concatenate([y, jnp.atleast_1d(t)]))


class DEQCell(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, z, x):
        return 0.5 * jnp.tanh(self.mlp(jnp.concatenate([z, x])))


def moons(n, seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label, 1 - np.cos(t), np.cos(t))
    y = np.where(label, 0.5 - np.sin(t), np.sin(t))
    pts = np.stack([x, y], 1) + 0.08 * rng.normal(size=(n, 2))
    return jnp.asarray(pts - pts.mean(0), jnp.float32), jnp.asarray(label)


def fit(model, loss, steps, lr=1e-2):
    optim = optax.adam(lr)
    state = optim.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, i):
        value, grads = eqx.filter_value_and_grad(loss)(model, i)
        updates, state = optim.update(grads, state, model)
        return eqx.apply_updates(model, updates), state, value

    value = jnp.nan
    for i in range(steps):
        model, state, value = step(model, state, i)
    return model, float(value)


def main():
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="fewer training steps")
    cli = parser.parse_args()
    steps = 3 if cli.smoke else 100
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))

    # 1. saveat + 2. time-reversibility.
    field = Field(2, keys[0])
    times = jnp.linspace(0.0, 2.0, 40)
    forward = ui.NeuralODE(field, 0.0, 2.0, saveat=times)
    backward = ui.NeuralODE(field, 2.0, 0.0)
    y0s = jax.random.normal(keys[1], (6, 2))
    paths = jax.vmap(forward)(y0s)  # (6, 40, 2)
    # `NeuralODE` with no `saveat` currently returns shape (1, d) (one saved time);
    # reshape so this works either way.
    recovered = jax.vmap(backward)(paths[:, -1]).reshape(y0s.shape)
    print(
        f"backsolve: max |y0 - reversed(y(t1))| = "
        f"{float(jnp.max(jnp.abs(recovered - y0s))):.1e}"
    )
    back_grad = ui.NeuralODE(field, 0.0, 2.0, adjoint=diffrax.BacksolveAdjoint())

    def end_loss(model):
        return jnp.sum(jax.vmap(model)(y0s) ** 2)

    g1 = eqx.filter_grad(end_loss)(ui.NeuralODE(field, 0.0, 2.0))
    g2 = eqx.filter_grad(end_loss)(back_grad)
    leaves1 = jax.tree_util.tree_leaves(eqx.filter(g1.vector_field, eqx.is_array))
    leaves2 = jax.tree_util.tree_leaves(eqx.filter(g2.vector_field, eqx.is_array))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves1, leaves2))
    print(f"gradient: checkpointed vs BacksolveAdjoint, max diff {diff:.1e}")
    ax = axes[0]
    for path, rec in zip(paths, recovered):
        ax.plot(path[:, 0], path[:, 1], ".-", ms=2)
        ax.plot(*path[0], "ko", ms=5)
        ax.plot(*rec, "rx", ms=8)
    sde = ui.NeuralSDE(
        lambda t, y, a: -y,
        lambda t, y, a: 0.3 * jnp.ones_like(y),
        0.0,
        2.0,
        saveat=times,
    )
    sde_paths = jax.vmap(lambda k: sde(jnp.array([2.0, 2.0]), key=k))(
        jax.random.split(keys[2], 3)
    )
    for path in sde_paths:
        ax.plot(path[:, 0], path[:, 1], color="grey", lw=0.8)
    ax.set_title("ODE paths via saveat (o start, x backsolved)\ngrey: SDE sample paths")

    # 3. A continuous normalising flow on the moons.
    data, labels = moons(256, 0)
    cnf = ui.CNF(Field(2, keys[3], width=32), backend=FIXED, max_steps=16)

    def nll(model, i):
        return -jnp.mean(jax.vmap(model.log_prob)(data))

    cnf, value = fit(cnf, nll, steps)
    print(f"CNF: mean negative log-likelihood after {steps} steps: {value:.3f}")
    grid = jnp.stack(
        jnp.meshgrid(jnp.linspace(-2, 2, 40), jnp.linspace(-1.5, 1.5, 30)), -1
    )
    density = jnp.exp(jax.jit(jax.vmap(cnf.log_prob))(grid.reshape(-1, 2)))
    axes[1].contourf(grid[..., 0], grid[..., 1], density.reshape(grid.shape[:2]), 20)
    axes[1].scatter(data[:, 0], data[:, 1], s=2, c="w")
    axes[1].set_title(f"CNF density after {steps} steps")

    # 4. A DEQ and a neural ODE on the same classification task.
    head_key, ode_key, deq_key = jax.random.split(keys[4], 3)

    class ODEClassifier(eqx.Module):
        ode: ui.NeuralODE
        head: eqx.nn.Linear

        def __call__(self, x):
            return self.head(self.ode(jnp.concatenate([x, jnp.zeros(2)])).reshape(-1))

    class DEQClassifier(eqx.Module):
        deq: ui.DEQ
        head: eqx.nn.Linear

        def __call__(self, x):
            return self.head(self.deq(x))

    ode_model = ODEClassifier(
        ui.NeuralODE(Field(4, ode_key), 0.0, 1.0, backend=FIXED, max_steps=16),
        eqx.nn.Linear(4, 2, key=head_key),
    )
    deq_model = DEQClassifier(
        ui.DEQ(
            DEQCell(eqx.nn.MLP(6, 4, 32, 1, key=deq_key)),
            backend=ui.Anderson(rtol=1e-3, atol=1e-4),
            max_steps=50,
            state=jax.ShapeDtypeStruct((4,), jnp.float32),
        ),
        eqx.nn.Linear(4, 2, key=head_key),
    )

    def xent(model, i):
        logits = jax.vmap(model)(data)
        return -jnp.mean(
            jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)
        )

    for ax, (name, model) in zip(
        axes[2:], [("neural ODE", ode_model), ("DEQ", deq_model)]
    ):
        model, value = fit(model, xent, steps)
        predict = jax.jit(lambda x: jnp.argmax(jax.vmap(model)(x), -1))
        pred = predict(grid.reshape(-1, 2))
        acc = float(jnp.mean(predict(data) == labels))
        print(f"{name}: training accuracy {acc:.3f} (loss {value:.3f})")
        ax.contourf(grid[..., 0], grid[..., 1], pred.reshape(grid.shape[:2]), alpha=0.3)
        ax.scatter(data[:, 0], data[:, 1], c=labels, s=3, cmap="coolwarm")
        ax.set_title(f"{name} classifier: accuracy {acc:.2f}")
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / "neural_odes.png", dpi=110)
    print(f"saved {FIGURES / 'neural_odes.png'}")


if __name__ == "__main__":
    main()
