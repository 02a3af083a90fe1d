"""Tutorial 6: swapping backends.

A condition says *what* the output satisfies; the backend says *how* to find it.
The same DEQ cell is solved by Anderson acceleration, by Newton's method (an
Optimistix solver, passed as is) and by integrating `dz/dt = f(z, x) - z` to a
steady state with Diffrax. The value and the gradient (by the implicit function
theorem in all three cases) agree; only the cost differs.

Run: `python docs/tutorials/backends.py` (`--smoke`: fewer timing repeats).
"""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import optimistix as optx
from _cli import parse_args

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


jax.config.update("jax_enable_x64", True)
D, BATCH = 32, 16


class Cell(eqx.Module):
    w: jax.Array

    def __call__(self, z, x):
        return jnp.tanh(self.w @ z + x)


def main():
    cli = parse_args(__doc__, smoke="fewer timing repeats")
    repeats = 2 if cli.smoke else 5
    cell = Cell(0.8 * jax.random.orthogonal(jax.random.PRNGKey(0), D))
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, D))
    backends = {
        "Anderson": ui.Anderson(rtol=1e-10, atol=1e-10),
        "Newton": optx.Newton(rtol=1e-10, atol=1e-10),
        "Diffrax steady state": ui.Diffrax(
            diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        ),
    }

    def loss(deq, x):
        return jnp.sum(jax.vmap(deq)(x) ** 2)

    results = {}
    for name, backend in backends.items():
        deq = ui.DEQ(cell, backend=backend, max_steps=4096)
        value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(loss))
        (value, grad) = value_and_grad(deq, x)
        jax.block_until_ready(grad)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(value_and_grad(deq, x))
            times.append(time.perf_counter() - start)
        steps = jax.vmap(lambda xi, d=deq: d.solve(xi).stats["num_steps"])(x)
        results[name] = (
            value,
            grad.cell.w,
            sorted(times)[len(times) // 2],
            float(jnp.mean(steps)),
        )

    ref_value, ref_grad, _, _ = results["Anderson"]
    print(f"{'backend':<22}{'loss':>14}{'|dgrad|/|grad|':>16}{'steps':>8}{'ms':>9}")
    for name, (value, grad, seconds, steps) in results.items():
        rel = jnp.linalg.norm(grad - ref_grad) / jnp.linalg.norm(ref_grad)
        print(
            f"{name:<22}{float(value):>14.10f}{float(rel):>16.1e}"
            f"{steps:>8.1f}{1e3 * seconds:>9.2f}"
        )

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(results)
    ax1.bar(names, [results[n][2] * 1e3 for n in names], color="C0")
    ax1.set_ylabel("value + gradient, ms (median)")
    ax1.set_title(f"same DEQ, batch {BATCH}, d={D}")
    ax2.bar(names, [results[n][3] for n in names], color="C1")
    ax2.set_ylabel("mean solver steps per sample")
    ax2.set_title("forward cost")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    cli.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(cli.out / "backends.png", dpi=120)
    print(f"saved {cli.out / 'backends.png'}")


if __name__ == "__main__":
    main()
