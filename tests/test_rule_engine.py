"""The public rule engine: rules written outside the package equal the built-ins.

The two rules of docs/writing_a_rule.md, written with ``rules.propagate`` and no VJP
code, against ``EpsilonStd`` and ``AlphaBeta`` on a small dense + conv network in
float64 (1e-12), eagerly, under ``jax.jit`` and under ``jax.vmap``; and the engine's
refusals.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxlrp
from jaxlrp import composites, rules


@dataclasses.dataclass(frozen=True)
class StdEpsilon(rules.Rule):
    factor: float = 0.25
    kinds = rules.WEIGHTED_KINDS

    def __call__(self, node, relevance):
        z = node.output
        axes = tuple(range(node.example_ndim, z.ndim))
        eps = self.factor * jnp.sqrt(jnp.mean(jnp.square(z), axis=axes, keepdims=True)) + 1e-9
        term = rules.Term([rules.Branch(node.inputs, rules.LAYER_WEIGHT)], bias=node.bias, denominator=z)
        return rules.propagate(node, relevance, [term], eps)


@dataclasses.dataclass(frozen=True)
class WeightSignAlphaBeta(rules.Rule):
    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    kinds = rules.WEIGHTED_KINDS

    def __call__(self, node, relevance):
        w_neg = rules.negative(rules.depend(node.weight, relevance))
        pos = rules.Term([rules.Branch(node.inputs, rules.POSITIVE_WEIGHT)],
                         bias=rules.layer_bias(node, transform=rules.positive), scale=self.alpha)
        neg = rules.Term([rules.Branch(node.inputs, w_neg)],
                         bias=rules.layer_bias(node, transform=rules.negative), scale=-self.beta)
        return rules.propagate(node, relevance, [pos, neg], self.stabilizer)


def _net(p, x):
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.nn.relu(lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME", dimension_numbers=dn) + p["c1"])
    h = jax.nn.relu(lax.conv_general_dilated(h, p["k2"], (2, 2), ((1, 0), (0, 1)), dimension_numbers=dn) + p["c2"])
    h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    p = {"k1": rng.normal(size=(3, 3, 2, 4)), "c1": 0.1 * rng.normal(size=4),
         "k2": rng.normal(size=(2, 2, 4, 3)), "c2": 0.1 * rng.normal(size=3),
         "w1": rng.normal(size=(12, 6)), "b1": 0.1 * rng.normal(size=6),
         "w2": rng.normal(size=(6, 3)), "b2": 0.1 * rng.normal(size=3)}
    x = rng.normal(size=(4, 4, 4, 2))
    return jax.tree.map(jnp.asarray, p), jnp.asarray(x)


FIRST = [("first", rules.Epsilon(0.01))]  # signed pixels: there the alpha-beta variants differ
PAIRS = {
    "epsilon-std": (composites.Composite([("linear", StdEpsilon(0.25))]),
                    composites.Composite([("linear", rules.EpsilonStd(0.25))])),
    "alpha-beta": (composites.Composite(FIRST + [("linear", WeightSignAlphaBeta(2.0, 1.0))]),
                   composites.Composite(FIRST + [("linear", rules.AlphaBeta(2.0, 1.0))])),
}


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


@pytest.mark.parametrize("name", list(PAIRS))
def test_user_rule_equals_builtin(problem, name):
    p, x = problem
    mine, builtin = (jaxlrp.lrp(_net, c) for c in PAIRS[name])
    _close(mine(p, x, target=0), builtin(p, x, target=0))
    _close(jax.jit(mine)(p, x, target=0), jax.jit(builtin)(p, x, target=0))
    per_example = [jax.vmap(lambda xi, f=f: f(p, xi[None], target=0)[0]) for f in (mine, builtin)]
    _close(per_example[0](x), per_example[1](x))


def test_alpha_beta_variant_differs_on_signed_inputs(problem):
    """On the signed first layer the weight-sign split is not the built-in rule."""
    p, x = problem
    both = [("linear", WeightSignAlphaBeta()), ("linear", rules.AlphaBeta())]
    a, b = (jaxlrp.lrp(_net, composites.Composite([r]))(p, x, target=0) for r in both)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def _dense_node(x, w, b):
    return rules.Node("dense", (x,), w, b, x @ w if b is None else x @ w + b, lambda xs, w_: xs[0] @ w_)


def test_engine_shares_forward_output():
    """``LAYER_WEIGHT`` at the layer's own input is z - b: equal to recomputing x W."""
    rng = np.random.default_rng(1)
    x, w, b, r = (jnp.asarray(rng.normal(size=s)) for s in ((3, 5), (5, 4), (4,), (3, 4)))
    node = _dense_node(x, w, b)
    shared = rules.propagate(node, r, [rules.Term([rules.Branch((x,), rules.LAYER_WEIGHT)])], 0.1)
    direct = rules.propagate(node, r, [rules.Term([rules.Branch((x,), w)])], 0.1)
    _close(shared[0], direct[0])
    _close(shared[0], rules.Epsilon(0.1, ignore_bias=True)(node, r)[0])


