"""Plain-JAX ports of the tiny Hugging Face / torchvision models of
``bench/compare_lxt.py``, and the comparison of jaxlrp with LXT's relevances.

Each port is written the way JAX LLM code is written (einsum attention, RMSNorm /
LayerNorm, RoPE, grouped-query attention, a dense mixture of experts), with no
jaxlrp-specific structure; it takes the Hugging Face ``state_dict`` as a nested
dict (``model/layers/0/self_attn/q_proj/weight``), so ``start="*embed_tokens*"``
(the user's spelling) starts the explanation at the embedding lookup. The weights,
inputs and LXT's float64 relevances come from ``tests/data/lxt/<arch>.npz``,
written by ``bench/compare_lxt.py export``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxlrp
from jaxlrp import composites, rules

DATA = Path(__file__).resolve().parent / "data" / "lxt"
NEG = float(np.finfo(np.float64).min)  # Hugging Face's additive mask value in float64


def load(arch: str) -> dict:
    """The npz of ``arch`` as ``params`` (nested), ``inputs``, ``cfg``, ``R`` (per
    composite), ``logits`` and ``target``."""
    with np.load(DATA / f"{arch}.npz") as z:
        flat = {k[2:]: z[k] for k in z.files if k.startswith("p/")}
        out = {
            "params": _nest(flat),
            "inputs": {k[2:]: z[k] for k in z.files if k.startswith("x/")},
            "R": {k[2:]: z[k] for k in z.files if k.startswith("R/")},
            "gammas": {k[7:]: json.loads(str(z[k])) for k in z.files if k.startswith("gammas/")},
            "reached": {k[8:]: json.loads(str(z[k])) for k in z.files if k.startswith("reached/")},
            "cfg": dict(json.loads(str(z["cfg"])), _tied=_tied(flat)),
            "logits": z["logits"],
            "target": z["target"],
        }
    return out


def _tied(flat: dict) -> bool:
    """Whether the head is the embedding table (the exported config omits defaults,
    so tying is read from the weights: a tied ``lm_head.weight`` is the same array)."""
    head, emb = flat.get("lm_head.weight"), flat.get("model.embed_tokens.weight")
    return head is not None and emb is not None and np.array_equal(head, emb)


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        node = tree
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(v)
    return tree


# ------------------------------------------------------------------ building blocks


def linear(x, p):
    """``torch.nn.Linear``: ``x W^T + b``."""
    y = x @ p["weight"].T
    return y + p["bias"] if "bias" in p else y


def rms_norm(x, w, eps, plus_one=False):
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * (1.0 + w) if plus_one else x * w


def layer_norm(x, p, eps, dense_affine=False):
    """LayerNorm; ``dense_affine`` writes the affine map as a dense layer with a
    diagonal weight (``xn @ diag(w) + b``), whose bias jaxlrp's dense rules give its
    share: the emulation of cause 3 for LayerNorm biases."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    xn = xc * jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    if dense_affine:
        return xn @ jnp.diag(p["weight"]) + p["bias"]
    return xn * p["weight"] + p["bias"]


