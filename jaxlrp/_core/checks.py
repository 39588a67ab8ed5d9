"""Small checks shared by the modules of jaxlrp: one home for each."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from typing import TypeGuard

    from flax import nnx

import jax
import numpy as np

__all__ = ["concrete", "is_nnx_module"]


def concrete(a: Any) -> Optional[np.ndarray]:
    """``a`` as a NumPy array, or ``None`` where it is a tracer (its value is not known
    at trace time: checks of a value are then left to the traced program)."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def is_nnx_module(fn: Any) -> "TypeGuard[nnx.Module]":
    """Whether ``fn`` is a Flax nnx module (without importing Flax: if ``flax.nnx`` was
    never imported, ``fn`` cannot be one)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(fn, nnx.Module)
