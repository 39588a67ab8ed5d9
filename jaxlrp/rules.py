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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from ._kinds import AGGREGATE_KINDS, WEIGHTED_KINDS

Array = Any

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
    "Norm",
    "Uniform",
    "SignalTakesAll",
    "Softmax",
    "EpsilonStd",
    "FixedShares",
    "WinnerTakesAll",
    "MaxPoolProportional",
    "WEIGHTED_KINDS",
    "Combo",
    "after",
]



class Node(NamedTuple):
    """A layer as a rule sees it, with the values of the forward pass.

    Attributes
    ----------
    kind:
        ``"dense"``, ``"conv"``, ``"sum"``, ``"avgpool"``, ``"maxpool"``, ``"product"``,
        ``"gate"`` (a signal times a sigmoid gate), ``"normalize"`` (a signal times
        or divided by a normaliser such as LayerNorm's), ``"attention"`` (a signal
        times softmax probabilities) -- for these three ``inputs`` is
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
    """

    kind: str
    inputs: tuple
    weight: Optional[Array]
    bias: Optional[Array]
    output: Array
    apply: Optional[Callable[[tuple, Optional[Array]], Array]]
    example_ndim: int = 0
    nonnegative: bool = False


_NONNEGATIVE_PARAMETERS = frozenset({"epsilon", "stabilizer", "gamma", "alpha", "beta"})


class Rule:
    """Base class of rules.

    A rule is an immutable object; subclasses set ``kinds`` (the node kinds the rule
    can be applied to) and implement ``__call__(node, relevance) -> tuple`` of the
    relevance of each entry of ``node.inputs``.
    """

    kinds: frozenset = frozenset()

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


def _stabilize(d: Array, eps: float) -> Array:
    return d + eps * jnp.where(d >= 0, 1, -1).astype(d.dtype)


def _divide(r: Array, d: Array) -> Array:
    """``r / d`` with ``0`` where ``d == 0`` (and no NaN in either branch)."""
    zero = d == 0
    return jnp.where(zero, 0, r / jnp.where(zero, 1, d))


