"""Tests for jaxlrp.concepts (CRP and Relevance Maximisation).

The conditional relevance of a small MLP is compared with a NumPy LRP-epsilon pass
in which the hidden relevance is masked by hand; on a small CNN, CRP's identities are
checked (the concepts of a layer sum to the plain explanation, a concept's heatmap
sums to its relevance score, the start-layer seed is the masked activation), with
every composite and variant; relevance maximisation is compared with a brute-force
ranking.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, concepts, rules, variants

RNG = np.random.default_rng(0)
W1, B1 = RNG.normal(size=(6, 5)), RNG.normal(size=5) * 0.1
W2, B2 = RNG.normal(size=(5, 4)), RNG.normal(size=4) * 0.1
X = RNG.normal(size=(3, 6))
EPS = 1e-3


def mlp(p, x):
    h = jax.nn.relu(jnp.dot(x, p["w1"], precision="highest") + p["b1"])
    return jnp.dot(h, p["w2"], precision="highest") + p["b2"]


P = {"w1": jnp.asarray(W1), "b1": jnp.asarray(B1), "w2": jnp.asarray(W2), "b2": jnp.asarray(B2)}
LAYERS = {"hidden": "w1", "head": "w2"}


def np_epsilon(x, w, b, z_rel):
    z = x @ w + b
    s = z_rel / (z + EPS * np.where(z >= 0, 1, -1))
    return x * (s @ w.T)


def np_crp(x, target, hidden_mask, head_mask=None):
    h_pre = x @ W1 + B1
    h = np.maximum(h_pre, 0)
    out = h @ W2 + B2
    r_out = np.zeros_like(out)
    r_out[np.arange(len(x)), target] = out[np.arange(len(x)), target]
    if head_mask is not None:
        r_out = r_out * head_mask
    r_h = np_epsilon(h, W2, B2, r_out) * hidden_mask  # relevance at the hidden layer's output
    return np_epsilon(x, W1, B1, r_h), r_h


def test_conditional_matches_numpy_with_masked_hidden_relevance():
    crp = concepts.conditional(mlp, rule=rules.Epsilon(EPS))
    t = np.array([0, 1, 3])
    conds = [{"w1": [c]} for c in range(5)] + [{"w1": [0, 2], "w2": [0, 1, 3]}]
    got = jax.jit(lambda p, x: crp(p, x, conditions=conds, target=t))(P, X)
    assert got.shape == (6,) + X.shape
    for c in range(5):
        np.testing.assert_allclose(got[c], np_crp(X, t, np.eye(5)[c])[0], rtol=1e-10, atol=1e-12)
    ref = np_crp(X, t, np.eye(5)[[0, 2]].sum(0), np.array([1, 1, 0, 1.0]))[0]
    np.testing.assert_allclose(got[5], ref, rtol=1e-10, atol=1e-12)
    # a single condition gives no K axis; a float mask selects neurons per example
    one = crp(P, X, conditions={"w1": np.array([0.0, 1, 0, 0, 0])}, target=t)
    np.testing.assert_allclose(one, got[1], rtol=1e-12, atol=1e-14)
    per_example = RNG.random((3, 5))
    got = crp(P, X, conditions={"w1": per_example}, target=t)
    np.testing.assert_allclose(got, np_crp(X, t, per_example)[0], rtol=1e-10, atol=1e-12)


def test_relevance_scores_match_numpy_and_condition_on_a_higher_layer():
    t = np.array([2, 0, 1])
    scores = concepts.relevance_scores(mlp, rule=rules.Epsilon(EPS), layer="w1")
    np.testing.assert_allclose(scores(P, X, target=t), np_crp(X, t, np.ones(5))[1], rtol=1e-10)
    sub = scores(P, X, target=t, conditions=[{"w2": [k]} for k in range(4)])
    for k in range(4):
        np.testing.assert_allclose(sub[k], np_crp(X, t, np.ones(5), np.eye(4)[k])[1], rtol=1e-10, atol=1e-14)
    normed = concepts.relevance_scores(mlp, rule=rules.Epsilon(EPS), layer="w1", normalize=True)(P, X, target=t)
    raw = np_crp(X, t, np.ones(5))[1]
    total = np.abs(raw).sum(1, keepdims=True)
    np.testing.assert_allclose(normed, raw / np.where(total > 0, total, 1), rtol=1e-10)  # 0 where all are 0


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3), name="conv1")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(6, (3, 3), name="conv2")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3, name="head")(x)


XI = RNG.normal(size=(2, 8, 8, 1))
CNN_P = CNN().init(jax.random.key(0), XI)
CONV2 = "CNN/conv2"

LINEAR_IN_RELEVANCE = {
    "epsilon": composites.Composite([("linear", rules.Epsilon(1e-6))]),
    "epsilon_plus_flat": composites.EpsilonPlusFlat(),
    "epsilon_gamma_box": composites.EpsilonGammaBox(-3.0, 3.0),
    "alpha2beta1": composites.EpsilonAlpha2Beta1(),
}


@pytest.mark.parametrize("name", [n if n == "epsilon" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(LINEAR_IN_RELEVANCE)])
def test_concepts_of_a_layer_sum_to_the_explanation(name):
    comp = LINEAR_IN_RELEVANCE[name]
    crp = concepts.conditional(CNN().apply, comp)
    conds = [{CONV2: [c]} for c in range(6)]
    heat = jax.jit(lambda p, x: crp(p, x, conditions=conds, target=1))(CNN_P, XI)
    plain = jax.jit(lambda p, x: jaxlrp.lrp(CNN().apply, comp)(p, x, target=1))(CNN_P, XI)
    np.testing.assert_allclose(heat.sum(0), plain, rtol=1e-9, atol=1e-12)
    if name != "epsilon":
        return
    scores = jax.jit(lambda p, x: concepts.relevance_scores(CNN().apply, comp, CONV2)(p, x, target=1))(CNN_P, XI)
    # conservative below conv2 up to the bias and epsilon terms
    np.testing.assert_allclose(heat.sum((2, 3, 4)).T, scores, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("comp", [variants.relative(),
                                  pytest.param(variants.pruned(composites.EpsilonPlusFlat(), 0.3), marks=pytest.mark.slow)],
                         ids=["relative", "pruned"])
def test_variants_unmasked_condition_equals_lrp_and_chunks_agree(comp):
    crp = concepts.conditional(CNN().apply, comp, batch_size=2)
    conds = [{CONV2: np.ones(6)}, {}, {CONV2: [1]}]
    full = jax.jit(lambda p, x: crp(p, x, conditions=conds, target=0))(CNN_P, XI)
    plain = jax.jit(lambda p, x: jaxlrp.lrp(CNN().apply, comp)(p, x, target=0))(CNN_P, XI)
    np.testing.assert_allclose(full[0], plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(full[1], plain, rtol=1e-10, atol=1e-12)
    once = jax.jit(lambda p, x: concepts.conditional(CNN().apply, comp)(p, x, conditions={CONV2: [1]}, target=0))(
        CNN_P, XI)
    np.testing.assert_allclose(full[2], once, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(np.asarray(full)))


def test_start_layer_seeds_with_the_masked_activation():
    crp = concepts.conditional(mlp, rule=rules.Epsilon(EPS))
    got = crp(P, X, conditions={"w1": [3]}, start="w1")
    z = X @ W1 + B1
    ref = np_epsilon(X, W1, B1, z * np.eye(5)[3])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="start="):
        crp(P, X, conditions={"w1": [3]}, start="w1", target=0)


def test_errors_name_the_layer_and_the_fix():
    crp = concepts.conditional(CNN().apply)
    with pytest.raises(ValueError, match="one of: CNN/conv1, .*CNN/conv2"):
        crp(CNN_P, XI, conditions={"CNN/nope": [0]})
    with pytest.raises(ValueError, match="2 layers"):
        crp(CNN_P, XI, conditions={"conv": [0]})
    with pytest.raises(ValueError, match="out of range .* 6 channels"):
        crp(CNN_P, XI, conditions={CONV2: [6]})
    with pytest.raises(ValueError, match="does not broadcast"):
        crp(CNN_P, XI, conditions={CONV2: np.ones(5)})
    with pytest.raises(TypeError, match="conditions"):
        crp(CNN_P, XI, conditions=[])


def test_maximization_matches_brute_force_ranking(tmp_path):
    x = RNG.normal(size=(10, 8, 8, 1))
    y = RNG.integers(0, 3, size=10)
    batches = [{"x": x[i:i + 4], "target": y[i:i + 4]} for i in range(0, 10, 4)]
    comp = composites.EpsilonPlusFlat()
    top = concepts.maximization(CNN().apply, comp, CONV2, CNN_P, batches, tmp_path / "rm", top=3, progress=False)
    scores = jax.jit(lambda p, x, y: concepts.relevance_scores(CNN().apply, comp, CONV2, normalize=True)(
        p, x, target=y))(CNN_P, x, y)
    acts = []
    capture = CNN().apply(CNN_P, x, capture_intermediates=True, mutable=["intermediates"])[1]
    conv2 = np.asarray(capture["intermediates"]["conv2"]["__call__"][0])
    acts = conv2.max(axis=(1, 2))
    for c in range(6):
        np.testing.assert_array_equal(top.relevance_indices[c], np.argsort(-np.asarray(scores)[:, c], kind="stable")[:3])
        np.testing.assert_allclose(top.relevance_values[c], np.sort(np.asarray(scores)[:, c])[::-1][:3], rtol=1e-9)
        np.testing.assert_array_equal(top.activation_indices[c], np.argsort(-acts[:, c], kind="stable")[:3])
    # the reference heatmaps and the atlas
    refs = jax.jit(lambda p, x: concepts.references(CNN().apply, comp, CONV2, p, x, 2))(CNN_P, x[top.relevance_indices[2]])
    assert refs.shape == (3, 8, 8, 1)
    image = concepts.atlas({f"c{c}": [(x[i], refs[j]) for j, i in enumerate(top.relevance_indices[2])]
                            for c in (2,)}, size=16)
    assert image.dtype == np.uint8 and image.ndim == 3


def test_crop_takes_the_bounding_box_of_high_relevance():
    img = np.arange(64.0).reshape(8, 8)
    h = np.zeros((8, 8))
    h[2, 3], h[4, 5], h[6, 6] = 1.0, 0.5, 0.1
    np.testing.assert_array_equal(concepts.crop(img, h, threshold=0.4, pad=0), img[2:5, 3:6])
    np.testing.assert_array_equal(concepts.crop(img, h, threshold=0.4, pad=1), img[1:6, 2:7])
    np.testing.assert_array_equal(concepts.crop(img, -h), img)
