"""Relative LRP, both readings, on the models of Nyiri & Gibaru (2025): a simple CNN,
VGG-16, VGG-19 and ResNet-50 (issue 16).

Random weights (Flax's default initialisers; VGG with ``hidden=512`` instead of
4096 to keep the dense layers small), random standard-normal inputs of 64x64x3
(32x32 for the CNN), the predicted class explained. Methods:

* ``R-LRP layer`` -- ``variants.relative(mode="layer")`` (contributions propagated
  as they are, one L1 rescaling per layer and example);
* ``R-LRP neuron`` -- ``variants.relative(mode="neuron")`` (each neuron's relevance
  split by its absolute contributions);
* ``LRP-0`` and ``LRP-eps (0.25 std)`` (``rules.EpsilonStd(0.25)``, the Overview's
  epsilon) on every dense/conv layer, for reference.

Measured per example: the relative max-sensitivity ``max ||R(x + d) - R(x)|| / ||R(x)||``
over uniform noise ``d`` in the L-inf ball of radius 0.05 (few draws), the
conservation error ``|sum R - f| / |f|``, the L1 ratio ``sum |R| / |f|`` and
whether the map is finite.

    python examples/relative_lrp.py            # ~4 min of CPU time (244 s measured)
    python examples/relative_lrp.py --quick    # CNN and VGG-16 only, 1 example

writes ``relative_lrp.md`` and ``relative_lrp.json`` to ``--out`` (default
``examples/results``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp import composites, lrp, metrics, models, rules, variants

METHODS = {
    "R-LRP layer": lambda: variants.relative(mode="layer"),
    "R-LRP neuron": lambda: variants.relative(mode="neuron"),
    "LRP-0": lambda: composites.Composite([("linear", rules.Zero())]),
    "LRP-eps (0.25 std)": lambda: composites.Composite([("linear", rules.EpsilonStd(0.25))]),
}


def zoo(quick: bool) -> dict:
    """name -> (model, input size)."""
    out = {"simple CNN": (models.CNN(num_classes=10), 32), "VGG-16": (models.VGG(depth=16, hidden=512), 64)}
    if not quick:
        out["VGG-19"] = (models.VGG(depth=19, hidden=512), 64)
        out["ResNet-50"] = (models.ResNet(depth=50), 64)
    return out


def measure(model, variables, x, composite, key, radius: float, n_samples: int) -> dict:
    apply = model.apply

    @jax.jit
    def run(v, x, key):
        logits = apply(v, x)
        t = jnp.argmax(logits, -1)
        f = jnp.take_along_axis(logits, t[:, None], 1)[:, 0]
        explain = lambda xb: lrp(apply, composite)(v, xb, target=t)
        rel = explain(x)
        sens = metrics.max_sensitivity(explain, x, key=key, radius=radius, n_samples=n_samples, relative=True)
        flat = rel.reshape(len(x), -1)
        return {"max_sensitivity_rel": sens, "conservation_error": metrics.conservation_error(rel, f),
                "l1_ratio": jnp.sum(jnp.abs(flat), 1) / jnp.abs(f), "finite": jnp.all(jnp.isfinite(flat), 1),
                "logit": f}

    return {k: np.asarray(v) for k, v in run(variables, x, key).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("examples/results"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--samples", type=int, default=3, help="noise draws per example (default 3)")
    args = ap.parse_args(argv)
    batch = 1 if args.quick else args.batch
    radius = 0.05
    t_start = time.perf_counter()
    results = {"command": "python examples/relative_lrp.py" + (" --quick" if args.quick else ""),
               "machine": f"{jax.default_backend()} x {jax.device_count()}, jax {jax.__version__}",
               "batch": batch, "noise_samples": args.samples, "radius": radius, "models": {}}
    for i, (name, (model, size)) in enumerate(zoo(args.quick).items()):
        x = jax.random.normal(jax.random.PRNGKey(10 + i), (batch, size, size, 3))
        variables = model.init(jax.random.PRNGKey(i), x)
        row = {}
        for method, make in METHODS.items():
            t0 = time.perf_counter()
            m = measure(model, variables, x, make(), jax.random.PRNGKey(100 + i), radius, args.samples)
            row[method] = {"max_sensitivity_rel": float(np.mean(m["max_sensitivity_rel"])),
                           "conservation_error": float(np.median(m["conservation_error"])),
                           "l1_ratio": float(np.mean(m["l1_ratio"])), "finite": bool(np.all(m["finite"])),
                           "per_example": {k: v.tolist() for k, v in m.items()},
                           "seconds": time.perf_counter() - t0}
            print(f"{name} / {method}: sensitivity {row[method]['max_sensitivity_rel']:.3f}, conservation error "
                  f"{row[method]['conservation_error']:.3g}, L1 {row[method]['l1_ratio']:.3g} "
                  f"({row[method]['seconds']:.1f} s)", file=sys.stderr, flush=True)
        results["models"][name] = {"input": [batch, size, size, 3], "methods": row}
    results["seconds"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relative_lrp.json").write_text(json.dumps(results, indent=1))
    (args.out / "relative_lrp.md").write_text(markdown(results))
    print(f"wrote {args.out / 'relative_lrp.md'} in {results['seconds']:.0f} s")
    return 0


def markdown(res: dict) -> str:
    L = ["# Relative LRP, both readings, on a simple CNN, VGG-16/19 and ResNet-50 (`examples/relative_lrp.py`)", "",
         f"Command: `{res['command']}`; {res['seconds']:.0f} s on {res['machine']}. Random weights and inputs, "
         f"{res['batch']} example(s) per model, predicted class. Max-sensitivity: relative, max over "
         f"{res['noise_samples']} uniform draws in the L-inf ball of radius {res['radius']} (mean over examples; "
         "lower = more stable). Conservation error |sum R - f| / |f| (median); L1 = sum|R| / |f| (mean).", "",
         "| model | method | max-sensitivity | conservation error | L1 ratio | finite |", "|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for method, r in m["methods"].items():
            L.append(f"| {name} | {method} | {r['max_sensitivity_rel']:.3f} | {r['conservation_error']:.3g} | "
                     f"{r['l1_ratio']:.3g} | {'yes' if r['finite'] else 'NO'} |")
    L += ["", "Readings (`jaxlrp.variants.Relative`): layer = contributions x W^T R rescaled to the L1 mass of R once "
          "per layer and example (signs kept, signed sum conserved up to a factor); neuron = each neuron's relevance "
          "split by |z_ik| / sum_i |z_ik| (signed sum conserved exactly, signs of contributions dropped). Both: no "
          "stabiliser, no bias, proportional split at residual adds (the one division by per-neuron values).",
          "", "Source: Nyiri & Gibaru (2025), arXiv:2501.14322 (abstract only; both readings are the project's).", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
