"""Quickstart: train a small CNN in seconds, explain it with LRP, write heatmaps.

The task has a known answer, so the heatmaps can be checked by eye: each 32x32
image holds one bright square on a noisy background, and the class says whether
the square is in the left or the right half. A faithful explanation puts its
relevance on the square.

    python examples/quickstart.py --out out/

writes ``out/quickstart.png`` (input, then one heatmap per composite: red is
evidence for the predicted class, blue against) and prints, per composite, the
share of positive relevance that falls on the square and the LRP/grad time ratio.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxlrp
from jaxlrp import composites, models, viz


class CNN(nn.Module):
    """conv-relu-pool x2, then two dense layers (NHWC input)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), name="conv2")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32, name="fc1")(x))
        return nn.Dense(2, name="head")(x)


def make_data(key, n: int, size: int = 32, side: int = 6):
    """Images with one bright square; label 0 = left half, 1 = right half."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    labels = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    rows = jax.random.randint(k2, (n,), 0, size - side)
    half = size // 2 - side
    cols = jax.random.randint(k3, (n,), 0, half + 1) + labels * (size // 2)
    r, c = jnp.arange(size)[None, :, None], jnp.arange(size)[None, None, :]
    masks = (
        (r >= rows[:, None, None]) & (r < rows[:, None, None] + side)
        & (c >= cols[:, None, None]) & (c < cols[:, None, None] + side)
    )
    noise = 0.3 * jax.random.normal(k4, (n, size, size))
    images = (masks * 1.0 + noise)[..., None]
    return images, labels, masks


def train(key, images, labels, steps: int):
    """Adam (3e-3) on cross-entropy, batches of 64 in the data's own (random) order."""
    model = CNN()
    params = model.init(key, images[:1])
    params, loss = models.fit(model.apply, params, images, labels, steps=steps, learning_rate=3e-3, shuffle=False)
    return model, params, loss


def _time(f, *args, repeats: int = 20) -> float:
    jax.block_until_ready(f(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(*args))
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out", help="output directory (default: out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150, help="training steps (default: 150)")
    ap.add_argument("--examples", type=int, default=6, help="held-out images to show (default: 6)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.examples < 1:
        ap.error("--steps and --examples must be positive")

    key = jax.random.PRNGKey(args.seed)
    k_train, k_test, k_init = jax.random.split(key, 3)
    x_train, y_train, _ = make_data(k_train, 4096)
    x_test, y_test, masks = make_data(k_test, 256)
    t0 = time.perf_counter()
    model, params, loss = train(k_init, x_train, y_train, args.steps)
    acc = float(jnp.mean(jnp.argmax(model.apply(params, x_test), -1) == y_test))
    print(f"trained CNN in {time.perf_counter() - t0:.1f} s: loss {loss:.3f}, held-out accuracy {acc:.1%}")

    methods = {
        "Epsilon": composites.Composite(),
        "EpsilonPlusFlat": composites.EpsilonPlusFlat(),
        "EpsilonGammaBox": composites.EpsilonGammaBox(low=-1.5, high=2.5),
        "EpsilonAlpha2Beta1": composites.EpsilonAlpha2Beta1(),
    }
    x, m = x_test[: args.examples], masks[: args.examples]
    grad = jax.jit(jax.grad(lambda p, x: jnp.max(model.apply(p, x), -1).sum(), argnums=1))
    t_grad = _time(grad, params, x)
    shown = {}
    titles = [f"class {int(y_test[i])}" for i in range(args.examples)]
    print(f"{'composite':<20} {'relevance on square':>20} {'LRP/grad time':>14}")
    for name, comp in methods.items():
        explain = jax.jit(jaxlrp.lrp(model.apply, comp))
        rel = explain(params, x)
        pos = jnp.maximum(rel[..., 0], 0)
        share = float(jnp.mean(jnp.sum(pos * m, (1, 2)) / (jnp.sum(pos, (1, 2)) + 1e-12)))
        ratio = _time(explain, params, x) / t_grad
        print(f"{name:<20} {share:>19.1%} {ratio:>13.2f}x")
        shown[name] = rel
    header = "column titles: true class (0: square on the left, 1: on the right); red: for the predicted class, blue: against"
    figure = viz.relevance_figure(x, shown, column_titles=titles, header=header)
    path = viz.save_figure(pathlib.Path(args.out) / "quickstart.png", figure)
    print(f"wrote {path} (rows: input, then one composite each; square fraction of random pixels: "
          f"{float(jnp.mean(m)):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
