"""Constant summands absorb their share; Haiku's broadcast bias folds into its layer.

A tensor computed from parameters added to one relevance-carrying value where it is
not folded into a dense/conv layer (LayerNorm's beta, position embeddings, a bias
after the sum of two layers as in ``eqx.nn.LSTMCell``, a bias on a slice of a
layer's output as in ``eqx.nn.GRUCell``) takes its proportional share, as a folded
bias does and as gradient x input does. An unfolded BatchNorm still passes
relevance unchanged (Zennit's convention), and an additive attention mask stays
part of the softmax.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

EXACT = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0)), ("avgpool", rules.Norm(0.0))])


def _gxi(fn, p, x, target):
    return jax.grad(lambda x: fn(p, x)[..., target].sum())(x) * x


def _close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * float(np.abs(b).max()))


# ------------------------------------------------------------------ LRP-0 = gradient x input


def _summand_nets(rng, d=5, h=6):
    """ReLU networks with constant summands outside any layer's folded chain."""
    p = {"w1": rng.normal(size=(d, h)), "w2": rng.normal(size=(d, h)), "b": rng.normal(size=h),
         "pos": rng.normal(size=(3, d)), "v": rng.normal(size=(h, 2)), "w3": rng.normal(size=(d, 2 * h)),
         "half": rng.normal(size=h)}
    return p, {
        # a position embedding added to the explained input
        "position": lambda p, x: jax.nn.relu((x + p["pos"]) @ p["w1"] + p["b"]) @ p["v"],
        # a bias after the sum of two layers
        "after a sum": lambda p, x: jax.nn.relu(x @ p["w1"] + jnp.tanh(x) @ p["w2"] + p["b"]) @ p["v"],
        # a bias added to a slice of a layer's output
        "on a slice": lambda p, x: jax.nn.relu(
            (lambda z: z[..., :h] + p["half"] + z[..., h:])(x @ p["w3"])) @ p["v"],
    }


@pytest.mark.parametrize("name", ["position", "after a sum", "on a slice"])
def test_lrp0_is_gradient_times_input_with_constant_summands(name):
    rng = np.random.default_rng(0)
    p, nets = _summand_nets(rng)
    fn = nets[name]
    x = rng.normal(size=(3, 5))
    if name == "after a sum":  # tanh is not homogeneous: compare with x -> tanh(x) as a second input
        fn = lambda p, x: jax.nn.relu(x[0] @ p["w1"] + x[1] @ p["w2"] + p["b"]) @ p["v"]  # noqa: E731
        x = np.stack([x, np.tanh(x)])
    R = jaxlrp.lrp(fn, EXACT)(p, x, target=1)
    _close(R, _gxi(fn, p, x, 1))


# ------------------------------------------------------------------ recurrent cells


def _lstm_params(rng, d_in=3, d=4):
    return {"wih": rng.normal(size=(4 * d, d_in)) / 2, "whh": rng.normal(size=(4 * d, d)) / 2,
            "b": rng.normal(size=4 * d), "out": rng.normal(size=(d, 2))}


