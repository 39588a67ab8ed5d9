"""The model zoo in Flax linen (NHWC images, NLC sequences).

Every model works on a batch ``(N, ...)`` and on a single example (inside
``jax.vmap``), is in inference mode unless built with ``train=True`` (BatchNorm with
running statistics, Dropout off), and names its layers as in the nnx zoo
(:mod:`jaxlrp.models.nnx`), so that ``jaxlrp.flax.load_linen_variables`` moves
weights between the two and the composites of :mod:`jaxlrp.models.presets` select
the same layers:

====================  ========================================================
model                 layer names (``params/<name>/kernel``)
====================  ========================================================
:class:`MLP`          ``fc1``, ``fc2``, ..., ``head``
:class:`CNN`          ``conv1``, ``conv2``, ``fc1``, ``head``
:class:`VGG`          ``conv{block}_{i}`` (+ ``bn{block}_{i}``), ``fc6``, ``fc7``,
                      ``fc8``
:class:`ResNet`       ``conv1``, ``bn1``, ``layer{stage}_{i}/conv{k}``,
                      ``layer{stage}_{i}/bn{k}``, ``layer{stage}_{i}/downsample_conv``,
                      ``layer{stage}_{i}/downsample_bn``, ``fc``
:class:`SequenceCNN`  ``conv1``, ``conv2``, ``fc1``, ``head``
====================  ========================================================

Paddings and poolings follow torchvision, so that
:func:`jaxlrp.models.load_torchvision` gives the same outputs as PyTorch.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import _common as C

__all__ = ["MLP", "CNN", "VGG", "ResNet", "BasicBlock", "Bottleneck", "SequenceCNN", "from_name"]

#: JAX arrays, as Flax types its layers' inputs and outputs (NumPy inputs work too).
Array = jax.Array


class MLP(nn.Module):
    """A multilayer perceptron with ReLU activations.

    Attributes
    ----------
    features:
        Widths of the hidden layers.
    num_classes:
        Outputs of the last layer (``head``).
    input_ndim:
        Trailing axes of one example, flattened first (e.g. 2 for 28x28 images).
    use_bias:
        Whether the dense layers have biases.
    param_dtype:
        Dtype of the parameters.
    """

    features: Sequence[int] = (128, 64)
    num_classes: int = 10
    input_ndim: int = 1
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    @C.batched(lambda self: self.input_ndim)
    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = C.flatten(x, self.input_ndim)
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Dense(f, use_bias=self.use_bias, param_dtype=self.param_dtype, name=f"fc{i + 1}")(x))
        return nn.Dense(self.num_classes, use_bias=self.use_bias, param_dtype=self.param_dtype, name="head")(x)


class CNN(nn.Module):
    """A small image classifier: two 3x3 conv + ReLU + 2x2 max-pool stages, then two
    dense layers. For 28x28 (MNIST-like) and 32x32 (CIFAR-like) inputs.

    Attributes
    ----------
    num_classes:
        Outputs.
    channels:
        Channels of ``conv1`` and ``conv2``.
    hidden:
        Width of ``fc1``.
    use_bias, param_dtype:
        As in :class:`MLP`.
    """

    num_classes: int = 10
    channels: Sequence[int] = (32, 64)
    hidden: int = 128
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    @C.batched(3)
    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(use_bias=self.use_bias, param_dtype=self.param_dtype)
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (3, 3), padding=C.pad(1), name=f"conv{i + 1}", **kw)(x)
            x = C.max_pool_2x2(nn.relu(x))
        x = nn.relu(nn.Dense(self.hidden, name="fc1", **kw)(C.flatten(x, 3)))
        return nn.Dense(self.num_classes, name="head", **kw)(x)


class VGG(nn.Module):
    """VGG-11/13/16/19 (Simonyan & Zisserman 2015), optionally with BatchNorm, laid
    out as torchvision's ``vgg{depth}[_bn]``: five blocks of 3x3 convolutions
    (padding 1) + ReLU, each followed by 2x2 max pooling; adaptive average pooling to
    7x7; ``fc6``, ``fc7`` (ReLU, Dropout) and ``fc8``.

    Attributes
    ----------
    depth:
        11, 13, 16 or 19.
    num_classes:
        Outputs of ``fc8``.
    batch_norm:
        BatchNorm after every convolution (torchvision's ``_bn`` variants).
    width:
        Channels of the first block (64 in the original); the blocks have
        ``width * (1, 2, 4, 8, 8)`` channels.
    hidden:
        Width of ``fc6`` and ``fc7`` (4096 in the original).
    dropout:
        Dropout rate before ``fc7`` and ``fc8`` (active only with ``train=True``).
    use_bias:
        Whether convolutions and dense layers have biases.
    train:
        Training mode: BatchNorm with batch statistics, Dropout active. Explaining
        such a model raises :class:`jaxlrp.flax.TrainingModeError`.
    param_dtype:
        Dtype of the parameters.
    """

    depth: int = 16
    num_classes: int = 1000
    batch_norm: bool = False
    width: int = 64
    hidden: int = 4096
    dropout: float = 0.5
    use_bias: bool = True
    train: bool = False
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(use_bias=self.use_bias, param_dtype=self.param_dtype)
        for b, i, c in C.vgg_layers(self.depth, self.width):
            setattr(self, f"conv{b}_{i}", nn.Conv(c, (3, 3), padding=C.pad(1), **kw))
            if self.batch_norm:
                setattr(self, f"bn{b}_{i}", _batch_norm(self.train, self.param_dtype))
        self.fc6 = nn.Dense(self.hidden, **kw)
        self.fc7 = nn.Dense(self.hidden, **kw)
        self.fc8 = nn.Dense(self.num_classes, **kw)
        self.drop6 = nn.Dropout(self.dropout, deterministic=not self.train)
        self.drop7 = nn.Dropout(self.dropout, deterministic=not self.train)

    def features(self, x: Array) -> Array:
        """The convolutional part: the output of the last pooling (``N, H/32, W/32, C``)."""
        block = 1
        for b, i, _ in C.vgg_layers(self.depth, self.width):
            if b != block:
                x, block = C.max_pool_2x2(x), b
            x = getattr(self, f"conv{b}_{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{b}_{i}")(x)
            x = nn.relu(x)
        return C.max_pool_2x2(x)

    def classifier(self, h: Array) -> Array:
        """The dense part, from the output of :meth:`features` to the logits."""
        x = C.flatten(C.adaptive_avg_pool(h, C.VGG_POOL), 3)
        x = self.drop6(nn.relu(self.fc6(x)))
        x = self.drop7(nn.relu(self.fc7(x)))
        return self.fc8(x)

    @C.batched(3)
    def __call__(self, x: Array) -> Array:
        return self.classifier(self.features(x))


def _batch_norm(train: bool, param_dtype: Any, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=C.BN_MOMENTUM, epsilon=C.BN_EPSILON,
        param_dtype=param_dtype, name=name,
    )


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with BatchNorm, and a shortcut
    (a strided 1x1 convolution with BatchNorm where the shape changes)."""

    channels: int
    stride: int = 1
    downsample: bool = False
    train: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = _conv_factory(self.param_dtype)
        bn = lambda name: _batch_norm(self.train, self.param_dtype, name)  # noqa: E731
        y = nn.relu(bn("bn1")(conv(self.channels, 3, self.stride, "conv1")(x)))
        y = bn("bn2")(conv(self.channels, 3, 1, "conv2")(y))
        return nn.relu(y + _shortcut(x, self.channels, self.stride, self.downsample, conv, bn))


class Bottleneck(nn.Module):
    """ResNet's bottleneck block (torchvision's v1.5: the stride is on the 3x3
    convolution): 1x1, 3x3, 1x1 (4x the channels) convolutions with BatchNorm."""

    channels: int
    stride: int = 1
    downsample: bool = False
    train: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = _conv_factory(self.param_dtype)
        bn = lambda name: _batch_norm(self.train, self.param_dtype, name)  # noqa: E731
        out = self.channels * C.EXPANSION["bottleneck"]
        y = nn.relu(bn("bn1")(conv(self.channels, 1, 1, "conv1")(x)))
        y = nn.relu(bn("bn2")(conv(self.channels, 3, self.stride, "conv2")(y)))
        y = bn("bn3")(conv(out, 1, 1, "conv3")(y))
        return nn.relu(y + _shortcut(x, out, self.stride, self.downsample, conv, bn))


def _conv_factory(param_dtype):
    def conv(channels: int, kernel: int, stride: int, name: str) -> nn.Conv:
        return nn.Conv(
            channels, (kernel, kernel), strides=(stride, stride), padding=C.pad(kernel // 2),
            use_bias=False, param_dtype=param_dtype, name=name,
        )

    return conv


def _shortcut(x, channels, stride, downsample, conv, bn):
    if not downsample:
        return x
    return bn("downsample_bn")(conv(channels, 1, stride, "downsample_conv")(x))


class ResNet(nn.Module):
    """ResNet-18/34/50 (He et al. 2016) as torchvision builds it: a 7x7/2 stem with
    BatchNorm and 3x3/2 max pooling, four stages of residual blocks, global average
    pooling and ``fc``.

    Attributes
    ----------
    depth:
        18, 34 (basic blocks) or 50 (bottleneck blocks).
    num_classes:
        Outputs of ``fc``.
    width:
        Channels of the stem and the first stage (64 in the original).
    use_bias:
        Whether ``fc`` has a bias (the convolutions have none, as in torchvision).
    train:
        Training mode (BatchNorm with batch statistics); see :class:`VGG`.
    param_dtype:
        Dtype of the parameters.
    """

    depth: int = 50
    num_classes: int = 1000
    width: int = 64
    use_bias: bool = True
    train: bool = False
    param_dtype: Any = jnp.float32

    @C.batched(3)
    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, kind = C.resnet_stages(self.depth)
        block = BasicBlock if kind == "basic" else Bottleneck
        x = nn.Conv(
            self.width, (7, 7), strides=(2, 2), padding=C.pad(3), use_bias=False,
            param_dtype=self.param_dtype, name="conv1",
        )(x)
        x = C.resnet_stem_pool(nn.relu(_batch_norm(self.train, self.param_dtype, "bn1")(x)))
        for name, channels, stride, downsample in C.resnet_blocks(self.depth, self.width):
            x = block(channels, stride, downsample, self.train, self.param_dtype, name=name)(x)
        x = C.global_avg_pool(x)
        return nn.Dense(self.num_classes, use_bias=self.use_bias, param_dtype=self.param_dtype, name="fc")(x)


class SequenceCNN(nn.Module):
    """A 1-D convolutional classifier for one-hot sequences ``(N, L, 4)`` (DNA), in
    the style of DeepSEA/Basset: two conv + ReLU + max-pool stages, a hidden dense
    layer and the output layer.

    Attributes
    ----------
    num_classes:
        Outputs (e.g. one per predicted track).
    channels:
        Channels of ``conv1`` and ``conv2``.
    kernel_size:
        Width of the convolution filters (padding keeps the length).
    pool:
        Max-pooling window and stride after each convolution.
    hidden:
        Width of ``fc1``.
    use_bias, param_dtype:
        As in :class:`MLP`.
    """

    num_classes: int = 2
    channels: Sequence[int] = (32, 32)
    kernel_size: int = 9
    pool: int = 4
    hidden: int = 32
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    @C.batched(2)
    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(use_bias=self.use_bias, param_dtype=self.param_dtype)
        p = self.kernel_size // 2
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (self.kernel_size,), padding=((p, self.kernel_size - 1 - p),), name=f"conv{i + 1}", **kw)(x)
            x = nn.max_pool(nn.relu(x), (self.pool,), strides=(self.pool,))
        x = nn.relu(nn.Dense(self.hidden, name="fc1", **kw)(C.flatten(x, 2)))
        return nn.Dense(self.num_classes, name="head", **kw)(x)


def from_name(name: str, **kwargs: Any) -> nn.Module:
    """A VGG or ResNet by its torchvision name (``"vgg16"``, ``"vgg16_bn"``,
    ``"resnet50"``, ...); keyword arguments go to the constructor."""
    depth, batch_norm, family = C.parse_name(name)
    if family == "vgg":
        return VGG(depth=depth, batch_norm=batch_norm, **kwargs)
    return ResNet(depth=depth, **kwargs)
