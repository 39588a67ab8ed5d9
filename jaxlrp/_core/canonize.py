r"""Canonisation: fold the affine operations after a linear layer into the layer.

LRP rules need the layer's full pre-activation :math:`z = W'x + b'`. In a jaxpr a
dense or conv layer is a ``dot_general``/``conv_general_dilated`` followed by a bias
``add`` and, in inference-mode BatchNorm, a per-channel ``sub``/``mul``/``add``
chain. This module finds that chain directly from the program and folds it,

.. math:: \text{chain}(Wx) = a \odot (Wx) + c
          \quad\Rightarrow\quad W' = W \cdot \operatorname{diag}(a),\; b' = c,

which is exactly what folding BatchNorm into the preceding convolution by hand
gives (Zennit's ``MergeBatchNorm``), for any layout. The coefficients are read off
by running the chain on zeros and ones of the per-channel shape. The chain stops at
the first operation that is not affine in the layer output with per-output-channel
coefficients, or whose input is used elsewhere.

Only the layer's own parameters and those of a following normalisation belong to
the chain: every shift or scale must be computed from the function's parameters
(its non-explained arguments or closed-over arrays). Literals and sign flips are
part of the activation that follows, not of the layer: ``hard_sigmoid(z)`` computes
``relu6(z + 3) / 6`` and ``log_sigmoid(z)`` is ``-softplus(-z)``; folding their
``+3`` or negation would change the layer's weights and bias (and so which half of
the weights z+ or alpha-beta use).

BatchNorm placed *before* a layer (BN -> ReLU -> conv) is not folded; it is an
elementwise region and passes relevance unchanged.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from . import primitives as P
from .program import Eqn, Program, Var, replay


def output_axis_map(eqn: Eqn, weight_pos: int) -> Optional[tuple]:
    """For each axis of a linear layer's output, the weight axis it comes from.

    ``None`` entries are axes that come from the input (batch, spatial). Returns
    ``None`` when the layout does not allow folding a per-channel scale.
    """
    name, p = eqn.prim.name, eqn.params
    ndim = len(eqn.outvars[0].shape)
    if P.LINEAR.get(name) == "dense":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lhs_rank, rhs_rank = len(eqn.invars[0].shape), len(eqn.invars[1].shape)
        lhs_free = [i for i in range(lhs_rank) if i not in lc and i not in lb]
        rhs_free = [i for i in range(rhs_rank) if i not in rc and i not in rb]
        batch = list(rb if weight_pos == 1 else lb)
        if weight_pos == 1:
            return tuple(batch + [None] * len(lhs_free) + rhs_free)
        return tuple(batch + lhs_free + [None] * len(rhs_free))
    if P.LINEAR.get(name) == "conv":
        if weight_pos != 1 or p.get("batch_group_count", 1) != 1:
            return None
        dn = p["dimension_numbers"]
        axes = [None] * ndim
        axes[dn.out_spec[1]] = dn.rhs_spec[0]
        return tuple(axes)
    return None


class Chain(NamedTuple):
    """What follows a linear layer and belongs to it (see :func:`affine_chain`)."""

    post: tuple  # psum / size-1 reshapes applied to the layer's output
    members: tuple  # the foldable affine chain (may contain size-1 reshapes)
    out: Var  # the variable the fused layer produces
    scales: bool  # whether the chain can scale (not only shift) its input
    start_axes: Optional[tuple]  # output-to-weight axis map where the chain starts
    out_axes: Optional[tuple]  # ... and of ``out``
    reshapes: frozenset  # the members that are size-1 reshapes


def affine_chain(
    program: Program,
    head: int,
    axis_map: Optional[tuple],
    is_tainted: Callable,
    consumers: dict,
    is_parameter: Callable,
    producer: Optional[dict] = None,
) -> Chain:
    """Find the operations after equation ``head`` that belong to the layer.

    * ``post``: collective sums over devices inside ``shard_map``, transpositions
      (``jax.vmap`` of ``W @ x`` puts the batch axis last, then moves it to the
      front) and size-1 reshapes right after the layer, before any bias: part of
      the layer's map;
    * ``members``: the foldable affine chain: adds, subtractions, multiplications
      and divisions by per-output-channel values computed from parameters
      (``is_parameter``), and reshapes that only add or remove size-1 axes (Flax's
      ``Conv`` wraps an unbatched input in a batch of one, then drops it again
      after the bias); the chain ends at the first other operation, or where its
      value is used more than once. A per-channel operand may also be broadcast
      to the full output shape (Haiku's ``out + jnp.broadcast_to(b, out.shape)``):
      ``producer`` (variable -> index of its equation) lets the chain see that.
    """
    post, v, axis_map = _post(program, head, axis_map, consumers)
    start_axes = axis_map
    if axis_map is None:
        return Chain(tuple(post), (), v, False, None, None, frozenset())
    members, reshapes, scales = [], set(), False
    while True:
        users = consumers.get(v, ())
        if len(users) != 1 or users[0] < 0:
            break
        j = users[0]
        e = program.eqns[j]
        if _is_size1_reshape(e, v, axis_map):
            axis_map = _reshape_axis_map(v.shape, e.outvars[0].shape, axis_map)
            reshapes.add(j)
        elif _folds(e, v, axis_map, is_tainted, is_parameter, _broadcast_source(program, producer or {})):
            scales |= e.prim.name in P.SCALING
        else:
            break
        members.append(j)
        v = e.outvars[0]
    # drop trailing reshapes: they would only move the layer's output shape
    while members and members[-1] in reshapes:
        j = members.pop()
        reshapes.discard(j)
        v = program.eqns[j].invars[0]
        axis_map = _reshape_axis_map(program.eqns[j].outvars[0].shape, v.shape, axis_map)
    if not any(j not in reshapes for j in members):
        members, reshapes = [], set()
        v = program.eqns[post[-1]].outvars[0] if post else program.eqns[head].outvars[0]
        axis_map = start_axes
    return Chain(tuple(post), tuple(members), v, scales, start_axes, axis_map, frozenset(reshapes))


def _post(program: Program, head: int, axis_map: Optional[tuple], consumers: dict) -> tuple:
    """``(post, value, axis map)``: the psums, transpositions and size-1 reshapes
    right after the layer (see :func:`affine_chain`), and what they produce."""
    v: Var = program.eqns[head].outvars[0]
    post = []
    while True:
        users = consumers.get(v, ())
        if len(users) != 1 or users[0] < 0:
            break
        e = program.eqns[users[0]]
        if len(e.invars) != 1 or len(e.outvars) != 1:
            break
        if e.prim.name in P.COLLECTIVE_SUMS:
            pass
        elif e.prim.name in P.TRANSPOSES and axis_map is not None:
            axis_map = tuple(axis_map[k] for k in e.params["permutation"])
        elif axis_map is not None and _is_size1_reshape(e, v, axis_map):
            axis_map = _reshape_axis_map(v.shape, e.outvars[0].shape, axis_map)
        else:
            break
        post.append(users[0])
        v = e.outvars[0]
    return post, v, axis_map


def _folds(e: Eqn, v: Var, axis_map: tuple, is_tainted: Callable, is_parameter: Callable, source: Callable) -> bool:
    """Whether ``e``, the only reader of the layer's value ``v``, is an affine step
    of the layer: a shift or scale of ``v`` by per-channel parameters, or a cast."""
    name = e.prim.name
    if name not in P.FOLDABLE | P.CASTS or len(e.outvars) != 1:
        return False
    if name in P.CASTS and not jnp.issubdtype(e.outvars[0].dtype, jnp.inexact):
        return False
    pos = [k for k, a in enumerate(e.invars) if a is v]
    others = [a for a in e.invars if a is not v]
    if len(pos) != 1 or any(is_tainted(a) for a in others):
        return False
    if name in P.FIRST_OPERAND_ONLY and pos[0] != 0:  # 1 / z, b - z: not affine / a sign flip
        return False
    if name in P.FOLDABLE and not any(is_parameter(a) for a in others):
        return False  # a literal: part of the activation (hard_sigmoid's + 3)
    return all(_per_channel(a, axis_map, len(v.shape)) or _broadcast_per_channel(source(a), axis_map)
               for a in others)


def _is_size1_reshape(e: Eqn, v: Var, axis_map: Optional[tuple]) -> bool:
    return (
        e.prim.name in P.UNIT_RESHAPES
        and axis_map is not None
        and len(e.invars) == 1
        and e.invars[0] is v
        and _squeezes_only(v.shape, e.outvars[0].shape)
    )


def _squeezes_only(a: tuple, b: tuple) -> bool:
    """Whether ``a`` and ``b`` differ only by axes of size 1."""
    return [n for n in a if n != 1] == [n for n in b if n != 1]


def _reshape_axis_map(a: tuple, b: tuple, axis_map: tuple) -> tuple:
    """The axis map of a size-1-only reshape from shape ``a`` to ``b``."""
    src = iter(m for n, m in zip(a, axis_map) if n != 1)
    return tuple(next(src) if n != 1 else None for n in b)


def _per_channel(a, axis_map: tuple, rank: int) -> bool:
    shape = a.shape
    if len(shape) == 0:
        return True
    if len(shape) != rank:
        return False
    return all(n == 1 for n, w in zip(shape, axis_map) if w is None)


def _broadcast_source(program: Program, producer: dict) -> Callable:
    """``source(a)``: the ``broadcast_in_dim`` equation that computes ``a``, or ``None``."""

    def source(a) -> Optional[Eqn]:
        j = producer.get(a) if isinstance(a, Var) else None
        e = program.eqns[j] if j is not None else None
        return e if e is not None and e.prim.name in P.BROADCASTS else None

    return source


def _broadcast_per_channel(e: Optional[Eqn], axis_map: tuple) -> bool:
    """Whether the broadcast ``e`` makes a value that is constant along the axes of
    the layer's output that do not come from the weight: every such axis is either
    new or of size 1 in the broadcast operand (``jnp.broadcast_to(b, out.shape)``)."""
    if e is None or len(e.outvars[0].shape) != len(axis_map):
        return False
    dims, shape = e.params["broadcast_dimensions"], e.invars[0].shape
    return all(shape[k] == 1 for k, d in enumerate(dims) if axis_map[d] is None)


def _channel_slice(x, axes: tuple):
    """``x`` at index 0 along the axes that do not come from the weight (where a
    per-channel operand broadcast to the full shape is constant)."""
    index = tuple(slice(0, 1) if w is None and n != 1 else slice(None) for n, w in zip(x.shape, axes))
    return x[index]


def reduced_shape(out_shape: Sequence[int], axis_map: tuple) -> tuple:
    """The output shape with the axes that do not come from the weight set to 1."""
    return tuple(n if w is not None else 1 for n, w in zip(out_shape, axis_map))


def chain_coefficients(program: Program, chain: Chain, start: Var, dtype, read, bind=None) -> tuple:
    """``(a, c)`` with ``chain(t) = a * t + c``, on arrays of the per-channel shape
    (size 1 on the axes that do not come from the weight).

    Affine members are replayed as they are (``bind(e, args)``, see
    :func:`jaxlrp._core.program.replay`); size-1 reshapes reshape the
    per-channel arrays to the per-channel version of their output shape.
    """

    start_axes = chain.start_axes
    assert start_axes is not None, "a folded chain starts at a layer output with an axis map"

    def run(t):
        var, axes = start, start_axes
        for j in chain.members:
            e = program.eqns[j]
            if j in chain.reshapes:
                axes = _reshape_axis_map(var.shape, e.outvars[0].shape, axes)
                t = jnp.reshape(t, reduced_shape(e.outvars[0].shape, axes))
            else:
                env = {var: t}
                for a in e.invars:
                    if isinstance(a, Var) and a is not var and len(a.shape) == len(axes):  # broadcast?
                        env[a] = _channel_slice(read(a), axes)
                t = replay(program, [j], env, read, bind)[e.outvars[0]]
            var = e.outvars[0]
        return t

    shape = reduced_shape(start.shape, start_axes)
    c = run(jnp.zeros(shape, dtype))
    return run(jnp.ones(shape, dtype)) - c, c


def fold_scale(weight, a, axis_map: tuple):
    """``weight`` with the per-output-channel scale ``a`` multiplied in."""
    mapped = [(zi, wi) for zi, wi in enumerate(axis_map) if wi is not None]
    a = jnp.reshape(a, [a.shape[zi] for zi, _ in mapped])
    order = np.argsort([wi for _, wi in mapped])
    a = jnp.transpose(a, tuple(int(k) for k in order))
    shape = [1] * weight.ndim
    for zi, wi in mapped:
        shape[wi] = a.shape[list(order).index(mapped.index((zi, wi)))]
    return weight * jnp.reshape(a, shape).astype(weight.dtype)


__all__ = ["Chain", "output_axis_map", "affine_chain", "chain_coefficients", "fold_scale", "reduced_shape"]
