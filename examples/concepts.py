"""Concepts: what the channels of a small CNN detect, with CRP and Relevance Maximisation.

A CNN is trained in seconds on jaxlrp.synthetic.shapes (one object per image: square,
disc, cross or triangle). For one held-out prediction, the channels of the second
convolution are ranked by their relevance (``concepts.relevance_scores``), and the
conditional heatmaps of the top concepts are computed in one vmapped call
(``concepts.conditional``). Relevance Maximisation over a held-out set
(``concepts.maximization``, streamed through ``explain_dataset``) then finds, for each
top concept, the images in which it is most relevant; their crops, cut out by the
concept's own heatmap (``concepts.references``), form the concept atlas.

What a concept detects is measured, not guessed: the classes of its top images, and
where its heatmaps put their positive relevance, on the object's outline (pixels of
the object next to the background), inside the object, or on the background.

    python examples/concepts.py --out examples/results

writes ``concepts.png`` (the prediction and its top concepts), ``concepts_atlas.png``
(one row per concept: its top images, cropped), ``concepts.md`` and ``concepts.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

from jaxlrp import composites, concepts, synthetic, viz
from jaxlrp.demo import DemoCNN, train

LAYER = "DemoCNN/conv2"


def outline(mask: np.ndarray) -> np.ndarray:
    """Object pixels with a background 4-neighbour (``(H, W)`` boolean)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def where_relevance(heat: np.ndarray, mask: np.ndarray) -> tuple:
    """Shares of positive relevance on the outline, inside, and on the background."""
    pos = np.maximum(heat, 0)
    total = pos.sum() + 1e-12
    edge = outline(mask)
    return (float((pos * edge).sum() / total), float((pos * (mask & ~edge)).sum() / total),
            float((pos * ~mask).sum() / total))


def centroid(heat: np.ndarray, mask: np.ndarray) -> tuple:
    """Centre of positive relevance in the object's bounding box: (row, col), 0 = top/left, 1 = bottom/right."""
    pos = np.maximum(heat, 0)
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    rr, cc = np.mgrid[: heat.shape[0], : heat.shape[1]]
    total = pos.sum() + 1e-12
    return (float(((pos * rr).sum() / total - r0) / max(r1 - r0, 1)),
            float(((pos * cc).sum() / total - c0) / max(c1 - c0, 1)))


