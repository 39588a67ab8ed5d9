"""Relative LRP and Pruned LRP (PLRP-lambda, PLRP-M): ``jaxlrp.variants``."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxlrp
from jaxlrp import composites, rules, variants
from jaxlrp.rules import Node

import nets
from test_networks import CNN, MLP

# A small residual network (two convs, so that it compiles in about a second):
# conv0 relu1 [start2 conv3 relu4 add5] relu6 avgpool7 flatten8 dense9
RESNET = [
    ("conv", 3, 4, 1, 1, 1), ("relu",), ("residual_start",), ("conv", 3, 4, 1, 1, 1), ("relu",),
    ("residual_add",), ("relu",), ("avgpool", 2, 2), ("flatten",), ("dense", 4),
]
SPECS = {"mlp": MLP, "cnn": CNN, "resnet": RESNET}
SHAPES = {"mlp": (9,), "cnn": (8, 8, 3), "resnet": (4, 4, 2)}


def _net(kind, seed=0, bias=True, n=3):
    rng = np.random.default_rng(seed)
    layers = nets.random_layers(rng, SPECS[kind], SHAPES[kind], bias=bias)
    fn, params = nets.build(layers)
    return layers, fn, params, rng.normal(size=(n,) + SHAPES[kind])


def _jit(explain, **kw):
    return jax.jit(lambda params, x: explain(params, x, **kw))


_prune_mask = jax.jit(variants.prune_mask, static_argnames="example_ndim")


def _sum(r):
    return np.asarray(r).reshape(r.shape[0], -1).sum(1)


# ----------------------------------------------------------------- the pruning mask


def _reference_mask(r, p_pos, p_neg, example_ndim):
    """Per-example, per-sign loop in float64 NumPy (the definition of the issue)."""
    r = np.asarray(r)
    lead = r.shape[:example_ndim]
    flat = r.reshape(math.prod(lead), -1)
    out = np.zeros(flat.shape, bool)
    for n, row in enumerate(flat):
        for sign, p in ((1, p_pos), (-1, p_neg)):
            idx = np.flatnonzero(np.sign(row) == sign)
            if idx.size == 0:
                continue
            v = np.abs(row[idx])
            c = np.cumsum(np.sort(v))
            within = np.sort(v)[c <= p * c[-1]]
            if within.size == 0:
                continue
            cut = v <= within.max()
            if not cut.all():  # a sign is never pruned entirely
                out[n, idx[cut]] = True
    return out.reshape(r.shape)


@pytest.mark.parametrize("shape,example_ndim", [((4, 5, 6), 1), ((30,), 0), ((2, 3, 7), 2)])
def test_prune_mask_matches_reference(shape, example_ndim):
    rng = np.random.default_rng(0)
    r = rng.normal(size=shape) * rng.exponential(size=shape)
    r[..., :2] = 0.0  # exact zeros are neither sign
    for p_pos, p_neg in [(0.0, 0.0), (0.1, 0.1), (0.5, 0.25), (0.9, 0.0), (0.3, 0.7)]:
        got = _prune_mask(r, p_pos, p_neg, example_ndim=example_ndim)
        np.testing.assert_array_equal(got, _reference_mask(r, p_pos, p_neg, example_ndim))
        assert not np.any(np.asarray(got) & (r == 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prune_mask_matches_reference_with_many_ties_and_wide_range(dtype):
    """The threshold search on bit patterns: values spanning 30 orders of magnitude,
    many exact ties, and a row of zeros."""
    rng = np.random.default_rng(1)
    r = rng.normal(size=(6, 200)) * 10.0 ** rng.integers(-15, 15, size=(6, 200))
    r[:3] = np.round(rng.normal(size=(3, 200)) * 3)  # integers: ties everywhere
    r[5] = 0.0
    r = r.astype(dtype)
    for p_pos, p_neg in [(0.1, 0.1), (0.5, 0.25), (0.9, 0.6)]:
        got = _prune_mask(jnp.asarray(r), p_pos, p_neg, example_ndim=1)
        np.testing.assert_array_equal(got, _reference_mask(r.astype(np.float64), p_pos, p_neg, 1))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_prune_mask_half_floats(dtype):
    """16-bit floats (searched on their 16-bit patterns, summed in float32): on small
    integers (all sums exact, many ties) the mask matches the float64 reference."""
    rng = np.random.default_rng(2)
    r = rng.integers(-3, 4, size=(5, 40)).astype(np.float64)
    r[4] = 0.0
    for p_pos, p_neg in [(0.25, 0.5), (0.5, 0.25)]:
        got = _prune_mask(jnp.asarray(r, dtype), p_pos, p_neg, example_ndim=1)
        np.testing.assert_array_equal(got, _reference_mask(r, p_pos, p_neg, 1))


def test_prune_mask_budget_and_maximality():
    """Without ties the pruned mass of each sign stays within p of the sign's mass, and
    pruning the next-smallest entry would exceed it."""
    rng = np.random.default_rng(1)
    r = rng.normal(size=(5, 40))
    p = 0.4
    mask = np.asarray(_prune_mask(r, p, example_ndim=1))
    for row, m in zip(r, mask):
        for s in (row > 0, row < 0):
            v, pruned = np.abs(row[s]), m[s]
            assert pruned.any() and not pruned.all()
            assert v[pruned].sum() <= p * v.sum() + 1e-12
            assert v[pruned].sum() + v[~pruned].min() > p * v.sum()
            assert v[pruned].max() < v[~pruned].min()


def test_prune_mask_ties_and_edge_cases():
    r = jnp.array([3.0, 1.0, 1.0, 1.0, -2.0, 0.0])
    # positive: sorted 1, 1, 1, 3 with budget 0.3 * 6 = 1.8: theta = 1, ties pruned
    np.testing.assert_array_equal(variants.prune_mask(r, 0.3), [False, True, True, True, False, False])
    # p_neg alone; the only negative entry would take the sign's whole mass: kept
    np.testing.assert_array_equal(variants.prune_mask(r, 0.0, 0.9), [False] * 6)
    # all entries of a sign equal: pruning them all is refused
    np.testing.assert_array_equal(variants.prune_mask(jnp.ones(4), 0.5), [False] * 4)
    np.testing.assert_array_equal(variants.prune_mask(jnp.zeros(4), 0.5), [False] * 4)
    # p_neg defaults to p
    r2 = jnp.array([1.0, 2.0, 10.0, -1.0, -2.0, -10.0])
    np.testing.assert_array_equal(variants.prune_mask(r2, 0.25), [True, True, False, True, True, False])
    np.testing.assert_array_equal(variants.prune_mask(r2, 0.25, 0.05), [True, True, False, False, False, False])


# ------------------------------------------------------------------- rules on a node


def _dense_node(rng, batch=3, n_in=12, n_out=5, bias=True, relu_input=False):
    x = rng.normal(size=(batch, n_in))
    if relu_input:
        x = np.maximum(x, 0)
    w = rng.normal(size=(n_in, n_out))
    b = rng.normal(size=(n_out,)) * 0.1 if bias else None
    apply = lambda xs, w: xs[0] @ w
    z = x @ w + (0 if b is None else b)
    return Node("dense", (jnp.asarray(x),), jnp.asarray(w), None if b is None else jnp.asarray(b), jnp.asarray(z), apply, 1)


def _conv_node(rng, batch=2, bias=True):
    x = np.maximum(rng.normal(size=(batch, 6, 6, 3)), 0)
    w = rng.normal(size=(3, 3, 3, 4))
    b = rng.normal(size=(4,)) * 0.1 if bias else None

    def apply(xs, w):
        return lax.conv_general_dilated(xs[0], w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    z = apply((jnp.asarray(x),), jnp.asarray(w))
    if b is not None:
        z = z + b
    return Node("conv", (jnp.asarray(x),), jnp.asarray(w), None if b is None else jnp.asarray(b), z, apply, 1)


@pytest.mark.parametrize("make", ["dense", "conv"])
@pytest.mark.parametrize("base", [rules.Epsilon(0.01), rules.ZPlus(), rules.Gamma(0.25)], ids=repr)
def test_plrp_lambda_keeps_each_signs_mass(make, base):
    rng = np.random.default_rng(2)
    node = _dense_node(rng) if make == "dense" else _conv_node(rng)
    R = jnp.asarray(rng.normal(size=node.output.shape))
    pruned = variants.Pruned(base, 0.4, 0.2)
    r, got, mask = jax.jit(lambda R: (base(node, R)[0], pruned(node, R)[0], _prune_mask(base(node, R)[0], 0.4, 0.2, 1)))(R)
    r, got = np.asarray(r), np.asarray(got)
    assert mask.any()
    assert np.all(got[mask] == 0)
    axes = tuple(range(1, r.ndim))
    for part in (np.maximum, np.minimum):
        np.testing.assert_allclose(part(got, 0).sum(axes), part(r, 0).sum(axes), rtol=1e-12)
    # survivors of one sign in one example share one factor lambda >= 1
    for n in range(r.shape[0]):
        for s in (r[n] > 0, r[n] < 0):
            keep = s & ~mask[n]
            lam = got[n][keep] / r[n][keep]
            np.testing.assert_allclose(lam, lam[0], rtol=1e-12)
            assert lam[0] >= 1.0


def _plrp_m_reference(x, w, R, m, z=None):
    """PLRP-M on a bias-free dense LRP-0 layer, one example at a time in NumPy:
    contributions c_jk = x_j w_jk R_k / z_k; the part P_k reaching pruned neurons is
    shared among the kept ones by |x_j w_jk|; orphans (no kept contribution) are
    absorbed per sign by the kept entries."""
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        c = x[n][:, None] * w * (R[n] / (x[n] @ w if z is None else z[n]))[None, :]
        r, keep = c.sum(1), m[n].astype(bool)
        omega = np.abs(x[n])[:, None] * np.abs(w) * keep[:, None]
        lost = c[~keep].sum(0)
        orphan = omega.sum(0) == 0
        share = np.where(orphan, 0, lost / np.where(orphan, 1, omega.sum(0)))
        rhat = np.where(keep, r + omega @ share, 0)
        stray = np.where(keep, 0, c[:, orphan].sum(1))
        for s in (1, -1):
            kept = keep & (s * rhat > 0)
            rhat = rhat + np.where(kept, rhat / (s * rhat[kept]).sum() * (s * stray[s * stray > 0]).sum(), 0) \
                if kept.any() else rhat
        out[n] = rhat
    return out


def test_plrp_m_matches_explicit_formula_and_conserves_each_upper_neuron():
    """LRP-0, no bias: the formula of the module docstring, and each upper neuron's
    relevance conserved (the Jacobian of R_in w.r.t. R_out, mask fixed, has columns
    summing to one, per example)."""
    rng = np.random.default_rng(3)
    node = _dense_node(rng, bias=False)
    R = jnp.asarray(rng.normal(size=node.output.shape))
    base, rule = rules.Zero(), variants.Pruned(rules.Zero(), 0.3, mode="m")
    (r,) = base(node, R)
    m = np.asarray(~_prune_mask(r, 0.3, example_ndim=1), float)
    x, w = np.asarray(node.inputs[0]), np.asarray(node.weight)
    (got,) = rule(node, R)
    np.testing.assert_allclose(got, _plrp_m_reference(x, w, np.asarray(R), m), rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(got)[m == 0] == 0)
    jac = jax.jit(jax.jacobian(lambda R: rule(node, R)[0]))(R)  # (batch, in, batch, out)
    for n in range(x.shape[0]):
        np.testing.assert_allclose(jac[n, :, n, :].sum(0), 1.0, rtol=1e-10)
        np.testing.assert_array_equal(jac[n, :, (n + 1) % x.shape[0], :], 0.0)


def test_plrp_m_is_the_masked_layer_where_kept_contributions_share_a_sign():
    """x >= 0, w >= 0: no cancellation, so PLRP-M is the base rule evaluated on the
    layer without the pruned neurons, R_j = m_j x_j sum_k w_jk R_k / sum_j' m_j' x_j' w_j'k."""
    rng = np.random.default_rng(17)
    node = _dense_node(rng, bias=False, relu_input=True)
    node = node._replace(weight=jnp.abs(node.weight), output=node.inputs[0] @ jnp.abs(node.weight))
    R = jnp.asarray(rng.normal(size=node.output.shape))
    for base in (rules.Zero(), rules.ZPlus(0.0), rules.Gamma(0.5, 0.0)):
        (r,) = base(node, R)
        m = np.asarray(~_prune_mask(r, 0.3, example_ndim=1), float)
        assert 0 < m.mean() < 1
        x, w = np.asarray(node.inputs[0]), np.asarray(node.weight)
        expected = m * x * ((np.asarray(R) / ((m * x) @ w)) @ w.T)
        (got,) = variants.Pruned(base, 0.3, mode="m")(node, R)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13, err_msg=repr(base))


@pytest.mark.parametrize("base", [rules.ZPlus(0.0, ignore_bias=True), rules.Flat(0.0), rules.Zero(True),
                                  rules.Gamma(0.25, 0.0, True), rules.AlphaBeta(2.0, 1.0, 0.0, True)], ids=repr)
@pytest.mark.parametrize("p", [0.3, 0.7])
def test_plrp_m_conserves_each_upper_neuron_on_conv(base, p):
    """Every branch of the base rule is masked (z+, flat, gamma, alpha-beta): pruned
    entries are exactly zero, the layer's total is the base rule's, and every upper
    neuron with a kept contribution keeps its relevance (Jacobian columns, mask
    fixed, sum to the base rule's); the others (orphans) are absorbed per sign."""
    rng = np.random.default_rng(4)
    node = _conv_node(rng, batch=1, bias=False)
    R = jnp.asarray(rng.uniform(size=node.output.shape))
    rule = variants.Pruned(base, p, mode="m")
    got, r = jax.jit(lambda R: (rule(node, R)[0], base(node, R)[0]))(R)
    mask = np.asarray(_prune_mask(r, p, example_ndim=1))
    assert mask.any() and np.all(np.asarray(got)[mask] == 0)
    np.testing.assert_allclose(np.sum(got), np.sum(r), rtol=1e-10)
    jac = np.asarray(jax.jit(jax.jacobian(lambda R: rule(node, R)[0]))(R)).reshape(r.size, -1)
    ref = np.asarray(jax.jit(jax.jacobian(lambda R: base(node, R)[0]))(R)).reshape(r.size, -1)
    kept_any = np.abs(ref[~mask.reshape(-1)]).sum(0) > 0
    assert kept_any.mean() > 0.3
    np.testing.assert_allclose(jac.sum(0)[kept_any], ref.sum(0)[kept_any], rtol=1e-9, atol=1e-12)


def test_pruned_rule_validation():
    with pytest.raises(ValueError, match="mode"):
        variants.Pruned(rules.Epsilon(), 0.1, mode="M")
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            variants.Pruned(rules.Epsilon(), bad)
    with pytest.raises(ValueError, match="p_neg"):
        variants.Pruned(rules.Epsilon(), 0.1, 1.5)
    with pytest.raises(TypeError):
        variants.Pruned("epsilon", 0.1)
    assert variants.Pruned(rules.Epsilon(), 0.1).kinds == rules.WEIGHTED_KINDS
    assert variants.Pruned(rules.ZPlus(), 0.1).kinds == rules.WEIGHTED_KINDS
    assert variants.Pruned(rules.Epsilon(), 0.1) == variants.Pruned(rules.Epsilon(), 0.1)


# ------------------------------------------------------------------ whole networks


@pytest.mark.parametrize(
    "kind,comp",
    [("mlp", composites.EpsilonGammaBox(-3.0, 3.0)), ("cnn", composites.EpsilonPlusFlat()),
     ("resnet", composites.EpsilonAlpha2Beta1())],
    ids=["mlp-gammabox", "cnn-plusflat", "resnet-alphabeta"],
)
def test_p_zero_is_the_base_composite_exactly(kind, comp):
    _, fn, params, x = _net(kind, seed=5)
    base = _jit(jaxlrp.lrp(fn, comp), target=1)(params, x)
    for mode in variants.MODES:
        got = _jit(jaxlrp.lrp(fn, variants.pruned(comp, 0.0, mode=mode)), target=1)(params, x)
        np.testing.assert_array_equal(got, base)
    if kind == "mlp":  # eager too
        got = jaxlrp.lrp(fn, variants.pruned(comp, 0.0, mode="m"))(params, x, target=1)
        np.testing.assert_array_equal(got, jaxlrp.lrp(fn, comp)(params, x, target=1))


def test_traced_p_zero_is_the_base_and_p_can_be_swept_under_one_jit():
    _, fn, params, x = _net("mlp", seed=6)
    comp = composites.EpsilonGammaBox(-3.0, 3.0)
    base = jaxlrp.lrp(fn, comp)(params, x, target=2)

    @jax.jit
    def sweep(ps):
        return jax.vmap(lambda p: jaxlrp.lrp(fn, variants.pruned(comp, p))(params, x, target=2))(ps)

    got = sweep(jnp.array([0.0, 0.3]))
    np.testing.assert_allclose(got[0], base, rtol=1e-12, atol=1e-15)
    static = jaxlrp.lrp(fn, variants.pruned(comp, 0.3))(params, x, target=2)
    np.testing.assert_allclose(got[1], static, rtol=1e-10, atol=1e-14)


CONSERVING = composites.Composite([
    ("first", rules.Flat(0.0)), ("conv", rules.ZPlus(0.0)), ("dense", rules.Zero()),
    ("sum", rules.Norm(0.0)), ("avgpool", rules.Norm(0.0)),
])


@pytest.mark.parametrize("kind", ["cnn", "resnet"])
@pytest.mark.parametrize("mode", variants.MODES)
def test_conservation_at_every_layer(kind, mode):
    """Zero-bias ReLU nets, conservative base: every layer's input relevance sums to
    the explained logit (lambda: per-sign masses kept; m: each upper neuron kept)."""
    _, fn, params, x = _net(kind, seed=7, bias=False)
    explain = jaxlrp.lrp(fn, variants.pruned(CONSERVING, 0.4, 0.2, mode=mode))
    rel, per = _jit(explain, target=1, layers=["linear", "sum", "avgpool"])(params, x)
    logit = fn(params, x)[:, 1]
    np.testing.assert_allclose(_sum(rel), logit, rtol=1e-9)
    if kind == "resnet":  # conv0 relu1 [start2 conv3 relu4 add5] relu6 avgpool7 flatten8 dense9
        branch, skip = per.pop("layer5")
        np.testing.assert_allclose(_sum(branch) + _sum(skip), logit, rtol=1e-9)
        np.testing.assert_allclose(_sum(per.pop("layer3")), _sum(branch), rtol=1e-9)
    assert len(per) == (4 if kind == "cnn" else 3)
    for key, r in per.items():
        np.testing.assert_allclose(_sum(r), logit, rtol=1e-9, err_msg=key)


def test_input_layer_is_not_pruned_and_inner_layers_are_sparser():
    _, fn, params, x = _net("cnn", seed=8)
    comp = composites.EpsilonPlusFlat()
    layers = [
        composites.Layer(0, "conv", "conv_general_dilated", "layer0", first=True),
        composites.Layer(1, "activation", "max", "layer1"),
        composites.Layer(2, "conv", "conv_general_dilated", "layer3"),
        composites.Layer(3, "avgpool", "reduce_window_sum", "layer5"),
        composites.Layer(4, "dense", "dot_general", "layer9", last=True),
    ]
    assigned = variants.pruned(comp, 0.5, mode="m").assign(layers)
    assert assigned[0] == rules.Flat() and assigned[1] == rules.Pass() and assigned[3] == rules.Norm()
    assert assigned[2] == variants.Pruned(rules.ZPlus(), 0.5, None, "m")
    assert assigned[4] == variants.Pruned(rules.Epsilon(), 0.5, None, "m")
    _, base_layers = _jit(jaxlrp.lrp(fn, comp), layers="linear")(params, x)
    _, pruned_layers = _jit(jaxlrp.lrp(fn, variants.pruned(comp, 0.5)), layers="linear")(params, x)
    for key in ("layer3", "layer7", "layer9"):  # the relevance at these layers' inputs...
        assert np.mean(pruned_layers[key] == 0) > np.mean(base_layers[key] == 0) + 0.1, key


def test_pruned_composite_api():
    comp = variants.pruned("epsilon_plus", 0.2, 0.1, mode="m")
    assert isinstance(comp, composites.Composite)
    assert (comp.p, comp.p_neg, comp.mode) == (0.2, 0.1, "m")
    assert isinstance(comp.base, composites.EpsilonPlus)
    assert comp.rules == comp.base.rules
    assert "EpsilonPlus" in repr(comp) and "mode='m'" in repr(comp)
    assert isinstance(variants.pruned(None, 0.2).base, composites.Composite)
    with pytest.raises(ValueError, match="mode"):
        variants.pruned("epsilon_plus", 0.2, mode="M")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        variants.pruned("epsilon_plus", 1.0)
    with pytest.raises(TypeError):
        variants.pruned(42, 0.2)
    # a Pruned rule can also be placed by hand
    _, fn, params, x = _net("mlp", seed=9)
    by_hand = composites.Composite([("first", rules.Epsilon()), ("dense", variants.Pruned(rules.Epsilon(), 0.3))])
    np.testing.assert_allclose(
        jaxlrp.lrp(fn, by_hand)(params, x), jaxlrp.lrp(fn, variants.pruned(None, 0.3))(params, x), rtol=1e-12
    )


COMPOSITES = {
    "lambda": variants.pruned(composites.EpsilonGammaBox(-3.0, 3.0), 0.3, 0.1),
    "m": variants.pruned(composites.EpsilonPlusFlat(), 0.3, mode="m"),
    "relative": variants.relative(),
}


def test_eager_equals_jit():
    _, fn, params, x = _net("mlp", seed=10)
    for comp in COMPOSITES.values():
        eager = jaxlrp.lrp(fn, comp)(params, x, target=1)
        np.testing.assert_allclose(jax.jit(jaxlrp.lrp(fn, comp))(params, x, target=1), eager, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind,name", [("mlp", "lambda"), ("resnet", "m"), ("resnet", "relative")])
def test_vmap_batch_and_loop_agree(kind, name):
    _, fn, params, x = _net(kind, seed=10)
    comp = COMPOSITES[name]
    target = jnp.array([0, 2, 3])
    batch = jax.jit(jaxlrp.lrp(fn, comp))(params, x, target=target)
    assert np.all(np.isfinite(batch))
    # one example per call (example_ndim = 0 inside vmap): no leakage between examples
    single = lambda params, x: fn(params, x[None])[0]
    vmapped = jax.jit(jax.vmap(lambda p, x, t: jaxlrp.lrp(single, comp)(p, x, target=t), in_axes=(None, 0, 0)))(
        params, x, target
    )
    np.testing.assert_allclose(vmapped, batch, rtol=1e-10, atol=1e-14)
    one = jax.jit(jaxlrp.lrp(fn, comp))
    for n in range(3):
        np.testing.assert_allclose(one(params, x[n:n + 1], target=target[n:n + 1])[0], batch[n], rtol=1e-10, atol=1e-14)


def test_float32():
    _, fn, params, x = _net("mlp", seed=11)
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    for comp in COMPOSITES.values():
        rel = jax.jit(jaxlrp.lrp(fn, comp))(params32, x.astype(np.float32))
        assert rel.dtype == jnp.float32 and np.all(np.isfinite(rel))


# -------------------------------------------------------------------------- R-LRP


def test_relative_is_bounded_where_lrp0_explodes():
    """Pre-activations at 1e-8 followed by a non-homogeneous activation (sigmoid):
    LRP-0 divides by them, R-LRP does not."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(1, 6))
    w1, w2 = rng.normal(size=(6, 8)), rng.normal(size=(8, 3))
    b1 = 1e-8 - x @ w1  # every pre-activation of the first layer is 1e-8

    def fn(params, x):
        w1, b1, w2 = params
        return jax.nn.sigmoid(x @ w1 + b1[0]) @ w2

    params = (w1, b1, w2)
    out = fn(params, x)
    mass = abs(float(out[0, 0]))
    lrp0 = jaxlrp.lrp(fn, rule=rules.Zero())(params, x, target=0)
    assert np.max(np.abs(lrp0)) > 1e4 * mass
    rel = jaxlrp.lrp(fn, variants.relative())(params, x, target=0)
    assert np.all(np.isfinite(rel))
    np.testing.assert_allclose(np.abs(rel).sum(), mass, rtol=1e-12)
    assert np.max(np.abs(rel)) <= mass


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_relative_keeps_the_l1_mass_at_every_layer(kind):
    """With biases, max pooling and ReLU: sum |R| at every layer is |f_c(x)|."""
    _, fn, params, x = _net(kind, seed=13)
    rel, per_layer = _jit(jaxlrp.lrp(fn, variants.relative()), target=2, layers="linear")(params, x)
    mass = np.abs(fn(params, x)[:, 2])
    np.testing.assert_allclose(np.abs(rel).reshape(3, -1).sum(1), mass, rtol=1e-10)
    for key, r in per_layer.items():
        np.testing.assert_allclose(np.abs(r).reshape(3, -1).sum(1), mass, rtol=1e-10, err_msg=key)


def test_relative_on_a_residual_network():
    """Each dense/conv/avgpool layer keeps the L1 mass it receives; the residual add
    splits proportionally (signed sum kept)."""
    _, fn, params, x = _net("resnet", seed=14)
    rel, per = _jit(jaxlrp.lrp(fn, variants.relative()), target=0, layers=["linear", "sum", "avgpool"])(params, x)
    assert np.all(np.isfinite(rel))
    l1 = lambda r: np.abs(np.asarray(r)).reshape(3, -1).sum(1)
    mass = np.abs(fn(params, x)[:, 0])
    # conv0 relu1 [start2 conv3 relu4 add5] relu6 avgpool7 flatten8 dense9
    assert set(per) == {"layer0", "layer3", "layer5", "layer7", "layer9"}
    np.testing.assert_allclose(l1(per["layer9"]), mass, rtol=1e-10)
    np.testing.assert_allclose(l1(per["layer7"]), mass, rtol=1e-10)
    branch, skip = per["layer5"]
    np.testing.assert_allclose(_sum(branch) + _sum(skip), _sum(per["layer7"]), rtol=1e-10)
    np.testing.assert_allclose(l1(per["layer3"]), l1(branch), rtol=1e-10)
    # the skip and the branch meet again at conv0's output: L1 mass can cancel there
    assert np.all(l1(per["layer0"]) <= l1(branch) + l1(skip) + 1e-12)


@pytest.mark.parametrize("kind,layer", [("mlp", "layer2"), ("cnn", "layer3"), ("resnet", "layer0")])
def test_relative_is_invariant_to_rescaling_a_layer(kind, layer):
    """Zero-bias ReLU nets: scaling one layer's weight by c > 0 scales the output by c
    and R-LRP's relevance by the same global factor, nothing else."""
    _, fn, params, x = _net(kind, seed=15, bias=False)
    scaled = dict(params, **{layer: {"kernel": params[layer]["kernel"] * 3.7}})
    explain = jax.jit(jaxlrp.lrp(fn, variants.relative()))
    rel, rel_scaled = explain(params, x, target=1), explain(scaled, x, target=1)
    np.testing.assert_allclose(rel_scaled, 3.7 * rel, rtol=1e-9, atol=1e-13)
    # while LRP-epsilon is not (its stabiliser sees the scale)
    eps = jax.jit(jaxlrp.lrp(fn, rule=rules.Epsilon(0.5)))
    assert not np.allclose(eps(scaled, x, target=1), 3.7 * eps(params, x, target=1), rtol=1e-6)


def test_relative_rule_validation_and_rho():
    assert variants.Relative().kinds == rules.WEIGHTED_KINDS | {"sum", "avgpool"}
    rng = np.random.default_rng(16)
    node = _dense_node(rng)
    R = jnp.asarray(rng.normal(size=node.output.shape))
    (r,) = variants.Relative(rho=lambda w: jnp.maximum(w, 0))(node, R)
    x, w = np.asarray(node.inputs[0]), np.maximum(np.asarray(node.weight), 0)
    expected = x * (np.asarray(R) @ w.T)
    expected *= (np.abs(np.asarray(R)).sum(1) / np.abs(expected).sum(1))[:, None]
    np.testing.assert_allclose(r, expected, rtol=1e-12)
    # a zero mass stays zero
    (r0,) = variants.Relative()(node, jnp.zeros_like(R))
    np.testing.assert_array_equal(r0, 0.0)


# ------------------------------------------------------- sparsity on a trained model


def _gini(r):
    """Gini index of |r| per example (Hurley & Rickard 2009): 0 uniform, -> 1 sparse."""
    c = jnp.sort(jnp.abs(r.reshape(r.shape[0], -1)), axis=-1)
    n = c.shape[-1]
    k = jnp.arange(1, n + 1)
    return 1 - 2 * jnp.sum(c / c.sum(-1, keepdims=True) * (n - k + 0.5) / n, axis=-1)


def _motif_data(rng, n, length=32, motif=(0, 3, 2, 2, 1)):
    """One-hot sequences (n, length, 4); label 1 = a planted motif."""
    seq = rng.integers(0, 4, size=(n, length))
    y = rng.integers(0, 2, size=n)
    pos = rng.integers(0, length - len(motif), size=n)
    for i in np.flatnonzero(y):
        seq[i, pos[i]:pos[i] + len(motif)] = motif
    return np.eye(4, dtype=np.float32)[seq], y


def _motif_cnn(params, x):
    dn = ("NWC", "WIO", "NWC")
    h = jax.nn.relu(lax.conv_general_dilated(x, params["c1"], (1,), "SAME", dimension_numbers=dn) + params["b1"])
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 1), (1, 2, 1), "VALID")
    h = jax.nn.relu(lax.conv_general_dilated(h, params["c2"], (1,), "SAME", dimension_numbers=dn) + params["b2"])
    return jnp.max(h, axis=1) @ params["w"] + params["b"]


