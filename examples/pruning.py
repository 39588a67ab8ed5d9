"""Pruning by explaining (Yeom et al. 2021): remove the least relevant channels or heads.

A small CNN (``jaxlrp.models.CNN``, channels 16 and 32) is trained on
``jaxlrp.synthetic.shapes`` (4 classes). Each conv channel gets a score, and in every
conv layer the same share of channels with the lowest scores is removed (its
filter and bias set to zero); the held-out accuracy is measured after each share,
without fine-tuning. Three criteria:

* **LRP**: the channel's relevance, summed over a reference set of training images
  explained for their true class (:func:`jaxlrp.concepts.channel_relevance`, one
  backward pass taps every layer), with ``EpsilonPlus`` (z+ on conv layers, as in
  the paper);
* **weight magnitude**: the L1 norm of the channel's filter;
* **random**: a random order (mean over ``--random`` draws).

With ``--model transformer``, a small vision transformer
(``jaxlrp.models.transformer.ViT``: 16 x 16 images in 4 x 4 patches, 2 blocks of
4 heads) is trained on the same task and its attention **heads** are pruned,
least important first over all blocks (a head is removed by zeroing its slice of
the attention's output projection). Criteria:

* **LRP**: the relevance of the head's slice of the output projection
  (:func:`jaxlrp.concepts.parameter_relevance`, ``AttnLRP``, summed over a
  reference set of training images for their true class), which equals the
  relevance arriving at the head's output (the projection is bilinear);
* **weight magnitude**: the L1 norm of the head's query, key, value and output
  weights;
* **random** (mean over ``--random`` draws).

::

    python examples/pruning.py --out examples/results
    python examples/pruning.py --model transformer --out examples/results

write ``pruning.png`` / ``pruning_transformer.png`` (accuracy against the share
pruned) and ``.md`` / ``.json`` files with the curve points.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

from jaxlrp import composites, concepts, models, synthetic
from jaxlrp.models import transformer as T

LAYERS = ("conv1", "conv2")
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def prune(variables, order: dict, share: float):
    """``variables`` with the first ``share`` of each layer's ``order`` (channel ids,
    least important first) zeroed: kernel columns and bias entries."""
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])  # a copy of the tree
    for name in LAYERS:
        k = int(round(share * len(order[name])))
        keep = np.ones(len(order[name]), np.float32)
        keep[np.asarray(order[name][:k], int)] = 0.0
        layer = dict(params[name])
        layer["kernel"] = layer["kernel"] * keep
        layer["bias"] = layer["bias"] * keep
        params = {**params, name: layer}
    return {**variables, "params": params}


def table(curves: dict, shares) -> list:
    """Markdown rows of the accuracy curves."""
    lines = ["| criterion | " + " | ".join(f"{s:.0%}" for s in shares) + " |", "|---" * (len(shares) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(f"{a:.3f}" for a in acc) + " |" for name, acc in curves.items()]


def plot(curves: dict, shares, xlabel: str, title: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, acc in curves.items():
        ax.plot([100 * s for s in shares], acc, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.axhline(0.25, color="gray", lw=0.8, ls=":")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


BLOCKS = ("block0", "block1")


def prune_heads(variables, heads: list):
    """``variables`` with the attention heads ``heads`` ((block, head) pairs) removed:
    their slices of the output projection zeroed."""
    params = dict(variables["params"])
    for block in BLOCKS:
        drop = [h for b, h in heads if b == block]
        if drop:
            attn = dict(params[block]["attn"])
            attn["out"] = {**attn["out"], "kernel": attn["out"]["kernel"].at[np.asarray(drop)].set(0.0)}
            params[block] = {**params[block], "attn": attn}
    return {**variables, "params": params}


def transformer(args) -> int:
    """Head pruning of a small ViT on ``synthetic.shapes`` (see the module docstring)."""
    train, test = synthetic.shapes(args.seed, 4096, 16), synthetic.shapes(args.seed + 1, 1024, 16)
    model = T.ViT(image_size=(16, 16), patch_size=4, dim=32, depth=len(BLOCKS), heads=4, mlp_dim=64,
                  num_classes=4, pool="mean")
    t0 = time.perf_counter()
    variables, loss = models.fit(model.apply, model.init(jax.random.key(args.seed), train.x[:1]), train.x, train.y,
                                 steps=args.steps, learning_rate=3e-3, batch_size=128)
    predict = jax.jit(model.apply)

    def accuracy(v) -> float:
        return float(np.mean(np.asarray(predict(v, test.x)).argmax(-1) == test.y))

    print(f"trained ViT in {time.perf_counter() - t0:.0f} s: loss {loss:.3f}, held-out accuracy {accuracy(variables):.1%}")
    heads = [(b, h) for b in BLOCKS for h in range(4)]
    ref = slice(0, args.reference)
    rel = jax.jit(concepts.parameter_relevance(model.apply, composites.AttnLRP()))(
        variables, train.x[ref], target=train.y[ref])
    lrp = [float(np.sum(rel["params"][b]["attn"]["out"]["kernel"][h])) for b, h in heads]
    attn = {b: variables["params"][b]["attn"] for b in BLOCKS}
    l1 = [float(sum(np.abs(attn[b][m]["kernel"][:, h]).sum() for m in ("query", "key", "value"))
                + np.abs(attn[b]["out"]["kernel"][h]).sum()) for b, h in heads]
    shares = [k / len(heads) for k in range(len(heads) + 1)]

    def curve(order) -> list:
        return [accuracy(prune_heads(variables, [heads[i] for i in order[:k]])) for k in range(len(heads) + 1)]

    rng = np.random.default_rng(args.seed)
    curves = {"LRP (AttnLRP)": curve(np.argsort(lrp)), "weight magnitude (L1)": curve(np.argsort(l1)),
              f"random (mean of {args.random})": list(np.mean(
                  [curve(rng.permutation(len(heads))) for _ in range(args.random)], axis=0))}
    lines = table(curves, shares)
    print("held-out accuracy after pruning a share of the 8 attention heads (least important first):")
    print("\n".join(lines))
    scores = "| head | " + " | ".join(f"{b[-1]}.{h}" for b, h in heads) + " |\n" + "|---" * (len(heads) + 1) + "|\n"
    scores += "| LRP | " + " | ".join(f"{s:.1f}" for s in lrp) + " |\n| L1 | " + " | ".join(f"{s:.0f}" for s in l1) + " |\n"
    out = pathlib.Path(args.out)
    plot(curves, shares, "attention heads pruned (%)", "Pruning the heads of a small ViT, no fine-tuning",
         out / "pruning_transformer.png")
    (out / "pruning_transformer.json").write_text(json.dumps(
        {"shares": shares, "accuracy": curves, "heads": heads, "lrp": lrp, "l1": l1}, indent=1))
    (out / "pruning_transformer.md").write_text(
        f"`python examples/pruning.py --model transformer --seed {args.seed} --steps {args.steps}`: held-out "
        f"accuracy (1024 images, chance 0.25) after pruning a share of the 8 heads of a 2-block ViT "
        f"(heads ranked over both blocks), no fine-tuning; LRP relevance summed over {args.reference} training "
        f"images.\n\n" + "\n".join(lines) + "\n\nPer-head scores (block.head):\n\n" + scores)
    print(f"wrote {out / 'pruning_transformer.png'}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--model", choices=("cnn", "transformer"), default="cnn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 300 CNN, 500 transformer)")
    ap.add_argument("--reference", type=int, default=256, help="training images the relevance is summed over")
    ap.add_argument("--random", type=int, default=5, help="random orders averaged")
    args = ap.parse_args(argv)
    if args.model == "transformer":
        args.steps = args.steps or 500
        return transformer(args)
    args.steps = args.steps or 300

    train, test = synthetic.shapes(args.seed, 4096, 28), synthetic.shapes(args.seed + 1, 1024, 28)
    model = models.CNN(num_classes=4, channels=(16, 32), hidden=64)
    t0 = time.perf_counter()
    variables, loss = models.fit(model.apply, model.init(jax.random.key(args.seed), train.x[:1]),
                                 train.x, train.y, steps=args.steps, learning_rate=3e-3)
    predict = jax.jit(model.apply)

    def accuracy(v) -> float:
        return float(np.mean(np.asarray(predict(v, test.x)).argmax(-1) == test.y))

    print(f"trained CNN in {time.perf_counter() - t0:.0f} s: loss {loss:.3f}, held-out accuracy {accuracy(variables):.1%}")

    scores = jax.jit(concepts.channel_relevance(model.apply, composites.EpsilonPlus(), layers="conv"))
    ref = slice(0, args.reference)
    lrp = scores(variables, train.x[ref], target=train.y[ref])
    criteria = {
        "LRP (EpsilonPlus)": {n: np.argsort(np.asarray(lrp[f"CNN/{n}"])) for n in LAYERS},
        "weight magnitude (L1)": {n: np.argsort(np.abs(np.asarray(variables["params"][n]["kernel"])).sum((0, 1, 2)))
                                  for n in LAYERS},
    }
    rng = np.random.default_rng(args.seed)
    randoms = [{n: rng.permutation(variables["params"][n]["kernel"].shape[-1]) for n in LAYERS}
               for _ in range(args.random)]
    curves = {name: [accuracy(prune(variables, order, s)) for s in SHARES] for name, order in criteria.items()}
    curves[f"random (mean of {args.random})"] = list(np.mean(
        [[accuracy(prune(variables, order, s)) for s in SHARES] for order in randoms], axis=0))

    lines = table(curves, SHARES)
    print("held-out accuracy after pruning a share of the channels of every conv layer:")
    print("\n".join(lines))
    out = pathlib.Path(args.out)
    plot(curves, SHARES, "channels pruned in each conv layer (%)", "Pruning a small CNN on synthetic.shapes, no fine-tuning",
         out / "pruning.png")
    (out / "pruning.json").write_text(json.dumps({"shares": SHARES, "accuracy": curves}, indent=1))
    (out / "pruning.md").write_text(
        f"`python examples/pruning.py --seed {args.seed} --steps {args.steps}`: held-out accuracy (1024 images, "
        f"chance 0.25) after pruning a share of the channels of conv1 (16) and conv2 (32), no fine-tuning; LRP "
        f"relevance summed over {args.reference} training images.\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {out / 'pruning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
