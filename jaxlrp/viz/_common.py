"""Private helpers shared by the files of :mod:`jaxlrp.viz`: the finite-array and
percentile checks and the reduction of a channel axis."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

_REDUCTIONS: tuple[str, ...] = ("sum", "abs_sum", "max_abs")


def as_float_array(values: ArrayLike, what: str) -> np.ndarray:
    """Convert to a float64 numpy array and reject empty or non-finite input."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(
            f"{what} contains non-finite values ({n_nan} NaN, {n_inf} inf); "
            "the relevance computation probably diverged or divided by zero "
            "(check the stabiliser epsilon)"
        )
    return arr


def check_percentile(percentile: float | None) -> None:
    if percentile is not None and not 0.0 < percentile <= 100.0:
        raise ValueError(
            f"percentile must be in (0, 100], got {percentile!r}"
        )


def reduce_channels(rel: np.ndarray, channel_axis: int, reduce: str) -> np.ndarray:
    if reduce not in _REDUCTIONS:
        raise ValueError(
            f"unknown reduction {reduce!r}; valid reductions are: "
            f"{', '.join(_REDUCTIONS)}"
        )
    if not -rel.ndim <= channel_axis < rel.ndim:
        raise ValueError(
            f"channel_axis {channel_axis} is out of range for an array of "
            f"shape {rel.shape}"
        )
    if reduce == "sum":
        return rel.sum(axis=channel_axis)
    if reduce == "abs_sum":
        return np.abs(rel).sum(axis=channel_axis)
    return np.abs(rel).max(axis=channel_axis)
