r"""Attribution baselines as function transformations, with the call conventions of :func:`jaxlrp.lrp`.

Each transform takes ``fn`` (one floating-point array out, last axis = outputs,
leading axes = examples, or a scalar) and returns ``explain(*args, target=None,
output_relevance=None)`` giving an attribution with the shape of the explained
argument(s) (``argnums``, default the last; pytrees allowed except for
:func:`occlusion`). The output is selected by a one-hot of ``target`` (an int, an int
array of the example shape, or ``None`` for each example's argmax), or weighted by
``output_relevance``: every method explains :math:`g(x) = \sum_j w_j f_j(x)` with
``w`` that one-hot (or those weights), as Zennit and Captum do.

======================================  ===========================================
:func:`gradient`                        :math:`\nabla_x g(x)`
:func:`gradient_x_input`                :math:`x \odot \nabla_x g(x)`
:func:`integrated_gradients`            :math:`(x - b) \odot \int_0^1 \nabla g(b + \alpha (x - b))\, d\alpha`
:func:`occlusion`                       mean drop of :math:`g` over the windows covering a feature
:func:`smooth`                          :math:`\frac1n \sum_k \Phi(x + \epsilon_k)` for *any* explainer
                                        :math:`\Phi` (SmoothGrad over gradients, LRP ...)
======================================  ===========================================

All are pure JAX (``vmap`` over integration steps, windows and noise draws, chunked
by ``batch_size`` through :func:`jax.lax.map`), so they compose with ``jit`` and
``vmap``.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._core.run import initial_relevance
from ._core.trace import argnums_tuple
from ._core.types import Target

__all__ = ["gradient", "gradient_x_input", "integrated_gradients", "occlusion", "smooth"]

Array = jax.Array
PyTree = Any  # an array, or a pytree of arrays with the structure of the explained argument
Argnums = Union[int, Sequence[int], None]
_METHODS = ("midpoint", "trapezoid", "left", "right")


def _weights(out: Array, target, output_relevance) -> Array:
    """The output weights ``w``: a one-hot of ``target`` (argmax if ``None``) or ``output_relevance``."""
    if output_relevance is not None:
        return initial_relevance(out, target, output_relevance)
    if out.ndim == 0:
        return initial_relevance(jnp.ones_like(out), target, None)
    index = jnp.argmax(jax.lax.stop_gradient(out), axis=-1) if target is None else target
    return initial_relevance(jnp.ones_like(out), index, None)


def _split_args(args: tuple, argnums) -> tuple:
    nums, single = argnums_tuple(argnums, len(args))
    for n in nums:
        for leaf in jax.tree_util.tree_leaves(args[n]):
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                raise TypeError(f"the explained argument {n} has a leaf of dtype {jnp.result_type(leaf)}; "
                                "attributions need floating-point inputs")
    return nums, single


def _with(args: tuple, nums: tuple, xs: tuple) -> tuple:
    a = list(args)
    for n, x in zip(nums, xs):
        a[n] = x
    return tuple(a)


def _pack(xs: tuple, single: bool):
    return xs[0] if single else xs


def _check_out(out) -> Array:
    out = jnp.asarray(out)
    if not jnp.issubdtype(out.dtype, jnp.inexact):
        raise TypeError(f"the explained function must return a floating-point array, got dtype {out.dtype}")
    return out


def _grad_at(fn: Callable, args: tuple, nums: tuple, w: Optional[Array], target, output_relevance):
    """``(w, grads)``: the gradient of ``sum(w * fn(*args))`` w.r.t. ``args[nums]``."""
    def f(*xs):
        return _check_out(fn(*_with(args, nums, xs)))

    out, pull = jax.vjp(f, *[args[n] for n in nums])
    if w is None:
        w = _weights(out, target, output_relevance)
    return w, pull(w.astype(out.dtype))


def gradient(fn: Callable[..., Array], *, argnums: Argnums = None) -> Callable[..., Any]:
    r"""The gradient :math:`\nabla_x \sum_j w_j f_j(x)` (vanilla saliency, signed)."""

    @functools.wraps(fn)
    def explain(*args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None) -> Any:
        nums, single = _split_args(args, argnums)
        _, g = _grad_at(fn, args, nums, None, target, output_relevance)
        return _pack(tuple(g), single)

    return explain


def gradient_x_input(fn: Callable[..., Array], *, argnums: Argnums = None) -> Callable[..., Any]:
    r"""Gradient times input, :math:`x \odot \nabla_x g(x)` (LRP-0 for ReLU networks without biases)."""

    @functools.wraps(fn)
    def explain(*args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None) -> Any:
        nums, single = _split_args(args, argnums)
        _, g = _grad_at(fn, args, nums, None, target, output_relevance)
        return _pack(tuple(jax.tree_util.tree_map(jnp.multiply, args[n], gi) for n, gi in zip(nums, g)), single)

    return explain


def _alphas(steps: int, method: str) -> tuple:
    r"""Nodes and weights of a rule for :math:`\int_0^1 h(\alpha) d\alpha` with ``steps`` nodes."""
    if method == "midpoint":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if method == "left":
        return np.arange(steps) / steps, np.full(steps, 1.0 / steps)
    if method == "right":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if steps < 2:
        raise ValueError("method='trapezoid' needs steps >= 2")
    w = np.full(steps, 1.0 / (steps - 1))
    w[[0, -1]] /= 2
    return np.linspace(0.0, 1.0, steps), w


def _map(f: Callable, xs, batch_size: Optional[int]):
    if batch_size is None:
        return jax.vmap(f)(xs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return jax.lax.map(f, xs, batch_size=batch_size)


def integrated_gradients(
    fn: Callable[..., Array],
    *,
    argnums: Argnums = None,
    baseline: PyTree = 0.0,
    steps: int = 32,
    method: str = "midpoint",
    batch_size: Optional[int] = None,
) -> Callable[..., Any]:
    r"""Integrated Gradients (Sundararajan et al. 2017).

    .. math:: \mathrm{IG}(x) = (x - b) \odot \sum_{k} \omega_k\,
              \nabla g\left(b + \alpha_k (x - b)\right)
              \approx (x - b) \odot \int_0^1 \nabla g(b + \alpha (x - b))\, d\alpha

    with the quadrature ``method``: ``"midpoint"`` (:math:`\alpha_k = (k + 1/2)/n`,
    exact when the gradient is linear along the path, e.g. for a quadratic ``g``),
    ``"trapezoid"``, ``"left"`` or ``"right"`` Riemann sums. Completeness,
    :math:`\sum_i \mathrm{IG}_i = g(x) - g(b)`, holds up to the quadrature error.

    Parameters
    ----------
    baseline:
        :math:`b`: a scalar or an array broadcastable to the explained argument (a
        pytree of them for pytree arguments).
    steps:
        Number of quadrature nodes :math:`n`.
    batch_size:
        Nodes evaluated at once (``None``: all, one ``vmap``).

    Notes
    -----
    The class is fixed at the input ``x`` (its argmax when ``target`` is ``None``),
    not re-selected along the path.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    nodes, weights = _alphas(steps, method)

    @functools.wraps(fn)
    def explain(*args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None) -> Any:
        nums, single = _split_args(args, argnums)
        xs = tuple(args[n] for n in nums)
        bs: Any = baseline if not single else (baseline,)
        if len(nums) > 1 and not isinstance(baseline, (tuple, list)):
            bs = (baseline,) * len(nums)
        bs = tuple(jax.tree_util.tree_map(lambda x, b: jnp.broadcast_to(jnp.asarray(b, x.dtype), x.shape), x, b)
                   for x, b in zip(xs, bs))
        w, _ = _grad_at(fn, args, nums, None, target, output_relevance)
        w = jax.lax.stop_gradient(w)

        def at(alpha):
            path = tuple(jax.tree_util.tree_map(lambda x, b: b + alpha.astype(x.dtype) * (x - b), x, b)
                         for x, b in zip(xs, bs))
            return _grad_at(fn, _with(args, nums, path), nums, w, None, None)[1]

        dtype = jnp.result_type(*jax.tree_util.tree_leaves(xs))
        grads = _map(at, jnp.asarray(nodes, dtype), batch_size)
        omega = jnp.asarray(weights, dtype)
        mean = jax.tree_util.tree_map(lambda g: jnp.tensordot(omega.astype(g.dtype), g, axes=1), grads)
        return _pack(tuple(jax.tree_util.tree_map(lambda x, b, g: (x - b) * g, x, b, m)
                           for x, b, m in zip(xs, bs, mean)), single)

    return explain


