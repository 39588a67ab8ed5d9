"""Concept Relevance Propagation (CRP) and Relevance Maximisation.

CRP (Achtibat et al., *Nature Machine Intelligence* 2023) explains a prediction
through the *concepts* a network encodes in the channels of its layers. A
**condition** names, for one or more layers, the channels (or neurons) that may
carry relevance; the conditional relevance of the input is the LRP backward pass in
which the relevance :math:`R_\\ell` arriving at the output of each conditioned layer
:math:`\\ell` is multiplied by the condition's mask :math:`m_\\ell`:

.. math:: R(x \\mid \\theta) = \\mathrm{LRP}\\left(f_c, x;\\;
          R_\\ell \\leftarrow m_\\ell \\odot R_\\ell \\;\\; \\forall \\ell \\in \\theta\\right)

For a channel concept :math:`c` at layer :math:`\\ell`, :math:`m_\\ell` is 1 on channel
:math:`c` and 0 elsewhere. With conservative rules the input relevance of concept
:math:`c` then sums to the concept's relevance
:math:`R_c = \\sum_{\\text{positions}} R_\\ell[\\ldots, c]` (the relevance *score* used
to rank the concepts of a prediction, :func:`relevance_scores`).

K conditions are one :func:`jax.vmap` over K stacked masks: the forward pass does
not depend on the masks, so it runs once, and only the backward pass is batched.
``batch_size`` chunks the K conditions (:func:`jax.lax.map`) to bound the memory.
The functions returned by :func:`conditional`, :func:`relevance_scores`,
:func:`channel_relevance` and :func:`parameter_relevance` compose with
:func:`jax.jit`; called outside it they run as one compiled program, cached with
the function (new values of the same shapes reuse it).

Channels are the **last** axis of a layer's output (``NHWC`` convolutions, dense
features), as everywhere in JAX. Only layers outside ``scan``/``cond`` bodies can be
conditioned; the layers of a model are listed by :func:`jaxlrp.inspect`.

Relevance Maximisation (:func:`maximization`) finds, for every channel of a layer,
the data-set examples in which the channel is most relevant (or most activated),
streaming the data set through :func:`jaxlrp.explain_dataset` (sharded, resumable).
:func:`references` crops those examples to the region the concept's own heatmap
points at, and :func:`atlas` draws the result.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._core import parameters as _parameters
from . import composites as _composites
from . import viz
from ._core.errors import UnsupportedOperationError
from ._core.kinds import WEIGHTED_KINDS
from .composites import Composite, Matcher
from .dataset import Batch, PathLike
from ._core.checks import concrete, is_nnx_module
from ._core.eager import when_eager
from ._core.run import run, top_level_nodes, unflatten_relevance
from ._core.trace import Traced, trace
from ._core.types import Target
from .rules import Rule

__all__ = ["conditional", "relevance_scores", "channel_relevance", "parameter_relevance", "maximization", "Maximization", "references", "crop", "atlas"]

Array = jax.Array
PyTree = Any  # model variables: a pytree of arrays
#: A condition: layer matcher -> channel ids (an int or a sequence of ints: the
#: channels that keep their relevance) or a mask broadcastable to the layer's output.
Condition = Mapping[Matcher, Union[int, Sequence[int], ArrayLike]]
Conditions = Union[Condition, Sequence[Condition]]

_REDUCE = ("sum", "max")


# ------------------------------------------------------------------ layers and masks


def _layer_index(t: Traced, matcher: Matcher) -> int:
    """The one top-level layer that ``matcher`` names (its key, or a matcher)."""
    nodes = top_level_nodes(t)
    if isinstance(matcher, str):
        exact = [i for i in nodes if t.layers[i].key == matcher]
        if exact:
            return exact[0]
    f = _composites.as_matcher(matcher)
    found = [i for i in sorted(nodes) if f(t.layers[i])]
    if len(found) != 1:
        keys = ", ".join(t.layers[i].key for i in sorted(nodes))
        what = "no layer" if not found else f"{len(found)} layers ({', '.join(t.layers[i].key for i in found)})"
        raise ValueError(
            f"concept layer {matcher!r} matches {what}; a condition needs exactly one layer outside "
            f"control flow, one of: {keys}"
        )
    return found[0]


def _mask(t: Traced, index: int, value: Any) -> Array:
    """The mask of one condition at one layer, broadcastable to the layer's output."""
    layer = t.layers[index]
    shape, channels = tuple(layer.output_shape), layer.output_shape[-1]
    dtype = t.analysis.program.eqns[top_level_nodes(t)[index].eqn].outvars[0].dtype
    v = jnp.asarray(value)
    if jnp.issubdtype(v.dtype, jnp.integer):
        if v.ndim > 1:
            raise ValueError(f"channel ids for layer {layer.key!r} must be an int or a 1-D sequence, got shape {v.shape}")
        ids = concrete(value)  # the value given (under jit, jnp.asarray of a list is traced)
        if ids is not None and (np.any(ids < 0) or np.any(ids >= channels)):
            raise ValueError(f"channel ids {ids.tolist()} out of range for layer {layer.key!r} with {channels} channels")
        return jnp.zeros((channels,), dtype).at[v.reshape(-1)].set(1)
    try:
        ok = np.broadcast_shapes(v.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"the mask for layer {layer.key!r} has shape {v.shape}, which does not broadcast to the "
            f"layer's output shape {shape}; pass channel ids or a mask of shape (C,) = ({channels},)"
        )
    return v.astype(dtype)


