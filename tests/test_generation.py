"""Generation attribution (``jaxlrp.generation``) on a plain-JAX Llama-style decoder,
and the same decoder written with Flax nnx and with penzai, explained unchanged from
the embedding output.

The decoder is tiny and every parameter is random (norm scales included): token
embedding, RMSNorm, multi-head causal attention with rotary position embeddings
(positions counted from the first real token of a left-padded row), SwiGLU MLP, an
untied (or tied) output projection. Tolerances are float64. The nnx and penzai
models are compared with the plain port under composites whose stabilisers are 0
(:func:`exact`): their spellings differ (the query scaled before ``q . k``), which
moves the map by the stabiliser's share, 1.3e-6 with the default 1e-6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules
from jaxlrp.generation import explain_generation

V, D, H, F, LAYERS, EPS = 13, 8, 2, 12, 2, 1e-6
DH = D // H
PRESETS = ["attn_lrp", "cp_lrp"]


# ------------------------------------------------------------------ a plain-JAX Llama


def llama_params(key, tied: bool = False) -> dict:
    """Every parameter random, norm scales included (around 1, so that they matter)."""
    keys = iter(jax.random.split(key, 64))
    w = lambda *shape: jax.random.normal(next(keys), shape) / np.sqrt(shape[0])  # noqa: E731
    g = lambda: 1.0 + 0.3 * jax.random.normal(next(keys), (D,))  # noqa: E731
    layers = [
        dict(norm1=g(), wq=w(D, D), wk=w(D, D), wv=w(D, D), wo=w(D, D),
             norm2=g(), w1=w(D, F), w3=w(D, F), w2=w(F, D))
        for _ in range(LAYERS)
    ]
    p = dict(embed=jax.random.normal(next(keys), (V, D)), layers=layers, norm=g())
    if not tied:
        p["lm_head"] = w(D, V)
    return p


def rms_norm(x, g):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + EPS) * g


def rope(x, pos):
    """Rotary embedding of ``x`` (N, L, H, DH) at positions ``pos`` (N, L), halves rotated."""
    freq = 1.0 / (10000.0 ** (jnp.arange(0, DH, 2) / DH))
    angle = pos[..., None].astype(x.dtype) * freq  # (N, L, DH/2)
    cos, sin = jnp.cos(angle)[:, :, None], jnp.sin(angle)[:, :, None]
    x1, x2 = x[..., : DH // 2], x[..., DH // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def positions_and_allowed(mask):
    """Positions counted from the first real token; which keys each query may read."""
    n, length = mask.shape
    pos = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    causal = jnp.tril(jnp.ones((length, length), bool))
    return pos, causal[None, None] & (mask[:, None, None, :] > 0)


def attention(p, x, pos, allowed):
    n, length, _ = x.shape
    q = rope((x @ p["wq"]).reshape(n, length, H, DH), pos)
    k = rope((x @ p["wk"]).reshape(n, length, H, DH), pos)
    v = (x @ p["wv"]).reshape(n, length, H, DH)
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(DH)
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    out = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v)
    return out.reshape(n, length, D) @ p["wo"]


def llama(params, ids, mask=None):
    """Logits (N, L, V) of token ids (N, L); ``mask`` (N, L) marks real tokens (1) and pads (0)."""
    mask = jnp.ones(ids.shape, jnp.int32) if mask is None else mask
    pos, allowed = positions_and_allowed(mask)
    x = params["embed"][ids]
    for p in params["layers"]:
        x = x + attention(p, rms_norm(x, p["norm1"]), pos, allowed)
        h = rms_norm(x, p["norm2"])
        x = x + (jax.nn.silu(h @ p["w1"]) * (h @ p["w3"])) @ p["w2"]
    x = rms_norm(x, params["norm"])
    head = params["lm_head"] if "lm_head" in params else params["embed"].T
    return x @ head


def from_embeddings(params, e, mask=None):
    """The same model taking the embedding output (as HF's ``inputs_embeds``)."""
    mask = jnp.ones(e.shape[:2], jnp.int32) if mask is None else mask
    pos, allowed = positions_and_allowed(mask)
    x = e
    for p in params["layers"]:
        x = x + attention(p, rms_norm(x, p["norm1"]), pos, allowed)
        h = rms_norm(x, p["norm2"])
        x = x + (jax.nn.silu(h @ p["w1"]) * (h @ p["w3"])) @ p["w2"]
    return rms_norm(x, params["norm"]) @ params["lm_head"]


@pytest.fixture(scope="module")
def model():
    params = llama_params(jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 7), 0, V)
    return params, ids