def _windows(shape: tuple, window: tuple, stride: tuple) -> np.ndarray:
    """Start corners of every window position, ``(W, len(shape))``."""
    ranges = [range(0, s - w + 1, st) for s, w, st in zip(shape, window, stride)]
    return np.asarray(list(itertools.product(*ranges)), dtype=np.int32).reshape(-1, len(shape))


def _tuple(name: str, value, n: int, shape: tuple) -> tuple:
    v = (value,) * n if isinstance(value, (int, np.integer)) else tuple(value)
    if len(v) != n or not all(isinstance(a, (int, np.integer)) and a >= 1 for a in v):
        raise ValueError(f"{name} must be a positive int or {n} positive ints (one per axis of an "
                         f"example, shape {shape}), got {value!r}")
    return v


def occlusion(
    fn: Callable[..., Array],
    *,
    window: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None] = None,
    baseline: float = 0.0,
    argnums: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> Callable[..., Any]:
    r"""Occlusion (Zeiler & Fergus 2014), as Captum defines it.

    A window slides over the axes of each example (every axis of ``x`` after the
    example axes, channels included: give a window of the channel count to occlude
    all channels); at each position :math:`p` the window's entries are set to
    ``baseline`` and the drop :math:`\Delta_p = g(x) - g(x_{p \leftarrow b})` is
    recorded. A feature's attribution is the mean of :math:`\Delta_p` over the
    windows that contain it (0 if none does).

    Parameters
    ----------
    window:
        Window size per example axis (an int for every axis).
    stride:
        Step per example axis (default: the window, non-overlapping).
    baseline:
        The replacement value.
    argnums:
        The one explained argument (default: the last); it must be an array.
    batch_size:
        Window positions evaluated at once (``None``: all in one ``vmap``).
    """

    @functools.wraps(fn)
    def explain(*args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None) -> Any:
        nums, single = _split_args(args, argnums)
        if not single:
            raise ValueError("occlusion explains one argument: pass argnums as an int")
        (n,) = nums
        x = args[n]
        if not isinstance(x, (jax.Array, np.ndarray)):
            raise TypeError("occlusion needs the explained argument to be an array, not a pytree")
        out = _check_out(fn(*args))
        w = _weights(out, target, output_relevance)
        e = max(out.ndim - 1, 0)
        shape = x.shape[e:]
        win = _tuple("window", window, len(shape), shape)
        st = win if stride is None else _tuple("stride", stride, len(shape), shape)
        if any(a > s for a, s in zip(win, shape)):
            raise ValueError(f"window {win} is larger than an example, shape {shape}")
        starts = _windows(shape, win, st)
        lead = (1,) * e

        def box(corner):
            ones = jnp.ones(win, x.dtype)
            return jax.lax.dynamic_update_slice(jnp.zeros(shape, x.dtype), ones, tuple(corner))

        def score(xx):
            o = _check_out(fn(*_with(args, nums, (xx,))))
            return jnp.sum(o * w, axis=-1) if o.ndim else o * w

        g0 = score(x)

        def drop(corner):
            m = box(corner)
            return g0 - score(jnp.where(m.reshape(lead + shape) > 0, jnp.asarray(baseline, x.dtype), x))

        deltas = _map(drop, jnp.asarray(starts), batch_size)  # (W, *example_shape)

        def add(carry, item):
            total, count = carry
            corner, d = item
            m = box(corner)
            return (total + d.reshape(d.shape + (1,) * len(shape)) * m, count + m), None

        zero = jnp.zeros(x.shape, x.dtype)
        (total, count), _ = jax.lax.scan(add, (zero, jnp.zeros(shape, x.dtype)), (jnp.asarray(starts), deltas))
        return jnp.where(count > 0, total / jnp.where(count > 0, count, 1), 0)

    return explain


