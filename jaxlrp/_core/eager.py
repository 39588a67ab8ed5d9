"""A call of an explainer outside ``jax.jit``, run as one compiled program.

Called eagerly (or under ``jax.vmap`` or ``jax.grad`` alone), an explainer would
dispatch the interpreter's operations one by one, each custom-VJP rule body
compiled on its own: seconds on a small CNN, where the gradient's eager call takes
a fraction of that. :class:`CompiledCall` runs such a call under one internal
:func:`jax.jit`, cached with the explainer (issue 23, "time to the first
explanation"); :class:`CompiledFunction` does the same for the other entry points.
Under an enclosing ``jax.jit`` the call is traced into it as before.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .run import check_target_range, is_mask
from .trace import argnums_tuple, is_array
from .types import Array, LayerSelection, Target

__all__ = ["CompiledCall", "CompiledFunction", "NOT_RUN", "when_eager"]


def _outside_jit() -> bool:
    """Whether no ``jax.jit`` (or other staging transformation) is tracing this call:
    there, an operation on constants gives a tracer. Under ``jax.vmap`` or
    ``jax.grad`` alone it gives a value, and a compiled call composes with them."""
    return not isinstance(jnp.zeros((), jnp.int32) + 0, jax.core.Tracer)


#: What :class:`CompiledFunction` returns for a call it does not run.
NOT_RUN = object()


class CompiledFunction:
    """``fn(*args, **kwargs)`` called outside ``jax.jit``, run as one compiled program.

    The mechanism of :class:`CompiledCall`, and of the other entry points
    (:func:`jaxlrp.inspect`, :func:`jaxlrp.generation.explain_generation`, the
    functions of :mod:`jaxlrp.concepts`): the array leaves of the arguments,
    keyword arguments included, are traced; their tree structure and other leaves
    (ints, strings, functions) are the static part, by which the compiled programs
    are cached here. Dicts in the result keep their order (``jax.jit`` would sort
    their keys). With ``has_aux``, ``fn`` returns ``(out, aux)``: ``aux`` is any
    Python value computed while tracing (e.g. a description of the traced
    program), kept with the compiled program and returned with each call's ``out``.
    """

    def __init__(self, fn: Callable, has_aux: bool = False):
        self._has_aux = has_aux
        self._layouts: dict = {}  # static part -> (the result's dict orders, aux), set when traced

        def run(static, dyn):
            treedefs, statics = static
            *args, kwargs = _rebuild(treedefs, statics, dyn)
            out, aux = fn(*args, **kwargs) if has_aux else (fn(*args, **kwargs), None)
            layout, out = _unordered(out)
            self._layouts[static] = layout, aux
            return out

        self._run = jax.jit(run, static_argnums=0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` compiled, or :data:`NOT_RUN` where ``jax.jit`` is
        tracing the call or its static part cannot be hashed: the caller then calls
        ``fn`` itself."""
        return self.call(args, kwargs)

    def call(self, args: Sequence, kwargs: dict, scalars: tuple = ()) -> Any:
        """:meth:`__call__`, where the Python scalars (ints, floats) of the arguments
        at the positions ``scalars`` are traced too, not static."""
        if not _outside_jit():
            return NOT_RUN
        treedefs, statics, dyn = _split_args((*args, kwargs), scalars)
        static = (treedefs, statics)
        try:
            hash(static)
        except TypeError:
            return NOT_RUN
        out = self._run(static, dyn)
        layout, aux = self._layouts[static]
        return (_ordered(layout, out), aux) if self._has_aux else _ordered(layout, out)


def when_eager(fn: Callable) -> Callable:
    """``fn``, run as one compiled program when called outside ``jax.jit`` (:class:`CompiledFunction`)."""
    compiled = CompiledFunction(fn)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        out = compiled(*args, **kwargs)
        return fn(*args, **kwargs) if out is NOT_RUN else out

    return call


