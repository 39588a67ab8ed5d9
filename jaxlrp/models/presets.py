"""Canonical composites for the zoo's model families, and ImageNet input bounds.

The composites select layers by kind (``"first"``, ``"conv"``, ``"dense"``) and, for
VGG, by the zoo's layer names (``conv{block}_{i}``, the same in linen, in nnx and
after :func:`jaxlrp.models.load_torchvision`), so each serves the linen and the nnx
model of its family.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import composites as _composites
from .. import rules as _rules
from ..composites import Composite
from . import linen as _linen
from . import nnx as _nnx

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_bounds",
    "vgg_composite",
    "resnet_composite",
    "cnn_composite",
    "sequence_composite",
    "canonical_composite",
]

#: Per-channel mean and standard deviation of torchvision's ImageNet preprocessing.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_bounds(dtype: Any = np.float32) -> tuple:
    """``(low, high)``: per-channel bounds of ImageNet-normalised pixels.

    Pixels in ``[0, 1]`` normalised as ``(p - mean) / std`` lie in
    ``[-mean / std, (1 - mean) / std]``; arrays of shape ``(3,)``, which broadcast
    against NHWC inputs (the box of :class:`jaxlrp.rules.ZBox`).
    """
    mean, std = np.asarray(IMAGENET_MEAN, dtype), np.asarray(IMAGENET_STD, dtype)
    return -mean / std, (1 - mean) / std


def _bounds(low: Optional[Any], high: Optional[Any]) -> tuple:
    if (low is None) != (high is None):
        raise ValueError("pass both low and high (the input box), or neither for ImageNet's")
    return imagenet_bounds() if low is None else (low, high)


def vgg_composite(
    low: Optional[Any] = None,
    high: Optional[Any] = None,
    *,
    gamma: float = 0.25,
    epsilon: float = 0.25,
    gamma_blocks: int = 3,
    stabilizer: float = 1e-6,
) -> Composite:
    """The LRP overview's recipe for VGG (Montavon et al. 2019, "Layer-Wise Relevance
    Propagation: An Overview").

    ========================  ======================  ==================================
    layers                    rule                    why
    ========================  ======================  ==================================
    first conv (pixels)       ``ZBox(low, high)``     pixels live in a box; z^B keeps
                                                      relevance on the input's evidence
    conv blocks 1..3          ``Gamma(gamma)``        lower layers: favour positive
                                                      contributions, less noisy maps
    conv blocks 4..5          ``Epsilon(epsilon)``    middle layers: absorb weak and
                                                      contradictory relevance
    dense (``fc6``-``fc8``)   ``Zero()`` (LRP-0)      upper layers: few, entangled
                                                      neurons; faithful to the function
    ========================  ======================  ==================================

    The overview's epsilon is ``0.25`` times the standard deviation of each layer's
    pre-activations; :class:`jaxlrp.rules.Epsilon` is absolute, so ``epsilon``
    plays that role for activations of unit scale.

    Parameters
    ----------
    low, high:
        The box of the first layer's input; default :func:`imagenet_bounds`
        (ImageNet-normalised pixels).
    gamma, epsilon:
        The rules' parameters.
    gamma_blocks:
        Blocks ``1..gamma_blocks`` get gamma, the later ones epsilon (the
        overview's split for VGG-16 is 3).
    stabilizer:
        Stabiliser of z^B and gamma.

    Notes
    -----
    Blocks are recognised by the zoo's layer names ``conv{block}_{i}`` (name stack
    or parameter path), which :func:`jaxlrp.models.load_torchvision` also uses.
    """
    low, high = _bounds(low, high)
    lower = _composites.any_of(*[f"*conv{b}_*" for b in range(1, gamma_blocks + 1)])
    return Composite([
        ("first", _rules.ZBox(low, high, stabilizer)),
        (_composites.all_of("conv", lower), _rules.Gamma(gamma, stabilizer)),
        ("conv", _rules.Epsilon(epsilon)),
        ("dense", _rules.Zero()),
    ])


def resnet_composite(
    variant: str = "gamma_box",
    low: Optional[Any] = None,
    high: Optional[Any] = None,
    *,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
) -> Composite:
    """A composite for ResNets: Zennit's ``EpsilonGammaBox`` or ``EpsilonPlusFlat``.

    BatchNorm is folded into the convolution before it (the core does this from the
    jaxpr), so every conv + BN pair is one layer with a folded weight and bias, and
    the rules apply to the function that layer computes. Residual adds are split in
    proportion to the two branches' contributions (:class:`jaxlrp.rules.Norm`, the
    default for sums), as is the global average pooling.

    Parameters
    ----------
    variant:
        ``"gamma_box"``: z^B on the pixels (``low``/``high``, default ImageNet's
        bounds), gamma on the other convolutions (positive evidence favoured, as in
        VGG's lower blocks: ResNets are deep, so every conv gets it), epsilon on
        ``fc``. ``"plus_flat"``: the flat rule on the stem (no assumption on the
        input's range), z+ on the other convolutions, epsilon on ``fc``.
    low, high:
        The input box of ``"gamma_box"``.
    epsilon, gamma, stabilizer:
        The rules' parameters.
    """
    if variant == "gamma_box":
        low, high = _bounds(low, high)
        return _composites.EpsilonGammaBox(low, high, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer)
    if variant == "plus_flat":
        return _composites.EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer)
    raise ValueError(f"unknown ResNet composite variant {variant!r}; known: 'gamma_box', 'plus_flat'")


def cnn_composite(low: Any = 0.0, high: Any = 1.0, *, epsilon: float = 1e-6, gamma: float = 0.25) -> Composite:
    """For the small image CNN: ``EpsilonGammaBox`` with pixels in ``[low, high]``
    (default ``[0, 1]``): z^B on the pixels, gamma on the second convolution,
    epsilon on the dense layers."""
    return _composites.EpsilonGammaBox(low, high, epsilon=epsilon, gamma=gamma)


def sequence_composite(*, epsilon: float = 1e-6, gamma: float = 0.25) -> Composite:
    """For one-hot sequences (:class:`~jaxlrp.models.linen.SequenceCNN`).

    The first layer keeps LRP-epsilon: its relevance is proportional to the input,
    so only the base present at each position gets relevance (z^B or flat would
    also credit absent bases). Later convolutions get gamma, dense layers epsilon.
    """
    return Composite([
        ("first", _rules.Epsilon(epsilon)),
        ("conv", _rules.Gamma(gamma)),
        ("dense", _rules.Epsilon(epsilon)),
    ])


def canonical_composite(model: Any, **kwargs: Any) -> Composite:
    """The composite of ``model``'s family (linen or nnx zoo model); keyword
    arguments go to the family's function (:func:`vgg_composite`,
    :func:`resnet_composite`, :func:`cnn_composite`, :func:`sequence_composite`);
    an :class:`~jaxlrp.models.linen.MLP` gets ``EpsilonPlus`` (epsilon on dense
    layers)."""
    table: dict[str, Callable[..., Composite]] = {
        "VGG": vgg_composite,
        "ResNet": resnet_composite,
        "CNN": cnn_composite,
        "SequenceCNN": sequence_composite,
        "MLP": _composites.EpsilonPlus,
    }
    for family, make in table.items():
        if isinstance(model, (getattr(_linen, family), getattr(_nnx, family))):
            return make(**kwargs)
    raise ValueError(
        f"no canonical composite for {type(model).__name__}: not a jaxlrp.models zoo model "
        f"({', '.join(table)})"
    )
