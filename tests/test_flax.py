"""jaxlrp.flax: linen and nnx models explained in one line, layers matched by module
path (nnx: derived from the parameter path), training mode refused, linen weights
moved into nnx."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
import jaxlrp.flax as jf
from jaxlrp import composites, rules


# ------------------------------------------------------------------ small models


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(3, (3, 3), name="conv1")(x))


class LinenNet(nn.Module):
    """Two blocks and a head, with the same names as NnxNet."""

    def setup(self):
        self.blocks = [LinenBlock(), LinenBlock()]
        self.head = nn.Dense(4)

    def embed(self, x):
        for block in self.blocks:
            x = block(x)
        return jnp.mean(x, axis=(-3, -2))

    def __call__(self, x):
        return self.head(self.embed(x))


class NnxBlock(nnx.Module):
    def __init__(self, c_in, rngs):
        self.conv1 = nnx.Conv(c_in, 3, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv1(x))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.blocks = nnx.List([NnxBlock(2, rngs), NnxBlock(3, rngs)])
        self.head = nnx.Linear(3, 4, rngs=rngs)

    def embed(self, x):
        for block in self.blocks:
            x = block(x)
        return jnp.mean(x, axis=(-3, -2))

    def __call__(self, x):
        return self.head(self.embed(x))


@pytest.fixture(scope="module")
def nets():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 2)))
    linen = LinenNet()
    variables = linen.init(jax.random.PRNGKey(0), x)
    # linen's list attribute names its blocks blocks_0, blocks_1; nnx's List 0, 1
    renamed = {"params": {"head": variables["params"]["head"],
                          "blocks": {str(i): variables["params"][f"blocks_{i}"] for i in range(2)}}}
    model = NnxNet(nnx.Rngs(0))
    jf.load_linen_variables(model, renamed)
    return linen, variables, model, x


# ------------------------------------------------------------------------- linen


def test_linen_one_line_equals_core(nets):
    linen, variables, _, x = nets
    comp = composites.EpsilonPlusFlat()
    expected = jaxlrp.lrp(linen.apply, comp)(variables, x, target=1)
    np.testing.assert_array_equal(jf.explain(linen, variables, x, composite=comp, target=1), expected)
    np.testing.assert_allclose(jax.jit(jf.lrp(linen, comp))(variables, x, target=1), expected, rtol=1e-10)
    out, rel = jf.value_and_lrp(linen, comp)(variables, x, target=1)
    np.testing.assert_array_equal(out, linen.apply(variables, x))
    np.testing.assert_array_equal(rel, expected)


def test_linen_name_stack_matching(nets):
    linen, variables, _, x = nets
    by_name = composites.Composite([("*/blocks_1/conv1", rules.Flat())])
    by_param = composites.Composite([("params/blocks_1/conv1/*", rules.Flat())])
    a = jf.explain(linen, variables, x, composite=by_name)
    np.testing.assert_array_equal(a, jf.explain(linen, variables, x, composite=by_param))
    assert not np.allclose(a, jf.explain(linen, variables, x))
    report = jf.inspect(linen, by_name, verbose=False)(variables, x)
    assert [r.rule.split("(")[0] for r in report.rows if r.kind == "conv"] == ["Epsilon", "Flat"]


def test_linen_method(nets):
    linen, variables, _, x = nets
    rel = jf.explain(linen, variables, x, method="embed", target=2)
    expected = jaxlrp.lrp(lambda v, x: linen.apply(v, x, method="embed"))(variables, x, target=2)
    np.testing.assert_array_equal(rel, expected)
    by_function = jf.explain(linen, variables, x, method=lambda m, x: m.embed(x), target=2)
    np.testing.assert_array_equal(by_function, expected)


# --------------------------------------------------------------------------- nnx


def test_nnx_equals_linen_and_core(nets):
    linen, variables, model, x = nets
    comp = composites.EpsilonGammaBox(-3.0, 3.0)
    graphdef, state = nnx.split(model)
    core = jaxlrp.lrp(lambda s, x: nnx.merge(graphdef, s)(x), comp)(state, x, target=3)
    rel = jf.explain(model, x, composite=comp, target=3)
    np.testing.assert_array_equal(rel, core)
    np.testing.assert_allclose(rel, jf.explain(linen, variables, x, composite=comp, target=3), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jf.lrp(model, comp))(state, x, target=3), rel, rtol=1e-10)
    per_example = jax.vmap(lambda x: jf.lrp(model, comp)(state, x, target=3))(x)
    np.testing.assert_allclose(per_example, rel, rtol=1e-10)


@pytest.mark.parametrize("pattern", ["blocks/1/conv1", "*/1/conv1", "NnxNet/blocks/1/conv1", "blocks/1/*"])
def test_nnx_attribute_path_matching(nets, pattern):
    """nnx layers are selected by attribute path, as the plain parameter glob does."""
    _, _, model, x = nets
    rel = jf.explain(model, x, composite=composites.Composite([(pattern, rules.Flat())]))
    graphdef, state = nnx.split(model)
    fn = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    expected = jaxlrp.lrp(fn, composites.Composite([("blocks/1/conv1/*", rules.Flat())]))(state, x)
    np.testing.assert_array_equal(rel, expected)
    assert not np.allclose(rel, jf.explain(model, x))


def test_nnx_names_like_linen(nets):
    """``"*/conv1"`` selects both blocks' conv1 in linen and nnx; callables see the
    linen-style name."""
    linen, variables, model, x = nets
    comp = composites.Composite([("*/conv1", rules.ZPlus())])
    np.testing.assert_allclose(jf.explain(model, x, composite=comp),
                               jf.explain(linen, variables, x, composite=comp), rtol=1e-12)
    seen = []

    def spy(layer):
        seen.append(layer.name)
        return False

    jf.explain(model, x, composite=composites.Composite([(spy, rules.Flat())]))
    assert {"NnxNet/blocks/0/conv1", "NnxNet/blocks/1/conv1", "NnxNet/head"} <= set(seen)


def test_nnx_per_layer_relevance(nets):
    _, _, model, x = nets
    rel, per_layer = jf.explain(model, x, layers="blocks/1/conv1", target=0)
    assert list(per_layer) == ["blocks/1/conv1"]  # named by the parameter path
    (r_in,) = per_layer.values()
    assert r_in.shape == (2, 6, 6, 3)
    np.testing.assert_allclose(rel, jf.explain(model, x, target=0))


def test_nnx_inspect(nets):
    _, _, model, x = nets
    comp = composites.Composite([("blocks/0/conv1", rules.Flat())])
    report = jf.inspect(model, comp, verbose=False)(nnx.state(model), x, target=0)
    rules_by_param = {r.param_paths[0]: r.rule for r in report.rows if r.param_paths}
    assert rules_by_param["blocks/0/conv1/kernel/value"].startswith("Flat")
    assert rules_by_param["blocks/1/conv1/kernel/value"].startswith("Epsilon")
    # the same table as jaxlrp.inspect of the state function, under the nnx module paths
    rows = {r.key: r.rule for r in report.rows if r.param_paths}
    assert rows["blocks/0/conv1"].startswith("Flat")
    graphdef, state = nnx.split(model)
    fn = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    assert jaxlrp.inspect(fn, jf.nnx_composite(comp, model), verbose=False)(state, x, target=0) == report


def test_module_path():
    layer = composites.Layer(index=0, kind="conv", primitive="conv_general_dilated", name="",
                             param_paths=("blocks/0/conv1/kernel/value",))
    assert jf.module_path(layer) == "blocks/0/conv1"
    assert jf.module_path(dataclasses.replace(layer, param_paths=("params/Dense_0/kernel",))) == "params/Dense_0"
    assert jf.module_path(dataclasses.replace(layer, param_paths=())) == ""
    # the core's rule for layers without a name stack (jaxlrp._core.paths): a parameter of the
    # root module has the root's empty path, a plain pytree leaf names itself
    assert jf.module_path(dataclasses.replace(layer, param_paths=("kernel/value",))) == ""
    assert jf.module_path(dataclasses.replace(layer, param_paths=("w1",))) == "w1"
    assert jf.module_path(dataclasses.replace(layer, param_paths=("a/kernel/value", "b/kernel/value"))) == ""


def test_nnx_composite_keeps_order_and_kinds():
    comp = jf.nnx_composite(composites.EpsilonGammaBox(-1.0, 1.0), rule=None)
    assert [r for _, r in comp.rules] == [r for _, r in composites.EpsilonGammaBox(-1.0, 1.0).rules]
    assert [r for _, r in jf.nnx_composite(rule=rules.Zero()).rules][0] == rules.Zero()


# ------------------------------------------------------------------ training mode


class CallTimeBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(3)(x)
        x = nn.BatchNorm()(x, use_running_average=not train)
        return nn.Dropout(0.5)(x, deterministic=not train)


class Counter(nn.Module):
    """Updates a variable on every call (like a BatchNorm in training mode)."""

    @nn.compact
    def __call__(self, x):
        count = self.variable("batch_stats", "count", jnp.zeros, ())
        count.value += 1
        return nn.Dense(2)(x)


def test_linen_training_mode():
    x = jnp.ones((2, 4))
    module = CallTimeBN()
    variables = module.init(jax.random.PRNGKey(0), x)
    assert jf.explain(module, variables, x).shape == x.shape
    jf.check_inference_mode(module, variables, x)
    with pytest.raises(jf.TrainingModeError, match=r"CallTimeBN/BatchNorm_0 \(BatchNorm: use_running_average=False"):
        jf.explain(module, variables, x, method=lambda m, x: m(x, train=True))
    with pytest.raises(jf.TrainingModeError, match="CallTimeBN/BatchNorm_0"):
        jf.check_inference_mode(module, variables, x, method=lambda m, x: m(x, train=True))
    dropout = nn.Dropout(0.3, deterministic=False)
    with pytest.raises(jf.TrainingModeError, match="Dropout: deterministic=False"):
        jf.explain(dropout, {}, x)
    assert jf.explain(nn.Dropout(0.0, deterministic=False), {}, x).shape == x.shape  # rate 0: no dropout
    counter = Counter()
    with pytest.raises(jf.TrainingModeError, match="updates its variables") as e:
        jf.explain(counter, counter.init(jax.random.PRNGKey(0), x), x)
    assert isinstance(e.value, ValueError)


def test_nnx_training_mode():
    model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)),
                           nnx.Dropout(0.5, rngs=nnx.Rngs(0)))
    x = jnp.ones((2, 4))
    with pytest.raises(jf.TrainingModeError) as e:  # nnx modules start in training mode
        jf.lrp(model)
    assert e.value.layers == ("layers/1 (BatchNorm: use_running_average=False normalises with batch statistics)",
                              "layers/2 (Dropout: deterministic=False applies random dropout)")
    with pytest.raises(jf.TrainingModeError):
        jf.inspect(model)
    model.eval()
    assert jf.explain(model, x).shape == x.shape


# ----------------------------------------------------------------------- errors


def test_argument_errors(nets):
    linen, variables, model, x = nets
    with pytest.raises(TypeError, match=r"explain\(linen_module, variables, x"):
        jf.explain(linen, x)
    with pytest.raises(TypeError, match=r"explain\(nnx_model, x"):
        jf.explain(model, variables, x)
    with pytest.raises(TypeError, match="expected a Flax linen or nnx module, got function"):
        jf.explain(lambda x: x, x)


def test_load_linen_variables_errors(nets):
    _, variables, model, _ = nets
    bad = {"params": {"head": {"kernel": np.zeros((5, 4)), "bias": np.zeros(4)},
                      "blocks": {"0": variables["params"]["blocks_0"]},
                      "extra": {"kernel": np.zeros(1)}}}
    with pytest.raises(ValueError) as e:
        jf.load_linen_variables(model, bad)
    msg = str(e.value)
    assert "nnx variables without a linen value: params/blocks/1/conv1/bias, params/blocks/1/conv1/kernel" in msg
    assert "linen variables with no nnx counterpart: params/extra/kernel" in msg
    assert "params/head/kernel: linen (5, 4), nnx (3, 4)" in msg
    with pytest.raises(TypeError, match="expected an nnx module"):
        jf.load_linen_variables(LinenNet(), variables)