def _check_batch_size(batch_size) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")


def _stack(t: Traced, conds: list) -> dict:
    """Layer index -> the K masks of ``conds`` stacked on a leading axis."""
    per: list = [{_layer_index(t, m): v for m, v in c.items()} for c in conds]
    for c, resolved in zip(conds, per):
        if len(resolved) != len(c):
            raise ValueError(f"two matchers of the condition {list(c)} name the same layer")
    stacked = {}
    for i in sorted(set().union(*per)):
        masks = [_mask(t, i, p[i]) if i in p else None for p in per]
        shape = np.broadcast_shapes(*[m.shape for m in masks if m is not None])
        dtype = next(m.dtype for m in masks if m is not None)
        stacked[i] = jnp.stack([jnp.ones(shape, dtype) if m is None else jnp.broadcast_to(m, shape) for m in masks])
    return stacked


def _as_list(conditions: Conditions) -> tuple:
    if isinstance(conditions, Mapping):
        return [conditions], True
    conds = list(conditions)
    if not conds or not all(isinstance(c, Mapping) for c in conds):
        raise TypeError("conditions must be a mapping {layer: channels or mask} or a non-empty sequence of them")
    return conds, False


# ------------------------------------------------------------------ the conditional backward pass


def _conditional_run(t: Traced, conds: list, target, output_relevance, start, tapped: tuple, batch_size):
    """Relevance leaves and output-tap relevance of every condition, with a leading K axis."""
    stacked = _stack(t, conds)
    start_index = None if start is None else _layer_index(t, start)
    if start_index is not None:
        if target is not None or output_relevance is not None:
            raise ValueError("with start=, the relevance starts at that layer: pass neither target= nor output_relevance=")
        out_aval = jax.eval_shape(lambda: run(t, None, None)[0])
        output_relevance = jnp.zeros(out_aval.shape, out_aval.dtype)

    def one(masks):
        hooks = {i: (m, None) for i, m in masks.items() if i is not None}
        if start_index is not None:  # R_l <- m_l * z_l: the layer's own output, masked
            m = masks.get(start_index, jnp.ones((), output_relevance.dtype))
            hooks[start_index] = (jnp.zeros_like(m), m)
        _, rel, tap_rel = run(t, target, output_relevance, tapped, hooks)
        return rel, {i: tap_rel[i][1] for i in tapped}

    if not stacked:  # no mask at all: K copies of plain LRP
        stacked = {None: jnp.zeros((len(conds),))}
    if batch_size is None:
        return jax.vmap(one)(stacked)
    return jax.lax.map(one, stacked, batch_size=batch_size)


