"""Model code written the way other libraries write it, explained unchanged under jit.

* Equinox: an MLP and a CNN (modules whose pytrees hold activation functions),
  explained as ``jaxlrp.lrp(lambda m, x: jax.vmap(m)(x), argnums=1)(model, x)``;
* a linen ResNet in the style of Flax's ImageNet example (``ResNetBlock``,
  ``BottleneckResNetBlock``, ``partial(nn.Conv, use_bias=False)``,
  ``nn.BatchNorm(use_running_average=not train)``);
* an nnx CNN with BatchNorm and Dropout, in eval mode (and refused in train mode);
* a small stand-in with Hugging Face Flax BERT's patterns (word + position +
  token-type embeddings, LayerNorm, an additive attention mask, a head mask of ones
  built inside the model), explained from the word embeddings' output.

Each is checked with the identity that applies: LRP-0 (with Norm(0) on sums and
pools) is gradient x input on ReLU networks, with or without biases; zero-bias
networks conserve relevance under EpsilonPlus without stabilisers; an explanation
started at a layer's output equals the explanation of the model rewritten to take
that output as its input.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Sequence

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp import composites, rules

N = 2
TARGET = jnp.array([0, 2])
# LRP-0 everywhere: gradient x input on ReLU networks (biases and BatchNorm included).
LRP0 = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0)), ("avgpool", rules.Norm(0.0))])
# Conservation on zero-bias ReLU networks: no stabiliser absorbs anything.
CONSERVING = composites.EpsilonPlus(epsilon=0.0, stabilizer=0.0)
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False}


def grad_times_input(fn, x, *args):
    """``x * d f_target / d x`` of ``fn(*args, x)`` on the batch."""
    g = jax.jit(jax.grad(lambda x: jnp.sum(fn(*args, x)[jnp.arange(N), TARGET])), compiler_options=FAST)(x)
    return x * g


def _close(a, b, rtol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


# ----------------------------------------------------------------------------- Equinox

EQX_STATIC = "non-array leaves of the explained function's arguments (an Equinox module's activation functions) are not treated as static"
EQX_BIAS = "issue 12 bug 2: the bias of a vmapped W @ x + b (eqx.nn.Linear) is not folded into the layer"


def eqx_mlp(bias):
    return eqx.nn.MLP(5, 3, 6, 2, activation=jax.nn.relu, use_bias=bias, use_final_bias=bias,
                      key=jax.random.PRNGKey(0))


class EqxCNN(eqx.Module):
    """A CNN as Equinox users write it: one example, channels first."""

    layers: list
    head: eqx.nn.Linear

    def __init__(self, key, bias=False):
        k1, k2, k3 = jax.random.split(key, 3)
        self.layers = [
            eqx.nn.Conv2d(2, 4, 3, padding=1, use_bias=bias, key=k1),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.MaxPool2d(2, 2),
            eqx.nn.Conv2d(4, 4, 3, padding=1, use_bias=bias, key=k2),
            eqx.nn.Lambda(jax.nn.relu),
        ]
        self.head = eqx.nn.Linear(4 * 3 * 3, 3, use_bias=bias, key=k3)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(jnp.ravel(x))


def _eqx_explain(model, x, composite):
    explain = jaxlrp.lrp(lambda m, x: jax.vmap(m)(x), composite, argnums=1)
    return eqx.filter_jit(lambda m, x: explain(m, x, target=TARGET))(model, x)


def _eqx_model(kind, bias):
    if kind == "mlp":
        return eqx_mlp(bias), np.random.default_rng(0).normal(size=(N, 5))
    return EqxCNN(jax.random.PRNGKey(1), bias), np.random.default_rng(1).normal(size=(N, 2, 6, 6))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_equinox_lrp0_is_gradient_times_input(kind):
    model, x = _eqx_model(kind, bias=False)
    R = _eqx_explain(model, x, LRP0)
    _close(R, grad_times_input(lambda m, x: jax.vmap(m)(x), x, model))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_equinox_conservation_without_biases(kind):
    model, x = _eqx_model(kind, bias=False)
    R = _eqx_explain(model, x, CONSERVING)
    logits = jax.vmap(model)(x)[jnp.arange(N), TARGET]
    _close(R.reshape(N, -1).sum(1), logits)


def test_equinox_mlp_with_biases_lrp0_is_gradient_times_input():
    model, x = _eqx_model("mlp", bias=True)
    _close(_eqx_explain(model, x, LRP0), grad_times_input(lambda m, x: jax.vmap(m)(x), x, model))


def test_equinox_filter_jit_accepts_target():
    explain = jaxlrp.lrp(lambda p, x: x @ p, rule=rules.Zero())
    w, x = jnp.ones((3, 3)), jnp.ones((N, 3))
    _close(eqx.filter_jit(explain)(w, x, target=TARGET), explain(w, x, target=TARGET))


def test_equinox_modules_closed_over():
    """What works today: the module closed over (its functions are then constants)."""
    model, x = _eqx_model("cnn", bias=False)
    fn = lambda p, x: jax.vmap(model)(x)  # noqa: E731
    R = jax.jit(jaxlrp.lrp(fn, LRP0), compiler_options=FAST)({}, x, target=TARGET)
    _close(R, grad_times_input(fn, x, {}))


# ------------------------------------------------------------------ linen, Flax style

ModuleDef = Any


class ResNetBlock(nn.Module):
    """Flax ImageNet example style basic block."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm()(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3), self.strides)(y)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm()(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 3
    num_filters: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = partial(nn.Conv, use_bias=False, dtype=jnp.float64, param_dtype=jnp.float64)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=jnp.float64, param_dtype=jnp.float64)
        x = conv(self.num_filters, (3, 3), (2, 2), padding=[(1, 1), (1, 1)], name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2 ** i, strides=strides, conv=conv, norm=norm, act=nn.relu)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float64, param_dtype=jnp.float64)(x)


