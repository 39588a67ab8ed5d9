"""Dense outputs: explain a region of a segmentation map (a small UNet).

Each 32x32 image holds two objects (squares or discs, ``jaxlrp.synthetic.shapes``) on a
noisy background; a small UNet labels every pixel: background, square or disc. A
segmentation network has one output per pixel and class, so "the output to
explain" is a region of the map. jaxlrp takes it in two forms:

* a **mask** over the output as ``target=``: the initial relevance is
  ``mask * f(x)``, the logits of the chosen class on the chosen pixels
  (here: the pixels of one object, on its class's channel);
* a **scalar function** of the output, by explaining the composition
  ``lambda v, x: g(model.apply(v, x))`` (here: the predicted foreground area in
  the left half of the image, a sum of softmax probabilities; jaxlrp's softmax
  rule and the Norm rule of the sum explain ``g`` too).

::

    python examples/segmentation.py --out examples/results

writes ``segmentation.png`` (inputs; the predicted segmentation; relevance for
object A, for object B, and for the foreground area of the left half) and
``segmentation.md`` / ``segmentation.json`` (pixel accuracy; the share of positive
relevance on object A and on object B when object A is explained, and vice versa;
the conservation of the masked logit sum).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlrp
from jaxlrp import composites, synthetic, viz

KINDS = ("square", "disc")  # per-pixel classes: 0 background, 1 square, 2 disc


def _up(x):
    """Nearest-neighbour upsampling by 2 (a copy: relevance follows the plain VJP)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


class UNet(nn.Module):
    """Two down- and two up-sampling stages with skip connections; per-pixel logits."""

    classes: int = 1 + len(KINDS)

    @nn.compact
    def __call__(self, x):
        e1 = nn.relu(nn.Conv(8, (3, 3), name="enc1")(x))                          # 32x32
        e2 = nn.relu(nn.Conv(16, (3, 3), name="enc2")(nn.max_pool(e1, (2, 2), (2, 2))))  # 16x16
        b = nn.relu(nn.Conv(32, (3, 3), name="bottom")(nn.max_pool(e2, (2, 2), (2, 2))))  # 8x8
        d2 = nn.relu(nn.Conv(16, (3, 3), name="dec2")(jnp.concatenate([_up(b), e2], -1)))
        d1 = nn.relu(nn.Conv(8, (3, 3), name="dec1")(jnp.concatenate([_up(d2), e1], -1)))
        return nn.Conv(self.classes, (1, 1), name="head")(d1)


def make_data(seed: int, n: int, size: int = 32):
    """Two objects per image: images ``(n, size, size, 1)``, per-pixel labels
    ``(n, size, size)`` and the masks of object A and object B (A is drawn over B)."""
    b = synthetic.shapes(seed, n, size, classes=KINDS, scale=(0.25, 0.45), noise=0.07)
    a = synthetic.shapes(seed + 1000, n, size, classes=KINDS, scale=(0.25, 0.45), noise=0.07)
    mask_a, mask_b = a.mask, b.mask & ~a.mask
    x = np.where(mask_a[..., None], a.x, b.x)  # A in front: its pixels, B's elsewhere
    labels = np.zeros((n, size, size), np.int32)
    labels[mask_b] = (1 + b.y[:, None, None] * np.ones((1, size, size), int))[mask_b]
    labels[mask_a] = (1 + a.y[:, None, None] * np.ones((1, size, size), int))[mask_a]
    return x, labels, mask_a, mask_b, 1 + a.y, 1 + b.y


def train(seed: int, x, labels, steps: int, batch: int = 32):
    """Adam (3e-3) on a per-pixel, per-class logistic loss (one-vs-rest).

    With a softmax cross-entropy only the differences of the logits are trained, so
    the logit of the right class may well be negative, and explaining it gives
    negative maps; one-vs-rest logits are positive exactly where the class is
    present, so the masked logits are evidence *for* the region's class."""
    model = UNet()
    params = model.init(jax.random.key(seed), x[:1])
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss_fn(p):
            logits = model.apply(p, xb)
            return optax.sigmoid_binary_cross_entropy(logits, jax.nn.one_hot(yb, logits.shape[-1])).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = rng.integers(0, len(x), batch)
        params, state, loss = step(params, state, x[i], labels[i])
    return model, params, float(loss)


