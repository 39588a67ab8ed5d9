"""Channel relevance over a batch (Yeom et al. 2021's pruning criterion)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlrp import composites, concepts, models, synthetic


@pytest.fixture(scope="module")
def cnn():
    ds = synthetic.shapes(0, 6, size=16)
    model = models.CNN(num_classes=4, channels=(3, 5), hidden=6)
    variables = model.init(jax.random.key(0), ds.x[:1])
    return model, variables, ds.x, ds.y


def test_channel_relevance_is_the_summed_concept_scores(cnn):
    model, variables, x, y = cnn
    comp = composites.EpsilonPlus()
    scores = jax.jit(concepts.channel_relevance(model.apply, comp))(variables, x, target=y)
    assert set(scores) == {"CNN/conv1", "CNN/conv2", "CNN/fc1", "CNN/head"}
    # jitted, as the uncompiled calls dispatch the rules' operations one by one (their
    # eager calls are tested in test_concepts.py and below, channel_relevance of a linen CNN)
    for key in ("CNN/conv1", "CNN/fc1"):
        per_example = jax.jit(concepts.relevance_scores(model.apply, comp, key))(variables, x, target=y)
        np.testing.assert_allclose(scores[key], per_example.sum(0), rtol=1e-5, atol=1e-6)
    only = jax.jit(concepts.channel_relevance(model.apply, comp, layers="conv"))(variables, x, target=y)
    assert set(only) == {"CNN/conv1", "CNN/conv2"}
    with pytest.raises(ValueError, match="matches no layer"):
        concepts.channel_relevance(model.apply, comp, layers="*/nothing")(variables, x, target=y)


# ------------------------------------------------------------------ parameter relevance

import jax.numpy as jnp  # noqa: E402

from jaxlrp import UnsupportedOperationError, lrp, rules  # noqa: E402

import reference as ref  # noqa: E402


def _msg(rule: str, A, x, b, R, **p):
    """Float64 messages ``msg[k, j]`` (output k <- input j) and bias shares of one
    layer ``z = A @ x + b`` (NumPy, one example)."""
    if rule == "epsilon":
        z = A @ x + b
        s = ref.safe_divide(R, ref.stabilize(z, p["epsilon"]))
        return A * x[None, :] * s[:, None], b * s
    alpha, beta = p["alpha"], p["beta"]
    xp, xn, Ap, An = np.maximum(x, 0), np.minimum(x, 0), np.maximum(A, 0), np.minimum(A, 0)
    pos, neg = Ap * xp[None] + An * xn[None], An * xp[None] + Ap * xn[None]
    sp = ref.safe_divide(R, ref.stabilize(pos.sum(1) + np.maximum(b, 0), p["stabilizer"]))
    sn = ref.safe_divide(R, ref.stabilize(neg.sum(1) + np.minimum(b, 0), p["stabilizer"]))
    msg = alpha * pos * sp[:, None] - beta * neg * sn[:, None]
    return msg, alpha * np.maximum(b, 0) * sp - beta * np.minimum(b, 0) * sn


def _reference_parameter_relevance(p, x, target, conv_rule: dict, dense_rule: dict):
    """Weight relevance of ``_conv_net`` by explicit messages, summed over examples."""
    k, bc, w, bd = (np.asarray(p[n], np.float64) for n in ("k", "bc", "w", "bd"))
    in_shape = x.shape[1:]
    A = ref.conv_matrix(k, in_shape)[0]
    masks = np.stack([ref.conv_matrix(np.eye(k.size)[e].reshape(k.shape), in_shape)[0] != 0 for e in range(k.size)])
    out = {n: np.zeros(np.shape(p[n])) for n in p}
    for xi, t in zip(np.asarray(x, np.float64), target):
        a = xi.reshape(-1)
        z1 = A @ a + np.tile(bc, A.shape[0] // bc.size)
        h = np.maximum(z1, 0)
        logits = h @ w + bd
        R = np.zeros_like(logits)
        R[t] = logits[t]
        m2, s2 = _msg(dense_rule["rule"], w.T, h, bd, R,
                      **{q: v for q, v in dense_rule.items() if q != "rule"})
        out["w"] += m2.T
        out["bd"] += s2
        m1, s1 = _msg(conv_rule["rule"], A, a, np.tile(bc, A.shape[0] // bc.size), m2.sum(0) * (z1 > 0),
                      **{q: v for q, v in conv_rule.items() if q != "rule"})
        out["k"] += (masks * m1[None]).sum((1, 2)).reshape(k.shape)
        out["bc"] += s1.reshape(-1, bc.size).sum(0)
    return out


def _conv_net(p, x):
    y = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(y + p["bc"])
    return h.reshape(h.shape[0], -1) @ p["w"] + p["bd"]


@pytest.fixture(scope="module")
def conv_net():
    ks = jax.random.split(jax.random.key(1), 5)
    with jax.enable_x64(True):
        p = {"k": jax.random.normal(ks[0], (3, 3, 2, 3), jnp.float64), "bc": 0.3 * jax.random.normal(ks[1], (3,), jnp.float64),
             "w": jax.random.normal(ks[2], (48, 4), jnp.float64) / 5, "bd": 0.3 * jax.random.normal(ks[3], (4,), jnp.float64)}
        x = jax.random.normal(ks[4], (3, 6, 6, 2), jnp.float64)
    return jax.tree_util.tree_map(np.asarray, p), np.asarray(x), np.array([0, 2, 3])


@pytest.mark.parametrize("conv_rule", [{"rule": "epsilon", "epsilon": 0.1},
                                       {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6}])
def test_parameter_relevance_matches_the_float64_reference(conv_net, conv_rule):
    p, x, y = conv_net
    first = rules.Epsilon(0.1) if conv_rule["rule"] == "epsilon" else rules.AlphaBeta(2.0, 1.0)
    comp = composites.Composite([("conv", first), ("dense", rules.Epsilon(0.01))])
    with jax.enable_x64(True):
        got = jax.jit(concepts.parameter_relevance(_conv_net, comp))(p, x, target=y)
    want = _reference_parameter_relevance(p, x, y, conv_rule, {"rule": "epsilon", "epsilon": 0.01})
    for n in p:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-9, atol=1e-12, err_msg=n)


def _mlp(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _mlp_params(zero_bias: bool):
    ks = jax.random.split(jax.random.key(2), 5)
    p = {"w1": jax.random.normal(ks[0], (5, 7)), "b1": 0.2 * jax.random.normal(ks[1], (7,)),
         "w2": jax.random.normal(ks[2], (7, 3)), "b2": 0.2 * jax.random.normal(ks[3], (3,))}
    if zero_bias:
        p = {**p, "b1": jnp.zeros(7), "b2": jnp.zeros(3)}
    return p, jax.random.normal(ks[4], (6, 5))


def test_lrp0_weight_relevance_is_conserved():
    """LRP-0, ReLU, zero biases: every layer's weights carry the whole f_c(x)."""
    p, x = _mlp_params(zero_bias=True)
    rel = concepts.parameter_relevance(_mlp, rule=rules.Zero())(p, x, target=1)
    total = float(_mlp(p, x)[:, 1].sum())
    for n in ("w1", "w2"):
        np.testing.assert_allclose(float(rel[n].sum()), total, rtol=1e-5)
        assert not np.any(rel["b" + n[1]])


