"""Colour maps and value normalisation of :mod:`jaxlrp.viz`: the built-in maps, Zennit's
colour-map notation, matplotlib's maps and user tables (:func:`colormap`), and the
scaling of relevance into ``[0, 1]`` (:func:`normalize`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Union

import numpy as np
from numpy.typing import ArrayLike

from ._common import as_float_array, check_percentile

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
    check_percentile(percentile)
    rel = as_float_array(relevance, "relevance")

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
