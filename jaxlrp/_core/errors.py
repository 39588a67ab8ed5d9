"""Exceptions raised by jaxlrp."""

from __future__ import annotations

from typing import Sequence


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


class TrainingModeError(ValueError):
    """The model is in training mode: a BatchNorm layer normalises with the batch's
    statistics, or Dropout is active.

    Its explanations would mix examples (or depend on a random mask); put the model
    in inference mode first (nnx: ``model.eval()``; linen:
    ``use_running_average=True``, ``deterministic=True``; Hugging Face Flax:
    ``train=False``). Raised by :func:`jaxlrp.lrp` for any function whose relevance
    path reduces over the example axes (batch statistics) or uses random numbers
    (dropout), and by the :mod:`jaxlrp.flax` helpers, which also look at the
    modules' flags.

    Attributes
    ----------
    layers:
        Descriptions of the offending layers (path and reason).
    """

    def __init__(self, layers: Sequence[str]):
        self.layers = tuple(layers)
        listed = "; ".join(self.layers[:5]) + (f"; and {len(self.layers) - 5} more" if len(self.layers) > 5 else "")
        super().__init__(
            f"the model is in training mode ({listed}): its explanations would mix examples in a batch "
            "or depend on a random dropout mask. Use inference mode: for nnx call model.eval(); for linen "
            "build BatchNorm with use_running_average=True and Dropout with deterministic=True; for "
            "Hugging Face Flax models pass train=False (deterministic=True)."
        )


class AmbiguousOutputWarning(UserWarning):
    """A 1-D output could index examples or outputs; see ``example_axes`` of :func:`jaxlrp.lrp`."""
