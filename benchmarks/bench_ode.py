"""Neural ODEs: overhead over raw Diffrax, speed against torchdiffeq, CNF traces.

1. `unimplicit.NeuralODE` against the same `diffrax.diffeqsolve` call written by
   hand: forward and gradient (target: at most 1.05x).
2. The same small neural ODE in torchdiffeq 0.2.5 (torch, CPU): batch 64, 4
   dimensions, an MLP of width 32, dopri5 / Tsit5 at rtol = atol = 1e-6; the time of
   one gradient of a loss (target: unimplicit at most 0.25x torchdiffeq).
3. A 2-D CNF: Hutchinson log-likelihoods against exact ones (agreement within
   sampling error), and the cost of each trace.

Everything runs in this one process, float32 on both sides. Times are medians (and
bests) of interleaved repeats after compilation (JAX) or warm-up (torch); the first
call (tracing + compilation) is reported separately.

Run: `python benchmarks/bench_ode.py` (`--repeats N` and `--overhead-repeats N`
change the repeat counts).
"""

import argparse
import os
import random
import statistics
import time
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import unimplicit as ui


# Torch's OpenMP workers otherwise busy-wait after each call, taking the CPU from
# the JAX call timed next on this 2-core machine; sleeping workers do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BATCH, DIM, WIDTH, TOL = 64, 4, 32, 1e-6


