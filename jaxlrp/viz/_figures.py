"""Matplotlib figures of :mod:`jaxlrp.viz`: inputs above one row of heatmaps per method,
each row with its colour scale and colour bar (:func:`relevance_figure`), and
:func:`save_figure`. Matplotlib (the ``viz`` extra) is imported where it is used."""

from __future__ import annotations

import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ._colormaps import Cmap, colormap
from ._common import as_float_array, check_percentile, reduce_channels

if TYPE_CHECKING:  # matplotlib is the optional `viz` extra, imported where it is used
    from matplotlib.figure import Figure


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
        raise ImportError("jaxlrp.viz.relevance_figure needs matplotlib: pip install 'jaxlrp[viz]'") from e
    return Figure


def _figure_cmap(cmap: Cmap) -> Any:
    """A matplotlib colour map: a name matplotlib knows or a ``Colormap`` as it is,
    any other form of :func:`colormap` as a ``ListedColormap`` of its table."""
    import matplotlib
    from matplotlib.colors import Colormap, ListedColormap

    if isinstance(cmap, Colormap) or (isinstance(cmap, str) and cmap in matplotlib.colormaps):
        return cmap
    return ListedColormap(colormap(cmap) / 255.0)


def _per_pixel(relevance: ArrayLike, reduce: str, what: str) -> np.ndarray:
    """A batch ``(N, H, W)`` or ``(N, H, W, C)`` of relevance as ``(N, H, W)``."""
    rel = as_float_array(relevance, what)
    if rel.ndim == 4:
        rel = reduce_channels(rel, -1, reduce)
    if rel.ndim != 3:
        raise ValueError(f"{what} must have shape (N, H, W) or (N, H, W, C), got {rel.shape}")
    return rel


