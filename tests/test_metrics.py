"""Tests for jaxlrp.metrics.

Each metric is compared with a slow NumPy version written with explicit loops over
examples, positions, draws and steps; score directions are checked on constructed
cases; jit == eager and vmap over single examples == batched; bad arguments raise.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxlrp
from jaxlrp import metrics, rules
from jaxlrp.metrics import _faithfulness, _robustness  # private helpers checked directly

RNG = np.random.default_rng(0)  # module-level constants only; each test seeds its own


def key(seed):
    """A PRNG key; the RBG implementation compiles much faster on CPU than threefry."""
    return jax.random.key(seed, impl="rbg")


def close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, equal_nan=True)


def jitted(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` compiled; callables and keyword arguments are closed over
    (one compilation is much cheaper than eager dispatch of every operation)."""
    arrays = [i for i, a in enumerate(args) if not callable(a)]

    def call(*values):
        full = list(args)
        for i, v in zip(arrays, values):
            full[i] = v
        return fn(*full, **kwargs)

    return jax.jit(call)(*[args[i] for i in arrays])


def single(fn, *args):
    """``fn`` vmapped over single examples (each call sees a batch of one), compiled."""
    def one(*a):
        return jax.tree_util.tree_map(lambda v: v[0], fn(*(v[None] for v in a)))

    return jax.jit(jax.vmap(one))(*args)


# ------------------------------------------------------------------ NumPy references


def ref_conservation_error(R, f):
    return np.array([abs(R[n].sum() - f[n]) / abs(f[n]) for n in range(len(R))])


def ref_rma(R, M, mode):
    out = []
    for r, m in zip(R, np.broadcast_to(M, R.shape)):
        r, m = r.ravel(), m.ravel()
        if mode == "positive":
            r = np.array([max(v, 0.0) for v in r])
        elif mode == "abs":
            r = np.array([abs(v) for v in r])
        if not m.any():
            out.append(np.nan)
            continue
        inside = sum(r[i] for i in range(len(r)) if m[i])
        out.append(inside / sum(r))
    return np.array(out)


def ref_rra(R, M):
    out = []
    for r, m in zip(R, np.broadcast_to(M, R.shape)):
        r, m = r.ravel(), m.ravel()
        k = int(m.sum())
        if k == 0:
            out.append(np.nan)
            continue
        ranked = sorted(range(len(r)), key=lambda i: (-r[i], i))
        out.append(sum(bool(m[i]) for i in ranked[:k]) / k)
    return np.array(out)


def ref_pointing(R, M):
    out = []
    for r, m in zip(R, np.broadcast_to(M, R.shape)):
        r, m = r.ravel(), m.ravel()
        best = 0
        for i in range(len(r)):
            if r[i] > r[best]:
                best = i
        out.append(float(m[best]) if m.any() else np.nan)
    return np.array(out)


def ref_gini(R):
    """Mean-absolute-difference form, independent of the sorted form used by the library."""
    out = []
    for r in R:
        v = np.abs(r.ravel())
        d = len(v)
        diff = sum(abs(v[i] - v[j]) for i in range(d) for j in range(d))
        out.append(diff / (2 * d * v.sum()) if v.sum() > 0 else np.nan)
    return np.array(out)


def ref_entropy(R):
    out = []
    for r in R:
        v = np.abs(r.ravel())
        if v.sum() == 0:
            out.append(np.nan)
            continue
        p = v / v.sum()
        out.append(-sum(q * math.log(q) for q in p if q > 0))
    return np.array(out)


