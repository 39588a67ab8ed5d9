"""The zoo's transformers (``jaxlrp.models.transformer``) explained with AttnLRP and CP-LRP.

Tolerances: with exact stabilisers (epsilon 0 on dense layers, sums, normalisers
and attention products) and zero biases, CP-LRP is conservative, so the relevance
of the embedded sequence sums to the explained logit up to float64 round-off
(checked to 1e-6 relative). The default preset's stabilisers (1e-6) absorb a
little relevance at every layer; there it is checked to 1e-3 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp import composites, rules
from jaxlrp.flax import load_linen_variables
from jaxlrp.models import transformer as T

F64 = jnp.float64
SMALL = dict(dim=16, depth=1, heads=2, mlp_dim=32, num_classes=3, param_dtype=F64)
EXACT_CP = composites.CPLRP(
    epsilon=0.0,
    rules=[
        ("sum", rules.Norm(0.0)),
        ("normalize", rules.SignalTakesAll(0.0)),
        ("attention", rules.SignalTakesAll(0.0)),
    ],
)
PRESETS = {"attn_lrp": composites.AttnLRP(), "cp_lrp": composites.CPLRP()}


def _tokens(n=3, length=10, vocab=20, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (n, length), 0, vocab)


def _text(pool="mean", use_bias=True, depth=1):
    model = T.TextEncoder(vocab_size=20, max_len=12, pool=pool, use_bias=use_bias, **{**SMALL, "depth": depth})
    tokens = _tokens()
    variables = model.init(jax.random.PRNGKey(0), tokens)
    return model, variables, tokens


def _vit(pool="cls", use_bias=True, depth=1):
    model = T.ViT(image_size=(8, 8), patch_size=4, pool=pool, use_bias=use_bias, **{**SMALL, "depth": depth})
    images = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 2), F64)
    variables = model.init(jax.random.PRNGKey(0), images)
    return model, variables, images


def _check_jit_vmap(fn, variables, x, composite, extra=None):
    """Explain the batch and each example alone (vmap) in one jitted call; with
    ``extra(variables, x)`` computed in the same call."""
    explain = jaxlrp.lrp(fn, composite)

    @jax.jit
    def both(variables, x):
        batch = explain(variables, x, target=1)
        # vmap over single examples (no batch axis inside)
        single = jax.vmap(lambda xi: explain(variables, xi, target=1))(x)
        return batch, single, None if extra is None else extra(variables, x)

    rel, single, more = both(variables, x)
    assert rel.shape == x.shape and rel.dtype == x.dtype
    assert np.all(np.isfinite(rel)) and np.any(rel != 0)
    np.testing.assert_allclose(single, rel, rtol=1e-8, atol=1e-12)
    return rel, more


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_text_encoder_explained_from_embeddings(preset, pool):
    model, variables, tokens = _text(pool)
    h = T.embed(model, variables, tokens)
    assert h.shape == (3, 10 + (pool == "cls"), 16)
    np.testing.assert_allclose(T.from_embeddings(model)(variables, h), model.apply(variables, tokens), rtol=1e-12)
    rel, r = _check_jit_vmap(
        T.from_embeddings(model), variables, h, PRESETS[preset],
        extra=lambda v, _: T.explain_tokens(model, v, tokens, PRESETS[preset], target=1),
    )
    assert r.shape == (3, h.shape[1])
    np.testing.assert_allclose(r, T.token_relevance(rel), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_vit_explained_from_pixels_and_from_embeddings(preset):
    model, variables, images = _vit()
    h = T.embed(model, variables, images)
    assert h.shape == (3, 1 + 4, 16)
    _, r = _check_jit_vmap(
        model.apply, variables, images, PRESETS[preset],
        extra=lambda v, x: T.explain_tokens(model, v, x, PRESETS[preset], target=1),
    )
    assert r.shape == (3, 5) and np.all(np.isfinite(r))


def test_rules_found_in_the_models():
    model, variables, tokens = _text()
    h = T.embed(model, variables, tokens)
    rows = jaxlrp.inspect(T.from_embeddings(model), composites.AttnLRP(), verbose=False)(variables, h).rows
    kinds = [r.kind for r in rows]
    assert kinds.count("softmax") == kinds.count("attention") == kinds.count("product") == 1
    assert kinds.count("normalize") == 3  # two in the block, the final LayerNorm
    assert kinds[-1] == "dense"


@pytest.mark.parametrize(
    "build",
    [lambda: _text("mean", False, 2), lambda: _text("cls", False, 2), lambda: _vit("cls", False, 2), lambda: _vit("mean", False)],
    ids=["text-mean", "text-cls", "vit-cls", "vit-mean"],
)
def test_cp_lrp_conserves_on_zero_bias_models(build):
    model, variables, x = build()
    h = T.embed(model, variables, x)
    logits = model.apply(variables, x)
    fn = T.from_embeddings(model)

    @jax.jit
    def explain(variables, h):
        return tuple(jaxlrp.lrp(fn, c)(variables, h, target=0) for c in (EXACT_CP, composites.CPLRP(), composites.AttnLRP()))

    exact, preset, attn = explain(variables, h)
    np.testing.assert_allclose(T.token_relevance(exact).sum(-1), logits[:, 0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(preset.sum(axis=(1, 2)), logits[:, 0], rtol=1e-3, atol=1e-6)
    # AttnLRP sends relevance through the attention weights as well
    assert np.all(np.isfinite(attn)) and not np.allclose(attn, preset)


def test_patchify_matches_a_strided_convolution():
    images = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 12, 3), F64)
    kernel = jax.random.normal(jax.random.PRNGKey(4), (4, 4, 3, 5), F64)
    conv = jax.lax.conv_general_dilated(images, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    dense = T.patchify(images, 4) @ kernel.reshape(-1, 5)
    np.testing.assert_allclose(dense, conv.reshape(2, -1, 5), rtol=1e-10)
    np.testing.assert_array_equal(T.patchify(images[0], 4), T.patchify(images, 4)[0])
    with pytest.raises(ValueError):
        T.patchify(images, 5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pool"):
        T.TextEncoder(pool="max").init(jax.random.PRNGKey(0), _tokens())
    model = T.TextEncoder(max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        model.init(jax.random.PRNGKey(0), _tokens())


@pytest.mark.parametrize("kind", ["text", "vit"])
def test_nnx_matches_linen(kind):
    if kind == "text":
        model, variables, x = _text("cls")
        twin = T.NnxTextEncoder(vocab_size=20, max_len=12, pool="cls", rngs=nnx.Rngs(0), **SMALL)
    else:
        model, variables, x = _vit()
        twin = T.NnxViT(image_size=(8, 8), patch_size=4, channels=2, rngs=nnx.Rngs(0), **SMALL)
    load_linen_variables(twin, variables)
    np.testing.assert_allclose(twin(x), model.apply(variables, x), rtol=1e-10)
    comp = composites.AttnLRP()
    ref = jax.jit(lambda v, x: T.explain_tokens(model, v, x, comp, target=2))(variables, x)
    # the nnx state as the explained function's argument, under jit
    got = jax.jit(lambda s, x: T.explain_tokens(twin, s, x, comp, target=2))(nnx.state(twin), x)
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)

