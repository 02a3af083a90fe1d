"""Learning a constrained least-squares layer: spectral unmixing on the simplex.

Each observation `z = M a + noise` mixes `k` unknown source spectra (the columns
of `M`) with abundances `a` on the probability simplex. A `ConvexLayer` computes

    a_hat(z) = argmin_a |M_hat a - z|^2   s.t.   a >= 0, sum(a) = 1,

and the endmember matrix `M_hat` is learned end to end, from pairs `(z, a)`, by
differentiating through the solution of the constrained least-squares problem.

Compared on held-out data: the layer with the learned `M_hat`; the same layer with
the initial guess; the layer with the true `M` (an oracle); and ordinary least
squares with a learned linear map followed by clipping and renormalising (no
constraint in training). Data are generated (nothing is downloaded).

Prints a table of test errors and saves a figure of the training loss and of a few
predicted abundance vectors. Run: `python examples/convex_projection.py`
(about a minute on a laptop CPU); `--smoke` runs a few steps only.
"""

import pathlib
import time

import cvxpy as cp
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from _cli import example_parser, save_figure

import unimplicit as ui


jax.config.update("jax_enable_x64", True)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


BANDS, SOURCES = 12, 4


def make_data(rng, count, M):
    # Sparse-ish abundances (Dirichlet with small concentration), noisy mixtures.
    a = rng.dirichlet(0.5 * np.ones(SOURCES), size=count)
    z = a @ M.T + 0.05 * rng.normal(size=(count, BANDS))
    return z, a


def unmixing_layer():
    a = cp.Variable(SOURCES)
    M, z = cp.Parameter((BANDS, SOURCES)), cp.Parameter(BANDS)
    problem = cp.Problem(
        cp.Minimize(cp.sum_squares(M @ a - z)), [a >= 0, cp.sum(a) == 1]
    )
    return ui.ConvexLayer(problem, [M, z], [a])


def main(smoke: bool, out: pathlib.Path, steps: int, batch: int):
    rng = np.random.default_rng(0)
    wavelengths = np.linspace(0, 1, BANDS)
    centres = np.linspace(0.1, 0.9, SOURCES)
    M_true = np.exp(-((wavelengths[:, None] - centres) ** 2) / 0.03) + 0.1
    z_train, a_train = make_data(rng, 64 if smoke else 512, M_true)
    z_test, a_test = make_data(rng, 32 if smoke else 256, M_true)
    M_init = M_true + 0.4 * rng.normal(size=M_true.shape)

    layer = unmixing_layer()

    def predict(M, z):
        (a,) = layer(M, z)  # `z` batched, `M` shared: the layer batches the solve
        return a

    def loss(M, z, a):
        return jnp.mean(jnp.sum((predict(M, z) - a) ** 2, axis=-1))

    optimiser = optax.adam(3e-2)

    @jax.jit
    def step(M, opt_state, z, a):
        value, grad = jax.value_and_grad(loss)(M, z, a)
        updates, opt_state = optimiser.update(grad, opt_state)
        return optax.apply_updates(M, updates), opt_state, value

    # A baseline without the constraint in training: a learned linear map W z,
    # trained by least squares, then clipped to >= 0 and renormalised.
    def ols_predict(W, z):
        a = jnp.clip(z @ W.T, 0, None)
        return a / jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), 1e-12)

    W = np.linalg.lstsq(z_train, a_train, rcond=None)[0].T

    M = jnp.asarray(M_init)
    opt_state = optimiser.init(M)
    losses = []
    start = time.perf_counter()
    for i in range(steps):
        idx = rng.choice(len(z_train), size=batch, replace=False)
        M, opt_state, value = step(M, opt_state, z_train[idx], a_train[idx])
        losses.append(float(value))
        if i == 0:
            compile_s = time.perf_counter() - start
    train_s = time.perf_counter() - start

    test = jax.jit(loss)
    rows = [
        ("layer, true M (oracle)", float(test(M_true, z_test, a_test))),
        ("layer, initial M", float(test(M_init, z_test, a_test))),
        ("layer, learned M", float(test(M, z_test, a_test))),
        (
            "least squares + clip",
            float(jnp.mean(jnp.sum((ols_predict(W, z_test) - a_test) ** 2, -1))),
        ),
    ]
    print(f"\n{'model':<26} test MSE (sum over {SOURCES} abundances)")
    for name, value in rows:
        print(f"{name:<26} {value:.5f}")
    print(
        f"\n{steps} steps of batch {batch}: {train_s:.1f} s "
        f"(first step incl. compilation {compile_s:.1f} s)"
    )

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax0.plot(losses)
    ax0.set_yscale("log")
    ax0.set_xlabel("step")
    ax0.set_ylabel("training MSE")
    ax0.set_title("Learning the endmembers through the layer")
    shown = 6
    a_hat = np.asarray(predict(M, z_test[:shown]))
    x = np.arange(shown)
    for j in range(SOURCES):
        ax1.bar(x + 0.2 * j - 0.3, a_test[:shown, j], 0.18, color=f"C{j}", alpha=0.35)
        ax1.plot(x + 0.2 * j - 0.3, a_hat[:, j], "o", color=f"C{j}")
    ax1.set_xlabel("test sample")
    ax1.set_ylabel("abundance")
    ax1.set_title("true (bars) vs predicted (dots)")
    fig.tight_layout()
    save_figure(fig, out / "convex_projection.png")


if __name__ == "__main__":
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else (3 if args.smoke else 300)
    main(args.smoke, args.out, steps, args.batch)
