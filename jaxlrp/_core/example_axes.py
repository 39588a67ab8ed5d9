"""Which axes of each value index examples, and where the relevance path mixes them.

An explanation is per example: the relevance of one example must not depend on the
others in the batch. A model in training mode breaks that without a sign:
BatchNorm with batch statistics reduces over the batch axis, and active dropout
multiplies by a random mask. This module follows the example axes of the explained
input through the program (a registry from primitive to how it moves axes,
:data:`AXIS_RULES`, filled from the tables of :mod:`jaxlrp._core.primitives` as the
analysis's treatments are: JAX keeps its batching rules beside its JVP rules the
same way) and reports the first equation on the relevance path that reduces over
one of them, or that uses random numbers.

Tracking is conservative: where a primitive has no axis rule (gathers, control
flow; ``primitives.AXES_UNTRACKED``) or a reshape merges an example axis, its outputs are no longer tracked and nothing is reported,
so a report is always a real reduction over the example axes.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from . import primitives as P
from .program import Eqn, Program, Var

Axes = Optional[frozenset]  # example axes of a value; None: not tracked


def _unite(axes: list) -> Axes:
    known = [a for a in axes if a is not None]
    return frozenset().union(*known) if known else None


def _same(e: Eqn, ins: list) -> tuple:
    rank = len(e.outvars[0].shape)
    return _unite([a for a, v in zip(ins, e.invars) if len(v.shape) == rank]), None


def _broadcast(e: Eqn, ins: list) -> tuple:
    dims = e.params["broadcast_dimensions"]
    return (None if ins[0] is None else frozenset(int(dims[a]) for a in ins[0])), None


def _transpose(e: Eqn, ins: list) -> tuple:
    perm = list(e.params["permutation"])
    return (None if ins[0] is None else frozenset(perm.index(a) for a in ins[0])), None


def _reshape(e: Eqn, ins: list) -> tuple:
    if ins[0] is None:
        return None, None
    a_shape, b_shape = e.invars[0].shape, e.outvars[0].shape
    out = set()
    for a in ins[0]:
        before = int(np.prod(a_shape[:a]))
        match = [j for j in range(len(b_shape)) if b_shape[j] == a_shape[a] and int(np.prod(b_shape[:j])) == before]
        if not match:
            return None, None  # merged with another axis: stop tracking
        out.add(match[0])
    return frozenset(out), None


def _reduce(removed: Callable[[Eqn], tuple]) -> Callable:
    def rule(e: Eqn, ins: list) -> tuple:
        axes = set(removed(e))
        for a, v in zip(ins, e.invars):
            if a and a & axes:
                return None, min(a & axes)
        a = _unite(ins[:1])
        return (None if a is None else frozenset(k - sum(r < k for r in axes) for k in a)), None

    return rule


def _along(param: str) -> Callable:
    def rule(e: Eqn, ins: list) -> tuple:
        axis = e.params[param]
        for a in ins:
            if a and axis in a:
                return None, axis
        return _same(e, ins)

    return rule


def _windowed(e: Eqn, ins: list) -> tuple:
    window = e.params["window_dimensions"]
    for a in ins:
        for k in a or ():
            if k < len(window) and window[k] > 1:
                return None, k
    return _same(e, ins)


def _dot_general(e: Eqn, ins: list) -> tuple:
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    ranks = [len(v.shape) for v in e.invars[:2]]
    out = set()
    for side, (a, contract, batch) in enumerate(((ins[0], lc, lb), (ins[1], rc, rb))):
        for k in a or ():
            if k in contract:
                return None, k
            if k in batch:
                out.add(list(batch).index(k))
            else:
                free = [i for i in range(ranks[side]) if i not in contract and i not in batch]
                offset = len(lb) + (0 if side == 0 else ranks[0] - len(lc) - len(lb))
                out.add(offset + free.index(k))
    return (frozenset(out) if any(a is not None for a in ins[:2]) else None), None


def _conv(e: Eqn, ins: list) -> tuple:
    dn = e.params["dimension_numbers"]
    a = ins[0]
    if a is None:
        return None, None
    for k in a:
        if k != dn.lhs_spec[0]:
            return None, k
    return frozenset({dn.out_spec[0]}), None


def _squeeze(e: Eqn, ins: list) -> tuple:
    dims = set(e.params["dimensions"])
    if ins[0] is None:
        return None, None
    return frozenset(k - sum(d < k for d in dims) for k in ins[0] if k not in dims), None


# ------------------------------------------------------------------ axis rules

AxisRule = Callable[[Eqn, list], tuple]
#: Primitive name -> its axis rule: ``rule(eqn, ins) -> (out, mixed)``, with ``ins``
#: the example axes of the operands (``None``: not tracked), ``out`` those of the
#: outputs and ``mixed`` an example axis it reduces over (``None``: none). Filled
#: from the tables of :mod:`jaxlrp._core.primitives`, as ``TREATMENTS`` is
#: (a primitive in none is not tracked: see ``primitives.AXES_UNTRACKED``).
AXIS_RULES: dict = {}


def _define(names, rule: AxisRule) -> None:
    """Register ``rule`` for every primitive in ``names`` (each only once)."""
    P.register(AXIS_RULES, names, rule, "axis rule")


def _define_linear(kind: str, rule: AxisRule) -> None:
    """Register ``rule`` for the linear layers (:data:`~jaxlrp._core.primitives.LINEAR`) of ``kind``."""
    _define([name for name, k in P.LINEAR.items() if k == kind], rule)


def _define_along(params: dict) -> None:
    """Register a scan along one axis for every ``name -> parameter naming the axis``."""
    for name, param in params.items():
        _define([name], _along(param))


_define(P.AXES_SAME, _same)
_define(P.AXES_BROADCAST, _broadcast)
_define(P.AXES_TRANSPOSE, _transpose)
_define(P.AXES_RESHAPE, _reshape)
_define(P.AXES_SQUEEZE, _squeeze)
_define(P.AXES_REDUCE, _reduce(lambda e: tuple(e.params["axes"])))
_define_along(P.AXES_ALONG)
_define(P.AXES_WINDOWED, _windowed)
_define_linear("dense", _dot_general)
_define_linear("conv", _conv)
if AXIS_RULES.keys() & P.AXES_UNTRACKED:
    raise AssertionError("a primitive both has an axis rule and is listed as not tracked")


def find_mixing(program: Program, tainted: set, example_axes: dict) -> Optional[tuple]:
    """The first equation on the relevance path that mixes examples.

    ``example_axes`` maps input variables to their example axes. Returns ``(eqn,
    reason)`` or ``None``.
    """
    return _follow(program, tainted, example_axes)[1]


def output_axes(program: Program, example_axes: dict) -> Axes:
    """The axes of the (first) output that carry the inputs' ``example_axes``."""
    axes, _ = _follow(program, None, example_axes)
    out = program.outvars[0]
    return axes.get(out) if isinstance(out, Var) else None


def _follow(program: Program, tainted: Optional[set], example_axes: dict) -> tuple:
    """``(axes, mixing)``: the example axes of every tracked variable, and the first
    mixing equation on the relevance path (``tainted``; ``None``: do not look)."""
    axes: dict = dict(example_axes)
    random: set = set()
    for e in program.eqns:
        ins = [axes.get(a) if isinstance(a, Var) else None for a in e.invars]
        on_path = tainted is not None and any(isinstance(a, Var) and a in tainted for a in e.invars)
        if e.prim.name in P.RANDOM or any(isinstance(a, Var) and a in random for a in e.invars):
            if on_path:
                return axes, (e, "uses random numbers on the relevance path (active dropout?)")
            random.update(e.outvars)
            continue
        rule = AXIS_RULES.get(e.prim.name)
        if rule is None or not any(a is not None for a in ins):
            continue
        out, mixed = rule(e, ins)
        if mixed is not None and on_path:
            shape = e.invars[0].shape
            return axes, (e, (
                f"reduces over axis {mixed} of a {tuple(shape)} value, which indexes examples "
                "(batch statistics, e.g. BatchNorm in training mode)"
            ))
        if out:
            for v in e.outvars:
                axes[v] = out
    return axes, None