def smooth(
    explainer: Callable[..., Any],
    *,
    n_samples: int = 16,
    sigma: float = 0.1,
    argnums: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> Callable[..., Any]:
    r"""SmoothGrad (Smilkov et al. 2017) over *any* explainer: the mean explanation of noisy inputs.

    .. math:: \bar\Phi(x) = \frac{1}{n} \sum_{k=1}^{n} \Phi(x + \epsilon_k), \qquad
              \epsilon_k \sim \mathcal N(0, \sigma^2 I)

    ``smooth(gradient(fn))`` is SmoothGrad, ``smooth(jaxlrp.lrp(fn, composite))`` a
    smoothed LRP explanation (as Zennit's ``SmoothGrad`` attributor over a
    composite).

    Parameters
    ----------
    explainer:
        ``explainer(*args, **kwargs)`` returning an attribution of one argument, e.g.
        :func:`gradient` or :func:`jaxlrp.lrp` of ``fn``.
    n_samples:
        :math:`n`, the number of noise draws (with ``key``).
    sigma:
        The noise's standard deviation (absolute, in input units).
    argnums:
        The argument the noise is added to (default: the last).
    batch_size:
        Draws evaluated at once (``None``: all, one ``vmap``).

    Returns
    -------
    callable
        ``explain(*args, key=None, noise=None, **kwargs)``: either ``key`` (a PRNG
        key for the draws) or ``noise`` (the draws :math:`\epsilon_k` themselves,
        shape ``(n, *x.shape)``); ``kwargs`` (``target=`` ...) go to ``explainer``.
        Note: with ``target=None`` the explainer picks the argmax of each *noisy*
        input; pass ``target`` to fix the class.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")

    @functools.wraps(explainer)
    def explain(*args, key=None, noise=None, **kwargs):
        nums, single = _split_args(args, argnums)
        if not single:
            raise ValueError("smooth adds noise to one argument: pass argnums as an int")
        (n,) = nums
        x = jnp.asarray(args[n])
        if (key is None) == (noise is None):
            raise ValueError("smooth needs exactly one of key= (a PRNG key) or noise= (the draws)")
        if noise is None:
            noise = sigma * jax.random.normal(key, (n_samples,) + x.shape, x.dtype)
        noise = jnp.asarray(noise, x.dtype)
        if noise.shape[1:] != x.shape or noise.ndim != x.ndim + 1:
            raise ValueError(f"noise must have shape (n_samples, *x.shape) = (n, {', '.join(map(str, x.shape))}), "
                             f"got {noise.shape}")

        def one(eps):
            return explainer(*_with(args, nums, (x + eps,)), **kwargs)

        out = _map(one, noise, batch_size)
        return jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), out)

    return explain