def conditional(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    batch_size: Optional[int] = None,
) -> Callable[..., Any]:
    """Conditional relevance (CRP) as a function transformation.

    Parameters
    ----------
    fn, composite, rule, argnums:
        As for :func:`jaxlrp.lrp`; every composite and variant works.
    batch_size:
        Conditions evaluated at once (a chunk of the vmap over the K conditions, in
        one compiled loop); ``None``: all K at once.

    Returns
    -------
    callable
        ``explain(*args, conditions, target=None, output_relevance=None, start=None)``:

        * ``conditions``: one condition ``{layer: channels or mask}`` or a sequence of
          K of them. ``layer`` is a layer key (see :func:`jaxlrp.inspect`) or a
          matcher naming exactly one layer; ``channels`` an int or a sequence of ints
          (the channels, on the last axis of the layer's output, that keep their
          relevance; their union is the concept); a float mask broadcastable to the
          layer's output shape selects neurons (e.g. shape ``(H, W, C)``). Layers a
          condition leaves out are not masked.
        * ``target``, ``output_relevance``: as for :func:`jaxlrp.lrp` (the class
          condition, CRP's ``"y"``).
        * ``start``: a layer (key or matcher): start the backward pass there, with the
          layer's own output, masked by the condition, as its relevance (zennit-crp's
          ``start_layer``); the output relevance is then zero. Used for the
          reference heatmaps of :func:`references`.

        Returns the relevance of the explained argument, with a leading axis of
        length K when ``conditions`` is a sequence.

    Examples
    --------
    >>> crp = concepts.conditional(model.apply, composites.EpsilonPlusFlat())
    >>> R = jax.jit(crp)(variables, x, conditions=[{"CNN/conv2": [c]} for c in range(32)], target=3)
    >>> R.shape == (32, *x.shape)
    True
    """
    comp = _composites.resolve(composite, rule)
    _check_batch_size(batch_size)

    @functools.wraps(fn)
    @when_eager  # an eager call: one compiled program
    def explain(
        *args: Any,
        conditions: Conditions,
        target: Target = None,
        output_relevance: Optional[ArrayLike] = None,
        start: Optional[Matcher] = None,
    ) -> Any:
        t = trace(fn, comp, argnums, args)
        conds, single = _as_list(conditions)
        rel, _ = _conditional_run(t, conds, target, output_relevance, start, (), batch_size)
        out = unflatten_relevance(t, rel)
        return jax.tree_util.tree_map(lambda r: r[0], out) if single else out

    return explain


def _scores(r: Array, example_ndim: int, how: str, normalize: bool) -> Array:
    """Per-channel scores of layer relevance ``r`` (K leading), normalised by ``sum |.|``."""
    s = jnp.sum(r, axis=tuple(range(1 + example_ndim, r.ndim - 1))) if how == "sum" else \
        jnp.max(r, axis=tuple(range(1 + example_ndim, r.ndim - 1)))
    if normalize:
        total = jnp.sum(jnp.abs(s), axis=-1, keepdims=True)
        s = s / jnp.where(total > 0, total, 1)
    return s


def relevance_scores(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    layer: Optional[Matcher] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    reduce: str = "sum",
    normalize: bool = False,
    batch_size: Optional[int] = None,
) -> Callable[..., Any]:
    r"""The relevance of every channel (concept) of ``layer``, for ranking concepts.

    .. math:: R_c = \sum_{p} R_\ell[p, c] \quad (\text{``reduce="sum"``}), \qquad
              \text{or } \max_p R_\ell[p, c] \quad (\text{``"max"``}),

    over the positions :math:`p` of the relevance :math:`R_\ell` arriving at the
    layer's output (after the layer's own mask if a condition names it); with
    ``normalize`` divided by :math:`\sum_c |R_c|` (zennit-crp's ``abs_norm``; 0
    where every :math:`R_c` is 0).

    Returns
    -------
    callable
        ``scores(*args, conditions=None, target=None, output_relevance=None)`` ->
        an array ``(*example_shape, C)``, with a leading K axis when ``conditions``
        is a sequence (e.g. the sub-concepts of a higher-level concept).
    """
    comp = _composites.resolve(composite, rule)
    if layer is None:
        raise TypeError("relevance_scores needs the layer whose channels are scored: layer=...")
    matcher: Matcher = layer
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
    _check_batch_size(batch_size)

    @functools.wraps(fn)
    @when_eager  # an eager call: one compiled program
    def scores(
        *args: Any,
        conditions: Optional[Conditions] = None,
        target: Target = None,
        output_relevance: Optional[ArrayLike] = None,
    ) -> Array:
        t = trace(fn, comp, argnums, args)
        conds, single = _as_list({} if conditions is None else conditions)
        i = _layer_index(t, matcher)
        _, taps = _conditional_run(t, conds, target, output_relevance, None, (i,), batch_size)
        s = _scores(taps[i], t.example_ndim, reduce, normalize)
        return s[0] if single else s

    return scores


