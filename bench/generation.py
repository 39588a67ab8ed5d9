"""Generation attribution: one compiled call for T tokens vs T separate ``lrp`` calls.

    python bench/generation.py [--tokens 32] [--prompt 32] [--dim 64] [--layers 2] [--out bench/generation.md]

A random-weight Llama-style decoder (RMSNorm, RoPE, causal attention, SwiGLU, untied
head; float32) explains the last T tokens of a sequence of length prompt + T with
AttnLRP from the embedding output, two ways:

* ``explain_generation``: one forward pass, the T seeds' backward passes vmapped;
* T calls of ``jaxlrp.lrp`` (jitted once), each seeded with one token's logit.

The two are checked to agree, and compared by XLA's FLOP count and temporary memory
(``cost_analysis`` / ``memory_analysis`` of the compiled programs: the machine's load
does not change them) and by wall time (CPU, interleaved rounds of bench/_timing.py;
taken on a shared machine, so marked "under load" unless ``--quiet-machine``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxlrp
from jaxlrp.generation import explain_generation

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _timing  # noqa: E402


def init(key, vocab: int, dim: int, heads: int, hidden: int, layers: int) -> dict:
    keys = iter(jax.random.split(key, 16 * layers + 8))
    w = lambda *s: jax.random.normal(next(keys), s, jnp.float32) / np.sqrt(s[0])  # noqa: E731
    g = lambda: 1.0 + 0.3 * jax.random.normal(next(keys), (dim,), jnp.float32)  # noqa: E731
    blocks = [dict(n1=g(), q=w(dim, dim), k=w(dim, dim), v=w(dim, dim), o=w(dim, dim),
                   n2=g(), w1=w(dim, hidden), w3=w(dim, hidden), w2=w(hidden, dim)) for _ in range(layers)]
    return dict(embed=jax.random.normal(next(keys), (vocab, dim), jnp.float32), blocks=blocks, norm=g(),
                head=w(dim, vocab), heads=np.zeros(heads, np.int8))


def decoder(p: dict, ids):
    """Logits (N, L, V) of a Llama-style decoder (the heads count is ``p["heads"]``'s length)."""
    n, length = ids.shape
    heads = p["heads"].shape[0]
    dh = p["embed"].shape[1] // heads
    rms = lambda x, g: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * g  # noqa: E731
    angle = jnp.arange(length)[:, None] / 10000.0 ** (jnp.arange(0, dh, 2) / dh)
    cos, sin = jnp.cos(angle)[:, None], jnp.sin(angle)[:, None]

    def rope(x):
        a, b = x[..., : dh // 2], x[..., dh // 2:]
        return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    causal = jnp.tril(jnp.ones((length, length), bool))
    x = p["embed"][ids]
    for b in p["blocks"]:
        h = rms(x, b["n1"])
        q, k, v = (rope((h @ b[m]).reshape(n, length, heads, dh)) if m != "v" else (h @ b[m]).reshape(n, length, heads, dh)
                   for m in "qkv")
        s = jnp.where(causal, jnp.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(dh), jnp.finfo(x.dtype).min)
        x = x + jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(s, -1), v).reshape(x.shape) @ b["o"]
        h = rms(x, b["n2"])
        x = x + (jax.nn.silu(h @ b["w1"]) * (h @ b["w3"])) @ b["w2"]
    return rms(x, p["norm"]) @ p["head"]


def _seed(logits, ids, position):
    rows = jnp.arange(ids.shape[1]) == position - 1
    return logits * rows[None, :, None] * jax.nn.one_hot(ids[:, position], logits.shape[-1])[:, None, :]


def _costs(compiled) -> tuple:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    return float(cost["flops"]), int(mem.temp_size_in_bytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quiet-machine", action="store_true", help="the machine is otherwise idle")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "generation.md"))
    a = ap.parse_args()
    T, L = a.tokens, a.prompt + a.tokens
    params = init(jax.random.PRNGKey(0), a.vocab, a.dim, a.heads, 8 * a.dim // 3, a.layers)
    ids = jax.random.randint(jax.random.PRNGKey(1), (1, L), 0, a.vocab)

    batched = jax.jit(explain_generation(decoder, "attn_lrp", start="embed"), static_argnames="generated")
    single = jax.jit(lambda p, i, s: jaxlrp.lrp(decoder, "attn_lrp", start="embed")(p, i, output_relevance=s).sum(-1))
    forward = jax.jit(decoder)
    logits = forward(params, ids)
    seeds = [_seed(logits, ids, p) for p in range(L - T, L)]

    flops_b, mem_b = _costs(batched.lower(params, ids, generated=T).compile())
    flops_1, mem_1 = _costs(single.lower(params, ids, seeds[0]).compile())
    flops_f, _ = _costs(forward.lower(params, ids).compile())

    M = batched(params, ids, generated=T)
    ref = jnp.stack([single(params, ids, s) for s in seeds], axis=1)
    err = float(jnp.abs(M - ref).max() / jnp.abs(ref).max())

    def loop():
        return [single(params, ids, s) for s in seeds]

    rounds = _timing.interleaved({"one call": lambda: batched(params, ids, generated=T), "T calls": loop},
                                 repeats=a.repeats, rounds=a.rounds)
    t_b, t_l = _timing.median(rounds["one call"]), _timing.median(rounds["T calls"])
    load = "" if a.quiet_machine else " (under load: a shared 2-core machine, indicative only)"
    lines = [
        "# Generation attribution: one compiled call vs T `lrp` calls",
        "",
        f"Written by `python bench/generation.py` (jax {jax.__version__}, {jax.devices()[0].platform}). "
        f"Random Llama-style decoder, float32: vocabulary {a.vocab}, width {a.dim}, {a.heads} heads, "
        f"{a.layers} layers; sequence L = {L} (prompt {a.prompt} + T = {T} explained tokens), AttnLRP from "
        "the embedding output. FLOPs and temporary memory are XLA's counts for the compiled programs "
        "(`cost_analysis`, `memory_analysis`).",
        "",
        "| | XLA FLOPs | temp memory (bytes) | wall time (s)" + load + " |",
        "|---|---:|---:|---:|",
        f"| `explain_generation`, one call | {flops_b:.3e} | {mem_b} | {t_b:.4f} |",
        f"| T = {T} `lrp` calls | {T * flops_1:.3e} (T x {flops_1:.3e}) | {mem_1} per call | {t_l:.4f} |",
        f"| forward pass alone | {flops_f:.3e} | | |",
        "",
        f"FLOP ratio (T calls / one call): **{T * flops_1 / flops_b:.2f}**; wall-time ratio: {t_l / t_b:.2f}"
        f"{load}. Round spread: one call {_timing.spread(rounds['one call']):.0%}, T calls "
        f"{_timing.spread(rounds['T calls']):.0%}. Max relative difference of the two T x L matrices: {err:.1e}.",
        "",
    ]
    pathlib.Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
