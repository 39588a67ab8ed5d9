"""Which axes of each value index examples, and where the relevance path mixes them.

An explanation is per example: the relevance of one example must not depend on the
others in the batch. A model in training mode breaks that without a sign:
BatchNorm with batch statistics reduces over the batch axis, and active dropout
multiplies by a random mask. This module follows the example axes of the explained
input through the program (a table from primitive to how it moves axes, in the
style of JAX's batching rules) and reports the first equation on the relevance path
that reduces over one of them, or that uses random numbers.

Tracking is conservative: where a primitive is not in the table (gathers, control
flow, unusual reshapes), its outputs are no longer tracked and nothing is reported,
so a report is always a real reduction over the example axes.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from . import primitives as P
from .program import Eqn, Program, Var

Axes = Optional[frozenset]  # example axes of a value; None: not tracked

# Primitives that draw random numbers or operate on keys.
RANDOM = frozenset({"random_bits", "random_seed", "random_wrap", "random_unwrap", "threefry2x32", "rng_bit_generator"})

# Elementwise (the interpreter's table) and other shape-preserving primitives: each
# axis stays where it is.
SAME = P.ELEMENTWISE | frozenset(
    """stop_gradient sharding_constraint optimization_barrier pad rev slice dynamic_slice
    dynamic_update_slice concatenate""".split()
)

# Reductions over ``params["axes"]``.
REDUCE_AXES = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax", "argmin"})
# Scans along ``params["axis"]`` (or ``dimension`` for sort).
ALONG_AXIS = {"cumsum": "axis", "cumprod": "axis", "cummax": "axis", "cummin": "axis", "cumlogsumexp": "axis", "sort": "dimension"}
# Windowed reductions over ``params["window_dimensions"]``.
WINDOWED = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"})


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


def _table() -> dict:
    table: dict = {name: _same for name in SAME}
    table.update(broadcast_in_dim=_broadcast, transpose=_transpose, reshape=_reshape)
    table.update({name: _reduce(lambda e: tuple(e.params["axes"])) for name in REDUCE_AXES})
    table.update({name: _along(param) for name, param in ALONG_AXIS.items()})
    table.update({name: _windowed for name in WINDOWED})
    table.update(squeeze=_squeeze, dot_general=_dot_general, conv_general_dilated=_conv)
    return table


_RULES = _table()


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
        if e.prim.name in RANDOM or any(isinstance(a, Var) and a in random for a in e.invars):
            if on_path:
                return axes, (e, "uses random numbers on the relevance path (active dropout?)")
            random.update(e.outvars)
            continue
        rule = _RULES.get(e.prim.name)
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
