"""A continuous normalising flow that learns the two-moons density.

`unimplicit.CNF` maps data `x` at time 0 to a standard normal `z` at time 1 along
`dz/dt = f(t, z)`, and its log-likelihood follows the instantaneous change of
variables, `log p(x) = log N(z(1)) + ∫ tr(∂f/∂z) dt`. Training maximises the
log-likelihood of samples with the Hutchinson trace estimator (one Jacobian-vector
product per evaluation); the final density is evaluated with the exact trace, and
new points are drawn by flowing normal noise backwards in time.

Data: scikit-learn's `make_moons` generator (nothing is downloaded).
Prints the mean log-likelihood of held-out points (exact trace) during training,
and saves a figure with the data, the learned density and samples from the flow.

Run: `python examples/cnf_moons.py` (a few minutes on a laptop CPU);
`--smoke` runs a few steps only.
"""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from _cli import example_parser, save_figure
from sklearn.datasets import make_moons

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def moons(n, seed):
    x, _ = make_moons(n, noise=0.06, random_state=seed)
    # Centre and scale so that the data sits where a standard normal has mass.
    return jnp.asarray((x - np.array([0.5, 0.25])) / np.array([0.85, 0.5]))


class Field(eqx.Module):
    """A time-conditioned MLP vector field `f(t, z)`."""

    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(3, 2, 64, 3, activation=jnp.tanh, key=key)

    def __call__(self, t, z, args):
        return self.mlp(jnp.append(z, t))


def flow(field, trace):
    # `throw=False`: the flow is vmapped over a batch, and a failed sample shows up
    # as a non-finite log-likelihood rather than stopping training.
    return ui.CNF(
        field,
        trace=trace,
        backend=ui.Diffrax(
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-5)
        ),
        throw=False,
    )


def train_loss(field, x, keys):
    log_p = jax.vmap(lambda x, k: flow(field, "hutchinson").log_prob(x, key=k))(x, keys)
    return -jnp.mean(log_p)


@eqx.filter_jit
def exact_log_prob(field, x):
    return jax.vmap(flow(field, "exact").log_prob)(x)


def train(steps, batch, seed):
    key = jax.random.PRNGKey(seed)
    key, model_key = jax.random.split(key)
    field = Field(model_key)
    held_out = moons(512, seed + 1)
    optim = optax.adamw(optax.cosine_decay_schedule(5e-3, max(steps, 1), 0.02))
    opt_state = optim.init(eqx.filter(field, eqx.is_array))

    @eqx.filter_jit
    def step(field, opt_state, x, keys):
        loss, grads = eqx.filter_value_and_grad(train_loss)(field, x, keys)
        updates, opt_state = optim.update(
            grads, opt_state, eqx.filter(field, eqx.is_array)
        )
        return eqx.apply_updates(field, updates), opt_state, loss

    start = time.perf_counter()
    for i in range(steps):
        x = moons(batch, seed + 100 + i)
        key, sub = jax.random.split(key)
        field, opt_state, loss = step(field, opt_state, x, jax.random.split(sub, batch))
        if i % max(1, steps // 8) == 0 or i == steps - 1:
            held = float(jnp.mean(exact_log_prob(field, held_out)))
            print(
                f"step {i:4d}  train NLL (Hutchinson) {float(loss):.3f}  "
                f"held-out log-likelihood (exact) {held:.3f}"
            )
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s")
    return field, held_out


def plot(field, data, path, grid_size):
    lim = 2.6
    axis = jnp.linspace(-lim, lim, grid_size)
    grid = jnp.stack(jnp.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    density = jnp.exp(exact_log_prob(field, grid)).reshape(grid_size, grid_size)
    keys = jax.random.split(jax.random.PRNGKey(123), 1000)
    samples, _ = eqx.filter_jit(
        jax.vmap(lambda k: flow(field, "exact").sample(k, (2,)))
    )(keys)
    # Mass of the density on the plotted square: near 1 if the flow is sound.
    cell = (2 * lim / (grid_size - 1)) ** 2
    print(f"density integrates to {float(jnp.sum(density) * cell):.3f} on the grid")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    axes[0].scatter(data[:, 0], data[:, 1], s=3)
    axes[0].set_title("data (two moons)")
    axes[1].imshow(
        np.asarray(density),
        origin="lower",
        extent=(-lim, lim, -lim, lim),
        cmap="magma",
    )
    axes[1].set_title("learned density (exact trace)")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=3, color="C1")
    axes[2].set_title("samples from the flow")
    for ax in axes:
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps, batch = (3, 32) if args.smoke else (args.steps, args.batch)
    field, held_out = train(steps, batch, args.seed)
    plot(field, held_out, args.out / "cnf_moons.png", 24 if args.smoke else 120)


if __name__ == "__main__":
    main()