def _randomise_batch_stats(variables, seed):
    """Non-trivial running statistics and BatchNorm parameters (the initial ones are
    identities and would hide a wrong fold)."""
    rng = np.random.default_rng(seed)

    def perturb(path, v):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(0.5 + rng.uniform(size=v.shape))
        if any(k in name for k in ("mean", "'bias'", "scale")) and "Dense" not in name:
            return jnp.asarray(v + 0.3 * rng.normal(size=v.shape))
        return v

    return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.mark.parametrize("block,stages", [(ResNetBlock, (1, 1)), (BottleneckResNetBlock, (1,))])
def test_linen_resnet_flax_example_style(block, stages):
    """Projection shortcuts, strided blocks, BatchNorm folded into bias-free convs, max
    pooling with SAME padding, global average pooling: LRP-0 is gradient x input."""
    model = ResNet(stage_sizes=stages, block_cls=block)
    x = np.random.default_rng(2).normal(size=(N, 8, 8, 2))
    variables = _randomise_batch_stats(model.init(jax.random.PRNGKey(0), x), 3)
    R = jax.jit(jaxlrp.lrp(model.apply, LRP0), compiler_options=FAST)(variables, x, target=TARGET)
    _close(R, grad_times_input(model.apply, x, variables))


TRAIN_ERR = getattr(jaxlrp, "TrainingModeError", None)
NO_TRAIN_ERR = "jaxlrp.TrainingModeError for any function (not only the jaxlrp.flax helpers) does not exist yet"


@pytest.mark.xfail(TRAIN_ERR is None, strict=True, reason=NO_TRAIN_ERR)
def test_linen_resnet_train_mode_is_refused():
    model = ResNet(stage_sizes=(1,), block_cls=ResNetBlock)
    x = np.random.default_rng(2).normal(size=(N, 8, 8, 2))
    variables = model.init(jax.random.PRNGKey(0), x)
    fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]  # noqa: E731
    with pytest.raises(TRAIN_ERR):  # refused while tracing
        jax.eval_shape(lambda v, x: jaxlrp.lrp(fn)(v, x, target=TARGET), variables, x)


# -------------------------------------------------------------------------------- nnx


