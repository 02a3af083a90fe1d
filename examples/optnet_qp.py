"""OptNet-style: learn the cost of a quadratic program from its solutions.

An unknown "expert" answers each context `theta` with the solution of a QP,

    x*(theta) = argmin_x 1/2 x^T Q x + (B theta)^T x   s.t.  G x <= h, sum(x) = 1,

with fixed, known constraints. From pairs `(theta, x*)` we learn the cost: a
factor `L` with `Q = L L^T + 0.5 I` and the map `B`, by differentiating through a
`ConvexLayer` whose parameters are `L` and the linear cost `B theta`.

Compared on held-out contexts with two unconstrained regressors trained on the same
pairs: ridge regression and a small MLP (scikit-learn). Their predictions violate
the constraints; the layer's never do. Data are generated (nothing is downloaded).

Prints a table of test error and constraint violation, and saves the training
curve. Run: `python examples/optnet_qp.py` (about a minute on a laptop CPU);
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
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor

import unimplicit as ui


jax.config.update("jax_enable_x64", True)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


N, CONTEXT, INEQ = 6, 4, 4


def qp_layer(G, h):
    x = cp.Variable(N)
    L, p = cp.Parameter((N, N)), cp.Parameter(N)
    # 1/2 x^T (L L^T + 0.5 I) x, written DPP-style as a sum of squares.
    cost = 0.5 * cp.sum_squares(L.T @ x) + 0.25 * cp.sum_squares(x) + p @ x
    problem = cp.Problem(cp.Minimize(cost), [G @ x <= h, cp.sum(x) == 1])
    return ui.ConvexLayer(problem, [L, p], [x])


def main(smoke: bool, out: pathlib.Path, steps: int, batch: int):
    rng = np.random.default_rng(0)
    G = rng.normal(size=(INEQ, N))
    h = G @ (np.ones(N) / N) + 0.3  # the uniform vector is strictly feasible
    L_true = rng.normal(size=(N, N)) / np.sqrt(N)
    B_true = rng.normal(size=(N, CONTEXT))
    layer = qp_layer(G, h)

    def solve(L, B, theta):
        (x,) = layer(L, theta @ B.T)  # `L` shared, the cost batched over contexts
        return x

    count = 64 if smoke else 400
    theta_train = rng.normal(size=(count, CONTEXT))
    theta_test = rng.normal(size=(200, CONTEXT))
    expert = jax.jit(solve)
    x_train = np.asarray(expert(L_true, B_true, theta_train))
    x_test = np.asarray(expert(L_true, B_true, theta_test))
    active = np.mean(np.any(x_test @ G.T > h - 1e-6, axis=1))
    print(f"{100 * active:.0f}% of test solutions have an active inequality")

    params = {"L": jnp.eye(N), "B": jnp.asarray(0.1 * rng.normal(size=B_true.shape))}

    def loss(params, theta, x):
        return jnp.mean(jnp.sum((solve(params["L"], params["B"], theta) - x) ** 2, -1))

    optimiser = optax.adam(5e-2)
    opt_state = optimiser.init(params)

    @jax.jit
    def step(params, opt_state, theta, x):
        value, grad = jax.value_and_grad(loss)(params, theta, x)
        updates, opt_state = optimiser.update(grad, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    losses = []
    start = time.perf_counter()
    for i in range(steps):
        idx = rng.choice(count, size=batch, replace=False)
        params, opt_state, value = step(
            params, opt_state, theta_train[idx], x_train[idx]
        )
        losses.append(float(value))
        if i == 0:
            compile_s = time.perf_counter() - start
    train_s = time.perf_counter() - start

    def violation(x):
        ineq = np.maximum(x @ G.T - h, 0).max(axis=1)
        return np.maximum(ineq, np.abs(x.sum(axis=1) - 1))

    predictions = {
        "QP layer (learned cost)": np.asarray(
            jax.jit(solve)(params["L"], params["B"], theta_test)
        ),
        "ridge regression": Ridge(1e-3).fit(theta_train, x_train).predict(theta_test),
        "MLP (64x64)": MLPRegressor(
            hidden_layer_sizes=(64, 64), max_iter=50 if smoke else 2000, random_state=0
        )
        .fit(theta_train, x_train)
        .predict(theta_test),
    }
    print(
        f"\n{'model':<26} {'test MSE':>10} {'max violation':>15} {'% infeasible':>13}"
    )
    for name, pred in predictions.items():
        mse = np.mean(np.sum((pred - x_test) ** 2, axis=1))
        viol = violation(pred)
        print(
            f"{name:<26} {mse:>10.5f} {viol.max():>15.2e} "
            f"{100 * np.mean(viol > 1e-6):>12.0f}%"
        )
    print(
        f"\n{steps} steps of batch {batch}: {train_s:.1f} s "
        f"(first step incl. compilation {compile_s:.1f} s)"
    )

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training MSE of x")
    ax.set_title("Learning a QP's cost through its solution")
    fig.tight_layout()
    save_figure(fig, out / "optnet_qp.png")


if __name__ == "__main__":
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else (3 if args.smoke else 400)
    main(args.smoke, args.out, steps, args.batch)