@jax.custom_jvp
def after(w: Array, r: Array) -> Array:
    """``w``, made to depend on ``r``, for deriving modified weights from.

    A rule's modified weights (``W+``, folded BatchNorm scales, ...) depend on the
    parameters only, so XLA's scheduler computes those of every layer at the start
    of the program and keeps them alive to the end (and drops
    ``optimization_barrier`` on CPU). Derived from ``after(w, relevance)`` they are
    made layer by layer as the relevance arrives. Adds ``0 * r[0]`` (``r[0]``
    replaced by 0 where it is not finite), fused into the derivation; under ``vmap`` the first example's, so ``w`` stays unbatched.
    Its derivative is that of ``w`` alone.
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


def _pos(a: Array) -> Array:
    return jnp.maximum(a, 0)


def _neg(a: Array) -> Array:
    return jnp.minimum(a, 0)


class Combo(NamedTuple):
    """The weight ``a * W + b * W+`` (``W`` the layer's weight, ``W+ = max(W, 0)``).

    A rule may give a modified weight this way; the engine then evaluates the
    layer on the two basis weights only: the product with ``W`` at the layer's own
    input is its forward output ``z`` (no recomputation), and each basis weight
    needs one transposed product however many terms use it. Use it only where no
    denominator becomes a difference of nearly equal products: a denominator that
    should be exactly zero would become rounding noise, amplified by the division
    (e.g. ``W- = W - W+`` in the negative part of alpha-beta). Gamma qualifies:
    its denominators are at least ``|z|`` in size.
    """

    a: float
    b: float


W, W_POS = Combo(1.0, 0.0), Combo(0.0, 1.0)


class _Branch(NamedTuple):
    inputs: tuple  # modified inputs (point of evaluation and multiplier)
    weight: Any  # a modified weight array, a Combo, or None (parameter-free nodes)
    coef: float = 1.0


class _Term(NamedTuple):
    branches: Sequence[_Branch]
    bias: Optional[Array] = None
    mask: Optional[Array] = None
    scale: float = 1.0
    denominator: Optional[Array] = None  # use instead of recomputing the forward


def _propagate(node: Node, relevance: Array, terms: Sequence[_Term], eps: float) -> tuple:
    """Evaluate the modified-gradient formula of the module docstring.

    Products are shared between terms: each distinct pair of (inputs, weight) is
    evaluated forward at most once and pulled back once, with the sum of the
    relevance quotients that use it (the transposed product is linear).
    """
    products = {}  # (ids of inputs, weight key) -> [inputs, weight, forward value, pullback, cotangent]
    w_pos = []  # W+, made once when first needed

    def basis(br: _Branch) -> list:
        """``[(key, coefficient, weight)]`` of a branch's weight."""
        if not isinstance(br.weight, Combo):
            return [(id(br.weight), 1.0, br.weight)]
        out = []
        if br.weight.a:
            own = all(a is b for a, b in zip(br.inputs, node.inputs))
            out.append(("own" if own else "w", br.weight.a, node.weight))
        if br.weight.b:
            w_pos[:] = w_pos or [_pos(after(node.weight, relevance))]
            out.append(("w+", br.weight.b, w_pos[0]))
        return out

    def entry(br: _Branch, key, weight) -> list:
        k = (tuple(id(a) for a in br.inputs), key)
        if k not in products:
            products[k] = [br.inputs, weight, None, None, None]
        return products[k]

    quotients = []
    for term in terms:
        d, bias = term.denominator, term.bias
        if d is None:
            for br in term.branches:
                for key, c, w in basis(br):
                    e = entry(br, key, w)
                    if key == "own":  # z = x W + b is known; its bias moves into the bias sum
                        z = node.output
                        if node.bias is not None:
                            bias = -br.coef * c * node.bias if bias is None else bias - br.coef * c * node.bias
                    else:
                        if e[2] is None:
                            e[2], e[3] = jax.vjp(lambda *xs, w=w: node.apply(xs, w), *br.inputs)
                        z = e[2]
                    d = br.coef * c * z if d is None else d + br.coef * c * z
            if bias is not None:
                d = d + bias
        r = relevance if term.mask is None else jnp.where(term.mask, relevance, 0)
        s = _divide(r, _stabilize(d, eps))
        quotients.append(s)
    for term, s in zip(terms, quotients):
        for br in term.branches:
            for key, c, w in basis(br):
                e = entry(br, key, w)
                contribution = (term.scale * br.coef * c) * s
                e[4] = contribution if e[4] is None else e[4] + contribution
    out = [jnp.zeros_like(x) for x in node.inputs]
    for inputs, weight, _, pull, cotangent in products.values():
        if pull is None:
            _, pull = jax.vjp(lambda *xs, w=weight: node.apply(xs, w), *inputs)
        for k, g in enumerate(pull(cotangent)):
            out[k] = out[k] + inputs[k] * g
    return tuple(out)


def _bias(node: Node, ignore: bool) -> Optional[Array]:
    return None if ignore else node.bias


def _map_bias(b: Optional[Array], f: Callable[[Array], Array]) -> Optional[Array]:
    return None if b is None else f(b)


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


    def __call__(self, node, relevance):
        b = _bias(node, self.ignore_bias)
        denominator = node.output if b is node.bias else None
        term = _Term([_Branch(node.inputs, node.weight)], bias=b, denominator=denominator)
        return _propagate(node, relevance, [term], self.epsilon)


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


    def __call__(self, node, relevance):
        term = _positive_term(node, _parts(node), _neg(after(node.weight, relevance)), self.ignore_bias)
        return _propagate(node, relevance, [term], self.stabilizer)


def _parts(node: Node) -> tuple:
    """``(x+, x-)`` of the layer's input, or ``(x,)`` where ``x >= 0`` is known."""
    (x,) = node.inputs
    return (x,) if node.nonnegative else (_pos(x), _neg(x))


def _signed(parts: tuple, w_pos, w_neg) -> list:
    """Branches ``x+ w_pos + x- w_neg`` over the :func:`_parts` of the input."""
    return [_Branch((x,), w) for x, w in zip(parts, (w_pos, w_neg))]


def _positive_term(node: Node, parts: tuple, w_neg: Array, ignore_bias: bool, scale: float = 1.0) -> _Term:
    return _Term(_signed(parts, W_POS, w_neg), bias=_map_bias(_bias(node, ignore_bias), _pos), scale=scale)


def _negative_term(node: Node, parts: tuple, w_neg: Array, ignore_bias: bool, scale: float) -> _Term:
    return _Term(_signed(parts, w_neg, W_POS), bias=_map_bias(_bias(node, ignore_bias), _neg), scale=scale)


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

    def __post_init__(self):
        super().__post_init__()
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha - beta == 1, got alpha={self.alpha}, beta={self.beta}")

    def __call__(self, node, relevance):
        parts, w_neg = _parts(node), _neg(after(node.weight, relevance))  # shared by the terms
        terms = [_positive_term(node, parts, w_neg, self.ignore_bias, self.alpha)]
        if self.beta:
            terms.append(_negative_term(node, parts, w_neg, self.ignore_bias, -self.beta))
        return _propagate(node, relevance, terms, self.stabilizer)


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


    def __call__(self, node, relevance):
        g, z = self.gamma, node.output
        P, N = Combo(1.0, g), Combo(1.0 + g, -g)  # w + g w+, w + g w-
        b, parts = _bias(node, self.ignore_bias), _parts(node)
        terms = [
            _Term(_signed(parts, P, N), _map_bias(b, lambda b: b + g * _pos(b)), z > 0),
            _Term(_signed(parts, N, P), _map_bias(b, lambda b: b + g * _neg(b)), z < 0),
        ]
        return _propagate(node, relevance, terms, self.stabilizer)


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

    def __post_init__(self):
        super().__post_init__()
        try:
            bad = bool(jnp.any(jnp.asarray(self.low) > jnp.asarray(self.high)))
        except jax.errors.ConcretizationTypeError:  # traced bounds: cannot check
            bad = False
        if bad:
            raise ValueError("ZBox needs low <= high")

    def __call__(self, node, relevance):
        (x,), w = node.inputs, node.weight
        w_ = after(w, relevance)
        low = jnp.broadcast_to(jnp.asarray(self.low, x.dtype), x.shape)
        high = jnp.broadcast_to(jnp.asarray(self.high, x.dtype), x.shape)
        term = _Term([_Branch((x,), w), _Branch((low,), _pos(w_), -1.0), _Branch((high,), _neg(w_), -1.0)])
        return _propagate(node, relevance, [term], self.stabilizer)


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


    def __call__(self, node, relevance):
        (x,) = node.inputs
        term = _Term([_Branch((jnp.ones_like(x),), jnp.ones_like(node.weight))])
        return _propagate(node, relevance, [term], self.stabilizer)


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


    def __call__(self, node, relevance):
        (x,) = node.inputs
        term = _Term(
            [_Branch((jnp.ones_like(x),), jnp.square(after(node.weight, relevance)))],
            bias=_map_bias(_bias(node, self.ignore_bias), jnp.square),
        )
        return _propagate(node, relevance, [term], self.stabilizer)


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


    def __call__(self, node, relevance):
        term = _Term([_Branch(node.inputs, node.weight)], bias=node.bias, denominator=node.output)
        return _propagate(node, relevance, [term], self.stabilizer)


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
    kinds = frozenset({"product", "gate", "attention"})


    def __call__(self, node, relevance):
        n = len(node.inputs)
        term = _Term([_Branch(node.inputs, node.weight)], scale=1.0 / n, denominator=node.output)
        return _propagate(node, relevance, [term], self.stabilizer)


@dataclasses.dataclass(frozen=True)
class SignalTakesAll(Rule):
    r"""Gated products :math:`z = s \odot g` with a sigmoid gate :math:`g`: all
    relevance goes to the signal :math:`s`, none to the gate (Arras et al. 2017,
    "Explaining recurrent neural network predictions in sentiment analysis").

    .. math:: R_s = s \frac{\partial z}{\partial s} \frac{R}{z} = R, \qquad R_g = 0

    The default rule of ``"gate"`` layers (LSTM and GRU cells, gated linear units);
    :class:`Uniform` gives the half split instead. Also the default of
    ``"normalize"`` layers (LayerNorm, RMSNorm: the normaliser is a constant, so the
    relevance goes to the centred input, as in AttnLRP and LXT) and, in
    :class:`~jaxlrp.composites.CPLRP`, of ``"attention"`` products (all relevance to
    the values, none through the attention weights; Ali et al. 2022).

    Parameters
    ----------
    stabilizer:
        ``>= 0`` (matters only where the gate broadcasts over the signal).
    """

    stabilizer: float = 1e-6
    kinds = frozenset({"gate", "normalize", "attention", "divide"})

    def __call__(self, node, relevance):
        signal, gate = node.inputs
        if signal.shape == relevance.shape:
            return relevance, jnp.zeros_like(gate)
        _, pull = jax.vjp(lambda s: node.apply((s, gate), None), signal)
        (g,) = pull(_divide(relevance, _stabilize(node.output, self.stabilizer)))
        return signal * g, jnp.zeros_like(gate)


@dataclasses.dataclass(frozen=True)
class Softmax(Rule):
    r"""Softmax :math:`s = \mathrm{softmax}(x)` (Achtibat et al. 2024, AttnLRP):

    .. math:: R_x = x \odot J^\top \frac{R}{s} = x \odot \Big(R - s \sum_j R_j\Big)

    (a first-order Taylor expansion at :math:`x` with the softmax's bias). The
    Jacobian is that of the recognised equations, so temperatures and shifts inside
    the softmax are taken into account.

    Parameters
    ----------
    stabilizer:
        ``>= 0`` (softmax outputs are positive, so it only guards underflow).
    """

    stabilizer: float = 1e-6
    kinds = frozenset({"softmax"})


    def __call__(self, node, relevance):
        term = _Term([_Branch(node.inputs, None)], denominator=node.output)
        return _propagate(node, relevance, [term], self.stabilizer)


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
    """

    kinds = frozenset({"divide", "normalize"})

    def __call__(self, node, relevance):
        _, pull = jax.vjp(lambda *xs: node.apply(xs, node.weight), *node.inputs)
        return tuple(pull(relevance.astype(node.output.dtype)))


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
    :class:`Epsilon` with ``epsilon``.

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

    def __post_init__(self):
        super().__post_init__()
        _check_nonneg("factor", self.factor)

    def __call__(self, node, relevance):
        b = _bias(node, self.ignore_bias)
        z = node.output if b is node.bias else node.output - node.bias
        axes = _example_axes(z, node.example_ndim)
        c = z - jnp.mean(z, axis=axes, keepdims=True) if self.centered else z
        spread = jnp.sqrt(jnp.mean(jnp.square(c), axis=axes, keepdims=True))
        eps = self.factor * spread + jnp.asarray(self.epsilon, z.dtype)
        term = _Term([_Branch(node.inputs, node.weight)], bias=b, denominator=z)
        return _propagate(node, relevance, [term], eps)


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

    def __call__(self, node, relevance):
        (x,) = node.inputs
        window_sum = _window_sum(node.apply, x)
        z, pull = jax.vjp(window_sum, x)
        (c,) = pull(_divide(relevance, _stabilize(z, self.stabilizer)))
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
