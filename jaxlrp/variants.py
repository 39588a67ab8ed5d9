r"""LRP variants: Relative LRP (R-LRP) and Pruned LRP (PLRP-:math:`\lambda`, PLRP-M).

Both variants are ordinary rules and composites: :func:`relative` and :func:`pruned`
return :class:`~jaxlrp.composites.Composite` objects for :func:`jaxlrp.lrp`, so they
work on every architecture the core supports (dense, convolutional, residual), per
example, under :func:`jax.jit` and :func:`jax.vmap`, and the relevance of
intermediate layers is available through ``lrp``'s ``layers=`` argument::

    explain = jaxlrp.lrp(model.apply, variants.pruned(composites.EpsilonPlusFlat(), 0.3))
    R, per_layer = jax.jit(explain)(variables, x, target=3, layers="linear")

.. note::

   The full texts of the two papers were not available when this module was
   written. The definitions below are this project's reading of what the authors
   published (the abstracts, and third-party summaries and re-implementations of
   the pruning paper), not a verified reproduction of their equations.

Notation: for one example, :math:`x` is a layer's input, :math:`W` its weight,
:math:`R^{\text{out}}` the relevance of its output and :math:`r` the relevance of
its input; sums :math:`\sum` run over all axes of a value except the leading
``node.example_ndim`` axes, which index examples (every quantity below is computed
per example, with no loop over examples).

Relative LRP
------------
Nyiri & Gibaru (2025), "Relative Layer-Wise Relevance Propagation: a more Robust
Neural Networks eXplaination", arXiv:2501.14322. Stated properties: no division by
small values except at residual (skip) connections; conservation up to a
multiplicative factor; no hyperparameters; dense, convolutional and residual
networks. The abstract allows two readings of "relative contributions"; both are
offered (``relative(mode=...)``), at every dense/conv layer (and single-input linear
aggregation: sums, means, average pooling), with :math:`z_{ik} = x_i \rho(w_{ik})`:

* ``mode="layer"`` (default, the project's first reading): the contributions are
  propagated as they are and rescaled once per layer and example,

  .. math::

      \tilde r = x \odot \rho(W)^\top R^{\text{out}}, \qquad
      r = \frac{\sum |R^{\text{out}}|}{\sum |\tilde r|}\, \tilde r
      \quad (r = 0 \text{ where } \textstyle\sum |\tilde r| = 0),

  where :math:`\rho(W)^\top` is the vector-Jacobian product of the layer's own
  primitive (:math:`\rho` the identity by default). No per-neuron denominator: the
  only division is by the layer's total L1 mass of one example. So
  :math:`\sum|r| = \sum|R^{\text{out}}|` at every such layer and the signed
  relevance is conserved only up to one factor per layer.
* ``mode="neuron"``: each upper neuron's relevance is split by the shares of its
  absolute contributions, :math:`r_i = \sum_k |z_{ik}| / \sum_{i'} |z_{i'k}|\, R_k`.
  The denominator is at least the largest contribution and vanishes only when every
  contribution to the neuron does (that neuron then passes nothing); otherwise the
  signed sum is conserved exactly, and the sign of a contribution is not kept.

Default and why: ``"layer"`` keeps the signs of the contributions (what LRP-0 would
propagate) and matches "conservation up to a multiplicative factor" literally;
``"neuron"`` is the reading in which every division is by a sum of absolute values.
Neither uses the bias or a stabiliser. Residual adds (sums of several
input-dependent tensors) keep the proportional split :math:`R_a = a / (a + b)\, R`
in both modes (:class:`~jaxlrp.rules.Norm` without stabiliser; a zero sum passes
nothing), the one per-neuron division the paper allows. Routing operations that sum
fan-out (the upsampling of an adaptive average pool, a reshape feeding two layers)
add relevances of either sign, so in layer mode the L1 mass can shrink there.

Pruned LRP
----------
Yanez Sarmiento, Witzke, Klein & Renard (2024), "Sparse Explanations of Neural
Networks Using Pruned Layer-Wise Relevance Propagation", arXiv:2404.14271. At every
dense/conv layer :math:`l` except those fed by the input
(:attr:`Layer.first <jaxlrp.composites.Layer>`; ``pruned(..., input_layer=True)``
prunes them too), after the base rule has produced :math:`r`, prune per example and
per sign :math:`s \in \{+, -\}`: with :math:`v_{(1)} \le \dots \le v_{(m)}` the
sorted magnitudes of the entries of sign :math:`s` and :math:`c_k = \sum_{t \le k}
v_{(t)}`,

.. math::

    \theta_s = \max\{ v_{(k)} : c_k \le p_s\, c_m \} \;(\theta_s = 0 \text{ if none}),
    \qquad \text{pruned}_i \iff \operatorname{sign}(r_i) = s \wedge |r_i| \le \theta_s,

so the smallest entries whose cumulative mass stays within the proportion
:math:`p_s` of the sign's mass are removed; ties at the threshold are pruned, and
:math:`p_s = 0` prunes nothing. If ties would remove a sign's whole mass, that sign
is left unpruned for that example. The proportions may differ per layer
(:math:`p_l`, as the paper writes them): :func:`pruned` takes a scalar, a mapping
from matcher to proportion, or a callable on a :class:`~jaxlrp.composites.Layer`.

*Negative proportion.* jaxlrp's default is :math:`p_- = p_+` (``p_neg=None``): both
signs are treated alike, so PLRP-:math:`\lambda` keeps each sign's mass with the
same sparsity, and the default does not rest on a source we could not check. The
one public re-implementation (third-party, citing the paper's Eq. 3.2) uses
:math:`p_- = p_+ / 2` and leaves the input layer unpruned (as jaxlrp does); pass
``p_neg=p / 2`` for that reading. ``examples/variants.py`` reports both.

Then:

* PLRP-:math:`\lambda` (``mode="lambda"``) rescales the survivors of each sign,
  :math:`\hat r_i = \lambda_s r_i` with
  :math:`\lambda_s = \sum_{i \in s} |r_i| / \sum_{i \in s,\, \text{kept}} |r_i|`,
  so the positive and the negative masses, hence :math:`\sum r`, are unchanged.
* PLRP-M (``mode="m"``) redistributes through the layer, per upper neuron. The
  base rule is linear in the relevance, :math:`r = J R`, so it splits each upper
  neuron's relevance into contributions :math:`c_{jk} = J_{jk} R_k`, passing down
  :math:`S_k = \sum_j c_{jk}`. With the keep mask :math:`m` of the first pass, the
  part reaching pruned neurons, :math:`P_k = \sum_j (1 - m_j)\, c_{jk} = R_k
  [J^\top (1 - m)]_k`, is given to the kept neurons in proportion to non-negative
  share weights :math:`\omega_{jk}`:

  .. math::

      \hat r_j = m_j \Big( r_j + \sum_k \omega_{jk} \frac{P_k}{\Omega_k} \Big),
      \qquad \Omega_k = \sum_{j'} m_{j'}\, \omega_{j'k},

  so :math:`\sum_j \hat c_{jk} = S_k` for every upper neuron (the relevance the
  base rule passes down, bias and stabiliser absorption included, now on the kept
  neurons only), and :math:`\sum_{jk} |\hat c_{jk}| \le \sum_{jk} |c_{jk}|`: the
  pruned mass is moved, never amplified. The weights are :math:`\omega_{jk} =
  |x_j w_{jk}|`, the size of the layer's own contributions, or, for rules whose
  contributions all have the sign of :math:`R_k` (:math:`z^+`, flat,
  :math:`w^2`, :math:`\alpha 1 \beta 0`: :math:`J \ge 0`), :math:`\omega_{jk} =
  J_{jk}`, i.e. :math:`|c_{jk}| / |R_k|`. Wherever the kept contributions of an
  upper neuron share one sign (always for those rules), this equals evaluating
  the base rule again on the layer with the pruned lower neurons removed from
  numerator and denominator, :math:`\hat c_{jk} = m_j c_{jk} S_k / \sum_{j'}
  m_{j'} c_{j'k}` (for LRP-0: :math:`\hat R_j = m_j \sum_k x_j w_{jk} R_k /
  \sum_{j'} m_{j'} x_{j'} w_{j'k}`). Where they cancel, that re-evaluation divides
  by a near-zero sum (a median :math:`\max |R|` of :math:`10^{10}` times the base rule's
  on a 45-layer ReLU MLP, ``bench/plrp_stability.py``); these shares divide only
  by :math:`\Omega_k`, a sum of non-negative terms that vanishes only when every
  kept contribution does.

  *Fallback.* An upper neuron with :math:`\Omega_k = 0` (none of its kept lower
  neurons contributes; common in small convolutions at large :math:`p`) cannot
  keep its relevance on its own lower neurons. Its pruned part
  :math:`u = (1 - m) \odot J (R \odot [\Omega = 0])` is then absorbed PLRP-:math:`
  \lambda`-style by the kept entries of :math:`\hat r`, per example and sign:
  those of sign :math:`s` are scaled by :math:`1 + U_s / K_s` (:math:`U_s` the mass
  of sign :math:`s` of :math:`u`, :math:`K_s` the kept mass of that sign); a sign
  no kept entry has is spread over all kept entries in proportion to
  :math:`|\hat r_j|`. The layer's :math:`\sum \hat r = \sum r` still holds and
  pruned entries stay exactly zero (unless every kept entry is zero). A rule that
  is not linear in the relevance (e.g. :class:`Relative`) is linearised at
  :math:`R`.

The threshold needs no sort: non-negative floats order like their bit patterns,
so :func:`_threshold` builds the threshold's integer bit pattern one bit at a time,
one masked sum per bit and sign; all shapes stay static.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from . import composites as _composites
from . import rules as _rules
from .composites import Composite, Layer
from .rules import AGGREGATE_KINDS, WEIGHTED_KINDS, Node, Rule

Array = jax.Array
#: A proportion to prune: a Python float, or a (possibly traced) scalar array.
Proportion = Union[float, Array]

__all__ = [
    "Relative",
    "relative",
    "Pruned",
    "PrunedComposite",
    "pruned",
    "prune_mask",
    "MODES",
    "RELATIVE_MODES",
]

#: The redistribution modes of :func:`pruned`.
MODES = ("lambda", "m")
#: The readings of Relative LRP (:func:`relative`).
RELATIVE_MODES = ("layer", "neuron")

# R-LRP's residual merge: the proportional split without a stabiliser (a zero sum
# passes nothing), so that R-LRP stays free of hyperparameters and scale-invariant.
_MERGE = _rules.Norm(0.0)


# ---------------------------------------------------------------------------- helpers


def _example_ndim(x: Array, example_ndim: int) -> int:
    return max(0, min(int(example_ndim), x.ndim))


def _mass(x: Array, example_ndim: int) -> Array:
    """L1 mass per example: ``sum |x|`` over the non-example axes (shape ``x.shape[:e]``)."""
    e = _example_ndim(x, example_ndim)
    return jnp.sum(jnp.abs(x), axis=tuple(range(e, x.ndim)))


def _per_example(a: Array, like: Array, e: int) -> Array:
    """Broadcast a per-example array (shape ``like.shape[:e]``) against ``like``."""
    return a.reshape(a.shape + (1,) * (like.ndim - e))


def _concrete_float(p: Any) -> Optional[float]:
    """``float(p)`` when ``p`` is a concrete scalar, else ``None`` (traced or array)."""
    try:
        return float(p)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _check_proportion(name: str, p: Any) -> None:
    value = _concrete_float(p)
    if value is not None and not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")


def _is_zero(p: Any) -> bool:
    return _concrete_float(p) == 0.0


# ------------------------------------------------------------------------------ R-LRP


@dataclasses.dataclass(frozen=True)
class Relative(Rule):
    r"""The Relative LRP rule (Nyiri & Gibaru 2025, arXiv:2501.14322), in one of the
    two readings of its abstract.

    For a dense/conv layer, or a single-input linear aggregation (sum, mean,
    average pooling), per example, with contributions :math:`z_{ik} = x_i \rho(w_{ik})`:

    * ``mode="layer"`` (default): the contributions are propagated as they are and
      rescaled once per layer,

      .. math::

          \tilde r = x \odot \rho(W)^\top R^{\text{out}}, \qquad
          r = \frac{\sum |R^{\text{out}}|}{\sum |\tilde r|}\, \tilde r,

      with :math:`r = 0` where :math:`\sum|\tilde r| = 0`, the sums over the
      non-example axes (``node.example_ndim``). The L1 mass is conserved, the
      signed sum only up to the layer's factor; signs of contributions are kept.
    * ``mode="neuron"``: each upper neuron's relevance is split by the shares of
      the absolute contributions,

      .. math:: r_i = \sum_k \frac{|z_{ik}|}{\sum_{i'} |z_{i'k}|} R_k,

      computed as :math:`|x| \odot |\rho(W)|^\top (R / (|\rho(W)|\, |x|))`. The
      denominator is at least the largest :math:`|z_{ik}|` and vanishes only when
      every contribution to the neuron does: that neuron then passes no relevance
      (it is lost, the only loss). Otherwise the signed sum is conserved exactly
      (factor 1); a contribution's sign is not kept (relevance follows the sign of
      :math:`R_k`). For parameter-free aggregations the coefficients are those of
      the map (non-negative for sums and pools; a scaling by a constant has one
      contribution per output, share 1).

    In ``"layer"`` mode, :math:`R^{\text{out}}` and :math:`x` are divided by their
    largest magnitude per example before the product, and the mass is matched
    scale-invariantly: only the direction of :math:`\tilde r` matters, and
    :math:`x \odot W^\top R` would overflow float32 for logits of ~1e19.

    Neither mode uses the bias or a stabiliser. Sums of several input-dependent
    tensors (residual adds) use the proportional split :math:`R_a = a/(a+b)\,R` in
    both modes (``Norm(0.0)``: no stabiliser, a zero sum passes nothing), the one
    division by per-neuron values the paper keeps. Scaling a layer's weight by
    :math:`c > 0` leaves both rules' shares unchanged (only the global factor
    moves), wherever it scales both sides of a residual merge alike. The full paper
    was not available: these are the project's readings of the published abstract
    (see :mod:`jaxlrp.variants`).

    Parameters
    ----------
    rho:
        Optional weight modification :math:`\rho` (e.g. ``lambda w: jnp.maximum(w, 0)``);
        ``None`` (default) is the identity, which leaves the rule free of
        hyperparameters. Not applied to parameter-free aggregations.
    mode:
        ``"layer"`` or ``"neuron"`` (see :data:`RELATIVE_MODES`).
    """

    rho: Optional[Callable[[Array], Array]] = None
    mode: str = "layer"
    kinds = WEIGHTED_KINDS | AGGREGATE_KINDS

    def __post_init__(self) -> None:
        if self.mode not in RELATIVE_MODES:
            raise ValueError(f"mode must be one of {RELATIVE_MODES}, got {self.mode!r}")

    def __call__(self, node: Node, relevance: Array) -> tuple:
        if len(node.inputs) != 1:  # residual merge: the proportional split
            return _MERGE(node, relevance)
        (x,) = node.inputs
        w = node.weight
        if w is not None and self.rho is not None:
            w = self.rho(w)
        if self.mode == "neuron":
            return (_absolute_shares(node, x, w, relevance),)
        # Scale-invariant: only the direction of x * W^T R matters (its mass is
        # matched), so R and x are divided by their largest magnitude per example
        # first; x * W^T R itself overflows float32 once R (a logit) reaches ~1e19.
        e = _shared_example_ndim(x, relevance, node.example_ndim)
        apply = node.function("Relative")
        _, pull = jax.vjp(lambda x_: apply((x_,), w), x)
        (g,) = pull(relevance / _max_abs(relevance, e))
        return (_match_mass((x / _max_abs(x, e).astype(x.dtype)) * g, relevance, node.example_ndim),)


def _shared_example_ndim(a: Array, b: Array, example_ndim: int) -> int:
    """The example axes ``a`` and ``b`` share (0 when the layer mixes examples)."""
    e = min(_example_ndim(a, example_ndim), _example_ndim(b, example_ndim))
    return e if a.shape[:e] == b.shape[:e] else 0


def _max_abs(a: Array, e: int) -> Array:
    """``max |a|`` over the non-example axes, broadcastable against ``a``; 1 where it
    is 0 (so that dividing by it leaves zeros alone)."""
    m = jnp.max(jnp.abs(a), axis=tuple(range(e, a.ndim)), keepdims=True) if a.ndim > e else jnp.abs(a)
    return jnp.where(m > 0, m, jnp.ones((), a.dtype))


def _absolute_shares(node: Node, x: Array, w: Optional[Array], relevance: Array) -> Array:
    """``|x| * |W|^T (R / (|W| |x|))``, zero where the denominator is 0."""
    a, apply = None if w is None else jnp.abs(w), node.function("Relative")
    d, pull = jax.vjp(lambda x_: apply((x_,), a), jnp.abs(x))
    (g,) = pull(_rules.divide(relevance, d.astype(relevance.dtype)))
    return jnp.abs(x) * g


def _match_mass(r: Array, target: Array, example_ndim: int) -> Array:
    r"""Rescale ``r`` per example so that ``sum |r| == sum |target|`` (0 stays 0).

    Scale-invariant: with :math:`m_r = \max|r|` and :math:`m_t = \max|t|`,
    :math:`r' = (r / m_r) \cdot (\sum|t/m_t| / \sum|r/m_r|) \cdot m_t`, every factor
    bounded (the middle one by the number of entries), so no sum of magnitudes
    overflows where the result itself is representable.
    """
    e = _example_ndim(r, example_ndim)
    if target.shape[: min(e, target.ndim)] != r.shape[:e]:
        e = 0  # the layer mixes examples: one normaliser for the whole value
    m_r, m_t = _max_abs(r, e), _max_abs(target, e).astype(r.dtype)
    rn = r / m_r
    have, want = _mass(rn, e), _mass(target / _max_abs(target, e), e).astype(r.dtype)
    zero = have == 0
    scale = jnp.where(zero, 0, want / jnp.where(zero, 1, have))
    return rn * _per_example(scale, r, e) * _per_example(m_t.reshape(m_t.shape[:e]), r, e)


def relative(rules: Sequence[tuple] = (), mode: str = "layer") -> Composite:
    r"""Relative LRP as a composite: :class:`Relative` on every dense and conv layer
    and on sums, means and average pooling (residual adds: proportional split).

    Products and activations keep the defaults of :mod:`jaxlrp.composites`.

    Parameters
    ----------
    rules:
        ``(matcher, rule)`` pairs tried first (as in the preset composites).
    mode:
        ``"layer"`` (default: one L1 rescaling per layer and example, signs of the
        contributions kept) or ``"neuron"`` (each neuron's relevance split by the
        shares of its absolute contributions, exactly conservative); see
        :class:`Relative`.

    Returns
    -------
    Composite
        For :func:`jaxlrp.lrp`, e.g. ``jaxlrp.lrp(fn, variants.relative(mode="neuron"))``.

    Notes
    -----
    Nyiri & Gibaru (2025), arXiv:2501.14322. The full paper was not available; the
    definition is the project's reading of the published abstract (see
    :mod:`jaxlrp.variants`). With ``target=c`` the relevance of every layer of a
    sequential network has the L1 mass :math:`|f_c(x)|`.
    """
    return Composite(list(rules) + [(_composites.kind(*sorted(Relative.kinds)), Relative(mode=mode))])


# ------------------------------------------------------------------------------- PLRP


def _prune(r: Array, p_pos: Proportion, p_neg: Proportion, example_ndim: int) -> tuple:
    """Per-example, per-sign pruning of ``r``.

    Returns ``(pruned, factor)``, both of the shape of ``r``: which entries are pruned
    (True = pruned), and the factor PLRP-lambda gives each entry if kept: its sign's
    mass over the sign's kept mass in its example, 1 where nothing of the sign is
    pruned. Where ties would prune a sign's whole mass, none of it is pruned.
    """
    e = _example_ndim(r, example_ndim)
    flat = r.reshape((math.prod(r.shape[:e]), -1))
    zero = jnp.zeros((), r.dtype)
    # each sign's magnitudes, 0 on the other sign's entries (and on zeros and NaN):
    # the per-sign masses below are each one reduction over this stack, not one per
    # sign and mask (fewer kernels for XLA to compile)
    mags = jnp.stack([jnp.where(flat > 0, flat, zero), jnp.where(flat < 0, -flat, zero)])
    total = jnp.sum(mags, axis=-1)
    p = jnp.stack([jnp.asarray(p_pos, r.dtype), jnp.asarray(p_neg, r.dtype)])[:, None]
    theta = _threshold(mags, p * total)
    per_entry = lambda a: jnp.where(flat > 0, a[0][:, None], a[1][:, None])  # a sign's value at its entries
    pruned = (flat != 0) & (jnp.abs(flat) <= per_entry(theta))
    kept, lost = jnp.sum(jnp.where(jnp.stack([~pruned, pruned])[:, None], mags, zero), axis=-1)
    ok = kept > 0  # ties could remove a sign's whole mass: then prune none of it
    # exactly 1 where nothing of the sign was pruned (so p = 0 reproduces the base rule)
    scale = jnp.where(ok & (lost > 0), total / jnp.where(ok, kept, 1), 1)
    return (pruned & per_entry(ok)).reshape(r.shape), per_entry(scale).reshape(r.shape)


_BITS = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def _threshold(mags: Array, budget: Array) -> Array:
    r"""The pruning thresholds of the rows of a relevance, per sign, without sorting.

    ``mags`` (shape ``(2, B, n)``) holds each sign's magnitudes of the entries of
    that sign (0 elsewhere), ``budget`` (shape ``(2, B)``) each sign's budget. For
    sign :math:`s` of a row, with magnitudes :math:`m` of the entries of that sign,
    the entries whose running sum in ascending order stays within the budget are
    pruned, ties with the last of them included: the threshold is the largest
    magnitude :math:`u` with :math:`\sum_{m < u} m + u \le` ``budget`` (0 if there
    is none).

    Non-negative floats order like their bit patterns read as integers, so the
    largest pattern :math:`t` with :math:`S(t) = \sum_{m \le t} m \le` ``budget`` is
    built one bit at a time from the most significant: one masked sum of ``mags``
    per bit and sign (a sort costs far more on CPU; testing several candidates per
    pass was slower: XLA runs each sum as its own pass over the row). If :math:`t`
    is not the top of the row, the pattern :math:`t + 1` is an entry (:math:`S`
    grows there), and it is the threshold if it still fits on its own; else
    :math:`t` is.
    """
    dtype = mags.dtype
    itype, bits = _BITS[dtype.itemsize], dtype.itemsize * 8
    mags = jax.lax.stop_gradient(mags)
    zero = jnp.zeros((), dtype)

    def set_bit(i, state):
        t, s_t = state
        cand = t | (jnp.ones((), itype) << (bits - 2 - i).astype(itype))
        u = jax.lax.bitcast_convert_type(cand, dtype)[..., None]
        # one sum per sign: XLA runs them side by side (one sum over both is slower)
        s_cand = jnp.stack([jnp.sum(jnp.where(m <= v, m, zero), axis=-1) for m, v in zip(mags, u)])
        fits = s_cand <= budget
        return jnp.where(fits, cand, t), jnp.where(fits, s_cand, s_t)

    start = (jnp.zeros(budget.shape, itype), jnp.zeros_like(budget))
    t, s_t = jax.lax.fori_loop(0, bits - 1, set_bit, start)  # the sign bit stays 0
    above = jax.lax.bitcast_convert_type(t + 1, dtype)
    below = jax.lax.bitcast_convert_type(t, dtype)
    # t + 1 is an entry unless the row has no mass of that sign (then S(t) = budget = 0)
    return jnp.where((s_t < budget) & (s_t + above <= budget), above, below)


def prune_mask(r: Array, p: Proportion, p_neg: Optional[Proportion] = None, example_ndim: int = 0) -> Array:
    r"""Which entries of ``r`` PLRP prunes (True = pruned), per example and per sign.

    For each example (the leading ``example_ndim`` axes) and each sign, the entries
    of that sign with :math:`|r_i| \le \theta_s` are pruned, :math:`\theta_s` the
    largest sorted magnitude whose cumulative mass stays within ``p_s`` times the
    sign's mass (see :mod:`jaxlrp.variants`). Ties at the threshold are pruned,
    ``p = 0`` prunes nothing, and a sign whose whole mass would go (only possible
    through ties) is not pruned.

    Parameters
    ----------
    r:
        Relevance, any shape.
    p, p_neg:
        Proportions in ``[0, 1)`` of the positive and negative mass to prune
        (``p_neg=None``: same as ``p``). May be traced.
    example_ndim:
        Number of leading axes of ``r`` that index examples.

    Returns
    -------
    Array
        Boolean, shape of ``r``.
    """
    return _prune(r, p, p if p_neg is None else p_neg, example_ndim)[0]


@dataclasses.dataclass(frozen=True)
class Pruned(Rule):
    r"""Pruned LRP around a base rule of dense/conv layers (Yanez Sarmiento et al.
    2024, arXiv:2404.14271), as we read it.

    The base rule produces the relevance :math:`r` of the layer's input; the entries
    selected by :func:`prune_mask` are then removed and their mass redistributed:

    * ``mode="lambda"`` (PLRP-:math:`\lambda`): the survivors of each sign are scaled
      by :math:`\lambda_s = \sum_{i \in s}|r_i| / \sum_{i \in s, \text{kept}}|r_i|`;
      the positive and negative masses are unchanged.
    * ``mode="m"`` (PLRP-M): each upper neuron's relevance, as the base rule passes
      it down, is redistributed over the kept lower neurons only, with shares that
      never divide by a signed sum (see :mod:`jaxlrp.variants` for the formula):
      conserved per upper neuron, and :math:`\sum_{jk} |\hat c_{jk}| \le
      \sum_{jk} |c_{jk}|`, so magnitudes stay of the order of the base rule's.
      Meant for base rules linear in the relevance (every rule of
      :mod:`jaxlrp.rules`); others are linearised at the arriving relevance.

    With concrete ``p == p_neg == 0`` the base rule is returned unchanged. The full
    paper was not available: this is the project's reading of the published work
    (see :mod:`jaxlrp.variants`).

    Parameters
    ----------
    rule:
        The base rule (for dense/conv layers).
    p:
        Proportion in ``[0, 1)`` of the positive relevance mass to prune (may be
        traced, e.g. to sweep ``p`` under one ``jit``).
    p_neg:
        Proportion for the negative relevance; ``None``: same as ``p``.
    mode:
        ``"lambda"`` or ``"m"``.
    """

    rule: Rule
    p: Proportion = 0.0
    p_neg: Optional[Proportion] = None
    mode: str = "lambda"

    def __post_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise TypeError(f"Pruned wraps a jaxlrp rule, got {self.rule!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        _check_proportion("p", self.p)
        _check_proportion("p_neg", self.p_negative)

    @property
    def kinds(self) -> frozenset:  # type: ignore[override]
        """The weighted kinds the base rule applies to."""
        return self.rule.kinds & WEIGHTED_KINDS

    @property
    def p_negative(self) -> Proportion:
        """The proportion used for the negative relevance."""
        return self.p if self.p_neg is None else self.p_neg

    def __call__(self, node: Node, relevance: Array) -> tuple:
        if (_is_zero(self.p) and _is_zero(self.p_negative)) or len(node.inputs) != 1:
            return self.rule(node, relevance)
        if self.mode == "lambda":
            (r,) = self.rule(node, relevance)
            return (_rescale(r, *_prune(r, self.p, self.p_negative, node.example_ndim)),)
        # the base rule is linear in the relevance: r = J R, with J^T and J v at hand
        r, apply_j = jax.linearize(lambda R: self.rule(node, R)[0], relevance)
        keep = ~_prune(r, self.p, self.p_negative, node.example_ndim)[0]
        return (_redistribute(self.rule, node, relevance, r, apply_j, keep),)


def _rescale(r: Array, pruned: Array, factor: Array) -> Array:
    """PLRP-lambda: zero the pruned entries, scale the survivors by ``factor`` (from
    :func:`_prune`)."""
    return jnp.where(pruned, jnp.zeros((), r.dtype), r * factor)


def _sign_definite(rule: Rule) -> bool:
    """Whether every contribution of ``rule`` has the sign of its upper neuron's
    relevance (its Jacobian ``J`` is non-negative): then ``|c_jk| = J_jk |R_k|``."""
    if isinstance(rule, (_rules.ZPlus, _rules.Flat, _rules.WSquare)):
        return True
    return isinstance(rule, _rules.AlphaBeta) and rule.beta == 0


def _redistribute(rule: Rule, node: Node, relevance: Array, r: Array, apply_j, keep: Array) -> Array:
    r"""PLRP-M: :math:`\hat r = m \odot (r + A q) + (1 - m) \odot J (R \odot o)`.

    ``apply_j(v) = J v`` is the base rule's linear map; ``P = R * J^T (1 - m)`` is the
    relevance of each upper neuron that reaches pruned neurons, ``A`` the share
    weights (:math:`J` itself for sign-definite rules, else :math:`|x_j||w_{jk}|`),
    :math:`\Omega = A^\top m`, :math:`q = P / \Omega` and ``o`` the orphans
    (:math:`\Omega = 0`).
    """
    dtype = r.dtype
    zero = jnp.zeros((), dtype)
    m = keep.astype(dtype)
    transpose = jax.linear_transpose(apply_j, relevance)
    if _sign_definite(rule):
        # J^T (1 - m) and J^T m as one batched product, then J q and J (R o) as another
        to_pruned, omega = jax.vmap(lambda v: transpose(v)[0])(jnp.stack([1 - m, m]))
        q, orphan = _quotient(relevance * to_pruned, omega.astype(dtype))
        shared, orphaned = jax.vmap(apply_j)(jnp.stack([q, jnp.where(orphan, relevance, zero)]))
    else:
        (to_pruned,) = transpose(1 - m)
        (x,), w = node.inputs, node.weight
        ax, aw = jnp.abs(x), jnp.abs(_rules.depend(w, relevance))
        apply = node.function("Pruned")
        omega, pull = jax.vjp(lambda a: apply((a,), aw).astype(dtype), jnp.where(keep, ax, zero))
        q, orphan = _quotient(relevance * to_pruned, omega.astype(dtype))
        shared = ax * pull(q)[0]
        orphaned = apply_j(jnp.where(orphan, relevance, zero))
    out = jnp.where(keep, r + shared, zero)
    # orphans: their relevance on pruned neurons goes to the kept ones, per sign (lambda)
    stray = jnp.where(keep, zero, orphaned)
    return _absorb(out, keep, stray, _example_ndim(r, node.example_ndim))


def _quotient(lost: Array, omega: Array) -> tuple:
    """``q = P / Omega`` and the orphans (``Omega = 0``, or ``q`` not finite), where
    ``q`` is set to 0."""
    q = lost / jnp.where(omega > 0, omega, 1)
    orphan = ~(omega > 0) | ~jnp.isfinite(q)
    return jnp.where(orphan, jnp.zeros((), q.dtype), q), orphan


def _absorb(out: Array, keep: Array, stray: Array, e: int) -> Array:
    r"""Add ``stray`` (relevance on pruned entries) to the kept entries of ``out``,
    per example and sign :math:`s`: kept entries of sign :math:`s` are scaled by
    :math:`1 + U_s / K_s` (:math:`U_s` the stray mass of sign :math:`s`,
    :math:`K_s` the kept mass of that sign). Stray mass of a sign no kept entry
    has goes to all kept entries in proportion to :math:`|\hat r_j|`; only if every
    kept entry is zero does it stay where it is."""
    zero = jnp.zeros((), out.dtype)
    pos, neg = out > 0, out < 0
    # every per-example mass in one reduction: kept of each sign, stray of each sign, all
    parts = jnp.stack([jnp.where(keep & pos, out, zero), jnp.where(keep & neg, -out, zero),
                       jnp.where(stray > 0, stray, zero), jnp.where(stray < 0, -stray, zero), jnp.abs(out)])
    masses = jnp.sum(parts, axis=tuple(range(e + 1, parts.ndim)), keepdims=True)
    added, rest, rest_mass = jnp.zeros_like(out), jnp.zeros_like(stray), zero
    for s, of_sign, mass, lost, strays in ((1, pos, masses[0], masses[2], stray > 0),
                                           (-1, neg, masses[1], masses[3], stray < 0)):
        ok = mass > 0
        added = added + jnp.where(keep & of_sign, out / jnp.where(ok, mass, 1) * lost, zero)
        # a sign no kept entry has: its stray mass goes to every kept entry (below)
        rest = rest + jnp.where(~ok & strays, stray, zero)
        rest_mass = rest_mass + jnp.where(ok, zero, s * lost)
    size = masses[4]
    ok = size > 0
    added = added + jnp.abs(out) / jnp.where(ok, size, 1) * rest_mass
    return out + added + jnp.where(ok, zero, rest)


PerLayer = Union[Proportion, Mapping[Any, Proportion], Callable[[Layer], Proportion]]


def _per_layer_form(name: str, p: Any) -> Any:
    """Validate a proportion given as a scalar, a mapping matcher -> p, or a callable;
    mappings become a tuple of ``(matcher, predicate, p)``."""
    if isinstance(p, Mapping):
        entries = []
        for key, value in p.items():
            _check_proportion(f"{name} for {key!r}", value)
            entries.append((key, _composites.as_matcher(key), value))
        return tuple(entries)
    if callable(p) and not hasattr(p, "shape"):
        return p
    _check_proportion(name, p)
    return p


def _resolve(form: Any, layer: Layer) -> Proportion:
    """The proportion of ``layer`` (0 where no mapping entry matches it)."""
    if isinstance(form, tuple):
        return next((value for _, f, value in form if f(layer)), 0.0)
    if callable(form) and not hasattr(form, "shape"):
        return form(layer)
    return form


class PrunedComposite(Composite):
    """A composite whose dense/conv rules are wrapped in :class:`Pruned`, except on
    layers fed by the input (:attr:`Layer.first <jaxlrp.composites.Layer>`) unless
    ``input_layer=True``.

    Built by :func:`pruned`; every other layer gets the base composite's rule.
    """

    def __init__(
        self,
        base: Composite,
        p: PerLayer,
        p_neg: Optional[PerLayer] = None,
        mode: str = "lambda",
        input_layer: bool = False,
    ):
        if not isinstance(base, Composite):
            raise TypeError(f"pruned() needs a jaxlrp Composite or a preset name, got {base!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._p_form = _per_layer_form("p", p)
        self._p_neg_form = None if p_neg is None else _per_layer_form("p_neg", p_neg)
        super().__init__(strict=base.strict)
        self._base, self._p, self._p_neg, self._mode = base, p, p_neg, mode
        self._input_layer = bool(input_layer)

    @property
    def base(self) -> Composite:
        """The wrapped composite."""
        return self._base

    def chosen(self, layer: Layer) -> bool:
        """As the base composite (see :meth:`jaxlrp.composites.Composite.chosen`)."""
        return self._base.chosen(layer)

    @property
    def p(self) -> PerLayer:
        """Proportion of the positive relevance mass pruned per layer and example
        (a scalar, a mapping matcher -> p, or a callable on a layer)."""
        return self._p

    @property
    def p_neg(self) -> Optional[PerLayer]:
        """Proportion of the negative relevance mass (``None``: same as :attr:`p`)."""
        return self._p_neg

    @property
    def mode(self) -> str:
        """``"lambda"`` or ``"m"``."""
        return self._mode

    @property
    def input_layer(self) -> bool:
        """Whether layers fed by the input are pruned too."""
        return self._input_layer

    @property
    def rules(self) -> tuple:
        """The base composite's ``(matcher, rule)`` pairs (before pruning)."""
        return self._base.rules

    def proportions(self, layer: Layer) -> tuple:
        """``(p, p_neg)`` of ``layer`` (``p_neg`` may be ``None``: same as ``p``);
        ``(0.0, None)`` for layers that are not pruned."""
        if layer.kind not in WEIGHTED_KINDS or (layer.first and not self._input_layer):
            return 0.0, None
        p = _resolve(self._p_form, layer)
        return p, None if self._p_neg_form is None else _resolve(self._p_neg_form, layer)

    def rule_for(self, layer: Layer) -> Rule:
        rule = self._base.rule_for(layer)
        p, p_neg = self.proportions(layer)
        if _is_zero(p) and (p_neg is None or _is_zero(p_neg)):
            return rule
        try:
            return Pruned(rule, p, p_neg, self._mode)
        except ValueError as err:
            raise ValueError(f"layer '{layer.key or layer.name}': {err}") from None

    def assign(self, layers: Sequence[Layer]) -> tuple:
        self._base.assign(layers)  # the base composite's own checks
        forms = [f for f in (self._p_form, self._p_neg_form) if isinstance(f, tuple)]
        for form in forms:
            _composites.check_matches([key for key, _, _ in form], layers, strict=self.strict,
                                      where="pruned() proportion key")
            for key, f, _ in form:
                hits = [layer for layer in layers if layer.kind in WEIGHTED_KINDS and f(layer)]
                if hits and not self._input_layer and all(layer.first for layer in hits):
                    raise ValueError(
                        f"pruned() proportion key {key!r} selects only layers fed by the input "
                        f"({', '.join(repr(l.key) for l in hits[:5])}), which are not pruned; "
                        "pass input_layer=True to prune them"
                    )
        return tuple(self.rule_for(layer) for layer in layers)

    def __repr__(self) -> str:
        return (f"PrunedComposite({self._base!r}, p={self._p!r}, p_neg={self._p_neg!r}, mode={self._mode!r}"
                + (", input_layer=True)" if self._input_layer else ")"))