def channel_relevance(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    layers: Matcher = "linear",
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
) -> Callable[..., Any]:
    r"""The relevance of every channel (filter, neuron) of every matched layer,
    summed over the examples of a batch: the pruning criterion of Yeom et al. 2021
    ("Pruning by explaining").

    .. math:: R_c^{(\ell)} = \sum_{n} \sum_{p} R_\ell[n, p, c]

    over the examples :math:`n` and positions :math:`p` of the relevance
    :math:`R_\ell` arriving at the output of layer :math:`\ell` (channels on the
    last axis). One backward pass taps all the layers at once; summing the result
    over batches gives the criterion over a data set (with ``jax.lax.scan`` or a
    Python loop over a jitted call). With conservative rules the scores of one
    layer sum to the relevance that reaches it, so they compare across layers
    once divided by that (Yeom et al. normalise per layer).

    Parameters
    ----------
    fn, composite, rule, argnums:
        As for :func:`jaxlrp.lrp`.
    layers:
        Matcher of the layers to score (default: every dense and conv layer
        outside ``scan``/``cond`` bodies).

    Returns
    -------
    callable
        ``scores(*args, target=None, output_relevance=None)`` -> a dict from each
        matched layer's key (see :func:`jaxlrp.inspect`) to an array ``(C,)``.

    Examples
    --------
    >>> scores = jax.jit(concepts.channel_relevance(model.apply, composites.EpsilonPlus()))(variables, x, target=y)
    >>> scores["CNN/conv1"].shape
    (4,)
    """
    comp = _composites.resolve(composite, rule)
    match = _composites.as_matcher(layers)

    @functools.wraps(fn)
    @when_eager  # an eager call: one compiled program
    def scores(*args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None) -> dict:
        t = trace(fn, comp, argnums, args)
        chosen = tuple(i for i in sorted(top_level_nodes(t)) if match(t.layers[i]))
        if not chosen:
            raise ValueError(f"layers={layers!r} matches no layer outside control flow")
        _, _, taps = run(t, target, output_relevance, chosen)
        return {t.layers[i].key: jnp.sum(taps[i][1].reshape(-1, taps[i][1].shape[-1]), axis=0) for i in chosen}

    return scores


