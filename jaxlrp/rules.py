r"""LRP rules: how one layer redistributes the relevance of its output to its input.

Every rule here is a small immutable object holding only its hyper-parameters. Its
``__call__(node, relevance)`` receives a :class:`Node` (the layer as the interpreter
saw it in the forward pass) and the relevance ``R`` arriving at the layer's output,
and returns the relevance of each relevance-carrying input.

Most rules are instances of one formula, the *modified gradient* form of LRP
(Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview", §10.2.4):

.. math::

    R_{\text{in}} = \sum_t \text{scale}_t \sum_i c_i\, \tilde x_i \odot
        \rho_i(W)^\top \Big( \frac{m_t \odot R}{\operatorname{stab}(d_t)} \Big),
    \qquad d_t = \sum_i c_i\, \rho_i(W)\, \tilde x_i + \tilde b_t,

where each *term* ``t`` has *branches* ``i`` (a modified input :math:`\tilde x_i`, a
modified weight :math:`\rho_i(W)` and a coefficient :math:`c_i`), a modified bias
:math:`\tilde b_t`, an output mask :math:`m_t` and a scale. The transposed products
are vector-Jacobian products of the layer's own primitive, so every layout, stride,
padding, dilation and feature grouping of ``dot_general`` and
``conv_general_dilated`` is handled by the same code.

The stabiliser is :math:`\operatorname{stab}(d) = d + \epsilon\,\mathrm{sign}(d)`
with :math:`\mathrm{sign}(0) = +1` (Zennit's convention); a denominator that is
exactly zero (possible only with :math:`\epsilon = 0`) yields zero relevance, never
NaN. Notation: :math:`x^+ = \max(x, 0)`, :math:`x^- = \min(x, 0)`, likewise for
weights and biases.

The semantics follow Zennit (Anders et al., 2021) so that results can be compared
one to one.

The formula is public: a rule lists its :class:`Term` s, each a list of
:class:`Branch` es, and calls :func:`propagate`; :class:`Combo`
(:data:`LAYER_WEIGHT`, :data:`POSITIVE_WEIGHT`) names the layer's own weight and
its positive part so that products are shared and :math:`z` is reused;
:func:`sign_parts` and :func:`signed_branches` use the input signs the program
proves (``node.nonnegative``); :func:`layer_bias` gives the bias a term adds;
:func:`constant_input` marks an input the same for every example; :func:`after`
keeps modified weights from being built all at once. Every built-in weighted rule
is written this way (docs: "Writing a rule").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from ._core.kinds import AGGREGATE_KINDS, KINDS, WEIGHTED_KINDS
from ._core.primitives import PRODUCTS, QUOTIENTS

Array = Any  # jax.Array; Any while the engine's Optional values are not narrowed for mypy

__all__ = [
    "Node",
    "Rule",
    "Epsilon",
    "Zero",
    "Gamma",
    "AlphaBeta",
    "ZPlus",
    "ZBox",
    "Flat",
    "WSquare",
    "Pass",
    "Gradient",
    "ReLUGuidedBackprop",
    "ReLUDeconvNet",
    "ReLUBetaSmooth",
    "Norm",
    "Uniform",
    "SignalTakesAll",
    "Softmax",
    "EpsilonStd",
    "FixedShares",
    "WinnerTakesAll",
    "MaxPoolProportional",
    "WEIGHTED_KINDS",
    "AGGREGATE_KINDS",
    # the modified-gradient engine
    "propagate",
    "Term",
    "Branch",
    "Combo",
    "LAYER_WEIGHT",
    "POSITIVE_WEIGHT",
    "after",
    "sign_parts",
    "signed_branches",
    "layer_bias",
    "constant_input",
    "positive",
    "negative",
    "stabilize",
    "divide",
]


class Node(NamedTuple):
    """A layer as a rule sees it, with the values of the forward pass.

    Attributes
    ----------
    kind:
        ``"dense"``, ``"conv"``, ``"sum"``, ``"avgpool"``, ``"maxpool"``, ``"product"``,
        ``"gate"`` (a signal times a sigmoid gate), ``"glu"`` (a signal times an
        activated factor: SwiGLU), ``"normalize"`` (a signal times
        or divided by a normaliser such as LayerNorm's), ``"attention"`` (a signal
        times softmax probabilities) -- for these four ``inputs`` is
        ``(signal, special factor)`` --, ``"softmax"`` (``inputs`` is the softmax's
        source) or ``"activation"``.
    inputs:
        The relevance-carrying inputs (one for dense/conv layers; the summands of a
        sum; the factors of a product; the source of an activation).
    weight:
        The layer's weight, with any following BatchNorm scale folded in; ``None``
        for parameter-free nodes.
    bias:
        The bias (folded), broadcastable to ``output``; ``None`` if there is none.
    output:
        The layer's output ``z`` (bias included); rules may use it instead of
        recomputing ``apply(inputs, weight) + bias``, so a wrapper that changes
        ``inputs``, ``weight`` or ``apply`` must recompute it.
    apply:
        ``apply(inputs, weight) -> z`` without the bias: the layer's own primitive,
        re-bound with its parameters. Linear in each input for dense, conv, sum and
        avgpool nodes; ``None`` for activations.
    example_ndim:
        How many leading axes of the values index examples (the explained output's
        leading axes; 0 for a function of one example, e.g. inside ``jax.vmap``).
        Rules with per-example quantities (pruning thresholds, normalisers) use it.
    nonnegative:
        Whether the inputs are known from the program to be non-negative (outputs of
        ReLU, max pooling over them, exp, sigmoid, ...): rules then skip the terms
        of negative inputs, which are exactly zero.
    relu_gated:
        Whether the relevance arriving at the output is known from the program and
        the assigned rules to be zero wherever ``output <= 0`` (a ReLU follows, and
        whatever reads it gives no relevance to zeros; see
        :attr:`Rule.relevance_to_zeros`): rules may then skip the terms of
        non-positive outputs, whose contribution is exactly zero.
    primitive:
        The JAX primitive of the node's head equation (``"mul"``, ``"dot_general"``,
        ...; empty when unknown). Rules of products read it to tell an elementwise
        product (``mul``, ``div``: each input entry reaches one output entry) from a
        contraction (``dot_general``: attention times values, where an input
        position reaches every output position).
    parameters:
        Whether the relevance of the layer's weight and bias is asked for too
        (:func:`jaxlrp.concepts.parameter_relevance`); set by the interpreter only
        for dense and conv layers whose rule has :attr:`Rule.parameter_relevance`.
        :func:`propagate` then returns two more arrays (see there).
    """

    kind: str
    inputs: tuple
    weight: Optional[Array]
    bias: Optional[Array]
    output: Array
    apply: Optional[Callable[[tuple, Optional[Array]], Array]]
    example_ndim: int = 0
    nonnegative: bool = False
    relu_gated: bool = False
    primitive: str = ""
    parameters: bool = False


_NONNEGATIVE_PARAMETERS = frozenset({"epsilon", "stabilizer", "gamma", "alpha", "beta"})


class Rule:
    """Base class of rules.

    A rule is an immutable object; subclasses set ``kinds`` (the node kinds the rule
    can be applied to) and implement ``__call__(node, relevance) -> tuple`` of the
    relevance of each entry of ``node.inputs``.
    """

    kinds: frozenset = frozenset()
    #: What the rule gives input entries that are zero: ``"none"`` (rules of the
    #: form :math:`x \odot g`, e.g. every rule on :func:`propagate`), ``"routed"``
    #: (each input entry gets the relevance of the output entries it is copied to:
    #: :class:`Pass`, :class:`WinnerTakesAll`) or ``"any"`` (no promise; the
    #: default). Read by the analysis to set :attr:`Node.relu_gated` for the layer
    #: before (a sufficient condition: a wrong ``"none"`` would drop relevance).
    relevance_to_zeros: str = "any"
    #: Whether ``__call__`` returns :func:`propagate`'s result unchanged, so that,
    #: where :attr:`Node.parameters` is set, it also gives the relevance of the
    #: layer's weight and bias (:func:`jaxlrp.concepts.parameter_relevance`).
    #: Rules without it are refused there.
    parameter_relevance: bool = False

    def __post_init__(self):
        """Reject negative (or NaN) stabilisers and rule parameters with ``ValueError``."""
        for f in dataclasses.fields(self):
            if f.name in _NONNEGATIVE_PARAMETERS:
                _check_nonneg(f.name, getattr(self, f.name))

    def check(self, layer: Any) -> Optional[str]:
        """Why this rule cannot be applied to ``layer`` (a
        :class:`~jaxlrp.composites.Layer`), or ``None``; checked when rules are
        assigned, before anything is computed."""
        return None

    def __call__(self, node: Node, relevance: Array) -> tuple:  # pragma: no cover
        raise NotImplementedError


# ----------------------------------------------------------------------------- engine
#
# The modified-gradient engine of the module docstring, public so that a rule written
# outside the package is a few lines of data: a list of :class:`Term`, each a list of
# :class:`Branch`, handed to :func:`propagate`. No VJP code is needed.


def stabilize(d: Array, epsilon: Any) -> Array:
    r"""Zennit's stabiliser :math:`d + \epsilon\,\mathrm{sign}(d)` with :math:`\mathrm{sign}(0) = +1`.

    Parameters
    ----------
    d:
        Denominators.
    epsilon:
        ``>= 0``; a scalar or an array broadcastable against ``d``.
    """
    return d + epsilon * jnp.where(d >= 0, 1, -1).astype(d.dtype)


def divide(r: Array, d: Array) -> Array:
    """``r / d``, with ``0`` (never NaN or infinity) where ``d`` is exactly zero.

    In a low-precision dtype (bfloat16, float16) the quotient is computed in
    float32 and rounded once to the operands' dtype (rounding ``r`` and ``d``
    separately first would cost up to two more bits; LXT#27).
    """
    dtype = jnp.result_type(r, d)
    wide = jnp.promote_types(dtype, jnp.float32) if jnp.issubdtype(dtype, jnp.floating) else dtype
    r, d = jnp.asarray(r, wide), jnp.asarray(d, wide)
    zero = d == 0
    return jnp.where(zero, 0, r / jnp.where(zero, 1, d)).astype(dtype)


@jax.custom_jvp
def after(w: Array, r: Array) -> Array:
    """``w``, made to depend on ``r``: derive modified weights from ``after(node.weight, relevance)``.

    A rule's modified weights (:math:`W^+`, :math:`W^2`, folded BatchNorm scales,
    ...) depend on the parameters only, so XLA's scheduler computes those of every
    layer at the start of the backward program and keeps them all alive to its
    end: peak memory grows by a copy of the model per modified weight (and
    ``optimization_barrier`` does not prevent it on CPU). Derived from
    ``after(w, relevance)`` they are made layer by layer as the relevance arrives
    and freed after use. The value is ``w`` exactly: ``0 * r[0]`` is added (``r[0]``
    replaced by 0 where it is not finite, so a NaN marking one example cannot reach
    the weights), which XLA fuses into the derivation; under ``vmap`` the first
    example's, so ``w`` stays unbatched. Its derivative is that of ``w`` alone.

    Optional: results are the same without it, only the memory profile differs.
    :func:`propagate` applies it itself to the :math:`W^+` of :data:`POSITIVE_WEIGHT`.
    """
    return _after(w, r)


@after.defjvp
def _after_jvp(primals, tangents):
    return after(*primals), tangents[0]


@jax.custom_batching.custom_vmap
def _after(w: Array, r: Array) -> Array:
    spec = getattr(getattr(jax.typeof(r), "sharding", None), "spec", ())
    if r.size == 0 or any(a is not None for a in spec):  # explicitly sharded: no slicing
        return w
    r0 = r.reshape(-1)[0].astype(w.dtype)
    # finite * 0 is 0: a NaN marking one example (a traced bad target) must not
    # reach the weights, and so every other example
    return w + jnp.zeros((), w.dtype) * jnp.where(jnp.isfinite(r0), r0, 0)


@_after.def_vmap
def _after_vmap(axis_size, in_batched, w, r):
    w_batched, r_batched = in_batched
    return _after(w, r[0] if r_batched else r), w_batched


def positive(a: Array) -> Array:
    """:math:`a^+ = \\max(a, 0)`."""
    return jnp.maximum(a, 0)


def negative(a: Array) -> Array:
    """:math:`a^- = \\min(a, 0)`."""
    return jnp.minimum(a, 0)



class Combo(NamedTuple):
    r"""The modified weight :math:`a W + b W^+` (:math:`W` the layer's weight), given symbolically.

    A :class:`Branch` may give its weight this way instead of as an array; the
    engine then evaluates the layer on the two basis weights only, and shares them
    between all branches and terms:

    * the product with :math:`W` at the layer's own inputs is its forward output
      :math:`z` (``node.output``, minus the bias): no product is recomputed;
    * :math:`W^+` is derived once (from :func:`after`), its forward product at each
      input is computed once, and each basis weight needs one transposed product
      however many terms use it (the transposed product is linear, so the engine
      sums the quotients first).

    Use it only where no denominator becomes a difference of nearly equal
    products: a denominator that should be exactly zero would become rounding
    noise, amplified by the division. :math:`W^- = W - W^+` in the negative part of
    alpha-beta is such a case (give :math:`W^-` as an array there); gamma's
    :math:`W + \gamma W^+` is not: its denominators are at least :math:`|z|` in
    size, where they are used.

    Attributes
    ----------
    a:
        Coefficient of :math:`W`.
    b:
        Coefficient of :math:`W^+`.
    """

    a: float
    b: float


#: :math:`W`, the layer's own weight, as a :class:`Combo` (forward product free at the layer's own inputs).
LAYER_WEIGHT = Combo(1.0, 0.0)
#: :math:`W^+ = \max(W, 0)` as a :class:`Combo` (derived once per layer, products shared).
POSITIVE_WEIGHT = Combo(0.0, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Branch:
    r"""One summand :math:`c\, \tilde x \odot \rho(W)` of a :class:`Term`.

    Attributes
    ----------
    inputs:
        The modified inputs :math:`\tilde x`, one per entry of ``node.inputs``: the
        point at which the layer is evaluated, and the multiplier of its transposed
        product. An input that is the same for every example (a bound of
        :class:`ZBox`, the ones of :class:`Flat`) may be given with size-1 example
        axes (``node.example_ndim`` leading axes): its forward product is then
        computed once instead of once per example.
    weight:
        The modified weight :math:`\rho(W)`: an array of the weight's shape, a
        :class:`Combo` of :math:`W` and :math:`W^+` (products shared, see there), or
        ``None`` for parameter-free nodes (sums, pooling, softmax).
    coef:
        The coefficient :math:`c`.
    """

    inputs: tuple
    weight: Any = None
    coef: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))


@dataclasses.dataclass(frozen=True, eq=False)
class Term:
    r"""One quotient of the modified-gradient formula (module docstring).

    .. math::

        R_{\text{in}} \mathrel{+}= \text{scale} \sum_i c_i\, \tilde x_i \odot
            \rho_i(W)^\top \frac{m \odot R}{\operatorname{stab}(d)},
        \qquad d = \sum_i c_i\, \rho_i(W)\, \tilde x_i + \tilde b .

    Attributes
    ----------
    branches:
        The :class:`Branch` es :math:`i`, at least one.
    bias:
        The modified bias :math:`\tilde b` (broadcastable to ``node.output``), or
        ``None`` for none. It enters the denominator only: give ``node.bias`` to
        keep the layer's bias, a function of it (:math:`b^+` in :math:`z^+`, ...), or
        ``None`` to drop it, which conserves relevance.
    mask:
        A boolean array broadcastable to the relevance: only where it is true does
        the term pass relevance (gamma's :math:`z > 0` and :math:`z < 0` parts);
        ``None``: everywhere.
    scale:
        Multiplies the term's relevance (alpha-beta's :math:`\alpha` and :math:`-\beta`).
    denominator:
        :math:`d`, if already known (``node.output`` for epsilon): then the branches
        are only pulled back, never evaluated forward, and ``bias`` is not added.
    """

    branches: tuple
    bias: Optional[Array] = None
    mask: Optional[Array] = None
    scale: float = 1.0
    denominator: Optional[Array] = None

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(self.branches))
        if not self.branches:
            raise ValueError("a Term needs at least one Branch")
        for br in self.branches:
            if not isinstance(br, Branch):
                raise TypeError(f"Term.branches holds Branch objects, got {type(br).__name__}")


class _Product:
    """One distinct (inputs, weight) pair: its forward value and the terms' coefficients on it."""

    __slots__ = ("inputs", "weight", "wkey", "value", "pull", "coefs")

    def __init__(self, inputs: tuple, weight: Any, wkey: Any):
        self.inputs, self.weight, self.wkey = inputs, weight, wkey
        self.value: Optional[Array] = None
        self.pull: Optional[Callable] = None
        self.coefs: dict = {}  # term index -> coefficient of its quotient in this product's cotangent

    def forward(self, node: Node) -> Array:
        if self.value is None:
            point = _point(node, self.inputs, self.weight)
            if _linear(node):  # the transposed product does not depend on the point: no vjp here
                self.value = node.apply(point, self.weight)
            else:
                self.value, self.pull = jax.vjp(lambda *xs: node.apply(xs, self.weight), *point)
        return self.value

    def add(self, t: int, coef: Any) -> None:
        self.coefs[t] = coef if t not in self.coefs else self.coefs[t] + coef

    def cotangent(self, quotients: list) -> Array:
        return _combine([(c, quotients[t]) for t, c in self.coefs.items()])


def _linear(node: Node) -> bool:
    """Single-input nodes whose ``apply`` is linear in the input (its transpose is point-free)."""
    return node.kind in WEIGHTED_KINDS | AGGREGATE_KINDS and len(node.inputs) == 1


def _point(node: Node, inputs: tuple, weight: Any) -> tuple:
    """Where to evaluate a product: ``inputs`` as given where they differ from the
    node's inputs only by size-1 axes along which the layer maps each slice on its
    own (the batch axis of a convolution, a free axis of ``dot_general``): a bound
    the same for every example is then multiplied once, not once per example.
    Anything else is broadcast to the node's input shapes."""
    full = tuple(jnp.broadcast_to(a, x.shape) for a, x in zip(inputs, node.inputs))
    if all(jnp.shape(a) == x.shape for a, x in zip(inputs, node.inputs)):
        return inputs
    if not _linear(node) or jnp.ndim(inputs[0]) != node.inputs[0].ndim:
        return full
    x, a = node.inputs[0], inputs[0]
    shrunk = {i for i, (n, m) in enumerate(zip(jnp.shape(a), x.shape)) if n != m}
    if any(jnp.shape(a)[i] != 1 for i in shrunk) or not shrunk <= _free_axes(node, weight):
        return full
    return inputs


def _free_axes(node: Node, weight: Any) -> frozenset:
    """Axes of the input that the layer's single product maps slice by slice (none
    if ``apply`` is anything but one ``conv_general_dilated`` or ``dot_general``
    applied to the input itself)."""
    x = node.inputs[0]
    try:
        jaxpr = jax.make_jaxpr(lambda x_: node.apply((x_,), weight))(jax.ShapeDtypeStruct(x.shape, x.dtype)).jaxpr
    except Exception:  # noqa: BLE001 -- not traceable on its own: assume nothing
        return frozenset()
    if len(jaxpr.eqns) != 1 or jaxpr.eqns[0].outvars[0] is not jaxpr.outvars[0]:
        return frozenset()
    (e,), v = jaxpr.eqns, jaxpr.invars[0]
    ops = [u is v for u in e.invars]
    if e.primitive.name == "conv_general_dilated" and ops == [True, False]:
        if e.params["batch_group_count"] != 1:
            return frozenset()
        return frozenset({e.params["dimension_numbers"].lhs_spec[0]})
    if e.primitive.name == "dot_general" and sorted(ops) == [False, True]:
        side = ops.index(True)
        (contract, batch) = (d[side] for d in e.params["dimension_numbers"])
        return frozenset(range(x.ndim)) - set(contract) - set(batch)
    return frozenset()


def _concrete(c: Any) -> bool:
    return isinstance(c, (int, float)) and not isinstance(c, bool)


def _parallel(a: dict, b: dict) -> Optional[float]:
    """``l`` with ``b == l * a`` (concrete coefficients over the same terms), else ``None``."""
    if a.keys() != b.keys() or not all(_concrete(c) for c in (*a.values(), *b.values())):
        return None
    t0 = next(iter(a))
    if a[t0] == 0:
        return None
    lam = b[t0] / a[t0]
    return lam if all(abs(b[t] - lam * a[t]) <= 1e-12 * abs(b[t]) + 1e-300 for t in a) else None


class _Products:
    """The products of one :func:`propagate` call, keyed by (ids of inputs, weight key)."""

    def __init__(self, node: Node, relevance: Array):
        self.node, self.relevance = node, relevance
        self.table: dict = {}
        self._w_pos: Optional[Array] = None

    def w_pos(self) -> Array:
        if self._w_pos is None:  # made once, when first needed
            self._w_pos = positive(after(self.node.weight, self.relevance))
        return self._w_pos

    def basis(self, br: Branch) -> list:
        """``[(key, coefficient, weight)]`` of a branch's weight."""
        if not isinstance(br.weight, Combo):
            return [(id(br.weight), 1.0, br.weight)]
        out = []
        if br.weight.a:
            own = all(a is b for a, b in zip(br.inputs, self.node.inputs))
            out.append(("own" if own else "w", br.weight.a, self.node.weight))
        if br.weight.b:
            out.append(("w+", br.weight.b, self.w_pos()))
        return out

    def entry(self, br: Branch, key: Any, weight: Any) -> _Product:
        k = (tuple(id(a) for a in br.inputs), key)
        if k not in self.table:
            self.table[k] = _Product(br.inputs, weight, "w" if key == "own" else key)
        return self.table[k]

    def pull_back(self, quotients: list) -> tuple:
        """:math:`\\sum` over products of inputs times the transposed product of their cotangents."""
        if _linear(self.node):
            return (self._pull_back_linear(quotients),)
        node = self.node
        out = [jnp.zeros_like(x) for x in node.inputs]
        for p in self.table.values():
            if p.pull is None:
                point = tuple(jnp.broadcast_to(a, x.shape) for a, x in zip(p.inputs, node.inputs))
                _, p.pull = jax.vjp(lambda *xs, w=p.weight: node.apply(xs, w), *point)
            for k, g in enumerate(p.pull(p.cotangent(quotients))):
                out[k] = out[k] + p.inputs[k] * g
        return tuple(out)

    def _pull_back_linear(self, quotients: list) -> Array:
        r"""As few transposed products as the terms' structure allows.

        The transposed product of a linear layer is the same at every input and
        bilinear in (weight, cotangent), so ``sum_p x_p * W_p^T ct_p`` is regrouped:
        products with the same weight share one transposed product per direction of
        their cotangents (gamma's :math:`x^+` and :math:`x^-` on :math:`W^+`,
        z-box's :math:`x` and :math:`h` on :math:`W`), or one per term where that is
        fewer; pieces with the same multiplier and direction on different weights
        share one with the combined weight (:math:`W + \gamma W^+`).
        """
        (x,) = self.node.inputs
        groups: dict = {}
        for p in self.table.values():
            groups.setdefault(p.wkey, []).append(p)
        pieces: list = []  # [multiplier {id: (coef, input)}, direction {term: coef}, [(coef, weight)]]
        for ps in groups.values():
            for mult, direction in _directions(ps):
                for m0, d0, ws in pieces:
                    lm = _parallel({k: c for k, (c, _) in m0.items()}, {k: c for k, (c, _) in mult.items()})
                    ld = None if lm is None else _parallel(d0, direction)
                    if lm is not None and ld is not None:
                        ws.append((lm * ld, ps[0].weight))
                        break
                else:
                    pieces.append((mult, direction, [(1.0, ps[0].weight)]))
        out = jnp.zeros_like(x)
        for mult, direction, ws in pieces:
            w = _combine(ws)
            _, pull = jax.vjp(lambda x_, w=w: self.node.apply((x_,), w), x)
            (g,) = pull(_combine([(c, quotients[t]) for t, c in direction.items()]))
            out = out + _combine([(c, a) for c, a in mult.values()]) * g
        return out


def _combine(pairs: list) -> Array:
    """``sum c * a`` over ``(c, a)``, without multiplying by a coefficient of 1."""
    out = None
    for c, a in pairs:
        t = a if _concrete(c) and c == 1.0 else c * a
        out = t if out is None else out + t
    return out


def _directions(ps: list) -> list:
    """``[(multiplier, direction)]``, ``multiplier = {id: (coef, input)}`` and
    ``direction = {term: coef}``, with ``sum multiplier * W^T direction`` equal to the
    products' ``sum x_p * W^T cotangent_p``: one per class of proportional
    cotangents, or one per term where that is fewer."""
    classes: list = []  # [reference product, [(lambda, product)]]
    for p in ps:
        for ref, members in classes:
            lam = _parallel(ref.coefs, p.coefs)
            if lam is not None:
                members.append((lam, p))
                break
        else:
            classes.append((p, [(1.0, p)]))
    terms = sorted({t for p in ps for t in p.coefs})
    if len(classes) <= len(terms):
        return [({id(p.inputs[0]): (lam, p.inputs[0]) for lam, p in members}, dict(ref.coefs))
                for ref, members in classes]
    return [({id(p.inputs[0]): (p.coefs[t], p.inputs[0]) for p in ps if t in p.coefs}, {t: 1.0}) for t in terms]


def _quotient(products: _Products, term: Term, relevance: Array, epsilon: Any) -> Array:
    """:math:`m \\odot R / \\operatorname{stab}(d)` of one term."""
    node = products.node
    d, bias = term.denominator, term.bias
    if d is None:
        for br in term.branches:
            for key, c, w in products.basis(br):
                e = products.entry(br, key, w)
                if key == "own":  # z = x W + b is known; its bias moves into the bias sum
                    z = node.output
                    if node.bias is not None:
                        bias = -br.coef * c * node.bias if bias is None else bias - br.coef * c * node.bias
                else:
                    z = e.forward(node)
                d = br.coef * c * z if d is None else d + br.coef * c * z
        if bias is not None:
            d = d + bias
    r = relevance if term.mask is None else jnp.where(term.mask, relevance, 0)
    return divide(r, stabilize(d, epsilon))


def _check_terms(node: Node, terms: Sequence[Term]) -> None:
    if not terms:
        raise ValueError("propagate needs at least one Term")
    for term in terms:
        if not isinstance(term, Term):
            raise TypeError(f"propagate takes Term objects, got {type(term).__name__}")
        for br in term.branches:
            if len(br.inputs) != len(node.inputs):
                raise ValueError(f"a Branch has {len(br.inputs)} inputs, the {node.kind} node has {len(node.inputs)}")
            if isinstance(br.weight, Combo) and br.weight.b and node.weight is None:
                raise ValueError(f"a Combo with W+ needs a weighted layer, the {node.kind} node has no weight")


def propagate(node: Node, relevance: Array, terms: Sequence[Term], epsilon: Any) -> tuple:
    r"""Evaluate the modified-gradient formula: the relevance of each of ``node.inputs``.

    .. math::

        R_{\text{in}} = \sum_t \text{scale}_t \sum_i c_i\, \tilde x_i \odot
            \rho_i(W)^\top \Big( \frac{m_t \odot R}{\operatorname{stab}(d_t)} \Big),
        \qquad d_t = \sum_i c_i\, \rho_i(W)\, \tilde x_i + \tilde b_t,

    with :math:`\operatorname{stab}(d) = d + \epsilon\,\mathrm{sign}(d)`,
    :math:`\mathrm{sign}(0) = +1`, and zero relevance where a stabilised denominator
    is exactly zero. Both products are the layer's own: the forward product is
    ``node.apply(inputs, weight)``, the transposed one its vector-Jacobian product,
    so layouts, strides, padding, dilation and feature groups need no code.

    Products are shared: each distinct pair (inputs, weight) -- by identity, so
    reuse the same array objects across terms -- is evaluated forward at most once
    and pulled back once, with the sum of the quotients that use it. A
    :class:`Combo` weight at the layer's own inputs costs no forward product
    (:math:`z` is ``node.output``). A rule that knows the sign of the input
    (``node.nonnegative``, inferred from the program: outputs of ReLU, max
    pooling of those, ...) should drop the branches of :math:`x^-`, which are
    exactly zero: :func:`sign_parts` does that.

    Parameters
    ----------
    node:
        The layer, as the rule received it.
    relevance:
        :math:`R`, the relevance at the layer's output.
    terms:
        The :class:`Term` s :math:`t`.
    epsilon:
        The stabiliser :math:`\epsilon \ge 0`, a scalar or an array broadcastable
        to the output (per-example values, as :class:`EpsilonStd` uses).

    Returns
    -------
    tuple
        One relevance array per entry of ``node.inputs``, of its shape. Where
        ``node.parameters`` is set (a dense or conv layer), two more: the
        relevance of the weight (its shape) and the bias share (the shape of
        ``node.bias``, or ``None``), see :func:`_parameter_relevance`.

    Raises
    ------
    ValueError
        No terms, a branch with a different number of inputs than the node, or a
        :class:`Combo` with :math:`W^+` on a node without weight.
    """
    _check_terms(node, terms)
    products = _Products(node, relevance)
    quotients = [_quotient(products, term, relevance, epsilon) for term in terms]
    for t, term in enumerate(terms):
        for br in term.branches:
            for key, c, w in products.basis(br):
                products.entry(br, key, w).add(t, term.scale * br.coef * c)
    relevance_in = products.pull_back(quotients)
    if node.parameters and node.weight is not None:
        return (*relevance_in, *_parameter_relevance(products, terms, quotients))
    return relevance_in


def _parameter_relevance(products: _Products, terms: Sequence[Term], quotients: list) -> tuple:
    r"""``(R(W), R(b))``: the relevance of the weight and the bias share of one layer.

    The message from output :math:`k` to input :math:`j` through weight
    :math:`w_{jk}` is :math:`\sum_t \text{scale}_t \sum_i c_i \tilde x_{ij}
    \rho_i(w_{jk}) q_{tk}` with :math:`q_t = m_t \odot R / \operatorname{stab}(d_t)`;
    summed over positions and examples (every use of the weight) it is

    .. math:: R(W) = \sum_p \rho_p(W) \odot \partial_{w} \langle \text{ct}_p,
              \operatorname{apply}(\tilde x_p, w) \rangle ,

    one weight-VJP per product :math:`p` (its cotangent ``ct`` sums the quotients
    that use it). The bias share is :math:`\sum_t \text{scale}_t\, \tilde b_t \odot q_t`
    summed to the bias's shape. Since ``apply`` is bilinear,
    :math:`\sum R(W) = \sum_{n,j} R_{\text{in}}` exactly, for every rule.
    """
    node = products.node
    weight: Array = node.weight
    w_rel = jnp.zeros(weight.shape, weight.dtype)
    for p in products.table.values():
        point = tuple(jnp.broadcast_to(a, x.shape) for a, x in zip(p.inputs, node.inputs))
        _, pull = jax.vjp(lambda w, point=point: node.apply(point, w), p.weight)
        (g,) = pull(p.cotangent(quotients))
        w_rel = w_rel + (p.weight * g).astype(w_rel.dtype)
    b_rel = None
    if node.bias is not None:
        shares = [term.scale * term.bias * q for term, q in zip(terms, quotients) if term.bias is not None]
        b_rel = _sum_to(sum(shares[1:], shares[0]), jnp.shape(node.bias)) if shares else jnp.zeros_like(node.bias)
    return w_rel, b_rel


def _sum_to(a: Array, shape: tuple) -> Array:
    """``a`` summed over its leading extra axes and the axes where ``shape`` is 1."""
    a = jnp.sum(a, axis=tuple(range(a.ndim - len(shape))))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    return jnp.reshape(jnp.sum(a, axis=axes, keepdims=True), shape)


def sign_parts(node: Node) -> tuple:
    """``(x+, x-)`` of the layer's single input, or ``(x,)`` where ``node.nonnegative``.

    With :func:`signed_branches`, the sign-split form :math:`x^+ \\rho^+(W) + x^- \\rho^-(W)`
    of alpha-beta, :math:`z^+` and gamma, without the branches that are zero.
    """
    (x,) = node.inputs
    return (x,) if node.nonnegative else (positive(x), negative(x))


def signed_branches(parts: tuple, for_positive: Any, for_negative: Any) -> list:
    """Branches :math:`x^+ \\cdot` ``for_positive`` :math:`+\\, x^- \\cdot` ``for_negative`` over :func:`sign_parts`.

    The weights are arrays or :class:`Combo` s; where the input is known to be
    non-negative only the first branch is made.
    """
    return [Branch((x,), w) for x, w in zip(parts, (for_positive, for_negative))]


def layer_bias(node: Node, ignore: bool = False, transform: Optional[Callable[[Array], Array]] = None) -> Optional[Array]:
    """The bias a :class:`Term` adds to its denominator: ``transform(node.bias)``, or ``None``.

    ``None`` where ``ignore`` (rules' ``ignore_bias``, which conserves relevance) or
    where the layer has no bias; ``transform`` maps the bias (:func:`positive` for
    :math:`z^+`, ``jnp.square`` for :math:`w^2`, ...).
    """
    b = None if ignore else node.bias
    return b if b is None or transform is None else transform(b)


def constant_input(value: Any, node: Node) -> Array:
    """``value`` as a :class:`Branch` input that is the same for every example.

    Broadcast to the layer's input shape except on the ``node.example_ndim``
    leading axes where ``value`` has size 1: :func:`propagate` then evaluates its
    forward product once, not once per example (the bounds of :class:`ZBox`, the
    ones of :class:`Flat` and :class:`WSquare`).

    Parameters
    ----------
    value:
        A scalar or an array broadcastable to ``node.inputs[0]``.
    node:
        The layer.
    """
    (x,) = node.inputs[:1]
    v = jnp.asarray(value, x.dtype)
    e = max(0, min(int(node.example_ndim), x.ndim))
    aligned = (1,) * (x.ndim - v.ndim) + tuple(v.shape)
    shape = tuple(1 if i < e and aligned[i] == 1 else n for i, n in enumerate(x.shape))
    return jnp.broadcast_to(v, shape)


def _check_nonneg(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")


# ------------------------------------------------------------------------------ rules


@dataclasses.dataclass(frozen=True)
class Epsilon(Rule):
    r"""LRP-:math:`\epsilon` (Bach et al. 2015).

    .. math:: R_j = x_j \sum_k \frac{w_{jk} R_k}{z_k + \epsilon\,\mathrm{sign}(z_k)},
              \qquad z_k = \sum_j x_j w_{jk} + b_k

    ``epsilon=0`` is LRP-0, which on a ReLU network equals gradient times input.
    Applies to dense and conv layers, and to sums and average pooling (where it is
    the Norm rule with stabiliser ``epsilon``).

    Parameters
    ----------
    epsilon:
        Stabiliser, ``>= 0``. Larger values absorb weak or contradictory relevance.
    ignore_bias:
        Drop the bias from the denominator (then relevance is conserved for
        ``epsilon=0``).
    """

    epsilon: float = 1e-6
    ignore_bias: bool = False
    kinds = WEIGHTED_KINDS | AGGREGATE_KINDS
    parameter_relevance = True
    relevance_to_zeros = "none"

    def __call__(self, node, relevance):
        if self.ignore_bias and node.bias is not None:
            # d = x W, recomputed: z - b would lose x W to rounding where |x W| << |b|
            term = Term([Branch(node.inputs, node.weight)])
        else:
            term = Term([Branch(node.inputs, node.weight)], bias=node.bias, denominator=node.output)
        return propagate(node, relevance, [term], self.epsilon)


def Zero(ignore_bias: bool = False) -> Epsilon:
    """LRP-0: :class:`Epsilon` with ``epsilon=0``."""
    return Epsilon(0.0, ignore_bias=ignore_bias)


@dataclasses.dataclass(frozen=True)
class ZPlus(Rule):
    r"""The :math:`z^+` rule (Montavon et al. 2017): positive contributions only.

    .. math:: R_j = \sum_k \frac{x_j^+ w_{jk}^+ + x_j^- w_{jk}^-}
              {\sum_{j'} (x_{j'}^+ w_{j'k}^+ + x_{j'}^- w_{j'k}^-) + b_k^+} R_k

    Equals ``AlphaBeta(1, 0)``. Conserves relevance when the bias is ignored.

    Parameters
    ----------
    stabilizer:
        ``>= 0``, added with the sign of the denominator.
    ignore_bias:
        Drop :math:`b^+` from the denominator.
    """

    stabilizer: float = 1e-6
    ignore_bias: bool = False
    kinds = WEIGHTED_KINDS
    parameter_relevance = True
    relevance_to_zeros = "none"

    def __call__(self, node, relevance):
        term = _positive_term(node, sign_parts(node), negative(after(node.weight, relevance)), self.ignore_bias)
        return propagate(node, relevance, [term], self.stabilizer)


def _positive_term(node: Node, parts: tuple, w_neg: Array, ignore_bias: bool, scale: float = 1.0) -> Term:
    return Term(signed_branches(parts, POSITIVE_WEIGHT, w_neg), bias=layer_bias(node, ignore_bias, positive), scale=scale)


def _negative_term(node: Node, parts: tuple, w_neg: Array, ignore_bias: bool, scale: float) -> Term:
    return Term(signed_branches(parts, w_neg, POSITIVE_WEIGHT), bias=layer_bias(node, ignore_bias, negative), scale=scale)


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    r"""LRP-:math:`\alpha\beta` (Bach et al. 2015).

    .. math:: R_j = \sum_k \Big( \alpha \frac{(x_j w_{jk})^+}{\sum_{j'} (x_{j'} w_{j'k})^+ + b_k^+}
              - \beta \frac{(x_j w_{jk})^-}{\sum_{j'} (x_{j'} w_{j'k})^- + b_k^-} \Big) R_k

    with :math:`(x w)^+ = x^+ w^+ + x^- w^-` and :math:`(x w)^- = x^+ w^- + x^- w^+`.
    Relevance is conserved where both parts of a neuron are non-zero; a neuron with
    no negative contributions (common after a ReLU) passes :math:`\alpha R_k`.

    Parameters
    ----------
    alpha, beta:
        Both ``>= 0`` with ``alpha - beta == 1`` (so relevance is conserved when the
        bias is ignored).
    stabilizer:
        ``>= 0``.
    ignore_bias:
        Drop :math:`b^\pm` from the denominators.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    ignore_bias: bool = False
    kinds = WEIGHTED_KINDS
    parameter_relevance = True
    relevance_to_zeros = "none"

    def __post_init__(self):
        super().__post_init__()
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha - beta == 1, got alpha={self.alpha}, beta={self.beta}")

    def __call__(self, node, relevance):
        parts, w_neg = sign_parts(node), negative(after(node.weight, relevance))  # shared by the terms
        terms = [_positive_term(node, parts, w_neg, self.ignore_bias, self.alpha)]
        if self.beta:
            terms.append(_negative_term(node, parts, w_neg, self.ignore_bias, -self.beta))
        return propagate(node, relevance, terms, self.stabilizer)


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    r"""LRP-:math:`\gamma` (Montavon et al. 2019), generalised to inputs of either sign.

    With :math:`P = w + \gamma w^+` and :math:`N = w + \gamma w^-`: outputs with
    :math:`z_k > 0` use the contributions :math:`x^+ P + x^- N` and bias
    :math:`b + \gamma b^+`; outputs with :math:`z_k < 0` use :math:`x^+ N + x^- P`
    and bias :math:`b + \gamma b^-`; outputs with :math:`z_k = 0` pass nothing.
    For :math:`x \ge 0` this is the classic rule
    :math:`R_j = \sum_k x_j (w_{jk} + \gamma w_{jk}^+) / \sum_{j'} x_{j'}(w_{j'k} + \gamma w_{j'k}^+) R_k`.
    ``gamma=0`` is LRP-0; large ``gamma`` approaches :math:`z^+`.

    Parameters
    ----------
    gamma:
        ``>= 0``.
    stabilizer:
        ``>= 0``.
    ignore_bias:
        Drop the bias from the denominators.
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6
    ignore_bias: bool = False
    kinds = WEIGHTED_KINDS
    parameter_relevance = True
    relevance_to_zeros = "none"

    def __call__(self, node, relevance):
        # z > 0: x+ (w + g w+) + x- (w + g w-) = z + g (x+ w+ + x- w-); z < 0: x+ (w + g w-) +
        # x- (w + g w+) = (1 + g) z - g (x+ w+ + x- w-), a sum of same-signed parts where z < 0.
        # z is the forward output, so only x+ w+ and x- w- are new products (only x w+ for x >= 0).
        g, z = self.gamma, node.output
        parts = sign_parts(node)
        w_neg = () if node.nonnegative else (negative(after(node.weight, relevance)),)
        extra = list(zip(parts, (POSITIVE_WEIGHT,) + w_neg))
        terms = [
            Term([Branch(node.inputs, LAYER_WEIGHT)] + [Branch((p,), w, g) for p, w in extra],
                 layer_bias(node, self.ignore_bias, lambda b: b + g * positive(b)), z > 0),
        ]
        if not node.relu_gated:  # else no relevance arrives where z <= 0: the term is zero
            terms.append(Term([Branch(node.inputs, LAYER_WEIGHT, 1.0 + g)] + [Branch((p,), w, -g) for p, w in extra],
                              layer_bias(node, self.ignore_bias, lambda b: b + g * negative(b)), z < 0))
        return propagate(node, relevance, terms, self.stabilizer)


@dataclasses.dataclass(frozen=True)
class ZBox(Rule):
    r"""The :math:`z^\mathcal{B}` rule (Montavon et al. 2017) for inputs in a box.

    .. math:: R_i = \sum_k \frac{x_i w_{ik} - l_i w_{ik}^+ - h_i w_{ik}^-}
              {\sum_{i'} (x_{i'} w_{i'k} - l_{i'} w_{i'k}^+ - h_{i'} w_{i'k}^-)} R_k

    Meant for the first layer, with ``low``/``high`` the smallest and largest
    possible input values (in the space the layer sees, e.g. after normalisation).
    The bias is dropped; relevance is conserved.

    Parameters
    ----------
    low, high:
        Scalars or arrays broadcastable against the layer's input, ``low <= high``.
    stabilizer:
        ``>= 0``.
    """

    low: Any = 0.0
    high: Any = 1.0
    stabilizer: float = 1e-6
    kinds = WEIGHTED_KINDS
    parameter_relevance = True

    def __post_init__(self):
        super().__post_init__()
        try:
            bad = bool(jnp.any(jnp.asarray(self.low) > jnp.asarray(self.high)))
        except jax.errors.ConcretizationTypeError:  # traced bounds: cannot check
            bad = False
        if bad:
            raise ValueError("ZBox needs low <= high")

    def __call__(self, node, relevance):
        # x w - l w+ - h w- with w- = w - w+: x w is the forward output, l w+ and h w are the
        # same for every example (computed once), and the transposed products are two:
        # (x - h) w^T s and (h - l) w+^T s.
        low, high = constant_input(self.low, node), constant_input(self.high, node)
        term = Term([Branch(node.inputs, LAYER_WEIGHT), Branch((low,), POSITIVE_WEIGHT, -1.0),
                     Branch((high,), Combo(1.0, -1.0), -1.0)])
        return propagate(node, relevance, [term], self.stabilizer)


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    r"""The flat rule (Lapuschkin et al. 2019): relevance spread uniformly over each
    output's receptive field, :math:`R_j = \sum_k R_k / \#\{j' \to k\}`.

    Independent of the input values (so zero-valued inputs also get relevance);
    the bias is dropped, so relevance is conserved.

    Parameters
    ----------
    stabilizer:
        ``>= 0``.
    """

    stabilizer: float = 1e-6
    kinds = WEIGHTED_KINDS
    parameter_relevance = True

    def __call__(self, node, relevance):
        term = Term([Branch((constant_input(1.0, node),), jnp.ones_like(node.weight))])
        return propagate(node, relevance, [term], self.stabilizer)


@dataclasses.dataclass(frozen=True)
class WSquare(Rule):
    r"""The :math:`w^2` rule (Montavon et al. 2017) for unbounded real inputs.

    .. math:: R_j = \sum_k \frac{w_{jk}^2}{\sum_{j'} w_{j'k}^2 + b_k^2} R_k

    Independent of the input values. As in Zennit the squared bias enters the
    denominator unless ``ignore_bias``.

    Parameters
    ----------
    stabilizer:
        ``>= 0``.
    ignore_bias:
        Drop :math:`b^2` from the denominator (then relevance is conserved).
    """

    stabilizer: float = 1e-6
    ignore_bias: bool = False
    kinds = WEIGHTED_KINDS
    parameter_relevance = True

    def __call__(self, node, relevance):
        term = Term(
            [Branch((constant_input(1.0, node),), jnp.square(after(node.weight, relevance)))],
            bias=layer_bias(node, self.ignore_bias, jnp.square),
        )
        return propagate(node, relevance, [term], self.stabilizer)


@dataclasses.dataclass(frozen=True)
class Norm(Rule):
    r"""Proportional split for parameter-free sums and average pooling.

    .. math:: R_i = \sum_k \frac{x_i \,\partial z_k / \partial x_i}{z_k + \epsilon\,\mathrm{sign}(z_k)} R_k

    For a residual add :math:`z = a + b` this is :math:`R_a = a/(a+b)\,R`. The default
    rule of sums, means, average pooling and residual connections.

    Parameters
    ----------
    stabilizer:
        ``>= 0``.
    """

    stabilizer: float = 1e-6
    kinds = AGGREGATE_KINDS
    relevance_to_zeros = "none"

    def __call__(self, node, relevance):
        term = Term([Branch(node.inputs, node.weight)], bias=node.bias, denominator=node.output)
        return propagate(node, relevance, [term], self.stabilizer)


@dataclasses.dataclass(frozen=True)
class Uniform(Rule):
    r"""Products of several input-dependent factors (gating, bilinear maps).

    Each of the :math:`n` factors receives :math:`1/n` of the proportional split,
    :math:`R_i = \frac{1}{n} x_i \frac{\partial z}{\partial x_i} \frac{R}{z}` (the
    uniform rule of AttnLRP, Achtibat et al. 2024). For a product of two factors,
    each gets half; relevance is conserved by Euler's theorem.

    Parameters
    ----------
    stabilizer:
        ``>= 0``.
    """

    stabilizer: float = 1e-6
    kinds = frozenset({"product", "glu", "gate", "attention"})

    def __call__(self, node, relevance):
        n = len(node.inputs)
        term = Term([Branch(node.inputs, node.weight)], scale=1.0 / n, denominator=node.output)
        return propagate(node, relevance, [term], self.stabilizer)


@dataclasses.dataclass(frozen=True)
class SignalTakesAll(Rule):
    r"""Gated products :math:`z = s \odot g` with a sigmoid gate :math:`g`: all
    relevance goes to the signal :math:`s`, none to the gate (Arras et al. 2017,
    "Explaining recurrent neural network predictions in sentiment analysis").

    .. math:: R_s = s \odot J_s^\top \frac{R}{z}, \qquad R_g = 0

    the gate held constant; for an elementwise product (``mul``, ``div`` with
    :math:`s` of the output's shape) this is :math:`R_s = R`, computed without the
    division. The default rule of ``"gate"`` layers (LSTM and GRU cells, gated
    linear units); :class:`Uniform` gives the half split instead. Also the default
    of ``"normalize"`` layers (LayerNorm, RMSNorm: the normaliser is a constant, so
    the relevance goes to the centred input, as in AttnLRP and LXT) and, in
    :class:`~jaxlrp.composites.CPLRP`, of ``"attention"`` products (Ali et al.
    2022): for :math:`z = P v` with probabilities :math:`P` held constant,
    :math:`R_v = v \odot P^\top (R / z)`, so relevance moves across positions
    (reading out one token reaches the values of every position it attends to);
    with the stabiliser at 0 this is gradient x input of the function with
    ``stop_gradient`` on :math:`P`.

    Parameters
    ----------
    stabilizer:
        ``>= 0`` (matters only where the gate broadcasts over the signal, or the
        product contracts, as attention does).
    """

    stabilizer: float = 1e-6
    kinds = frozenset({"gate", "glu", "normalize", "attention", "divide"})

    def __call__(self, node, relevance):
        signal, gate = node.inputs
        elementwise = not node.primitive or node.primitive in PRODUCTS | QUOTIENTS
        if elementwise and signal.shape == relevance.shape:
            return relevance, jnp.zeros_like(gate)
        _, pull = jax.vjp(lambda s: node.apply((s, gate), None), signal)
        (g,) = pull(divide(relevance, stabilize(node.output, self.stabilizer)))
        return signal * g, jnp.zeros_like(gate)


@dataclasses.dataclass(frozen=True)
class Softmax(Rule):
    r"""Softmax :math:`s = \mathrm{softmax}(x)` (Achtibat et al. 2024, AttnLRP):

    .. math:: R_x = x \odot J^\top \frac{R}{s} = x \odot \Big(R - s \sum_j R_j\Big)

    (a first-order Taylor expansion at :math:`x` with the softmax's bias). The
    Jacobian is that of the recognised equations, so temperatures and shifts inside
    the softmax are taken into account. Entries masked with :math:`x = -\infty`
    (``jnp.where(mask, x, -jnp.inf)``) have :math:`s = 0` and no effect on the
    output: their relevance is 0 (the limit of :math:`x \cdot 0`), not NaN.

    Parameters
    ----------
    stabilizer:
        ``>= 0`` (softmax outputs are positive, so it only guards underflow).
    """

    stabilizer: float = 1e-6
    kinds = frozenset({"softmax"})

    def __call__(self, node, relevance):
        term = Term([Branch(node.inputs, None)], denominator=node.output)
        (r,) = propagate(node, relevance, [term], self.stabilizer)
        return (jnp.where(jnp.isneginf(node.inputs[0]), 0, r),)


@dataclasses.dataclass(frozen=True)
class Pass(Rule):
    """Identity: the relevance of the output is the relevance of the input.

    The default of elementwise activations (ReLU, tanh, GELU, ... and inference-mode
    BatchNorm that could not be folded into a preceding layer). On a dense or conv
    layer whose input and output have the same shape it skips the layer, as
    Captum's ``IdentityRule`` does; on other weighted layers it is refused when
    rules are assigned.
    """

    kinds = frozenset({"activation"}) | WEIGHTED_KINDS
    relevance_to_zeros = "routed"

    def check(self, layer):
        if layer.kind in WEIGHTED_KINDS and tuple(layer.input_shapes[0]) != tuple(layer.output_shape):
            return (
                f"the identity needs equal input and output shapes, got {layer.input_shapes[0]} -> "
                f"{layer.output_shape}"
            )
        return None

    def __call__(self, node, relevance):
        return (relevance,)


@dataclasses.dataclass(frozen=True)
class Gradient(Rule):
    r"""The plain gradient: :math:`R_{\text{in}} = J^\top R` for each input.

    An opt-in treatment for normalisers no rule covers (a ``"divide"`` layer such
    as LocalResponseNorm's :math:`x / (k + \alpha \sum x^2)^\beta`, or a
    ``"normalize"`` layer), chosen per layer in the composite. It does not conserve
    relevance in general; :class:`SignalTakesAll` (the denominator as a constant)
    does, where the shapes agree.

    It applies to every kind: on dense and conv layers it is the transposed weight
    (the bias plays no part), on activations the derivative of the activation (the
    equations of the activation are re-evaluated from its input). It is the rule of
    every layer but the ReLUs in the modified-gradient composites
    (:class:`~jaxlrp.composites.GuidedBackprop`, ...), as Zennit leaves the layers
    its composites do not name to the gradient.
    """

    kinds = frozenset(KINDS)

    def __call__(self, node, relevance):
        if node.apply is None:  # pragma: no cover - every node kind has an apply
            raise ValueError(f"Gradient needs the layer's function; none for a {node.kind!r} layer")
        _, pull = jax.vjp(lambda *xs: node.apply(xs, node.weight), *node.inputs)
        return tuple(pull(relevance.astype(node.output.dtype)))


class _ReLURule(Rule):
    """Base of the rules of ReLU activations ``max(z, 0)`` (Zennit's ``ReLU*`` hooks).

    Applies to activations that are exactly a ReLU of their input
    (:attr:`~jaxlrp.composites.Layer.function` ``== "relu"``); refused, when rules
    are assigned, on any other activation, including a ReLU that shares its
    elementwise region with other operations (an unfolded BatchNorm in front of it),
    where the rule would also have to undo those operations.
    """

    kinds = frozenset({"activation"})

    def check(self, layer):
        function = getattr(layer, "function", "")
        if function == "relu":
            return None
        if function == "rectified":
            return ("the ReLU follows other elementwise operations in the same activation (e.g. a BatchNorm "
                    "that is not folded into a preceding dense/conv layer), which the rule would skip; "
                    "explain a model whose ReLUs follow a dense/conv layer directly, or give this layer "
                    "the plain gradient (rules.Gradient())")
        return (f"{type(self).__name__} applies to ReLU activations (max(z, 0)) only; this activation "
                f"ends in {layer.primitive!r}; match only ReLUs (composites.relu)")


@dataclasses.dataclass(frozen=True)
class ReLUGuidedBackprop(_ReLURule):
    r"""Guided backpropagation through a ReLU (Springenberg et al. 2015; Zennit's
    ``ReLUGuidedBackprop``): the ReLU's gradient, and only where the signal coming
    from above is positive,

    .. math:: R_{\text{in}} = R \,[z > 0]\,[R > 0].
    """

    def __call__(self, node, relevance):
        (x,) = node.inputs
        keep = (x > 0) & (relevance > 0)
        return (jnp.where(keep, relevance, jnp.zeros_like(relevance)),)


@dataclasses.dataclass(frozen=True)
class ReLUDeconvNet(_ReLURule):
    r"""DeconvNet through a ReLU (Zeiler & Fergus 2014; Zennit's ``ReLUDeconvNet``):
    the ReLU applied to the signal coming from above, whatever the input,

    .. math:: R_{\text{in}} = \max(R, 0).
    """

    def __call__(self, node, relevance):
        return (jnp.maximum(relevance, jnp.zeros_like(relevance)),)


@dataclasses.dataclass(frozen=True)
class ReLUBetaSmooth(_ReLURule):
    r"""The ReLU's gradient replaced by that of a softplus of sharpness
    :math:`\beta` (Dombrowski et al. 2019; Zennit's ``ReLUBetaSmooth``):

    .. math:: R_{\text{in}} = \sigma(\beta z)\, R,

    with :math:`\sigma` the logistic function and :math:`z` the ReLU's input.

    Parameters
    ----------
    beta_smooth:
        ``> 0``; large values approach the ReLU's own gradient (Zennit's default 10).
    """

    beta_smooth: float = 10.0

    def __post_init__(self):
        beta = float(self.beta_smooth)
        if not beta > 0 or beta == float("inf"):
            raise ValueError(f"beta_smooth must be positive and finite, got {self.beta_smooth!r}")

    def __call__(self, node, relevance):
        (x,) = node.inputs
        gate = jax.nn.sigmoid(jnp.asarray(self.beta_smooth, x.dtype) * x)
        return ((gate * relevance).astype(relevance.dtype),)


# ------------------------------------------------------- rules of the seed papers (issue 16)


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

    def __post_init__(self):
        super().__post_init__()
        _check_nonneg("factor", self.factor)

    def __call__(self, node, relevance):
        b = layer_bias(node, self.ignore_bias)
        z = node.output if b is node.bias else node.output - node.bias
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

    def __post_init__(self):
        object.__setattr__(self, "shares", tuple(float(s) for s in self.shares))
        for s in self.shares:
            _check_nonneg("share", s)

    def __call__(self, node, relevance):
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

    def __call__(self, node, relevance):
        _, pull = jax.vjp(lambda x: node.apply((x,), None), node.inputs[0])
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

    def __call__(self, node, relevance):
        (x,) = node.inputs
        window_sum = _window_sum(node.apply, x)
        z, pull = jax.vjp(window_sum, x)
        (c,) = pull(divide(relevance, stabilize(z, self.stabilizer)))
        return (x * c,)


def _window_sum(apply: Callable, x: Array) -> Callable[[Array], Array]:
    """The sum over the windows of the ``reduce_window_max`` that ``apply`` binds."""
    jaxpr = jax.make_jaxpr(lambda x_: apply((x_,), None))(x).jaxpr
    eqns = [e for e in jaxpr.eqns if e.primitive.name == "reduce_window_max"]
    if len(eqns) != 1:
        raise ValueError("MaxPoolProportional applies to reduce_window_max layers only")
    p = eqns[0].params

    def window_sum(x_):
        return jax.lax.reduce_window(x_, jnp.zeros((), x_.dtype), jax.lax.add, p["window_dimensions"],
                                     p["window_strides"], p["padding"], p["base_dilation"], p["window_dilation"])

    return window_sum
