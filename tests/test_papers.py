"""The rules and presets of the seed papers (issue 16), each against an independent
NumPy computation in float64 on tiny layers:

* Relative LRP, both readings (``variants.relative(mode="layer" | "neuron")``) and
  the properties they promise;
* the Fact-or-Artifact authors' LRP for echo state networks
  (``models.recurrent.esn_composite``: joint z+ and ``rules.FixedShares``), its
  decay of ``1 - a`` per step, and the invalid-point and stripe diagnostics;
* the Overview's ``rules.EpsilonStd``, ``composites.ZeroEpsilonGammaBox`` and the two max
  pooling rules.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, diagnostics, rules, variants
from jaxlrp._core.trace import trace as _trace
from jaxlrp.models import recurrent

RNG = np.random.default_rng(0)


def _dense_relu_dense(p, x):
    return jnp.maximum(x @ p["w1"], 0) @ p["w2"]


def _mlp_params(seed=0, n_in=5, n_hid=4, n_out=3):
    r = np.random.default_rng(seed)
    return {"w1": r.normal(size=(n_in, n_hid)), "w2": r.normal(size=(n_hid, n_out))}


def _onehot(out, target):
    r = np.zeros_like(out)
    r[np.arange(len(out)), target] = out[np.arange(len(out)), target]
    return r


# ------------------------------------------------------------------ Relative LRP


def _np_neuron(x, w, r):
    """|x| |W|^T (R / (|x| |W|)) with 0 where the denominator is 0 (NumPy)."""
    d = np.abs(x) @ np.abs(w)
    s = np.divide(r, d, out=np.zeros_like(r), where=d != 0)
    return np.abs(x) * (s @ np.abs(w).T)


def _np_layer(x, w, r):
    """x W^T R rescaled per example to the L1 mass of R (NumPy)."""
    t = x * (r @ w.T)
    have, want = np.abs(t).sum(1, keepdims=True), np.abs(r).sum(1, keepdims=True)
    return t * np.divide(want, have, out=np.zeros_like(have), where=have != 0)


@pytest.mark.parametrize("mode", variants.RELATIVE_MODES)
def test_relative_against_numpy(mode):
    p = _mlp_params()
    x = RNG.normal(size=(3, 5))
    t = np.array([0, 2, 1])
    R = jaxlrp.lrp(_dense_relu_dense, variants.relative(mode=mode))(p, x, target=t)
    h = np.maximum(x @ p["w1"], 0)
    r_out = _onehot(h @ p["w2"], t)
    step = _np_neuron if mode == "neuron" else _np_layer
    ref = step(x, p["w1"], step(h, p["w2"], r_out))
    np.testing.assert_allclose(R, ref, rtol=1e-12, atol=1e-14)


def test_relative_conservation_up_to_a_factor():
    p = _mlp_params(1)
    x = RNG.normal(size=(4, 5))
    f = _dense_relu_dense(p, x)[:, 1]
    neuron = jaxlrp.lrp(_dense_relu_dense, variants.relative(mode="neuron"))(p, x, target=1)
    layer = jaxlrp.lrp(_dense_relu_dense, variants.relative(mode="layer"))(p, x, target=1)
    np.testing.assert_allclose(neuron.sum(1), f, rtol=1e-12)  # factor 1
    np.testing.assert_allclose(np.abs(layer).sum(1), np.abs(f), rtol=1e-12)  # L1 mass kept
    assert not np.allclose(layer.sum(1), f)  # the signed sum only up to a factor


def test_relative_no_small_denominators():
    # neuron 0 of the first layer has contributions +1 and -1: z = 0 exactly
    p = {"w1": np.array([[1.0, 2.0], [-1.0, 0.5]]), "w2": np.array([[1.0], [1.0]])}
    x = np.array([[1.0, 1.0]])
    f = lambda p, x: (x @ p["w1"]) @ p["w2"]  # no ReLU: z = 0 still carries relevance upward
    neuron = jaxlrp.lrp(f, variants.relative(mode="neuron"))(p, x, output_relevance=np.array([[1.0]]))
    zero = jaxlrp.lrp(f, composites.Composite([("linear", rules.Zero())]))(p, x, output_relevance=np.array([[1.0]]))
    # R at the hidden layer: |h_k w_k| shares of 1, h = (0, 2.5): all to neuron 1
    h = np.array([0.0, 2.5])
    assert np.all(np.isfinite(neuron))
    np.testing.assert_allclose(neuron, _np_neuron(x, p["w1"], _np_neuron(h[None], p["w2"], np.ones((1, 1)))))
    # a neuron whose only input is 0 passes nothing (documented), never NaN
    x0 = np.array([[0.0, 0.0]])
    z0 = jaxlrp.lrp(f, variants.relative(mode="neuron"))(p, x0, output_relevance=np.array([[1.0]]))
    np.testing.assert_array_equal(z0, 0.0)
    assert np.all(np.isfinite(zero))


def test_relative_no_hyperparameters():
    for mode in variants.RELATIVE_MODES:
        r = variants.Relative(mode=mode)
        assert {f.name for f in dataclasses.fields(r)} == {"rho", "mode"}
    with pytest.raises(ValueError, match="mode"):
        variants.relative(mode="pixel")


@pytest.mark.parametrize("mode", variants.RELATIVE_MODES)
def test_relative_scale_invariance(mode):
    p = _mlp_params(2)
    x = RNG.normal(size=(2, 5))
    explain = jaxlrp.lrp(_dense_relu_dense, variants.relative(mode=mode))
    R = np.asarray(explain(p, x, target=0))
    for c in (1e-3, 7.0):
        q = {"w1": c * p["w1"], "w2": p["w2"]}
        Rc = np.asarray(explain(q, x, target=0))
        # the output scales by c, the shares do not: R / f is unchanged
        np.testing.assert_allclose(Rc / c, R, rtol=1e-10)


def test_relative_neuron_aggregates():
    # average pooling, a scaling by a negative constant and a reduce_sum
    def f(p, x):
        y = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2), (1, 2), "VALID") / 2.0
        y = -3.0 * y
        return jnp.sum(y @ p["w"], axis=-1, keepdims=True)

    p = {"w": RNG.normal(size=(2, 3))}
    x = RNG.normal(size=(2, 4))
    R = jaxlrp.lrp(f, variants.relative(mode="neuron"))(p, x, output_relevance=np.ones((2, 1)))
    y = -1.5 * (x[:, 0::2] + x[:, 1::2])
    r_dense = np.ones((2, 3))  # the sum over 3 outputs: each output's share 1 of its relevance... per |contribution|
    r_dense = np.abs(y @ p["w"]) / np.abs(y @ p["w"]).sum(1, keepdims=True)  # reduce_sum: |z_k| shares
    r_y = _np_neuron(y, p["w"], r_dense)
    pair = np.abs(x.reshape(2, 2, 2))  # the pool: |x| shares within each window
    ref = (pair / pair.sum(-1, keepdims=True) * r_y[..., None]).reshape(2, 4)
    np.testing.assert_allclose(R, ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(R).sum(1), 1.0, rtol=1e-12)


# ------------------------------------------------------------------ Fact or Artifact


def _esn(a=0.3, size=5, **kw):
    return recurrent.landt_hayen_esn(a, reservoir_size=size, dtype=jnp.float64, **kw)


def _esn_reference(v, x, a):
    """The authors' loop (their notebook), for our ESN: z+ shares at the readout,
    alpha / 1 - alpha at the leak, z+ over the joint pre-activation, bias ignored."""
    res = v["reservoir"]
    w_in, w, b = (np.asarray(res[k]) for k in ("w_in", "w", "b"))
    w_out = np.asarray(v["params"]["readout"]["kernel"])[:, 0]
    b_out = float(np.asarray(v["params"]["readout"]["bias"])[0])
    U = np.asarray(recurrent.image_to_sequence(x, "columns"))[0]  # (T, F)
    T = len(U)
    X = [np.zeros(w.shape[0])]
    for t in range(T):
        X.append((1 - a) * X[-1] + a * np.tanh(U[t] @ w_in + X[-1] @ w + b))
    f = X[-1] @ w_out + b_out
    c = np.maximum(X[-1] * w_out, 0)
    R_x = c / c.sum() * f
    R_u = np.zeros_like(U)
    for t in reversed(range(T)):
        R_act = a * R_x
        cu = np.maximum(U[t][:, None] * w_in, 0)
        cx = np.maximum(X[t][:, None] * w, 0)
        d = cu.sum(0) + cx.sum(0)
        s = np.divide(R_act, d, out=np.zeros_like(d), where=d > 0)
        R_u[t] = cu @ s
        R_x = (1 - a) * R_x + cx @ s
    H, W, C = x.shape[1:]
    return R_u.reshape(W, H, C).transpose(1, 0, 2)[None], f


def test_esn_composite_against_authors_loop():
    a = 0.3
    m = _esn(a)
    x = RNG.normal(size=(1, 4, 6, 1))
    v = m.init(jax.random.PRNGKey(1), x)
    v = recurrent.fit_readout(m, v, np.concatenate([x, -x]), np.array([1, 0]))
    R = jaxlrp.lrp(m.apply, recurrent.esn_composite(m))(v, x, target=0)
    ref, f = _esn_reference(v, x, a)
    np.testing.assert_allclose(np.asarray(m.apply(v, x))[0, 0], f, rtol=1e-12)
    np.testing.assert_allclose(R, ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("a", [0.1, 0.3, 0.5])
def test_esn_fixed_split_decays_by_one_minus_a_per_step(a):
    # without recurrent weights, all of an activation's relevance goes to its input:
    # what reaches column t is a (1 - a)^(T - t) of the output
    m = _esn(a, size=6)
    x = np.abs(RNG.normal(size=(1, 3, 8, 1))) + 0.1
    v = m.init(jax.random.PRNGKey(2), x)
    v = jax.tree_util.tree_map(lambda t: t, v)
    v["reservoir"]["w"] = jnp.zeros_like(v["reservoir"]["w"])
    v["params"]["readout"]["kernel"] = jnp.ones_like(v["params"]["readout"]["kernel"])
    R = np.asarray(jaxlrp.lrp(m.apply, recurrent.esn_composite(m))(v, x, target=0))
    cols = R[0, :, :, 0].sum(0)  # the relevance of each column (step)
    np.testing.assert_allclose(cols[:-1] / cols[1:], 1 - a, rtol=1e-10)
    f = float(np.asarray(m.apply(v, x))[0, 0] - v["params"]["readout"]["bias"][0])
    np.testing.assert_allclose(cols.sum(), f * (1 - (1 - a) ** 8), rtol=1e-10)


def test_esn_composite_refuses_split_preactivation():
    with pytest.raises(ValueError, match="joint"):
        recurrent.esn_composite(recurrent.EchoStateNetwork(reservoir_size=4))
    m = recurrent.EchoStateNetwork(reservoir_size=4, leak_rate=0.3)
    x = RNG.normal(size=(1, 3, 3, 1))
    v = m.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="joint=True"):
        jaxlrp.lrp(m.apply, recurrent.esn_composite(0.3))(v, x, target=0)
    with pytest.raises(ValueError, match="FixedShares"):
        rules.FixedShares((0.5, 0.25, 0.25))(rules.Node("sum", (x, x), None, None, x, None), x)


def test_esn_authors_settings():
    m = _esn(0.2, size=40)
    x = RNG.normal(size=(1, 3, 3, 1))
    v = m.init(jax.random.PRNGKey(3), x)
    w = np.asarray(v["reservoir"]["w"])
    ev = np.linalg.eigvals(w)
    np.testing.assert_allclose(ev.real.max(), 0.8, rtol=1e-5)
    assert 0.2 < np.mean(w != 0) < 0.4  # 30% kept
    b = np.asarray(v["reservoir"]["b"])
    assert np.all(np.abs(b) <= 0.1) and np.any(b != 0)
    assert m.num_outputs == 1 and m.joint
    # the joint pre-activation computes the same states as the split one
    split = dataclasses.replace(m, joint=False)
    np.testing.assert_allclose(split.apply(v, x), m.apply(v, x), rtol=1e-12)


def test_invalid_points():
    x = RNG.normal(size=(3, 4, 5))
    x[1, 0, 0] = np.nan
    land = np.zeros((4, 5), bool)
    land[3, 4] = True
    valid = diagnostics.valid_points(x, invalid=land)
    assert valid.sum() == 18 and not valid[0, 0] and not valid[3, 4]
    clean = np.asarray(diagnostics.mask_invalid(x, valid))
    assert np.all(np.isfinite(clean)) and clean[0, 0, 0] == 0 and clean[2, 3, 4] == 0
    r = np.ones_like(x)
    masked, leaked = diagnostics.mask_relevance(r, valid)
    np.testing.assert_allclose(leaked, 2 / 20)
    assert masked[0, 0, 0] == 0 and masked[0, 1, 1] == 1
    flat = diagnostics.select_valid(x, valid)
    assert flat.shape == (3, 18)
    back = diagnostics.scatter_valid(flat, valid)
    np.testing.assert_array_equal(back[:, valid], x[:, valid])
    assert np.all(np.isnan(back[:, ~valid]))
    with pytest.raises(ValueError):
        diagnostics.select_valid(x, valid[:, :3])


def test_stripe_ratio():
    rng = np.random.default_rng(5)
    smooth = np.outer(1 + np.linspace(0, 1, 12), 1 + np.linspace(0, 1, 10))[None, :, :, None]
    stripes = smooth * (1 + (np.arange(12) % 2))[None, :, None, None]  # every other row doubled
    noise = rng.normal(size=(1, 12, 10, 1))
    assert diagnostics.stripe_ratio(stripes, axis=1)[0] > 3
    assert diagnostics.stripe_ratio(stripes, axis=2)[0] < 1 / 3
    assert 0.7 < diagnostics.stripe_ratio(noise, axis=1)[0] < 1.4
    assert diagnostics.stripe_ratio(np.zeros((2, 3, 3)), axis=1).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        diagnostics.stripe_ratio(noise, axis=3)


# ------------------------------------------------------------------ the Overview


@pytest.mark.parametrize("centered", [False, True])
def test_epsilon_std_against_numpy(centered):
    w, b = RNG.normal(size=(4, 6)), RNG.normal(size=6)
    x = RNG.normal(size=(3, 4))
    r = RNG.normal(size=(3, 6))
    rule = rules.EpsilonStd(0.25, epsilon=1e-9, centered=centered)
    R = jaxlrp.lrp(lambda p, x: x @ p["w"] + p["b"], rule=rule)({"w": w, "b": b}, x, output_relevance=r)
    z = x @ w + b
    c = z - z.mean(1, keepdims=True) if centered else z
    eps = 0.25 * np.sqrt((c ** 2).mean(1, keepdims=True)) + 1e-9  # per example
    ref = x * ((r / (z + eps * np.where(z >= 0, 1, -1))) @ w.T)
    np.testing.assert_allclose(R, ref, rtol=1e-12)
    # per example: an example's relevance does not depend on its batch
    R0 = jaxlrp.lrp(lambda p, x: x @ p["w"] + p["b"], rule=rule)({"w": w, "b": b}, x[:1], output_relevance=r[:1])
    np.testing.assert_allclose(R0, R[:1], rtol=1e-12)
    with pytest.raises(ValueError):
        rules.EpsilonStd(-1.0)


class _Pool(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(1, 1))  # overlapping windows
        return nn.Dense(2, use_bias=False, name="head")(x.reshape(len(x), -1))


def test_max_pool_rules_against_numpy():
    m = _Pool()
    x = RNG.normal(size=(2, 3, 3, 1))
    v = m.init(jax.random.PRNGKey(0), x)
    wh = np.asarray(v["params"]["head"]["kernel"])
    zero = ("linear", rules.Zero())
    explain = jaxlrp.lrp(m.apply, composites.Composite([zero, ("maxpool", rules.MaxPoolProportional(0.0))]))
    prop = explain(v, x, target=1)
    with jax.disable_jit():  # the uncompiled path equals the compiled one
        np.testing.assert_allclose(explain(v, x, target=1), prop, rtol=1e-12, atol=1e-15)
    wta = jaxlrp.lrp(m.apply, composites.Composite([zero]))(v, x, target=1)
    a = np.maximum(x[..., 0], 0)
    pooled = np.stack([[[a[n, i:i + 2, j:j + 2].max() for j in range(2)] for i in range(2)] for n in range(2)])
    r_pool = pooled.reshape(2, -1) * wh[:, 1]  # LRP-0 at the dense head, no bias
    r_pool = r_pool.reshape(2, 2, 2)
    ref = np.zeros_like(a)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                win = a[n, i:i + 2, j:j + 2]
                s = win.sum()
                if s > 0:
                    ref[n, i:i + 2, j:j + 2] += win / s * r_pool[n, i, j]
    np.testing.assert_allclose(prop[..., 0], ref, rtol=1e-12, atol=1e-15)
    grad_x = jax.grad(lambda x: m.apply(v, x)[:, 1].sum())(x) * x  # WTA + LRP-0 = gradient x input
    np.testing.assert_allclose(wta, grad_x, rtol=1e-12, atol=1e-15)


class _Tiers(nn.Module):
    @nn.compact
    def __call__(self, x):
        for k in range(4):
            x = nn.relu(nn.Conv(2, (3, 3), name=f"conv{k}")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(4, name="fc0")(x.reshape(len(x), -1)))
        return nn.Dense(2, name="fc1")(x)


def _assigned(comp, x):
    m = _Tiers()
    v = m.init(jax.random.PRNGKey(0), x)
    t = _trace(m.apply, comp, None, (v, x))
    return {l.key.split("/")[-1]: type(t.rules[l.index]).__name__ for l in t.layers if l.kind != "activation"}


def test_zero_epsilon_gamma_box_tiers():
    x = RNG.normal(size=(1, 4, 4, 1))
    got = _assigned(composites.ZeroEpsilonGammaBox(-3.0, 3.0), x)
    m = _Tiers()
    v = m.init(jax.random.PRNGKey(0), x)
    R = jaxlrp.lrp(m.apply, composites.ZeroEpsilonGammaBox(-3.0, 3.0))(v, x, target=0)
    assert np.all(np.isfinite(R)) and np.any(R != 0)
    assert got == {"conv0": "ZBox", "conv1": "Gamma", "conv2": "EpsilonStd", "conv3": "EpsilonStd",
                   "_Tiers": "MaxPoolProportional", "fc0": "Epsilon", "fc1": "Epsilon"}
    got = _assigned(composites.get("zero_epsilon_gamma_box", low=-3.0, high=3.0, lower="*conv[12]", maxpool="winner"), x)
    assert got["conv2"] == "Gamma" and got["conv3"] == "EpsilonStd" and got["_Tiers"] == "WinnerTakesAll"
    assert _assigned(composites.ZeroEpsilonGammaBox(-3.0, 3.0, lower=1.0), x)["conv3"] == "Gamma"
    with pytest.raises(ValueError, match="assign"):
        composites.ZeroEpsilonGammaBox(-3.0, 3.0).rule_for(composites.Layer(0, "conv", "conv_general_dilated", "c"))
    with pytest.raises(ValueError):
        composites.ZeroEpsilonGammaBox(-3.0, 3.0, lower=1.5)


def test_overview_is_a_deprecated_alias_of_zero_epsilon_gamma_box():
    """``composites.Overview`` and the name ``"overview"`` (renamed after the rules of
    the tiers) still build the same composite for one release, with a warning."""
    x = RNG.normal(size=(1, 4, 4, 1))
    m = _Tiers()
    v = m.init(jax.random.PRNGKey(0), x)
    new = composites.ZeroEpsilonGammaBox(-3.0, 3.0, lower="*conv[12]")
    with pytest.warns(DeprecationWarning, match="Overview is deprecated.*renamed composites.ZeroEpsilonGammaBox"):
        old = composites.Overview(-3.0, 3.0, lower="*conv[12]")
    assert isinstance(old, composites.ZeroEpsilonGammaBox) and old.rules == new.rules
    with pytest.warns(DeprecationWarning, match="'overview' is deprecated.*'zero_epsilon_gamma_box'"):
        by_name = composites.get("overview", low=-3.0, high=3.0)
    assert type(by_name) is composites.ZeroEpsilonGammaBox and "overview" not in composites.names()
    assert _assigned(by_name, x) == _assigned(composites.ZeroEpsilonGammaBox(-3.0, 3.0), x)
    with pytest.warns(DeprecationWarning, match="'overview' is deprecated") as caught:
        with pytest.raises(TypeError, match="needs the bounds"):  # as before: no default bounds
            jaxlrp.lrp(m.apply, "overview")
    assert caught[0].filename == __file__  # names the caller's line, not jaxlrp's
    with pytest.warns(DeprecationWarning):
        R_old = jaxlrp.lrp(m.apply, composites.Overview(-3.0, 3.0))(v, x, target=0)
    np.testing.assert_array_equal(R_old, jaxlrp.lrp(m.apply, composites.ZeroEpsilonGammaBox(-3.0, 3.0))(v, x, target=0))
