"""Every rule on single dense and conv layers against the float64 numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxlrp
from jaxlrp import rules

import reference as ref

RULES = [
    ("epsilon", {"epsilon": 1e-6}, lambda: rules.Epsilon(1e-6)),
    ("epsilon", {"epsilon": 0.3}, lambda: rules.Epsilon(0.3)),
    ("epsilon", {"epsilon": 0.3, "ignore_bias": True}, lambda: rules.Epsilon(0.3, ignore_bias=True)),
    ("zero", {}, lambda: rules.Zero()),
    ("zplus", {}, lambda: rules.ZPlus()),
    ("zplus", {"ignore_bias": True}, lambda: rules.ZPlus(ignore_bias=True)),
    ("alphabeta", {"alpha": 2.0, "beta": 1.0}, lambda: rules.AlphaBeta(2.0, 1.0)),
    ("alphabeta", {"alpha": 1.0, "beta": 0.0}, lambda: rules.AlphaBeta(1.0, 0.0)),
    ("alphabeta", {"alpha": 1.5, "beta": 0.5, "ignore_bias": True}, lambda: rules.AlphaBeta(1.5, 0.5, ignore_bias=True)),
    ("gamma", {"gamma": 0.25}, lambda: rules.Gamma(0.25)),
    ("gamma", {"gamma": 1.0, "stabilizer": 1e-3}, lambda: rules.Gamma(1.0, 1e-3)),
    ("gamma", {"gamma": 0.5, "ignore_bias": True}, lambda: rules.Gamma(0.5, ignore_bias=True)),
    ("zbox", {"low": -1.5, "high": 2.0}, lambda: rules.ZBox(-1.5, 2.0)),
    ("flat", {}, lambda: rules.Flat()),
    ("wsquare", {}, lambda: rules.WSquare()),
    ("wsquare", {"ignore_bias": True}, lambda: rules.WSquare(ignore_bias=True)),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(RULES)]


def _check(rel, expected):
    rel, expected = np.asarray(rel), np.asarray(expected)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(rel, expected, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize("name,params,make", RULES, ids=IDS)
@pytest.mark.parametrize("positive", [False, True], ids=["mixed-sign", "positive"])
def test_dense_rule_matches_reference(name, params, make, positive):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(7, 5)), rng.normal(size=5)
    x = rng.normal(size=(3, 7))
    if positive:
        x = np.abs(x)
    r_out = rng.normal(size=(3, 5))

    def fn(p, x):
        return x @ p["w"] + p["b"]

    rel = jaxlrp.lrp(fn, rule=make())({"w": w, "b": b}, x, output_relevance=r_out)
    for n in range(3):
        expected = ref.lrp_linear(name, x[n], w, b, r_out[n], ref.dense_matrix, **params)
        _check(rel[n], expected)


CONVS = {
    "plain": dict(strides=(1, 1), padding=((0, 0), (0, 0)), rhs_dilation=(1, 1), groups=1),
    "strided-padded": dict(strides=(2, 2), padding=((1, 2), (1, 1)), rhs_dilation=(1, 1), groups=1),
    "dilated": dict(strides=(1, 1), padding=((1, 1), (1, 1)), rhs_dilation=(2, 2), groups=1),
    "grouped": dict(strides=(1, 2), padding=((1, 1), (0, 1)), rhs_dilation=(1, 1), groups=2),
}


@pytest.mark.parametrize("name,params,make", RULES, ids=IDS)
@pytest.mark.parametrize("conv", list(CONVS), ids=list(CONVS))
def test_conv_rule_matches_reference(name, params, make, conv):
    cfg = CONVS[conv]
    rng = np.random.default_rng(1)
    c_in, c_out, g = 4, 6, cfg["groups"]
    kernel = rng.normal(size=(3, 3, c_in // g, c_out))
    b = rng.normal(size=c_out) * 0.5
    x = rng.normal(size=(2, 7, 6, c_in))

    def fn(p, x):
        z = lax.conv_general_dilated(
            x, p["k"], cfg["strides"], cfg["padding"], rhs_dilation=cfg["rhs_dilation"],
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g,
        )
        return z + p["b"]

    out_shape = jax.eval_shape(fn, {"k": kernel, "b": b}, x).shape
    r_out = rng.normal(size=out_shape)
    rel = jaxlrp.lrp(fn, rule=make())({"k": kernel, "b": b}, x, output_relevance=r_out)

    def to_matrix(k):
        return ref.conv_matrix(k, x.shape[1:], **cfg)[0]

    bias = np.tile(b, int(np.prod(out_shape[1:3])))
    for n in range(2):
        expected = ref.lrp_linear(name, x[n].ravel(), kernel, bias, r_out[n].ravel(), to_matrix, **params)
        _check(rel[n].ravel(), expected)


def test_zbox_with_per_channel_bounds():
    rng = np.random.default_rng(2)
    kernel, x = rng.normal(size=(3, 3, 3, 4)), rng.uniform(-1, 1, size=(1, 5, 5, 3))
    low, high = np.array([-1.0, -2.0, -0.5]), np.array([1.0, 0.5, 2.0])

    def fn(k, x):
        return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    r_out = rng.normal(size=(1, 5, 5, 4))
    rel = jaxlrp.lrp(fn, rule=rules.ZBox(low, high))(kernel, x, output_relevance=r_out)
    to_matrix = lambda k: ref.conv_matrix(k, (5, 5, 3), padding=((1, 1), (1, 1)))[0]
    expected = ref.lrp_linear(
        "zbox", x[0].ravel(), kernel, None, r_out[0].ravel(), to_matrix,
        low=np.tile(low, 25), high=np.tile(high, 25),
    )
    _check(rel[0].ravel(), expected)


def test_transposed_dense_layout():
    """A weight on the left of dot_general (``W @ x``) is handled by the same rules."""
    rng = np.random.default_rng(3)
    w, x, r_out = rng.normal(size=(5, 7)), np.abs(rng.normal(size=(7,))), rng.normal(size=(5,))
    for name, params, make in RULES[:8]:
        rel = jaxlrp.lrp(lambda w, x: w @ x, rule=make())(w, x, output_relevance=r_out)
        _check(rel, ref.lrp_linear(name, x, w.T, None, r_out, ref.dense_matrix, **params))


@pytest.mark.parametrize(
    "make",
    [
        lambda: rules.Epsilon(-1.0),
        lambda: rules.Gamma(-0.1),
        lambda: rules.AlphaBeta(2.0, 0.5),
        lambda: rules.AlphaBeta(-1.0, -2.0),
        lambda: rules.ZPlus(stabilizer=-1e-6),
        lambda: rules.Flat(stabilizer=float("nan")),
        lambda: rules.ZBox(1.0, -1.0),
    ],
)
def test_bad_rule_parameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_rules_are_immutable_and_hashable():
    r = rules.Gamma(0.5)
    with pytest.raises(Exception):
        r.gamma = 1.0
    assert hash(r) == hash(rules.Gamma(0.5))
    assert rules.Zero() == rules.Epsilon(0.0)


def test_zero_denominator_gives_zero_not_nan():
    # LRP-0 with an output that is exactly zero: no NaN, no inf.
    w, x = jnp.array([[1.0], [-1.0]]), jnp.array([[2.0, 2.0]])
    rel = jaxlrp.lrp(lambda w, x: x @ w, rule=rules.Zero())(w, x, output_relevance=jnp.ones((1, 1)))
    assert np.all(np.isfinite(rel)) and np.all(rel == 0)
