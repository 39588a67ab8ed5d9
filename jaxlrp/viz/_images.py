"""Visualisation helpers for relevance (attribution) maps.

Turns relevance arrays produced by LRP into RGB images: colour maps, value
normalisation, heatmaps, overlays on the input image, image grids and PNG
export. Only numpy is required to import this module; Pillow is imported
lazily by the functions that render text or write files, and matplotlib by
:func:`relevance_figure`, the figure with row labels and colour bars (both come
with ``pip install 'jaxlrp[viz]'``).

All functions accept numpy arrays, jax arrays or anything else that
``numpy.asarray`` understands. Every image returned is a freshly allocated
``uint8`` array of shape ``(H, W, 3)``.
"""

from __future__ import annotations

import html
import math
import pathlib
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # matplotlib is the optional `viz` extra, imported where it is used
    from matplotlib.figure import Figure

__all__ = [
    "COLORMAPS",
    "colormap",
    "normalize",
    "heatmap",
    "overlay",
    "grid",
    "save_png",
    "save_image",
    "token_heatmap",
    "token_html",
    "sequence_plot",
    "relevance_figure",
    "save_figure",
]

# Colour maps are defined by anchors ``(position, (r, g, b))`` with positions
# increasing from 0 to 1; the 256 entries of a map are linearly interpolated
# between neighbouring anchors. Tuples keep these definitions immutable.
_Anchor = tuple[float, tuple[int, int, int]]

_ANCHORS: Mapping[str, tuple[_Anchor, ...]] = MappingProxyType({
    # diverging: negative blue, zero white, positive red
    "bwr": (
        (0.0, (0, 0, 255)),
        (0.5, (255, 255, 255)),
        (1.0, (255, 0, 0)),
    ),
    # like bwr, but the extremes darken towards navy and maroon
    "seismic": (
        (0.0, (0, 0, 80)),
        (0.25, (0, 0, 255)),
        (0.5, (255, 255, 255)),
        (0.75, (255, 0, 0)),
        (1.0, (130, 0, 0)),
    ),
    # negative cold (cyan -> blue), zero black, positive hot (red -> yellow)
    "coldnhot": (
        (0.0, (0, 255, 255)),
        (0.25, (0, 0, 255)),
        (0.5, (0, 0, 0)),
        (0.75, (255, 0, 0)),
        (1.0, (255, 255, 0)),
    ),
    # sequential: black to white
    "gray": (
        (0.0, (0, 0, 0)),
        (1.0, (255, 255, 255)),
    ),
    # sequential, for non-negative maps: black -> red -> yellow -> white
    "hot": (
        (0.0, (0, 0, 0)),
        (1.0 / 3.0, (255, 0, 0)),
        (2.0 / 3.0, (255, 255, 0)),
        (1.0, (255, 255, 255)),
    ),
})

#: Names accepted by :func:`colormap`.
COLORMAPS: tuple[str, ...] = tuple(_ANCHORS)

_REDUCTIONS: tuple[str, ...] = ("sum", "abs_sum", "max_abs")

_LUT_SIZE = 256

#: A colour map: a name, a Zennit specification, a matplotlib ``Colormap`` or a table.
Cmap = Union[str, np.ndarray, Any]


def colormap(name: Cmap) -> np.ndarray:
    """Return a colour lookup table.

    Parameters
    ----------
    name : str, matplotlib colormap or numpy.ndarray
        One of

        * a built-in name, ``"bwr"``, ``"seismic"``, ``"coldnhot"``, ``"gray"``
          or ``"hot"`` (see :data:`COLORMAPS`): the first three are diverging
          maps meant for signed relevance (zero sits in the middle), the last
          two sequential maps for non-negative values;
        * a colour-map specification in Zennit's notation: comma-separated
          RGB colours in hex (``"f00"`` or ``"ff0000"``), each optionally
          preceded by its position in the table, a hex index ``00``-``ff``
          and a colon (``"00f,80:fff,f00"`` is Zennit's ``bwr``). Colours
          without a position are spaced evenly between their neighbours; the
          first defaults to ``00``, the last to ``ff``;
        * any matplotlib colour-map name (``"RdBu_r"``, ``"coolwarm"``,
          ``"viridis"``) or a ``matplotlib.colors.Colormap`` (needs
          matplotlib, the ``viz`` extra);
        * a ``uint8`` table of shape ``(N, 3)`` (returned as a copy).

    Returns
    -------
    numpy.ndarray
        A new ``uint8`` array of shape ``(256, 3)`` (``(N, 3)`` for a table);
        row 0 is the colour of the lowest value, the last row the colour of the
        highest.

    Raises
    ------
    ValueError
        If ``name`` is none of the above.

    Examples
    --------
    >>> from jaxlrp import viz
    >>> viz.colormap("bwr")[[0, 255]].tolist()
    [[0, 0, 255], [255, 0, 0]]
    >>> viz.colormap("00f,80:fff,f00")[[0, 128, 255]].tolist()  # Zennit's notation
    [[0, 0, 255], [255, 255, 255], [255, 0, 0]]
    """
    if isinstance(name, str):
        if name in _ANCHORS:
            return _anchor_table(_ANCHORS[name])
        if _SPEC.match(name):
            return _spec_table(name)
    elif isinstance(name, np.ndarray):
        return _user_table(name)
    table = _matplotlib_table(name)
    if table is None:
        raise ValueError(
            f"unknown colour map {name!r}; valid names are the built-in {', '.join(COLORMAPS)}, "
            "a Zennit colour-map specification such as '00f,80:fff,f00', a matplotlib "
            "colour-map name or Colormap, or a uint8 table of shape (N, 3)"
        )
    return table


def _anchor_table(anchors: tuple[_Anchor, ...]) -> np.ndarray:
    positions = np.array([pos for pos, _ in anchors], dtype=np.float64)
    colours = np.array([rgb for _, rgb in anchors], dtype=np.float64)
    x = np.linspace(0.0, 1.0, _LUT_SIZE)
    table = np.stack([np.interp(x, positions, colours[:, c]) for c in range(3)], axis=-1)
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


