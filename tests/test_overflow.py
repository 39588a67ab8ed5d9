"""Large magnitudes: rules that normalise by a magnitude compute it scale-invariantly.

``rules.EpsilonStd`` took ``sqrt(mean(z^2))``, which overflows for ``|z| > 1.8e19``
in float32 and ``|z| > 256`` in float16 (0-255 pixels): epsilon became infinite and
the relevance silently zero. ``variants.relative()`` computed ``x * W^T R`` with
``R`` a logit of ~5e19, which overflows float32, then ``inf / inf``: NaN. Each case
is compared with the same explanation computed in float64, where nothing
overflows, and ``EpsilonStd`` also with a NumPy reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import rules, variants

RNG = np.random.default_rng(24)


def _dense(p, x):
    return x @ p["w"] + p["b"]


def _epsilon_std_reference(x, w, b, r, factor=0.25, epsilon=1e-9):
    """Montavon et al.'s LRP-epsilon with epsilon = factor * RMS(z), in float64."""
    x, w, b, r = (np.asarray(a, np.float64) for a in (x, w, b, r))
    z = x @ w + b
    eps = factor * np.sqrt((z ** 2).mean(1, keepdims=True)) + epsilon
    return x * ((r / (z + eps * np.where(z >= 0, 1, -1))) @ w.T)


def _rel_err(got, ref) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("centered", [False, True])
def test_epsilon_std_float16_pixels(centered):
    """0-255 pixels in float16: z reaches thousands, z^2 is past float16's 65504."""
    x = RNG.integers(1, 256, size=(4, 64)).astype(np.float16)
    w = (RNG.normal(size=(64, 10)) * 0.1).astype(np.float16)
    b = RNG.normal(size=10).astype(np.float16)
    r = RNG.normal(size=(4, 10)).astype(np.float16)
    assert np.abs(x.astype(np.float64) @ w + b).max() > 256
    rule = rules.EpsilonStd(0.25, centered=centered)
    R = jaxlrp.lrp(_dense, rule=rule)({"w": w, "b": b}, x, output_relevance=r)
    assert R.dtype == np.float16 and np.all(np.isfinite(R)) and np.all(R != 0)
    f64 = {k: np.asarray(v, np.float64) for k, v in {"w": w, "b": b}.items()}
    R64 = jaxlrp.lrp(_dense, rule=rule)(f64, np.asarray(x, np.float64), output_relevance=np.asarray(r, np.float64))
    assert _rel_err(R, R64) < 1e-2
    if not centered:
        assert _rel_err(R64, _epsilon_std_reference(x, w, b, r)) < 1e-12


def test_epsilon_std_float32_huge_z():
    x = (RNG.normal(size=(4, 32)) * 1e10).astype(np.float32)
    w = (RNG.normal(size=(32, 10)) * 1e10).astype(np.float32)
    b = (RNG.normal(size=10) * 1e20).astype(np.float32)
    r = RNG.normal(size=(4, 10)).astype(np.float32)
    assert np.abs(x.astype(np.float64) @ w + b).min() > 1.8e19
    R = jaxlrp.lrp(_dense, rule=rules.EpsilonStd(0.25))({"w": w, "b": b}, x, output_relevance=r)
    assert np.all(np.isfinite(R)) and np.all(R != 0)
    assert _rel_err(R, _epsilon_std_reference(x, w, b, r)) < 1e-5


def test_epsilon_std_zero_layer_stays_zero():
    """The scale is 0 where z is 0: epsilon is the absolute one, no 0/0."""
    x, w, b = np.zeros((2, 3)), RNG.normal(size=(3, 4)), np.zeros(4)
    R = jaxlrp.lrp(_dense, rule=rules.EpsilonStd(0.25))({"w": w, "b": b}, x, output_relevance=np.ones((2, 4)))
    assert np.all(np.asarray(R) == 0)


def _mlp(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


@pytest.mark.parametrize("mode", ["layer", "neuron"])
def test_relative_float32_huge_logits(mode):
    p = {"w1": RNG.normal(size=(8, 16)), "b1": RNG.normal(size=16),
         "w2": RNG.normal(size=(16, 5)) * 2e19, "b2": RNG.normal(size=5)}
    x = RNG.normal(size=(3, 8))
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    x32 = jnp.asarray(x, jnp.float32)
    assert np.abs(_mlp(p32, x32)).max() > 5e19
    explain = jaxlrp.lrp(_mlp, variants.relative(mode=mode))
    R = explain(p32, x32, target=0)
    assert np.all(np.isfinite(R))
    assert _rel_err(R, np.asarray(explain(p, x, target=0))) < 1e-5


def test_relative_is_unchanged_at_ordinary_scale_and_per_example():
    """The rescaling per example keeps an example's relevance independent of its batch,
    also next to an example whose logits are 1e30 times larger."""
    p = {"w1": RNG.normal(size=(8, 16)), "b1": RNG.normal(size=16),
         "w2": RNG.normal(size=(16, 5)), "b2": RNG.normal(size=5)}
    x = RNG.normal(size=(2, 8))
    explain = jaxlrp.lrp(_mlp, variants.relative())
    R = np.asarray(explain(p, x, target=0))
    big = np.concatenate([x, x[:1] * 1e30])
    np.testing.assert_allclose(explain(p, big, target=0)[:2], R, rtol=1e-12)
