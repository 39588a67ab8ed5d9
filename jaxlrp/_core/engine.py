r"""The rule engine: :class:`Node`, :class:`Rule` and the modified-gradient formula.

A rule is a small immutable object; the interpreter calls it with a :class:`Node`
(the layer with the values of its forward pass) and the relevance at the layer's
output. Most rules list their :class:`Term` s and :class:`Branch` es and call
:func:`propagate`, which computes

.. math::

    R_{\text{in}} = \sum_t \text{scale}_t \sum_i c_i\, \tilde x_i \odot
        \rho_i(W)^\top \Big( \frac{m_t \odot R}{\operatorname{stab}(d_t)} \Big),
    \qquad d_t = \sum_i c_i\, \rho_i(W)\, \tilde x_i + \tilde b_t,

with vector-Jacobian products of the layer's own primitive. The formula, its
notation and the catalogue of rules built on it are documented in
:mod:`jaxlrp.rules`, which re-exports the public names of this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeGuard, Union

import jax
import jax.numpy as jnp

from . import primitives as P
from .kinds import AGGREGATE_KINDS, WEIGHTED_KINDS

#: What rules receive and return: JAX arrays (tracers under ``jit``, ``vmap`` and the
#: interpreter's own tracing are instances too).
Array = jax.Array
#: ``apply(inputs, weight) -> z``: a layer's own primitive, re-bound with its parameters.
Apply = Callable[[tuple, Optional[Array]], Array]



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
    apply: Optional[Apply]
    example_ndim: int = 0
    nonnegative: bool = False
    relu_gated: bool = False
    primitive: str = ""
    parameters: bool = False

    def function(self, who: str) -> Apply:
        """``apply``, for a rule (named ``who`` in the error) that needs the layer's
        function; ``ValueError`` where the node has none."""
        if self.apply is None:
            raise ValueError(f"{who} needs the layer's function (node.apply); the {self.kind} node has none")
        return self.apply


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

    def __post_init__(self) -> None:
        """Reject negative (or NaN) stabilisers and rule parameters with ``ValueError``
        (the fields of a dataclass rule; a rule that is no dataclass has none)."""
        if not dataclasses.is_dataclass(self):
            return
        for f in dataclasses.fields(self):
            if f.name in _NONNEGATIVE_PARAMETERS:
                check_nonnegative(f.name, getattr(self, f.name))

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
def depend(w: Array, r: Array) -> Array:
    """``w``, made to depend on ``r``: derive modified weights from ``depend(node.weight, relevance)``.

    A rule's modified weights (:math:`W^+`, :math:`W^2`, folded BatchNorm scales,
    ...) depend on the parameters only, so XLA's scheduler computes those of every
    layer at the start of the backward program and keeps them all alive to its
    end: peak memory grows by a copy of the model per modified weight (and
    ``optimization_barrier`` does not prevent it on CPU). Derived from
    ``depend(w, relevance)`` they are made layer by layer as the relevance arrives
    and freed after use. The value is ``w`` exactly: ``0 * r[0]`` is added (``r[0]``
    replaced by 0 where it is not finite, so a NaN marking one example cannot reach
    the weights), which XLA fuses into the derivation; under ``vmap`` the first
    example's, so ``w`` stays unbatched. Its derivative is that of ``w`` alone.

    Optional: results are the same without it, only the memory profile differs.
    :func:`propagate` applies it itself to the :math:`W^+` of :data:`POSITIVE_WEIGHT`.
    """
    return _depend(w, r)


@depend.defjvp
def _depend_jvp(primals: tuple, tangents: tuple) -> tuple:
    return depend(*primals), tangents[0]


@jax.custom_batching.custom_vmap
def _depend(w: Array, r: Array) -> Array:
    spec = getattr(getattr(jax.typeof(r), "sharding", None), "spec", ())
    if r.size == 0 or any(a is not None for a in spec):  # explicitly sharded: no slicing
        return w
    r0 = r.reshape(-1)[0].astype(w.dtype)
    # finite * 0 is 0: a NaN marking one example (a traced bad target) must not
    # reach the weights, and so every other example
    return w + jnp.zeros((), w.dtype) * jnp.where(jnp.isfinite(r0), r0, 0)


@_depend.def_vmap
def _depend_vmap(axis_size: int, in_batched: Sequence[bool], w: Array, r: Array) -> tuple[Array, bool]:
    w_batched, r_batched = in_batched
    return _depend(w, r[0] if r_batched else r), w_batched


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
    * :math:`W^+` is derived once (from :func:`depend`), its forward product at each
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
    weight: Union[Array, Combo, None] = None
    coef: float = 1.0

    def __post_init__(self) -> None:
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

    branches: Sequence[Branch]  # stored as a tuple
    bias: Optional[Array] = None
    mask: Optional[Array] = None
    scale: float = 1.0
    denominator: Optional[Array] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(self.branches))
        if not self.branches:
            raise ValueError("a Term needs at least one Branch")
        for br in self.branches:
            if not isinstance(br, Branch):
                raise TypeError(f"Term.branches holds Branch objects, got {type(br).__name__}")


#: A coefficient of the engine's sums: a Python number, or an array (traced rule parameters).
_Coef = Union[float, Array]
#: ``{id(input): (coefficient, input)}``: the multiplier of a transposed product.
_Multiplier = dict[int, tuple[_Coef, Array]]
#: ``{term index: coefficient}``: a combination of the terms' quotients.
_Direction = dict[int, _Coef]


class _Product:
    """One distinct (inputs, weight) pair: its forward value and the terms' coefficients on it."""

    __slots__ = ("inputs", "weight", "wkey", "value", "pull", "coefs")

    def __init__(self, inputs: tuple, weight: Any, wkey: Any):
        self.inputs, self.weight, self.wkey = inputs, weight, wkey
        self.value: Optional[Array] = None
        self.pull: Optional[Callable] = None
        self.coefs: _Direction = {}  # the coefficient of each term's quotient in this product's cotangent

    def forward(self, node: Node) -> Array:
        if self.value is not None:
            return self.value
        apply, point = _apply(node), _point(node, self.inputs, self.weight)
        if _linear(node):  # the transposed product does not depend on the point: no vjp here
            value = apply(point, self.weight)
        else:
            value, self.pull = jax.vjp(lambda *xs: apply(xs, self.weight), *point)
        self.value = value
        return value

    def add(self, t: int, coef: _Coef) -> None:
        self.coefs[t] = coef if t not in self.coefs else self.coefs[t] + coef

    def cotangent(self, quotients: Sequence[Array]) -> Array:
        return _combine([(c, quotients[t]) for t, c in self.coefs.items()])


