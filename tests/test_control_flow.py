"""scan, cond and call primitives on the relevance path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

COMPS = {
    "epsilon": None,
    "alpha2beta1": composites.Composite([("dense", rules.AlphaBeta(2.0, 1.0))]),
    "gamma": composites.Composite([("dense", rules.Gamma(0.5))]),
}


def _stack(rng, n=3, d=6):
    return {"w": rng.normal(size=(n, d, d)) / np.sqrt(d), "b": rng.normal(size=(n, d)) * 0.1}


def scanned(p, x):
    def step(h, wb):
        w, b = wb
        return jax.nn.relu(h @ w + b), None

    h, _ = jax.lax.scan(step, x, (p["w"], p["b"]))
    return h


def unrolled(p, x):
    for i in range(p["w"].shape[0]):
        x = jax.nn.relu(x @ p["w"][i] + p["b"][i])
    return x


@pytest.mark.parametrize("comp", list(COMPS))
def test_scan_over_layers_equals_unrolled(comp):
    rng = np.random.default_rng(0)
    p, x = _stack(rng), rng.normal(size=(4, 6))
    a = jaxlrp.lrp(scanned, COMPS[comp])(p, x, target=2)
    b = jaxlrp.lrp(unrolled, COMPS[comp])(p, x, target=2)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert np.abs(a).max() > 0
    c = jax.jit(jaxlrp.lrp(scanned, COMPS[comp]))(p, x, target=2)
    np.testing.assert_allclose(c, a, rtol=1e-10, atol=1e-14)


def test_scanned_layer_is_not_first_or_last():
    """One rule per body layer: it is first only in the first iteration, so not "first"."""
    rng = np.random.default_rng(0)
    p, x = _stack(rng), rng.normal(size=(4, 6))
    rep = jaxlrp.inspect(scanned, composites.EpsilonGammaBox(-3.0, 3.0), verbose=False)(p, x, target=2)
    (row,) = rep.rows
    assert row.rule.startswith("Epsilon"), row.rule
    a = jaxlrp.lrp(scanned, composites.EpsilonGammaBox(-3.0, 3.0))(p, x, target=2)
    np.testing.assert_array_equal(a, jaxlrp.lrp(scanned)(p, x, target=2))


def rnn_scan(p, xs):
    """A tanh RNN over time (xs: (T, N, d_in)); the carry starts untainted."""

    def step(h, x):
        h = jnp.tanh(x @ p["u"] + h @ p["w"])
        return h, None

    h0 = jnp.zeros((xs.shape[1], p["w"].shape[0]))
    h, _ = jax.lax.scan(step, h0, xs)
    return h @ p["out"]


def rnn_loop(p, xs):
    h = jnp.zeros((xs.shape[1], p["w"].shape[0]))
    for t in range(xs.shape[0]):
        h = jnp.tanh(xs[t] @ p["u"] + h @ p["w"])
    return h @ p["out"]


def test_recurrent_scan_equals_unrolled_and_conserves():
    rng = np.random.default_rng(1)
    p = {"u": rng.normal(size=(3, 5)), "w": rng.normal(size=(5, 5)) * 0.5, "out": rng.normal(size=(5, 2))}
    xs = rng.normal(size=(4, 2, 3))
    comp = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0))])
    a = jaxlrp.lrp(rnn_scan, comp)(p, xs, target=1)
    b = jaxlrp.lrp(rnn_loop, comp)(p, xs, target=1)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)
    # zero biases, LRP-0, proportional sums: all of the logit reaches the inputs
    np.testing.assert_allclose(a.sum(axis=(0, 2)), rnn_scan(p, xs)[:, 1], rtol=1e-8)


def test_cond_with_parameter_dependent_predicate():
    rng = np.random.default_rng(2)
    w1, w2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))

    def fn(p, x):
        return jax.lax.cond(p["flag"] > 0, lambda x: x @ p["w1"], lambda x: jnp.tanh(x) @ p["w2"], x)

    x = rng.normal(size=(2, 4))
    for flag, direct in ((1.0, lambda p, x: x @ p["w1"]), (-1.0, lambda p, x: jnp.tanh(x) @ p["w2"])):
        p = {"flag": flag, "w1": w1, "w2": w2}
        a = jaxlrp.lrp(fn, rule=rules.Epsilon(0.01))(p, x, target=0)
        b = jaxlrp.lrp(direct, rule=rules.Epsilon(0.01))(p, x, target=0)
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_checkpoint_and_inner_jit_are_inlined():
    rng = np.random.default_rng(3)
    p, x = _stack(rng), rng.normal(size=(2, 6))
    fn = jax.checkpoint(jax.jit(unrolled))
    np.testing.assert_allclose(jaxlrp.lrp(fn)(p, x), jaxlrp.lrp(unrolled)(p, x), rtol=1e-12)


def test_flax_scan_of_remat_blocks():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return nn.relu(nn.Dense(6, use_bias=False)(h)), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            Stack = nn.scan(nn.remat(Block), variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            h, _ = Stack(name="layers")(x, None)
            return nn.Dense(3, use_bias=False, name="head")(h)

    x = np.random.default_rng(4).normal(size=(2, 6))
    v = Net().init(jax.random.PRNGKey(0), x)
    rel = jaxlrp.lrp(Net().apply, rule=rules.Zero())(v, x, target=0)
    np.testing.assert_allclose(rel.sum(1), Net().apply(v, x)[:, 0], rtol=1e-7)


def _softmax_body(h, w):
    return h + jax.nn.softmax(h @ w) * h, None


def _softmax_scanned(w, x):
    return jax.lax.scan(_softmax_body, x, w)[0]


def _softmax_unrolled(w, x):
    for i in range(w.shape[0]):
        x = _softmax_body(x, w[i])[0]
    return x


@pytest.mark.parametrize("comp", [composites.AttnLRP(), composites.CPLRP()], ids=["attnlrp", "cplrp"])
def test_scan_with_softmax_in_its_body_equals_unrolled(comp):
    """The softmax's replay reads body values: they must reach the backward pass as
    residuals, not as tracers of the forward trace (used to raise ``No constant
    handler for type: DynamicJaxprTracer``)."""
    rng = np.random.default_rng(5)
    w, x = rng.normal(size=(3, 4, 4)), rng.normal(size=(2, 4))
    a = jaxlrp.lrp(_softmax_scanned, comp)(w, x, target=1)
    np.testing.assert_allclose(a, jaxlrp.lrp(_softmax_unrolled, comp)(w, x, target=1), rtol=1e-10, atol=1e-14)
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(jax.jit(jaxlrp.lrp(_softmax_scanned, comp))(w, x, target=1), a, rtol=1e-10)


def test_scan_with_a_constant_factor_in_its_body_equals_unrolled():
    """A product node whose other operand is computed in the body (not a relevance
    path) is re-bound in the backward pass from residuals too."""
    def body(h, w):
        c = jnp.cos(w[0])
        return jnp.tanh(h @ w) * c + h, None

    def scanned_(w, x):
        return jax.lax.scan(body, x, w)[0]

    def unrolled_(w, x):
        for i in range(w.shape[0]):
            x = body(x, w[i])[0]
        return x

    rng = np.random.default_rng(6)
    w, x = rng.normal(size=(3, 4, 4)), rng.normal(size=(2, 4))
    for comp in (None, composites.AttnLRP()):
        a = jaxlrp.lrp(scanned_, comp)(w, x, target=1)
        np.testing.assert_allclose(a, jaxlrp.lrp(unrolled_, comp)(w, x, target=1), rtol=1e-10, atol=1e-14)


def test_gradient_rule_on_every_layer_of_a_scan_body_is_the_gradient():
    """rules.Gradient recomputes activations from their origin inside a scan body
    (its recompute map reads the body's other values as residuals, not closures)."""
    k = jax.random.split(jax.random.key(0), 3)
    w, b = jax.random.normal(k[0], (6, 6)) * 0.5, jax.random.normal(k[1], (6,))

    def f(p, x):
        def body(h, _):
            return jax.nn.gelu(h @ p[0] + p[1]) * 1.3 + jnp.tanh(h), None

        return jax.lax.scan(body, x, None, length=3)[0]

    x = jax.random.normal(k[2], (2, 6))
    R = jaxlrp.lrp(f, composites.Composite([("*", rules.Gradient())]))((w, b), x, output_relevance=jnp.ones((2, 6)))
    g = jax.grad(lambda x: f((w, b), x).sum())(x)
    np.testing.assert_allclose(R, g, rtol=1e-5, atol=1e-6)
