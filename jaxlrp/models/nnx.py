"""The model zoo in Flax nnx: the networks of :mod:`jaxlrp.models.linen`, with the
same layer (attribute) names, paddings and poolings.

nnx modules know their input sizes at construction, so the constructors take what
linen infers (``in_features``, ``in_channels``, ``input_size``, ``length``) and an
``nnx.Rngs``. Models are built in inference mode (``train=False``: BatchNorm with
running statistics, Dropout off); ``model.train()`` switches them to training mode,
which :mod:`jaxlrp.flax` refuses to explain, and ``model.eval()`` back.

Weights of a linen model go into its nnx twin with
:func:`jaxlrp.flax.load_linen_variables`; explain with
``jaxlrp.flax.explain(model, x, composite=...)``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from . import _common as C

__all__ = ["MLP", "CNN", "VGG", "ResNet", "BasicBlock", "Bottleneck", "SequenceCNN", "from_name"]

#: JAX arrays, as Flax types its layers' inputs and outputs (NumPy inputs work too).
Array = jax.Array


def _linear(n_in: int, n_out: int, use_bias: bool, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)


def _conv(n_in: int, n_out: int, kernel: int, stride: int, use_bias: bool, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        n_in, n_out, (kernel, kernel), strides=(stride, stride), padding=C.pad(kernel // 2),
        use_bias=use_bias, param_dtype=param_dtype, rngs=rngs,
    )


def _batch_norm(n: int, train: bool, param_dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        n, use_running_average=not train, momentum=C.BN_MOMENTUM, epsilon=C.BN_EPSILON,
        param_dtype=param_dtype, rngs=rngs,
    )


class MLP(nnx.Module):
    """A multilayer perceptron with ReLU activations (see :class:`jaxlrp.models.linen.MLP`).

    Parameters
    ----------
    in_features:
        Features of one (flattened) example.
    features, num_classes, input_ndim, use_bias, param_dtype:
        As in the linen model.
    rngs:
        Initialisation randomness.
    """

    def __init__(
        self,
        in_features: int,
        features: Sequence[int] = (128, 64),
        num_classes: int = 10,
        *,
        input_ndim: int = 1,
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.input_ndim = input_ndim
        self.depth = len(features)
        sizes = (in_features,) + tuple(features)
        for i in range(self.depth):
            setattr(self, f"fc{i + 1}", _linear(sizes[i], sizes[i + 1], use_bias, param_dtype, rngs))
        self.head = _linear(sizes[-1], num_classes, use_bias, param_dtype, rngs)

    @C.batched(lambda self: self.input_ndim)
    def __call__(self, x: Array) -> Array:
        x = C.flatten(x, self.input_ndim)
        for i in range(self.depth):
            x = nn.relu(getattr(self, f"fc{i + 1}")(x))
        return self.head(x)


class CNN(nnx.Module):
    """The small image classifier of :class:`jaxlrp.models.linen.CNN`.

    Parameters
    ----------
    in_channels:
        Channels of the input images.
    input_size:
        Height and width of the input (an int for square images), e.g. 28 or 32;
        both must be divisible by 4.
    num_classes, channels, hidden, use_bias, param_dtype:
        As in the linen model.
    rngs:
        Initialisation randomness.
    """

    def __init__(
        self,
        in_channels: int = 1,
        input_size: Union[int, Sequence[int]] = 28,
        num_classes: int = 10,
        *,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if h % 4 or w % 4:
            raise ValueError(f"CNN input_size must be divisible by 4 (two 2x2 poolings), got {(h, w)}")
        c1, c2 = channels
        self.conv1 = _conv(in_channels, c1, 3, 1, use_bias, param_dtype, rngs)
        self.conv2 = _conv(c1, c2, 3, 1, use_bias, param_dtype, rngs)
        self.fc1 = _linear((h // 4) * (w // 4) * c2, hidden, use_bias, param_dtype, rngs)
        self.head = _linear(hidden, num_classes, use_bias, param_dtype, rngs)

    @C.batched(3)
    def __call__(self, x: Array) -> Array:
        x = C.max_pool_2x2(nn.relu(self.conv1(x)))
        x = C.max_pool_2x2(nn.relu(self.conv2(x)))
        x = nn.relu(self.fc1(C.flatten(x, 3)))
        return self.head(x)


class VGG(nnx.Module):
    """VGG-11/13/16/19 with or without BatchNorm (see :class:`jaxlrp.models.linen.VGG`).

    Parameters
    ----------
    depth, num_classes, batch_norm, width, hidden, dropout, use_bias, train, param_dtype:
        As in the linen model.
    in_channels:
        Channels of the input images.
    rngs:
        Initialisation randomness (and Dropout's, in training mode).
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 1000,
        *,
        batch_norm: bool = False,
        width: int = 64,
        hidden: int = 4096,
        dropout: float = 0.5,
        use_bias: bool = True,
        train: bool = False,
        in_channels: int = 3,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.layers = C.vgg_layers(depth, width)
        self.batch_norm = batch_norm
        n_in = in_channels
        for b, i, c in self.layers:
            setattr(self, f"conv{b}_{i}", _conv(n_in, c, 3, 1, use_bias, param_dtype, rngs))
            if batch_norm:
                setattr(self, f"bn{b}_{i}", _batch_norm(c, train, param_dtype, rngs))
            n_in = c
        flat = n_in * C.VGG_POOL[0] * C.VGG_POOL[1]
        self.fc6 = _linear(flat, hidden, use_bias, param_dtype, rngs)
        self.fc7 = _linear(hidden, hidden, use_bias, param_dtype, rngs)
        self.fc8 = _linear(hidden, num_classes, use_bias, param_dtype, rngs)
        self.drop6 = nnx.Dropout(dropout, deterministic=not train, rngs=rngs)
        self.drop7 = nnx.Dropout(dropout, deterministic=not train, rngs=rngs)

    def features(self, x: Array) -> Array:
        """The convolutional part: the output of the last pooling."""
        block = 1
        for b, i, _ in self.layers:
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


class _Block(nnx.Module):
    downsample_conv: Optional[nnx.Conv]
    downsample_bn: Optional[nnx.BatchNorm]

    def _shortcut_layers(self, n_in, n_out, stride, downsample, train, param_dtype, rngs):
        if downsample:
            self.downsample_conv = _conv(n_in, n_out, 1, stride, False, param_dtype, rngs)
            self.downsample_bn = _batch_norm(n_out, train, param_dtype, rngs)
        else:
            self.downsample_conv = self.downsample_bn = None

    def _shortcut(self, x: Array) -> Array:
        if self.downsample_conv is None or self.downsample_bn is None:
            return x
        return self.downsample_bn(self.downsample_conv(x))


class BasicBlock(_Block):
    """ResNet's basic block (see :class:`jaxlrp.models.linen.BasicBlock`)."""

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, downsample: bool = False, *,
        train: bool = False, param_dtype: Any = jnp.float32, rngs: nnx.Rngs,
    ):
        self.conv1 = _conv(in_channels, channels, 3, stride, False, param_dtype, rngs)
        self.bn1 = _batch_norm(channels, train, param_dtype, rngs)
        self.conv2 = _conv(channels, channels, 3, 1, False, param_dtype, rngs)
        self.bn2 = _batch_norm(channels, train, param_dtype, rngs)
        self._shortcut_layers(in_channels, channels, stride, downsample, train, param_dtype, rngs)

    def __call__(self, x: Array) -> Array:
        y = nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nn.relu(y + self._shortcut(x))


