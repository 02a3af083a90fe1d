"""GPU check: the per-call paths run on an accelerator, timed next to competitors.

Run on a machine with a CUDA GPU, JAX with CUDA and PyTorch with CUDA:
`python benchmarks/gpu_check.py`. Three problems, each forward + backward, after
compilation (median of repeats), each side on the same GPU:

1. DEQ training step: tanh cell d=256, batch 128, W = 0.99 x orthogonal, input
   scale 0.1, relative residual 1e-5. unimplicit (Anderson + implicit gradient)
   against torchdeq 0.1.0 (Anderson forward, fixed-point-iteration IFT backward).
2. Batched dense QP, n=20, 20 inequalities, 5 equalities, batch 64: unimplicit's
   `QuadraticProgram` (interior point + implicit gradient) against qpax.
3. Neural ODE gradient, batch 64, 4 dims, MLP width 32, Tsit5/dopri5 at
   rtol=atol=1e-6: unimplicit `NeuralODE` against torchdiffeq.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import unimplicit as ui


# Falls back to the CPU so that the script can be dry-run anywhere.
DEVICE = "cpu"


def sync(torch):
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats=20):
    start = time.perf_counter()
    fn()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), compile_s


def deq(torch):
    d, batch = 256, 128
    rng = np.random.default_rng(0)
    w = 0.99 * np.linalg.qr(rng.normal(size=(d, d)))[0]
    x = 0.1 * rng.normal(size=(batch, d))

    class Cell(eqx.Module):
        w: jax.Array

        def __call__(self, z, x):
            return jnp.tanh(self.w @ z + x)

    model = ui.DEQ(
        Cell(jnp.asarray(w, jnp.float32)),
        backend=ui.Anderson(rtol=1e-5, atol=1e-8, history=5),
        max_steps=400,
        throw=False,
    )
    xj = jnp.asarray(x, jnp.float32)
    step = eqx.filter_jit(
        eqx.filter_value_and_grad(lambda m, x: jnp.mean(jax.vmap(m)(x) ** 2))
    )
    ours, ours_c = median_time(lambda: jax.block_until_ready(step(model, xj)))

    from torchdeq import get_deq

    wt = torch.tensor(w, dtype=torch.float32, device=DEVICE, requires_grad=True)
    xt = torch.tensor(x, dtype=torch.float32, device=DEVICE)
    solver = get_deq(
        f_solver="anderson",
        f_max_iter=400,
        f_tol=1e-5,
        f_stop_mode="rel",
        b_solver="fixed_point_iter",
        b_max_iter=400,
        b_tol=1e-5,
        b_stop_mode="rel",
        ift=True,
    )

    def torch_step():
        f = lambda z: torch.tanh(z @ wt.T + xt)
        z, _ = solver(f, torch.zeros_like(xt))
        loss = (z[-1] ** 2).mean()
        loss.backward()
        sync(torch)

    theirs, _ = median_time(torch_step)
    return "DEQ step (torchdeq anderson + IFT)", ours, theirs, ours_c


def qp(torch):
    import qpax

    n, m, p, batch = 20, 20, 5, 64
    rng = np.random.default_rng(0)
    L = rng.normal(size=(batch, n, n))
    Q = L @ L.transpose(0, 2, 1) / n + np.eye(n)
    q = rng.normal(size=(batch, n))
    A = rng.normal(size=(batch, p, n))
    x0 = rng.normal(size=(batch, n))
    b = np.einsum("bij,bj->bi", A, x0)
    G = rng.normal(size=(batch, m, n))
    h = np.einsum("bij,bj->bi", G, x0) + rng.uniform(0.1, 1.0, size=(batch, m))
    Q, q, A, b, G, h = (jnp.asarray(v, jnp.float32) for v in (Q, q, A, b, G, h))

    def ours_loss(q):
        def one(Q, q, A, b, G, h):
            qp = ui.QuadraticProgram(Q, q, A=A, b=b, G=G, h=h)
            return qp.solve(throw=False).value.x

        return jnp.sum(jax.vmap(one)(Q, q, A, b, G, h) ** 2)

    def qpax_loss(q):
        one = lambda Q, q, A, b, G, h: qpax.solve_qp_primal(Q, q, A, b, G, h)
        return jnp.sum(jax.vmap(one)(Q, q, A, b, G, h) ** 2)

    g_ours = jax.jit(jax.grad(ours_loss))
    g_qpax = jax.jit(jax.grad(qpax_loss))
    ours, ours_c = median_time(lambda: jax.block_until_ready(g_ours(q)))
    theirs, _ = median_time(lambda: jax.block_until_ready(g_qpax(q)))
    codes = jax.jit(
        jax.vmap(
            lambda *a: (
                ui.QuadraticProgram(*a[:2], A=a[2], b=a[3], G=a[4], h=a[5])
                .solve(throw=False)
                .result._value
            )
        )
    )(Q, q, A, b, G, h)
    solved = int(jnp.sum(codes == 0))
    finite = bool(jnp.all(jnp.isfinite(g_qpax(q))))
    return (
        f"batched QP f32 ({solved}/{batch} solved; qpax grads finite: {finite})",
        ours,
        theirs,
        ours_c,
    )


def ode(torch):
    import diffrax
    import torchdiffeq

    batch, dim, width = 64, 4, 32
    key = jax.random.PRNGKey(0)
    mlp = eqx.nn.MLP(dim, dim, width, 2, activation=jnp.tanh, key=key)
    y0 = jax.random.normal(jax.random.PRNGKey(1), (batch, dim))
    node = ui.NeuralODE(
        # The whole batch shares one adaptive step size, as in torchdiffeq.
        lambda t, y, args: jax.vmap(args)(y),
        0.0,
        1.0,
        backend=ui.Diffrax(
            diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
        ),
    )

    def loss(mlp):
        return jnp.mean(node(y0, mlp) ** 2)

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    ours, ours_c = median_time(lambda: jax.block_until_ready(grad(mlp)))

    net = torch.nn.Sequential(
        torch.nn.Linear(dim, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, dim),
    ).to(DEVICE)
    with torch.no_grad():  # the same initial weights on both sides
        for layer, lin in zip(net[::2], mlp.layers):
            layer.weight.copy_(torch.tensor(np.asarray(lin.weight)))
            layer.bias.copy_(torch.tensor(np.asarray(lin.bias)))
    yt = torch.tensor(np.asarray(y0), device=DEVICE)
    ts = torch.tensor([0.0, 1.0], device=DEVICE)

    def torch_step():
        out = torchdiffeq.odeint(
            lambda t, y: net(y), yt, ts, rtol=1e-6, atol=1e-6, method="dopri5"
        )
        (out[-1] ** 2).mean().backward()
        sync(torch)

    theirs, _ = median_time(torch_step)
    return "neural ODE gradient (torchdiffeq dopri5)", ours, theirs, ours_c


def main():
    import torch

    global DEVICE
    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__)
    print(
        f"{'problem':<52}{'ours ms':>9}{'theirs ms':>11}{'ratio':>7}{'compile s':>11}"
    )
    for check in (deq, qp, ode):
        try:
            name, ours, theirs, compile_s = check(torch)
        except Exception as e:  # report and go on: one failure should not hide others
            print(f"{check.__name__}: FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        print(
            f"{name:<52}{ours * 1e3:>9.2f}{theirs * 1e3:>11.2f}"
            f"{ours / theirs:>7.2f}{compile_s:>11.1f}"
        )


if __name__ == "__main__":
    main()