def pruned(
    composite: Union[Composite, str, None],
    p: PerLayer,
    p_neg: Optional[PerLayer] = None,
    mode: str = "lambda",
    *,
    input_layer: bool = False,
) -> PrunedComposite:
    r"""Pruned LRP (PLRP-:math:`\lambda` or PLRP-M) on top of a composite.

    Parameters
    ----------
    composite:
        The base composite, a preset name (``"epsilon_plus_flat"``), or ``None`` for
        the default (LRP-:math:`\epsilon` on every dense/conv layer).
    p:
        Proportion :math:`p_l \in [0, 1)` of each example's positive relevance mass
        pruned at every dense/conv layer :math:`l` not fed by the input: a scalar
        (may be traced), a mapping from matcher to proportion (the first matching
        key decides; layers no key matches are not pruned), or a callable on a
        :class:`~jaxlrp.composites.Layer` returning the proportion.
    p_neg:
        Proportion for the negative relevance, in the same forms; ``None``
        (default): ``p``. The one public re-implementation uses ``p / 2``; pass
        ``p_neg=p / 2`` for that reading (see :mod:`jaxlrp.variants`).
    mode:
        ``"lambda"`` (rescale the survivors per sign) or ``"m"`` (redistribute each
        upper neuron's relevance over the kept neurons).
    input_layer:
        Also prune dense/conv layers fed by the input (default ``False``: they are
        left unpruned, as in the re-implementation).

    Returns
    -------
    PrunedComposite
        For :func:`jaxlrp.lrp`. ``p = 0`` gives exactly the base composite's
        relevance.

    Notes
    -----
    Yanez Sarmiento, Witzke, Klein & Renard (2024), arXiv:2404.14271. The full
    paper was not available; the definition is the project's reading of what the
    authors published (see :mod:`jaxlrp.variants`). The paper's "sparsity-gain"
    threshold mode is not implemented.

    Examples
    --------
    >>> explain = jaxlrp.lrp(model.apply, variants.pruned("epsilon_plus_flat", 0.3, mode="m"))
    >>> R, per_layer = jax.jit(explain)(variables, x, layers="linear")
    >>> deeper = variants.pruned("epsilon_plus", {"*/conv4*": 0.5, "linear": 0.2})
    """
    return PrunedComposite(_composites.resolve(composite, None), p, p_neg, mode, input_layer)