def test_constant_input_is_evaluated_once_and_broadcast():
    rng = np.random.default_rng(2)
    x, w, b, r = (jnp.asarray(rng.normal(size=s)) for s in ((3, 5), (5, 4), (4,), (3, 4)))
    node = rules.Node("dense", (x,), w, b, x @ w + b, lambda xs, w_: xs[0] @ w_, example_ndim=1)
    low = rules.constant_input(-2.0, node)
    assert low.shape == (1, 5)
    term = rules.Term([rules.Branch((x,), rules.LAYER_WEIGHT), rules.Branch((low,), rules.POSITIVE_WEIGHT, -1.0)])
    full = rules.Term([rules.Branch((x,), w), rules.Branch((jnp.full_like(x, -2.0),), jnp.maximum(w, 0), -1.0)])
    (a,), (c,) = rules.propagate(node, r, [term], 1e-6), rules.propagate(node, r, [full], 1e-6)
    assert a.shape == x.shape
    _close(a, c)


def test_engine_refusals():
    x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    node = _dense_node(x, w, None)
    with pytest.raises(ValueError, match="at least one Branch"):
        rules.Term([])
    with pytest.raises(TypeError, match="Branch objects"):
        rules.Term([(x,)])
    with pytest.raises(ValueError, match="at least one Term"):
        rules.propagate(node, jnp.ones((2, 4)), [], 0.0)
    with pytest.raises(ValueError, match="2 inputs"):
        rules.propagate(node, jnp.ones((2, 4)), [rules.Term([rules.Branch((x, x), w)])], 0.0)
    pool = rules.Node("sum", (x,), None, None, x, lambda xs, _: xs[0])
    with pytest.raises(ValueError, match="no weight"):
        rules.propagate(pool, x, [rules.Term([rules.Branch((x,), rules.POSITIVE_WEIGHT)])], 0.0)


def test_engine_refuses_a_node_without_product():
    """An activation node has no ``apply``: a typed refusal, not ``'NoneType' object is not callable``."""
    x = jnp.ones((2, 3))
    act = rules.Node("activation", (x,), None, None, x, None)
    with pytest.raises(ValueError, match="activation node has none"):
        rules.propagate(act, x, [rules.Term([rules.Branch((x,))])], 0.0)


@pytest.mark.parametrize("rule,kind", [
    (rules.Flat(), "dense"),
    (rules.SignalTakesAll(), "attention"),
    (rules.WinnerTakesAll(), "maxpool"),
    (rules.MaxPoolProportional(), "maxpool"),
], ids=lambda v: type(v).__name__ if isinstance(v, rules.Rule) else None)
def test_rules_refuse_a_node_without_what_they_need(rule, kind):
    """A hand-made node without a weight (Flat) or a function (the others): named, not a TypeError."""
    x = jnp.ones((2, 3))
    inputs = (x, x[:, :1]) if kind == "attention" else (x,)
    node = rules.Node(kind, inputs, None, None, x[:, :2], None)
    with pytest.raises(ValueError, match=f"{type(rule).__name__} needs"):
        rule(node, jnp.ones((2, 2)))


