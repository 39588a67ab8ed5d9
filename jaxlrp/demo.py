"""``jaxlrp demo``: train a small CNN, explain it, measure and draw the explanations.

The demo trains a small CNN on :func:`jaxlrp.synthetic.shapes` (one geometric object per
image, class = kind of object, ground-truth mask = the object's pixels) with :func:`jaxlrp.models.fit`,
explains held-out images with several LRP methods, and writes

* ``demo.png``: the inputs (top row, titled true / predicted class) and one row of
  heatmaps per method, labelled on the left, with one colour scale and colour bar
  per row (red: evidence for the predicted class, blue: against);
* ``metrics.md`` and ``metrics.json``: test accuracy and, per method, the mean over
  the explained images of the conservation error, the relevance mass accuracy
  inside the object mask, the pixel-flipping AOPC and the Gini sparseness, plus the
  explanation time relative to ``jax.grad`` of the same model.

Everything is deterministic for a given ``--seed``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
import optax  # noqa: F401  (used by models.fit; imported here so that `jaxlrp demo` names the missing extra before any work)

from . import composites, metrics, rules, synthetic, variants, viz
from ._demo_cli import Config, add_arguments, config
from .explain import lrp
from .models import fit

__all__ = ["DemoCNN", "Config", "methods", "train", "evaluate", "run", "markdown", "add_arguments", "config",
           "run_and_report"]


class DemoCNN(nn.Module):
    """conv(16)-relu-pool, conv(32)-relu-pool, dense(64)-relu, dense(classes)."""

    classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3), name="conv1")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), name="conv2")(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64, name="fc1")(x))
        return nn.Dense(self.classes, name="head")(x)


def methods(low: float, high: float) -> dict:
    """The explanation methods compared by the demo."""
    plus_flat = composites.EpsilonPlusFlat()
    return {
        "LRP-0 (= grad x input)": composites.Composite([("linear", rules.Zero())]),
        "Epsilon": composites.Composite([("linear", rules.Epsilon(0.1))]),
        "EpsilonPlusFlat": plus_flat,
        "EpsilonGammaBox": composites.EpsilonGammaBox(low, high),
        "Relative LRP": variants.relative(),
        "PLRP-lambda (p=0.5)": variants.pruned(plus_flat, 0.5),
    }


def _logits(model: nn.Module, params: Any, x: ArrayLike) -> jax.Array:
    """``model.apply(params, x)``, checked to be an array: linen types ``apply`` with the
    ``(output, state)`` pair too, which only ``mutable=`` returns."""
    out = model.apply(params, x)
    if not isinstance(out, jax.Array):
        raise TypeError(f"{type(model).__name__} returned {type(out).__name__}, not an array of logits")
    return out


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, seed: int, quiet: bool = True):
    """The demo's model trained with :func:`jaxlrp.models.fit`: Adam (2e-3) on softmax
    cross-entropy, batches of 64 in a fixed shuffled order, initialised from ``seed``."""
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), x[:1])  # one program, not each initialiser on its own
    params, _ = fit(functools.partial(_logits, model), params, x, y, steps=steps, learning_rate=2e-3, seed=seed, progress=not quiet)
    return params


def _timed(f: Callable, *args, repeats: int = 5) -> float:
    jax.block_until_ready(f(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(*args))
    return (time.perf_counter() - t0) / repeats


def evaluate(model, params, x, y_pred, mask, comp, t_grad: float) -> tuple:
    """Relevance and per-method metrics (means over the explained images)."""
    explain = jax.jit(lambda p, x, t: lrp(model.apply, comp)(p, x, target=t))
    rel = explain(params, x, y_pred)
    logits = model.apply(params, x)
    f = jnp.take_along_axis(logits, y_pred[:, None], axis=1)[:, 0]
    apply = lambda xb: model.apply(params, xb)
    curve = metrics.pixel_flipping(apply, x, rel, y_pred, region=4, baseline=0.0, order="morf")
    scores = {
        "conservation_error": float(jnp.mean(metrics.conservation_error(rel, f))),
        "relevance_mass_accuracy": float(jnp.nanmean(metrics.relevance_mass_accuracy(rel[..., 0], mask))),
        "aopc": float(jnp.mean(metrics.aopc(curve))),
        "gini": float(jnp.mean(metrics.sparseness(rel))),
        "time_vs_grad": _timed(explain, params, x, y_pred) / t_grad,
    }
    return rel, scores


def run(cfg: Config) -> dict:
    """Run the demo; returns the metrics written to ``metrics.json``."""
    t_start = time.perf_counter()
    n_test = max(cfg.explain, cfg.show)
    ds = synthetic.shapes(cfg.seed, cfg.train + n_test)
    x_train, y_train = ds.x[: cfg.train], ds.y[: cfg.train]
    x_test, y_test, m_test = ds.x[cfg.train:], ds.y[cfg.train:], ds.mask[cfg.train:]
    classes = len(synthetic.SHAPES)
    model = DemoCNN(classes)
    params = train(model, x_train, y_train, cfg.steps, cfg.seed, cfg.quiet)
    y_pred = jnp.argmax(_logits(model, params, x_test), -1)
    accuracy = float(jnp.mean(y_pred == y_test))
    if not cfg.quiet:
        print(f"held-out accuracy {accuracy:.1%} on {len(x_test)} images", file=sys.stderr)

    x, mask, target = jnp.asarray(x_test[: cfg.explain]), m_test[: cfg.explain], y_pred[: cfg.explain]
    onehot = jax.nn.one_hot(target, classes)
    grad = jax.jit(lambda p, x: jax.grad(lambda x: jnp.sum(_logits(model, p, x) * onehot))(x))
    t_grad = _timed(grad, params, x)

    low, high = float(ds.x.min()), float(ds.x.max())
    results, shown = {}, {}
    titles = [f"{synthetic.SHAPES[int(y_test[i])]} / {synthetic.SHAPES[int(y_pred[i])]}" for i in range(cfg.show)]
    for name, comp in methods(low, high).items():
        rel, scores = evaluate(model, params, x, target, mask, comp, t_grad)
        results[name] = scores
        shown[name] = np.asarray(rel[: cfg.show])
        if not cfg.quiet:
            print(f"  {name:<26} RMA {scores['relevance_mass_accuracy']:.3f}  AOPC {scores['aopc']:.3f}  "
                  f"Gini {scores['gini']:.3f}", file=sys.stderr)

    cfg.out.mkdir(parents=True, exist_ok=True)
    header = ("column titles: true / predicted class; relevance for the predicted class "
              "(red: for, blue: against; one colour scale per row)")
    figure = viz.relevance_figure(x_test[: cfg.show], shown, column_titles=titles, header=header)
    png = viz.save_figure(cfg.out / "demo.png", figure)
    summary = {
        "config": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in dataclasses.asdict(cfg).items()},
        "test_accuracy": accuracy,
        "explained_images": int(len(x)),
        "object_area_fraction": float(np.mean(mask)),
        "methods": results,
        "seconds": time.perf_counter() - t_start,
    }
    (cfg.out / "metrics.json").write_text(json.dumps(summary, indent=1))
    (cfg.out / "metrics.md").write_text(markdown(summary))
    return {"png": png, "json": cfg.out / "metrics.json", "md": cfg.out / "metrics.md", **summary}


def markdown(summary: dict) -> str:
    lines = [
        f"Test accuracy {summary['test_accuracy']:.1%}; {summary['explained_images']} held-out images explained "
        f"(object area {summary['object_area_fraction']:.1%} of the pixels).",
        "",
        "| method | conservation error (lower) | relevance mass accuracy (higher) | AOPC (higher) "
        "| Gini sparseness | time / grad |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary["methods"].items():
        lines.append(
            f"| {name} | {s['conservation_error']:.3g} | {s['relevance_mass_accuracy']:.3f} | {s['aopc']:.3f} "
            f"| {s['gini']:.3f} | {s['time_vs_grad']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run_and_report(cfg: Config) -> int:
    """Run the demo with a validated :class:`Config`, print the metrics table; 0 when done."""
    out = run(cfg)
    print(markdown(out), end="")
    print(f"wrote {out['png']}, {out['md']} and {out['json']} in {out['seconds']:.1f} s")
    return 0