def test_gini_sparsity_rises_with_p_on_a_trained_model():
    """A 1-D CNN trained for a second on planted motifs: the mean Gini index of the
    input relevance rises with the pruned proportion, in both modes."""
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(0)
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    f32 = jnp.float32
    params = {
        "c1": jax.random.normal(k[0], (5, 4, 16), f32) * 0.3, "b1": jnp.zeros(16, f32),
        "c2": jax.random.normal(k[1], (3, 16, 16), f32) * 0.2, "b2": jnp.zeros(16, f32),
        "w": jax.random.normal(k[2], (16, 2), f32) * 0.2, "b": jnp.zeros(2, f32),
    }
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, state, x, y):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(_motif_cnn(p, x), y).mean()
        updates, state = opt.update(jax.grad(loss)(params), state)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(150):
        params, state = step(params, state, *_motif_data(rng, 64))
    x, y = _motif_data(rng, 200)
    assert np.mean(np.argmax(_motif_cnn(params, x), -1) == y) > 0.9
    x = x[y == 1][:32]

    @jax.jit
    def sweep(params, x, ps):
        def gini(p, mode):
            explain = jaxlrp.lrp(_motif_cnn, variants.pruned(composites.EpsilonPlus(), p, mode=mode))
            return _gini(explain(params, x, target=1)).mean()
        return [jax.vmap(lambda p: gini(p, mode))(ps) for mode in variants.MODES]

    for g in sweep(params, x, jnp.array([0.0, 0.2, 0.4, 0.6, 0.8], f32)):
        assert np.all(np.diff(np.asarray(g)) > 0), g