def relevance_maximisation(model, params, comp, test, pred, top, share, args) -> tuple:
    """Atlas rows and the description table of the ``top`` concepts (relevance maximisation)."""
    batches = [{"x": test.x[j:j + 128], "target": pred[j:j + 128]} for j in range(0, args.search, 128)]
    with tempfile.TemporaryDirectory() as tmp:
        rm = concepts.maximization(model.apply, comp, LAYER, params, batches, pathlib.Path(tmp) / "rm",
                                   top=args.top, progress=False)
    rows, table = {}, []
    for k in top:
        idx = rm.relevance_indices[k]
        refs = np.asarray(concepts.references(model.apply, comp, LAYER, params, test.x[idx], int(k)))[..., 0]
        rows[f"ch {k}"] = [(test.x[j], r) for j, r in zip(idx, refs)]
        classes = [synthetic.SHAPES[int(test.y[j])] for j in idx]
        edge, inside, back = np.mean([where_relevance(r, test.mask[j]) for j, r in zip(idx, refs)], axis=0)
        act_classes = [synthetic.SHAPES[int(test.y[j])] for j in rm.activation_indices[k]]
        row, col = np.mean([centroid(r, test.mask[j]) for j, r in zip(idx, refs)], axis=0)
        table.append({"channel": int(k), "share_of_prediction": float(share[list(top).index(k)]),
                      "top_relevance_classes": classes, "top_activation_classes": act_classes,
                      "outline": float(edge), "inside": float(inside), "background": float(back),
                      "centre_row": float(row), "centre_col": float(col)})

    return rows, table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--search", type=int, default=384, help="held-out images searched by relevance maximisation")
    ap.add_argument("--concepts", type=int, default=4, help="top concepts shown")
    ap.add_argument("--top", type=int, default=6, help="reference images per concept")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    t_start = time.perf_counter()

    train_set = synthetic.shapes(args.seed, 2000)
    test = synthetic.shapes(args.seed + 1, args.search)
    model = DemoCNN(len(synthetic.SHAPES))
    params = train(model, train_set.x, train_set.y, args.steps, args.seed)
    pred = np.asarray(jax.jit(model.apply)(params, test.x).argmax(-1))
    acc = float(np.mean(pred == test.y))
    print(f"trained in {time.perf_counter() - t_start:.1f} s, held-out accuracy {acc:.1%}")

    comp = composites.EpsilonPlusFlat()
    # 1. the top concepts of one prediction
    i = int(np.flatnonzero(pred == test.y)[0])
    x, c = test.x[i:i + 1], int(pred[i])
    scores = np.asarray(concepts.relevance_scores(model.apply, comp, LAYER)(params, x, target=c))[0]
    top = np.argsort(-scores)[: args.concepts]
    crp = jax.jit(lambda p, x, conds: concepts.conditional(model.apply, comp)(p, x, conditions=conds, target=c))
    heat = np.asarray(crp(params, x, [{LAYER: [int(k)]} for k in top]))[:, 0]
    share = scores[top] / np.abs(scores).sum()
    tiles = [viz.heatmap(x[0], cmap="gray", symmetric=False)]
    titles = [f"input: {synthetic.SHAPES[c]}"]
    for k, h, s in zip(top, heat, share):
        tiles.append(viz.heatmap(h))
        titles.append(f"ch {k}: {s:+.0%}")

    rows, table = relevance_maximisation(model, params, comp, test, pred, top, share, args)
    out.mkdir(parents=True, exist_ok=True)
    fig = viz.grid(tiles, titles=titles, ncols=len(tiles), scale=4)
    viz.save_png(out / "concepts.png", fig)
    viz.save_png(out / "concepts_atlas.png", concepts.atlas(rows, size=64, threshold=0.25))
    object_share = float(np.mean([m.mean() for m in test.mask]))
    md = [f"Concepts of `{LAYER}` (32 channels) in a CNN trained on `jaxlrp.synthetic.shapes` "
          f"(held-out accuracy {acc:.1%}), composite EpsilonPlusFlat.",
          "",
          f"Prediction explained: held-out image {i}, class **{synthetic.SHAPES[c]}**. Its top {len(top)} concepts "
          "(share = the channel's relevance over the sum of |relevance| of all channels), and, for each, "
          f"its top {args.top} images of {args.search} by relevance maximisation: their classes, and where "
          "the concept's own heatmaps (backward pass started at the channel) put their positive relevance "
          f"(objects cover {object_share:.0%} of an image on average; the outline is the object's boundary pixels), "
          "and the centre of that relevance in the object's bounding box (row, col; 0 = top/left, 1 = bottom/right).",
          "",
          "| channel | share | classes of top images (relevance) | (activation) | outline | inside | background "
          "| centre (row, col) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in table:
        md.append(f"| {r['channel']} | {r['share_of_prediction']:+.0%} | {', '.join(r['top_relevance_classes'])} | "
                  f"{', '.join(r['top_activation_classes'])} | {r['outline']:.0%} | {r['inside']:.0%} | "
                  f"{r['background']:.0%} | {r['centre_row']:.2f}, {r['centre_col']:.2f} |")
    md += ["", "![prediction and concepts](concepts.png)", "", "![concept atlas](concepts_atlas.png)", "",
           f"Total run time {time.perf_counter() - t_start:.0f} s (`python examples/concepts.py --out examples/results`)."]
    (out / "concepts.md").write_text("\n".join(md) + "\n")
    (out / "concepts.json").write_text(json.dumps({"accuracy": acc, "image": i, "class": synthetic.SHAPES[c],
                                                   "concepts": table}, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
