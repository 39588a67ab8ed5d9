"""Tracing: a function and its arguments to a jaxpr, analysed, with rules assigned.

:func:`trace` splits the arguments into traced leaves and static ones, traces the
function with :func:`jax.make_jaxpr`, flattens the program, finds the start values
of ``start=`` and the number of example axes, runs the analysis
(:func:`jaxlrp._core.analysis.analyze`) and asks the composite for each layer's rule.
The result, a :class:`Traced`, is what :mod:`jaxlrp._core.run` evaluates.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import itertools
import warnings
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .analysis import Analysis, Context, Layer, analyze, start_values
from .engine import Rule
from .errors import AmbiguousOutputWarning, TrainingModeError, UnsupportedOperationError
from .example_axes import find_mixing, output_axes
from .program import Program, Var, flatten
from .types import Assigner
from .widening import NONE, Widening

__all__ = ["Traced", "trace", "argnums_tuple", "is_array", "path_str"]


@dataclasses.dataclass(eq=False)
class Traced:
    """``fn`` traced and analysed for one set of argument shapes."""

    analysis: Analysis
    layers: tuple[Layer, ...]  # indexed by Layer.index, with unique keys
    rules: dict[int, Rule]  # by layer index
    flat_args: list  # the traced leaves of the arguments
    explained: list[int]  # indices into flat_args
    argnums: tuple[int, ...]
    single: bool  # argnums was an int
    example_ndim: int  # leading axes of the output that index examples
    slots: list  # per argument: (treedef, [(traced, index into flat_args or static value)])
    starts: list[Var]  # start variables (explaining from a layer)
    widening: Widening = NONE  # how narrow float values (and their relevance) are carried


def argnums_tuple(argnums, nargs: int) -> tuple:
    if nargs == 0:
        raise TypeError("the explained function needs at least one positional argument")
    if argnums is None:
        return (nargs - 1,), True
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    for n in nums:
        if not isinstance(n, int) or not -nargs <= n < nargs:
            raise ValueError(f"argnums {argnums!r} out of range for {nargs} positional arguments")
    return tuple(n % nargs for n in nums), single


def path_str(path, i: int) -> str:
    s = jax.tree_util.keystr(path, simple=True, separator="/")
    return s or f"arg{i}"


def is_array(leaf) -> bool:
    """Array leaves are traced; every other leaf (an activation function in an
    Equinox module, a string, ``None`` fields) is static, as ``eqx.filter_jit``
    treats it. Python scalars are arrays here only in the explained argument."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic)) or hasattr(leaf, "__jax_array__")


def _check_explained_leaf(leaf, path, i: int) -> None:
    dtype = jnp.result_type(leaf)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"the explained argument {i} has a complex leaf at '{path_str(path, i)}'; relevance is "
            "defined for real inputs (explain the real and imaginary parts as separate real arguments)"
        )
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"the explained argument {i} has a leaf of dtype {dtype} at '{path_str(path, i)}'; "
            "relevance needs floating-point inputs (for token ids, explain from the embedding "
            "with start='<embedding layer>')"
        )


#: Path components that mark a pytree of model parameters (linen variables, nnx
#: state, Equinox and Haiku modules, PyTorch-style state dicts).
_PARAMETER_WORDS = frozenset({"params", "kernel", "bias", "weight", "weights", "scale", "embedding", "batch_stats"})


def _parameter_path(arg) -> Optional[str]:
    """The path of a leaf showing that ``arg`` holds model parameters rather than an
    input (a parameter name on its path, or integer leaves beside float ones), else ``None``."""
    leaves = jax.tree_util.tree_flatten_with_path(arg)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return None  # a bare array
    kinds = set()
    for path, leaf in leaves:
        s = path_str(path, 0)
        if _PARAMETER_WORDS.intersection(s.lower().split("/")):
            return s
        if is_array(leaf):
            kinds.add(bool(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)))
    return path_str(leaves[0][0], 0) if kinds == {True, False} else None


