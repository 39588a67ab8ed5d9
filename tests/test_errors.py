"""Unsupported operations raise a clear error naming the primitive and the layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import UnsupportedOperationError


class Softmaxed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jax.nn.softmax(nn.Dense(3, name="head")(x))


class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6, name="fc")(x)
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(2, name="head")(x)


def test_unrecognised_division_raises_with_layer_name():
    """A division by an input-dependent value that is neither a softmax nor a
    square-root normaliser."""

    def fn(w, x):
        with jax.named_scope("ratio"):
            z = x @ w
            return z / (1.0 + jnp.sum(z * z, axis=-1, keepdims=True))

    with pytest.raises(UnsupportedOperationError, match=r"'div' in layer 'ratio'.*stop_gradient"):
        jaxlrp.lrp(fn)(jnp.ones((3, 4)), jnp.ones((2, 3)))


def test_product_of_two_normalisers_raises():
    def fn(w, x):
        z = x @ w
        r1 = jax.lax.rsqrt(jnp.mean(z * z, -1, keepdims=True) + 1.0)
        r2 = jax.lax.rsqrt(jnp.mean(jnp.abs(z), -1, keepdims=True) + 1.0)
        return z * (r1 * r2)

    with pytest.raises(UnsupportedOperationError, match="inverses"):
        jaxlrp.lrp(fn)(jnp.ones((3, 4)), jnp.ones((2, 3)))


def test_unknown_primitive_raises():
    def fn(w, x):
        return jnp.fft.fft(x @ w).real

    with pytest.raises(UnsupportedOperationError, match="'fft'") as info:
        jaxlrp.lrp(fn)(jnp.ones((3, 4)), jnp.ones((2, 3)))
    assert info.value.primitive == "fft"


def test_named_scope_appears_in_error():
    def fn(w, x):
        with jax.named_scope("block3"):
            return jnp.prod(x @ w, axis=-1, keepdims=True)

    with pytest.raises(UnsupportedOperationError, match="reduce_prod.*block3"):
        jaxlrp.lrp(fn)(jnp.ones((3, 4)), jnp.ones((2, 3)))


def test_while_loop_on_relevance_path_raises():
    def fn(w, x):
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ w, c[1] + 1), (x, 0))[0]

    with pytest.raises(UnsupportedOperationError, match="while.*scan"):
        jaxlrp.lrp(fn)(jnp.eye(3), jnp.ones((2, 3)))


def test_stop_gradient_makes_a_normaliser_constant():
    """The documented way out: a stop_gradient'ed denominator is a constant."""

    def fn(w, x):
        z = x @ w
        return z / jax.lax.stop_gradient(jnp.sum(jnp.abs(z), -1, keepdims=True))

    w, x = np.random.default_rng(0).normal(size=(3, 4)), np.random.default_rng(1).normal(size=(2, 3))
    rel = jaxlrp.lrp(fn, rule=jaxlrp.rules.Zero())(w, x, target=1)
    np.testing.assert_allclose(rel.sum(1), fn(w, x)[:, 1], rtol=1e-8)


def test_input_independent_parts_are_not_checked():
    """Unsupported primitives that do not depend on the input run unchanged."""

    def fn(w, x):
        w2 = w / jnp.linalg.norm(w)  # weight normalisation: div and sqrt on parameters only
        return jnp.fft.fft(w2).real.sum() * 0 + x @ w2

    rel = jaxlrp.lrp(fn)(jnp.ones((3, 4)), jnp.ones((2, 3)))
    assert np.all(np.isfinite(rel))


def test_probabilities_refused_naming_the_layer():
    """Explaining a softmax output (probabilities) is refused: LRP explains the logit."""
    m = Softmaxed()
    x = jnp.ones((2, 4))
    v = m.init(jax.random.PRNGKey(0), x)
    with pytest.raises(UnsupportedOperationError, match=r"in layer 'Softmaxed'.*returns probabilities") as info:
        jaxlrp.lrp(m.apply)(v, x)
    assert "explain the logits" in str(info.value)
