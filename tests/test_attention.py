"""Attention: CP-LRP's constant probabilities, fused attention, opaque kernels.

CP-LRP (Ali et al. 2022) holds the attention probabilities constant, so relevance
flows from the read-out position through ``P^T`` to the values of every position;
fused attention (``jax.nn.dot_product_attention``, attention behind a
``jax.custom_vjp``) gets the same rules as the hand-written attention; a kernel
that cannot be looked into is refused with a typed error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

import reference

RNG = np.random.default_rng(22)
L, D, C = 5, 4, 3

#: CP-LRP with every stabiliser at 0: each rule is exact.
EXACT_CP = composites.CPLRP(epsilon=0.0, rules=[
    ("sum", rules.Norm(0.0)), ("attention", rules.SignalTakesAll(0.0)), ("normalize", rules.SignalTakesAll(0.0)),
])
EXACT_ATTN = composites.AttnLRP(epsilon=0.0, rules=[
    ("sum", rules.Norm(0.0)), ("attention", rules.Uniform(0.0)), ("product", rules.Uniform(0.0)),
    ("softmax", rules.Softmax(0.0)), ("normalize", rules.SignalTakesAll(0.0)),
])


def _block_params(bias=True):
    p = {k: RNG.normal(size=(D, D)) for k in ("wq", "wk", "wv")}
    p["wo"] = RNG.normal(size=(D, C))
    p["bv"] = RNG.normal(size=D) if bias else np.zeros(D)
    p["bo"] = RNG.normal(size=C) if bias else np.zeros(C)
    return p


def _block(p, x, position, stop=False):
    """``y[:, position]`` of ``h = x + softmax(q k^T / sqrt(d)) v``, ``y = h wo + bo``; x: (N, L, D)."""
    q, k = x @ p["wq"], x @ p["wk"]
    v = x @ p["wv"] + p["bv"]
    probs = jax.nn.softmax(jnp.einsum("nqd,nkd->nqk", q, k) / np.sqrt(D), axis=-1)
    if stop:
        probs = jax.lax.stop_gradient(probs)
    h = x + jnp.einsum("nqk,nkd->nqd", probs, v)
    return (h @ p["wo"] + p["bo"])[:, position]


@pytest.mark.parametrize("position", [L - 1, 0], ids=["last-token", "class-token"])
def test_cp_lrp_moves_relevance_across_positions(position):
    """The read-out position's relevance reaches the values of the other positions,
    equal to a float64 NumPy reference of CP-LRP."""
    p, x = _block_params(), RNG.normal(size=(2, L, D))
    target = 1
    R = jaxlrp.lrp(_block, EXACT_CP, argnums=1)(p, x, position, target=target)
    expected = np.stack([
        reference.cp_lrp_attention(xi, p["wq"], p["wk"], p["wv"], p["bv"], p["wo"], p["bo"], position, target)
        for xi in x
    ])
    others = np.delete(np.abs(expected).sum(-1), position, axis=1)
    assert np.all(others > 1e-3)  # the reference does move relevance
    np.testing.assert_allclose(R, expected, rtol=1e-10, atol=1e-12)


def test_cp_lrp_is_gradient_times_input_with_constant_probabilities():
    """With no biases and exact rules, CP-LRP is gradient x input of the block with
    ``stop_gradient`` on the probabilities (dense layers, residual add and ``P v``
    are then linear in x)."""
    p, x = _block_params(bias=False), RNG.normal(size=(2, L, D))
    R = jaxlrp.lrp(_block, EXACT_CP, argnums=1)(p, x, L - 1, target=2)
    g = jax.grad(lambda x: _block(p, x, L - 1, stop=True)[:, 2].sum())(x)
    np.testing.assert_allclose(R, x * g, rtol=1e-10, atol=1e-12)


def test_cp_lrp_conserves_across_positions():
    p, x = _block_params(bias=False), RNG.normal(size=(2, L, D))
    R = jaxlrp.lrp(_block, EXACT_CP, argnums=1)(p, x, L - 1, target=0)
    np.testing.assert_allclose(R.sum(axis=(1, 2)), _block(p, x, L - 1)[:, 0], rtol=1e-10)
