"""Diagnostics: which rule each layer got, where relevance is lost or created, and
artifacts of the model rather than of the data.

* :func:`inspect` -- per-layer rule, relevance in and out, fallbacks;
  :func:`absorption` -- the share of relevance each layer absorbs (biases,
  stabilisers) or creates.
* :func:`border_mass` -- relevance at the borders of an image (padding artifacts of
  convolutions).
* :func:`decay_profile` -- relevance along one axis and its exponential decay rate
  (the "fading memory" of recurrent models fed an image column by column).
* :func:`permute` / :func:`unpermute` / :func:`permutation_test` -- train on inputs
  under a fixed permutation of one axis and map the relevance back: a model that
  looks at the data gives the same map (Landt-Hayen et al. 2023).
* :func:`cap_and_scale` -- the input capping the same authors recommend;
  :func:`valid_points`, :func:`mask_invalid`, :func:`mask_relevance`,
  :func:`select_valid` / :func:`scatter_valid` -- their handling of invalid grid
  points (land, NaN): out of the inputs and out of the relevance.
* :func:`collectives` -- the collectives (all-gathers, all-reduces, ...) of a
  compiled sharded program, to compare an explainer with ``jax.grad``.
* :func:`stripe_ratio` -- stripes across the lines of an image fed line by line
  (the artifact of row-wise feeding the same authors report).

Every function returns numbers, so artifacts can be asserted, not only looked at;
to look at them, draw a decay profile with ``viz.sequence_plot(profile[i])`` and the
mean absolute relevance behind a border mass with
``viz.heatmap(abs(relevance).mean(0), cmap="hot", symmetric=False)``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._core import primitives as P
from . import composites as _composites
from .composites import Composite
from ._core.checks import is_nnx_module
from ._core.eager import NOT_RUN, CompiledFunction
from ._core.run import initial_relevance, run, top_level_nodes
from ._core.trace import Traced, trace
from ._core.types import Target
from .rules import Rule

__all__ = [
    "inspect",
    "Report",
    "LayerRow",
    "absorption",
    "border_mass",
    "decay_profile",
    "permute",
    "unpermute",
    "permutation_test",
    "cap_and_scale",
    "valid_points",
    "mask_invalid",
    "mask_relevance",
    "select_valid",
    "scatter_valid",
    "stripe_ratio",
    "collectives",
]


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One rule-bearing layer: where it is, its rule and its relevance in and out."""

    key: str
    kind: str
    primitive: str
    param_paths: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    folded: tuple[str, ...]
    rule: str
    relevance_in: Optional[float]  # summed over the layer's inputs and all examples
    relevance_out: Optional[float]

    @property
    def conservation(self) -> Optional[float]:
        """``relevance_in / relevance_out`` (1 where the layer conserves relevance)."""
        if self.relevance_in is None or not self.relevance_out:
            return None
        return self.relevance_in / self.relevance_out

    @property
    def absorbed(self) -> Optional[float]:
        """``relevance_out - relevance_in``: what the layer's bias, stabiliser or
        constant operands (a position embedding added to the signal) absorbed;
        negative where relevance was created."""
        if self.relevance_in is None or self.relevance_out is None:
            return None
        return self.relevance_out - self.relevance_in


