"""Images of relevance in :mod:`jaxlrp.viz`: heatmaps, overlays on the input, grids of
tiles with titles and row labels, and writing images to files (Pillow, imported lazily)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._colormaps import Cmap, colormap, normalize
from ._common import as_float_array, reduce_channels


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
    rel = as_float_array(rel, "relevance")
    if rel.ndim == 3:
        rel = reduce_channels(rel, channel_axis, reduce)
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
        unit = as_float_array(img, "image")
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
        rel = reduce_channels(rel, channel_axis, reduce) if rel.ndim == 3 else rel
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
