"""Explaining Keras 3 models (JAX backend) like :mod:`jaxlrp.flax` explains Flax ones.

A built Keras model is a JAX function once its variables are arguments:
``model.stateless_call(trainable, non_trainable, x, training=False)``. This module
wraps that call so that :func:`jaxlrp.lrp` sees it with Keras's names::

    state = jaxlrp.keras.variables(model)              # {variable path: value}
    explain = jax.jit(jaxlrp.keras.lrp(model, composites.EpsilonPlusFlat()))
    R = explain(state, x, target=3)
    R = jaxlrp.keras.explain(model, x, composite="epsilon_plus_flat")   # in one call

Importing this module sets ``KERAS_BACKEND=jax`` when Keras is not imported yet and
the variable is unset; a Keras already running on another backend is refused
(``ImportError``).

Layer names
-----------
Keras puts each layer's path on JAX's name stack (``"conv1"``, ``"block/conv"`` for
a layer inside a nested model), and the state's keys are the variables' paths
(``"block/conv/kernel"``, ``"sequential/dense/kernel"``: a ``Sequential`` model
puts its own name first). A layer's *name* is its name stack and its *parameter
path* the key of its weight, so composite globs and ``layers=`` select Keras
layers: ``"conv1"``, ``"block/*"``, ``"*/kernel"``. The functions of this module
also try string globs against the name with the model's name in front
(``"net/conv1"``), so Flax-style globs such as ``"*/conv1"`` work on top-level
layers (:func:`keras_composite`).

Inference mode and variables
----------------------------
The model is always called with ``training=False``: Dropout is off and
BatchNormalization uses its moving statistics, which are non-trainable variables
of the state (folded into the layer before it, as in :mod:`jaxlrp.canonize`). A
call that still updates a non-trainable variable (a custom layer that ignores
``training`` and draws random numbers, or updates statistics) raises
:class:`jaxlrp.TrainingModeError` naming the variable.

Precision
---------
Keras's type promotion (``keras.backend.result_type``) maps ``float64`` to
``float32`` on the JAX backend even under ``jax_enable_x64``. Every operation that
promotes with it computes in float32 inside a float64 model:
BatchNormalization, GroupNormalization, ``keras.ops.mean`` (so
GlobalAveragePooling) among others. LRP-0 then matches gradient x input only to
~1e-7, the precision of the float32 round trip, not to float64 rounding. With
``full_precision=True`` (the default) this module keeps ``float64`` while the
model is traced when ``jax_enable_x64`` is on (it sets Keras's
``float64 -> float32`` entry to ``float64`` for the duration of the call, which
is not thread-safe against other Keras calls running at the same moment), and
LRP-0 agrees with gradient x input to float64 rounding. A model whose layers
themselves compute in float32 (a ``float32`` dtype policy: the global policy is
fixed when the first layer is built, so ``keras.config.set_floatx("float64")``
after that changes nothing; pass ``dtype="float64"`` to the layers or call
``keras.config.set_dtype_policy("float64")`` first) explained on a float64 input
gives a :class:`PrecisionWarning`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import os
import sys
import warnings
from typing import Any, Callable, Iterator, Optional, Union

import jax
import jax.numpy as jnp

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    if e.name == "keras":
        raise ImportError("jaxlrp.keras needs Keras 3: pip install keras (with KERAS_BACKEND=jax)") from e
    raise ImportError(f"Keras failed to import with the {os.environ.get('KERAS_BACKEND')!r} backend ({e}); "
                      "jaxlrp.keras needs KERAS_BACKEND=jax") from e
if keras.backend.backend() != "jax":  # pragma: no cover - depends on the environment
    raise ImportError(f"jaxlrp.keras needs Keras on the JAX backend, but Keras runs on {keras.backend.backend()!r}: "
                      "set KERAS_BACKEND=jax before Keras is imported")

from ._core import paths as _paths
from . import composites as _composites
from ._core.errors import TrainingModeError
from .composites import Composite, Layer, Matcher
from .diagnostics import Report
from .diagnostics import inspect as _jaxlrp_inspect
from .explain import LayerSelection
from .explain import lrp as _jaxlrp_lrp
from .explain import value_and_lrp as _jaxlrp_value_and_lrp
from .rules import Rule

__all__ = [
    "PrecisionWarning",
    "variables",
    "call",
    "lrp",
    "value_and_lrp",
    "explain",
    "inspect",
    "keras_composite",
    "float64_kept",
]

Array = Any
State = dict


class PrecisionWarning(UserWarning):
    """A float64 input is explained through layers that compute in a lower precision."""


# ------------------------------------------------------------------------ variables


def _built(model: Any) -> None:
    if not isinstance(model, keras.Layer):
        raise TypeError(f"expected a Keras model or layer, got {type(model).__name__}")
    if not model.built or not model.variables:
        raise ValueError(f"the Keras model {model.name!r} has no variables yet: build it first "
                         "(give it a keras.Input, call model.build(shape) or call it on an example)")


def variables(model: Any) -> State:
    """Every variable of a built Keras model, by its path.

    Returns
    -------
    dict
        ``{variable.path: value}`` for the trainable and the non-trainable variables
        (BatchNormalization's moving statistics, random-seed states), e.g.
        ``{"conv1/kernel": ..., "bn/moving_mean": ...}``. The paths become the
        layers' parameter paths in :func:`jaxlrp.lrp`.

    Raises
    ------
    ValueError
        If the model is not built, or two variables share a path.
    """
    _built(model)
    out: dict = {}
    for v in model.variables:
        if v.path in out:
            raise ValueError(f"two variables of {model.name!r} have the path {v.path!r}: give the layers unique names")
        out[v.path] = v.value
    return out


@contextlib.contextmanager
def float64_kept() -> Iterator[None]:
    """While active, Keras's type promotion keeps ``float64`` (and ``complex128``)
    when ``jax_enable_x64`` is on, instead of mapping it to 32 bits.

    Keras computes BatchNormalization, GroupNormalization and ``ops.mean`` in
    ``result_type(x.dtype, "float32")``, which is ``float32`` for a ``float64`` ``x``
    on the JAX backend. Without x64 (or on a Keras without that table) it does
    nothing. It changes a table of Keras for the duration of the block: Keras
    calls in other threads at the same moment see it too.
    """
    from keras.src.backend.common import dtypes as keras_dtypes

    table = getattr(keras_dtypes, "BIT64_TO_BIT32_DTYPE", None)
    if table is None or jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:  # x64 off
        yield
        return
    saved = dict(table)
    table.update({"float64": "float64", "complex128": "complex128"})
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


def call(model: Any, *, full_precision: bool = True) -> Callable[[State, Array], Array]:
    """The model's inference call as a JAX function of ``(state, x)``.

    Parameters
    ----------
    model:
        A built Keras model (or layer) with one output.
    full_precision:
        Trace under :func:`float64_kept` (see the module's notes on precision).

    Returns
    -------
    callable
        ``f(state, x) = model.stateless_call(trainable, non_trainable, x,
        training=False)[0]``, with ``trainable`` and ``non_trainable`` read from
        ``state`` (:func:`variables`) by path. It raises
        :class:`~jaxlrp.TrainingModeError` when the call updates a non-trainable
        variable.
    """
    _built(model)
    trainable = [v.path for v in model.trainable_variables]
    frozen = [v.path for v in model.non_trainable_variables]

    def f(state: State, x: Array) -> Array:
        missing = [p for p in trainable + frozen if p not in state]
        if missing:
            raise KeyError(f"the state has no value for {missing[:5]}: build it with jaxlrp.keras.variables(model)")
        given = [state[p] for p in frozen]
        with float64_kept() if full_precision else contextlib.nullcontext():
            y, after = model.stateless_call([state[p] for p in trainable], given, x, training=False)
        changed = [p for p, a, b in zip(frozen, given, after) if a is not b]
        if changed:
            raise TrainingModeError([f"{p} (updated by an inference call: a layer ignores training=False, "
                                     "e.g. draws random numbers or updates statistics)" for p in changed])
        return y

    return f


# ----------------------------------------------------------------------- matching


def _is_glob(m: Matcher) -> bool:
    return isinstance(m, str) and m not in _composites.MATCHER_WORDS


@dataclasses.dataclass(frozen=True)
class _KerasMatcher:
    """A matcher whose string globs are also tried against ``root/name``."""

    matcher: Matcher
    root: str

    def __call__(self, layer: Layer) -> bool:
        m = self.matcher
        if not isinstance(m, str) or not _is_glob(m):
            return _composites.as_matcher(m)(layer)
        name = layer.name or _paths.layer_name(layer.param_paths)
        names = [name] + ([f"{self.root}/{name}"] if name and self.root and not name.startswith(self.root + "/") else [])
        return _composites.param(m)(layer) or any(fnmatch.fnmatchcase(n, m) for n in names)

    def __repr__(self) -> str:  # error messages name the user's matcher
        return repr(self.matcher)


def _n_defaults() -> int:
    return len(Composite().rules)


def keras_composite(composite: Union[Composite, str, None] = None, model: Any = None, *,
                    rule: Optional[Rule] = None) -> Composite:
    """A composite whose string globs also see a layer's name with the model's name
    in front (``"net/conv1"`` for the top-level layer ``conv1`` of the model ``net``).

    Parameters
    ----------
    composite, rule:
        As in :func:`jaxlrp.lrp`.
    model:
        The Keras model (its ``name`` is the root); without it, names are unchanged.
    """
    comp = _composites.resolve(composite, rule)
    pairs = comp.rules[: len(comp.rules) - _n_defaults()]
    root = model.name if model is not None else ""
    return Composite([(_KerasMatcher(m, root), r) for m, r in pairs], strict=comp.strict)


def _keras_layers(layers: LayerSelection, root: str) -> LayerSelection:
    if layers is None:
        return None
    if isinstance(layers, (list, tuple)):
        return [_KerasMatcher(m, root) for m in layers]
    return _KerasMatcher(layers, root)  # type: ignore[arg-type]  # a single matcher


# ---------------------------------------------------------------------- explaining


def _check_precision(model: Any, x: Array) -> None:
    """Warn when a float64 input meets layers computing in a lower precision."""
    if not any(jnp.result_type(a) == jnp.float64 for a in jax.tree_util.tree_leaves(x)):
        return
    leaves = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
              if not isinstance(layer, keras.layers.InputLayer)
              and not list(layer._flatten_layers(include_self=False, recursive=False))]
    low = {layer.name: layer.compute_dtype for layer in leaves
           if layer.compute_dtype in ("float32", "float16", "bfloat16")}
    if low:
        warnings.warn(
            f"the input is float64 but the layers {list(low)[:5]} compute in {sorted(set(low.values()))}: the explanation "
            "is only as precise as that. Build the model with dtype='float64' (or call "
            "keras.config.set_dtype_policy('float64') before building any layer).",
            PrecisionWarning, stacklevel=3,
        )


def _transform(transform: Callable, model: Any, composite, rule, full_precision: bool, **options: Any) -> Callable:
    f = call(model, full_precision=full_precision)
    inner = transform(f, keras_composite(composite, model, rule=rule), **options)
    root = model.name

    @functools.wraps(inner)
    def explain_keras(state: State, x: Array, **kwargs: Any) -> Any:
        _check_precision(model, x)
        if "layers" in kwargs:
            kwargs["layers"] = _keras_layers(kwargs["layers"], root)
        return inner(state, x, **kwargs)

    return explain_keras


def lrp(model: Any, composite: Union[Composite, str, None] = None, *, rule: Optional[Rule] = None,
        full_precision: bool = True) -> Callable:
    """:func:`jaxlrp.lrp` of a Keras model, ready for ``jax.jit`` and ``jax.vmap``.

    Parameters
    ----------
    model:
        A built Keras 3 model on the JAX backend, with one output.
    composite, rule:
        Which rule each layer gets (see :func:`jaxlrp.lrp`); wrapped with
        :func:`keras_composite`.
    full_precision:
        See :func:`call`.

    Returns
    -------
    callable
        ``explain(state, x, *, target=None, output_relevance=None, layers=None)``
        with ``state = variables(model)``; see :func:`jaxlrp.lrp` for the keywords.

    Examples
    --------
    >>> explain = jax.jit(jaxlrp.keras.lrp(keras_model, composites.EpsilonPlusFlat()))
    >>> R = explain(jaxlrp.keras.variables(keras_model), keras_x, target=1)
    """
    return _transform(_jaxlrp_lrp, model, composite, rule, full_precision)


def value_and_lrp(model: Any, composite: Union[Composite, str, None] = None, *, rule: Optional[Rule] = None,
                  full_precision: bool = True) -> Callable:
    """Like :func:`lrp`, but the returned function gives ``(output, relevance)``."""
    return _transform(_jaxlrp_value_and_lrp, model, composite, rule, full_precision)


def inspect(model: Any, composite: Union[Composite, str, None] = None, *, rule: Optional[Rule] = None,
            full_precision: bool = True, verbose: bool = False) -> Callable[..., Report]:
    """:func:`jaxlrp.inspect` of a Keras model: a function of ``(state, x)`` returning
    a :class:`jaxlrp.diagnostics.Report` (its ``repr`` is the table; printed here too
    if ``verbose``), its layers keyed by their Keras names.

    Examples
    --------
    >>> report = jaxlrp.keras.inspect(keras_model)(jaxlrp.keras.variables(keras_model), keras_x)
    """
    return _transform(_jaxlrp_inspect, model, composite, rule, full_precision, verbose=verbose)


def explain(model: Any, x: Array, *, composite: Union[Composite, str, None] = None, rule: Optional[Rule] = None,
            target: Any = None, output_relevance: Any = None, layers: LayerSelection = None,
            full_precision: bool = True) -> Any:
    """Explain a Keras model on ``x`` in one call, with the model's current variables.

    Parameters
    ----------
    model, composite, rule, full_precision:
        As in :func:`lrp`.
    x, target, output_relevance, layers:
        As in :func:`jaxlrp.lrp`.

    Returns
    -------
    Array or tuple
        The relevance of ``x``; with ``layers``, ``(relevance, per_layer)``.

    Examples
    --------
    >>> R = jaxlrp.keras.explain(keras_model, keras_x, composite="epsilon_plus_flat", target=1)
    """
    fn = lrp(model, composite, rule=rule, full_precision=full_precision)
    return fn(variables(model), x, target=target, output_relevance=output_relevance, layers=layers)
