"""Patterns: constructs of several equations that the analysis gives a rule.

A single equation rarely says what a model computes: a softmax is ``exp``,
``reduce_sum`` and ``div``; LayerNorm is a product with ``rsqrt`` of a variance;
a gated unit is a product with ``logistic``. The analysis
(:mod:`jaxlrp._analysis`) attaches *tags* to relevance-carrying values as it
walks the program, and the recognisers below read them at the equation that
completes a pattern. Each recogniser is a pure function of the equation and of
what the analysis knows about its operands, given as two callables:

* ``has(k, tag)``: whether operand ``k`` carries ``tag``;
* ``origin(a)``: the value an activation region's value was computed from (the
  value itself outside regions).

Tags (:data:`Tag`):

``"inverse"``
    an inverse of a tainted value (``rsqrt``, ``1 / x``, a negative power), and
    anything computed from one by activations, routing, scalings and sums;
``"root"``
    a square root of a tainted value (``sqrt``, ``rsqrt``);
``"gate"``
    a sigmoid of a tainted value;
``"probs"``
    a softmax output;
``"exp"``
    an activation region that contains ``exp``.

Which tags an operation passes on: :data:`KEPT_BY_ROUTING` (reshapes, slices,
pools and activations), :data:`KEPT_BY_REGIONS` (elementwise steps of one
origin), :data:`KEPT_BY_SUMS` (sums and scalings).
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import numpy as np

from . import _primitives as P
from ._kinds import Kind
from ._program import Eqn, Lit, Program, Var

Tag = Literal["inverse", "root", "gate", "probs", "exp"]
Has = Callable[[int, Tag], bool]

KEPT_BY_ROUTING: frozenset = frozenset({"gate", "root", "probs", "inverse"})
KEPT_BY_REGIONS: frozenset = KEPT_BY_ROUTING | {"exp"}
KEPT_BY_SUMS: frozenset = frozenset({"inverse"})


def made_by(eqn: Eqn, tainted: tuple) -> set:
    """The tags an elementwise equation of one origin adds to its output."""
    made = {P.TAGS[eqn.prim.name]} if eqn.prim.name in P.TAGS else set()
    return made | ({"inverse"} if P.inverts(eqn, tainted) else set())


def constant_map(eqn: Eqn, tainted: tuple, is_parameter: Callable[[object], bool]) -> bool:
    """A linear map with a weight built from constants: routing, not a layer.

    Matches a ``dot_general`` or ``conv_general_dilated`` with one tainted
    operand whose other operand is not computed from parameters::

        m = iota / broadcast_in_dim 1.0 / ... (literals only)
        y = dot_general[...] x m        # jax.image.resize, a head mask of ones

    Such a map has no learned weight, so it takes no rule (and does not count
    as the "first" layer); its relevance follows the plain VJP, as Zennit
    treats upsampling.
    """
    return len(tainted) == 1 and not is_parameter(eqn.invars[1 - tainted[0]])


_SPECIAL_FACTORS: tuple[tuple[Tag, Kind], ...] = (("inverse", "normalize"), ("probs", "attention"), ("gate", "gate"))


def product(tainted: tuple, has: Has) -> Optional[tuple[Kind, tuple]]:
    """``(kind, operand order)`` of a product of tainted factors, or ``None``.

    The special factor goes second in the order. Matches, on ``mul`` or
    ``dot_general``::

        r = rsqrt v; y = mul c r          # LayerNorm / RMSNorm  -> "normalize"
        p = div e s (a softmax); y = dot_general p v  # attention -> "attention"
        g = logistic a; y = mul h g       # LSTM / GRU / GLU     -> "gate"
        y = mul a b                       # anything else        -> "product"

    ``None`` for a product of two inverses (a normaliser of a normaliser) or of
    an inverse with probabilities or a gate: no rule is known for those.
    """
    for tag, kind in _SPECIAL_FACTORS:
        special = [k for k in tainted if has(k, tag)]
        if len(special) == 1 and len(tainted) == 2:
            (other,) = [k for k in tainted if k != special[0]]
            if tag != "inverse" and has(other, "inverse"):
                return None
            return kind, (other, special[0])
        if special and tag == "inverse":
            return None
    return "product", tainted


def softmax(eqn: Eqn, has: Has, origin: Callable, sums: Callable) -> Optional[Var]:
    """The source ``x`` of a softmax ending at ``eqn``, or ``None``.

    Matches a division of an ``exp`` region of ``x`` by a sum of the same
    region (the shift by the maximum is optional)::

        m = reduce_max x; m = stop_gradient m; d = sub x m
        e = exp d
        s = reduce_sum e
        p = div e s

    ``sums(a)`` is the set of origins summed into ``a`` (through activations and
    routing), or ``None``.
    """
    source = origin(eqn.invars[0])
    if has(0, "exp") and sums(eqn.invars[1]) == {source}:
        return source
    return None


def root_normalization(tainted: tuple, has: Has) -> bool:
    """A division by a root of a tainted value: LayerNorm written with ``div``::

        c = sub x mean; v = ...; s = sqrt v
        y = div c s

    The denominator is the normaliser (treated as a constant by the default
    rule). Not a match if the numerator is itself an inverse.
    """
    return tainted == (0, 1) and has(1, "root") and not has(0, "inverse")


def quotient(tainted: tuple, has: Has) -> bool:
    """Another division of two tainted values (LocalResponseNorm, ``x / sum(x)``)::

        s = ... x ...
        y = div x s

    It has no default rule: the composite must choose one for the ``"divide"``
    kind (:class:`~jaxlrp.rules.SignalTakesAll` or
    :class:`~jaxlrp.rules.Gradient`).
    """
    return tainted == (0, 1) and not has(0, "inverse")


def relu(eqn: Eqn, source: Var) -> bool:
    """Whether ``eqn`` is ``max(source, 0)``, a ReLU of ``source`` itself::

        r = max z 0.0          # jax.nn.relu, flax.linen.relu, jnp.maximum(z, 0)
    """
    if eqn.prim.name not in P.RECTIFIERS or len(eqn.invars) != 2 or source not in eqn.invars:
        return False
    (other,) = [a for a in eqn.invars if a is not source] or [None]
    value = other.static() if isinstance(other, Lit) else None
    return value is not None and bool(np.all(value == 0))


def replayed(program: Program, producer: dict, out: Var, src: Var, tainted: Callable[[object], bool]) -> tuple:
    """Indices of the equations computing ``out`` from ``src`` (and constants):
    what a softmax node re-evaluates to recompute its output from its source.
    ``producer`` maps each variable to the index of its equation."""
    seen, stack = {producer[out]}, list(program.eqns[producer[out]].invars)
    while stack:
        v = stack.pop()
        if not isinstance(v, Var) or v is src or not tainted(v) or v not in producer:
            continue
        j = producer[v]
        if j not in seen:
            seen.add(j)
            stack.extend(a for a in program.eqns[j].invars if isinstance(a, Var))
    return tuple(sorted(seen))
