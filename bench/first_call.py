"""Benchmark: time to the first explanation against ``jax.grad``'s first call.

What a notebook user waits for: the first call of an explainer (trace, analysis,
compile and run) against the first call of ``jax.grad`` of the same function, in
the same mode (both eager, or both under ``jax.jit``). Each first call is timed in
a fresh Python process (so no compilation cache is warm: JAX's in-memory caches
are per process, and the persistent cache is left off), after the same set-up
(the model's parameters from a jitted ``init``, so no eager operation is warm).
The LRP and grad processes alternate, ``--repeats`` pairs per cell; the figure is
the median of the paired ratios LRP / grad, with the median times beside it.

    python bench/first_call.py --models cnn --presets epsilon epsilon_plus_flat --modes eager jit

writes ``bench/first_call.md`` and ``.json`` (see ``--out``). ``--child`` runs one
timing (used by the parent).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

MODELS = {  # name: (constructor source, input shape); built in the child only
    "cnn": ("models.CNN(num_classes=4, channels=(8, 16), hidden=32)", (5, 28, 28, 1)),  # the README's
    "vgg16": ("models.VGG(depth=16, num_classes=10)", (1, 224, 224, 3)),
    "resnet18": ("models.ResNet(depth=18, num_classes=10)", (1, 224, 224, 3)),
    "resnet50": ("models.ResNet(depth=50, num_classes=10)", (1, 224, 224, 3)),
}
PRESETS = {
    "epsilon": "composites.Composite()",
    "epsilon_plus": "composites.EpsilonPlus()",
    "epsilon_plus_flat": "composites.EpsilonPlusFlat()",
    "epsilon_gamma_box": "composites.EpsilonGammaBox(-3.0, 3.0)",
    "epsilon_alpha2_beta1": "composites.EpsilonAlpha2Beta1()",
    "epsilon_alpha2_beta1_flat": "composites.EpsilonAlpha2Beta1Flat()",
    "plrp": "variants.pruned(composites.EpsilonPlusFlat(), 0.3)",
}


def subject(kind: str, model_name: str, preset: str) -> tuple:
    """``(f, variables, x)``: the gradient (``kind == "grad"``) or the explanation
    of class 0 by ``preset`` of ``model_name``, not yet called."""
    import jax
    import jax.numpy as jnp

    import jaxlrp
    from jaxlrp import composites, models, variants  # noqa: F401  (used by eval)

    source, shape = MODELS[model_name]
    model = eval(source)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    variables = jax.block_until_ready(jax.jit(model.init)(jax.random.key(0), x))
    if kind == "grad":
        classes = jax.eval_shape(model.apply, variables, x).shape[-1]
        onehot = jax.nn.one_hot(jnp.zeros(shape[0], jnp.int32), classes)

        def f(v, x):
            return jax.grad(lambda x: jnp.sum(model.apply(v, x) * onehot))(x)
    else:
        explain = jaxlrp.lrp(model.apply, eval(PRESETS[preset]))

        def f(v, x):
            return explain(v, x, target=0)
    return f, variables, x


def child(kind: str, mode: str, model_name: str, preset: str) -> float:
    """One first call in this (fresh) process; returns its wall time (s)."""
    import jax

    f, variables, x = subject(kind, model_name, preset)
    if mode == "jit":
        f = jax.jit(f)
    t0 = time.perf_counter()
    jax.block_until_ready(f(variables, x))
    return time.perf_counter() - t0


def _spawn(kind: str, mode: str, model: str, preset: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, __file__, "--child", kind, mode, model, preset],
                         capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cell(mode: str, model: str, preset: str, repeats: int) -> dict:
    grads, lrps, ratios = [], [], []
    for r in range(repeats):  # alternate which goes first, so a busy spell hits both
        order = ("grad", "lrp") if r % 2 == 0 else ("lrp", "grad")
        t = {k: _spawn(k, mode, model, preset) for k in order}
        grads.append(t["grad"])
        lrps.append(t["lrp"])
        ratios.append(t["lrp"] / t["grad"])
    return {"mode": mode, "model": model, "preset": preset, "grad_s": statistics.median(grads),
            "lrp_s": statistics.median(lrps), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "repeats": repeats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="first explanation vs jax.grad's first call, fresh processes")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "MODE", "MODEL", "PRESET"), help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["cnn"], choices=list(MODELS))
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--modes", nargs="+", default=["eager", "jit"], choices=["eager", "jit"])
    ap.add_argument("--repeats", type=int, default=3, help="LRP/grad process pairs per cell (median)")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "first_call"), help="output path stem")
    args = ap.parse_args(argv)
    if args.child:
        print(child(*args.child))
        return 0
    import jax

    machine = (f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}, "
               f"{os.cpu_count()} cores")
    load_before = os.getloadavg()[0]
    cmd = "python bench/first_call.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for model in args.models:
        for preset in args.presets:
            for mode in args.modes:
                r = cell(mode, model, preset, args.repeats)
                rows.append(r)
                print(f"{model:>8} {preset:<26} {mode:<5} grad {r['grad_s']:6.2f} s  lrp {r['lrp_s']:6.2f} s  "
                      f"x{r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]", flush=True)
    load = f"one-minute load average {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it"
    lines = [
        f"Machine: {machine}; {load}. Command: `{cmd.strip()}`",
        "",
        "First call (trace + analysis + compile + run), each in a fresh process; ratio = median over "
        "paired processes of LRP / grad (range in brackets).",
        "",
        "| model | preset | mode | grad first call (s) | LRP first call (s) | LRP/grad |",
        "|---|---|---|---|---|---|",
    ] + [f"| {r['model']} | {r['preset']} | {r['mode']} | {r['grad_s']:.2f} | {r['lrp_s']:.2f} | "
         f"{r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] |" for r in rows]
    out = pathlib.Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "load": load, "command": cmd, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