_HEX_COLOUR = r"\s*(?:[0-9a-fA-F]{1,2}\s*:\s*)?(?:[0-9a-fA-F]{6}|[0-9a-fA-F]{3})\s*"
_SPEC = re.compile(rf"^{_HEX_COLOUR}(?:,{_HEX_COLOUR})+$")


def _spec_nodes(spec: str) -> list[tuple[int | None, tuple[int, ...]]]:
    """``(position or None, rgb)`` per entry of a Zennit colour-map specification."""
    nodes: list[tuple[int | None, tuple[int, ...]]] = []
    for entry in spec.split(","):
        index, _, colour = (part.strip() for part in entry.rpartition(":"))
        if len(colour) == 3:
            colour = "".join(c * 2 for c in colour)
        rgb = tuple(int(colour[k:k + 2], 16) for k in (0, 2, 4))
        nodes.append((int(index * (3 - len(index)), 16) if index else None, rgb))
    return nodes


def _spec_table(spec: str) -> np.ndarray:
    """The 256-entry table of a Zennit colour-map specification: linear between
    the positioned colours, unpositioned ones spaced evenly between their
    neighbours (positions rounded down), constant beyond the ends; values are
    truncated to integers as Zennit's palettes are."""
    nodes = _spec_nodes(spec)
    first, last = nodes[0], nodes[-1]
    nodes[-1] = (_LUT_SIZE - 1 if last[0] is None else last[0], last[1])
    placed: list[tuple[int, tuple[int, ...]]] = [(0 if first[0] is None else first[0], first[1])]
    pending: list = []
    for index, rgb in nodes[1:]:
        if index is None:
            pending.append(rgb)
            continue
        start = placed[-1][0]
        if index < start:
            raise ValueError(f"colour-map positions must ascend from left to right, got {spec!r}")
        for a, colour in zip(np.linspace(0.0, 1.0, len(pending) + 2)[1:-1], pending):
            placed.append((int(start * (1.0 - a) + index * a), colour))
        placed.append((index, rgb))
        pending = []
    positions = np.array([p for p, _ in placed], dtype=np.float64)
    colours = np.array([c for _, c in placed], dtype=np.float64)
    x = np.arange(_LUT_SIZE, dtype=np.float64)
    table = np.stack([np.interp(x, positions, colours[:, c]) for c in range(3)], axis=-1)
    return np.clip(table.round(12), 0, 255).astype(np.uint8)


def _user_table(table: np.ndarray) -> np.ndarray:
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 2:
        raise ValueError(
            "cmap must be a colour-map name or an array of shape (N, 3) with "
            f"N >= 2, got shape {table.shape}"
        )
    if table.dtype != np.uint8:
        raise ValueError(f"a cmap array must have dtype uint8, got {table.dtype}")
    return table.copy()


def _matplotlib_table(cmap: Any) -> np.ndarray | None:
    """256 colours of a matplotlib colour map (a name or a ``Colormap``), or ``None``
    if it is neither (or matplotlib is not installed)."""
    try:
        import matplotlib
        from matplotlib.colors import Colormap
    except ModuleNotFoundError:  # pragma: no cover - depends on the install
        return None
    if isinstance(cmap, str):
        if cmap not in matplotlib.colormaps:
            return None
        cmap = matplotlib.colormaps[cmap]
    if not isinstance(cmap, Colormap):
        return None
    rgba = np.asarray(cmap(np.linspace(0.0, 1.0, _LUT_SIZE)))
    return np.clip(np.rint(rgba[:, :3] * 255.0), 0, 255).astype(np.uint8)


def _as_float_array(values: ArrayLike, what: str) -> np.ndarray:
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


def _check_percentile(percentile: float | None) -> None:
    if percentile is not None and not 0.0 < percentile <= 100.0:
        raise ValueError(
            f"percentile must be in (0, 100], got {percentile!r}"
        )


def normalize(
    relevance: ArrayLike,
    symmetric: bool = True,
    percentile: float | None = None,
) -> np.ndarray:
    """Scale relevance values into ``[0, 1]``.

    Parameters
    ----------
    relevance : array_like
        Relevance values of any shape; must be finite and non-empty.
    symmetric : bool, default True
        If true, ``[-m, m]`` is mapped linearly onto ``[0, 1]`` so that zero
        relevance lands exactly on 0.5, where ``m`` is the largest absolute
        value. Use this with the diverging colour maps. If false, the values
        are min-max scaled (the minimum goes to 0, the maximum to 1).
    percentile : float, optional
        Value in ``(0, 100]``. If given, the bound is taken as this percentile
        instead of the extreme value and values beyond it are clipped, which
        keeps a few outliers from washing out the rest of the map. In the
        symmetric case ``m`` is the percentile of ``|R|``; should that be
        zero while some values are not, ``max |R|`` is used instead. In the
        non-symmetric case the range is from the ``100 - percentile`` to the
        ``percentile`` percentile of ``R``.

    Returns
    -------
    numpy.ndarray
        A new float64 array with the shape of ``relevance`` and values in
        ``[0, 1]``. A constant input (e.g. all zeros) gives 0.5 everywhere in
        the symmetric case and 0 everywhere otherwise, never NaN.

    Raises
    ------
    ValueError
        If the input is empty, contains NaN or inf, or ``percentile`` is out
        of range.
    """
    _check_percentile(percentile)
    rel = _as_float_array(relevance, "relevance")

    if symmetric:
        magnitude = np.abs(rel)
        bound = float(magnitude.max())
        if percentile is not None:
            clipped_bound = float(np.percentile(magnitude, percentile))
            if clipped_bound > 0.0:
                bound = clipped_bound
        if not bound > 0.0:
            return np.full(rel.shape, 0.5)
        return np.clip(rel / bound, -1.0, 1.0) * 0.5 + 0.5

    if percentile is None:
        low, high = float(rel.min()), float(rel.max())
    else:
        low = float(np.percentile(rel, 100.0 - percentile))
        high = float(np.percentile(rel, percentile))
        if not high > low:
            low, high = float(rel.min()), float(rel.max())
    if not high > low:
        return np.zeros(rel.shape)
    return np.clip((rel - low) / (high - low), 0.0, 1.0)