class NnxCNN(nnx.Module):
    def __init__(self, rngs):
        kw = dict(dtype=jnp.float64, param_dtype=jnp.float64, rngs=rngs)
        self.conv1 = nnx.Conv(2, 4, (3, 3), **kw)
        self.bn1 = nnx.BatchNorm(4, **kw)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3), strides=2, use_bias=False, **kw)
        self.bn2 = nnx.BatchNorm(4, **kw)
        self.head = nnx.Linear(4 * 3 * 3, 3, **kw)

    def __call__(self, x):
        x = self.drop(nnx.relu(self.bn1(self.conv1(x))))
        x = nnx.max_pool(x, (2, 2), (1, 1), "SAME")
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.head(x.reshape(x.shape[0], -1))


def _nnx_model():
    model = NnxCNN(nnx.Rngs(0, dropout=1))
    rng = np.random.default_rng(4)
    for bn in (model.bn1, model.bn2):  # running statistics as after training, in float64 like the
        # model (flax keeps them in float32, and a float64 batch mean will not fit there in train mode)
        bn.mean = nnx.BatchStat(jnp.asarray(0.3 * rng.normal(size=4)))
        bn.var = nnx.BatchStat(jnp.asarray(0.5 + rng.uniform(size=4)))
        bn.scale[...] = jnp.asarray(1 + 0.3 * rng.normal(size=4))
        bn.bias[...] = jnp.asarray(0.3 * rng.normal(size=4))
    return model, rng.normal(size=(N, 6, 6, 2))


def test_nnx_cnn_eval_mode():
    model, x = _nnx_model()
    model.eval()
    graphdef, state = nnx.split(model)
    fn = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    R = jax.jit(jaxlrp.lrp(fn, LRP0), compiler_options=FAST)(state, x, target=TARGET)
    _close(R, grad_times_input(fn, x, state))


@pytest.mark.xfail(TRAIN_ERR is None, strict=True, reason=NO_TRAIN_ERR)
def test_nnx_cnn_train_mode_is_refused():
    """Batch statistics mix the examples of a batch: a typed error names the layer."""
    model, x = _nnx_model()
    model.train()
    graphdef, state = nnx.split(model)
    fn = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    with pytest.raises(TRAIN_ERR, match="(?i)bn1|batch"):  # refused while tracing
        jax.eval_shape(lambda s, x: jaxlrp.lrp(fn)(s, x, target=TARGET), state, x)


# ------------------------------------------------------------- Hugging Face BERT style