def _maxrel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


# ------------------------------------------------------------------ generation attribution


def _one_by_one(params, ids, positions, preset, fn=llama, args=()):
    """T separate ``jaxlrp.lrp`` calls, each seeded with one generated token's logit."""
    explain = jaxlrp.lrp(fn, preset, start="embed")
    rows = []
    logits = np.asarray(jax.jit(fn)(params, ids, *args))
    for p in positions:
        seed = np.zeros(ids.shape + (V,))
        for n in range(ids.shape[0]):
            seed[n, p - 1, int(ids[n, p])] = logits[n, p - 1, int(ids[n, p])]
        rows.append(explain(params, ids, *args, output_relevance=seed).sum(-1))
    return jnp.stack(rows, axis=1)


@pytest.mark.parametrize("preset", PRESETS)
def test_generation_equals_one_call_per_token(model, preset):
    params, ids = model
    T = 4
    M = jax.jit(explain_generation(llama, preset, start="embed"), static_argnames="generated")(params, ids, generated=T)
    assert M.shape == (2, T, 7)
    ref = _one_by_one(params, ids, range(7 - T, 7), preset)
    np.testing.assert_allclose(M, ref, rtol=1e-10, atol=1e-12 * float(jnp.abs(ref).max()))
    assert float(jnp.abs(ref).max()) > 0
    # causal: token p is explained by positions < p only
    for t, p in enumerate(range(7 - T, 7)):
        assert bool(jnp.all(M[:, t, p:] == 0)) and bool(jnp.any(M[:, t, :p] != 0))


def test_generation_equals_lrp_with_target_and_the_embedding_input(model):
    """A row is ``lrp(..., target=)`` read at one position, and explaining from the
    embedding output equals explaining the model that takes the embeddings."""
    params, ids = model
    M = explain_generation(llama, composites.AttnLRP(), start="embed", reduce=False)(params, ids, generated=[3])
    e = params["embed"][ids]
    seed = np.zeros(ids.shape + (V,))
    logits = llama(params, ids)
    for n in range(2):
        seed[n, 2, int(ids[n, 3])] = logits[n, 2, int(ids[n, 3])]
    ref = jaxlrp.lrp(from_embeddings, composites.AttnLRP())(params, e, output_relevance=seed)
    np.testing.assert_allclose(M[:, 0], ref, rtol=1e-10, atol=1e-13)


def test_eager_call_is_one_cached_program_equal_to_the_uncompiled_one(model):
    """Called eagerly, the explainer runs as one compiled program (not the interpreter's
    operations one by one): equal to ``jax.jit`` of it, and new ids or positions of the
    same shapes reuse it."""
    params, ids = model
    traces = []

    def fn(params, ids):
        traces.append(ids.shape)
        return llama(params, ids)

    explain = explain_generation(fn, "attn_lrp", start="embed")
    M = explain(params, ids, generated=[2, 5])
    n = len(traces)
    other = explain(params, (ids + 1) % V, generated=[3, 6])  # new values, same shapes: no new trace
    assert len(traces) == n
    ref = jax.jit(explain)(params, (ids + 1) % V, generated=jnp.array([3, 6]))
    np.testing.assert_allclose(other, ref, rtol=1e-10, atol=1e-12 * float(jnp.abs(ref).max()))
    assert M.shape == other.shape == (2, 2, 7) and not np.allclose(M, other)
    with pytest.raises(ValueError, match="out of range"):
        explain(params, ids, generated=[0, 2])


def test_multi_token_target_is_the_sum_of_the_single_token_maps(model):
    params, ids = model
    explain = explain_generation(llama, "attn_lrp", start="embed")
    M = explain(params, ids, generated=[2, 4, 6])
    joint = explain(params, ids, generated=[2, 4, 6], joint=True)
    assert joint.shape == (2, 7)
    np.testing.assert_allclose(joint, M.sum(1), rtol=1e-10, atol=1e-12 * float(jnp.abs(joint).max()))
    # the same as lrp seeded with the sum of the logits
    logits = llama(params, ids)
    seed = np.zeros(ids.shape + (V,))
    for n in range(2):
        for p in (2, 4, 6):
            seed[n, p - 1, int(ids[n, p])] = logits[n, p - 1, int(ids[n, p])]
    ref = jaxlrp.lrp(llama, "attn_lrp", start="embed")(params, ids, output_relevance=seed).sum(-1)
    np.testing.assert_allclose(joint, ref, rtol=1e-10, atol=1e-12 * float(jnp.abs(ref).max()))


