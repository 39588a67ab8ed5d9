"""jaxlrp's presets against Zennit 0.5.1 in float64, without torch.

``tests/data/zennit_small_cnn.npz`` holds a small CNN with every parameter random
(conv/linear weights and biases, BatchNorm scale, shift and statistics), an input
batch, a one-hot seed and the map of each Zennit composite, written by
``bench/zennit_reference.py`` (see there for the network and the two alignments on
Zennit's side, neither a rule). The network is rebuilt here in plain JAX (NCHW,
BatchNorm in inference mode, folded by jaxlrp) and explained with the preset of the
same name.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites

DATA = pathlib.Path(__file__).parent / "data" / "zennit_small_cnn.npz"
COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat", "excitation_backprop", "guided_backprop", "deconvnet", "beta_smooth")


def _conv(x, w, b):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + b[None, :, None, None]


def net(p: dict, x):
    """The network of ``bench/zennit_reference.py`` (NCHW)."""
    h = _conv(x, p["conv1.weight"], p["conv1.bias"])
    inv = jax.lax.rsqrt(p["bn1.running_var"] + 1e-5) * p["bn1.weight"]
    h = (h - p["bn1.running_mean"][None, :, None, None]) * inv[None, :, None, None] + p["bn1.bias"][None, :, None, None]
    h = jax.nn.relu(h)
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = h + jax.nn.relu(_conv(h, p["conv2.weight"], p["conv2.bias"]))
    h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 2, 2), "VALID") / 4.0
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(h @ p["fc1.weight"].T + p["fc1.bias"])
    return h @ p["fc2.weight"].T + p["fc2.bias"]


@pytest.fixture(scope="module")
def data():
    return _data()


def _composite(name: str):
    if name == "epsilon":
        return composites.Composite()
    if name == "epsilon_gamma_box":
        return composites.EpsilonGammaBox(-3.0, 3.0)
    return composites.get(name)


def test_same_network(data):
    params, x, _, d = data
    np.testing.assert_allclose(np.asarray(net(params, x)), d["logits"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", COMPOSITES)
def test_matches_zennit(data, name):
    params, x, seed, d = data
    R = np.asarray(jax.jit(jaxlrp.lrp(net, _composite(name)))(params, x, output_relevance=seed))
    ref = d[f"map/{name}"]
    assert R.dtype == np.float64
    rel = np.max(np.abs(R - ref)) / np.max(np.abs(ref))
    assert rel < 1e-6, f"{name}: max rel diff {rel:.2e}"


# ------------------------------------------------- the modified-gradient presets, by hand


def _mlp(p, x):
    h = jax.nn.relu(x @ p[0] + p[1])
    h = jnp.tanh(h @ p[2])
    return jax.nn.relu(h @ p[3]) @ p[4]


def _mlp_by_hand(p, x, seed, relu):
    """The backward pass of :func:`_mlp` with ``relu(g, z)`` at each ReLU."""
    a1 = x @ p[0] + p[1]
    h2 = jnp.tanh(jax.nn.relu(a1) @ p[2])
    a3 = h2 @ p[3]
    g = relu(seed @ p[4].T, a3) @ p[3].T
    g = (g * (1 - h2**2)) @ p[2].T
    return relu(g, a1) @ p[0].T


@pytest.mark.parametrize("name,relu", [
    ("guided_backprop", lambda g, z: g * (z > 0) * (g > 0)),
    ("deconvnet", lambda g, z: jnp.maximum(g, 0)),
    ("beta_smooth", lambda g, z: jax.nn.sigmoid(10.0 * z) * g),
])
def test_modified_gradients_by_hand(name, relu):
    k = jax.random.split(jax.random.key(0), 6)
    shapes = [(5, 7), (7,), (7, 6), (6, 6), (6, 3)]
    p = [jax.random.normal(kk, s, jnp.float64) for kk, s in zip(k, shapes)]
    x = jax.random.normal(k[5], (4, 5), jnp.float64)
    seed = jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3, dtype=jnp.float64)
    R = jaxlrp.lrp(_mlp, name)(p, x, output_relevance=seed)  # tanh: its derivative
    np.testing.assert_allclose(R, _mlp_by_hand(p, x, seed, relu), rtol=1e-12, atol=1e-12)


def test_relu_rules_refuse_other_activations():
    p, x = jnp.ones((3, 4)), jnp.ones((2, 3))
    tanh = lambda p, x: jnp.tanh(x @ p)
    with pytest.raises(ValueError, match="applies to ReLU activations.*'tanh'"):
        jaxlrp.lrp(tanh, composites.Composite([("activation", jaxlrp.rules.ReLUDeconvNet())]))(p, x, target=0)
    rectified = lambda p, x: jax.nn.relu(jax.nn.relu(x @ p) * 2.0 + 1.0)  # one region: scaling, then ReLU
    with pytest.raises(ValueError, match="follows other elementwise operations"):
        jaxlrp.lrp(rectified, "guided_backprop")(p, x, target=0)
    with pytest.raises(ValueError, match="beta_smooth"):
        jaxlrp.rules.ReLUBetaSmooth(0.0)


def test_gradient_rule_everywhere_is_the_gradient():
    params, x, seed, _ = _data()
    every = composites.Composite([(composites.kind(*composites.KINDS), jaxlrp.rules.Gradient())])
    R = jaxlrp.lrp(net, every)(params, x, output_relevance=seed)
    g = jax.vjp(lambda x: net(params, x), x)[1](seed)[0]
    np.testing.assert_allclose(R, g, rtol=1e-12, atol=1e-14)


def _data():
    d = np.load(DATA)
    params = {k[len("param/"):]: jnp.asarray(v) for k, v in d.items() if k.startswith("param/")}
    return params, jnp.asarray(d["x"]), jnp.asarray(d["seed"]), d
