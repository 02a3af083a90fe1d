"""Data-parallel DEQ training: the batch is sharded over devices with `jax.sharding`.

A deep equilibrium classifier for scikit-learn's 8x8 digits (nothing is
downloaded). Each training step solves one fixed point per image with Anderson
acceleration and differentiates it by the implicit function theorem. The batch is
split across the devices of a one-axis mesh and the parameters are replicated: XLA
partitions the vmapped solves, runs each shard's solves on its own device, and
all-reduces the gradients. No line of the model changes between one device and
many; only where the arrays live does.

On a CPU, simulate four devices with

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/deq_sharded.py

(about a minute). It prints a table of loss, accuracy and solver steps per epoch.
`--check` runs one step in float64 both sharded and on a single device and
exits non-zero unless loss and gradients agree.
"""

import argparse
import json
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from sklearn.datasets import load_digits

import unimplicit as ui


class Cell(eqx.Module):
    """z -> tanh(W z + U x + b)."""

    weight: eqx.nn.Linear

    def __init__(self, width, key):
        self.weight = eqx.nn.Linear(width, width, key=key)

    def __call__(self, z, injected):
        return jnp.tanh(self.weight(z) + injected)


class Classifier(eqx.Module):
    embed: eqx.nn.Linear
    deq: ui.DEQ
    head: eqx.nn.Linear

    def __init__(self, width, key, dtype, tol):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Linear(64, width, key=k1, dtype=dtype)
        cell = Cell(width, k2)
        cell = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_array(x) else x, cell)
        self.deq = ui.DEQ(
            cell,
            backend=ui.Anderson(rtol=tol, atol=tol),
            # The backward pass u = w + u J by Anderson-accelerated fixed-point
            # iteration (as by default), at the forward pass's tolerance.
            adjoint=ui.ImplicitAdjoint(ui.NeumannSolver(tol, tol, history=5)),
            max_steps=100,
            throw=False,
            state=jax.ShapeDtypeStruct((width,), dtype),
        )
        self.head = eqx.nn.Linear(width, 10, key=k3, dtype=dtype)

    def __call__(self, x):
        sol = self.deq.solve(self.embed(x))
        return self.head(sol.value), sol.stats["num_steps"]


def loss_fn(model, x, y):
    # Keep W's spectral norm below one so the cell is a contraction: normalised once
    # per step, outside the solves, with gradients flowing through the rescaling.
    model = ui.regularize.spectral_normalise(
        model, bound=0.9, where=lambda m: m.deq.cell.weight.weight
    )
    logits, steps = jax.vmap(model)(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, (accuracy, jnp.mean(steps))


@eqx.filter_jit
def loss_and_grad(model, x, y):
    return eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, x, y)


@eqx.filter_jit
def train_step(model, opt_state, x, y, optimiser):
    (loss, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, x, y)
    updates, opt_state = optimiser.update(grads, opt_state, model)
    return eqx.apply_updates(model, updates), opt_state, loss, aux


def place(tree, sharding):
    """Put every array of `tree` on the devices of `sharding`."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, sharding), static)


def load(dtype):
    digits = load_digits()
    x = (digits.data / 16.0).astype(dtype)
    return x, digits.target.astype(np.int32)


def check(batch: int) -> bool:
    """One float64 step, sharded vs single device: loss and gradients must agree."""
    jax.config.update("jax_enable_x64", True)
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("batch",), axis_types=(AxisType.Auto,))
    x, y = load(np.float64)
    x, y = x[:batch], y[:batch]
    model = Classifier(32, jax.random.PRNGKey(0), jnp.float64, 1e-11)

    data = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    (loss_s, _), grad_s = loss_and_grad(
        place(model, replicated), place(x, data), place(y, data)
    )
    one = jax.sharding.SingleDeviceSharding(devices[0])
    (loss_1, _), grad_1 = loss_and_grad(place(model, one), place(x, one), place(y, one))

    leaves_s = jax.tree.leaves(eqx.filter(grad_s, eqx.is_array))
    leaves_1 = jax.tree.leaves(eqx.filter(grad_1, eqx.is_array))
    # Compare on the host: the two results live on different sets of devices.
    grad_err = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))
        for a, b in zip(leaves_s, leaves_1)
    )
    loss_err = abs(float(loss_s) - float(loss_1)) / abs(float(loss_1))
    ok = loss_err < 1e-9 and grad_err < 1e-7
    print(
        json.dumps(
            {
                "devices": len(devices),
                "x_sharding": str(place(x, data).sharding.spec),
                "loss_sharded": float(loss_s),
                "loss_single": float(loss_1),
                "loss_rel_err": loss_err,
                "grad_rel_err": grad_err,
                "ok": ok,
            }
        )
    )
    return ok


def train(epochs: int, batch: int, seed: int) -> None:
    devices = jax.devices()
    if batch % len(devices):
        raise ValueError(f"batch {batch} must divide over {len(devices)} devices")
    mesh = jax.make_mesh((len(devices),), ("batch",), axis_types=(AxisType.Auto,))
    data = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())

    x, y = load(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    test, fit = order[:297], order[297:]
    model = place(
        Classifier(64, jax.random.PRNGKey(seed), jnp.float32, 1e-4), replicated
    )
    optimiser = optax.adam(3e-3)
    opt_state = place(optimiser.init(eqx.filter(model, eqx.is_array)), replicated)

    print(f"{len(devices)} devices, batch {batch} sharded as {data.spec}")
    print(
        f"{'epoch':>5} {'loss':>8} {'train acc':>9} {'solver steps':>12} {'s/step':>8}"
    )
    steps_per_epoch = len(fit) // batch
    for epoch in range(epochs):
        perm = rng.permutation(fit)
        start, losses, accs, steps = time.perf_counter(), [], [], []
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            xb, yb = place(x[idx], data), place(y[idx], data)
            model, opt_state, loss, (acc, mean_steps) = train_step(
                model, opt_state, xb, yb, optimiser
            )
            losses.append(float(loss))
            accs.append(float(acc))
            steps.append(float(mean_steps))
        per_step = (time.perf_counter() - start) / steps_per_epoch
        print(
            f"{epoch:>5} {np.mean(losses):>8.4f} {np.mean(accs):>9.3f} "
            f"{np.mean(steps):>12.1f} {per_step:>8.3f}"
        )
    pad = (-len(test)) % len(devices)
    xt = place(np.concatenate([x[test], x[test[:pad]]]), data)
    yt = place(np.concatenate([y[test], y[test[:pad]]]), data)
    _, (acc, mean_steps) = eqx.filter_jit(loss_fn)(model, xt, yt)
    print(f"test accuracy {float(acc):.3f}, mean solver steps {float(mean_steps):.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="one epoch only")
    args = parser.parse_args()
    if args.check:
        sys.exit(0 if check(min(args.batch, 64)) else 1)
    train(1 if args.smoke else args.epochs, args.batch, args.seed)
