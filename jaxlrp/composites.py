"""Composites: which rule each layer gets.

A :class:`Composite` is an ordered list of ``(matcher, rule)`` pairs; the first pair
whose matcher accepts a layer decides its rule. After the user's pairs come the
defaults shared by every composite (Zennit's "layer map base"):

==============  ==========================================  ==================
kind            what it is in the jaxpr                     default rule
==============  ==========================================  ==================
``dense``       ``dot_general`` with a weight               ``Epsilon()``
``conv``        ``conv_general_dilated`` with a weight      ``Epsilon()``
``sum``         ``reduce_sum`` / ``cumsum`` / the add of     ``Norm()``
                two input-dependent tensors (residuals)
                or of a constant summand (a position
                embedding, LayerNorm's beta, a bias after
                a sum of layers: it absorbs its share)
``avgpool``     ``reduce_window_sum`` (average/sum pool)    ``Norm()``
``maxpool``     ``reduce_window_max`` (max pooling)          ``WinnerTakesAll()``
``product``     product of two input-dependent tensors      ``Uniform()``
``glu``         product of an activated factor (silu,       ``Uniform()``
                GELU, ReLU of a layer) and a factor that    (``CPLRP``: the
                is not activated: SwiGLU, GeGLU, ReGLU      linear factor
                                                            takes all)
``gate``        product of a signal and a gate, a factor    ``SignalTakesAll()``
                bounded in ``[0, 1]`` by what it computes
                (sigmoid in any spelling, hard_sigmoid:
                LSTM/GRU cells, GLU, squeeze-excitation)
``attention``   values times softmax probabilities          ``Uniform()``
``normalize``   a signal times or divided by a normaliser   ``SignalTakesAll()``
                (LayerNorm, RMSNorm: normaliser constant)
``softmax``     ``exp(x - c) / sum(exp(x - c))``             ``Softmax()``
``divide``      any other division by an input-dependent    none: choose
                value (LocalResponseNorm, ``x / sum(x)``)   ``SignalTakesAll()``
                                                            or ``Gradient()``
``activation``  elementwise functions of one tensor         ``Pass()``
==============  ==========================================  ==================

A ``divide`` layer has no default because no rule is right for every normaliser:
``("divide", rules.SignalTakesAll())`` treats the denominator as a constant (the
relevance goes to the numerator), ``("divide", rules.Gradient())`` takes the plain
gradient; without either, tracing raises
:class:`~jaxlrp.UnsupportedOperationError` naming the layer.

Matchers
--------
A matcher is a callable ``Layer -> bool`` or a string:

* a layer kind above, or ``"linear"`` (dense or conv);
* ``"first"``: dense/conv layers fed directly by the explained input (through
  reshapes, activations and other parameter-free operations only);
* ``"last"``: dense/conv layers whose output reaches the function's output without
  passing through another dense/conv layer;
* otherwise a glob (:mod:`fnmatch`) matched against the layer's name (the Flax
  module path from the name stack, e.g. ``"*/conv1"``) and against the path of its
  weight in the parameter pytree (e.g. ``"params/Dense_2/*"``).

A plain lowercase word close to a kind (``"dence"``, ``"avg_pool"``) is taken for a
typo and raises ``ValueError`` at construction (see :func:`as_matcher`); any other
bare word (no ``*``, ``?``, ``[`` or ``/``, e.g. ``"convolution"``) that matches no
layer of the traced function raises ``ValueError`` naming the closest kind when the
function is traced. A name or parameter pattern that matches no layer of the traced function warns
(:class:`UnmatchedPatternWarning`, naming the closest layer names), or raises
:class:`UnmatchedPatternError` with ``Composite(..., strict=True)``; kind matchers
(such as a preset's ``"conv"`` entry on an MLP) are never reported.

:func:`kind`, :func:`name`, :func:`param`, :func:`first`, :func:`last`,
:func:`all_of`, :func:`any_of` and :func:`not_` build matchers explicitly.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import os
import re
import sys
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from . import rules as _rules
from ._core.analysis import Layer
from ._core.kinds import KINDS, OPT_IN_KINDS
from ._core.errors import UnsupportedOperationError
from .rules import Rule

__all__ = [
    "Layer",
    "Composite",
    "Matcher",
    "kind",
    "name",
    "param",
    "first",
    "last",
    "all_of",
    "any_of",
    "not_",
    "check_matches",
    "UnmatchedPatternWarning",
    "UnmatchedPatternError",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "EpsilonGammaBox",
    "ZeroEpsilonGammaBox",
    "Overview",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "AttnLRP",
    "CPLRP",
    "ViTGamma",
    "ExcitationBackprop",
    "GuidedBackprop",
    "DeconvNet",
    "BetaSmooth",
    "MambaLRP",
    "relu",
    "get",
    "names",
    "as_matcher",
    "from_rule",
    "resolve",
    "KINDS",
    "MATCHER_WORDS",
]

Matcher = Union[str, Callable[[Layer], bool]]

#: Strings that are matchers by themselves (not globs).
MATCHER_WORDS = KINDS + ("linear", "first", "last")
_PLAIN_WORD = re.compile(r"[a-z_]+")
_GLOB_CHARS = re.compile(r"[*?\[/]")


class UnmatchedPatternWarning(UserWarning):
    """A user's name or parameter pattern (a composite entry, a ``layers=``
    pattern, a :func:`jaxlrp.variants.pruned` proportion key) matches no layer of
    the traced function, so it has no effect. The message lists the closest layer
    names; ``Composite(..., strict=True)`` makes it an :class:`UnmatchedPatternError`."""


class UnmatchedPatternError(ValueError):
    """Raised instead of :class:`UnmatchedPatternWarning` by a composite built with
    ``strict=True``."""


@dataclasses.dataclass(frozen=True)
class _Kinds:
    kinds: frozenset
    label: str

    def __call__(self, layer: Layer) -> bool:
        return layer.kind in self.kinds

    def __repr__(self) -> str:
        return f"kind({self.label})"


@dataclasses.dataclass(frozen=True)
class _Glob:
    """A glob on the layer name (``on="name"``), the parameter paths (``"param"``)
    or either (``"any"``)."""

    pattern: str
    on: str = "any"

    def __call__(self, layer: Layer) -> bool:
        if self.on != "param" and fnmatch.fnmatchcase(layer.name, self.pattern):
            return True
        return self.on != "name" and any(fnmatch.fnmatchcase(p, self.pattern) for p in layer.param_paths)

    def __repr__(self) -> str:
        return repr(self.pattern) if self.on == "any" else f"{self.on}({self.pattern!r})"


@dataclasses.dataclass(frozen=True)
class _Combined:
    op: str  # "all", "any" or "not"
    parts: tuple

    def __call__(self, layer: Layer) -> bool:
        hits = (f(layer) for f in self.parts)
        return all(hits) if self.op == "all" else any(hits) if self.op == "any" else not next(hits)

    def __repr__(self) -> str:
        name = {"all": "all_of", "any": "any_of", "not": "not_"}[self.op]
        return f"{name}({', '.join(map(repr, self.parts))})"


def _unknown_kind(k: str, close: Sequence[str]) -> ValueError:
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ValueError(
        f"unknown layer kind {k!r}; {hint}known kinds: {', '.join(KINDS + ('linear',))}, and 'first', "
        f"'last'. To match a layer by name, use composites.name({k!r})"
    )


def kind(*kinds: str) -> Callable[[Layer], bool]:
    """Match layers of the given kinds (``"linear"`` means dense or conv)."""
    wanted = set()
    for k in kinds:
        if k == "linear":
            wanted |= {"dense", "conv"}
        elif k in KINDS:
            wanted.add(k)
        else:
            raise _unknown_kind(k, difflib.get_close_matches(str(k), KINDS + ("linear",), n=1, cutoff=0.6))
    return _Kinds(frozenset(wanted), ", ".join(map(repr, kinds)))


def name(pattern: str) -> Callable[[Layer], bool]:
    """Match the layer name (name stack) against a glob, e.g. ``"*/conv1"``."""
    return _Glob(pattern, "name")


def param(pattern: str) -> Callable[[Layer], bool]:
    """Match the parameter path of the weight against a glob, e.g. ``"params/Dense_2/*"``."""
    return _Glob(pattern, "param")


def first(layer: Layer) -> bool:
    """Match dense/conv layers fed directly by the explained input."""
    return layer.first


def last(layer: Layer) -> bool:
    """Match dense/conv layers whose output reaches the output without another layer."""
    return layer.last


def relu(layer: Layer) -> bool:
    """Match ReLU activations: ``max(z, 0)`` alone (``Layer.function == "relu"``), and
    also ReLUs that share an elementwise region with other operations
    (``"rectified"``), so that the ReLU rules refuse those rather than leave them
    to another rule."""
    return layer.kind == "activation" and layer.function in ("relu", "rectified")


def all_of(*matchers: Matcher) -> Callable[[Layer], bool]:
    """Match layers that every matcher accepts."""
    return _Combined("all", tuple(as_matcher(m) for m in matchers))


def any_of(*matchers: Matcher) -> Callable[[Layer], bool]:
    """Match layers that any matcher accepts."""
    return _Combined("any", tuple(as_matcher(m) for m in matchers))


def not_(matcher: Matcher) -> Callable[[Layer], bool]:
    """Match layers that ``matcher`` rejects."""
    return _Combined("not", (as_matcher(matcher),))


def as_matcher(m: Matcher) -> Callable[[Layer], bool]:
    """Turn a string or callable into a ``Layer -> bool`` predicate.

    A string is a kind, ``"linear"``, ``"first"`` or ``"last"``, or else a glob on
    the layer name and the parameter paths. A plain lowercase word (letters and
    ``_`` only: no digit, ``/`` or glob character) close to one of those words
    (:func:`difflib.get_close_matches`, cutoff 0.75, e.g. ``"dence"``,
    ``"avg_pool"``, ``"activations"``) is taken for a typo and raises
    ``ValueError`` naming the word it resembles; match a layer that really has
    such a name with :func:`name` or :func:`param`.
    """
    if callable(m):
        return m
    if not isinstance(m, str):
        raise TypeError(f"a matcher is a string or a callable Layer -> bool, got {type(m).__name__}")
    if m in KINDS or m == "linear":
        return kind(m)
    if m == "first":
        return first
    if m == "last":
        return last
    if _PLAIN_WORD.fullmatch(m):
        close = difflib.get_close_matches(m, MATCHER_WORDS, n=1, cutoff=0.75)
        if close:
            raise _unknown_kind(m, close)
    return _Glob(m)


def _globs(f: Any) -> list:
    """The name/parameter globs inside a matcher (through all_of, any_of, not_)."""
    if isinstance(f, _Glob):
        return [f]
    hook = getattr(f, "jaxlrp_globs", None)  # matchers that wrap globs (jaxlrp.flax's nnx matchers)
    if callable(hook):
        return list(hook())
    if isinstance(f, _Combined):
        return [g for part in f.parts for g in _globs(part)]
    return []


def check_matches(matchers: Sequence[Matcher], layers: Sequence[Layer], *, strict: bool = False,
                  where: str = "composite entry") -> None:
    """Warn about each name/parameter glob of ``matchers`` that matches no layer.

    Kind matchers, ``first``/``last`` and opaque callables are not checked (a
    preset's ``"conv"`` entry legitimately matches nothing on an MLP); globs are,
    also inside :func:`all_of`, :func:`any_of` and :func:`not_`.

    Raises
    ------
    UnmatchedPatternError
        Instead of the warning, when ``strict``.
    ValueError
        For a bare word (no ``*``, ``?``, ``[`` or ``/``) that is no kind and matches
        no layer, in any mode: a misspelt kind (``"convolution"``), named with the
        closest kind.

    Warns
    -----
    UnmatchedPatternWarning
        Naming the pattern and the closest layer names and parameter paths.
    """
    for m in matchers:
        for g in _globs(as_matcher(m)):
            if any(g(layer) for layer in layers):
                continue
            if g.on == "any" and not _GLOB_CHARS.search(g.pattern):
                raise _not_a_kind(g.pattern, where)
            msg = f"{where} {g!r} matches no layer of the traced function; {_closest(g.pattern, layers)}"
            if strict:
                raise UnmatchedPatternError(msg)
            warnings.warn(msg + " (Composite(..., strict=True) makes this an error)", UnmatchedPatternWarning,
                          stacklevel=3)


def _not_a_kind(word: str, where: str) -> ValueError:
    """A bare word (no glob character, no ``/``) that is no kind and names no layer:
    most likely a kind misspelt (``"convolution"``), so an error, not a warning."""
    low = word.lower()
    close = [w for w in MATCHER_WORDS if low.startswith(w) or w.startswith(low)][:1]
    close = close or difflib.get_close_matches(low, MATCHER_WORDS, n=1, cutoff=0.3)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ValueError(
        f"{where} {word!r} is neither a layer kind nor a glob (no '*', '?', '[' or '/') and matches no layer; "
        f"{hint}known kinds: {', '.join(KINDS + ('linear',))}, and 'first', 'last'. To match a layer by its "
        f"name, give its full name (e.g. 'Model/{word}') or a glob (e.g. '*/{word}')"
    )


def _closest(pattern: str, layers: Sequence[Layer]) -> str:
    names = list(dict.fromkeys([l.name for l in layers if l.name] + [p for l in layers for p in l.param_paths]))
    if not names:
        return "the function has no named layers (it pushes no name stack and has no parameter paths)"
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    close = close or difflib.get_close_matches(pattern.replace("*", ""), names, n=3, cutoff=0.4)
    shown = close or names[:5]
    return f"{'closest' if close else 'some'} layer names: {', '.join(map(repr, shown))}"


_BASE: tuple = (
    ("activation", _rules.Pass()),
    ("sum", _rules.Norm()),
    ("avgpool", _rules.Norm()),
    ("maxpool", _rules.WinnerTakesAll()),
    ("product", _rules.Uniform()),
    ("glu", _rules.Uniform()),
    ("gate", _rules.SignalTakesAll()),
    ("attention", _rules.Uniform()),
    ("normalize", _rules.SignalTakesAll()),
    ("softmax", _rules.Softmax()),
    ("linear", _rules.Epsilon()),
)


def _aggregates(stabilizer: float) -> list:
    """Norm rules for sums and average pools with a preset's stabiliser (as Zennit's
    presets pass their ``stabilizer`` to ``Norm``)."""
    return [("sum", _rules.Norm(stabilizer)), ("avgpool", _rules.Norm(stabilizer))]


class Composite:
    """An ordered mapping from layers to rules; the first match wins.

    Parameters
    ----------
    rules:
        ``(matcher, rule)`` pairs, tried in order before the defaults (see the module
        docstring).
    strict:
        What to do when a name or parameter pattern of ``rules`` (or of ``lrp``'s
        ``layers=``) matches no layer of the traced function: ``False`` (default)
        warns with :class:`UnmatchedPatternWarning`, ``True`` raises
        :class:`UnmatchedPatternError`. Kind matchers are never reported.

    Examples
    --------
    >>> from jaxlrp import composites, rules
    >>> c = composites.Composite([
    ...     ("first", rules.ZBox(-1.0, 1.0)),
    ...     ("*/conv1", rules.Gamma(0.25)),
    ...     ("conv", rules.ZPlus()),
    ...     ("dense", rules.Epsilon(0.1)),
    ... ])
    """

    def __init__(self, rules: Sequence[tuple] = (), *, strict: bool = False):
        self._strict = bool(strict)
        pairs = []
        for pair in list(rules) + list(_BASE):
            try:
                m, r = pair
            except (TypeError, ValueError):
                raise TypeError(f"composite entries are (matcher, rule) pairs, got {pair!r}") from None
            if not isinstance(r, Rule):
                raise TypeError(f"expected a jaxlrp rule for matcher {m!r}, got {r!r}")
            pairs.append((m, as_matcher(m), r))
        self._pairs = tuple(pairs)

    @property
    def strict(self) -> bool:
        """Whether an unmatched name/parameter pattern is an error (else a warning)."""
        return self._strict

    @property
    def rules(self) -> tuple:
        """The ``(matcher, rule)`` pairs, defaults included."""
        return tuple((m, r) for m, _, r in self._pairs)

    def rule_for(self, layer: Layer) -> Rule:
        """The rule of ``layer``: the first pair whose matcher accepts the layer and
        whose rule applies to the layer's kind."""
        for _, f, r in self._pairs:
            if layer.kind in r.kinds and f(layer):
                return r
        if layer.kind in OPT_IN_KINDS:
            raise UnsupportedOperationError(
                layer.primitive, layer.name, "division by an input-dependent value that is neither a "
                "softmax nor a normalisation by a square root",
                f"choose a treatment in the composite, e.g. Composite([({layer.name or 'divide'!r}, "
                "rules.SignalTakesAll())]) to treat the denominator as a constant (or wrap it in "
                "jax.lax.stop_gradient), or rules.Gradient() for the plain gradient; or explain the "
                "logits rather than probabilities",
            )
        raise AssertionError(f"no default rule for kind {layer.kind!r}")  # _BASE covers KINDS

    def chosen(self, layer: Layer) -> bool:
        """Whether one of the user's pairs (not the shared defaults) gives ``layer``
        its rule: a matcher that accepts it with a rule for its kind."""
        return any(layer.kind in r.kinds and f(layer) for _, f, r in self._pairs[: len(self._pairs) - len(_BASE)])

    def assign(self, layers: Sequence[Layer]) -> tuple:
        """The rule of each layer (see :meth:`rule_for`).

        Raises ``ValueError`` when one of the user's pairs matches some layers but
        its rule applies to none of them (e.g. ``("*/conv1", rules.Norm())`` on a
        conv layer): such a pair would otherwise be ignored silently. A name or
        parameter pattern that matches no layer at all warns
        (:class:`UnmatchedPatternWarning`, see :func:`check_matches`) or, with
        ``strict=True``, raises :class:`UnmatchedPatternError`.
        """
        assigned = tuple(self.rule_for(layer) for layer in layers)
        for layer, r in zip(layers, assigned):
            problem = r.check(layer)
            if problem:
                raise ValueError(f"rule {r!r} cannot be applied to layer '{layer.key or layer.name}': {problem}")
        user = self._pairs[: len(self._pairs) - len(_BASE)]
        check_matches([f for _, f, _ in user], layers, strict=self._strict)
        for m, f, r in user:
            hits = [layer for layer in layers if f(layer)]
            if hits and not any(layer.kind in r.kinds for layer in hits):
                names = ", ".join(f"'{l.key}' ({l.kind})" for l in hits[:5])
                raise ValueError(
                    f"matcher {m!r} selects {names}, but rule {r!r} applies only to "
                    f"kinds {', '.join(sorted(r.kinds))}"
                )
        return assigned

    def __repr__(self):
        inner = ", ".join(f"({m!r}, {r!r})" for m, _, r in self._pairs[: len(self._pairs) - len(_BASE)])
        return f"{type(self).__name__}([{inner}])"


# ---------------------------------------------------------------------------- presets


class EpsilonPlus(Composite):
    """Conv layers :class:`~jaxlrp.rules.ZPlus`, dense layers :class:`~jaxlrp.rules.Epsilon`
    (Zennit's ``EpsilonPlus``)."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, rules: Sequence[tuple] = (),
                 strict: bool = False):
        super().__init__(
            list(rules)
            + [("conv", _rules.ZPlus(stabilizer)), ("dense", _rules.Epsilon(epsilon))]
            + _aggregates(stabilizer),
            strict=strict,
        )


class EpsilonPlusFlat(Composite):
    """As :class:`EpsilonPlus`, with :class:`~jaxlrp.rules.Flat` on the first layer
    (Zennit's ``EpsilonPlusFlat``)."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, rules: Sequence[tuple] = (),
                 strict: bool = False):
        super().__init__(
            list(rules)
            + [
                ("first", _rules.Flat(stabilizer)),
                ("conv", _rules.ZPlus(stabilizer)),
                ("dense", _rules.Epsilon(epsilon)),
            ]
            + _aggregates(stabilizer),
            strict=strict,
        )


def _require_bounds(cls: str, preset: str, low: Any, high: Any) -> None:
    """Refuse a z^B composite built without its input bounds (never guess them)."""
    missing = [n for n, v in (("low", low), ("high", high)) if v is None]
    if missing:
        raise TypeError(
            f"{cls} needs the bounds of the input for the ZBox rule on the first layer; {' and '.join(missing)} "
            f"missing. Pass the range the first layer sees, e.g. {cls}(low=0.0, high=1.0) for pixels in [0, 1], "
            f"{cls}(low=0.0, high=255.0) for 0-255 pixels, or per-channel arrays (0 - mean) / std and "
            f"(1 - mean) / std after normalisation (by name: composites.get({preset!r}, low=..., high=...))"
        )


class EpsilonGammaBox(Composite):
    """:class:`~jaxlrp.rules.ZBox` on the first layer, :class:`~jaxlrp.rules.Gamma` on conv
    layers, :class:`~jaxlrp.rules.Epsilon` on dense layers (Zennit's ``EpsilonGammaBox``).

    Two tiers above the pixels (gamma on every conv layer, a small fixed epsilon on
    every dense layer). The three tiers that Montavon et al. (2019) recommend are
    :class:`ZeroEpsilonGammaBox`.

    Parameters
    ----------
    low, high:
        Bounds of the input (in the space the first layer sees), scalars or arrays
        broadcastable against it. Required, as in Zennit: z^B with other bounds is
        a different rule, so there is no default (``low=0.0, high=1.0`` for pixels
        in [0, 1]; ``(0 - mean) / std`` and ``(1 - mean) / std`` per channel after
        normalisation). Omitting them raises ``TypeError`` naming the fix.
    """

    def __init__(
        self,
        low: Any = None,
        high: Any = None,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        rules: Sequence[tuple] = (),
        strict: bool = False,
    ):
        _require_bounds(type(self).__name__, "epsilon_gamma_box", low, high)
        super().__init__(
            list(rules)
            + [
                ("first", _rules.ZBox(low, high, stabilizer)),
                ("conv", _rules.Gamma(gamma, stabilizer)),
                ("dense", _rules.Epsilon(epsilon)),
            ]
            + _aggregates(stabilizer),
            strict=strict,
        )


class ZeroEpsilonGammaBox(Composite):
    r"""LRP-0 on the upper layers, LRP-:math:`\epsilon` in the middle, :math:`\gamma`
    on the lower layers and :math:`z^\mathcal{B}` on the pixels: the composite that
    Montavon, Binder, Lapuschkin, Samek & Müller recommend in "Layer-Wise Relevance
    Propagation: An Overview" (2019, §10.3, and the authors' tutorial code for
    VGG-16): three tiers above the pixels. It is named after its rules from the
    output down, as Zennit names :class:`EpsilonGammaBox`; it was called
    ``Overview`` (``"overview"``) before.

    ==============================  ====================================================
    layers                          rule
    ==============================  ====================================================
    first (pixels)                  :class:`~jaxlrp.rules.ZBox` ``(low, high)``
    upper (``upper``, dense)        LRP-0 (:class:`~jaxlrp.rules.Epsilon` ``(stabilizer)``)
    middle (the other linear)       :class:`~jaxlrp.rules.EpsilonStd` ``(factor)``
    lower (``lower``)               :class:`~jaxlrp.rules.Gamma` ``(gamma)``
    max pooling                     ``maxpool="proportional"``: :class:`~jaxlrp.rules.MaxPoolProportional`;
                                    ``"winner"``: :class:`~jaxlrp.rules.WinnerTakesAll`
    ==============================  ====================================================

    Unlike Zennit's two-tier :class:`EpsilonGammaBox` (gamma on all convs, a small
    epsilon on dense layers), the upper layers get LRP-0 (few, entangled features:
    faithful), the middle ones an epsilon of ``factor`` times the spread of their
    pre-activations (removes noise and contradictions) and only the lower ones gamma
    (stable, positive). Default split: the lower half of the non-upper linear layers
    in program order (rounded up, the first layer included), which for VGG-16 is the
    tutorial's split (gamma on blocks 1-3, epsilon on blocks 4-5); max pooling
    redistributes in proportion to the activations, as in the tutorial.

    Parameters
    ----------
    low, high:
        Bounds of the input for z^B (in the space the first layer sees). Required,
        as for :class:`EpsilonGammaBox`.
    gamma:
        Of the lower tier (0.25 in the tutorial for VGG-16).
    factor:
        Of :class:`~jaxlrp.rules.EpsilonStd` in the middle tier (0.25).
    lower:
        Either a fraction in ``[0, 1]`` of the linear layers not matched by
        ``upper`` that form the lower tier (the first ``ceil(lower * n)`` of them),
        or a matcher selecting the lower tier.
    upper:
        Matcher of the upper tier (default ``"dense"``).
    maxpool:
        ``"proportional"`` (default) or ``"winner"``.
    stabilizer:
        Of every rule (the tutorial's ``1e-9``).
    rules:
        ``(matcher, rule)`` pairs tried first.
    """

    def __init__(self, low: Any = None, high: Any = None, gamma: float = 0.25, factor: float = 0.25,
                 lower: Union[float, Matcher] = 0.5, upper: Matcher = "dense", maxpool: str = "proportional",
                 stabilizer: float = 1e-9, rules: Sequence[tuple] = (), strict: bool = False):
        _require_bounds(type(self).__name__, "zero_epsilon_gamma_box", low, high)
        if maxpool not in ("proportional", "winner"):
            raise ValueError(f"maxpool must be 'proportional' or 'winner', got {maxpool!r}")
        # lower as a fraction (a number), or None for a matcher
        fraction = float(lower) if isinstance(lower, (int, float)) and not isinstance(lower, bool) else None
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"lower must be a fraction in [0, 1] or a matcher, got {lower!r}")
        pool = _rules.MaxPoolProportional(stabilizer) if maxpool == "proportional" else _rules.WinnerTakesAll()
        self._head = list(rules) + [("first", _rules.ZBox(low, high, stabilizer)),
                                    (upper, _rules.Epsilon(stabilizer))]
        self._gamma = _rules.Gamma(gamma, stabilizer)
        self._tail = [("linear", _rules.EpsilonStd(factor, stabilizer)), ("maxpool", pool)] + _aggregates(stabilizer)
        self._upper, self._lower = as_matcher(upper), (lower if fraction is None else fraction)
        super().__init__(self._head + ([] if fraction is not None else [(lower, self._gamma)]) + self._tail, strict=strict)

    def _resolved(self, layers: Sequence[Layer]) -> Composite:
        """The composite with a fractional ``lower`` turned into the layer indices."""
        if not isinstance(self._lower, float):
            return self
        tiers = [l for l in layers if l.kind in _rules.WEIGHTED_KINDS and not self._upper(l)]
        k = math.ceil(self._lower * len(tiers) - 1e-9)
        chosen = frozenset(l.index for l in tiers[:k])
        return Composite(self._head + [(lambda l: l.index in chosen, self._gamma)] + self._tail)

    def rule_for(self, layer: Layer) -> Rule:
        if isinstance(self._lower, float):
            raise ValueError(f"{type(self).__name__} with a fractional `lower` assigns rules from the whole list "
                             "of layers: call assign(layers), or pass a matcher as `lower`")
        return super().rule_for(layer)

    def assign(self, layers: Sequence[Layer]) -> tuple:
        comp = self._resolved(layers)
        return super().assign(layers) if comp is self else comp.assign(layers)


