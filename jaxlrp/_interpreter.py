"""The LRP interpreter: evaluate a program so that its VJP is the LRP backward pass.

Two stages, modelled on ``jax._src.core.eval_jaxpr``:

1. :func:`jaxlrp._analysis.analyze` walks the flattened program once, statically:
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
from ._analysis import Analysis, NodeSpec, _inexact, relu_gated
from ._program import Eqn, Lit, Var, replay
from .rules import Node, after


# -------------------------------------------------------------------------- evaluation


def _node_call(spec: NodeSpec, rule, apply, example_ndim: int, fold=None, gated: bool = False):
    """A function ``(inputs, weight, scale, bias) -> z`` whose VJP is ``rule``.

    ``scale`` (or ``None``) is a folded per-channel scale (BatchNorm's): the forward
    pass applies it to the output, as the model did, and the rule sees the folded
    weight ``fold(weight, scale)``, built only in the backward pass so that no
    folded copy of the weights is kept alive between the two passes.
    """
    kind = spec.layer.kind

    def forward(inputs, weight, scale, bias):
        z = apply(inputs, weight)
        if scale is not None:
            z = z * scale.astype(z.dtype)
        return z if bias is None else z + bias

    @jax.custom_vjp
    def call(inputs, weight, scale, bias):
        return forward(inputs, weight, scale, bias)

    def fwd(inputs, weight, scale, bias):
        z = forward(inputs, weight, scale, bias)
        return z, (inputs, weight, scale, bias, z)

    def bwd(res, relevance):
        inputs, weight, scale, bias, z = res
        if scale is not None:
            weight = fold(after(weight, relevance), scale)
        rel = rule(Node(kind, inputs, weight, bias, z, apply, example_ndim, spec.nonnegative, gated,
                        spec.layer.primitive), relevance)
        return tuple(r.astype(x.dtype) for r, x in zip(rel, inputs)), None, None, None

    call.defvjp(fwd, bwd)
    return call


def _passthrough(kind: str, rule, example_ndim: int, apply=None):
    """``(source, value) -> value`` sending the relevance of ``value`` to ``source``
    through ``rule`` (activations: Pass by default; softmax: its rule; ``apply``
    recomputes ``value`` from ``source``)."""

    @jax.custom_vjp
    def call(source, value):
        return value

    def fwd(source, value):
        return value, (source, value)

    def bwd(res, relevance):
        source, value = res
        (r,) = rule(Node(kind, (source,), None, None, value, apply, example_ndim), relevance)
        return r.astype(source.dtype), None

    call.defvjp(fwd, bwd)
    return call


def evaluate(
    an: Analysis, rules: dict, args: list, taps: Optional[dict] = None, example_ndim: int = 0,
    starts: Optional[dict] = None, masks: Optional[dict] = None,
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
    their output is ``<= 0`` tell their rules so (:func:`jaxlrp._analysis.relu_gated`;
    not under ``masks``, whose ``s * z`` term gives relevance there).
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
                passed[a] = _passthrough("activation", rules[spec.layer.index], example_ndim,
                                         _region_map(an, spec, raw))(env[spec.origin], env[a])
            return passed[a]
        return raw(a)

    for v, x in zip(prog.invars, args):
        env[v] = x
    for i, e in enumerate(prog.eqns):
        kind = an.plan[i]
        if kind == "skip":
            continue
        if kind == "region":
            outs = e.bind(*[raw(a) for a in e.invars])
        elif kind == "node":
            spec = an.nodes[i]
            env[spec.out] = _eval_node(
                an, spec, rules[spec.layer.index], read, raw, taps.get(spec.layer.index), example_ndim,
                spec.layer.index in gated,
            )
            if spec.layer.index in masks:
                env[spec.out] = _condition(env[spec.out], *masks[spec.layer.index])
            continue
        elif kind == "control":
            outs = _CONTROL[e.prim.name](e, an.subs[i], rules, [read(a) for a in e.invars], example_ndim)
        else:
            outs = e.bind(*[read(a) for a in e.invars])
        for v, x in zip(e.outvars, outs):
            env[v] = x + starts[v] if v in starts else x
    return [read(a) for a in prog.outvars]


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


def _region_map(an: Analysis, spec: NodeSpec, raw):
    """``apply(xs, _)`` recomputing an activation's value from its origin ``xs[0]``
    (evaluated only by rules that call it, e.g. :class:`~jaxlrp.rules.Gradient`)."""

    def apply(xs, w):
        return replay(an.program, spec.replay, {spec.origin: xs[0]}, raw)[spec.out]

    return apply


def _eval_softmax(an: Analysis, spec: NodeSpec, rule, read, raw, tap, example_ndim: int) -> Any:
    """A recognised softmax: its value as computed, relevance to its source."""
    source = read(spec.origin)
    if tap is not None:
        source = source + tap[0][0]

    def apply(xs, w):
        return replay(an.program, spec.replay, {spec.origin: xs[0]}, raw)[spec.out]

    value = an.program.eqns[spec.eqn].bind(*[raw(a) for a in an.program.eqns[spec.eqn].invars])[0]
    z = _passthrough("softmax", rule, example_ndim, apply)(source, value)
    return z if tap is None else z + tap[1]


def _eval_node(an: Analysis, spec: NodeSpec, rule, read, raw, tap, example_ndim: int, gated: bool = False) -> Any:
    if spec.layer.kind == "softmax":
        return _eval_softmax(an, spec, rule, read, raw, tap, example_ndim)
    e = an.program.eqns[spec.eqn]
    ops = [read(a) for a in e.invars]
    inputs = tuple(ops[k] for k in spec.tainted)
    if tap is not None:
        inputs = tuple(x + t for x, t in zip(inputs, tap[0]))
    weight = bias = scale = fold = None
    if spec.weight is not None:
        weight = ops[spec.weight]
        apply, scale, bias, fold = _layer_map(an, spec, ops, raw)
    elif spec.affine:
        apply, bias = _affine_map(spec, e, ops)
    else:
        apply = _rebind(e, ops, spec.tainted)
    z = _node_call(spec, rule, apply, example_ndim, fold, gated)(inputs, weight, scale, bias)
    if tap is not None:
        z = z + tap[1]
    return z


def _rebind(e: Eqn, ops: list, positions: tuple, weight_pos: Optional[int] = None, then: tuple = ()):
    """``apply(xs, w)``: ``e`` re-bound with ``xs`` at ``positions`` (and ``w`` at
    ``weight_pos``), the other operands as in ``ops``, followed by the one-operand
    equations ``then``."""

    def apply(xs, w):
        args = list(ops)
        for k, x in zip(positions, xs):
            args[k] = x
        if weight_pos is not None:
            args[weight_pos] = w
        z = e.bind(*args)[0]
        for s_eqn in then:
            (z,) = s_eqn.bind(z)
        return z

    return apply


def _layer_map(an: Analysis, spec: NodeSpec, ops: list, raw) -> tuple:
    """``(apply, scale, bias, fold)`` of a dense/conv node and its folded chain.

    ``apply`` is the layer's own map (the primitive, then psum and size-1
    reshapes); the chain's shifts and scales become ``bias`` and ``scale`` (or
    ``None``), and ``fold(w, scale)`` builds the folded weight.
    """
    e, chain = an.program.eqns[spec.eqn], spec.chain
    assert chain is not None  # every dense/conv node has one
    shaping = tuple(an.program.eqns[j] for j in chain.post + tuple(j for j in chain.members if j in chain.reshapes))
    apply = _rebind(e, ops, spec.tainted, spec.weight, shaping)
    scale = bias = fold = None
    if any(j not in chain.reshapes for j in chain.members):
        start = (an.program.eqns[chain.post[-1]] if chain.post else e).outvars[0]
        a, bias = canonize.chain_coefficients(an.program, chain, start, start.dtype, raw)
        if chain.scales:
            scale = a

            def fold(w, a):
                return canonize.fold_scale(w, a, chain.out_axes)

    return apply, scale, bias, fold


def _affine_map(spec: NodeSpec, e: Eqn, ops: list) -> tuple:
    """``(apply, bias)`` of a sum node whose untainted float operands are a bias:
    ``apply`` sees them as zeros, ``bias`` is the equation with zero inputs."""
    constant = [k not in spec.tainted and _inexact(a) for k, a in enumerate(e.invars)]
    bias = None
    if any(constant):
        bias = e.bind(*[jnp.zeros_like(x) if k in spec.tainted else x for k, x in enumerate(ops)])[0]

    def apply(xs, w):
        # the zeros are made when ``apply`` runs (in the backward pass, under the
        # rule's trace): zeros made here would leak out of a scan body's trace
        args = [jnp.zeros(a.shape, a.dtype) if c else x for a, x, c in zip(e.invars, ops, constant)]
        return _rebind(e, args, spec.tainted)(xs, w)

    return apply, bias


def _eval_scan(e: Eqn, subs: list, rules: dict, vals: list, example_ndim: int) -> list:
    (sub,) = subs
    p = e.params
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = vals[:nc], vals[nc:nc + nk], vals[nc + nk:]
    # A carry that becomes tainted inside the body must have the body's dtype.
    init = [jnp.asarray(x, v.dtype) for x, v in zip(init, sub.program.invars[nc:nc + nk])]

    def step(carry, x):
        outs = evaluate(sub, rules, [*consts, *carry, *x], example_ndim=example_ndim)
        return outs[:nk], outs[nk:]

    carry, ys = jax.lax.scan(step, init, xs, length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
    return [*carry, *ys]


def _eval_cond(e: Eqn, subs: list, rules: dict, vals: list, example_ndim: int) -> list:
    index, ops = vals[0], vals[1:]
    branches = [lambda *xs, s=s: evaluate(s, rules, list(xs), example_ndim=example_ndim) for s in subs]
    return list(jax.lax.switch(index, branches, *ops))


def _eval_shard_map(e: Eqn, subs: list, rules: dict, vals: list, example_ndim: int) -> list:
    (sub,) = subs
    p = e.params
    inner = jax.shard_map(
        lambda *xs: tuple(evaluate(sub, rules, list(xs), example_ndim=example_ndim)),
        mesh=p["mesh"], in_specs=p["in_specs"], out_specs=p["out_specs"],
        axis_names=p["newly_manual_axes"], check_vma=p["check_vma"],
    )
    return list(inner(*vals))


_CONTROL = {"scan": _eval_scan, "cond": _eval_cond, "shard_map": _eval_shard_map}
