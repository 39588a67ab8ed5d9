"""Recurrent networks on the relevance path: gates, scan, conservation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxlrp
from jaxlrp import composites, rules


def _lstm_params(rng, d_in=3, d=5, d_out=2):
    g = lambda *s: rng.normal(size=s) / np.sqrt(s[0])
    return {"wx": g(d_in, 4 * d), "wh": g(d, 4 * d), "out": g(d, d_out)}


def lstm(p, xs, unroll=False):
    """A zero-bias LSTM over xs (T, N, d_in) with a linear readout of the last h."""
    d = p["wh"].shape[0]

    def cell(carry, x):
        h, c = carry
        z = x @ p["wx"] + h @ p["wh"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    carry = (jnp.zeros((xs.shape[1], d)), jnp.zeros((xs.shape[1], d)))
    if unroll:
        for t in range(xs.shape[0]):
            carry, _ = cell(carry, xs[t])
    else:
        carry, _ = jax.lax.scan(cell, carry, xs)
    return carry[0] @ p["out"]


EXACT = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0))])


def test_lstm_signal_takes_all_conserves_and_scan_equals_unrolled():
    rng = np.random.default_rng(0)
    p, xs = _lstm_params(rng), rng.normal(size=(4, 3, 3))
    a = jaxlrp.lrp(lstm, EXACT)(p, xs, target=1)
    b = jaxlrp.lrp(lambda p, xs: lstm(p, xs, unroll=True), EXACT)(p, xs, target=1)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)
    # gates take none: all of the logit arrives at the inputs (zero biases, LRP-0)
    np.testing.assert_allclose(a.sum(axis=(0, 2)), lstm(p, xs)[:, 1], rtol=1e-8)


def test_gates_get_no_relevance():
    """The gate pre-activations are slices of one dense output: with
    signal-takes-all, relevance reaches only the g slice, never i, f or o."""
    rng = np.random.default_rng(1)
    p, xs = _lstm_params(rng), rng.normal(size=(2, 2, 3))
    rep = jaxlrp.inspect(lambda p, xs: lstm(p, xs, unroll=True), EXACT, verbose=False)(p, xs)
    # step 1: i*g and o*tanh(c) (c0 is a constant); step 2: f*c, i*g, o*tanh(c)
    assert sum(r.kind == "gate" for r in rep.rows) == 5
    d = p["wh"].shape[0]
    R_out = _dense_output_relevance(p, xs)
    for block in (0, 1, 3):  # i, f, o
        np.testing.assert_allclose(R_out[:, block * d:(block + 1) * d], 0.0, atol=1e-12)
    assert np.abs(R_out[:, 2 * d:3 * d]).sum() > 1e-6  # g


def _dense_output_relevance(p, xs):
    """Relevance arriving at the gate pre-activations z of a one-step cell, z
    explained as the input. (A zero tap added to z would take no share: z would
    be a constant summand absorbing it all.)"""
    def cell(z):
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h @ p["out"]

    return jaxlrp.lrp(cell, EXACT)(xs[0] @ p["wx"], target=0)


def test_half_split_can_be_chosen():
    rng = np.random.default_rng(2)
    p, xs = _lstm_params(rng), rng.normal(size=(3, 2, 3))
    half = composites.Composite([("gate", rules.Uniform(0.0)), ("linear", rules.Zero()), ("sum", rules.Norm(0.0))])
    a = jaxlrp.lrp(lstm, half)(p, xs, target=0)
    b = jaxlrp.lrp(lstm, EXACT)(p, xs, target=0)
    assert not np.allclose(a, b)
    # half of each gated product's relevance goes to the gate; still finite
    assert np.all(np.isfinite(a))


def test_flax_lstm_cell_in_rnn():
    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x):  # x: (N, T, d)
            h = nn.RNN(nn.OptimizedLSTMCell(8))(x)
            return nn.Dense(3, name="head")(h[:, -1])

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)  # flax's initial carry is float32
    v = Classifier().init(jax.random.PRNGKey(0), x)
    rel = jax.jit(jaxlrp.lrp(Classifier().apply))(v, x)
    assert rel.shape == x.shape and np.all(np.isfinite(rel))
    rep = jaxlrp.inspect(Classifier().apply, verbose=False)(v, x)
    assert any(r.kind == "gate" for r in rep.rows)


def test_nnx_rnn_with_lstm_cell():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.LSTMCell(4, 8, rngs=rngs))
            self.head = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.rnn(x)[:, -1])

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    fn = lambda s, x: nnx.merge(graphdef, s)(x)
    x = np.random.default_rng(4).normal(size=(2, 5, 4)).astype(np.float32)
    rel = jax.jit(jaxlrp.lrp(fn))(state, x)
    assert rel.shape == x.shape and np.all(np.isfinite(rel)) and np.abs(rel).max() > 0
    rep = jaxlrp.inspect(fn, verbose=False)(state, x)
    assert {"dense", "gate", "sum"} <= {r.kind for r in rep.rows}
