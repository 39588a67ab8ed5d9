"""Fact or artifact: LRP on dense, convolutional and recurrent models of one task (issue 5).

The synthetic task of Landt-Hayen, Rath, Claus & Kröger (2023)
(:func:`jaxlrp.data.squares`): 100x100 images with two fixed squares on the right
(+0.5 at rows 20:30, cols 70:80; -0.5 at rows 70:80, cols 70:80), present in every
image, and one class square on the left (rows 45:55, cols 20:30) of +0.5 (class 0)
or -0.5 (class 1), plus uniform noise in [-0.1, 0.1]; 250 images per class, 80/20
split. Only the class square carries the label, so a faithful map puts its
relevance there and none on the fixed squares.

Models:

* an MLP (10000-64-2, ReLU) and a small CNN (two 3x3 'SAME' conv + max-pool
  blocks, dense head), trained with Adam;
* echo state networks (:class:`jaxlrp.models.recurrent.EchoStateNetwork`: 300
  reservoir units, spectral radius 0.8, sparsity 0.3, W_in ~ U(-0.1, 0.1), no
  reservoir bias, readout by least squares with a tiny ridge on the final state
  plus a bias) fed column by column left to right and right to left, at leak
  rates a in {0.01, 0.05, 0.1, 0.2, 0.3, 0.5};
* LSTMs (16 units) fed column by column in both directions.

Every model is explained with the library's default rules (LRP-epsilon, 1e-6, on
dense and conv layers; proportional split at sums; signal-takes-all at the LSTM
gates) for the true class of each validation image. Reported per model:

* validation accuracy;
* relevance mass accuracy (RMA) on the class square: the share of positive
  relevance inside it (10x10 of 100x100 pixels, 1% of the image);
* the share of positive relevance on the two fixed right-hand squares (an
  artifact detector: it should be about 0, since they carry no information);
* the decay rate k of the relevance per column along the feeding direction
  (:func:`jaxlrp.diagnostics.decay_profile`; fit of log share ~ c - k t, t = steps
  before the last one fed; for a leaky memory of rate a, about -log(1 - a));
* for the CNN (and the MLP for reference) the share of |relevance| on the one-pixel
  image border (:func:`jaxlrp.diagnostics.border_mass`; uniform share 3.96%);
* the permutation test (:func:`jaxlrp.diagnostics.permutation_test`) for the ESN
  at a = 0.05 fed left to right and for the MLP: the columns of every image are
  shuffled by one fixed permutation, the model retrained and explained, and the
  relevance mapped back.

    python examples/fact_or_artifact.py            # full run, ~3 min on 2 CPU cores
    python examples/fact_or_artifact.py --quick    # smoke run, < 40 s

writes ``fact_or_artifact.png`` (heatmaps), ``fact_or_artifact.md`` (tables) and
``fact_or_artifact.json`` (every number) to ``--out`` (default ``examples/results``).
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
from typing import Callable, Optional

if __name__ == "__main__" and "--quick" in sys.argv[1:]:
    # a tiny run is dominated by XLA compile time: compile with less optimisation
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import flax.linen as nn  # noqa: E402  (after XLA_FLAGS)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxlrp import data, diagnostics, lrp, metrics, viz  # noqa: E402
from jaxlrp.models import recurrent  # noqa: E402

# ------------------------------------------------------------------ set-up


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    per_class: int = 250
    size: int = 100
    leak_rates: tuple = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
    reservoir: int = 300
    ridge: float = 1e-6
    mlp_steps: int = 150
    cnn_steps: int = 150
    lstm_hidden: int = 16
    lstm_steps: int = 200
    permutation_leak: float = 0.05
    explain_batch: int = 100


QUICK = Config(per_class=50, leak_rates=(0.01, 0.3), reservoir=100, mlp_steps=40, cnn_steps=15,
               lstm_hidden=8, lstm_steps=30)


class MLP(nn.Module):
    """flatten - dense(64) - relu - dense(2)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64, name="fc1")(x.reshape(x.shape[0], -1)))
        return nn.Dense(2, name="head")(x)


