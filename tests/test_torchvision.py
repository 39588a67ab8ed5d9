"""torchvision weights without torch: synthetic state dicts with torchvision's key
names and shapes (written out here from torchvision's VGG and ResNet definitions,
independently of the loader's tables) load into the zoo, and layers computed with
NumPy from the original PyTorch-layout arrays equal the imported layers' outputs.

VGG-16 and ResNet-50 are loaded at full size and explained once each at 224x224."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp.flax as jf
from jaxlrp import models

# torchvision.models.vgg: cfgs "A", "B", "D", "E"
VGG_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# torchvision.models.resnet: block type and layers
RESNET_CFG = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}


def _bn(sd, prefix, n):
    sd[f"{prefix}.weight"] = ("bn_weight", (n,))
    sd[f"{prefix}.bias"] = ("bn_bias", (n,))
    sd[f"{prefix}.running_mean"] = ("bn_mean", (n,))
    sd[f"{prefix}.running_var"] = ("bn_var", (n,))
    sd[f"{prefix}.num_batches_tracked"] = ("count", ())


def vgg_spec(depth, batch_norm, div=1, hidden=4096, num_classes=1000):
    """Keys and shapes of torchvision's vgg{depth}[_bn] state dict (channels / div)."""
    sd, i, cin = {}, 0, 3
    for v in VGG_CFG[depth]:
        if v == "M":
            i += 1
            continue
        v //= div
        sd[f"features.{i}.weight"] = ("conv", (v, cin, 3, 3))
        sd[f"features.{i}.bias"] = ("bias", (v,))
        if batch_norm:
            _bn(sd, f"features.{i + 1}", v)
            i += 3
        else:
            i += 2
        cin = v
    sd["classifier.0.weight"] = ("linear", (hidden, cin * 7 * 7))
    sd["classifier.0.bias"] = ("bias", (hidden,))
    sd["classifier.3.weight"] = ("linear", (hidden, hidden))
    sd["classifier.3.bias"] = ("bias", (hidden,))
    sd["classifier.6.weight"] = ("linear", (num_classes, hidden))
    sd["classifier.6.bias"] = ("bias", (num_classes,))
    return sd


def resnet_spec(depth, div=1, num_classes=1000):
    """Keys and shapes of torchvision's resnet{depth} state dict (channels / div)."""
    block, counts = RESNET_CFG[depth]
    expansion = 1 if block == "basic" else 4
    width = 64 // div
    sd = {"conv1.weight": ("conv", (width, 3, 7, 7))}
    _bn(sd, "bn1", width)
    inplanes = width
    for s, n in enumerate(counts):
        planes = width * 2**s
        for b in range(n):
            stride = 2 if s > 0 and b == 0 else 1
            p = f"layer{s + 1}.{b}"
            if block == "basic":
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            else:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * expansion, planes, 1)]
            for k, (o, c, kk) in enumerate(convs, start=1):
                sd[f"{p}.conv{k}.weight"] = ("conv", (o, c, kk, kk))
                _bn(sd, f"{p}.bn{k}", o)
            if stride != 1 or inplanes != planes * expansion:
                sd[f"{p}.downsample.0.weight"] = ("conv", (planes * expansion, inplanes, 1, 1))
                _bn(sd, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    sd["fc.weight"] = ("linear", (num_classes, inplanes))
    sd["fc.bias"] = ("bias", (num_classes,))
    return sd


def synthesize(spec, seed=0):
    """Random arrays for a spec: He-scaled weights, BatchNorm statistics near 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, (kind, shape) in spec.items():
        if kind == "count":
            out[key] = np.array(7, dtype=np.int64)
        elif kind in ("conv", "linear"):
            fan_in = int(np.prod(shape[1:]))
            gain = 2.0 if kind == "conv" else 1.0
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(gain / fan_in))
        elif kind == "bn_var":
            out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif kind == "bn_weight":
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def conv_nchw(x, w, stride=1, pad=0):
    """Cross-correlation of NCHW ``x`` with OIHW ``w`` (PyTorch's Conv2d), float64."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, _, kh, kw = w.shape
    oh = (x.shape[2] - kh) // stride + 1
    ow = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], o, oh, ow))
    for a in range(kh):
        for b in range(kw):
            patch = x[:, :, a:a + stride * oh:stride, b:b + stride * ow:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, a, b].astype(np.float64))
    return out


