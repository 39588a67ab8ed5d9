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

# The package: colour maps and normalisation (_colormaps), images (_images), sequences
# and tokens (_sequences), matplotlib figures (_figures), shared checks (_common).
from . import _colormaps
from ._colormaps import colormap, normalize
from ._colormaps import Cmap as Cmap  # the type of every cmap argument, public but not in __all__ (as before)
from ._figures import relevance_figure, save_figure
from ._images import grid, heatmap, overlay, save_image, save_png
from ._sequences import sequence_plot, token_heatmap, token_html

# Bound here, not imported, so that autodoc finds its doc comment in this file.
#: Names accepted by :func:`colormap`.
COLORMAPS: tuple[str, ...] = _colormaps.COLORMAPS

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
