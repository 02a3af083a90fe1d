"""A portfolio layer with a second-order-cone risk limit, trained for decisions.

Each period we see features `f` and must pick long-only weights `x` before the
asset returns `r` are revealed. A `ConvexLayer` turns a predicted mean `mu` into

    x(mu) = argmax_x mu^T x - gamma |x|^2   s.t.  |S x| <= sigma, sum(x) = 1, x >= 0,

where `S` is a factor of the (estimated) return covariance, so `|S x| <= sigma` caps
the portfolio's volatility: a second-order cone constraint.

The linear predictor `mu = W f` is trained two ways: two-stage (least squares on
the returns, then optimise) and decision-focused (maximise the realised return
`r^T x(W f)` by differentiating through the layer, starting from the two-stage
`W`). The true returns depend on the features non-linearly, so the linear model is
misspecified, which is where training for the decision can pay off. Data are
generated (nothing is downloaded).

Prints a table of held-out returns and realised risk, and saves the cumulative
returns. Run: `python examples/portfolio_soc.py` (about a minute on a laptop CPU);
`--smoke` runs a few steps only.
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


ASSETS, FEATURES = 8, 5
SIGMA, GAMMA = 0.05, 0.02


def portfolio_layer():
    x = cp.Variable(ASSETS)
    mu, S = cp.Parameter(ASSETS), cp.Parameter((ASSETS, ASSETS))
    objective = cp.Maximize(mu @ x - GAMMA * cp.sum_squares(x))
    constraints = [cp.norm(S @ x) <= SIGMA, cp.sum(x) == 1, x >= 0]
    return ui.ConvexLayer(cp.Problem(objective, constraints), [mu, S], [x])


def make_data(rng, count, B1, B2, factor):
    f = rng.normal(size=(count, FEATURES))
    mean = 0.01 * (f @ B1.T + np.tanh(2 * f) @ B2.T)
    noise = rng.normal(size=(count, ASSETS)) @ factor.T
    return f, mean + noise


def main(smoke: bool, out: pathlib.Path, steps: int, batch: int):
    rng = np.random.default_rng(0)
    B1 = 0.5 * rng.normal(size=(ASSETS, FEATURES))
    B2 = rng.normal(size=(ASSETS, FEATURES))
    vols = np.linspace(0.02, 0.08, ASSETS)
    corr = 0.3 * np.ones((ASSETS, ASSETS)) + 0.7 * np.eye(ASSETS)
    factor = np.linalg.cholesky(corr * np.outer(vols, vols))
    f_train, r_train = make_data(rng, 200 if smoke else 2000, B1, B2, factor)
    f_test, r_test = make_data(rng, 1000, B1, B2, factor)

    # The risk model is estimated from the training returns, as one would in practice.
    S = np.linalg.cholesky(np.cov(r_train.T)).T
    layer = portfolio_layer()

    def weights(W, f):
        (x,) = layer(f @ W.T, S)  # `mu` batched, `S` shared across the batch
        return x

    def loss(W, f, r):
        return -jnp.mean(jnp.sum(r * weights(W, f), axis=-1))

    optimiser = optax.adam(1e-3)

    @jax.jit
    def step(W, opt_state, f, r):
        value, grad = jax.value_and_grad(loss)(W, f, r)
        updates, opt_state = optimiser.update(grad, opt_state)
        return optax.apply_updates(W, updates), opt_state, value

    W_two_stage = np.linalg.lstsq(f_train, r_train, rcond=None)[0].T
    W = jnp.asarray(W_two_stage)
    opt_state = optimiser.init(W)
    start = time.perf_counter()
    for i in range(steps):
        idx = rng.choice(len(f_train), size=batch, replace=False)
        W, opt_state, _ = step(W, opt_state, f_train[idx], r_train[idx])
        if i == 0:
            compile_s = time.perf_counter() - start
    train_s = time.perf_counter() - start

    predict = jax.jit(weights)
    true_mean = 0.01 * (f_test @ B1.T + np.tanh(2 * f_test) @ B2.T)
    strategies = {
        "equal weight": np.full((len(f_test), ASSETS), 1 / ASSETS),
        "two-stage (least squares)": np.asarray(predict(W_two_stage, f_test)),
        "decision-focused": np.asarray(predict(W, f_test)),
        "true mean plugged in": np.asarray(
            jax.jit(lambda mu: layer(mu, S)[0])(true_mean)
        ),
    }
    cov_true = factor @ factor.T
    print(
        f"\n{'strategy':<28} {'mean return':>12} {'realised vol':>13} {'max |Sx|':>9}"
    )
    curves = {}
    for name, x in strategies.items():
        realised = np.sum(r_test * x, axis=1)
        curves[name] = np.cumsum(realised)
        vol = np.sqrt(np.einsum("bi,ij,bj->b", x, cov_true, x)).mean()
        cap = np.linalg.norm(x @ S.T, axis=1).max()
        print(f"{name:<28} {realised.mean():>12.5f} {vol:>13.4f} {cap:>9.4f}")
    print(f"(volatility cap sigma = {SIGMA})")
    print(
        f"\n{steps} steps of batch {batch}: {train_s:.1f} s "
        f"(first step incl. compilation {compile_s:.1f} s)"
    )

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(curve, label=name)
    ax.set_xlabel("test period")
    ax.set_ylabel("cumulative return")
    ax.set_title("Long-only portfolios under a volatility cap (SOC)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "portfolio_soc.png")


if __name__ == "__main__":
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else (3 if args.smoke else 300)
    main(args.smoke, args.out, steps, args.batch)
