"""Tutorial 5: a cvxpy problem as a layer.

A convex program is an implicit layer too: its output is defined by optimality
conditions, not by a formula. `unimplicit.ConvexLayer` takes a DPP cvxpy problem,
canonicalises it once, solves it in JAX with an interior-point method, and
differentiates the solution by the implicit function theorem on the cone program's
residual (the same rule as for a DEQ).

The layer here is the Euclidean projection onto the probability simplex,
`argmin_p |p - y|^2  s.t.  p >= 0, sum(p) = 1`, a "sparsemax". We sweep one input
coordinate and plot the output and its derivative (from `jax.jacobian`), checked
against finite differences.

Run: `python docs/tutorials/convex_layer.py` (`--smoke`: fewer sweep points).
"""

import cvxpy as cp
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from _cli import parse_args

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


jax.config.update("jax_enable_x64", True)
N = 3


def main():
    cli = parse_args(__doc__, smoke="fewer sweep points")

    y = cp.Parameter(N)
    p = cp.Variable(N)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(p - y)), [p >= 0, cp.sum(p) == 1])
    layer = ui.ConvexLayer(problem, parameters=[y], variables=[p])

    base = jnp.array([0.0, 0.3, 0.6])
    ts = jnp.linspace(-1.0, 1.5, 11 if cli.smoke else 41)
    ys = base[None, :] + ts[:, None] * jnp.array([1.0, 0.0, 0.0])

    def project(v):
        return layer(v)[0]

    # Batched: a leading axis on the parameter batches the solve.
    outputs = jax.jit(project)(ys)
    jacobian = jax.jit(jax.vmap(jax.jacobian(project)))(ys)  # (T, N, N)
    dp_dy0 = jacobian[:, :, 0]

    # Check one point against cvxpy itself and against finite differences.
    y.value = np.asarray(ys[5])
    problem.solve()
    eps = 1e-5
    fd = project(ys[5] + eps * jnp.eye(N)[0]) - project(ys[5] - eps * jnp.eye(N)[0])
    fd = fd / (2 * eps)
    print(f"max |p - p_cvxpy|      = {np.max(np.abs(outputs[5] - p.value)):.1e}")
    print(f"max |dp/dy0 - FD|      = {float(jnp.max(jnp.abs(dp_dy0[5] - fd))):.1e}")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i in range(N):
        ax1.plot(ts, outputs[:, i], label=f"p{i}")
        ax2.plot(ts, dp_dy0[:, i], label=f"dp{i}/dy0")
    ax1.set_xlabel("y0 (with y1 = 0.3, y2 = 0.6)")
    ax1.set_title("projection onto the simplex: the layer's output")
    ax2.set_xlabel("y0")
    ax2.set_title("its derivative, by the implicit function theorem")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    cli.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(cli.out / "convex_layer.png", dpi=120)
    print(f"saved {cli.out / 'convex_layer.png'}")


if __name__ == "__main__":
    main()
