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
    ("sum", rules.Norm(0.0)), ("attention", rules.Uniform(0.0)), (composites.kind("product", "glu"), rules.Uniform(0.0)),
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


# ----------------------------------------------------------------- fused attention

N, T, HEADS, HD = 2, 5, 2, 3
DM = HEADS * HD


def _mha_params():
    return {k: RNG.normal(size=(DM, DM)) for k in ("wq", "wk", "wv")} | {"wo": RNG.normal(size=(DM, C))}


def _handwritten(q, k, v, bias=None, mask=None, is_causal=False):
    """What ``jax.nn.dot_product_attention(implementation="xla")`` computes, written
    out: the logits are cast to float32 for the softmax (also for float64 inputs).
    Without a mask its softmax's source is that float32 copy (the layout changes
    after the cast), so the softmax rule runs in float32 there; the barrier makes the
    source a float32 copy here too. With a mask the layout changes before the mask
    and the cast, and the source is the float64 logits. (With the other precision,
    the relevance differs by ~5e-7, the precision of the float32 softmax.)"""
    s = jnp.einsum("btnh,bsnh->bnts", q, k) * (1.0 / np.sqrt(HD))
    if bias is not None:
        s = s + bias
    keep = jnp.ones(s.shape, bool) if mask is None else jnp.broadcast_to(mask, s.shape)
    if is_causal:
        keep = keep & jnp.tril(jnp.ones((T, T), bool))
    if mask is not None or is_causal:
        s = jnp.where(keep, s, -jnp.inf)  # dot_product_attention uses a finite large negative
    s = s.astype(jnp.float32)
    if mask is None and not is_causal:
        s = jax.lax.optimization_barrier(s)
    probs = jax.nn.softmax(s, axis=-1).astype(q.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


def _fused(q, k, v, bias=None, mask=None, is_causal=False):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal, implementation="xla")


@jax.custom_vjp
def _kernel(q, k, v):
    """Attention behind a custom VJP, as flash/splash kernels are exposed; its
    backward pass is deliberately wrong (zeros): the analysis must read the forward."""
    return _handwritten(q, k, v)


_kernel.defvjp(lambda q, k, v: (_kernel(q, k, v), None), lambda res, g: (jnp.zeros_like(g),) * 3)


def _model(attention, **kw):
    def f(p, x):  # x: (N, T, DM) -> the last token's outputs
        q, k, v = ((x @ p[w]).reshape(N, T, HEADS, HD) for w in ("wq", "wk", "wv"))
        h = x + attention(q, k, v, **kw).reshape(N, T, DM)
        return (h @ p["wo"])[:, -1]
    return f


MASKS = {
    "plain": {},
    "causal": {"is_causal": True},
    "mask+bias": {"mask": jnp.asarray(RNG.random((1, 1, T, T)) > 0.3) | jnp.eye(T, dtype=bool),
                  "bias": jnp.asarray(RNG.normal(size=(1, HEADS, T, T)))},
}


@pytest.mark.parametrize("composite", [EXACT_ATTN, EXACT_CP], ids=["AttnLRP", "CPLRP"])
@pytest.mark.parametrize("variant", list(MASKS))
def test_dot_product_attention_equals_the_handwritten_attention(composite, variant):
    """``jax.nn.dot_product_attention`` is recognised as softmax and two attention
    products: the same relevance as the attention written out (1e-10)."""
    p, x = _mha_params(), RNG.normal(size=(N, T, DM))
    kw = MASKS[variant]
    np.testing.assert_allclose(_model(_fused, **kw)(p, x), _model(_handwritten, **kw)(p, x), rtol=1e-12)
    got = jaxlrp.lrp(_model(_fused, **kw), composite)(p, x, target=1)
    want = jaxlrp.lrp(_model(_handwritten, **kw), composite)(p, x, target=1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(got))
    kinds = [r.kind for r in jaxlrp.inspect(_model(_fused, **kw), composite, verbose=False)(p, x, target=1).rows]
    assert kinds.count("softmax") == 1 and kinds.count("attention") == 1