class Overview(ZeroEpsilonGammaBox):
    """Deprecated name of :class:`ZeroEpsilonGammaBox` (it named a paper, not its
    rules): the same composite, with a :class:`DeprecationWarning` on construction.
    It will be removed in the next release."""

    def __init__(self, *args: Any, **kwargs: Any):
        warnings.warn(_renamed("composites.Overview", "composites.ZeroEpsilonGammaBox"), DeprecationWarning,
                      stacklevel=2)
        super().__init__(*args, **kwargs)


def _renamed(old: str, new: str) -> str:
    return f"{old} is deprecated: it was renamed {new}; the old name will be removed in the next release"


def _caller_outside_jaxlrp() -> int:
    """The ``stacklevel`` for a warning raised by the function calling this one that
    names the first frame outside the jaxlrp package (``lrp(fn, "overview")`` reaches
    :func:`get` through :func:`resolve`), so the warning points at the user's line."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


class EpsilonAlpha2Beta1(Composite):
    """Conv layers :class:`~jaxlrp.rules.AlphaBeta` (2, 1), dense layers
    :class:`~jaxlrp.rules.Epsilon` (Zennit's ``EpsilonAlpha2Beta1``)."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, rules: Sequence[tuple] = (),
                 strict: bool = False):
        super().__init__(
            list(rules)
            + [("conv", _rules.AlphaBeta(2.0, 1.0, stabilizer)), ("dense", _rules.Epsilon(epsilon))]
            + _aggregates(stabilizer),
            strict=strict,
        )


