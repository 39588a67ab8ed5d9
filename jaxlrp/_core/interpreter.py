"""The LRP interpreter: evaluate a program so that its VJP is the LRP backward pass.

Two stages, modelled on ``jax._src.core.eval_jaxpr``:

1. :func:`jaxlrp._core.analysis.analyze` walks the flattened program once, statically:
   which values carry relevance, and which equations are rule-bearing nodes
   (layers), activation regions, routing or control flow;
2. :func:`evaluate` runs the program. Each node becomes a ``jax.custom_vjp`` whose
   backward pass calls the node's rule: the cotangent *is* the relevance. The
   caller differentiates the whole evaluation with ``jax.vjp``.

The interpreter knows rules only through their ``__call__(node, relevance)``
interface, and primitives only through the analysis' plan.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from . import canonize
from . import primitives as P
from .analysis import Analysis, LayerSpec, NodeSpec, ReplaySpec, inexact, relu_gated
from .program import Eqn, Lit, Var, replay
from .engine import Node, depend
from .widening import NONE, Widening


# -------------------------------------------------------------------------- evaluation


def _node_call(spec: NodeSpec, rule, apply, example_ndim: int, fold=None, gated: bool = False,
               parameters: bool = False):
    """A function ``(inputs, weight, scale, bias, context) -> z`` whose VJP is ``rule``.

    ``apply(inputs, weight, context)`` is the layer's map; ``context`` holds the
    other traced operands it reads. They are operands of the custom VJP, so that the
    backward pass reads them from its residuals: a closure over forward values
    would leak tracers of a trace that is gone when a ``lax.scan`` body is
    transposed. ``scale`` (or ``None``) is a folded per-channel scale (BatchNorm's):
    the forward pass applies it to the output, as the model did, and the rule sees
    the folded weight ``fold(weight, scale)``, built only in the backward pass so
    that no folded copy of the weights is kept alive between the two passes.

    With ``parameters`` (a dense/conv node, see :func:`evaluate`) the rule also
    gives the relevance of the weight and the bias share, returned as their
    cotangents (:func:`_parameter_cotangents`). Under a widening ``apply`` computes
    wide (see :mod:`jaxlrp._core.widening`), and so does ``z``.
    """
    kind = spec.layer.kind

    def forward(inputs, weight, scale, bias, context):
        z = apply(inputs, weight, context)
        if scale is not None:
            z = z * scale.astype(z.dtype)
        return z if bias is None else z + bias

    @jax.custom_vjp
    def call(inputs, weight, scale, bias, context):
        return forward(inputs, weight, scale, bias, context)

    def fwd(inputs, weight, scale, bias, context):
        z = forward(inputs, weight, scale, bias, context)
        return z, (inputs, weight, scale, bias, context, z)

    def bwd(res, relevance):
        inputs, weight, scale, bias, context, z = res
        if scale is not None:
            weight = fold(depend(weight, relevance), scale)
        bound = _bound(apply, context)
        rel = rule(Node(kind, inputs, weight, bias, z, bound, example_ndim, spec.nonnegative, gated,
                        spec.layer.primitive, parameters), relevance)
        w_ct = b_ct = None
        if parameters:
            rel, w_ct, b_ct = _parameter_cotangents(spec, rule, rel, len(inputs), res[1], bias)
        return tuple(r.astype(x.dtype) for r, x in zip(rel, inputs)), w_ct, None, b_ct, _no_cotangent(context)

    call.defvjp(fwd, bwd)
    return call


def _parameter_cotangents(spec: NodeSpec, rule, rel: tuple, n: int, weight, bias) -> tuple:
    """Split a rule's result into ``(input relevance, weight relevance, bias share)``."""
    if len(rel) != n + 2:
        raise TypeError(f"rule {rule!r} of layer {spec.layer.name!r} has parameter_relevance set but did not "
                        "return the weight and bias relevance (return propagate's result unchanged)")
    w_rel, b_rel = rel[n], rel[n + 1]
    b_ct = None if bias is None or b_rel is None else b_rel.astype(bias.dtype)
    return tuple(rel[:n]), w_rel.astype(weight.dtype), b_ct


def _bound(apply, context):
    """``apply(xs, w, context)`` as the rules see it: ``(xs, w) -> z``."""
    return lambda xs, w: apply(xs, w, context)


def _no_cotangent(context: tuple) -> tuple:
    return tuple(None for _ in context)


def _passthrough(kind: str, rule, example_ndim: int, apply=None):
    """``(source, value, context) -> value`` sending the relevance of ``value`` to
    ``source`` through ``rule`` (activations: Pass by default; softmax: its rule).
    ``apply(xs, w, context)`` recomputes ``value`` from ``source`` and the traced
    values ``context`` (residuals, as in :func:`_node_call`), for rules that call it.
    """

    @jax.custom_vjp
    def call(source, value, context):
        return value

    def fwd(source, value, context):
        return value, (source, value, context)

    def bwd(res, relevance):
        source, value, context = res
        bound = None if apply is None else _bound(apply, context)
        (r,) = rule(Node(kind, (source,), None, None, value, bound, example_ndim), relevance)
        return r.astype(source.dtype), None, _no_cotangent(context)

    call.defvjp(fwd, bwd)
    return call


def evaluate(
    an: Analysis, rules: dict, args: list, taps: Optional[dict] = None, example_ndim: int = 0,
    starts: Optional[dict] = None, masks: Optional[dict] = None, parameters: bool = False,
    widening: Widening = NONE,
) -> list:
    """Run the analysed program on ``args``; differentiate the result with ``jax.vjp``.

    ``rules`` maps layer index to rule. ``taps`` maps layer index to
    ``(input_taps, output_tap)``: zero arrays added to the node's relevance-carrying
    inputs and output, so that their cotangents are the relevance there.
    ``starts`` maps the analysis' start variables to zero arrays added to them in
    the same way. ``example_ndim`` is passed to the rules (see
    :class:`~jaxlrp.rules.Node`). ``masks`` maps layer index to ``(m, s)`` (arrays
    broadcastable to the node's output, ``s`` may be ``None``): the relevance ``R``
    at the node's output (after the tap) becomes ``m * R + s * z`` in the backward
    pass (:func:`_condition`). Layers whose output relevance is provably zero where
    their output is ``<= 0`` tell their rules so (:func:`jaxlrp._core.analysis.relu_gated`;
    not under ``masks``, whose ``s * z`` term gives relevance there). With
    ``parameters``, dense and conv nodes also return the relevance of their weight
    and bias share as those operands' cotangents (differentiate with respect to
    the parameters: :mod:`jaxlrp._core.parameters`). Under a ``widening``
    (:mod:`jaxlrp._core.widening`) narrow float values are carried wide, and so is
    their relevance; the outputs are carried values.
    """
    taps, masks = taps or {}, masks or {}
    gated = frozenset() if masks else relu_gated(an, rules)
    starts = starts or {}
    prog = an.program
    env: dict = {}
    passed: dict = {}

    def raw(a):
        return a.val if isinstance(a, Lit) else env[a]

    def read(a):
        if isinstance(a, Var) and a in an.activations:
            if a not in passed:
                spec = an.activations[a]
                apply, outer = _region_map(an, spec, widening)
                passed[a] = _passthrough("activation", rules[spec.layer.index], example_ndim, apply)(
                    env[spec.origin], env[a], tuple(raw(v) for v in outer))
            return passed[a]
        return raw(a)

    for v, x in zip(prog.invars, args):
        env[v] = x
    for i, e in enumerate(prog.eqns):
        kind = an.plan[i]
        if kind == "skip":
            continue
        if kind == "region":
            outs = widening.bind(e, [raw(a) for a in e.invars])
        elif kind == "node":
            spec = an.nodes[i]
            env[spec.out] = _eval_node(
                an, spec, rules[spec.layer.index], read, raw, taps.get(spec.layer.index), example_ndim,
                spec.layer.index in gated, parameters, widening,
            )
            if spec.layer.index in masks:
                env[spec.out] = _condition(env[spec.out], *masks[spec.layer.index])
            continue
        elif kind == "control":
            outs = CONTROL_FLOW[e.prim.name](e, an.subs[i], rules, [read(a) for a in e.invars], example_ndim, taps,
                                         parameters, widening)
        else:
            outs = widening.bind(e, [read(a) for a in e.invars])
        for v, x in zip(e.outvars, outs):
            env[v] = x + starts[v] if v in starts else x
    return [widening.value(read(a)) for a in prog.outvars]


@jax.custom_vjp
def _condition(z, m, s):
    """Identity on ``z``; the backward pass turns the relevance ``R`` into ``m * R + s * z``."""
    return z


def _condition_fwd(z, m, s):
    return z, (z, m, s)


def _condition_bwd(res, relevance):
    z, m, s = res
    r = relevance * m if s is None else relevance * m + s * z
    return r.astype(relevance.dtype), None, None


_condition.defvjp(_condition_fwd, _condition_bwd)


def _region_map(an: Analysis, spec: ReplaySpec, widening: Widening = NONE) -> tuple:
    """``(apply, outer)``: ``apply(xs, _, context)`` recomputes an activation's or a
    softmax's value from its origin ``xs[0]`` and the values of ``outer`` (the other variables its
    equations read) given as ``context``; evaluated only by rules that call it, e.g.
    :class:`~jaxlrp.rules.Gradient`."""
    outer = _replay_inputs(an, spec)

    def apply(xs, w, context):
        return replay(an.program, spec.replay, {spec.origin: xs[0], **dict(zip(outer, context))}, _literal,
                      widening.bind)[spec.out]

    return apply, outer


def _eval_softmax(an: Analysis, spec: ReplaySpec, rule, read, raw, tap, example_ndim: int,
                  widening: Widening) -> Any:
    """A recognised softmax: its value as computed, relevance to its source.

    The replay that recomputes the softmax from its source reads other values of
    the program (the max it subtracts, masks): they travel as the context.
    """
    source = read(spec.origin)
    if tap is not None:
        source = source + tap[0][0]
    apply, outer = _region_map(an, spec, widening)
    e = an.program.eqns[spec.eqn]
    value = widening.bind(e, [raw(a) for a in e.invars])[0]
    z = _passthrough("softmax", rule, example_ndim, apply)(source, value, tuple(raw(v) for v in outer))
    return z if tap is None else z + tap[1]


def _replay_inputs(an: Analysis, spec: ReplaySpec) -> tuple:
    """The variables a replay (softmax, activation) reads besides its source, in order."""
    made, outer = {spec.origin}, []
    for j in spec.replay:
        e = an.program.eqns[j]
        outer += [a for a in e.invars if isinstance(a, Var) and a not in made and a not in outer]
        made.update(e.outvars)
    return tuple(outer)


def _literal(a: Lit) -> Any:
    return a.val


def _eval_node(an: Analysis, spec: NodeSpec, rule, read, raw, tap, example_ndim: int, gated: bool = False,
               parameters: bool = False, widening: Widening = NONE) -> Any:
    if isinstance(spec, ReplaySpec):  # a softmax (activations are read through their region)
        return _eval_softmax(an, spec, rule, read, raw, tap, example_ndim, widening)
    e = an.program.eqns[spec.eqn]
    ops = [read(a) for a in e.invars]
    inputs = tuple(ops[k] for k in spec.tainted)
    if tap is not None:
        inputs = tuple(x + t for x, t in zip(inputs, tap[0]))
    weight = bias = scale = fold = None
    if isinstance(spec, LayerSpec):
        weight = ops[spec.weight]
        apply, context, scale, bias, fold = _layer_map(an, spec, ops, raw, widening)
        if parameters and bias is not None and not plain_bias(an, spec):
            bias = jax.lax.stop_gradient(bias)  # a folded norm's shift: no share routed to its parameters
    elif spec.affine:
        apply, context, bias = _affine_map(spec, e, ops, widening)
    else:
        apply, context = _rebind(e, ops, spec.tainted, widening=widening)
    z = _node_call(spec, rule, apply, example_ndim, fold, gated, parameters and weight is not None)(
        inputs, weight, scale, bias, context)
    if tap is not None:
        z = z + tap[1]
    return z


def plain_bias(an: Analysis, spec: LayerSpec) -> bool:
    """Whether a dense/conv node's folded bias is a sum of added parameters (no
    scale, no subtraction), so that its share routes back to them unchanged."""
    chain = spec.chain
    return not chain.scales and all(
        an.program.eqns[j].prim.name in P.PLAIN_SHIFTS for j in chain.members if j not in chain.reshapes)


def _rebind(
    e: Eqn, ops: list, positions: tuple, weight_pos: Optional[int] = None, then: tuple = (), zeroed: tuple = (),
    widening: Widening = NONE,
) -> tuple:
    """``(apply, context)``: ``apply(xs, w, context)`` is ``e`` re-bound with ``xs``
    at ``positions`` (and ``w`` at ``weight_pos``), zeros at ``zeroed``, the other
    operands from ``context`` (their values in ``ops``) or the literals, followed by
    the one-operand equations ``then``; under a ``widening``, in its dtype."""
    bind = widening.bind
    free = tuple(k for k, a in enumerate(e.invars) if isinstance(a, Var) and k not in positions and k != weight_pos)
    fixed = [a.val if isinstance(a, Lit) else None for a in e.invars]

    def apply(xs, w, context):
        args = list(fixed)
        for k, x in zip(free, context):
            args[k] = x
        for k, x in zip(positions, xs):
            args[k] = x
        if weight_pos is not None:
            args[weight_pos] = w
        for k in zeroed:
            args[k] = jnp.zeros_like(args[k])
        z = bind(e, args)[0]
        for s_eqn in then:
            (z,) = bind(s_eqn, [z])
        return z

    return apply, tuple(ops[k] for k in free)


def _layer_map(an: Analysis, spec: LayerSpec, ops: list, raw, widening: Widening) -> tuple:
    """``(apply, context, scale, bias, fold)`` of a dense/conv node and its folded chain.

    ``apply`` is the layer's own map (the primitive, then psum and size-1
    reshapes); the chain's shifts and scales become ``bias`` and ``scale`` (or
    ``None``), and ``fold(w, scale)`` builds the folded weight.
    """
    e, chain = an.program.eqns[spec.eqn], spec.chain
    shaping = tuple(an.program.eqns[j] for j in chain.post + tuple(j for j in chain.members if j in chain.reshapes))
    apply, context = _rebind(e, ops, spec.tainted, spec.weight, shaping, widening=widening)
    scale = bias = fold = None
    if any(j not in chain.reshapes for j in chain.members):
        start = (an.program.eqns[chain.post[-1]] if chain.post else e).outvars[0]
        a, bias = canonize.chain_coefficients(an.program, chain, start, widening.carried(start.dtype), raw,
                                              widening.bind)
        if chain.scales:
            scale = a

            out_axes = chain.out_axes
            assert out_axes is not None, "a folded scale has an axis map"

            def fold(w, a):
                return canonize.fold_scale(w, a, out_axes)

    return apply, context, scale, bias, fold


def _affine_map(spec: NodeSpec, e: Eqn, ops: list, widening: Widening) -> tuple:
    """``(apply, context, bias)`` of a sum node whose untainted float operands are a
    bias: ``apply`` sees them as zeros, ``bias`` is the equation with zero inputs."""
    constant = tuple(k for k, a in enumerate(e.invars) if k not in spec.tainted and inexact(a))
    bias = None
    if constant:
        bias = widening.bind(e, [jnp.zeros_like(x) if k in spec.tainted else x for k, x in enumerate(ops)])[0]
    apply, context = _rebind(e, ops, spec.tainted, zeroed=constant, widening=widening)
    return apply, context, bias


def layers_within(an: Analysis) -> set:
    """The layer indices of the nodes of ``an`` and of its control-flow bodies."""
    out = {spec.layer.index for spec in an.nodes.values()}
    for subs in an.subs.values():
        for sub in subs:
            out |= layers_within(sub)
    return out


def _eval_scan(e: Eqn, subs: list, rules: dict, vals: list, example_ndim: int, taps: dict,
               parameters: bool = False, widening: Widening = NONE) -> list:
    """``lax.scan`` re-built around the evaluated body. Taps of body layers are
    stacked over the iterations (leading axis ``length``) and scanned with ``xs``."""
    (sub,) = subs
    p = e.params
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = vals[:nc], vals[nc:nc + nk], vals[nc + nk:]
    # A carry that becomes tainted inside the body must have the body's (carried) dtype.
    init = [jnp.asarray(x, widening.carried(v.dtype)) for x, v in zip(init, sub.program.invars[nc:nc + nk])]
    inner = {i: tap for i, tap in taps.items() if i in layers_within(sub)}

    def step(carry, x):
        x, tap = x
        outs = evaluate(sub, rules, [*consts, *carry, *x], tap, example_ndim=example_ndim, parameters=parameters,
                        widening=widening)
        return outs[:nk], outs[nk:]

    remat = _remat_params(e)
    if remat is not None:  # a scan over jax.checkpoint-ed blocks (MaxText's layers): keep it so
        step = jax.checkpoint(step, prevent_cse=remat["prevent_cse"], policy=remat["policy"])
    carry, ys = jax.lax.scan(step, init, (xs, inner), length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
    return [*carry, *ys]


def _remat_params(e: Eqn) -> Optional[dict]:
    """The ``checkpoint`` parameters of a scan whose body holds one ``jax.checkpoint``
    call (``lax.scan`` over ``jax.checkpoint(block)``, ``nn.scan(nn.remat(...))``),
    else ``None``. The flattened body has the call inlined; rematerialising the
    evaluated step keeps the model's memory trade-off: each iteration saves its
    carry, not the rules' residuals."""
    calls = [q for q in e.params["jaxpr"].jaxpr.eqns if q.primitive.name in P.REMAT]
    return calls[0].params if len(calls) == 1 else None


def _eval_cond(e: Eqn, subs: list, rules: dict, vals: list, example_ndim: int, taps: dict,
               parameters: bool = False, widening: Widening = NONE) -> list:
    index, ops = vals[0], vals[1:]
    branches = [lambda *xs, s=s: evaluate(s, rules, list(xs), example_ndim=example_ndim, parameters=parameters,
                                          widening=widening)
                for s in subs]
    return list(jax.lax.switch(index, branches, *ops))


def _eval_shard_map(e: Eqn, subs: list, rules: dict, vals: list, example_ndim: int, taps: dict,
                    parameters: bool = False, widening: Widening = NONE) -> list:
    (sub,) = subs
    p = e.params
    inner = jax.shard_map(
        lambda *xs: tuple(evaluate(sub, rules, list(xs), example_ndim=example_ndim, parameters=parameters,
                                   widening=widening)),
        mesh=p["mesh"], in_specs=p["in_specs"], out_specs=p["out_specs"],
        axis_names=p["newly_manual_axes"], check_vma=p["check_vma"],
    )
    return list(inner(*vals))


#: Control-flow primitive (:data:`jaxlrp._core.primitives.CONTROL`) -> the evaluation
#: of its analysed bodies (:data:`jaxlrp._core.analysis.CONTROL_FLOW`).
CONTROL_FLOW: dict = {"scan": _eval_scan, "cond": _eval_cond, "shard_map": _eval_shard_map}
if set(CONTROL_FLOW) != set(P.CONTROL):
    raise AssertionError("the interpreter needs a handler for every control-flow primitive")
