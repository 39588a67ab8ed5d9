"""AttnLRP and CP-LRP on a text transformer whose decisive tokens are known (issue 8).

Task: sequences of 24 letters drawn uniformly from 24 "neutral" letters, with one
of two trigger letters (``X`` -> class 0, ``Y`` -> class 1) planted at 1 to 3
random positions. The class is which trigger occurs; the trigger positions are the
ground-truth mask. A small pre-LN text encoder
(:class:`jaxlrp.models.transformer.TextEncoder`: token and position embeddings, 2
blocks with flax attention, mean pooling) is trained in seconds with `jaxlrp.models.fit`.

Token ids are not differentiable, so the model is explained from its embedded
sequence (``TextEncoder.embed``; token plus position embeddings) and the token
relevance is the relevance summed over the embedding axis
(:func:`~jaxlrp.models.transformer.token_relevance`). For held-out sequences the
model classifies correctly, the logit of the true class is explained by

* AttnLRP (``composites.AttnLRP()``: epsilon on dense layers, uniform rule on
  ``q.k`` and ``attention.v``, softmax rule, normalisers constant),
* CP-LRP (``composites.CPLRP()``: as AttnLRP, but no relevance through the
  attention weights),
* gradient x input (``jax.grad`` of the logit times the embeddings, summed over
  the embedding axis), the usual baseline.

Metrics per method: relevance rank accuracy of the trigger positions
(``metrics.relevance_rank_accuracy``: the share of the K triggers among the K
most relevant tokens; chance is K/L), relevance mass accuracy (share of the
positive relevance on the triggers), and the conservation error
``|sum R - f_c| / |f_c|``. Timing: the jitted explanation of a batch against the
jitted gradient x input of the same batch (medians of interleaved rounds).

    python examples/transformer.py              # full run, ~30 s on 2 CPU cores
    python examples/transformer.py --quick      # smoke run, < 40 s

writes ``transformer.png`` (token relevance of a few sequences, triggers on an
amber background), ``transformer.md`` and ``transformer.json`` to ``--out``
(default ``examples/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time
from typing import Callable

if __name__ == "__main__" and "--quick" in sys.argv[1:]:
    # a tiny run is dominated by XLA compile time: compile with less optimisation
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlrp import composites, lrp, metrics, models, viz  # noqa: E402
from jaxlrp.models import transformer as T  # noqa: E402

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TRIGGERS = (LETTERS.index("X"), LETTERS.index("Y"))  # class 0, class 1
NEUTRAL = np.array([i for i in range(len(LETTERS)) if i not in TRIGGERS])


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    length: int = 24
    max_triggers: int = 3
    dim: int = 32
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 64
    train: int = 8192
    steps: int = 400
    batch: int = 128
    lr: float = 3e-3
    test: int = 1024
    explain: int = 256
    shown: int = 6
    timing_rounds: int = 5
    timing_calls: int = 10


QUICK = Config(train=2048, steps=120, test=256, explain=48, shown=4, timing_rounds=3, timing_calls=3)


def make_data(rng: np.random.Generator, n: int, cfg: Config) -> tuple:
    """Token ids ``(n, L)``, labels ``(n,)`` and the trigger mask ``(n, L)``."""
    tokens = rng.choice(NEUTRAL, size=(n, cfg.length))
    labels = rng.integers(0, 2, size=n)
    counts = rng.integers(1, cfg.max_triggers + 1, size=n)
    mask = np.zeros((n, cfg.length), bool)
    for i in range(n):
        pos = rng.choice(cfg.length, size=counts[i], replace=False)
        mask[i, pos] = True
        tokens[i, pos] = TRIGGERS[labels[i]]
    return tokens.astype(np.int32), labels.astype(np.int32), mask


def train(cfg: Config, tokens: np.ndarray, labels: np.ndarray, key: jax.Array) -> tuple:
    """Train the text encoder with Adam on cross-entropy; returns (model, variables)."""
    model = T.TextEncoder(
        vocab_size=len(LETTERS), max_len=cfg.length, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
        mlp_dim=cfg.mlp_dim, num_classes=2, pool="mean",
    )
    init_key, key = jax.random.split(key)
    variables = model.init(init_key, tokens[:2])
    rng = np.random.default_rng(cfg.seed + 1)
    batches = (rng.integers(0, tokens.shape[0], cfg.batch) for _ in range(cfg.steps))  # with replacement
    variables, _ = models.fit(model.apply, variables, tokens, labels, steps=cfg.steps, learning_rate=cfg.lr,
                              batches=batches)
    return model, variables


def methods(model: T.TextEncoder) -> dict:
    """Token-relevance functions ``(variables, embedded, target) -> (N, L)``."""
    encode = T.from_embeddings(model)

    def lrp_of(composite):
        explain = lrp(encode, composite)
        return lambda v, h, t: T.token_relevance(explain(v, h, target=t))

    def grad_x_input(v, h, t):
        def logit(h):
            out = encode(v, h)
            return jnp.take_along_axis(out, t[:, None], axis=1).sum()

        return T.token_relevance(jax.grad(logit)(h) * h)

    return {"AttnLRP": lrp_of(composites.AttnLRP()), "CP-LRP": lrp_of(composites.CPLRP()),
            "grad x input": grad_x_input}


def _median_ms(fn: Callable, args: tuple, rounds: int, calls: int) -> list:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return times


def timing(fns: dict, args: tuple, cfg: Config) -> dict:
    """Median ms per jitted call of each method, rounds interleaved across methods."""
    jitted = {k: jax.jit(f) for k, f in fns.items()}
    for f in jitted.values():
        jax.block_until_ready(f(*args))  # compile (cached if already compiled)
    samples = {k: [] for k in fns}
    for _ in range(cfg.timing_rounds):
        for k, f in jitted.items():
            samples[k] += _median_ms(f, args, 1, cfg.timing_calls)
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    grad = ms["grad x input"]
    return {"ms": ms, "ratio_to_grad": {k: v / grad for k, v in ms.items()}, "batch": int(args[1].shape[0])}


def figure(tokens, mask, labels, rels: dict, path: pathlib.Path) -> pathlib.Path:
    """Grid of sequence plots: one row per sequence, one column per method."""
    tiles, titles = [], []
    for i in range(tokens.shape[0]):
        text = "".join(LETTERS[t] for t in tokens[i])
        for name, r in rels.items():
            tiles.append(viz.sequence_plot(r[i], text, mask=mask[i], width=8 * len(text) + 8, height=90))
            titles.append(f"{name}, class {'XY'[labels[i]]}")
    return viz.save_png(path, viz.grid(tiles, titles, ncols=len(rels), pad=6))


def run(cfg: Config, out: pathlib.Path, command: str, log: Callable[[str], None]) -> dict:
    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    x_train, y_train, _ = make_data(rng, cfg.train, cfg)
    x_test, y_test, m_test = make_data(rng, cfg.test, cfg)

    t0 = time.perf_counter()
    model, variables = train(cfg, x_train, y_train, jax.random.PRNGKey(cfg.seed))
    train_s = time.perf_counter() - t0
    pred = np.asarray(jax.jit(model.apply)(variables, x_test).argmax(-1))
    accuracy = float((pred == y_test).mean())
    log(f"trained in {train_s:.1f} s, held-out accuracy {accuracy:.3f}")

    ok = np.flatnonzero(pred == y_test)[: cfg.explain]
    x, y, m = x_test[ok], y_test[ok], m_test[ok]
    h = T.embed(model, variables, jnp.asarray(x))
    target = jnp.asarray(y)
    logit = np.asarray(T.from_embeddings(model)(variables, h))[np.arange(len(y)), y]
    fns = methods(model)
    rels, scores, first_call = {}, {}, {}
    for name, f in fns.items():
        t0 = time.perf_counter()
        r = np.asarray(jax.jit(f)(variables, h, target))
        first_call[name] = time.perf_counter() - t0
        rels[name] = r
        cons = np.abs(r.sum(1) - logit) / np.abs(logit)
        scores[name] = {
            "rank_accuracy": float(np.mean(metrics.relevance_rank_accuracy(r, m))),
            "rank_accuracy_abs": float(np.mean(metrics.relevance_rank_accuracy(np.abs(r), m))),
            "mass_accuracy": float(np.mean(metrics.relevance_mass_accuracy(r, m))),
            "conservation_error_median": float(np.median(cons)),
            "finite": bool(np.all(np.isfinite(r))),
        }
        log(f"{name}: rank accuracy {scores[name]['rank_accuracy']:.3f}")
    chance = float(np.mean(m.sum(1) / m.shape[1]))
    times = timing(fns, (variables, h, target), cfg)
    times["first_call_s"] = first_call
    log(f"time ratio to grad x input: {times['ratio_to_grad']}")

    shown = slice(0, cfg.shown)
    out.mkdir(parents=True, exist_ok=True)
    png = figure(x[shown], m[shown], y[shown], {k: v[shown] for k, v in rels.items()}, out / "transformer.png")
    results = {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "platform": {"machine": platform.machine(), "backend": jax.default_backend(),
                     "devices": jax.device_count(), "cpus": os.cpu_count(), "jax": jax.__version__},
        "train_seconds": train_s,
        "accuracy": accuracy,
        "explained": int(len(ok)),
        "chance_rank_accuracy": chance,
        "scores": scores,
        "timing": times,
        "shown": {"tokens": ["".join(LETTERS[t] for t in row) for row in x[shown]], "labels": y[shown].tolist(),
                  "relevance": {k: np.round(v[shown], 5).tolist() for k, v in rels.items()}},
    }
    results["seconds"] = time.perf_counter() - t_start
    (out / "transformer.json").write_text(json.dumps(results, indent=1))
    (out / "transformer.md").write_text(markdown(results))
    return {"png": png, "md": out / "transformer.md", "json": out / "transformer.json", **results}


def markdown(res: dict) -> str:
    cfg, t = res["config"], res["timing"]
    lines = [
        "# AttnLRP vs CP-LRP vs gradient x input on a text transformer (`examples/transformer.py`)",
        "",
        f"Command: `{res['command']}`; {res['seconds']:.0f} s on {res['platform']['backend']} "
        f"({res['platform']['cpus']} CPUs visible), jax {res['platform']['jax']}.",
        "",
        f"Task: {cfg['length']} letters from 24 neutral ones, with 1 to {cfg['max_triggers']} copies of one "
        "trigger planted (X: class 0, Y: class 1); the triggers are the ground truth. Model: "
        f"`TextEncoder` (dim {cfg['dim']}, {cfg['depth']} pre-LN blocks, {cfg['heads']} heads, mean pooling), "
        f"trained in {res['train_seconds']:.1f} s ({cfg['steps']} Adam steps); held-out accuracy "
        f"{100 * res['accuracy']:.1f}%. Explained: the true-class logit of {res['explained']} correctly "
        "classified held-out sequences, from the embedded sequence; token relevance = relevance summed "
        "over the embedding axis.",
        "",
        "| method | rank accuracy of the triggers | rank accuracy by \\|R\\| | mass accuracy "
        "(positive relevance) | conservation error, median |",
        "|---|---|---|---|---|",
    ]
    for name, s in res["scores"].items():
        lines.append(f"| {name} | {s['rank_accuracy']:.3f} | {s['rank_accuracy_abs']:.3f} | {s['mass_accuracy']:.3f} | "
                     f"{s['conservation_error_median']:.2e} |")
    lines += [
        f"| chance | {res['chance_rank_accuracy']:.3f} | {res['chance_rank_accuracy']:.3f} | | |",
        "",
        "Rank accuracy: share of the K triggers among the K tokens of highest relevance (signed, or by "
        "magnitude); chance = K/L. Conservation error: |sum R - f_c| / |f_c| per sequence. CP-LRP loses "
        "only what the dense layers' biases absorb; AttnLRP's softmax rule `x (R - s sum R)` is not "
        "conservative (it is a first-order Taylor expansion whose bias term is dropped). Gradient x "
        "input is weak here for a structural reason: LayerNorm is invariant to the scale of its input, "
        "so its gradient is orthogonal to the (centred) input it normalises; in a pre-LN transformer "
        "every read of a token's residual stream goes through a LayerNorm, so the token's gradient x "
        "input summed over the embedding axis largely cancels, however important the token (the "
        "triggers get almost none, see the figure). "
        "LRP treats the normaliser as a constant and does not have the problem.",
        "",
        f"Time per jitted call on a batch of {t['batch']} (median of {cfg['timing_rounds']} interleaved rounds "
        f"of {cfg['timing_calls']} calls):",
        "",
        "| method | ms | ratio to grad x input | first call incl. compile (s) |",
        "|---|---|---|---|",
    ]
    for name, ms in t["ms"].items():
        lines.append(f"| {name} | {ms:.2f} | {t['ratio_to_grad'][name]:.2f} | {t['first_call_s'][name]:.2f} |")
    lines += ["", "CP-LRP can be cheaper than the gradient: it sends nothing back through the attention "
              "weights, so the backward pass of q.k and the softmax is skipped. Timings on a shared CPU are "
              "noisy (about +-10%).", ""]
    lines += ["", "Figure `transformer.png`: token relevance (red positive, blue negative, bars scaled per "
              "panel) of the first sequences; trigger positions on an amber background.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("examples/results"),
                    help="output directory (default: examples/results)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--quick", action="store_true", help="small run, < 40 s")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(QUICK if args.quick else Config(), seed=args.seed)
    command = "python examples/transformer.py" + (" --quick" if args.quick else "") + \
        (f" --seed {args.seed}" if args.seed else "") + \
        (f" --out {args.out}" if args.out != pathlib.Path("examples/results") else "")
    res = run(cfg, args.out, command, lambda s: print(s, file=sys.stderr, flush=True))
    print(f"wrote {res['png']}, {res['md']} and {res['json']} in {res['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
