"""Coverage report: what jaxlrp does with every equation of models from many JAX libraries.

In the spirit of DynamicLRP's operation coverage: for each model (Flax linen and
nnx, Equinox, Haiku, Keras 3, penzai, plain-JAX ports of a Hugging Face encoder, a
UNet, a ConvNeXt, a LLaMA-style decoder, LSTMs), the traced program (after inlining
``jit`` and custom-derivative calls; control-flow bodies counted inside) is
analysed as :func:`jaxlrp.lrp` analyses it, and every equation is counted under the
treatment it gets:

* ``constant``: does not depend on the explained input (parameter preprocessing,
  BatchNorm statistics, masks);
* ``route``: relevance follows the plain VJP (reshapes, slices, concatenation,
  constant linear maps such as an interpolation matrix);
* ``region``: part of an activation region (relevance passes to its origin);
* ``folded``: folded into a layer (bias add, inference BatchNorm);
* ``node``: a rule-bearing operation, by kind (dense, conv, sum, product, gate,
  attention, softmax, normalize, maxpool, ...);
* ``control``: scan / cond / shard_map (their bodies are counted too);
* ``stop``: on the input's path but carrying no relevance (``stop_gradient``,
  integer results).

A model is *refused* when the analysis raises a typed error (the message is kept).
**Verified** equations are those of a model checked against an independent
reference: LRP-0 (``rules.Zero()`` on every layer and sum) is gradient x input on
networks whose nonlinearities are piecewise linear (ReLU, max pooling), biases and
BatchNorm included, checked to 1e-10 in float64. Models with gates, softmax,
normalisers or smooth activations have no such identity; their rows say so (the
metamorphic suite and the reference tests cover those rules).

Every parameter is random (weights, biases, norm scales and moving statistics).

    python bench/coverage.py              # writes docs/coverage.md and bench/coverage.json
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import platform
import sys
import traceback
from typing import Callable

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlrp  # noqa: E402
from jaxlrp import composites, rules  # noqa: E402
from jaxlrp._core.program import Var  # noqa: E402
from jaxlrp._core.trace import trace as _trace  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from coverage_models import CASES, Case  # noqa: E402  (bench/coverage_models.py)

TOL = 1e-10


# ----------------------------------------------------------------------- census


def census(fn: Callable, args: tuple, composite) -> dict:
    """Equation counts by treatment (see the module docstring)."""
    comp = composites.resolve(composite, None)
    t = _trace(fn, comp, None, list(args))
    counts: collections.Counter = collections.Counter()
    _count(t.analysis, counts)
    counts["layers"] = len(t.layers)
    return dict(counts)


def _count(an, counts) -> None:
    routed = set(an.routed)
    for i, e in enumerate(an.program.eqns):
        counts["equations"] += 1
        step = an.plan[i]
        if step == "control":
            counts["control"] += 1
            for sub in an.subs[i]:
                _count(sub, counts)
        elif step == "node":
            counts["node:" + an.nodes[i].layer.kind] += 1
        elif step in ("skip", "region"):
            counts["folded" if step == "skip" else "region"] += 1
        elif i in routed:
            counts["route"] += 1
        elif any(isinstance(a, Var) and a in an.tainted for a in e.invars):
            counts["stop"] += 1
        else:
            counts["constant"] += 1


def identity_error(fn: Callable, args: tuple) -> float:
    """max |LRP-0 - gradient x input| / max |gradient x input| for each example's argmax."""
    *params, x = args
    out = fn(*args)
    target = jnp.argmax(out, axis=-1)
    R = jaxlrp.lrp(fn, composites.Composite([("linear", rules.Zero()), ("sum", rules.Zero()),
                                             ("avgpool", rules.Zero())]))(*args, target=target)
    g = jax.grad(lambda x_: jnp.sum(jnp.take_along_axis(fn(*params, x_), target[:, None], axis=-1)))(x)
    gx = np.asarray(g * x)
    return float(np.abs(np.asarray(R) - gx).max() / np.abs(gx).max())


