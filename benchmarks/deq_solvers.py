"""DEQ forward solvers: function evaluations, fixed-point agreement, overhead.

Problem (issue 3): the tanh cell z -> tanh(W z + x), d = 256, a batch of 128
inputs x ~ 0.1 N(0, I) solved per sample under `jax.vmap`, float32. Five W:

- `symmetric`: W = 0.99 S / ||S||_2, S = A + A^T with A Gaussian: the normal W
  with ||W||_2 = 0.99 (real spectrum filling [-0.99, 0.99]);
- `nonnormal`: W = c Q T Q^T with T upper triangular, eigenvalues uniform in
  [0, 1), strictly upper part N(0, 1/d), scaled to ||W||_2 = 0.99 (spectral
  radius 0.53: plain iteration is fast, and no Krylov-type method can need fewer
  than 0.59x its evaluations);
- `nonnormal-slow`: the same with the strictly upper part 0.3 N(0, 1/d): still
  non-normal, spectral radius 0.89, so plain iteration is slow;
- `orthogonal`: W = 0.99 Q, Q a random orthogonal matrix (normal, spectrum on a
  circle of radius 0.99: a hard case for every Krylov-type method);
- `gaussian`: W = 0.99 G / ||G||_2, G with N(0, 1) entries (non-normal, spectrum
  a disc: also hard).

(a) Function evaluations to reach a relative residual ||f(z) - z|| / ||f(z)|| of
1e-5, counted per sample from the residual of every evaluated iterate (the same
harness for every solver, independent of its own stopping rule); "max" is what a
vmapped loop pays, since every lane runs until the slowest is done. Also: the
distance of each solver's answer at that point (and of f of it) to a float64
reference, the evaluations until the iterate is within 1e-5 of that reference,
and a lower bound for any Krylov-type method (GMRES on the linearisation at the
fixed point, in float64).

(c) Overhead: the time per function evaluation inside the solver's loop divided by
the time of one bare evaluation of the (vmapped) cell inside a compiled loop, on
the symmetric W. Fixed iteration counts (tolerance zero), and whole solves to
rtol 1e-5 counted by their steps; medians of interleaved rounds, compile time
apart. "floor" lines: loops that do only part of an Anderson step (see `floors`).

Run: `python benchmarks/deq_solvers.py` (a few minutes on 2 CPU cores).
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

import unimplicit as ui


D, BATCH, TARGET = 256, 128, 1e-5


def matrices(key):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    q, _ = jnp.linalg.qr(jax.random.normal(k1, (D, D)))
    eig = jax.random.uniform(k2, (D,))
    upper = jnp.triu(jax.random.normal(k3, (D, D)) / jnp.sqrt(D), 1)
    nonnormal = q @ (jnp.diag(eig) + upper) @ q.T
    slow = q @ (jnp.diag(eig) + 0.3 * upper) @ q.T
    gauss = jax.random.normal(k4, (D, D))
    sym = jax.random.normal(k5, (D, D))
    sym = sym + sym.T
    return {
        "symmetric": 0.99 * sym / jnp.linalg.norm(sym, 2),
        "nonnormal": 0.99 * nonnormal / jnp.linalg.norm(nonnormal, 2),
        "nonnormal-slow": 0.99 * slow / jnp.linalg.norm(slow, 2),
        "orthogonal": 0.99 * q,
        "gaussian": 0.99 * gauss / jnp.linalg.norm(gauss, 2),
    }


def solvers():
    return {
        "FixedPointIteration": (optx.FixedPointIteration(0.0, 0.0), False),
        "Anderson(m=5)": (ui.Anderson(0.0, 0.0), False),
        "Broyden(memory=10)": (ui.Broyden(0.0, 0.0), True),
    }


def trace(solver, root, w, xs, steps):
    """Relative residual of every evaluated iterate, and the iterates, per sample."""

    def cell(z, x):
        return jnp.tanh(w @ z + x)

    def fn(z, x):
        return (cell(z, x) - z if root else cell(z, x)), None

    def one(x):
        y0 = jnp.zeros(D, xs.dtype)
        struct = jax.ShapeDtypeStruct((D,), xs.dtype)
        state = solver.init(fn, y0, x, {}, struct, None, frozenset())

        def body(carry, _):
            y, state = carry
            fy = cell(y, x)
            rel = jnp.linalg.norm(fy - y) / jnp.linalg.norm(fy)
            new_y, state, _ = solver.step(fn, y, x, {}, state, frozenset())
            return (new_y, state), (rel, y)

        _, (rels, ys) = jax.lax.scan(body, (y0, state), None, length=steps)
        return rels, ys

    return jax.jit(jax.vmap(one))(xs)


def reference(w, xs):
    w64, x64 = np.asarray(w, np.float64), np.asarray(xs, np.float64)
    with jax.enable_x64(True):
        w64, x64 = jnp.asarray(w64), jnp.asarray(x64)

        @jax.jit
        @jax.vmap
        def solve(x):
            fn = lambda z, x: jnp.tanh(w64 @ z + x)
            sol = optx.fixed_point(
                fn, ui.Anderson(1e-13, 1e-13), jnp.zeros(D), x, max_steps=5000
            )
            # Converged in float64 (the default `throw=True` raises otherwise).
            return sol.value

        return np.asarray(solve(x64))


def sweep(ws, xs, steps):
    """Anderson's evaluations (max over the batch) for a grid of its parameters."""
    grid = [(m, 1.0) for m in (3, 5, 8, 10, 16)] + [(m, 0.9) for m in (5, 8, 10)]
    grid += [(5, 1.0, 1e-6)]
    print("(a') Anderson's evaluations to relative residual 1e-05, by parameters")
    print(f"{'W':>14} " + " ".join(f"{f'm={g[0]},b={g[1]}':>9}" for g in grid[:-1]))
    for wname, w in ws.items():
        counts = []
        for params in grid[:-1]:
            solver = ui.Anderson(0.0, 0.0, history=params[0], mixing=params[1])
            rels, _ = trace(solver, False, w, xs, steps)
            hit = np.asarray(rels) <= TARGET
            counts.append(int(hit.argmax(axis=1).max()) + 1 if hit.any(1).all() else -1)
        solver = ui.Anderson(0.0, 0.0, ridge=1e-6)
        rels, _ = trace(solver, False, w, xs, steps)
        hit = np.asarray(rels) <= TARGET
        same = int(hit.argmax(axis=1).max()) + 1 == counts[1]
        line = " ".join(f"{c:>9}" for c in counts)
        print(f"{wname:>14} {line}   ridge 1e-6 same as 1e-4: {same}")


