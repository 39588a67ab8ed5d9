"""Visualisation helpers for relevance (attribution) maps (moved to a package; the split follows)."""

from ._images import *  # noqa: F401,F403
from ._images import Cmap, __all__  # noqa: F401