def bn_nchw(x, sd, prefix, eps=1e-5):
    c = lambda a: np.asarray(a, np.float64)[None, :, None, None]  # noqa: E731
    return (x - c(sd[f"{prefix}.running_mean"])) / np.sqrt(c(sd[f"{prefix}.running_var"]) + eps) * c(
        sd[f"{prefix}.weight"]
    ) + c(sd[f"{prefix}.bias"])


def nchw(a):
    return np.transpose(np.asarray(a, np.float64), (0, 3, 1, 2))


def assert_close(actual, expected, rtol=2e-4):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def _images(n=1, size=224, seed=1):
    pixels = np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3))
    return jnp.asarray((pixels - models.IMAGENET_MEAN) / models.IMAGENET_STD, jnp.float32)


def _captured(state, *path):
    node = state["intermediates"]
    for p in path:
        node = node[p]
    return node["__call__"][0]


def test_vgg16_full_size_loads_and_explains():
    sd = synthesize(vgg_spec(16, False))
    model, variables = models.load_torchvision("vgg16", sd)
    assert (model.depth, model.width, model.hidden, model.num_classes) == (16, 64, 4096, 1000)
    x = _images()
    logits, state = model.apply(
        variables, x, capture_intermediates=lambda m, name: m.name in ("conv1_1", "fc6") or name == "features"
    )
    assert logits.shape == (1, 1000) and np.all(np.isfinite(logits))
    # the first convolution, from the OIHW arrays
    assert_close(nchw(_captured(state, "conv1_1")), conv_nchw(nchw(x), sd["features.0.weight"], 1, 1)
                 + sd["features.0.bias"][None, :, None, None])
    # the classifier's input: torch flattens the (512, 7, 7) map channel-major
    features = state["intermediates"]["features"][0]
    assert features.shape == (1, 7, 7, 512)
    flat = nchw(features).reshape(1, -1)
    expected = flat @ sd["classifier.0.weight"].astype(np.float64).T + sd["classifier.0.bias"]
    assert_close(_captured(state, "fc6"), expected)

    # one explanation at 224x224, batch 1, with the VGG recipe
    rel = jax.jit(jf.lrp(model, models.vgg_composite()))(variables, x, target=3)
    assert rel.shape == x.shape and rel.dtype == jnp.float32
    assert np.all(np.isfinite(rel)) and np.any(rel != 0)


def test_resnet50_full_size_loads_and_explains():
    sd = synthesize(resnet_spec(50))
    assert len([k for k in sd if k.endswith("num_batches_tracked")]) == 53
    model, variables = models.load_torchvision("resnet50", sd)
    assert (model.depth, model.width, model.num_classes) == (50, 64, 1000)
    x = _images()
    keep = {("conv1",), ("bn1",), ("layer1_2",), ("layer2_0", "bn1"), ("layer2_0", "conv2"),
            ("layer2_0", "downsample_conv")}
    capture = lambda m, name: tuple(m.scope.path) in keep
    logits, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=capture))(variables, x)
    assert logits.shape == (1, 1000) and np.all(np.isfinite(logits))
    # stem: 7x7 stride 2 padding 3, then BatchNorm from running statistics
    conv1 = conv_nchw(nchw(x), sd["conv1.weight"], 2, 3)
    assert_close(nchw(_captured(state, "conv1")), conv1)
    assert_close(nchw(_captured(state, "bn1")), bn_nchw(conv1, sd, "bn1"))
    # torchvision v1.5 bottleneck: the stride is on the 3x3 convolution (padding 1)
    h = np.maximum(nchw(_captured(state, "layer2_0", "bn1")), 0)
    assert_close(nchw(_captured(state, "layer2_0", "conv2")), conv_nchw(h, sd["layer2.0.conv2.weight"], 2, 1))
    # shortcut: 1x1 stride 2 on the block's input
    block_in = nchw(_captured(state, "layer1_2"))
    assert_close(nchw(_captured(state, "layer2_0", "downsample_conv")),
                 conv_nchw(block_in, sd["layer2.0.downsample.0.weight"], 2, 0))

    rel = jax.jit(jf.lrp(model, models.resnet_composite()))(variables, x, target=7)
    assert rel.shape == x.shape and np.all(np.isfinite(rel)) and np.any(rel != 0)


NARROW = {name: (vgg_spec(int(name[3:5]), name.endswith("_bn"), div=16, hidden=32, num_classes=10)
                 if name.startswith("vgg") else resnet_spec(int(name[6:]), div=16, num_classes=10))
          for name in models.TORCHVISION_NAMES}


