"""Softmax, normalisation and attention rules, recognised from the jaxpr."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxlrp
from jaxlrp import composites, rules

RNG = np.random.default_rng(0)
EXACT_SOFTMAX = composites.Composite([("softmax", rules.Softmax(0.0))])


def test_softmax_rule_closed_form():
    x, R = RNG.normal(size=(3, 5)), RNG.normal(size=(3, 5))
    rel = jaxlrp.lrp(jax.nn.softmax, EXACT_SOFTMAX)(x, output_relevance=R)
    s = np.asarray(jax.nn.softmax(x))
    expected = x * (R - s * R.sum(-1, keepdims=True))
    np.testing.assert_allclose(rel, expected, rtol=1e-10, atol=1e-14)


def test_softmax_with_temperature_uses_its_own_jacobian():
    x, R, T = RNG.normal(size=(2, 4)), RNG.normal(size=(2, 4)), 3.0
    rel = jaxlrp.lrp(lambda x: jax.nn.softmax(x / T), EXACT_SOFTMAX)(x, output_relevance=R)
    s = np.asarray(jax.nn.softmax(x / T))
    np.testing.assert_allclose(rel, (x / T) * (R - s * R.sum(-1, keepdims=True)), rtol=1e-10, atol=1e-14)


def test_rmsnorm_is_identity():
    w = RNG.normal(size=6)

    def rmsnorm(x):
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w

    x, R = RNG.normal(size=(3, 6)), RNG.normal(size=(3, 6))
    rel = jaxlrp.lrp(rmsnorm)(x, output_relevance=R)
    np.testing.assert_allclose(rel, R, rtol=1e-12)
    rep = jaxlrp.inspect(rmsnorm, verbose=False)(x, output_relevance=R)
    assert [r.kind for r in rep.rows] == ["sum", "normalize"]


def test_layernorm_conserves_and_treats_the_normaliser_as_constant():
    ln = nn.LayerNorm()
    x, R = RNG.normal(size=(3, 6)), RNG.normal(size=(3, 6))
    v = ln.init(jax.random.PRNGKey(0), x)
    exact = composites.Composite([("sum", rules.Norm(0.0))])
    rel = jaxlrp.lrp(ln.apply, exact)(v, x, output_relevance=R)
    np.testing.assert_allclose(rel.sum(-1), R.sum(-1), rtol=1e-8)
    rep = jaxlrp.inspect(ln.apply, exact, verbose=False)(v, x, output_relevance=R)
    (norm,) = [r for r in rep.rows if r.kind == "normalize"]
    # all of the output's relevance reaches the centred input, none the normaliser
    np.testing.assert_allclose(norm.relevance_in, norm.relevance_out, rtol=1e-10)


def test_layernorm_written_with_a_division():
    def ln(x):
        c = x - jnp.mean(x, -1, keepdims=True)
        return c / jnp.sqrt(jnp.mean(c * c, -1, keepdims=True) + 1e-5)

    x, R = RNG.normal(size=(2, 5)), RNG.normal(size=(2, 5))
    rel = jaxlrp.lrp(ln, composites.Composite([("sum", rules.Norm(0.0))]))(x, output_relevance=R)
    np.testing.assert_allclose(rel.sum(-1), R.sum(-1), rtol=1e-8)


class TinyTransformer(nn.Module):
    """Pre-LN block with flax's own attention, mean pooling, zero-bias head option."""

    bias: bool = True

    @nn.compact
    def __call__(self, x):  # x: (N, T, D) embeddings
        h = nn.LayerNorm(use_bias=self.bias, name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, use_bias=self.bias, name="attn")(h, h)
        h = nn.LayerNorm(use_bias=self.bias, name="ln2")(x)
        h = nn.Dense(16, use_bias=self.bias, name="mlp1")(h)
        x = x + nn.Dense(8, use_bias=self.bias, name="mlp2")(nn.gelu(h))
        return nn.Dense(3, use_bias=self.bias, name="head")(x.mean(axis=1))


def _transformer(bias=True):
    x = RNG.normal(size=(2, 5, 8))
    model = TinyTransformer(bias=bias)
    return model, model.init(jax.random.PRNGKey(0), x), x


def test_flax_attention_model_explained_without_changes():
    model, v, x = _transformer()
    for comp in (composites.AttnLRP(), composites.CPLRP()):
        explain = jaxlrp.lrp(model.apply, comp)
        rel = jax.jit(explain)(v, x, target=1)
        assert rel.shape == x.shape and np.all(np.isfinite(rel))
        # vmap over examples (each a batch of one) equals the batched call
        vm = jax.jit(jax.vmap(lambda xi: explain(v, xi[None], target=jnp.array([1]))[0]))(x)
        np.testing.assert_allclose(vm, rel, rtol=1e-8, atol=1e-12)
    kinds = {r.kind for r in jaxlrp.inspect(model.apply, verbose=False)(v, x).rows}
    assert {"softmax", "attention", "product", "normalize", "sum", "dense"} <= kinds


def test_cp_lrp_conserves_on_a_zero_bias_transformer():
    model, v, x = _transformer(bias=False)
    exact = composites.CPLRP(epsilon=0.0, rules=[
        ("sum", rules.Norm(0.0)), ("normalize", rules.SignalTakesAll(0.0)), ("attention", rules.SignalTakesAll(0.0)),
    ])
    rel = jaxlrp.lrp(model.apply, exact)(v, x, target=0)
    np.testing.assert_allclose(rel.sum(axis=(1, 2)), model.apply(v, x)[:, 0], rtol=1e-6)


def test_attn_lrp_sends_relevance_through_the_attention_weights():
    model, v, x = _transformer(bias=False)
    a = jaxlrp.lrp(model.apply, composites.AttnLRP())(v, x, target=0)
    b = jaxlrp.lrp(model.apply, composites.CPLRP())(v, x, target=0)
    assert not np.allclose(a, b)
    rep = jaxlrp.inspect(model.apply, composites.CPLRP(), verbose=False)(v, x, target=0)
    (softmax,) = [r for r in rep.rows if r.kind == "softmax"]
    assert softmax.relevance_out == 0.0  # CP-LRP: nothing through the attention weights
