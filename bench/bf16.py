"""bfloat16 against float32: how close the maps of a bf16 language model are to the float32 model's.

    python bench/bf16.py [--models 4] [--examples 16] [--out bench/bf16]

The 12-layer decoder of ``tests/test_llm.py`` (width 32, 4 heads, MLP 64,
vocabulary 64, 16 tokens) with random weights, one model per seed; each model is
explained once in float32 and once with every parameter and the embedded input cast
to bfloat16, and the per-example cosine similarity of the two maps is reported
(worst, 1st percentile, median, share of examples at or above 0.99) for

* AttnLRP and CP-LRP with the relevance carried in float32 between layers
  (``relevance_dtype``'s default, which evaluates the bf16 model in float32, see
  ``jaxlrp._core.widening``) and in bfloat16 (``relevance_dtype=None``);
* gradient x input of the same logit: how much the bf16 forward pass moves an
  attribution computed from the same activations without LRP's rules.

Runs with float64 off (JAX's default); ``llama.init`` draws other weights when it is
on, so a table taken with it on is of other models.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxlrp
from jaxlrp import composites
from jaxlrp.models import llama

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _cosines  # noqa: E402  (the table, shared with bf16_lxt.py)

CFG = llama.Config(vocab=64, dim=32, layers=12, heads=4, hidden=64)
TOKENS = 16
TARGET = 3


def _methods() -> dict:
    """name -> jitted ``f(params, h)``: the map of each example."""
    fn = llama.decoder(CFG)

    def lrp(comp, **kw):
        explain = jax.jit(jaxlrp.lrp(fn, comp, **kw), static_argnames="target")
        return lambda p, h: explain(p, h, target=TARGET)

    grad_x_input = jax.jit(jax.vmap(lambda p, h: jax.grad(lambda h: fn(p, h[None])[0, TARGET])(h) * h, (None, 0)))
    return {
        "AttnLRP": lrp(composites.AttnLRP()),
        "AttnLRP, relevance in bf16": lrp(composites.AttnLRP(), relevance_dtype=None),
        "CP-LRP": lrp(composites.CPLRP()),
        "CP-LRP, relevance in bf16": lrp(composites.CPLRP(), relevance_dtype=None),
        "gradient x input": grad_x_input,
    }


def measure(models: int, examples: int) -> list[dict]:
    methods = _methods()
    cos: dict = {name: [] for name in methods}
    for seed in range(models):
        p32 = llama.init(jax.random.key(seed), CFG, jnp.float32)
        h32 = llama.embed(p32, jax.random.randint(jax.random.key(100 + seed), (examples, TOKENS), 0, CFG.vocab))
        pbf, hbf = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), (p32, h32))
        for name, f in methods.items():
            cos[name].append(_cosines.cosine(f(p32, h32), f(pbf, hbf)))
    rows = [_cosines.row(name, np.concatenate(cos[name])) for name in methods]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=4, help="random models (seeds)")
    ap.add_argument("--examples", type=int, default=16, help="token sequences per model")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "bf16"))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = measure(args.models, args.examples)
    machine = (f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}, {os.cpu_count()} cores; "
               f"one-minute load average {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it")
    cmd = f"python bench/bf16.py --models {args.models} --examples {args.examples}"
    _cosines.write(args.out, [
        f"Machine: {machine}. Command: `{cmd}` (float64 off).",
        "",
        f"Cosine similarity of each example's map in the bf16 model with the float32 model's, "
        f"{args.models} random 12-layer decoders x {args.examples} sequences.",
    ], rows, machine, cmd)


if __name__ == "__main__":
    main()
