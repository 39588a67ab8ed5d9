"""Complexity: how concentrated the relevance is (sparseness, entropy)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from ._common import Array, check_batched, flatten_examples

# ------------------------------------------------------------------ complexity


def sparseness(relevance: ArrayLike) -> Array:
    r"""Sparseness: the Gini index of :math:`|R|` (Chalasani et al. 2020).

    With :math:`v_{(1)} \le \dots \le v_{(d)}` the sorted absolute relevance of an
    example with ``d`` entries,

    .. math:: G = \frac{\sum_{i=1}^{d} (2i - d - 1)\, v_{(i)}}{d \sum_{i=1}^{d} v_{(i)}}
              = \frac{\sum_{i,j} |v_i - v_j|}{2 d \sum_i v_i}.

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[0, (d-1)/d]``; higher is better (sparser): 0 for
    uniform ``|R|``, ``(d-1)/d`` for a one-hot. NaN for an all-zero relevance.
    """
    v = _sort_magnitudes(jnp.abs(flatten_examples(check_batched("relevance", relevance))))
    d = v.shape[1]
    weights = (2 * jnp.arange(1, d + 1) - d - 1).astype(v.dtype)
    total = jnp.sum(v, axis=1)
    gini = jnp.sum(weights * v, axis=1) / (d * total)
    return jnp.where(total > 0, gini, jnp.nan)


def _sort_magnitudes(a: Array) -> Array:
    """Sort non-negative floats along axis 1 through their integer bit patterns.

    For IEEE floats with the sign bit clear the bit patterns, read as signed
    integers, are ordered as the values (NaN after inf), and XLA's integer sort is
    several times faster than its float sort on CPU (no NaN/-0 canonicalisation).
    """
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[a.dtype.itemsize]
    bits = jnp.sort(lax.bitcast_convert_type(a, itype), axis=1)
    return lax.bitcast_convert_type(bits, a.dtype)


def complexity(relevance: ArrayLike) -> Array:
    r"""Complexity: the entropy of the relevance distribution (Bhatt et al. 2020).

    .. math:: H = -\sum_i p_i \log p_i, \qquad p_i = \frac{|R_i|}{\sum_j |R_j|}

    (natural logarithm, :math:`0 \log 0 = 0`).

    Parameters
    ----------
    relevance:
        Relevance of shape ``(N, ...)``.

    Returns
    -------
    Array of shape ``(N,)`` in ``[0, log d]``; lower is better (less complex): 0 for
    a one-hot, ``log d`` for uniform ``|R|``. NaN for an all-zero relevance.
    """
    a = jnp.abs(flatten_examples(check_batched("relevance", relevance)))
    total = jnp.sum(a, axis=1, keepdims=True)
    p = a / jnp.where(total > 0, total, 1)
    safe = jnp.where(p > 0, p, 1)
    h = -jnp.sum(p * jnp.log(safe), axis=1)
    return jnp.where(total[:, 0] > 0, h, jnp.nan)
