"""Pruned LRP and Relative LRP on synthetic data with ground-truth masks (issue 4).

Two tasks whose evidence is known:

* images (:func:`jaxlrp.synthetic.shapes`, 32x32, 4 classes: square, disc, cross,
  triangle), a small 2-D CNN; mask = the object's pixels;
* one-hot DNA (:func:`jaxlrp.synthetic.dna_motifs`, binary: does the sequence hold a
  planted TATAAT or GGATCC motif), a small 1-D CNN; mask = the motif bases. Only
  positive sequences predicted positive are explained (negatives have no mask).

Both models are trained in seconds (`jaxlrp.models.fit`). Then

1. Pruned LRP (Yanez Sarmiento et al. 2024, arXiv:2404.14271): PLRP-lambda and
   PLRP-M on top of the base composite ``EpsilonPlus``, for p in {0, 0.1, ..., 0.9}
   (one jitted explanation per mode, ``vmap``-ed over a traced ``p``), each with
   jaxlrp's default ``p_neg = p`` and the public re-implementation's ``p_neg = p/2``
   (a second table): mean Gini
   sparseness of the input relevance, relevance mass accuracy inside the mask
   (positive relevance; for DNA the relevance is summed over the 4 channels of a
   position first, because x-proportional rules give absent bases zero) and the
   pixel-flipping AOPC (most relevant patches first, replaced by 0).
2. Relative LRP (Nyiri & Gibaru 2025, arXiv:2501.14322), in both readings
   (``mode="layer"``, the default "R-LRP", and ``mode="neuron"``), against LRP-0 and
   LRP-epsilon (and, for reference, the base composite and PLRP-lambda at p = 0.5):
   relative max-sensitivity under small uniform input noise, and the conservation
   error ``|sum R - f_c(x)| / |f_c(x)|`` (plus the L1 ratio ``sum|R| / |f_c(x)|``,
   which R-LRP conserves by construction).

Why ``EpsilonPlus`` and not ``EpsilonPlusFlat``: the flat rule on the input layer
spreads each first-layer neuron's relevance uniformly over its receptive field,
whatever the input, so on one-hot DNA three quarters of it lands on absent bases,
and on images it lands on the black background; both blur the masks and mute the
effect of pruning at the input. ``EpsilonPlus`` uses z+ on the first layer too,
which is proportional to the input. The run also records the ``EpsilonPlusFlat``
base at p = 0 for comparison.

    python examples/variants.py                 # full run, ~2-3 min on 2 CPU cores
    python examples/variants.py --quick         # tiny smoke run, < 30 s

writes ``variants.png`` (curves), ``variants.md`` (tables) and ``variants.json``
(every number) to ``--out`` (default ``examples/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Callable

if __name__ == "__main__" and "--quick" in sys.argv[1:]:
    # a tiny run is dominated by XLA compile time: compile with less optimisation
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import flax.linen as nn  # noqa: E402  (after XLA_FLAGS)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlrp import composites, lrp, metrics, models, rules, synthetic, variants  # noqa: E402

# ------------------------------------------------------------------ set-up


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    ps: tuple = tuple(round(0.1 * i, 1) for i in range(10))
    # images
    img_train: int = 2000
    img_steps: int = 300
    img_explain: int = 96
    img_region: int = 4
    # DNA
    dna_length: int = 128
    dna_train: int = 3000
    dna_steps: int = 400
    dna_explain: int = 96
    dna_region: int = 4
    # robustness
    radius: float = 0.05
    noise_samples: int = 8
    robust_explain: int = 48
    extras: bool = True


QUICK = Config(
    ps=(0.0, 0.3, 0.6, 0.9),
    img_train=640, img_steps=50, img_explain=12,
    dna_length=96, dna_train=640, dna_steps=80, dna_explain=12,
    noise_samples=2, robust_explain=8, extras=False,
)

BASE_NAME = "EpsilonPlus"


def base_composite() -> composites.Composite:
    return composites.EpsilonPlus()


def robust_methods(full: bool = True) -> dict:
    """Methods of the robustness comparison (the first three are the ones asked for)."""
    methods = {
        "R-LRP": variants.relative(),
        "R-LRP (neuron)": variants.relative(mode="neuron"),
        "LRP-0": composites.Composite([("linear", rules.Zero())]),
        "Epsilon (0.1)": composites.Composite([("linear", rules.Epsilon(0.1))]),
    }
    if full:
        methods[BASE_NAME] = base_composite()
        methods["PLRP-lambda p=0.5"] = variants.pruned(base_composite(), 0.5, mode="lambda")
    return methods


class ImageCNN(nn.Module):
    """conv(8)-relu-pool, conv(16)-relu-pool, dense(32)-relu, dense(classes)."""

    classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3), name="conv1")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3), name="conv2")(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32, name="fc1")(x))
        return nn.Dense(self.classes, name="head")(x)


class DnaCNN(nn.Module):
    """1-D: conv(16, k=7)-relu-pool(4), conv(16, k=5)-relu-pool(4), dense(32)-relu, dense(2)."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(16, (7,), name="conv1")(x)), (4,), (4,))
        x = nn.max_pool(nn.relu(nn.Conv(16, (5,), name="conv2")(x)), (4,), (4,))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32, name="fc1")(x))
        return nn.Dense(2, name="head")(x)


