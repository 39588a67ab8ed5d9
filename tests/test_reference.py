"""Self-checks of the NumPy LRP oracle in ``tests/reference.py``.

Every check here is independent of the library under test.  JAX is used only
to cross-check the convolution / pooling forward passes and the gradient.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def rel_err(a, b):
    """Norm-wise relative error ``||a - b|| / ||b||``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-300)


@pytest.fixture(scope="module")
def jx():
    """(jax, jax.numpy, jax.lax) with float64 enabled."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax import lax
    return jax, jnp, lax


def jax_conv(jx, x, kernel, strides, padding, dilation, groups):
    _, jnp, lax = jx
    y = lax.conv_general_dilated(
        jnp.asarray(x)[None], jnp.asarray(kernel), tuple(strides),
        [tuple(p) for p in padding], rhs_dilation=tuple(dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return np.asarray(y[0])


CONV_CASES = [
    # in_shape, (kh, kw), c_out, strides, padding, dilation, groups
    ((5, 6, 3), (3, 3), 4, (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ((7, 6, 2), (3, 2), 3, (2, 3), ((1, 2), (0, 1)), (1, 1), 1),
    ((8, 7, 2), (3, 3), 2, (1, 2), ((2, 1), (1, 1)), (2, 3), 1),
    ((6, 6, 4), (2, 3), 6, (1, 1), ((1, 1), (1, 0)), (1, 1), 2),
    ((6, 5, 3), (3, 3), 6, (2, 1), ((1, 1), (2, 2)), (2, 1), 3),  # depthwise x2
    ((6, 6, 2), (3, 3), 2, (1, 1), ((-1, 1), (0, -1)), (1, 1), 1),  # cropping
]


# ---------------------------------------------------------------------------
# Part 1: matrices
# ---------------------------------------------------------------------------
def test_dense_matrix():
    rng = np.random.default_rng(0)
    w, b, x = rng.normal(size=(5, 3)), rng.normal(size=3), rng.normal(size=5)
    A = ref.dense_matrix(w)
    assert A.shape == (3, 5) and A.dtype == np.float64
    np.testing.assert_allclose(A @ x + b, x @ w + b, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(A, w.T)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matrix_matches_jax(jx, case):
    in_shape, (kh, kw), cout, strides, padding, dilation, groups = case
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(kh, kw, in_shape[2] // groups, cout))
    x = rng.normal(size=in_shape)
    A, out_shape = ref.conv_matrix(kernel, in_shape, strides, padding, dilation, groups)
    y = jax_conv(jx, x, kernel, strides, padding, dilation, groups)
    assert y.shape == tuple(out_shape)
    assert A.shape == (int(np.prod(out_shape)), int(np.prod(in_shape)))
    np.testing.assert_allclose(A @ x.ravel(), y.ravel(), rtol=1e-12, atol=1e-12)
    # modified-weight matrices are the same operator on the modified kernel
    Ap, _ = ref.conv_matrix(np.maximum(kernel, 0), in_shape, strides, padding, dilation, groups)
    yp = jax_conv(jx, x, np.maximum(kernel, 0), strides, padding, dilation, groups)
    np.testing.assert_allclose(Ap @ x.ravel(), yp.ravel(), rtol=1e-12, atol=1e-12)
    # flat matrix: exactly 0/1, ones where a connection exists
    A1, _ = ref.conv_matrix(np.ones_like(kernel), in_shape, strides, padding, dilation, groups)
    assert set(np.unique(A1)) <= {0.0, 1.0}
    np.testing.assert_array_equal(A1 != 0, A != 0)
    y1 = jax_conv(jx, np.ones(in_shape), np.ones_like(kernel), strides, padding, dilation, groups)
    np.testing.assert_array_equal(A1.sum(axis=1), y1.ravel())


def test_conv_matrix_detects_wrong_layout(jx):
    """Negative control: a swapped kernel layout must not match JAX."""
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(3, 2, 2, 2))
    x = rng.normal(size=(5, 5, 2))
    A, _ = ref.conv_matrix(kernel.transpose(1, 0, 2, 3), (5, 5, 2))
    y = jax_conv(jx, x, kernel, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    assert A.shape[0] != y.size or rel_err(A @ x.ravel(), y.ravel()) > 1e-3


def test_pooling_matches_jax(jx):
    _, jnp, lax = jx
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 6, 3))
    for window, stride in [((2, 2), (2, 2)), ((3, 2), (1, 2)), ((2, 3), (2, 1))]:
        y, winners = ref.maxpool_forward(x, window, stride)
        yj = lax.reduce_window(jnp.asarray(x), -jnp.inf, lax.max, (*window, 1), (*stride, 1), "VALID")
        np.testing.assert_array_equal(y, np.asarray(yj))
        np.testing.assert_array_equal(x.ravel()[winners], y.ravel())
        A, out_shape = ref.avgpool_matrix(x.shape, window, stride)
        ya = lax.reduce_window(jnp.asarray(x), 0.0, lax.add, (*window, 1), (*stride, 1), "VALID")
        ya = np.asarray(ya) / (window[0] * window[1])
        np.testing.assert_allclose((A @ x.ravel()).reshape(out_shape), ya, rtol=1e-13, atol=1e-13)
        # average pooling is a depthwise conv with a constant kernel
        k = np.full((*window, 1, 3), 1.0 / (window[0] * window[1]))
        Ac, _ = ref.conv_matrix(k, x.shape, stride, ((0, 0), (0, 0)), (1, 1), 3)
        np.testing.assert_allclose(A, Ac, rtol=0, atol=1e-15)


def test_maxpool_first_max_and_overlap():
    x = np.zeros((3, 3, 1))
    x[0, 1, 0] = x[1, 0, 0] = 5.0  # tie inside window (0, 0)
    y, winners = ref.maxpool_forward(x, 2, 1)
    assert y[0, 0, 0] == 5.0 and winners[0] == 1  # (0, 1) comes first in row-major order
    # all-equal windows: winner is the top-left element of each window
    y, winners = ref.maxpool_forward(np.ones((3, 3, 1)), 2, 1)
    np.testing.assert_array_equal(winners, [0, 1, 3, 4])
    # overlapping windows add their relevance on a shared winner
    x = np.zeros((3, 3, 1))
    x[1, 1, 0] = 1.0
    layers = [("maxpool", 2, 1), ("flatten",), ("dense", np.ones((4, 1)), None)]
    R, logits = ref.network_lrp(layers, x, 0, [("zero", {})])
    assert logits[0] == 4.0
    expected = np.zeros((3, 3, 1))
    expected[1, 1, 0] = 4.0
    np.testing.assert_allclose(R, expected, rtol=1e-14)


# ---------------------------------------------------------------------------
# Part 2: one-layer rules
# ---------------------------------------------------------------------------
def dense_layer(rng, n=7, m=5, bias=True):
    w = rng.normal(size=(n, m))
    b = rng.normal(size=m) if bias else None
    return w, b, ref.dense_matrix


def conv_layer(rng, bias=True):
    # 3 input channels per group so every output sees >= 18 inputs (no
    # all-same-sign receptive fields, which would make zplus/alphabeta
    # denominators vanish and legitimately break conservation)
    in_shape = (5, 5, 6)
    kernel = rng.normal(size=(3, 3, 3, 4))
    kw = dict(strides=(2, 1), padding=((1, 1), (1, 0)), rhs_dilation=(1, 1), groups=2)
    _, out_shape = ref.conv_matrix(kernel, in_shape, **kw)
    b = np.tile(rng.normal(size=4), out_shape[0] * out_shape[1]) if bias else None
    return kernel, b, lambda k: ref.conv_matrix(k, in_shape, **kw)[0]


def layer_and_input(kind, rng, bias=True, positive=False):
    w, b, to_matrix = (dense_layer if kind == "dense" else conv_layer)(rng, bias=bias)
    n = to_matrix(w).shape[1]
    x = rng.normal(size=n)
    if positive:
        x = np.abs(x) + 0.1
    return x, w, b, to_matrix


CONSERVING = [
    ("zero", {}, False),
    ("epsilon", {"epsilon": 0.0}, False),
    ("zplus", {"stabilizer": 0.0}, False),
    ("alphabeta", {"alpha": 2.0, "beta": 1.0, "stabilizer": 0.0}, False),
    ("alphabeta", {"alpha": 1.5, "beta": 0.5, "stabilizer": 0.0}, False),
    ("flat", {"stabilizer": 0.0}, False),
    ("wsquare", {"stabilizer": 0.0}, False),
    ("zbox", {"low": -3.0, "high": 3.0, "stabilizer": 0.0}, False),
    ("gamma", {"gamma": 0.25, "stabilizer": 0.0}, True),
    ("gamma", {"gamma": 2.0, "stabilizer": 0.0}, True),
]


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("rule,params,positive", CONSERVING)
def test_conservation_zero_bias(kind, rule, params, positive):
    rng = np.random.default_rng(10)
    for trial in range(5):
        x, w, b, to_matrix = layer_and_input(kind, rng, bias=False, positive=positive)
        if rule == "zbox":
            x = np.clip(x, -3.0, 3.0)
        m = to_matrix(w).shape[0]
        R = rng.normal(size=m)
        R_in = ref.lrp_linear(rule, x, w, b, R, to_matrix, **params)
        assert R_in.shape == x.shape and np.all(np.isfinite(R_in))
        assert abs(R_in.sum() - R.sum()) <= 1e-10 * np.abs(R).sum()
        # with a nonzero bias that is ignored, conservation must still hold
        b2 = rng.normal(size=m) + 2.0
        R_in2 = ref.lrp_linear(rule, x, w, b2, R, to_matrix, ignore_bias=True, **params)
        if rule == "gamma":  # the bias still selects gamma's branch (the sign of z)
            assert abs(R_in2.sum() - R.sum()) <= 1e-10 * np.abs(R).sum()
        else:
            np.testing.assert_allclose(R_in2, R_in, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule,params", [
    ("zero", {}), ("zplus", {"stabilizer": 0.0}), ("wsquare", {"stabilizer": 0.0}),
])
def test_conservation_breaks_with_bias(rule, params):
    """Negative control: a nonzero (not ignored) bias absorbs relevance."""
    rng = np.random.default_rng(11)
    x, w, b, to_matrix = layer_and_input("dense", rng, bias=True)
    b = b + 3.0  # makes b+ and b**2 clearly nonzero
    R = np.abs(rng.normal(size=b.shape[0]))
    R_in = ref.lrp_linear(rule, x, w, b, R, to_matrix, **params)
    assert abs(R_in.sum() - R.sum()) > 1e-3 * np.abs(R).sum()


def test_flat_is_input_independent_and_uniform():
    rng = np.random.default_rng(12)
    x, w, b, to_matrix = layer_and_input("conv", rng)
    R = rng.normal(size=to_matrix(w).shape[0])
    r1 = ref.lrp_linear("flat", x, w, b, R, to_matrix, stabilizer=0.0)
    r2 = ref.lrp_linear("flat", 5 * x + 1, -w, None, R, to_matrix, stabilizer=0.0)
    np.testing.assert_allclose(r1, r2, rtol=1e-14)
    A1 = to_matrix(np.ones_like(w))
    expected = A1.T @ (R / A1.sum(axis=1))
    np.testing.assert_allclose(r1, expected, rtol=1e-13)


# --- explicit per-connection formulas (no matrices involved for dense) -----
def contributions(x, w):
    """z_jk = x_j w_jk, shape (n, m)."""
    return x[:, None] * w


def test_dense_rules_match_per_connection_formulas():
    rng = np.random.default_rng(20)
    n, m = 6, 4
    x, w, b = rng.normal(size=n), rng.normal(size=(n, m)), rng.normal(size=m)
    R = rng.normal(size=m)
    to_matrix = ref.dense_matrix
    zjk = contributions(x, w)
    z = zjk.sum(0) + b
    eps = 0.3

    def sgn(d):
        return np.where(d >= 0, 1.0, -1.0)

    # epsilon
    exp = (zjk / (z + eps * sgn(z))) @ R
    np.testing.assert_allclose(ref.lrp_linear("epsilon", x, w, b, R, to_matrix, epsilon=eps),
                               exp, rtol=1e-12)
    # zplus: positive contributions, b+ in the denominator
    zp = np.maximum(zjk, 0)
    dp = zp.sum(0) + np.maximum(b, 0)
    exp = (zp / (dp + eps * sgn(dp))) @ R
    np.testing.assert_allclose(ref.lrp_linear("zplus", x, w, b, R, to_matrix, stabilizer=eps),
                               exp, rtol=1e-12)
    # alphabeta
    zn = np.minimum(zjk, 0)
    dn = zn.sum(0) + np.minimum(b, 0)
    alpha, beta = 3.0, 2.0
    exp = alpha * (zp / (dp + eps * sgn(dp))) @ R - beta * (zn / (dn + eps * sgn(dn))) @ R
    np.testing.assert_allclose(
        ref.lrp_linear("alphabeta", x, w, b, R, to_matrix, alpha=alpha, beta=beta, stabilizer=eps),
        exp, rtol=1e-12)
    # gamma: z_jk + g z_jk^+ for z_k > 0, z_jk + g z_jk^- for z_k < 0
    g = 0.7
    gp = zjk + g * zp
    gn = zjk + g * zn
    dgp = gp.sum(0) + b + g * np.maximum(b, 0)
    dgn = gn.sum(0) + b + g * np.minimum(b, 0)
    exp = (gp / (dgp + eps * sgn(dgp))) @ (R * (z > 0)) + (gn / (dgn + eps * sgn(dgn))) @ (R * (z < 0))
    assert np.any(z > 0) and np.any(z < 0)
    np.testing.assert_allclose(ref.lrp_linear("gamma", x, w, b, R, to_matrix, gamma=g, stabilizer=eps),
                               exp, rtol=1e-12)
    # zbox with per-feature bounds
    low, high = x - rng.uniform(0.1, 1, size=n), x + rng.uniform(0.1, 1, size=n)
    zb = zjk - low[:, None] * np.maximum(w, 0) - high[:, None] * np.minimum(w, 0)
    db = zb.sum(0)
    exp = (zb / (db + eps * sgn(db))) @ R
    np.testing.assert_allclose(
        ref.lrp_linear("zbox", x, w, b, R, to_matrix, low=low, high=high, stabilizer=eps),
        exp, rtol=1e-12)
    # wsquare (bias squared in the denominator)
    w2 = w ** 2
    d2 = w2.sum(0) + b ** 2
    exp = (w2 / (d2 + eps)) @ R
    np.testing.assert_allclose(ref.lrp_linear("wsquare", x, w, b, R, to_matrix, stabilizer=eps),
                               exp, rtol=1e-12)
    exp = (w2 / (w2.sum(0) + eps)) @ R
    np.testing.assert_allclose(
        ref.lrp_linear("wsquare", x, w, b, R, to_matrix, stabilizer=eps, ignore_bias=True),
        exp, rtol=1e-12)
    # flat
    exp = (np.ones((n, m)) / (n + eps)) @ R
    np.testing.assert_allclose(ref.lrp_linear("flat", x, w, b, R, to_matrix, stabilizer=eps),
                               exp, rtol=1e-12)
    # norm on a sum-pooling matrix
    S = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1.0]])
    s = S @ x
    exp = (S * x[None, :]).T @ (R[:3] / (s + eps * sgn(s)))
    np.testing.assert_allclose(ref.lrp_linear("norm", x, None, None, R[:3], lambda _: S, stabilizer=eps),
                               exp, rtol=1e-12)


def test_default_parameters():
    rng = np.random.default_rng(21)
    x, w, b, tm = layer_and_input("dense", rng)
    R = rng.normal(size=b.shape[0])
    pairs = [
        ("epsilon", {}, {"epsilon": 1e-6}),
        ("zplus", {}, {"stabilizer": 1e-6}),
        ("alphabeta", {}, {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6}),
        ("gamma", {}, {"gamma": 0.25, "stabilizer": 1e-6}),
        ("flat", {}, {"stabilizer": 1e-6}),
        ("wsquare", {}, {"stabilizer": 1e-6}),
    ]
    for rule, short, full in pairs:
        np.testing.assert_array_equal(ref.lrp_linear(rule, x, w, b, R, tm, **short),
                                      ref.lrp_linear(rule, x, w, b, R, tm, **full))
    np.testing.assert_array_equal(ref.lrp_linear("zero", x, w, b, R, tm),
                                  ref.lrp_linear("epsilon", x, w, b, R, tm, epsilon=0.0))
    with pytest.raises(TypeError):
        ref.lrp_linear("zplus", x, w, b, R, tm, epsilon=1.0)
    with pytest.raises(ValueError):
        ref.lrp_linear("nope", x, w, b, R, tm)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_gamma_zero_equals_zero_rule(kind):
    rng = np.random.default_rng(30)
    x, w, b, tm = layer_and_input(kind, rng, bias=True)
    z = tm(w) @ x + b
    assert np.all(z != 0)
    R = rng.normal(size=z.shape[0])
    r_gamma = ref.lrp_linear("gamma", x, w, b, R, tm, gamma=0.0, stabilizer=0.0)
    r_zero = ref.lrp_linear("zero", x, w, b, R, tm)
    np.testing.assert_allclose(r_gamma, r_zero, rtol=1e-12, atol=1e-12 * np.abs(r_zero).max())
    # negative control: gamma > 0 differs
    r_g = ref.lrp_linear("gamma", x, w, b, R, tm, gamma=0.5, stabilizer=0.0)
    assert rel_err(r_g, r_zero) > 1e-3


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_alphabeta_1_0_equals_zplus(kind):
    rng = np.random.default_rng(31)
    x, w, b, tm = layer_and_input(kind, rng, bias=True, positive=True)
    R = rng.normal(size=tm(w).shape[0])
    for stab in (0.0, 1e-6, 0.5):
        r_ab = ref.lrp_linear("alphabeta", x, w, b, R, tm, alpha=1.0, beta=0.0, stabilizer=stab)
        r_zp = ref.lrp_linear("zplus", x, w, b, R, tm, stabilizer=stab)
        np.testing.assert_allclose(r_ab, r_zp, rtol=1e-13, atol=1e-15)
    r_ab = ref.lrp_linear("alphabeta", x, w, b, R, tm, stabilizer=0.0)
    assert rel_err(r_ab, r_zp) > 1e-3  # negative control


def test_stabilizer_sign_and_zero_denominator():
    np.testing.assert_array_equal(ref.stabilize([-2.0, 0.0, 3.0], 0.5), [-2.5, 0.5, 3.5])
    np.testing.assert_array_equal(ref.safe_divide([1.0, 2.0], [0.0, 4.0]), [0.0, 0.5])
    # zero rule on an output with z == 0 exactly: that output passes nothing, no NaN
    w = np.array([[1.0, 1.0], [-1.0, 2.0]])
    x = np.array([1.0, 1.0])  # z = [0, 3]
    R = np.array([5.0, 3.0])
    r = ref.lrp_linear("zero", x, w, None, R, ref.dense_matrix)
    np.testing.assert_allclose(r, [1.0, 2.0], rtol=1e-15)
    # gamma: an output with z == 0 passes no relevance
    r = ref.lrp_linear("gamma", x, w, None, R, ref.dense_matrix, gamma=0.25, stabilizer=0.0)
    assert np.isclose(r.sum(), 3.0, rtol=1e-14)


# ---------------------------------------------------------------------------
# Part 3: networks
# ---------------------------------------------------------------------------
def mlp(rng):
    return [
        ("dense", rng.normal(size=(6, 8)), rng.normal(size=8)),
        ("relu",),
        ("dense", rng.normal(size=(8, 7)), rng.normal(size=7)),
        ("relu",),
        ("dense", rng.normal(size=(7, 4)), rng.normal(size=4)),
    ]


def cnn(rng):
    return [
        ("conv", rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4), (1, 1), ((1, 1), (1, 1)), 1),
        ("relu",),
        ("maxpool", (2, 2), (2, 2)),
        ("conv", rng.normal(size=(2, 2, 2, 6)), rng.normal(size=6), (1, 2), ((1, 0), (0, 1)), 2),
        ("relu",),
        ("maxpool", (2, 2), (1, 1)),  # overlapping windows
        ("flatten",),
        ("dense", rng.normal(size=(12, 5)), rng.normal(size=5)),
        ("relu",),
        ("dense", rng.normal(size=(5, 3)), rng.normal(size=3)),
    ]


def resnet_avg(rng):
    return [
        ("conv", rng.normal(size=(3, 3, 2, 3)), rng.normal(size=3), (1, 1), ((1, 1), (1, 1)), 1),
        ("relu",),
        ("residual_start",),
        ("conv", rng.normal(size=(3, 3, 3, 3)), rng.normal(size=3), (1, 1), ((1, 1), (1, 1)), 1),
        ("relu",),
        ("residual_start",),
        ("conv", rng.normal(size=(1, 1, 3, 3)), rng.normal(size=3), (1, 1), ((0, 0), (0, 0)), 1),
        ("residual_add",),
        ("residual_add",),
        ("relu",),
        ("avgpool", (2, 2), (2, 2)),
        ("flatten",),
        ("dense", rng.normal(size=(18, 3)), rng.normal(size=3)),
    ]


def n_weighted(layers):
    return sum(layer[0] in ("dense", "conv") for layer in layers)


NETS = [("mlp", mlp, (6,)), ("cnn", cnn, (6, 6, 2)), ("resnet_avg", resnet_avg, (4, 6, 2))]


@pytest.mark.parametrize("name,make,in_shape", NETS)
def test_lrp_zero_equals_input_times_gradient(name, make, in_shape):
    rng = np.random.default_rng(40)
    layers = make(rng)
    rules = [("zero", {})] * n_weighted(layers)
    stabs = dict(pool_stabilizer=0.0, add_stabilizer=0.0)
    for trial in range(3):
        x = rng.normal(size=in_shape)
        logits = ref.forward(layers, x)
        for target in range(logits.shape[0]):
            R, lg = ref.network_lrp(layers, x, target, rules, **stabs)
            np.testing.assert_array_equal(lg, logits)
            g = ref.network_grad(layers, x, target)
            assert R.shape == x.shape and g.shape == x.shape
            xg = x * g
            assert np.linalg.norm(xg) > 0
            assert rel_err(R, xg) <= 1e-9, (name, target, rel_err(R, xg))
        # ReLU gating must actually matter in these tests
        acts = np.maximum(ref.forward(layers[:2], x), 0)
        assert np.any(acts == 0)
    # negative control: zplus is not gradient x input
    R, _ = ref.network_lrp(layers, x, 0, [("zplus", {})] * n_weighted(layers), **stabs)
    assert rel_err(R, x * ref.network_grad(layers, x, 0)) > 1e-3


def test_default_pool_stabilizer_close_to_exact():
    rng = np.random.default_rng(41)
    layers = resnet_avg(rng)
    x = rng.normal(size=(4, 6, 2))
    rules = [("zero", {})] * n_weighted(layers)
    R0, _ = ref.network_lrp(layers, x, 1, rules, pool_stabilizer=0.0, add_stabilizer=0.0)
    R1, _ = ref.network_lrp(layers, x, 1, rules)
    assert 0 < rel_err(R1, R0) < 1e-3


def test_network_conservation_zplus_without_bias():
    rng = np.random.default_rng(42)
    layers = [(l[0], l[1], None, *l[3:]) if l[0] in ("dense", "conv") else l for l in cnn(rng)]
    x = np.abs(rng.normal(size=(6, 6, 2)))
    rules = [("zplus", {"stabilizer": 0.0})] * n_weighted(layers)
    logits = ref.forward(layers, x)
    t = int(np.argmax(logits))
    R, _ = ref.network_lrp(layers, x, t, rules)
    assert abs(R.sum() - logits[t]) <= 1e-10 * abs(logits[t])


def test_network_zbox_first_layer_bounds_broadcast():
    rng = np.random.default_rng(43)
    layers = cnn(rng)
    x = rng.uniform(-1, 1, size=(6, 6, 2))
    rules = [("zbox", {"low": -1.0, "high": np.ones(2)})] + [("zero", {})] * (n_weighted(layers) - 1)
    R, _ = ref.network_lrp(layers, x, 0, rules)
    assert R.shape == x.shape and np.all(np.isfinite(R))


def jax_forward(jx, layers, x):
    """The same network written with JAX primitives."""
    _, jnp, lax = jx
    a = x
    stack = []
    for layer in layers:
        kind = layer[0]
        if kind == "dense":
            a = a @ layer[1] + layer[2]
        elif kind == "conv":
            _, k, b, s, p, g = layer
            a = lax.conv_general_dilated(a[None], k, s, [tuple(q) for q in p],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=g)[0] + b
        elif kind == "relu":
            a = jnp.maximum(a, 0.0)
        elif kind == "maxpool":
            w, s = ref._pair(layer[1]), ref._pair(layer[2])
            a = lax.reduce_window(a, -jnp.inf, lax.max, (*w, 1), (*s, 1), "VALID")
        elif kind == "avgpool":
            w, s = ref._pair(layer[1]), ref._pair(layer[2])
            a = lax.reduce_window(a, 0.0, lax.add, (*w, 1), (*s, 1), "VALID") / (w[0] * w[1])
        elif kind == "flatten":
            a = a.ravel()
        elif kind == "residual_start":
            stack.append(a)
        elif kind == "residual_add":
            a = a + stack.pop()
    return a


@pytest.mark.parametrize("name,make,in_shape", NETS)
def test_forward_and_grad_match_jax(jx, name, make, in_shape):
    jax, jnp, _ = jx
    rng = np.random.default_rng(50)
    layers = make(rng)
    x = rng.normal(size=in_shape)
    logits = ref.forward(layers, x)
    np.testing.assert_allclose(logits, np.asarray(jax_forward(jx, layers, jnp.asarray(x))),
                               rtol=1e-12, atol=1e-12)
    for t in range(logits.shape[0]):
        gj = jax.grad(lambda v: jax_forward(jx, layers, v)[t])(jnp.asarray(x))
        assert rel_err(ref.network_grad(layers, x, t), np.asarray(gj)) <= 1e-12