@dataclasses.dataclass(frozen=True)
class Report:
    """What :func:`inspect` found.

    Attributes
    ----------
    rows:
        One :class:`LayerRow` per dense/conv/sum/avgpool/maxpool/product layer, in program
        order (layers inside ``scan``/``cond`` bodies have no relevance sums).
    fallbacks:
        ``(key, primitive, treatment)`` of the operations on the relevance path
        that have no rule of their own and fall back to the plain VJP where it
        *chooses* among entries (``reduce_max``, ``sort``, ``scatter``, ``max`` of
        two input-dependent values: the winner takes the relevance) or maps by a
        constant built inside the function. Exact routing (reshapes, slices,
        broadcasts, gathers) is not listed: it moves each entry's relevance
        unchanged.
    output_relevance, input_relevance:
        Total relevance at the output and at the explained input.
    notes:
        Warnings about the treatment, e.g. layers whose weight is an array the
        function closes over (the jaxpr cannot tell a parameter from a constant).
    activations:
        ``(key, primitive, rule)`` of the elementwise functions (ReLU, GELU, the
        internals of a normaliser): treated by their rule, normally
        :class:`~jaxlrp.rules.Pass`.

    Notes
    -----
    Relevance that does not reach the input was absorbed on the way:
    :attr:`absorbed_by_layers` by the layers' biases, stabilisers and constant
    summands (:attr:`LayerRow.absorbed`), and :attr:`absorbed_elsewhere` by
    routing operations that pass part of it to constants, e.g. a class token or
    position embedding concatenated to the signal. On a vision transformer
    explained from pixels, most of the relevance can end there.
    """

    rows: tuple[LayerRow, ...]
    fallbacks: tuple[tuple[str, str, str], ...]
    output_relevance: float
    input_relevance: float
    notes: tuple[str, ...] = ()
    activations: tuple[tuple[str, str, str], ...] = ()

    def __repr__(self) -> str:  # a REPL or notebook shows the table once, as print() does
        return str(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython
        p.text(str(self))

    @property
    def absorbed_by_layers(self) -> float:
        """Sum of :attr:`LayerRow.absorbed` over the layers with relevance sums."""
        return float(sum(r.absorbed for r in self.rows if r.absorbed is not None))

    @property
    def absorbed_elsewhere(self) -> float:
        """Output minus input relevance not accounted for by the layers."""
        return self.output_relevance - self.input_relevance - self.absorbed_by_layers

    def _absorption_lines(self) -> list:
        total = self.output_relevance
        share = (lambda v: f" ({100 * v / total:.1f}% of the output)") if total else (lambda v: "")
        worst = sorted((r for r in self.rows if r.absorbed), key=lambda r: -abs(r.absorbed or 0.0))[:3]
        lines = [f"absorbed by layers: {_fmt(self.absorbed_by_layers)}{share(self.absorbed_by_layers)}"
                 + (" (most: " + ", ".join(f"{r.key} {_fmt(r.absorbed)}" for r in worst) + ")" if worst else "")]
        if abs(self.absorbed_elsewhere) > 1e-6 * max(abs(total), 1e-30):
            lines.append(f"absorbed elsewhere (routed to constants, e.g. a class token): "
                         f"{_fmt(self.absorbed_elsewhere)}{share(self.absorbed_elsewhere)}")
        return lines

    def __str__(self) -> str:
        head = ("layer", "kind", "primitive", "params", "in -> out shape", "rule", "R in", "R out")
        lines = []
        for r in self.rows:
            shapes = ", ".join(str(s) for s in r.input_shapes) + f" -> {r.output_shape}"
            lines.append((
                r.key, r.kind + ("+" + "+".join(r.folded) if r.folded else ""), r.primitive,
                ",".join(r.param_paths) or "-", shapes, r.rule,
                _fmt(r.relevance_in), _fmt(r.relevance_out),
            ))
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*map(str, line)) for line in lines]
        out.append(f"relevance: output {_fmt(self.output_relevance)}, input {_fmt(self.input_relevance)}")
        out += self._absorption_lines()
        out += [f"note: {n}" for n in self.notes]
        out += _activation_lines(self.activations)
        if self.fallbacks:
            out.append("handled by a fallback (no rule of their own; the plain VJP chooses among entries):")
            out += [f"  {k}: {p} ({t})" for k, p, t in self.fallbacks]
        return "\n".join(out)


def _activation_lines(activations: Sequence[tuple]) -> list:
    """One line per activation rule: how many elementwise functions it treats, and which."""
    by_rule: dict = {}
    for key, prim, rule in activations:
        by_rule.setdefault(rule, []).append(f"{key} ({prim})")
    lines = []
    for rule, where in by_rule.items():
        shown = ", ".join(where[:6]) + (f", and {len(where) - 6} more" if len(where) > 6 else "")
        lines.append(f"activations, rule {rule}: {len(where)} ({shown})")
    return lines


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def _described(t: Traced) -> tuple:
    """What a report says of the traced program apart from relevance: the rows as
    ``(layer index, row)`` with no relevance yet, the activations, the fallbacks and
    the notes."""
    rows = tuple(
        (layer.index, LayerRow(
            key=layer.key, kind=layer.kind, primitive=layer.primitive, param_paths=layer.param_paths,
            input_shapes=layer.input_shapes, output_shape=layer.output_shape, folded=layer.folded,
            rule=repr(t.rules[layer.index]), relevance_in=None, relevance_out=None))
        for layer in t.layers if layer.kind != "activation"
    )
    activations = tuple((l.key, l.primitive, repr(t.rules[l.index])) for l in t.layers if l.kind == "activation")
    notes = tuple(
        f"layer '{l.key}' multiplies by an array the function closes over: treated as a weighted "
        "layer; if it is a constant (a mask, an interpolation matrix), pass it as an argument or "
        "give the layer rules.Pass() in the composite"
        for l in t.layers if l.constant_weight
    )
    return rows, activations, tuple(_routed(t.analysis)), notes


