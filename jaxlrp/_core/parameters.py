"""The relevance of parameters: which leaves a layer's weight and bias come from,
and the backward pass that routes their relevance there.

In parameter mode (``evaluate(..., parameters=True)``) every dense and conv node
returns, besides the relevance of its input, the relevance of its weight and its
bias share (:func:`jaxlrp.rules.propagate`) as the *cotangents* of those
operands. Differentiating the evaluation with respect to the parameter leaves
then carries them back to the leaves through the operations between: a reshape,
transpose, dtype cast or slice routes each entry to the entry it came from (and
a ``lax.scan`` over stacked layers to the layer's slice), a broadcast or a
parameter used twice adds the shares. Operations that would rescale or mix
relevance on the way (``w * 2``, ``w + a @ b``) are refused by
:func:`parameter_sources` before anything is computed.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from . import primitives as P
from .analysis import Analysis, LayerSpec, inexact
from .errors import UnsupportedOperationError
from .interpreter import plain_bias
from .program import Var
from .run import initial_relevance, output
from .trace import Traced
from .types import Target


def parameter_sources(an: Analysis) -> set:
    """The program inputs (:class:`~jaxlrp._core.program.Var`) that the weights and biases
    of the dense and conv layers of ``an`` (and of its control-flow bodies) read.

    Raises
    ------
    UnsupportedOperationError
        A weight (or plain bias) is computed from parameters by anything but a
        routing operation (:data:`jaxlrp._core.primitives.PARAMETER_ROUTING`), or is
        the carry of a ``lax.scan``.
    """
    producers = {v: e for e in an.program.eqns for v in e.outvars}
    invars = set(an.program.invars)
    found: set = set()
    for spec in an.nodes.values():
        if not isinstance(spec, LayerSpec):
            continue
        e = an.program.eqns[spec.eqn]
        starts = [e.invars[spec.weight]]
        if plain_bias(an, spec):
            chain = (spec.eqn, *spec.chain.post, *spec.chain.members)
            flowing = {v for j in chain for v in an.program.eqns[j].outvars}
            starts += [a for j in spec.chain.members if j not in spec.chain.reshapes
                       for a in an.program.eqns[j].invars if isinstance(a, Var) and a not in flowing]
        for v in starts:
            found |= _walk(v, producers, invars, spec.layer.name)
    for i, subs in an.subs.items():
        e = an.program.eqns[i]
        offset = P.CONTROL.get(e.prim.name, 0)
        for sub in subs:
            for v in parameter_sources(sub):
                k = sub.program.invars.index(v)
                if e.prim.name in P.LOOPS and e.params["num_consts"] <= k < e.params["num_consts"] + e.params["num_carry"]:
                    raise UnsupportedOperationError(e.prim.name, e.name, "a layer's weight is a loop carry, whose "
                                                    "relevance cannot be routed to one parameter",
                                                    "pass the weights as scan constants or scanned inputs")
                found |= _walk(e.invars[k + offset], producers, invars, e.name)
    return found


def _walk(var: Any, producers: dict, invars: set, layer: str) -> set:
    """The program inputs ``var`` is routed from (see
    :data:`jaxlrp._core.primitives.PARAMETER_ROUTING`)."""
    found, stack, seen = set(), [var], set()
    while stack:
        v = stack.pop()
        if not isinstance(v, Var) or not inexact(v) or id(v) in seen:
            continue
        seen.add(id(v))
        if v in invars:
            found.add(v)
            continue
        e = producers[v]
        if e.prim.name not in P.PARAMETER_ROUTING:
            raise UnsupportedOperationError(
                e.prim.name, layer, "the relevance of a weight is defined for the parameter it reads; this "
                "weight is computed from parameters by an operation that is not a reshape, cast, slice or "
                "broadcast, so its relevance cannot be given to them",
                "compute the weight outside the explained function and pass it as a parameter leaf")
        stack.extend(e.invars)
    return found


def run(t: Traced, leaves: list, target: Target, output_relevance: Optional[Any]) -> list:
    """The relevance of the flat argument leaves ``leaves`` (indices into
    ``t.flat_args``), summed over the examples: one forward pass under
    :func:`jax.vjp` in parameter mode, seeded with the output relevance."""
    def f(params):
        vals = list(t.flat_args)
        for j, p in zip(leaves, params):
            vals[j] = p
        return output(t, vals, parameters=True)

    out, pull = jax.vjp(f, [jnp.asarray(t.flat_args[j]) for j in leaves])
    (rel,) = pull(initial_relevance(out, target, output_relevance, t.example_ndim))
    return rel
