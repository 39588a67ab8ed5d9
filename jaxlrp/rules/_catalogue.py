"""The catalogue of rules: Zennit's, AttnLRP's and the modified backpropagations.

Each rule is a frozen dataclass of its hyper-parameters whose ``__call__`` lists
terms and branches for :func:`jaxlrp._core.engine.propagate` (or, for the rules
that are not of the modified-gradient form, computes the relevance directly).
The formulas are in each class's docstring and in :mod:`jaxlrp.rules`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from .._core.kinds import AGGREGATE_KINDS, KINDS, WEIGHTED_KINDS
from .._core.primitives import PRODUCTS, QUOTIENTS
from .._core.engine import (
    LAYER_WEIGHT,
    POSITIVE_WEIGHT,
    Array,
    Branch,
    Combo,
    Node,
    Rule,
    Term,
    constant_input,
    depend,
    divide,
    layer_bias,
    negative,
    positive,
    propagate,
    sign_parts,
    signed_branches,
    stabilize,
)


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

    def __call__(self, node: Node, relevance: Array) -> tuple:
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
        # W- only where x has a negative part: its branch is the only one that reads it
        w_neg = None if node.nonnegative else negative(depend(node.weight, relevance))
        term = _positive_term(node, sign_parts(node), w_neg, self.ignore_bias)
        return propagate(node, relevance, [term], self.stabilizer)


def _positive_term(node: Node, parts: tuple, w_neg: Optional[Array], ignore_bias: bool, scale: float = 1.0) -> Term:
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha - beta == 1, got alpha={self.alpha}, beta={self.beta}")

    def __call__(self, node: Node, relevance: Array) -> tuple:
        parts, w_neg = sign_parts(node), negative(depend(node.weight, relevance))  # shared by the terms
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
        # z > 0: x+ (w + g w+) + x- (w + g w-) = z + g (x+ w+ + x- w-); z < 0: x+ (w + g w-) +
        # x- (w + g w+) = (1 + g) z - g (x+ w+ + x- w-), a sum of same-signed parts where z < 0.
        # z is the forward output, so only x+ w+ and x- w- are new products (only x w+ for x >= 0).
        g, z = self.gamma, node.output
        parts = sign_parts(node)
        w_neg = () if node.nonnegative else (negative(depend(node.weight, relevance)),)
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

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            bad = bool(jnp.any(jnp.asarray(self.low) > jnp.asarray(self.high)))
        except jax.errors.ConcretizationTypeError:  # traced bounds: cannot check
            bad = False
        if bad:
            raise ValueError("ZBox needs low <= high")

    def __call__(self, node: Node, relevance: Array) -> tuple:
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
        if node.weight is None:
            raise ValueError(f"Flat needs a weighted layer, the {node.kind} node has no weight")
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
        term = Term(
            [Branch((constant_input(1.0, node),), jnp.square(depend(node.weight, relevance)))],
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
        signal, gate = node.inputs
        elementwise = not node.primitive or node.primitive in PRODUCTS | QUOTIENTS
        if elementwise and signal.shape == relevance.shape:
            return relevance, jnp.zeros_like(gate)
        apply = node.function("SignalTakesAll")
        _, pull = jax.vjp(lambda s: apply((s, gate), None), signal)
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
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

    def check(self, layer: Any) -> Optional[str]:
        if layer.kind in WEIGHTED_KINDS and tuple(layer.input_shapes[0]) != tuple(layer.output_shape):
            return (
                f"the identity needs equal input and output shapes, got {layer.input_shapes[0]} -> "
                f"{layer.output_shape}"
            )
        return None

    def __call__(self, node: Node, relevance: Array) -> tuple:
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
        apply = node.function("Gradient")  # every node kind has one
        _, pull = jax.vjp(lambda *xs: apply(xs, node.weight), *node.inputs)
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

    def check(self, layer: Any) -> Optional[str]:
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

    def __call__(self, node: Node, relevance: Array) -> tuple:
        (x,) = node.inputs
        keep = (x > 0) & (relevance > 0)
        return (jnp.where(keep, relevance, jnp.zeros_like(relevance)),)


@dataclasses.dataclass(frozen=True)
class ReLUDeconvNet(_ReLURule):
    r"""DeconvNet through a ReLU (Zeiler & Fergus 2014; Zennit's ``ReLUDeconvNet``):
    the ReLU applied to the signal coming from above, whatever the input,

    .. math:: R_{\text{in}} = \max(R, 0).
    """

    def __call__(self, node: Node, relevance: Array) -> tuple:
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

    def __post_init__(self) -> None:
        beta = float(self.beta_smooth)
        if not beta > 0 or beta == float("inf"):
            raise ValueError(f"beta_smooth must be positive and finite, got {self.beta_smooth!r}")

    def __call__(self, node: Node, relevance: Array) -> tuple:
        (x,) = node.inputs
        gate = jax.nn.sigmoid(jnp.asarray(self.beta_smooth, x.dtype) * x)
        return ((gate * relevance).astype(relevance.dtype),)
