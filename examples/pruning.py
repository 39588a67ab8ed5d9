"""Pruning by explaining (Yeom et al. 2021): remove the least relevant channels.

A small CNN (``jaxlrp.models.CNN``, channels 16 and 32) is trained on
``jaxlrp.data.shapes`` (4 classes). Each conv channel gets a score, and in every
conv layer the same share of channels with the lowest scores is removed (its
filter and bias set to zero); the held-out accuracy is measured after each share,
without fine-tuning. Three criteria:

* **LRP**: the channel's relevance, summed over a reference set of training images
  explained for their true class (:func:`jaxlrp.concepts.channel_relevance`, one
  backward pass taps every layer), with ``EpsilonPlus`` (z+ on conv layers, as in
  the paper);
* **weight magnitude**: the L1 norm of the channel's filter;
* **random**: a random order (mean over ``--random`` draws).

::

    python examples/pruning.py --out examples/results

writes ``pruning.png`` (accuracy against the share of channels pruned) and
``pruning.md`` / ``pruning.json`` (the curve points).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

from jaxlrp import composites, concepts, data, models

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--reference", type=int, default=256, help="training images the relevance is summed over")
    ap.add_argument("--random", type=int, default=5, help="random orders averaged")
    args = ap.parse_args(argv)

    train, test = data.shapes(args.seed, 4096, 28), data.shapes(args.seed + 1, 1024, 28)
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

    header = "| criterion | " + " | ".join(f"{s:.0%}" for s in SHARES) + " |"
    lines = [header, "|---" * (len(SHARES) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{a:.3f}" for a in acc) + " |" for name, acc in curves.items()]
    print("held-out accuracy after pruning a share of the channels of every conv layer:")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, acc in curves.items():
        ax.plot([100 * s for s in SHARES], acc, marker="o", label=name)
    ax.set_xlabel("channels pruned in each conv layer (%)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Pruning a small CNN on data.shapes, no fine-tuning")
    ax.axhline(0.25, color="gray", lw=0.8, ls=":")
    ax.legend()
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "pruning.png", dpi=100)
    (out / "pruning.json").write_text(json.dumps({"shares": SHARES, "accuracy": curves}, indent=1))
    (out / "pruning.md").write_text(
        f"`python examples/pruning.py --seed {args.seed} --steps {args.steps}`: held-out accuracy (1024 images, "
        f"chance 0.25) after pruning a share of the channels of conv1 (16) and conv2 (32), no fine-tuning; LRP "
        f"relevance summed over {args.reference} training images.\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {out / 'pruning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
