r"""Relevance carried in a wider float than the model computes in.

JAX gives a value's cotangent the value's dtype, so the VJP of a bfloat16 model
carries its cotangents -- the relevance -- in bfloat16: rounded to 8 significant
bits at every operation of the backward pass, an error that grows with depth (a
12-layer CP-LRP decoder: worst cosine 0.80 with the float32 map over 64
sequences). A rule's division in float32 (:func:`jaxlrp.rules.divide`) does not
help the rounding between layers.

Under a :class:`Widening` the interpreter evaluates the model in ``dtype``: every
equation whose float operands are narrower than ``dtype`` runs on ``dtype`` copies
of them, parameters and inputs keep their (bfloat16) values, and the results are
not rounded back, except where the model casts on purpose
(:data:`jaxlrp._core.primitives.NARROWING`: ``x.astype(jnp.bfloat16)`` still rounds
``x``, with :func:`round_as`, whose derivative is the identity). Every value, and
so every cotangent, is a ``dtype`` array.

Why not round each result, as the bfloat16 model does: LRP carries relevance,
not a gradient, and the relevance of a value that is exactly zero is zero. A
residual sum ``h + m`` whose summands cancel to the last of bfloat16's 8 bits is
exactly 0 in bfloat16 (in float32 it is small, not zero), so the relevance of
both summands, each ``x * R / z`` in the limit, is lost: on a 12-layer decoder one
sequence in six lost part of its map that way (worst cosine 0.963 with the float32
map, against 0.9993 evaluated in float32; ``bench/bf16.md``). LXT, which
propagates a modified gradient, passes through such a zero; so does this
evaluation. The price: the explained output is the model evaluated in float32
from its bfloat16 parameters and inputs, which differs from the bfloat16 model's
output by the model's own rounding (the returned value is rounded to its dtype).

Operations that depend on the float format
(:data:`jaxlrp._core.primitives.FORMAT_DEPENDENT`) and those holding a program of
their own run in the model's dtype, their cotangent rounded there. Parameters
stay in their own dtype and are widened where they are read (no float32 copy of
the model is kept).

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
        """A carried value ``x`` as the model's ``dtype`` (rounded to it), for a
        result the caller receives."""
        return x.astype(dtype) if self.narrow(dtype) else x

    def bind(self, e: Eqn, args) -> list:
        """Apply ``e`` to the carried values ``args``; results carried, in ``dtype``
        (rounded to the model's format only by an explicit cast, :data:`NARROWING`)."""
        if self.dtype is None:
            return e.bind(*args)
        if e.prim.name in P.FORMAT_DEPENDENT or any(_is_program(v) for v in e.params.values()):
            outs = e.bind(*[jnp.asarray(a, v.dtype) for a, v in zip(args, e.invars)])
            return [self.value(o) for o in outs]
        params = {k: self.carried(v) if _is_dtype(v) else v for k, v in e.params.items()}
        outs = e.bind(*[self.value(a) for a in args], params=params)
        if e.prim.name in P.NARROWING:
            outs = [round_as(o, v.dtype) if self.narrow(v.dtype) else o for o, v in zip(outs, e.outvars)]
        return outs


NONE = Widening()


def _is_dtype(v) -> bool:
    return isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic))


def _is_program(v) -> bool:
    return isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr))
