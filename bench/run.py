"""Benchmark: jitted LRP against ``jax.grad`` of the same function, same process.

For each (model, batch, composite) cell it reports

* the wall-time ratio ``LRP / grad``: both functions jitted and warmed up, timed in
  interleaved rounds, medians of ``--repeats`` calls per round, median over rounds;
* XLA's FLOP ratio and memory ratio from the compiled executables
  (``cost_analysis``, ``memory_analysis``: noise-free), and the FLOP floor of the
  composite's rules (``bench/floor.py``);
* compile times.

``grad`` is ``jax.grad(lambda x: sum(f(x) * onehot))`` -- the gradient of the
explained logits, the physical floor for LRP (one forward and one backward pass).

    python bench/run.py --models cnn mlp --batch 8 64 --composites epsilon epsilon_plus_flat

writes ``bench/results.md`` and ``bench/results.json`` (see ``--out``). With ``--vmap``
it measures instead, per model, composite and batch size, the throughput (examples/s)
of the jitted batched explanation against ``jax.vmap`` of the per-example one (each
example explained as a batch of one), in interleaved rounds, and writes
``bench/vmap.md`` / ``bench/vmap.json``:

    python bench/run.py --vmap --models mlp cnn --batch 1 8 64 256

Timing: ``bench/_timing.py``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxlrp
from jaxlrp import composites, models, variants

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _timing  # noqa: E402  (bench/_timing.py, the scripts' shared timing)
from floor import floor_ratio  # noqa: E402  (bench/floor.py)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(512)(x))
        x = nn.relu(nn.Dense(512)(x))
        return nn.Dense(10)(x)


class CNN(nn.Module):
    """The small CNN of the design study: 3 conv layers (c=32), 32x32x3 input."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(10)(x)


MODELS = {
    "mlp": (MLP, (28, 28, 1)),
    "cnn": (CNN, (32, 32, 3)),
    "vgg16": (lambda: models.VGG(depth=16, num_classes=10), (224, 224, 3)),
    "resnet50": (lambda: models.ResNet(depth=50, num_classes=10), (224, 224, 3)),
}
COMPOSITES = {
    "epsilon": lambda: composites.Composite(),
    "epsilon_plus_flat": composites.EpsilonPlusFlat,
    "epsilon_gamma_box": lambda: composites.EpsilonGammaBox(-3.0, 3.0),
    "epsilon_alpha2_beta1": composites.EpsilonAlpha2Beta1,
    "plrp": lambda: variants.pruned(composites.EpsilonPlusFlat(), 0.3),
    "relative": variants.relative,
}


def _compiled(f, *args):
    with _timing.stopwatch() as t:
        c = jax.jit(f).lower(*args).compile()
    return c, t.seconds