def run_case(case: Case) -> dict:
    row: dict = {"model": case.name, "library": case.library, "note": case.note}
    try:
        fn, args = case.build()
    except Exception as e:  # noqa: BLE001 - a library that does not install or build is reported
        row["skipped"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        return row
    try:
        row["counts"] = census(fn, args, case.composite)
        R = jaxlrp.lrp(fn, case.composite)(*args)
        row["finite"] = bool(np.all(np.isfinite(np.asarray(R))))
    except (jaxlrp.UnsupportedOperationError, jaxlrp.TrainingModeError, TypeError, ValueError) as e:
        row["refused"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return row
    if case.identity:
        err = identity_error(fn, args)
        row["identity_error"] = err
        row["verified"] = err < TOL
    return row


# ------------------------------------------------------------------------ report


def _path_total(c: dict) -> int:
    return c.get("equations", 0) - c.get("constant", 0)


def _kinds(c: dict) -> str:
    ks = sorted((k[5:], v) for k, v in c.items() if k.startswith("node:"))
    return ", ".join(f"{k} {v}" for k, v in ks)


def _verified_cell(row: dict) -> str:
    if "identity_error" not in row:
        return "no identity (see note)"
    mark = "yes" if row["verified"] else "**NO**"
    return f"{mark} ({row['identity_error']:.1e})"


def markdown(rows: list) -> str:
    lines = [
        "# Coverage: models from many JAX libraries",
        "",
        "Generated by `python bench/coverage.py` (do not edit by hand). For each model the",
        "traced program (`jit` and custom-derivative calls inlined, control-flow bodies",
        "counted inside) is analysed as `jaxlrp.lrp` analyses it; each equation is counted",
        "under its treatment: *constant* (does not depend on the input), *route* (plain",
        "VJP), *region* (inside an activation region), *folded* (bias add or BatchNorm",
        "folded into a layer), *node* (a rule-bearing operation, by kind), *control*",
        "(scan/cond; bodies counted too), *stop* (on the path, no relevance). A model is",
        "*refused* when the analysis raises a typed error. *Verified*: LRP-0 equals",
        f"gradient x input to {TOL:g} (float64), the identity of piecewise-linear networks;",
        "models with gates, softmax, normalisers or smooth activations have no such",
        "identity (their rules are checked by the reference and metamorphic tests).",
        "Every parameter is random.",
        "",
        "| model | library | equations | on the path | route | region | folded | nodes (by kind) | control | stop | verified (LRP-0 vs grad x input) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row or "refused" in row:
            why = row.get("skipped") or row.get("refused")
            label = "skipped" if "skipped" in row else "**refused**"
            lines.append(f"| {row['model']} | {row['library']} | {label}: {why} | | | | | | | | |")
            continue
        c = row["counts"]
        lines.append(
            f"| {row['model']} | {row['library']} | {c.get('equations', 0)} | {_path_total(c)} | "
            f"{c.get('route', 0)} | {c.get('region', 0)} | {c.get('folded', 0)} | {_kinds(c)} | "
            f"{c.get('control', 0)} | {c.get('stop', 0)} | {_verified_cell(row)} |"
        )
    lines += ["", *_summary(rows), "", "Notes:", ""]
    lines += [f"* {row['model']}: {row['note']}" for row in rows if row.get("note")]
    return "\n".join(lines) + "\n"


def _summary(rows: list) -> list:
    done = [r for r in rows if "counts" in r]
    total = sum(r["counts"]["equations"] for r in done)
    path = sum(_path_total(r["counts"]) for r in done)
    verified = sum(_path_total(r["counts"]) for r in done if r.get("verified"))
    failed = [r["model"] for r in done if r.get("verified") is False]
    refused = [r["model"] for r in rows if "refused" in r]
    skipped = [r["model"] for r in rows if "skipped" in r]
    return [
        f"Totals: {len(done)} models analysed, {total} equations, {path} on the relevance path; "
        f"{verified} of those ({verified / max(path, 1):.0%}) in models verified by the identity.",
        f"Identity failures: {', '.join(failed) or 'none'}. Refused: {', '.join(refused) or 'none'}. "
        f"Skipped: {', '.join(skipped) or 'none'}.",
    ]


def main() -> None:
    rows = []
    for case in CASES:
        try:
            row = run_case(case)
        except Exception:  # noqa: BLE001 - a crash is a finding, not the end of the report
            row = {"model": case.name, "library": case.library, "note": case.note,
                   "refused": "crash: " + traceback.format_exc().strip().splitlines()[-1][:300]}
        print(json.dumps({k: v for k, v in row.items() if k != "note"}), flush=True)
        rows.append(row)
    meta = {"jax": jax.__version__, "python": platform.python_version(), "tolerance": TOL}
    (ROOT / "bench" / "coverage.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (ROOT / "docs" / "coverage.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