def test_zero_combo_equals_a_zero_weight():
    """``Combo(0, 0)`` is the weight 0: no products, the denominator is the bias alone
    (it used to add ``None`` to the bias), the same relevance as an explicit zero weight."""
    rng = np.random.default_rng(3)
    x, w, b, r = (jnp.asarray(rng.normal(size=s)) for s in ((3, 5), (5, 4), (4,), (3, 4)))
    node = _dense_node(x, w, b)._replace(parameters=True)
    for bias in (b, None):
        zero = rules.propagate(node, r, [rules.Term([rules.Branch((x,), rules.Combo(0.0, 0.0))], bias=bias)], 0.1)
        explicit = rules.propagate(node, r, [rules.Term([rules.Branch((x,), jnp.zeros_like(w))], bias=bias)], 0.1)
        assert len(zero) == len(explicit) == 3
        for a, c in zip(zero, explicit):
            _close(a, c)


def test_public_names():
    for name in ("propagate", "Term", "Branch", "Combo", "LAYER_WEIGHT", "POSITIVE_WEIGHT", "depend",
                 "sign_parts", "signed_branches", "layer_bias", "constant_input", "positive", "negative",
                 "stabilize", "divide"):
        assert name in rules.__all__ and hasattr(rules, name)
    assert rules.LAYER_WEIGHT == rules.Combo(1.0, 0.0) and rules.POSITIVE_WEIGHT == rules.Combo(0.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.Branch((jnp.ones(2),)).coef = 2.0


def test_after_is_a_deprecated_alias_of_depend():
    w, r = jnp.arange(3.0), jnp.ones(2)
    with pytest.warns(DeprecationWarning, match="rules.depend"):
        out = rules.after(w, r)
    assert "after" not in rules.__all__
    assert jnp.array_equal(out, rules.depend(w, r))


# Each rule's product count on a dense layer (bench/floor.py derives them): forward
# products of the layer, the forward pass included; jax.grad needs 2.
B = 32
COSTS = [
    (True, rules.Epsilon(), 2), (True, rules.Epsilon(ignore_bias=True), 2), (True, rules.ZPlus(), 3),
    (True, rules.Gamma(0.25), 4), (True, rules.AlphaBeta(2.0, 1.0), 5), (True, rules.WSquare(), 2 + 1 / B),
    (True, rules.Flat(), 2 + 1 / B), (False, rules.ZBox(-3.0, 3.0), 3 + 2 / B), (False, rules.ZPlus(), 5),
    (False, rules.Gamma(0.25), 6), (False, rules.AlphaBeta(2.0, 1.0), 9),
]


def _flops(f, *args) -> float:
    ca = jax.jit(f).lower(*args).compile().cost_analysis()
    return float((ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"])


@pytest.mark.parametrize("nonneg,rule,units", COSTS, ids=[f"{r!r}-{'x>=0' if n else 'signed'}" for n, r, _ in COSTS])
def test_rules_cost_their_product_count(nonneg, rule, units):
    """XLA's FLOP count of the explanation is the rule's product count (regression guard:
    a lost product share or a recomputed forward shows here)."""
    rng = np.random.default_rng(3)
    p = {"w": jnp.asarray(rng.normal(size=(512, 512))), "b": jnp.asarray(rng.normal(size=512)),
         "w2": jnp.asarray(rng.normal(size=(512, 2)))}
    x = jnp.asarray(rng.normal(size=(B, 512)))

    def fn(p, x):
        x = jax.nn.relu(x) if nonneg else x
        return jnp.tanh(x @ p["w"] + p["b"]) @ p["w2"]

    explain = jaxlrp.lrp(fn, composites.Composite([("first", rule), ("dense", rules.Epsilon())]))
    grad = _flops(lambda p, x: jax.grad(lambda x: fn(p, x)[:, 0].sum())(x), p, x)
    lrp = _flops(lambda p, x: explain(p, x, target=0), p, x)
    assert lrp / grad == pytest.approx(units / 2, abs=0.1)  # elementwise and weight-sized work: < 0.1; a product: 0.5
