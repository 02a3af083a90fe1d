"""Tutorial 1: from ResNets to deep equilibrium models.

The path of the seed talk, in code:

1. a residual block adds its input back, `z_{k+1} = z_k + g_k(z_k)`;
2. input injection passes `x` to every layer, `z_{k+1} = f_k(z_k, x)`;
3. weight tying uses the same `f` in every layer, so depth is a loop;
4. any 3-layer network `f3(f2(f1(x)))` *is* a weight-tied network: one map on the
   stacked state `z = [z1, z2, z3]`, `F(x, z) = [f1(x), f2(z1), f3(z2)]`, applied
   three times from `z = 0`;
5. a DEQ is the infinitely deep limit: the fixed point `z* = f(z*, x)`.

The figure shows (left) the stacked map filling in one block per application, and
(right) a weight-tied, input-injected network converging to its DEQ limit as it
gets deeper.

Run: `python docs/tutorials/resnet_to_deq.py` (`--smoke` is the same; it is fast).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
from _cli import parse_args

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


D = 8


class Stacked(eqx.Module):
    """Three different layers as one weight-tied map on the stacked state."""

    f1: eqx.nn.Linear
    f2: eqx.nn.Linear
    f3: eqx.nn.Linear

    def __call__(self, z, x):
        z1, z2, _ = z
        return (jnp.tanh(self.f1(x)), jnp.tanh(self.f2(z1)), jnp.tanh(self.f3(z2)))

    def explicit(self, x):
        return jnp.tanh(self.f3(jnp.tanh(self.f2(jnp.tanh(self.f1(x))))))


class Cell(eqx.Module):
    """A weight-tied residual block with input injection: z + g(z, x)."""

    w: jax.Array
    u: jax.Array

    def __call__(self, z, x):
        return z + (jnp.tanh(self.w @ z + self.u @ x) - z)


def main():
    cli = parse_args(__doc__, smoke="(already fast)")
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    x = jax.random.normal(keys[0], (D,))

    # 4. The 3-layer network as a weight-tied map on a stacked state.
    net = Stacked(*(eqx.nn.Linear(D, D, key=k) for k in keys[1:4]))
    z = tuple(jnp.zeros(D) for _ in range(3))
    explicit = net.explicit(x)
    gaps = []
    for k in range(1, 5):
        z = net(z, x)
        gaps.append(
            [
                float(jnp.linalg.norm(z[i] - block))
                for i, block in enumerate(_blocks(net, x))
            ]
        )
        print(
            f"after {k} application(s): |z3 - f3(f2(f1(x)))| = "
            f"{float(jnp.linalg.norm(z[2] - explicit)):.2e}"
        )
    assert jnp.allclose(z[2], explicit), "three applications give the 3-layer net"

    # 5. A weight-tied, input-injected network and its infinitely deep limit.
    w = 0.9 * jax.random.orthogonal(keys[4], D)
    u = jax.random.normal(keys[5], (D, D)) / jnp.sqrt(D)
    cell = Cell(w, u)
    deq = ui.DEQ(cell, backend=ui.Anderson(rtol=1e-6, atol=1e-7))
    z_star = deq(x)
    depths = list(range(0, 41))
    z, dist = jnp.zeros(D), []
    for _ in depths:
        dist.append(float(jnp.linalg.norm(z - z_star)))
        z = cell(z, x)
    print(
        f"DEQ: |f(z*) - z*| = {float(jnp.linalg.norm(cell(z_star, x) - z_star)):.1e}"
        f"; depth-40 network is {dist[-1]:.1e} away from z*"
    )

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    gaps = jnp.array(gaps)
    for i in range(3):
        ax1.plot(
            range(1, 5),
            jnp.maximum(gaps[:, i], 1e-16),
            marker="o",
            label=f"block z{i + 1} vs f{i + 1}(...f1(x))",
        )
    ax1.set_yscale("log")
    ax1.set_xticks(range(1, 5))
    ax1.set_xlabel("applications of the stacked map F")
    ax1.set_ylabel("distance to the explicit network's activations")
    ax1.set_title("a 3-layer net = 3 steps of one weight-tied map")
    ax1.legend(fontsize=8)
    ax2.semilogy(depths, dist, marker=".", label="weight-tied net of depth k")
    ax2.set_xlabel("depth k (applications of the cell)")
    ax2.set_ylabel("|z_k - z*|")
    ax2.set_title("deeper weight-tied nets converge to the DEQ")
    ax2.legend()
    fig.tight_layout()
    cli.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(cli.out / "resnet_to_deq.png", dpi=120)
    print(f"saved {cli.out / 'resnet_to_deq.png'}")


def _blocks(net, x):
    # The activations of the explicit network, layer by layer.
    z1 = jnp.tanh(net.f1(x))
    z2 = jnp.tanh(net.f2(z1))
    return z1, z2, jnp.tanh(net.f3(z2))


if __name__ == "__main__":
    main()
