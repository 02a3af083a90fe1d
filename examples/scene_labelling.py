"""Recurrent convolutional scene labelling and its deep equilibrium limit.

The seed talk opens with Pinheiro & Collobert (2014): a convolutional network `f`
labels every pixel of an image, then is applied again to its own label predictions
plus the image, once, twice, three times; each instance sees a wider context. Here
that network is trained with 1, 2 and 3 instances, and then as a DEQ: the label
maps `z* = f(z*, image)` of infinitely many instances, found by Anderson
acceleration and differentiated by the implicit function theorem.

Data (generated, nothing is downloaded): 16x16 images of a square, a disc or a
cross on a striped or noisy textured background; labels per pixel (background,
square, disc, cross). A pixel's class is ambiguous from a small patch alone (the
shapes share their colour and edges), so context from the neighbours' labels helps.

Prints a table of per-pixel test accuracy and saves a figure of label maps.

Run: `python examples/scene_labelling.py` (a few minutes on CPU); `--smoke` runs a
few steps; `--out DIR` sets where the figure goes (default `examples/out/`).
"""

import argparse
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.colors
import numpy as np
import optax

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


SIZE, CLASSES, HIDDEN = 16, 4, 24
# Lipschitz bound of one instance in its label input (see `Instance.label_scale`).
CONTRACTION = 0.9
# The bound on the DEQ's forward Anderson steps.
MAX_STEPS = 25


