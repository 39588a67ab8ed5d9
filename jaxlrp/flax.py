"""Explaining Flax models (linen and nnx) in one line.

:func:`jaxlrp.lrp` works on any JAX function, so Flax models need no wrapper::

    jaxlrp.lrp(module.apply, composite)(variables, x)                        # linen
    jaxlrp.lrp(nnx_model, composite)(x)                                      # nnx

An nnx module given to :func:`jaxlrp.lrp`, :func:`jaxlrp.value_and_lrp` or
:func:`jaxlrp.inspect` is handed to this module's functions of the same name, so
every entry point treats it alike: the same layer names (``layers="blocks/*"``),
training mode refused with :class:`TrainingModeError`, and the explainer takes
``(x)`` (the model's current weights) or ``(state, x)`` (``state`` from
``nnx.split(model)``, for ``jax.jit``/``jax.vmap`` over weights).

This module adds conveniences on top: :func:`lrp`, :func:`value_and_lrp` and
:func:`inspect` are :func:`jaxlrp.lrp`, :func:`jaxlrp.value_and_lrp` and
:func:`jaxlrp.inspect` of the model itself, each returning a function of
``(variables, x)`` (linen) or ``(x)`` / ``(state, x)`` (nnx); :func:`explain` explains
in one call (``explain(module, variables, x)``, ``explain(nnx_model, x)``); models in
training mode are refused with :class:`TrainingModeError`; and nnx layers can be
selected by their attribute path.

Selecting layers
----------------
String matchers of a composite (:mod:`jaxlrp.composites`) are globs matched against
the layer's *name* and the path of its weight in the parameter pytree.

* linen: the name is the module path that linen puts on JAX's name stack, the root
  module's class first, e.g. ``"ResNet/layer1_0/conv1"`` (a method other than
  ``__call__`` adds a component, e.g. ``"VGG/VGG.features/conv1_1"``); the parameter
  path is ``"params/layer1_0/conv1/kernel"``. Globs such as ``"*/conv1"``,
  ``"*/layer1_*"`` or ``"params/layer1_0/*"`` select layers.
* nnx puts nothing on the name stack. With :func:`jaxlrp.lrp` on a function of the
  nnx state, only the parameter path is seen, which is the attribute path plus the
  parameter and ``value``, e.g. ``"blocks/0/conv1/kernel/value"``: select with
  ``"blocks/0/conv1/*"``, ``"*/conv1/*"`` or ``"*conv1*"``. The functions of this
  module (and :func:`nnx_composite`) also give nnx layers a name derived from that
  path (:func:`module_path`): ``"blocks/0/conv1"``, and, as linen would name it,
  ``"Model/blocks/0/conv1"``; string globs are tried against both, so
  ``"blocks/0/conv1"``, ``"*/conv1"`` and the linen patterns of the same
  architecture select the same layers. Callable matchers see the linen-style name.

The zoo (:mod:`jaxlrp.models`) names its linen and nnx layers alike, so one
composite serves both.

Training mode
-------------
BatchNorm that normalises with batch statistics and active Dropout make one
example's output depend on the others (or on a random mask): an explanation of such
a model would silently mix examples. :func:`explain`, :func:`inspect` and :func:`lrp`
raise :class:`TrainingModeError` instead: for nnx by inspecting the modules
(``use_running_average=False``, ``deterministic=False`` with a non-zero rate; call
``model.eval()``), for linen by checking every module call while the function is
traced (attributes and call arguments of the same names; build the module with
``use_running_average=True``/``deterministic=True``) and, failing that, when the
call tries to update ``batch_stats`` or asks for a ``dropout`` random stream.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect as _inspect
from typing import Any, Callable, Mapping, Optional, TypeGuard, Union

import jax
import jax.numpy as jnp

try:
    import flax.errors
    import flax.linen as nn
    from flax import nnx, traverse_util
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    raise ImportError("jaxlrp.flax needs Flax: pip install 'jaxlrp[flax]'") from e

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
    "TrainingModeError",
    "lrp",
    "value_and_lrp",
    "explain",
    "inspect",
    "transform",
    "check_inference_mode",
    "module_path",
    "nnx_composite",
    "load_linen_variables",
]

Model = Union[nn.Module, nnx.Module]
Method = Union[str, Callable, None]


# --------------------------------------------------------------------- training mode


def _mode_problem(cls_name: str, path: str, flags: Mapping[str, Any], rate: Any) -> Optional[str]:
    """Why a module with these resolved flags is in training mode (``None`` if it is not)."""
    if flags.get("use_running_average") is False:
        return f"{path} ({cls_name}: use_running_average=False normalises with batch statistics)"
    if flags.get("deterministic") is False and (rate is None or rate != 0):
        return f"{path} ({cls_name}: deterministic=False applies random dropout)"
    return None


def _rate(module: Any) -> Any:
    for attr in ("rate", "dropout_rate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return value
    return None


def _nnx_problems(model: nnx.Module) -> list:
    found = []
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        flags = {k: getattr(node, k, None) for k in ("use_running_average", "deterministic")}
        where = "/".join(str(p) for p in path) or type(model).__name__
        problem = _mode_problem(type(node).__name__, where, flags, _rate(node))
        if problem and problem not in found:
            found.append(problem)
    return found


def _call_flags(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """``use_running_average``/``deterministic`` of a linen call: the call's argument
    if given, else the module's attribute (linen's ``merge_param`` semantics)."""
    try:
        bound = _inspect.signature(type(module).__call__).bind_partial(module, *args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {}
    flags = {}
    for k in ("use_running_average", "deterministic"):
        value = bound.get(k)
        flags[k] = getattr(module, k, None) if value is None else value
    return flags


def _linen_interceptor(root: str) -> Callable:
    """A linen method interceptor raising :class:`TrainingModeError` on the call of a
    module in training mode (``root``: the name of the applied module)."""

    def intercept(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            module = context.module
            scope_path = tuple(module.scope.path) if module.scope is not None else ()
            path = "/".join((root,) + scope_path)
            problem = _mode_problem(type(module).__name__, path, _call_flags(module, args, kwargs), _rate(module))
            if problem:
                raise TrainingModeError([problem])
        return next_fun(*args, **kwargs)

    return intercept


def _linen_apply(module: nn.Module, method: Method) -> Callable:
    """``module.apply`` checked for training mode while it runs (or is traced)."""
    interceptor = _linen_interceptor(type(module).__name__)

    def apply(variables, x):
        try:
            with nn.intercept_methods(interceptor):
                return module.apply(variables, x, method=method)
        except flax.errors.ModifyScopeVariableError as e:
            raise TrainingModeError([f"a layer updates its variables during the call ({e})"]) from e
        except flax.errors.InvalidRngError as e:
            raise TrainingModeError([f"a layer asks for randomness, e.g. active dropout ({e})"]) from e

    return apply


def check_inference_mode(model: Model, *args: Any, method: Method = None) -> None:
    """Raise :class:`TrainingModeError` if ``model`` is in training mode.

    Parameters
    ----------
    model:
        An nnx module (its modules are inspected; no arguments needed) or a linen
        module (then pass ``variables, x``: the call is traced abstractly, with
        :func:`jax.eval_shape`, and every module call checked).
    args:
        For linen: ``variables, x``.
    method:
        For linen: the method to call (as in ``module.apply``).
    """
    if isinstance(model, nnx.Module):
        problems = _nnx_problems(model)
        if problems:
            raise TrainingModeError(problems)
        return
    _linen_args(model, args, "check_inference_mode")
    jax.eval_shape(_linen_apply(model, method), *args)


# ------------------------------------------------------------------------ nnx names


def module_path(layer: Layer) -> str:
    """The module path of a layer whose weight comes from an nnx state.

    Derived from the parameter path, by the rule the core uses to name layers that
    push no name stack: ``"blocks/0/conv1/kernel/value"`` gives ``"blocks/0/conv1"``
    (the trailing ``value`` and the parameter's own name are dropped), a parameter
    of the root module (``"kernel/value"``) gives ``""``, and a plain pytree leaf
    names itself (``"w1"``). Empty for layers without exactly one parameter path.
    """
    return _paths.layer_name(layer.param_paths)


def _is_glob(m: Matcher) -> TypeGuard[str]:
    return isinstance(m, str) and m not in _composites.MATCHER_WORDS


@dataclasses.dataclass(frozen=True)
class _NnxMatcher:
    """A matcher applied to layers named after their nnx module path: string globs
    are also tried against the module path (with and without the root), callables
    receive the layer with its rooted module path as ``name``."""

    matcher: Matcher
    root: str

    def __call__(self, layer: Layer) -> bool:
        # nnx pushes no name stack: the core names such layers by this same path
        path = module_path(layer) if layer.name in ("", module_path(layer)) else ""
        m = self.matcher
        if _is_glob(m):
            names = [layer.name] + ([path, _rooted(self.root, path)] if path else [])
            return _composites.param(m)(layer) or any(fnmatch.fnmatchcase(n, m) for n in names)
        named = dataclasses.replace(layer, name=_rooted(self.root, path)) if path else layer
        return _composites.as_matcher(m)(named)

    def __repr__(self) -> str:  # error messages name the user's matcher
        return repr(self.matcher)

    @property
    def pattern(self) -> str:
        return str(self.matcher)

    @property
    def on(self) -> str:
        return "any"

    def jaxlrp_globs(self) -> list:
        """This matcher, if it is a string glob: checked for matching no layer (and
        for bare words that are no kind) as :func:`jaxlrp.composites.check_matches`
        checks globs, under the nnx names."""
        return [self] if _is_glob(self.matcher) else []


def _rooted(root: str, path: str) -> str:
    return f"{root}/{path}" if root else path


def _n_defaults() -> int:
    return len(Composite().rules)


def nnx_composite(composite: Union[Composite, str, None] = None, model: Optional[nnx.Module] = None, *,
                  rule: Optional[Rule] = None) -> Composite:
    """A composite whose matchers see nnx layers by their module path.

    Parameters
    ----------
    composite, rule:
        As in :func:`jaxlrp.lrp` (a composite, a preset name, or one rule).
    model:
        The nnx model; its class name is the root of the linen-style names (e.g.
        ``"ResNet/layer1_0/conv1"``). Without it, names have no root.

    Returns
    -------
    Composite
        The same rules, in the same order, with every matcher wrapped so that string
        globs are also tried against :func:`module_path` (with and without the root)
        and callables receive layers whose ``name`` is the rooted module path. Use it
        with :func:`jaxlrp.lrp` on a function of the nnx state.
    """
    comp = _composites.resolve(composite, rule)
    pairs = comp.rules[: len(comp.rules) - _n_defaults()]
    root = type(model).__name__ if model is not None else ""
    return Composite([(_NnxMatcher(m, root), r) for m, r in pairs])


def _nnx_layers(layers, root: str):
    if layers is None:
        return None
    if isinstance(layers, (list, tuple)):
        return _composites.any_of(*[_NnxMatcher(m, root) for m in layers])
    return _NnxMatcher(layers, root)


# ---------------------------------------------------------------------- explaining


def _nnx_call(graphdef, method: Method) -> Callable:
    def call(state, x):
        model = nnx.merge(graphdef, state)
        if method is None:
            return model(x)
        if isinstance(method, str):
            return getattr(model, method)(x)
        return method(model, x)

    return call


def _check_model(model: Any) -> None:
    if not isinstance(model, (nn.Module, nnx.Module)):
        raise TypeError(f"expected a Flax linen or nnx module, got {type(model).__name__}")


def transform(
    transformation: Callable, model: Model, composite: Union[Composite, str, None] = None, *,
    rule: Optional[Rule] = None, method: Method = None, **options: Any,
) -> Callable:
    """``transformation`` (:func:`jaxlrp.lrp`, :func:`jaxlrp.value_and_lrp` or
    :func:`jaxlrp.inspect`) of a Flax model: a function of ``(variables, x)`` (linen) or
    ``(state, x)`` or ``(x)`` (nnx) taking the keywords of the transformed function.

    :func:`lrp`, :func:`value_and_lrp` and :func:`inspect` of this module are this
    function with their transformation; ``options`` (``argnums=``, ``start=``,
    ``example_axes=``, ``verbose=``) go to the transformation. :func:`jaxlrp.lrp` of
    an nnx module calls it.
    """
    _check_model(model)
    if isinstance(model, nnx.Module):
        return _nnx_transform(transformation, model, composite, rule, method, options)
    return transformation(_linen_apply(model, method), composite, rule=rule, **options)


def _nnx_transform(transform: Callable, model: nnx.Module, composite, rule, method, options: dict) -> Callable:
    """The nnx case of :func:`transform`. Called with ``(x)``, the model is split
    again at each call, so that its current weights and mode are used (and checked)."""
    root = type(model).__name__
    comp = nnx_composite(composite, model, rule=rule)

    def build() -> Callable:
        check_inference_mode(model)
        graphdef, _ = nnx.split(model)
        return transform(_nnx_call(graphdef, method), comp, **options)

    inner = build()  # training mode is refused here already

    @functools.wraps(inner)
    def explain_nnx(*args: Any, **kwargs: Any) -> Any:
        if "layers" in kwargs:
            kwargs["layers"] = _nnx_layers(kwargs["layers"], root)
        if len(args) == 1:
            return build()(nnx.state(model), args[0], **kwargs)
        if len(args) == 2:
            return inner(*args, **kwargs)
        raise TypeError(
            f"an explainer of an nnx model takes (x) or (state, x), got {len(args)} positional arguments"
        )

    return explain_nnx


def lrp(
    model: Model,
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    method: Method = None,
) -> Callable:
    """:func:`jaxlrp.lrp` of a Flax model, ready for ``jax.jit`` and ``jax.vmap``.

    Parameters
    ----------
    model:
        A linen module or an nnx module.
    composite, rule:
        Which rule each layer gets (see :func:`jaxlrp.lrp`). For nnx, the composite
        is wrapped with :func:`nnx_composite`.
    method:
        linen: as ``module.apply(..., method=)``; nnx: the name of a method, or a
        function ``(model, x) -> output``. Default: ``__call__``.

    Returns
    -------
    callable
        ``explain(variables, x, *, target=None, output_relevance=None, layers=None)``
        for linen; for nnx ``explain(x, ...)`` (the model's current weights and
        mode, checked at each call) or ``explain(state, x, ...)`` (with ``state``
        from ``nnx.split(model)`` or ``nnx.state(model)``); see :func:`jaxlrp.lrp`
        for the keyword arguments.

    Raises
    ------
    TrainingModeError
        For an nnx model in training mode (here), for a linen model when the
        returned function is called (traced).

    Examples
    --------
    >>> explain = jax.jit(jaxlrp.flax.lrp(model, composites.EpsilonPlusFlat()))
    >>> R = explain(variables, x, target=3)
    """
    return transform(_jaxlrp_lrp, model, composite, rule=rule, method=method)


def value_and_lrp(
    model: Model,
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    method: Method = None,
) -> Callable:
    """Like :func:`lrp`, but the returned function gives ``(output, relevance)``
    (see :func:`jaxlrp.value_and_lrp`)."""
    return transform(_jaxlrp_value_and_lrp, model, composite, rule=rule, method=method)


def _linen_args(model, args, fname) -> tuple:
    if len(args) != 2:
        raise TypeError(
            f"{fname}(linen_module, variables, x, ...) takes the variables and the input; "
            f"got {len(args)} positional arguments after the module"
        )
    return args


def _nnx_args(model, args, fname) -> tuple:
    if len(args) != 1:
        raise TypeError(
            f"{fname}(nnx_model, x, ...) takes only the input after the model (the weights are "
            f"in the model); got {len(args)} positional arguments"
        )
    return (nnx.state(model),) + tuple(args)


def _model_args(model, args, fname) -> tuple:
    _check_model(model)
    if isinstance(model, nnx.Module):
        return _nnx_args(model, args, fname)
    return _linen_args(model, args, fname)


def explain(
    model: Model,
    *args: Any,
    composite: Union[Composite, str, None] = None,
    rule: Optional[Rule] = None,
    target: Any = None,
    output_relevance: Any = None,
    layers: LayerSelection = None,
    method: Method = None,
) -> Any:
    """Explain a Flax model on ``x``: ``explain(module, variables, x)`` for linen,
    ``explain(model, x)`` for nnx.

    Parameters
    ----------
    model:
        A linen module (followed by its ``variables``) or an nnx module.
    args:
        ``variables, x`` (linen) or ``x`` (nnx).
    composite, rule, target, output_relevance, layers:
        As in :func:`jaxlrp.lrp`.
    method:
        As in :func:`lrp`.

    Returns
    -------
    Array or tuple
        The relevance of ``x`` (shape and dtype of ``x``); with ``layers``,
        ``(relevance, per_layer)``.

    Raises
    ------
    TrainingModeError
        If the model is in training mode.

    Examples
    --------
    >>> R = jaxlrp.flax.explain(module, variables, x, composite="epsilon_plus_flat", target=3)
    >>> R = jaxlrp.flax.explain(nnx_model, x, composite=models.resnet_composite())
    """
    full = _model_args(model, args, "explain")
    fn = lrp(model, composite, rule=rule, method=method)
    return fn(*full, target=target, output_relevance=output_relevance, layers=layers)


def inspect(
    model: Model,
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    method: Method = None,
    verbose: bool = False,
) -> Callable[..., Report]:
    """:func:`jaxlrp.inspect` of a Flax model: which rule each layer got and the
    relevance in and out of it.

    A transformation like :func:`lrp`, with the same arguments: the returned function
    takes ``(variables, x)`` (linen) or ``(x)`` / ``(state, x)`` (nnx) and the
    keywords ``target=`` and ``output_relevance=``, and returns a
    :class:`jaxlrp.diagnostics.Report` (its ``repr`` is the table; printed here too
    if ``verbose``). nnx layers are listed under the keys jaxlrp gives layers
    without a name stack, their module paths (``"blocks/0/conv1"``, see
    :func:`module_path`).

    Raises
    ------
    TrainingModeError
        As :func:`lrp`.

    Examples
    --------
    >>> report = jaxlrp.flax.inspect(model, composites.EpsilonPlusFlat(), verbose=False)(variables, x)
    >>> report = jaxlrp.flax.inspect(nnx_model)(x)
    """
    return transform(_jaxlrp_inspect, model, composite, rule=rule, method=method, verbose=verbose)


# ----------------------------------------------------------------- linen -> nnx


def _collection(var: Any) -> Optional[str]:
    if isinstance(var, nnx.BatchStat):
        return "batch_stats"
    if isinstance(var, nnx.Param):
        return "params"
    return None


def load_linen_variables(model: nnx.Module, variables: Mapping) -> None:
    """Set the weights of an nnx model from the variables of a linen model with the
    same structure (in place, like ``nnx.update``).

    An nnx ``Param`` at attribute path ``a/b/kernel`` takes
    ``variables["params"]["a"]["b"]["kernel"]``, a ``BatchStat`` takes the entry of
    ``variables["batch_stats"]``. Values keep their dtype, so that the nnx model
    computes what the linen model computes (flax keeps BatchNorm statistics in
    float32 by default, in linen and nnx alike). Other nnx state (random streams) is
    left alone. The nnx model may be abstract (built with ``nnx.eval_shape``, which
    skips the random initialisation); then give its random streams keys with
    ``nnx.reseed(model, default=0)``. The zoo's linen and nnx models
    have the same structure, so weights imported with
    :func:`jaxlrp.models.load_torchvision` go into the nnx zoo this way.

    Raises
    ------
    ValueError
        Naming the nnx variables without a linen value, the linen values that were
        not used, and any shape mismatch.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"expected an nnx module, got {type(model).__name__}")
    state = nnx.state(model)
    used, missing, mismatched, updates = set(), [], [], []
    for path, var in nnx.to_flat_state(state):
        coll = _collection(var)
        if coll is None:
            continue
        value = _paths.lookup(variables.get(coll, {}), path)
        name = "/".join((coll,) + tuple(str(p) for p in path))
        if value is None or isinstance(value, Mapping):
            missing.append(name)
            continue
        used.add((coll,) + tuple(str(p) for p in path))
        if tuple(jnp.shape(value)) != tuple(var.get_value().shape):
            mismatched.append(f"{name}: linen {tuple(jnp.shape(value))}, nnx {tuple(var.get_value().shape)}")
            continue
        updates.append((var, value))
    unexpected = [
        "/".join((coll,) + key)
        for coll in ("params", "batch_stats")
        for key in traverse_util.flatten_dict(variables.get(coll, {}))
        if (coll,) + key not in used
    ]
    problems = []
    if missing:
        problems.append(f"nnx variables without a linen value: {', '.join(missing)}")
    if unexpected:
        problems.append(f"linen variables with no nnx counterpart: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise ValueError("cannot load the linen variables into the nnx model: " + "; ".join(problems))
    for var, value in updates:
        var.set_value(jnp.asarray(value))
    nnx.update(model, state)
