"""Faithfulness: does the relevance account for the output, and does the output
fall when the most relevant features are removed (conservation, pixel flipping,
AOPC, ABPC, faithfulness correlation, IROF, ROAD, infidelity, monotonicity)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from ._common import (
    Array,
    Baseline,
    Model,
    baseline_input,
    check_batched,
    check_choice,
    concrete,
    flatten_examples,
    as_float,
    input_relevance,
    check_int,
    logits_of,
    need_key,
    per_example,
    check_positive,
    select_target,
    similarity_fn,
    split_key,
    check_target,
    pearson,
)

_ORDERS = ("morf", "lerf", "random")


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
    r = check_batched("relevance", relevance)
    f = per_example("output", output, r.shape[0])
    return jnp.sum(flatten_examples(r), axis=1) / f


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
    r = check_batched("relevance", relevance)
    f = per_example("output_relevance_total", output_relevance_total, r.shape[0])
    return jnp.abs(jnp.sum(flatten_examples(r), axis=1) - f) / jnp.abs(f)


# ------------------------------------------------------------------ perturbation


def _patch(region: Union[int, Sequence[int]], spatial: tuple) -> tuple:
    patch = (region,) * len(spatial) if isinstance(region, (int, np.integer)) else tuple(region)
    if len(patch) != len(spatial):
        raise ValueError(
            f"region must give a patch size for each of the {len(spatial)} spatial axes "
            f"(input shape (N, {', '.join(map(str, spatial))}, C)); got {region!r}"
        )
    for p, s in zip(patch, spatial):
        check_int("each region size", p, 1, s)
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
        scores = jax.random.uniform(need_key(key, "order='random'"), scores.shape)
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
    x = check_batched("x", x, min_ndim=3)
    r, has_channels = input_relevance(relevance, x)
    if has_channels:
        r = jnp.sum(r, axis=-1)
    check_choice("order", order, _ORDERS)
    spatial = x.shape[1:-1]
    patch = _patch(region, spatial)
    ids, n_regions = _region_ids(spatial, patch)
    per_step = check_int("regions_per_step", regions_per_step, 1, n_regions)
    max_steps = -(-n_regions // per_step)
    steps = max_steps if steps is None else check_int("steps", steps, 1, max_steps)
    key_order, key_noise = split_key(key, 2)

    logits0 = logits_of(model, x)
    t = check_target(target, logits0)
    base = baseline_input(baseline, x, key_noise)

    scores = jax.vmap(lambda v: jax.ops.segment_sum(v, ids.ravel(), n_regions))(flatten_examples(r))
    rank = _perturbation_rank(scores, order, key_order)
    pixel_rank = jnp.take(rank, ids, axis=1)[..., None]  # (N, *spatial, 1)
    counts = jnp.minimum(jnp.arange(1, steps + 1) * per_step, n_regions)

    def step(carry, n):
        xk = jnp.where(pixel_rank < n, base, x)
        return carry, select_target(logits_of(model, xk), t)

    _, curve = lax.scan(step, None, counts)
    return jnp.concatenate([select_target(logits0, t)[:, None], curve.T], axis=1)


def _curve(name: str, curve: ArrayLike) -> Array:
    c = jnp.asarray(curve)
    if c.ndim != 2 or c.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, steps + 1), got shape {c.shape}")
    return as_float(c)


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
    logits0 = logits_of(model, x)
    t = check_target(target, logits0)
    f0 = select_target(logits0, t)
    has_channels = relevance.shape == x.shape

    def draw(subset):
        replace = subset if has_channels else subset[..., None]
        drop = f0 - select_target(logits_of(model, jnp.where(replace, baseline, x)), t)
        return jnp.sum(jnp.where(flatten_examples(subset), flatten_examples(relevance), 0), axis=1), drop

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
    x = check_batched("x", x)
    r, _ = input_relevance(relevance, x)
    d = math.prod(r.shape[1:])
    size = check_int("subset_size", subset_size, 1, d)
    draws = check_int("n_draws", n_draws, 2)
    key_subsets, key_noise = jax.random.split(need_key(key, "faithfulness_correlation"))
    base = baseline_input(baseline, x, key_noise)
    u = jax.random.uniform(key_subsets, (draws, r.shape[0], d))
    subsets = (jnp.argsort(jnp.argsort(u, axis=2), axis=2) < size).reshape((draws,) + r.shape)
    return _faithfulness_from_subsets(model, x, r, target, subsets, base)


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
    v = concrete(s)
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
    x = check_batched("x", x, min_ndim=3)
    r, has_channels = input_relevance(relevance, x)
    r = r if has_channels else jnp.broadcast_to(r[..., None], x.shape)
    ids, count = _segment_ids(segments, x, region)
    logits0 = logits_of(model, x)
    t = check_target(target, logits0)
    f0 = select_target(logits0, t)
    base = baseline_input(baseline, x, key)

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
        return carry, select_target(logits_of(model, jnp.where(pixel_rank < k, base, x)), t) / f0

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
    x = check_batched("x", x, min_ndim=4)
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
    x = check_batched("x", x, min_ndim=4)
    r, has_channels = input_relevance(relevance, x)
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
    t = check_target(target, logits_of(model, x))
    rank = jnp.argsort(jnp.argsort(-flatten_examples(r), axis=1, stable=True), axis=1).reshape(r.shape)

    def at(item):
        k, z = item
        noisy = None if z is None else noise * z
        xi = noisy_linear_imputation(x, rank < k, noisy)
        return (jnp.argmax(logits_of(model, xi), axis=1) == t).astype(x.dtype)

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
    x = check_batched("x", x, min_ndim=1)
    r = as_float(jnp.asarray(relevance))
    if r.shape != x.shape:
        raise ValueError(f"relevance must have the input's shape {x.shape}, got {r.shape}")
    if perturbations is None:
        n = check_int("n_samples", n_samples, 1)
        check_positive("sigma", sigma)
        perturbations = sigma * jax.random.normal(need_key(key, "infidelity"), (n,) + x.shape, x.dtype)
    p = jnp.asarray(perturbations, x.dtype)
    if p.shape[1:] != x.shape or p.ndim != x.ndim + 1:
        raise ValueError(f"perturbations must have shape (n, *x.shape) = (n, {', '.join(map(str, x.shape))}), got {p.shape}")
    logits0 = logits_of(model, x)
    t = check_target(target, logits0)
    f0 = select_target(logits0, t)
    drops = jax.vmap(lambda i: f0 - select_target(logits_of(model, x - i), t))(p)  # (n, N)
    dots = jax.vmap(lambda i: jnp.sum(flatten_examples(i * r), axis=1))(p)
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
    x = check_batched("x", x, min_ndim=1)
    r = as_float(jnp.asarray(relevance))
    if r.shape != x.shape:
        raise ValueError(f"relevance must have the input's shape {x.shape}, got {r.shape}")
    d = math.prod(x.shape[1:])
    per = check_int("features_per_step", features_per_step, 1, d)
    if draws is None:
        n = check_int("n_samples", n_samples, 1)
        draws = jax.random.uniform(need_key(key, "monotonicity_correlation"), (n,) + x.shape, x.dtype, low, high)
    u = jnp.asarray(draws, x.dtype)
    if u.shape[1:] != x.shape or u.ndim != x.ndim + 1:
        raise ValueError(f"draws must have shape (n, *x.shape), got {u.shape}")
    sim = similarity_fn(similarity)
    logits0 = logits_of(model, x)
    t = check_target(target, logits0)
    f0 = select_target(logits0, t)
    inv = jnp.where(jnp.abs(f0) >= eps, 1 / jnp.where(f0 == 0, 1, f0) ** 2, 1.0)
    flat_r = flatten_examples(r)
    group = (jnp.argsort(jnp.argsort(flat_r, axis=1, stable=True), axis=1) // per).reshape(x.shape)
    steps = -(-d // per)

    def at(k):
        sel = group == k
        var = jnp.mean(jax.vmap(lambda v: (select_target(logits_of(model, jnp.where(sel, v, x)), t) - f0) ** 2)(u), axis=0)
        return jnp.sum(jnp.where(flatten_examples(sel), flat_r, 0), axis=1), var * inv

    atts, vars_ = lax.map(at, jnp.arange(steps))  # (steps, N)
    return sim(atts.T, vars_.T)