def krylov_bound(w, xs, ref, samples=8):
    """Fewest evaluations any Krylov method (Anderson, Broyden, GMRES) can need.

    GMRES, run in float64 on the linearisation at the fixed point, `(I - J) e = r0`
    with `J = diag(1 - z*^2) W` and `r0 = f(0)`: the number of products until the
    optimal residual is below `TARGET ||z*||`, plus the evaluation of `f(0)`. Also
    returns `||(I - J)^-1||_2`, which turns a residual into an error bound.
    """
    w = np.asarray(w, np.float64)
    counts, amplification = [], []
    for b in range(samples):
        z = ref[b]
        jac = (1 - z**2)[:, None] * w
        a = np.eye(D) - jac
        r0 = np.tanh(np.asarray(xs[b], np.float64))
        goal = TARGET * np.linalg.norm(z) / np.linalg.norm(r0)
        basis = [r0 / np.linalg.norm(r0)]
        hess = np.zeros((D + 1, D))
        k = 0
        for k in range(1, D + 1):
            v = a @ basis[-1]
            for i, q in enumerate(basis):  # modified Gram-Schmidt (Arnoldi)
                hess[i, k - 1] = q @ v
                v = v - hess[i, k - 1] * q
            hess[k, k - 1] = np.linalg.norm(v)
            basis.append(v / hess[k, k - 1])
            e1 = np.zeros(k + 1)
            e1[0] = 1.0
            h = hess[: k + 1, :k]
            coef = np.linalg.lstsq(h, e1, rcond=None)[0]
            if np.linalg.norm(e1 - h @ coef) <= goal:
                break
        counts.append(k + 1)
        amplification.append(np.linalg.norm(np.linalg.inv(a), 2))
    return max(counts), max(amplification)


