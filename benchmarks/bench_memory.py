"""Peak memory of a DEQ training step against the number of forward iterations.

With `ImplicitAdjoint` nothing from the forward iterations is kept, so the memory
of a training step should not grow with their number; with `UnrolledAdjoint` the
iterations are backpropagated through (checkpointed), so it does.

Memory is XLA's own accounting of the compiled training step
(`jax.jit(...).lower(...).compile().memory_analysis()`): the peak of temporaries
plus arguments and outputs. It is exact for the compiled program and is not
disturbed by other processes on the machine.

The forward solver is fixed-point iteration with zero tolerance, so it runs
exactly `max_steps` iterations.

Run: `python benchmarks/bench_memory.py`
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

import unimplicit as ui


D, BATCH = 256, 128


class Cell(eqx.Module):
    w: jax.Array

    def __call__(self, z, x):
        return jnp.tanh(self.w @ z + x)


def peak_bytes(adjoint, iterations):
    cell = Cell(0.5 * jax.random.orthogonal(jax.random.PRNGKey(0), D))
    deq = ui.DEQ(
        cell,
        backend=optx.FixedPointIteration(rtol=0.0, atol=0.0),
        adjoint=adjoint,
        max_steps=iterations,
        throw=False,
        state=jax.ShapeDtypeStruct((D,), jnp.float32),
    )
    x = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (BATCH, D))

    def loss(model, x):
        return jnp.mean(jax.vmap(model)(x) ** 2)

    params, static = eqx.partition(deq, eqx.is_array)
    step = jax.jit(
        lambda p, x: jax.value_and_grad(lambda p: loss(eqx.combine(p, static), x))(p)
    )
    compiled = step.lower(params, x).compile()
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes


def main():
    print(f"DEQ training step, tanh cell d={D}, batch {BATCH}, float32")
    counts = (10, 100, 400)
    header = "".join(f"{f'{n} iters':>12}" for n in counts)
    print(f"{'adjoint':<34}{header}{'100/10':>8}")
    for name, adjoint in [
        ("ImplicitAdjoint()", lambda n: ui.ImplicitAdjoint()),
        ("UnrolledAdjoint() (sqrt ckpt)", lambda n: ui.UnrolledAdjoint()),
        ("UnrolledAdjoint(checkpoints=n)", lambda n: ui.UnrolledAdjoint(n)),
    ]:
        sizes = [peak_bytes(adjoint(n), n) for n in counts]
        cells = "".join(f"{size / 2**20:>10.2f}Mi" for size in sizes)
        print(f"{name:<34}{cells}{sizes[1] / sizes[0]:>8.2f}")


if __name__ == "__main__":
    main()