def _share(rel, mask):
    """Per image: the share of positive relevance on ``mask``."""
    pos = np.maximum(np.asarray(rel)[..., 0], 0)
    return np.sum(pos * mask, (1, 2)) / (np.sum(pos, (1, 2)) + 1e-12)


def region_target(out_shape, mask, cls):
    """A boolean mask over the output: the pixels of ``mask`` on channel ``cls`` (per image)."""
    target = np.zeros(out_shape, bool)
    for i in range(len(mask)):
        target[i, mask[i], cls[i]] = True
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--test", type=int, default=64, help="held-out images measured")
    ap.add_argument("--examples", type=int, default=6, help="images in the figure")
    args = ap.parse_args(argv)

    x_train, y_train, *_ = make_data(args.seed, 2048)
    x, y, mask_a, mask_b, cls_a, cls_b = make_data(args.seed + 1, args.test)
    t0 = time.perf_counter()
    model, params, loss = train(args.seed, x_train, y_train, args.steps)
    out = np.asarray(jax.jit(model.apply)(params, x))
    pixel_acc = float(np.mean(out.argmax(-1) == y))
    print(f"trained UNet in {time.perf_counter() - t0:.0f} s: loss {loss:.3f}, held-out pixel accuracy {pixel_acc:.1%}")

    comp = composites.EpsilonGammaBox(low=-0.5, high=1.5)
    explain = jax.jit(jaxlrp.lrp(model.apply, comp))
    target_a = region_target(out.shape, mask_a, cls_a)
    target_b = region_target(out.shape, mask_b, cls_b)
    rel_a, rel_b = explain(params, x, target=target_a), explain(params, x, target=target_b)

    left = np.zeros(out.shape[1:3], np.float32)
    left[:, : out.shape[2] // 2] = 1.0

    def foreground_left(v, x):  # a scalar per image: predicted foreground area of the left half
        p = jax.nn.softmax(model.apply(v, x), axis=-1)
        return jnp.sum(p[..., 1:].sum(-1) * left, axis=(-2, -1))

    rel_area = jax.jit(jaxlrp.lrp(foreground_left, comp, example_axes=1))(params, x)

    # how much of the masked logit sum reaches the pixels (biases and stabilisers absorb the rest)
    seed_a = (out * target_a).sum((1, 2, 3))
    results = {
        "pixel_accuracy": pixel_acc,
        "object A explained: share on A": float(np.mean(_share(rel_a, mask_a))),
        "object A explained: share on B": float(np.mean(_share(rel_a, mask_b))),
        "object B explained: share on B": float(np.mean(_share(rel_b, mask_b))),
        "object B explained: share on A": float(np.mean(_share(rel_b, mask_a))),
        "object A explained: sum R / masked logit sum": float(np.median(np.asarray(rel_a).sum((1, 2, 3)) / seed_a)),
        "left-half area explained: share of positive relevance in the left half":
            float(np.mean(_share(rel_area, np.broadcast_to(left > 0, mask_a.shape)))),
        "object area (share of pixels), A / B": [float(mask_a.mean()), float(mask_b.mean())],
    }
    for k, v in results.items():
        print(f"{k}: {v if isinstance(v, list) else round(v, 4)}")

    k = args.examples
    shown = {
        "prediction": np.choose(out[:k].argmax(-1), [0.0, -1.0, 1.0])[..., None],  # bg white, square blue, disc red
        "object A": rel_a[:k], "object B": rel_b[:k], "fg area, left": rel_area[:k],
    }
    titles = [f"A {KINDS[cls_a[i] - 1]}, B {KINDS[cls_b[i] - 1]}" for i in range(k)]
    header = "prediction: square blue, disc red; then relevance (EpsilonGammaBox) of three regions of the output"
    figure = viz.relevance_figure(x[:k], shown, column_titles=titles, header=header)
    outdir = pathlib.Path(args.out)
    path = viz.save_figure(outdir / "segmentation.png", figure, dpi=100)
    (outdir / "segmentation.json").write_text(json.dumps(results, indent=1))
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in results.items()]
    (outdir / "segmentation.md").write_text(
        f"`python examples/segmentation.py --seed {args.seed} --steps {args.steps}` ({args.test} held-out images)\n\n"
        + "\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
