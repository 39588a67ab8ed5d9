"""Import torchvision's VGG and ResNet weights without PyTorch.

A torchvision ``state_dict`` saved as ``.npz`` (or ``.safetensors``) is all that is
needed. Export it on a machine with PyTorch, in two lines::

    import numpy as np, torchvision
    np.savez("resnet50.npz", **{k: v.numpy() for k, v in torchvision.models.resnet50(weights="DEFAULT").state_dict().items()})

then, without PyTorch::

    model, variables = jaxlrp.models.load_torchvision("resnet50", np.load("resnet50.npz"))
    x = (images_nhwc_in_0_1 - jaxlrp.models.IMAGENET_MEAN) / jaxlrp.models.IMAGENET_STD
    R = jaxlrp.flax.explain(model, variables, x, composite=jaxlrp.models.resnet_composite())

The model is the zoo's linen model (NHWC inputs). The same weights go into the nnx
zoo's model, built abstractly so that no random initialisation runs::

    twin = nnx.eval_shape(lambda: jaxlrp.models.nnx.from_name("resnet50", num_classes=1000))
    jaxlrp.flax.load_linen_variables(twin, variables)
    nnx.reseed(twin, default=0)  # keys for the random streams (VGG's dropout)
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import _common as C
from . import linen as L
from .._core.paths import lookup

__all__ = ["load_torchvision", "torchvision_keys", "NAMES"]

#: Model names :func:`load_torchvision` knows.
NAMES = tuple(
    [f"vgg{d}{s}" for d in sorted(C.VGG_BLOCKS) for s in ("", "_bn")]
    + [f"resnet{d}" for d in sorted(C.RESNET_STAGES)]
)

# How a torchvision tensor becomes a linen variable.
CONV, LINEAR, LINEAR_CHW, VECTOR = "conv", "linear", "linear_chw", "vector"
_TRACKED = ".num_batches_tracked"
#: Where a torchvision tensor goes: ``(collection, path in the linen variables, how to convert it)``.
_Target = tuple[str, tuple[str, ...], str]


def _bn_keys(torch_prefix: str, path: tuple[str, ...]) -> dict[str, _Target]:
    return {
        f"{torch_prefix}.weight": ("params", path + ("scale",), VECTOR),
        f"{torch_prefix}.bias": ("params", path + ("bias",), VECTOR),
        f"{torch_prefix}.running_mean": ("batch_stats", path + ("mean",), VECTOR),
        f"{torch_prefix}.running_var": ("batch_stats", path + ("var",), VECTOR),
    }


def _dense_keys(torch_prefix: str, path: tuple[str, ...], kind: str = LINEAR) -> dict[str, _Target]:
    return {
        f"{torch_prefix}.weight": ("params", path + ("kernel",), kind),
        f"{torch_prefix}.bias": ("params", path + ("bias",), VECTOR),
    }


def _vgg_keys(depth: int, batch_norm: bool) -> dict[str, _Target]:
    """torchvision's ``features.{i}`` / ``classifier.{i}`` keys of VGG, in order.

    ``features`` is a flat ``Sequential``: each convolution is followed by a ReLU
    (and, in the ``_bn`` variants, a BatchNorm before it), each block by a max pool.
    """
    keys: dict[str, _Target] = {}
    idx = 0
    for b, n in enumerate(C.vgg_blocks(depth), start=1):
        for i in range(1, n + 1):
            keys.update(_dense_keys(f"features.{idx}", (f"conv{b}_{i}",), CONV))
            idx += 1
            if batch_norm:
                keys.update(_bn_keys(f"features.{idx}", (f"bn{b}_{i}",)))
                idx += 1
            idx += 1  # ReLU
        idx += 1  # MaxPool2d
    keys.update(_dense_keys("classifier.0", ("fc6",), LINEAR_CHW))
    keys.update(_dense_keys("classifier.3", ("fc7",)))
    keys.update(_dense_keys("classifier.6", ("fc8",)))
    return keys


def _resnet_keys(depth: int) -> dict[str, _Target]:
    """torchvision's ResNet keys: ``conv1``, ``bn1``, ``layer{s}.{i}.conv{k}``,
    ``layer{s}.{i}.bn{k}``, ``layer{s}.{i}.downsample.{0,1}``, ``fc``."""
    _, kind = C.resnet_stages(depth)
    convs = 2 if kind == "basic" else 3
    keys: dict[str, _Target] = {"conv1.weight": ("params", ("conv1", "kernel"), CONV)}
    keys.update(_bn_keys("bn1", ("bn1",)))
    for name, _, _, downsample in C.resnet_blocks(depth, 64):
        stage, index = name[len("layer"):].split("_")
        prefix = f"layer{stage}.{index}"
        for k in range(1, convs + 1):
            keys[f"{prefix}.conv{k}.weight"] = ("params", (name, f"conv{k}", "kernel"), CONV)
            keys.update(_bn_keys(f"{prefix}.bn{k}", (name, f"bn{k}")))
        if downsample:
            keys[f"{prefix}.downsample.0.weight"] = ("params", (name, "downsample_conv", "kernel"), CONV)
            keys.update(_bn_keys(f"{prefix}.downsample.1", (name, "downsample_bn")))
    keys.update(_dense_keys("fc", ("fc",)))
    return keys


def torchvision_keys(name: str) -> dict:
    """``{torchvision key: (collection, linen path, kind)}`` for a model name; the
    ``num_batches_tracked`` buffers of BatchNorm are not listed (they are ignored)."""
    depth, batch_norm, family = C.parse_name(name)
    return _vgg_keys(depth, batch_norm) if family == "vgg" else _resnet_keys(depth)


def _torch_shape(linen_shape: tuple, kind: str) -> tuple:
    """The shape torchvision stores for a linen variable of ``linen_shape``."""
    if kind == CONV:  # HWIO -> OIHW
        h, w, i, o = linen_shape
        return (o, i, h, w)
    if kind in (LINEAR, LINEAR_CHW):  # (in, out) -> (out, in)
        return tuple(reversed(linen_shape))
    return tuple(linen_shape)


def _convert(a: np.ndarray, kind: str) -> np.ndarray:
    """A torchvision tensor in the layout of the linen variable."""
    if kind == CONV:
        return np.transpose(a, (2, 3, 1, 0))
    if kind == LINEAR:
        return np.transpose(a)
    if kind == LINEAR_CHW:
        # torch flattens the pooled (C, 7, 7) map channel-major; the linen model
        # flattens (7, 7, C): reorder the input axis of the weight accordingly.
        out, flat = a.shape
        h, w = C.VGG_POOL
        chw = a.reshape(out, flat // (h * w), h, w)
        return np.transpose(chw, (2, 3, 1, 0)).reshape(flat, out)
    return a


def _read(arrays: Union[Mapping[str, Any], str, os.PathLike]) -> dict:
    if isinstance(arrays, (str, os.PathLike)):
        path = os.fspath(arrays)
        if path.endswith(".safetensors"):
            try:
                from safetensors.numpy import load_file
            except ImportError:
                raise ImportError(
                    f"reading {path!r} needs the 'safetensors' package (pip install safetensors), "
                    "or pass the arrays as a dict"
                ) from None
            return dict(load_file(path))
        if path.endswith(".npz"):
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        raise ValueError(f"cannot read {path!r}: expected a .npz or .safetensors file, or a dict of arrays")
    return {k: arrays[k] for k in arrays.keys()}


def _sizes(family: str, arrays: Mapping[str, Any]) -> dict:
    """The model's sizes, read from the arrays: classes from the last layer, the
    first block's width from the first convolution and, for VGG, the classifier's
    hidden width (torchvision: 64 and 4096; other values for re-trained models)."""
    if family == "vgg":
        return {
            "num_classes": int(np.shape(arrays["classifier.6.weight"])[0]),
            "width": int(np.shape(arrays["features.0.weight"])[0]),
            "hidden": int(np.shape(arrays["classifier.0.weight"])[0]),
        }
    return {
        "num_classes": int(np.shape(arrays["fc.weight"])[0]),
        "width": int(np.shape(arrays["conv1.weight"])[0]),
    }


def _set(tree: dict, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _listed(keys: list, limit: int = 10) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_torchvision(
    name: str,
    arrays: Union[Mapping[str, Any], str, os.PathLike],
    *,
    dtype: Any = np.float32,
) -> tuple:
    """A zoo model with a torchvision checkpoint's weights (no PyTorch needed).

    Parameters
    ----------
    name:
        ``"vgg11"``, ``"vgg13"``, ``"vgg16"``, ``"vgg19"`` (each also with ``"_bn"``),
        ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
    arrays:
        The ``state_dict`` as ``{key: array}`` (e.g. ``np.load("vgg16.npz")``), or
        the path of a ``.npz`` or ``.safetensors`` file. The number of classes,
        the width of the first block and VGG's hidden width are read from the
        arrays (so re-trained variants load too); every other shape is checked.
    dtype:
        Dtype of the returned variables.

    Returns
    -------
    (model, variables)
        The linen model (:class:`~jaxlrp.models.linen.VGG` or
        :class:`~jaxlrp.models.linen.ResNet`, inference mode, NHWC input) and
        ``{"params": ..., "batch_stats": ...}``. Convolution kernels go from OIHW to
        HWIO, linear weights are transposed, the input axis of VGG's first
        classifier layer is reordered from PyTorch's NCHW flattening to NHWC,
        BatchNorm's ``weight``/``bias``/``running_mean``/``running_var`` become
        ``scale``/``bias``/``mean``/``var``; ``num_batches_tracked`` is ignored.

    Raises
    ------
    ValueError
        For an unknown name, and naming every missing or unexpected key and every
        array whose shape does not fit the architecture.

    Examples
    --------
    >>> model, variables = jaxlrp.models.load_torchvision("vgg16", np.load("vgg16.npz"))
    >>> logits = model.apply(variables, x)  # x: (N, 224, 224, 3), ImageNet-normalised
    """
    depth, batch_norm, family = C.parse_name(name)
    arrays = _read(arrays)
    keys = torchvision_keys(name)
    missing = [k for k in keys if k not in arrays]
    unexpected = [k for k in arrays if k not in keys and not (batch_norm and k.endswith(_TRACKED))]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        raise ValueError(f"the arrays are not a torchvision {name} state dict; " + "; ".join(parts))

    model = L.from_name(name, **_sizes(family, arrays))
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3), jnp.float32))

    variables: dict = {}
    wrong = []
    for key, (coll, path, kind) in keys.items():
        leaf = lookup(abstract[coll], path)
        if leaf is None:  # the key table and the Flax model disagree: a bug here, not in the weights
            raise AssertionError(f"{name}: no parameter {coll}/{'/'.join(map(str, path))} in the Flax model for {key!r}")
        expected = _torch_shape(leaf.shape, kind)
        a = np.asarray(arrays[key])
        if a.shape != expected:
            wrong.append(f"{key!r}: {a.shape}, expected {expected}")
            continue
        _set(variables.setdefault(coll, {}), path, jnp.asarray(_convert(a, kind), dtype=dtype))
    if wrong:
        raise ValueError(f"arrays of the wrong shape for {name}: " + "; ".join(wrong))
    return model, variables