def fevals(ws, xs, steps):
    print(f"(a) function evaluations to relative residual {TARGET:g} (batch {BATCH})")
    header = f"{'W':>14} {'solver':>20} {'max':>6} {'mean':>7} {'vs FPI':>7} "
    print(header + f"{'conv':>5} {'|z-z64|':>8} {'|f(z)-z64|':>10} {'to |z-z64|':>11}")
    for wname, w in ws.items():
        ref = reference(w, xs)
        base = None
        answers = {}
        for sname, (solver, root) in solvers().items():
            rels, ys = trace(solver, root, w, xs, steps)
            rels, ys = np.asarray(rels), np.asarray(ys)
            hit = rels <= TARGET
            ok = hit.any(axis=1)
            first = np.where(ok, hit.argmax(axis=1), steps - 1)
            count = first + 1
            z = ys[np.arange(BATCH), first]
            fz = np.tanh(z @ np.asarray(w).T + np.asarray(xs))
            answers[sname] = z
            scale = np.linalg.norm(ref, axis=1)
            err = np.linalg.norm(z - ref, axis=1) / scale
            ferr = np.linalg.norm(fz - ref, axis=1) / scale
            # And the evaluations until the iterate is within TARGET of the float64
            # answer (what "the same fixed point to 1e-5" asks): -1 if never.
            dist = np.linalg.norm(ys - ref[:, None], axis=2) / scale[:, None]
            close = dist <= TARGET
            near = (
                int(close.argmax(axis=1).max()) + 1 if close.any(axis=1).all() else -1
            )
            worst = int(count.max()) if ok.all() else -1
            base = worst if base is None else base
            ratio = worst / base if worst > 0 and base > 0 else float("nan")
            print(
                f"{wname:>14} {sname:>20} {worst:>6} {count.mean():>7.1f} "
                f"{ratio:>7.2f} {ok.mean():>5.2f} {err.max():>8.1e} {ferr.max():>10.1e} "
                f"{near:>11}"
            )
        bound, amplification = krylov_bound(w, xs, ref)
        aa, br = answers["Anderson(m=5)"], answers["Broyden(memory=10)"]
        apart = np.linalg.norm(aa - br, axis=1) / np.linalg.norm(ref, axis=1)
        print(
            f"{wname:>14} {'Krylov lower bound':>20} {bound:>6} {'':>7} "
            f"{bound / base:>7.2f}   ||(I-J)^-1||_2 = {amplification:.1f}, "
            f"|z_Anderson - z_Broyden| = {apart.max():.1e}"
        )