def test_batch_size_chunks_give_the_same_matrix(model):
    params, ids = model
    full = explain_generation(llama, "attn_lrp", start="embed")(params, ids, generated=5)
    chunked = explain_generation(llama, "attn_lrp", start="embed", batch_size=2)(params, ids, generated=5)
    np.testing.assert_allclose(chunked, full, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("preset", PRESETS)
def test_left_padded_batch_zero_at_pads_and_same_maps_as_unpadded(preset):
    """Two prompts of lengths 4 and 6, left-padded to 6, then 3 generated tokens each."""
    params = llama_params(jax.random.PRNGKey(2))
    seqs = [np.asarray(jax.random.randint(jax.random.PRNGKey(k), (n,), 0, V)) for k, n in ((3, 7), (4, 9))]
    length, T = 9, 3
    ids = np.zeros((2, length), np.int32)
    mask = np.zeros((2, length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, length - len(s):], mask[i, length - len(s):] = s, 1
    ids[0, :2] = [5, 11]  # pad ids are arbitrary: the mask alone hides them
    explain = jax.jit(explain_generation(llama, preset, start="embed"), static_argnames="generated")
    M = explain(params, jnp.asarray(ids), jnp.asarray(mask), generated=T)
    assert bool(jnp.all(jnp.isfinite(M)))
    assert bool(jnp.all(M[0, :, :2] == 0)), "pad positions must receive exactly zero relevance"
    for i, s in enumerate(seqs):
        alone = explain(params, jnp.asarray(s)[None], generated=T)[0]
        np.testing.assert_allclose(M[i, :, length - len(s):], alone, rtol=1e-10, atol=1e-12 * float(jnp.abs(alone).max()))


def test_refusals(model):
    params, ids = model
    explain = explain_generation(llama, "attn_lrp", start="embed")
    with pytest.raises(ValueError, match="generated=7"):
        explain(params, ids, generated=7)
    with pytest.raises(ValueError, match="out of range"):
        explain(params, ids, generated=[0, 3])
    with pytest.raises(ValueError, match="matches no layer"):
        explain_generation(llama, "attn_lrp", start="nothing")(params, ids, generated=2)
    with pytest.raises(ValueError, match="logits of shape"):
        explain_generation(lambda p, i: llama(p, i)[:, -1], "attn_lrp", start="embed")(params, ids, generated=2)


def test_tied_embeddings_explained_from_the_embedding_output():
    params = llama_params(jax.random.PRNGKey(5), tied=True)
    ids = jax.random.randint(jax.random.PRNGKey(6), (2, 6), 0, V)
    M = explain_generation(llama, "attn_lrp", start="embed")(params, ids, generated=2)
    untied = dict(params, lm_head=params["embed"].T)
    ref = explain_generation(llama, "attn_lrp", start="embed")(untied, ids, generated=2)
    np.testing.assert_allclose(M, ref, rtol=1e-10, atol=1e-12 * float(jnp.abs(ref).max()))


def test_lrp_start_with_the_mask_after_the_ids():
    """start= on a parameter reads the data from every argument without the table
    (ids and mask), so fn(params, ids, mask) starts at the lookup, not at the RoPE
    products that first meet the mask."""
    params = llama_params(jax.random.PRNGKey(2))
    ids = jax.random.randint(jax.random.PRNGKey(3), (2, 6), 0, V)
    mask = jnp.ones(ids.shape, jnp.int32)
    got = jaxlrp.lrp(llama, "attn_lrp", start="embed")(params, ids, mask, target=3)
    ref = jaxlrp.lrp(llama, "attn_lrp", start="embed")(params, ids, target=3)
    assert not isinstance(got, tuple), f"start= selected {len(got)} values of shapes {[r.shape for r in got]}"
    np.testing.assert_allclose(got, ref, rtol=1e-10)


# ------------------------------------------------------------------ the same model, as JAX LLM code is written


def exact(preset: str) -> composites.Composite:
    """``preset`` with every stabiliser 0. Two spellings of one model (the query scaled
    before or after ``q . k``) differ by the stabiliser's share (1.3e-6 of the map with
    the default 1e-6 on the attention product); with 0 they agree to rounding."""
    zero = [(composites.kind("product", "glu"), rules.Uniform(0.0)), ("gate", rules.SignalTakesAll(0.0)),
            ("normalize", rules.SignalTakesAll(0.0)), ("sum", rules.Norm(0.0)), ("softmax", rules.Softmax(0.0))]
    if preset == "attn_lrp":
        return composites.AttnLRP(epsilon=0.0, rules=[("attention", rules.Uniform(0.0))] + zero)
    return composites.CPLRP(epsilon=0.0, rules=[("attention", rules.SignalTakesAll(0.0))] + zero)


def _random_scale(key, shape, dtype=jnp.float64):
    return 1.0 + 0.3 * jax.random.normal(key, shape, dtype)


def _nnx_llama():
    """A Flax nnx Llama (Flax's own Embed, Linear, RMSNorm, dot_product_attention), random
    weights; returns ``(fn, state, params)`` with ``params`` the plain-JAX port's copy."""
    from flax import nnx
    from flax.nnx.nn.attention import dot_product_attention_weights as attention_weights

    f64 = dict(param_dtype=jnp.float64, dtype=jnp.float64)
    linear = lambda i, o, rngs: nnx.Linear(i, o, use_bias=False, rngs=rngs, **f64)  # noqa: E731
    norm = lambda rngs: nnx.RMSNorm(D, epsilon=EPS, scale_init=_random_scale, rngs=rngs, **f64)  # noqa: E731

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm1, self.norm2 = norm(rngs), norm(rngs)
            self.wq, self.wk, self.wv, self.wo = (linear(D, D, rngs) for _ in range(4))
            self.w1, self.w3, self.w2 = linear(D, F, rngs), linear(D, F, rngs), linear(F, D, rngs)

        def __call__(self, x, pos, allowed):
            n, length, _ = x.shape
            h = self.norm1(x)
            q = rope(self.wq(h).reshape(n, length, H, DH), pos)
            k = rope(self.wk(h).reshape(n, length, H, DH), pos)
            v = self.wv(h).reshape(n, length, H, DH)
            probs = attention_weights(q, k, mask=allowed)  # not nnx.dot_product_attention: see below
            x = x + self.wo(jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, length, D))
            h = self.norm2(x)
            return x + self.w2(nnx.silu(self.w1(h)) * self.w3(h))

    class Llama(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(V, D, rngs=rngs, **f64)
            self.layers = nnx.List([Block(rngs) for _ in range(LAYERS)])
            self.norm = norm(rngs)
            self.lm_head = linear(D, V, rngs)

        def __call__(self, ids, mask=None):
            mask = jnp.ones(ids.shape, jnp.int32) if mask is None else mask
            pos, allowed = positions_and_allowed(mask)
            x = self.embed(ids)
            for layer in self.layers:
                x = layer(x, pos, allowed)
            return self.lm_head(self.norm(x))

    model = Llama(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    fn = lambda state, ids, mask=None: nnx.merge(graphdef, state)(ids, mask)  # noqa: E731
    val = lambda v: jnp.asarray(v[...])  # noqa: E731
    params = dict(
        embed=val(model.embed.embedding), norm=val(model.norm.scale), lm_head=val(model.lm_head.kernel),
        layers=[{k: val(getattr(b, k).scale if k.startswith("norm") else getattr(b, k).kernel)
                 for k in ("norm1", "norm2", "wq", "wk", "wv", "wo", "w1", "w3", "w2")} for b in model.layers],
    )
    return fn, state, params


def _penzai_llama(params):
    """penzai's Llama-like transformer, with the plain port's weights copied in."""
    pytest.importorskip("penzai", reason="penzai is not installed")
    from penzai import pz
    from penzai.models.transformer.variants import llamalike_common as lc

    config = lc.LlamalikeTransformerConfig(
        num_kv_heads=H, query_head_multiplier=1, embedding_dim=D, projection_dim=DH, mlp_hidden_dim=F,
        num_decoder_blocks=LAYERS, vocab_size=V, mlp_variant="swiglu", tie_embedder_and_logits=False,
        rms_norm_eps=EPS, parameter_dtype=jnp.float64, activation_dtype=jnp.float64,
    )
    unbound, slots = pz.unbind_params(lc.build_llamalike_transformer(config, init_base_rng=jax.random.key(0)))
    heads = lambda w: w.reshape(D, H, DH)  # noqa: E731
    block = {
        "pre_attention_norm/scale": lambda p: p["norm1"], "pre_ffw_norm/scale": lambda p: p["norm2"],
        "attention/query": lambda p: heads(p["wq"]), "attention/key": lambda p: heads(p["wk"]),
        "attention/value": lambda p: heads(p["wv"]), "attention/output": lambda p: p["wo"].reshape(H, DH, D),
        "mlp/gating_linear": lambda p: p["w1"], "mlp/value_linear": lambda p: p["w3"],
        "mlp/out_linear": lambda p: p["w2"],
    }

    def weight(label: str):
        name = label.removeprefix("transformer/").removesuffix(".weights").removesuffix(".embeddings")
        if name == "embedder":
            return params["embed"]
        if name == "final_norm/scale":
            return params["norm"]
        if name == "lm_head":
            return params["lm_head"]
        i, rest = name.removeprefix("block_").split("/", 1)
        return block[rest](params["layers"][int(i)])

    values = [pz.ParameterValue(label=s.label, value=pz.nx.wrap(weight(s.label), *s.value.named_shape))
              for s in slots]
    model = pz.bind_variables(unbound, values)

    def fn(model, ids):
        return model(pz.nx.wrap(ids, "batch", "seq")).unwrap("batch", "seq", "vocabulary")

    return fn, model


@pytest.fixture(scope="module")
def nnx_model():
    return _nnx_llama()


def test_nnx_llama_forward_equals_the_plain_port(nnx_model):
    fn, state, params = nnx_model
    ids = jax.random.randint(jax.random.PRNGKey(7), (2, 6), 0, V)
    np.testing.assert_allclose(jax.jit(fn)(state, ids), jax.jit(llama)(params, ids), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("preset", PRESETS)
def test_nnx_llama_explained_unchanged_equals_the_plain_port(nnx_model, preset):
    fn, state, params = nnx_model
    preset = exact(preset)
    ids = jax.random.randint(jax.random.PRNGKey(7), (2, 6), 0, V)
    got = jaxlrp.lrp(fn, preset, start="*embed*")(state, ids, target=3)
    ref = jaxlrp.lrp(llama, preset, start="embed")(params, ids, target=3)
    assert got.shape == ref.shape, f"start= returned the relevance of a value of shape {got.shape}"
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * float(jnp.abs(ref).max()))
    M = explain_generation(fn, preset, start="*embed*")(state, ids, generated=3)
    M_ref = explain_generation(llama, preset, start="embed")(params, ids, generated=3)
    np.testing.assert_allclose(M, M_ref, rtol=1e-10, atol=1e-12 * float(jnp.abs(M_ref).max()))


def test_penzai_llama_forward_equals_the_plain_port(model):
    params, _ = model
    fn, pz_model = _penzai_llama(params)
    ids = jax.random.randint(jax.random.PRNGKey(8), (2, 6), 0, V)
    np.testing.assert_allclose(jax.jit(fn)(pz_model, ids), jax.jit(llama)(params, ids), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("preset", PRESETS)
def test_penzai_llama_explained_unchanged_equals_the_plain_port(model, preset):
    """penzai's lookup output is a named array whose data is laid out (embedding, batch,
    seq); ``start=`` returns the relevance in that layout, equal to the plain port's."""
    params, _ = model
    fn, pz_model = _penzai_llama(params)
    preset = exact(preset)
    ids = jax.random.randint(jax.random.PRNGKey(8), (2, 6), 0, V)
    got = jaxlrp.lrp(fn, preset, start="*embed*")(pz_model, ids, target=3)
    ref = jaxlrp.lrp(llama, preset, start="embed")(params, ids, target=3)
    assert got.shape == (D,) + ids.shape
    np.testing.assert_allclose(jnp.moveaxis(got, 0, -1), ref, rtol=1e-10, atol=1e-12 * float(jnp.abs(ref).max()))
    # explain_generation needs the start value laid out (N, L, ...): it refuses penzai's
    with pytest.raises(ValueError, match=r"start= must select one value of shape \(N, L, ...\)"):
        explain_generation(fn, preset, start="*embed*")(pz_model, ids, generated=3)