def _apply(node: Node) -> Apply:
    """``node.apply`` for :func:`propagate` (an activation has no product to propagate through)."""
    return node.function("propagate")


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
    x, apply = node.inputs[0], _apply(node)
    try:
        jaxpr = jax.make_jaxpr(lambda x_: apply((x_,), weight))(jax.ShapeDtypeStruct(x.shape, x.dtype)).jaxpr
    except Exception:  # noqa: BLE001 -- not traceable on its own: assume nothing
        return frozenset()
    if len(jaxpr.eqns) != 1 or jaxpr.eqns[0].outvars[0] is not jaxpr.outvars[0]:
        return frozenset()
    (e,), v = jaxpr.eqns, jaxpr.invars[0]
    ops = [u is v for u in e.invars]
    if P.LINEAR.get(e.primitive.name) == "conv" and ops == [True, False]:
        if e.params["batch_group_count"] != 1:
            return frozenset()
        return frozenset({e.params["dimension_numbers"].lhs_spec[0]})
    if P.LINEAR.get(e.primitive.name) == "dense" and sorted(ops) == [False, True]:
        side = ops.index(True)
        (contract, batch) = (d[side] for d in e.params["dimension_numbers"])
        return frozenset(range(x.ndim)) - set(contract) - set(batch)
    return frozenset()


def _concrete(c: object) -> TypeGuard[float]:
    return isinstance(c, (int, float)) and not isinstance(c, bool)


def _floats(d: dict[int, _Coef]) -> Optional[dict[int, float]]:
    """``d`` where every coefficient is a concrete number, else ``None``."""
    out = {t: c for t, c in d.items() if _concrete(c)}
    return out if len(out) == len(d) else None


def _parallel(a: dict[int, _Coef], b: dict[int, _Coef]) -> Optional[float]:
    """``l`` with ``b == l * a`` (concrete coefficients over the same terms), else ``None``."""
    fa, fb = _floats(a), _floats(b)
    if fa is None or fb is None or fa.keys() != fb.keys():
        return None
    t0 = next(iter(fa))
    if fa[t0] == 0:
        return None
    lam = fb[t0] / fa[t0]
    return lam if all(abs(fb[t] - lam * fa[t]) <= 1e-12 * abs(fb[t]) + 1e-300 for t in fa) else None