def parameter_relevance(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
) -> Callable[..., Any]:
    r"""The relevance of every weight and bias of every dense and conv layer, summed
    over the examples of a batch (Yeom et al. 2021, per weight).

    For a rule of the modified-gradient form (:func:`jaxlrp.rules.propagate`), the
    relevance that flows from output :math:`k` of a layer to its input :math:`j`
    through the weight :math:`w_{jk}` is the message
    :math:`\sum_i c_i\, \tilde x_{ij}\, \rho_i(w_{jk})\, s_k` with
    :math:`s = R / \operatorname{stab}(d)` (several terms: their sum). The relevance
    of the weight is that message summed over the positions that share it and the
    examples :math:`n`; for LRP-:math:`\epsilon`

    .. math:: R(w_{jk}) = \sum_{n,p} \frac{x_j w_{jk} R_k}{z_k + \epsilon\,\mathrm{sign}(z_k)},
              \qquad R(W) = W \odot \partial_W \langle s, z(x, W) \rangle ,

    and the bias's share is :math:`R(b_k) = \sum_{n,p} b_k s_k` (the modified bias
    :math:`\tilde b` of the rule's terms). Because each layer is bilinear in input
    and weight, :math:`\sum R(W)` of a layer equals the summed relevance of its input,
    for every rule; with LRP-0 and no bias it is the relevance at its output.

    One compiled forward and backward pass: the interpreter's dense/conv nodes give
    these as the cotangents of their weight and bias operands, routed back to the
    parameter leaves through reshapes, casts, slices and ``lax.scan`` (a scanned
    stack of layers gets each layer's relevance in its slice; a parameter used
    twice, such as a tied embedding, gets the sum).

    Parameters
    ----------
    fn, composite, rule, argnums:
        As for :func:`jaxlrp.lrp` (``argnums``: the explained input, by default the
        last argument; the parameters are the other arguments).

    Returns
    -------
    callable
        ``relevance(*args, target=None, output_relevance=None)`` -> the relevance in
        the structure of the arguments that are not explained (the tree itself when
        there is one, e.g. linen's ``variables``; else a tuple of trees). A leaf
        that a dense or conv layer reads as its weight or (unscaled) bias holds
        its relevance; every other leaf is ``None``: parameters of other layers
        (norm scales, embeddings, attention has no weight of its own), integer
        and static leaves. The bias of a layer followed by a folded BatchNorm (a
        bias mixed with the norm's statistics) gets no share: those leaves are
        ``None`` too, and the share stays in :func:`channel_relevance`.

    Raises
    ------
    UnsupportedOperationError
        A dense or conv layer's rule is not on :func:`~jaxlrp.rules.propagate`
        (:attr:`~jaxlrp.rules.Rule.parameter_relevance` unset: ``Gradient``,
        ``Pass``, variants), or a weight is computed from parameters by more than
        a reshape, cast, slice or broadcast.

    Examples
    --------
    >>> rel = jax.jit(concepts.parameter_relevance(model.apply, composites.EpsilonPlus()))(variables, x, target=y)
    >>> rel["params"]["conv1"]["kernel"].shape == variables["params"]["conv1"]["kernel"].shape
    True
    """
    if is_nnx_module(fn):
        raise TypeError("parameter_relevance takes a function of the parameters, not an nnx module: pass "
                        "graphdef, state = nnx.split(model) and lambda state, x: nnx.merge(graphdef, state)(x), "
                        "then call it with (state, x)")
    comp = _composites.resolve(composite, rule)

    @functools.wraps(fn)
    @when_eager  # an eager call: one compiled program
    def relevance(*args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None) -> Any:
        t = trace(fn, comp, argnums, args)
        for layer in t.layers:
            r = t.rules.get(layer.index)
            if layer.kind in WEIGHTED_KINDS and r is not None and not getattr(r, "parameter_relevance", False):
                raise UnsupportedOperationError(
                    layer.primitive, layer.name, f"the rule {r!r} gives no relevance of the layer's parameters",
                    "give dense and conv layers a rule on rules.propagate (Epsilon, ZPlus, AlphaBeta, Gamma, "
                    "ZBox, Flat, WSquare, EpsilonStd)")
        sources = _parameters.parameter_sources(t.analysis)
        invars = t.analysis.program.invars
        leaves = [j for j in range(len(t.flat_args)) if invars[j] in sources and j not in t.explained]
        rel = dict(zip(leaves, _parameters.run(t, leaves, target, output_relevance)))
        trees = [jax.tree_util.tree_unflatten(treedef, [rel.get(v) if traced else None for traced, v in slot])
                 for i, (treedef, slot) in enumerate(t.slots) if i not in t.argnums]
        return trees[0] if len(trees) == 1 else tuple(trees)

    return relevance


# ------------------------------------------------------------------ relevance maximisation