def make_data(n, seed):
    """Images (n, 3, SIZE, SIZE) and per-pixel labels (n, SIZE, SIZE)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    labels = np.zeros((n, SIZE, SIZE), np.int32)
    for i in range(n):
        # Background texture: stripes of random angle/frequency, or noise.
        if rng.random() < 0.5:
            angle, freq = rng.uniform(0, np.pi), rng.uniform(0.5, 1.5)
            bg = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
        else:
            bg = rng.normal(size=(SIZE, SIZE))
        colour = rng.uniform(-1, 1, 3)
        image = 0.4 * bg[None] + 0.3 * colour[:, None, None]
        # One shape, with a shape colour shared by all classes (only shape differs).
        shape = rng.integers(1, CLASSES)
        r = rng.integers(3, 6)
        cy, cx = rng.integers(r, SIZE - r, size=2)
        if shape == 1:  # square
            mask = (np.abs(yy - cy) <= r - 1) & (np.abs(xx - cx) <= r - 1)
        elif shape == 2:  # disc
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:  # cross
            mask = ((np.abs(yy - cy) <= 1) & (np.abs(xx - cx) <= r)) | (
                (np.abs(xx - cx) <= 1) & (np.abs(yy - cy) <= r)
            )
        shade = rng.uniform(0.8, 1.2)
        image = np.where(mask[None], shade + 0.1 * rng.normal(size=image.shape), image)
        images[i] = image
        labels[i][mask] = shape
    return images, labels


class Instance(eqx.Module):
    """One network instance: (previous label logits, image) -> label logits.

    Two 3x3 convolutions, so each instance widens the context by 2 pixels; the
    previous labels enter through their own convolution (input injection of the
    image, weight tying across instances)."""

    image_conv: eqx.nn.Conv2d
    label_conv: eqx.nn.Conv2d
    out_conv: eqx.nn.Conv2d

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.image_conv = eqx.nn.Conv2d(3, HIDDEN, 3, padding=1, key=k1)
        self.label_conv = eqx.nn.Conv2d(
            CLASSES, HIDDEN, 3, padding=1, use_bias=False, key=k2
        )
        self.out_conv = eqx.nn.Conv2d(HIDDEN, CLASSES, 3, padding=1, key=k3)

    def contracted(self):
        """This instance with its label path rescaled to make it a contraction in `z`.

        The bound: a zero-padded 3x3 convolution on a 16x16 map is a crop of a
        circular one on 18x18, whose operator norm is the largest singular value of
        its kernel's Fourier transform over the 18x18 frequencies. Every other map
        on the path from `z` to the output (the three tanh's) is 1-Lipschitz, so
        after this rescaling the instance is at most `CONTRACTION`-Lipschitz in `z`:
        the DEQ's fixed point exists and is unique, Anderson converges, and the
        backward system `I - df/dz` is well conditioned. The recurrent models use
        the same rescaled instance, so all four models share one architecture."""
        bound = conv_norm(self.label_conv.weight) * conv_norm(self.out_conv.weight)
        scale = jnp.minimum(1.0, CONTRACTION / bound)
        return eqx.tree_at(
            lambda c: c.label_conv.weight, self, scale * self.label_conv.weight
        )

    def __call__(self, z, image):
        h = jnp.tanh(self.image_conv(image) + self.label_conv(jnp.tanh(z)))
        # A scaled tanh keeps the label logits bounded (and is 1-Lipschitz).
        return 3.0 * jnp.tanh(self.out_conv(h) / 3.0)


def conv_norm(weight):
    """An upper bound on the operator norm of a zero-padded 3x3 convolution."""
    n = SIZE + 2
    freq = jnp.fft.fft2(weight, s=(n, n))  # (out, in, n, n)
    mats = jnp.moveaxis(freq, (0, 1), (-2, -1))  # (n, n, out, in)
    gram = jnp.conj(jnp.swapaxes(mats, -1, -2)) @ mats
    if mats.shape[-2] < mats.shape[-1]:
        gram = mats @ jnp.conj(jnp.swapaxes(mats, -1, -2))
    return jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(gram)))


class Recurrent(eqx.Module):
    """The network applied `instances` times, starting from zero label maps."""

    cell: Instance
    instances: int = eqx.field(static=True)

    def __call__(self, image):
        cell = self.cell.contracted()
        z = jnp.zeros((CLASSES, SIZE, SIZE))
        for _ in range(self.instances):
            z = cell(z, image)
        return z


class Equilibrium(eqx.Module):
    """The infinitely many instances: the DEQ limit `z* = f(z*, image)`."""

    deq: ui.DEQ

    def contracted(self):
        """The DEQ of the contracted instance (see `Instance.contracted`)."""
        return eqx.tree_at(lambda d: d.cell, self.deq, self.deq.cell.contracted())

    def __call__(self, image):
        return self.contracted()(image)


def cross_entropy(model, images, labels):
    logits = jax.vmap(model)(images)  # (B, C, H, W)
    logp = jax.nn.log_softmax(logits, axis=1)
    picked = jnp.take_along_axis(logp, labels[:, None], axis=1)
    return -jnp.mean(picked)


def accuracy(model, images, labels):
    pred = jnp.argmax(jax.jit(jax.vmap(model))(images), axis=1)
    return float(jnp.mean(pred == labels)), np.asarray(pred)


def train(model, data, steps, batch, key):
    images, labels = data
    optim = optax.adam(3e-3)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, xb, yb):
        loss, grads = eqx.filter_value_and_grad(cross_entropy)(model, xb, yb)
        updates, opt_state = optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    loss = jnp.nan
    for i in range(steps):
        idx = jax.random.choice(jax.random.fold_in(key, i), len(images), (batch,))
        model, opt_state, loss = step(model, opt_state, images[idx], labels[idx])
    return model, float(loss)


def main():
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    cli = parser.parse_args()
    out = cli.out or pathlib.Path(__file__).resolve().parent / "out"
    steps = 3 if cli.smoke else cli.steps
    n_train, n_test = (64, 32) if cli.smoke else (512, 128)
    train_data = tuple(map(jnp.asarray, make_data(n_train, 0)))
    test_data = tuple(map(jnp.asarray, make_data(n_test, 1)))

    key = jax.random.PRNGKey(0)
    models: dict[str, eqx.Module] = {
        f"{k} instance{'s' * (k > 1)}": Recurrent(Instance(key), k) for k in (1, 2, 3)
    }
    models["DEQ (infinitely many)"] = Equilibrium(
        ui.DEQ(
            Instance(key),
            # The instance is a 0.9-contraction, so a loose tolerance is reached in
            # a few Anderson steps; `throw=False` lets a rare slow solve return its
            # best iterate instead of stopping training (its residual is reported).
            backend=ui.Anderson(rtol=1e-2, atol=1e-3),
            # The backward pass solves `u = w + u df/dz` by Anderson-accelerated
            # Neumann iteration (converges since df/dz has norm <= 0.9); in this
            # example it is several times faster per training step than default GMRES.
            # A tiny `atol`: the cotangents of a mean over many pixels are ~1e-4,
            # and a larger `atol` would accept `u = 0` (zero gradients).
            adjoint=ui.ImplicitAdjoint(
                ui.NeumannSolver(rtol=1e-3, atol=1e-8, max_steps=100, history=5)
            ),
            max_steps=MAX_STEPS,
            throw=False,
            state=jax.ShapeDtypeStruct((CLASSES, SIZE, SIZE), jnp.float32),
        )
    )
    print(
        f"{'model':<24}{'train loss':>11}{'test pixel acc':>16}"
        f"{'shape pixel acc':>17}{'train s':>9}"
    )
    predictions = {}
    for name, model in models.items():
        start = time.perf_counter()
        model, loss = train(model, train_data, steps, 32, jax.random.PRNGKey(1))
        seconds = time.perf_counter() - start
        acc, pred = accuracy(model, *test_data)
        fg = np.asarray(test_data[1]) > 0
        shape_acc = float(np.mean(pred[fg] == np.asarray(test_data[1])[fg]))
        predictions[name] = pred
        print(f"{name:<24}{loss:>11.3f}{acc:>16.3f}{shape_acc:>17.3f}{seconds:>9.1f}")
        if isinstance(model, Equilibrium):
            sols = jax.jit(jax.vmap(model.contracted().solve))(test_data[0][:16])
            print(
                f"{'':<24}DEQ solver: mean {float(jnp.mean(sols.stats['num_steps'])):.1f}"
                f" steps, mean relative residual "
                f"{float(jnp.mean(sols.stats['relative_residual'])):.1e}"
            )

    shown = 4
    fig, axes = plt.subplots(
        shown, 2 + len(models), figsize=(2 * (2 + len(models)), 2 * shown)
    )
    images, labels = map(np.asarray, test_data)
    cmap = matplotlib.colors.ListedColormap(["#dddddd", "C0", "C1", "C2"])
    for row in range(shown):
        picture = images[row].transpose(1, 2, 0)
        picture = (picture - picture.min()) / (np.ptp(picture) + 1e-9)
        panels = [("image", picture, None), ("truth", labels[row], cmap)] + [
            (name, pred[row], cmap) for name, pred in predictions.items()
        ]
        for col, (title, data, colours) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(
                data, cmap=colours, vmin=0, vmax=CLASSES - 1, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle("per-pixel labels: background, square, disc, cross")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "scene_labelling.png", dpi=100)
    print(f"saved {out / 'scene_labelling.png'}")


if __name__ == "__main__":
    main()
