"""The kinds of rule-bearing operations, defined once.

:mod:`jaxlrp.composites` says what each kind is in the jaxpr and gives its default
rule; the analysis (:mod:`jaxlrp._core.analysis`) assigns them; rules declare the kinds
they apply to.
"""

from __future__ import annotations

from typing import Literal, get_args

Kind = Literal[
    "dense", "conv", "sum", "avgpool", "maxpool", "product", "glu", "gate", "attention", "normalize", "divide",
    "softmax", "activation",
]
#: Every kind, in the order of the table in :mod:`jaxlrp.composites`.
KINDS: tuple = get_args(Kind)
#: Kinds that have a weight (``dot_general`` / ``conv_general_dilated``).
WEIGHTED_KINDS: frozenset = frozenset({"dense", "conv"})
#: Parameter-free linear aggregations (sums, means, average pooling).
AGGREGATE_KINDS: frozenset = frozenset({"sum", "avgpool"})
#: Kinds with no default rule: the composite must choose one, or tracing fails.
OPT_IN_KINDS: frozenset = frozenset({"divide"})
