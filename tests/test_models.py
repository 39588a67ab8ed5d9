"""The model zoo: every model (linen and nnx) is explained under jit and vmap, with
finite relevance, conservation for zero-bias variants under conservative rules, and
the same relevance from the linen model and its nnx twin with the same weights.

Narrow widths and small inputs keep compilation short; the full-size VGG-16 and
ResNet-50 are explained in tests/test_torchvision.py."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
import jaxlrp.flax as jf
from jaxlrp import composites, models, rules
from jaxlrp.models import linen as L
from jaxlrp.models import nnx as N

F64 = jnp.float64


def _vgg(depth, bn):
    return (
        lambda dt: L.VGG(depth, 5, batch_norm=bn, width=4, hidden=16, param_dtype=dt),
        lambda dt: N.VGG(depth, 5, batch_norm=bn, width=4, hidden=16, param_dtype=dt, rngs=nnx.Rngs(0)),
        (32, 32, 3),
    )


def _resnet(depth):
    # 64x64 leaves a 2x2 map in the last stage (see test_flax.py's
    # test_residual_batchnorm_on_1x1_maps_batch_of_one for the 1x1 case)
    return (
        lambda dt: L.ResNet(depth, 5, width=4, param_dtype=dt),
        lambda dt: N.ResNet(depth, 5, width=4, param_dtype=dt, rngs=nnx.Rngs(0)),
        (64, 64, 3),
    )


# name: (linen constructor, nnx constructor, shape of one example)
CASES = {
    "mlp": (
        lambda dt: L.MLP((16, 8), 5, input_ndim=2, param_dtype=dt),
        lambda dt: N.MLP(28 * 28, (16, 8), 5, input_ndim=2, param_dtype=dt, rngs=nnx.Rngs(0)),
        (28, 28),
    ),
    "cnn28": (
        lambda dt: L.CNN(5, channels=(4, 8), hidden=16, param_dtype=dt),
        lambda dt: N.CNN(1, 28, 5, channels=(4, 8), hidden=16, param_dtype=dt, rngs=nnx.Rngs(0)),
        (28, 28, 1),
    ),
    "cnn32": (
        lambda dt: L.CNN(5, channels=(4, 8), hidden=16, param_dtype=dt),
        lambda dt: N.CNN(3, 32, 5, channels=(4, 8), hidden=16, param_dtype=dt, rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
    "vgg11": _vgg(11, False),
    "vgg11_bn": _vgg(11, True),
    "vgg13": _vgg(13, False),
    "vgg16_bn": _vgg(16, True),
    "vgg19": _vgg(19, False),
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "resnet50": _resnet(50),
    "sequence": (
        lambda dt: L.SequenceCNN(5, channels=(8, 8), kernel_size=5, hidden=8, param_dtype=dt),
        lambda dt: N.SequenceCNN(64, 4, 5, channels=(8, 8), kernel_size=5, hidden=8, param_dtype=dt, rngs=nnx.Rngs(0)),
        (64, 4),
    ),
}


def _inputs(name, shape, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if name == "sequence":  # one-hot DNA
        return jnp.asarray(np.eye(4)[rng.integers(0, 4, (n,) + shape[:1])], dtype)
    return jnp.asarray(rng.uniform(-1.0, 1.0, (n,) + shape), dtype)


def random_variables(model, x, seed=0):
    """Random linen variables without compiling an initialiser: He-scaled kernels,
    small biases, BatchNorm with non-trivial scales and statistics (in the dtype of
    ``x``, also the statistics, which flax would keep in float32)."""
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        name, shape = path[-1].key, a.shape
        if name == "kernel":
            value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif name == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bias, mean
            value = 0.1 * rng.normal(size=shape)
        return jnp.asarray(value, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def zero_bias(variables):
    """The zero-bias variant: no biases, BatchNorm without shift (folded biases are 0)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if path[-1].key in ("bias", "mean") else a, variables
    )


def nnx_twin(make, dtype, variables):
    """The nnx model with the linen variables, built abstractly (no initialiser runs)."""
    model = nnx.eval_shape(lambda: make(dtype))
    jf.load_linen_variables(model, variables)
    nnx.reseed(model, default=0)  # the dropout streams' keys
    return model


# Conservative rules (no stabilisers): flat on the first layer, z+ on the other
# convolutions, LRP-0 on dense layers, plain proportional splits of sums.
CONSERVING = composites.EpsilonPlusFlat(
    epsilon=0.0, stabilizer=0.0, rules=[("sum", rules.Norm(0.0)), ("avgpool", rules.Norm(0.0))]
)
# In a residual block the last convolution feeds the residual add, not a ReLU: a
# channel with only negative contributions can get a share of the relevance there,
# which z+ (like alpha-beta) cannot pass on. LRP-0 conserves everywhere.
CONSERVING_RESIDUAL = composites.Composite([
    ("first", rules.Flat(0.0)), ("linear", rules.Zero()), ("sum", rules.Norm(0.0)), ("avgpool", rules.Norm(0.0)),
])
# XLA's backend optimisations off: the same program, compiled about 3x faster
# (the zoo models here are tiny; the time is in compiling them).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_run(fn, *args):
    """``jax.jit(fn)(*args)``, compiled with :data:`FAST_COMPILE`."""
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


