"""Explanation-quality metrics, compiled and batched.

Every metric is a pure JAX function over a batch: explanations (relevance) and
inputs carry a leading example axis ``N`` and every score is returned per example,
as an array of shape ``(N,)`` (or ``(N, steps + 1)`` for perturbation curves).
No metric loops over examples, perturbation steps or random draws in Python: they
use ``vmap``, ``lax.scan``, sorting and segment sums, so each one can be wrapped
in :func:`jax.jit` and mapped with :func:`jax.vmap`.

Models and explainers are plain callables, so the metrics do not depend on how an
explanation was computed:

* ``model(x_batch) -> logits`` of shape ``(N, C)``;
* ``explain(x_batch) -> relevance`` of the shape of ``x_batch`` (e.g. a closure
  over ``jaxlrp.lrp(model.apply, composite)`` and the variables);
* ``explain_with_params(params, x_batch) -> relevance`` for the randomisation test.

Masks are boolean arrays with the same number of axes as the relevance, whose
shape broadcasts to the relevance's shape (use size-1 axes, e.g. ``(N, H, W, 1)``
for a per-pixel mask of ``(N, H, W, C)`` relevance).

Score directions
----------------
=====================================  ======================================
metric                                 better
=====================================  ======================================
:func:`conservation_error`             lower (0 = relevance sums to the logit)
:func:`relevance_mass_accuracy`        higher (at most 1 for modes positive, abs)
:func:`relevance_rank_accuracy`        higher (in [0, 1])
:func:`pointing_game`                  higher (0 or 1)
:func:`sparseness`                     higher (Gini index in [0, 1))
:func:`complexity`                     lower (entropy in [0, log d])
:func:`aopc` of a MoRF curve           higher (the logit drops fast)
:func:`abpc`                           higher
:func:`faithfulness_correlation`       higher (in [-1, 1])
:func:`max_sensitivity`                lower
:func:`local_lipschitz_estimate`       lower
:func:`model_parameter_randomisation`  lower similarity (explanations depend on
                                       the parameters)
:func:`irof`                           higher (area over the removal curve)
:func:`road`                           accuracy per percentage; MoRF: lower
:func:`infidelity`                     lower
:func:`monotonicity_correlation`       higher (in [-1, 1])
:func:`avg_sensitivity`                lower
:func:`random_logit`                   lower similarity (class-sensitive)
=====================================  ======================================

Random parts (noise, subsets, replacement values, other classes) can be passed in
as arrays instead of a ``key``, so that a score can be reproduced exactly and
compared with another library's.

Undefined scores are NaN rather than errors, because they depend on values that
may be traced under ``jit``: an empty mask, an all-zero relevance, a zero logit, a
constant series in a correlation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

__all__ = [
    "conservation",
    "conservation_error",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "pointing_game",
    "sparseness",
    "complexity",
    "pixel_flipping",
    "aopc",
    "abpc",
    "faithfulness_correlation",
    "max_sensitivity",
    "local_lipschitz_estimate",
    "model_parameter_randomisation",
    "irof",
    "road",
    "noisy_linear_imputation",
    "infidelity",
    "monotonicity_correlation",
    "avg_sensitivity",
    "random_logit",
    "pearson",
    "spearman",
    "rankdata",
]

Array = jax.Array
Model = Callable[[Array], Array]
Explainer = Callable[[Array], Array]
Baseline = Union[float, str, ArrayLike]

_RMA_MODES = ("positive", "raw", "abs")
_ORDERS = ("morf", "lerf", "random")
_NORMS = ("fro", "l1", "inf")
_BASELINES = ("mean", "noise")
_SIMILARITIES = ("spearman", "pearson")
_RANDOMISATIONS = ("normal", "permute")


# ------------------------------------------------------------------ validation


def _float(a: Array) -> Array:
    """``a`` as an inexact array (integer and boolean inputs become the default float)."""
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return a
    return a.astype(jax.dtypes.canonicalize_dtype(np.float64))


def _batched(name: str, a: ArrayLike, min_ndim: int = 2) -> Array:
    """``a`` as a float array of shape ``(N, ...)`` with at least ``min_ndim`` axes."""
    a = jnp.asarray(a)
    if a.ndim < min_ndim:
        raise ValueError(
            f"{name} must have a leading example axis and at least {min_ndim} axes "
            f"(N, ...); got shape {a.shape}. For a single example use {name}[None]."
        )
    if math.prod(a.shape[1:]) == 0:
        raise ValueError(f"{name} has no entries per example: shape {a.shape}")
    return _float(a)


def _per_example(name: str, a: ArrayLike, n: int) -> Array:
    a = jnp.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), one value per example; got shape {a.shape}")
    return _float(a)


def _mask(mask: ArrayLike, relevance: Array) -> Array:
    """A boolean mask broadcast to ``relevance.shape``."""
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean, got dtype {m.dtype}; pass e.g. mask != 0")
    if m.ndim != relevance.ndim:
        raise ValueError(
            f"mask must have the same number of axes as relevance (use size-1 axes to "
            f"broadcast); got mask shape {m.shape} and relevance shape {relevance.shape}"
        )
    try:
        shape = np.broadcast_shapes(m.shape, relevance.shape)
    except ValueError:
        shape = None
    if shape != relevance.shape:
        raise ValueError(f"mask of shape {m.shape} does not broadcast to relevance's shape {relevance.shape}")
    return jnp.broadcast_to(m, relevance.shape)


def _flat(a: Array) -> Array:
    """``(N, ...)`` -> ``(N, d)``."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def _int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _concrete(a: Any) -> Optional[np.ndarray]:
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _positive(name: str, value: Any) -> None:
    v = _concrete(value)
    if v is not None and (v.shape != () or not np.isfinite(v) or v <= 0):
        raise ValueError(f"{name} must be a positive finite scalar, got {value!r}")


def _need_key(key: Any, what: str) -> Array:
    if key is None:
        raise ValueError(f"{what} needs a PRNG key: pass key=jax.random.key(seed)")
    return key


def _logits(model: Model, x: Array) -> Array:
    out = jnp.asarray(model(x))
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"model must map a batch of shape {x.shape} to logits of shape (N, C) = "
            f"({x.shape[0]}, C); got shape {out.shape}"
        )
    return out


def _target(target: Any, logits: Array) -> Array:
    """Per-example class indices, shape ``(N,)``; ``None`` means the argmax of ``logits``."""
    n, classes = logits.shape
    if target is None:
        return jnp.argmax(logits, axis=1)
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"target must be an int or an int array of shape (N,), got dtype {t.dtype}")
    if t.shape not in ((), (n,)):
        raise ValueError(f"target must have shape () or (N,) = ({n},), got shape {t.shape}")
    value = _concrete(target)
    if value is not None and (np.any(value < 0) or np.any(value >= classes)):
        raise ValueError(f"target {value.tolist()} out of range for {classes} classes")
    return jnp.broadcast_to(t, (n,))


def _select(logits: Array, target: Array) -> Array:
    return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