class CNN(nn.Module):
    """conv(8, 3x3, SAME)-relu-maxpool(2), conv(16)-relu-maxpool(4), dense(2)."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3), name="conv1")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3), name="conv2")(x)), (4, 4), (4, 4))
        return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))


def train_sgd(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, seed: int, lr: float) -> dict:
    """Adam on softmax cross-entropy, random batches of 64."""
    params = model.init(jax.random.PRNGKey(seed), x[:1])
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    batch = min(64, len(x))
    for _ in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        params, state = step(params, state, x[idx], y[idx])
    return params


@dataclasses.dataclass
class Fitted:
    """A trained model: its name, how it reads the image and its apply function."""

    name: str
    family: str
    apply: Callable
    variables: dict
    reverse: bool = False  # fed right to left
    leak: Optional[float] = None


def fit_model(spec: dict, x: np.ndarray, y: np.ndarray, cfg: Config) -> Fitted:
    """Train the model described by ``spec`` on ``(x, y)``."""
    fam = spec["family"]
    if fam == "mlp":
        m = MLP()
        return Fitted(spec["name"], fam, m.apply, train_sgd(m, x, y, cfg.mlp_steps, cfg.seed, 1e-3))
    if fam == "cnn":
        m = CNN()
        return Fitted(spec["name"], fam, m.apply, train_sgd(m, x, y, cfg.cnn_steps, cfg.seed, 3e-3))
    if fam == "lstm":
        m = recurrent.LSTMClassifier(cfg.lstm_hidden, 2, feed="columns", reverse=spec["reverse"])
        v = train_sgd(m, x, y, cfg.lstm_steps, cfg.seed, 1e-2)
        return Fitted(spec["name"], fam, m.apply, v, spec["reverse"])
    m = recurrent.EchoStateNetwork(cfg.reservoir, 2, leak_rate=spec["leak"], feed="columns",
                                   reverse=spec["reverse"])
    v = m.init(jax.random.PRNGKey(cfg.seed), x[:1])
    v = recurrent.fit_readout(m, v, x, y, ridge=cfg.ridge, batch_size=250)
    return Fitted(spec["name"], fam, m.apply, v, spec["reverse"], spec["leak"])


def model_specs(cfg: Config) -> list:
    specs = [{"name": "MLP", "family": "mlp"}, {"name": "CNN", "family": "cnn"}]
    specs += [{"name": f"LSTM {d}", "family": "lstm", "reverse": r} for d, r in (("L>R", False), ("R>L", True))]
    for d, r in (("L>R", False), ("R>L", True)):
        specs += [{"name": f"ESN a={a:g} {d}", "family": "esn", "leak": a, "reverse": r} for a in cfg.leak_rates]
    return specs


def predict_and_explain(f: Fitted, x: np.ndarray, target: np.ndarray, batch: int) -> tuple:
    """Logits and LRP relevance (default rules) of ``x`` for class ``target``, in batches."""
    fn = jax.jit(lambda v, xb, t: (f.apply(v, xb), lrp(f.apply)(v, xb, target=t)))
    outs, rels = [], []
    for i in range(0, len(x), batch):
        o, r = fn(f.variables, x[i:i + batch], target[i:i + batch])
        outs.append(np.asarray(o))
        rels.append(np.asarray(r))
    return np.concatenate(outs), np.concatenate(rels)


# ------------------------------------------------------------------ measurements


def fixed_mask(size: int) -> np.ndarray:
    """The two fixed right-hand squares, ``(size, size)`` boolean."""
    s = lambda c: int(math.floor(c * size / 100 + 0.5))
    m = np.zeros((size, size), bool)
    m[s(20):s(30), s(70):s(80)] = True
    m[s(70):s(80), s(70):s(80)] = True
    return m


def summary(v) -> dict:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    return {"mean": float(v.mean()) if n else float("nan"),
            "sem": float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"), "n": n}


def measure(f: Fitted, rel: np.ndarray, logits: np.ndarray, y: np.ndarray, class_mask: np.ndarray,
            fixed: np.ndarray) -> dict:
    r2 = rel[..., 0]  # (N, H, W)
    rma = metrics.relevance_mass_accuracy(r2, class_mask)
    fixed_share = metrics.relevance_mass_accuracy(r2, np.broadcast_to(fixed, r2.shape))
    fixed_abs = metrics.relevance_mass_accuracy(r2, np.broadcast_to(fixed, r2.shape), mode="abs")
    prof, rate = diagnostics.decay_profile(r2, axis=2, reverse=f.reverse)
    # the share of |R| in the last 10 columns fed, and the decay rate fitted on the
    # last 20 columns fed only (free of squares in both directions)
    last10 = prof[:, :10].sum(1)
    t = np.arange(20) - 9.5
    logp = np.log(np.maximum(prof[:, :20], 1e-300))
    k20 = -((logp - logp.mean(1, keepdims=True)) * t).sum(1) / (t * t).sum()
    out = {
        "family": f.family,
        "accuracy": float(np.mean(np.argmax(logits, -1) == y)),
        "rma_class": summary(rma),
        "fixed_share": summary(fixed_share),
        "fixed_share_abs": summary(fixed_abs),
        "decay_rate": summary(rate),
        "decay_rate_last20": summary(k20),
        "last10_share": summary(last10),
        "profile_mean": prof.mean(0).tolist(),
        "border_mass": summary(diagnostics.border_mass(r2[..., None], width=1)),
    }
    if f.leak is not None:
        out["leak"] = f.leak
        out["memory_rate"] = -math.log(1.0 - f.leak)
    return out


def permutation(spec: dict, x: np.ndarray, y: np.ndarray, n_train: int, cfg: Config) -> dict:
    """The permutation test on columns for one model family: train on the first
    ``n_train`` images, explain all, accuracy on the rest."""
    def fit_and_explain(xp, yp):
        f = fit_model(spec, xp[:n_train], yp[:n_train], cfg)
        logits, rel = predict_and_explain(f, xp, yp, cfg.explain_batch)
        return rel, float(np.mean(np.argmax(logits[n_train:], -1) == yp[n_train:]))

    res = diagnostics.permutation_test(fit_and_explain, x, y, axis=2, seed=cfg.seed + 1)
    val = slice(n_train, None)
    cm = np.broadcast_to(data_mask(x.shape[1]), res["relevance"][val, ..., 0].shape)
    return {
        "model": spec["name"],
        "accuracy": res["accuracy"], "accuracy_permuted": res["accuracy_permuted"],
        "correlation": summary(res["correlation"][val]),
        "rma_class": summary(metrics.relevance_mass_accuracy(res["relevance"][val, ..., 0], cm)),
        "rma_class_permuted": summary(metrics.relevance_mass_accuracy(res["relevance_permuted"][val, ..., 0], cm)),
        "_maps": (res["relevance"][val][:1], res["relevance_permuted"][val][:1]),
    }


def data_mask(size: int) -> np.ndarray:
    return data.squares(0, 1, size).mask[0]


# ------------------------------------------------------------------ figure


def figure(x: np.ndarray, y: np.ndarray, maps: dict, perm: list, path: pathlib.Path) -> pathlib.Path:
    """Rows: one validation image per class, then the mean |R| over the validation
    set; columns: the input, then every model. Last row: the permutation test."""
    names = list(maps)
    picks = [int(np.flatnonzero(y == c)[0]) for c in (0, 1)]
    tiles, titles = [], []
    for r, i in enumerate(picks):  # model names once, above the first row
        tiles.append(viz.heatmap(x[i, ..., 0], cmap="gray", symmetric=False))
        titles.append("input" if r == 0 else "")
        for n in names:
            tiles.append(viz.heatmap(maps[n][i, ..., 0], percentile=99.5))
            titles.append(n if r == 0 else "")
    tiles.append(viz.heatmap(np.abs(x).mean(0)[..., 0], cmap="gray", symmetric=False))
    titles.append("")
    for n in names:
        tiles.append(viz.heatmap(np.abs(maps[n]).mean(0)[..., 0], cmap="hot", symmetric=False, percentile=99.5))
        titles.append("")
    row = []
    for p in perm:
        a, b = p["_maps"]
        row += [(viz.heatmap(a[0, ..., 0], percentile=99.5), f"{p['model']}"),
                (viz.heatmap(b[0, ..., 0], percentile=99.5), "permuted, back")]
    ncols = len(names) + 1
    row += [(np.full_like(tiles[0], 255), "")] * (ncols - len(row))
    tiles += [t for t, _ in row]
    titles += [t for _, t in row]
    labels = [f"class {y[i]}: R" for i in picks] + ["mean |x|, |R|", "permutation test"]
    img = viz.grid(tiles, titles=titles, ncols=ncols, pad=4, row_labels=labels)
    return viz.save_png(path, img)


# ------------------------------------------------------------------ report


def fmt(s: dict, pct: bool = True) -> str:
    if not math.isfinite(s["mean"]):
        return "-"
    return f"{100 * s['mean']:.1f}%" if pct else f"{s['mean']:.3f}"


def markdown(res: dict) -> str:
    L = ["# Fact or artifact: LRP on dense, convolutional and recurrent models (`examples/fact_or_artifact.py`)", ""]
    L.append(f"Command: `{res['command']}`; {res['seconds']:.0f} s on {res['machine']}. Task `data.squares`: "
             f"{res['n_train']} training and {res['n_val']} validation images ({res['config']['size']}x"
             f"{res['config']['size']}). Relevance: LRP-epsilon (1e-6) with the library defaults, for the true "
             "class; means over the validation images.")
    L.append("")
    L.append("Columns: accuracy on the validation set; RMA = share of the positive relevance on the class square "
             "(1% of the pixels); fixed = share of the positive relevance on the two fixed squares (2% of the pixels, "
             "carry no label information: should be ~0); last 10 = share of |R| in the last 10 columns fed "
             "(MLP/CNN: columns 90-99); k = (recurrent models) fitted decay rate of |R| per column along the feeding direction "
             "(`diagnostics.decay_profile`, fitted over all columns; k20: over the last 20 columns fed only, where "
             "there is no square in either direction); -log(1-a) = decay of a leaky memory; border = share of |R| on the "
             "one-pixel border (uniform: 3.96%).")
    L.append("")
    L.append("| model | accuracy | RMA class square | fixed squares | last 10 cols | k | k20 | -log(1-a) | border |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name, m in res["models"].items():
        mem = f"{m['memory_rate']:.3f}" if "memory_rate" in m else "-"
        seq = m["family"] in ("esn", "lstm")  # decay rates of feed-forward models: JSON only
        k, k20 = (fmt(m["decay_rate"], False), fmt(m["decay_rate_last20"], False)) if seq else ("-", "-")
        L.append(f"| {name} | {100 * m['accuracy']:.0f}% | {fmt(m['rma_class'])} | {fmt(m['fixed_share'])} | "
                 f"{fmt(m['last10_share'])} | {k} | {k20} | {mem} | {fmt(m['border_mass'])} |")
    L += ["", "Permutation test (columns shuffled by one fixed permutation, retrained, relevance mapped back; "
          "correlation of |R| with the unpermuted model's map, per validation image):", ""]
    L.append("| model | accuracy | accuracy, permuted | correlation of maps | RMA | RMA, permuted |")
    L.append("|---|---|---|---|---|---|")
    for p in res["permutation"]:
        L.append(f"| {p['model']} | {100 * p['accuracy']:.0f}% | {100 * p['accuracy_permuted']:.0f}% | "
                 f"{fmt(p['correlation'], False)} | {fmt(p['rma_class'])} | {fmt(p['rma_class_permuted'])} |")
    L += ["", "## Against the paper", ""] + [f"- {v}" for v in res["verdicts"]]
    L += ["", "Figure: `fact_or_artifact.png` -- rows 1-2: one validation image per class and its relevance "
          "under every model (blue negative, red positive, 99.5th percentile of |R| saturates); row 3: mean |R| "
          "over the validation set; row 4: the permutation test maps.", "",
          "Source: Landt-Hayen, Rath, Claus & Kröger (2023), arXiv:2302.12317; the target numbers are those of "
          "the authors' notebooks and slides (the paper's own tables were not available).", ""]
    return "\n".join(L)


def verdicts(res: dict, cfg: Config) -> list:
    ms = res["models"]
    out = []
    acc = lambda d: ", ".join(f"a={a:g}: {100 * ms[f'ESN a={a:g} {d}']['accuracy']:.0f}%" for a in cfg.leak_rates)
    out.append(f"ESN fed left to right (paper: ~100% at a=0.01, ~50% at a=0.3): {acc('L>R')}.")
    out.append(f"ESN fed right to left (paper: ~90% even at a=0.5): {acc('R>L')}.")
    rma = lambda d: ", ".join(f"{100 * ms[f'ESN a={a:g} {d}']['rma_class']['mean']:.0f}%" for a in cfg.leak_rates)
    out.append(f"Fading memory: the share of positive relevance on the class square falls with a when fed left to "
               f"right ({rma('L>R')}) and stays higher fed right to left ({rma('R>L')}); the share of |R| in the "
               f"last 10 columns fed goes from "
               f"{100 * ms[f'ESN a={cfg.leak_rates[0]:g} L>R']['last10_share']['mean']:.0f}% (a={cfg.leak_rates[0]:g})"
               f" to {100 * ms[f'ESN a={cfg.leak_rates[-1]:g} L>R']['last10_share']['mean']:.0f}% "
               f"(a={cfg.leak_rates[-1]:g}).")
    for d in ("L>R", "R>L"):
        ks = ", ".join(f"{ms[f'ESN a={a:g} {d}']['decay_rate']['mean']:.3f} / "
                       f"{ms[f'ESN a={a:g} {d}']['decay_rate_last20']['mean']:.3f} vs {-math.log(1 - a):.3f}"
                       for a in cfg.leak_rates)
        out.append(f"Decay rate of |R| per column, ESN {d}, k (all columns) / k20 (last 20 fed) vs -log(1-a): {ks}.")
    slow = ", ".join(f"{-math.log(1 - a * (1 - 0.8)):.3f}" for a in cfg.leak_rates)
    out.append("Relevance fades more slowly than the leak alone (-log(1-a)) suggests: the reservoir feeds the state "
               "back, and the slowest mode of the linearised update (1-a) I + a W decays at -log(1 - a(1 - rho)), "
               f"rho = 0.8: {slow}, which k20 follows more closely for a >= 0.1.")
    for n in ("MLP", "CNN", "LSTM L>R", "LSTM R>L"):
        m = ms[n]
        out.append(f"{n}: accuracy {100 * m['accuracy']:.0f}%, RMA {fmt(m['rma_class'])}, fixed squares "
                   f"{fmt(m['fixed_share'])}, border {fmt(m['border_mass'])}.")
    fixed = max(((n, m["fixed_share"]["mean"]) for n, m in ms.items()), key=lambda t: t[1])
    out.append(f"Artifact detector: the largest share of positive relevance on the fixed squares is {fixed[0]} "
               f"({100 * fixed[1]:.1f}%); the squares are 2% of the pixels.")
    for p in res["permutation"]:
        out.append(f"Permutation test, {p['model']}: accuracy {100 * p['accuracy']:.0f}% -> "
                   f"{100 * p['accuracy_permuted']:.0f}%, map correlation {p['correlation']['mean']:.2f}, RMA "
                   f"{fmt(p['rma_class'])} -> {fmt(p['rma_class_permuted'])} (paper, col-wise ESN on SST: 96% -> 75%, "
                   "maps plausible after the inverse permutation; MLP invariant).")
    return out


# ------------------------------------------------------------------ main


def run(cfg: Config, out: pathlib.Path, command: str, log: Callable[[str], None]) -> dict:
    t_start = time.perf_counter()
    ds = data.squares(cfg.seed, 2 * cfg.per_class, cfg.size)
    n_train = int(round(0.8 * len(ds.y)))
    xtr, ytr, xva, yva = ds.x[:n_train], ds.y[:n_train], ds.x[n_train:], ds.y[n_train:]
    class_mask, fixed = ds.mask[n_train:], fixed_mask(cfg.size)
    results = {"command": command, "config": dataclasses.asdict(cfg), "n_train": n_train, "n_val": len(yva),
               "machine": f"{jax.default_backend()} x {jax.device_count()}, jax {jax.__version__}",
               "models": {}}
    maps = {}
    for spec in model_specs(cfg):
        t0 = time.perf_counter()
        f = fit_model(spec, xtr, ytr, cfg)
        logits, rel = predict_and_explain(f, xva, yva, cfg.explain_batch)
        m = measure(f, rel, logits, yva, class_mask, fixed)
        m["seconds"] = time.perf_counter() - t0
        results["models"][spec["name"]] = m
        maps[spec["name"]] = rel
        log(f"{spec['name']}: accuracy {100 * m['accuracy']:.0f}%, RMA {fmt(m['rma_class'])}, "
            f"fixed {fmt(m['fixed_share'])}, k {m['decay_rate']['mean']:.3f} ({m['seconds']:.1f} s)")
    t0 = time.perf_counter()
    perm = [permutation({"name": f"ESN a={cfg.permutation_leak:g} L>R", "family": "esn",
                         "leak": cfg.permutation_leak, "reverse": False}, ds.x, ds.y, n_train, cfg),
            permutation({"name": "MLP", "family": "mlp"}, ds.x, ds.y, n_train, cfg)]
    log(f"permutation tests in {time.perf_counter() - t0:.1f} s")
    results["permutation"] = perm
    results["verdicts"] = verdicts(results, cfg)
    results["seconds"] = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    png = figure(xva, yva, maps, perm, out / "fact_or_artifact.png")
    clean = {**results, "permutation": [{k: v for k, v in p.items() if not k.startswith("_")} for p in perm]}
    (out / "fact_or_artifact.json").write_text(json.dumps(clean, indent=1, default=float))
    (out / "fact_or_artifact.md").write_text(markdown(results))
    return {"png": png, "md": out / "fact_or_artifact.md", "json": out / "fact_or_artifact.json", **results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("examples/results"),
                    help="output directory (default: examples/results)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--quick", action="store_true", help="smoke run (100 images, 2 leak rates), < 40 s")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(QUICK if args.quick else Config(), seed=args.seed)
    command = "python examples/fact_or_artifact.py" + (" --quick" if args.quick else "") + \
        (f" --seed {args.seed}" if args.seed else "") + \
        (f" --out {args.out}" if args.out != pathlib.Path("examples/results") else "")
    res = run(cfg, args.out, command, lambda s: print(s, file=sys.stderr, flush=True))
    for line in res["verdicts"]:
        print(line)
    print(f"wrote {res['png']}, {res['md']} and {res['json']} in {res['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
