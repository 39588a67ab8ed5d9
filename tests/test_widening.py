"""Relevance carried wider than the model computes (``relevance_dtype``,
:mod:`jaxlrp._core.widening`): the forward pass stays the model's, relevance travels
in the wide dtype, and a model that computes in float32 or wider is not touched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules
from jaxlrp._core import trace as _trace
from jaxlrp._core.program import flatten
from jaxlrp._core.widening import NONE, Widening, round_as

BF16, F32, F64 = jnp.bfloat16, jnp.float32, jnp.float64


def _mlp(params, x):
    """A ReLU MLP with a residual sum, a softmax gate and a scanned block."""
    (w1, b1), (w2, b2), (w3, b3) = params
    h = jax.nn.relu(x @ w1 + b1)
    h = h + jax.nn.softmax(h @ w2 + b2, axis=-1) * h

    def block(c, _):
        return c + jax.nn.relu(c @ w2 + b2), None

    h, _ = jax.lax.scan(block, h, None, length=2)
    return h @ w3 + b3


def _params(dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 7)
    shapes = [(6, 8), (8, 8), (8, 4)]
    return [(jax.random.normal(keys[2 * i], s, F32) / np.sqrt(s[0]),
             0.1 * jax.random.normal(keys[2 * i + 1], s[1:], F32)) for i, s in enumerate(shapes)], \
        jax.random.normal(keys[6], (5, 6), F32)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)


def test_round_as_rounds_values_and_passes_derivatives_unrounded():
    x = jnp.array([1.0 + 2.0 ** -12, 3.0], F32)
    assert np.array_equal(round_as(x, BF16), x.astype(BF16).astype(F32))
    assert round_as(x, BF16).dtype == F32
    t = jnp.array([1.0 + 2.0 ** -12, 2.0 ** -20], F32)
    _, jt = jax.jvp(lambda v: round_as(v, BF16), (x,), (t,))
    assert np.array_equal(jt, t)  # not rounded to bf16


def test_widening_binds_narrow_equations_wide_and_rounds_only_explicit_casts():
    """Under a widening a bf16 program runs in float32 on its bf16 values: the
    model's cast of a float32 input to bf16 still rounds it, the product and the
    scaling that follow are not rounded (the result below needs 17 bits)."""
    w = Widening(jnp.dtype(F32))
    prog = flatten(jax.make_jaxpr(lambda a, b: (a.astype(BF16) @ b) * 3)(jnp.ones((2, 3), F32),
                                                                       jnp.ones((3, 2), BF16)).jaxpr)
    a = jnp.array([[1.0 + 2.0 ** -12, 2.0 ** -9, 0.5]] * 2, F32)  # 1 + 2^-12 rounds to 1 in bf16
    b = jnp.full((3, 2), 1.0 + 2.0 ** -7, F32)
    env = {prog.invars[0]: a, prog.invars[1]: b}
    for e in prog.eqns:
        outs = w.bind(e, [env[v] if v in env else v.val for v in e.invars])
        assert all(o.dtype == F32 for o in outs), e.prim
        env.update(zip(e.outvars, outs))
    got = np.asarray(env[prog.outvars[0]], F64)
    exact = (1.5 + 2.0 ** -9) * (1.0 + 2.0 ** -7) * 3  # from the rounded input, in float32 exactly
    np.testing.assert_array_equal(got, np.full((2, 2), exact))
    model = (a.astype(BF16) @ b.astype(BF16)) * 3  # the bf16 model rounds each result
    assert not np.array_equal(got, np.asarray(model, F64))
    assert w.narrow(BF16) and not w.narrow(F32) and not w.narrow(jnp.int32)
    assert not NONE.narrow(BF16)


def test_float32_models_are_not_widened():
    params, x = _params(F32)
    t = _trace.trace(_mlp, composites.resolve(None, None), None, (params, x))
    assert t.widening == NONE
    tb = _trace.trace(_mlp, composites.resolve(None, None), None, (_cast(params, BF16), x.astype(BF16)))
    assert tb.widening == Widening(jnp.dtype(F32))
    assert _trace.trace(_mlp, composites.resolve(None, None), None, (_cast(params, BF16), x.astype(BF16)),
                        relevance_dtype=None).widening == NONE


@pytest.mark.parametrize("comp", [composites.resolve(None, rules.Epsilon(0.25)), "epsilon_plus_flat", "attn_lrp"],
                         ids=["epsilon", "epsilon_plus_flat", "attn_lrp"])
def test_bfloat16_relevance_carried_in_float32_is_close_to_float64_and_closer_than_bf16(comp):
    """Over one bf16 forward pass, relevance carried in float32 is within 5e-3 of
    relevance carried in float64, and closer than relevance carried in bf16. (Not
    equal: XLA converts float64 to bf16 through float32, a double rounding that
    moves a few forward values by one bf16 ulp; the exact identity is checked by
    conservation below.) The input is float32 and cast inside the function, so that
    the returned relevance is float32 (the explained argument's dtype) and shows the
    carried precision."""
    params, x = _params(F32)
    pb, x = _cast(params, BF16), x.astype(BF16).astype(F32)

    def g(p, x):
        return _mlp(p, x.astype(BF16))

    @jax.jit  # one program for the three maps (the suite's time)
    def maps(pb, x):
        return (jaxlrp.value_and_lrp(g, comp)(pb, x, target=1),
                jaxlrp.lrp(g, comp, relevance_dtype=F64)(pb, x, target=1),
                jaxlrp.lrp(g, comp, relevance_dtype=None)(pb, x, target=1))

    (out, r32), r64, rbf = maps(pb, x)
    assert out.dtype == BF16 and r32.dtype == F32 and r64.dtype == F32 and rbf.dtype == F32
    np.testing.assert_allclose(np.asarray(out, F32), np.asarray(g(pb, x), F32), rtol=2e-2, atol=2e-2)
    r64, rbf = np.asarray(r64, F64), np.asarray(rbf, F64)
    scale = np.max(np.abs(r64))
    err32, errbf = np.max(np.abs(np.asarray(r32, F64) - r64)) / scale, np.max(np.abs(rbf - r64)) / scale
    assert err32 < 5e-3 and errbf > 3 * err32, (err32, errbf)


def test_lrp0_conserves_relevance_exactly_over_a_bf16_forward_pass():
    """LRP-0 on a bias-free ReLU MLP conserves relevance. Carried in float32 over a
    bf16 model it does to float32 precision: the relevance sums to the explained
    output, the model evaluated in float32 from its bf16 weights and input (which
    the returned value rounds to bf16); carried in bf16 it misses by a rounding per
    operation (3.5e-3 of the total here)."""
    def f(ws, x):
        h = x.astype(BF16)
        for w in ws[:-1]:
            h = jax.nn.relu(h @ w)
        return h @ ws[-1]

    keys = jax.random.split(jax.random.key(3), 9)
    ws = _cast([jax.random.normal(k, (16, 16), F32) / 4 for k in keys[:8]], BF16)
    x = jax.random.normal(keys[8], (4, 16), F32).astype(BF16).astype(F32)
    wide = np.asarray(f(_cast(ws, F32), x), F64)[:, 2]  # the same network in float32 arithmetic
    errs = {}
    for dtype in (F32, None):
        out, r = jaxlrp.value_and_lrp(f, rule=rules.Zero(), relevance_dtype=dtype)(ws, x, target=2)
        r = np.asarray(r, F64)
        errs[dtype] = np.max(np.abs(r.sum(-1) - (wide if dtype else np.asarray(out, F64)[:, 2])) / np.abs(r).sum(-1))
        assert out.dtype == BF16
        np.testing.assert_allclose(np.asarray(out, F64), np.asarray(f(ws, x), F64), rtol=2e-2, atol=2e-2)
    assert errs[F32] < 1e-6 and errs[None] > 1e-4, errs


def test_a_residual_sum_that_cancels_to_zero_in_bf16_keeps_its_summands_relevance():
    """``y = x + x W`` where one entry's summands cancel exactly once rounded to
    bf16 (``x_0 = 1.0546875``, ``(x W)_0 = -1.05176`` rounds to ``-x_0``): a bf16
    evaluation makes ``y_0 = 0``, and relevance, which is ``y_0`` times what
    reaches it, stops there for both summands. Evaluated in float32 (the widening)
    ``y_0 = 0.0029`` and LRP-0 of this linear map equals gradient x input, as in
    float32 and as LXT's gradient form gives in bf16."""
    x = jnp.array([[1.0546875, 0.5, -0.75, 0.25]], F32)  # bf16 values; cast in f, so R is float32
    w = -jnp.eye(4, dtype=F32).at[1, 0].set(0.75 * 2.0 ** -7).at[2, 3].set(0.375)
    v = jnp.array([[0.5], [-1.25], [0.75], [2.0]], F32)
    p = _cast((w, v), BF16)

    def f(p, x):
        w, v = p
        x = x.astype(BF16)
        return (x + x @ w) @ v

    assert float((x.astype(BF16) + x.astype(BF16) @ p[0])[0, 0]) == 0.0  # the bf16 model's cancellation

    r = np.asarray(jaxlrp.lrp(f, rule=rules.Zero())(p, x, target=0), F64)
    xd, wd, vd = (np.asarray(a, F64) for a in (x, *p))
    np.testing.assert_allclose(r, xd * (vd + wd @ vd).T, rtol=1e-6, atol=1e-7)


def test_flax_mixed_precision_float32_parameters_bfloat16_compute():
    """The common Flax spelling of a bf16 model: float32 parameters, layers with
    ``dtype=bfloat16`` (the kernels are cast inside). The float32 input's relevance
    is float32; carried in float32 it equals carried in float64 (3e-7 measured),
    carried in bf16 it is 1e-2 off."""
    nn = pytest.importorskip("flax.linen")

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.gelu(nn.LayerNorm(dtype=BF16)(nn.Dense(32, dtype=BF16)(x)))
            return nn.Dense(5, dtype=F32)(nn.Dense(32, dtype=BF16)(h) + h)

    model, x = Model(), jax.random.normal(jax.random.key(0), (4, 16), F32)
    v = model.init(jax.random.key(1), x)
    v = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape, a.dtype), v)
    @jax.jit  # one program for the three maps (the suite's time)
    def maps(v, x):
        return (jaxlrp.value_and_lrp(model.apply, "epsilon_plus")(v, x, target=2),
                jaxlrp.lrp(model.apply, "epsilon_plus", relevance_dtype=F64)(v, x, target=2),
                jaxlrp.lrp(model.apply, "epsilon_plus", relevance_dtype=None)(v, x, target=2))

    (out, r), r64, rbf = maps(v, x)
    assert r.dtype == F32 and out.dtype == F32
    np.testing.assert_allclose(out, jax.jit(model.apply)(v, x), atol=0.05)  # a bf16 pass: ~0.01 apart
    r64, rbf = np.asarray(r64, F64), np.asarray(rbf, F64)
    scale = np.abs(r64).max()
    assert np.abs(np.asarray(r, F64) - r64).max() / scale < 1e-5
    assert np.abs(rbf - r64).max() / scale > 1e-3
