"""``lrp`` and ``value_and_lrp``: LRP as a function transformation.

``jaxlrp.lrp(fn, composite=...)`` returns a function with ``fn``'s signature that
returns the relevance of one argument (by default the last) for a chosen output, the
way :func:`jax.grad` returns a gradient. The function is traced to a jaxpr,
re-evaluated by the LRP interpreter (:mod:`jaxlrp._core.interpreter`) and differentiated
with :func:`jax.vjp`, seeded with the output relevance. The result composes with
:func:`jax.jit`, :func:`jax.vmap` and sharded inputs like any JAX function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union, cast

import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from . import composites as _composites
from ._core.checks import is_nnx_module
from ._core.eager import CompiledCall
from ._core.errors import AmbiguousOutputWarning
from ._core.run import model_output, per_layer, run, selected, unflatten_relevance
from ._core.trace import trace
from ._core.types import Array, LayerSelection, Matcher, Target
from .composites import Composite
from .rules import Rule

__all__ = ["lrp", "value_and_lrp", "Explainer", "AmbiguousOutputWarning", "Target", "LayerSelection"]


def _selection(layers: LayerSelection) -> list[Matcher]:
    """The matchers of ``layers=``: the entries of a list or tuple, or the one matcher."""
    if layers is None:
        return []
    return list(layers) if isinstance(layers, (list, tuple)) else [cast(Matcher, layers)]


def _for_nnx(transformation: Callable, model: Any, composite, rule, **options: Any) -> Callable:
    """``transformation`` of a Flax nnx module, through :func:`jaxlrp.flax.transform`
    (imported here: ``fn`` being an nnx module means Flax is installed)."""
    from . import flax as _flax

    return _flax.transform(transformation, model, composite, rule=rule, **options)


@dataclasses.dataclass(frozen=True, eq=False)
class Explainer:
    """A function and the rules that explain it: what :func:`lrp` and
    :func:`value_and_lrp` return.

    Called like ``fn`` (``explainer(*args, target=..., output_relevance=...,
    layers=...)``, see :func:`lrp`), it returns the relevance, or ``(output,
    relevance)`` when ``with_value``. It is a frozen, immutable object whose fields
    say how it explains, the way an Optax ``GradientTransformation`` is a pair of pure
    functions: :func:`jaxlrp.explain_dataset` reads them to describe a run. It composes
    with :func:`jax.jit`, :func:`jax.vmap` and :func:`jax.grad` like ``fn`` (it is
    hashed and compared by identity), and carries ``fn``'s name and docstring.

    Attributes
    ----------
    fn:
        The explained function.
    composite:
        The rules, resolved (a preset name or ``rule=`` becomes a
        :class:`~jaxlrp.composites.Composite`).
    argnums, start, example_axes, relevance_dtype:
        As given to :func:`lrp`.
    with_value:
        Whether a call returns ``(output, relevance)`` (:func:`value_and_lrp`).
    """

    fn: Callable[..., Array]
    composite: Composite
    argnums: Union[int, Sequence[int], None] = None
    start: Optional[str] = None
    example_axes: Optional[int] = None
    with_value: bool = False
    relevance_dtype: Optional[DTypeLike] = jnp.float32
    _compiled: CompiledCall = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            if hasattr(self.fn, name):
                object.__setattr__(self, name, getattr(self.fn, name))
        # an eager call runs as one compiled program, cached here (see CompiledCall)
        object.__setattr__(self, "_compiled", CompiledCall(self._explain, self.argnums, self.start))

    def __call__(
        self, *args: Any, target: Target = None, output_relevance: Optional[ArrayLike] = None,
        layers: LayerSelection = None,
    ) -> Any:
        found = self._compiled(args, target, output_relevance, layers)
        out, relevance = self._explain(args, target, output_relevance, layers) if found is None else found
        return (out, relevance) if self.with_value else relevance

    def _explain(self, args: tuple, target: Target, output_relevance: Optional[ArrayLike],
                 layers: LayerSelection) -> tuple[Array, Any]:
        t = trace(self.fn, self.composite, self.argnums, args, start=self.start, example_axes=self.example_axes,
                  relevance_dtype=self.relevance_dtype)
        matcher = None
        if layers is not None:
            patterns = _selection(layers)
            matcher = _composites.any_of(*patterns)  # a typo of a kind raises here
            # a name/parameter pattern that matches nothing: warn (or raise)
            _composites.check_matches(patterns, t.layers, strict=self.composite.strict, where="layers= pattern")
        out, rel, tap_rel = run(t, target, output_relevance, selected(t, matcher))
        out, relevance = model_output(t, out), unflatten_relevance(t, rel)
        if layers is None:
            return out, relevance
        return out, (relevance, per_layer(t, tap_rel))


def value_and_lrp(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    start: Optional[str] = None,
    example_axes: Optional[int] = None,
    relevance_dtype: Optional[DTypeLike] = jnp.float32,
) -> Callable[..., tuple[Array, Any]]:
    """Like :func:`lrp`, but the returned function gives ``(output, relevance)``.

    With ``layers=``, it gives ``(output, (relevance, per_layer))``.
    """
    if is_nnx_module(fn):
        return _for_nnx(value_and_lrp, fn, composite, rule, argnums=argnums, start=start, example_axes=example_axes,
                        relevance_dtype=relevance_dtype)
    return Explainer(fn, _composites.resolve(composite, rule), argnums, start, example_axes, with_value=True,
                     relevance_dtype=relevance_dtype)


def lrp(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    start: Optional[str] = None,
    example_axes: Optional[int] = None,
    relevance_dtype: Optional[DTypeLike] = jnp.float32,
) -> Callable[..., Any]:
    """Layer-wise relevance propagation of ``fn`` as a function transformation.

    Parameters
    ----------
    fn:
        A JAX function, e.g. ``model.apply`` of a Flax module, or an Equinox
        module's call (``lambda m, x: jax.vmap(m)(x)``), or a Flax nnx module
        itself (then the explainer takes ``(x)`` or ``(state, x)`` and names
        layers by module path, as :func:`jaxlrp.flax.lrp` does). It must return one
        floating-point array whose last axis indexes the outputs to explain (the
        leading axes index examples), or a scalar. Leaves of the arguments that
        are not arrays (activation functions, strings, ``None``) are static, as
        ``equinox.filter_jit`` treats them.
    composite:
        Which rule each layer gets: a :class:`~jaxlrp.composites.Composite` or a
        preset name such as ``"epsilon_plus_flat"``. Default: LRP-ε (``ε=1e-6``) on
        every dense and conv layer.
    rule:
        Instead of ``composite``: one rule for every layer of a kind it supports
        (``rules.Zero()`` is LRP-0 on dense and conv layers and on sums: gradient x
        input on ReLU networks, residual ones included).
    argnums:
        Which positional argument(s) to explain. The default is the **last**
        argument (``jax.grad``'s is the first), so that ``model.apply(variables,
        x)`` explains ``x``. Pytrees are allowed; the relevance has the same
        structure (``None`` at static leaves).
    start:
        Explain from a layer's output instead of an argument: a glob matched
        against module paths (name stacks, e.g. ``"*/word_embeddings"``) and
        parameter paths (e.g. ``"*embedding*"``). For models that take token ids:
        the relevance of the embedding output is returned (a tuple if the pattern
        selects several values), with no change to the model.
    example_axes:
        How many leading axes of the output index examples. Default: all but the
        last (a 1-D output is one example's outputs; a warning is given when that
        is ambiguous). ``example_axes=out.ndim`` means each example has one output,
        which is the initial relevance.
    relevance_dtype:
        The float in which relevance travels between layers where the model
        computes in a narrower one (bfloat16, float16). JAX keeps a value's
        cotangent in the value's dtype, so without this a bfloat16 model's
        relevance is rounded to 8 bits after every operation. With it, the model
        is evaluated in float32 from its bfloat16 parameters and inputs: each
        operation runs on float32 copies of its operands and is not rounded
        back (the model's own casts still round), so that the relevance stays
        float32 and a sum that bfloat16 would round to exactly 0 still passes its
        summands' relevance. The returned relevance has the explained argument's
        dtype; the returned output is rounded to the model's dtype (it differs
        from the jitted model's by that model's own rounding). Costs float32
        activations in the backward pass. ``None`` carries relevance in the
        model's own dtypes. No effect on a model that computes in float32 or
        wider only (docs: "Explaining an LLM across devices").

    Returns
    -------
    callable
        ``explain(*args, target=None, output_relevance=None, layers=None)``:

        * ``target``: an int, or an int array of the output's example shape
          ``out.shape[:-1]``, or ``None`` for each example's argmax. The initial
          relevance is the selected output's value (so with conservative rules the
          relevance of one example sums to ``f_c(x)``). A target out of range
          raises ``ValueError`` when it is concrete; under ``jit`` or ``vmap``,
          where it is traced, that example's relevance is NaN. For dense outputs
          (segmentation maps, regression fields), ``target`` may also be a
          boolean or float *mask* broadcastable to the output's shape: the
          initial relevance is ``mask * f(x)``, the output on a region of
          pixels and channels (docs: "Dense outputs").
        * ``output_relevance``: the initial relevance itself (shape of the output);
          a one-hot gives Zennit's convention.
        * ``layers``: a matcher (or list of matchers, see
          :mod:`jaxlrp.composites`); then ``(relevance, per_layer)`` is returned,
          ``per_layer`` mapping each matched layer's key to the relevance arriving at
          its input (a tuple for layers with several inputs, such as residual adds).
          A layer in a ``lax.scan`` body (scanned layers, ``nn.scan``) is reported
          once, stacked over the iterations (leading axis: the scan's length); one
          in a ``cond`` branch or ``shard_map`` body raises
          ``UnsupportedOperationError``.

        The relevance has the shape and dtype of the explained argument.

    Raises
    ------
    UnsupportedOperationError
        An operation on the relevance path has no rule (at trace time).
    TrainingModeError
        The relevance path reduces over the example axes (batch statistics) or
        uses random numbers (active dropout).

    Examples
    --------
    >>> explain = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
    >>> R = jax.jit(explain)(variables, x, target=3)
    """
    if is_nnx_module(fn):
        return _for_nnx(lrp, fn, composite, rule, argnums=argnums, start=start, example_axes=example_axes,
                        relevance_dtype=relevance_dtype)
    return Explainer(fn, _composites.resolve(composite, rule), argnums, start, example_axes,
                     relevance_dtype=relevance_dtype)
