"""A DEQ training step (forward solve + implicit backward) against torchdeq 0.1.0.

Problem (issue 3): the tanh cell z -> tanh(W z + x), d = 256, batch 128, inputs
x ~ 0.1 N(0, I), float32 on CPU, with the W of `deq_solvers.py` (`symmetric`:
random symmetric with ||W||_2 = 0.99, `nonnormal`, `orthogonal`: 0.99 Q, ...;
`--problems` picks them). The loss is mean_b c . z*_b for a fixed vector c,
differentiated with respect to W.

torchdeq: `get_deq(f_solver=s, b_solver=s, ift=True)` for s in `anderson` and
`fixed_point_iter` (backward solver = forward solver), with 1 and the default
number of torch threads, forward and backward stopping at a relative residual
||f(z) - z|| / ||f(z)|| < 1e-5 for every sample (`stop_mode="rel"`), max_iter
large enough never to bind.

unimplicit: `jax.vmap` of `solve(FixedPoint(cell), backend)` with
`ImplicitAdjoint`, jitted, for backend `Anderson` and `FixedPointIteration`. With
`rtol=0, atol=1e-5 * min_b ||f(z*_b)||, norm=two_norm` they stop once
||f(z) - z||_2 < 1e-5 min_b ||f(z*_b)||, which implies torchdeq's per-sample rule:
at least as strict. The backward linear solve is run with the library default
for fixed points (`NeumannSolver(rtol=1e-4, atol=1e-8, history=5)` in float32:
Anderson-accelerated, elementwise test, looser than torchdeq's backward), with
`lineax.GMRES` (rtol = atol = 1e-4, restart 40; the default before) and with the
Neumann solver at torchdeq's rule, plain and Anderson-accelerated (the same
conversion as the forward, with min_b ||u_b|| from a reference solve).
`--backward-study` compares candidates for DEQ's default backward instead.

Timings: medians of interleaved rounds (every method once per round) after a
warm-up round, both libraries in this process, torch with 1 thread and with its
default; JAX compile time reported separately. Achieved relative
residuals (max over the batch) are printed for both sides.

Run: `python benchmarks/deq_vs_torchdeq.py` (about ten minutes on 2 CPU cores,
most of it torch with 2 threads; `--threads 1` to skip that).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import torch
from deq_solvers import matrices  # the same W as the function-evaluation study
from torchdeq import get_deq

import unimplicit as ui


D, BATCH, TOL = 256, 128, 1e-5


def problem(seed, name):
    key = jax.random.PRNGKey(seed)
    w = matrices(key)[name]
    xs = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (BATCH, D))
    c = jax.random.normal(jax.random.fold_in(key, 2), (D,))
    return w, xs, c


def torchdeq_step(w, xs, c, solver, threads):
    w_t = torch.tensor(np.asarray(w), requires_grad=True)
    x_t = torch.tensor(np.asarray(xs))
    c_t = torch.tensor(np.asarray(c))
    deq = get_deq(
        f_solver=solver,
        b_solver=solver,
        f_max_iter=3000,
        b_max_iter=3000,
        f_tol=TOL,
        b_tol=TOL,
        f_stop_mode="rel",
        b_stop_mode="rel",
        ift=True,
    )
    out = {}

    def step():
        torch.set_num_threads(threads)
        w_t.grad = None
        zs, info = deq(lambda z: torch.tanh(z @ w_t.T + x_t), torch.zeros(BATCH, D))
        loss = (zs[-1] @ c_t).mean()
        loss.backward()
        assert w_t.grad is not None
        out.update(loss=float(loss), info=info, grad=w_t.grad.numpy().copy())

    def report():
        info = out["info"]
        steps, rel = int(info["nstep"].max()), float(info["rel_lowest"].max())
        return out["grad"], steps, rel, None

    return step, report


def backward_norm(cell, w, xs, zs, c):
    """min_b ||u_b|| for the backward solutions u_b = w + u_b J_b, by iteration."""

    def one(z, x):
        _, vjp = jax.vjp(lambda z: cell(z, (w, x)), z)
        b = c / BATCH
        u = jax.lax.fori_loop(0, 3000, lambda _, u: b + vjp(u)[0], b)
        return jnp.linalg.norm(u)

    return float(jnp.min(jax.jit(jax.vmap(one))(zs, xs)))


def unimplicit_step(w, xs, c, backend, linear_solver, history=5):
    # `linear_solver`: None (the library default), a Lineax solver, or one of the
    # names below.
    def cell(z, args):
        w, x = args
        return jnp.tanh(w @ z + x)

    # See the module docstring: this makes Anderson's rule imply torchdeq's.
    def reference(x):
        solver = ui.Anderson(1e-4, 1e-6)
        fixed_point = ui.FixedPoint(cell)
        return ui.solve(fixed_point, solver, (w, x), y0=jnp.zeros(D), max_steps=3000)

    ref = jax.vmap(reference)(xs).value
    fnorm = float(jnp.min(jnp.linalg.norm(ref, axis=1)))
    # Stop when ||f(z) - z||_2 < 1e-5 min_b ||f(z_b)||: implies torchdeq's rule.
    atol = TOL * 0.99 * fnorm
    if backend == "anderson":
        solver = ui.Anderson(0.0, atol, history=history, norm=optx.two_norm)
    else:
        solver = optx.FixedPointIteration(0.0, atol, norm=optx.two_norm)
    if linear_solver == "gmres":
        linear_solver = lx.GMRES(1e-4, 1e-4, restart=40, stagnation_iters=40)
    if isinstance(linear_solver, str) and linear_solver.startswith("neumann"):
        # The same for the backward system u = w + u J (w = c / batch per sample):
        # stop once ||u_k+1 - u_k|| < 1e-5 min_b ||u_b||, which implies torchdeq's
        # ||u_k+1 - u_k|| / ||u_k+1|| < 1e-5. min_b ||u_b|| from a reference solve.
        linear_solver = ui.NeumannSolver(
            rtol=0.0,
            atol=TOL * 0.99 * backward_norm(cell, w, xs, ref, c),
            norm=optx.two_norm,
            history=history if linear_solver == "neumann_anderson" else 0,
            max_steps=3000,
        )
    assert not isinstance(linear_solver, str), linear_solver
    adjoint = ui.ImplicitAdjoint(linear_solver)

    def loss(w, xs):
        def one(x):
            sol = ui.solve(
                ui.FixedPoint(cell),
                solver,
                (w, x),
                y0=jnp.zeros(D),
                adjoint=adjoint,
                max_steps=3000,
                throw=False,
            )
            rel = jnp.linalg.norm(
                cell(sol.value, (w, x)) - sol.value
            ) / jnp.linalg.norm(cell(sol.value, (w, x)))
            return sol.value @ c, (sol.stats["num_steps"], rel, sol.result._value)

        vals, aux = jax.vmap(one)(xs)
        return jnp.mean(vals), aux

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    start = time.perf_counter()
    jax.block_until_ready(step(w, xs))
    compile_s = time.perf_counter() - start

    def report():
        (_, (steps, rel, result)), grad = step(w, xs)
        assert int(jnp.max(result)) == 0, "a forward solve failed"
        return np.asarray(grad), int(steps.max()), float(rel.max()), compile_s

    return lambda: jax.block_until_ready(step(w, xs)), report


def interleaved(runs, repeats):
    """Wall times of each `run` over `repeats` rounds, after a warm-up round.

    Every method runs once per round, so that drifts in the machine's load affect
    all methods alike.
    """
    times = {label: [] for label in runs}
    for round_ in range(repeats + 1):
        for label, (run, _) in runs.items():
            start = time.perf_counter()
            run()
            if round_ > 0:
                times[label].append(time.perf_counter() - start)
    return times


CONFIGS = {
    "unimplicit Anderson + IFT (default backward)": ("anderson", None, 5),
    "unimplicit Anderson + IFT (GMRES)": ("anderson", "gmres", 5),
    "unimplicit Anderson + IFT (Neumann)": ("anderson", "neumann", 5),
    "unimplicit Anderson + IFT (Neumann, m=5)": ("anderson", "neumann_anderson", 5),
    "unimplicit Anderson(m=10) + IFT (Neumann, m=10)": (
        "anderson",
        "neumann_anderson",
        10,
    ),
    "unimplicit FixedPointIteration + IFT (default backward)": ("fpi", None, 5),
    "unimplicit FixedPointIteration + IFT (Neumann)": ("fpi", "neumann", 5),
}


def main(repeats, seed, name, thread_counts):
    w, xs, c = problem(seed, name)
    runs = {}
    default_threads = torch.get_num_threads()
    for threads in thread_counts:
        # On a shared 2-core machine torch's spinning worker threads can slow it
        # down many times over: run each setting and count torchdeq's best.
        for solver in ("fixed_point_iter", "anderson"):
            label = f"torchdeq {solver} + IFT ({threads} thr)"
            runs[label] = torchdeq_step(w, xs, c, solver, threads)
    for label, (backend, linear_solver, history) in CONFIGS.items():
        runs[label] = unimplicit_step(w, xs, c, backend, linear_solver, history)

    times = interleaved(runs, repeats)
    torch.set_num_threads(default_threads)

    print(f"\nW = {name}: DEQ training step, d={D}, batch {BATCH}, tolerance {TOL:g}")
    print(f"median of {repeats} interleaved rounds after a warm-up round")
    print(f"{'method':>48} {'ms':>8} {'fwd steps':>9} {'rel res':>9} {'compile s':>9}")
    medians, grads = {}, {}
    for label, (_, report) in runs.items():
        grads[label], steps, rel, compile_s = report()
        medians[label] = float(np.median(times[label]))
        compiled = "-" if compile_s is None else f"{compile_s:.1f}"
        print(
            f"{label:>48} {medians[label] * 1e3:>8.1f} {steps:>9} {rel:>9.1e} "
            f"{compiled:>9}"
        )
    best_torch = min(t for label, t in medians.items() if label.startswith("torch"))
    print(f"best torchdeq: {best_torch * 1e3:.1f} ms")
    ref = grads[f"torchdeq fixed_point_iter + IFT ({thread_counts[0]} thr)"]
    for label, t in medians.items():
        err = np.linalg.norm(grads[label] - ref) / np.linalg.norm(ref)
        print(
            f"{label:>48}: {t / best_torch:5.2f}x best torchdeq, "
            f"gradient rel. diff. to torchdeq fpi {err:.1e}"
        )


def backward_study(repeats, seed, name):
    """Which backward linear solver should DEQ use by default? Anderson forward (as
    in the table above), float32, each backward at its default-like tolerance; the
    gradient compared with a float64 one (Anderson and GMRES at 1e-12)."""
    w, xs, c = problem(seed, name)
    with jax.enable_x64(True):
        w64, xs64, c64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (w, xs, c))

        def loss64(w):
            def one(x):
                sol = ui.solve(
                    ui.FixedPoint(lambda z, a: jnp.tanh(a[0] @ z + a[1])),
                    ui.Anderson(1e-12, 1e-12),
                    (w, x),
                    y0=jnp.zeros(D),
                    max_steps=3000,
                    adjoint=ui.ImplicitAdjoint(
                        lx.GMRES(1e-12, 1e-12, restart=100, stagnation_iters=100)
                    ),
                )
                return sol.value @ c64

            return jnp.mean(jax.vmap(one)(xs64))

        exact = np.asarray(jax.jit(jax.grad(loss64))(w64))
    candidates = {
        "GMRES (1e-4, restart 40; the old default)": lx.GMRES(
            1e-4, 1e-4, restart=40, stagnation_iters=40
        ),
        "the default (NeumannSolver(1e-4, 1e-8, history=5))": None,
        "NeumannSolver(1e-4, 1e-8)": ui.NeumannSolver(1e-4, 1e-8, max_steps=3000),
        "NeumannSolver(1e-4, 1e-8, history=5)": ui.NeumannSolver(
            1e-4, 1e-8, history=5, max_steps=3000
        ),
        "NeumannSolver(1e-4, 1e-6, history=5)": ui.NeumannSolver(
            1e-4, 1e-6, history=5, max_steps=3000
        ),
    }
    runs = {
        label: unimplicit_step(w, xs, c, "anderson", solver)
        for label, solver in candidates.items()
    }
    times = interleaved(runs, repeats)
    print(f"\nW = {name}: backward solvers for DEQ, Anderson forward at 1e-5")
    print(f"{'backward':>40} {'ms':>8} {'grad err vs f64':>16} {'compile s':>9}")
    for label, (_, report) in runs.items():
        grad, _, _, compile_s = report()
        err = np.linalg.norm(grad - exact) / np.linalg.norm(exact)
        ms = np.median(times[label]) * 1e3
        print(f"{label:>40} {ms:>8.1f} {err:>16.1e} {compile_s:>9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", default="symmetric,nonnormal")
    parser.add_argument("--threads", default="1,2", help="torch thread counts")
    parser.add_argument(
        "--backward-study",
        action="store_true",
        help="compare backward linear solvers for DEQ instead (no torch)",
    )
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    for name in args.problems.split(","):
        if args.backward_study:
            backward_study(args.repeats, args.seed, name)
        else:
            main(args.repeats, args.seed, name, counts)
