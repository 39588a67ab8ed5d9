"""Tests for the metrics added after Quantus' set: IROF, ROAD (with its imputation),
Infidelity, monotonicity correlation, average sensitivity, random logit, and the
bit-pattern sort of the Gini index.

Each is compared with an independent NumPy version written here with explicit loops,
on the same random draws (passed in), plus closed-form cases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxlrp import metrics
from jaxlrp.metrics import _complexity  # its private sort, checked directly

RNG = np.random.default_rng(0)
H = W = 6
C = 2
CLASSES = 3
WEIGHTS = RNG.normal(size=(H * W * C, CLASSES))


def model(x):
    z = x.reshape(x.shape[0], -1) @ jnp.asarray(WEIGHTS)
    return z + 0.1 * z**2  # mildly non-linear


def np_model(x):
    z = x.reshape(x.shape[0], -1) @ WEIGHTS
    return z + 0.1 * z**2


def data(seed, n=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, H, W, C)), rng.normal(size=(n, H, W, C))


def close(a, b, tol=1e-9):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ------------------------------------------------------------------ IROF


def ref_irof(x, r, segments, t, baseline):
    out = []
    for n in range(len(x)):
        f = lambda v: np_model(v[None])[0, t[n]]
        f0 = f(x[n])
        ids = [s for s in np.unique(segments[n])]
        means = [r[n][segments[n] == s].mean() for s in ids]
        order = [ids[i] for i in np.argsort(-np.asarray(means), kind="stable")]
        xp, curve = x[n].copy(), []
        for s in order:
            xp[segments[n] == s] = baseline[n][segments[n] == s]
            curve.append(f(xp) / f0)
        out.append(len(order) - np.trapezoid(curve))
    return np.asarray(out)


def test_irof_against_reference_grid_and_segments():
    x, r = data(1)
    t = np.argmax(np_model(x), 1)
    grid = np.repeat(np.repeat(np.arange(9).reshape(3, 3), 2, 0), 2, 1)
    segs = np.broadcast_to(grid, (3, H, W))
    close(metrics.irof(model, x, r, region=2, baseline=0.0), ref_irof(x, r, segs, t, np.zeros_like(x)))
    # irregular segments with a missing id and different counts per example
    s = RNG.integers(0, 5, size=(3, H, W)) * 2
    s[0][s[0] == 4] = 6
    mean = x.mean(axis=(1, 2), keepdims=True) * np.ones_like(x)
    close(metrics.irof(model, x, r, segments=s, baseline="mean"), ref_irof(x, r, s, t, mean))


# ------------------------------------------------------------------ ROAD


def ref_impute(x, removed, noise):
    """Dense solve of ROAD's equations for one image (H, W, C)."""
    offsets = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
               ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]
    idx = [(i, j) for i in range(H) for j in range(W) if removed[i, j]]
    pos = {p: k for k, p in enumerate(idx)}
    a = np.zeros((len(idx), len(idx)))
    b = np.zeros((len(idx), x.shape[-1]))
    for k, (i, j) in enumerate(idx):
        for (di, dj), w in offsets:
            u, v = i + di, j + dj
            if 0 <= u < H and 0 <= v < W:
                a[k, k] += w
                if (u, v) in pos:
                    a[k, pos[(u, v)]] -= w
                else:
                    b[k] += w * x[u, v]
    out = x.copy()
    if idx:
        sol = np.linalg.solve(a, b)
        for k, (i, j) in enumerate(idx):
            out[i, j] = sol[k] + noise[i, j]
    return out


def test_noisy_linear_imputation_against_dense_solve():
    x, z = data(2, n=2)
    removed = RNG.random((2, H, W)) < 0.7
    got = metrics.noisy_linear_imputation(x, removed, 0.01 * z)
    for n in range(2):
        close(got[n], ref_impute(x[n], removed[n], 0.01 * z[n]), 1e-8)


def test_road_against_reference():
    x, r = data(3)
    pct = (10, 40, 80)
    draws = np.random.default_rng(4).normal(size=(len(pct),) + x.shape)
    t = np.argmax(np_model(x), 1)
    got = metrics.road(model, x, r, percentages=pct, draws=draws, noise=0.05)
    rs = r.sum(-1)
    for n in range(len(x)):
        order = np.argsort(-rs[n].ravel(), kind="stable")
        for k, p in enumerate(pct):
            removed = np.zeros(H * W, bool)
            removed[order[: int(H * W * p / 100)]] = True
            xi = ref_impute(x[n], removed.reshape(H, W), 0.05 * draws[k, n])
            assert got[n, k] == float(np.argmax(np_model(xi[None])[0]) == t[n])


# ------------------------------------------------------------------ infidelity


