"""The recurrent image classifiers of jaxlrp.models.recurrent: ESN, LSTM, GRU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules
from jaxlrp.models import recurrent

EXACT = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0))])
SHAPE = (3, 6, 5, 2)  # N, H, W, C


def _images(seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=SHAPE).astype(dtype)


def _zero_biases(tree):
    """Every leaf named ``bias`` (or the reservoir ``b``) set to zero."""
    def zero(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        return jnp.zeros_like(leaf) if name in ("bias", "b") else leaf

    return jax.tree_util.tree_map_with_path(zero, tree)


def _to64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _esn(**kw):
    kw = {"reservoir_size": 12, "num_outputs": 3, "leak_rate": 0.3, "bias_scale": 0.1, **kw}
    return recurrent.EchoStateNetwork(**kw)


def _random_readout(variables, seed=0):
    rng = np.random.default_rng(seed)
    v = jax.tree_util.tree_map(lambda a: a, variables)
    ro = v["params"]["readout"]
    ro["kernel"] = jnp.asarray(rng.normal(size=ro["kernel"].shape), ro["kernel"].dtype)
    ro["bias"] = jnp.asarray(rng.normal(size=ro["bias"].shape), ro["bias"].dtype)
    return v


def test_image_to_sequence():
    x = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    cols = recurrent.image_to_sequence(x, "columns")
    assert cols.shape == (3, 5, 12)
    np.testing.assert_array_equal(cols[1, 2], x[1, :, 2, :].reshape(-1))
    rows = recurrent.image_to_sequence(x, "rows", reverse=True)
    assert rows.shape == (3, 6, 10)
    np.testing.assert_array_equal(rows[1, 0], x[1, -1].reshape(-1))
    with pytest.raises(ValueError):
        recurrent.image_to_sequence(x, "diagonal")


MODELS = {
    "esn": lambda feed, reverse: _esn(feed=feed, reverse=reverse),
    "lstm": lambda feed, reverse: recurrent.LSTMClassifier(6, 3, feed=feed, reverse=reverse),
    "gru": lambda feed, reverse: recurrent.GRUClassifier(6, 3, feed=feed, reverse=reverse),
}


@pytest.mark.parametrize("name,feed,reverse", [("esn", "columns", False), ("esn", "rows", True),
                                               ("lstm", "columns", True), ("gru", "rows", False)])
def test_explained_under_jit_and_vmap(name, feed, reverse):
    model = MODELS[name](feed, reverse)
    x = _images()
    v = model.init(jax.random.PRNGKey(0), x[:1])
    if name == "esn":
        v = _random_readout(v)
    explain = jaxlrp.lrp(model.apply)
    rel = jax.jit(explain)(v, x, target=1)
    assert rel.shape == x.shape and rel.dtype == x.dtype
    assert np.all(np.isfinite(rel)) and np.abs(rel).sum() > 0
    per = jax.jit(jax.vmap(lambda xi: explain(v, xi[None], target=1)[0]))(x)
    np.testing.assert_allclose(per, rel, rtol=1e-4, atol=1e-6)


def test_esn_scan_equals_unrolled():
    x = _images(1, np.float64)
    scanned, unrolled = _esn(dtype=jnp.float64), _esn(dtype=jnp.float64, unroll=True)
    v = _random_readout(scanned.init(jax.random.PRNGKey(1), x[:1]))
    np.testing.assert_allclose(scanned.apply(v, x), unrolled.apply(v, x), rtol=1e-12)
    # LRP-0: with a stabiliser the first step differs by O(epsilon), since there
    # the scan's carry is an input-dependent term of a sum and the loop's is a constant
    a = jaxlrp.lrp(scanned.apply, EXACT)(v, x, target=2)
    b = jaxlrp.lrp(unrolled.apply, EXACT)(v, x, target=2)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("feed,reverse", [("columns", False), ("rows", True)])
def test_esn_conserves_without_biases(feed, reverse):
    x = _images(2, np.float64)
    model = _esn(dtype=jnp.float64, feed=feed, reverse=reverse, bias_scale=0.0)
    v = _zero_biases(_random_readout(model.init(jax.random.PRNGKey(2), x[:1])))
    rel = jaxlrp.lrp(model.apply, EXACT)(v, x, target=0)
    np.testing.assert_allclose(rel.sum(axis=(1, 2, 3)), model.apply(v, x)[:, 0], rtol=1e-8)


@pytest.mark.parametrize("cls", [recurrent.LSTMClassifier, recurrent.GRUClassifier])
def test_gated_conserve_without_biases(cls):
    """Zero biases, LRP-0 and Norm(0): the gates take nothing and the logit arrives
    at the input in full."""
    x = _images(3, np.float64)
    model = cls(5, 2)
    v = _to64(_zero_biases(model.init(jax.random.PRNGKey(3), x[:1].astype(np.float32))))
    rel = jaxlrp.lrp(model.apply, EXACT)(v, x, target=1)
    np.testing.assert_allclose(rel.sum(axis=(1, 2, 3)), model.apply(v, x)[:, 1], rtol=1e-8)


def test_lstm_scan_equals_unrolled():
    x = _images(6, np.float64)
    model = recurrent.LSTMClassifier(4, 2, feed="rows")
    v = _to64(model.init(jax.random.PRNGKey(6), x[:1].astype(np.float32)))
    unrolled = recurrent.LSTMClassifier(4, 2, feed="rows", unroll=True)
    np.testing.assert_allclose(model.apply(v, x), unrolled.apply(v, x), rtol=1e-12)
    a = jaxlrp.lrp(model.apply, EXACT)(v, x, target=0)
    b = jaxlrp.lrp(unrolled.apply, EXACT)(v, x, target=0)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)


def test_gru_gates_get_no_relevance():
    """With the candidate's input weights (``in``) zero, the input reaches the
    logit only through the reset and update gates: signal-takes-all gives it no
    relevance at all, the half split does."""
    x = _images(4, np.float64)
    model = recurrent.GRUClassifier(5, 2)
    v = _to64(model.init(jax.random.PRNGKey(4), x[:1].astype(np.float32)))
    cell = v["params"]["cell"]
    rng = np.random.default_rng(4)
    for k in ("in", "hn", "ir", "iz"):  # flax initialises them to zero: the state would stay 0
        cell[k]["bias"] = jnp.asarray(rng.normal(size=cell[k]["bias"].shape))
    cell["in"]["kernel"] = jnp.zeros_like(cell["in"]["kernel"])
    sta = jaxlrp.lrp(model.apply)(v, x, target=0)
    np.testing.assert_array_equal(sta, 0.0)
    half = composites.Composite([("gate", rules.Uniform()), ("linear", rules.Epsilon())])
    assert np.abs(jaxlrp.lrp(model.apply, half)(v, x, target=0)).sum() > 1e-6


def test_fit_readout_recovers_linear_readout():
    model = _esn(dtype=jnp.float64, num_outputs=2, reservoir_size=10)
    x = np.random.default_rng(5).normal(size=(40, 6, 5, 2))
    v = model.init(jax.random.PRNGKey(5), x[:1])
    states = recurrent.reservoir_states(model, v, x, batch_size=16)
    assert states.shape == (40, 10)
    rng = np.random.default_rng(6)
    w_true, b_true = rng.normal(size=(10, 2)), rng.normal(size=2)
    fitted = recurrent.fit_readout(model, v, x, states @ w_true + b_true, ridge=0.0)
    np.testing.assert_allclose(fitted["params"]["readout"]["kernel"], w_true, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fitted["params"]["readout"]["bias"], b_true, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(model.apply(fitted, x), states @ w_true + b_true, rtol=1e-6, atol=1e-8)
    assert np.all(v["params"]["readout"]["kernel"] == 0)  # the input variables are left alone
    # integer labels: one-hot targets in {-1, +1}; a tiny ridge keeps it near least squares
    y = (states[:, 0] > np.median(states[:, 0])).astype(np.int32)
    labels = recurrent.fit_readout(model, v, x, y, ridge=1e-8)
    assert np.mean(np.argmax(model.apply(labels, x), -1) == y) >= 0.9


def test_reservoir_is_scaled_and_sparse():
    model = recurrent.EchoStateNetwork(reservoir_size=50, spectral_radius=0.9, sparsity=0.4)
    v = model.init(jax.random.PRNGKey(7), np.zeros((1, 4, 4, 1), np.float32))
    w = np.asarray(v["reservoir"]["w"], np.float64)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(w)).max(), 0.9, rtol=1e-4)
    assert 0.3 < np.mean(w == 0) < 0.5
    assert np.all(v["reservoir"]["b"] == 0) and np.abs(v["reservoir"]["w_in"]).max() <= 0.1
    with pytest.raises(ValueError):
        recurrent.EchoStateNetwork(leak_rate=0.0).init(jax.random.PRNGKey(0), np.zeros((1, 4, 4, 1)))
