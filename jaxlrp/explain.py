"""``lrp`` and ``value_and_lrp``: LRP as a function transformation.

``jaxlrp.lrp(fn, composite=...)`` returns a function with ``fn``'s signature that
returns the relevance of one argument (by default the last) for a chosen output, the
way :func:`jax.grad` returns a gradient. The function is traced to a jaxpr,
re-evaluated by the LRP interpreter (:mod:`jaxlrp._interpreter`) and differentiated
with :func:`jax.vjp`, seeded with the output relevance. The result composes with
:func:`jax.jit`, :func:`jax.vmap` and sharded inputs like any JAX function. Called
eagerly (under no transformation), it runs as one compiled program, cached with the
explainer per argument structure, shapes and dtypes (:class:`_Compiled`).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import sys
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import composites as _composites
from ._errors import TrainingModeError, UnsupportedOperationError
from ._example_axes import find_mixing, output_axes
from ._analysis import Analysis, _Context, analyze, start_values
from ._interpreter import evaluate, layers_within
from ._program import flatten
from .composites import Composite, Matcher
from .rules import Rule

_trace_state_clean: Optional[Callable[[], bool]]
try:  # whether a JAX transformation is tracing (private; without it, tracer arguments are checked only)
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover
    _trace_state_clean = None

__all__ = ["lrp", "value_and_lrp", "AmbiguousOutputWarning"]

Array = jax.Array
#: ``target=`` of an explainer: an output index, an int array over the output's example
#: axes, a boolean or float mask over the output (dense outputs), or ``None`` (each
#: example's argmax).
Target = Union[int, ArrayLike, None]
#: ``layers=`` of an explainer: a matcher or a sequence of matchers (:mod:`jaxlrp.composites`).
LayerSelection = Union[None, Matcher, Sequence[Matcher]]


@dataclasses.dataclass(eq=False)
class _Traced:
    """``fn`` traced and analysed for one set of argument shapes."""

    analysis: Analysis
    layers: tuple  # Layer, indexed by Layer.index, with unique keys
    rules: dict  # layer index -> Rule
    flat_args: list
    explained: list  # indices into flat_args
    argnums: tuple
    single: bool  # argnums was an int
    example_ndim: int  # leading axes of the output that index examples
    slots: list  # per argument: (treedef, [(traced, index into flat_args or static value)])
    starts: list  # start variables (explaining from a layer)


def _argnums(argnums, nargs: int) -> tuple:
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


def _path_str(path, i: int) -> str:
    s = jax.tree_util.keystr(path, simple=True, separator="/")
    return s or f"arg{i}"


def _is_array(leaf) -> bool:
    """Array leaves are traced; every other leaf (an activation function in an
    Equinox module, a string, ``None`` fields) is static, as ``eqx.filter_jit``
    treats it. Python scalars are arrays here only in the explained argument."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic)) or hasattr(leaf, "__jax_array__")


def _check_explained_leaf(leaf, path, i: int) -> None:
    dtype = jnp.result_type(leaf)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"the explained argument {i} has a complex leaf at '{_path_str(path, i)}'; relevance is "
            "defined for real inputs (explain the real and imaginary parts as separate real arguments)"
        )
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"the explained argument {i} has a leaf of dtype {dtype} at '{_path_str(path, i)}'; "
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
        s = _path_str(path, 0)
        if _PARAMETER_WORDS.intersection(s.lower().split("/")):
            return s
        if _is_array(leaf):
            kinds.add(bool(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)))
    return _path_str(leaves[0][0], 0) if kinds == {True, False} else None


