"""Recurrent convolutional scene labelling and its deep equilibrium limit.

The seed talk opens with Pinheiro & Collobert (2014): a convolutional network `f`
labels every pixel of an image, then is applied again to its own label predictions
plus the image, once, twice, three times; each instance sees a wider context. Here
that network is trained with 1, 2 and 3 instances, and then as a DEQ: the label
maps `z* = f(z*, image)` of infinitely many instances, found by Anderson
acceleration and differentiated by the implicit function theorem.

Data (generated, nothing is downloaded): 20x20 images of one or two shapes (square,
disc or diamond) on a striped background. Every shape has the same interior (grey
noise, which tells shape from background locally); its class is shown only by its
boundary: a ring in the class colour (red, green or blue: the three classes) with a
dark ring outside it. A pixel's label is the class of the shape it lies in, or
background. One instance sees 2 pixels around a pixel, so it can only tell the
class of pixels within 2 pixels of a ring; each further instance reaches 2 pixels
deeper, and the DEQ as deep as its labels spread.

Prints per-pixel test accuracy (overall, and by depth inside the shapes), over one
or more seeds, and saves a figure of label maps.

Run: `python examples/scene_labelling.py` (about a minute per seed on 2 CPU cores;
`--seeds 3` for the table in the docs); `--smoke` runs a few steps; `--out DIR` sets
where the figure goes (default `examples/out/`).
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.colors
import numpy as np
import optax
import scipy.ndimage
from _cli import example_parser, save_figure

import unimplicit as ui


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


SIZE, CLASSES, HIDDEN = 20, 4, 24
# Ring colours of the three shape classes (RGB, in the images' units).
COLOURS = np.array([[1.6, -0.6, -0.6], [-0.6, 1.6, -0.6], [-0.6, -0.6, 1.6]])
# Lipschitz bound of one instance in its label input (see `Instance.contracted`).
CONTRACTION = 0.9
# The bound on the DEQ's forward Anderson steps.
MAX_STEPS = 30
# Depth bands (chessboard distance to the background; the ring is depth 1) that one,
# two and three instances can reach: the ring is visible from depth <= 1 + 2k.
BANDS = ((1, 3), (4, 5), (6, 7), (8, SIZE))


def stripes(rng, yy, xx):
    """The background: stripes of random angle and frequency on a random colour."""
    colour = rng.uniform(-0.5, 0.5, 3)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.6, 1.6)
    pattern = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    return 0.3 * pattern[None] + colour[:, None, None]


def make_data(n, seed):
    """Images (n, 3, SIZE, SIZE), labels and depths (both (n, SIZE, SIZE)).

    A pixel's depth is its chessboard distance to the nearest background pixel
    (the ring is at depth 1; 0 on the background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    labels = np.zeros((n, SIZE, SIZE), np.int32)
    for i in range(n):
        image = stripes(rng, yy, xx)
        taken = np.zeros((SIZE, SIZE), bool)
        for _ in range(rng.integers(1, 3)):
            r = rng.integers(3, 9)
            cy, cx = rng.integers(r + 1, SIZE - r - 1, size=2)
            dy, dx = np.abs(yy - cy), np.abs(xx - cx)
            dist = [np.maximum(dy, dx), np.hypot(dy, dx), 0.75 * (dy + dx)]
            dist = dist[rng.integers(3)]  # a square, a disc or a diamond
            shape, halo = dist <= r, dist <= r + 1
            if np.any(halo & taken):  # shapes never touch: skip this one
                continue
            taken |= halo
            cls = rng.integers(1, CLASSES)
            ring = shape & (dist > r - 1)
            # Every class has the same interior: grey noise.
            interior = 0.3 * rng.uniform(-1, 1, size=(3, SIZE, SIZE))
            image = np.where(shape[None], interior, image)
            image = np.where(ring[None], COLOURS[cls - 1][:, None, None], image)
            image = np.where((halo & ~shape)[None], -1.5, image)
            labels[i][shape] = cls
        images[i] = image + 0.05 * rng.normal(size=image.shape)
    depths = np.zeros_like(labels)
    for lab, depth in zip(labels, depths):
        scipy.ndimage.distance_transform_cdt(lab > 0, "chessboard", distances=depth)
    return images, labels, depths


class Instance(eqx.Module):
    """One network instance: (previous label logits, image) -> label logits.

    From the image (two 3x3 convolutions, so a 5x5 patch) it computes a label
    source `s` and a gate `g` in (0, 1) per pixel and class; the previous labels
    enter through a 5x5 convolution `K`:

        f(z, image) = s(image) + g(image) * K tanh(z).

    So each instance sees 2 more pixels of context than the last, through its own
    label predictions (input injection of the image, weight tying across
    instances). The gate lets the image decide where labels may spread."""

    image_conv: eqx.nn.Conv2d
    out_conv: eqx.nn.Conv2d
    label_conv: eqx.nn.Conv2d

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.image_conv = eqx.nn.Conv2d(3, HIDDEN, 3, padding=1, key=k1)
        self.out_conv = eqx.nn.Conv2d(HIDDEN, 2 * CLASSES, 3, padding=1, key=k2)
        self.label_conv = eqx.nn.Conv2d(
            CLASSES, CLASSES, 5, padding=2, use_bias=False, key=k3
        )

    def features(self, image):
        """The image's part of the instance, `(s, g)`: the same for every instance."""
        source, gate = jnp.split(self.out_conv(jnp.tanh(self.image_conv(image))), 2)
        return source, jax.nn.sigmoid(gate)

    def contracted(self):
        """This instance with `K` rescaled to make it a contraction in `z`.

        A zero-padded 5x5 convolution on a SIZE x SIZE map is a crop of a circular
        one on (SIZE + 4)^2, whose operator norm is the largest singular value of
        its kernel's Fourier transform over those frequencies. `tanh` is
        1-Lipschitz and the gate is in (0, 1), so after rescaling `K` to norm at
        most `CONTRACTION` the instance is a `CONTRACTION`-contraction in `z`: the
        DEQ's fixed point exists and is unique, Anderson converges, and the
        backward system `I - df/dz` is well conditioned. The recurrent models use
        the same rescaled instance, so all four models share one architecture."""
        scale = jnp.minimum(1.0, CONTRACTION / conv_norm(self.label_conv.weight))
        return eqx.tree_at(
            lambda c: c.label_conv.weight, self, scale * self.label_conv.weight
        )

    def __call__(self, z, features):
        source, gate = features
        return source + gate * self.label_conv(jnp.tanh(z))


def conv_norm(weight):
    """An upper bound on the operator norm of a zero-padded 5x5 convolution."""
    n = SIZE + 4
    freq = jnp.fft.fft2(weight, s=(n, n))  # (out, in, n, n)
    mats = jnp.moveaxis(freq, (0, 1), (-2, -1))  # (n, n, out, in)
    gram = jnp.conj(jnp.swapaxes(mats, -1, -2)) @ mats
    # One `eigvalsh` per training step: with two of them in one compiled step,
    # XLA's CPU thread pool deadlocked (jax 0.10.2, 2 cores).
    return jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(gram)))