class Maximization(NamedTuple):
    """Top examples per channel of one layer (from :func:`maximization`).

    Attributes
    ----------
    layer: the layer key.
    relevance_indices, relevance_values: ``(C, top)``: per channel, data-set indices
        of the examples with the highest relevance score, best first, and the scores.
    activation_indices, activation_values: the same, ranked by activation.
    """

    layer: str
    relevance_indices: np.ndarray
    relevance_values: np.ndarray
    activation_indices: np.ndarray
    activation_values: np.ndarray


def _statistics(fn, comp, argnums, layer, relevance_reduce, activation_reduce, normalize):
    """``stats(params, x, target=None) -> (N, 2, C)``: relevance score and activation per channel.

    The activation comes from the same vmapped call: a second "condition" that
    replaces the relevance at the layer by the layer's output (start-layer hook),
    read at the layer's output tap.
    """

    def stats(*args, target=None):
        t = trace(fn, comp, argnums, args)
        i = _layer_index(t, layer)
        if t.example_ndim != 1:
            raise ValueError(f"maximization needs a batched function with output (N, classes); "
                             f"the output has {t.example_ndim} example axes")
        out_aval = jax.eval_shape(lambda: run(t, None, None)[0])

        def one(is_act):
            m = jnp.ones((), out_aval.dtype)
            hook = (1 - is_act) * m, is_act * m  # relevance as is / the activation itself
            _, _, taps = run(t, target, None, (i,), {i: hook})
            return taps[i][1]

        rel, act = jax.vmap(one)(jnp.arange(2, dtype=out_aval.dtype))
        r = _scores(rel[None], 1, relevance_reduce, normalize)[0]
        a = _scores(act[None], 1, activation_reduce, False)[0]
        return jnp.stack([r, a], axis=1)

    return stats


def _top(values: np.ndarray, top: int) -> tuple:
    """Per column of ``values`` (M, C): indices and values of the ``top`` largest, best first."""
    top = min(top, values.shape[0])
    idx = np.argsort(-values, axis=0, kind="stable")[:top]
    return idx.T, np.take_along_axis(values, idx, axis=0).T


def maximization(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None],
    layer: Matcher,
    params: PyTree,
    batches: Iterable[Batch],
    out: PathLike,
    *,
    top: int = 8,
    argnums: Union[int, Sequence[int], None] = None,
    relevance_reduce: str = "sum",
    activation_reduce: str = "max",
    normalize: bool = True,
    **dataset_kwargs: Any,
) -> Maximization:
    r"""Relevance (and activation) maximisation over a data set (Achtibat et al. 2023).

    For every example the per-channel statistics of ``layer`` are computed in one
    jitted call per batch and written by :func:`jaxlrp.explain_dataset` (so the run
    is sharded over devices and resumes after an interruption):

    * the relevance score :math:`R_c` of :func:`relevance_scores` for the batch's
      target (its argmax if the batch has none), reduced by ``relevance_reduce`` and
      normalised by :math:`\sum_c |R_c|` when ``normalize`` (zennit-crp's defaults);
    * the activation :math:`\max_p z_\ell[p, c]` (``activation_reduce="max"``, as in
      the paper; ``"sum"`` for zennit-crp's default).

    Then the ``top`` examples per channel are selected on the host.

    Parameters
    ----------
    fn:
        ``fn(params, x) -> logits (N, classes)``, e.g. ``model.apply``.
    composite, layer:
        The LRP composite and the layer (key or matcher naming one layer).
    params, batches, out:
        As for :func:`jaxlrp.explain_dataset` (``out`` holds the statistics, shape
        ``(N, 2, C)`` per batch, as its ``"relevance"`` field).
    dataset_kwargs:
        Passed on to :func:`jaxlrp.explain_dataset` (``mesh``, ``progress`` ...).

    Returns
    -------
    Maximization
        Data-set indices (in the order of ``batches``) and scores, ``(C, top)``.
    """
    from . import dataset

    for name, how in (("relevance_reduce", relevance_reduce), ("activation_reduce", activation_reduce)):
        if how not in _REDUCE:
            raise ValueError(f"{name} must be one of {_REDUCE}, got {how!r}")
    comp = _composites.resolve(composite, None)
    stats = _statistics(fn, comp, argnums, layer, relevance_reduce, activation_reduce, normalize)
    dataset.explain_dataset(stats, params, batches, out, **dataset_kwargs)
    values = dataset.load(out, ["relevance"])["relevance"]
    ri, rv = _top(values[:, 0], top)
    ai, av = _top(values[:, 1], top)
    return Maximization(layer if isinstance(layer, str) else repr(layer), ri, rv, ai, av)


