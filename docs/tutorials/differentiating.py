"""Tutorial 2: differentiating an implicit layer.

Two ways to get the gradient of a DEQ's output:

- unrolled backpropagation through the solver's iterations, which must keep (or
  recompute) every iterate: memory grows with the number of forward iterations;
- the implicit function theorem (IFT), which only needs the fixed point: one
  linear solve `u^T = w^T + u^T df/dz` at `z*`, whatever the number of iterations.

We check that both give the same gradient, then measure the peak memory of one
compiled training step with XLA's own accounting
(`jax.jit(step).lower(...).compile().memory_analysis()`), against the number of
forward iterations, for `ImplicitAdjoint`, `UnrolledAdjoint(checkpoints=n)` (stores
every iterate) and `UnrolledAdjoint()` (sqrt(n) checkpoints, recomputes the rest).

Run: `python docs/tutorials/differentiating.py` (`--smoke`: fewer sizes).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import optimistix as optx
from _cli import parse_args

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


D, BATCH = 64, 32


class Cell(eqx.Module):
    w: jax.Array

    def __call__(self, z, x):
        return jnp.tanh(self.w @ z + x)


def make_deq(adjoint, iterations):
    cell = Cell(0.5 * jax.random.orthogonal(jax.random.PRNGKey(0), D))
    # Zero tolerance: the solver runs exactly `iterations` steps.
    return ui.DEQ(
        cell,
        backend=optx.FixedPointIteration(rtol=0.0, atol=0.0),
        adjoint=adjoint,
        max_steps=iterations,
        throw=False,
        state=jax.ShapeDtypeStruct((D,), jnp.float32),
    )


def loss(model, x):
    return jnp.mean(jax.vmap(model)(x) ** 2)


def training_step(deq, x):
    params, static = eqx.partition(deq, eqx.is_array)
    return jax.jit(
        lambda p, x: jax.value_and_grad(lambda p: loss(eqx.combine(p, static), x))(p)
    ), params


def peak_mib(adjoint, iterations, x):
    step, params = training_step(make_deq(adjoint, iterations), x)
    m = step.lower(params, x).compile().memory_analysis()
    assert m is not None, "this backend reports no memory analysis"
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    return total / 2**20


def main():
    cli = parse_args(__doc__, smoke="fewer sizes")
    x = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (BATCH, D))

    # Same gradient both ways (40 iterations converge to float32 precision here).
    grads = {}
    for name, adjoint in [
        ("IFT", ui.ImplicitAdjoint()),
        ("unrolled", ui.UnrolledAdjoint()),
    ]:
        deq = make_deq(adjoint, 40)
        grads[name] = eqx.filter_grad(loss)(deq, x).cell.w
    rel = jnp.linalg.norm(grads["IFT"] - grads["unrolled"]) / jnp.linalg.norm(
        grads["unrolled"]
    )
    print(f"relative gradient difference, IFT vs unrolled: {float(rel):.1e}")

    counts = [5, 40] if cli.smoke else [5, 20, 80, 320]
    adjoints = {
        "IFT: ImplicitAdjoint()": lambda n: ui.ImplicitAdjoint(),
        "unrolled, every iterate stored": lambda n: ui.UnrolledAdjoint(n),
        "unrolled, sqrt(n) checkpoints": lambda n: ui.UnrolledAdjoint(),
    }
    fig, ax = plt.subplots(figsize=(6, 4))
    print(f"{'adjoint':<34}" + "".join(f"{n:>9}" for n in counts) + "  (MiB)")
    for name, adjoint in adjoints.items():
        sizes = [peak_mib(adjoint(n), n, x) for n in counts]
        print(f"{name:<34}" + "".join(f"{s:>9.2f}" for s in sizes))
        ax.plot(counts, sizes, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("forward iterations")
    ax.set_ylabel("peak memory of a training step (MiB)")
    ax.set_title(f"DEQ training step, d={D}, batch {BATCH}, float32")
    ax.legend()
    fig.tight_layout()
    cli.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(cli.out / "differentiating.png", dpi=120)
    print(f"saved {cli.out / 'differentiating.png'}")


if __name__ == "__main__":
    main()