# ------------------------------------------------ PLRP-M on deep random networks


def _deep(kind, depth, seed, bias=False):
    """A random ReLU network of ``depth`` dense or conv layers (He-scaled, so that the
    activations keep their size)."""
    width = [("dense", 16)] if kind == "mlp" else [("conv", 3, 6, 1, 1, 1)]
    spec = [item for _ in range(depth - 1) for item in width + [("relu",)]]
    spec += [("dense", 4)] if kind == "mlp" else [("flatten",), ("dense", 4)]
    shape = (12,) if kind == "mlp" else (6, 6, 3)
    rng = np.random.default_rng(seed)
    layers = nets.random_layers(rng, spec, shape, bias=bias)
    layers = [(l[0], l[1] * np.sqrt(2.0)) + tuple(l[2:]) if l[0] in ("dense", "conv") else l for l in layers]
    fn, params = nets.build(layers)
    return fn, params, np.clip(rng.normal(size=(6,) + shape), -3, 3)


def _stability(fn, params, x, base, p=0.5):
    """(max|R| ratio, L1 ratio) of PLRP-M to the base per example, and the conservation
    errors |sum R - f_c| / |f_c| of both."""
    return _stabilities(fn, [params], x, base, p)[0]


def _stabilities(fn, param_sets, x, base, p=0.5):
    """:func:`_stability` for parameter sets of one structure, each explainer
    compiled once for all of them."""
    explain = {
        comp: jax.jit(lambda params, x, t, e=jaxlrp.lrp(fn, comp): e(params, x, target=t))
        for comp in (base, variants.pruned(base, p, mode="m"))
    }
    out = []
    for params in param_sets:
        f = np.asarray(fn(params, x))
        t = f.argmax(-1)
        fc = f[np.arange(len(t)), t]
        rb, rm = (np.asarray(e(params, x, jnp.asarray(t))).reshape(len(t), -1) for e in explain.values())
        assert np.all(np.isfinite(rm))
        peak = np.abs(rm).max(1) / np.abs(rb).max(1)
        l1 = np.abs(rm).sum(1) / np.abs(rb).sum(1)
        cons = lambda r: np.abs(r.sum(1) - fc) / np.abs(fc)
        out.append((peak, l1, cons(rb), cons(rm)))
    return out