class CompiledCall:
    """The call of an explainer outside ``jax.jit`` as one compiled program.

    An eager call (or one under ``jax.vmap`` or ``jax.grad`` alone: the compiled
    program is then batched or differentiated) would otherwise dispatch the
    interpreter's operations one by one (each custom-VJP rule body compiled on its
    own): seconds on a small CNN where the gradient's eager call takes a fraction of
    that. Instead, the call runs as a :class:`CompiledFunction`, whose static part
    is everything that changes the program: the structure of the arguments, their
    non-array leaves (compared by type and value, or identity for functions),
    whether ``target`` and ``output_relevance`` are given, and ``layers``. Arrays
    (the input, the parameters, an array or int target, a mask, an output
    relevance) and the explained arguments' Python scalars are traced, so a new
    input or class reuses the compiled program; a new shape or dtype compiles once
    more. The cache lives with the explainer. Calls whose static part cannot be
    hashed (an unhashable leaf or matcher) run as before, uncompiled. The per-layer
    relevance of ``layers=`` keeps its program order (``"layers#2"`` before
    ``"layers#10"``, where :func:`jax.jit` would sort the keys).
    """

    def __init__(self, traced: Callable, argnums, start: Optional[str]):
        self._argnums, self._start = argnums, start

        def run(*args, layers):
            *explained, target, output_relevance = args
            return traced(explained, target, output_relevance, layers)

        self._compiled = CompiledFunction(run)

    def __call__(self, args: Sequence, target: Target, output_relevance, layers: LayerSelection):
        try:
            nums = () if self._start is not None else argnums_tuple(self._argnums, len(args))[0]
        except (TypeError, ValueError):
            return None  # the uncompiled call raises the error
        if isinstance(target, (list, tuple)):
            target = np.asarray(target)
        if isinstance(layers, list):
            layers = tuple(layers)
        # the explained arguments' Python scalars and an int target are traced too
        found = self._compiled.call((*args, target, output_relevance), {"layers": layers}, scalars=(*nums, len(args)))
        if found is NOT_RUN:
            return None
        _check_target_range(target, found[0], output_relevance)
        return found


def _unordered(tree: Any) -> tuple:
    """``(layout, tree)`` with every dict (in lists, tuples and dicts) replaced by the
    tuple of its values in insertion order; ``layout`` holds the keys."""
    if type(tree) is dict:
        parts = [_unordered(v) for v in tree.values()]
        return ("dict", tuple(tree), tuple(p[0] for p in parts)), tuple(p[1] for p in parts)
    if type(tree) in (list, tuple):
        parts = [_unordered(v) for v in tree]
        return (type(tree), None, tuple(p[0] for p in parts)), tuple(p[1] for p in parts)
    return None, tree


def _ordered(layout: Any, tree: Any) -> Any:
    """The inverse of :func:`_unordered`."""
    if layout is None:
        return tree
    kind, keys, inner = layout
    values = [_ordered(lay, v) for lay, v in zip(inner, tree)]
    return dict(zip(keys, values)) if kind == "dict" else kind(values)


def _split_args(args: Sequence, nums: tuple) -> tuple:
    """``(treedefs, statics, dyn)``: per argument its tree structure, the non-array
    leaves as ``(position, type, value)``, and the array leaves (and the Python
    scalars of the arguments at positions ``nums``) in order, as
    :func:`jaxlrp._core.trace.trace` splits an explainer's arguments."""
    treedefs, statics, dyn = [], [], []
    for i, a in enumerate(args):
        leaves, treedef = jax.tree_util.tree_flatten(a)
        treedefs.append(treedef)
        for k, leaf in enumerate(leaves):
            if is_array(leaf) or (i in nums and isinstance(leaf, (int, float, complex))):
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
    """The range check of a concrete class target (see :func:`jaxlrp._core.run.initial_relevance`),
    for the compiled eager call, where the target was traced (NaN marks it there)."""
    if target is None or output_relevance is not None or is_mask(target) or out.ndim == 0 \
            or isinstance(target, jax.core.Tracer):
        return
    check_target_range(np.asarray(target), out.shape[-1])
