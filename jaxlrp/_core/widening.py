r"""Relevance carried in a wider float than the model computes in.

JAX gives a value's cotangent the value's dtype, so the VJP of a bfloat16 model
carries its cotangents -- the relevance -- in bfloat16: rounded to 8 significant
bits at every operation of the backward pass, an error that grows with depth (a
12-layer CP-LRP decoder: cosine 0.9898 with the float32 map). A rule's division
in float32 (:func:`jaxlrp.rules.divide`) does not help the rounding between
layers.

Under a :class:`Widening` the interpreter computes every equation whose float
operands are narrower than ``dtype`` on ``dtype`` copies of them and rounds each
result back to the model's format with :func:`round_as`, whose derivative is the
identity:

.. math::

    \tilde y = \operatorname{round}_{\text{bf16}}\bigl(f(\tilde x)\bigr), \qquad
    \frac{\partial \tilde y}{\partial \tilde x} := f'(\tilde x)\ \text{in float32}.

The forward values are a bfloat16 evaluation of the model (each operation
computed from bfloat16-representable operands and rounded once, as XLA computes
a bfloat16 operation; a fused chain such as ``x ** 3`` may round differently from
the jitted model, by as much as XLA's own jitted and eager bfloat16 passes differ
from each other), while every value, and so every cotangent, is a ``dtype`` array.
Parameters stay in their own dtype and are widened where they are read (no
float32 copy of the model is kept). Operations that depend on the float format
(:data:`jaxlrp._core.primitives.FORMAT_DEPENDENT`) and those holding a program
of their own run in the model's dtype, their cotangent rounded there.

Cost: the activations the backward pass keeps are ``dtype`` (float32: twice a
bfloat16 gradient's); the arithmetic is the same, in ``dtype``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from . import primitives as P
from .program import Eqn

__all__ = ["Widening", "round_as", "NONE"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def round_as(x, dtype):
    """``x`` rounded to the values of ``dtype`` and kept in ``x``'s dtype; its
    derivative is the identity (the tangent, and so the cotangent, is not rounded)."""
    return x.astype(dtype).astype(x.dtype)


@round_as.defjvp
def _round_as_jvp(dtype, primals, tangents):
    (x,), (t,) = primals, tangents
    return round_as(x, dtype), t


@dataclasses.dataclass(frozen=True)
class Widening:
    """How the interpreter carries narrow float values (see the module docstring).

    ``dtype=None`` widens nothing: every equation is bound as traced.
    """

    dtype: Optional[Any] = None

    def narrow(self, dtype) -> bool:
        """Whether values of ``dtype`` are carried as ``self.dtype``."""
        return (self.dtype is not None and jnp.issubdtype(dtype, jnp.floating)
                and jnp.finfo(dtype).bits < jnp.finfo(self.dtype).bits)

    def carried(self, dtype):
        """The dtype in which a value of the model's ``dtype`` is carried."""
        return self.dtype if self.narrow(dtype) else dtype

    def value(self, x):
        """``x`` in its carried dtype (narrow floats widened, exactly)."""
        x = jnp.asarray(x)
        return x.astype(self.dtype) if self.narrow(x.dtype) else x

    def model(self, x, dtype):
        """A carried value ``x`` as the model's ``dtype`` (exact: its values are
        representable), for a result the caller receives."""
        return x.astype(dtype) if self.narrow(dtype) else x

    def round(self, x, dtype):
        """A ``dtype`` result computed wide, rounded to the model's values (a plain
        cast: for values no derivative passes through, e.g. inside a custom VJP)."""
        return x.astype(dtype).astype(x.dtype) if self.narrow(dtype) else x

    def bind(self, e: Eqn, args, rounded: bool = True) -> list:
        """Apply ``e`` to the carried values ``args``; results carried.

        ``rounded`` rounds each narrow result to the model's values (the forward
        pass); without it the result is exact in ``dtype`` (a rule's recomputed
        products, which only its derivative or its denominators read).
        """
        if self.dtype is None:
            return e.bind(*args)
        if e.prim.name in P.FORMAT_DEPENDENT or any(_is_program(v) for v in e.params.values()):
            outs = e.bind(*[jnp.asarray(a, v.dtype) for a, v in zip(args, e.invars)])
            return [self.value(o) for o in outs]
        params = {k: self.carried(v) if _is_dtype(v) else v for k, v in e.params.items()}
        outs = e.bind(*[self.value(a) for a in args], params=params)
        if rounded:
            outs = [round_as(o, v.dtype) if self.narrow(v.dtype) else o for o, v in zip(outs, e.outvars)]
        return outs


NONE = Widening()


def _is_dtype(v) -> bool:
    return isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic))


def _is_program(v) -> bool:
    return isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr))
