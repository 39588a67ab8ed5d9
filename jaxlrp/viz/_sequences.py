"""Relevance of sequences in :mod:`jaxlrp.viz`: bar plots of DNA and other sequences
(:func:`sequence_plot`) and text heatmaps of tokens (:func:`token_heatmap`,
:func:`token_html`); Pillow is imported lazily where text is drawn."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ._colormaps import Cmap, colormap, normalize
from ._common import as_float_array, check_percentile, reduce_channels

_SEQUENCE_BASES = "ACGT"
_SEQUENCE_MIN_TRACK = 8  # smallest drawable track height in pixels
_SEQUENCE_GUTTER = 10  # width of the base labels of per-base tracks


def _sequence_letters(sequence: str | ArrayLike, length: int) -> str:
    """Letters of a sequence given as a string or one-hot ``(L, 4)`` array."""
    if isinstance(sequence, str):
        letters = sequence.upper()
    else:
        onehot = as_float_array(sequence, "sequence")
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
    rel = as_float_array(rel, "relevance")
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
    check_percentile(percentile)
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
        rel = reduce_channels(as_float_array(rel, "relevance"), -1, reduce)
    if rel.ndim != 1:
        raise ValueError(f"token relevance must have shape (L,) or (L, D), got {rel.shape}; "
                         "pass one example, e.g. R[0]")
    texts = [str(t) for t in tokens]
    if len(texts) != rel.shape[0]:
        raise ValueError(f"got {len(texts)} tokens but relevance for {rel.shape[0]} positions")
    rel = as_float_array(rel, "relevance")
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
