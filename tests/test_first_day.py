"""Issue 28 ("a new user's first day"): no silent degenerate results, one nnx API,
a CLI that validates first, an ``inspect`` that prints once and reports only real
fallbacks. Each test is the failing case of the issue."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

RNG = np.random.default_rng(28)


def _mlp_params():
    return {"w1": jnp.asarray(RNG.normal(size=(5, 4))), "b1": jnp.asarray(RNG.normal(size=4)),
            "w2": jnp.asarray(RNG.normal(size=(4, 3))), "b2": jnp.asarray(RNG.normal(size=3))}


def _logits(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


X = jnp.asarray(RNG.normal(size=(2, 5)))


# ------------------------------------------------------------ 1a. probabilities


@pytest.mark.parametrize("tail", [
    lambda z: jax.nn.softmax(z, axis=-1),
    lambda z: jax.nn.softmax(z, axis=-1).reshape(z.shape[0], -1)[:, :3],  # routing after it
])
def test_probabilities_at_the_output_are_refused(tail):
    probs = lambda p, x: tail(_logits(p, x))  # noqa: E731
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="returns probabilities.*explain the logits"):
        jaxlrp.lrp(probs)(_mlp_params(), X)
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="returns probabilities"):
        jaxlrp.inspect(probs, verbose=False)(_mlp_params(), X)


def test_softmax_inside_attention_keeps_its_rule():
    wq, wk, wv = (jnp.asarray(RNG.normal(size=(4, 4))) for _ in range(3))

    def attn(p, x):  # (N, T, 4) -> (N, T, 4), a softmax read by the product with the values
        a = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", x @ wq, x @ wk), axis=-1)
        return jnp.einsum("nts,nsd->ntd", a, x @ wv).sum(1) @ p

    x = jnp.asarray(RNG.normal(size=(2, 3, 4)))
    rep = jaxlrp.inspect(attn, verbose=False)(jnp.asarray(RNG.normal(size=(4, 3))), x)
    assert [r.rule for r in rep.rows if r.kind == "softmax"] == [repr(rules.Softmax())]


def test_logits_explained_and_conserving():
    R = jaxlrp.lrp(_logits, rule=rules.Zero())(_mlp_params(), X, target=1)
    assert np.all(np.isfinite(R))


# ---------------------------------------------------------- 1b. z^B bounds


@pytest.mark.parametrize("build", [
    lambda: composites.EpsilonGammaBox(),
    lambda: composites.EpsilonGammaBox(low=0.0),
    lambda: composites.get("epsilon_gamma_box"),
    lambda: composites.Overview(),
    lambda: jaxlrp.lrp(_logits, "epsilon_gamma_box"),
])
def test_zbox_presets_require_bounds(build):
    with pytest.raises(TypeError, match=r"needs the bounds.*\(low=0\.0, high=1\.0\)"):
        build()


def test_zbox_presets_with_bounds_use_them():
    comp = composites.EpsilonGammaBox(low=0.0, high=1.0)
    assert ("first", rules.ZBox(0.0, 1.0)) in comp.rules
    assert ("first", rules.ZBox(0.0, 255.0, 1e-9)) in composites.get("overview", low=0.0, high=255.0).rules


# ----------------------------------------------------------- 1c. kind typos


@pytest.mark.parametrize("word", ["convolution", "Dense", "fully_connected_layer", "batchnorm"])
def test_bare_word_matching_nothing_is_an_error(word):
    comp = composites.Composite([(word, rules.ZPlus())])
    with pytest.raises(ValueError, match=f"{word!r} is neither a layer kind nor a glob"):
        jaxlrp.lrp(_logits, comp)(_mlp_params(), X)


def test_kind_typo_names_the_closest_kind():
    with pytest.raises(ValueError, match="did you mean 'conv'"):
        jaxlrp.lrp(_logits, composites.Composite([("convolution", rules.ZPlus())]))(_mlp_params(), X)


def test_globs_and_matching_words_still_warn_or_work():
    with pytest.warns(composites.UnmatchedPatternWarning):  # a glob: a warning, as before
        jaxlrp.lrp(_logits, composites.Composite([("*/conv9", rules.ZPlus())]))(_mlp_params(), X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bare word that names a layer (its parameter path) is fine
        jaxlrp.lrp(_logits, composites.Composite([("w1", rules.ZPlus())]))(_mlp_params(), X)