# ------------------------------------------------------------------ references and atlas


def references(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None],
    layer: Matcher,
    params: PyTree,
    x: ArrayLike,
    channel: int,
    *,
    argnums: Union[int, Sequence[int], None] = None,
) -> Array:
    """The concept's own heatmaps on reference examples ``x`` (e.g. its top examples).

    The conditional relevance with the backward pass started at ``layer`` from the
    channel's activation (``start=layer``, condition ``{layer: [channel]}``): where in
    each example the concept is. Shape and dtype of ``x``.
    """
    crp = conditional(fn, composite, argnums=argnums)
    return crp(params, x, conditions={layer: [channel]}, start=layer)


def crop(image: ArrayLike, heatmap: ArrayLike, *, threshold: float = 0.2, pad: int = 1) -> np.ndarray:
    r"""The part of ``image`` where ``heatmap`` (summed over channels) is high.

    The bounding box of the positions with :math:`h \ge \text{threshold} \cdot \max h`
    (positive relevance only), widened by ``pad`` pixels; the whole image when the
    heatmap has no positive entry.

    Parameters
    ----------
    image: ``(H, W)`` or ``(H, W, C)``.
    heatmap: ``(H, W)`` or ``(H, W, C)``.
    """
    img, h = np.asarray(image), np.asarray(heatmap, dtype=np.float64)
    if h.ndim == 3:
        h = h.sum(-1)
    if h.shape != img.shape[:2]:
        raise ValueError(f"heatmap of shape {np.shape(heatmap)} does not match the image's shape {img.shape}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    peak = h.max()
    if not peak > 0:
        return img
    rows, cols = np.nonzero(h >= threshold * peak)
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, h.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, h.shape[1])
    return img[r0:r1, c0:c1]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w[, 3])`` uint8 image to ``size`` x ``size``."""
    rows = (np.arange(size) * img.shape[0] / size).astype(int)
    cols = (np.arange(size) * img.shape[1] / size).astype(int)
    return img[rows][:, cols]


def atlas(
    rows: Mapping[str, Sequence[tuple]],
    *,
    size: int = 48,
    threshold: float = 0.2,
    alpha: float = 0.0,
) -> np.ndarray:
    """A concept atlas: one row per concept, its reference examples cropped by their heatmaps.

    Parameters
    ----------
    rows:
        ``{row title: [(image, heatmap), ...]}``; images ``(H, W)`` or ``(H, W, C)``
        with values in any range (each image is scaled to ``[0, 255]`` as a whole
        by :func:`jaxlrp.viz.overlay`, then cropped).
    size:
        Side of each (square, nearest-neighbour resized) cell in pixels.
    threshold:
        Passed to :func:`crop`.
    alpha:
        Opacity of the heatmap drawn over each crop (0: the crop alone).

    Returns
    -------
    numpy.ndarray
        An RGB ``uint8`` image (:func:`jaxlrp.viz.grid`); the row title is drawn over
        the first cell of each row.
    """
    cells, titles, ncols = [], [], max(len(v) for v in rows.values())
    for title, refs in rows.items():
        for j in range(ncols):
            if j >= len(refs):
                cells.append(np.full((size, size, 3), 255, np.uint8))
                titles.append("")
                continue
            image, h = refs[j]
            h = np.asarray(h, dtype=np.float64)
            h = h.sum(-1) if h.ndim == 3 else h
            rgb = viz.overlay(image, h if alpha > 0 else np.zeros_like(h), alpha=alpha)
            rgb = crop(rgb, h, threshold=threshold)
            cells.append(_resize(rgb, size))
            titles.append(title if j == 0 else "")
    return viz.grid(cells, titles=titles, ncols=ncols)
