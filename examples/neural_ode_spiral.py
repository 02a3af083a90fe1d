"""A neural ODE that learns the dynamics of a damped pendulum from trajectories.

The true system is the nonlinear pendulum with friction,
`θ'' = -sin θ - 0.25 θ'`, whose trajectories spiral into the rest state in the
phase plane `(θ, θ')`. We observe a few trajectories at 40 times each and fit
`dy/dt = MLP(y)` so that `unimplicit.NeuralODE` reproduces them; gradients flow
through Diffrax's checkpointed adjoint. The whole batch of trajectories is one
state of shape `(batch, 2)`, so it shares one adaptive step size.

Data: generated here by integrating the true system (nothing is downloaded).
Prints the training loss and the error on held-out initial conditions, and saves a
phase-plane plot of true against learned trajectories.

Run: `python examples/neural_ode_spiral.py` (about a minute on a laptop CPU);
`--smoke` runs a few steps only.
"""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import optax
from _cli import example_parser, save_figure

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


T1, N_TIMES = 10.0, 40
TS = jnp.linspace(0.0, T1, N_TIMES)


def pendulum(t, y, args):
    theta, omega = y[..., 0], y[..., 1]
    return jnp.stack([omega, -jnp.sin(theta) - 0.25 * omega], axis=-1)


def make_data(key, n):
    """`n` trajectories of the true pendulum from random initial states.

    The states have less energy than it takes to swing over the top, so every
    trajectory spirals into the same rest state."""
    y0 = jax.random.uniform(key, (n, 2), minval=-1.0, maxval=1.0)
    y0 = y0 * jnp.array([2.0, 1.0])
    truth = ui.NeuralODE(
        pendulum,
        0.0,
        T1,
        backend=ui.Diffrax(
            stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8)
        ),
        saveat=TS,
    )
    return y0, truth(y0)  # (n, 2) and (times, n, 2)


class Field(eqx.Module):
    """The learned vector field, applied to every trajectory of the batch."""

    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(2, 2, 64, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        return jax.vmap(self.mlp)(y)


def model(field):
    return ui.NeuralODE(
        field,
        0.0,
        T1,
        backend=ui.Diffrax(
            stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-6)
        ),
        saveat=TS,
    )


def loss_fn(field, y0, ys, weights):
    """Mean squared error over the observed times that have weight 1."""
    errors = jnp.mean((model(field)(y0) - ys) ** 2, axis=(1, 2))
    return jnp.sum(weights * errors) / jnp.sum(weights)


def train(steps, seed):
    key_data, key_test, key_model = jax.random.split(jax.random.PRNGKey(seed), 3)
    y0, ys = make_data(key_data, 16)
    y0_test, ys_test = make_data(key_test, 8)
    field = Field(key_model)
    optim = optax.adam(optax.cosine_decay_schedule(3e-3, max(steps, 1), 0.1))
    opt_state = optim.init(eqx.filter(field, eqx.is_array))

    @eqx.filter_jit
    def step(field, opt_state, y0, ys, weights):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(field, y0, ys, weights)
        updates, opt_state = optim.update(grads, opt_state, field)
        return eqx.apply_updates(field, updates), opt_state, loss

    # Fit the first quarter of each trajectory first: a short horizon is an easy
    # problem, and a field good there starts the long-horizon fit well.
    start = time.perf_counter()
    losses = []
    for i in range(steps):
        horizon = N_TIMES // 4 if i < steps // 4 else N_TIMES
        # Weighting the times (rather than slicing them) keeps one compiled step.
        weights = (jnp.arange(N_TIMES) < horizon).astype(ys.dtype)
        field, opt_state, loss = step(field, opt_state, y0, ys, weights)
        losses.append(float(loss))
        if i % max(1, steps // 10) == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {losses[-1]:.5f}")
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s")
    all_times = jnp.ones(N_TIMES)
    test_loss = float(eqx.filter_jit(loss_fn)(field, y0_test, ys_test, all_times))
    print(f"held-out trajectories: mean squared error {test_loss:.5f}")
    return field, losses, (y0_test, ys_test)


def plot(field, losses, test, path):
    y0_test, ys_test = test
    fine = jnp.linspace(0.0, T1, 400)
    learned = ui.NeuralODE(
        field,
        0.0,
        T1,
        backend=ui.Diffrax(
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8)
        ),
        saveat=fine,
    )(y0_test)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i in range(y0_test.shape[0]):
        ax1.plot(ys_test[:, i, 0], ys_test[:, i, 1], "o", ms=3, color=f"C{i}")
        ax1.plot(learned[:, i, 0], learned[:, i, 1], "-", color=f"C{i}", lw=1)
    ax1.set(
        xlabel="angle θ",
        ylabel="angular velocity θ'",
        title="held-out trajectories: true (dots), learned (lines)",
    )
    ax2.semilogy(losses)
    ax2.set(xlabel="training step", ylabel="mean squared error", title="training")
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = 4 if args.smoke else args.steps
    field, losses, test = train(steps, args.seed)
    plot(field, losses, test, args.out / "neural_ode_spiral.png")


if __name__ == "__main__":
    main()
