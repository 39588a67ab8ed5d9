"""Running a traced function: the forward pass under :func:`jax.vjp`, seeded with the
initial relevance, and the relevance read back at the arguments, start values and
tapped layers.
"""

from __future__ import annotations

from typing import Optional, Sequence, TypeGuard

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import primitives as P
from .analysis import Analysis
from .checks import concrete
from .errors import UnsupportedOperationError
from .interpreter import evaluate, layers_within
from .trace import Traced
from .types import Array, Target

__all__ = [
    "run", "linearized", "initial_relevance", "unflatten_relevance", "top_level_nodes", "tappable",
    "per_layer", "selected", "is_mask", "check_target_range", "output", "model_output",
]


def top_level_nodes(t: Traced) -> dict:
    """Layer index -> NodeSpec for the nodes outside control flow (they can be tapped)."""
    return {spec.layer.index: spec for spec in t.analysis.nodes.values()}


def tappable(an: Analysis, stack: tuple = ()) -> dict:
    """Layer index -> ``(NodeSpec, Analysis, stack)`` for the nodes that can be
    tapped: those outside control flow (``stack == ()``) and those in ``lax.scan``
    bodies, whose taps (and per-layer relevance) are stacked over the iterations
    (``stack == (length, ...)``, outer scan first). Nodes in ``cond`` branches and
    ``shard_map`` bodies are left out."""
    out = {spec.layer.index: (spec, an, stack) for spec in an.nodes.values()}
    for i, subs in an.subs.items():
        e = an.program.eqns[i]
        if e.prim.name in P.LOOPS:
            out.update(tappable(subs[0], stack + (e.params["length"],)))
    return out


def run(t: Traced, target, output_relevance, tapped: Sequence[int] = (), masks: Optional[dict] = None):
    """Evaluate under ``jax.vjp``; returns ``(out, relevance leaves, tap relevances)``.

    ``masks``: layer index -> ``(m, s)``, see :func:`jaxlrp._core.interpreter.evaluate`."""
    out, back = linearized(t, tapped, masks)
    rel, tap_rel = back(initial_relevance(out, target, output_relevance, t.example_ndim))
    return out, rel, tap_rel


def linearized(t: Traced, tapped: Sequence[int] = (), masks: Optional[dict] = None):
    """One forward pass under ``jax.vjp``: ``(out, back)``, where ``back(seed)`` gives
    ``(relevance leaves, tap relevances)`` for an output relevance ``seed``. ``back``
    is linear in ``seed``, so many seeds share the forward pass (``jax.vmap(back)``)."""
    nodes = tappable(t.analysis)
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
        return output(t, vals, taps=taps, starts=dict(zip(t.starts, start_taps)), masks=masks)

    x_leaves = [t.flat_args[j] for j in t.explained]
    start_taps = [jnp.zeros(v.shape, v.dtype) for v in t.starts]
    out, pull = jax.vjp(f, x_leaves, taps, start_taps)

    def back(seed):
        rel, tap_rel, start_rel = pull(seed)
        return (start_rel if t.starts else rel), tap_rel

    return out, back


def output(t: Traced, vals: list, **options) -> Array:
    """The traced function's output on the flat argument values ``vals``, evaluated
    by the interpreter (``options`` go to :func:`~jaxlrp._core.interpreter.evaluate`),
    in its carried dtype: under a widening the wide value, which the relevance sums
    to (:func:`model_output` gives it in the model's dtype)."""
    (out,) = evaluate(t.analysis, t.rules, vals, example_ndim=t.example_ndim, widening=t.widening, **options)
    return out


def model_output(t: Traced, out: Array) -> Array:
    """An output of :func:`run` in the explained function's dtype (rounded to it
    under a widening): what the caller of an explanation receives."""
    return t.widening.model(out, t.analysis.program.outvars[0].dtype)


def unflatten_relevance(t: Traced, leaves: list):
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


def initial_relevance(
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
    if is_mask(target):
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
        check_target_range(concrete(target), classes)
    index = jnp.broadcast_to(index, example_shape)
    onehot = jax.nn.one_hot(index, classes, dtype=out.dtype)
    bad = (index < 0) | (index >= classes)  # traced targets only: NaN marks the example
    return jnp.where(bad[..., None], jnp.nan, out * onehot)


def check_target_range(value: Optional[np.ndarray], classes: int) -> None:
    """Raise ``ValueError`` for a concrete class target outside ``[0, classes)``
    (``value`` is ``None`` for a traced one: NaN marks it in the relevance)."""
    if value is not None and (np.any(value < 0) or np.any(value >= classes)):
        raise ValueError(f"target {value.tolist()} out of range for {classes} outputs")


def is_mask(target: Target) -> "TypeGuard[ArrayLike]":
    """Whether ``target`` is a mask over the output: an array (not a scalar) of
    boolean or floating dtype. Integer arrays are class indices."""
    if target is None:
        return False
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


def per_layer(t: Traced, tap_rel) -> dict:
    out = {}
    for i in sorted(tap_rel):
        rel = tap_rel[i][0]
        out[t.layers[i].key] = rel[0] if len(rel) == 1 else tuple(rel)
    return out


def selected(t: Traced, matcher) -> list:
    """The matched layers' indices; layers in a ``lax.scan`` body are tapped in
    every iteration, those in ``cond`` branches or ``shard_map`` bodies refused."""
    if matcher is None:
        return []
    nodes = tappable(t.analysis)
    chosen = [layer.index for layer in t.layers if layer.index in layers_within(t.analysis) and matcher(layer)]
    for i in chosen:
        if i not in nodes:
            raise UnsupportedOperationError(
                "layers=", t.layers[i].name, "per-layer relevance of a layer inside a cond branch or a "
                "shard_map body is not available", "select layers outside it (layers in lax.scan bodies "
                "are available, stacked over the iterations)")
    return chosen