def _flops(c) -> float:
    ca = c.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def _memory(c) -> float:
    m = c.memory_analysis()
    if m is None:
        return float("nan")
    return float(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def bench_cell(model_name: str, batch: int, comp_name: str, repeats: int, rounds: int) -> dict:
    cls, shape = MODELS[model_name]
    model = cls()
    x = jax.random.normal(jax.random.PRNGKey(1), (batch,) + shape, jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    onehot = jax.nn.one_hot(jnp.zeros(batch, jnp.int32), 10)

    def grad(v, x):
        return jax.grad(lambda x: jnp.sum(model.apply(v, x) * onehot))(x)

    explain = jaxlrp.lrp(model.apply, COMPOSITES[comp_name]())

    def lrp(v, x):
        return explain(v, x, target=0)

    cg, tg_compile = _compiled(grad, variables, x)
    cl, tl_compile = _compiled(lrp, variables, x)
    timed = _timing.interleaved({"grad": lambda: cg(variables, x), "lrp": lambda: cl(variables, x)}, repeats, rounds)
    t_grad, t_lrp = _timing.median(timed["grad"]), _timing.median(timed["lrp"])
    return {
        "model": model_name, "batch": batch, "composite": comp_name,
        "grad_ms": 1e3 * t_grad, "lrp_ms": 1e3 * t_lrp, "time_ratio": t_lrp / t_grad,
        "flop_ratio": _flops(cl) / _flops(cg), "floor": floor_ratio(model.apply, variables, x, COMPOSITES[comp_name]()),
        "memory_ratio": _memory(cl) / _memory(cg),
        "compile_grad_s": tg_compile, "compile_lrp_s": tl_compile,
    }


def vmap_cell(model_name: str, batch: int, comp_name: str, repeats: int, rounds: int) -> dict:
    """Throughput of the batched explanation against ``jax.vmap`` of the per-example
    one (each example explained as a batch of one), both jitted, interleaved rounds."""
    cls, shape = MODELS[model_name]
    model = cls()
    x = jax.random.normal(jax.random.PRNGKey(1), (batch,) + shape, jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    explain = jaxlrp.lrp(model.apply, COMPOSITES[comp_name]())
    batched, _ = _compiled(lambda v, x: explain(v, x, target=0), variables, x)
    per_example, _ = _compiled(jax.vmap(lambda v, xi: explain(v, xi[None], target=0)[0], in_axes=(None, 0)), variables, x)
    timed = _timing.interleaved({"batched": lambda: batched(variables, x), "vmap": lambda: per_example(variables, x)},
                                repeats, rounds)
    t_batched, t_vmap = _timing.median(timed["batched"]), _timing.median(timed["vmap"])
    return {
        "model": model_name, "batch": batch, "composite": comp_name,
        "batched_ms": 1e3 * t_batched, "vmap_ms": 1e3 * t_vmap,
        "batched_per_s": batch / t_batched, "vmap_per_s": batch / t_vmap, "vmap_over_batched": t_vmap / t_batched,
        "spread": max(_timing.spread(timed["batched"]), _timing.spread(timed["vmap"])),
    }


def _vmap_table(args, machine: str, cmd: str) -> int:
    """``--vmap``: examples per second of the batched call and of ``vmap`` over examples,
    per model, composite and batch size; written to ``<out>.md`` / ``.json``."""
    rows = []
    for m in args.models:
        for c in args.composites:
            for b in args.batch:
                r = vmap_cell(m, b, c, args.repeats, args.rounds)
                rows.append(r)
                print(f"{m:>5} {c:<22} b={b:<4} batched {r['batched_per_s']:9.1f}/s  vmap {r['vmap_per_s']:9.1f}/s  "
                      f"vmap/batched time x{r['vmap_over_batched']:.2f}  spread {r['spread']:.2f}", flush=True)
    header = [
        "Throughput (examples/s) of the jitted batched explanation and of `jax.vmap` of the per-example one "
        "(each example a batch of one); time ratio vmap / batched; spread = (max - min) / median of the round medians.",
        "",
        "| model | composite | batch | batched (ex/s) | vmap (ex/s) | time vmap/batched | spread |",
        "|---|---|---|---|---|---|---|",
    ]
    table = [f"| {r['model']} | {r['composite']} | {r['batch']} | {r['batched_per_s']:.1f} | "
             f"{r['vmap_per_s']:.1f} | {r['vmap_over_batched']:.2f} | {r['spread']:.2f} |" for r in rows]
    return _write(args.out, machine, cmd, header + table, rows)


def _write(stem: str, machine: str, cmd: str, lines: list, rows: list) -> int:
    """Write a table (``lines`` under the machine and command line) to ``<stem>.md``
    and its rows to ``<stem>.json``, and print it."""
    lines = [f"Machine: {machine}, {jax.device_count()} device(s). Command: `{cmd.strip()}`", ""] + lines
    out = pathlib.Path(stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "command": cmd, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="LRP vs jax.grad benchmark")
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(MODELS))
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--composites", nargs="+", default=list(COMPOSITES), choices=list(COMPOSITES))
    ap.add_argument("--repeats", type=int, default=20, help="calls per timing round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    ap.add_argument("--vmap", action="store_true",
                    help="instead: throughput of vmap of per-example explanations against the batched call "
                         "(writes bench/vmap.md/json unless --out is given)")
    ap.add_argument("--out", default=None, help="output path stem (default bench/results, with --vmap bench/vmap)")
    args = ap.parse_args(argv)
    if min(args.batch) < 1 or args.repeats < 1 or args.rounds < 1:
        ap.error("--batch, --repeats and --rounds must be positive")
    if args.out is None:
        args.out = str(pathlib.Path(__file__).parent / ("vmap" if args.vmap else "results"))

    machine = f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"
    cmd = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.vmap:
        return _vmap_table(args, machine, cmd)
    rows = []
    for m in args.models:
        for b in args.batch:
            for c in args.composites:
                r = bench_cell(m, b, c, args.repeats, args.rounds)
                rows.append(r)
                print(f"{m:>5} b={b:<4} {c:<22} grad {r['grad_ms']:8.2f} ms  lrp {r['lrp_ms']:8.2f} ms  "
                      f"time x{r['time_ratio']:.2f}  flops x{r['flop_ratio']:.2f} (floor x{r['floor']:.2f})  mem x{r['memory_ratio']:.2f}",
                      flush=True)
    header = [
        "| model | batch | composite | grad (ms) | LRP (ms) | time LRP/grad | FLOPs LRP/grad | floor | memory LRP/grad | compile grad / LRP (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = [
        f"| {r['model']} | {r['batch']} | {r['composite']} | {r['grad_ms']:.2f} | {r['lrp_ms']:.2f} | "
        f"{r['time_ratio']:.2f} | {r['flop_ratio']:.2f} | {r['floor']:.2f} | {r['memory_ratio']:.2f} | "
        f"{r['compile_grad_s']:.2f} / {r['compile_lrp_s']:.2f} |"
        for r in rows
    ]
    return _write(args.out, machine, cmd, header + table, rows)


if __name__ == "__main__":
    sys.exit(main())