def test_infidelity_against_reference_and_zero_for_the_gradient_of_a_linear_model():
    x, r = data(5)
    p = np.random.default_rng(6).normal(size=(7,) + x.shape) * 0.3
    t = np.array([0, 2, 1])
    for normalize in (False, True):
        got = metrics.infidelity(model, x, r, t, perturbations=p, normalize=normalize)
        ref = []
        for n in range(3):
            dots = np.array([np.sum(p[k, n] * r[n]) for k in range(7)])
            drops = np.array([np_model(x[n][None])[0, t[n]] - np_model((x[n] - p[k, n])[None])[0, t[n]]
                              for k in range(7)])
            beta = (dots @ drops) / (dots @ dots) if normalize else 1.0
            ref.append(np.mean((beta * dots - drops) ** 2))
        close(got, ref)
    linear = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(WEIGHTS)
    grad = np.broadcast_to(WEIGHTS[:, 1].reshape(H, W, C), x.shape)
    close(metrics.infidelity(linear, x, grad, 1, key=jax.random.key(0, impl="rbg")), np.zeros(3))


# ------------------------------------------------------------------ monotonicity correlation


def test_monotonicity_correlation_against_reference():
    x, r = data(7)
    u = np.random.default_rng(8).random((4,) + x.shape)
    per = 5
    got = metrics.monotonicity_correlation(model, x, r, draws=u, features_per_step=per)
    t = np.argmax(np_model(x), 1)
    ref = []
    for n in range(3):
        f0 = np_model(x[n][None])[0, t[n]]
        inv = 1 / f0**2 if abs(f0) >= 1e-5 else 1.0
        flat_r = r[n].ravel()
        order = np.argsort(flat_r, kind="stable")
        atts, var = [], []
        for s in range(0, flat_r.size, per):
            g = order[s:s + per]
            atts.append(flat_r[g].sum())
            ys = []
            for k in range(4):
                xp = x[n].ravel().copy()
                xp[g] = u[k, n].ravel()[g]
                ys.append(np_model(xp.reshape(1, H, W, C))[0, t[n]])
            var.append(np.mean((np.asarray(ys) - f0) ** 2) * inv)
        ref.append(scipy.stats.spearmanr(atts, var)[0])
    close(got, ref)


# ------------------------------------------------------------------ sensitivity and random logit


def test_avg_sensitivity_against_reference():
    x, _ = data(9)
    noise = np.random.default_rng(10).uniform(-0.2, 0.2, size=(5,) + x.shape)
    explain = lambda v: jnp.tanh(v) * 3.0
    for relative in (True, False):
        got = metrics.avg_sensitivity(explain, x, noise=noise, relative=relative)
        ref = []
        for n in range(3):
            r0 = np.tanh(x[n]) * 3
            s = [np.linalg.norm((np.tanh(x[n] + noise[k, n]) * 3 - r0).ravel()) for k in range(5)]
            ref.append(np.mean(s) / (np.linalg.norm(r0.ravel()) if relative else 1))
        close(got, ref)


def test_random_logit_against_reference_and_draws_other_classes():
    x, _ = data(11)
    w = WEIGHTS.reshape(H, W, C, CLASSES)
    explain = lambda v, t: v * jnp.moveaxis(jnp.asarray(w)[..., t], -1, 0)
    t, other = np.array([0, 1, 2]), np.array([2, 0, 1])
    got = metrics.random_logit(explain, x, t, other=other)
    ref = [scipy.stats.spearmanr((x[n] * w[..., t[n]]).ravel(), (x[n] * w[..., other[n]]).ravel())[0]
           for n in range(3)]
    close(got, ref)
    drawn = jax.random.randint(jax.random.key(1, impl="rbg"), (3,), 1, CLASSES)
    got = metrics.random_logit(explain, x, t, classes=CLASSES, key=jax.random.key(1, impl="rbg"))
    ref = metrics.random_logit(explain, x, t, other=(t + np.asarray(drawn)) % CLASSES)
    close(got, ref)
    with pytest.raises(ValueError, match="differ"):
        metrics.random_logit(explain, x, t, other=t)


# ------------------------------------------------------------------ Gini and compositions


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_pattern_sort_equals_float_sort(dtype):
    a = np.abs(RNG.normal(size=(4, 300))).astype(dtype)
    a[0, :10] = 0.0
    a[1, 5] = np.inf
    a[2, :50] = a[2, 50:100]  # ties
    a[3] = -0.0
    got = _complexity._sort_magnitudes(jnp.abs(jnp.asarray(a)))
    np.testing.assert_array_equal(np.asarray(got), np.sort(np.abs(a), axis=1))


def test_new_metrics_jit_and_errors():
    x, r = data(12)
    got = jax.jit(lambda x, r: metrics.irof(model, x, r, region=3, baseline=0.0))(x, r)
    close(got, metrics.irof(model, x, r, region=3, baseline=0.0))
    with pytest.raises(ValueError, match="percentages"):
        metrics.road(model, x, r, percentages=(100,))
    with pytest.raises(ValueError, match="perturbations"):
        metrics.infidelity(model, x, r, perturbations=np.zeros(x.shape))
    with pytest.raises(ValueError, match="PRNG key"):
        metrics.monotonicity_correlation(model, x, r)
    with pytest.raises(ValueError, match="segments"):
        metrics.irof(model, x, r, segments=np.zeros((3, H)))
