"""ReLU gating: a layer whose output relevance is provably zero where ``z <= 0``
lets its rule skip the terms of non-positive outputs (gamma: one term instead of
two). The check must be a sufficient condition: wherever it cannot prove that no
relevance arrives at ``z <= 0``, the full rule runs."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules
from jaxlrp._core.analysis import relu_gated
from jaxlrp._core.run import run as _run
from jaxlrp._core.trace import trace as _trace

import reference as ref


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@dataclasses.dataclass(frozen=True)
class OpaqueEpsilon(rules.Epsilon):
    """Epsilon that makes no promise about zeros: disables gating before it."""

    relevance_to_zeros = "any"


class VGGish(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(5)(x)


def _setup(model, shape=(2, 8, 8, 3)):
    x = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float64)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    return params, x


def _gated(fn, composite, params, x):
    t = _trace(fn, composite, None, (params, x))
    return sorted(t.layers[i].key for i in relu_gated(t.analysis, t.rules)), t


GAMMA = composites.Composite([("linear", rules.Gamma(0.25))])


def test_gated_layers_are_the_conv_and_dense_layers_before_a_relu():
    params, x = _setup(VGGish())
    gated, t = _gated(VGGish().apply, GAMMA, params, x)
    weighted = [layer.key for layer in t.layers if layer.kind in ("dense", "conv")]
    assert gated == sorted(weighted[:-1])  # the last layer's output is the program output


def test_gated_gamma_equals_the_full_rule():
    model = VGGish()
    params, x = _setup(model)
    gated = jaxlrp.lrp(model.apply, GAMMA)(params, x, target=jnp.array([0, 3]))
    # the same rules, but readers that promise nothing: no layer is gated
    opaque = composites.Composite([("dense", OpaqueEpsilon(0.0)), ("linear", rules.Gamma(0.25))])
    mixed = composites.Composite([("dense", rules.Epsilon(0.0)), ("linear", rules.Gamma(0.25))])
    R_opaque = jaxlrp.lrp(model.apply, opaque)(params, x, target=jnp.array([0, 3]))
    R_mixed = jaxlrp.lrp(model.apply, mixed)(params, x, target=jnp.array([0, 3]))
    assert _gated(model.apply, opaque, params, x)[0] == ["VGGish/Conv_0", "VGGish/Conv_1"]
    np.testing.assert_allclose(R_mixed, R_opaque, rtol=1e-12, atol=1e-12 * float(jnp.abs(R_opaque).max()))
    assert np.all(np.isfinite(gated))


def _explain(fn, comp, params, x, gate=True):
    """Relevance of the logits' sum; ``gate=False``: an identity mask on layer 0
    switches gating off (masks always do)."""
    def explain(params, x):  # one compiled program, not one per operation
        t = _trace(fn, comp, None, (params, x))
        masks = None if gate else {0: (jnp.ones((), x.dtype), None)}
        return _run(t, None, None, masks=masks)[1][0]

    return jax.jit(explain)(params, x)


@pytest.mark.parametrize("name", ["epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_presets_gated_equal_ungated(name):
    model = VGGish()
    params, x = _setup(model)
    comp = composites.get(name, **ref.preset_kwargs(name))
    gated, _ = _gated(model.apply, comp, params, x)
    if name == "epsilon_gamma_box":
        assert {"VGGish/Conv_1", "VGGish/Conv_2"} <= set(gated)
    fast, slow = _explain(model.apply, comp, params, x), _explain(model.apply, comp, params, x, gate=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12 * float(jnp.abs(slow).max()))


def _dense_net(after):
    def fn(p, x):
        h = x @ p["w1"] + p["b1"]
        return after(h, p)

    k = jax.random.split(jax.random.PRNGKey(2), 4)
    p = {"w1": jax.random.normal(k[0], (6, 7)), "b1": jax.random.normal(k[1], (7,)),
         "w2": jax.random.normal(k[2], (7, 3))}
    return fn, p, jax.random.normal(k[3], (4, 6))


NOT_GATED = {
    "output is the program output": lambda h, p: h,
    "no relu": lambda h, p: jnp.tanh(h) @ p["w2"],
    "leaky relu": lambda h, p: jax.nn.leaky_relu(h) @ p["w2"],
    "relu of a shifted value": lambda h, p: jax.nn.relu(h - 0.5) @ p["w2"],
    "pre-activation also read": lambda h, p: (jax.nn.relu(h) + h) @ p["w2"],
    "relu output is returned": lambda h, p: jnp.concatenate([jax.nn.relu(h) @ p["w2"], jax.nn.relu(h)], -1),
    "relu then sigmoid": lambda h, p: jax.nn.sigmoid(jax.nn.relu(h)) @ p["w2"],
    "relu times something": lambda h, p: (jax.nn.relu(h) * jnp.tanh(h)) @ p["w2"],
}


@pytest.mark.parametrize("case", list(NOT_GATED))
def test_not_gated_where_relevance_may_reach_nonpositive_outputs(case):
    fn, p, x = _dense_net(NOT_GATED[case])
    gated, t = _gated(fn, GAMMA, p, x)
    assert gated == [], case


def test_flat_reader_disables_gating():
    fn, p, x = _dense_net(lambda h, p: jax.nn.relu(h) @ p["w2"])
    assert _gated(fn, GAMMA, p, x)[0] == ["w1"]
    flat_after = composites.Composite([("first", rules.Gamma(0.25)), ("dense", rules.Flat())])
    assert _gated(fn, flat_after, p, x)[0] == []


def test_routing_between_relu_and_reader():
    def after(h, p):
        r = jax.nn.relu(h)
        r = jnp.concatenate([r[:, :3], r[:, 3:]], axis=-1).reshape(4, 7)
        return r @ p["w2"]

    fn, p, x = _dense_net(after)
    assert _gated(fn, GAMMA, p, x)[0] == ["w1"]
    R = jaxlrp.lrp(fn, GAMMA)(p, x, target=0)
    opaque = composites.Composite([("last", OpaqueEpsilon(0.0)), ("linear", rules.Gamma(0.25))])
    plain = composites.Composite([("last", rules.Epsilon(0.0)), ("linear", rules.Gamma(0.25))])
    np.testing.assert_allclose(jaxlrp.lrp(fn, plain)(p, x, target=0), jaxlrp.lrp(fn, opaque)(p, x, target=0),
                               rtol=1e-12, atol=1e-14)
    assert R.shape == x.shape
