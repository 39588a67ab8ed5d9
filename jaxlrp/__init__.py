"""jaxlrp: Layer-wise Relevance Propagation as a JAX function transformation.

>>> import jaxlrp
>>> from jaxlrp import composites, rules
>>> explain = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
>>> relevance = jax.jit(explain)(variables, x, target=3)

The submodules and the functions below are imported on first use (PEP 562), so
``import jaxlrp`` and the ``jaxlrp`` command's ``--help`` do not import JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._core.errors import TrainingModeError, UnsupportedOperationError
from ._version import __version__

#: Submodules, imported on first attribute access.
_SUBMODULES = frozenset({
    "attribution", "canonize", "composites", "concepts", "dataset", "diagnostics", "explain", "generation",
    "metrics", "rules", "synthetic", "variants", "viz", "flax", "models", "keras", "demo",
})
#: Deprecated submodule aliases, importable for one more release but not listed by
#: ``dir`` or ``__all__`` (importing one warns with DeprecationWarning).
_DEPRECATED_SUBMODULES = frozenset({"data"})  # -> synthetic
#: Public names defined in a submodule: name -> submodule.
_ATTRIBUTES = {
    "lrp": "explain", "value_and_lrp": "explain", "Explainer": "explain", "AmbiguousOutputWarning": "explain",
    "Composite": "composites", "UnmatchedPatternError": "composites", "UnmatchedPatternWarning": "composites",
    "DatasetLockedError": "dataset", "explain_dataset": "dataset", "inspect": "diagnostics",
}

if TYPE_CHECKING:  # what the lazy attributes are, for type checkers
    from . import (
        attribution, composites, concepts, dataset, diagnostics, generation, metrics, rules, synthetic, variants, viz,
    )
    from .composites import Composite, UnmatchedPatternError, UnmatchedPatternWarning
    from .dataset import DatasetLockedError, explain_dataset
    from .diagnostics import inspect
    from .explain import AmbiguousOutputWarning, Explainer, lrp, value_and_lrp


def __getattr__(name: str) -> Any:
    """Import a submodule, or the submodule defining a public name, on first use."""
    if name in _SUBMODULES or name in _DEPRECATED_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'jaxlrp' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | _SUBMODULES | set(_ATTRIBUTES))


__all__ = [
    "__version__",
    "lrp",
    "value_and_lrp",
    "Explainer",
    "explain_dataset",
    "dataset",
    "inspect",
    "attribution",
    "concepts",
    "generation",
    "rules",
    "composites",
    "synthetic",
    "diagnostics",
    "metrics",
    "variants",
    "viz",
    "Composite",
    "UnsupportedOperationError",
    "TrainingModeError",
    "AmbiguousOutputWarning",
    "DatasetLockedError",
    "UnmatchedPatternWarning",
    "UnmatchedPatternError",
    "flax",
    "models",
    "keras",
]
