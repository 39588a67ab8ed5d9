"""The types that the core and the public modules share."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, Union

import jax
from jax.typing import ArrayLike

from .analysis import Layer

__all__ = ["Array", "Target", "Matcher", "LayerSelection", "Assigner"]

Array = jax.Array
#: ``target=`` of an explainer: an output index, an int array over the output's example
#: axes, a boolean or float mask over the output (dense outputs), or ``None`` (each
#: example's argmax).
Target = Union[int, ArrayLike, None]
#: A layer selector: a glob on names and parameter paths, a kind, or a predicate
#: (:mod:`jaxlrp.composites`).
Matcher = Union[str, Callable[[Layer], bool]]
#: ``layers=`` of an explainer: a matcher or a sequence of matchers.
LayerSelection = Union[None, Matcher, Sequence[Matcher]]


class Assigner(Protocol):
    """What the core needs of a composite (:class:`jaxlrp.composites.Composite`)."""

    def assign(self, layers: Sequence[Layer]) -> tuple:
        """One rule per layer, in order."""
        ...

    def chosen(self, layer: Layer) -> bool:
        """Whether the layer's rule was chosen explicitly (not a default)."""
        ...
