"""BatchNorm folding from the jaxpr equals folding BatchNorm into the layer by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.relu(x)
        x = nn.Conv(5, (3, 3), strides=2, use_bias=False, name="conv2")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn2")(x)
        x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(8, name="fc1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn3")(x)
        x = nn.relu(x)
        return nn.Dense(4, name="head")(x)


class Folded(nn.Module):
    """The same network with every BatchNorm folded into the layer before it."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(5, (3, 3), strides=2, name="conv2")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(8, name="fc1")(x))
        return nn.Dense(4, name="head")(x)


def _random_bn(rng, variables):
    """Give BatchNorm non-trivial statistics, including negative scales."""
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    stats = jax.tree_util.tree_map(np.asarray, variables["batch_stats"])
    for bn in ("bn1", "bn2", "bn3"):
        n = params[bn]["scale"].shape[0]
        params[bn]["scale"] = rng.normal(size=n)
        params[bn]["bias"] = rng.normal(size=n) * 0.3
        stats[bn]["mean"] = rng.normal(size=n) * 0.3
        stats[bn]["var"] = rng.uniform(0.5, 2.0, size=n)
    return {"params": params, "batch_stats": stats}


def _fold(variables, eps=1e-5):
    p, s = variables["params"], variables["batch_stats"]
    out = {}
    for layer, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("fc1", "bn3")):
        a = p[bn]["scale"] / np.sqrt(s[bn]["var"] + eps)
        b = p[layer].get("bias", 0.0)
        out[layer] = {"kernel": p[layer]["kernel"] * a, "bias": (b - s[bn]["mean"]) * a + p[bn]["bias"]}
    out["head"] = p["head"]
    return {"params": out}


@pytest.mark.parametrize(
    "comp",
    [composites.EpsilonGammaBox(-2.0, 2.0), composites.EpsilonAlpha2Beta1(), composites.EpsilonPlusFlat(),
     composites.Composite([("conv", rules.WSquare()), ("dense", rules.Epsilon(0.1))])],
    ids=["gamma_box", "alpha2beta1", "plus_flat", "wsquare"],
)
def test_batchnorm_folding_equals_manual_folding(comp):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 7, 2))
    variables = _random_bn(rng, ConvBN().init(jax.random.PRNGKey(0), x))
    folded = _fold(variables)
    np.testing.assert_allclose(ConvBN().apply(variables, x), Folded().apply(folded, x), rtol=1e-10)
    rel = jaxlrp.lrp(ConvBN().apply, comp)(variables, x, target=2)
    expected = jaxlrp.lrp(Folded().apply, comp)(folded, x, target=2)
    np.testing.assert_allclose(rel, expected, rtol=1e-7, atol=1e-12)


def test_folded_layers_are_reported():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 2))
    variables = ConvBN().init(jax.random.PRNGKey(0), x)
    rep = jaxlrp.inspect(ConvBN().apply, verbose=False)(variables, x)
    rows = {r.key: r for r in rep.rows}
    assert rows["ConvBN/conv1"].folded == ("add", "sub", "mul", "add")
    assert rows["ConvBN/conv2"].folded == ("sub", "mul", "add")
    assert rows["ConvBN/head"].folded == ("add",)
    assert rows["ConvBN/conv1"].param_paths == ("params/conv1/kernel",)


def test_batchnorm_before_a_layer_passes_relevance():
    """BN -> ReLU -> conv is not folded (it would fold into the *next* layer); it is an
    activation region and relevance passes through unchanged (conservation holds)."""

    class PreBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=True)(x)
            x = nn.relu(x)
            x = nn.Conv(4, (3, 3), use_bias=False)(x)
            return jnp.mean(x, axis=(1, 2))

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, 3))
    v = PreBN().init(jax.random.PRNGKey(0), x)
    rel = jaxlrp.lrp(PreBN().apply, rule=rules.ZPlus(0.0))(v, x, target=0)
    # z+ conserves on the conv; the normalised, rectified input is its only source
    np.testing.assert_allclose(rel.reshape(2, -1).sum(1), PreBN().apply(v, x)[:, 0], rtol=1e-5)


def test_residual_branch_is_not_mistaken_for_batchnorm_statistics():
    """On 1x1 maps with a batch of one, the other branch of a residual add has the
    per-channel shape of BatchNorm statistics; it must not be folded as one."""

    class TwoBranches(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.BatchNorm(use_running_average=True)(nn.Conv(4, (1, 1), use_bias=False)(x))
            y = y + nn.BatchNorm(use_running_average=True)(nn.Conv(4, (1, 1), use_bias=False)(x))
            return nn.relu(y).sum(axis=(1, 2))

    x = np.random.default_rng(0).normal(size=(2, 1, 1, 3))
    v = TwoBranches().init(jax.random.PRNGKey(0), x)
    batch = jaxlrp.lrp(TwoBranches().apply)(v, x, target=1)
    single = jaxlrp.lrp(TwoBranches().apply)(v, x[:1], target=1)
    np.testing.assert_allclose(single, batch[:1], rtol=1e-10)


def test_unbatched_flax_conv_batchnorm_is_folded_under_vmap():
    """flax's Conv reshapes an unbatched input to a batch of one and back; the
    reshape sits between the conv and its BatchNorm, and must not stop folding."""

    class ConvBNUnbatched(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), name="conv")(x)
            x = nn.BatchNorm(use_running_average=True, name="bn")(x)
            return nn.relu(x).sum(axis=(-3, -2))

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 5, 2))
    v = ConvBNUnbatched().init(jax.random.PRNGKey(0), x)
    v = _random_bn_params(rng, v)
    comp = composites.Composite([("conv", rules.Gamma(0.5))])
    batch = jaxlrp.lrp(ConvBNUnbatched().apply, comp)(v, x, target=0)
    vm = jax.vmap(lambda xi: jaxlrp.lrp(ConvBNUnbatched().apply, comp)(v, xi, target=0))(x)
    np.testing.assert_allclose(vm, batch, rtol=1e-8, atol=1e-12)
    rep = jaxlrp.inspect(ConvBNUnbatched().apply, comp, verbose=False)(v, x[0], target=0)
    assert rep.rows[0].folded == ("add", "reshape", "sub", "mul", "add")


def _random_bn_params(rng, v):
    p = jax.tree_util.tree_map(np.asarray, v["params"])
    s = jax.tree_util.tree_map(np.asarray, v["batch_stats"])
    p["bn"]["scale"] = rng.normal(size=4)
    s["bn"]["mean"], s["bn"]["var"] = rng.normal(size=4), rng.uniform(0.5, 2, size=4)
    return {"params": p, "batch_stats": s}
