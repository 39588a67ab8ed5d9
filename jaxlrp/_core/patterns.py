"""Patterns: constructs of several equations that the analysis gives a rule.

A single equation rarely says what a model computes: a softmax is ``exp``,
``reduce_sum`` and ``div``; LayerNorm is a product with ``rsqrt`` of a variance;
a gated unit is a product with a factor bounded in ``[0, 1]``. The analysis
(:mod:`jaxlrp._core.analysis`) attaches *tags* to relevance-carrying values as it
walks the program, tracks the *range* of values computed from literals (an
interval analysis, :func:`value_range`), and the recognisers below read them at
the equation that completes a pattern. Each recogniser is a pure function of the
equation and of what the analysis knows about its operands, given as two
callables:

* ``has(k, tag)``: whether operand ``k`` carries ``tag``;
* ``origin(a)``: the value an activation region's value was computed from (the
  value itself outside regions).

Tags (:data:`Tag`):

``"inverse"``
    an inverse of a tainted value (``rsqrt``, ``1 / x``, a negative power), and
    anything computed from one by activations, routing, scalings and sums (but
    not a gate: ``1 / (1 + exp(-x))`` is a sigmoid);
``"root"``
    a square root of a tainted value (``sqrt``, ``rsqrt``);
``"gate"``
    not stored: a relevance-carrying value whose range lies within ``[0, 1]``
    (:func:`is_gate`);
``"probs"``
    a softmax output;
``"exp"``
    an activation region that contains ``exp``;
``"activated"``
    a value of an activation region that is not linear in its origin (a step
    other than adding, negating or scaling by a constant: ``silu``, GELU, ReLU,
    ``tanh``), and routed copies of it.

Which tags an operation passes on: :data:`KEPT_BY_ROUTING` (reshapes, slices,
pools and activations), :data:`KEPT_BY_REGIONS` (elementwise steps of one
origin), :data:`KEPT_BY_SUMS` (sums and scalings).

**Gates.** A factor is a gate when what it computes lies in ``[0, 1]``, whatever
its spelling: ``sigmoid(a)``, ``0.5 * (1 + tanh(a / 2))``, ``1 / (1 + exp(-a))``,
``hard_sigmoid(a) = relu6(a + 3) / 6``, ``1 - sigmoid(a)``, and routed copies of
them (a broadcast squeeze-excitation gate). The range is an interval bound derived
from the literal constants of the program only (a value computed from the
parameters, or a value of unknown origin, is unbounded), so ``silu(a) = a *
sigmoid(a)``, GELU and swish are unbounded and never gates: a SwiGLU product
``silu(x W1) * (x W3)`` is a plain product.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from . import primitives as P
from .kinds import Kind
from .program import Eqn, Lit, Program, Var

Tag = Literal["inverse", "root", "gate", "probs", "exp", "activated"]
Has = Callable[[int, Tag], bool]

KEPT_BY_ROUTING: frozenset = frozenset({"root", "probs", "inverse", "activated"})
KEPT_BY_REGIONS: frozenset = KEPT_BY_ROUTING | {"exp"}
KEPT_BY_SUMS: frozenset = frozenset({"inverse"})


def made_by(eqn: Eqn, tainted: tuple) -> set:
    """The tags an elementwise equation of one origin adds to its output."""
    made = {P.TAGS[eqn.prim.name]} if eqn.prim.name in P.TAGS else set()
    if not _linear_step(eqn, tainted):
        made.add("activated")
    return made | ({"inverse"} if P.inverts(eqn, tainted) else set())


def _linear_step(eqn: Eqn, tainted: tuple) -> bool:
    """Whether an elementwise step of one origin is linear in it: a sum, a negation,
    a copy or cast, or a product or quotient with one relevance-carrying operand in
    the numerator (``x * c``, ``x / c``)."""
    name = eqn.prim.name
    if name in P.LINEAR_STEPS:
        return True
    return (name in P.PRODUCTS and len(tainted) == 1) or (name in P.QUOTIENTS and tainted == (0,))


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
                                          # (any factor in [0, 1], see is_gate)
        s = silu a; y = mul s b           # SwiGLU, GeGLU        -> "glu"
                                          # (one factor "activated", the other not)
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
    activated = [k for k in tainted if has(k, "activated")]
    if len(tainted) == 2 and len(activated) == 1:
        (other,) = [k for k in tainted if k != activated[0]]
        return "glu", (other, activated[0])
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


# ------------------------------------------------------------------ value ranges

#: A closed interval ``(lo, hi)`` of floats (``-inf``/``inf`` allowed).
Interval = tuple[float, float]
UNBOUNDED: Interval = (-math.inf, math.inf)
# Slack on the gate bounds: a range computed in float32 from rounded literals
# (``x * (1 / 6)``) may exceed 1 by a rounding error.
_GATE_SLACK = 1e-6


def is_gate(r: Interval) -> bool:
    """Whether a value with range ``r`` is a gate: ``r`` lies within ``[0, 1]``."""
    return r[0] >= -_GATE_SLACK and r[1] <= 1.0 + _GATE_SLACK


def literal_range(a) -> Interval:
    """The range of a scalar literal operand (its value), else :data:`UNBOUNDED`.

    Only scalar literals count: arrays closed over are parameters, whose values
    must not decide a treatment (the same model with the array passed as an
    argument would be treated differently).
    """
    value = a.static() if isinstance(a, Lit) and np.ndim(a.val) == 0 else None
    if value is None or not np.issubdtype(value.dtype, np.number):
        return UNBOUNDED
    v = float(value)
    return UNBOUNDED if math.isnan(v) else (v, v)


def value_range(eqn: Eqn, ranges: Sequence[Interval]) -> Interval:
    """A bound on the values of ``eqn``'s floating-point outputs, given a bound
    for each operand (``ranges``, one per operand; integer operands unused).

    Sound for every primitive it knows (:data:`jaxlrp._core.primitives.INCREASING`,
    ``DECREASING``, ``BOUNDED``, ``RANGE_COPYING`` and the arithmetic below), and
    :data:`UNBOUNDED` for every other one::

        a = ...                  # (-inf, inf)
        b = neg a; c = exp b     # (0, inf)
        d = add 1.0 c            # (1, inf)
        g = div 1.0 d            # (0, 1): a gate
    """
    name = eqn.prim.name
    with np.errstate(all="ignore"):
        if name in P.INCREASING or name in P.DECREASING:
            f = P.INCREASING.get(name) or P.DECREASING[name]
            lo, hi = float(f(ranges[0][0])), float(f(ranges[0][1]))
            out = (lo, hi) if name in P.INCREASING else (hi, lo)
        elif name in P.BOUNDED:
            out = P.BOUNDED[name]
        elif name in _ARITHMETIC:
            out = _ARITHMETIC[name](eqn, ranges)
        elif name in P.RANGE_COPYING:
            floats = [r for r, a in zip(ranges, eqn.invars) if jnp.issubdtype(a.dtype, jnp.inexact)]
            out = (min(r[0] for r in floats), max(r[1] for r in floats)) if floats else UNBOUNDED
        else:
            out = UNBOUNDED
    return UNBOUNDED if math.isnan(out[0]) or math.isnan(out[1]) else out


def _times(a: float, b: float) -> float:
    return 0.0 if a == 0 or b == 0 else a * b  # 0 * inf is 0 at an attained bound


def _mul(x: Interval, y: Interval) -> Interval:
    corners = [_times(a, b) for a in x for b in y]
    return min(corners), max(corners)


def _div(x: Interval, y: Interval) -> Interval:
    if y[0] > 0 or y[1] < 0:
        return _mul(x, (1.0 / y[1], 1.0 / y[0]))
    return UNBOUNDED


def _pow(x: Interval, n: int) -> Interval:
    if n < 0:
        return _div((1.0, 1.0), _pow(x, -n))
    a, b = float(np.power(np.float64(x[0]), n)), float(np.power(np.float64(x[1]), n))
    if n % 2 == 1 or x[0] >= 0:
        return a, b
    if x[1] <= 0:
        return b, a
    return 0.0, max(a, b)


def _abs(x: Interval) -> Interval:
    if x[0] >= 0:
        return x
    if x[1] <= 0:
        return -x[1], -x[0]
    return 0.0, max(-x[0], x[1])


_ARITHMETIC: dict[str, Callable[[Eqn, Sequence[Interval]], Interval]] = {
    "add": lambda e, r: (r[0][0] + r[1][0], r[0][1] + r[1][1]),
    "add_any": lambda e, r: (r[0][0] + r[1][0], r[0][1] + r[1][1]),
    "sub": lambda e, r: (r[0][0] - r[1][1], r[0][1] - r[1][0]),
    "mul": lambda e, r: _pow(r[0], 2) if e.invars[0] is e.invars[1] else _mul(r[0], r[1]),  # x * x >= 0
    "div": lambda e, r: _div(r[0], r[1]),
    "max": lambda e, r: (max(r[0][0], r[1][0]), max(r[0][1], r[1][1])),
    "min": lambda e, r: (min(r[0][0], r[1][0]), min(r[0][1], r[1][1])),
    # clamp(low, x, high) = min(max(x, low), high)
    "clamp": lambda e, r: (min(max(r[1][0], r[0][0]), r[2][0]), min(max(r[1][1], r[0][1]), r[2][1])),
    "integer_pow": lambda e, r: _pow(r[0], e.params["y"]),
    "square": lambda e, r: _pow(r[0], 2),
    "abs": lambda e, r: _abs(r[0]),
}