def _check_not_parameters(args: Sequence, nums: tuple) -> None:
    """Refuse explaining the parameters when another argument is the input: the
    ``jax.grad`` habit ``argnums=0`` on ``model.apply(variables, x)``, which would
    otherwise explain the weights or fail with a false diagnosis."""
    inputs = [j for j, a in enumerate(args) if j not in nums and _is_array(a)
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


def _flatten_args(args: Sequence, nums: tuple):
    """Split ``args`` into traced leaves and static ones; ``(flat, taint, prov, explained,
    slots)`` where ``slots`` rebuilds the arguments from the traced leaves."""
    flat, taint, prov, explained, slots = [], [], [], [], []
    for i, a in enumerate(args):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(a)
        slot = []
        for path, leaf in leaves:
            if i in nums and (_is_array(leaf) or isinstance(leaf, (int, float, complex))):
                _check_explained_leaf(leaf, path, i)
                explained.append(len(flat))
            elif not _is_array(leaf):
                slot.append((False, leaf))  # static
                continue
            slot.append((True, len(flat)))
            flat.append(leaf)
            taint.append(i in nums)
            prov.append(set() if i in nums else {_path_str(path, i)})
        slots.append((treedef, slot))
    return flat, taint, prov, explained, slots


def _trace(
    fn: Callable, composite: Composite, argnums, args: Sequence, start: Optional[str] = None,
    example_axes: Optional[int] = None, data_argnum: Optional[int] = None,
) -> _Traced:
    """Trace ``fn`` on ``args``, analyse it and assign rules. With ``start=``, the
    argument ``data_argnum`` holds the token ids; by default every argument that
    holds none of the parameters ``start`` matches (see :func:`_start_data`)."""
    nums, single = _argnums(argnums, len(args))
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
    ctx = _Context()
    an = analyze(program, taint, prov, [0] * len(flat), ctx, starts=frozenset(starts))
    _check_per_example(an, explained, starts, example_ndim, out_shape)
    layers = _with_keys(ctx.layers)
    rules = dict(enumerate(composite.assign(layers)))
    _check_probabilities(an, layers, composite)
    return _Traced(an, layers, rules, flat, explained, nums, single, example_ndim, slots, starts)


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
            stacklevel=4,
        )
    return max(ndim - 1, 0)