def compiled(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def interleaved(fns, args, repeats):
    """Median times, each function once per round so load drifts hit all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def floors(cell, iters, m=5):
    """Lower bounds for Anderson's step: loops doing only part of its work.

    Each adds to the cell evaluation what any Anderson step with a history of `m`
    does, in the cheapest form found for XLA's CPU backend: the max-norm convergence
    test (`|g| < atol + rtol |f|`, a boolean reduction); then writing `f` and `g`
    into the two ring buffers; then the Gram row `G g` and the mixing `alpha @ F`
    (two batched dots), with a softmax of the row standing in for the small solve.
    """

    def loop(level):
        def one(x):
            def body(k, carry):
                y, f_hist, g_hist, row, ok = carry
                f = cell(y, x)
                g = f - y
                ok = jnp.all(jnp.abs(g) < 1e-7 + 1e-5 * jnp.abs(f))
                if level == 0:
                    return f, f_hist, g_hist, row, ok
                f_hist = jax.lax.dynamic_update_index_in_dim(f_hist, f, k % m, 0)
                g_hist = jax.lax.dynamic_update_index_in_dim(g_hist, g, k % m, 0)
                if level == 1:
                    return f, f_hist, g_hist, row, ok
                row = g_hist @ g
                return jax.nn.softmax(row) @ f_hist, f_hist, g_hist, row, ok

            zeros = jnp.zeros((m, D), x.dtype)
            init = (jnp.zeros(D, x.dtype), zeros, zeros, jnp.zeros(m), False)
            return jax.lax.fori_loop(0, iters, body, init)

        return jax.jit(jax.vmap(one))

    return {
        "floor: cell + convergence test": loop(0),
        "floor: + two history writes": loop(1),
        "floor: + Gram row + mixing, no solve": loop(2),
    }


def overhead(ws, xs, iters, repeats):
    print(f"\n(c) time per function evaluation, batch {BATCH}")
    w = ws["symmetric"]

    def cell(z, x):
        return jnp.tanh(w @ z + x)

    @jax.jit
    def bare(xs):
        body = lambda _, z: jax.vmap(cell)(z, xs)
        return jax.lax.fori_loop(0, iters, body, jnp.zeros_like(xs))

    def via_solve(solver, max_steps):
        @jax.jit
        def run(xs):
            def one(x):
                sol = ui.solve(
                    ui.FixedPoint(cell),
                    solver,
                    x,
                    y0=jnp.zeros(D, xs.dtype),
                    max_steps=max_steps,
                    throw=False,
                )
                return sol.value, sol.stats["num_steps"]

            return jax.vmap(one)(xs)

        return run

    def steps_only(solver, root):
        # The solver's own step in a plain loop: its bookkeeping without the
        # per-sample freezing that a vmapped while loop adds. The whole state is
        # returned, so that nothing of the step is dead code.
        fn = (
            (lambda z, x: (cell(z, x) - z, None))
            if root
            else (lambda z, x: (cell(z, x), None))
        )

        @jax.jit
        def run(xs):
            def one(x):
                y0 = jnp.zeros(D, xs.dtype)
                struct = jax.ShapeDtypeStruct((D,), xs.dtype)
                state = solver.init(fn, y0, x, {}, struct, None, frozenset())

                def body(_, c):
                    y, s, _ = solver.step(fn, c[0], x, {}, c[1], frozenset())
                    return y, s

                return jax.lax.fori_loop(0, iters, body, (y0, state))

            return jax.vmap(one)(xs)

        return run

    # Fixed iteration counts (tolerance zero), and whole solves to a relative
    # residual of about 1e-5 (rtol 1e-5 on the max norm), counted by their steps.
    fixed = {"bare cell (fori_loop)": bare}
    fixed.update(floors(cell, iters))
    real = {}
    for sname, (solver, root) in solvers().items():
        fixed[f"{sname} in ui.solve"] = via_solve(solver, iters)
        fixed[f"{sname} steps (fori_loop)"] = steps_only(solver, root)
        tol = eqx.tree_at(lambda s: (s.rtol, s.atol), solver, (1e-5, 1e-7))
        real[f"{sname} in ui.solve, to 1e-5"] = via_solve(tol, 3000)
    compile_s = {name: compiled(fn, xs) for name, fn in {**fixed, **real}.items()}
    medians = interleaved({**fixed, **real}, (xs,), repeats)
    per_bare = medians["bare cell (fori_loop)"] / iters
    print(f"{'':>40} {'evals':>6} {'us/eval':>8} {'ratio':>6} {'compile s':>9}")
    for name in fixed:
        per = medians[name] / iters
        print(
            f"{name:>40} {iters:>6} {per * 1e6:>8.0f} {per / per_bare:>6.2f} "
            f"{compile_s[name]:>9.2f}"
        )
    for name, fn in real.items():
        evals = int(np.max(fn(xs)[1]))
        per = medians[name] / evals
        print(
            f"{name:>40} {evals:>6} {per * 1e6:>8.0f} {per / per_bare:>6.2f} "
            f"{compile_s[name]:>9.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--part", choices=("all", "fevals", "sweep", "overhead"), default="all"
    )
    args = parser.parse_args()
    key = jax.random.PRNGKey(args.seed)
    ws = matrices(key)
    xs = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (BATCH, D))
    if args.part in ("all", "fevals"):
        fevals(ws, xs, args.steps)
    if args.part == "sweep":
        sweep(ws, xs, args.steps)
    if args.part in ("all", "overhead"):
        overhead(ws, xs, args.iters, args.repeats)
