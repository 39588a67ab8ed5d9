"""Explanation-quality metrics, compiled and batched.

Every metric is a pure JAX function over a batch: explanations (relevance) and
inputs carry a leading example axis ``N`` and every score is returned per example,
as an array of shape ``(N,)`` (or ``(N, steps + 1)`` for perturbation curves).
No metric loops over examples, perturbation steps or random draws in Python: they
use ``vmap``, ``lax.scan``, sorting and segment sums, so each one can be wrapped
in :func:`jax.jit` and mapped with :func:`jax.vmap`.

Models and explainers are plain callables, so the metrics do not depend on how an
explanation was computed:

* ``model(x_batch) -> logits`` of shape ``(N, C)``;
* ``explain(x_batch) -> relevance`` of the shape of ``x_batch`` (e.g. a closure
  over ``jaxlrp.lrp(model.apply, composite)`` and the variables);
* ``explain_with_params(params, x_batch) -> relevance`` for the randomisation test.

Masks are boolean arrays with the same number of axes as the relevance, whose
shape broadcasts to the relevance's shape (use size-1 axes, e.g. ``(N, H, W, 1)``
for a per-pixel mask of ``(N, H, W, C)`` relevance).

Score directions
----------------
=====================================  ======================================
metric                                 better
=====================================  ======================================
:func:`conservation_error`             lower (0 = relevance sums to the logit)
:func:`relevance_mass_accuracy`        higher (at most 1 for modes positive, abs)
:func:`relevance_rank_accuracy`        higher (in [0, 1])
:func:`pointing_game`                  higher (0 or 1)
:func:`sparseness`                     higher (Gini index in [0, 1))
:func:`complexity`                     lower (entropy in [0, log d])
:func:`aopc` of a MoRF curve           higher (the logit drops fast)
:func:`abpc`                           higher
:func:`faithfulness_correlation`       higher (in [-1, 1])
:func:`max_sensitivity`                lower
:func:`local_lipschitz_estimate`       lower
:func:`model_parameter_randomisation`  lower similarity (explanations depend on
                                       the parameters)
:func:`irof`                           higher (area over the removal curve)
:func:`road`                           accuracy per percentage; MoRF: lower
:func:`infidelity`                     lower
:func:`monotonicity_correlation`       higher (in [-1, 1])
:func:`avg_sensitivity`                lower
:func:`random_logit`                   lower similarity (class-sensitive)
=====================================  ======================================

Random parts (noise, subsets, replacement values, other classes) can be passed in
as arrays instead of a ``key``, so that a score can be reproduced exactly and
compared with another library's.

Undefined scores are NaN rather than errors, because they depend on values that
may be traced under ``jit``: an empty mask, an all-zero relevance, a zero logit, a
constant series in a correlation.
"""

# The metrics live in private files by category (faithfulness, robustness, localisation,
# complexity, randomisation; _common: input checks, types and correlations); this module
# is their one public place.

from ._common import Array as Array  # the argument types, as before the split
from ._common import Baseline as Baseline
from ._common import Explainer as Explainer
from ._common import Model as Model
from ._common import pearson, rankdata, spearman
from ._complexity import (
    complexity,
    sparseness,
)
from ._faithfulness import (
    abpc,
    aopc,
    conservation,
    conservation_error,
    faithfulness_correlation,
    infidelity,
    irof,
    monotonicity_correlation,
    noisy_linear_imputation,
    pixel_flipping,
    road,
)
from ._localisation import (
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from ._randomisation import (
    model_parameter_randomisation,
    random_logit,
)
from ._robustness import (
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
)

__all__ = [
    "conservation",
    "conservation_error",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "pointing_game",
    "sparseness",
    "complexity",
    "pixel_flipping",
    "aopc",
    "abpc",
    "faithfulness_correlation",
    "max_sensitivity",
    "local_lipschitz_estimate",
    "model_parameter_randomisation",
    "irof",
    "road",
    "noisy_linear_imputation",
    "infidelity",
    "monotonicity_correlation",
    "avg_sensitivity",
    "random_logit",
    "pearson",
    "spearman",
    "rankdata",
]