def rope(x, theta):
    """Rotary embedding (Hugging Face's half-split layout) of ``x`` ``(N, H, L, d)``."""
    d, L = x.shape[-1], x.shape[-2]
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    f = np.arange(L, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([f, f], axis=-1)
    cos, sin = jnp.asarray(np.cos(emb)), jnp.asarray(np.sin(emb))
    half = d // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def causal_mask(L, window=None):
    """Additive mask ``(L, L)``: 0 where query ``i`` sees key ``j``, else float64's min."""
    i, j = np.arange(L)[:, None], np.arange(L)[None, :]
    ok = j <= i
    if window is not None:
        ok &= (i - j) < window
    return jnp.asarray(np.where(ok, 0.0, NEG))


def attend(q, k, v, scale, mask, softcap=None):
    """Scaled dot-product attention with grouped K/V heads: ``q`` ``(N, H, L, d)``,
    ``k, v`` ``(N, G, L, d)`` with ``H = r G``; ``mask`` additive, broadcast to the scores."""
    rep = q.shape[1] // k.shape[1]
    k, v = jnp.repeat(k, rep, axis=1), jnp.repeat(v, rep, axis=1)
    s = jnp.einsum("nhld,nhmd->nhlm", q, k) * scale
    if softcap is not None:
        s = jnp.tanh(s / softcap) * softcap
    p = jax.nn.softmax(s + mask, axis=-1)
    return jnp.einsum("nhlm,nhmd->nhld", p, v)


def _heads(x, n):
    N, L, _ = x.shape
    return x.reshape(N, L, n, -1).transpose(0, 2, 1, 3)


def _merge(x):
    N, H, L, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(N, L, H * d)


# ------------------------------------------------------------------ decoders (Llama family, Gemma)


def _decoder_attention(x, a, c, arch, layer):
    H, G = c["num_attention_heads"], c["num_key_value_heads"]
    eps = c["rms_norm_eps"]
    gemma = arch.startswith("gemma")
    q, k, v = _heads(linear(x, a["q_proj"]), H), _heads(linear(x, a["k_proj"]), G), _heads(linear(x, a["v_proj"]), G)
    if "q_norm" in a:  # Qwen3, Gemma 3: RMSNorm over each head
        q = rms_norm(q, a["q_norm"]["weight"], eps, gemma)
        k = rms_norm(k, a["k_norm"]["weight"], eps, gemma)
    theta, window = c["rope_theta"], None
    if arch == "gemma3" and (layer + 1) % c["sliding_window_pattern"]:
        theta, window = c["rope_local_base_freq"], c["sliding_window"]
    if arch == "gemma2" and layer % 2 == 0:
        window = c["sliding_window"]
    q, k = rope(q, theta), rope(k, theta)
    d = q.shape[-1]
    scale = c["query_pre_attn_scalar"] ** -0.5 if gemma else d ** -0.5
    o = attend(q, k, v, scale, causal_mask(x.shape[1], window), c.get("attn_logit_softcapping"))
    return linear(_merge(o), a["o_proj"])


def _mlp(x, m, act):
    return linear(act(linear(x, m["gate_proj"])) * linear(x, m["up_proj"]), m["down_proj"])


def _moe(x, m, c):
    """Qwen3-MoE's sparse block written densely (as JAX MoE code is): router softmax,
    top-k chosen with a stop-gradient threshold, renormalised weights, every expert
    computed and weighted (unchosen experts weigh 0)."""
    probs = jax.nn.softmax(linear(x, m["gate"]), axis=-1)
    kth = jax.lax.top_k(jax.lax.stop_gradient(probs), c["num_experts_per_tok"])[0][..., -1:]
    w = jnp.where(probs >= kth, probs, 0.0)
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    ys = [_mlp(x, m["experts"][str(e)], jax.nn.silu) * w[..., e:e + 1] for e in range(c["num_experts"])]
    return sum(ys[1:], ys[0])


def decoder(params, ids, *, c, arch, untie=False):
    """Llama / Mistral / Qwen2 / Qwen3 / Qwen3-MoE / Gemma 2 / Gemma 3 causal LM:
    the logits of the last position ``(N, V)``. Tied models read the embedding
    table twice (``untie``: the head reads its own copy, ``lm_head``)."""
    m = params["model"]
    gemma = arch.startswith("gemma")
    eps = c["rms_norm_eps"]

    def norm(h, p):
        return rms_norm(h, p["weight"], eps, gemma)

    E = m["embed_tokens"]["weight"]
    h = E[ids]
    if gemma:
        h = h * jnp.asarray(c["hidden_size"] ** 0.5, h.dtype)
    for i in range(c["num_hidden_layers"]):
        lp = m["layers"][str(i)]
        a = _decoder_attention(norm(h, lp["input_layernorm"]), lp["self_attn"], c, arch, i)
        if gemma:
            a = norm(a, lp["post_attention_layernorm"])
        h = h + a
        x = norm(h, lp["pre_feedforward_layernorm" if gemma else "post_attention_layernorm"])
        if arch == "qwen3_moe":
            y = _moe(x, lp["mlp"], c)
        else:
            y = _mlp(x, lp["mlp"], (lambda t: jax.nn.gelu(t, approximate=True)) if gemma else jax.nn.silu)
        if gemma:
            y = norm(y, lp["post_feedforward_layernorm"])
        h = h + y
    h = norm(h, m["norm"])[:, -1]
    W = E if c["_tied"] and not untie else params["lm_head"]["weight"]
    logits = h @ W.T
    cap = c.get("final_logit_softcapping")
    return logits if cap is None else jnp.tanh(logits / cap) * cap


# ------------------------------------------------------------------ GPT-2, BERT, ViT


def gpt2(params, ids, *, c, untie=False):
    t = params["transformer"]
    eps, H, da = c["layer_norm_epsilon"], c["n_head"], c.get("_dense_affine", False)
    L = ids.shape[1]
    h = t["wte"]["weight"][ids] + t["wpe"]["weight"][:L]
    for i in range(c["n_layer"]):
        b = t["h"][str(i)]
        x = layer_norm(h, b["ln_1"], eps, da)
        q, k, v = jnp.split(x @ b["attn"]["c_attn"]["weight"] + b["attn"]["c_attn"]["bias"], 3, axis=-1)
        q, k, v = _heads(q, H), _heads(k, H), _heads(v, H)
        o = attend(q, k, v, q.shape[-1] ** -0.5, causal_mask(L))
        h = h + (_merge(o) @ b["attn"]["c_proj"]["weight"] + b["attn"]["c_proj"]["bias"])
        x = layer_norm(h, b["ln_2"], eps, da)
        y = jax.nn.gelu(x @ b["mlp"]["c_fc"]["weight"] + b["mlp"]["c_fc"]["bias"], approximate=True)
        h = h + (y @ b["mlp"]["c_proj"]["weight"] + b["mlp"]["c_proj"]["bias"])
    h = layer_norm(h, t["ln_f"], eps, da)[:, -1]
    return h @ (params["lm_head"]["weight"] if untie else t["wte"]["weight"]).T


def bert(params, ids, token_type, mask, *, c):
    """BERT for sequence classification on a padded batch: the class logits ``(N, C)``."""
    e = params["bert"]["embeddings"]
    eps, H, da = c["layer_norm_eps"], c["num_attention_heads"], c.get("_dense_affine", False)
    L = ids.shape[1]
    h = e["word_embeddings"]["weight"][ids] + e["token_type_embeddings"]["weight"][token_type]
    h = layer_norm(h + e["position_embeddings"]["weight"][:L], e["LayerNorm"], eps, da)
    add = ((1.0 - mask.astype(h.dtype)) * NEG)[:, None, None, :]
    for i in range(c["num_hidden_layers"]):
        b = params["bert"]["encoder"]["layer"][str(i)]
        s = b["attention"]["self"]
        q, k, v = _heads(linear(h, s["query"]), H), _heads(linear(h, s["key"]), H), _heads(linear(h, s["value"]), H)
        o = attend(q, k, v, q.shape[-1] ** -0.5, add)
        a = layer_norm(linear(_merge(o), b["attention"]["output"]["dense"]) + h, b["attention"]["output"]["LayerNorm"], eps, da)
        y = jax.nn.gelu(linear(a, b["intermediate"]["dense"]), approximate=False)
        h = layer_norm(linear(y, b["output"]["dense"]) + a, b["output"]["LayerNorm"], eps, da)
    pooled = jnp.tanh(linear(h[:, 0], params["bert"]["pooler"]["dense"]))
    return linear(pooled, params["classifier"])


def vit(params, pixels, *, c):
    """torchvision's ``VisionTransformer`` (NCHW pixels): the class logits."""
    p, e, da = c["patch_size"], params["encoder"], c.get("_dense_affine", False)
    x = jax.lax.conv_general_dilated(pixels, params["conv_proj"]["weight"], (p, p), "VALID",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    x = x + params["conv_proj"]["bias"][None, :, None, None]
    N, D = x.shape[:2]
    x = x.reshape(N, D, -1).transpose(0, 2, 1)
    cls = jnp.broadcast_to(params["class_token"], (N, 1, D))
    x = jnp.concatenate([cls, x], axis=1) + e["pos_embedding"]
    for i in range(len(e["layers"])):
        b = e["layers"][f"encoder_layer_{i}"]
        y = layer_norm(x, b["ln_1"], c["eps"], da)
        a = b["self_attention"]
        wq, wk, wv = jnp.split(a["in_proj_weight"], 3, axis=0)
        bq, bk, bv = jnp.split(a["in_proj_bias"], 3)
        H = c["heads"]
        q, k, v = _heads(y @ wq.T + bq, H), _heads(y @ wk.T + bk, H), _heads(y @ wv.T + bv, H)
        o = attend(q, k, v, q.shape[-1] ** -0.5, 0.0)
        x = x + linear(_merge(o), a["out_proj"])
        y = layer_norm(x, b["ln_2"], c["eps"], da)
        x = x + linear(jax.nn.gelu(linear(y, b["mlp"]["0"]), approximate=False), b["mlp"]["3"])
    x = layer_norm(x, e["ln"], c["eps"], da)[:, 0]
    return linear(x, params["heads"]["head"])


# ------------------------------------------------------------------ comparison


def port(arch: str, data: dict, untie: bool = False, dense_affine: bool = False, ids_last: bool = False) -> tuple:
    """``(fn, args, start)``: the port as ``fn(params, *inputs)``, its arguments, and
    the ``start=`` glob of the embedding (``None``: explain the last argument).
    ``untie``, ``dense_affine`` and ``ids_last``: the spellings that emulate the fixes
    of causes 4, 3 (LayerNorm biases) and ``"start_ids"`` (BERT's ids as the last
    argument)."""
    c, x, P = dict(data["cfg"], _dense_affine=dense_affine), data["inputs"], data["params"]
    if arch == "gpt2":
        return lambda p, ids: gpt2(p, ids, c=c, untie=untie), (P, jnp.asarray(x["ids"])), "*wte*"
    if arch == "bert":
        ids, tt, mask = jnp.asarray(x["ids"]), jnp.asarray(x["token_type"]), jnp.asarray(x["mask"])
        if ids_last:
            return (lambda p, tt, m, ids: bert(p, ids, tt, m, c=c)), (P, tt, mask, ids), "*word_embeddings*"
        return (lambda p, ids, tt, m: bert(p, ids, tt, m, c=c)), (P, ids, tt, mask), "*word_embeddings*"
    if arch == "vit":
        return lambda p, px: vit(p, px, c=c), (P, jnp.asarray(x["pixels"])), None
    family = "gemma2" if arch.startswith("gemma2") else arch
    fn = lambda p, ids: decoder(p, ids, c=c, arch=family, untie=untie)  # noqa: E731
    return fn, (P, jnp.asarray(x["ids"])), "*embed_tokens*"


@dataclasses.dataclass(frozen=True)
class GradientTimesInput(rules.Rule):
    r"""LRP-0 of a division, :math:`R_i = x_i\,(J^\top R/z)_i` for each operand: what
    gradient x input gives where LXT leaves the plain gradient (Qwen3-MoE's top-k
    renormalisation :math:`w / \sum w`)."""

    kinds = frozenset({"divide"})

    def __call__(self, node, relevance):
        _, pull = jax.vjp(lambda *xs: node.apply(xs, node.weight), *node.inputs)
        g = pull(rules.divide(relevance, node.output))
        return tuple(x * gi for x, gi in zip(node.inputs, g))


# Emulations of the core fixes under way (issue 22), for diagnosis: each is what
# the fixed core should do for one cause, written as a composite entry.


@dataclasses.dataclass(frozen=True)
class _ValuesThroughConstantProbs(rules.Rule):
    """Cause 2 (CP-LRP): ``probs @ v`` with the probabilities constant, i.e. LRP-0
    of the linear map ``v -> probs @ v``: relevance moves across positions."""

    kinds = frozenset({"attention"})

    def __call__(self, node, relevance):
        v, probs = node.inputs
        _, pull = jax.vjp(lambda s: node.apply((s, probs), node.weight), v)
        (g,) = pull(rules.divide(relevance, node.output))
        return v * g, jnp.zeros_like(probs)


@dataclasses.dataclass(frozen=True)
class _ConstantSummandShare(rules.Rule):
    """Cause 3: ``z = x + c`` with ``c`` a constant (a LayerNorm bias, position or
    token-type embeddings): ``x`` gets its proportional share ``x / z R``."""

    kinds = frozenset({"activation"})

    def __call__(self, node, relevance):
        (x,) = node.inputs
        return (x * rules.divide(relevance, node.output),)


@dataclasses.dataclass(frozen=True)
class _UpTakesAll(rules.Rule):
    """Cause 1 under CP-LRP: ``act(x W_g) * (x W_u)`` with the gate constant."""

    kinds = frozenset({"gate", "product"})

    def __call__(self, node, relevance):
        a, b = node.inputs  # "gate" nodes: (signal, gate); products as spelled: (act(gate), up)
        if node.kind == "gate":
            return relevance, jnp.zeros_like(b)
        return jnp.zeros_like(a), relevance


def _constant_add(layer) -> bool:
    return layer.kind == "activation" and layer.primitive == "add" and layer.output_shape[-1:] == (16,)


#: cause -> composite entries emulating its fix (cause 4 is ``port(untie=True)``).
EMULATIONS = {
    1: [("gate", rules.Uniform(0.0))],
    3: [(_constant_add, _ConstantSummandShare())],
}
#: the same for CP-LRP: LXT's ``cp_gated_mlp_forward`` holds the gate constant
#: (all relevance to the up projection, the product's second factor as the ports
#: spell it), and cause 2.
CP_EMULATIONS = {
    1: [(lambda layer: layer.kind in ("gate", "product") and len(layer.output_shape) == 3, "_up_takes_all")],
    2: [("attention", _ValuesThroughConstantProbs())],
    3: EMULATIONS[3],
}


def zero_stabilisers(composite: composites.Composite, extra=(), keep=()) -> composites.Composite:
    """``composite`` with every rule's ``epsilon``/``stabilizer`` set to 0 (LXT's
    gradient x input has none), ``extra`` pairs first; rules of the types in ``keep``
    keep theirs (Zennit's Gamma has its ``1e-6``)."""
    pairs = []
    for m, r in composite.rules:
        names = () if isinstance(r, keep) else ("epsilon", "stabilizer")
        zero = {f.name: 0.0 for f in dataclasses.fields(r) if f.name in names}
        pairs.append((m, dataclasses.replace(r, **zero)))
    return composites.Composite(list(extra) + pairs)


def vit_gamma(recipe: dict) -> composites.Composite:
    """:class:`~jaxlrp.composites.ViTGamma` for LXT's ViT recipe as exported
    (``bench/compare_lxt.py``'s ``VIT_GAMMAS``): the per-module gammas by the
    torch module name turned into a parameter glob (``encoder.layers.encoder_layer_0.mlp.0``
    -> ``encoder/layers/encoder_layer_0/mlp/0/*``), the attention's projections
    without gamma (torch's ``MultiheadAttention`` never calls a hooked module:
    ``reached`` in the npz lists the modules Zennit's hooks ran on), every
    stabiliser 0 but the Gamma rules' (Zennit's ``1e-6``)."""
    gammas: dict = {name.replace(".", "/") + "/*": g for name, g in recipe["names"].items()}
    gammas["*self_attention*"] = None
    preset = composites.ViTGamma(recipe["conv"], recipe["linear"], gammas=gammas, epsilon=0.0)
    return zero_stabilisers(preset, keep=(rules.Gamma,))


def composite_for(arch: str, comp: str, emulate=(), data: dict | None = None) -> composites.Composite:
    """AttnLRP or CP-LRP with zero stabilisers, and the emulated fixes of the causes
    in ``emulate`` (cause 1 only for AttnLRP: CP-LRP keeps the gate constant); LXT's
    ViT recipe (Gamma, :func:`vit_gamma`) for the ``gammas`` of ``data``."""
    if data is not None and comp in data["gammas"]:
        return vit_gamma(data["gammas"][comp])
    cp = comp == "cplrp"
    base = composites.CPLRP() if cp else composites.AttnLRP()
    table = CP_EMULATIONS if cp else EMULATIONS
    extra = [(m, _UpTakesAll() if r == "_up_takes_all" else r) for k in emulate for m, r in table.get(k, [])]
    if arch == "qwen3_moe":  # the top-k renormalisation: LXT keeps its plain gradient
        extra.append(("divide", GradientTimesInput()))
    return zero_stabilisers(base, extra)


def relevance(arch: str, comp: str, data: dict | None = None, emulate=()) -> tuple:
    """jaxlrp's relevance of ``arch`` at the embedding lookup (the pixels for the
    ViT) and a note (e.g. when ``start=`` selects several values)."""
    data = data or load(arch)
    fn, args, start = port(arch, data, untie=4 in emulate, dense_affine=3 in emulate,
                           ids_last="start_ids" in emulate)
    explain = jaxlrp.lrp(fn, composite_for(arch, comp, emulate, data), start=start)
    R: Any = explain(*args, target=jnp.asarray(data["target"]))
    note, shape = "", data["R"][comp].shape
    if isinstance(R, tuple):
        note = f"start= gave {len(R)} values; compared the lookup's"
        R = next(r for r in R if r.shape == shape)
    if R.shape != shape:
        note = f"start= began at a value of shape {tuple(R.shape)}, not the lookup's {shape}"
    return np.asarray(R), note


def agreement(R: np.ndarray, ref: np.ndarray) -> tuple:
    """``(max|R - ref| / max|ref|, cosine)`` (cosine ``nan`` when a map is all zero)."""
    a, b = np.ravel(R), np.ravel(ref)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    cos = float(a @ b / norm) if norm > 0 else float("nan")
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b))), cos


def compare(arch: str, comp: str, emulate=()) -> dict:
    """Agreement of jaxlrp with LXT on ``arch`` / ``comp``: max-rel, cosine, the
    logits' max abs difference, relevance sums."""
    data = load(arch)
    fn, args, _ = port(arch, data)
    logits = np.asarray(jax.jit(fn)(*args))
    R, note = relevance(arch, comp, data, emulate)
    ref = data["R"][comp]
    max_rel, cos = agreement(R, ref) if R.shape == ref.shape else (float("inf"), float("nan"))
    return {
        "max_rel": max_rel, "cosine": cos,
        "logits_diff": float(np.max(np.abs(logits - data["logits"]))),
        "sum_jax": float(R.sum()), "sum_lxt": float(ref.sum()), "note": note,
    }
