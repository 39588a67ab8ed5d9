"""Exceptions raised by jaxlrp."""

from __future__ import annotations


class UnsupportedOperationError(NotImplementedError):
    """An operation on the relevance path has no LRP rule.

    Raised at trace time, before any relevance is computed, so an explanation is
    never silently wrong. The message names the primitive and the layer (the
    name stack of the equation, e.g. ``"CNN/conv1"``) and gives a hint.
    """

    def __init__(self, primitive: str, layer: str, reason: str, hint: str = ""):
        self.primitive = primitive
        self.layer = layer
        msg = f"cannot propagate relevance through '{primitive}' in layer '{layer or '<top level>'}': {reason}"
        if hint:
            msg += f". Hint: {hint}"
        super().__init__(msg)