@pytest.mark.parametrize("name", list(CASES))
def test_jit_vmap_conservation_and_nnx_equals_linen(name):
    """Under jit: the nnx model under vmap (one example at a time) gives the relevance
    of the linen model on the batch, finite and, with zero biases and conservative
    rules, summing to the explained logit."""
    make_linen, make_nnx, shape = CASES[name]
    x = _inputs(name, shape, 3, F64)
    model = make_linen(F64)
    variables = zero_bias(random_variables(model, x, seed=1))
    twin = nnx_twin(make_nnx, F64, variables)
    targets = jnp.array([0, 3, 1])
    comp = CONSERVING_RESIDUAL if name.startswith("resnet") else CONSERVING

    batched = jf.value_and_lrp(model, comp)
    explain = jf.value_and_lrp(twin, comp)
    per_example = jax.vmap(lambda s, x, t: explain(s, x, target=t), in_axes=(None, 0, 0))

    def both(variables, state, x, targets):
        return batched(variables, x, target=targets), per_example(state, x, targets)

    (out, rel), (out_nnx, rel_nnx) = jit_run(both, variables, nnx.state(twin), x, targets)
    assert rel.shape == x.shape and rel.dtype == F64 and rel_nnx.dtype == F64
    assert np.all(np.isfinite(rel)) and np.all(np.isfinite(rel_nnx))
    np.testing.assert_allclose(out_nnx, out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rel_nnx, rel, rtol=1e-9, atol=1e-12 * float(np.abs(rel).max()))
    explained = out[jnp.arange(3), targets]
    assert np.all(np.abs(explained) > 1e-8)
    np.testing.assert_allclose(rel.reshape(3, -1).sum(1), explained, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_canonical_composite_linen_vmap_equals_nnx(name):
    """With biases, BatchNorm statistics and the family's canonical composite
    (float32): the linen model under vmap gives what its nnx twin gives on the batch."""
    make_linen, make_nnx, shape = CASES[name]
    x = _inputs(name, shape, 2, jnp.float32, seed=2)
    model = make_linen(jnp.float32)
    variables = random_variables(model, x, seed=3)
    twin = nnx_twin(make_nnx, jnp.float32, variables)
    explain = jf.lrp(model, models.canonical_composite(model))
    explain_nnx = jf.lrp(twin, models.canonical_composite(twin))

    def both(variables, state, x):
        return jax.vmap(lambda x: explain(variables, x, target=2))(x), explain_nnx(state, x, target=2)

    rel, rel_nnx = jit_run(both, variables, nnx.state(twin), x)
    assert rel.dtype == jnp.float32 and np.all(np.isfinite(rel)) and np.any(rel != 0)
    np.testing.assert_allclose(rel_nnx, rel, rtol=1e-4, atol=1e-5 * float(np.abs(rel).max()))


class Recording(composites.Composite):
    """A composite that records the rule it gives each layer (by weight path)."""

    def __init__(self, inner):
        super().__init__(inner.rules)
        self.seen = {}

    def rule_for(self, layer):
        rule = super().rule_for(layer)
        if layer.param_paths:
            self.seen[layer.param_paths[0]] = rule
        return rule


def test_vgg_composite_rules():
    """z^B on the pixels, gamma in blocks 1-3, epsilon in blocks 4-5, LRP-0 on the
    dense layers; the same layers get the same rules in linen and nnx (traced only)."""
    make_linen, make_nnx, shape = CASES["vgg11_bn"]
    x = _inputs("vgg11_bn", shape, 2, jnp.float32)
    model = make_linen(jnp.float32)
    variables = random_variables(model, x)
    twin = nnx_twin(make_nnx, jnp.float32, variables)
    comp = models.vgg_composite(epsilon=0.5)

    linen_rules = Recording(comp)
    jax.eval_shape(jaxlrp.lrp(model.apply, linen_rules), variables, x)
    nnx_rules = Recording(jf.nnx_composite(comp, twin))
    graphdef, state = nnx.split(twin)
    jax.eval_shape(jaxlrp.lrp(lambda s, x: nnx.merge(graphdef, s)(x), nnx_rules), state, x)

    by_linen = {p.split("/")[1]: r for p, r in linen_rules.seen.items()}
    by_nnx = {p.split("/")[0]: r for p, r in nnx_rules.seen.items()}
    assert by_linen == by_nnx
    assert isinstance(by_linen["conv1_1"], rules.ZBox)
    for layer in ("conv2_1", "conv3_1", "conv3_2"):
        assert by_linen[layer] == rules.Gamma(0.25)
    for layer in ("conv4_1", "conv4_2", "conv5_1", "conv5_2"):
        assert by_linen[layer] == rules.Epsilon(0.5)
    for layer in ("fc6", "fc7", "fc8"):
        assert by_linen[layer] == rules.Zero()


def test_composite_presets():
    low, high = models.imagenet_bounds()
    np.testing.assert_allclose(low * np.array(models.IMAGENET_STD) + models.IMAGENET_MEAN, 0.0, atol=1e-6)
    np.testing.assert_allclose(high * np.array(models.IMAGENET_STD) + models.IMAGENET_MEAN, 1.0, atol=1e-6)
    assert isinstance(models.resnet_composite("plus_flat"), composites.EpsilonPlusFlat)
    assert isinstance(models.resnet_composite(), composites.EpsilonGammaBox)
    with pytest.raises(ValueError, match="unknown ResNet composite variant 'gamma'"):
        models.resnet_composite("gamma")
    with pytest.raises(ValueError, match="pass both low and high"):
        models.vgg_composite(low=-1.0)
    with pytest.raises(ValueError, match="no canonical composite for Dense"):
        models.canonical_composite(linen.Dense(3))


def test_adaptive_pooling_matches_pytorch_bins():
    """VGG's AdaptiveAvgPool2d((7, 7)) for maps smaller, larger and not multiples of 7."""
    from jaxlrp.models import _common

    rng = np.random.default_rng(0)
    for size in (1, 7, 14, 5, 9):
        x = rng.normal(size=(2, size, size, 3))
        expected = np.zeros((2, 7, 7, 3))
        for i in range(7):
            for j in range(7):
                a, b = (i * size) // 7, -(-(i + 1) * size // 7)
                c, d = (j * size) // 7, -(-(j + 1) * size // 7)
                expected[:, i, j] = x[:, a:b, c:d].mean(axis=(1, 2))
        np.testing.assert_allclose(_common.adaptive_avg_pool(jnp.asarray(x)), expected, rtol=1e-12)
        np.testing.assert_allclose(_common.adaptive_avg_pool(jnp.asarray(x[0])), expected[0], rtol=1e-12)


def test_vgg_classifier_on_odd_map_sizes_conserves():
    """VGG's classifier (``method="classifier"``) on a 5x5 map, as a 160x160 input
    leaves: the overlapping adaptive-pooling bins (slices and means) conserve relevance."""
    model = L.VGG(11, 4, width=2, hidden=8, param_dtype=F64)
    h = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (2, 5, 5, 16)))
    variables = zero_bias(random_variables(model, jnp.zeros((1, 32, 32, 3), F64), seed=4))
    explain = jf.value_and_lrp(model, CONSERVING, method="classifier")
    logits, rel = jit_run(lambda v, h: explain(v, h, target=1), variables, h)
    np.testing.assert_allclose(logits, model.apply(variables, h, method="classifier"), rtol=1e-12)
    np.testing.assert_allclose(rel.reshape(2, -1).sum(1), logits[:, 1], rtol=1e-9)