class Recurrent(eqx.Module):
    """The network applied `instances` times, starting from zero label maps."""

    cell: Instance
    instances: int = eqx.field(static=True)

    def __call__(self, image):
        cell = self.cell.contracted()
        features = cell.features(image)
        z = jnp.zeros((CLASSES, SIZE, SIZE))
        for _ in range(self.instances):
            z = cell(z, features)
        return z


class Equilibrium(eqx.Module):
    """The infinitely many instances: the DEQ limit `z* = f(z*, image)`."""

    deq: ui.DEQ

    def contracted(self):
        """The DEQ of the contracted instance (see `Instance.contracted`)."""
        return eqx.tree_at(lambda d: d.cell, self.deq, self.deq.cell.contracted())

    def solve(self, image):
        deq = self.contracted()
        # The image's features are the DEQ's injected input, computed once.
        return deq.solve(deq.cell.features(image))

    def __call__(self, image):
        return self.solve(image).value


def equilibrium(key):
    return Equilibrium(
        ui.DEQ(
            Instance(key),
            # The instance is a 0.9-contraction, so a loose tolerance is reached in
            # about ten Anderson steps; `throw=False` lets a rare slow solve return
            # its best iterate instead of stopping training.
            backend=ui.Anderson(rtol=1e-2, atol=1e-3),
            # The backward pass solves `u = w + u df/dz` by Anderson-accelerated
            # Neumann iteration (converges since df/dz has norm <= 0.9; robust in
            # float32). A tiny `atol`: the cotangents of a mean over many pixels
            # are ~1e-4, and a larger `atol` would accept `u = 0` (zero gradients).
            adjoint=ui.ImplicitAdjoint(
                ui.NeumannSolver(rtol=1e-3, atol=1e-8, max_steps=100, history=5)
            ),
            max_steps=MAX_STEPS,
            throw=False,
            state=jax.ShapeDtypeStruct((CLASSES, SIZE, SIZE), jnp.float32),
        )
    )


def cross_entropy(model, images, labels):
    logits = jax.vmap(model)(images)  # (B, C, H, W)
    logp = jax.nn.log_softmax(logits, axis=1)
    picked = jnp.take_along_axis(logp, labels[:, None], axis=1)
    return -jnp.mean(picked)


OPTIM = optax.adam(1e-2)


