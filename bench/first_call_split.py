"""Benchmark: where a jitted first call's time goes, LRP against ``jax.grad``.

The first call of ``jax.jit(f)`` is split into its stages, each timed on its own:
tracing (for LRP: the model traced, analysed and its rules evaluated under the
VJP), lowering to StableHLO (``.lower()``), XLA's compilation (``.compile()``) and
the first run. Each stage is reported in wall time and in process CPU time (all
threads): on a shared machine the CPU time of tracing and lowering (single
threaded) barely moves with the load, wall time does. Beside the times, what the
compiler is given: jaxpr equations, StableHLO characters, functions (``jit``-wrapped
bodies) and while loops, and in the compiled program fusions, convolutions and
XLA's FLOP count.

Each cell runs in a fresh process (no warm cache; the persistent cache is left
off), grad and LRP processes alternating, ``--repeats`` pairs per cell; the table
gives the medians, and the median of the paired ratios LRP / grad of the wall
time to the first result (trace + lower + compile + run).

    python bench/first_call_split.py --models resnet18 resnet50 --presets epsilon epsilon_gamma_box plrp

writes ``bench/first_call_split.md`` and ``.json`` (see ``--out``). ``--child``
runs one cell (used by the parent).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from first_call import MODELS, PRESETS, subject  # noqa: E402  (one list of models and presets, one setup)

STAGES = ("trace", "lower", "compile", "run")


def _measure(f, variables, x) -> dict:
    """Each stage of ``jax.jit(f)``'s first call, wall and CPU seconds, and sizes."""
    import jax

    out: dict = {}
    clock = (time.perf_counter(), time.process_time())

    def lap(stage):
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        out[stage], out["cpu_" + stage] = now[0] - clock[0], now[1] - clock[1]
        clock = now

    traced = jax.jit(f).trace(variables, x)
    lap("trace")
    lowered = traced.lower()
    lap("lower")
    compiled = lowered.compile()
    lap("compile")
    jax.block_until_ready(compiled(variables, x))
    lap("run")
    text, hlo = lowered.as_text(), compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out.update(
        jaxpr_eqns=len(traced.jaxpr.jaxpr.eqns), stablehlo_chars=len(text), functions=text.count("func.func"),
        while_loops=text.count("stablehlo.while"), fusions=len(re.findall(r" fusion\(", hlo)),
        convolutions=len(re.findall(r" convolution\(", hlo)), flops=float((cost or {}).get("flops", float("nan"))),
    )
    return out


def child(kind: str, model_name: str, preset: str) -> dict:
    """One cell in this (fresh) process."""
    f, variables, x = subject(kind, model_name, preset)
    return _measure(f, variables, x)


def _spawn(kind: str, model: str, preset: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, __file__, "--child", kind, model, preset],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(model: str, preset: str, grads: list, lrps: list) -> dict:
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    total = lambda r: sum(r[s] for s in STAGES)  # noqa: E731
    row = {"model": model, "preset": preset, "repeats": len(lrps),
           "first_call_ratio": statistics.median(total(lr) / total(g) for g, lr in zip(grads, lrps))}
    for name, runs in (("grad", grads), ("lrp", lrps)):
        row[name] = {k: med(runs, k) for k in runs[0]}
    return row


def _table(rows: list) -> list:
    lines = ["| model | preset | | trace s (CPU s) | lower s (CPU s) | compile s (CPU s) | run s | "
             "jaxpr eqns | StableHLO chars | functions | while loops | fusions | convolutions | GFLOP | "
             "first call LRP/grad (paired) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name in ("grad", "lrp"):
            d = r[name]
            stages = " | ".join(f"{d[s]:.2f} ({d['cpu_' + s]:.2f})" for s in STAGES[:3])
            ratio = f"{r['first_call_ratio']:.2f}x" if name == "lrp" else ""
            lines.append(f"| {r['model']} | {r['preset']} | {name} | {stages} | {d['run']:.2f} | {d['jaxpr_eqns']:.0f} | "
                         f"{d['stablehlo_chars']:.0f} | {d['functions']:.0f} | {d['while_loops']:.0f} | {d['fusions']:.0f} | "
                         f"{d['convolutions']:.0f} | {d['flops'] / 1e9:.1f} | {ratio} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="LRP vs jax.grad: the stages of a jitted first call")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "PRESET"), help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["resnet18"], choices=list(MODELS))
    ap.add_argument("--presets", nargs="+", default=["epsilon", "epsilon_gamma_box", "plrp"], choices=list(PRESETS))
    ap.add_argument("--repeats", type=int, default=2, help="grad/LRP process pairs per cell")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "first_call_split"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    rows = []
    for model in args.models:
        for preset in args.presets:
            pairs = [(_spawn("grad", model, preset), _spawn("lrp", model, preset)) for _ in range(args.repeats)]
            rows.append(_row(model, preset, [g for g, _ in pairs], [lr for _, lr in pairs]))
            print(_table(rows[-1:])[-1], flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    cmd = "python bench/first_call_split.py " + " ".join(argv if argv is not None else sys.argv[1:])
    pathlib.Path(args.out + ".md").write_text(f"`{cmd}` on {machine}\n\n" + "\n".join(_table(rows)) + "\n")
    pathlib.Path(args.out + ".json").write_text(json.dumps({"machine": machine, "command": cmd, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