def _epochs(n: int, batch: int, steps: int, rng: np.random.Generator):
    """Batches of ``batch`` consecutive examples of a permutation, drawn anew when the
    window returns to the start."""
    order = rng.permutation(n)
    for i in range(steps):
        lo = (i * batch) % (n - batch + 1)
        if i and lo == 0:
            order = rng.permutation(n)
        yield order[lo:lo + batch]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, seed: int, lr: float = 3e-3):
    """Adam on softmax cross-entropy, batches of 64 (jaxlrp.models.fit)."""
    params = model.init(jax.random.PRNGKey(seed), x[:1])
    batches = _epochs(len(x), 64, steps, np.random.default_rng(seed))
    return models.fit(model.apply, params, x, y, steps=steps, learning_rate=lr, batches=batches)


# ------------------------------------------------------------------ task


@dataclasses.dataclass
class Task:
    name: str
    model: nn.Module
    params: dict
    x: jax.Array          # explained inputs (N, ..., C)
    target: jax.Array     # explained class per example (N,)
    mask: np.ndarray      # (N, *spatial)
    region: int
    accuracy: float
    train_seconds: float
    mask_fraction: float

    def apply(self, xb):
        return self.model.apply(self.params, xb)

    def positions(self, rel):
        """Relevance per spatial position (channels summed): (..., *spatial)."""
        return jnp.sum(rel, axis=-1)


def image_task(cfg: Config) -> Task:
    t0 = time.perf_counter()
    n_test = 512
    ds = synthetic.shapes(cfg.seed, cfg.img_train + n_test)
    xtr, ytr = ds.x[: cfg.img_train], ds.y[: cfg.img_train]
    xte, yte, mte = ds.x[cfg.img_train:], ds.y[cfg.img_train:], ds.mask[cfg.img_train:]
    model = ImageCNN(len(synthetic.SHAPES))
    params, _ = train(model, xtr, ytr, cfg.img_steps, cfg.seed)
    pred = np.asarray(jnp.argmax(model.apply(params, xte), -1))
    acc = float(np.mean(pred == yte))
    n = cfg.img_explain
    return Task("images", model, params, jnp.asarray(xte[:n]), jnp.asarray(pred[:n]), mte[:n],
                cfg.img_region, acc, time.perf_counter() - t0, float(mte[:n].mean()))


def dna_task(cfg: Config) -> Task:
    t0 = time.perf_counter()
    n_test = 1024
    ds = synthetic.dna_motifs(cfg.seed + 1, cfg.dna_train + n_test, cfg.dna_length)
    xtr, ytr = ds.x[: cfg.dna_train], ds.y[: cfg.dna_train]
    xte, yte, mte = ds.x[cfg.dna_train:], ds.y[cfg.dna_train:], ds.mask[cfg.dna_train:]
    model = DnaCNN()
    params, _ = train(model, xtr, ytr, cfg.dna_steps, cfg.seed)
    pred = np.asarray(jnp.argmax(model.apply(params, xte), -1))
    acc = float(np.mean(pred == yte))
    pick = np.flatnonzero((yte == 1) & (pred == 1))[: cfg.dna_explain]
    if pick.size == 0:  # an untrained quick model: explain the positives anyway
        pick = np.flatnonzero(yte == 1)[: cfg.dna_explain]
    return Task("DNA", model, params, jnp.asarray(xte[pick]), jnp.ones(pick.size, jnp.int32), mte[pick],
                cfg.dna_region, acc, time.perf_counter() - t0, float(mte[pick].mean()))


# ------------------------------------------------------------------ metrics


def scores(task: Task, rel: jax.Array) -> dict:
    """Per-example metrics of a batch of relevance maps of shape (M, *x.shape[1:]).

    ``M`` is a multiple of the explained examples (p values stacked along the
    leading axis); inputs, targets and masks are tiled to match.
    """
    reps = rel.shape[0] // task.x.shape[0]
    x = jnp.tile(task.x, (reps,) + (1,) * (task.x.ndim - 1))
    t = jnp.tile(task.target, reps)
    m = jnp.asarray(np.tile(task.mask, (reps,) + (1,) * (task.mask.ndim - 1)))
    return _scorer(task.model, task.region, task.name == "DNA")(task.params, rel, x, t, m)


_SCORERS: dict = {}


