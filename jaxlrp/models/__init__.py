"""The model zoo: the architectures LRP is studied on, in Flax linen and nnx.

=================  ======================================================  ==========================
family             models                                                  canonical composite
=================  ======================================================  ==========================
MLP                ``MLP`` (ReLU)                                          ``EpsilonPlus``
small CNN          ``CNN`` (28x28 and 32x32 inputs)                        :func:`cnn_composite`
VGG                ``VGG(depth=11|13|16|19, batch_norm=...)``              :func:`vgg_composite`
ResNet             ``ResNet(depth=18|34|50)`` (basic / bottleneck, BN)     :func:`resnet_composite`
sequences          ``SequenceCNN`` (1-D, one-hot DNA: 4 channels)          :func:`sequence_composite`
decoder LM         :mod:`~jaxlrp.models.llama` (plain JAX, stacked)        ``AttnLRP``
=================  ======================================================  ==========================

The linen models are exported here (``jaxlrp.models.VGG`` is
:class:`jaxlrp.models.linen.VGG`); the nnx twins, with the same layer names, are in
:mod:`jaxlrp.models.nnx`. Images are NHWC, sequences NLC. Pretrained torchvision
weights load with :func:`load_torchvision`; :func:`fit` trains a small classifier in
seconds (Adam on cross-entropy, with optax from the ``demo`` extra).

>>> from jaxlrp import models
>>> import jaxlrp.flax
>>> model, variables = models.load_torchvision("vgg16", np.load("vgg16.npz"))
>>> R = jaxlrp.flax.explain(model, variables, x, composite=models.vgg_composite(), target=483)
"""

try:
    import flax  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    raise ImportError("jaxlrp.models needs Flax: pip install 'jaxlrp[flax]'") from e

from . import linen, llama, nnx, presets, recurrent, transformer  # noqa: E402
from ._training import fit
from .linen import CNN, MLP, VGG, ResNet, SequenceCNN
from .recurrent import (
    EchoStateNetwork,
    GRUClassifier,
    LSTMClassifier,
    esn_composite,
    fit_readout,
    image_to_sequence,
    landt_hayen_esn,
)
from .transformer import TextEncoder, ViT, token_relevance
from .presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    canonical_composite,
    cnn_composite,
    imagenet_bounds,
    resnet_composite,
    sequence_composite,
    vgg_composite,
)
from .torchvision import NAMES as TORCHVISION_NAMES
from .torchvision import load_torchvision, torchvision_keys

__all__ = [
    "fit",
    "recurrent",
    "EchoStateNetwork",
    "landt_hayen_esn",
    "esn_composite",
    "LSTMClassifier",
    "GRUClassifier",
    "fit_readout",
    "image_to_sequence",
    "transformer",
    "llama",
    "TextEncoder",
    "ViT",
    "token_relevance",
    "linen",
    "nnx",
    "presets",
    "MLP",
    "CNN",
    "VGG",
    "ResNet",
    "SequenceCNN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_bounds",
    "vgg_composite",
    "resnet_composite",
    "cnn_composite",
    "sequence_composite",
    "canonical_composite",
    "load_torchvision",
    "torchvision_keys",
    "TORCHVISION_NAMES",
]
