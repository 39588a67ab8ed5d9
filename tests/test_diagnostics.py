"""Artifact diagnostics: every function against cases with a known answer."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import diagnostics, rules


def _mlp(bias):
    rng = np.random.default_rng(0)
    p = {"w1": rng.normal(size=(5, 8)), "b1": rng.normal(size=8) * bias, "w2": rng.normal(size=(8, 3))}
    return (lambda p, x: jnp.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]), p, rng.normal(size=(4, 5))


def test_absorption_is_zero_for_conservative_rules_and_not_with_biases():
    fn, p, x = _mlp(bias=0.0)
    rep = jaxlrp.inspect(fn, rule=rules.ZPlus(0.0), verbose=False)(p, x, target=0)
    assert all(abs(v) < 1e-10 for v in diagnostics.absorption(rep).values())
    fn, p, x = _mlp(bias=1.0)
    rep = jaxlrp.inspect(fn, rule=rules.Epsilon(0.5), verbose=False)(p, x, target=0)
    a = diagnostics.absorption(rep)
    assert set(a) == {"w1", "w2"} and max(abs(v) for v in a.values()) > 1e-3


def test_border_mass():
    r = np.zeros((2, 6, 5, 1))
    r[0, 0, :, 0] = 1.0  # all on the top border
    r[1] = 1.0  # uniform
    m = diagnostics.border_mass(r, width=1)
    np.testing.assert_allclose(m, [1.0, 1 - (4 * 3) / (6 * 5)])
    m2 = diagnostics.border_mass(r, width=2)
    np.testing.assert_allclose(m2[1], 1 - (2 * 1) / (6 * 5))
    with pytest.raises(ValueError):
        diagnostics.border_mass(r, width=3)
    with pytest.raises(ValueError):
        diagnostics.border_mass(r[0, :, :, 0])


def test_decay_profile_recovers_a_leak_rate():
    a, L = 0.2, 12
    fade = (1 - a) ** np.arange(L)  # relevance of the step fed t steps before the last
    r = np.stack([np.tile(fade[::-1], (3, 1)), np.tile(fade, (3, 1))])  # (N=2, 3 rows, L columns)
    prof, rate = diagnostics.decay_profile(r[:1], axis=2)
    np.testing.assert_allclose(rate, -np.log(1 - a), rtol=1e-10)
    np.testing.assert_allclose(prof[0], fade / fade.sum(), rtol=1e-10)
    _, rate_rev = diagnostics.decay_profile(r[1:], axis=2, reverse=True)
    np.testing.assert_allclose(rate_rev, -np.log(1 - a), rtol=1e-10)
    _, flat = diagnostics.decay_profile(np.ones((1, 3, L)), axis=2)
    np.testing.assert_allclose(flat, 0.0, atol=1e-12)
    with pytest.raises(ValueError):
        diagnostics.decay_profile(r, axis=0)


def test_permute_roundtrip_and_permutation_test():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6, 5))
    perm = rng.permutation(5)
    np.testing.assert_array_equal(diagnostics.unpermute(diagnostics.permute(x, perm, 2), perm, 2), x)
    w_true = rng.normal(size=(6, 5))
    y = (x * w_true).sum((1, 2))

    def fit_and_explain(x, y):  # least squares: permutation-equivariant, so maps agree
        w, *_ = np.linalg.lstsq(x.reshape(len(x), -1), y, rcond=None)
        return x * w.reshape(x.shape[1:]), None

    out = diagnostics.permutation_test(fit_and_explain, x, y, axis=2, seed=3)
    np.testing.assert_allclose(out["correlation"], 1.0, rtol=1e-8)

    def position_bound(x, y):  # relevance tied to the input's positions, not to the data
        return np.broadcast_to(np.arange(x.shape[2], dtype=float), x.shape), None

    out = diagnostics.permutation_test(position_bound, x, y, axis=2, seed=3)
    assert np.all(out["correlation"] < 0.99)


def test_cap_and_scale():
    x = jnp.array([-10.0, -2.5, 0.0, 1.0, 7.0])
    np.testing.assert_allclose(diagnostics.cap_and_scale(x, 5.0), [-1.0, -0.5, 0.0, 0.2, 1.0])
    with pytest.raises(ValueError):
        diagnostics.cap_and_scale(x, 0.0)