def inspect(
    fn: Callable[..., jax.Array],
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    start: Optional[str] = None,
    example_axes: Optional[int] = None,
    verbose: bool = False,
) -> Callable[..., Report]:
    """Explain once and report, per layer, the rule and the relevance in and out.

    ``jaxlrp.inspect(fn, composite)(*args, target=..., output_relevance=...)`` returns
    a :class:`Report`. Its ``repr`` is the table, so a REPL or notebook shows it once
    (``print(report)`` in a script); ``verbose=True`` also prints it here. The
    per-layer sums show where relevance is absorbed (biases, stabilisers) or
    created; the activations are listed with their rule, and the fallbacks are the
    operations whose plain VJP chooses among entries (see :attr:`Report.fallbacks`).
    Runs as one compiled program, cached with the returned function; not for use
    under ``jit``.
    """
    if is_nnx_module(fn):
        from . import flax as _flax

        return _flax.transform(inspect, fn, composite, rule=rule, argnums=argnums, start=start,
                               example_axes=example_axes, verbose=verbose)
    comp = _composites.resolve(composite, rule)

    def numbers(*args: Any, target: Target, output_relevance: Optional[ArrayLike]) -> tuple:
        t = trace(fn, comp, argnums, args, start=start, example_axes=example_axes)
        out, rel, taps = run(t, target, output_relevance, list(top_level_nodes(t)))
        return (initial_relevance(out, target, output_relevance, t.example_ndim), rel, taps), _described(t)

    # one compiled program, cached with this function (not the interpreter's
    # operations dispatched one by one); the description of the layers comes with it
    compiled = CompiledFunction(numbers, has_aux=True)

    @functools.wraps(fn)
    def report(*args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None) -> Report:
        result = compiled(*args, target=target, output_relevance=output_relevance)
        if result is NOT_RUN:
            result = numbers(*args, target=target, output_relevance=output_relevance)
        (seed, rel, taps), (rows, activations, fallbacks, notes) = result
        rows = tuple(
            row if index not in taps else dataclasses.replace(
                row, relevance_in=sum(_total(r) for r in taps[index][0]), relevance_out=_total(taps[index][1]))
            for index, row in rows
        )
        rep = Report(rows, fallbacks, _total(seed), sum(_total(r) for r in rel), notes, activations)
        if verbose:
            print(rep)
        return rep

    return report


_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")


