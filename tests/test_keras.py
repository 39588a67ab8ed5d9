"""jaxlrp.keras: Keras 3 models on the JAX backend, explained with Keras's names.

The identity LRP-0 = gradient x input (ReLU networks, biases absorbing relevance)
must hold to float64 rounding: Keras computes BatchNormalization and ``ops.mean``
in float32 even in a float64 model under x64 (its ``result_type`` maps float64 to
float32), which ``full_precision=True`` undoes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":  # pragma: no cover
    pytest.skip("Keras runs on another backend", allow_module_level=True)

import jax  # noqa: E402

import jaxlrp  # noqa: E402
import jaxlrp.keras as jk  # noqa: E402
from jaxlrp import composites, rules  # noqa: E402

F64 = "float64"


def _rand(seed: int, scale: float = 0.5):
    return keras.initializers.RandomNormal(stddev=scale, seed=seed)


def _pos(seed: int):
    return keras.initializers.RandomUniform(0.5, 1.5, seed=seed)


def _relu_net():
    """Conv2D + ReLU, max pooling, Dense + ReLU, Dense: every bias random."""
    inp = keras.Input((8, 8, 2), dtype=F64)
    h = keras.layers.Conv2D(4, 3, activation="relu", bias_initializer=_rand(1), dtype=F64, name="conv1")(inp)
    h = keras.layers.MaxPooling2D(2, dtype=F64)(h)
    h = keras.layers.Flatten(dtype=F64)(h)
    h = keras.layers.Dense(8, activation="relu", bias_initializer=_rand(2), dtype=F64, name="fc1")(h)
    out = keras.layers.Dense(3, bias_initializer=_rand(3), dtype=F64, name="fc2")(h)
    return keras.Model(inp, out, name="net")


def _bn_net():
    """Conv2D -> BatchNormalization (random moving statistics) -> ReLU -> global
    average pooling -> Dense, in a nested Sequential block; Dropout (inactive)."""
    block = keras.Sequential([
        keras.layers.Conv2D(4, 3, padding="same", bias_initializer=_rand(4), dtype=F64, name="conv"),
        keras.layers.BatchNormalization(beta_initializer=_rand(5), gamma_initializer=_pos(6),
                                        moving_mean_initializer=_rand(7), moving_variance_initializer=_pos(8),
                                        dtype=F64, name="bn"),
        keras.layers.ReLU(dtype=F64),
    ], name="block")
    inp = keras.Input((8, 8, 2), dtype=F64)
    h = block(inp)
    h = keras.layers.Dropout(0.5, dtype=F64)(h)
    h = keras.layers.GlobalAveragePooling2D(dtype=F64)(h)
    out = keras.layers.Dense(3, bias_initializer=_rand(9), dtype=F64, name="head")(h)
    return keras.Model(inp, out, name="bnnet")


def _x(seed: int = 0):
    return np.random.default_rng(seed).normal(size=(3, 8, 8, 2))


def _grad_x_input(model, x, target: int, full_precision: bool = True):
    f = jk.call(model, full_precision=full_precision)
    state = jk.variables(model)
    g = jax.grad(lambda x_: f(state, x_)[:, target].sum())(x)
    return np.asarray(g * x)


def _rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("build", [_relu_net, _bn_net], ids=["dense_conv_relu", "batchnorm"])
def test_lrp0_is_gradient_times_input_in_float64(build):
    model, x = build(), _x()
    R = jax.jit(jk.lrp(model, rule=rules.Zero()))(jk.variables(model), x, target=1)
    assert R.dtype == np.float64
    assert _rel_err(R, _grad_x_input(model, x, 1)) < 1e-10


@pytest.mark.slow
def test_float32_leak_of_keras_batchnorm_is_what_full_precision_removes():
    """Without full precision Keras computes BatchNormalization and the global mean
    in float32 inside a float64 model: LRP-0 and gradient x input differ at ~1e-7."""
    model, x = _bn_net(), _x()
    f = jk.call(model, full_precision=False)
    dtypes = {str(v.aval.dtype) for e in jax.make_jaxpr(f)(jk.variables(model), x).eqns for v in e.outvars}
    assert "float32" in dtypes
    R = jk.lrp(model, rule=rules.Zero(), full_precision=False)(jk.variables(model), x, target=1)
    assert _rel_err(R, _grad_x_input(model, x, 1)) > 1e-9
    f = jk.call(model)
    dtypes = {str(v.aval.dtype) for e in jax.make_jaxpr(f)(jk.variables(model), x).eqns for v in e.outvars}
    assert "float32" not in dtypes


@pytest.mark.slow
def test_keras_names_select_layers():
    model, x = _bn_net(), _x()
    state = jk.variables(model)
    assert "block/bn/moving_mean" in state and "head/kernel" in state
    report = jk.inspect(model, verbose=False)(state, x)
    rows = {row.key: row for row in report.rows}
    assert {"block/conv", "head"} <= set(rows)
    assert rows["block/conv"].param_paths == ("block/conv/kernel",)
    assert "mul" in rows["block/conv"].folded  # BatchNorm folded into the conv
    for pattern in ("head", "*/head", "bnnet/head", "head/*"):
        _, per_layer = jk.lrp(model)(state, x, layers=pattern)
        assert list(per_layer) == ["head"], pattern
    # a composite glob on a Keras name: Flat on the block's conv only
    comp = composites.Composite([("*/conv", rules.Flat())])
    flat = jk.lrp(model, comp)(state, x, target=0)
    eps = jk.lrp(model)(state, x, target=0)
    assert not np.allclose(flat, eps)


@pytest.mark.slow
def test_explain_in_one_call_matches_lrp_and_jit():
    model, x = _relu_net(), _x(1)
    comp = composites.EpsilonPlusFlat()
    R = jk.explain(model, x, composite=comp, target=2)
    R2 = jax.jit(jk.lrp(model, comp))(jk.variables(model), x, target=2)
    np.testing.assert_allclose(R, R2, rtol=1e-12, atol=1e-14)
    out, R3 = jk.value_and_lrp(model, comp)(jk.variables(model), x, target=2)
    np.testing.assert_allclose(out, model(x), rtol=1e-12)
    np.testing.assert_allclose(R3, R, rtol=1e-12, atol=1e-14)


class _Noisy(keras.layers.Layer):
    """Adds noise whatever ``training`` says."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, x):
        return x + keras.random.normal(keras.ops.shape(x), seed=self.seed, dtype=x.dtype)


def test_layer_updating_its_state_in_inference_is_refused():
    inp = keras.Input((4,), dtype=F64)
    out = keras.layers.Dense(2, dtype=F64)(_Noisy(dtype=F64, name="noisy")(inp))
    model = keras.Model(inp, out)
    with pytest.raises(jaxlrp.TrainingModeError, match="seed"):
        jk.explain(model, np.ones((2, 4)))


def test_float32_model_on_float64_input_warns():
    inp = keras.Input((4,), dtype="float32")
    model = keras.Model(inp, keras.layers.Dense(2, dtype="float32")(inp))
    with pytest.warns(jk.PrecisionWarning, match="float32"):
        jk.explain(model, np.ones((2, 4)))


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="build it first"):
        jk.variables(keras.Sequential([keras.layers.Dense(2)]))