def _scorer(model: nn.Module, region: int, aggregate: bool) -> Callable:
    """A jitted ``(params, rel, x, target, mask) -> {gini, rma, aopc}`` (per example)."""
    key = (id(model), region, aggregate)
    if key not in _SCORERS:
        def score(params, rel, x, t, m):
            pos = jnp.sum(rel, axis=-1)  # per position (channels summed)
            gini = metrics.sparseness(pos if aggregate else rel)
            rma = metrics.relevance_mass_accuracy(pos, m)
            curve = metrics.pixel_flipping(lambda xb: model.apply(params, xb), x, rel, t,
                                           region=region, baseline=0.0, order="morf")
            # patches with any relevance: beyond them the MoRF order is a tie (by position)
            shape = [pos.shape[0]]
            for size in pos.shape[1:]:
                shape += [size // region, region]
            patches = jnp.sum(pos.reshape(shape), axis=tuple(range(2, len(shape), 2)))
            active = jnp.sum(patches.reshape(pos.shape[0], -1) != 0, axis=1).astype(pos.dtype)
            early = curve[:, : curve.shape[1] // 8 + 1]  # the first 1/8 of the patches
            return {"gini": gini, "rma": rma, "aopc": metrics.aopc(curve), "aopc_early": metrics.aopc(early),
                    "active_patches": active}

        _SCORERS[key] = (model, jax.jit(score))
    return _SCORERS[key][1]


def summary(values: jax.Array) -> dict:
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    n = int(ok.sum())
    mean = float(v[ok].mean()) if n else float("nan")
    sem = float(v[ok].std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    median = float(np.median(v[ok])) if n else float("nan")
    return {"mean": mean, "sem": sem, "median": median, "n": n}


def pruning_sweep(task: Task, ps: tuple, flat_reference: bool = True) -> tuple:
    """PLRP-lambda and PLRP-M for every p (vmap over a traced p), and the base composite.

    All explanations come from one jitted function and are scored in one batch.
    """
    apply = task.model.apply
    n, n_p = task.x.shape[0], len(ps)

    @jax.jit
    def explain_all(params, x, t, p):
        rel = {"base": lrp(apply, base_composite())(params, x, target=t)}
        if flat_reference:
            rel["flat"] = lrp(apply, composites.EpsilonPlusFlat())(params, x, target=t)
        for mode, half in SWEEPS:
            one = lambda q, mode=mode, half=half: lrp(
                apply, variants.pruned(base_composite(), q, q / 2 if half else None, mode=mode))(params, x, target=t)
            rel[_sweep_key(mode, half)] = jax.vmap(one)(p)  # (P, N, ...)
        return rel

    rel = explain_all(task.params, task.x, task.target, jnp.asarray(ps, jnp.float32))
    order = ["base"] + (["flat"] if flat_reference else [])
    stacked = jnp.concatenate([rel[k] for k in order] + [rel[_sweep_key(*sw)].reshape((-1,) + task.x.shape[1:])
                                                          for sw in SWEEPS])
    s = {k: np.asarray(v) for k, v in scores(task, stacked).items()}
    chunk = lambda i: {k: summary(v[i * n:(i + 1) * n]) for k, v in s.items()}
    out = {"base": {"name": BASE_NAME, **chunk(0)}}
    if flat_reference:
        out["EpsilonPlusFlat (p=0, reference)"] = chunk(1)
    off = len(order)
    examples = {"base": np.asarray(rel["base"][:4])}
    for j, (mode, half) in enumerate(SWEEPS):
        key = _sweep_key(mode, half)
        per_p = [chunk(off + j * n_p + i) for i in range(n_p)]
        zero = [i for i, p in enumerate(ps) if p == 0.0]
        diff = float(jnp.max(jnp.abs(rel[key][zero[0]] - rel["base"]))) if zero else float("nan")
        out[f"PLRP-{key}"] = {"p": list(ps), **{k: [d[k] for d in per_p] for k in s},
                              "max_abs_diff_p0_vs_base": diff}
        if not half:
            examples[mode] = np.asarray(rel[key][:, :4])
    return out, examples


#: (mode, p_neg = p / 2?): jaxlrp's default p_neg = p, and the re-implementation's p / 2
SWEEPS = tuple((mode, half) for half in (False, True) for mode in variants.MODES)


def _sweep_key(mode: str, half: bool) -> str:
    return f"{mode} p_neg=p/2" if half else mode


def robustness(task: Task, cfg: Config, n: int, methods: dict) -> dict:
    x, t = task.x[:n], task.target[:n]
    key = jax.random.PRNGKey(cfg.seed + 7)
    apply = task.model.apply
    out = {}
    for name, comp in methods.items():
        @jax.jit
        def measure(params, x, t, key, comp=comp):
            explain = lambda xb: lrp(apply, comp)(params, xb, target=t)
            rel = explain(x)
            f = jnp.take_along_axis(apply(params, x), t[:, None], axis=1)[:, 0]
            sens = metrics.max_sensitivity(explain, x, key=key, radius=cfg.radius,
                                           n_samples=cfg.noise_samples, relative=True)
            l1 = jnp.sum(jnp.abs(rel.reshape(rel.shape[0], -1)), axis=1) / jnp.abs(f)
            return sens, metrics.conservation_error(rel, f), l1

        sens, cons, l1 = measure(task.params, x, t, key)
        out[name] = {"max_sensitivity_rel": summary(sens), "conservation_error": summary(cons),
                     "l1_ratio": summary(l1), "max_sensitivity_per_example": np.asarray(sens).tolist()}
    f = jnp.take_along_axis(task.apply(x), t[:, None], axis=1)[:, 0]
    return out, np.asarray(f).tolist()


# ------------------------------------------------------------------ figure

_COLORS = {"PLRP-lambda": (31, 119, 180), "PLRP-m": (230, 110, 20), "base": (110, 110, 110)}
_BAR = [(44, 160, 44), (214, 39, 40), (148, 103, 189), (110, 110, 110), (31, 119, 180)]


def _font(size: int):
    from PIL import ImageFont

    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 10))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


class Panel:
    """A rectangle of the canvas with data coordinates, axes, ticks and labels."""

    def __init__(self, draw, box, xlim, ylim, title, xlabel, ylabel, fonts, xticks=None, xticklabels=None,
                 xlabel_font=None):
        self.draw, self.fonts = draw, fonts
        left, top, right, bottom = box
        self.l, self.t, self.r, self.b = left + 62, top + 30, right - 10, bottom - 44
        self.xlim, self.ylim = xlim, ylim
        small, normal, bold = fonts
        draw.text(((left + right) / 2, top + 4), title, fill=(0, 0, 0), font=bold, anchor="mt")
        grid = (225, 225, 225)
        yt = [v for v in _nice_ticks(*ylim) if ylim[0] - 1e-12 <= v <= ylim[1] + 1e-12]
        for v in yt:
            y = self.Y(v)
            draw.line([(self.l, y), (self.r, y)], fill=grid)
            draw.text((self.l - 5, y), _fmt(v), fill=(0, 0, 0), font=small, anchor="rm")
        xt = xticks if xticks is not None else _nice_ticks(*xlim)
        labels = xticklabels if xticklabels is not None else [_fmt(v) for v in xt]
        for v, lab in zip(xt, labels):
            x = self.X(v)
            draw.line([(x, self.b), (x, self.b + 4)], fill=(0, 0, 0))
            draw.text((x, self.b + 6), lab, fill=(0, 0, 0), font=small, anchor="mt")
        draw.rectangle([self.l, self.t, self.r, self.b], outline=(0, 0, 0))
        centre = (self.l + self.r) / 2 if xlabel_font is None else (left + right) / 2
        draw.text((centre, bottom - 4), xlabel, fill=(0, 0, 0), font=xlabel_font or normal, anchor="mb")
        self._ylabel(ylabel, left + 2, (self.t + self.b) / 2, normal)

    def _ylabel(self, text, x, yc, font):
        from PIL import Image, ImageDraw

        w = int(self.draw.textlength(text, font=font)) + 4
        h = font.size + 6
        tmp = Image.new("RGBA", (w, h), (255, 255, 255, 0))
        ImageDraw.Draw(tmp).text((2, 1), text, fill=(0, 0, 0, 255), font=font)
        rot = tmp.rotate(90, expand=True)
        self.draw._image.paste(rot, (int(x), int(yc - rot.size[1] / 2)), rot)

    def X(self, v):
        a, b = self.xlim
        return self.l + (v - a) / (b - a) * (self.r - self.l)

    def Y(self, v):
        a, b = self.ylim
        return self.b - (v - a) / (b - a) * (self.b - self.t)

    def band(self, xs, lo, hi, color):
        poly = [(self.X(x), self.Y(v)) for x, v in zip(xs, hi)] + \
               [(self.X(x), self.Y(v)) for x, v in zip(xs[::-1], lo[::-1])]
        light = tuple(int(c + (255 - c) * 0.78) for c in color)
        self.draw.polygon(poly, fill=light)

    def line(self, xs, ys, color, width=2, dash=False, marker=None):
        pts = [(self.X(x), self.Y(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
        if dash:
            for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
                length = math.hypot(x1 - x0, y1 - y0)
                k = max(int(length // 8), 1)
                for i in range(0, k, 2):
                    a, b = i / k, min((i + 1) / k, 1)
                    self.draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)),
                                    (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=color, width=width)
        else:
            self.draw.line(pts, fill=color, width=width, joint="curve")
        for x, y in pts if marker else []:
            if marker == "o":
                self.draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=color)
            else:
                self.draw.rectangle([x - 3, y - 3, x + 3, y + 3], fill=color)


def _limits(values, pad=0.08):
    v = [x for x in values if math.isfinite(x)]
    lo, hi = min(v), max(v)
    span = hi - lo if hi > lo else max(abs(hi), 1e-3)
    return lo - pad * span, hi + pad * span


def figure(results: dict, cfg: Config, path: pathlib.Path) -> pathlib.Path:
    from PIL import Image, ImageDraw

    pw, ph = 300, 250
    cols, rows = 5, len(results["tasks"])
    top_band, left_band = 64, 28
    width, height = left_band + cols * pw + 16, top_band + rows * ph + 10
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    fonts = (_font(11), _font(13), _font(14))
    draw.text((width / 2, 6), f"Pruned LRP (base {BASE_NAME}) and Relative LRP on synthetic data with "
              "ground-truth masks (mean and 1 s.e. band over explained examples)",
              fill=(0, 0, 0), font=_font(15), anchor="mt")
    # legend
    lx, ly = left_band + 60, 34
    for label, key, marker, dash in (("PLRP-lambda", "PLRP-lambda", "o", False), ("PLRP-M", "PLRP-m", "s", False),
                                     (f"base {BASE_NAME} (p = 0, no pruning)", "base", None, True)):
        c = _COLORS[key]
        if dash:
            for i in range(0, 30, 8):
                draw.line([(lx + i, ly + 8), (lx + i + 4, ly + 8)], fill=c, width=2)
        else:
            draw.line([(lx, ly + 8), (lx + 30, ly + 8)], fill=c, width=2)
            if marker == "o":
                draw.ellipse([lx + 11.5, ly + 4.5, lx + 18.5, ly + 11.5], fill=c)
            else:
                draw.rectangle([lx + 12, ly + 5, lx + 18, ly + 11], fill=c)
        draw.text((lx + 36, ly + 8), label, fill=(0, 0, 0), font=fonts[1], anchor="lm")
        lx += 36 + draw.textlength(label, font=fonts[1]) + 30
    draw.text((lx + 10, ly + 8), "| right: R-LRP vs LRP-0 vs Epsilon, lower is better; bar = mean,",
              fill=(0, 0, 0), font=fonts[1], anchor="lm")
    lx += 10 + draw.textlength("| right: R-LRP vs LRP-0 vs Epsilon, lower is better; bar = mean,", font=fonts[1]) + 12
    draw.polygon([(lx, ly + 3), (lx + 5, ly + 8), (lx, ly + 13), (lx - 5, ly + 8)], fill=(0, 0, 0))
    draw.text((lx + 9, ly + 8), "= median", fill=(0, 0, 0), font=fonts[1], anchor="lm")

    metric_titles = (("gini", "Gini sparsity (higher: sparser)", "Gini index of |R|"),
                     ("rma", "Relevance mass accuracy", "share of R+ inside mask"),
                     ("aopc", "Pixel flipping, MoRF", "AOPC (logit drop)"))
    ps = list(cfg.ps)
    xt = [round(0.1 * i, 1) for i in range(0, 10, 3)] if len(ps) > 4 else ps
    for r, (tname, tres) in enumerate(results["tasks"].items()):
        y0 = top_band + r * ph
        # row label
        tmp = Image.new("RGBA", (ph, 20), (255, 255, 255, 0))
        ImageDraw.Draw(tmp).text((ph / 2, 10), tname, fill=(0, 0, 0, 255), font=fonts[2], anchor="mm")
        rot = tmp.rotate(90, expand=True)
        img.paste(rot, (2, y0), rot)
        sweep = tres["pruning"]
        for c, (key, title, ylabel) in enumerate(metric_titles):
            box = (left_band + c * pw, y0, left_band + (c + 1) * pw, y0 + ph)
            vals = [sweep["base"][key]["mean"]]
            for mode in ("PLRP-lambda", "PLRP-m"):
                vals += [s["mean"] + s["sem"] * sg for s in sweep[mode][key] for sg in (-1, 1)
                         if math.isfinite(s["sem"])] + [s["mean"] for s in sweep[mode][key]]
            pan = Panel(draw, box, (-0.03, max(ps) + 0.03), _limits(vals), f"{tname}: {title}",
                        "pruned proportion p", ylabel, fonts, xticks=xt)
            b = sweep["base"][key]["mean"]
            curves = {}
            for mode in ("PLRP-lambda", "PLRP-m"):
                ss = sweep[mode][key]
                m = [s["mean"] for s in ss]
                e = [s["sem"] if math.isfinite(s["sem"]) else 0.0 for s in ss]
                curves[mode] = m
                pan.band(ps, [a - d for a, d in zip(m, e)], [a + d for a, d in zip(m, e)], _COLORS[mode])
            pan.line([0, max(ps)], [b, b], _COLORS["base"], dash=True)
            for mode, marker in (("PLRP-m", "s"), ("PLRP-lambda", "o")):
                pan.line(ps, curves[mode], _COLORS[mode], marker=marker)
        # robustness bars
        rob = tres["robustness"]
        names = list(rob)
        for c, (key, title, ylabel) in enumerate((
                ("max_sensitivity_rel", f"Max-sensitivity, r = {cfg.radius}", "relative max-sensitivity"),
                ("conservation_error", "Conservation error", "|sum R - f| / |f|"))):
            box = (left_band + (3 + c) * pw, y0, left_band + (4 + c) * pw, y0 + ph)
            vals = [rob[n][key]["mean"] for n in names]
            meds = [rob[n][key]["median"] for n in names]
            hi = max(v for v in vals + meds if math.isfinite(v)) * 1.18 or 1.0
            short = [n.replace("Epsilon (0.1)", "Eps 0.1").replace("PLRP-lambda p=0.5", "PLRP .5")
                     .replace("EpsilonPlus", "Eps+") for n in names]
            xlabel = "Eps+: EpsilonPlus, PLRP .5: PLRP-lambda p=.5" if len(names) > 3 else "method"
            pan = Panel(draw, box, (-0.6, len(names) - 0.4), (0.0, hi), f"{tname}: {title}", xlabel, ylabel,
                        fonts, xticks=list(range(len(names))), xticklabels=short, xlabel_font=fonts[0])
            for i, v in enumerate(vals):
                if not math.isfinite(v):
                    continue
                col = _BAR[i % len(_BAR)]
                draw.rectangle([pan.X(i - 0.32), pan.Y(v), pan.X(i + 0.32), pan.Y(0)], fill=col)
                top = min(pan.Y(v), pan.Y(meds[i]) - 5 if math.isfinite(meds[i]) else pan.Y(v))
                draw.text((pan.X(i), top - 2), _fmt(v), fill=(0, 0, 0), font=fonts[0], anchor="mb")
                if math.isfinite(meds[i]):
                    mx, my = pan.X(i), pan.Y(meds[i])
                    draw.polygon([(mx, my - 5), (mx + 5, my), (mx, my + 5), (mx - 5, my)], fill=(0, 0, 0),
                                 outline=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# ------------------------------------------------------------------ report


def markdown(results: dict, cfg: Config) -> str:
    L = ["# Pruned LRP and Relative LRP on synthetic data (`examples/variants.py`)", ""]
    L.append(f"Command: `{results['command']}`; {results['seconds']:.0f} s on "
             f"{results['machine']}. Base composite: **{BASE_NAME}** (z+ on conv layers including the first, "
             "epsilon on dense layers); x-proportional at the input, unlike EpsilonPlusFlat, whose flat first "
             "layer spreads relevance over absent bases and the black background.")
    L.append("")
    L.append("Metrics: Gini = sparseness of |R| at the input (DNA: of the relevance summed per position); "
             "RMA = share of positive relevance inside the ground-truth mask (per position, channels summed); "
             "AOPC = mean drop of the explained logit while patches "
             f"({cfg.img_region}x{cfg.img_region} pixels, {cfg.dna_region} bases) are replaced by 0 in order of "
             "decreasing relevance (MoRF), over all patches; early AOPC = the same over the first eighth of the "
             "patches only. Sparse maps leave many patches at exactly zero relevance, and among those the MoRF order "
             "is a tie (broken by position), so the full AOPC of a sparse map measures partly an arbitrary order; "
             "the column 'patches with R ≠ 0' counts the patches that carry any relevance. Means over the "
             "explained examples (± 1 s.e. in the JSON and the figure).")
    for tname, tres in results["tasks"].items():
        info, sw = tres["info"], tres["pruning"]
        L += ["", f"## {tname}", ""]
        L.append(f"Held-out accuracy {info['accuracy']:.1%}; {info['explained']} examples explained "
                 f"({info['what']}); the mask covers {info['mask_fraction']:.1%} of the positions; "
                 f"trained in {info['train_seconds']:.1f} s.")
        L.append("")
        b = sw["base"]
        fl = sw.get("EpsilonPlusFlat (p=0, reference)")
        keys = ("gini", "rma", "aopc", "aopc_early", "active_patches")
        fmt = {"gini": ".3f", "rma": ".3f", "aopc": ".3f", "aopc_early": ".3f", "active_patches": ".1f"}
        L.append("| p | Gini λ | Gini M | RMA λ | RMA M | AOPC λ | AOPC M | early AOPC λ | early AOPC M "
                 "| patches with R ≠ 0, λ | M |")
        L.append("|---|" + "---|" * 10)
        one = lambda d: " | ".join(f"{d[k]['mean']:{fmt[k]}} | " for k in keys).rstrip() + " |"
        L.append(f"| base {BASE_NAME} | {one(b)}")
        for i, p in enumerate(cfg.ps):
            lam, m = sw["PLRP-lambda"], sw["PLRP-m"]
            L.append(f"| {p:.1f} | " + " | ".join(f"{lam[k][i]['mean']:{fmt[k]}} | {m[k][i]['mean']:{fmt[k]}}"
                                                  for k in keys) + " |")
        if fl is not None:
            L.append(f"| EpsilonPlusFlat (reference) | {one(fl)}")
        L.append("")
        L.append("The negative proportion: jaxlrp's default p_neg = p (above) against the public "
                 "re-implementation's p_neg = p/2 (both leave the input layer unpruned); mean Gini, RMA, AOPC:")
        L.append("")
        L.append("| p | Gini λ | λ, p/2 | Gini M | M, p/2 | RMA λ | λ, p/2 | RMA M | M, p/2 | AOPC λ | λ, p/2 "
                 "| AOPC M | M, p/2 |")
        L.append("|---|" + "---|" * 12)
        for i, p in enumerate(cfg.ps):
            cells = [f"{sw[f'PLRP-{_sweep_key(mode, half)}'][k][i]['mean']:.3f}"
                     for k in ("gini", "rma", "aopc") for mode in variants.MODES for half in (False, True)]
            L.append(f"| {p:.1f} | " + " | ".join(cells) + " |")
        L.append("")
        L.append(f"Largest standard errors: Gini {_max_sem(sw, 'gini'):.3f}, RMA {_max_sem(sw, 'rma'):.3f}, "
                 f"AOPC {_max_sem(sw, 'aopc'):.3f}. p = 0 equals the base composite to "
                 f"{max(sw['PLRP-lambda']['max_abs_diff_p0_vs_base'], sw['PLRP-m']['max_abs_diff_p0_vs_base']):.1e}"
                 " (max abs difference).")
        L.append("")
        L.append(f"Robustness ({tres['robustness_n']} examples; uniform noise in the L-inf ball of radius "
                 f"{cfg.radius}, max over {cfg.noise_samples} draws, relative to ||R(x)||; target fixed to the "
                 "class explained at x):")
        L.append("")
        L.append("| method | max-sensitivity, mean ± s.e. (lower) | median | conservation error, mean (median) "
                 "| sum\\|R\\| / \\|f\\|, mean |")
        L.append("|---|---|---|---|---|")
        for name, s in tres["robustness"].items():
            ms, ce = s["max_sensitivity_rel"], s["conservation_error"]
            L.append(f"| {name} | {ms['mean']:.3f} ± {ms['sem']:.3f} | {ms['median']:.3f} "
                     f"| {ce['mean']:.3g} ({ce['median']:.3g}) | {s['l1_ratio']['mean']:.3g} |")
    L += ["", "## Against the papers' expectations", ""] + [f"- {line}" for line in results["verdicts"]]
    L += ["", "Sources: Yanez Sarmiento, Witzke, Klein & Renard (2024), arXiv:2404.14271; Nyiri & Gibaru "
          "(2025), arXiv:2501.14322. The full texts were not available; `jaxlrp.variants` implements the "
          "project's reading of them.", ""]
    return "\n".join(L)


def _max_sem(sw, key):
    v = [s["sem"] for mode in ("PLRP-lambda", "PLRP-m") for s in sw[mode][key] if math.isfinite(s["sem"])]
    return max(v) if v else float("nan")


def verdicts(results: dict) -> list:
    """Plain-language comparison of the measurements with the papers' expectations."""
    out = []
    for tname, tres in results["tasks"].items():
        sw = tres["pruning"]
        for mode, label in (("PLRP-lambda", "PLRP-lambda"), ("PLRP-m", "PLRP-M")):
            g = [s["mean"] for s in sw[mode]["gini"]]
            rma = [s["mean"] for s in sw[mode]["rma"]]
            ao = [s["mean"] for s in sw[mode]["aopc"]]
            mono = all(b >= a - 1e-6 for a, b in zip(g[:-1], g[1:]))
            imax = int(np.nanargmax(rma))
            ps = sw[mode]["p"]
            shape = ("rises then falls" if 0 < imax < len(rma) - 1 else
                     "is highest at p = 0 and falls" if imax == 0 else "rises up to the largest p")
            drop = (ao[-1] - ao[0]) / abs(ao[0]) if ao[0] else float("nan")
            out.append(
                f"{tname}, {label}: Gini {g[0]:.3f} -> {g[-1]:.3f} "
                f"({'monotone rise' if mono else 'not monotone'}); RMA {rma[0]:.3f} -> max {rma[imax]:.3f} at "
                f"p = {ps[imax]:.1f} -> {rma[-1]:.3f} at p = {ps[-1]:.1f} ({shape}); AOPC {ao[0]:.3f} -> "
                f"{ao[-1]:.3f} ({drop:+.0%}; min {min(ao):.3f}, max {max(ao):.3f}).")
        lam, m = sw["PLRP-lambda"], sw["PLRP-m"]
        better = {k: sum(a["mean"] >= b["mean"] - 1e-9 for a, b in zip(lam[k][1:], m[k][1:]))
                  for k in ("gini", "rma", "aopc")}
        n = len(lam["gini"]) - 1
        out.append(f"{tname}: PLRP-lambda >= PLRP-M at {better['gini']}/{n} p > 0 for Gini, "
                   f"{better['rma']}/{n} for RMA, {better['aopc']}/{n} for AOPC.")
        rob = tres["robustness"]
        names = ("R-LRP", "R-LRP (neuron)", "LRP-0", "Epsilon (0.1)")
        for stat in ("mean", "median"):
            s = {k: rob[k]["max_sensitivity_rel"][stat] for k in names}
            for r in ("R-LRP", "R-LRP (neuron)"):
                out.append(f"{tname}: relative max-sensitivity ({stat}) {r} {s[r]:.3f}, LRP-0 {s['LRP-0']:.3f}, "
                           f"Epsilon {s['Epsilon (0.1)']:.3f}: {r} is "
                           f"{'more' if s[r] < s['LRP-0'] else 'not more'} stable than LRP-0"
                           f" and {'more' if s[r] < s['Epsilon (0.1)'] else 'not more'} stable than Epsilon.")
        ce = {k: rob[k]["conservation_error"]["median"] for k in ("R-LRP", "R-LRP (neuron)")}
        out.append(f"{tname}: conservation error (median) R-LRP layer {ce['R-LRP']:.3g} (sum|R| = |f| by construction, "
                   f"the signed sum only up to a factor), neuron {ce['R-LRP (neuron)']:.3g} (exact up to neurons with "
                   "no contribution at all).")
        sens = np.asarray(rob["R-LRP"]["max_sensitivity_per_example"])
        f = np.asarray(tres["robustness_logits"])
        worst = np.argsort(sens)[::-1][:3]
        near_zero = bool(np.all(np.abs(f[worst]) < 0.25 * np.median(np.abs(f))))
        out.append(f"{tname}: R-LRP's least stable examples (sensitivity "
                   f"{', '.join(f'{v:.2f}' for v in sens[worst])}) have explained logits "
                   f"{', '.join(f'{v:.2f}' for v in f[worst])} (median logit {np.median(f):.2f})"
                   + ("; R-LRP's map is proportional to the logit, sign included (L1 mass |f|, no per-neuron "
                      "denominator to cancel it), so where the logit is near 0 the noise flips or rescales the "
                      "whole map, while LRP-0 / epsilon / z+ divide the logit out at the last layer."
                      if near_zero else "."))
    return out


# ------------------------------------------------------------------ main


def run(cfg: Config, out: pathlib.Path, command: str, log: Callable[[str], None]) -> dict:
    t_start = time.perf_counter()
    results = {"command": command, "config": dataclasses.asdict(cfg), "base_composite": BASE_NAME,
               "machine": f"{jax.default_backend()} x {jax.device_count()}, jax {jax.__version__}",
               "tasks": {}}
    examples = {}
    for build, what in ((image_task, "held-out images, target = predicted class"),
                        (dna_task, "held-out positive sequences predicted positive, target = 1")):
        task = build(cfg)
        log(f"{task.name}: trained in {task.train_seconds:.1f} s, held-out accuracy {task.accuracy:.1%}, "
            f"explaining {task.x.shape[0]}")
        t0 = time.perf_counter()
        sweep, ex = pruning_sweep(task, cfg.ps, flat_reference=cfg.extras)
        log(f"{task.name}: p sweep in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        n_rob = min(cfg.robust_explain, task.x.shape[0])
        rob, logits = robustness(task, cfg, n_rob, robust_methods(full=cfg.extras))
        log(f"{task.name}: robustness in {time.perf_counter() - t0:.1f} s")
        results["tasks"][task.name] = {
            "info": {"accuracy": task.accuracy, "explained": int(task.x.shape[0]), "what": what,
                     "mask_fraction": task.mask_fraction, "train_seconds": task.train_seconds},
            "pruning": sweep, "robustness": rob, "robustness_n": n_rob,
            "robustness_logits": logits,
        }
        examples[task.name] = ex
    results["verdicts"] = verdicts(results)
    results["seconds"] = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    png = figure(results, cfg, out / "variants.png")
    (out / "variants.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "variants.md").write_text(markdown(results, cfg))
    return {"png": png, "md": out / "variants.md", "json": out / "variants.json", **results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("examples/results"),
                    help="output directory (default: examples/results)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--quick", action="store_true", help="tiny run (few examples, 4 values of p), < 30 s")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(QUICK if args.quick else Config(), seed=args.seed)
    command = "python examples/variants.py" + (" --quick" if args.quick else "") + \
        (f" --seed {args.seed}" if args.seed else "") + \
        (f" --out {args.out}" if args.out != pathlib.Path("examples/results") else "")
    res = run(cfg, args.out, command, lambda s: print(s, file=sys.stderr, flush=True))
    for line in res["verdicts"]:
        print(line)
    print(f"wrote {res['png']}, {res['md']} and {res['json']} in {res['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