def _check_not_parameters(args: Sequence, nums: tuple) -> None:
    """Refuse explaining the parameters when another argument is the input: the
    ``jax.grad`` habit ``argnums=0`` on ``model.apply(variables, x)``, which would
    otherwise explain the weights or fail with a false diagnosis."""
    inputs = [j for j, a in enumerate(args) if j not in nums and is_array(a)
              and jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    if not inputs:
        return
    for i in nums:
        path = _parameter_path(args[i])
        if path is not None:
            j = inputs[-1]
            default = " or leave the default (the last argument)" if j == len(args) - 1 else ""
            raise ValueError(
                f"you are explaining argument {i} (the variables: it holds parameters, e.g. '{path}'); the "
                f"input is argument {j}: pass argnums={j}{default}. jaxlrp explains the input, and its "
                "default argnums is the last argument (jax.grad's is the first)"
            )


def _flatten_args(args: Sequence, nums: tuple) -> tuple[list, list[bool], list[set], list[int], list]:
    """Split ``args`` into traced leaves and static ones; ``(flat, taint, prov, explained,
    slots)`` where ``slots`` rebuilds the arguments from the traced leaves."""
    flat: list = []
    taint: list[bool] = []
    prov: list[set] = []
    explained: list[int] = []
    slots: list = []
    for i, a in enumerate(args):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(a)
        slot = []
        for path, leaf in leaves:
            if i in nums and (is_array(leaf) or isinstance(leaf, (int, float, complex))):
                _check_explained_leaf(leaf, path, i)
                explained.append(len(flat))
            elif not is_array(leaf):
                slot.append((False, leaf))  # static
                continue
            slot.append((True, len(flat)))
            flat.append(leaf)
            taint.append(i in nums)
            prov.append(set() if i in nums else {path_str(path, i)})
        slots.append((treedef, slot))
    return flat, taint, prov, explained, slots


def trace(
    fn: Callable, composite: Assigner, argnums, args: Sequence, start: Optional[str] = None,
    example_axes: Optional[int] = None, data_argnum: Optional[int] = None, relevance_dtype=jnp.float32,
) -> Traced:
    """Trace ``fn`` on ``args``, analyse it and assign rules. With ``start=``, the
    argument ``data_argnum`` holds the token ids; by default every argument that
    holds none of the parameters ``start`` matches (see :func:`_start_data`).
    Values of a float narrower than ``relevance_dtype`` are carried in it
    (:mod:`jaxlrp._core.widening`; ``None``: in their own dtype)."""
    nums, single = argnums_tuple(argnums, len(args))
    if start is not None:
        if argnums is not None:
            raise ValueError("pass either start= (explain from a layer's output) or argnums=, not both")
        nums = ()
    _check_not_parameters(args, nums)
    flat, taint, prov, explained, slots = _flatten_args(args, nums)

    def flat_fn(*leaves):
        rebuilt = [
            jax.tree_util.tree_unflatten(treedef, [leaves[v] if traced else v for traced, v in slot])
            for treedef, slot in slots
        ]
        return fn(*rebuilt)

    closed, out_tree = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
    if len(closed.out_avals) != 1 or closed.out_avals[0].shape is None or not hasattr(out_tree, "shape"):
        raise TypeError(f"the explained function must return one array, got {_describe_outputs(out_tree)}; "
                        "return the scores to explain only, e.g. lambda v, x: fn(v, x)[0] for a linen "
                        "apply(..., mutable=[...]) that returns (output, updated variables)")
    if not jnp.issubdtype(closed.out_avals[0].dtype, jnp.inexact):
        raise TypeError(f"the explained function must return a floating-point array, got {closed.out_avals[0]}")
    out_shape = tuple(closed.out_avals[0].shape)
    program = flatten(closed.jaxpr, closed.consts)
    example_ndim = _example_ndim(example_axes, out_shape, program, explained)
    starts = _starts(program, start, prov, _start_data(program, slots, prov, start, data_argnum))
    ctx = Context()
    an = analyze(program, taint, prov, [0] * len(flat), ctx, starts=frozenset(starts))
    _check_per_example(an, explained, starts, example_ndim, out_shape)
    layers = _with_keys(ctx.layers)
    rules = dict(enumerate(composite.assign(layers)))
    _check_probabilities(an, layers, composite)
    return Traced(an, layers, rules, flat, explained, nums, single, example_ndim, slots, starts,
                  _widening(program, relevance_dtype))


def _widening(program: Program, dtype) -> Widening:
    """``Widening(dtype)`` if ``program`` computes in a float narrower than ``dtype``
    (its bodies are read through the operands of their equations), else none."""
    widening = Widening(None if dtype is None else jnp.dtype(dtype))
    values = itertools.chain(program.invars, *((*e.invars, *e.outvars) for e in program.eqns))
    return widening if any(widening.narrow(v.dtype) for v in values) else NONE


def _describe_outputs(tree) -> str:
    """What a function returned, counted as the user wrote it (a 2-tuple is 2
    outputs, however many arrays its second entry holds)."""
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of {len(tree)} outputs"
    if isinstance(tree, dict):
        return f"a dict of {len(tree)} outputs ({', '.join(map(str, list(tree)[:5]))})"
    n = len(jax.tree_util.tree_leaves(tree))
    return f"a {type(tree).__name__} of {n} arrays" if n != 1 else f"{type(tree).__name__}"


def _example_ndim(example_axes: Optional[int], out_shape: tuple, program, explained: list) -> int:
    """How many leading output axes index examples (see :func:`lrp`).

    A 1-D output is one example's outputs; a warning says so when the output's axis
    is the explained input's leading axis, carried through the program.
    """
    ndim = len(out_shape)
    if example_axes is not None:
        if not isinstance(example_axes, int) or not 0 <= example_axes <= ndim:
            raise ValueError(f"example_axes={example_axes!r} must be an int in [0, {ndim}] for an output of shape {out_shape}")
        return example_axes
    leading = {program.invars[j]: frozenset({0}) for j in explained if len(program.invars[j].shape) >= 2}
    if ndim == 1 and leading and 0 in (output_axes(program, leading) or ()):
        warnings.warn(
            f"the function returns shape {out_shape} for an input with a leading axis of the same size: "
            "it is taken as ONE example with that many outputs (target=None explains only the largest). "
            "If each entry is one example's output, pass example_axes=1; pass example_axes=0 to silence "
            "this warning.",
            AmbiguousOutputWarning,
            stacklevel=5,
        )
    return max(ndim - 1, 0)


def _start_data(program, slots: list, prov: list, start: Optional[str], data_argnum: Optional[int]) -> list:
    """The variables of the data a start parameter is read with (the token ids):
    argument ``data_argnum``, or every argument holding none of the parameters that
    ``start`` matches (ids and masks alike: the first value that depends on the table
    and on them is the lookup, whatever reads the mask later)."""
    if start is None:
        return []
    if data_argnum is not None:
        chosen = [slots[data_argnum]]
    else:
        def holds_match(slot) -> bool:
            return any(traced and any(fnmatch.fnmatchcase(q, start) for q in prov[j]) for traced, j in slot)

        chosen = [(treedef, slot) for treedef, slot in slots if not holds_match(slot)]
    return [program.invars[j] for _, slot in chosen for traced, j in slot if traced]


def _starts(program, start: Optional[str], prov: list, data: list) -> list:
    """The start values of ``start=``; ``data`` are the variables of the last
    argument (the token ids), see :func:`jaxlrp._core.analysis.start_values`."""
    if start is None:
        return []
    if not isinstance(start, str):
        raise TypeError(f"start must be a glob on a layer name or parameter path, got {start!r}")
    found = start_values(program, start, prov, data)
    if not found:
        names = sorted({e.name for e in program.eqns if e.name} | set().union(*prov))
        close = difflib.get_close_matches(start, names, n=5, cutoff=0.3)
        hint = f"; close names: {', '.join(close)}" if close else f"; layer names: {', '.join(names[:10])}"
        raise ValueError(f"start={start!r} matches no layer of the function{hint}")
    return found


def _check_per_example(an: Analysis, explained: list, starts: list, example_ndim: int, out_shape: tuple) -> None:
    """Raise :class:`TrainingModeError` where the relevance path mixes examples.

    Only the first axis is followed (the batch): later example axes, such as the
    tokens of a per-token output, may be mixed by design (attention).
    """
    inputs = [an.program.invars[j] for j in explained] + list(starts)
    axes = {v: frozenset({0}) for v in inputs if example_ndim and v.shape and v.shape[0] == out_shape[0]}
    found = find_mixing(an.program, an.tainted, axes)
    if found is not None:
        e, reason = found
        raise TrainingModeError([f"'{e.name or '<top level>'}': {e.prim.name} {reason}"])


def _check_probabilities(an: Analysis, layers: tuple, composite: Assigner) -> None:
    """Refuse explaining probabilities: a softmax at the function's output whose rule
    is the default one (the softmax rule of AttnLRP is meant for attention; at the
    output it sends most of the relevance to the softmax's bias, and the input's
    relevance no longer sums to the probability). As Zennit's and LXT's users are
    told, the logit is what LRP explains. A rule given to the softmax explicitly in
    the composite (``("softmax", rules.Softmax())``) is an informed choice and used."""
    for i in an.output_softmax:
        layer = layers[i]
        if not composite.chosen(layer):
            raise UnsupportedOperationError(
                layer.primitive, layer.name,
                "the function returns probabilities (a softmax with no layer after it); LRP explains the "
                "logit, and the default softmax rule (meant for attention) would absorb most of the relevance",
                "explain the logits: pass the function without its final softmax, e.g. "
                "lambda v, x: model.apply(v, x) returning the scores before jax.nn.softmax (the relevance of "
                "class c then sums to its logit); to explain the probability anyway, give the softmax a rule "
                "in the composite, e.g. Composite([('softmax', rules.Softmax())])",
            )


def _with_keys(layers: list) -> tuple:
    seen: dict = {}
    out = []
    for layer in layers:
        base = layer.name or layer.kind
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(dataclasses.replace(layer, key=base if n == 0 else f"{base}#{n}"))
    return tuple(out)
