"""Localisation: how much of the relevance falls inside a ground-truth mask
(relevance mass and rank accuracy, pointing game)."""

from __future__ import annotations

import jax.numpy as jnp
from jax.typing import ArrayLike

from ._common import Array, check_batched, check_choice, flatten_examples, check_mask

_RMA_MODES = ("positive", "raw", "abs")


# ------------------------------------------------------------------ localisation


def relevance_mass_accuracy(relevance: ArrayLike, mask: ArrayLike, mode: str = "positive") -> Array:
    r"""Relevance mass accuracy (Arras, Osman & Samek 2022): the share of relevance inside the mask.

    .. math:: \mathrm{RMA} = \frac{\sum_{i \in M} \tilde R_i}{\sum_i \tilde R_i}

    with :math:`\tilde R = \max(R, 0)` (``mode="positive"``, both sums over positive
    relevance only), :math:`\tilde R = R` (``"raw"``) or :math:`\tilde R = |R|`
    (``"abs"``).

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    mask:
        Boolean ground-truth mask, broadcastable to ``relevance`` with the same
        number of axes.
    mode:
        ``"positive"``, ``"raw"`` or ``"abs"``.

    Returns
    -------
    Array of shape ``(N,)``; higher is better. In ``[0, 1]`` for ``"positive"`` and
    ``"abs"`` (1: all relevance in the mask); ``"raw"`` can leave ``[0, 1]`` when
    relevance has both signs. NaN for an empty mask and where the denominator is 0
    (e.g. no positive relevance in mode ``"positive"``).
    """
    check_choice("mode", mode, _RMA_MODES)
    r = check_batched("relevance", relevance)
    m = flatten_examples(check_mask(mask, r))
    r = flatten_examples(r)
    if mode == "positive":
        r = jnp.maximum(r, 0)
    elif mode == "abs":
        r = jnp.abs(r)
    inside = jnp.sum(jnp.where(m, r, 0), axis=1)
    total = jnp.sum(r, axis=1)
    return jnp.where(jnp.any(m, axis=1), inside / total, jnp.nan)


def relevance_rank_accuracy(relevance: ArrayLike, mask: ArrayLike) -> Array:
    r"""Relevance rank accuracy (Arras, Osman & Samek 2022).

    With :math:`K = |M|` the mask's size and :math:`P_K` the :math:`K` positions of
    highest (signed) relevance,

    .. math:: \mathrm{RRA} = \frac{|P_K \cap M|}{K}.

    Ties in relevance are broken by position (the lower flat index ranks higher).

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    mask:
        Boolean ground-truth mask, broadcastable to ``relevance`` with the same
        number of axes.

    Returns
    -------
    Array of shape ``(N,)`` in ``[0, 1]``; higher is better. NaN for an empty mask.
    """
    r = check_batched("relevance", relevance)
    m = flatten_examples(check_mask(mask, r))
    r = flatten_examples(r)
    order = jnp.argsort(-r, axis=1, stable=True)  # descending, ties by position
    ranked = jnp.take_along_axis(m, order, axis=1)
    k = jnp.sum(m, axis=1)
    top = jnp.arange(r.shape[1])[None, :] < k[:, None]
    hits = jnp.sum(ranked & top, axis=1)
    return jnp.where(k > 0, hits / jnp.maximum(k, 1), jnp.nan).astype(r.dtype)


def pointing_game(relevance: ArrayLike, mask: ArrayLike) -> Array:
    r"""Pointing game (Zhang et al. 2018): is the most relevant position inside the mask?

    .. math:: \mathrm{PG} = \mathbb{1}\left[\arg\max_i R_i \in M\right]

    The argmax is the first position of maximal relevance.

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.
    mask:
        Boolean ground-truth mask, broadcastable to ``relevance`` with the same
        number of axes.

    Returns
    -------
    Array of shape ``(N,)`` with values 0.0 or 1.0; higher is better. NaN for an
    empty mask.
    """
    r = check_batched("relevance", relevance)
    m = flatten_examples(check_mask(mask, r))
    r = flatten_examples(r)
    hit = jnp.take_along_axis(m, jnp.argmax(r, axis=1)[:, None], axis=1)[:, 0]
    return jnp.where(jnp.any(m, axis=1), hit.astype(r.dtype), jnp.nan)
