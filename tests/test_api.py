"""The public API contract: arguments, targets, pytrees, per-layer relevance, inspect."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="fc1")(x))
        x = nn.relu(nn.Dense(12, name="fc2")(x))
        return nn.Dense(5, name="head")(x)


@pytest.fixture
def mlp():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 7))
    v = MLP().init(jax.random.PRNGKey(0), x)
    return MLP().apply, v, x


def test_shape_dtype_and_target_conventions(mlp):
    fn, v, x = mlp
    explain = jaxlrp.lrp(fn, rule=rules.Zero(ignore_bias=False))
    out = fn(v, x)
    r_none = explain(v, x)
    r_argmax = explain(v, x, target=jnp.argmax(out, -1))
    np.testing.assert_array_equal(r_none, r_argmax)
    r3 = explain(v, x, target=3)
    r3b = explain(v, x, target=np.full(4, 3))
    np.testing.assert_array_equal(r3, r3b)
    seed = np.zeros(out.shape)
    seed[:, 3] = 1.0  # Zennit's convention: a one-hot seed
    r_onehot = explain(v, x, output_relevance=seed)
    np.testing.assert_allclose(r3, r_onehot * out[:, 3:4], rtol=1e-10)  # LRP-0 is linear in the seed
    assert r3.shape == x.shape and r3.dtype == x.dtype


def test_value_and_lrp(mlp):
    fn, v, x = mlp
    out, rel = jaxlrp.value_and_lrp(fn, composites.EpsilonPlusFlat())(v, x, target=1)
    np.testing.assert_allclose(out, fn(v, x), rtol=1e-10)
    np.testing.assert_array_equal(rel, jaxlrp.lrp(fn, composites.EpsilonPlusFlat())(v, x, target=1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(target=np.zeros((3,), int)), "target has shape"),
        (dict(target=np.zeros((4, 2), int)), "target has shape"),
        (dict(target=5), "out of range"),
        (dict(target=-1), "out of range"),
        (dict(target=1.5), "integer"),
        (dict(output_relevance=np.ones((4, 4))), "output_relevance has shape"),
        (dict(target=1, output_relevance=np.ones((4, 5))), "either"),
    ],
)
def test_bad_targets_raise_value_error(mlp, kwargs, match):
    fn, v, x = mlp
    with pytest.raises(ValueError, match=match):
        jaxlrp.lrp(fn)(v, x, **kwargs)


def test_argnums_and_pytree_inputs():
    rng = np.random.default_rng(1)
    w = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5, 4))}

    def fn(inputs, w, scale):
        return scale * (inputs["a"] @ w["a"] + inputs["b"] @ w["b"])

    inputs = {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=(2, 5))}
    exact = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0))])
    rel = jaxlrp.lrp(fn, exact, argnums=0)(inputs, w, 2.0, target=1)
    assert set(rel) == {"a", "b"} and rel["a"].shape == (2, 3)
    # LRP-0 on a linear function is x * grad (per leaf)
    g = jax.grad(lambda i: fn(i, w, 2.0)[:, 1].sum())(inputs)
    for k in rel:
        np.testing.assert_allclose(rel[k], inputs[k] * g[k], rtol=1e-10)
    # two explained arguments at once
    ra, rw = jaxlrp.lrp(lambda a, b: a @ b, rule=rules.Zero(), argnums=(0, 1))(inputs["a"], w["a"], target=0)
    assert ra.shape == (2, 3) and rw.shape == (3, 4)


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        jaxlrp.lrp(lambda w, x: w[x])(jnp.ones(3), jnp.array([0, 1]))


def test_per_layer_relevance(mlp):
    fn, v, x = mlp
    comp = composites.Composite([("dense", rules.ZPlus(0.0))])
    rel, per_layer = jaxlrp.lrp(fn, comp)(v, x, target=2, layers="*/fc*")
    assert set(per_layer) == {"MLP/fc1", "MLP/fc2"}
    np.testing.assert_array_equal(per_layer["MLP/fc1"], rel)  # the first layer's input is x
    assert per_layer["MLP/fc2"].shape == (4, 16)
    # z+ without bias or stabiliser conserves layer by layer
    _, per_layer = jaxlrp.lrp(fn, composites.Composite([("dense", rules.ZPlus(0.0, ignore_bias=True))]))(
        v, x, target=2, layers=["*/fc2", "*/head"])
    logit = fn(v, x)[:, 2]
    for key in ("MLP/fc2", "MLP/head"):
        np.testing.assert_allclose(per_layer[key].sum(1), logit, rtol=1e-6)
    out, (rel2, _) = jaxlrp.value_and_lrp(fn, comp)(v, x, target=2, layers="dense")
    np.testing.assert_array_equal(rel2, rel)


def test_per_layer_relevance_under_jit(mlp):
    fn, v, x = mlp
    explain = jax.jit(jaxlrp.lrp(fn), static_argnames="layers")
    rel, per_layer = explain(v, x, layers="*/head")
    assert per_layer["MLP/head"].shape == (4, 12)


def test_inspect_report(mlp, capsys):
    fn, v, x = mlp
    rep = jaxlrp.inspect(fn, composites.EpsilonPlusFlat())(v, x, target=0)
    assert capsys.readouterr().out == ""  # printed once, where the user prints it (issue 28)
    printed = repr(rep)
    assert printed == str(rep)
    assert "MLP/fc1" in printed and "Flat" in printed and "activations, rule Pass()" in printed
    assert "fallback" not in printed  # ReLU has a rule; reshapes are exact: nothing falls back
    assert [r.key for r in rep.rows] == ["MLP/fc1", "MLP/fc2", "MLP/head"]
    assert rep.rows[0].rule.startswith("Flat") and rep.rows[2].rule.startswith("Epsilon")
    assert rep.rows[2].param_paths == ("params/head/kernel",)
    assert any("max" == p for _, p, _ in rep.activations) and rep.fallbacks == ()  # relu -> activation
    # the table's sums are the real ones: output relevance is the sum of the logits
    np.testing.assert_allclose(rep.output_relevance, float(fn(v, x)[:, 0].sum()), rtol=1e-10)
    np.testing.assert_allclose(rep.rows[2].relevance_out, rep.output_relevance, rtol=1e-10)
    np.testing.assert_allclose(rep.rows[0].relevance_in, rep.input_relevance, rtol=1e-10)
    # flat drops the bias: conservation at the first layer up to its stabiliser (1e-6 / 7)
    np.testing.assert_allclose(rep.rows[0].conservation, 1.0, rtol=1e-6)


def test_closed_over_parameters_work_with_names(mlp):
    fn, v, x = mlp
    comp = composites.Composite([("*/fc1", rules.Flat())])
    a = jaxlrp.lrp(lambda x: fn(v, x), comp)(x)
    b = jaxlrp.lrp(fn, comp)(v, x)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_composite_validation():
    with pytest.raises(TypeError):
        composites.Composite([("conv",)])
    with pytest.raises(TypeError):
        composites.Composite([("conv", "zplus")])
    with pytest.raises(ValueError, match="unknown layer kind"):
        composites.kind("convolution")
    with pytest.raises(ValueError, match="either"):
        jaxlrp.lrp(lambda x: x, composites.EpsilonPlus(), rule=rules.Zero())


def test_rule_that_cannot_apply_to_matched_layers_raises(mlp):
    fn, v, x = mlp
    comp = composites.Composite([("*/fc1", rules.Norm())])
    with pytest.raises(ValueError, match="applies only to kinds"):
        jaxlrp.lrp(fn, comp)(v, x)


def test_custom_rule_sees_example_axes():
    """A user-defined rule plugs in like a built-in one, and learns how many leading
    axes index examples (0 inside vmap): what per-example rules need."""
    import dataclasses

    seen = []

    @dataclasses.dataclass(frozen=True)
    class Probe(rules.Rule):
        kinds = frozenset({"dense"})

        def __call__(self, node, relevance):
            seen.append(node.example_ndim)
            return rules.Epsilon()(node, relevance)

    w = np.random.default_rng(0).normal(size=(4, 3))
    fn = lambda w, x: x @ w
    x = np.random.default_rng(1).normal(size=(2, 5, 4))
    explain = jaxlrp.lrp(fn, rule=Probe())
    r2 = explain(w, x)
    r1 = explain(w, x[0])
    r0 = jax.vmap(explain, in_axes=(None, 0))(w, x[0])
    assert seen == [2, 1, 0]
    np.testing.assert_allclose(r2[0], r1, rtol=1e-12)
    np.testing.assert_allclose(r0, r1, rtol=1e-12)
    np.testing.assert_allclose(r1, jaxlrp.lrp(fn)(w, x[0]), rtol=1e-12)


def test_layers_without_name_stack_are_named_by_parameter_path():
    """Plain pytrees and flax nnx push no names: the weight's path names the layer."""
    rng = np.random.default_rng(0)
    p = {"w1": rng.normal(size=(4, 5)), "w2": rng.normal(size=(5, 2))}
    fn = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
    rel, per_layer = jaxlrp.lrp(fn)(p, rng.normal(size=(3, 4)), layers="w*")
    assert set(per_layer) == {"w1", "w2"}
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Linear(4, 5, rngs=rngs)
            self.head = nnx.Linear(5, 2, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.conv1(x)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    rep = jaxlrp.inspect(lambda s, x: nnx.merge(graphdef, s)(x), verbose=False)(state, np.ones((2, 4)))
    assert [r.key for r in rep.rows] == ["conv1", "head"]
