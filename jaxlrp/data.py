"""Deprecated alias of :mod:`jaxlrp.synthetic` (synthetic data sets with ground truth).

``jaxlrp.data`` was renamed ``jaxlrp.synthetic``, so that it no longer reads like
:mod:`jaxlrp.dataset` (explaining and storing a data set). This module re-exports
the same objects and warns with :class:`DeprecationWarning` when imported; it will
be removed in the next release. Write ``from jaxlrp import synthetic`` instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

from .synthetic import *  # noqa: F403  (the same objects, not copies)
from .synthetic import Key, __all__  # noqa: F401


def _importer_level() -> int:
    """The ``stacklevel`` that names the code importing this module: past this
    module, ``importlib.import_module`` and ``jaxlrp``'s lazy ``__getattr__`` (the
    frames of ``importlib._bootstrap`` are not counted: ``warnings`` skips them), so
    the warning points at the user's line and is shown there by default."""
    skip = (__file__, os.path.join(os.path.dirname(__file__), "__init__.py"), importlib.__file__)
    frame, level = sys._getframe(1), 1  # level 1: this module's body
    while frame.f_back is not None:
        name = frame.f_code.co_filename
        if name not in skip and not ("importlib" in name and "_bootstrap" in name):
            break
        frame = frame.f_back
        if "_bootstrap" not in frame.f_code.co_filename:
            level += 1
    return level


warnings.warn(
    "jaxlrp.data is deprecated: it was renamed jaxlrp.synthetic (use `from jaxlrp import synthetic`); "
    "the jaxlrp.data alias will be removed in the next release",
    DeprecationWarning,
    stacklevel=_importer_level(),
)