@pytest.mark.parametrize("name", models.TORCHVISION_NAMES)
def test_every_architecture_loads(name):
    """All eleven key layouts, at 1/16 of the width: every variable the model has is
    filled with the converted array, in the model's shapes."""
    sd = synthesize(NARROW[name], seed=2)
    model, variables = models.load_torchvision(name, sd)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    shapes = jax.tree_util.tree_map(lambda a: a.shape, abstract)
    assert jax.tree_util.tree_map(jnp.shape, variables) == shapes
    p = variables["params"]
    if name.startswith("vgg"):
        np.testing.assert_array_equal(p["conv1_1"]["kernel"], sd["features.0.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(p["fc8"]["kernel"], sd["classifier.6.weight"].T)
        last = max(int(k.split(".")[1]) for k in sd if k.startswith("features.") and sd[k].ndim == 4)
        block5 = VGG_CFG[int(name[3:5])][:-1]
        n5 = block5[::-1].index("M")  # convolutions after the fourth pooling
        np.testing.assert_array_equal(p[f"conv5_{n5}"]["kernel"], sd[f"features.{last}.weight"].transpose(2, 3, 1, 0))
        if name.endswith("_bn"):
            np.testing.assert_array_equal(variables["batch_stats"]["bn1_1"]["var"], sd["features.1.running_var"])
            np.testing.assert_array_equal(p["bn1_1"]["scale"], sd["features.1.weight"])
    else:
        block, stats = p["layer1_0"], variables["batch_stats"]["layer1_0"]
        np.testing.assert_array_equal(block["conv1"]["kernel"], sd["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(stats["bn1"]["mean"], sd["layer1.0.bn1.running_mean"])
        np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    out = jax.jit(model.apply)(variables, _images(2, 64))
    assert out.shape == (2, 10) and np.all(np.isfinite(out))


def test_missing_and_unexpected_keys_are_named():
    sd = synthesize(NARROW["resnet18"])
    del sd["layer3.1.bn2.running_var"]
    sd["layer5.0.conv1.weight"] = np.zeros((1,))
    with pytest.raises(ValueError, match="missing keys: 'layer3.1.bn2.running_var'") as e:
        models.load_torchvision("resnet18", sd)
    assert "unexpected keys: 'layer5.0.conv1.weight'" in str(e.value)
    # a resnet50 state dict is not a resnet34 one (bottleneck conv3 and downsample keys)
    with pytest.raises(ValueError, match=r"unexpected keys: .*conv3"):
        models.load_torchvision("resnet34", synthesize(NARROW["resnet50"]))
    # VGG without BatchNorm has no num_batches_tracked buffers
    sd = synthesize(NARROW["vgg11"])
    sd["features.1.num_batches_tracked"] = np.array(0)
    with pytest.raises(ValueError, match="unexpected keys: 'features.1.num_batches_tracked'"):
        models.load_torchvision("vgg11", sd)
    with pytest.raises(ValueError, match="missing keys: .*features.1.running_mean"):
        models.load_torchvision("vgg11_bn", synthesize(NARROW["vgg11"]))


def test_wrong_shapes_are_named():
    sd = synthesize(NARROW["vgg13"])
    sd["features.2.weight"] = sd["features.2.weight"][:, :, :2, :2]
    with pytest.raises(ValueError, match=r"'features.2.weight': \(4, 4, 2, 2\), expected \(4, 4, 3, 3\)"):
        models.load_torchvision("vgg13", sd)


def test_unknown_names_and_files(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'vgg15'"):
        models.load_torchvision("vgg15", {})
    sd = synthesize(NARROW["resnet18"])
    np.savez(tmp_path / "r18.npz", **sd)
    _, from_file = models.load_torchvision("resnet18", str(tmp_path / "r18.npz"))
    _, from_dict = models.load_torchvision("resnet18", np.load(tmp_path / "r18.npz"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_file, from_dict)
    with pytest.raises(ValueError, match="expected a .npz or .safetensors file"):
        models.load_torchvision("resnet18", str(tmp_path / "r18.pt"))


def test_torchvision_weights_into_nnx():
    """The imported linen variables load into the nnx twin; same logits."""
    from flax import nnx

    sd = synthesize(NARROW["vgg11_bn"], seed=3)
    model, variables = models.load_torchvision("vgg11_bn", sd)
    # built abstractly: the weights come from the checkpoint, no initialiser runs
    twin = nnx.eval_shape(lambda: models.nnx.from_name("vgg11_bn", num_classes=10, width=4, hidden=32))
    jf.load_linen_variables(twin, variables)
    nnx.reseed(twin, default=0)
    x = _images(2, 32)
    np.testing.assert_allclose(twin(x), model.apply(variables, x), rtol=1e-5, atol=1e-6)