class EpsilonAlpha2Beta1Flat(Composite):
    """As :class:`EpsilonAlpha2Beta1`, with :class:`~jaxlrp.rules.Flat` on the first layer."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, rules: Sequence[tuple] = (),
                 strict: bool = False):
        super().__init__(
            list(rules)
            + [
                ("first", _rules.Flat(stabilizer)),
                ("conv", _rules.AlphaBeta(2.0, 1.0, stabilizer)),
                ("dense", _rules.Epsilon(epsilon)),
            ]
            + _aggregates(stabilizer),
            strict=strict,
        )


class AttnLRP(Composite):
    """Transformers (Achtibat et al. 2024, AttnLRP): Epsilon on dense layers, the
    uniform rule on products of input-dependent tensors (``q . k`` and
    ``attention . v``), the softmax rule, and normalisers as constants.

    These are the defaults of every composite; the preset names them and sets the
    dense layers' epsilon.
    """

    def __init__(self, epsilon: float = 1e-6, rules: Sequence[tuple] = (),
                 strict: bool = False):
        super().__init__(
            list(rules) + [("linear", _rules.Epsilon(epsilon)), ("attention", _rules.Uniform())], strict=strict
        )


class CPLRP(Composite):
    r"""Conservative propagation through transformers (Ali et al. 2022): as
    :class:`AttnLRP`, but no relevance flows through the attention weights; it all
    goes to the values. The probabilities :math:`P` are held constant, so for
    :math:`o = P v` the values get :math:`R_v = v \odot P^\top (R_o / o)`: reading
    out one token reaches the values of every position it attends to. With the
    stabilisers at 0 this is gradient x input of the attention with
    ``stop_gradient`` on :math:`P` (LXT's CP-LRP).

    Gated MLPs (``"glu"`` layers: SwiGLU's :math:`\operatorname{silu}(x W_1) \odot
    x W_3`, GeGLU) hold the activated factor constant too, as LXT's CP-LRP does:
    all relevance goes to the linear factor (:class:`~jaxlrp.rules.SignalTakesAll`),
    where AttnLRP splits it in half."""

    def __init__(self, epsilon: float = 1e-6, rules: Sequence[tuple] = (),
                 strict: bool = False):
        super().__init__(
            list(rules) + [("linear", _rules.Epsilon(epsilon)), ("attention", _rules.SignalTakesAll()),
                           ("glu", _rules.SignalTakesAll())],
            strict=strict,
        )


class ViTGamma(CPLRP):
    r"""Vision transformers as LXT recommends them (``examples/vit_torch.py`` of
    LXT 2.1): :class:`CPLRP` with :class:`~jaxlrp.rules.Gamma` on the conv (patch
    embedding) and dense layers, one gamma per layer type or per layer.

    ViT heatmaps under LRP-0/epsilon are noisy (gradient shattering); the Gamma
    rule favours positive contributions. For a layer :math:`z = x W + b` with
    :math:`P = W + \gamma W^+`, :math:`N = W + \gamma W^-` (Zennit's generalised
    Gamma, both signs of :math:`x`):

    .. math::

        R_i = x_i^+ \sum_k \Big( P_{ik} \frac{[z_k > 0]\, R_k}{s(d^+_k)}
              + N_{ik} \frac{[z_k < 0]\, R_k}{s(d^-_k)} \Big)
            + x_i^- \sum_k \Big( N_{ik} \frac{[z_k > 0]\, R_k}{s(d^+_k)}
              + P_{ik} \frac{[z_k < 0]\, R_k}{s(d^-_k)} \Big),

    .. math::

        d^+ = x^+ P + x^- N + b + \gamma b^+, \qquad
        d^- = x^+ N + x^- P + b + \gamma b^-,

    :math:`s(d) = d + \text{stabilizer}\,\operatorname{sign}(d)`; outputs with
    :math:`z_k = 0` pass nothing. ``gamma=0`` is LRP-0; large ``gamma`` tends to
    :math:`z^+`. The bias takes its share (not conservative, as in Zennit). Inside
    the attention, CP-LRP: the probabilities are constants (LXT's ViT map is its
    ``cp_LRP``: "easier to tune for gamma"); LayerNorm and GELU as in
    :class:`CPLRP`.

    LXT's example sets two gammas through Zennit, ``Gamma(conv_gamma)`` on every
    ``Conv2d`` and ``Gamma(linear_gamma)`` on every ``Linear`` (the MLPs and the
    classification head), and sweeps ``conv_gamma`` over 0.1, 0.25, 100 and
    ``linear_gamma`` over 0, 0.01, 0.05, 0.1, 1 by eye; it names no default. The
    defaults here are the middle of that sweep. In torchvision's ViT the attention's
    projections are not reached: ``nn.MultiheadAttention`` uses its
    ``in_proj_weight`` and ``out_proj.weight`` functionally, so Zennit's hooks on
    ``out_proj`` never run and those layers keep LRP-0. To reproduce that, pass
    ``gammas={"*self_attention*": None}`` (``bench/compare_lxt.py``: max-rel
    below ``1e-9`` against LXT with Zennit on a random-weight torchvision ViT).

    Parameters
    ----------
    conv_gamma:
        Gamma of the conv layers (the patch embedding), ``>= 0``.
    linear_gamma:
        Gamma of the dense layers (q/k/v, output and MLP projections, the head),
        ``>= 0``.
    gammas:
        Per-layer gammas, tried first and in order: a mapping (or sequence of
        pairs) from a matcher to a gamma, or to ``None`` for the CP-LRP epsilon
        rule (no gamma) on those layers. Matchers as in :class:`Composite`: a
        name or parameter glob (``"*encoder_layer_0/mlp/*"``; by depth,
        ``"*encoder_layer_[0-3]/*"``), a kind, or a callable on :class:`Layer`.
        Only dense and conv layers are affected.
    epsilon:
        Of the dense layers given ``None`` and of :class:`CPLRP`'s other entries.
    stabilizer:
        Of the Gamma rules (Zennit's default ``1e-6``).
    rules:
        ``(matcher, rule)`` pairs tried before everything else.

    Examples
    --------
    >>> from jaxlrp import composites
    >>> c = composites.ViTGamma(conv_gamma=0.25, linear_gamma=0.05,
    ...                         gammas={"*heads*": 0.0, "*self_attention*": None})
    """

    def __init__(self, conv_gamma: float = 0.25, linear_gamma: float = 0.05,
                 gammas: Union[Mapping[Any, Optional[float]], Sequence[tuple]] = (), epsilon: float = 1e-6,
                 stabilizer: float = 1e-6, rules: Sequence[tuple] = (), strict: bool = False):
        pairs = list(gammas.items()) if isinstance(gammas, Mapping) else list(gammas)
        per_layer = []
        for pair in pairs:
            try:
                m, g = pair
            except (TypeError, ValueError):
                raise TypeError(f"gammas entries are (matcher, gamma) pairs, got {pair!r}") from None
            rule = _rules.Epsilon(epsilon) if g is None else _rules.Gamma(g, stabilizer)
            per_layer.append((all_of(m, "linear"), rule))
        typed = [("conv", _rules.Gamma(conv_gamma, stabilizer)), ("dense", _rules.Gamma(linear_gamma, stabilizer))]
        super().__init__(epsilon, list(rules) + per_layer + typed, strict=strict)


class ExcitationBackprop(Composite):
    r"""Excitation backprop (Zhang et al. 2016) as Zennit's ``ExcitationBackprop``:
    :class:`~jaxlrp.rules.ZPlus` on every dense and conv layer,
    :class:`~jaxlrp.rules.Norm` on sums and average pools, the defaults of every
    composite elsewhere (max pooling: winner takes all, which is the gradient).

    Zennit leaves the layers it does not name to the gradient, activations
    included; on ReLUs that is what jaxlrp's ``Pass`` does here (z+ gives no
    relevance to zero activations), and ``Pass`` also keeps an average pool's
    ``1/n`` (a scaling by a constant, an activation in the program) inside the
    pool's Norm rule, as Zennit's pooling module does. Where the two differ (other
    activations, products, softmax), add ``("activation", rules.Gradient())`` or
    the like through ``rules=``.

    Parameters
    ----------
    stabilizer:
        Of z+ and Norm (Zennit's ``1e-6``).
    rules:
        ``(matcher, rule)`` pairs tried first.
    """

    def __init__(self, stabilizer: float = 1e-6, rules: Sequence[tuple] = (), strict: bool = False):
        super().__init__(
            list(rules) + [("linear", _rules.ZPlus(stabilizer))] + _aggregates(stabilizer),
            strict=strict,
        )


def _gradient_elsewhere() -> list:
    """The plain gradient on every layer (Zennit's treatment of the layers a
    composite does not name)."""
    return [(kind(*KINDS), _rules.Gradient())]


class _ModifiedGradient(Composite):
    """The gradient everywhere but on ReLUs, which get ``relu_rule``.

    The result is the modified gradient of the output seed. Zennit's attributors
    seed with a one-hot vector; jaxlrp's ``target=c`` seeds with the logit
    :math:`f_c(x)`, which scales each example's map by it: pass
    ``output_relevance=jax.nn.one_hot(c, n)`` for Zennit's maps.
    """

    def __init__(self, relu_rule: Rule, rules: Sequence[tuple] = (), strict: bool = False):
        super().__init__(list(rules) + [(relu, relu_rule)] + _gradient_elsewhere(), strict=strict)


class GuidedBackprop(_ModifiedGradient):
    r"""Guided backpropagation (Springenberg et al. 2015), Zennit's
    ``GuidedBackprop``: :class:`~jaxlrp.rules.ReLUGuidedBackprop` on every ReLU,
    the gradient elsewhere,

    .. math:: g_{\text{in}} = g\,[z > 0]\,[g > 0] \text{ at each ReLU}.

    The map is the modified gradient itself (not times the input); seed it with
    ``output_relevance=jax.nn.one_hot(c, n)`` to match Zennit (``target=c`` scales
    it by the logit). A ReLU that is not a dense/conv layer's direct successor
    (``Layer.function == "rectified"``) is refused.
    """

    def __init__(self, rules: Sequence[tuple] = (), strict: bool = False):
        super().__init__(_rules.ReLUGuidedBackprop(), rules, strict)


class DeconvNet(_ModifiedGradient):
    r"""DeconvNet (Zeiler & Fergus 2014), Zennit's ``DeconvNet``:
    :class:`~jaxlrp.rules.ReLUDeconvNet` (:math:`\max(g, 0)`, whatever the ReLU's
    input) on every ReLU, the gradient elsewhere. Seeding as for
    :class:`GuidedBackprop`.
    """

    def __init__(self, rules: Sequence[tuple] = (), strict: bool = False):
        super().__init__(_rules.ReLUDeconvNet(), rules, strict)


class BetaSmooth(_ModifiedGradient):
    r"""The ReLUs' gradient replaced by that of a softplus of sharpness ``beta_smooth``
    (Dombrowski et al. 2019), Zennit's ``BetaSmooth``:
    :class:`~jaxlrp.rules.ReLUBetaSmooth` (:math:`\sigma(\beta z)\, g`) on every
    ReLU, the gradient elsewhere. Seeding as for :class:`GuidedBackprop`.

    Parameters
    ----------
    beta_smooth:
        ``> 0`` (Zennit's default 10).
    """

    def __init__(self, beta_smooth: float = 10.0, rules: Sequence[tuple] = (), strict: bool = False):
        super().__init__(_rules.ReLUBetaSmooth(beta_smooth), rules, strict)


class MambaLRP(Composite):
    r"""Selective state-space models (Mamba) as MambaLRP explains them (Jafari et al.
    2024): epsilon on dense and conv layers, relevance passed through the SiLU
    activations (``Pass``), RMSNorm's normaliser a constant (``SignalTakesAll``),
    and the multiplicative gate :math:`y \odot \mathrm{silu}(z)` split in halves
    (:class:`~jaxlrp.rules.Uniform` on products and gates: MambaLRP's "half
    propagation").

    MambaLRP's third rule is in the model, not in the composite: the scan's
    input-dependent parameters :math:`\exp(\Delta A)`, :math:`\Delta B` and
    :math:`C` are constants for the relevance, so the scan is linear in its input
    and state (its sums then get the Norm rule). Wrap them in
    ``jax.lax.stop_gradient`` (the forward values do not change), as MambaLRP's
    reference code detaches them; otherwise their products with the state are
    ``"product"`` layers and get half of the relevance, which is what MambaLRP
    shows to be unfaithful (``examples/mamba.py``).

    Parameters
    ----------
    epsilon:
        Of the dense and conv layers.
    rules:
        ``(matcher, rule)`` pairs tried first.
    """

    def __init__(self, epsilon: float = 1e-6, rules: Sequence[tuple] = (), strict: bool = False):
        super().__init__(
            list(rules) + [("linear", _rules.Epsilon(epsilon)), ("activation", _rules.Pass()),
                           ("normalize", _rules.SignalTakesAll()), (kind("product", "glu", "gate"), _rules.Uniform())],
            strict=strict,
        )


_PRESETS = {
    "epsilon_plus": EpsilonPlus,
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_gamma_box": EpsilonGammaBox,
    "zero_epsilon_gamma_box": ZeroEpsilonGammaBox,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
    "attn_lrp": AttnLRP,
    "cp_lrp": CPLRP,
    "vit_gamma": ViTGamma,
    "excitation_backprop": ExcitationBackprop,
    "guided_backprop": GuidedBackprop,
    "deconvnet": DeconvNet,
    "beta_smooth": BetaSmooth,
    "mamba_lrp": MambaLRP,
}


#: Deprecated preset names, still accepted by :func:`get` (with a DeprecationWarning)
#: for one release but not listed by :func:`names`: old name -> new name.
_RENAMED_PRESETS = {"overview": "zero_epsilon_gamma_box"}


def names() -> tuple:
    """Names accepted by :func:`get` (deprecated names aside)."""
    return tuple(_PRESETS)


def get(preset: str, **kwargs: Any) -> Composite:
    """A preset composite by its snake-case name, e.g. ``get("epsilon_plus_flat")``.

    Keyword arguments go to the preset's constructor; ``"epsilon_gamma_box"`` and
    ``"zero_epsilon_gamma_box"`` need the input bounds, e.g. ``get("epsilon_gamma_box",
    low=0.0, high=1.0)`` (without them: ``TypeError``). The deprecated name
    ``"overview"`` gives ``"zero_epsilon_gamma_box"`` with a ``DeprecationWarning``.
    """
    if preset in _RENAMED_PRESETS:
        new = _RENAMED_PRESETS[preset]
        warnings.warn(_renamed(f"the composite name {preset!r}", repr(new)), DeprecationWarning,
                      stacklevel=_caller_outside_jaxlrp())
        preset = new
    try:
        cls = _PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown composite {preset!r}; known: {', '.join(_PRESETS)}") from None
    return cls(**kwargs)


def from_rule(rule: Rule) -> Composite:
    """A composite applying ``rule`` to every layer of a kind it supports; other
    layers keep their defaults.

    :class:`~jaxlrp.rules.Epsilon` (and so ``Zero()``) supports dense and conv layers
    and also sums and average pools, where it is the Norm rule with its epsilon: so
    ``rule=rules.Zero()`` is LRP-0 everywhere, and on ReLU networks (residual ones
    included) it equals gradient x input exactly, where the default ``Norm(1e-6)``
    of sums would differ by about the stabiliser.
    """
    if not isinstance(rule, Rule):
        raise TypeError(f"expected a jaxlrp rule, got {rule!r}")
    return Composite([(kind(*sorted(rule.kinds)), rule)])


def resolve(composite: Union[Composite, str, None], rule: Optional[Rule]) -> Composite:
    """The composite to use given ``lrp``'s ``composite=`` and ``rule=`` arguments."""
    if composite is not None and rule is not None:
        raise ValueError("pass either composite= or rule=, not both")
    if rule is not None:
        return from_rule(rule)
    if composite is None:
        return Composite()
    if isinstance(composite, str):
        return get(composite)
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be a jaxlrp Composite or a preset name, got {composite!r}")
    return composite