def collectives(compiled: Any) -> dict:
    """How many of each collective a compiled program runs, from its HLO text.

    ``compiled`` is ``jax.jit(f).lower(*args).compile()`` (or its ``as_text()``).
    Counts instructions (an asynchronous ``-start``/``-done`` pair is one), not
    executions: a collective inside a ``while`` loop (``lax.scan``) counts once.

    >>> f = jax.jit(lambda x: x.sum())
    >>> collectives(f.lower(jnp.ones(4)).compile())["all-reduce"]
    0
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    found = re.findall(r"\s(" + "|".join(_COLLECTIVES) + r")(?:-start)?\(", text)
    return {name: found.count(name) for name in _COLLECTIVES}


def _total(x: Any) -> float:
    """The sum of ``x`` in float64 (a bfloat16 sum keeps only ~3 digits)."""
    return float(np.sum(np.asarray(x, np.float64)))


def _routed(an) -> list:
    """The routed equations whose plain VJP is a choice, not an exact move (see
    :attr:`Report.fallbacks`), in the analysis and its bodies."""
    found = []
    for i in an.routed:
        e = an.program.eqns[i]
        if e.prim.name in P.EXACT_ROUTING:
            continue
        how = "a map by a constant: plain VJP" if e.prim.name in P.LINEAR else "plain VJP: the winner takes the relevance"
        found.append((e.name or "<top level>", e.prim.name, how))
    for subs in an.subs.values():
        for sub in subs:
            found += _routed(sub)
    return found


# ------------------------------------------------------------------ artifact checks


def absorption(report: Report) -> dict[str, float]:
    """Share of each layer's incoming relevance it absorbs: ``1 - R_in / R_out``.

    0 where a layer conserves; positive where biases or stabilisers absorb relevance
    (negative: created). Layers without relevance sums (inside ``scan``) are left out.
    """
    return {r.key: 1.0 - r.conservation for r in report.rows if r.conservation is not None}


def border_mass(relevance: ArrayLike, width: int = 1, spatial_axes: Sequence[int] = (1, 2)) -> np.ndarray:
    """Fraction of the absolute relevance within ``width`` pixels of the border.

    Parameters
    ----------
    relevance:
        ``(N, H, W, ...)`` (batched; channels are summed over).
    width:
        Border width in pixels, ``>= 1``.
    spatial_axes:
        The two image axes.

    Returns
    -------
    numpy.ndarray
        ``(N,)``; compare with the border's share of the pixels
        (``1 - (H - 2w)(W - 2w) / (H W)``): a clearly larger value is a padding
        artifact.
    """
    r = np.abs(np.asarray(relevance, dtype=np.float64))
    if r.ndim < 3:
        raise ValueError(f"border_mass needs batched images (N, H, W, ...), got shape {r.shape}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    ax = [a % r.ndim for a in spatial_axes]
    if len(ax) != 2 or 0 in ax:
        raise ValueError(f"spatial_axes must name two non-batch axes, got {spatial_axes}")
    h, w = r.shape[ax[0]], r.shape[ax[1]]
    if 2 * width >= min(h, w):
        raise ValueError(f"width {width} leaves no interior in a {h}x{w} image")
    inner = np.zeros((h, w), bool)
    inner[width:h - width, width:w - width] = True
    shape = [1] * r.ndim
    shape[ax[0]], shape[ax[1]] = h, w
    border = ~inner.reshape(shape)
    total = r.reshape(r.shape[0], -1).sum(1)
    edge = (r * border).reshape(r.shape[0], -1).sum(1)
    return np.divide(edge, total, out=np.zeros_like(total), where=total > 0)


def decay_profile(relevance: ArrayLike, axis: int, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Absolute relevance per position along ``axis`` and its exponential decay rate.

    Models fed an image sequentially (a recurrent network reading columns) show a
    relevance that fades with the distance from the last step fed -- an artifact of
    the model's memory, not of the data.

    Parameters
    ----------
    relevance:
        ``(N, ...)`` batched relevance.
    axis:
        The axis along which the input was fed (not 0).
    reverse:
        ``True`` if the input was fed from the last position to the first.

    Returns
    -------
    profile : numpy.ndarray
        ``(N, L)``: the share of each example's absolute relevance at each position,
        ordered from the last step fed to the first.
    rate : numpy.ndarray
        ``(N,)``: the decay rate ``k`` of a least-squares fit
        ``log profile[t] ~ c - k t`` (``k > 0``: relevance fades towards earlier steps;
        with a leak rate ``a`` per step, ``k`` is about ``-log(1 - a)``).
    """
    r = np.abs(np.asarray(relevance, dtype=np.float64))
    ax = axis % r.ndim
    if ax == 0:
        raise ValueError("axis 0 indexes examples; pass the axis the input was fed along")
    other = tuple(a for a in range(1, r.ndim) if a != ax)
    prof = r.sum(axis=other)  # (N, L)
    if not reverse:
        prof = prof[:, ::-1]  # the last step fed first
    total = prof.sum(1, keepdims=True)
    prof = np.divide(prof, total, out=np.zeros_like(prof), where=total > 0)
    t = np.arange(prof.shape[1], dtype=np.float64)
    logp = np.log(np.maximum(prof, 1e-300))
    tc = t - t.mean()
    slope = ((logp - logp.mean(1, keepdims=True)) * tc).sum(1) / (tc * tc).sum()
    return prof, -slope


def permute(x: ArrayLike, perm: ArrayLike, axis: int) -> np.ndarray:
    """Apply a fixed permutation ``perm`` to ``axis`` of every example."""
    return np.take(np.asarray(x), np.asarray(perm), axis=axis)


def unpermute(relevance: ArrayLike, perm: ArrayLike, axis: int) -> np.ndarray:
    """Map relevance computed on permuted inputs back to the original positions."""
    return np.take(np.asarray(relevance), np.argsort(np.asarray(perm)), axis=axis)


