"""Whole networks: LRP identities and composites against the float64 reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

import nets
import reference as ref

MLP = [("dense", 12), ("relu",), ("dense", 10), ("relu",), ("dense", 4)]
CNN = [
    ("conv", 3, 6, 1, 1, 1), ("relu",), ("maxpool", 2, 2),
    ("conv", 3, 8, 1, 1, 2), ("relu",), ("maxpool", 2, 2),
    ("flatten",), ("dense", 10), ("relu",), ("dense", 5),
]
RESNET = [
    ("conv", 3, 6, 1, 1, 1), ("relu",),
    ("residual_start",), ("conv", 3, 6, 1, 1, 1), ("relu",), ("conv", 3, 6, 1, 1, 1), ("residual_add",), ("relu",),
    ("avgpool", 2, 2), ("flatten",), ("dense", 4),
]
# tanh: no exact zeros, so every neuron has positive and negative contributions (where
# a ReLU zeroes all but positive ones, alpha-beta passes alpha * R, by definition).
MLP_TANH = [("dense", 12), ("tanh",), ("dense", 10), ("tanh",), ("dense", 4)]
def _tanh(spec):
    return [("tanh",) if item == ("relu",) else item for item in spec]


SHAPES = {"mlp": (9,), "mlp_tanh": (9,), "cnn": (8, 8, 3), "cnn_tanh": (8, 8, 3), "resnet": (6, 6, 3), "resnet_tanh": (6, 6, 3)}
SPECS = {"mlp": MLP, "mlp_tanh": MLP_TANH, "cnn": CNN, "cnn_tanh": _tanh(CNN), "resnet": RESNET, "resnet_tanh": _tanh(RESNET)}


def _net(kind, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    layers = nets.random_layers(rng, SPECS[kind], SHAPES[kind], bias=bias)
    fn, params = nets.build(layers)
    x = rng.normal(size=(3,) + SHAPES[kind])
    return layers, fn, params, x


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_lrp0_equals_gradient_times_input(kind):
    """On a ReLU network with biases and max pooling, LRP-0 is x * grad f_c(x)."""
    layers, fn, params, x = _net(kind)
    target = jnp.array([0, 2, 3])
    rel = jaxlrp.lrp(fn, rule=rules.Zero())(params, x, target=target)
    grad = jax.grad(lambda x: jnp.sum(fn(params, x)[jnp.arange(3), target]))(x)
    np.testing.assert_allclose(rel, x * grad, rtol=1e-6, atol=1e-12)
    for n in range(3):  # and the independent reference agrees
        expected_grad = ref.network_grad(layers, x[n], int(target[n]))
        np.testing.assert_allclose(rel[n], x[n] * expected_grad, rtol=1e-6, atol=1e-12)


# Without a stabiliser (which absorbs a share eps/z of each neuron's relevance).
CONSERVING = {
    "zero": rules.Zero(),
    "zplus": rules.ZPlus(0.0),
    "alphabeta": rules.AlphaBeta(2.0, 1.0, 0.0),
    "alphabeta15": rules.AlphaBeta(1.5, 0.5, 0.0),
    "flat": rules.Flat(0.0),
    "wsquare": rules.WSquare(0.0),
    "zbox": rules.ZBox(-4.0, 4.0, 0.0),
}


@pytest.mark.parametrize(
    "kind,rule",
    [(k, r) for k in ["mlp_tanh", "cnn_tanh", "resnet_tanh", "cnn", "resnet"] for r in CONSERVING
     if not (r.startswith("alphabeta") and not k.endswith("tanh"))],
)
def test_conservation_on_zero_bias_networks(kind, rule):
    """Sum of relevance equals the explained logit (residual adds and average pooling
    included, where the Norm rule splits proportionally)."""
    _, fn, params, x = _net(kind, seed=1, bias=False)
    # flat, wsquare and zbox are first-layer rules (on inner layers they give relevance
    # to zero activations, which average pooling then cannot split).
    where = "first" if rule in ("flat", "wsquare", "zbox") else "linear"
    comp = composites.Composite([
        (where, CONSERVING[rule]), ("linear", rules.Zero()), ("sum", rules.Norm(0.0)), ("avgpool", rules.Norm(0.0)),
    ])
    rel = jaxlrp.lrp(fn, comp)(params, x, target=1)
    logit = fn(params, x)[:, 1]
    total = rel.reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(total, logit, rtol=1e-5, atol=1e-9)


def test_biases_absorb_relevance():
    """With biases, epsilon does not conserve: the test above can fail."""
    _, fn, params, x = _net("mlp", seed=1, bias=True)
    rel = jaxlrp.lrp(fn, rule=rules.Zero())(params, x, target=1)
    assert np.max(np.abs(rel.reshape(3, -1).sum(1) - fn(params, x)[:, 1])) > 1e-3


REF_RULES = {
    "zbox": (("zbox", {"low": -4.0, "high": 4.0}), rules.ZBox(-4.0, 4.0)),
    "flat": (("flat", {}), rules.Flat()),
    "wsquare": (("wsquare", {}), rules.WSquare()),
    "gamma": (("gamma", {"gamma": 0.25}), rules.Gamma(0.25)),
    "alphabeta": (("alphabeta", {"alpha": 2.0, "beta": 1.0}), rules.AlphaBeta(2.0, 1.0)),
    "zplus": (("zplus", {}), rules.ZPlus()),
    "epsilon": (("epsilon", {"epsilon": 0.1}), rules.Epsilon(0.1)),
    "zero": (("zero", {}), rules.Zero()),
}

RECIPES = {
    "cnn": ["zbox", "gamma", "epsilon", "zero"],
    "cnn2": ["flat", "zplus", "epsilon", "epsilon"],
    "cnn3": ["wsquare", "alphabeta", "gamma", "epsilon"],
    "resnet": ["zbox", "gamma", "alphabeta", "epsilon"],
    "mlp": ["flat", "gamma", "epsilon"],
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_layerwise_composite_matches_reference(recipe):
    kind = recipe.rstrip("23")
    layers, fn, params, x = _net(kind, seed=2)
    idx = [i for i, l in enumerate(layers) if l[0] in ("dense", "conv")]
    names = RECIPES[recipe]
    comp = composites.Composite([(f"layer{i}", REF_RULES[n][1]) for i, n in zip(idx, names)])
    rel = jaxlrp.lrp(fn, comp)(params, x, target=2)
    for n in range(3):
        # Norm on a 2x2 window sum with eps equals the reference's norm on the mean with eps/4
        expected, _ = ref.network_lrp(layers, x[n], 2, [REF_RULES[r][0] for r in names], pool_stabilizer=1e-6 / 4)
        np.testing.assert_allclose(rel[n], expected, rtol=1e-6, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_vit_gamma_matches_reference(kind):
    """ViTGamma: conv_gamma on convs, linear_gamma on dense layers, per-layer gammas
    first (a name glob and a depth callable), None keeps the epsilon rule."""
    layers, fn, params, x = _net(kind, seed=4)
    idx = [i for i, l in enumerate(layers) if l[0] in ("dense", "conv")]
    gammas = {f"layer{idx[-1]}": None, (lambda layer: layer.name == f"layer{idx[1]}"): 1.5}
    comp = composites.ViTGamma(conv_gamma=0.3, linear_gamma=0.05, gammas=gammas, epsilon=0.1)
    want = []
    for j, i in enumerate(idx):
        g = 1.5 if j == 1 else 0.3 if layers[i][0] == "conv" else 0.05
        want.append(("epsilon", {"epsilon": 0.1}) if j == len(idx) - 1 else ("gamma", {"gamma": g}))
    rel = jaxlrp.lrp(fn, comp)(params, x, target=2)
    for n in range(3):
        expected, _ = ref.network_lrp(layers, x[n], 2, want, pool_stabilizer=1e-6 / 4)
        np.testing.assert_allclose(rel[n], expected, rtol=1e-6, atol=1e-10 * np.abs(expected).max())


def test_vit_gamma_refuses_malformed_gammas():
    with pytest.raises(TypeError, match="gammas entries are"):
        composites.ViTGamma(gammas=["*head*"])
    with pytest.raises(ValueError):
        composites.ViTGamma(linear_gamma=-0.1)
    with pytest.raises(ValueError, match="did you mean 'dense'"):
        composites.ViTGamma(gammas={"dence": 0.1})


def test_matching_by_name_and_by_parameter_path_agree():
    layers, fn, params, x = _net("cnn", seed=3)
    by_name = composites.Composite([("layer0", rules.Flat()), ("layer3", rules.Gamma(0.5)), ("dense", rules.Epsilon(0.1))])
    by_param = composites.Composite([("layer0/kernel", rules.Flat()), ("layer3/*", rules.Gamma(0.5)), ("dense", rules.Epsilon(0.1))])
    explicit = composites.Composite([
        (composites.param("layer0/*"), rules.Flat()),
        (composites.all_of(composites.kind("conv"), composites.not_(composites.first)), rules.Gamma(0.5)),
        (composites.kind("dense"), rules.Epsilon(0.1)),
    ])
    r1 = jaxlrp.lrp(fn, by_name)(params, x)
    r2 = jaxlrp.lrp(fn, by_param)(params, x)
    r3 = jaxlrp.lrp(fn, explicit)(params, x)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(r1, r3)
    assert not np.allclose(r1, jaxlrp.lrp(fn, rule=rules.Epsilon(0.1))(params, x))


def test_first_and_last_layers():
    _, fn, params, x = _net("cnn", seed=4)
    rep = jaxlrp.inspect(fn, composites.EpsilonPlusFlat(), verbose=False)(params, x)
    flags = {r.key: r.rule for r in rep.rows}
    assert flags["layer0"].startswith("Flat")
    assert flags["layer3"].startswith("ZPlus")
    assert flags["layer7"].startswith("Epsilon") and flags["layer9"].startswith("Epsilon")
    last = composites.Composite([("last", rules.Zero()), ("dense", rules.Epsilon(0.5))])
    rep = jaxlrp.inspect(fn, last, verbose=False)(params, x)
    flags = {r.key: r.rule for r in rep.rows}
    assert flags["layer9"] == repr(rules.Zero()) and flags["layer7"] == repr(rules.Epsilon(0.5))


def test_presets_by_name():
    assert set(composites.names()) == {
        "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat",
        "attn_lrp", "cp_lrp", "zero_epsilon_gamma_box", "excitation_backprop", "guided_backprop", "deconvnet", "beta_smooth",
        "mamba_lrp", "vit_gamma",
    }
    _, fn, params, x = _net("cnn", seed=5)
    for name in composites.names():
        if name in ref.PRESET_BOUNDS:  # no default bounds: refused by name alone
            with pytest.raises(TypeError, match="low=0.0, high=1.0"):
                jaxlrp.lrp(fn, name)

    def maps(params, x):  # every preset's two maps in one compiled program (one compile, not 28)
        return {name: (jaxlrp.lrp(fn, composites.get(name, **ref.preset_kwargs(name)))(params, x),
                       jaxlrp.lrp(fn, composites.get(name, **ref.preset_kwargs(name))
                                  if name in ref.PRESET_BOUNDS else name)(params, x))
                for name in composites.names()}

    for name, (a, b) in jax.jit(maps)(params, x).items():
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert np.all(np.isfinite(a)), name
    with pytest.raises(ValueError, match="unknown composite"):
        composites.get("nope")


def test_epsilon_gamma_box_matches_manual_composite():
    layers, fn, params, x = _net("cnn", seed=6)
    preset = composites.EpsilonGammaBox(-2.0, 2.0, epsilon=0.01, gamma=0.5)
    manual = composites.Composite([
        ("layer0", rules.ZBox(-2.0, 2.0)), ("layer3", rules.Gamma(0.5)), ("dense", rules.Epsilon(0.01)),
    ])
    np.testing.assert_array_equal(jaxlrp.lrp(fn, preset)(params, x), jaxlrp.lrp(fn, manual)(params, x))


def test_sign_inference_marks_relu_inputs_and_changes_nothing():
    """Inputs known to be >= 0 (after ReLU and max pooling) let z+, gamma and
    alpha-beta skip the negative-input terms; the relevance is the same."""
    layers, fn, params, x = _net("cnn", seed=7)
    from jaxlrp._core.trace import trace as _trace

    t = _trace(fn, composites.Composite(), None, (params, x))
    flags = {l.key: l.nonnegative for l in t.layers if l.kind in ("conv", "dense")}
    assert flags == {"layer0": False, "layer3": True, "layer7": True, "layer9": True}
    for rule in (rules.ZPlus(), rules.Gamma(0.5), rules.AlphaBeta(2.0, 1.0)):
        fast = jaxlrp.lrp(fn, rule=rule)(params, x)
        # the same rule with the flag hidden: every term computed
        slow = jaxlrp.lrp(fn, rule=_Unflagged(rule))(params, x)
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-15)


@dataclasses.dataclass(frozen=True)
class _Unflagged(rules.Rule):
    rule: rules.Rule
    kinds = rules.WEIGHTED_KINDS

    def __call__(self, node, relevance):
        return self.rule(node._replace(nonnegative=False), relevance)
