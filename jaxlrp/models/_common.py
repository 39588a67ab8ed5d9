"""Architecture tables and parameter-free operations shared by the linen and nnx zoos.

Both zoos build the same networks with the same module names, so that the parameter
trees of a linen model and of its nnx twin have the same paths (see
:func:`jaxlrp.flax.load_linen_variables`) and the composites of
:mod:`jaxlrp.models.presets` select the same layers in both.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

#: JAX arrays, as Flax types its layers' inputs and outputs (NumPy inputs work too).
Array = jax.Array

#: Convolutions per block of VGG (five blocks, each followed by 2x2 max pooling).
VGG_BLOCKS = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
#: Channels of VGG's five blocks, as multiples of the first block's width.
VGG_WIDTHS = (1, 2, 4, 8, 8)
#: Spatial size VGG's classifier expects (adaptive average pooling to it).
VGG_POOL = (7, 7)

#: Residual blocks per stage and block type of ResNet.
RESNET_STAGES = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
}
#: Output channels of a block are ``width * multiplier * EXPANSION[block]``.
RESNET_WIDTHS = (1, 2, 4, 8)
EXPANSION = {"basic": 1, "bottleneck": 4}

#: PyTorch's BatchNorm defaults (momentum 0.1 in PyTorch's convention).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def parse_name(name: str) -> tuple:
    """``(depth, batch_norm, family)`` of a torchvision model name."""
    known = [f"vgg{d}{s}" for d in sorted(VGG_BLOCKS) for s in ("", "_bn")]
    known += [f"resnet{d}" for d in sorted(RESNET_STAGES)]
    if name not in known:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(known)}")
    if name.startswith("vgg"):
        return int(name[3:5]), name.endswith("_bn"), "vgg"
    return int(name[6:]), True, "resnet"


def vgg_blocks(depth: int) -> tuple:
    """Convolutions per block of VGG-``depth``; ``ValueError`` for other depths."""
    try:
        return VGG_BLOCKS[depth]
    except KeyError:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_BLOCKS)}, got {depth!r}") from None


def vgg_layers(depth: int, width: int) -> tuple:
    """``(block, index, channels)`` of every convolution of VGG-``depth`` (1-based)."""
    return tuple(
        (b + 1, j + 1, width * VGG_WIDTHS[b])
        for b, n in enumerate(vgg_blocks(depth))
        for j in range(n)
    )


def resnet_stages(depth: int) -> tuple:
    """``(blocks per stage, block type)`` of ResNet-``depth``."""
    try:
        return RESNET_STAGES[depth]
    except KeyError:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_STAGES)}, got {depth!r}") from None


def resnet_blocks(depth: int, width: int) -> tuple:
    """``(name, channels, stride, downsample)`` of every residual block.

    ``channels`` is the width of the block's inner convolutions; the block outputs
    ``channels * EXPANSION[block]`` channels. ``downsample`` says whether the
    shortcut needs a 1x1 convolution (stride or channel change).
    """
    counts, block = resnet_stages(depth)
    expansion = EXPANSION[block]
    out, in_channels = [], width
    for s, n in enumerate(counts):
        channels = width * RESNET_WIDTHS[s]
        for i in range(n):
            stride = 2 if (s > 0 and i == 0) else 1
            downsample = stride != 1 or in_channels != channels * expansion
            out.append((f"layer{s + 1}_{i}", channels, stride, downsample))
            in_channels = channels * expansion
    return tuple(out)


def pad(p: int) -> tuple:
    """Symmetric explicit padding of a 2-D convolution, as PyTorch's ``padding=p``."""
    return ((p, p), (p, p))


def flatten(x: Array, ndim: int) -> Array:
    """Merge the last ``ndim`` axes (one example's features); leading axes are kept,
    so models work on batches and on single examples (e.g. inside ``jax.vmap``)."""
    return x.reshape(x.shape[: x.ndim - ndim] + (-1,))


def max_pool_2x2(x: Array) -> Array:
    """2x2 max pooling with stride 2 (VGG, the small CNN)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def resnet_stem_pool(x: Array) -> Array:
    """ResNet's 3x3 max pooling with stride 2 and padding 1 (PyTorch semantics)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad(1))


def global_avg_pool(x: Array) -> Array:
    """Mean over the two spatial axes of an ``(..., H, W, C)`` array."""
    return jnp.mean(x, axis=(-3, -2))


def _bins(n: int, m: int) -> list:
    """PyTorch's adaptive pooling bins: ``[floor(i n / m), ceil((i + 1) n / m))``."""
    return [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]


def adaptive_avg_pool(x: Array, size: Sequence[int] = VGG_POOL) -> Array:
    """PyTorch's ``AdaptiveAvgPool2d(size)`` on an ``(..., H, W, C)`` array.

    When ``H, W`` already equal ``size`` (VGG at 224x224) this is the identity; when
    they divide it, each value is repeated; when they are multiples, it is average
    pooling; otherwise each output is the mean of its (possibly overlapping) bin.
    All cases are linear, parameter-free operations that the LRP interpreter routes
    relevance through (repeats and slices) or splits proportionally (means).
    """
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = size
    if (h, w) == (oh, ow):
        return x
    if oh % h == 0 and ow % w == 0:
        return jnp.repeat(jnp.repeat(x, oh // h, axis=-3), ow // w, axis=-2)
    if h % oh == 0 and w % ow == 0:
        window = (h // oh, w // ow)
        return nn.avg_pool(x, window, strides=window)
    rows = [
        jnp.stack([jnp.mean(x[..., a:b, c:d, :], axis=(-3, -2)) for c, d in _bins(w, ow)], axis=-2)
        for a, b in _bins(h, oh)
    ]
    return jnp.stack(rows, axis=-3)


def batched(example_ndim: Union[int, Callable[[Any], int]]) -> Callable:
    """Decorate a model's ``__call__`` so that a single example (an input with
    ``example_ndim`` axes, as inside ``jax.vmap``) runs as a batch of one.

    Flax's Conv reshapes an unbatched input to a batch of one and back, and that
    reshape would sit between a convolution and the BatchNorm after it, where the
    LRP interpreter cannot fold the BatchNorm into the convolution: the single
    example would then be explained differently from the same example in a batch.
    Adding the batch axis once, at the model's input, keeps every layer batched.

    ``example_ndim`` is the number of axes of one example, or a function of the
    module giving it.
    """

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self, x, *args, **kwargs):
            n = example_ndim(self) if callable(example_ndim) else example_ndim
            if x.ndim == n:
                return method(self, x[None], *args, **kwargs)[0]
            return method(self, x, *args, **kwargs)

        return call

    return decorate