def permutation_test(
    fit_and_explain: Callable[[np.ndarray, Any], tuple[ArrayLike, Optional[float]]],
    x: ArrayLike,
    y: Any,
    *,
    axis: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The permutation test of Landt-Hayen et al. (2023) for where a model looks.

    Trains twice -- on ``x`` and on ``x`` with one fixed random permutation of
    ``axis`` applied to every example -- explains both, maps the second relevance
    back through the inverse permutation and compares the two maps. A model whose
    focus comes from the data gives similar maps; one whose relevance follows its
    own structure (the order in which it reads the input) does not.

    Parameters
    ----------
    fit_and_explain:
        ``fit_and_explain(x, y) -> (relevance, accuracy)``: trains a fresh model on
        ``(x, y)`` and returns the relevance of ``x`` (same shape) and a held-out
        accuracy (or ``None``).
    x, y:
        Inputs ``(N, ...)`` and labels.
    axis:
        The axis to permute (not 0).
    seed:
        Seed of the permutation.

    Returns
    -------
    dict
        ``correlation`` (per example, Pearson correlation of the two maps'
        absolute values), ``accuracy`` and ``accuracy_permuted``, ``perm``,
        ``relevance`` and ``relevance_permuted`` (mapped back).
    """
    x = np.asarray(x)
    ax = axis % x.ndim
    if ax == 0:
        raise ValueError("axis 0 indexes examples; pass a feature axis")
    perm = np.random.default_rng(seed).permutation(x.shape[ax])
    r0, acc0 = fit_and_explain(x, y)
    r1, acc1 = fit_and_explain(permute(x, perm, ax), y)
    r1 = unpermute(r1, perm, ax)
    a = np.abs(np.asarray(r0, np.float64)).reshape(len(x), -1)
    b = np.abs(np.asarray(r1, np.float64)).reshape(len(x), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    corr = np.divide((a * b).sum(1), den, out=np.zeros(len(x)), where=den > 0)
    return {"correlation": corr, "accuracy": acc0, "accuracy_permuted": acc1, "perm": perm,
            "relevance": np.asarray(r0), "relevance_permuted": r1}


def cap_and_scale(x: ArrayLike, cap: float) -> jax.Array:
    """Clip inputs to ``[-cap, cap]`` and scale them to ``[-1, 1]``.

    Landt-Hayen et al. found outliers (un-capped anomalies) dominate relevance maps,
    especially of echo state networks; capping keeps the maps on the signal.
    """
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    return jnp.clip(jnp.asarray(x), -cap, cap) / cap


# ------------------------------------------------------------- invalid grid points


def valid_points(x: ArrayLike, invalid: Optional[ArrayLike] = None) -> np.ndarray:
    """The grid points that are valid in every example.

    Parameters
    ----------
    x:
        ``(N, ...)`` inputs; a point is invalid where any example is NaN or
        infinite (land in a sea-surface field stored as NaN).
    invalid:
        Optional boolean mask of shape ``x.shape[1:]`` of further invalid points
        (a land mask).

    Returns
    -------
    numpy.ndarray
        Boolean, shape ``x.shape[1:]``: True where the point is valid.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"valid_points needs batched inputs (N, ...), got shape {x.shape}")
    valid = np.all(np.isfinite(x), axis=0)
    if invalid is not None:
        invalid = np.asarray(invalid, bool)
        if invalid.shape != valid.shape:
            raise ValueError(f"invalid must have shape {valid.shape}, got {invalid.shape}")
        valid &= ~invalid
    return valid


def _check_valid(values, valid) -> np.ndarray:
    valid = np.asarray(valid, bool)
    if np.shape(values)[1:] != valid.shape:
        raise ValueError(f"valid has shape {valid.shape}, but the values have per-example shape {np.shape(values)[1:]}")
    return valid


def mask_invalid(x: ArrayLike, valid: ArrayLike, fill: float = 0.0) -> jax.Array:
    """Inputs with the invalid points set to ``fill`` (default 0), for models that
    read the whole grid.

    With a rule proportional to the input (LRP-0, epsilon, z+, gamma) a point at 0
    gets no relevance at the first layer; rules that are not (flat, w^2, z^B) and
    biases can still put relevance there, so mask the relevance too
    (:func:`mask_relevance`). Landt-Hayen et al. prefer removing the points
    (:func:`select_valid`) over zero-filling them.
    """
    valid = _check_valid(x, valid)
    return jnp.where(jnp.asarray(valid), jnp.asarray(x), jnp.asarray(fill, jnp.asarray(x).dtype))


