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
    d = np.load(DATA)
    params = {k[len("param/"):]: jnp.asarray(v) for k, v in d.items() if k.startswith("param/")}
    return params, jnp.asarray(d["x"]), jnp.asarray(d["seed"]), d


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