class BertEmbeddings(nn.Module):
    vocab: int
    hidden: int
    max_len: int

    @nn.compact
    def __call__(self, input_ids, token_type_ids, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = nn.Embed(self.vocab, self.hidden, name="word_embeddings", param_dtype=jnp.float64)(input_ids)
        positions = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        pos = nn.Embed(self.max_len, self.hidden, name="position_embeddings", param_dtype=jnp.float64)(positions)
        tok = nn.Embed(2, self.hidden, name="token_type_embeddings", param_dtype=jnp.float64)(token_type_ids)
        h = inputs_embeds + tok + pos
        return nn.LayerNorm(epsilon=1e-12, name="LayerNorm", param_dtype=jnp.float64)(h)


class BertSelfAttention(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, h, attention_mask, layer_head_mask):
        d = h.shape[-1]
        dense = partial(nn.Dense, param_dtype=jnp.float64)
        split = lambda t: t.reshape(t.shape[:2] + (self.heads, d // self.heads))  # noqa: E731
        q, k, v = (split(dense(d, name=n)(h)) for n in ("query", "key", "value"))
        bias = jax.lax.select(attention_mask > 0, jnp.zeros(attention_mask.shape, h.dtype),
                              jnp.full(attention_mask.shape, jnp.finfo(h.dtype).min))
        bias = bias[:, None, None, :]
        scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(d // self.heads) + bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = jnp.einsum("...hqk,h->...hqk", probs, layer_head_mask)
        out = jnp.einsum("...hqk,...khd->...qhd", probs, v)
        return out.reshape(out.shape[:2] + (d,))


class BertLayer(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, h, attention_mask, layer_head_mask):
        d = h.shape[-1]
        a = BertSelfAttention(self.heads, name="attention")(h, attention_mask, layer_head_mask)
        a = nn.Dense(d, name="attention_output", param_dtype=jnp.float64)(a)
        h = nn.LayerNorm(epsilon=1e-12, name="attention_LayerNorm", param_dtype=jnp.float64)(a + h)
        f = nn.Dense(2 * d, name="intermediate", param_dtype=jnp.float64)(h)
        f = nn.Dense(d, name="output", param_dtype=jnp.float64)(jax.nn.gelu(f, approximate=False))
        return nn.LayerNorm(epsilon=1e-12, name="output_LayerNorm", param_dtype=jnp.float64)(f + h)


class BertStandIn(nn.Module):
    vocab: int = 11
    hidden: int = 8
    heads: int = 2
    layers: int = 1

    @nn.compact
    def __call__(self, input_ids, token_type_ids, attention_mask, head_mask=None, inputs_embeds=None):
        if head_mask is None:  # as FlaxBertPreTrainedModel does
            head_mask = jnp.ones((self.layers, self.heads))
        h = BertEmbeddings(self.vocab, self.hidden, 8, name="embeddings")(input_ids, token_type_ids, inputs_embeds)
        for i in range(self.layers):
            h = BertLayer(self.heads, name=f"layer_{i}")(h, attention_mask, head_mask[i])
        pooled = jnp.tanh(nn.Dense(self.hidden, name="pooler", param_dtype=jnp.float64)(h[:, 0]))
        return nn.Dense(3, name="classifier", param_dtype=jnp.float64)(pooled)


def _bert():
    model = BertStandIn()
    rng = np.random.default_rng(5)
    ids = jnp.asarray(rng.integers(0, 11, size=(N, 5)))
    tt = jnp.asarray([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    mask = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    params = model.init(jax.random.PRNGKey(0), ids, tt, mask)
    return model, params, ids, tt, mask


def _bert_from_embeddings():
    """AttnLRP and CP-LRP of the model rewritten to take the embeddings (HF's inputs_embeds)."""
    model, params, ids, tt, mask = _bert()
    emb = params["params"]["embeddings"]["word_embeddings"]["embedding"][ids]
    fn = lambda p, e: model.apply(p, ids, tt, mask, inputs_embeds=e)  # noqa: E731
    out = jax.jit(lambda p, e: [jaxlrp.lrp(fn, c)(p, e, target=TARGET) for c in ("attn_lrp", "cp_lrp")],
                  compiler_options=FAST)(params, emb)
    for R in out:
        assert R.shape == emb.shape and bool(jnp.all(jnp.isfinite(R))) and float(jnp.abs(R).max()) > 0
    return out


def test_bert_stand_in_from_its_embeddings():
    """What works today: the model rewritten to take the embeddings, under jit."""
    _bert_from_embeddings()


def test_bert_stand_in_head_mask_keeps_the_attention_rules():
    attn, cp = _bert_from_embeddings()
    assert float(jnp.abs(attn - cp).max()) > 1e-3 * float(jnp.abs(attn).max())


HAS_START = "start" in inspect.signature(jaxlrp.lrp).parameters


@pytest.mark.xfail(not HAS_START, strict=True, reason="jaxlrp.lrp(..., start=<layer name>) does not exist yet")
@pytest.mark.parametrize("preset", ["attn_lrp", "cp_lrp"])
def test_bert_stand_in_explained_from_a_named_layer(preset):
    """``start="*/word_embeddings"`` starts the explanation at that layer's output (token
    ids in, no change to the model) and equals explaining the rewritten model."""
    model, params, ids, tt, mask = _bert()
    emb = params["params"]["embeddings"]["word_embeddings"]["embedding"][ids]
    fn = lambda p, i: model.apply(p, i, tt, mask)  # noqa: E731
    R = jax.jit(jaxlrp.lrp(fn, preset, start="*/word_embeddings"))(params, ids, target=TARGET)
    rewritten = lambda p, e: model.apply(p, ids, tt, mask, inputs_embeds=e)  # noqa: E731
    expected = jaxlrp.lrp(rewritten, preset)(params, emb, target=TARGET)
    _close(R, expected, rtol=1e-12)