@pytest.mark.parametrize("rule", [rules.Epsilon(0.3), rules.ZPlus(), rules.Gamma(0.5), rules.AlphaBeta(2.0, 1.0)])
def test_weight_relevance_sums_to_the_layer_input_relevance(rule):
    """Bilinear layers: summing R(w_jk) over the outputs k gives the relevance of
    input j summed over the examples, for any rule; over the inputs (plus the
    bias share) the output relevance, up to the stabiliser."""
    p, x = _mlp_params(zero_bias=False)
    rel = concepts.parameter_relevance(_mlp, rule=rule)(p, x, target=0)
    _, per_layer = lrp(_mlp, rule=rule)(p, x, target=0, layers="linear")
    np.testing.assert_allclose(rel["w1"].sum(1), per_layer["w1"].sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rel["w2"].sum(1), per_layer["w2"].sum(0), rtol=1e-4, atol=1e-5)
    out = rel["w2"].sum(0) + rel["b2"]
    z = np.asarray(_mlp(p, x)[:, 0], np.float64)
    eps = getattr(rule, "epsilon", 0.0)  # LRP-epsilon absorbs z eps / (z + eps sign z)
    np.testing.assert_allclose(out, [np.sum(z * z / ref.stabilize(z, eps)), 0, 0], rtol=1e-4, atol=1e-5)