class _Products:
    """The products of one :func:`propagate` call, keyed by (ids of inputs, weight key)."""

    def __init__(self, node: Node, relevance: Array):
        self.node, self.relevance = node, relevance
        self.table: dict[tuple[tuple[int, ...], Any], _Product] = {}  # (ids of inputs, weight key) -> product
        self._w_pos: Optional[Array] = None

    def w_pos(self) -> Array:
        if self._w_pos is None:  # made once, when first needed
            self._w_pos = positive(depend(self.node.weight, self.relevance))
        return self._w_pos

    def basis(self, br: Branch) -> list[tuple[Any, float, Optional[Array]]]:
        """``[(key, coefficient, weight)]`` of a branch's weight."""
        if not isinstance(br.weight, Combo):
            return [(id(br.weight), 1.0, br.weight)]
        out: list[tuple[Any, float, Optional[Array]]] = []
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

    def pull_back(self, quotients: Sequence[Array]) -> tuple:
        """:math:`\\sum` over products of inputs times the transposed product of their cotangents."""
        if _linear(self.node):
            return (self._pull_back_linear(quotients),)
        node, apply = self.node, _apply(self.node)
        out = [jnp.zeros_like(x) for x in node.inputs]
        for p in self.table.values():
            if p.pull is None:
                point = tuple(jnp.broadcast_to(a, x.shape) for a, x in zip(p.inputs, node.inputs))
                _, p.pull = jax.vjp(lambda *xs, w=p.weight: apply(xs, w), *point)
            for k, g in enumerate(p.pull(p.cotangent(quotients))):
                out[k] = out[k] + p.inputs[k] * g
        return tuple(out)

    def _pull_back_linear(self, quotients: Sequence[Array]) -> Array:
        r"""As few transposed products as the terms' structure allows.

        The transposed product of a linear layer is the same at every input and
        bilinear in (weight, cotangent), so ``sum_p x_p * W_p^T ct_p`` is regrouped:
        products with the same weight share one transposed product per direction of
        their cotangents (gamma's :math:`x^+` and :math:`x^-` on :math:`W^+`,
        z-box's :math:`x` and :math:`h` on :math:`W`), or one per term where that is
        fewer; pieces with the same multiplier and direction on different weights
        share one with the combined weight (:math:`W + \gamma W^+`).
        """
        (x,), apply = self.node.inputs, _apply(self.node)
        groups: dict[Any, list[_Product]] = {}  # weight key -> its products
        for p in self.table.values():
            groups.setdefault(p.wkey, []).append(p)
        pieces: list[tuple[_Multiplier, _Direction, list[tuple[_Coef, Array]]]] = []  # ..., [(coef, weight)]
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
            _, pull = jax.vjp(lambda x_, w=w: apply((x_,), w), x)
            (g,) = pull(_combine([(c, quotients[t]) for t, c in direction.items()]))
            out = out + _combine([(c, a) for c, a in mult.values()]) * g
        return out


def _combine(pairs: Sequence[tuple[_Coef, Array]]) -> Array:
    """``sum c * a`` over ``(c, a)`` (at least one pair), without multiplying by a coefficient of 1."""
    if not pairs:
        raise ValueError("_combine needs at least one (coefficient, array) pair")
    terms = [a if _concrete(c) and c == 1.0 else c * a for c, a in pairs]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _directions(ps: list[_Product]) -> list[tuple[_Multiplier, _Direction]]:
    """``[(multiplier, direction)]``, ``multiplier = {id: (coef, input)}`` and
    ``direction = {term: coef}``, with ``sum multiplier * W^T direction`` equal to the
    products' ``sum x_p * W^T cotangent_p``: one per class of proportional
    cotangents, or one per term where that is fewer."""
    classes: list[tuple[_Product, list[tuple[float, _Product]]]] = []  # reference product, [(lambda, product)]
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
        if d is None:  # every branch's weight is Combo(0, 0): its products are zero
            d = jnp.zeros_like(node.output)
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
    _apply(node)  # refuse a node without a product before anything is computed
    products = _Products(node, relevance)
    quotients = [_quotient(products, term, relevance, epsilon) for term in terms]
    for t, term in enumerate(terms):
        for br in term.branches:
            for key, c, w in products.basis(br):
                products.entry(br, key, w).add(t, term.scale * br.coef * c)
    relevance_in = products.pull_back(quotients)
    if node.parameters and node.weight is not None:
        return (*relevance_in, *_parameter_relevance(products, node.weight, terms, quotients))
    return relevance_in


def _parameter_relevance(products: _Products, weight: Array, terms: Sequence[Term], quotients: Sequence[Array]) -> tuple:
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
    node, apply = products.node, _apply(products.node)
    w_rel = jnp.zeros(weight.shape, weight.dtype)
    for p in products.table.values():
        point = tuple(jnp.broadcast_to(a, x.shape) for a, x in zip(p.inputs, node.inputs))
        _, pull = jax.vjp(lambda w, point=point: apply(point, w), p.weight)
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


def check_nonnegative(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")