def _reduce_channels(rel: np.ndarray, channel_axis: int, reduce: str) -> np.ndarray:
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


def heatmap(
    relevance: ArrayLike,
    cmap: Cmap = "bwr",
    symmetric: bool = True,
    percentile: float | None = None,
    channel_axis: int = -1,
    reduce: str = "sum",
) -> np.ndarray:
    """Render a relevance map as an RGB image.

    Parameters
    ----------
    relevance : array_like
        Relevance of shape ``(H, W)``, or with a channel axis, e.g.
        ``(H, W, C)`` or ``(C, H, W)`` (see ``channel_axis``).
    cmap : str or numpy.ndarray, default "bwr"
        Colour-map name (see :func:`colormap`) or a ``uint8`` lookup table of
        shape ``(N, 3)``.
    symmetric : bool, default True
        Passed to :func:`normalize`; keep it true for signed relevance with a
        diverging colour map, set it false for non-negative maps with
        ``"hot"`` or ``"gray"``.
    percentile : float, optional
        Passed to :func:`normalize`.
    channel_axis : int, default -1
        Axis holding the channels of a 3-D ``relevance``; ignored for 2-D
        input.
    reduce : {"sum", "abs_sum", "max_abs"}, default "sum"
        How channels are combined into one value per pixel: the signed sum,
        the sum of absolute values, or the largest absolute value. The last
        two give non-negative maps. Ignored for 2-D input.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``.

    Raises
    ------
    ValueError
        If ``relevance`` is not 2-D or 3-D (1-D input hints at
        reshape a sequence to ``(1, L)`` or ``(1, L, C)``), contains NaN or inf, or an argument is invalid.
    """
    rel = np.asarray(relevance)
    if rel.ndim == 1:
        raise ValueError(
            f"heatmap needs a 2-D (H, W) or 3-D image-shaped relevance, got a "
            f"1-D array of length {rel.shape[0]}; for token or sequence "
            "relevance reshape it to (1, L) or (1, L, C) for a one-row heatmap"
        )
    if rel.ndim not in (2, 3):
        raise ValueError(
            "heatmap needs relevance of shape (H, W) or with one channel "
            f"axis, got shape {rel.shape}; drop the batch axis first"
        )
    table = colormap(cmap)
    rel = _as_float_array(rel, "relevance")
    if rel.ndim == 3:
        rel = _reduce_channels(rel, channel_axis, reduce)
    unit = normalize(rel, symmetric=symmetric, percentile=percentile)
    index = np.floor(unit * (table.shape[0] - 1) + 0.5).astype(np.intp)
    return table[index]