def test_parameter_relevance_jit_eager_and_batch_sum():
    p, x = _mlp_params(zero_bias=False)
    y = np.array([0, 1, 2, 0, 1, 2])
    f = concepts.parameter_relevance(_mlp, composites.Composite([("dense", rules.Epsilon(0.1))]))
    eager, jitted = f(p, x, target=y), jax.jit(f)(p, x, target=y)
    per_example = [f(p, x[i:i + 1], target=y[i:i + 1]) for i in range(len(x))]
    for n in p:
        np.testing.assert_allclose(jitted[n], eager[n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sum(r[n] for r in per_example), eager[n], rtol=1e-4, atol=1e-5)


def test_parameter_relevance_of_a_linen_cnn_adds_up_to_channel_relevance(cnn):
    model, variables, x, y = cnn
    comp = composites.EpsilonPlus()
    rel = jax.jit(concepts.parameter_relevance(model.apply, comp))(variables, x, target=y)
    assert jax.tree_util.tree_structure(rel) == jax.tree_util.tree_structure(variables)
    channels = concepts.channel_relevance(model.apply, comp)(variables, x, target=y)
    for name in ("conv1", "conv2", "fc1", "head"):
        layer = rel["params"][name]
        assert layer["kernel"].shape == variables["params"][name]["kernel"].shape
        per_channel = layer["kernel"].reshape(-1, layer["kernel"].shape[-1]).sum(0) + layer["bias"]
        np.testing.assert_allclose(per_channel, channels[f"CNN/{name}"], rtol=1e-3, atol=1e-5, err_msg=name)


def test_scanned_layers_get_their_own_slice():
    """A lax.scan over stacked weights routes each layer's relevance to its slice."""
    ks = jax.random.split(jax.random.key(3), 3)
    w, x = jax.random.normal(ks[0], (3, 4, 4)) / 2, jax.random.normal(ks[1], (2, 4))

    def scanned(w, x):
        return jax.lax.scan(lambda h, wi: (jax.nn.relu(h @ wi), None), x, w)[0]

    def unrolled(w, x):
        for i in range(3):
            x = jax.nn.relu(x @ w[i])
        return x

    a = concepts.parameter_relevance(scanned, rule=rules.Epsilon(0.1))(w, x, target=1)
    b = concepts.parameter_relevance(unrolled, rule=rules.Epsilon(0.1))(w, x, target=1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(a).sum((1, 2)) > 0)


def test_parameter_relevance_refuses_what_it_cannot_route():
    p, x = _mlp_params(zero_bias=False)
    with pytest.raises(UnsupportedOperationError, match="gives no relevance of the layer's parameters"):
        concepts.parameter_relevance(_mlp, composites.Composite([("dense", rules.Gradient())]))(p, x)
    with pytest.raises(UnsupportedOperationError, match="computed from parameters"):
        concepts.parameter_relevance(lambda p, x: _mlp({**p, "w1": 2 * p["w1"]}, x), rule=rules.Epsilon())(p, x)


def test_parameter_relevance_leaves_other_parameters_none():
    p, x = _mlp_params(zero_bias=False)
    scale = jnp.ones(5)
    rel = concepts.parameter_relevance(lambda p, x: _mlp(p, x * p["scale"]), rule=rules.Epsilon())({**p, "scale": scale}, x)
    assert rel["scale"] is None and rel["w1"] is not None


def test_head_relevance_by_output_projection_equals_the_heads_output_relevance():
    """The two routes to an attention head's relevance agree: its slice of the
    output projection's weight relevance, and the relevance at its output."""
    from jaxlrp.models import transformer as T

    model = T.ViT(image_size=(16, 16), patch_size=8, dim=8, depth=1, heads=2, mlp_dim=8, num_classes=4, pool="mean")
    x = synthetic.shapes(0, 4, 16).x
    variables = model.init(jax.random.key(0), x[:1])
    comp = composites.AttnLRP()
    # jitted: the uncompiled call dispatches every operation of the ViT's rules one by
    # one (jit = eager: test_parameter_relevance_jit_eager_and_batch_sum)
    rel = jax.jit(concepts.parameter_relevance(model.apply, comp), static_argnames="target")(variables, x, target=0)
    _, per_layer = lrp(model.apply, comp)(variables, x, target=0, layers="*attn/out")
    (at_output,) = per_layer.values()  # (N, L, heads, head_dim)
    attn = rel["params"]["block0"]["attn"]
    np.testing.assert_allclose(attn["out"]["kernel"].sum((1, 2)), at_output.sum((0, 1, 3)), rtol=1e-4, atol=1e-6)
    assert attn["query"]["kernel"].shape == (8, 2, 4) and rel["params"]["block0"]["ln1"]["scale"] is None


@pytest.mark.slow
def test_pruning_example_runs_for_the_transformer(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "pruning.py"
    spec = importlib.util.spec_from_file_location("pruning_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model", "transformer", "--steps", "30", "--reference", "16", "--random", "1",
                        "--out", str(tmp_path)]) == 0
    assert (tmp_path / "pruning_transformer.png").exists() and (tmp_path / "pruning_transformer.md").exists()


def test_a_bias_folded_with_batchnorm_gets_no_share():
    """Conv + BatchNorm: the kernel still gets its relevance (summing to the conv's
    input relevance); the conv bias and the norm's parameters are None."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    model, x = Net(), jax.random.normal(jax.random.key(0), (2, 6, 6, 2))
    variables = model.init(jax.random.key(1), x)
    variables = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), variables)
    rel = jax.jit(concepts.parameter_relevance(model.apply, rule=rules.Epsilon(0.01)), static_argnames="target")(
        variables, x, target=0)
    _, per_layer = lrp(model.apply, rule=rules.Epsilon(0.01))(variables, x, target=0, layers="linear")
    np.testing.assert_allclose(rel["params"]["Conv_0"]["kernel"].sum(), per_layer["Net/Conv_0"].sum(), rtol=1e-4)
    assert rel["params"]["Conv_0"]["bias"] is None and rel["params"]["BatchNorm_0"] == {"bias": None, "scale": None}
    assert rel["batch_stats"]["BatchNorm_0"] == {"mean": None, "var": None}
    assert rel["params"]["Dense_0"]["bias"] is not None
