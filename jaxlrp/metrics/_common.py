"""What the metrics share: the types of their arguments, the checks of their inputs,
the model's logits and targets, replacement values, and the correlations
(:func:`pearson`, :func:`spearman`, :func:`rankdata`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._core.checks import concrete

Array = jax.Array
Model = Callable[[Array], Array]
Explainer = Callable[[Array], Array]
Baseline = Union[float, str, ArrayLike]
_BASELINES = ("mean", "noise")
_SIMILARITIES = ("spearman", "pearson")


# ------------------------------------------------------------------ validation


def as_float(a: Array) -> Array:
    """``a`` as an inexact array (integer and boolean inputs become the default float)."""
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return a
    return a.astype(jax.dtypes.canonicalize_dtype(np.float64))


def check_batched(name: str, a: ArrayLike, min_ndim: int = 2) -> Array:
    """``a`` as a float array of shape ``(N, ...)`` with at least ``min_ndim`` axes."""
    a = jnp.asarray(a)
    if a.ndim < min_ndim:
        raise ValueError(
            f"{name} must have a leading example axis and at least {min_ndim} axes "
            f"(N, ...); got shape {a.shape}. For a single example use {name}[None]."
        )
    if math.prod(a.shape[1:]) == 0:
        raise ValueError(f"{name} has no entries per example: shape {a.shape}")
    return as_float(a)


def per_example(name: str, a: ArrayLike, n: int) -> Array:
    a = jnp.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), one value per example; got shape {a.shape}")
    return as_float(a)


def check_mask(mask: ArrayLike, relevance: Array) -> Array:
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


def flatten_examples(a: Array) -> Array:
    """``(N, ...)`` -> ``(N, d)``."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def check_choice(name: str, value: Any, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)



def check_positive(name: str, value: Any) -> None:
    v = concrete(value)
    if v is not None and (v.shape != () or not np.isfinite(v) or v <= 0):
        raise ValueError(f"{name} must be a positive finite scalar, got {value!r}")


def need_key(key: Any, what: str) -> Array:
    if key is None:
        raise ValueError(f"{what} needs a PRNG key: pass key=jax.random.key(seed)")
    return key


def logits_of(model: Model, x: Array) -> Array:
    out = jnp.asarray(model(x))
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"model must map a batch of shape {x.shape} to logits of shape (N, C) = "
            f"({x.shape[0]}, C); got shape {out.shape}"
        )
    return out


def check_target(target: Any, logits: Array) -> Array:
    """Per-example class indices, shape ``(N,)``; ``None`` means the argmax of ``logits``."""
    n, classes = logits.shape
    if target is None:
        return jnp.argmax(logits, axis=1)
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"target must be an int or an int array of shape (N,), got dtype {t.dtype}")
    if t.shape not in ((), (n,)):
        raise ValueError(f"target must have shape () or (N,) = ({n},), got shape {t.shape}")
    value = concrete(target)
    if value is not None and (np.any(value < 0) or np.any(value >= classes)):
        raise ValueError(f"target {value.tolist()} out of range for {classes} classes")
    return jnp.broadcast_to(t, (n,))


def select_target(logits: Array, target: Array) -> Array:
    return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


def input_relevance(relevance: ArrayLike, x: Array) -> tuple[Array, bool]:
    """Relevance of shape ``x.shape`` or ``x.shape[:-1]``; the flag says it has the channel axis."""
    r = as_float(jnp.asarray(relevance))
    if r.shape == x.shape:
        return r, True
    if r.shape == x.shape[:-1] and r.ndim >= 2:
        return r, False
    raise ValueError(
        f"relevance must have the input's shape {x.shape} or, summed over channels, "
        f"{x.shape[:-1]}; got shape {r.shape}"
    )


def baseline_input(baseline: Baseline, x: Array, key: Any) -> Array:
    """The replacement values, an array of ``x.shape``."""
    if isinstance(baseline, str):
        check_choice("baseline", baseline, _BASELINES)
        if baseline == "mean":
            # per channel over the spatial axes; for (N, D) inputs, over the features
            axes = tuple(range(1, x.ndim - 1)) if x.ndim > 2 else (1,)
            return jnp.broadcast_to(jnp.mean(x, axis=axes, keepdims=True), x.shape)
        key = need_key(key, "baseline='noise'")
        lo = jnp.min(flatten_examples(x), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        hi = jnp.max(flatten_examples(x), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        return jax.random.uniform(key, x.shape, x.dtype, minval=lo, maxval=hi)
    b = jnp.asarray(baseline, dtype=x.dtype)
    try:
        return jnp.broadcast_to(b, x.shape)
    except ValueError:
        raise ValueError(f"baseline of shape {b.shape} does not broadcast to the input's shape {x.shape}") from None


def split_key(key: Any, n: int) -> tuple:
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
    a = flatten_examples(check_batched("a", a))
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
    a, b = check_batched("a", a), check_batched("b", b)
    if a.shape != b.shape:
        raise ValueError(f"the two batches must have the same shape, got {a.shape} and {b.shape}")
    return flatten_examples(a), flatten_examples(b)


def similarity_fn(similarity: Union[str, Callable]) -> Callable:
    if callable(similarity):
        return similarity
    return {"spearman": spearman, "pearson": pearson}[check_choice("similarity", similarity, _SIMILARITIES)]
