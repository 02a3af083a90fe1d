"""Batched dense QP layers, forward + backward: unimplicit vs qpax vs cvxpylayers.

    python benchmarks/bench_qp.py [--sizes small,large] [--reps 9] [--cvx-reps 3] [--split]
    python benchmarks/bench_qp.py --float32 [--sizes small] [--seeds 0,1,2]

The problem, identical for every library (float64, CPU):

    min_x 1/2 |F x|^2 + q^T x   s.t.   A x = b,  G x <= h,

with all of F, q, A, b, G, h batched and differentiated; the loss is
`sum(w * x)` for a fixed random `w`. Problems are feasible by construction
(`h = G x0 + margin`, `b = A x0`) and strongly convex (`F = I + N / sqrt(n)`).
Each library is timed on `value_and_grad` of the loss after compilation
(cvxpylayers' default diffcp backend cannot be jitted, so it runs eagerly), in
interleaved rounds so that the shared machine's load hits every library alike;
medians are reported. Accuracy is the largest error in `x` against Clarabel at
tight tolerances on the first few samples.

`--float32` instead solves the same problems in float32 at the default (float32)
tolerance (or `--f32-tol`) and reports how many solved and the largest error in `x` against float64
solves at the same tolerance and at 1e-12 (no timing).
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import cvxpy as cp  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import qpax  # noqa: E402
from cvxpylayers.jax import CvxpyLayer  # noqa: E402

import unimplicit as ui  # noqa: E402


SIZES = {"small": (64, 20, 20, 5), "large": (128, 128, 128, 0)}


def problems(batch, n, m, p, seed=0):
    rng = np.random.default_rng(seed)
    F = np.eye(n) + rng.standard_normal((batch, n, n)) / np.sqrt(n)
    q = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, m, n))
    A = rng.standard_normal((batch, p, n))
    x0 = rng.standard_normal((batch, n))
    h = np.einsum("bmn,bn->bm", G, x0) + rng.uniform(0.1, 1.0, (batch, m))
    b = np.einsum("bpn,bn->bp", A, x0)
    w = rng.standard_normal((batch, n))
    return tuple(jnp.asarray(a) for a in (F, q, A, b, G, h)), jnp.asarray(w)


def ours(tol):
    def x_of(F, q, A, b, G, h):
        qp = ui.QuadraticProgram(F.T @ F, q, A, b, G, h)
        return qp.solve(ui.InteriorPoint(tol=tol), throw=False).value.x

    return x_of


def qpax_x(F, q, A, b, G, h):
    return qpax.solve_qp_primal(F.T @ F, q, A, b, G, h)


def jitted(x_of, w):
    def loss(*args):
        return jnp.sum(w * jax.vmap(x_of)(*args))

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6))))


def cvxpylayers_fn(n, m, p, w):
    x = cp.Variable(n)
    F, q = cp.Parameter((n, n)), cp.Parameter(n)
    A, b = cp.Parameter((p, n)), cp.Parameter(p)
    G, h = cp.Parameter((m, n)), cp.Parameter(m)
    constraints: list = [G @ x <= h] + ([A @ x == b] if p else [])
    objective = cp.Minimize(0.5 * cp.sum_squares(F @ x) + q @ x)
    params = [F, q, A, b, G, h] if p else [F, q, G, h]
    layer = CvxpyLayer(cp.Problem(objective, constraints), params, [x])

    def x_of(F, q, A, b, G, h):
        return layer(*((F, q, A, b, G, h) if p else (F, q, G, h)))[0]

    def loss(*args):
        return jnp.sum(w[: args[0].shape[0]] * x_of(*args))

    # Eager: diffcp runs on the host through callbacks.
    return jax.value_and_grad(loss, argnums=tuple(range(6))), x_of


def reference_x(args, k):
    F, q, A, b, G, h = (np.asarray(a) for a in args)
    out = []
    for i in range(k):
        x = cp.Variable(q.shape[1])
        cons: list = [G[i] @ x <= h[i]] + ([A[i] @ x == b[i]] if A.shape[1] else [])
        obj = cp.Minimize(0.5 * cp.sum_squares(F[i] @ x) + q[i] @ x)
        problem = cp.Problem(obj, cons)
        # (Clarabel occasionally fails at 1e-12 on the large size; 1e-10 then.)
        for t in (1e-12, 1e-10):
            try:
                problem.solve(
                    solver=cp.CLARABEL, tol_gap_abs=t, tol_gap_rel=t, tol_feas=t
                )
            except cp.SolverError:
                continue
            if problem.status == cp.OPTIMAL:
                break
        else:
            raise RuntimeError(f"Clarabel could not solve reference sample {i}")
        out.append(x.value)
    return np.stack(out)


def block(out):
    return jax.block_until_ready(out)


def forward_only(x_of):
    return jax.jit(jax.vmap(x_of))


def run(size, reps, cvx_reps, check, split=False):
    batch, n, m, p = SIZES[size]
    args, w = problems(batch, n, m, p)
    cvx_vg, cvx_x = cvxpylayers_fn(n, m, p, w)
    methods = {
        "unimplicit (tol 1e-8)": jitted(ours(1e-8), w),
        "unimplicit (tol 1e-7)": jitted(ours(1e-7), w),
        "unimplicit (tol 1e-6)": jitted(ours(1e-6), w),
        "qpax (default tol 1e-5)": jitted(qpax_x, w),
        "cvxpylayers (diffcp)": cvx_vg,
    }
    if split:
        # Forward alone (the backward is the difference to the rows above).
        methods["unimplicit (tol 1e-7) fwd only"] = forward_only(ours(1e-7))
        methods["qpax fwd only"] = forward_only(qpax_x)
    print(f"\n== {size}: batch {batch}, n={n}, {m} inequalities, {p} equalities ==")
    compile_s, times = {}, {k: [] for k in methods}
    for name, fn in methods.items():
        t = time.perf_counter()
        block(fn(*args))
        compile_s[name] = time.perf_counter() - t
    for r in range(reps):
        for name, fn in methods.items():
            if name.startswith("cvxpylayers") and r >= cvx_reps:
                continue
            t = time.perf_counter()
            block(fn(*args))
            times[name].append(time.perf_counter() - t)
    ref = reference_x(args, check)
    x_fns = {
        "unimplicit (tol 1e-8)": ours(1e-8),
        "unimplicit (tol 1e-7)": ours(1e-7),
        "unimplicit (tol 1e-6)": ours(1e-6),
        "qpax (default tol 1e-5)": qpax_x,
        "cvxpylayers (diffcp)": None,
    }
    sub = tuple(a[:check] for a in args)
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    print(
        f"{'method':30s} {'fwd+bwd ms':>11s} {'first call s':>13s} {'max |x-x*|':>11s}"
    )
    for name in methods:
        if name in x_fns:
            fn = x_fns[name]
            x = cvx_x(*sub) if fn is None else jax.vmap(fn)(*sub)
            err = float(np.abs(np.asarray(x) - ref).max())
            err_s = f"{err:11.1e}"
        else:
            err_s = f"{'-':>11s}"
        print(f"{name:30s} {med[name]:11.2f} {compile_s[name]:13.2f} {err_s}")
    cvx = med["cvxpylayers (diffcp)"]
    for name in [k for k in methods if k.startswith("unimplicit")]:
        if name.endswith("fwd only"):
            continue
        print(
            f"{name}: {cvx / med[name]:.1f}x faster than cvxpylayers (target >= 20); "
            f"time ratio to qpax {med[name] / med['qpax (default tol 1e-5)']:.2f} "
            "(target <= 1.0)"
        )


def float32_check(size, seed, tol=None):
    batch, n, m, p = SIZES[size]
    args, _ = problems(batch, n, m, p, seed=seed)

    def run(tol):
        def one(F, q, A, b, G, h):
            qp = ui.QuadraticProgram(F.T @ F, q, A, b, G, h)
            sol = qp.solve(ui.InteriorPoint(tol=tol), throw=False)
            return sol.value.x, sol.result == ui.RESULTS.successful, sol.stats

        return jax.jit(jax.vmap(one))

    x32, ok32, st32 = run(tol)(*(a.astype(jnp.float32) for a in args))
    tol64 = 1e-4 if tol is None else tol
    x64, ok64, _ = run(tol64)(*args)
    ref, ok_ref, _ = run(1e-12)(*args)
    x32 = np.asarray(x32, np.float64)
    same = float(np.abs(x32 - np.asarray(x64)).max())
    tight = float(np.abs(x32 - np.asarray(ref)).max())
    print(
        f"{size} seed {seed}: float32 solved {int(ok32.sum())}/{batch} (steps max "
        f"{int(st32['num_steps'].max())}); float64 at {tol64:g} / 1e-12 solved "
        f"{int(ok64.sum())} / {int(ok_ref.sum())}; max |x32 - x64({tol64:g})| = "
        f"{same:.1e}, max |x32 - x64(1e-12)| = {tight:.1e}, max |x64({tol64:g}) - "
        f"x64(1e-12)| = {float(np.abs(np.asarray(x64) - np.asarray(ref)).max()):.1e}"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--cvx-reps", type=int, default=3)
    parser.add_argument("--check", type=int, default=16)
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--f32-tol", type=float, default=None)
    parser.add_argument("--split", action="store_true", help="also time forwards")
    ns = parser.parse_args()
    if ns.float32:
        for size in ns.sizes.split(","):
            for seed in ns.seeds.split(","):
                float32_check(size, int(seed), ns.f32_tol)
        return
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, float64")
    for size in ns.sizes.split(","):
        run(size, ns.reps, ns.cvx_reps, ns.check, ns.split)


if __name__ == "__main__":
    main()