# Module-level and filtered: each model structure compiles once and is reused by
# every seed.
@eqx.filter_jit
def train_step(model, opt_state, images, labels):
    loss, grads = eqx.filter_value_and_grad(cross_entropy)(model, images, labels)
    updates, opt_state = OPTIM.update(grads, opt_state, model)
    return eqx.apply_updates(model, updates), opt_state, loss


@eqx.filter_jit
def predict(model, images):
    return jnp.argmax(jax.vmap(model)(images), axis=1)


@eqx.filter_jit
def solver_stats(model, images):
    sols = jax.vmap(model.solve)(images)
    return sols.stats["num_steps"], sols.stats["relative_residual"]


def train(model, data, steps, batch, seed):
    images, labels, _ = data
    opt_state = OPTIM.init(eqx.filter(model, eqx.is_array))
    # The same batches, in the same order, for every model of one seed.
    rng = np.random.default_rng(seed)
    loss = jnp.nan
    for _ in range(steps):
        idx = rng.choice(len(images), batch)
        model, opt_state, loss = train_step(model, opt_state, images[idx], labels[idx])
    return model, float(loss)


def scores(pred, labels, depths):
    """Pixel accuracy overall, on shape pixels, and in each depth band."""
    right = pred == labels
    bands = [right[(depths >= lo) & (depths <= hi)].mean() for lo, hi in BANDS]
    return [right.mean(), right[labels > 0].mean(), *bands]


def main():
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=1)
    cli = parser.parse_args()
    out = cli.out
    steps = 3 if cli.smoke else cli.steps
    n_train, n_test = (64, 32) if cli.smoke else (1024, 256)
    train_data = make_data(n_train, 0)
    test_data = make_data(n_test, 1)
    images, labels, depths = test_data
    names = ["1 instance", "2 instances", "3 instances", "DEQ"]
    results = {name: [] for name in names}
    predictions = {}
    print(f"{'':<12}{'train':>7}  pixel accuracy on test images")
    band_titles = [f"d {lo}-{hi}" if hi < SIZE else f"d >={lo}" for lo, hi in BANDS]
    header = ["loss", "all", "shapes", *band_titles, "train s"]
    print(f"{'model':<12}" + "".join(f"{h:>8}" for h in header))
    for seed in range(cli.seeds):
        key = jax.random.PRNGKey(seed)
        models = [Recurrent(Instance(key), k) for k in (1, 2, 3)] + [equilibrium(key)]
        for name, model in zip(names, models):
            start = time.perf_counter()
            model, loss = train(model, train_data, steps, 32, seed)
            seconds = time.perf_counter() - start
            pred = np.asarray(predict(model, images))
            row = [loss, *scores(pred, labels, depths), seconds]
            results[name].append(row)
            print(f"{name:<12}" + "".join(f"{v:>8.3f}" for v in row[:-1]), end="")
            print(f"{seconds:>8.1f}   (seed {seed})")
            if seed == 0:
                predictions[name] = pred
            if isinstance(model, Equilibrium):
                num, rel = solver_stats(model, images[:64])
                print(
                    f"{'':<12}DEQ solver: mean {float(jnp.mean(num)):.1f} Anderson "
                    f"steps, mean relative residual {float(jnp.mean(rel)):.1e}"
                )
    if cli.seeds > 1:
        print(f"mean over {cli.seeds} seeds (+- standard deviation)")
        for name in names:
            rows = np.array(results[name])
            mean, std = rows.mean(0), rows.std(0)
            cells = [f"{m:.3f}+-{s:.3f}" for m, s in zip(mean[1:-1], std[1:-1])]
            print(f"{name:<12}" + " ".join(cells))
    n_pixels = [int(np.sum((depths >= lo) & (depths <= hi))) for lo, hi in BANDS]
    print(f"test pixels per band {dict(zip(band_titles, n_pixels))}")
    plot(images, labels, depths, predictions, out / "scene_labelling.png")


def plot(images, labels, depths, predictions, path):
    # The four test images whose shapes are deepest: where context matters most.
    shown = np.argsort(-depths.max(axis=(1, 2)), kind="stable")[:4]
    cols = 2 + len(predictions)
    fig, axes = plt.subplots(len(shown), cols, figsize=(1.8 * cols, 1.8 * len(shown)))
    cmap = matplotlib.colors.ListedColormap(["#dddddd", "C3", "C2", "C0"])
    for row, i in enumerate(shown):
        picture = images[i].transpose(1, 2, 0)
        picture = (picture - picture.min()) / (np.ptp(picture) + 1e-9)
        panels = [("image", picture, None), ("truth", labels[i], cmap)] + [
            (name, pred[i], cmap) for name, pred in predictions.items()
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
    fig.suptitle(
        "test label maps (seed 0) of the four deepest shapes: background, "
        "red-, green-, blue-ringed shape"
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


if __name__ == "__main__":
    main()