class AmbiguousOutputWarning(UserWarning):
    """A 1-D output could index examples or outputs; see ``example_axes`` of :func:`lrp`."""


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
    argument (the token ids), see :func:`jaxlrp._analysis.start_values`."""
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


def _check_probabilities(an: Analysis, layers: tuple, composite: Composite) -> None:
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


def _top_level_nodes(t: _Traced) -> dict:
    """Layer index -> NodeSpec for the nodes outside control flow (they can be tapped)."""
    return {spec.layer.index: spec for spec in t.analysis.nodes.values()}


def _tappable(an: Analysis, stack: tuple = ()) -> dict:
    """Layer index -> ``(NodeSpec, Analysis, stack)`` for the nodes that can be
    tapped: those outside control flow (``stack == ()``) and those in ``lax.scan``
    bodies, whose taps (and per-layer relevance) are stacked over the iterations
    (``stack == (length, ...)``, outer scan first). Nodes in ``cond`` branches and
    ``shard_map`` bodies are left out."""
    out = {spec.layer.index: (spec, an, stack) for spec in an.nodes.values()}
    for i, subs in an.subs.items():
        e = an.program.eqns[i]
        if e.prim.name == "scan":
            out.update(_tappable(subs[0], stack + (e.params["length"],)))
    return out


def _run(t: _Traced, target, output_relevance, tapped: Sequence[int] = (), masks: Optional[dict] = None):
    """Evaluate under ``jax.vjp``; returns ``(out, relevance leaves, tap relevances)``.

    ``masks``: layer index -> ``(m, s)``, see :func:`jaxlrp._interpreter.evaluate`."""
    out, back = _linearized(t, tapped, masks)
    rel, tap_rel = back(_initial_relevance(out, target, output_relevance, t.example_ndim))
    return out, rel, tap_rel


def _linearized(t: _Traced, tapped: Sequence[int] = (), masks: Optional[dict] = None):
    """One forward pass under ``jax.vjp``: ``(out, back)``, where ``back(seed)`` gives
    ``(relevance leaves, tap relevances)`` for an output relevance ``seed``. ``back``
    is linear in ``seed``, so many seeds share the forward pass (``jax.vmap(back)``)."""
    nodes = _tappable(t.analysis)
    taps = {}
    for i in tapped:
        spec, an, stack = nodes[i]
        e = an.program.eqns[spec.eqn]
        taps[i] = (
            tuple(jnp.zeros(stack + e.invars[k].shape, e.invars[k].dtype) for k in spec.tainted),
            jnp.zeros(stack + spec.out.shape, spec.out.dtype),
        )

    def f(x_leaves, taps, start_taps):
        vals = list(t.flat_args)
        for j, x in zip(t.explained, x_leaves):
            vals[j] = x
        starts = dict(zip(t.starts, start_taps))
        (out,) = evaluate(
            t.analysis, t.rules, vals, taps, example_ndim=t.example_ndim, starts=starts, masks=masks
        )
        return out

    x_leaves = [t.flat_args[j] for j in t.explained]
    start_taps = [jnp.zeros(v.shape, v.dtype) for v in t.starts]
    out, pull = jax.vjp(f, x_leaves, taps, start_taps)

    def back(seed):
        rel, tap_rel, start_rel = pull(seed)
        return (start_rel if t.starts else rel), tap_rel

    return out, back


def _unflatten_relevance(t: _Traced, leaves: list):
    """The relevance in the structure of the explained arguments (``None`` at static
    leaves), or of the start values."""
    if t.starts:
        return leaves[0] if len(leaves) == 1 else tuple(leaves)
    position = {j: k for k, j in enumerate(t.explained)}
    trees = []
    for i in t.argnums:
        treedef, slot = t.slots[i]
        trees.append(jax.tree_util.tree_unflatten(
            treedef, [leaves[position[v]] if traced else None for traced, v in slot]
        ))
    return trees[0] if t.single else tuple(trees)


def _concrete(a) -> Optional[np.ndarray]:
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _initial_relevance(
    out: Array, target: Target, output_relevance: Optional[ArrayLike], example_ndim: Optional[int] = None
) -> Array:
    """The relevance that starts the backward pass.

    With ``target`` (an int, an int array over the example axes ``out.shape[:-1]``,
    or ``None`` for the per-example argmax) it is the selected output's own value and
    zero elsewhere; ``output_relevance`` is used as given. A traced target out of
    range gives NaN for that example (like JAX's out-of-bounds ``fill``), a
    concrete one raises ``ValueError``. Where every output axis indexes examples
    (``example_ndim == out.ndim``), each example's output is one value and is the
    seed itself.
    """
    if example_ndim is None:
        example_ndim = max(out.ndim - 1, 0)
    if output_relevance is not None:
        if target is not None:
            raise ValueError("pass either target= or output_relevance=, not both")
        r = jnp.asarray(output_relevance)
        if r.shape != out.shape:
            raise ValueError(
                f"output_relevance has shape {r.shape}, but the function's output has shape {out.shape}"
            )
        return r.astype(out.dtype)
    if _is_mask(target):
        return _masked(out, target)
    if out.ndim == 0 or example_ndim == out.ndim:
        if target is not None:
            raise ValueError("each example's output is a scalar, so target must be None")
        return out
    classes, example_shape = out.shape[-1], out.shape[:-1]
    if target is None:
        index = jnp.argmax(out, axis=-1)
    else:
        index = jnp.asarray(target)
        if not jnp.issubdtype(index.dtype, jnp.integer):
            raise ValueError(f"target must be an integer or an integer array, got dtype {index.dtype}")
        if index.ndim and index.shape != example_shape:
            raise ValueError(
                f"target has shape {index.shape}; expected () or the output's example shape "
                f"{example_shape} (output shape {out.shape})"
            )
        value = _concrete(target)
        if value is not None and (np.any(value < 0) or np.any(value >= classes)):
            raise ValueError(f"target {value.tolist()} out of range for {classes} outputs")
    index = jnp.broadcast_to(index, example_shape)
    onehot = jax.nn.one_hot(index, classes, dtype=out.dtype)
    bad = (index < 0) | (index >= classes)  # traced targets only: NaN marks the example
    return jnp.where(bad[..., None], jnp.nan, out * onehot)


def _is_mask(target: Target) -> bool:
    """Whether ``target`` is a mask over the output: an array (not a scalar) of
    boolean or floating dtype. Integer arrays are class indices."""
    dtype = getattr(target, "dtype", None)
    if dtype is None and isinstance(target, (list, tuple)):
        dtype = np.asarray(target).dtype
    return dtype is not None and np.ndim(target) > 0 and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.bool_))


def _masked(out: Array, target: ArrayLike) -> Array:
    r"""The initial relevance of a mask target: :math:`m \odot f(x)`, the output
    where the mask is set (weighted by a float mask), zero elsewhere."""
    mask = jnp.asarray(target)
    try:
        shape = jnp.broadcast_shapes(mask.shape, out.shape)
    except ValueError:
        shape = None
    if shape != out.shape:
        raise ValueError(f"a mask target must broadcast to the function's output shape {out.shape}, got "
                         f"shape {mask.shape}")
    return out * mask.astype(out.dtype)


def _layer_matcher(layers: LayerSelection) -> Optional[Matcher]:
    if layers is None:
        return None
    if isinstance(layers, (list, tuple)):
        return _composites.any_of(*layers)
    return _composites.as_matcher(layers)


def _per_layer(t: _Traced, tap_rel) -> dict:
    out = {}
    for i in sorted(tap_rel):
        rel = tap_rel[i][0]
        out[t.layers[i].key] = rel[0] if len(rel) == 1 else tuple(rel)
    return out


def _selected(t: _Traced, matcher) -> list:
    """The matched layers' indices; layers in a ``lax.scan`` body are tapped in
    every iteration, those in ``cond`` branches or ``shard_map`` bodies refused."""
    if matcher is None:
        return []
    nodes = _tappable(t.analysis)
    chosen = [layer.index for layer in t.layers if layer.index in layers_within(t.analysis) and matcher(layer)]
    for i in chosen:
        if i not in nodes:
            raise UnsupportedOperationError(
                "layers=", t.layers[i].name, "per-layer relevance of a layer inside a cond branch or a "
                "shard_map body is not available", "select layers outside it (layers in lax.scan bodies "
                "are available, stacked over the iterations)")
    return chosen


def _at_top_level(*trees: Any) -> bool:
    """Whether this call is eager: no JAX transformation is tracing (an outer ``jit``,
    ``vmap`` or ``grad`` sees the explainer as ordinary JAX code, and ``fn`` may close
    over its tracers) and no argument is a tracer."""
    if _trace_state_clean is not None and not _trace_state_clean():
        return False
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


class _Compiled:
    """The eager call of an explainer as one compiled program.

    An eager call would otherwise dispatch the interpreter's operations one by one
    (each custom-VJP rule body compiled on its own): seconds on a small CNN where the
    gradient's eager call takes a fraction of that. Instead, the call is traced under
    an internal :func:`jax.jit` whose static part is everything that changes the
    program: the structure of the arguments, their non-array leaves (compared by type
    and value, or identity for functions), whether ``target`` and
    ``output_relevance`` are given, and ``layers``. Arrays (the input, the
    parameters, an array or int target, a mask, an output relevance) are traced, so a
    new input or class reuses the compiled program; a new shape or dtype compiles
    once more. The cache lives with the explainer. Calls whose static part cannot be
    hashed (an unhashable leaf or matcher) run as before, uncompiled.
    """

    def __init__(self, traced: Callable, argnums, start: Optional[str]):
        self._argnums, self._start = argnums, start

        def run(static, dyn, target, output_relevance):
            treedefs, statics, target_given, layers = static
            args = _rebuild(treedefs, statics, dyn)
            return traced(args, target if target_given else None, output_relevance, layers)

        self._run = jax.jit(run, static_argnums=0)

    def __call__(self, args: Sequence, target: Target, output_relevance, layers: LayerSelection):
        if not _at_top_level(args, target, output_relevance):
            return None
        try:
            nums = () if self._start is not None else _argnums(self._argnums, len(args))[0]
        except (TypeError, ValueError):
            return None  # the uncompiled call raises the error
        treedefs, statics, dyn = _split_args(args, nums)
        if isinstance(target, (list, tuple)):
            target = np.asarray(target)
        if isinstance(layers, list):
            layers = tuple(layers)
        static = (treedefs, statics, target is not None, layers)
        try:
            hash(static)
        except TypeError:
            return None
        out, rest = self._run(static, dyn, target, output_relevance)
        _check_target_range(target, out, output_relevance)
        return out, rest


def _split_args(args: Sequence, nums: tuple) -> tuple:
    """``(treedefs, statics, dyn)``: per argument its tree structure, the non-array
    leaves as ``(position, type, value)``, and the array leaves (and Python scalars
    of the explained arguments) in order, as :func:`_flatten_args` splits them."""
    treedefs, statics, dyn = [], [], []
    for i, a in enumerate(args):
        leaves, treedef = jax.tree_util.tree_flatten(a)
        treedefs.append(treedef)
        for k, leaf in enumerate(leaves):
            if _is_array(leaf) or (i in nums and isinstance(leaf, (int, float, complex))):
                dyn.append(leaf)
            else:
                statics.append((i, k, type(leaf), leaf))
    return tuple(treedefs), tuple(statics), dyn


def _rebuild(treedefs: tuple, statics: tuple, dyn: list) -> list:
    """The arguments from :func:`_split_args`' parts."""
    fixed = {(i, k): v for i, k, _, v in statics}
    it = iter(dyn)
    args = []
    for i, treedef in enumerate(treedefs):
        n = treedef.num_leaves
        args.append(jax.tree_util.tree_unflatten(
            treedef, [fixed[(i, k)] if (i, k) in fixed else next(it) for k in range(n)]))
    return args


def _check_target_range(target: Target, out: Array, output_relevance) -> None:
    """The range check of a concrete class target (see :func:`_initial_relevance`),
    for the compiled eager call, where the target was traced (NaN marks it there)."""
    if target is None or output_relevance is not None or _is_mask(target) or out.ndim == 0:
        return
    value = np.asarray(target)
    classes = out.shape[-1]
    if np.any(value < 0) or np.any(value >= classes):
        raise ValueError(f"target {value.tolist()} out of range for {classes} outputs")


def _nnx_module(fn: Any) -> bool:
    """Whether ``fn`` is a Flax nnx module (``flax.nnx`` is then already imported)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(fn, nnx.Module)


def _for_nnx(transform: Callable, model: Any, composite, rule, **options: Any) -> Callable:
    """``transform`` of an nnx module, by :mod:`jaxlrp.flax` (one API for nnx: the same
    layer names, training mode refused, ``(x)`` or ``(state, x)``)."""
    from . import flax as _flax

    return _flax._transform(transform, model, composite, rule, None, **options)


def value_and_lrp(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    start: Optional[str] = None,
    example_axes: Optional[int] = None,
) -> Callable[..., tuple[Array, Any]]:
    """Like :func:`lrp`, but the returned function gives ``(output, relevance)``.

    With ``layers=``, it gives ``(output, (relevance, per_layer))``.
    """
    if _nnx_module(fn):
        return _for_nnx(value_and_lrp, fn, composite, rule, argnums=argnums, start=start, example_axes=example_axes)
    comp = _composites.resolve(composite, rule)

    def traced(args, target, output_relevance, layers):
        t = _trace(fn, comp, argnums, args, start=start, example_axes=example_axes)
        matcher = _layer_matcher(layers)
        if layers is not None:  # a name/parameter pattern that matches nothing: warn (or raise)
            patterns = layers if isinstance(layers, (list, tuple)) else [layers]
            _composites.check_matches(patterns, t.layers, strict=comp.strict, where="layers= pattern")
        out, rel, tap_rel = _run(t, target, output_relevance, _selected(t, matcher))
        relevance = _unflatten_relevance(t, rel)
        if layers is None:
            return out, relevance
        return out, (relevance, _per_layer(t, tap_rel))

    compiled = _Compiled(traced, argnums, start)

    @functools.wraps(fn)
    def explain(
        *args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None, layers: LayerSelection = None
    ) -> tuple[Array, Any]:
        found = compiled(args, target, output_relevance, layers)
        return traced(args, target, output_relevance, layers) if found is None else found

    # keep fn's name and docstring, not its signature: inspect.signature (and so
    # eqx.filter_jit) must see the explainer's keywords (target=, ...)
    del explain.__wrapped__
    explain.jaxlrp_config = {  # type: ignore[attr-defined]  # read by jaxlrp.dataset
        "fn": fn, "composite": comp, "argnums": argnums, "start": start, "example_axes": example_axes,
    }
    return explain


def lrp(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    start: Optional[str] = None,
    example_axes: Optional[int] = None,
) -> Callable[..., Any]:
    """Layer-wise relevance propagation of ``fn`` as a function transformation.

    Parameters
    ----------
    fn:
        A JAX function, e.g. ``model.apply`` of a Flax module, or an Equinox
        module's call (``lambda m, x: jax.vmap(m)(x)``), or a Flax nnx module
        itself (then the explainer takes ``(x)`` or ``(state, x)`` and names
        layers by module path, as :func:`jaxlrp.flax.lrp` does). It must return one
        floating-point array whose last axis indexes the outputs to explain (the
        leading axes index examples), or a scalar. Leaves of the arguments that
        are not arrays (activation functions, strings, ``None``) are static, as
        ``equinox.filter_jit`` treats them.
    composite:
        Which rule each layer gets: a :class:`~jaxlrp.composites.Composite` or a
        preset name such as ``"epsilon_plus_flat"``. Default: LRP-ε (``ε=1e-6``) on
        every dense and conv layer.
    rule:
        Instead of ``composite``: one rule for every layer of a kind it supports
        (``rules.Zero()`` is LRP-0 on dense and conv layers and on sums: gradient x
        input on ReLU networks, residual ones included).
    argnums:
        Which positional argument(s) to explain. The default is the **last**
        argument (``jax.grad``'s is the first), so that ``model.apply(variables,
        x)`` explains ``x``. Pytrees are allowed; the relevance has the same
        structure (``None`` at static leaves).
    start:
        Explain from a layer's output instead of an argument: a glob matched
        against module paths (name stacks, e.g. ``"*/word_embeddings"``) and
        parameter paths (e.g. ``"*embedding*"``). For models that take token ids:
        the relevance of the embedding output is returned (a tuple if the pattern
        selects several values), with no change to the model.
    example_axes:
        How many leading axes of the output index examples. Default: all but the
        last (a 1-D output is one example's outputs; a warning is given when that
        is ambiguous). ``example_axes=out.ndim`` means each example has one output,
        which is the initial relevance.

    Returns
    -------
    callable
        ``explain(*args, target=None, output_relevance=None, layers=None)``:

        * ``target``: an int, or an int array of the output's example shape
          ``out.shape[:-1]``, or ``None`` for each example's argmax. The initial
          relevance is the selected output's value (so with conservative rules the
          relevance of one example sums to ``f_c(x)``). A target out of range
          raises ``ValueError`` when it is concrete; under ``jit`` or ``vmap``,
          where it is traced, that example's relevance is NaN. For dense outputs
          (segmentation maps, regression fields), ``target`` may also be a
          boolean or float *mask* broadcastable to the output's shape: the
          initial relevance is ``mask * f(x)``, the output on a region of
          pixels and channels (docs: "Dense outputs").
        * ``output_relevance``: the initial relevance itself (shape of the output);
          a one-hot gives Zennit's convention.
        * ``layers``: a matcher (or list of matchers, see
          :mod:`jaxlrp.composites`); then ``(relevance, per_layer)`` is returned,
          ``per_layer`` mapping each matched layer's key to the relevance arriving at
          its input (a tuple for layers with several inputs, such as residual adds).
          A layer in a ``lax.scan`` body (scanned layers, ``nn.scan``) is reported
          once, stacked over the iterations (leading axis: the scan's length); one
          in a ``cond`` branch or ``shard_map`` body raises
          ``UnsupportedOperationError``.

        The relevance has the shape and dtype of the explained argument.

    Raises
    ------
    UnsupportedOperationError
        An operation on the relevance path has no rule (at trace time).
    TrainingModeError
        The relevance path reduces over the example axes (batch statistics) or
        uses random numbers (active dropout).

    Examples
    --------
    >>> explain = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
    >>> R = jax.jit(explain)(variables, x, target=3)
    """
    if _nnx_module(fn):
        return _for_nnx(lrp, fn, composite, rule, argnums=argnums, start=start, example_axes=example_axes)
    vl = value_and_lrp(fn, composite, rule=rule, argnums=argnums, start=start, example_axes=example_axes)

    @functools.wraps(fn)
    def explain(
        *args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None, layers: LayerSelection = None
    ) -> Any:
        return vl(*args, target=target, output_relevance=output_relevance, layers=layers)[1]

    del explain.__wrapped__
    explain.jaxlrp_config = vl.jaxlrp_config  # type: ignore[attr-defined]
    return explain