class Bottleneck(_Block):
    """ResNet's bottleneck block (see :class:`jaxlrp.models.linen.Bottleneck`)."""

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, downsample: bool = False, *,
        train: bool = False, param_dtype: Any = jnp.float32, rngs: nnx.Rngs,
    ):
        out = channels * C.EXPANSION["bottleneck"]
        self.conv1 = _conv(in_channels, channels, 1, 1, False, param_dtype, rngs)
        self.bn1 = _batch_norm(channels, train, param_dtype, rngs)
        self.conv2 = _conv(channels, channels, 3, stride, False, param_dtype, rngs)
        self.bn2 = _batch_norm(channels, train, param_dtype, rngs)
        self.conv3 = _conv(channels, out, 1, 1, False, param_dtype, rngs)
        self.bn3 = _batch_norm(out, train, param_dtype, rngs)
        self._shortcut_layers(in_channels, out, stride, downsample, train, param_dtype, rngs)

    def __call__(self, x: Array) -> Array:
        y = nn.relu(self.bn1(self.conv1(x)))
        y = nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nn.relu(y + self._shortcut(x))


class ResNet(nnx.Module):
    """ResNet-18/34/50 (see :class:`jaxlrp.models.linen.ResNet`).

    Parameters
    ----------
    depth, num_classes, width, use_bias, train, param_dtype:
        As in the linen model.
    in_channels:
        Channels of the input images.
    rngs:
        Initialisation randomness.
    """

    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        *,
        width: int = 64,
        use_bias: bool = True,
        train: bool = False,
        in_channels: int = 3,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _, kind = C.resnet_stages(depth)
        block = BasicBlock if kind == "basic" else Bottleneck
        expansion = C.EXPANSION[kind]
        self.conv1 = nnx.Conv(
            in_channels, width, (7, 7), strides=(2, 2), padding=C.pad(3), use_bias=False,
            param_dtype=param_dtype, rngs=rngs,
        )
        self.bn1 = _batch_norm(width, train, param_dtype, rngs)
        self.blocks = tuple(name for name, *_ in C.resnet_blocks(depth, width))
        n_in = width
        for name, channels, stride, downsample in C.resnet_blocks(depth, width):
            setattr(self, name, block(
                n_in, channels, stride, downsample, train=train, param_dtype=param_dtype, rngs=rngs,
            ))
            n_in = channels * expansion
        self.fc = _linear(n_in, num_classes, use_bias, param_dtype, rngs)

    @C.batched(3)
    def __call__(self, x: Array) -> Array:
        x = C.resnet_stem_pool(nn.relu(self.bn1(self.conv1(x))))
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.fc(C.global_avg_pool(x))


