"""Randomisation: whether an explanation depends on the parameters and on the
explained class (model parameter randomisation, random logit)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._common import Array, check_batched, check_choice, concrete, as_float, check_int, need_key, similarity_fn

_RANDOMISATIONS = ("normal", "permute")


# ------------------------------------------------------------------ randomisation


def _randomise_leaf(leaf: Any, key: Array, method: str) -> Any:
    """A random stand-in for one parameter array (non-float leaves are kept)."""
    a = jnp.asarray(leaf)
    if not jnp.issubdtype(a.dtype, jnp.floating) or a.size == 0:
        return leaf
    if method == "permute":
        return jax.random.permutation(key, a.ravel()).reshape(a.shape)
    return a.mean() + a.std() * jax.random.normal(key, a.shape, a.dtype)


def _randomise(subtree: Any, key: Array, method: str) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(subtree)
    new = [_randomise_leaf(leaf, jax.random.fold_in(key, i), method) for i, leaf in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def model_parameter_randomisation(
    explain_with_params: Callable[[Any, Array], Array],
    params: Mapping,
    x: ArrayLike,
    *,
    key: Array,
    layers: Optional[Sequence[str]] = None,
    similarity: Union[str, Callable[[Array, Array], Array]] = "spearman",
    randomisation: str = "normal",
) -> dict[str, Array]:
    r"""Cascading model parameter randomisation test, MPRT (Adebayo et al. 2018).

    The top-level entries ("layers") of the parameter tree are randomised one after
    another, cumulatively, from the last layer to the first; after each step the
    inputs are explained again and compared with the original explanation
    :math:`\Phi_\theta(x)`:

    .. math:: s_\ell = \operatorname{sim}\left(\Phi_\theta(x),
              \Phi_{\theta_{\ge \ell}\text{ randomised}}(x)\right)

    An explanation that reflects the model should lose its similarity quickly.

    Parameters
    ----------
    explain_with_params:
        ``explain_with_params(params, x_batch) -> relevance``.
    params:
        A mapping; if it has a ``"params"`` entry (Flax variables), the layers are
        that entry's keys and the other collections (e.g. ``"batch_stats"``) stay
        untouched, else the layers are the keys of ``params`` itself.
    x:
        Inputs of shape ``(N, ...)``.
    key:
        PRNG key for the randomisation.
    layers:
        Names of the layers to randomise, in the order of randomisation. Default:
        all layers in reverse insertion order (last layer first). A dict passed
        through :func:`jax.jit` as an argument arrives with its keys sorted (JAX
        flattens dicts in key order), so under ``jit`` either close over ``params``
        or pass ``layers`` explicitly.
    similarity:
        ``"spearman"`` (rank correlation of the flattened relevance, :func:`spearman`),
        ``"pearson"`` (:func:`pearson`), or a function ``(a, b) -> (N,)``.
    randomisation:
        How a floating-point parameter array is randomised: ``"normal"`` (fresh
        Gaussian values with the array's own mean and standard deviation, so a
        constant array such as a zero bias stays constant) or ``"permute"`` (its
        entries shuffled).

    Returns
    -------
    dict
        Layer name -> similarity per example, shape ``(N,)``, in the order of
        randomisation (a dict returned from :func:`jax.jit` has sorted keys); lower
        is better.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping of layer names to parameters, got {type(params).__name__}")
    nested = "params" in params
    tree = params["params"] if nested else params
    if not isinstance(tree, Mapping) or len(tree) == 0:
        raise ValueError("params['params'] must be a non-empty mapping of layer names to parameters")
    names = list(tree.keys())
    order = list(reversed(names)) if layers is None else list(layers)
    if isinstance(layers, str) or len(order) == 0:
        raise ValueError(f"layers must be a non-empty sequence of layer names, got {layers!r}")
    unknown = [name for name in order if name not in tree]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the parameters have layers {names}")
    if len(set(order)) != len(order):
        raise ValueError(f"layers must not repeat a name, got {order}")
    sim = similarity_fn(similarity)
    check_choice("randomisation", randomisation, _RANDOMISATIONS)
    key = need_key(key, "model_parameter_randomisation")

    x = check_batched("x", x, min_ndim=1)
    original = explain_with_params(params, x)
    current = dict(tree)
    scores = {}
    for i, name in enumerate(order):
        current[name] = _randomise(current[name], jax.random.fold_in(key, i), randomisation)
        randomised = {**params, "params": dict(current)} if nested else dict(current)
        scores[name] = sim(original, explain_with_params(randomised, x))
    return scores


def random_logit(
    explain_target: Callable[[Array, Array], Array],
    x: ArrayLike,
    target: ArrayLike,
    *,
    classes: Optional[int] = None,
    other: Optional[ArrayLike] = None,
    key: Optional[Array] = None,
    similarity: Union[str, Callable[[Array, Array], Array]] = "spearman",
) -> Array:
    r"""Random logit test (Sixt et al. 2020): similarity to the explanation of another class.

    .. math:: s = \operatorname{sim}\left(\Phi(x, c), \Phi(x, c')\right), \qquad c' \ne c

    with :math:`c'` given (``other``) or drawn uniformly from the other classes.

    Parameters
    ----------
    explain_target:
        ``explain_target(x_batch, target_batch) -> relevance``.
    target:
        The explained classes, shape ``(N,)``.
    classes:
        Number of classes (needed to draw ``other``).
    other:
        The other classes, shape ``(N,)``, each different from ``target``.
    similarity:
        ``"spearman"`` (default), ``"pearson"`` or ``(a, b) -> (N,)`` (Quantus'
        default is SSIM).

    Returns
    -------
    Array of shape ``(N,)``; lower is better (class-sensitive explanations).
    """
    x = check_batched("x", x, min_ndim=1)
    t = jnp.asarray(target)
    if t.shape != (x.shape[0],) or not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"target must be integer classes of shape (N,) = ({x.shape[0]},), got {t.dtype} {t.shape}")
    if other is None:
        k = check_int("classes", classes, 2) if classes is not None else None
        if k is None:
            raise ValueError("random_logit needs classes= to draw the other classes (or pass other=)")
        shift = jax.random.randint(need_key(key, "random_logit"), t.shape, 1, k)
        other = (t + shift) % k
    o = jnp.asarray(other)
    if o.shape != t.shape:
        raise ValueError(f"other must have shape {t.shape}, got {o.shape}")
    v_t, v_o = concrete(t), concrete(o)
    if v_t is not None and v_o is not None and np.any(v_t == v_o):
        raise ValueError("other must differ from target for every example")
    sim = similarity_fn(similarity)
    return sim(as_float(jnp.asarray(explain_target(x, t))), as_float(jnp.asarray(explain_target(x, o))))