def mask_relevance(relevance: ArrayLike, valid: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Relevance with the invalid points set to 0, and the share of each example's
    absolute relevance that was on them (should be 0: else the map shows noise on
    invalid points, e.g. "overfitting on invalid noise" over seasonal sea ice).

    Returns
    -------
    (masked, leaked):
        ``masked`` of the shape of ``relevance``; ``leaked`` of shape ``(N,)``.
    """
    r = np.asarray(relevance, np.float64)
    valid = _check_valid(r, valid)
    a = np.abs(np.where(np.isfinite(r), r, 0.0)).reshape(len(r), -1)
    total = a.sum(1)
    off = (a * ~valid.reshape(1, -1)).sum(1)
    leaked = np.divide(off, total, out=np.zeros_like(total), where=total > 0)
    masked = np.where(valid, np.asarray(relevance), 0)
    return masked, leaked


def select_valid(x: ArrayLike, valid: ArrayLike) -> np.ndarray:
    """The valid points only: ``(N, ...)`` -> ``(N, n_valid)`` (the authors'
    "valid grid points only" input to dense models)."""
    x = np.asarray(x)
    valid = _check_valid(x, valid)
    return x.reshape(len(x), -1)[:, valid.reshape(-1)]


def scatter_valid(values: ArrayLike, valid: ArrayLike, fill: float = np.nan) -> np.ndarray:
    """Put ``(N, n_valid)`` values (relevance of :func:`select_valid` inputs) back on
    the grid ``(N, *valid.shape)``, ``fill`` at the invalid points (NaN by default,
    as the data had; pass 0 to sum or plot)."""
    v = np.asarray(values)
    valid = np.asarray(valid, bool)
    if v.ndim != 2 or v.shape[1] != int(valid.sum()):
        raise ValueError(f"values must have shape (N, {int(valid.sum())}), got {v.shape}")
    dtype = np.result_type(v.dtype, np.asarray(fill).dtype)
    out = np.full((len(v), valid.size), fill, dtype)
    out[:, valid.reshape(-1)] = v
    return out.reshape((len(v),) + valid.shape)


# ------------------------------------------------------------------------ stripes


def stripe_ratio(relevance: ArrayLike, axis: int, spatial_axes: Sequence[int] = (1, 2)) -> np.ndarray:
    r"""Stripes across the lines an image was fed by: how much more the absolute
    relevance changes from one line to the next than along a line.

    .. math:: \text{ratio} = \frac{\operatorname{mean} |\,|R|_{l+1,m} - |R|_{l,m}|}
              {\operatorname{mean} |\,|R|_{l,m+1} - |R|_{l,m}|}

    with :math:`l` the index along ``axis`` (the steps fed: rows for row-wise
    feeding) and :math:`m` along the other spatial axis; channels are summed
    first. About 1 for maps without a preferred direction; clearly above 1 for
    stripes along the lines (Landt-Hayen et al. found them when an echo state
    network reads a field row by row, and recommend column-wise feeding).

    Parameters
    ----------
    relevance:
        ``(N, H, W, ...)`` batched relevance.
    axis:
        The spatial axis indexing the lines fed (one of ``spatial_axes``).
    spatial_axes:
        The two image axes.

    Returns
    -------
    numpy.ndarray
        ``(N,)``; 1 where both changes are 0, ``inf`` where only the change along
        lines is 0.
    """
    r = np.abs(np.asarray(relevance, np.float64))
    if r.ndim < 3:
        raise ValueError(f"stripe_ratio needs batched images (N, H, W, ...), got shape {r.shape}")
    ax = [a % r.ndim for a in spatial_axes]
    if len(ax) != 2 or 0 in ax or ax[0] == ax[1]:
        raise ValueError(f"spatial_axes must name two distinct non-batch axes, got {spatial_axes}")
    lines = axis % r.ndim
    if lines not in ax:
        raise ValueError(f"axis {axis} is not one of spatial_axes {tuple(spatial_axes)}")
    other = ax[1] if lines == ax[0] else ax[0]
    r = np.moveaxis(r, (lines, other), (1, 2))
    r = r.reshape(r.shape[:3] + (-1,)).sum(-1)  # (N, L, M): channels summed
    across = np.abs(np.diff(r, axis=1)).reshape(len(r), -1).mean(1)
    along = np.abs(np.diff(r, axis=2)).reshape(len(r), -1).mean(1)
    both_zero = (across == 0) & (along == 0)
    ratio = np.divide(across, along, out=np.full_like(across, np.inf), where=along > 0)
    return np.where(both_zero, 1.0, ratio)
