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

BatchNorm placed *before* a layer (BN -> ReLU -> conv) is not folded; it is an
elementwise region and passes relevance unchanged.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from ._program import Eqn, Lit, Program, Var, replay

# Collective sums over devices that may directly follow a linear layer inside
# shard_map (tensor parallelism): part of the layer, so its rule sees the global z.
_REDUCTIONS = frozenset({"psum", "psum_invariant"})
# Elementwise operations allowed in a foldable chain.
_AFFINE = frozenset({"add", "sub", "mul", "div", "neg", "convert_element_type", "copy", "copy_p"})
# Of those, the ones that can scale (not only shift) the layer output.
_SCALING = frozenset({"mul", "div", "neg"})


def output_axis_map(eqn: Eqn, weight_pos: int) -> Optional[tuple]:
    """For each axis of a linear layer's output, the weight axis it comes from.

    ``None`` entries are axes that come from the input (batch, spatial). Returns
    ``None`` when the layout does not allow folding a per-channel scale.
    """
    name, p = eqn.prim.name, eqn.params
    ndim = len(eqn.outvars[0].shape)
    if name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lhs_rank, rhs_rank = len(eqn.invars[0].shape), len(eqn.invars[1].shape)
        lhs_free = [i for i in range(lhs_rank) if i not in lc and i not in lb]
        rhs_free = [i for i in range(rhs_rank) if i not in rc and i not in rb]
        batch = list(rb if weight_pos == 1 else lb)
        if weight_pos == 1:
            return tuple(batch + [None] * len(lhs_free) + rhs_free)
        return tuple(batch + lhs_free + [None] * len(rhs_free))
    if name == "conv_general_dilated":
        if weight_pos != 1 or p.get("batch_group_count", 1) != 1:
            return None
        dn = p["dimension_numbers"]
        axes = [None] * ndim
        axes[dn.out_spec[1]] = dn.rhs_spec[0]
        return tuple(axes)
    return None


def affine_chain(
    program: Program,
    head: int,
    axis_map: Optional[tuple],
    is_tainted: Callable,
    consumers: dict,
) -> tuple:
    """Find the foldable chain after equation ``head``.

    Returns ``(reduction, members, out_var, scales)``: the index of a collective
    sum over devices that belongs to the layer (or ``None``), indices of the chain's
    equations, the variable the fused layer produces, and whether the chain can
    scale its input.
    """
    v: Var = program.eqns[head].outvars[0]
    members, scales, reduction = [], False, None
    users = consumers.get(v, ())
    if len(users) == 1 and users[0] >= 0:
        e = program.eqns[users[0]]
        if e.prim.name in _REDUCTIONS and len(e.invars) == 1 and len(e.outvars) == 1:
            reduction, v = users[0], e.outvars[0]
    if axis_map is None:
        return reduction, members, v, scales
    rank = len(v.shape)
    while True:
        users = consumers.get(v, ())
        if len(users) != 1:
            break
        j = users[0]
        e = program.eqns[j]
        name = e.prim.name
        if name not in _AFFINE or len(e.outvars) != 1:
            break
        if name == "convert_element_type" and not jnp.issubdtype(e.outvars[0].dtype, jnp.inexact):
            break
        pos = [k for k, a in enumerate(e.invars) if a is v]
        others = [a for a in e.invars if a is not v]
        if len(pos) != 1 or any(is_tainted(a) for a in others):
            break
        if name == "div" and pos[0] != 0:
            break
        if not all(_per_channel(a, axis_map, rank) for a in others):
            break
        scales |= name in _SCALING or (name == "sub" and pos[0] == 1)
        members.append(j)
        v = e.outvars[0]
    return reduction, members, v, scales


def _per_channel(a, axis_map: tuple, rank: int) -> bool:
    shape = a.shape
    if len(shape) == 0:
        return True
    if len(shape) != rank:
        return False
    return all(n == 1 for n, w in zip(shape, axis_map) if w is None)


def reduced_shape(out_shape: Sequence[int], axis_map: tuple) -> tuple:
    """The output shape with the axes that do not come from the weight set to 1."""
    return tuple(n if w is not None else 1 for n, w in zip(out_shape, axis_map))


def chain_coefficients(program: Program, members: Sequence[int], start: Var, shape: tuple, dtype, read) -> tuple:
    """``(a, c)`` with ``chain(t) = a * t + c``, evaluated on arrays of ``shape``."""

    end = program.eqns[members[-1]].outvars[0]

    def run(t):
        return replay(program, members, {start: t}, read)[end]

    c = run(jnp.zeros(shape, dtype))
    return run(jnp.ones(shape, dtype)) - c, c


def fold_scale(weight, a, axis_map: tuple):
    """``weight`` with the per-output-channel scale ``a`` multiplied in."""
    mapped = [(zi, wi) for zi, wi in enumerate(axis_map) if wi is not None]
    a = jnp.reshape(a, [a.shape[zi] for zi, _ in mapped])
    order = np.argsort([wi for _, wi in mapped])
    a = jnp.transpose(a, order)
    shape = [1] * weight.ndim
    for zi, wi in mapped:
        shape[wi] = a.shape[list(order).index(mapped.index((zi, wi)))]
    return weight * jnp.reshape(a, shape).astype(weight.dtype)


__all__ = ["output_axis_map", "affine_chain", "chain_coefficients", "fold_scale", "reduced_shape", "Lit"]
