"""Tutorial 3: solvers for the same fixed point.

The seed talk: "any solver can be used". Naive fixed-point iteration converges
linearly, Newton's method quadratically (using the Jacobian), Anderson acceleration
combines the last few iterates, and Broyden's method builds up an approximate
inverse Jacobian from secant updates. Here all four solve one fixed-point problem
`z = tanh(W z + x)` and we plot the residual `|f(z) - z|` against the iteration,
recorded by `unimplicit.solve(..., options={"trace": k})`.

Run: `python docs/tutorials/solvers.py` (`--smoke` for a smaller problem).
"""

import jax
import jax.numpy as jnp
import matplotlib
import optimistix as optx
from _cli import parse_args

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


jax.config.update("jax_enable_x64", True)


def cell(z, args):
    w, x = args
    return jnp.tanh(w @ z + x)


def main():
    cli = parse_args(__doc__, smoke="a smaller problem")
    d = 32 if cli.smoke else 128
    steps = 60 if cli.smoke else 150

    # A symmetric W with eigenvalues spread over [-0.5, 0.97] and a small input, so
    # the map is nearly linear with contraction ~0.97: naive iteration is slow, and
    # the differences between solvers show.
    key_w, key_x = jax.random.split(jax.random.PRNGKey(0))
    q = jax.random.orthogonal(key_w, d)
    w = q @ jnp.diag(jnp.linspace(-0.5, 0.97, d)) @ q.T
    x = 0.3 * jax.random.normal(key_x, (d,))
    y0 = jnp.zeros(d)
    tol = dict(rtol=1e-12, atol=1e-12)
    backends = {
        "naive iteration": optx.FixedPointIteration(**tol),
        "Newton": optx.Newton(**tol),
        "Anderson (m=5)": ui.Anderson(**tol, history=5),
        "Broyden": ui.Broyden(**tol, memory=30),
    }
    condition = ui.FixedPoint(cell)
    fig, ax = plt.subplots(figsize=(6, 4))
    print(f"{'solver':<18}{'steps':>6}{'final residual':>16}")
    for name, backend in backends.items():
        sol = ui.solve(
            condition,
            backend,
            (w, x),
            y0=y0,
            max_steps=steps,
            throw=False,
            options={"trace": steps + 1},
        )
        trace = sol.stats["residual_trace"]
        trace = trace[jnp.isfinite(trace)]
        print(
            f"{name:<18}{int(sol.stats['num_steps']):>6}"
            f"{float(sol.stats['residual_norm']):>16.2e}"
        )
        ax.semilogy(jnp.maximum(trace, 1e-16), label=name, marker=".", ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("residual norm  |f(z) - z|")
    ax.set_title(f"z = tanh(Wz + x), d={d}, eigenvalues of W in [-0.5, 0.97]")
    ax.legend()
    fig.tight_layout()
    cli.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(cli.out / "solvers.png", dpi=120)
    print(f"saved {cli.out / 'solvers.png'}")


if __name__ == "__main__":
    main()
