"""A deep equilibrium classifier for handwritten digits.

The path of the seed talk in one script: start from a residual block, inject the
input into every layer, share the weights across layers, and take the infinitely
deep limit: the layer's output is the fixed point `z* = cell(z*, x)`. The fixed
point is found by Anderson acceleration and differentiated by the implicit
function theorem, so training memory does not depend on the solver's iterations.

Data: scikit-learn's bundled 8x8 digits (1797 images; nothing is downloaded).
Prints test accuracy and the mean number of forward solver steps, and saves a plot
of the residual against the iteration for test images.

Run: `python examples/deq_digits.py` (about a minute on a laptop CPU);
`--smoke` runs a few steps only.
"""

import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from _cli import example_parser, save_figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class ResidualCell(eqx.Module):
    """A residual block with input injection, `z + g(z, x)`, whose weights are
    shared by every layer. Here `g(z, x) = W2 tanh(W1 z + U x) - z`; the DEQ's
    output is the `z` where the residual `g` vanishes."""

    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear

    def __init__(self, width, hidden, key):
        k1, k2 = jax.random.split(key)
        self.lin1 = eqx.nn.Linear(width, hidden, use_bias=False, key=k1)
        self.lin2 = eqx.nn.Linear(hidden, width, key=k2)

    def __call__(self, z, injected):
        residual = self.lin2(jnp.tanh(self.lin1(z) + injected)) - z
        return z + residual


class DEQClassifier(eqx.Module):
    embed: eqx.nn.Linear
    deq: ui.DEQ
    head: eqx.nn.Linear

    def __init__(self, width, hidden, key):
        k1, k2, k3 = jax.random.split(key, 3)
        # `U x`: the input is injected into the cell at every iteration.
        self.embed = eqx.nn.Linear(64, hidden, key=k1)
        cell = ResidualCell(width, hidden, k2)
        backend = ui.Anderson(rtol=1e-4, atol=1e-5, history=5)
        # The backward pass solves u^T = w^T + u^T df/dz (the seed talk's equation
        # (9)) by Anderson-accelerated fixed-point iteration, as the forward pass
        # does (the library's default for fixed points), here capped at 200 steps.
        adjoint = ui.ImplicitAdjoint(
            ui.NeumannSolver(rtol=1e-4, atol=1e-7, max_steps=200, history=5)
        )
        self.deq = ui.DEQ(
            cell,
            backend=backend,
            adjoint=adjoint,
            max_steps=60,
            throw=False,
            state=jax.ShapeDtypeStruct((width,), jnp.float32),
        )
        self.head = eqx.nn.Linear(width, 10, key=k3)

    def solve(self, x, options=None):
        return self.deq.solve(self.embed(x), options=options)

    def __call__(self, x):
        sol = self.solve(x)
        return self.head(sol.value), sol.stats["num_steps"]


def loss_fn(model, x, y):
    logits, steps = jax.vmap(model)(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, steps


@eqx.filter_jit
def train_step(model, opt_state, x, y, optimiser):
    (loss, steps), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, x, y)
    updates, opt_state = optimiser.update(grads, opt_state, model)
    return eqx.apply_updates(model, updates), opt_state, loss, steps.mean()


@eqx.filter_jit
def evaluate(model, x, y):
    logits, steps = jax.vmap(model)(x)
    return jnp.mean(jnp.argmax(logits, -1) == y), steps


@eqx.filter_jit
def residual_traces(model, x):
    sols = jax.vmap(lambda v: model.solve(v, options={"trace": 40}))(x)
    return sols.stats["residual_trace"]


def main(smoke: bool, out: pathlib.Path, epochs: int, seed: int) -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    key = jax.random.PRNGKey(seed)
    model = DEQClassifier(width=64, hidden=128, key=key)
    batch = 64
    steps_per_epoch = len(x_train) // batch
    total = 3 if smoke else epochs * steps_per_epoch
    schedule = optax.cosine_decay_schedule(3e-3, total)
    optimiser = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with tqdm(total=total, desc="training DEQ") as bar:
        for step in range(total):
            if step % steps_per_epoch == 0:
                order = rng.permutation(len(x_train))
            idx = order[(step % steps_per_epoch) * batch :][:batch]
            model, opt_state, loss, mean_steps = train_step(
                model, opt_state, x_train[idx], y_train[idx], optimiser
            )
            bar.set_postfix(
                loss=f"{float(loss):.3f}", solver_steps=f"{float(mean_steps):.1f}"
            )
            bar.update()
    train_time = time.perf_counter() - start

    accuracy, steps = evaluate(model, x_test, y_test)
    print(f"test accuracy: {float(accuracy) * 100:.2f}% on {len(y_test)} images")
    print(f"mean forward solver steps (test): {float(jnp.mean(steps)):.1f}")
    print(f"training time: {train_time:.1f} s for {total} steps")

    traces = np.asarray(residual_traces(model, x_test[:32]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for trace in traces:
        ax.semilogy(trace, color="tab:blue", alpha=0.25, lw=1)
    # Converged images stop early (their trace ends in NaN): take the median over
    # the images still iterating.
    running = np.isfinite(traces).sum(axis=0) > 0
    median = np.array(
        [np.nanmedian(col) if ok else np.nan for col, ok in zip(traces.T, running)]
    )
    ax.semilogy(median, color="black", lw=2, label="median")
    ax.set_xlabel("Anderson iteration")
    ax.set_ylabel(r"residual $\|f(z, x) - z\|_2$")
    ax.set_title("DEQ on digits: convergence to the fixed point (32 test images)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "deq_digits_residual.png")


if __name__ == "__main__":
    parser = example_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.smoke, args.out, args.epochs, args.seed)
