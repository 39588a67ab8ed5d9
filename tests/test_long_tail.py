"""Model code the project did not write: opt-in rules, explaining from a layer,
training mode anywhere, static leaves, targets under jit, ambiguous outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules


def _dense_params(seed=0, sizes=(5, 4, 3)):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes))
    return [jax.random.normal(k, (a, b)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


X = jax.random.normal(jax.random.PRNGKey(9), (2, 5))


def _lrn(z):
    return z / (1.0 + 0.1 * jnp.sum(z**2, -1, keepdims=True)) ** 0.75


def test_unrecognised_division_is_opt_in():
    w1, w2 = _dense_params()
    f = lambda p, x: _lrn(jax.nn.relu(x @ p[0])) @ p[1]
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="rules.Gradient"):
        jaxlrp.lrp(f)((w1, w2), X)
    # the denominator as a constant: conserving, equal to stop_gradient on it
    R = jaxlrp.lrp(f, composites.Composite([("divide", rules.SignalTakesAll())]))((w1, w2), X, target=0)

    def g(p, x):
        z = jax.nn.relu(x @ p[0])
        return (z / jax.lax.stop_gradient((1.0 + 0.1 * jnp.sum(z**2, -1, keepdims=True)) ** 0.75)) @ p[1]

    np.testing.assert_allclose(R, jaxlrp.lrp(g)((w1, w2), X, target=0), rtol=1e-10)
    # the plain gradient at the division
    Rg = jaxlrp.lrp(f, composites.Composite([("divide", rules.Gradient())]))((w1, w2), X, target=0)
    assert np.all(np.isfinite(Rg)) and not np.allclose(Rg, R)


def test_identity_rule_on_same_shape_dense_layers():
    w0 = jax.random.normal(jax.random.PRNGKey(3), (5, 5))
    w1, _ = _dense_params()
    f = lambda p, x: jax.nn.relu(x @ p[0]) @ p[1]
    R = jaxlrp.lrp(f, composites.Composite([("first", rules.Pass())]))((w0, w1), X, target=1)
    # skipping the first layer: the relevance at its output is the relevance of the input
    _, (_, per) = jaxlrp.value_and_lrp(f)((w0, w1), X, target=1, layers="dense")
    np.testing.assert_allclose(R, per[[k for k in per][1]], rtol=1e-10)
    with pytest.raises(ValueError, match="equal input and output shapes"):
        jaxlrp.lrp(f, composites.Composite([("dense", rules.Pass())]))((w0, w1), X)


def test_zero_rule_is_gradient_times_input_on_residual_nets():
    w1, w2 = jax.random.normal(jax.random.PRNGKey(1), (5, 5)), jax.random.normal(jax.random.PRNGKey(2), (5, 3))

    def f(p, x):
        h = jax.nn.relu(x @ p[0])
        return (h + x) @ p[1]  # residual add: a sum node

    R = jaxlrp.lrp(f, rule=rules.Zero())((w1, w2), X, target=0)
    gi = X * jax.grad(lambda x: f((w1, w2), x)[:, 0].sum())(X)
    np.testing.assert_allclose(R, gi, rtol=1e-12, atol=1e-14)


def test_explain_from_an_embedding_output_of_token_ids():
    class Tokens(nn.Module):
        @nn.compact
        def __call__(self, ids):
            e = nn.Embed(10, 4, name="word_embeddings")(ids)
            p = nn.Embed(8, 4, name="position")(jnp.arange(ids.shape[1]))
            return nn.Dense(3)(nn.relu(nn.Dense(6)(e + p)).mean(1))

    ids = jnp.array([[1, 2, 3], [4, 5, 6]])
    model = Tokens()
    v = model.init(jax.random.PRNGKey(0), ids)
    explain = jaxlrp.lrp(model.apply, rule=rules.Zero(), start="*/word_embeddings")
    R = explain(v, ids, target=2)
    assert R.shape == (2, 3, 4)
    np.testing.assert_allclose(R, jax.jit(explain)(v, ids, target=2), rtol=1e-10)

    # the same as explaining a model that takes the embeddings as input
    emb = v["params"]["word_embeddings"]["embedding"][ids]

    def manual(v, e):
        pos = v["params"]["position"]["embedding"][: e.shape[1]]
        d0, d1 = v["params"]["Dense_1"], v["params"]["Dense_0"]  # Dense(3) is created first
        h = jax.nn.relu((e + pos) @ d0["kernel"] + d0["bias"]).mean(1)
        return h @ d1["kernel"] + d1["bias"]

    ref = jaxlrp.lrp(manual, rule=rules.Zero())(v, emb, target=2)
    np.testing.assert_allclose(R, ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="close names"):
        jaxlrp.lrp(model.apply, start="word_embedding")(v, ids)
    with pytest.raises(TypeError, match="start="):
        jaxlrp.lrp(model.apply)(v, ids)


def test_training_mode_anywhere_is_refused():
    class Net(nn.Module):
        train: bool

        @nn.compact
        def __call__(self, x):
            x = nn.Dense(4)(x)
            x = nn.BatchNorm(use_running_average=not self.train)(x)
            return nn.Dense(3)(nn.relu(x))

    x = jnp.ones((3, 5))
    v = Net(False).init(jax.random.PRNGKey(0), x)
    assert jaxlrp.lrp(Net(False).apply)(v, x).shape == x.shape
    f = lambda v, x: Net(True).apply(v, x, mutable=["batch_stats"])[0]
    with pytest.raises(jaxlrp.TrainingModeError, match="BatchNorm_0.*axis 0"):
        jaxlrp.lrp(f)(v, x)

    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.Dropout(0.5, deterministic=False)(nn.Dense(4)(x)))

    vd = Drop().init(jax.random.PRNGKey(0), x)
    g = lambda v, x: Drop().apply(v, x, rngs={"dropout": jax.random.PRNGKey(1)})
    with pytest.raises(jaxlrp.TrainingModeError, match="random"):
        jaxlrp.lrp(g)(vd, x)


def test_attention_over_tokens_is_not_training_mode():
    w = jax.random.normal(jax.random.PRNGKey(0), (4, 4))

    def f(w, x):  # (B, T, D) -> (B, T, D): tokens are mixed, examples are not
        s = jax.nn.softmax(jnp.einsum("btd,bsd->bts", x @ w, x), -1)
        return jnp.einsum("bts,bsd->btd", s, x)

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4))
    assert jaxlrp.lrp(f)(w, x).shape == x.shape


def test_traced_out_of_range_target_is_nan_for_that_example_only():
    w1, w2 = _dense_params()
    f = lambda p, x: jax.nn.relu(x @ p[0]) @ p[1]
    for comp in (None, composites.EpsilonGammaBox(-3.0, 3.0), composites.EpsilonPlus()):
        explain = jax.jit(jaxlrp.lrp(f, comp))
        for bad in (0, 1):
            target = jnp.array([7, 1]) if bad == 0 else jnp.array([1, -1])
            R = explain((w1, w2), X, target=target)
            assert bool(jnp.isnan(R[bad]).all()) and bool(jnp.isfinite(R[1 - bad]).all())
            good = jaxlrp.lrp(f, comp)((w1, w2), X[1 - bad:2 - bad], target=1)
            np.testing.assert_allclose(R[1 - bad], good[0], rtol=1e-6)
        per = jax.vmap(lambda x, t: jaxlrp.lrp(f, comp)((w1, w2), x, target=t))
        R = per(X, jnp.array([3, 0]))
        assert bool(jnp.isnan(R[0]).all()) and bool(jnp.isfinite(R[1]).all())
    with pytest.raises(ValueError, match="out of range"):
        jaxlrp.lrp(f)((w1, w2), X, target=3)


def test_complex_input_is_a_type_error():
    w1, w2 = _dense_params()
    f = lambda p, x: jnp.real(x @ p[0].astype(x.dtype)) @ p[1]
    with pytest.raises(TypeError, match="complex"):
        jaxlrp.lrp(f)((w1, w2), X.astype(jnp.complex128), target=0)


def test_example_axes_of_a_one_dimensional_output():
    w = jax.random.normal(jax.random.PRNGKey(4), (5,))
    f = lambda w, x: jax.nn.relu(x) @ w  # (B,): one score per example
    x = jax.random.normal(jax.random.PRNGKey(5), (5, 5))
    with pytest.warns(jaxlrp.AmbiguousOutputWarning, match="example_axes=1"):
        jaxlrp.lrp(f)(w, x)
    R = jaxlrp.lrp(f, example_axes=1, rule=rules.Zero())(w, x)
    np.testing.assert_allclose(R.sum(1), f(w, x), rtol=1e-10)
    with pytest.raises(ValueError, match="target must be None"):
        jaxlrp.lrp(f, example_axes=1)(w, x, target=0)


def test_static_leaves_of_a_pytree_argument():
    params = {"w": _dense_params()[0], "act": jax.nn.relu, "name": "layer", "scale": None}
    f = lambda p, x: p["act"](x @ p["w"])
    R = jaxlrp.lrp(f, rule=rules.Zero())(params, X, target=0)
    assert R.shape == X.shape
    # a pytree as the explained argument: static leaves get None
    rel = jaxlrp.lrp(lambda x, p: p["act"](x["a"] @ p["w"]), argnums=0, rule=rules.Zero())(
        {"a": X, "f": jnp.tanh}, params, target=0
    )
    assert rel["f"] is None and rel["a"].shape == X.shape


def test_closed_over_weights_are_noted_in_inspect(capsys):
    w1, w2 = _dense_params()
    rep = jaxlrp.inspect(lambda x: jax.nn.relu(x @ w1) @ w2, verbose=False)(X)
    assert any("closes over" in n for n in rep.notes)
    assert abs(rep.absorbed_by_layers + rep.absorbed_elsewhere - (rep.output_relevance - rep.input_relevance)) < 1e-9
