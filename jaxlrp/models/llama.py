"""A Llama-style decoder in plain JAX: stacked layers, scan or unrolled, remat, shardings.

The model language models are written in at scale (MaxText, penzai's Llama): a
pre-norm decoder of ``layers`` identical blocks whose parameters are *stacked*
along a leading layer axis and applied by ``lax.scan`` (optionally under
``jax.checkpoint``), each block

.. math::

    h' = h + W_o\\,\\mathrm{attn}(\\mathrm{rope}(W_q \\bar h), \\mathrm{rope}(W_k \\bar h),
    W_v \\bar h), \\qquad
    h'' = h' + W_2\\,(\\mathrm{silu}(W_1 \\bar h') \\odot W_3 \\bar h'),

with :math:`\\bar h = g \\odot h / \\sqrt{\\mathrm{mean}(h^2) + \\epsilon}` (RMSNorm),
rotary position embeddings (RoPE), causal softmax attention and a SwiGLU MLP. It is
written with ``jax.numpy`` only, so that one function serves as scanned, unrolled
and rematerialised model, in any dtype, and its parameters can be placed on a
:class:`jax.sharding.Mesh` with :func:`param_specs` (FSDP x tensor parallel).

>>> from jaxlrp.models import llama
>>> cfg = llama.Config(vocab=32, dim=16, layers=2, heads=2, hidden=32)
>>> params = llama.init(jax.random.key(0), cfg)
>>> h = llama.embed(params, jnp.arange(6)[None])              # (1, 6, 16)
>>> R = jaxlrp.lrp(llama.decoder(cfg), composites.AttnLRP())(params, h, target=3)
>>> R.shape
(1, 6, 16)

The explained output is the logits of the last position (``(N, vocab)``); relevance
of the embedded tokens is ``R.sum(-1)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

__all__ = ["Config", "init", "embed", "decoder", "block", "param_specs", "param_count"]

#: JAX arrays (NumPy inputs work too).
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of the decoder: ``dim`` model width, ``hidden`` the MLP's width,
    ``heads`` attention heads of width ``dim // heads`` (even, for RoPE)."""

    vocab: int = 256
    dim: int = 64
    layers: int = 4
    heads: int = 4
    hidden: int = 128
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def init(key: Array, cfg: Config, dtype: Any = jnp.float32) -> dict:
    """Random parameters, every one random (norm scales too), layers stacked on axis 0
    (one compiled program, not each draw on its own)."""
    ks = jax.random.split(key, 10)
    n, d, f = cfg.layers, cfg.dim, cfg.hidden

    def normal(k, shape, fan_in):
        return (jax.random.normal(k, shape) / jnp.sqrt(fan_in)).astype(dtype)

    def scale(k, shape):
        return (1.0 + 0.1 * jax.random.normal(k, shape)).astype(dtype)

    layers = {
        "attn_norm": scale(ks[0], (n, d)),
        "wq": normal(ks[1], (n, d, d), d),
        "wk": normal(ks[2], (n, d, d), d),
        "wv": normal(ks[3], (n, d, d), d),
        "wo": normal(ks[4], (n, d, d), d),
        "mlp_norm": scale(ks[5], (n, d)),
        "w1": normal(ks[6], (n, d, f), d),
        "w3": normal(ks[7], (n, d, f), d),
        "w2": normal(ks[8], (n, f, d), f),
    }
    k1, k2, k3 = jax.random.split(ks[9], 3)
    return {"embed": normal(k1, (cfg.vocab, d), 1.0), "layers": layers,
            "final_norm": scale(k2, (d,)), "head": normal(k3, (d, cfg.vocab), d)}


def embed(params: dict, tokens: Array) -> Array:
    """Token ids ``(N, L)`` -> embedded sequence ``(N, L, dim)`` (what is explained)."""
    return params["embed"][tokens]


def _rms_norm(x: Array, g: Array, eps: float) -> Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _rope(x: Array) -> Array:
    """Rotary embedding of ``x`` ``(N, L, H, Dh)`` by position (halves rotated)."""
    half = x.shape[-1] // 2
    freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    angle = jnp.arange(x.shape[-3], dtype=jnp.float32)[:, None] * freq  # (L, half)
    cos, sin = jnp.cos(angle)[:, None].astype(x.dtype), jnp.sin(angle)[:, None].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _attention(p: dict, x: Array, cfg: Config) -> Array:
    n, length, _ = x.shape
    heads = (n, length, cfg.heads, cfg.head_dim)
    q = _rope((x @ p["wq"]).reshape(heads))
    k = _rope((x @ p["wk"]).reshape(heads))
    v = (x @ p["wv"]).reshape(heads)
    s = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(jnp.asarray(cfg.head_dim, x.dtype))
    causal = jnp.tril(jnp.ones((length, length), bool))
    s = jnp.where(causal, s, jnp.finfo(x.dtype).min)
    a = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("nhqk,nkhd->nqhd", a, v).reshape(n, length, cfg.dim)
    return o @ p["wo"]


def block(p: dict, h: Array, cfg: Config) -> Array:
    """One decoder block on ``h`` ``(N, L, dim)`` with one layer's parameters ``p``."""
    h = h + _attention(p, _rms_norm(h, p["attn_norm"], cfg.eps), cfg)
    x = _rms_norm(h, p["mlp_norm"], cfg.eps)
    return h + (jax.nn.silu(x @ p["w1"]) * (x @ p["w3"])) @ p["w2"]


def decoder(cfg: Config, *, scan: bool = True, remat: bool = False) -> Callable[[dict, Array], Array]:
    """``fn(params, h) -> logits`` of the last position, ``(N, vocab)``.

    ``scan``: the blocks are one ``lax.scan`` over the stacked layers (else a Python
    loop: the unrolled model); ``remat``: each block under ``jax.checkpoint``.
    """
    step = jax.checkpoint(block, static_argnums=2) if remat else block

    def fn(params: dict, h: Array) -> Array:
        if scan:
            h, _ = jax.lax.scan(lambda c, p: (step(p, c, cfg), None), h, params["layers"])
        else:
            for i in range(cfg.layers):
                h = step(jax.tree_util.tree_map(lambda a, i=i: a[i], params["layers"]), h, cfg)
        return _rms_norm(h[:, -1], params["final_norm"], cfg.eps) @ params["head"]

    return fn


def param_specs(params: dict, fsdp: str = "fsdp", tp: str = "tp") -> dict:
    """FSDP x tensor-parallel :class:`~jax.sharding.PartitionSpec` for every parameter.

    Megatron-style: ``wq``, ``wk``, ``wv``, ``w1``, ``w3`` split their output (heads,
    MLP width) over ``tp`` and their input over ``fsdp``; ``wo``, ``w2`` the other
    way round; the embedding table and the head split the vocabulary over ``tp``;
    norm scales are replicated. The layer axis is never split (``lax.scan`` walks it).
    """
    column, row = P(None, fsdp, tp), P(None, tp, fsdp)
    layers = {"attn_norm": P(), "mlp_norm": P(), "wq": column, "wk": column, "wv": column, "w1": column,
              "w3": column, "wo": row, "w2": row}
    specs = {"embed": P(tp, fsdp), "layers": layers, "final_norm": P(), "head": P(fsdp, tp)}
    return jax.tree_util.tree_map(lambda _, s: s, params, specs, is_leaf=lambda a: isinstance(a, P))


def param_count(params: dict) -> int:
    """The number of parameters."""
    return int(sum(a.size for a in jax.tree_util.tree_leaves(params)))