class SequenceCNN(nnx.Module):
    """The 1-D sequence classifier of :class:`jaxlrp.models.linen.SequenceCNN`.

    Parameters
    ----------
    length:
        Length of the input sequences (divisible by ``pool ** 2``).
    in_channels:
        Alphabet size (4 for one-hot DNA).
    num_classes, channels, kernel_size, pool, hidden, use_bias, param_dtype:
        As in the linen model.
    rngs:
        Initialisation randomness.
    """

    def __init__(
        self,
        length: int,
        in_channels: int = 4,
        num_classes: int = 2,
        *,
        channels: Sequence[int] = (32, 32),
        kernel_size: int = 9,
        pool: int = 4,
        hidden: int = 32,
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if length % (pool * pool):
            raise ValueError(f"SequenceCNN length must be divisible by pool**2 = {pool * pool}, got {length}")
        p = kernel_size // 2
        padding = ((p, kernel_size - 1 - p),)
        c1, c2 = channels
        conv = lambda a, b: nnx.Conv(  # noqa: E731
            a, b, (kernel_size,), padding=padding, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs,
        )
        self.pool = pool
        self.conv1 = conv(in_channels, c1)
        self.conv2 = conv(c1, c2)
        self.fc1 = _linear((length // (pool * pool)) * c2, hidden, use_bias, param_dtype, rngs)
        self.head = _linear(hidden, num_classes, use_bias, param_dtype, rngs)

    @C.batched(2)
    def __call__(self, x: Array) -> Array:
        window = (self.pool,)
        x = nn.max_pool(nn.relu(self.conv1(x)), window, strides=window)
        x = nn.max_pool(nn.relu(self.conv2(x)), window, strides=window)
        x = nn.relu(self.fc1(C.flatten(x, 2)))
        return self.head(x)


def from_name(name: str, *, rngs: Optional[nnx.Rngs] = None, **kwargs: Any) -> nnx.Module:
    """A VGG or ResNet by its torchvision name (``"vgg16_bn"``, ``"resnet50"``, ...).

    Keyword arguments go to the constructor; ``rngs`` defaults to ``nnx.Rngs(0)``.
    To load weights (e.g. from :func:`jaxlrp.models.load_torchvision`) build it
    under ``nnx.eval_shape`` and skip the random initialisation (see
    :func:`jaxlrp.flax.load_linen_variables`).
    """
    depth, batch_norm, family = C.parse_name(name)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    if family == "vgg":
        return VGG(depth, batch_norm=batch_norm, rngs=rngs, **kwargs)
    return ResNet(depth, rngs=rngs, **kwargs)