@pytest.mark.parametrize("kind,depth,base", [
    ("mlp", 45, composites.Composite([("linear", rules.Zero())])),
    ("mlp", 45, composites.Composite()),
    ("cnn", 6, composites.Composite()),
], ids=["mlp45-lrp0", "mlp45-epsilon", "cnn6-epsilon"])
def test_plrp_m_does_not_explode_on_deep_networks(kind, depth, base):
    """Issue 13, item 6. Re-evaluating the rule on the masked layer divided by sums of
    kept contributions that cancel: on these networks max|R| was 1e4-1e10 times the
    base's and the conservation error up to 1e2 (median). Now the pruned mass is moved,
    never amplified."""
    peak, l1, cons_base, cons_m = _stability(*_deep(kind, depth, seed=depth), base)
    assert np.median(peak) < 3 and np.max(peak) < 10, peak
    assert np.max(l1) < 5, l1
    assert np.median(cons_m) <= 2 * np.median(cons_base) + 1e-9, (cons_m, cons_base)


DEEP_BASES = {
    "epsilon": composites.Composite(), "EpsilonPlus": composites.EpsilonPlus(),
    "EpsilonPlusFlat": composites.EpsilonPlusFlat(), "EpsilonGammaBox": composites.EpsilonGammaBox(-3.0, 3.0),
    "EpsilonAlpha2Beta1": composites.EpsilonAlpha2Beta1(),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", [("mlp", n) for n in DEEP_BASES] + [("cnn", "EpsilonGammaBox")])
def test_plrp_m_is_stable_on_random_deep_networks_under_every_base(kind, name):
    """Depth drawn from 5-50 (dense, every base) or 5-6 (conv, one base: compiling
    deep conv stacks costs a minute each; the full sweep is bench/plrp_stability.py),
    with and without biases: finite,
    max|R| within a small factor of the base's, L1 mass not amplified, and the base's
    conservation kept."""
    seed = sum(map(ord, kind + name))
    depth = int(np.random.default_rng(seed).integers(5, 51 if kind == "mlp" else 7))
    fn, params, x = _deep(kind, depth, seed, bias=True)
    # zero biases stand for none: one structure, so each explainer compiles once
    unbiased = {k: {**v, "bias": jnp.zeros_like(v["bias"])} for k, v in params.items()}
    for bias, (peak, l1, cons_base, cons_m) in zip((False, True), _stabilities(fn, [unbiased, params], x, DEEP_BASES[name])):
        assert np.median(peak) < 5 and np.max(peak) < 20, (depth, bias, peak)
        assert np.max(l1) < 10, (depth, bias, l1)
        if not bias:
            assert np.median(cons_m) <= 5 * np.median(cons_base) + 1e-6, (depth, cons_m, cons_base)
