"""``start=``: explaining token-id models from their embedding output.

A parameter matched by ``start=`` starts the explanation at the first values that
depend on both that parameter and the token ids: reads of the parameter alone (the
transpose of a tied output embedding, a table reshaped before its lookup) are not
start values, and the layer's output is returned in its own shape.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

RNG = np.random.default_rng(23)
V, D, L = 11, 4, 5
IDS = jnp.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
EXACT = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0))])


def _body(p, h):
    """Embeddings (N, L, D) to the last token's logits, through the tied table."""
    h = jnp.tanh(h @ p["w"]) + h
    return h[:, -1] @ p["embed"].T


def _params():
    return {"embed": RNG.normal(size=(V, D)), "w": RNG.normal(size=(D, D))}


def test_tied_embedding_is_one_start_value_with_all_the_relevance():
    """``logits = h @ E.T`` reads the table again: that read is not a second start
    value, so the relevance is one array (not a tuple) and conserves the logit."""
    p = _params()

    def model(p, ids):
        return _body(p, jnp.take(p["embed"], ids, axis=0))

    R = jaxlrp.lrp(model, EXACT, start="embed")(p, IDS, target=3)
    h = jnp.take(p["embed"], IDS, axis=0)
    expected = jaxlrp.lrp(_body, EXACT)(p, h, target=3)
    assert not isinstance(R, tuple) and R.shape == (2, L, D)
    np.testing.assert_allclose(R, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(R.sum(axis=(1, 2)), model(p, IDS)[:, 3], rtol=1e-10)


@pytest.mark.parametrize("lookup", ["transposed-take", "reshaped-one-hot"])
def test_table_preprocessed_before_its_lookup(lookup):
    """penzai's lookup transposes the table before the gather (no module names):
    the start value is the lookup's output, not the parameter-only transpose."""
    p = _params()
    stored = {"transposed-take": p["embed"].T, "reshaped-one-hot": p["embed"].reshape(V, 1, D)}[lookup]

    def embed(table, ids):
        if lookup == "transposed-take":
            return jnp.moveaxis(jnp.take(table.T, ids, axis=0), -1, -1)
        return jax.nn.one_hot(ids, V, dtype=table.dtype) @ table.reshape(V, D)

    def model(q, ids):
        return _body({"embed": p["embed"], "w": q["w"]}, embed(q["table"], ids))

    q = {"table": stored, "w": p["w"]}
    R = jaxlrp.lrp(model, EXACT, start="table")(q, IDS, target=1)
    expected = jaxlrp.lrp(_body, EXACT)(p, embed(stored, IDS), target=1)
    assert R.shape == (2, L, D)
    np.testing.assert_allclose(R, expected, rtol=1e-12, atol=1e-14)


def test_equinox_embedding_returns_the_layer_output_shape():
    """``eqx.nn.Embedding`` under ``vmap`` gathers ``(N, L, 1, D)`` and squeezes: the
    relevance has the layer output's shape ``(N, L, D)``."""
    eqx = pytest.importorskip("equinox")
    emb = eqx.nn.Embedding(V, D, key=jax.random.key(0))
    w = RNG.normal(size=(D, 3))

    def model(m, ids):
        return jax.vmap(jax.vmap(m))(ids).sum(1) @ w

    R = jaxlrp.lrp(model, EXACT, start="*weight*")(emb, IDS, target=2)
    h = jax.vmap(jax.vmap(emb))(IDS)
    expected = jaxlrp.lrp(lambda h: h.sum(1) @ w, EXACT)(h, target=2)
    assert R.shape == (2, L, D)
    np.testing.assert_allclose(R, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_penzai_llama_like_model_from_its_embedding_table():
    """penzai's Llama-like transformer (random initialisation, tied embeddings, no
    module names), explained unchanged with ``start=``, equals explaining its
    layers after the lookup from the embedding output."""
    pytest.importorskip("penzai")
    from penzai import pz
    from penzai.models.transformer.variants import llamalike_common as lc

    cfg = lc.LlamalikeTransformerConfig(
        num_kv_heads=2, query_head_multiplier=1, embedding_dim=8, projection_dim=4, mlp_hidden_dim=16,
        num_decoder_blocks=1, vocab_size=V, mlp_variant="swiglu", tie_embedder_and_logits=True,
        parameter_dtype=jnp.float64, activation_dtype=jnp.float64,
    )
    model = pz.freeze_params(lc.build_llamalike_transformer(cfg, init_base_rng=jax.random.key(0)))

    def logits(model, ids):
        out = model(pz.nx.wrap(ids).tag("batch", "seq"))
        return out.untag("batch", "seq", "vocabulary").unwrap()[:, -1]

    def from_embeddings(model, h):
        rest = pz.nn.Sequential(model.body.sublayers[1:])
        out = rest(pz.nx.wrap(h).tag("batch", "seq", "embedding"), token_positions=pz.nx.arange("seq", h.shape[1]))
        return out.untag("batch", "seq", "vocabulary").unwrap()[:, -1]

    R = jaxlrp.lrp(logits, composites.AttnLRP(), start="*0/table/embeddings*")(model, IDS, target=4)
    # penzai keeps the lookup's named axes in the order (embedding, batch, seq)
    assert R.shape == (8, 2, L)
    lookup = model.body.sublayers[0](pz.nx.wrap(IDS).tag("batch", "seq"))
    h = lookup.untag("batch", "seq", "embedding").unwrap()
    expected = jaxlrp.lrp(from_embeddings, composites.AttnLRP())(model, h, target=4)
    np.testing.assert_allclose(np.moveaxis(np.asarray(R), 0, -1), expected, rtol=1e-10, atol=1e-12)