def ref_pixel_flipping(model, x, R, target, patch, steps, per_step, baseline, order):
    """Explicit loops: region scores, a sorted list of regions, cumulative replacement."""
    n = x.shape[0]
    spatial = x.shape[1:-1]
    curves = np.zeros((n, steps + 1))
    for e in range(n):
        r = R[e].sum(-1) if R[e].shape == x[e].shape else R[e]
        scores = {}
        for pos in itertools.product(*[range(s) for s in spatial]):
            reg = tuple(p // q for p, q in zip(pos, patch))
            scores[reg] = scores.get(reg, 0.0) + r[pos]
        regions = sorted(scores)  # row-major region index
        if order == "morf":
            seq = sorted(range(len(regions)), key=lambda i: (-scores[regions[i]], i))
        else:
            seq = sorted(range(len(regions)), key=lambda i: (scores[regions[i]], i))
        xe = x[e].copy()
        curves[e, 0] = model(xe[None])[0, target[e]]
        done = 0
        for k in range(1, steps + 1):
            upto = min(k * per_step, len(regions))
            for i in seq[done:upto]:
                for pos in itertools.product(*[range(s) for s in spatial]):
                    if tuple(p // q for p, q in zip(pos, patch)) == regions[i]:
                        xe[pos] = baseline[e][pos]
            done = upto
            curves[e, k] = model(xe[None])[0, target[e]]
    return curves


def ref_faithfulness(model, x, R, target, subsets, baseline):
    """``subsets`` of shape ``(draws, *R.shape)``; if ``R`` has no channel axis, a chosen
    position replaces all of its channels."""
    out = []
    for e in range(x.shape[0]):
        f0 = model(x[e:e + 1])[0, target[e]]
        sums, drops = [], []
        for s in subsets[:, e]:
            xp = x[e].copy()
            for pos in zip(*np.nonzero(s)):
                xp[pos] = baseline[e][pos]
            sums.append(sum(R[e][pos] for pos in zip(*np.nonzero(s))))
            drops.append(f0 - model(xp[None])[0, target[e]])
        out.append(np.corrcoef(sums, drops)[0, 1])
    return np.array(out)


def ref_sensitivities(explain, x, noise, norm):
    out = np.zeros(noise.shape[:2])
    r0 = explain(x)
    for k in range(noise.shape[0]):
        rk = explain(x + noise[k])
        for e in range(x.shape[0]):
            d = (rk[e] - r0[e]).ravel()
            out[k, e] = {"fro": np.sqrt(np.sum(d**2)), "l1": np.sum(np.abs(d)), "inf": np.max(np.abs(d))}[norm]
    return out


# ------------------------------------------------------------------ fixtures: a tiny model

W1 = RNG.normal(size=(4 * 3 * 2, 5))
W2 = RNG.normal(size=(5, 3))


def model_np(x):
    return np.tanh(x.reshape(x.shape[0], -1) @ W1) @ W2


def model_jnp(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ W1) @ W2


# ------------------------------------------------------------------ conservation


def test_conservation_against_reference():
    RNG = np.random.default_rng(1)
    R = RNG.normal(size=(4, 3, 2))
    f = RNG.normal(size=4)
    close(metrics.conservation_error(R, f), ref_conservation_error(R, f))
    close(metrics.conservation(R, f), R.reshape(4, -1).sum(1) / f)
    close(metrics.conservation_error(R, R.reshape(4, -1).sum(1)), np.zeros(4))


def test_conservation_error_of_lrp0_on_bias_free_relu_net_is_zero():
    RNG = np.random.default_rng(2)
    w1, w2 = RNG.normal(size=(6, 8)), RNG.normal(size=(8, 3))

    def fn(params, x):
        return jax.nn.relu(x @ params["a"]) @ params["b"]

    params = {"a": jnp.asarray(w1), "b": jnp.asarray(w2)}
    x = jnp.asarray(RNG.normal(size=(5, 6)))
    R = jax.jit(jaxlrp.lrp(fn, rule=rules.Zero()))(params, x, target=1)
    err = metrics.conservation_error(R, fn(params, x)[:, 1])
    assert np.all(np.asarray(err) < 1e-9)
    # a wrong total is detected
    assert np.all(np.asarray(metrics.conservation_error(R, fn(params, x)[:, 1] + 1.0)) > 1e-3)


# ------------------------------------------------------------------ localisation


@pytest.mark.parametrize("mode", ["positive", "raw", "abs"])
def test_rma_against_reference(mode):
    RNG = np.random.default_rng(3)
    R = RNG.normal(size=(5, 4, 3, 2))
    M = RNG.random(size=(5, 4, 3, 1)) < 0.4
    M[2] = False  # an empty mask -> NaN
    out = np.asarray(metrics.relevance_mass_accuracy(R, M, mode=mode))
    close(out, ref_rma(R, M, mode))
    assert np.isnan(out[2]) and np.all(np.isfinite(np.delete(out, 2)))


def test_rma_modes_differ_on_signed_relevance():
    R = np.array([[2.0, -1.0, 1.0]])
    M = np.array([[True, True, False]])
    close(metrics.relevance_mass_accuracy(R, M, "positive"), [2 / 3])
    close(metrics.relevance_mass_accuracy(R, M, "raw"), [1 / 2])
    close(metrics.relevance_mass_accuracy(R, M, "abs"), [3 / 4])


def test_rra_against_reference_with_ties():
    RNG = np.random.default_rng(5)
    R = RNG.integers(-2, 3, size=(6, 5, 4)).astype(float)  # many ties
    M = RNG.random(size=(6, 5, 4)) < 0.3
    M[0] = False
    out = np.asarray(metrics.relevance_rank_accuracy(R, M))
    close(out, ref_rra(R, M))
    assert np.isnan(out[0])


def test_pointing_game_against_reference():
    RNG = np.random.default_rng(6)
    R = RNG.integers(0, 4, size=(8, 3, 3)).astype(float)
    M = RNG.random(size=(8, 3, 3)) < 0.5
    M[1] = False
    out = np.asarray(metrics.pointing_game(R, M))
    close(out, ref_pointing(R, M))
    assert set(np.unique(out[~np.isnan(out)])) <= {0.0, 1.0}


def test_localisation_scores_of_relevance_equal_to_mask():
    RNG = np.random.default_rng(7)
    M = RNG.random(size=(4, 6, 5)) < 0.3
    M[:, 0, 0] = True
    R = M.astype(float)
    close(metrics.relevance_mass_accuracy(R, M), np.ones(4))
    close(metrics.relevance_rank_accuracy(R, M), np.ones(4))
    close(metrics.pointing_game(R, M), np.ones(4))
    # the complement scores 0 everywhere
    Rc = (~M).astype(float)
    close(metrics.relevance_mass_accuracy(Rc, M), np.zeros(4))
    close(metrics.relevance_rank_accuracy(Rc, M), np.zeros(4))
    close(metrics.pointing_game(Rc, M), np.zeros(4))


def test_localisation_improves_with_more_mass_inside():
    RNG = np.random.default_rng(8)
    M = np.zeros((1, 10), bool)
    M[0, :3] = True
    base = RNG.random(size=(1, 10))
    better = base + 2.0 * M
    for fn in (metrics.relevance_mass_accuracy, metrics.relevance_rank_accuracy):
        assert float(fn(better, M)[0]) > float(fn(base, M)[0])


# ------------------------------------------------------------------ complexity


def test_sparseness_and_complexity_against_reference():
    RNG = np.random.default_rng(9)
    R = RNG.normal(size=(5, 3, 4))
    R[1] = 0.0  # all-zero relevance -> NaN
    close(metrics.sparseness(R), ref_gini(R))
    close(metrics.complexity(R), ref_entropy(R))
    assert np.isnan(np.asarray(metrics.sparseness(R))[1]) and np.isnan(np.asarray(metrics.complexity(R))[1])


def test_sparseness_and_complexity_directions():
    d = 12
    uniform = -np.full((1, d), 0.7)  # sign is ignored
    onehot = np.eye(d)[None, 4]
    close(metrics.sparseness(uniform), [0.0])
    close(metrics.sparseness(onehot), [(d - 1) / d])
    close(metrics.complexity(uniform), [math.log(d)])
    close(metrics.complexity(onehot), [0.0])
    mid = np.array([[3.0, 1.0, 0.5] + [0.1] * (d - 3)])
    assert 0 < float(metrics.sparseness(mid)[0]) < (d - 1) / d
    assert 0 < float(metrics.complexity(mid)[0]) < math.log(d)


# ------------------------------------------------------------------ correlation helpers


def test_pearson_spearman_rankdata_against_scipy():
    RNG = np.random.default_rng(11)
    a = RNG.integers(0, 4, size=(4, 3, 5)).astype(float)  # ties
    b = RNG.normal(size=(4, 3, 5))
    ranks, rho, r = jax.jit(lambda a, b: (metrics.rankdata(a), metrics.spearman(a, b), metrics.pearson(a, b)))(a, b)
    for n in range(4):
        close(ranks[n], scipy.stats.rankdata(a[n].ravel()))
        close(rho[n], scipy.stats.spearmanr(a[n].ravel(), b[n].ravel())[0])
        close(r[n], np.corrcoef(a[n].ravel(), b[n].ravel())[0, 1])
    assert np.isnan(np.asarray(metrics.pearson(np.ones((1, 4)), b[:1, 0, :4]))[0])


# ------------------------------------------------------------------ pixel flipping


@pytest.mark.parametrize(
    "patch,steps,per_step,order,channels",
    [((1, 1), 12, 1, "morf", True), ((2, 2), 2, 3, "lerf", False), ((3, 2), None, 1, "morf", True)],
)
def test_pixel_flipping_against_reference(patch, steps, per_step, order, channels):
    RNG = np.random.default_rng(12)
    x = RNG.normal(size=(3, 4, 3, 2))
    R = RNG.normal(size=x.shape if channels else x.shape[:-1])
    t = np.array([0, 2, 1])
    base = RNG.normal(size=x.shape)
    out = jitted(
        metrics.pixel_flipping, model_jnp, x, R, t,
        region=patch, steps=steps, regions_per_step=per_step, baseline=base, order=order,
    )
    counts = [-(-s // p) for s, p in zip(x.shape[1:-1], patch)]
    n_steps = steps or -(-math.prod(counts) // per_step)
    assert out.shape == (3, n_steps + 1)
    close(out, ref_pixel_flipping(model_np, x, R, t, patch, n_steps, per_step, base, order))


def test_pixel_flipping_on_sequences_and_baselines():
    RNG = np.random.default_rng(13)
    x = RNG.normal(size=(2, 6, 3))
    R = RNG.normal(size=(2, 6, 3))
    w = RNG.normal(size=(18, 2))

    def lin(v):
        return v.reshape(v.shape[0], -1) @ w

    t = np.array([1, 0])
    curve = jitted(metrics.pixel_flipping, lin, x, R, t, region=2, baseline="mean")
    mean = np.broadcast_to(x.mean(axis=1, keepdims=True), x.shape)
    close(curve, ref_pixel_flipping(lin, x, R, t, (2,), 3, 1, mean, "morf"))
    # fully perturbed with a zero baseline: the logit of the zero input
    curve0 = jitted(metrics.pixel_flipping, lin, x, R, t, region=(2,))
    close(curve0[:, -1], np.zeros(2))
    # noise stays within each example's range and depends on the key
    noisy = jax.jit(lambda k: metrics.pixel_flipping(lin, x, R, t, region=6, baseline="noise", key=k))
    c1, c2 = noisy(key(0)), noisy(key(1))
    assert c1.shape == (2, 2) and not np.allclose(c1[:, 1], c2[:, 1])
    close(c1[:, 0], curve[:, 0])


def test_pixel_flipping_target_none_uses_prediction():
    RNG = np.random.default_rng(14)
    x = RNG.normal(size=(3, 4, 3, 2))
    R = RNG.normal(size=x.shape)
    pred = np.argmax(model_np(x), axis=1)
    pf = jax.jit(lambda t: metrics.pixel_flipping(model_jnp, x, R, t, region=2))
    close(pf(None), pf(pred))


def test_morf_beats_random_and_lerf_on_a_linear_model():
    """For f = w.x, relevance w*x from jaxlrp (LRP-eps on one dense layer) and a zero
    baseline, MoRF removes the largest contributions first: its AOPC is the largest of
    any order, LeRF's the smallest."""
    RNG = np.random.default_rng(15)
    w = RNG.normal(size=(6 * 6 * 2, 3))

    def fn(params, x):
        return x.reshape(x.shape[0], -1) @ params

    x = jnp.asarray(RNG.normal(size=(8, 6, 6, 2)))
    R = jax.jit(jaxlrp.lrp(fn))(jnp.asarray(w), x, target=0)
    close(R, x * w[:, 0].reshape(6, 6, 2), tol=1e-5)

    def model(v):
        return fn(w, v)

    kw = dict(region=(2, 2), steps=6)
    morf = jitted(metrics.pixel_flipping, model, x, R, 0, **kw)
    lerf = jitted(metrics.pixel_flipping, model, x, R, 0, order="lerf", **kw)
    rand = jitted(metrics.pixel_flipping, model, x, R, 0, order="random", key=key(3), **kw)
    a_morf, a_lerf, a_rand = metrics.aopc(morf), metrics.aopc(lerf), metrics.aopc(rand)
    assert np.all(np.asarray(a_morf) >= np.asarray(a_rand) - 1e-12)
    assert np.all(np.asarray(a_rand) >= np.asarray(a_lerf) - 1e-12)
    assert float(jnp.mean(a_morf)) > float(jnp.mean(a_rand)) + 0.1
    assert np.all(np.asarray(metrics.abpc(lerf, morf)) > 0)
    # an uninformative (random) relevance scores worse than w*x under MoRF
    noise_rel = jnp.asarray(RNG.normal(size=x.shape))
    a_noise = metrics.aopc(jitted(metrics.pixel_flipping, model, x, noise_rel, 0, **kw))
    assert float(jnp.mean(a_morf)) > float(jnp.mean(a_noise))


def test_aopc_abpc_against_reference():
    RNG = np.random.default_rng(16)
    c = RNG.normal(size=(3, 5))
    d = RNG.normal(size=(3, 5))
    close(metrics.aopc(c), [sum(c[n, 0] - c[n, k] for k in range(5)) / 5 for n in range(3)])
    close(metrics.abpc(c, d), [sum(c[n, k] - d[n, k] for k in range(5)) / 5 for n in range(3)])


# ------------------------------------------------------------------ faithfulness correlation


@pytest.mark.parametrize("channels", [True, False])
def test_faithfulness_from_subsets_against_reference(channels):
    RNG = np.random.default_rng(17)
    x = RNG.normal(size=(3, 4, 3, 2))
    R = RNG.normal(size=x.shape if channels else x.shape[:-1])
    t = np.array([2, 0, 1])
    subsets = RNG.random(size=(7,) + R.shape) < 0.3
    base = RNG.normal(size=x.shape)
    out = _faithfulness._faithfulness_from_subsets(model_jnp, jnp.asarray(x), jnp.asarray(R), t, subsets, jnp.asarray(base))
    close(out, ref_faithfulness(model_np, x, R, t, subsets, base))


def test_faithfulness_correlation_directions():
    RNG = np.random.default_rng(18)
    w = RNG.normal(size=(20, 2))

    def lin(v):
        return v @ w

    x = jnp.asarray(RNG.normal(size=(4, 20)))
    good = x * w[:, 1]
    fc = jax.jit(lambda r, k: metrics.faithfulness_correlation(lin, x, r, 1, key=k, subset_size=5, n_draws=30))
    close(fc(good, key(0)), np.ones(4))
    close(fc(-good, key(0)), -np.ones(4))
    noisy = fc(jnp.asarray(RNG.normal(size=x.shape)), key(0))
    assert np.all(np.abs(np.asarray(noisy)) < 0.999)
    # the draws are a function of the key
    close(fc(noisy_rel := good + jnp.asarray(RNG.normal(size=x.shape)), key(1)), fc(noisy_rel, key(1)))
    assert not np.allclose(fc(noisy_rel, key(1)), fc(noisy_rel, key(2)))


# ------------------------------------------------------------------ robustness


@pytest.mark.parametrize("norm", ["fro", "l1", "inf"])
def test_sensitivities_against_reference(norm):
    RNG = np.random.default_rng(19)
    x = RNG.normal(size=(3, 4, 2))
    noise = RNG.uniform(-0.1, 0.1, size=(5,) + x.shape)

    def explain(v):
        return jnp.tanh(v) * v

    def explain_np(v):
        return np.tanh(v) * v

    out = _robustness._sensitivities(explain, jnp.asarray(x), jnp.asarray(noise), norm)
    ref = ref_sensitivities(explain_np, x, noise, norm)
    close(out, ref)
    ratios = _robustness._lipschitz_ratios(explain, jnp.asarray(x), jnp.asarray(noise))
    dnorm = np.sqrt((noise.reshape(5, 3, -1) ** 2).sum(-1))
    close(ratios, ref_sensitivities(explain_np, x, noise, "fro") / dnorm)


def test_max_sensitivity_and_lipschitz_on_known_explainers():
    RNG = np.random.default_rng(20)
    x = jnp.asarray(RNG.normal(size=(4, 30)))
    r = 0.05

    @jax.jit
    def scores(k):
        ms = functools.partial(metrics.max_sensitivity, key=k, radius=r, n_samples=8)
        ll = functools.partial(metrics.local_lipschitz_estimate, key=k, radius=r, n_samples=8)
        return dict(
            inf=ms(lambda v: v, x, norm="inf"),
            fro=ms(lambda v: 3.0 * v, x),
            rel=ms(lambda v: 3.0 * v, x, relative=True),
            zero=ms(jnp.ones_like, x),
            lip=ll(lambda v: 3.0 * v, x),
            steep=ll(lambda v: jnp.sin(20 * v), x),
            flat=ll(jnp.sin, x),
        )

    s = {name: np.asarray(v) for name, v in scores(key(0)).items()}
    # identity explanation: the difference is the noise itself, within the L-inf ball
    assert np.all(s["inf"] <= r) and np.all(s["inf"] > 0.8 * r)
    assert np.all(s["fro"] <= 3.0 * r * math.sqrt(30)) and np.all(s["fro"] > 3.0 * r * math.sqrt(30 / 3) * 0.7)
    # relative: divided by the norm of the unperturbed explanation
    close(s["rel"], s["fro"] / np.linalg.norm(3.0 * np.asarray(x), axis=1))
    # a constant explanation is perfectly stable; c*x has Lipschitz constant exactly c
    close(s["zero"], np.zeros(4))
    close(s["lip"], np.full(4, 3.0))
    # a less stable explainer scores worse
    assert np.all(s["steep"] > s["flat"])
    # the noise is a function of the key
    assert not np.allclose(scores(key(1))["fro"], s["fro"])


# ------------------------------------------------------------------ randomisation


def _mlp_params(RNG):
    return {
        "Dense_0": {"kernel": jnp.asarray(RNG.normal(size=(6, 8))), "bias": jnp.zeros(8)},
        "Dense_1": {"kernel": jnp.asarray(RNG.normal(size=(8, 8))), "bias": jnp.asarray(RNG.normal(size=8))},
        "Dense_2": {"kernel": jnp.asarray(RNG.normal(size=(8, 3))), "bias": jnp.zeros(3)},
    }


def _mlp(p, x):
    h = jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    h = jax.nn.relu(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    return h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]


def _grad_x_input(p, x):
    g = jax.grad(lambda v: jnp.sum(_mlp(p, v)[:, 0]))(x)
    return g * x


_gxi = jax.jit(_grad_x_input)  # compiled once; the MPRT tests call it eagerly with side effects


def test_mprt_cascades_from_last_layer_and_matches_scipy():
    RNG = np.random.default_rng(21)
    params = _mlp_params(RNG)
    x = jnp.asarray(RNG.normal(size=(4, 6)))
    seen = []

    def explain(p, v):
        seen.append(p)
        return _gxi(p, v)

    out = metrics.model_parameter_randomisation(explain, params, x, key=key(0))
    assert list(out) == ["Dense_2", "Dense_1", "Dense_0"]
    assert len(seen) == 4 and seen[0] is params
    changed = [
        [not np.allclose(s[name]["kernel"], params[name]["kernel"]) for name in ("Dense_0", "Dense_1", "Dense_2")]
        for s in seen
    ]
    assert changed == [[False] * 3, [False, False, True], [False, True, True], [True, True, True]]
    # randomisation is cumulative: a layer stays at its first random draw
    assert np.array_equal(seen[1]["Dense_2"]["kernel"], seen[3]["Dense_2"]["kernel"])
    r0 = np.asarray(_gxi(params, x))
    for s, name in zip(seen[1:], out):
        rk = np.asarray(_gxi(s, x))
        ref = [scipy.stats.spearmanr(r0[n], rk[n])[0] for n in range(4)]
        close(out[name], ref)
        assert out[name].shape == (4,)
    assert float(jnp.mean(out["Dense_0"])) < 0.99


def test_mprt_flax_variables_layers_override_and_permute():
    RNG = np.random.default_rng(22)
    params = _mlp_params(RNG)
    variables = {"params": params, "batch_stats": {"mean": jnp.arange(3.0)}}
    x = jnp.asarray(RNG.normal(size=(3, 6)))
    seen = []

    def explain(v, xb):
        seen.append(v)
        return _gxi(v["params"], xb)

    out = metrics.model_parameter_randomisation(
        explain, variables, x, key=key(1), layers=["Dense_0"], similarity="pearson",
        randomisation="permute",
    )
    assert list(out) == ["Dense_0"]
    p = seen[1]
    assert np.array_equal(p["batch_stats"]["mean"], np.arange(3.0))
    assert np.array_equal(p["params"]["Dense_2"]["kernel"], params["Dense_2"]["kernel"])
    k_new, k_old = np.asarray(p["params"]["Dense_0"]["kernel"]), np.asarray(params["Dense_0"]["kernel"])
    assert not np.array_equal(k_new, k_old) and np.array_equal(np.sort(k_new.ravel()), np.sort(k_old.ravel()))
    r0, r1 = np.asarray(_gxi(params, x)), np.asarray(_gxi(p["params"], x))
    close(out["Dense_0"], [np.corrcoef(r0[n], r1[n])[0, 1] for n in range(3)])


def test_mprt_of_parameter_independent_explanation_is_one():
    RNG = np.random.default_rng(23)
    out = metrics.model_parameter_randomisation(
        lambda p, v: v * 2.0, _mlp_params(RNG), jnp.asarray(RNG.normal(size=(3, 6))), key=key(2)
    )
    for v in out.values():
        close(v, np.ones(3))


# ------------------------------------------------------------------ jit == eager, vmap == batched


def test_jit_equals_eager():
    RNG = np.random.default_rng(24)
    R = jnp.asarray(RNG.normal(size=(3, 4, 3, 2)))
    M = jnp.asarray(RNG.random(size=(3, 4, 3, 1)) < 0.4)
    x = jnp.asarray(RNG.normal(size=(3, 4, 3, 2)))
    t = jnp.array([0, 1, 2])
    k = key(5)
    cases = [
        (lambda r, m: metrics.relevance_mass_accuracy(r, m, "abs"), (R, M)),
        (metrics.relevance_rank_accuracy, (R, M)),
        (metrics.pointing_game, (R, M)),
        (metrics.sparseness, (R,)),
        (metrics.complexity, (R,)),
        (metrics.conservation_error, (R, t * 1.0 + 0.5)),
        (lambda x, r, t: metrics.pixel_flipping(model_jnp, x, r, t, region=2, baseline="noise", key=k), (x, R, t)),
        (lambda x, r, t: metrics.faithfulness_correlation(model_jnp, x, r, t, key=k, subset_size=4, n_draws=5),
         (x, R, t)),
        (lambda x: metrics.max_sensitivity(jnp.tanh, x, key=k, radius=0.1, n_samples=3), (x,)),
        (lambda x: metrics.local_lipschitz_estimate(jnp.tanh, x, key=k, radius=0.1, n_samples=3), (x,)),
    ]
    for fn, args in cases:
        close(jax.jit(fn)(*args), fn(*args), tol=1e-12)



def test_mprt_jit_equals_eager():
    RNG = np.random.default_rng(25)
    # insertion order differs from sorted order: closing over params keeps it under jit
    p = _mlp_params(RNG)
    params = {"out": p["Dense_2"], "hidden": p["Dense_1"], "inp": p["Dense_0"]}

    def explain(q, v):
        return _gxi({"Dense_0": q["inp"], "Dense_1": q["hidden"], "Dense_2": q["out"]}, v)

    x2 = jnp.asarray(RNG.normal(size=(3, 6)))

    def mprt(v, k):
        return metrics.model_parameter_randomisation(explain, params, v, key=k)

    eager, jitted = mprt(x2, key(5)), jax.jit(mprt)(x2, key(5))
    assert list(eager) == ["inp", "hidden", "out"]
    assert set(jitted) == set(eager)
    for name in eager:
        close(jitted[name], eager[name], tol=1e-12)
    assert not np.allclose(eager["hidden"], eager["out"])


def test_vmap_over_single_examples_equals_batched():
    RNG = np.random.default_rng(26)
    R = jnp.asarray(RNG.normal(size=(3, 4, 3, 2)))
    M = jnp.asarray(RNG.random(size=(3, 4, 3, 2)) < 0.4)
    x = jnp.asarray(RNG.normal(size=(3, 4, 3, 2)))
    t = jnp.array([2, 0, 1])
    subsets = jnp.asarray(RNG.random(size=(3, 6) + R.shape[1:]) < 0.4)  # per example: 6 draws
    noise = jnp.asarray(RNG.uniform(-0.1, 0.1, size=(3, 4) + x.shape[1:]))  # per example: 4 draws

    def all_metrics(R, M, x, t, subsets, noise):
        """Every metric on a batch; the random draws are given per example (axis 1 of the
        draws is the example axis that the metrics expect)."""
        subsets, noise = jnp.swapaxes(subsets, 0, 1), jnp.swapaxes(noise, 0, 1)
        return (
            metrics.relevance_mass_accuracy(R, M),
            metrics.relevance_rank_accuracy(R, M),
            metrics.pointing_game(R, M),
            metrics.sparseness(R),
            metrics.complexity(R),
            metrics.conservation_error(R, t * 1.0 + 0.5),
            metrics.spearman(R, x),
            metrics.pixel_flipping(model_jnp, x, R, t, region=(2, 1), baseline="mean"),
            _faithfulness._faithfulness_from_subsets(model_jnp, x, R, t, subsets, jnp.zeros_like(x)),
            jnp.swapaxes(_robustness._sensitivities(jnp.tanh, x, noise, "fro"), 0, 1),
            jnp.swapaxes(_robustness._lipschitz_ratios(jnp.tanh, x, noise), 0, 1),
        )

    args = (R, M, x, t, subsets, noise)
    batched = jax.jit(all_metrics)(*args)
    mapped = single(all_metrics, *args)
    assert len(batched) == len(mapped)
    for b, m in zip(batched, mapped):
        assert b.shape == m.shape and b.shape[0] == 3
        close(m, b, tol=1e-12)
    # the public random metrics run under vmap
    lip = single(
        lambda v: metrics.local_lipschitz_estimate(lambda u: 2.0 * u, v, key=key(0), radius=0.1, n_samples=2), x
    )
    close(lip, np.full(3, 2.0))


# ------------------------------------------------------------------ errors


def test_errors_for_bad_shapes_and_parameters():
    RNG = np.random.default_rng(27)
    R = np.ones((2, 3, 3))
    M = np.ones((2, 3, 3), bool)
    x = np.ones((2, 3, 3, 1))
    with pytest.raises(ValueError, match="leading example axis"):
        metrics.sparseness(np.ones(5))
    with pytest.raises(ValueError, match="no entries"):
        metrics.complexity(np.ones((2, 0)))
    with pytest.raises(ValueError, match="boolean"):
        metrics.relevance_mass_accuracy(R, M.astype(float))
    with pytest.raises(ValueError, match="same number of axes"):
        metrics.relevance_rank_accuracy(R, M[:, :, 0])
    with pytest.raises(ValueError, match="does not broadcast"):
        metrics.pointing_game(R, np.ones((2, 3, 2), bool))
    with pytest.raises(ValueError, match="mode must be one of"):
        metrics.relevance_mass_accuracy(R, M, mode="negative")
    with pytest.raises(ValueError, match=r"shape \(N,\) = \(2,\)"):
        metrics.conservation_error(R, np.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        metrics.spearman(R, np.ones((2, 9)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.abpc(np.ones((2, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"\(N, steps \+ 1\)"):
        metrics.aopc(np.ones(4))

    pf = lambda **kw: metrics.pixel_flipping(model_jnp_small, x, R, 0, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"\(N, \*spatial, C\)"):
        metrics.pixel_flipping(model_jnp_small, np.ones((2, 9)), np.ones((2, 9)), 0)
    with pytest.raises(ValueError, match="input's shape"):
        metrics.pixel_flipping(model_jnp_small, x, np.ones((2, 9)), 0)
    with pytest.raises(ValueError, match="each of the 2 spatial axes"):
        pf(region=(1, 1, 1))
    with pytest.raises(ValueError, match=r"region size must be in \[1, 3\]"):
        pf(region=(4, 1))
    with pytest.raises(ValueError, match=r"steps must be in \[1, 9\]"):
        pf(steps=10)
    with pytest.raises(ValueError, match=r"steps must be in \[1, 5\]"):
        pf(steps=6, regions_per_step=2)
    with pytest.raises(ValueError, match="order must be one of"):
        pf(order="best")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        pf(baseline="noise")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        pf(order="random")
    with pytest.raises(ValueError, match="baseline must be one of"):
        pf(baseline="black")
    with pytest.raises(ValueError, match="does not broadcast"):
        pf(baseline=np.ones(4))
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        metrics.pixel_flipping(model_jnp_small, x, R, 2)
    with pytest.raises(ValueError, match="an int or an int array"):
        metrics.pixel_flipping(model_jnp_small, x, R, 0.5)
    with pytest.raises(ValueError, match="logits of shape"):
        metrics.pixel_flipping(lambda v: v.sum(axis=(1, 2, 3)), x, R, 0)

    fc = lambda **kw: metrics.faithfulness_correlation(model_jnp_small, x, R, 0, key=key(0), **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"subset_size must be in \[1, 9\]"):
        fc(subset_size=10)
    with pytest.raises(ValueError, match="n_draws must be >= 2"):
        fc(subset_size=2, n_draws=1)

    with pytest.raises(ValueError, match="radius must be a positive"):
        metrics.max_sensitivity(jnp.tanh, x, key=key(0), radius=0.0)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        metrics.local_lipschitz_estimate(jnp.tanh, x, key=key(0), radius=0.1, n_samples=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        metrics.max_sensitivity(jnp.tanh, x, key=key(0), radius=0.1, norm="l3")
    with pytest.raises(ValueError, match="same leading"):
        metrics.max_sensitivity(lambda v: v[0], x, key=key(0), radius=0.1)

    params = _mlp_params(RNG)
    xm = np.ones((2, 6))
    with pytest.raises(ValueError, match=r"unknown layers \['Dense_9'\]"):
        metrics.model_parameter_randomisation(_grad_x_input, params, xm, key=key(0), layers=["Dense_9"])
    with pytest.raises(ValueError, match="must not repeat"):
        metrics.model_parameter_randomisation(_grad_x_input, params, xm, key=key(0),
                                              layers=["Dense_0", "Dense_0"])
    with pytest.raises(ValueError, match="similarity must be one of"):
        metrics.model_parameter_randomisation(_grad_x_input, params, xm, key=key(0), similarity="ssim")
    with pytest.raises(ValueError, match="randomisation must be one of"):
        metrics.model_parameter_randomisation(_grad_x_input, params, xm, key=key(0),
                                              randomisation="zeros")
    with pytest.raises(ValueError, match="mapping"):
        metrics.model_parameter_randomisation(_grad_x_input, [1, 2], xm, key=key(0))


def model_jnp_small(x):
    return jnp.stack([x.sum(axis=(1, 2, 3)), -x.sum(axis=(1, 2, 3))], axis=1)


def test_default_and_legacy_keys_work():
    RNG = np.random.default_rng(28)
    x = jnp.asarray(RNG.normal(size=(2, 5)))
    for k in (jax.random.key(0), jax.random.PRNGKey(0)):
        close(metrics.local_lipschitz_estimate(lambda v: 2.0 * v, x, key=k, radius=0.1, n_samples=2), [2.0, 2.0])