def _display_inputs(inputs: ArrayLike) -> np.ndarray:
    """Inputs ``(N, H, W[, C])`` as images in ``[0, 1]``: gray for 1 channel, RGB for 3."""
    x = as_float_array(inputs, "inputs")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise ValueError(f"inputs must have shape (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {x.shape}")
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def _figure_inputs(
    inputs: ArrayLike,
    relevance: Mapping[str, ArrayLike],
    column_titles: Sequence[str] | None,
    percentile: float,
    reduce: str,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Check the arguments of :func:`relevance_figure`: the inputs in ``[0, 1]`` and
    the rows of relevance ``(N, H, W)`` by label."""
    check_percentile(percentile)
    shown = _display_inputs(inputs)
    n = shown.shape[0]
    rows = {str(k): _per_pixel(v, reduce, f"relevance[{k!r}]") for k, v in relevance.items()}
    if not rows:
        raise ValueError("relevance_figure needs at least one row of relevance")
    for label, rel in rows.items():
        if rel.shape != shown.shape[:3]:
            raise ValueError(f"relevance[{label!r}] has shape {rel.shape[:3]} (after reducing channels) "
                             f"but the inputs have {shown.shape[:3]}")
    if column_titles is not None and len(column_titles) != n:
        raise ValueError(f"got {len(column_titles)} column titles for {n} images")
    return shown, rows


def _draw_inputs(axes: Any, shown: np.ndarray, column_titles: Sequence[str] | None, fontsize: float) -> None:
    """The top row of :func:`relevance_figure`: the inputs, their titles, no colour bar."""
    n = shown.shape[0]
    for j in range(n):
        axes[j].imshow(shown[j], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1)
        if column_titles is not None:
            axes[j].set_title(str(column_titles[j]), fontsize=fontsize)
    axes[0].set_ylabel("input", fontsize=fontsize, rotation=0, ha="right", va="center")
    axes[n].axis("off")


def _draw_row(fig: Any, axes: Any, label: str, rel: np.ndarray, cmap: Cmap, percentile: float,
              colorbar_label: str | None, fontsize: float) -> None:
    """One row of :func:`relevance_figure`: heatmaps on the row's symmetric scale
    (the ``percentile`` of ``|R|``), the label on the left, the colour bar on the right."""
    n = rel.shape[0]
    bound = float(np.percentile(np.abs(rel), percentile)) or float(np.abs(rel).max()) or 1.0
    for j in range(n):
        image = axes[j].imshow(rel[j], cmap=_figure_cmap(cmap), vmin=-bound, vmax=bound)
    axes[0].set_ylabel(textwrap.fill(label, 18, break_long_words=False), fontsize=fontsize, rotation=0, ha="right", va="center")
    bar = fig.colorbar(image, cax=axes[n])
    bar.ax.tick_params(labelsize=fontsize * 0.75)
    if colorbar_label is not None:
        bar.set_label(colorbar_label, fontsize=fontsize * 0.8)
    bar.ax.yaxis.get_offset_text().set_fontsize(fontsize * 0.75)


def relevance_figure(
    inputs: ArrayLike,
    relevance: Mapping[str, ArrayLike],
    *,
    column_titles: Sequence[str] | None = None,
    header: str | None = None,
    cmap: Cmap = "bwr",
    colorbar_label: str | None = "relevance",
    percentile: float = 99.5,
    reduce: str = "sum",
    tile_inches: float = 1.4,
    fontsize: float = 10.0,
) -> Figure:
    r"""A publication figure: the inputs on top, one row of heatmaps per method.

    Each row is labelled once, on its left, with the method's name, and shares one
    colour scale with a colour bar on its right: the scale of row ``m`` is
    symmetric, :math:`[-v_m, v_m]` with :math:`v_m` the ``percentile`` of
    :math:`|R|` over all images of the row (values beyond are clipped), so the
    colours of one row compare across images and white is zero relevance.

    Parameters
    ----------
    inputs : array_like
        ``(N, H, W)``, ``(N, H, W, 1)`` (drawn in gray) or ``(N, H, W, 3)`` (RGB),
        min-max scaled for display.
    relevance : mapping of str to array_like
        Row label -> relevance of shape ``(N, H, W)`` or ``(N, H, W, C)``; channels
        are combined with ``reduce`` (see :func:`heatmap`).
    column_titles : sequence of str, optional
        One title per image, above the inputs (e.g. ``"cat / dog"``).
    header : str, optional
        A line above everything that explains the column titles (e.g.
        ``"column titles: true / predicted class"``).
    cmap : colour map, default "bwr"
        A matplotlib colour-map name or ``Colormap``, or any other form
        :func:`colormap` accepts (a Zennit specification, a table); a diverging
        one keeps zero in the middle.
    colorbar_label : str or None, default "relevance"
        The label beside each colour bar; ``None`` for none.
    percentile : float, default 99.5
        In ``(0, 100]``; 100 scales each row to its largest absolute value.
    reduce : {"sum", "abs_sum", "max_abs"}, default "sum"
    tile_inches : float, default 1.4
        Size of one image in inches.
    fontsize : float, default 10
        Font size of the labels in points.

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot (no global state); write it with
        :func:`save_figure` or ``fig.savefig``.

    Raises
    ------
    ValueError
        If the shapes or the number of titles do not match, ``relevance`` is empty,
        or a value is non-finite.
    ImportError
        If matplotlib is missing (install ``jaxlrp[viz]``).

    Examples
    --------
    >>> import numpy as np
    >>> from jaxlrp import viz
    >>> x = np.random.default_rng(0).normal(size=(3, 8, 8))
    >>> fig = viz.relevance_figure(x, {"gradient x input": x * x}, column_titles=["a", "b", "c"])
    >>> len(fig.axes)  # 2 rows of 3 images, one colour bar per row
    8
    """
    shown, rows = _figure_inputs(inputs, relevance, column_titles, percentile, reduce)
    n = shown.shape[0]
    Figure = _matplotlib_figure()
    top = 0.35 * (header is not None) + 0.3 * (column_titles is not None)
    fig = Figure(figsize=(tile_inches * (n + 0.9) + 1.2, tile_inches * (len(rows) + 1) + top), layout="constrained")
    axes = fig.subplots(len(rows) + 1, n + 1, squeeze=False, gridspec_kw={"width_ratios": [1.0] * n + [0.07]})
    _draw_inputs(axes[0], shown, column_titles, fontsize)
    for i, (label, rel) in enumerate(rows.items(), start=1):
        _draw_row(fig, axes[i], label, rel, cmap, percentile, colorbar_label, fontsize)
    for ax in axes[:, :n].ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if header is not None:
        fig.suptitle(header, fontsize=fontsize * 1.1)
    return fig


def save_figure(path: str | pathlib.Path, figure: Figure, dpi: int = 150) -> pathlib.Path:
    """Write a matplotlib figure in the format its suffix names, creating parent
    directories; returns the path.

    ``.pdf``, ``.svg`` and ``.eps`` are vector formats for papers (the heatmaps
    inside stay images at ``dpi``); ``.png`` and ``.jpg`` raster ones.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=dpi)
    return target