def _image_to_unit_gray(image: ArrayLike) -> np.ndarray:
    """Convert an image to grayscale floats in ``[0, 1]`` of shape ``(H, W)``."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise ValueError(
            f"image must have shape (H, W) or (H, W, 3), got {img.shape}"
        )
    if img.dtype == np.uint8:
        unit = img.astype(np.float64) / 255.0
    else:
        unit = _as_float_array(img, "image")
        low, high = float(unit.min()), float(unit.max())
        if not high > low:
            unit = np.zeros(unit.shape)
        else:
            unit = (unit - low) / (high - low)
    if unit.ndim == 2:
        return unit
    # ITU-R BT.601 luma weights
    return np.clip(unit @ np.array([0.299, 0.587, 0.114]), 0.0, 1.0)


def overlay(
    image: ArrayLike,
    relevance: ArrayLike,
    alpha: float = 0.5,
    cmap: Cmap = "bwr",
    symmetric: bool = True,
    percentile: float | None = None,
    channel_axis: int = -1,
    reduce: str = "sum",
    weight: str = "magnitude",
) -> np.ndarray:
    r"""Blend a relevance heatmap over a grayscale version of the input image.

    With ``weight="magnitude"`` (the default) each pixel's heatmap opacity is
    ``alpha`` times its relevance magnitude on the heatmap's scale,
    :math:`\alpha\,|2u - 1|` for a normalised value :math:`u` (symmetric maps)
    or :math:`\alpha u` (non-symmetric ones): pixels of no relevance show the
    image as it is and the most relevant ones the full colour, so the map stays
    readable on light images, where a uniform blend of a white-centred colour
    map washes out. ``weight="uniform"`` blends every pixel with opacity ``alpha``.

    Parameters
    ----------
    image : array_like
        Input image of shape ``(H, W)`` or ``(H, W, 3)`` (channels last).
        ``uint8`` images are taken as ``[0, 255]``; any other dtype is
        min-max scaled to ``[0, 1]``, so normalised network inputs can be
        passed as they are.
    relevance : array_like
        Relevance for ``image``; see :func:`heatmap`. After channel reduction
        its shape must be ``(H, W)``.
    alpha : float, default 0.5
        Weight of the heatmap in ``[0, 1]``: 0 shows only the grayscale
        image, 1 only the heatmap.
    cmap, symmetric, percentile, channel_axis, reduce
        Passed to :func:`heatmap`.
    weight : {"magnitude", "uniform"}, default "magnitude"
        Opacity of the heatmap per pixel: proportional to the relevance
        magnitude, or ``alpha`` everywhere.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``.

    Raises
    ------
    ValueError
        If ``alpha`` is outside ``[0, 1]``, ``weight`` is unknown, the shapes do
        not match, or the inputs are invalid (see :func:`heatmap`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if weight not in ("magnitude", "uniform"):
        raise ValueError(f"weight must be 'magnitude' or 'uniform', got {weight!r}")
    gray = _image_to_unit_gray(image)
    heat = heatmap(
        relevance,
        cmap=cmap,
        symmetric=symmetric,
        percentile=percentile,
        channel_axis=channel_axis,
        reduce=reduce,
    )
    if heat.shape[:2] != gray.shape:
        raise ValueError(
            f"image is {gray.shape[0]}x{gray.shape[1]} but the relevance map is "
            f"{heat.shape[0]}x{heat.shape[1]}"
        )
    opacity = np.full(gray.shape, alpha)
    if weight == "magnitude":
        rel = np.asarray(relevance, dtype=np.float64)
        rel = _reduce_channels(rel, channel_axis, reduce) if rel.ndim == 3 else rel
        unit = normalize(rel, symmetric=symmetric, percentile=percentile)
        opacity = alpha * (np.abs(2.0 * unit - 1.0) if symmetric else unit)
    blended = (1.0 - opacity[..., None]) * gray[..., None] + opacity[..., None] * (heat / 255.0)
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def _as_rgb_uint8(image: ArrayLike, what: str) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(
            f"{what} must have dtype uint8, got {img.dtype}; convert relevance "
            "with heatmap() or overlay() first"
        )
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(
            f"{what} must have shape (H, W) or (H, W, 3), got {img.shape}"
        )
    return img


def _background_rgb(background: int | Sequence[int]) -> np.ndarray:
    colour = np.asarray(background)
    if colour.ndim == 0:
        colour = np.repeat(colour, 3)
    if colour.shape != (3,) or not np.all((colour >= 0) & (colour <= 255)):
        raise ValueError(
            "background must be an integer or an (r, g, b) triple in "
            f"[0, 255], got {background!r}"
        )
    return colour.astype(np.uint8)


def _fit_text(text: str, width: float, measure: Callable[[str], float]) -> str:
    """Shorten ``text`` with an ellipsis until ``measure(text) <= width``."""
    if measure(text) <= width:
        return text
    while text and measure(text + "...") > width:
        text = text[:-1]
    return text + "..." if text else ""


def _grid_inputs(
    images: Sequence[ArrayLike],
    titles: Sequence[str] | None,
    ncols: int | None,
    pad: int,
    scale: int,
    background: int | Sequence[int],
) -> tuple[list[np.ndarray], list[str] | None, int, int, np.ndarray]:
    """Check the arguments of :func:`grid`: the upscaled tiles, titles, columns, pad, colour."""
    tiles = [_as_rgb_uint8(img, f"images[{i}]") for i, img in enumerate(images)]
    if not tiles:
        raise ValueError("grid needs at least one image")
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != len(tiles):
            raise ValueError(
                f"got {len(titles)} titles for {len(tiles)} images; pass one "
                "title per image"
            )
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if int(pad) != pad or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    if ncols is not None and (int(ncols) != ncols or ncols < 1):
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    scale, pad = int(scale), int(pad)
    colour = _background_rgb(background)

    if scale > 1:
        tiles = [np.repeat(np.repeat(t, scale, axis=0), scale, axis=1) for t in tiles]
    count = len(tiles)
    cols = math.ceil(math.sqrt(count)) if ncols is None else min(int(ncols), count)
    return tiles, titles, cols, pad, colour


def _title_font(titles: list[str] | None) -> tuple[Any, int]:
    """Pillow's default font and the height of the title band; ``(None, 0)`` without titles."""
    if titles is None:
        return None, 0
    from PIL import ImageFont

    font = ImageFont.load_default()
    # height of a reference string with ascenders and descenders, so the
    # band does not depend on the particular titles
    return font, int(font.getbbox("Ag|")[3]) + 2


def _draw_titles(
    canvas: np.ndarray,
    origins: list[tuple[int, int]],
    titles: list[str],
    tile_w: int,
    colour: np.ndarray,
    font: Any,
) -> np.ndarray:
    """A copy of ``canvas`` with each title centred at the top of its cell, shortened to fit."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    luminance = float(colour @ np.array([0.299, 0.587, 0.114]))
    ink = (0, 0, 0) if luminance >= 128 else (255, 255, 255)

    def measure(text: str) -> float:
        return draw.textlength(text, font=font)

    for (top, left), title in zip(origins, titles):
        text = _fit_text(title, tile_w, measure)
        if text:
            x = left + max(0.0, (tile_w - measure(text)) / 2)
            draw.text((x, top), text, fill=ink, font=font)
    return np.asarray(picture, dtype=np.uint8).copy()


def grid(
    images: Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    pad: int = 2,
    background: int | Sequence[int] = 255,
    scale: int = 1,
    row_labels: Sequence[str] | None = None,
    font_size: int = 12,
) -> np.ndarray:
    """Tile images into one RGB image.

    Every cell of the grid is as large as the largest (scaled) image; smaller
    images are centred in their cell. Cells are separated from each other and
    from the border by ``pad`` pixels of background. Without titles the
    result has height ``nrows * H + (nrows + 1) * pad`` and width
    ``ncols * W + (ncols + 1) * pad`` where ``H, W`` is the cell size. For
    figures with one colour scale and colour bar per row, see
    :func:`relevance_figure`.

    Parameters
    ----------
    images : sequence of array_like
        Non-empty sequence of ``uint8`` images of shape ``(H, W)`` or
        ``(H, W, 3)``; sizes may differ.
    titles : sequence of str, optional
        One title per image, drawn above it with Pillow's default font
        (titles too wide for a cell are shortened with an ellipsis). Requires
        Pillow.
    ncols : int, optional
        Number of columns; defaults to ``ceil(sqrt(len(images)))``. Values
        larger than the number of images are reduced to it.
    pad : int, default 2
        Spacing in pixels (in output pixels, not scaled).
    background : int or (int, int, int), default 255
        Background grey level or RGB colour.
    scale : int, default 1
        Integer nearest-neighbour upscaling factor applied to every image,
        useful for small inputs such as 28x28 digits.
    row_labels : sequence of str, optional
        One label per row, written once in a band on the left (instead of
        repeating a method's name as the title of every tile). Requires Pillow.
    font_size : int, default 12
        Size in pixels of the row labels' font.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H', W', 3)``.

    Raises
    ------
    ValueError
        If ``images`` is empty, an image is not ``uint8`` RGB/grayscale, the
        number of titles differs from the number of images (or of row labels
        from the number of rows), or ``ncols``, ``pad`` or ``scale`` is invalid.
    """
    tiles, titles, cols, pad, colour = _grid_inputs(images, titles, ncols, pad, scale, background)
    rows = math.ceil(len(tiles) / cols)
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    font, title_h = _title_font(titles)

    cell_h = title_h + tile_h
    height = rows * cell_h + (rows + 1) * pad
    width = cols * tile_w + (cols + 1) * pad
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = colour

    origins = []
    for index, tile in enumerate(tiles):
        row, col = divmod(index, cols)
        top = pad + row * (cell_h + pad)
        left = pad + col * (tile_w + pad)
        origins.append((top, left))
        y = top + title_h + (tile_h - tile.shape[0]) // 2
        x = left + (tile_w - tile.shape[1]) // 2
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile

    if titles is not None and font is not None:
        canvas = _draw_titles(canvas, origins, titles, tile_w, colour, font)

    if row_labels is not None:
        if len(row_labels) != rows:
            raise ValueError(f"got {len(row_labels)} row labels for {rows} rows")
        canvas = _label_rows(canvas, [str(t) for t in row_labels], cell_h, pad, title_h, colour, font_size)
    return canvas


def _label_rows(canvas: np.ndarray, labels: list, cell_h: int, pad: int, title_h: int,
                colour: np.ndarray, font_size: int) -> np.ndarray:
    """Prepend a band with one right-aligned label per grid row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = int(max(probe.textlength(t, font=font) for t in labels)) + 2 * pad + 4
    picture = Image.new("RGB", (canvas.shape[1] + width, canvas.shape[0]), tuple(int(c) for c in colour))
    picture.paste(Image.fromarray(canvas), (width, 0))
    draw = ImageDraw.Draw(picture)
    ink = (0, 0, 0) if float(colour @ np.array([0.299, 0.587, 0.114])) >= 128 else (255, 255, 255)
    for row, text in enumerate(labels):
        middle = pad + row * (cell_h + pad) + title_h + (cell_h - title_h) / 2
        draw.text((width - pad - 2, middle), text, fill=ink, font=font, anchor="rm")
    return np.asarray(picture, dtype=np.uint8).copy()


def save_png(path: str | pathlib.Path, image: ArrayLike) -> pathlib.Path:
    """Write an image as PNG, creating missing parent directories.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination file, ending in ``.png`` (for another format use
        :func:`save_image`).
    image : array_like
        ``uint8`` array of shape ``(H, W, 3)`` (RGB) or ``(H, W)``
        (grayscale).

    Returns
    -------
    pathlib.Path
        The path written to.

    Raises
    ------
    ValueError
        If ``image`` is not ``uint8``, has the wrong shape, or ``path`` does
        not end in ``.png``.
    """
    target = pathlib.Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"save_png writes PNG files, but {str(target)!r} does not end in .png; "
                         "use viz.save_image to write the format its suffix names (.jpg, .tif, .webp, ...)")
    return save_image(target, image)


def save_image(path: str | pathlib.Path, image: ArrayLike, **options: Any) -> pathlib.Path:
    """Write an image in the format its suffix names, creating missing parent
    directories.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination file; its suffix picks the format: ``.png``, ``.jpg`` /
        ``.jpeg``, ``.tif`` / ``.tiff``, ``.webp``, ``.bmp``, ... (whatever
        Pillow writes). For vector output (PDF, SVG) draw a figure
        (:func:`relevance_figure`) and write it with :func:`save_figure`.
    image : array_like
        ``uint8`` array of shape ``(H, W, 3)`` (RGB) or ``(H, W)``
        (grayscale).
    **options
        Passed to Pillow's ``Image.save``, e.g. ``quality=95`` for JPEG.

    Returns
    -------
    pathlib.Path
        The path written to.

    Raises
    ------
    ValueError
        If ``image`` is not ``uint8`` or has the wrong shape, or the suffix
        names no format Pillow writes.
    """
    from PIL import Image

    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(
            f"an image to save must be uint8, got dtype {img.dtype}; use "
            "heatmap() or overlay() to convert relevance"
        )
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3)):
        raise ValueError(
            f"an image to save must have shape (H, W) or (H, W, 3), got {img.shape}"
        )
    target = pathlib.Path(path)
    extensions = Image.registered_extensions()
    if target.suffix.lower() not in extensions:
        raise ValueError(f"cannot tell an image format from the suffix of {str(target)!r}; "
                         "use .png, .jpg, .tif, .webp or .bmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img)).save(target, format=extensions[target.suffix.lower()], **options)
    return target


_SEQUENCE_BASES = "ACGT"
_SEQUENCE_MIN_TRACK = 8  # smallest drawable track height in pixels
_SEQUENCE_GUTTER = 10  # width of the base labels of per-base tracks


def _sequence_letters(sequence: str | ArrayLike, length: int) -> str:
    """Letters of a sequence given as a string or one-hot ``(L, 4)`` array."""
    if isinstance(sequence, str):
        letters = sequence.upper()
    else:
        onehot = _as_float_array(sequence, "sequence")
        if onehot.ndim != 2 or onehot.shape[1] != len(_SEQUENCE_BASES):
            raise ValueError(
                "sequence must be a string or a one-hot array of shape (L, 4) "
                f"over {_SEQUENCE_BASES}, got shape {onehot.shape}"
            )
        index = onehot.argmax(axis=1)
        empty = [not row.any() for row in onehot]
        letters = "".join(
            "N" if blank else _SEQUENCE_BASES[i] for i, blank in zip(index.tolist(), empty)
        )
    if len(letters) != length:
        raise ValueError(
            f"sequence has length {len(letters)} but relevance has {length} "
            "positions"
        )
    return letters


def _column_starts(length: int, width: int) -> np.ndarray:
    """First sequence position drawn in each of ``width`` pixel columns."""
    return (np.arange(width) * length) // width


class _SequenceInputs(NamedTuple):
    """The arguments of :func:`sequence_plot`, checked and in one form."""

    values: np.ndarray  # (tracks, L) relevance, one row per track
    letters: str | None
    shaded: np.ndarray | None  # (L,) bool
    table: np.ndarray
    colour: np.ndarray  # mask colour, uint8 (3,)
    width: int
    height: int


def _sequence_values(relevance: ArrayLike, per_base: bool) -> np.ndarray:
    """Relevance ``(L,)`` or ``(L, 4)`` as float ``(tracks, L)``, one row per track."""
    rel = np.asarray(relevance)
    if rel.ndim == 2 and rel.shape[1] != len(_SEQUENCE_BASES):
        raise ValueError(
            f"2-D relevance must have shape (L, 4) with one channel per base "
            f"{_SEQUENCE_BASES}, got shape {rel.shape}; pass (L,) relevance "
            "for other inputs"
        )
    if rel.ndim not in (1, 2):
        raise ValueError(
            f"sequence_plot needs relevance of shape (L,) or (L, 4), got shape "
            f"{rel.shape}; drop the batch axis first"
        )
    rel = _as_float_array(rel, "relevance")
    if per_base:
        if rel.ndim != 2:
            raise ValueError("per_base=True needs relevance of shape (L, 4)")
        return rel.T
    return (rel.sum(axis=1) if rel.ndim == 2 else rel)[None, :]


def _sequence_inputs(
    relevance: ArrayLike,
    sequence: str | ArrayLike | None,
    mask: ArrayLike | None,
    per_base: bool,
    width: int | None,
    height: int,
    cmap: Cmap,
    percentile: float | None,
    mask_color: Sequence[int],
) -> _SequenceInputs:
    """Check the arguments of :func:`sequence_plot` and bring them into one form."""
    values = _sequence_values(relevance, per_base)
    tracks, length = values.shape
    table = colormap(cmap)
    _check_percentile(percentile)
    colour = np.asarray(mask_color)
    if colour.shape != (3,) or not np.all((colour >= 0) & (colour <= 255)):
        raise ValueError(
            f"mask_color must be an (r, g, b) triple in [0, 255], got {mask_color!r}"
        )
    if width is None:
        width = min(max(8 * length, 120), 1600)
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    min_height = _SEQUENCE_MIN_TRACK * tracks
    if int(height) != height or height < min_height:
        raise ValueError(
            f"height must be an integer of at least {min_height} for "
            f"{tracks} track(s), got {height!r}"
        )
    letters = None if sequence is None else _sequence_letters(sequence, length)
    shaded = None
    if mask is not None:
        shaded = np.asarray(mask)
        if shaded.shape != (length,):
            raise ValueError(
                f"mask must have shape ({length},) like the sequence, got "
                f"{shaded.shape}"
            )
        shaded = shaded.astype(bool)
    return _SequenceInputs(
        values, letters, shaded, table, colour.astype(np.uint8), int(width), int(height)
    )


def _bar_extents(
    values: np.ndarray, percentile: float | None, starts: np.ndarray, plot_w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bar lengths in ``[0, 1]`` above and below zero, per track and pixel column."""
    length = values.shape[1]
    # signed bar lengths in [-1, 1], one common scale for all tracks
    signed = normalize(values, symmetric=True, percentile=percentile) * 2.0 - 1.0
    up = np.maximum(np.maximum.reduceat(signed, starts, axis=1), 0.0)
    down = np.maximum(-np.minimum.reduceat(signed, starts, axis=1), 0.0)
    if plot_w >= 3 * length:
        # the last column of each position stays empty: a gap between bars
        last = np.append(starts[1:] != starts[:-1], True)
        up[:, last] = 0.0
        down[:, last] = 0.0
    return up, down


def _draw_bar_tracks(
    canvas: np.ndarray,
    gutter: int,
    up: np.ndarray,
    down: np.ndarray,
    table: np.ndarray,
    plot_h: int,
) -> list[int]:
    """Draw separators, bars and zero lines into ``canvas``; return the zero rows."""
    tracks = up.shape[0]
    plot = canvas[:, gutter:]
    edges = np.rint(np.linspace(0, plot_h, tracks + 1)).astype(int)
    zeros = []
    for t in range(tracks):
        top, bottom = int(edges[t]), int(edges[t + 1])
        if t > 0:
            canvas[top, :] = 220
        zero = top + (bottom - top - 1) // 2
        zeros.append(zero)
        rise = np.rint(up[t] * (zero - top - 1)).astype(int)
        fall = np.rint(down[t] * (bottom - 2 - zero)).astype(int)
        rows = np.arange(top, bottom)[:, None]
        region = plot[top:bottom]
        region[(rows >= zero - rise[None, :]) & (rows < zero)] = table[-1]
        region[(rows > zero) & (rows <= zero + fall[None, :])] = table[0]
        plot[zero, :] = 150
    return zeros


def _sequence_text_layout(
    letters: str | None, gutter: int, plot_w: int, tracks: int, height: int
) -> tuple[Any, int]:
    """The font (``None`` when no text is drawn) and the height of the band of letters."""
    # letters are written when every position is at least 8 pixels wide
    fits = letters is not None and plot_w >= 8 * len(letters)
    font = None
    band = 0
    if gutter or fits:
        from PIL import ImageFont

        font = ImageFont.load_default()
    if font is not None and fits:
        band = int(font.getbbox("ACGTN")[3]) + 3
        if height - band < _SEQUENCE_MIN_TRACK * tracks:
            band = 0
    return font, band


def _draw_sequence_text(
    canvas: np.ndarray,
    font: Any,
    gutter: int,
    zeros: list[int],
    letters: str | None,
    plot_h: int,
) -> np.ndarray:
    """A copy of ``canvas`` with base labels in the gutter and ``letters`` below ``plot_h``."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    ink = (40, 40, 40)
    text_h = float(font.getbbox("ACGT")[3])
    if gutter:
        for base, zero in zip(_SEQUENCE_BASES, zeros):
            x = (gutter - draw.textlength(base, font=font)) / 2
            draw.text((x, zero - text_h / 2), base, fill=ink, font=font)
    if letters:
        length, plot_w = len(letters), canvas.shape[1] - gutter
        bounds = gutter + (np.arange(length + 1) * plot_w) // length
        for i, letter in enumerate(letters):
            centre = 0.5 * (bounds[i] + bounds[i + 1] - 1)
            x = centre - draw.textlength(letter, font=font) / 2 + 0.5
            draw.text((x, plot_h + 1), letter, fill=ink, font=font)
    return np.asarray(picture, dtype=np.uint8).copy()


def sequence_plot(
    relevance: ArrayLike,
    sequence: str | ArrayLike | None = None,
    *,
    mask: ArrayLike | None = None,
    per_base: bool = False,
    width: int | None = None,
    height: int = 100,
    cmap: Cmap = "bwr",
    percentile: float | None = None,
    mask_color: Sequence[int] = (255, 226, 140),
) -> np.ndarray:
    """Render per-position relevance of a sequence as a bar plot.

    Each position gets a bar rising above a grey zero line for positive
    relevance (in the colour of the top of ``cmap``, red for ``"bwr"``) or
    hanging below it for negative relevance (the bottom colour, blue). Bar
    lengths are relative to the largest absolute value (see ``percentile``),
    the same scale for all tracks. Positions are spread evenly over the
    width; when bars are at least 3 pixels wide a 1-pixel gap separates
    them, and when the image is narrower than the sequence each pixel column
    shows the largest positive and the most negative value of the positions
    it covers, so no peak is lost.

    Parameters
    ----------
    relevance : array_like
        Relevance of shape ``(L,)``, or ``(L, 4)`` for one-hot DNA input
        (channels A, C, G, T). The channels are summed unless ``per_base``.
    sequence : str or array_like, optional
        The sequence, as a string of length ``L`` or a one-hot array of shape
        ``(L, 4)`` (all-zero rows read as ``N``). Its letters are written
        under the bars when every position is at least 8 pixels wide and
        the height leaves room for them; otherwise they are left out.
        Requires Pillow when drawn.
    mask : array_like, optional
        Boolean array of shape ``(L,)``, e.g. ground-truth motif positions;
        their columns get the background colour ``mask_color``.
    per_base : bool, default False
        Draw the four channels of an ``(L, 4)`` relevance as four tracks,
        from top to bottom A, C, G, T, each with its own zero line. When
        ``height >= 64`` and ``width >= 40`` the tracks are labelled with
        their base in a 10-pixel gutter on the left (requires Pillow), and
        the bars use the remaining width.
    width : int, optional
        Width in pixels; defaults to 8 pixels per position, clipped to
        ``[120, 1600]``.
    height : int, default 100
        Height in pixels, including the band of letters; at least 8 per
        track.
    cmap : str or numpy.ndarray, default "bwr"
        Colour-map name (see :func:`colormap`) or a ``uint8`` table of shape
        ``(N, 3)``; its last row colours positive bars, its first row
        negative bars.
    percentile : float, optional
        Passed to :func:`normalize`: scale bars to this percentile of
        ``|R|`` and clip longer ones, so one outlier does not flatten the
        rest.
    mask_color : (int, int, int), default (255, 226, 140)
        RGB background of masked positions (light amber).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(height, width, 3)`` on a white
        background.

    Raises
    ------
    ValueError
        If ``relevance`` is not ``(L,)`` or ``(L, 4)``, is empty or contains
        NaN or inf, ``per_base`` is set for 1-D relevance, ``sequence`` or
        ``mask`` does not match ``L``, or a size or colour is invalid.
    """
    values, letters, shaded, table, colour, width, height = _sequence_inputs(
        relevance, sequence, mask, per_base, width, height, cmap, percentile, mask_color
    )
    tracks, length = values.shape
    # per-base tracks get their base letter in a gutter on the left, when
    # the tracks are tall enough for text and the gutter leaves room
    gutter = _SEQUENCE_GUTTER if per_base and height >= 64 and width >= 40 else 0
    plot_w = width - gutter
    starts = _column_starts(length, plot_w)
    up, down = _bar_extents(values, percentile, starts, plot_w)
    font, band = _sequence_text_layout(letters, gutter, plot_w, tracks, height)

    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    if shaded is not None:
        columns = np.logical_or.reduceat(shaded, starts)
        canvas[:, gutter:][:, columns] = colour
    zeros = _draw_bar_tracks(canvas, gutter, up, down, table, height - band)
    if font is not None and (gutter or band):
        canvas = _draw_sequence_text(
            canvas, font, gutter, zeros, letters if band else None, height - band
        )
    return canvas


# ------------------------------------------------------------------ tokens

# Sub-word markers of common tokenizers, shown as the space they stand for.
_WORD_MARKERS = {"\u0120": " ", "\u2581": " ", "\u010a": "\\n"}


def _token_colours(tokens: Sequence[str], relevance: ArrayLike, cmap: Cmap, percentile: float | None,
                   reduce: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Display texts, RGB colours ``(L, 3)`` and values ``(L,)`` of a token sequence."""
    rel = np.asarray(relevance)
    if rel.ndim == 2:
        rel = _reduce_channels(_as_float_array(rel, "relevance"), -1, reduce)
    if rel.ndim != 1:
        raise ValueError(f"token relevance must have shape (L,) or (L, D), got {rel.shape}; "
                         "pass one example, e.g. R[0]")
    texts = [str(t) for t in tokens]
    if len(texts) != rel.shape[0]:
        raise ValueError(f"got {len(texts)} tokens but relevance for {rel.shape[0]} positions")
    rel = _as_float_array(rel, "relevance")
    table = colormap(cmap)
    unit = normalize(rel, symmetric=True, percentile=percentile)
    colours = table[np.floor(unit * (table.shape[0] - 1) + 0.5).astype(np.intp)]
    for marker, shown in _WORD_MARKERS.items():
        texts = [t.replace(marker, shown) for t in texts]
    return texts, colours, rel


def _ink(colour: np.ndarray) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``colour`` (BT.601 luma)."""
    return (0, 0, 0) if float(colour @ np.array([0.299, 0.587, 0.114])) > 140 else (255, 255, 255)


def token_heatmap(
    tokens: Sequence[str],
    relevance: ArrayLike,
    *,
    cmap: Cmap = "bwr",
    percentile: float | None = None,
    reduce: str = "sum",
    width: int = 640,
    font_size: int = 16,
) -> np.ndarray:
    """Render a token sequence as text whose background shows each token's relevance.

    The text heatmap of Captum's ``visualize_text`` and LXT's token plots: tokens
    are laid out left to right and wrapped at ``width``; each sits on the colour
    of its relevance on a symmetric scale (white is zero with ``"bwr"``, red
    positive, blue negative), with black or white text, whichever reads better.
    Sub-word markers (``"Ġ"``, ``"▁"``) are shown as the space they stand for.

    Parameters
    ----------
    tokens : sequence of str
        The token strings, one per position.
    relevance : array_like
        ``(L,)``, or ``(L, D)`` (relevance of embeddings, combined over ``D`` with
        ``reduce``; see :func:`heatmap`).
    cmap : colour map, default "bwr"
        Any form :func:`colormap` accepts; a diverging map keeps zero in the middle.
    percentile : float, optional
        Passed to :func:`normalize`.
    reduce : {"sum", "abs_sum", "max_abs"}, default "sum"
    width : int, default 640
        Width of the image in pixels; lines wrap there.
    font_size : int, default 16

    Returns
    -------
    numpy.ndarray
        ``uint8`` RGB image ``(H, width, 3)``; write it with :func:`save_image`.
        For notebooks, :func:`token_html` gives the same as HTML.

    Examples
    --------
    >>> import numpy as np
    >>> from jaxlrp import viz
    >>> image = viz.token_heatmap(["The", " cat", " sat"], np.array([0.1, 2.0, -0.5]))
    >>> image.dtype, image.shape[1]
    (dtype('uint8'), 640)
    """
    from PIL import Image, ImageDraw, ImageFont

    texts, colours, _ = _token_colours(tokens, relevance, cmap, percentile, reduce)
    font = ImageFont.load_default(size=font_size)
    pad, gap, line_h = 3, 2, int(font_size * 1.5)
    boxes, x, y = [], gap, gap
    for text in texts:
        w = int(font.getlength(text)) + 2 * pad
        if x + w > width - gap and x > gap:
            x, y = gap, y + line_h + gap
        boxes.append((x, y, min(x + w, width - gap)))
        x += w + gap
    picture = Image.new("RGB", (width, y + line_h + gap), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for (x0, y0, x1), text, colour in zip(boxes, texts, colours):
        draw.rectangle((x0, y0, x1, y0 + line_h - 1), fill=tuple(int(c) for c in colour))
        draw.text((x0 + pad, y0 + line_h // 2), text, font=font, fill=_ink(colour), anchor="lm")
    return np.asarray(picture, dtype=np.uint8).copy()


def token_html(
    tokens: Sequence[str],
    relevance: ArrayLike,
    *,
    cmap: Cmap = "bwr",
    percentile: float | None = None,
    reduce: str = "sum",
) -> str:
    """The text heatmap of :func:`token_heatmap` as HTML, for notebooks and web pages.

    Each token is a ``<span>`` on its relevance colour whose tooltip gives the
    value; show it in Jupyter with ``IPython.display.HTML(viz.token_html(...))``.
    Parameters as in :func:`token_heatmap`.

    Returns
    -------
    str
        One ``<div>`` of spans; token texts are HTML-escaped.

    Examples
    --------
    >>> import numpy as np
    >>> from jaxlrp import viz
    >>> viz.token_html(["a", "<b>"], np.array([1.0, -1.0]))[:40]
    '<div style="line-height:1.9;font-family:'
    """
    texts, colours, values = _token_colours(tokens, relevance, cmap, percentile, reduce)
    spans = []
    for text, colour, value in zip(texts, colours, values):
        r, g, b = (int(c) for c in colour)
        ink = "#000" if _ink(colour) == (0, 0, 0) else "#fff"
        spans.append(f'<span title="{value:.4g}" style="background:rgb({r},{g},{b});color:{ink};'
                     f'padding:1px 2px;border-radius:3px;white-space:pre">{html.escape(text)}</span>')
    return '<div style="line-height:1.9;font-family:monospace">' + "".join(spans) + "</div>"


# ------------------------------------------------------------ matplotlib figures


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
    rel = _as_float_array(relevance, what)
    if rel.ndim == 4:
        rel = _reduce_channels(rel, -1, reduce)
    if rel.ndim != 3:
        raise ValueError(f"{what} must have shape (N, H, W) or (N, H, W, C), got {rel.shape}")
    return rel


def _display_inputs(inputs: ArrayLike) -> np.ndarray:
    """Inputs ``(N, H, W[, C])`` as images in ``[0, 1]``: gray for 1 channel, RGB for 3."""
    x = _as_float_array(inputs, "inputs")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise ValueError(f"inputs must have shape (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {x.shape}")
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


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
    _check_percentile(percentile)
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

    Figure = _matplotlib_figure()
    top = 0.35 * (header is not None) + 0.3 * (column_titles is not None)
    fig = Figure(figsize=(tile_inches * (n + 0.9) + 1.2, tile_inches * (len(rows) + 1) + top), layout="constrained")
    axes = fig.subplots(len(rows) + 1, n + 1, squeeze=False, gridspec_kw={"width_ratios": [1.0] * n + [0.07]})
    for j in range(n):
        axes[0, j].imshow(shown[j], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1)
        if column_titles is not None:
            axes[0, j].set_title(str(column_titles[j]), fontsize=fontsize)
    axes[0, 0].set_ylabel("input", fontsize=fontsize, rotation=0, ha="right", va="center")
    axes[0, n].axis("off")
    for i, (label, rel) in enumerate(rows.items(), start=1):
        bound = float(np.percentile(np.abs(rel), percentile)) or float(np.abs(rel).max()) or 1.0
        for j in range(n):
            image = axes[i, j].imshow(rel[j], cmap=_figure_cmap(cmap), vmin=-bound, vmax=bound)
        axes[i, 0].set_ylabel(textwrap.fill(label, 18, break_long_words=False), fontsize=fontsize, rotation=0, ha="right", va="center")
        bar = fig.colorbar(image, cax=axes[i, n])
        bar.ax.tick_params(labelsize=fontsize * 0.75)
        if colorbar_label is not None:
            bar.set_label(colorbar_label, fontsize=fontsize * 0.8)
        bar.ax.yaxis.get_offset_text().set_fontsize(fontsize * 0.75)
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
