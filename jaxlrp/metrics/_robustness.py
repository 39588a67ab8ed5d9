"""Robustness: how much an explanation changes when the input changes a little
(max and average sensitivity, local Lipschitz estimate)."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._common import Array, Explainer, check_batched, check_choice, flatten_examples, as_float, check_int, need_key, check_positive

_NORMS = ("fro", "l1", "inf")


# ------------------------------------------------------------------ robustness


def _norm(a: Array, norm: str) -> Array:
    a = flatten_examples(a)
    if norm == "fro":
        return jnp.sqrt(jnp.sum(a * a, axis=1))
    if norm == "l1":
        return jnp.sum(jnp.abs(a), axis=1)
    return jnp.max(jnp.abs(a), axis=1)


def _explained(explain: Explainer, x: Array) -> Array:
    r = jnp.asarray(explain(x))
    if r.ndim < 1 or r.shape[0] != x.shape[0]:
        raise ValueError(
            f"explain must map a batch of shape {x.shape} to relevance with the same leading "
            f"example axis; got shape {r.shape}"
        )
    return as_float(r)


def _uniform_noise(key: Array, n_samples: int, x: Array, radius: Any) -> Array:
    """``n_samples`` draws from the uniform distribution on the L-inf ball of ``radius``."""
    return jax.random.uniform(key, (n_samples,) + x.shape, x.dtype, minval=-radius, maxval=radius)


def _sensitivities(explain: Explainer, x: Array, noise: Array, norm: str, r0: Optional[Array] = None) -> Array:
    """``||explain(x + delta) - explain(x)||`` for each draw ``delta``, shape ``(draws, N)``."""
    r0 = _explained(explain, x) if r0 is None else r0
    return jax.vmap(lambda delta: _norm(_explained(explain, x + delta) - r0, norm))(noise)


def _lipschitz_ratios(explain: Explainer, x: Array, noise: Array) -> Array:
    """``||explain(x + delta) - explain(x)||_2 / ||delta||_2`` per draw, shape ``(draws, N)``."""
    r0 = _explained(explain, x)
    return jax.vmap(lambda delta: _norm(_explained(explain, x + delta) - r0, "fro") / _norm(delta, "fro"))(noise)


def max_sensitivity(
    explain: Explainer,
    x: ArrayLike,
    *,
    key: Array,
    radius: float,
    n_samples: int = 10,
    norm: str = "fro",
    relative: bool = False,
) -> Array:
    r"""Max-sensitivity (Yeh et al. 2019), Monte-Carlo estimate.

    .. math:: \mathrm{SENS}_{\max} = \max_{\|\delta\|_\infty \le r}
              \left\| \Phi(x + \delta) - \Phi(x) \right\|

    estimated as the maximum over ``n_samples`` draws of :math:`\delta` from the
    uniform distribution on the L-inf ball of radius ``r``, independently per
    example. With ``relative=True`` it is divided by :math:`\|\Phi(x)\|`. The draws
    run under ``vmap``.

    Parameters
    ----------
    explain:
        ``explain(x_batch) -> relevance`` (batched, leading axis ``N``).
    x:
        Inputs of shape ``(N, ...)``.
    key:
        PRNG key for the noise.
    radius:
        Radius ``r > 0`` of the L-inf ball.
    n_samples:
        Number of draws (at least 1).
    norm:
        Norm of the flattened difference: ``"fro"`` (Euclidean), ``"l1"`` or ``"inf"``.
    relative:
        Divide by the norm of the unperturbed explanation.

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better (0 for an explanation that
    does not change within the ball).
    """
    x = check_batched("x", x, min_ndim=1)
    check_positive("radius", radius)
    n = check_int("n_samples", n_samples, 1)
    check_choice("norm", norm, _NORMS)
    noise = _uniform_noise(need_key(key, "max_sensitivity"), n, x, radius)
    r0 = _explained(explain, x)
    sens = jnp.max(_sensitivities(explain, x, noise, norm, r0), axis=0)
    return sens / _norm(r0, norm) if relative else sens


def local_lipschitz_estimate(
    explain: Explainer,
    x: ArrayLike,
    *,
    key: Array,
    radius: float,
    n_samples: int = 10,
) -> Array:
    r"""Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018), Monte-Carlo.

    .. math:: \hat L(x) = \max_{x' \in B_r(x)}
              \frac{\|\Phi(x) - \Phi(x')\|_2}{\|x - x'\|_2}

    with :math:`B_r(x)` the L-inf ball of radius ``r``, estimated by the maximum over
    ``n_samples`` uniform draws of :math:`x'` (independently per example, under
    ``vmap``).

    Parameters
    ----------
    explain:
        ``explain(x_batch) -> relevance`` (batched, leading axis ``N``).
    x:
        Inputs of shape ``(N, ...)``.
    key:
        PRNG key for the noise.
    radius:
        Radius ``r > 0`` of the L-inf ball.
    n_samples:
        Number of draws (at least 1).

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better (a stabler explanation).
    """
    x = check_batched("x", x, min_ndim=1)
    check_positive("radius", radius)
    n = check_int("n_samples", n_samples, 1)
    noise = _uniform_noise(need_key(key, "local_lipschitz_estimate"), n, x, radius)
    return jnp.max(_lipschitz_ratios(explain, x, noise), axis=0)


def avg_sensitivity(
    explain: Explainer,
    x: ArrayLike,
    *,
    key: Optional[Array] = None,
    radius: float = 0.2,
    n_samples: int = 10,
    noise: Optional[ArrayLike] = None,
    norm: str = "fro",
    relative: bool = True,
) -> Array:
    r"""Average sensitivity (Yeh et al. 2019), as in Quantus.

    .. math:: \mathrm{SENS}_{\text{avg}} = \frac{1}{n} \sum_{k=1}^{n}
              \frac{\left\| \Phi(x + \delta_k) - \Phi(x) \right\|}{\|\Phi(x)\|}

    over draws :math:`\delta_k` (given as ``noise``, shape ``(n, *x.shape)``, or
    uniform on the L-inf ball of ``radius`` from ``key``); without ``relative`` the
    denominator is 1. Quantus' default perturbation is that uniform noise with
    ``lower_bound=0.2``.

    Returns
    -------
    Array of shape ``(N,)``, ``>= 0``; lower is better.
    """
    x = check_batched("x", x, min_ndim=1)
    check_choice("norm", norm, _NORMS)
    if noise is None:
        check_positive("radius", radius)
        noise = _uniform_noise(need_key(key, "avg_sensitivity"), check_int("n_samples", n_samples, 1), x, radius)
    noise = jnp.asarray(noise, x.dtype)
    if noise.shape[1:] != x.shape or noise.ndim != x.ndim + 1:
        raise ValueError(f"noise must have shape (n, *x.shape), got {noise.shape}")
    r0 = _explained(explain, x)
    sens = jnp.mean(_sensitivities(explain, x, noise, norm, r0), axis=0)
    return sens / _norm(r0, norm) if relative else sens