class Field(eqx.Module):
    """The vector field `f(y) = MLP(y)`, applied to a (batch, dim) state."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return jax.vmap(self.mlp)(y)


def make_field(key):
    return Field(eqx.nn.MLP(DIM, DIM, WIDTH, 2, activation=jnp.tanh, key=key))


CONTROLLER = diffrax.PIDController(rtol=TOL, atol=TOL)


def raw_solve(field, y0, throw=True):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        0.0,
        1.0,
        None,
        y0,
        stepsize_controller=CONTROLLER,
        adjoint=diffrax.RecursiveCheckpointAdjoint(),
        max_steps=4096,
        throw=throw,
    )
    return sol.ys[0], sol.stats["num_steps"]


def ours_solve(field, y0, throw=True):
    layer = ui.NeuralODE(
        field,
        0.0,
        1.0,
        backend=ui.Diffrax(stepsize_controller=CONTROLLER),
        throw=throw,
    )
    sol = layer.solve(y0)
    return sol.value, sol.stats["num_steps"]


def loss_of(solve):
    def loss(field, y0):
        return jnp.mean(solve(field, y0)[0] ** 2)

    return loss


def compile_timed(fn, *args):
    """`jax.jit(fn)` and the time of its first call (tracing + compiling + one run).

    Later calls go through `jax.jit`'s ordinary dispatch, as a user's would (an
    ahead-of-time compiled object dispatches differently, and would hide costs
    such as losing the fast C++ dispatch path).
    """
    jitted = jax.jit(fn)
    start = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    return jitted, time.perf_counter() - start


def block(x):
    return jax.block_until_ready(x)


class Timing(NamedTuple):
    median: float
    best: float

    def ms(self) -> str:
        return f"{self.median * 1e3:7.3f} ({self.best * 1e3:7.3f})"


def ratio(a: Timing, b: Timing) -> str:
    return f"{a.median / b.median:5.3f} ({a.best / b.best:5.3f})"


def interleaved_medians(fns, repeats, block=1):
    """Median wall time of each zero-argument function.

    The functions take turns, `block` calls at a time, so that a change in the
    machine's load hits them alike. (Torch's worker threads keep spinning for a
    while after a call, which would slow a JAX call made right after: a block of
    calls amortises that.)
    """
    times = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(max(1, repeats // block)):
        # A fresh random order each round: the first call after a switch can pay
        # for caches another function evicted, and a fixed order would charge that
        # to the same function every time.
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(ts), min(ts)) for name, ts in times.items()}


def bench_overhead(field, y0, repeats):
    print("\n== 1. NeuralODE overhead over raw diffrax.diffeqsolve ==")
    params, static = eqx.partition(field, eqx.is_array)

    def fwd(solve, throw):
        return lambda p, y: solve(eqx.combine(p, static), y, throw)[0]

    def grad(solve, throw):
        loss = loss_of(lambda f, y: solve(f, y, throw))
        return jax.grad(lambda p, y: loss(eqx.combine(p, static), y))

    compiled, compile_s = {}, {}
    for kind, make in (("fwd", fwd), ("grad", grad)):
        for throw in (True, False):
            for side, solve in (("raw", raw_solve), ("ours", ours_solve)):
                name = (side, kind, throw)
                compiled[name], compile_s[name] = compile_timed(
                    make(solve, throw), params, y0
                )
    steps = int(
        jax.jit(lambda p, y: ours_solve(eqx.combine(p, static), y)[1])(params, y0)
    )
    ours_y = compiled["ours", "fwd", True](params, y0)
    check = float(jnp.max(jnp.abs(ours_y - compiled["raw", "fwd", True](params, y0))))
    med = interleaved_medians(
        {name: (lambda c=c: block(c(params, y0))) for name, c in compiled.items()},
        repeats,
    )
    print(f"Tsit5, {steps} steps; max |ours - raw| = {check:.1e}")
    print("median (best) of", repeats, "interleaved calls")
    print(
        f"{'':18s} {'raw ms':>17s} {'ours ms':>17s} {'ours/raw':>13s}"
        "   1st call raw / ours (s)"
    )
    for kind in ("fwd", "grad"):
        for throw in (True, False):
            raw, ours = med["raw", kind, throw], med["ours", kind, throw]
            label = f"{kind} (throw={throw})"
            print(
                f"{label:18s} {raw.ms()} {ours.ms()} {ratio(ours, raw)}"
                f"   {compile_s['raw', kind, throw]:.2f} / "
                f"{compile_s['ours', kind, throw]:.2f}"
            )
    grads = {t: compiled["ours", "grad", t] for t in (True, False)}
    return grads, compile_s["ours", "grad", True], steps, np.asarray(ours_y)


def bench_torchdiffeq(field, y0, ours_grad, ours_compile, ours_steps, ours_y, repeats):
    import torch
    import torchdiffeq

    print(
        "\n== 2. against torchdiffeq",
        torchdiffeq.__version__,
        "(torch",
        torch.__version__,
        "CPU) ==",
    )
    params, _ = eqx.partition(field, eqx.is_array)
    layers = field.mlp.layers

    class TorchField(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = torch.nn.ModuleList()
            for layer in layers:
                lin = torch.nn.Linear(layer.in_features, layer.out_features)
                with torch.no_grad():
                    lin.weight.copy_(torch.tensor(np.asarray(layer.weight)))
                    lin.bias.copy_(torch.tensor(np.asarray(layer.bias)))
                self.linears.append(lin)
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            for lin in self.linears[:-1]:
                y = torch.tanh(lin(y))
            return self.linears[-1](y)

    func = TorchField()
    y0_t = torch.tensor(np.asarray(y0))
    ts = torch.tensor([0.0, 1.0])

    def torch_grad(odeint):
        func.zero_grad()
        out = odeint(func, y0_t, ts, rtol=TOL, atol=TOL, method="dopri5")
        loss = torch.mean(out[-1] ** 2)
        loss.backward()
        return loss

    def torch_fwd():
        with torch.no_grad():
            return torchdiffeq.odeint(
                func, y0_t, ts, rtol=TOL, atol=TOL, method="dopri5"
            )

    # Same model on both sides: the forward values agree.
    diff = np.max(np.abs(torch_fwd()[-1].numpy() - ours_y))
    func.nfe = 0
    torch_fwd()
    fwd_nfe = func.nfe
    for _ in range(3):  # warm-up
        torch_grad(torchdiffeq.odeint)
        torch_grad(torchdiffeq.odeint_adjoint)
    med = interleaved_medians(
        {
            "unimplicit": lambda: block(ours_grad[True](params, y0)),
            "unimplicit (throw=False)": lambda: block(ours_grad[False](params, y0)),
            "torchdiffeq odeint": lambda: torch_grad(torchdiffeq.odeint),
            "torchdiffeq odeint_adjoint": lambda: torch_grad(
                torchdiffeq.odeint_adjoint
            ),
        },
        repeats,
        block=10,
    )
    print(
        f"batch {BATCH}, dim {DIM}, MLP width {WIDTH} (2 hidden layers), rtol=atol={TOL}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"steps: Tsit5 {ours_steps}; dopri5 forward NFE {fwd_nfe}; max |torch - ours| y(1) = {diff:.1e}"
    )
    print("median (best) of", repeats, "calls, in alternating blocks of 10")
    print(f"{'gradient of mean(y(1)^2)':28s} {'ms':>17s} {'unimplicit / this':>18s}")
    for name, t in med.items():
        print(f"{name:28s} {t.ms()} {ratio(med['unimplicit'], t):>18s}")
    print(f"(unimplicit first call, with compilation: {ours_compile:.2f} s, excluded)")


class CNFField(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, z, args):
        return self.mlp(jnp.append(z, t))


def bench_cnf(repeats, n_points=64, n_keys=64):
    print("\n== 3. CNF: Hutchinson against exact trace ==")
    field = CNFField(
        eqx.nn.MLP(3, 2, 32, 2, activation=jnp.tanh, key=jax.random.PRNGKey(7))
    )
    backend = ui.Diffrax(
        stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-5)
    )
    exact = ui.CNF(field, trace="exact", backend=backend, throw=False)
    hutch = ui.CNF(field, trace="hutchinson", backend=backend, throw=False)
    xs = jax.random.normal(jax.random.PRNGKey(8), (n_points, 2))
    keys = jax.random.split(jax.random.PRNGKey(9), (n_points, n_keys))

    exact_fn, exact_c = compile_timed(jax.vmap(lambda x: exact.log_prob(x)), xs)
    hutch_fn, hutch_c = compile_timed(
        jax.vmap(lambda x, k: hutch.log_prob(x, key=k[0])), xs, keys
    )
    many_fn, _ = compile_timed(
        jax.vmap(lambda x, ks: jax.vmap(lambda k: hutch.log_prob(x, key=k))(ks)),
        xs,
        keys,
    )
    ref = np.asarray(exact_fn(xs))
    est = np.asarray(many_fn(xs, keys))  # (n_points, n_keys)
    mean = est.mean(axis=1)
    stderr = est.std(axis=1, ddof=1) / np.sqrt(n_keys)
    z = (mean - ref) / stderr
    single_err = np.abs(est - ref[:, None])
    print(
        f"{n_points} points, {n_keys} Hutchinson (Rademacher) draws each, rtol=atol=1e-5"
    )
    print(f"mean |log p| (exact)                : {np.mean(np.abs(ref)):.4f}")
    print(
        f"one-draw |hutchinson - exact|        : median {np.median(single_err):.4f}, max {single_err.max():.4f}"
    )
    print(
        f"{n_keys}-draw mean vs exact, z-scores     : mean {z.mean():+.3f}, std {z.std():.3f}, "
        f"|z|<3 for {np.mean(np.abs(z) < 3):.1%} of points"
    )
    print(
        f"mean over all points: exact {ref.mean():.5f}, hutchinson {est.mean():.5f} "
        f"(± {est.mean(axis=0).std(ddof=1) / np.sqrt(n_keys):.5f})"
    )
    med = interleaved_medians(
        {
            "exact": lambda: block(exact_fn(xs)),
            "hutchinson": lambda: block(hutch_fn(xs, keys)),
        },
        repeats,
    )
    print(
        f"log p of the {n_points} points, median (best) ms: exact {med['exact'].ms()}, "
        f"hutchinson {med['hutchinson'].ms()} (compile {exact_c:.2f} s / {hutch_c:.2f} s)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--overhead-repeats", type=int, default=2000)
    args = parser.parse_args()
    print(
        "jax", jax.__version__, "diffrax", diffrax.__version__, "devices", jax.devices()
    )
    field = make_field(jax.random.PRNGKey(0))
    y0 = jax.random.normal(jax.random.PRNGKey(1), (BATCH, DIM))
    # The overhead ratio is a few percent of a 0.2 ms call: it takes many more
    # calls than the other sections for the medians to settle on this machine.
    ours = bench_overhead(field, y0, args.overhead_repeats)
    bench_torchdiffeq(field, y0, *ours, args.repeats)
    bench_cnf(args.repeats)


if __name__ == "__main__":
    main()
