"""Rules of the seed papers: the LRP overview's EpsilonStd and max-pool rules, and
the fixed-share rules of "Fact or Artifact?" (issue 16).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._core import primitives as P
from .._core.kinds import WEIGHTED_KINDS
from .._core.engine import (
    Array,
    Branch,
    Node,
    Rule,
    Term,
    check_nonnegative,
    divide,
    layer_bias,
    propagate,
    stabilize,
)


def _example_axes(a: Array, example_ndim: int) -> tuple:
    """The non-example axes of ``a`` (all but the leading ``example_ndim``)."""
    e = max(0, min(int(example_ndim), a.ndim))
    return tuple(range(e, a.ndim))


@dataclasses.dataclass(frozen=True)
class EpsilonStd(Rule):
    r"""LRP-:math:`\epsilon` with :math:`\epsilon` a multiple of the spread of the
    layer's pre-activations (Montavon et al. 2019, "LRP: An Overview", §10.2):

    .. math:: R_j = x_j \sum_k \frac{w_{jk} R_k}{z_k + \epsilon\,\mathrm{sign}(z_k)},
              \qquad \epsilon = \text{factor} \cdot s(z) + \text{epsilon},

    with :math:`s(z) = \sqrt{\operatorname{mean}_k z_k^2}` (the root mean square,
    as the authors' tutorial code computes it; ``centered=True``: the standard
    deviation :math:`\sqrt{\operatorname{mean}_k (z_k - \bar z)^2}`), taken over
    all output neurons of the layer (channels and positions), **per example**: the
    leading ``node.example_ndim`` axes are not reduced, so an example's relevance
    does not depend on the batch it is explained in (under ``vmap`` the layer of
    one example is the whole value). The Overview recommends ``factor=0.25`` for
    the middle layers of VGG-16 (0.1 in its MLP example). ``factor=0`` is
    :class:`Epsilon` with ``epsilon``. :math:`s(z)` is computed as
    :math:`m\, s(z/m)` with :math:`m = \max_k |z_k|`, so that it does not overflow
    where :math:`z^2` would (float16 pixels 0-255, float32 beyond ``1.8e19``).

    Parameters
    ----------
    factor:
        Multiple of :math:`s(z)`, ``>= 0``.
    epsilon:
        Added absolute stabiliser, ``>= 0`` (the tutorial adds ``1e-9``).
    centered:
        Use the standard deviation instead of the root mean square.
    ignore_bias:
        Drop the bias from the denominator (then :math:`z` excludes it too).
    """

    factor: float = 0.25
    epsilon: float = 1e-9
    centered: bool = False
    ignore_bias: bool = False
    kinds = WEIGHTED_KINDS
    parameter_relevance = True
    relevance_to_zeros = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonnegative("factor", self.factor)

    def __call__(self, node: Node, relevance: Array) -> tuple:
        b = layer_bias(node, self.ignore_bias)
        z = node.output - node.bias if b is None and node.bias is not None else node.output  # z without b
        eps = self.factor * _spread(z, _example_axes(z, node.example_ndim), self.centered)
        eps = eps + jnp.asarray(self.epsilon, z.dtype)
        term = Term([Branch(node.inputs, node.weight)], bias=b, denominator=z)
        return propagate(node, relevance, [term], eps)


def _spread(z: Array, axes: tuple, centered: bool) -> Array:
    r"""The root mean square (``centered``: standard deviation) of ``z`` over
    ``axes``, computed scale-invariantly: with :math:`m = \max |z|`,
    :math:`s(z) = m\, s(z / m)`, so :math:`z^2` never overflows (it would for
    :math:`|z| > 1.8 \cdot 10^{19}` in float32 and :math:`|z| > 256` in float16,
    making :math:`\epsilon` infinite and the relevance zero)."""
    m = jnp.max(jnp.abs(z), axis=axes, keepdims=True)
    m = jnp.where(m > 0, m, jnp.ones((), z.dtype))
    c = z / m
    if centered:
        c = c - jnp.mean(c, axis=axes, keepdims=True)
    return m * jnp.sqrt(jnp.mean(jnp.square(c), axis=axes, keepdims=True))


@dataclasses.dataclass(frozen=True)
class FixedShares(Rule):
    r"""Fixed shares at a sum of several input-dependent tensors:
    :math:`R_i = s_i R` for :math:`z = \sum_i x_i`, whatever the values.

    The rule of the leaky update of echo state networks in Landt-Hayen et al.
    (2023): :math:`x_t = (1 - a) x_{t-1} + a\,\tilde x_t` sends :math:`1 - a` of
    each unit's relevance to the previous state and :math:`a` to the new activation
    (``FixedShares((1 - a, a))``), so relevance that stays in the state decays by
    :math:`1 - a` per step by construction. No division; relevance is conserved
    when the shares sum to 1. The shares follow the order of the operands of the
    sum in the program (see :func:`jaxlrp.diagnostics.inspect`).

    Parameters
    ----------
    shares:
        One share ``>= 0`` per relevance-carrying input.

    Raises
    ------
    ValueError
        At explanation time, if the sum has a different number of inputs or an
        input does not have the sum's shape (broadcasting sums are refused).
    """

    shares: tuple = (0.5, 0.5)
    kinds = frozenset({"sum"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "shares", tuple(float(s) for s in self.shares))
        for s in self.shares:
            check_nonnegative("share", s)

    def __call__(self, node: Node, relevance: Array) -> tuple:
        if len(node.inputs) != len(self.shares):
            raise ValueError(f"FixedShares{self.shares} applies to sums of {len(self.shares)} inputs, "
                             f"got a sum of {len(node.inputs)}; match only the intended sum")
        if any(x.shape != relevance.shape for x in node.inputs):
            raise ValueError(f"FixedShares needs inputs of the sum's shape {relevance.shape}, got "
                             f"{[x.shape for x in node.inputs]}")
        return tuple(jnp.asarray(s, relevance.dtype) * relevance for s in self.shares)


@dataclasses.dataclass(frozen=True)
class WinnerTakesAll(Rule):
    """Max pooling: all relevance of a window goes to its maximum (the gradient
    routing of ``reduce_window_max``; ties share as the gradient does).

    The default rule of ``"maxpool"`` layers, as in Zennit (where max pooling gets
    no rule). :class:`MaxPoolProportional` is the alternative.
    """

    kinds = frozenset({"maxpool"})
    relevance_to_zeros = "routed"

    def __call__(self, node: Node, relevance: Array) -> tuple:
        apply = node.function("WinnerTakesAll")
        _, pull = jax.vjp(lambda x: apply((x,), None), node.inputs[0])
        return pull(relevance)


@dataclasses.dataclass(frozen=True)
class MaxPoolProportional(Rule):
    r"""Max pooling explained like average pooling: each window's relevance is
    split over its inputs in proportion to their values (the option of Montavon et
    al.'s LRP tutorial, which uses average pooling in the backward pass only):

    .. math:: R_j = x_j \sum_k \frac{[j \in \text{window}_k]\, R_k}
              {\sum_{j' \in \text{window}_k} x_{j'} + \epsilon\,\mathrm{sign}(\cdot)}

    computed with the vector-Jacobian product of a ``reduce_window`` sum with the
    max pool's own window, strides, padding and dilations. Meant for non-negative
    inputs (after ReLU), where the denominators are at least the window's maximum;
    relevance is conserved up to the stabiliser.

    Parameters
    ----------
    stabilizer:
        ``>= 0``.
    """

    stabilizer: float = 1e-6
    kinds = frozenset({"maxpool"})
    relevance_to_zeros = "none"

    def __call__(self, node: Node, relevance: Array) -> tuple:
        (x,) = node.inputs
        window_sum = _window_sum(node.function("MaxPoolProportional"), x)
        z, pull = jax.vjp(window_sum, x)
        (c,) = pull(divide(relevance, stabilize(z, self.stabilizer)))
        return (x * c,)


def _window_sum(apply: Callable, x: Array) -> Callable[[Array], Array]:
    """The sum over the windows of the ``reduce_window_max`` that ``apply`` binds."""
    jaxpr = jax.make_jaxpr(lambda x_: apply((x_,), None))(x).jaxpr
    eqns = [e for e in jaxpr.eqns if e.primitive.name in P.POOLS]
    if len(eqns) != 1:
        raise ValueError("MaxPoolProportional applies to reduce_window_max layers only")
    p = eqns[0].params

    def window_sum(x_):
        # a concrete NumPy zero, so that lax recognises the sum (a traced jnp zero under
        # jit makes a generic reduce_window, which has no derivative)
        return jax.lax.reduce_window(x_, np.zeros((), x_.dtype), jax.lax.add, p["window_dimensions"],
                                     p["window_strides"], p["padding"], p["base_dilation"], p["window_dilation"])

    return window_sum
