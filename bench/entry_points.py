"""Benchmark: the first call of each entry point made outside ``jax.jit``.

Every entry point runs such a call as one compiled program, cached with the
function it returned (:class:`jaxlrp._core.eager.CompiledFunction`): an explainer
called eagerly or under ``jax.vmap`` alone, ``inspect``, ``channel_relevance`` and
``explain_generation``. Each case runs in a fresh Python process (no warm cache),
after the same set-up (parameters from a jitted ``init``); the table gives the
median first call and the median second call on new values of the same shapes,
beside ``jax.grad``'s eager first call on the same CNN.

    python bench/entry_points.py --repeats 3

writes ``bench/entry_points.md`` and ``.json`` (see ``--out``). ``--child`` runs
one case (used by the parent).
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

HERE = pathlib.Path(__file__).resolve().parent
CASES = {  # name: what is called (the README's CNN, 5 images, unless said)
    "grad": "jax.grad of the explained logit, eager (reference)",
    "lrp": "lrp(model.apply, EpsilonPlusFlat())(v, x, target=1)",
    "vmap": "jax.vmap(lambda xi: explain(v, xi[None], target=1))(x)",
    "inspect": "inspect(model.apply, EpsilonGammaBox(-3, 3))(v, x)",
    "channel_relevance": "concepts.channel_relevance(model.apply, EpsilonPlus())(v, x, target=1)",
    "generation": "explain_generation(lm, 'attn_lrp', start='embed')(p, ids, generated=4): "
                  "models.llama's blocks, 2 layers of width 32, 2 x 12 tokens",
}


def _cnn():
    import jax

    from jaxlrp import models

    model = models.CNN(num_classes=4, channels=(8, 16), hidden=32)
    x = jax.random.normal(jax.random.key(0), (5, 28, 28, 1))
    return model, jax.jit(model.init)(jax.random.key(1), x), x


def _calls(case: str) -> tuple:
    """``(first, second)``: the two calls of ``case``, not yet made."""
    import jax
    import jax.numpy as jnp

    import jaxlrp
    from jaxlrp import composites, concepts
    from jaxlrp.generation import explain_generation
    from jaxlrp.models import llama

    if case == "generation":
        cfg = llama.Config(vocab=64, dim=32, layers=2, heads=4, hidden=64)
        p = llama.init(jax.random.key(0), cfg)

        def lm(p, ids):  # llama.decoder's blocks, with the logits at every position
            h = llama.embed(p, ids)
            for i in range(cfg.layers):
                h = llama.block(jax.tree_util.tree_map(lambda a, i=i: a[i], p["layers"]), h, cfg)
            h = h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + cfg.eps) * p["final_norm"]
            return h @ p["head"]

        ids = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab)
        e = explain_generation(lm, "attn_lrp", start="embed")
        return lambda: e(p, ids, generated=4), lambda: e(p, (ids + 1) % cfg.vocab, generated=4)
    model, v, x = _cnn()
    if case == "grad":
        g = lambda x: jax.grad(lambda x: model.apply(v, x)[:, 1].sum())(x)  # noqa: E731
        return lambda: g(x), lambda: g(x + 1)
    if case == "lrp":
        e = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
        return lambda: e(v, x, target=1), lambda: e(v, x + 1, target=1)
    if case == "vmap":
        e = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
        per = lambda x: jax.vmap(lambda xi: e(v, xi[None], target=1))(x)  # noqa: E731
        return lambda: per(x), lambda: per(x + 1)
    if case == "inspect":
        rep = jaxlrp.inspect(model.apply, composites.EpsilonGammaBox(-3.0, 3.0))
        return lambda: jnp.asarray(rep(v, x).input_relevance), lambda: jnp.asarray(rep(v, x + 1).input_relevance)
    s = concepts.channel_relevance(model.apply, composites.EpsilonPlus())
    return lambda: s(v, x, target=1), lambda: s(v, x + 1, target=1)


def child(case: str) -> dict:
    import jax

    first, second = _calls(case)
    t0 = time.perf_counter()
    jax.block_until_ready(first())
    t1 = time.perf_counter()
    jax.block_until_ready(second())
    return {"first": t1 - t0, "second": time.perf_counter() - t1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "entry_points"))
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child)))
        return
    load_before = os.getloadavg()[0]
    rows = {}
    for case in CASES:
        runs = []
        for _ in range(a.repeats):
            out = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows[case] = {k: statistics.median(r[k] for r in runs) for k in ("first", "second")}
        print(case, rows[case], flush=True)
    load_after = os.getloadavg()[0]
    import jax

    head = (f"Machine: {platform.machine()}, {jax.default_backend()}, jax {jax.__version__}, {os.cpu_count()} cores; "
            f"load {load_before:.2f} before, {load_after:.2f} after. Command: `python bench/entry_points.py "
            f"--repeats {a.repeats}`")
    lines = [head, "", "Calls made outside `jax.jit`, each case in a fresh process; medians of "
             f"{a.repeats} processes.", "", "| case | call | first call (s) | second call, new values (s) |",
             "|---|---|---|---|"]
    lines += [f"| {c} | `{CASES[c]}` | {r['first']:.2f} | {r['second']:.3f} |" for c, r in rows.items()]
    pathlib.Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    pathlib.Path(a.out + ".json").write_text(json.dumps({"load": [load_before, load_after], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
