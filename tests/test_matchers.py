"""Matchers that match nothing are not silently ignored (issue 13, item 7), and
PLRP's per-layer proportions (issue 16)."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules, variants

import reference as ref


class M(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(4, (3, 3), name="conv2")(x))
        return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def model():
    m = M()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
    return m.apply, m.init(jax.random.PRNGKey(0), x), x


def _no_warnings(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxlrp.UnmatchedPatternWarning)
        return fn(*args, **kw)


def test_a_glob_that_matches_nothing_warns_with_the_closest_names(model):
    """The failure: ``"*/conv_1"`` for a layer named ``M/conv1`` gave exactly the
    default result, without a word."""
    apply, v, x = model
    comp = composites.Composite([("*/conv_1", rules.Gamma(0.5))])
    with pytest.warns(jaxlrp.UnmatchedPatternWarning, match=r"'\*/conv_1' matches no layer.*'M/conv1'"):
        R = jaxlrp.lrp(apply, comp)(v, x, target=0)
    np.testing.assert_array_equal(R, jaxlrp.lrp(apply)(v, x, target=0))  # it was a no-op
    with pytest.raises(jaxlrp.UnmatchedPatternError, match="M/conv1"):
        jaxlrp.lrp(apply, composites.Composite([("*/conv_1", rules.Gamma(0.5))], strict=True))(v, x)
    # under jit too (the check runs at trace time)
    with pytest.warns(jaxlrp.UnmatchedPatternWarning):
        jax.jit(jaxlrp.lrp(apply, composites.Composite([("*/conv_2", rules.Gamma(0.5))])))(v, x)


def test_name_and_param_matchers_and_combinators_are_checked(model):
    apply, v, x = model
    for m in (composites.name("M/conv3"), composites.param("params/conv3/*"),
              composites.all_of("conv", "*/conv3"), composites.not_("*/conv3"),
              composites.any_of("*/conv1", "*/conv3")):
        with pytest.warns(jaxlrp.UnmatchedPatternWarning, match="conv3"):
            jaxlrp.lrp(apply, composites.Composite([(m, rules.ZPlus())]))(v, x)


def test_matching_patterns_kinds_and_preset_defaults_do_not_warn(model):
    apply, v, x = model
    comp = composites.Composite([("*/conv1", rules.Flat()), ("params/conv2/*", rules.ZPlus()),
                                 (composites.name("M/head"), rules.Epsilon(0.1)), ("product", rules.Uniform())])
    _no_warnings(jaxlrp.lrp(apply, comp), v, x)
    mlp = lambda p, x: jnp.maximum(x @ p[0], 0) @ p[1]  # no conv, no name: presets' "conv" entries match nothing
    params = (jnp.ones((5, 4)), jnp.ones((4, 2)))
    for name in composites.names():
        _no_warnings(jaxlrp.lrp(mlp, composites.get(name, **ref.preset_kwargs(name))), params, jnp.ones((2, 5)))
    _no_warnings(jaxlrp.lrp(mlp, variants.pruned(composites.EpsilonGammaBox(-3.0, 3.0), 0.3, mode="m")), params,
                 jnp.ones((2, 5)))
    _no_warnings(jaxlrp.lrp(mlp), params, jnp.ones((2, 5)), layers="conv")  # a kind: not a pattern


@pytest.mark.parametrize("typo,suggestion", [("dence", "dense"), ("avg_pool", "avgpool"), ("activations", "activation"),
                                             ("frist", "first"), ("lienar", "linear"), ("convs", "conv")])
def test_a_typo_of_a_kind_is_an_error_at_construction(typo, suggestion):
    with pytest.raises(ValueError, match=f"unknown layer kind '{typo}'; did you mean '{suggestion}'"):
        composites.Composite([(typo, rules.Epsilon())])
    with pytest.raises(ValueError, match=f"did you mean '{suggestion}'"):
        composites.as_matcher(typo)


def test_what_counts_as_a_glob():
    """Digits, '/', glob characters, capitals or words far from every kind: a glob."""
    for pattern in ("conv1", "*/dence", "Dence", "head", "M/conv_1", "dense_2", "classifier"):
        composites.as_matcher(pattern)  # no error
    with pytest.raises(ValueError, match="did you mean 'dense'"):
        composites.kind("dence")
    # a layer really named like a kind's typo: name() says so explicitly
    layer = composites.Layer(0, "dense", "dot_general", "dence")
    assert composites.name("dence")(layer)


def test_layers_patterns_that_match_nothing_warn(model):
    """The failure: ``layers="*/nothing"`` returned ``{}``."""
    apply, v, x = model
    explain = jaxlrp.lrp(apply)
    with pytest.warns(jaxlrp.UnmatchedPatternWarning, match=r"layers= pattern '\*/nothing'"):
        _, per = explain(v, x, layers="*/nothing")
    assert per == {}
    with pytest.warns(jaxlrp.UnmatchedPatternWarning, match="'M/head'"):
        _, per = explain(v, x, layers=["*/conv1", "*/haed"])
    assert list(per) == ["M/conv1"]
    with pytest.raises(ValueError, match="did you mean 'dense'"):
        explain(v, x, layers="dence")
    with pytest.raises(jaxlrp.UnmatchedPatternError):
        jaxlrp.lrp(apply, composites.Composite(strict=True))(v, x, layers="*/nothing")
    _, per = _no_warnings(explain, v, x, layers=["*/conv*", "dense"])
    assert set(per) == {"M/conv1", "M/conv2", "M/head"}


def test_presets_take_strict():
    for name in composites.names():
        kw = ref.preset_kwargs(name)
        assert composites.get(name, strict=True, **kw).strict and not composites.get(name, **kw).strict
    assert variants.pruned(composites.EpsilonPlus(strict=True), 0.3).strict


# ------------------------------------------------------------ per-layer PLRP proportions


def test_per_layer_proportions(model):
    apply, v, x = model
    base = composites.EpsilonPlus()
    explain = lambda comp: jax.jit(jaxlrp.lrp(apply, comp))(v, x, target=1)
    # a mapping: the first matching key decides, unmatched layers are not pruned
    by_map = variants.pruned(base, {"*/conv2": 0.4, "dense": 0.2}, mode="m")
    by_hand = composites.Composite([("*/conv2", variants.Pruned(rules.ZPlus(), 0.4, mode="m")),
                                    ("dense", variants.Pruned(rules.Epsilon(), 0.2, mode="m")), ("conv", rules.ZPlus())])
    np.testing.assert_allclose(explain(by_map), explain(by_hand), rtol=1e-12)
    # a callable on the layer
    by_fn = variants.pruned(base, lambda layer: 0.4 if layer.kind == "conv" else 0.2, mode="m")
    np.testing.assert_allclose(explain(by_fn), explain(by_hand), rtol=1e-12)
    # p_neg in the same forms
    layers = [composites.Layer(1, "conv", "conv_general_dilated", "M/conv2", key="M/conv2"),
              composites.Layer(2, "dense", "dot_general", "M/head", key="M/head")]
    comp = variants.pruned(base, 0.3, {"conv": 0.1}, mode="lambda")
    assert comp.assign(layers) == (variants.Pruned(rules.ZPlus(), 0.3, 0.1), variants.Pruned(rules.Epsilon(), 0.3, 0.0))
    assert comp.proportions(layers[0]) == (0.3, 0.1)


def test_per_layer_proportions_are_validated(model):
    apply, v, x = model
    with pytest.raises(ValueError, match=r"p for '\*/conv2' must be in \[0, 1\)"):
        variants.pruned(None, {"*/conv2": 1.5})
    with pytest.raises(ValueError, match="did you mean 'dense'"):
        variants.pruned(None, {"dence": 0.3})
    with pytest.raises(ValueError, match=r"layer 'M/conv2'.*\[0, 1\)"):
        jaxlrp.lrp(apply, variants.pruned(None, lambda layer: 2.0))(v, x)
    with pytest.warns(jaxlrp.UnmatchedPatternWarning, match="pruned.. proportion key '\\*/conv3'"):
        jaxlrp.lrp(apply, variants.pruned(None, {"*/conv3": 0.3}))(v, x)
    # the input layer is never pruned unless asked: a key that selects only it is an error
    with pytest.raises(ValueError, match="input_layer=True"):
        jaxlrp.lrp(apply, variants.pruned(None, {"first": 0.3}))(v, x)
    first = jaxlrp.lrp(apply, variants.pruned(None, {"first": 0.3}, input_layer=True, mode="m"))
    R = first(v, x, target=0)
    assert np.mean(np.asarray(R) == 0) > np.mean(np.asarray(jaxlrp.lrp(apply)(v, x, target=0)) == 0)
