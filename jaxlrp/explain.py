"""``lrp`` and ``value_and_lrp``: LRP as a function transformation.

``jaxlrp.lrp(fn, composite=...)`` returns a function with ``fn``'s signature that
returns the relevance of one argument (by default the last) for a chosen output, the
way :func:`jax.grad` returns a gradient. The function is traced to a jaxpr,
re-evaluated by the LRP interpreter (:mod:`jaxlrp._interpreter`) and differentiated
with :func:`jax.vjp`, seeded with the output relevance. The result composes with
:func:`jax.jit`, :func:`jax.vmap` and sharded inputs like any JAX function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import composites as _composites
from ._interpreter import Analysis, _Context, analyze, evaluate
from ._program import flatten
from .composites import Composite, Matcher
from .rules import Rule

__all__ = ["lrp", "value_and_lrp"]

Array = Any


@dataclasses.dataclass(eq=False)
class Traced:
    """``fn`` traced and analysed for one set of argument shapes."""

    analysis: Analysis
    layers: tuple  # Layer, indexed by Layer.index, with unique keys
    rules: dict  # layer index -> Rule
    flat_args: list
    explained: list  # indices into flat_args
    treedefs: list  # of the explained arguments
    argnums: tuple
    single: bool  # argnums was an int
    example_ndim: int  # leading axes of the output that index examples


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


def trace(fn: Callable, composite: Composite, argnums, args: Sequence) -> Traced:
    """Trace ``fn`` on ``args``, analyse it and assign rules."""
    nums, single = _argnums(argnums, len(args))
    flat, taint, prov, treedefs, explained = [], [], [], [], []
    structure = []
    for i, a in enumerate(args):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(a)
        structure.append((len(leaves), treedef))
        if i in nums:
            treedefs.append(treedef)
        for path, leaf in leaves:
            if i in nums:
                if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                    raise TypeError(
                        f"the explained argument {i} has a leaf of dtype {jnp.result_type(leaf)} at "
                        f"'{_path_str(path, i)}'; relevance needs floating-point inputs"
                    )
                explained.append(len(flat))
            flat.append(leaf)
            taint.append(i in nums)
            prov.append(set() if i in nums else {_path_str(path, i)})

    def flat_fn(*leaves):
        rebuilt, k = [], 0
        for n, treedef in structure:
            rebuilt.append(jax.tree_util.tree_unflatten(treedef, leaves[k:k + n]))
            k += n
        return fn(*rebuilt)

    closed = jax.make_jaxpr(flat_fn)(*flat)
    if len(closed.out_avals) != 1 or closed.out_avals[0].shape is None:
        raise TypeError(f"the explained function must return one array, got {len(closed.out_avals)} outputs")
    if not jnp.issubdtype(closed.out_avals[0].dtype, jnp.inexact):
        raise TypeError(f"the explained function must return a floating-point array, got {closed.out_avals[0]}")
    ctx = _Context(composite)
    an = analyze(flatten(closed.jaxpr, closed.consts), taint, prov, [0] * len(flat), ctx)
    layers = _with_keys(ctx.layers)
    rules = dict(enumerate(composite.assign(layers)))
    example_ndim = max(len(closed.out_avals[0].shape) - 1, 0)
    return Traced(an, layers, rules, flat, explained, treedefs, nums, single, example_ndim)


def _with_keys(layers: list) -> tuple:
    seen: dict = {}
    out = []
    for layer in layers:
        base = layer.name or layer.kind
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(dataclasses.replace(layer, key=base if n == 0 else f"{base}#{n}"))
    return tuple(out)


def top_level_nodes(t: Traced) -> dict:
    """Layer index -> NodeSpec for the nodes outside control flow (they can be tapped)."""
    return {spec.layer.index: spec for spec in t.analysis.nodes.values()}


def run(t: Traced, target, output_relevance, tapped: Sequence[int] = ()):
    """Evaluate under ``jax.vjp``; returns ``(out, relevance leaves, tap relevances)``."""
    nodes = top_level_nodes(t)
    eqns = t.analysis.program.eqns
    taps = {}
    for i in tapped:
        spec = nodes[i]
        e = eqns[spec.eqn]
        taps[i] = (
            tuple(jnp.zeros(e.invars[k].shape, e.invars[k].dtype) for k in spec.tainted),
            jnp.zeros(spec.out.shape, spec.out.dtype),
        )

    def f(x_leaves, taps):
        vals = list(t.flat_args)
        for j, x in zip(t.explained, x_leaves):
            vals[j] = x
        (out,) = evaluate(t.analysis, t.rules, vals, taps, example_ndim=t.example_ndim)
        return out

    x_leaves = [t.flat_args[j] for j in t.explained]
    out, pull = jax.vjp(f, x_leaves, taps)
    seed = initial_relevance(out, target, output_relevance)
    rel, tap_rel = pull(seed)
    return out, rel, tap_rel


def unflatten_relevance(t: Traced, leaves: list):
    trees, k = [], 0
    for treedef in t.treedefs:
        n = treedef.num_leaves
        trees.append(jax.tree_util.tree_unflatten(treedef, leaves[k:k + n]))
        k += n
    return trees[0] if t.single else tuple(trees)


def _concrete(a) -> Optional[np.ndarray]:
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def initial_relevance(out: Array, target, output_relevance) -> Array:
    """The relevance that starts the backward pass.

    With ``target`` (an int, an int array over the example axes ``out.shape[:-1]``,
    or ``None`` for the per-example argmax) it is the selected output's own value and
    zero elsewhere; ``output_relevance`` is used as given.
    """
    if output_relevance is not None:
        if target is not None:
            raise ValueError("pass either target= or output_relevance=, not both")
        r = jnp.asarray(output_relevance)
        if r.shape != out.shape:
            raise ValueError(
                f"output_relevance has shape {r.shape}, but the function's output has shape {out.shape}"
            )
        return r.astype(out.dtype)
    if out.ndim == 0:
        if target is not None:
            raise ValueError("the function returns a scalar, so target must be None")
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
    onehot = jax.nn.one_hot(jnp.broadcast_to(index, example_shape), classes, dtype=out.dtype)
    return out * onehot


def _layer_matcher(layers: Union[None, Matcher, Sequence[Matcher]]):
    if layers is None:
        return None
    if isinstance(layers, (list, tuple)):
        return _composites.any_of(*layers)
    return _composites.as_matcher(layers)


def _per_layer(t: Traced, matcher, tap_rel) -> dict:
    out = {}
    for i in sorted(tap_rel):
        rel = tap_rel[i][0]
        out[t.layers[i].key] = rel[0] if len(rel) == 1 else tuple(rel)
    return out


def _selected(t: Traced, matcher) -> list:
    if matcher is None:
        return []
    return [i for i in top_level_nodes(t) if matcher(t.layers[i])]


def value_and_lrp(
    fn: Callable,
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
) -> Callable:
    """Like :func:`lrp`, but the returned function gives ``(output, relevance)``.

    With ``layers=``, it gives ``(output, (relevance, per_layer))``.
    """
    comp = _composites.resolve(composite, rule)

    @functools.wraps(fn)
    def explain(*args, target=None, output_relevance=None, layers=None):
        t = trace(fn, comp, argnums, args)
        matcher = _layer_matcher(layers)
        if layers is not None:  # a name/parameter pattern that matches nothing: warn (or raise)
            patterns = layers if isinstance(layers, (list, tuple)) else [layers]
            _composites.check_matches(patterns, t.layers, strict=comp.strict, where="layers= pattern")
        out, rel, tap_rel = run(t, target, output_relevance, _selected(t, matcher))
        relevance = unflatten_relevance(t, rel)
        if layers is None:
            return out, relevance
        return out, (relevance, _per_layer(t, matcher, tap_rel))

    return explain


def lrp(
    fn: Callable,
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
) -> Callable:
    """Layer-wise relevance propagation of ``fn`` as a function transformation.

    Parameters
    ----------
    fn:
        A JAX function, e.g. ``model.apply`` of a Flax module. It must return one
        floating-point array whose last axis indexes the outputs to explain (the
        leading axes index examples), or a scalar.
    composite:
        Which rule each layer gets: a :class:`~jaxlrp.composites.Composite` or a
        preset name such as ``"epsilon_plus_flat"``. Default: LRP-ε (``ε=1e-6``) on
        every dense and conv layer.
    rule:
        Instead of ``composite``: one rule for every dense and conv layer.
    argnums:
        Which positional argument(s) to explain (default: the last). Pytrees are
        allowed; the relevance has the same structure.

    Returns
    -------
    callable
        ``explain(*args, target=None, output_relevance=None, layers=None)``:

        * ``target``: an int, or an int array of the output's example shape
          ``out.shape[:-1]``, or ``None`` for each example's argmax. The initial
          relevance is the selected output's value (so with conservative rules the
          relevance of one example sums to ``f_c(x)``).
        * ``output_relevance``: the initial relevance itself (shape of the output);
          a one-hot gives Zennit's convention.
        * ``layers``: a matcher (or list of matchers, see
          :mod:`jaxlrp.composites`); then ``(relevance, per_layer)`` is returned,
          ``per_layer`` mapping each matched layer's key to the relevance arriving at
          its input (a tuple for layers with several inputs, such as residual adds).
          Layers inside ``scan``/``cond`` bodies are not reported.

        The relevance has the shape and dtype of the explained argument.

    Examples
    --------
    >>> explain = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
    >>> R = jax.jit(explain)(variables, x, target=3)
    """
    vl = value_and_lrp(fn, composite, rule=rule, argnums=argnums)

    @functools.wraps(fn)
    def explain(*args, target=None, output_relevance=None, layers=None):
        return vl(*args, target=target, output_relevance=output_relevance, layers=layers)[1]

    return explain