def test_training_mode_models_raise():
    x = _inputs("vgg", (32, 32, 3), 2, jnp.float32)
    for train_model, layer in ((L.VGG(11, 5, batch_norm=True, width=2, hidden=8, train=True), "VGG/bn1_1"),
                               (L.VGG(11, 5, width=2, hidden=8, train=True), "VGG/drop6"),
                               (L.ResNet(18, 5, width=2, train=True), "ResNet/bn1")):
        variables = random_variables(train_model.clone(train=False), x)
        with pytest.raises(jf.TrainingModeError, match=f"{layer} "):
            jf.explain(train_model, variables, x)
    make_linen, make_nnx, shape = CASES["vgg11_bn"]
    x = _inputs("vgg11_bn", shape, 2, jnp.float32, seed=2)
    twin = nnx_twin(make_nnx, jnp.float32, random_variables(make_linen(jnp.float32), x, seed=3))
    twin.train()
    with pytest.raises(jf.TrainingModeError, match=r"bn1_1 \(BatchNorm: use_running_average=False") as e:
        jf.explain(twin, x)
    assert any("drop6 (Dropout: deterministic=False" in layer for layer in e.value.layers)
    twin.eval()
    jf.check_inference_mode(twin)
    assert jax.eval_shape(jf.lrp(twin), nnx.state(twin), x).shape == x.shape


def test_constructor_errors():
    with pytest.raises(ValueError, match="VGG depth must be one of"):
        L.VGG(12).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="ResNet depth must be one of"):
        N.ResNet(101, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 4"):
        N.CNN(1, 30, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by pool"):
        N.SequenceCNN(30, rngs=nnx.Rngs(0))