def _lstm(p, xs, spelling):
    """An LSTM over xs (T, N, d_in), the bias placed as ``spelling`` says."""
    d = p["whh"].shape[1]

    def pre(x, h):
        a, b = x @ p["wih"].T, h @ p["whh"].T
        return {"late": lambda: a + b + p["b"], "early": lambda: (a + p["b"]) + b,
                "hidden": lambda: a + (b + p["b"])}[spelling]()

    def cell(carry, x):
        h, c = carry
        i, f, g, o = jnp.split(pre(x, h), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((xs.shape[1], d))
    (h, _), _ = jax.lax.scan(cell, (zeros, zeros), xs)
    return h @ p["out"]


def _lstm_reference(p, xs, target):
    """float64 NumPy LRP for the LSTM (Arras et al. 2017): LRP-0 on the gate
    pre-activation ``W_ih x + W_hh h + b`` (the bias absorbs its share), the gates
    take nothing, sums split proportionally."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    T, N, _ = xs.shape
    d = p["whh"].shape[1]
    h, c = np.zeros((N, d)), np.zeros((N, d))
    tape = []
    for t in range(T):
        z = xs[t] @ p["wih"].T + h @ p["whh"].T + p["b"]
        i, f, g, o = np.split(z, 4, axis=-1)
        c_new = sig(f) * c + sig(i) * np.tanh(g)
        tape.append((xs[t], h, z, c, sig(f) * c, sig(i) * np.tanh(g), c_new))
        h, c = sig(o) * np.tanh(c_new), c_new
    y = h @ p["out"]
    R_y = np.zeros_like(y)
    R_y[:, target] = y[:, target]
    R_h = h * ((R_y / y) @ p["out"].T)
    R_c = np.zeros_like(c)
    R_x = np.zeros_like(xs)
    for t in reversed(range(T)):
        x, h_prev, z, c_prev, fc, ig, c_new = tape[t]
        R_c = R_c + R_h  # o * tanh(c): all to tanh(c), which passes it to c
        R_fc, R_ig = fc * R_c / c_new, ig * R_c / c_new
        R_z = np.zeros_like(z)
        R_z[:, 2 * d:3 * d] = R_ig  # i * tanh(g): all to g
        R_x[t] = x * ((R_z / z) @ p["wih"])
        R_h = h_prev * ((R_z / z) @ p["whh"])
        R_c = R_fc  # f * c: all to c
    return R_x


def test_lstm_bias_placements_give_the_reference_map():
    """``W_ih x + W_hh h + b`` (eqx.nn.LSTMCell), ``(W_ih x + b) + W_hh h`` and
    ``W_ih x + (W_hh h + b)``: one map, the reference's."""
    rng = np.random.default_rng(1)
    p, xs = _lstm_params(rng), rng.normal(size=(4, 2, 3))
    ref = _lstm_reference(p, xs, 1)
    for spelling in ("late", "early", "hidden"):
        R = jaxlrp.lrp(lambda p, xs, s=spelling: _lstm(p, xs, s), EXACT)(p, xs, target=1)
        _close(R, ref)


def _eqx_sequence(cell, xs, state):
    def step(state, x):
        new = jax.vmap(cell)(x, state)
        return new, None

    state, _ = jax.lax.scan(step, state, xs)
    return state


def test_equinox_lstm_and_gru_cells_equal_their_folded_spellings():
    """The cells as Equinox writes them (bias after the sum; GRU's ``bias_n`` on a
    slice of ``W_hh h``) equal the same cells with every bias folded into a layer."""
    rng = np.random.default_rng(2)
    d_in, d, N, T = 3, 4, 2, 3
    xs = rng.normal(size=(T, N, d_in))
    rand = lambda m: jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) / 2), m)  # noqa: E731

    lstm = rand(eqx.nn.LSTMCell(d_in, d, key=jax.random.key(0)))
    out = rng.normal(size=(d, 2))

    def lstm_eqx(m, xs):
        h, _ = _eqx_sequence(m, xs, (jnp.zeros((N, d)),) * 2)
        return h @ out

    p = {"wih": lstm.weight_ih, "whh": lstm.weight_hh, "b": lstm.bias, "out": out}
    _close(jaxlrp.lrp(lstm_eqx, EXACT)(lstm, xs, target=0),
           jaxlrp.lrp(lambda p, xs: _lstm(p, xs, "early"), EXACT)(p, xs, target=0))

    gru = rand(eqx.nn.GRUCell(d_in, d, key=jax.random.key(1)))

    def gru_eqx(m, xs):
        return _eqx_sequence(m, xs, jnp.zeros((N, d))) @ out

    def gru_folded(m, xs):
        def cell(h, x):
            ig = jnp.split(x @ m.weight_ih.T + m.bias, 3, axis=-1)
            hg = jnp.split(h @ m.weight_hh.T + jnp.concatenate([jnp.zeros(2 * d), m.bias_n]), 3, axis=-1)
            r, z = jax.nn.sigmoid(ig[0] + hg[0]), jax.nn.sigmoid(ig[1] + hg[1])
            n = jnp.tanh(ig[2] + r * hg[2])
            return n + z * (h - n), None

        h, _ = jax.lax.scan(cell, jnp.zeros((N, d)), xs)
        return h @ out

    np.testing.assert_allclose(gru_eqx(gru, xs), gru_folded(gru, xs), rtol=1e-12)
    _close(jaxlrp.lrp(gru_eqx, EXACT)(gru, xs, target=0), jaxlrp.lrp(gru_folded, EXACT)(gru, xs, target=0))


# ------------------------------------------------------------------ normalisations


def test_layernorm_beta_absorbs_its_share_as_in_gradient_times_input():
    """LayerNorm with its standard deviation held constant (AttnLRP, LXT) is affine:
    LRP-0 through it is gradient x input of the model with the variance detached,
    beta taking its share."""
    import flax.linen as nn

    rng = np.random.default_rng(3)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(6)(x)
            x = nn.LayerNorm(epsilon=1e-5)(x)
            return nn.Dense(2)(jax.nn.relu(x))

    x = rng.normal(size=(3, 4))
    v = Net().init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), v)
    P = v["params"]

    def detached(v, x):
        z = x @ P["Dense_0"]["kernel"] + P["Dense_0"]["bias"]
        mean = z.mean(-1, keepdims=True)
        var = jax.lax.stop_gradient(((z - mean) ** 2).mean(-1, keepdims=True))
        n = (z - mean) * jax.lax.rsqrt(var + 1e-5) * P["LayerNorm_0"]["scale"] + P["LayerNorm_0"]["bias"]
        return jax.nn.relu(n) @ P["Dense_1"]["kernel"] + P["Dense_1"]["bias"]

    np.testing.assert_allclose(detached(v, x), Net().apply(v, x), rtol=1e-10)
    _close(jaxlrp.lrp(Net().apply, EXACT)(v, x, target=1), _gxi(detached, v, x, 1))