def _input_relevance(relevance: ArrayLike, x: Array) -> tuple[Array, bool]:
    """Relevance of shape ``x.shape`` or ``x.shape[:-1]``; the flag says it has the channel axis."""
    r = _float(jnp.asarray(relevance))
    if r.shape == x.shape:
        return r, True
    if r.shape == x.shape[:-1] and r.ndim >= 2:
        return r, False
    raise ValueError(
        f"relevance must have the input's shape {x.shape} or, summed over channels, "
        f"{x.shape[:-1]}; got shape {r.shape}"
    )


def _baseline(baseline: Baseline, x: Array, key: Any) -> Array:
    """The replacement values, an array of ``x.shape``."""
    if isinstance(baseline, str):
        _choice("baseline", baseline, _BASELINES)
        if baseline == "mean":
            # per channel over the spatial axes; for (N, D) inputs, over the features
            axes = tuple(range(1, x.ndim - 1)) if x.ndim > 2 else (1,)
            return jnp.broadcast_to(jnp.mean(x, axis=axes, keepdims=True), x.shape)
        key = _need_key(key, "baseline='noise'")
        lo = jnp.min(_flat(x), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        hi = jnp.max(_flat(x), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        return jax.random.uniform(key, x.shape, x.dtype, minval=lo, maxval=hi)
    b = jnp.asarray(baseline, dtype=x.dtype)
    try:
        return jnp.broadcast_to(b, x.shape)
    except ValueError:
        raise ValueError(f"baseline of shape {b.shape} does not broadcast to the input's shape {x.shape}") from None


def _split(key: Any, n: int) -> tuple:
    return tuple(jax.random.split(key, n)) if key is not None else (None,) * n


# ------------------------------------------------------------------ correlation helpers


def pearson(a: ArrayLike, b: ArrayLike) -> Array:
    r"""Pearson correlation of two batches, per example over all remaining axes.

    .. math:: \rho(a, b) = \frac{\sum_i (a_i - \bar a)(b_i - \bar b)}
              {\sqrt{\sum_i (a_i - \bar a)^2 \sum_i (b_i - \bar b)^2}}

    Parameters
    ----------
    a, b:
        Arrays of the same shape ``(N, ...)``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[-1, 1]``; NaN where ``a`` or ``b`` is constant.
    """
    a, b = _pair(a, b)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return jnp.sum(a * b, axis=1) / jnp.sqrt(jnp.sum(a * a, axis=1) * jnp.sum(b * b, axis=1))


def rankdata(a: ArrayLike) -> Array:
    """Ranks (1-based, ties get their average rank) per example over all remaining axes.

    Parameters
    ----------
    a:
        Array of shape ``(N, ...)``.

    Returns
    -------
    Array of shape ``(N, d)``, ``d`` the number of entries per example: the rank of
    each entry of the flattened example, e.g. ``[[3, 1, 1]] -> [[3, 1.5, 1.5]]``.
    """
    a = _flat(_batched("a", a))
    return jax.scipy.stats.rankdata(a, axis=1).astype(a.dtype)


def spearman(a: ArrayLike, b: ArrayLike) -> Array:
    r"""Spearman rank correlation of two batches, per example over all remaining axes.

    The Pearson correlation of the average ranks (:func:`rankdata`), as in
    ``scipy.stats.spearmanr``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[-1, 1]``; NaN where ``a`` or ``b`` is constant.
    """
    a, b = _pair(a, b)
    return pearson(rankdata(a), rankdata(b))


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[Array, Array]:
    a, b = _batched("a", a), _batched("b", b)
    if a.shape != b.shape:
        raise ValueError(f"the two batches must have the same shape, got {a.shape} and {b.shape}")
    return _flat(a), _flat(b)


# ------------------------------------------------------------------ conservation


def conservation(relevance: ArrayLike, output: ArrayLike) -> Array:
    r"""Fraction of the explained output that the relevance accounts for.

    .. math:: c = \frac{\sum_i R_i}{f_c(x)}

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    output:
        The explained logit ``f_c(x)`` per example, shape ``(N,)``.

    Returns
    -------
    Array of shape ``(N,)``; 1 for a conservative explanation (closer to 1 is
    better); inf or NaN where the logit is 0.
    """
    r = _batched("relevance", relevance)
    f = _per_example("output", output, r.shape[0])
    return jnp.sum(_flat(r), axis=1) / f


def conservation_error(relevance: ArrayLike, output_relevance_total: ArrayLike) -> Array:
    r"""Relative conservation error of an explanation.

    .. math:: e = \frac{\left|\sum_i R_i - f_c(x)\right|}{|f_c(x)|}

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    output_relevance_total:
        The explained logit ``f_c(x)`` per example (the total relevance put in at
        the output), shape ``(N,)``.

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better, 0 means the relevance sums
    exactly to the logit. inf or NaN where the logit is 0.
    """
    r = _batched("relevance", relevance)
    f = _per_example("output_relevance_total", output_relevance_total, r.shape[0])
    return jnp.abs(jnp.sum(_flat(r), axis=1) - f) / jnp.abs(f)


# ------------------------------------------------------------------ localisation


def relevance_mass_accuracy(relevance: ArrayLike, mask: ArrayLike, mode: str = "positive") -> Array:
    r"""Relevance mass accuracy (Arras, Osman & Samek 2022): the share of relevance inside the mask.

    .. math:: \mathrm{RMA} = \frac{\sum_{i \in M} \tilde R_i}{\sum_i \tilde R_i}

    with :math:`\tilde R = \max(R, 0)` (``mode="positive"``, both sums over positive
    relevance only), :math:`\tilde R = R` (``"raw"``) or :math:`\tilde R = |R|`
    (``"abs"``).

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    mask:
        Boolean ground-truth mask, broadcastable to ``relevance`` with the same
        number of axes.
    mode:
        ``"positive"``, ``"raw"`` or ``"abs"``.

    Returns
    -------
    Array of shape ``(N,)``; higher is better. In ``[0, 1]`` for ``"positive"`` and
    ``"abs"`` (1: all relevance in the mask); ``"raw"`` can leave ``[0, 1]`` when
    relevance has both signs. NaN for an empty mask and where the denominator is 0
    (e.g. no positive relevance in mode ``"positive"``).
    """
    _choice("mode", mode, _RMA_MODES)
    r = _batched("relevance", relevance)
    m = _flat(_mask(mask, r))
    r = _flat(r)
    if mode == "positive":
        r = jnp.maximum(r, 0)
    elif mode == "abs":
        r = jnp.abs(r)
    inside = jnp.sum(jnp.where(m, r, 0), axis=1)
    total = jnp.sum(r, axis=1)
    return jnp.where(jnp.any(m, axis=1), inside / total, jnp.nan)


def relevance_rank_accuracy(relevance: ArrayLike, mask: ArrayLike) -> Array:
    r"""Relevance rank accuracy (Arras, Osman & Samek 2022).

    With :math:`K = |M|` the mask's size and :math:`P_K` the :math:`K` positions of
    highest (signed) relevance,

    .. math:: \mathrm{RRA} = \frac{|P_K \cap M|}{K}.

    Ties in relevance are broken by position (the lower flat index ranks higher).

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    mask:
        Boolean ground-truth mask, broadcastable to ``relevance`` with the same
        number of axes.

    Returns
    -------
    Array of shape ``(N,)`` in ``[0, 1]``; higher is better. NaN for an empty mask.
    """
    r = _batched("relevance", relevance)
    m = _flat(_mask(mask, r))
    r = _flat(r)
    order = jnp.argsort(-r, axis=1, stable=True)  # descending, ties by position
    ranked = jnp.take_along_axis(m, order, axis=1)
    k = jnp.sum(m, axis=1)
    top = jnp.arange(r.shape[1])[None, :] < k[:, None]
    hits = jnp.sum(ranked & top, axis=1)
    return jnp.where(k > 0, hits / jnp.maximum(k, 1), jnp.nan).astype(r.dtype)


def pointing_game(relevance: ArrayLike, mask: ArrayLike) -> Array:
    r"""Pointing game (Zhang et al. 2018): is the most relevant position inside the mask?

    .. math:: \mathrm{PG} = \mathbb{1}\left[\arg\max_i R_i \in M\right]

    The argmax is the first position of maximal relevance.

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    mask:
        Boolean ground-truth mask, broadcastable to ``relevance`` with the same
        number of axes.

    Returns
    -------
    Array of shape ``(N,)`` with values 0.0 or 1.0; higher is better. NaN for an
    empty mask.
    """
    r = _batched("relevance", relevance)
    m = _flat(_mask(mask, r))
    r = _flat(r)
    hit = jnp.take_along_axis(m, jnp.argmax(r, axis=1)[:, None], axis=1)[:, 0]
    return jnp.where(jnp.any(m, axis=1), hit.astype(r.dtype), jnp.nan)


# ------------------------------------------------------------------ complexity


def sparseness(relevance: ArrayLike) -> Array:
    r"""Sparseness: the Gini index of :math:`|R|` (Chalasani et al. 2020).

    With :math:`v_{(1)} \le \dots \le v_{(d)}` the sorted absolute relevance of an
    example with ``d`` entries,

    .. math:: G = \frac{\sum_{i=1}^{d} (2i - d - 1)\, v_{(i)}}{d \sum_{i=1}^{d} v_{(i)}}
              = \frac{\sum_{i,j} |v_i - v_j|}{2 d \sum_i v_i}.

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[0, (d-1)/d]``; higher is better (sparser): 0 for
    uniform ``|R|``, ``(d-1)/d`` for a one-hot. NaN for an all-zero relevance.
    """
    v = _sort_magnitudes(jnp.abs(_flat(_batched("relevance", relevance))))
    d = v.shape[1]
    weights = (2 * jnp.arange(1, d + 1) - d - 1).astype(v.dtype)
    total = jnp.sum(v, axis=1)
    gini = jnp.sum(weights * v, axis=1) / (d * total)
    return jnp.where(total > 0, gini, jnp.nan)


def _sort_magnitudes(a: Array) -> Array:
    """Sort non-negative floats along axis 1 through their integer bit patterns.

    For IEEE floats with the sign bit clear the bit patterns, read as signed
    integers, are ordered as the values (NaN after inf), and XLA's integer sort is
    several times faster than its float sort on CPU (no NaN/-0 canonicalisation).
    """
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[a.dtype.itemsize]
    bits = jnp.sort(lax.bitcast_convert_type(a, itype), axis=1)
    return lax.bitcast_convert_type(bits, a.dtype)


def complexity(relevance: ArrayLike) -> Array:
    r"""Complexity: the entropy of the relevance distribution (Bhatt et al. 2020).

    .. math:: H = -\sum_i p_i \log p_i, \qquad p_i = \frac{|R_i|}{\sum_j |R_j|}

    (natural logarithm, :math:`0 \log 0 = 0`).

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[0, log d]``; lower is better (less complex): 0 for
    a one-hot, ``log d`` for uniform ``|R|``. NaN for an all-zero relevance.
    """
    a = jnp.abs(_flat(_batched("relevance", relevance)))
    total = jnp.sum(a, axis=1, keepdims=True)
    p = a / jnp.where(total > 0, total, 1)
    safe = jnp.where(p > 0, p, 1)
    h = -jnp.sum(p * jnp.log(safe), axis=1)
    return jnp.where(total[:, 0] > 0, h, jnp.nan)


# ------------------------------------------------------------------ perturbation


def _patch(region: Union[int, Sequence[int]], spatial: tuple) -> tuple:
    patch = (region,) * len(spatial) if isinstance(region, (int, np.integer)) else tuple(region)
    if len(patch) != len(spatial):
        raise ValueError(
            f"region must give a patch size for each of the {len(spatial)} spatial axes "
            f"(input shape (N, {', '.join(map(str, spatial))}, C)); got {region!r}"
        )
    for p, s in zip(patch, spatial):
        _int("each region size", p, 1, s)
    return patch


def _region_ids(spatial: tuple, patch: tuple) -> tuple[np.ndarray, int]:
    """Region index of every spatial position (row-major over the patch grid), and the count.

    Patches that do not fit at the end of an axis are cut short.
    """
    counts = [-(-s // p) for s, p in zip(spatial, patch)]
    grid = np.meshgrid(*[np.arange(s) // p for s, p in zip(spatial, patch)], indexing="ij")
    return np.ravel_multi_index(tuple(grid), counts), math.prod(counts)


def _perturbation_rank(scores: Array, order: str, key: Any) -> Array:
    """For each region, its position in the perturbation order (0 = perturbed first)."""
    if order == "random":
        scores = jax.random.uniform(_need_key(key, "order='random'"), scores.shape)
    elif order == "morf":
        scores = -scores
    sequence = jnp.argsort(scores, axis=1, stable=True)
    return jnp.argsort(sequence, axis=1)


def pixel_flipping(
    model: Model,
    x: ArrayLike,
    relevance: ArrayLike,
    target: Optional[ArrayLike] = None,
    *,
    region: Union[int, Sequence[int]] = 1,
    steps: Optional[int] = None,
    regions_per_step: int = 1,
    baseline: Baseline = 0.0,
    order: str = "morf",
    key: Optional[Array] = None,
) -> Array:
    r"""Pixel flipping / region perturbation curve (Bach et al. 2015; Samek et al. 2017).

    The spatial axes of ``x`` are tiled into patches of size ``region``; each patch
    is scored by the sum of its relevance over the patch and the channels, and the
    patches are replaced by ``baseline`` in order of decreasing score (``"morf"``,
    most relevant first), increasing score (``"lerf"``) or at random. After step
    ``k``, the first :math:`n_k = \min(k \cdot \text{regions\_per\_step}, L)` patches
    of the order are replaced (``L`` patches in all), and the curve records

    .. math:: c_k = f_c(x^{(k)}), \qquad k = 0, \dots, \text{steps},

    with :math:`x^{(0)} = x`. Steps run in a ``lax.scan`` with one batched model
    call each.

    Parameters
    ----------
    model:
        ``model(x_batch) -> logits`` of shape ``(N, C)``.
    x:
        Inputs of shape ``(N, *spatial, C)``: images ``(N, H, W, C)``, sequences
        ``(N, L, C)``; the last axis is always channels (give grayscale images a
        size-1 channel axis).
    relevance:
        Relevance of shape ``x.shape``, or already summed over channels
        (``x.shape[:-1]``).
    target:
        The explained class: an int, an int array of shape ``(N,)``, or ``None`` for
        each example's predicted class at ``x``.
    region:
        Patch size over the spatial axes: an int (the same for every axis) or one
        int per spatial axis. Patches at the end of an axis that does not divide
        evenly are smaller.
    steps:
        Number of perturbation steps; default: enough to replace every patch,
        ``ceil(L / regions_per_step)`` (also the maximum).
    regions_per_step:
        Patches replaced per step.
    baseline:
        Replacement values: a scalar, an array broadcastable to ``x``,
        ``"mean"`` (each example's per-channel mean over the spatial axes) or
        ``"noise"`` (uniform noise between each example's minimum and maximum of
        ``x``, drawn once; needs ``key``).
    order:
        ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or
        ``"random"`` (a random order per example, needs ``key``; the relevance is
        then unused).
    key:
        PRNG key for ``baseline="noise"`` and ``order="random"``.

    Returns
    -------
    Array of shape ``(N, steps + 1)``: the target logit of the progressively
    perturbed inputs, starting with the unperturbed logit. For MoRF a faster drop
    is better (see :func:`aopc`); for LeRF a slower one.
    """
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(
            f"x must have shape (N, *spatial, C), e.g. images (N, H, W, C) or sequences "
            f"(N, L, C), with at least 3 axes; got shape {x.shape}"
        )
    x = _batched("x", x, min_ndim=3)
    r, has_channels = _input_relevance(relevance, x)
    if has_channels:
        r = jnp.sum(r, axis=-1)
    _choice("order", order, _ORDERS)
    spatial = x.shape[1:-1]
    patch = _patch(region, spatial)
    ids, n_regions = _region_ids(spatial, patch)
    per_step = _int("regions_per_step", regions_per_step, 1, n_regions)
    max_steps = -(-n_regions // per_step)
    steps = max_steps if steps is None else _int("steps", steps, 1, max_steps)
    key_order, key_noise = _split(key, 2)

    logits0 = _logits(model, x)
    t = _target(target, logits0)
    base = _baseline(baseline, x, key_noise)

    scores = jax.vmap(lambda v: jax.ops.segment_sum(v, ids.ravel(), n_regions))(_flat(r))
    rank = _perturbation_rank(scores, order, key_order)
    pixel_rank = jnp.take(rank, ids, axis=1)[..., None]  # (N, *spatial, 1)
    counts = jnp.minimum(jnp.arange(1, steps + 1) * per_step, n_regions)

    def step(carry, n):
        xk = jnp.where(pixel_rank < n, base, x)
        return carry, _select(_logits(model, xk), t)

    _, curve = lax.scan(step, None, counts)
    return jnp.concatenate([_select(logits0, t)[:, None], curve.T], axis=1)


def _curve(name: str, curve: ArrayLike) -> Array:
    c = jnp.asarray(curve)
    if c.ndim != 2 or c.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, steps + 1), got shape {c.shape}")
    return _float(c)


def aopc(curve: ArrayLike) -> Array:
    r"""Area over the perturbation curve (Samek et al. 2017), per example.

    .. math:: \mathrm{AOPC} = \frac{1}{L + 1} \sum_{k=0}^{L} \left(c_0 - c_k\right)

    Parameters
    ----------
    curve:
        A curve from :func:`pixel_flipping`, shape ``(N, L + 1)``.

    Returns
    -------
    Array of shape ``(N,)``. For a MoRF curve higher is better (the logit drops
    fast); for a LeRF curve lower is better.
    """
    c = _curve("curve", curve)
    return jnp.mean(c[:, :1] - c, axis=1)


def abpc(curve_lerf: ArrayLike, curve_morf: ArrayLike) -> Array:
    r"""Area between the LeRF and MoRF perturbation curves, per example.

    .. math:: \mathrm{ABPC} = \frac{1}{L + 1} \sum_{k=0}^{L}
              \left(c^{\mathrm{LeRF}}_k - c^{\mathrm{MoRF}}_k\right)

    Parameters
    ----------
    curve_lerf, curve_morf:
        Curves from :func:`pixel_flipping` with ``order="lerf"`` and ``"morf"``, of
        the same shape ``(N, L + 1)``.

    Returns
    -------
    Array of shape ``(N,)``; higher is better.
    """
    lerf, morf = _curve("curve_lerf", curve_lerf), _curve("curve_morf", curve_morf)
    if lerf.shape != morf.shape:
        raise ValueError(f"curve_lerf and curve_morf must have the same shape, got {lerf.shape} and {morf.shape}")
    return jnp.mean(lerf - morf, axis=1)


def _faithfulness_from_subsets(
    model: Model, x: Array, relevance: Array, target: Any, subsets: Array, baseline: Array
) -> Array:
    """Faithfulness correlation for given subsets, a boolean array ``(draws, *relevance.shape)``."""
    logits0 = _logits(model, x)
    t = _target(target, logits0)
    f0 = _select(logits0, t)
    has_channels = relevance.shape == x.shape

    def draw(subset):
        replace = subset if has_channels else subset[..., None]
        drop = f0 - _select(_logits(model, jnp.where(replace, baseline, x)), t)
        return jnp.sum(jnp.where(_flat(subset), _flat(relevance), 0), axis=1), drop

    sums, drops = jax.vmap(draw)(subsets)  # each (draws, N)
    return pearson(sums.T, drops.T)


def faithfulness_correlation(
    model: Model,
    x: ArrayLike,
    relevance: ArrayLike,
    target: Optional[ArrayLike] = None,
    *,
    key: Array,
    subset_size: int,
    n_draws: int = 100,
    baseline: Baseline = 0.0,
) -> Array:
    r"""Faithfulness correlation (Bhatt et al. 2020).

    For ``n_draws`` random subsets :math:`S` of ``subset_size`` features (drawn
    independently per example), the correlation over draws

    .. math:: \rho = \operatorname{corr}_S\left(\sum_{i \in S} R_i,\;
              f_c(x) - f_c(x_{S \leftarrow b})\right)

    between the relevance of the subset and the drop of the target logit when the
    subset is replaced by the baseline ``b``. The draws run under ``vmap`` (the model
    sees ``n_draws`` batches of size ``N`` at once).

    Parameters
    ----------
    model:
        ``model(x_batch) -> logits`` of shape ``(N, C)``.
    x:
        Inputs of shape ``(N, ...)``.
    relevance:
        Relevance of shape ``x.shape`` (features are the entries of ``x``), or
        ``x.shape[:-1]`` (features are positions; a subset replaces all channels).
    target:
        An int, an int array of shape ``(N,)``, or ``None`` for the predicted class.
    key:
        PRNG key for the subsets (and a ``"noise"`` baseline).
    subset_size:
        Features per subset, between 1 and the number of features.
    n_draws:
        Number of subsets per example (at least 2).
    baseline:
        Replacement values, as in :func:`pixel_flipping`: a scalar, an array
        broadcastable to ``x``, ``"mean"`` or ``"noise"``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[-1, 1]``; higher is better. NaN where the subset
    relevance or the logit drop is constant over the draws.
    """
    x = _batched("x", x)
    r, _ = _input_relevance(relevance, x)
    d = math.prod(r.shape[1:])
    size = _int("subset_size", subset_size, 1, d)
    draws = _int("n_draws", n_draws, 2)
    key_subsets, key_noise = jax.random.split(_need_key(key, "faithfulness_correlation"))
    base = _baseline(baseline, x, key_noise)
    u = jax.random.uniform(key_subsets, (draws, r.shape[0], d))
    subsets = (jnp.argsort(jnp.argsort(u, axis=2), axis=2) < size).reshape((draws,) + r.shape)
    return _faithfulness_from_subsets(model, x, r, target, subsets, base)


# ------------------------------------------------------------------ robustness


def _norm(a: Array, norm: str) -> Array:
    a = _flat(a)
    if norm == "fro":
        return jnp.sqrt(jnp.sum(a * a, axis=1))
    if norm == "l1":
        return jnp.sum(jnp.abs(a), axis=1)
    return jnp.max(jnp.abs(a), axis=1)


def _explained(explain: Explainer, x: Array) -> Array:
    r = jnp.asarray(explain(x))
    if r.ndim < 1 or r.shape[0] != x.shape[0]:
        raise ValueError(
            f"explain must map a batch of shape {x.shape} to relevance with the same leading "
            f"example axis; got shape {r.shape}"
        )
    return _float(r)


def _uniform_noise(key: Array, n_samples: int, x: Array, radius: Any) -> Array:
    """``n_samples`` draws from the uniform distribution on the L-inf ball of ``radius``."""
    return jax.random.uniform(key, (n_samples,) + x.shape, x.dtype, minval=-radius, maxval=radius)


def _sensitivities(explain: Explainer, x: Array, noise: Array, norm: str, r0: Optional[Array] = None) -> Array:
    """``||explain(x + delta) - explain(x)||`` for each draw ``delta``, shape ``(draws, N)``."""
    r0 = _explained(explain, x) if r0 is None else r0
    return jax.vmap(lambda delta: _norm(_explained(explain, x + delta) - r0, norm))(noise)


def _lipschitz_ratios(explain: Explainer, x: Array, noise: Array) -> Array:
    """``||explain(x + delta) - explain(x)||_2 / ||delta||_2`` per draw, shape ``(draws, N)``."""
    r0 = _explained(explain, x)
    return jax.vmap(lambda delta: _norm(_explained(explain, x + delta) - r0, "fro") / _norm(delta, "fro"))(noise)


def max_sensitivity(
    explain: Explainer,
    x: ArrayLike,
    *,
    key: Array,
    radius: float,
    n_samples: int = 10,
    norm: str = "fro",
    relative: bool = False,
) -> Array:
    r"""Max-sensitivity (Yeh et al. 2019), Monte-Carlo estimate.

    .. math:: \mathrm{SENS}_{\max} = \max_{\|\delta\|_\infty \le r}
              \left\| \Phi(x + \delta) - \Phi(x) \right\|

    estimated as the maximum over ``n_samples`` draws of :math:`\delta` from the
    uniform distribution on the L-inf ball of radius ``r``, independently per
    example. With ``relative=True`` it is divided by :math:`\|\Phi(x)\|`. The draws
    run under ``vmap``.

    Parameters
    ----------
    explain:
        ``explain(x_batch) -> relevance`` (batched, leading axis ``N``).
    x:
        Inputs of shape ``(N, ...)``.
    key:
        PRNG key for the noise.
    radius:
        Radius ``r > 0`` of the L-inf ball.
    n_samples:
        Number of draws (at least 1).
    norm:
        Norm of the flattened difference: ``"fro"`` (Euclidean), ``"l1"`` or ``"inf"``.
    relative:
        Divide by the norm of the unperturbed explanation.

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better (0 for an explanation that
    does not change within the ball).
    """
    x = _batched("x", x, min_ndim=1)
    _positive("radius", radius)
    n = _int("n_samples", n_samples, 1)
    _choice("norm", norm, _NORMS)
    noise = _uniform_noise(_need_key(key, "max_sensitivity"), n, x, radius)
    r0 = _explained(explain, x)
    sens = jnp.max(_sensitivities(explain, x, noise, norm, r0), axis=0)
    return sens / _norm(r0, norm) if relative else sens


def local_lipschitz_estimate(
    explain: Explainer,
    x: ArrayLike,
    *,
    key: Array,
    radius: float,
    n_samples: int = 10,
) -> Array:
    r"""Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018), Monte-Carlo.

    .. math:: \hat L(x) = \max_{x' \in B_r(x)}
              \frac{\|\Phi(x) - \Phi(x')\|_2}{\|x - x'\|_2}

    with :math:`B_r(x)` the L-inf ball of radius ``r``, estimated by the maximum over
    ``n_samples`` uniform draws of :math:`x'` (independently per example, under
    ``vmap``).

    Parameters
    ----------
    explain:
        ``explain(x_batch) -> relevance`` (batched, leading axis ``N``).
    x:
        Inputs of shape ``(N, ...)``.
    key:
        PRNG key for the noise.
    radius:
        Radius ``r > 0`` of the L-inf ball.
    n_samples:
        Number of draws (at least 1).

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better (a stabler explanation).
    """
    x = _batched("x", x, min_ndim=1)
    _positive("radius", radius)
    n = _int("n_samples", n_samples, 1)
    noise = _uniform_noise(_need_key(key, "local_lipschitz_estimate"), n, x, radius)
    return jnp.max(_lipschitz_ratios(explain, x, noise), axis=0)


# ------------------------------------------------------------------ randomisation


def _randomise_leaf(leaf: Any, key: Array, method: str) -> Any:
    """A random stand-in for one parameter array (non-float leaves are kept)."""
    a = jnp.asarray(leaf)
    if not jnp.issubdtype(a.dtype, jnp.floating) or a.size == 0:
        return leaf
    if method == "permute":
        return jax.random.permutation(key, a.ravel()).reshape(a.shape)
    return a.mean() + a.std() * jax.random.normal(key, a.shape, a.dtype)


def _randomise(subtree: Any, key: Array, method: str) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(subtree)
    new = [_randomise_leaf(leaf, jax.random.fold_in(key, i), method) for i, leaf in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def _similarity_fn(similarity: Union[str, Callable]) -> Callable:
    if callable(similarity):
        return similarity
    return {"spearman": spearman, "pearson": pearson}[_choice("similarity", similarity, _SIMILARITIES)]


def model_parameter_randomisation(
    explain_with_params: Callable[[Any, Array], Array],
    params: Mapping,
    x: ArrayLike,
    *,
    key: Array,
    layers: Optional[Sequence[str]] = None,
    similarity: Union[str, Callable[[Array, Array], Array]] = "spearman",
    randomisation: str = "normal",
) -> dict[str, Array]:
    r"""Cascading model parameter randomisation test, MPRT (Adebayo et al. 2018).

    The top-level entries ("layers") of the parameter tree are randomised one after
    another, cumulatively, from the last layer to the first; after each step the
    inputs are explained again and compared with the original explanation
    :math:`\Phi_\theta(x)`:

    .. math:: s_\ell = \operatorname{sim}\left(\Phi_\theta(x),
              \Phi_{\theta_{\ge \ell}\text{ randomised}}(x)\right)

    An explanation that reflects the model should lose its similarity quickly.

    Parameters
    ----------
    explain_with_params:
        ``explain_with_params(params, x_batch) -> relevance``.
    params:
        A mapping; if it has a ``"params"`` entry (Flax variables), the layers are
        that entry's keys and the other collections (e.g. ``"batch_stats"``) stay
        untouched, else the layers are the keys of ``params`` itself.
    x:
        Inputs of shape ``(N, ...)``.
    key:
        PRNG key for the randomisation.
    layers:
        Names of the layers to randomise, in the order of randomisation. Default:
        all layers in reverse insertion order (last layer first). A dict passed
        through :func:`jax.jit` as an argument arrives with its keys sorted (JAX
        flattens dicts in key order), so under ``jit`` either close over ``params``
        or pass ``layers`` explicitly.
    similarity:
        ``"spearman"`` (rank correlation of the flattened relevance, :func:`spearman`),
        ``"pearson"`` (:func:`pearson`), or a function ``(a, b) -> (N,)``.
    randomisation:
        How a floating-point parameter array is randomised: ``"normal"`` (fresh
        Gaussian values with the array's own mean and standard deviation, so a
        constant array such as a zero bias stays constant) or ``"permute"`` (its
        entries shuffled).

    Returns
    -------
    dict
        Layer name -> similarity per example, shape ``(N,)``, in the order of
        randomisation (a dict returned from :func:`jax.jit` has sorted keys); lower
        is better.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping of layer names to parameters, got {type(params).__name__}")
    nested = "params" in params
    tree = params["params"] if nested else params
    if not isinstance(tree, Mapping) or len(tree) == 0:
        raise ValueError("params['params'] must be a non-empty mapping of layer names to parameters")
    names = list(tree.keys())
    order = list(reversed(names)) if layers is None else list(layers)
    if isinstance(layers, str) or len(order) == 0:
        raise ValueError(f"layers must be a non-empty sequence of layer names, got {layers!r}")
    unknown = [name for name in order if name not in tree]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the parameters have layers {names}")
    if len(set(order)) != len(order):
        raise ValueError(f"layers must not repeat a name, got {order}")
    sim = _similarity_fn(similarity)
    _choice("randomisation", randomisation, _RANDOMISATIONS)
    key = _need_key(key, "model_parameter_randomisation")

    x = _batched("x", x, min_ndim=1)
    original = explain_with_params(params, x)
    current = dict(tree)
    scores = {}
    for i, name in enumerate(order):
        current[name] = _randomise(current[name], jax.random.fold_in(key, i), randomisation)
        randomised = {**params, "params": dict(current)} if nested else dict(current)
        scores[name] = sim(original, explain_with_params(randomised, x))
    return scores


# ------------------------------------------------------------------ more faithfulness (Quantus' set)


def _segment_ids(segments: Optional[ArrayLike], x: Array, region) -> tuple[Array, int]:
    """Per-example segment ids ``(N, *spatial)`` and the number of ids ``S``."""
    spatial = x.shape[1:-1]
    if segments is None:
        ids, count = _region_ids(spatial, _patch(region, spatial))
        return jnp.broadcast_to(jnp.asarray(ids), (x.shape[0],) + spatial), count
    s = jnp.asarray(segments)
    if s.shape != (x.shape[0],) + spatial or not jnp.issubdtype(s.dtype, jnp.integer):
        raise ValueError(f"segments must be integer ids of shape (N, *spatial) = {(x.shape[0],) + spatial}, "
                         f"got {s.dtype} {s.shape}")
    v = _concrete(s)
    if v is None:
        raise ValueError("segments must be concrete (not traced): their count fixes the number of steps")
    if v.min() < 0:
        raise ValueError("segment ids must be non-negative")
    return s, int(v.max()) + 1


def irof(
    model: Model,
    x: ArrayLike,
    relevance: ArrayLike,
    target: Optional[ArrayLike] = None,
    *,
    segments: Optional[ArrayLike] = None,
    region: Union[int, Sequence[int]] = 4,
    baseline: Baseline = "mean",
    key: Optional[Array] = None,
) -> Array:
    r"""Iterative Removal Of Features, IROF (Rieger & Hansen 2020), as Quantus computes it.

    The segments (superpixels, or patches of size ``region``) are ranked by their mean
    relevance :math:`\bar R_s` (over the segment's positions and channels) and removed
    cumulatively, most relevant first, by replacing them with ``baseline``. With
    :math:`c_k = f_c(x^{(k)}) / f_c(x)` after :math:`k = 1, \dots, L` removals (``L``
    non-empty segments), the score is the area over the curve,

    .. math:: \mathrm{IROF} = L - \sum_{k=1}^{L-1} \frac{c_k + c_{k+1}}{2}

    (Quantus' ``IROF``; divide by ``L`` for a score in about ``[0, 1]``).

    Parameters
    ----------
    model, x, relevance, target, baseline, key:
        As for :func:`pixel_flipping` (``x`` of shape ``(N, *spatial, C)``).
    segments:
        Integer segment ids per position, shape ``(N, *spatial)`` (e.g. SLIC
        superpixels computed elsewhere); ids need not be contiguous, absent ids are
        skipped. Default: a grid of ``region`` patches.

    Returns
    -------
    Array of shape ``(N,)``; higher is better. inf or NaN where the logit is 0.
    """
    x = _batched("x", x, min_ndim=3)
    r, has_channels = _input_relevance(relevance, x)
    r = r if has_channels else jnp.broadcast_to(r[..., None], x.shape)
    ids, count = _segment_ids(segments, x, region)
    logits0 = _logits(model, x)
    t = _target(target, logits0)
    f0 = _select(logits0, t)
    base = _baseline(baseline, x, key)

    flat_ids = ids.reshape(ids.shape[0], -1)
    seg = jax.vmap(lambda v, i: jax.ops.segment_sum(v, i, count))
    sums = seg(jnp.sum(r, axis=-1).reshape(flat_ids.shape), flat_ids)
    sizes = seg(jnp.ones(flat_ids.shape, r.dtype), flat_ids)
    present = sizes > 0
    means = jnp.where(present, sums / jnp.where(present, sizes * x.shape[-1], 1), -jnp.inf)
    order = jnp.argsort(-means, axis=1, stable=True)  # absent segments last
    rank = jnp.argsort(order, axis=1)
    pixel_rank = jnp.take_along_axis(rank, flat_ids, axis=1).reshape(ids.shape)[..., None]

    def step(carry, k):
        return carry, _select(_logits(model, jnp.where(pixel_rank < k, base, x)), t) / f0

    _, c = lax.scan(step, None, jnp.arange(1, count + 1))
    c = c.T  # (N, count): c[:, j] after j + 1 removals
    n_seg = jnp.sum(present, axis=1)
    j = jnp.arange(count)[None, :]
    inside = j < n_seg[:, None]
    last = jnp.take_along_axis(c, (n_seg - 1)[:, None], axis=1)[:, 0]
    auc = jnp.sum(jnp.where(inside, c, 0), axis=1) - (c[:, 0] + last) / 2
    return n_seg.astype(c.dtype) - auc


_NEIGHBOURS = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def _neighbour_sum(u: Array) -> Array:
    """Weighted sum over the 8 neighbours (ROAD's weights) inside the image, per channel.

    ``u`` has shape ``(N, H, W, C)``.
    """
    k = jnp.asarray(_NEIGHBOURS, u.dtype)[:, :, None, None]
    c = u.shape[-1]
    return lax.conv_general_dilated(
        u, jnp.tile(k, (1, 1, 1, c)), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
        precision=lax.Precision.HIGHEST,
    )


def noisy_linear_imputation(x: ArrayLike, removed: ArrayLike, noise: Optional[ArrayLike] = None) -> Array:
    r"""ROAD's noisy linear imputation (Rong et al. 2022): removed pixels become the
    weighted mean of their neighbours.

    Each removed pixel :math:`i` satisfies :math:`s_i u_i = \sum_j w_{ij} u_j` over its
    8 neighbours inside the image (weights 1/6 for edges, 1/12 for corners,
    :math:`s_i = \sum_j w_{ij}`), known pixels keep their value; the linear system
    is symmetric positive definite and solved by conjugate gradients for all images
    and channels at once; then ``noise`` is added to the removed pixels.

    Parameters
    ----------
    x:
        Images ``(N, H, W, C)``.
    removed:
        Boolean ``(N, H, W)``; every image must keep at least one pixel.
    noise:
        Added to the removed pixels (e.g. ``0.01 * normal draws``), shape of ``x``.
    """
    x = _batched("x", x, min_ndim=4)
    m = jnp.asarray(removed)[..., None].astype(x.dtype)
    s = _neighbour_sum(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype))
    rhs = m * _neighbour_sum((1 - m) * x)

    def matvec(u):
        return m * (s * u - _neighbour_sum(m * u)) + (1 - m) * u

    tol = 1e-12 if x.dtype == jnp.float64 else 1e-6
    u, _ = jax.scipy.sparse.linalg.cg(matvec, rhs, tol=tol, maxiter=4 * x.shape[1] * x.shape[2])
    out = m * u + (1 - m) * x
    return out if noise is None else out + m * jnp.asarray(noise, x.dtype)


def road(
    model: Model,
    x: ArrayLike,
    relevance: ArrayLike,
    target: Optional[ArrayLike] = None,
    *,
    percentages: Sequence[float] = tuple(range(1, 100, 2)),
    noise: float = 0.01,
    key: Optional[Array] = None,
    draws: Optional[ArrayLike] = None,
) -> Array:
    r"""RemOve And Debias, ROAD (Rong et al. 2022), most relevant first, as in Quantus.

    For each percentage :math:`p`, the :math:`\lfloor p\, HW / 100 \rfloor` positions
    of highest relevance (summed over channels) are removed by
    :func:`noisy_linear_imputation` (noise of standard deviation ``noise``), and the
    score records whether the model still predicts ``target``:

    .. math:: a_p = \mathbb 1\left[\arg\max f(\tilde x_p) = c\right]

    Parameters
    ----------
    model, x, relevance, target:
        As for :func:`pixel_flipping`; ``x`` images ``(N, H, W, C)``. ``target=None``
        uses the prediction at ``x``.
    percentages:
        Percentages of removed positions, each in ``[0, 100)``.
    key, draws:
        The imputation noise: a PRNG key, or the standard-normal draws themselves
        (shape ``(len(percentages), *x.shape)``), scaled by ``noise``. Neither: no
        noise.

    Returns
    -------
    Array of shape ``(N, len(percentages))`` with values 0.0 or 1.0; average over the
    examples for the ROAD curve (accuracy per percentage); with MoRF a faster drop is
    better.
    """
    x = _batched("x", x, min_ndim=4)
    r, has_channels = _input_relevance(relevance, x)
    r = jnp.sum(r, axis=-1) if has_channels else r
    pct = np.asarray(percentages, dtype=np.float64)
    if pct.ndim != 1 or pct.size == 0 or np.any(pct < 0) or np.any(pct >= 100):
        raise ValueError(f"percentages must be a non-empty sequence of values in [0, 100), got {percentages!r}")
    d = x.shape[1] * x.shape[2]
    counts = jnp.asarray((d * pct / 100).astype(np.int64))
    if draws is None and key is not None:
        draws = jax.random.normal(key, (pct.size,) + x.shape, x.dtype)
    if draws is not None:
        draws = jnp.asarray(draws, x.dtype)
        if draws.shape != (pct.size,) + x.shape:
            raise ValueError(f"draws must have shape (len(percentages), *x.shape) = {(pct.size,) + x.shape}, "
                             f"got {draws.shape}")
    t = _target(target, _logits(model, x))
    rank = jnp.argsort(jnp.argsort(-_flat(r), axis=1, stable=True), axis=1).reshape(r.shape)

    def at(item):
        k, z = item
        noisy = None if z is None else noise * z
        xi = noisy_linear_imputation(x, rank < k, noisy)
        return (jnp.argmax(_logits(model, xi), axis=1) == t).astype(x.dtype)

    return lax.map(at, (counts, draws)).T


def infidelity(
    model: Model,
    x: ArrayLike,
    relevance: ArrayLike,
    target: Optional[ArrayLike] = None,
    *,
    perturbations: Optional[ArrayLike] = None,
    key: Optional[Array] = None,
    n_samples: int = 10,
    sigma: float = 0.1,
    normalize: bool = False,
) -> Array:
    r"""Infidelity (Yeh et al. 2019), as Captum defines it.

    .. math:: \mathrm{INFD} = \frac{1}{n} \sum_{k=1}^{n}
              \left( \beta\, I_k^\top R - \left(f_c(x) - f_c(x - I_k)\right) \right)^2

    over perturbations :math:`I_k` (given, or Gaussian with standard deviation
    ``sigma``), with :math:`\beta = 1`, or with ``normalize`` the least-squares
    scale :math:`\beta = \sum_k (I_k^\top R)\,\Delta_k / \sum_k (I_k^\top R)^2`.

    Parameters
    ----------
    relevance:
        Relevance of shape ``x.shape``.
    perturbations:
        :math:`I_k`, shape ``(n, *x.shape)``; else drawn with ``key``.

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better.
    """
    x = _batched("x", x, min_ndim=1)
    r = _float(jnp.asarray(relevance))
    if r.shape != x.shape:
        raise ValueError(f"relevance must have the input's shape {x.shape}, got {r.shape}")
    if perturbations is None:
        n = _int("n_samples", n_samples, 1)
        _positive("sigma", sigma)
        perturbations = sigma * jax.random.normal(_need_key(key, "infidelity"), (n,) + x.shape, x.dtype)
    p = jnp.asarray(perturbations, x.dtype)
    if p.shape[1:] != x.shape or p.ndim != x.ndim + 1:
        raise ValueError(f"perturbations must have shape (n, *x.shape) = (n, {', '.join(map(str, x.shape))}), got {p.shape}")
    logits0 = _logits(model, x)
    t = _target(target, logits0)
    f0 = _select(logits0, t)
    drops = jax.vmap(lambda i: f0 - _select(_logits(model, x - i), t))(p)  # (n, N)
    dots = jax.vmap(lambda i: jnp.sum(_flat(i * r), axis=1))(p)
    if normalize:
        den = jnp.sum(dots * dots, axis=0)
        beta = jnp.sum(dots * drops, axis=0) / jnp.where(den > 0, den, 1)
        dots = dots * beta
    return jnp.mean((dots - drops) ** 2, axis=0)


def monotonicity_correlation(
    model: Model,
    x: ArrayLike,
    relevance: ArrayLike,
    target: Optional[ArrayLike] = None,
    *,
    draws: Optional[ArrayLike] = None,
    key: Optional[Array] = None,
    n_samples: int = 10,
    low: float = 0.0,
    high: float = 1.0,
    features_per_step: int = 1,
    eps: float = 1e-5,
    similarity: Union[str, Callable[[Array, Array], Array]] = "spearman",
) -> Array:
    r"""Monotonicity correlation (Nguyen & Martínez 2020), as in Quantus.

    The features are ranked by increasing relevance and grouped into steps of
    ``features_per_step``. Each group :math:`G_k` alone is replaced by random values
    (``n_samples`` draws :math:`u`), and its effect is the normalised variance

    .. math:: v_k = \frac{1}{n} \sum_{u} \frac{\left(f_c(x_{G_k \leftarrow u}) - f_c(x)\right)^2}
              {f_c(x)^2}

    (the denominator is 1 where :math:`|f_c(x)| < \varepsilon`); the score is the
    correlation over steps between :math:`\sum_{i \in G_k} R_i` and :math:`v_k`.

    Parameters
    ----------
    relevance:
        Relevance of shape ``x.shape`` (features are the entries of ``x``).
    draws:
        The replacement values, shape ``(n, *x.shape)``; else uniform in
        ``[low, high)`` from ``key`` (Quantus' ``"uniform"`` baseline).
    similarity:
        ``"spearman"`` (default), ``"pearson"`` or ``(a, b) -> (N,)``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[-1, 1]``; higher is better.
    """
    x = _batched("x", x, min_ndim=1)
    r = _float(jnp.asarray(relevance))
    if r.shape != x.shape:
        raise ValueError(f"relevance must have the input's shape {x.shape}, got {r.shape}")
    d = math.prod(x.shape[1:])
    per = _int("features_per_step", features_per_step, 1, d)
    if draws is None:
        n = _int("n_samples", n_samples, 1)
        draws = jax.random.uniform(_need_key(key, "monotonicity_correlation"), (n,) + x.shape, x.dtype, low, high)
    u = jnp.asarray(draws, x.dtype)
    if u.shape[1:] != x.shape or u.ndim != x.ndim + 1:
        raise ValueError(f"draws must have shape (n, *x.shape), got {u.shape}")
    sim = _similarity_fn(similarity)
    logits0 = _logits(model, x)
    t = _target(target, logits0)
    f0 = _select(logits0, t)
    inv = jnp.where(jnp.abs(f0) >= eps, 1 / jnp.where(f0 == 0, 1, f0) ** 2, 1.0)
    flat_r = _flat(r)
    group = (jnp.argsort(jnp.argsort(flat_r, axis=1, stable=True), axis=1) // per).reshape(x.shape)
    steps = -(-d // per)

    def at(k):
        sel = group == k
        var = jnp.mean(jax.vmap(lambda v: (_select(_logits(model, jnp.where(sel, v, x)), t) - f0) ** 2)(u), axis=0)
        return jnp.sum(jnp.where(_flat(sel), flat_r, 0), axis=1), var * inv

    atts, vars_ = lax.map(at, jnp.arange(steps))  # (steps, N)
    return sim(atts.T, vars_.T)


# ------------------------------------------------------------------ more robustness and randomisation


def avg_sensitivity(
    explain: Explainer,
    x: ArrayLike,
    *,
    key: Optional[Array] = None,
    radius: float = 0.2,
    n_samples: int = 10,
    noise: Optional[ArrayLike] = None,
    norm: str = "fro",
    relative: bool = True,
) -> Array:
    r"""Average sensitivity (Yeh et al. 2019), as in Quantus.

    .. math:: \mathrm{SENS}_{\text{avg}} = \frac{1}{n} \sum_{k=1}^{n}
              \frac{\left\| \Phi(x + \delta_k) - \Phi(x) \right\|}{\|\Phi(x)\|}

    over draws :math:`\delta_k` (given as ``noise``, shape ``(n, *x.shape)``, or
    uniform on the L-inf ball of ``radius`` from ``key``); without ``relative`` the
    denominator is 1. Quantus' default perturbation is that uniform noise with
    ``lower_bound=0.2``.

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better.
    """
    x = _batched("x", x, min_ndim=1)
    _choice("norm", norm, _NORMS)
    if noise is None:
        _positive("radius", radius)
        noise = _uniform_noise(_need_key(key, "avg_sensitivity"), _int("n_samples", n_samples, 1), x, radius)
    noise = jnp.asarray(noise, x.dtype)
    if noise.shape[1:] != x.shape or noise.ndim != x.ndim + 1:
        raise ValueError(f"noise must have shape (n, *x.shape), got {noise.shape}")
    r0 = _explained(explain, x)
    sens = jnp.mean(_sensitivities(explain, x, noise, norm, r0), axis=0)
    return sens / _norm(r0, norm) if relative else sens


def random_logit(
    explain_target: Callable[[Array, Array], Array],
    x: ArrayLike,
    target: ArrayLike,
    *,
    classes: Optional[int] = None,
    other: Optional[ArrayLike] = None,
    key: Optional[Array] = None,
    similarity: Union[str, Callable[[Array, Array], Array]] = "spearman",
) -> Array:
    r"""Random logit test (Sixt et al. 2020): similarity to the explanation of another class.

    .. math:: s = \operatorname{sim}\left(\Phi(x, c), \Phi(x, c')\right), \qquad c' \ne c

    with :math:`c'` given (``other``) or drawn uniformly from the other classes.

    Parameters
    ----------
    explain_target:
        ``explain_target(x_batch, target_batch) -> relevance``.
    target:
        The explained classes, shape ``(N,)``.
    classes:
        Number of classes (needed to draw ``other``).
    other:
        The other classes, shape ``(N,)``, each different from ``target``.
    similarity:
        ``"spearman"`` (default), ``"pearson"`` or ``(a, b) -> (N,)`` (Quantus'
        default is SSIM).

    Returns
    -------
    Array of shape ``(N,)``; lower is better (class-sensitive explanations).
    """
    x = _batched("x", x, min_ndim=1)
    t = jnp.asarray(target)
    if t.shape != (x.shape[0],) or not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"target must be integer classes of shape (N,) = ({x.shape[0]},), got {t.dtype} {t.shape}")
    if other is None:
        k = _int("classes", classes, 2) if classes is not None else None
        if k is None:
            raise ValueError("random_logit needs classes= to draw the other classes (or pass other=)")
        shift = jax.random.randint(_need_key(key, "random_logit"), t.shape, 1, k)
        other = (t + shift) % k
    o = jnp.asarray(other)
    if o.shape != t.shape:
        raise ValueError(f"other must have shape {t.shape}, got {o.shape}")
    v_t, v_o = _concrete(t), _concrete(o)
    if v_t is not None and v_o is not None and np.any(v_t == v_o):
        raise ValueError("other must differ from target for every example")
    sim = _similarity_fn(similarity)
    return sim(_float(jnp.asarray(explain_target(x, t))), _float(jnp.asarray(explain_target(x, o))))
