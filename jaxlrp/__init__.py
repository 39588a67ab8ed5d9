"""jaxlrp: Layer-wise Relevance Propagation as a JAX function transformation.

>>> import jaxlrp
>>> from jaxlrp import composites, rules
>>> explain = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
>>> relevance = jax.jit(explain)(variables, x, target=3)
"""

from . import attribution, composites, concepts, data, dataset, diagnostics, metrics, rules, variants, viz
from ._errors import TrainingModeError, UnsupportedOperationError
from .composites import Composite, UnmatchedPatternError, UnmatchedPatternWarning
from .dataset import DatasetLockedError, explain_dataset
from .diagnostics import inspect
from ._version import __version__
from .explain import AmbiguousOutputWarning, lrp, value_and_lrp


def __getattr__(name: str):
    """``jaxlrp.flax``, ``jaxlrp.models`` and ``jaxlrp.keras`` are imported on first use."""
    if name in ("flax", "models", "keras"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'jaxlrp' has no attribute {name!r}")


__all__ = [
    "__version__",
    "lrp",
    "value_and_lrp",
    "explain_dataset",
    "dataset",
    "inspect",
    "attribution",
    "concepts",
    "rules",
    "composites",
    "data",
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
