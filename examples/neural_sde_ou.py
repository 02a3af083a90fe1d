"""A neural SDE that learns an Ornstein-Uhlenbeck process from sample paths.

The true process is `dX = θ (μ - X) dt + σ dW` with `θ = 2, μ = 1, σ = 0.5`,
started at `X(0) = -1`. We observe paths at 31 times and fit
`dX = f(X) dt + g(X) dW`, with `f` an MLP and `g` a positive MLP, by matching the
mean and the standard deviation of simulated paths to those of the data at every
observed time. Each simulated path is one `unimplicit.NeuralSDE` call with its own
`jax.random` key (a `diffrax.VirtualBrownianTree`), differentiated through
Diffrax's checkpointed adjoint.

Data: generated here from the exact OU transition law (nothing is downloaded).
Prints the moment-matching loss, and saves a figure with the data and model bands
(mean ± 2 std), sample paths, and the learned drift and diffusion against the true
ones.

Run: `python examples/neural_sde_ou.py` (about a minute on a laptop CPU);
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


THETA, MU, SIGMA, X0 = 2.0, 1.0, 0.5, -1.0
T1, N_TIMES = 3.0, 31
TS = jnp.linspace(0.0, T1, N_TIMES)


def ou_paths(key, n):
    """`n` exact OU paths at the times `TS`, shape `(n, times)`."""
    dt = TS[1] - TS[0]
    decay = jnp.exp(-THETA * dt)
    spread = SIGMA * jnp.sqrt((1 - decay**2) / (2 * THETA))
    noise = jax.random.normal(key, (N_TIMES - 1, n))

    def step(x, eps):
        x = MU + (x - MU) * decay + spread * eps
        return x, x

    _, xs = jax.lax.scan(step, jnp.full((n,), X0), noise)
    return jnp.concatenate([jnp.full((1, n), X0), xs]).T


class Drift(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


class Diffusion(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        # Diagonal noise: one positive coefficient per component of the state.
        return jax.nn.softplus(self.mlp(y))


def make_model(key):
    k1, k2 = jax.random.split(key)
    drift = Drift(eqx.nn.MLP(1, 1, 32, 2, activation=jnp.tanh, key=k1))
    diffusion = Diffusion(eqx.nn.MLP(1, 1, 16, 1, activation=jnp.tanh, key=k2))
    return drift, diffusion


def simulate(model, keys):
    drift, diffusion = model
    # `throw=False`: the layer is vmapped over keys (see the library's notes).
    sde = ui.NeuralSDE(
        drift,
        diffusion,
        0.0,
        T1,
        backend=ui.Diffrax(
            diffrax.Euler(), dt0=0.05, stepsize_controller=diffrax.ConstantStepSize()
        ),
        saveat=TS,
        throw=False,
    )
    paths = jax.vmap(lambda k: sde(jnp.array([X0]), key=k))(keys)
    return paths[..., 0]  # (paths, times)


def moments(paths):
    # Every path starts at X0, so the spread at t = 0 is zero: the small shift
    # keeps the square root differentiable there.
    return jnp.mean(paths, axis=0), jnp.sqrt(jnp.var(paths, axis=0) + 1e-8)


def loss_fn(model, keys, target_mean, target_std):
    mean, std = moments(simulate(model, keys))
    return jnp.mean((mean - target_mean) ** 2) + jnp.mean((std - target_std) ** 2)


def train(steps, n_paths, seed):
    data_key, model_key, key = jax.random.split(jax.random.PRNGKey(seed), 3)
    data = ou_paths(data_key, 2048)
    target_mean, target_std = moments(data)
    model = make_model(model_key)
    optim = optax.adam(optax.cosine_decay_schedule(1e-2, max(steps, 1), 0.05))
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, keys):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(
            model, keys, target_mean, target_std
        )
        updates, opt_state = optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    start = time.perf_counter()
    losses = []
    for i in range(steps):
        key, sub = jax.random.split(key)
        model, opt_state, loss = step(model, opt_state, jax.random.split(sub, n_paths))
        losses.append(float(loss))
        if i % max(1, steps // 10) == 0 or i == steps - 1:
            print(f"step {i:4d}  moment loss {losses[-1]:.5f}")
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s")
    return model, data, losses


def plot(model, data, losses, path):
    fresh = eqx.filter_jit(simulate)(
        model, jax.random.split(jax.random.PRNGKey(99), 1024)
    )
    (dm, ds), (mm, ms) = moments(data), moments(fresh)
    stationary_std = SIGMA / (2 * THETA) ** 0.5
    print(
        f"at t = 3: data mean {float(dm[-1]):.3f} std {float(ds[-1]):.3f}; "
        f"model mean {float(mm[-1]):.3f} std {float(ms[-1]):.3f} "
        f"(stationary law: mean {MU:.3f} std {stationary_std:.3f})"
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for label, m, s, c in (("data", dm, ds, "C0"), ("neural SDE", mm, ms, "C1")):
        ax.plot(TS, m, color=c, label=f"{label} mean")
        ax.fill_between(TS, m - 2 * s, m + 2 * s, color=c, alpha=0.25)
    for p in fresh[:5]:
        ax.plot(TS, p, color="C1", lw=0.6, alpha=0.7)
    ax.set(xlabel="t", ylabel="X(t)", title="mean ± 2 std; model paths")
    ax.legend()
    drift, diffusion = model
    ys = jnp.linspace(-1.5, 2.0, 100)[:, None]
    axes[1].plot(ys, THETA * (MU - ys), "k--", label="true θ(μ - x)")
    axes[1].plot(ys, jax.vmap(lambda y: drift(0.0, y, None))(ys), label="learned drift")
    axes[1].plot(ys, jnp.full_like(ys, SIGMA), "k:", label="true σ")
    axes[1].plot(
        ys, jax.vmap(lambda y: diffusion(0.0, y, None))(ys), label="learned diffusion"
    )
    axes[1].set(xlabel="x", title="drift and diffusion")
    axes[1].legend()
    axes[2].semilogy(losses)
    axes[2].set(xlabel="training step", ylabel="moment loss", title="training")
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--paths", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps, n_paths = (3, 32) if args.smoke else (args.steps, args.paths)
    model, data, losses = train(steps, n_paths, args.seed)
    plot(model, data, losses, args.out / "neural_sde_ou.png")


if __name__ == "__main__":
    main()