def test_custom_vjp_attention_is_analysed_from_its_forward():
    """A ``custom_vjp`` (how flash kernels are exposed) is inlined: its forward
    equations get AttnLRP's and CP-LRP's rules, never its own backward pass."""
    p, x = _mha_params(), RNG.normal(size=(N, T, DM))
    for composite in (EXACT_ATTN, EXACT_CP):
        got = jaxlrp.lrp(_model(_kernel), composite)(p, x, target=2)
        want = jaxlrp.lrp(_model(_handwritten), composite)(p, x, target=2)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        assert np.abs(got).sum() > 0


def test_pallas_kernel_is_refused_by_name():
    """An opaque kernel on the relevance path raises a typed error naming it, with
    the fix (the kernel's XLA reference), never a plain gradient."""
    pl = pytest.importorskip("jax.experimental.pallas")

    def body(q_ref, k_ref, v_ref, o_ref):
        o_ref[...] = _handwritten(q_ref[...], k_ref[...], v_ref[...])

    def flash(q, k, v):
        return pl.pallas_call(body, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=True)(q, k, v)

    p, x = _mha_params(), RNG.normal(size=(N, T, DM))
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="pallas_call.*dot_product_attention"):
        jaxlrp.lrp(_model(flash), composites.AttnLRP())(p, x, target=0)
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="pallas_call"):  # also behind a custom_vjp
        wrapped = jax.custom_vjp(flash)
        wrapped.defvjp(lambda q, k, v: (flash(q, k, v), None), lambda r, g: (g, g, g))
        jaxlrp.lrp(_model(wrapped), composites.CPLRP())(p, x, target=0)


def test_unknown_attention_primitive_is_refused_by_name():
    from jax.extend.core import Primitive

    prim = Primitive("my_fused_attention")
    prim.def_impl(lambda q, k, v: _handwritten(q, k, v))
    prim.def_abstract_eval(lambda q, k, v: jax.core.ShapedArray(q.shape, q.dtype))
    p, x = _mha_params(), RNG.normal(size=(N, T, DM))
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="my_fused_attention"):
        jaxlrp.lrp(_model(prim.bind), composites.AttnLRP())(p, x, target=0)


def test_fused_cp_lrp_is_gradient_times_input_with_constant_probabilities():
    """Multi-head ``dot_product_attention`` under exact CP-LRP is gradient x input of
    the attention written out with ``stop_gradient`` on the probabilities."""
    p, x = _mha_params(), RNG.normal(size=(N, T, DM))

    def constant_probs(q, k, v):
        s = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(HD)
        probs = jax.lax.stop_gradient(jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(q.dtype))
        return jnp.einsum("bnts,bsnh->btnh", probs, v)

    R = jaxlrp.lrp(_model(_fused), EXACT_CP)(p, x, target=0)
    g = jax.grad(lambda x: _model(constant_probs)(p, x)[:, 0].sum())(x)
    np.testing.assert_allclose(R, x * g, rtol=1e-10, atol=1e-12)


def test_minus_infinity_mask_before_a_layout_change_gives_zero_not_nan():
    """A mask written with ``-inf`` and then reshaped (as grouped-query attention
    does) puts ``-inf`` in the softmax's source: those entries get 0, not NaN, and
    the result equals the same mask written with a finite large negative."""
    x = RNG.normal(size=(2, T, DM))
    w = RNG.normal(size=(DM, DM))
    causal = np.tril(np.ones((T, T), bool))

    def f(fill):
        def model(w, x):
            h = x @ w
            s = jnp.where(causal, jnp.einsum("nqd,nkd->nqk", h, h), fill)
            s = s.reshape(2, T * T).reshape(2, T, T)  # the source is the masked logits
            return (jax.nn.softmax(s, -1) @ h)[:, -1]
        return model

    got = jaxlrp.lrp(f(-jnp.inf), EXACT_ATTN)(w, x, target=0)
    want = jaxlrp.lrp(f(-1e30), EXACT_ATTN)(w, x, target=0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
