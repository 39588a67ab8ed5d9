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
:func:`constant_input` marks an input the same for every example; :func:`depend`
keeps modified weights from being built all at once. Every built-in weighted rule
is written this way (docs: "Writing a rule").
"""

from __future__ import annotations

import warnings

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
from .._core.kinds import AGGREGATE_KINDS, WEIGHTED_KINDS
from ._catalogue import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Pass,
    ReLUBetaSmooth,
    ReLUDeconvNet,
    ReLUGuidedBackprop,
    SignalTakesAll,
    Softmax,
    Uniform,
    WSquare,
    ZBox,
    Zero,
    ZPlus,
)
from ._papers import EpsilonStd, FixedShares, MaxPoolProportional, WinnerTakesAll

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
    "depend",
    "sign_parts",
    "signed_branches",
    "layer_bias",
    "constant_input",
    "positive",
    "negative",
    "stabilize",
    "divide",
]

#: Names kept one release for old code, left out of ``__all__``.
_DEPRECATED = frozenset({"after"})


def after(w: Array, r: Array) -> Array:
    """Deprecated name of :func:`depend` (it read as a word of time); removed in the next release."""
    warnings.warn("jaxlrp.rules.after is renamed jaxlrp.rules.depend; the old name goes in the next release",
                  DeprecationWarning, stacklevel=2)
    return depend(w, r)