@pytest.mark.parametrize("spelling", ["flax", "keras", "equinox"])
def test_unfolded_batchnorm_passes_relevance_unchanged(spelling):
    """A BatchNorm that follows no layer is an elementwise map: its shift is no
    constant summand (Zennit's ``BatchNorm -> Pass``), in each library's spelling."""
    rng = np.random.default_rng(4)
    c = 4
    p = {"mean": rng.normal(size=c), "var": rng.uniform(0.5, 1.5, size=c), "g": rng.normal(size=c),
         "b": rng.normal(size=c), "w": rng.normal(size=(c, 2))}

    def bn(p, x):
        if spelling == "flax":
            return (x - p["mean"]) * (p["g"] * jax.lax.rsqrt(p["var"] + 1e-5)) + p["b"]
        if spelling == "keras":
            inv = jax.lax.rsqrt(p["var"] + 1e-5) * p["g"]
            return x * inv + (p["b"] - p["mean"] * inv)
        return (x - p["mean"]) / jnp.sqrt(p["var"] + 1e-5) * p["g"] + p["b"]

    x = rng.normal(size=(3, c))
    R = jaxlrp.lrp(lambda p, x: bn(p, x) @ p["w"], EXACT)(p, x, target=0)
    R_after = jaxlrp.lrp(lambda p, u: u @ p["w"], EXACT)(p, bn(p, x), target=0)
    _close(R, R_after)


@pytest.mark.parametrize("fill", [-jnp.inf, -1e9])
def test_additive_attention_mask_is_part_of_the_softmax(fill):
    """``softmax(s + mask)`` with the mask an argument: the mask is no summand of
    the scores (the softmax's relevance goes to ``s``), so the map is finite and
    equals ``softmax(where(keep, s, fill))``."""
    rng = np.random.default_rng(5)
    D, L = 4, 5
    p = {n: rng.normal(size=(D, D)) for n in "qkv"} | {"o": rng.normal(size=(D, 3))}
    keep = np.arange(L) < 3

    def attn(p, x, masked):
        s = (x @ p["q"]) @ (x @ p["k"]).swapaxes(-1, -2) / 2.0
        a = jax.nn.softmax(masked(s), axis=-1)
        return (a @ (x @ p["v"])).sum(-2) @ p["o"]

    x = rng.normal(size=(2, L, D))
    bias = jnp.where(keep, 0.0, fill)
    R_add = jaxlrp.lrp(lambda p, b, x: attn(p, x, lambda s: s + b), composites.AttnLRP())(p, bias, x, target=0)
    R_where = jaxlrp.lrp(lambda p, x: attn(p, x, lambda s: jnp.where(keep, s, fill)), composites.AttnLRP())(
        p, x, target=0)
    assert np.isfinite(np.asarray(R_add)).all()
    _close(R_add, R_where)


# ------------------------------------------------------------------ Haiku's bias


def _hk_linear(w, b, x):
    out = jnp.dot(x, w)
    return out + jnp.broadcast_to(b, out.shape)  # as hk.Linear writes it


def _hk_conv(w, b, x):
    out = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + jnp.broadcast_to(b, out.shape)  # as hk.Conv2D writes it


def _haiku_style(p, x):
    h = jax.nn.relu(_hk_conv(p["c"], p["cb"], x))
    return _hk_linear(p["w"], p["b"], h.reshape(h.shape[0], -1))


def _flax_style(p, x):
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c"], (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["cb"])
    return h.reshape(h.shape[0], -1) @ p["w"] + p["b"]


def test_haiku_broadcast_bias_folds_into_its_layer():
    rng = np.random.default_rng(6)
    p = {"c": rng.normal(size=(3, 3, 2, 4)), "cb": rng.normal(size=4), "w": rng.normal(size=(5 * 5 * 4, 3)),
         "b": rng.normal(size=3)}
    x = rng.normal(size=(2, 5, 5, 2))
    rep = jaxlrp.inspect(_haiku_style, EXACT, verbose=False)(p, x)
    assert [(r.kind, r.folded) for r in rep.rows if r.kind != "activation"] == [("conv", ("add",)), ("dense", ("add",))]
    _close(jaxlrp.lrp(_haiku_style, EXACT)(p, x, target=1), _gxi(_haiku_style, p, x, 1))
    for comp in (composites.EpsilonGammaBox(-3.0, 3.0), composites.EpsilonPlus(), composites.EpsilonAlpha2Beta1()):
        _close(jaxlrp.lrp(_haiku_style, comp)(p, x, target=1), jaxlrp.lrp(_flax_style, comp)(p, x, target=1))


def test_real_haiku_mlp_and_convnet():
    hk = pytest.importorskip("haiku")

    def net(x):
        h = jax.nn.relu(hk.Conv2D(4, 3)(x))
        h = jax.nn.relu(hk.Linear(8)(hk.Flatten()(h)))
        return hk.Linear(3)(h)

    model = hk.without_apply_rng(hk.transform(net))
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 5, 2))
    p = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) / 2), model.init(jax.random.key(0), x))
    rep = jaxlrp.inspect(model.apply, EXACT, verbose=False)(p, x)
    assert all(r.folded == ("add",) for r in rep.rows if r.kind in ("conv", "dense"))
    _close(jaxlrp.lrp(model.apply, EXACT)(p, x, target=2), _gxi(model.apply, p, x, 2))
