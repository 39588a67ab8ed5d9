"""The LRP interpreter: evaluate a program so that its VJP is the LRP backward pass.

Two stages, modelled on ``jax._src.core.eval_jaxpr``:

1. :func:`analyze` walks the flattened program once, statically:

   * **taint**: which floating-point variables depend on the explained input.
     Untainted equations (parameter preprocessing, BatchNorm statistics, integer
     index arithmetic) run unchanged and carry no relevance;
   * **regions**: an elementwise operation whose tainted operands all stem from one
     *origin* (and keep its shape) belongs to that origin's activation region
     (``max(x, 0)``, GELU's inline arithmetic, ``x * logistic(x)``, an unfolded
     BatchNorm ...). Region values are computed normally, but whenever a value of a
     region is read outside it, relevance goes straight to the origin through the
     activation rule (:class:`~jaxlrp.rules.Pass` by default);
   * **nodes**: every other tainted equation that mixes values is a rule-bearing
     node: dense/conv layers (fused with the affine chain after them, see
     :mod:`jaxlrp.canonize`), sums, average and max pools, products of two
     tainted values, divisions. A linear map whose other operand is built from
     literals (an interpolation matrix, a mask of ones) is no layer: like the
     routing operations (reshape, slicing, ...) it keeps its plain VJP. Anything
     else raises :class:`~jaxlrp.UnsupportedOperationError`;
   * layer descriptions (:class:`~jaxlrp.composites.Layer`) for the composite, with
     name stack, parameter paths (from data flow), and first/last flags.

2. :func:`evaluate` runs the program. Each node becomes a ``jax.custom_vjp`` whose
   backward pass calls the node's rule: the cotangent *is* the relevance. The
   caller differentiates the whole evaluation with ``jax.vjp``.

The interpreter knows primitives only through :mod:`jaxlrp._primitives` and rules
only through their ``__call__(node, relevance)`` interface.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _primitives as P
from . import canonize
from ._errors import UnsupportedOperationError
from ._program import Eqn, Lit, Program, Var, body, flatten, readers, replay
from .composites import Layer
from .rules import after, Node


def _inexact(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.inexact)


@dataclasses.dataclass(eq=False)
class NodeSpec:
    """A rule-bearing operation: where it is and how to evaluate it."""

    layer: Layer
    eqn: int  # index of the head equation (-1 for activations)
    tainted: tuple = ()  # operand positions of the relevance-carrying inputs
    weight: Optional[int] = None  # operand position of the weight
    chain: Optional[canonize.Chain] = None  # what follows a dense/conv layer and is folded in
    affine: bool = False  # untainted float operands are a bias (add, sub, scatter-add)
    out: Optional[Var] = None
    origin: Optional[Var] = None  # activations, softmax: the source the relevance goes to
    replay: tuple = ()  # softmax: the equations computing the output from ``origin``
    nonnegative: bool = False  # the inputs are known to be >= 0


@dataclasses.dataclass(eq=False)
class Analysis:
    program: Program
    tainted: set
    plan: list  # per equation: "bind", "region", "skip", "node", "scan", "cond"
    nodes: dict  # equation index -> NodeSpec
    activations: dict  # region variable -> NodeSpec
    subs: dict  # equation index -> list of sub-Analysis (scan body, cond branches)
    routed: list  # (eqn index) of tainted routing equations: plain VJP fallbacks
    depth: dict  # tainted variable -> number of dense/conv layers on its path from the input


class _Context:
    """State shared across nested analyses: layer numbering and parameter names."""

    def __init__(self):
        self.layers: list = []

    def new_layer(self, **kw) -> Layer:
        layer = Layer(index=len(self.layers), **kw)
        self.layers.append(layer)
        return layer


def analyze(
    program: Program, in_taint, in_prov, in_depth, ctx: _Context, never_last: bool = False,
    starts: frozenset = frozenset(),
) -> Analysis:
    """Static analysis of ``program`` given which inputs carry relevance.

    ``starts`` are variables computed inside the program where relevance starts
    (the output of an embedding layer): they are explained as if they were inputs.
    """
    tainted: set = {v for v, t in zip(program.invars, in_taint) if t and _inexact(v)}
    # Which variables will depend on the input, known before the main pass (which
    # looks ahead when it folds BatchNorm chains): an over-approximation.
    pre_taint = _taint_prepass(program, tainted | starts)
    prov: dict = {v: p for v, p in zip(program.invars, in_prov) if p}
    from_params = _parameter_prepass(program, set(prov))
    depth: dict = {v: d for v, d in zip(program.invars, in_depth)}
    origin: dict = {}
    # Tags of tainted variables, used to recognise patterns, passed along
    # activations and routing (and, for "inverse", scalings and sums):
    #   "inverse": an inverse of a tainted value (rsqrt, 1/x); "gate", "root",
    #   "probs": a sigmoid / square root / softmax output; "exp": an activation
    #   region containing exp;
    #   sums[v]: origins summed into v (a sum node, through activations and routing).
    tags: dict = {}
    sums: dict = {}
    nonneg: set = set()  # tainted variables that are never negative
    consumers = readers(program)
    outputs = {v for v in program.outvars if isinstance(v, Var)}
    consumers_for_chain = {v: (u if v not in outputs else u + [-1]) for v, u in consumers.items()}
    plan = ["bind"] * len(program.eqns)
    nodes: dict = {}
    subs: dict = {}
    routed: list = []

    def is_t(a) -> bool:
        return isinstance(a, Var) and a in tainted

    def org(a):
        return origin.get(a, a)

    def fail(e: Eqn, reason: str, hint: str = ""):
        raise UnsupportedOperationError(e.prim.name, e.name, reason, hint)

    def param_paths(e: Eqn, pos: int) -> tuple:
        a = e.invars[pos]
        return tuple(sorted(prov.get(a, ()))) if isinstance(a, Var) else ()

    for i, e in enumerate(program.eqns):
        if plan[i] != "bind":  # folded into an earlier layer
            continue
        name = e.prim.name
        tpos = tuple(k for k, a in enumerate(e.invars) if is_t(a))
        outs_inexact = [v for v in e.outvars if _inexact(v)]
        if not tpos or not outs_inexact or name in P.STOP:
            ps = set().union(*(prov.get(a, set()) for a in e.invars if isinstance(a, Var)))
            if ps:
                for v in e.outvars:
                    prov[v] = ps
            for v in starts.intersection(outs_inexact):
                _mark(v, tainted, depth, 0)
            continue
        d_in = max(depth.get(e.invars[k], 0) for k in tpos)
        in_tags = set().union(*(tags.get(e.invars[k], ()) for k in tpos))
        in_sums = set().union(*(sums.get(e.invars[k], ()) for k in tpos))

        def tag(vs, carry=("gate", "root", "probs", "inverse"), extra=()):
            """Tags passed along activations and routing."""
            new = (in_tags & set(carry)) | set(extra)
            for v in vs:
                tags[v] = tags.get(v, set()) | new
                if in_sums:
                    sums[v] = in_sums

        def factor(k, t):
            return t in tags.get(e.invars[k], ())

        if _keeps_sign(e, tpos, nonneg):
            nonneg.update(outs_inexact)

        def make_node(kind, out, at=i, order=tpos, **kw):
            positive = all(e.invars[k] in nonneg for k in order)
            paths = kw.pop("param_paths", ())
            layer = ctx.new_layer(
                kind=kind,
                primitive=name,
                name=e.name or _module_path(paths),
                param_paths=paths,
                first=kind in ("dense", "conv") and d_in == 0,
                input_shapes=tuple(e.invars[k].shape for k in order),
                output_shape=out.shape,
                folded=kw.pop("folded", ()),
                nonnegative=positive,
                constant_weight=kw.pop("constant_weight", False),
            )
            spec = NodeSpec(layer=layer, eqn=i, tainted=order, out=out, nonnegative=positive, **kw)
            # Evaluated where its folded chain ends: the chain's other operands
            # (BatchNorm statistics) may be computed after the head equation.
            nodes[at] = spec
            plan[at] = "node"
            tainted.add(out)
            depth[out] = d_in + (1 if kind in ("dense", "conv") else 0)
            return spec

        if name in P.LINEAR and len(tpos) == 1 and not _is_parameter(e.invars[1 - tpos[0]], from_params):
            # a linear map whose operand is built from constants (jax.image.resize's
            # interpolation matrix, a head mask of ones): no learned layer
            routed.append(i)
            _mark(e.outvars[0], tainted, depth, d_in)
            tag(e.outvars)
        elif name in P.LINEAR and len(tpos) == 1:
            wpos = 1 - tpos[0]
            axis_map = canonize.output_axis_map(e, wpos)
            chain = canonize.affine_chain(
                program, i, axis_map, lambda a: a in pre_taint, consumers_for_chain,
                lambda a: _is_parameter(a, from_params),
            )
            folded = list(chain.post + chain.members)
            for j in [i] + folded[:-1]:
                plan[j] = "skip"
            make_node(
                P.LINEAR[name],
                chain.out,
                at=folded[-1] if folded else i,
                weight=wpos,
                chain=chain,
                param_paths=param_paths(e, wpos),
                folded=tuple(program.eqns[j].prim.name for j in folded),
                constant_weight=not param_paths(e, wpos),  # not computed from an argument
            )
        elif name in P.LINEAR:
            kind = _product_kind(tpos, factor)
            if kind is None:
                fail(e, "matrix product of inverses of input-dependent values")
            make_node(kind[0], e.outvars[0], order=kind[1])
        elif name in P.ELEMENTWISE:
            (out,) = e.outvars
            origins = {org(e.invars[k]) for k in tpos}
            if len(origins) == 1 and out.shape == next(iter(origins)).shape:
                (o,) = origins
                plan[i] = "region"
                tainted.add(out)
                origin[out] = o
                depth[out] = d_in
                tag([out], carry=("gate", "root", "probs", "exp", "inverse"),
                    extra=[t for t, ps in (("gate", P.GATING), ("root", P.ROOTS), ("exp", {"exp", "exp2"}))
                           if name in ps] + (["inverse"] if _inverts(e, tpos) else []))
            elif name in P.AFFINE:
                make_node("sum", out, affine=True)
                tag([out], carry=("inverse",))
            elif name == "mul" and len(tpos) == 1:
                make_node("sum", out)  # scaling with broadcasting: a linear map
                tag([out], carry=("inverse",))
            elif name == "div" and tpos == (0,):
                make_node("sum", out)
                tag([out], carry=("inverse",))
            elif name == "mul":
                kind = _product_kind(tpos, factor)
                if kind is None:
                    fail(e, "product of inverses of input-dependent values", "wrap the normalisers in "
                         "jax.lax.stop_gradient to treat them as constants")
                make_node(kind[0], out, order=kind[1])
            elif name == "div" and factor(0, "exp") and sums.get(e.invars[1]) == {org(e.invars[0])}:
                # softmax: exp(x - c) / sum(exp(x - c)) over the same source x
                src = org(e.invars[0])
                make_node("softmax", out, order=(0,), origin=src,
                          replay=_ancestors(program, plan, out, src, is_t))
                tags[out] = {"probs"}
            elif name == "div" and tpos == (0, 1) and factor(1, "root") and not factor(0, "inverse"):
                # (x - mean) / sqrt(var + eps): the normaliser is a constant
                make_node("normalize", out, order=(0, 1))
            elif name == "div" and tpos == (0, 1) and not factor(0, "inverse"):
                # another normaliser (LocalResponseNorm, x / sum(x)): the composite
                # must choose (there is no default rule for "divide")
                make_node("divide", out, order=(0, 1))
            elif name == "div":
                fail(e, "division by an input-dependent value that is neither a softmax nor a "
                     "normalisation by a square root",
                     "explain the logits rather than probabilities, or wrap the denominator in "
                     "jax.lax.stop_gradient to treat it as a constant")
            elif name in P.SELECTING:
                plan[i] = "bind"
                routed.append(i)
                _mark(out, tainted, depth, d_in)
            else:
                fail(e, "elementwise operation of several input-dependent values with no rule")
        elif name in P.SUMS:
            make_node(P.SUMS[name], e.outvars[0], affine=name in P.AFFINE)
            tag(e.outvars, carry=("inverse",))
            sums[e.outvars[0]] = {org(e.invars[k]) for k in tpos}
        elif name in P.POOLS:
            make_node(P.POOLS[name], e.outvars[0])
            tag(e.outvars)
        elif name in P.ROUTING:
            routed.append(i)
            for v in outs_inexact:
                _mark(v, tainted, depth, d_in)
            tag(outs_inexact)
        elif name in P.CONTROL:
            plan[i] = name
            subs[i] = _analyze_control(e, [is_t(a) for a in e.invars], [prov.get(a, set()) if isinstance(a, Var) else set() for a in e.invars], [depth.get(a, 0) for a in e.invars], ctx)
            for v, t in zip(e.outvars, _control_out_taint(e, subs[i])):
                if t and _inexact(v):
                    _mark(v, tainted, depth, d_in)
        elif name in P.UNSUPPORTED_HINTS:
            fail(e, "not supported on the relevance path", P.UNSUPPORTED_HINTS[name])
        else:
            fail(e, "no LRP rule is known for this primitive",
                 "explain a function without it, or wrap the input-independent part in "
                 "jax.lax.stop_gradient; please report it if it should be supported")

    # Activations: region values read outside their region.
    activations: dict = {}

    def _activation(a):
        if isinstance(a, Var) and a in origin and a not in activations:
            src = program.eqns[_producer[a]]
            layer = ctx.new_layer(
                kind="activation", primitive=src.prim.name, name=src.name,
                input_shapes=(origin[a].shape,), output_shape=a.shape,
            )
            activations[a] = NodeSpec(layer=layer, eqn=-1, origin=origin[a], out=a)

    _producer = {v: i for i, e in enumerate(program.eqns) for v in e.outvars}
    for i, e in enumerate(program.eqns):
        if plan[i] == "node":
            if nodes[i].layer.kind == "softmax":  # reads its source directly
                continue
            e = program.eqns[nodes[i].eqn]
        if plan[i] not in ("region", "skip"):
            for a in e.invars:
                _activation(a)
    for a in program.outvars:
        _activation(a)

    # "last": dense/conv nodes whose output reaches the program output without
    # crossing another dense/conv node.
    free = set() if never_last else {v for v in program.outvars if isinstance(v, Var)}
    for i in reversed(range(len(program.eqns))):
        e = program.eqns[i]
        if plan[i] == "node":
            spec = nodes[i]
            reach = spec.out in free
            if spec.layer.kind in ("dense", "conv"):
                if reach:
                    spec.layer = dataclasses.replace(spec.layer, last=True)
                    ctx.layers[spec.layer.index] = spec.layer
                continue
            if reach:
                free.update(a for a in e.invars if isinstance(a, Var))
        elif plan[i] == "skip":
            continue
        elif any(v in free for v in e.outvars):
            free.update(a for a in e.invars if isinstance(a, Var))
    return Analysis(program, tainted, plan, nodes, activations, subs, routed, depth)


def _product_kind(tpos: tuple, factor) -> Optional[tuple]:
    """``(kind, operand order)`` of a product of two tainted factors, or ``None``.

    The special factor goes second: a normaliser (LayerNorm/RMSNorm), attention
    probabilities (a softmax output) or a sigmoid gate.
    """
    for t, kind in (("inverse", "normalize"), ("probs", "attention"), ("gate", "gate")):
        special = [k for k in tpos if factor(k, t)]
        if len(special) == 1 and len(tpos) == 2:
            (other,) = [k for k in tpos if k != special[0]]
            if t != "inverse" and factor(other, "inverse"):
                return None
            return kind, (other, special[0])
        if special and t == "inverse":
            return None
    return "product", tpos


def _ancestors(program: Program, plan: list, out: Var, src: Var, is_t) -> tuple:
    """Indices of the equations computing ``out`` from ``src`` (and constants)."""
    producer = {v: j for j, e in enumerate(program.eqns) for v in e.outvars}
    seen, stack = {producer[out]}, list(program.eqns[producer[out]].invars)
    while stack:
        v = stack.pop()
        if not isinstance(v, Var) or v is src or not is_t(v) or v not in producer:
            continue
        j = producer[v]
        if j not in seen:
            seen.add(j)
            stack.extend(a for a in program.eqns[j].invars if isinstance(a, Var))
    return tuple(sorted(seen))


def _taint_prepass(program: Program, tainted: set) -> set:
    """Variables reachable from ``tainted`` (control flow: every float output)."""
    reach = set(tainted)
    for e in program.eqns:
        if e.prim.name not in P.STOP and any(isinstance(a, Var) and a in reach for a in e.invars):
            reach.update(v for v in e.outvars if _inexact(v))
    return reach


def _is_parameter(a, from_params: set) -> bool:
    """Whether operand ``a`` is computed from the function's parameters: its
    non-explained arguments, or arrays it closes over (which the jaxpr cannot tell
    from constants). Values built inside the function from literals and ``iota``
    are not."""
    if isinstance(a, Lit):
        return np.ndim(a.val) > 0
    return a in from_params


def _parameter_prepass(program: Program, roots: set) -> set:
    """Variables computed from ``roots`` or from closed-over arrays (known before the
    main pass, which looks ahead along a layer's folded chain)."""
    reach = set(roots)
    for e in program.eqns:
        if any(_is_parameter(a, reach) for a in e.invars):
            reach.update(e.outvars)
    return reach


def _module_path(paths: tuple) -> str:
    """A layer name from its weight's parameter path, for functions that push no
    name stack (flax nnx, plain pytrees): ``"blocks/0/conv1/kernel/value"`` ->
    ``"blocks/0/conv1"``, ``"w1"`` -> ``"w1"``."""
    if len(paths) != 1:
        return ""
    parts = paths[0].split("/")
    if parts[-1] == "value" and len(parts) > 1:  # an nnx Variable
        parts = parts[:-1]
    return "/".join(parts[:-1] if len(parts) > 1 else parts)


def _keeps_sign(e: Eqn, tpos: tuple, nonneg: set) -> bool:
    """Whether ``e``'s outputs are provably non-negative (see ``P.NONNEGATIVE``).

    Linear layers never are (their outputs are unbounded); their folded chains are
    not looked at.
    """
    name = e.prim.name
    if name in P.LINEAR:
        return False
    if name in P.NONNEGATIVE:
        return True
    if name == "integer_pow":
        return e.params["y"] % 2 == 0
    lits_nonneg = all(
        _static_nonneg(a) for k, a in enumerate(e.invars) if k not in tpos and jnp.issubdtype(a.dtype, jnp.inexact)
    )
    if name == "max" and any(_static_nonneg(a) for a in e.invars):
        return True  # relu: max(x, 0)
    inputs_nonneg = all(e.invars[k] in nonneg for k in tpos)
    if name == "div":
        return tpos == (0,) and inputs_nonneg and lits_nonneg
    return name in P.SIGN_PRESERVING and inputs_nonneg and lits_nonneg


def _static_nonneg(a) -> bool:
    """Whether ``a`` is a constant known at trace time to be ``>= 0``."""
    value = a.static() if isinstance(a, Lit) else None
    return value is not None and bool(np.all(value >= 0))


def _inverts(e: Eqn, tpos: tuple) -> bool:
    """Whether ``e`` computes an inverse of one of its tainted operands."""
    name = e.prim.name
    if name not in P.INVERSE:
        return False
    if name == "div":
        return 1 in tpos
    if name == "integer_pow":
        return e.params["y"] < 0
    if name == "pow":
        y = e.invars[1]
        value = y.static() if isinstance(y, Lit) else None
        return 1 in tpos or value is None or bool(np.any(value < 0))
    return True


def _mark(v, tainted, depth, d):
    tainted.add(v)
    depth[v] = d


def _analyze_control(e: Eqn, taint, prov, depth, ctx) -> list:
    """Analyse the bodies of ``scan`` and ``cond``.

    A body is one set of equations for every iteration (or branch), so its layers get
    one rule each: a scan layer is ``first`` only if it is first in every iteration
    (the carry's taint and layer depth are fixed points over iterations), and layers
    inside control flow are never ``last``.
    """
    if e.prim.name == "shard_map":
        jaxpr, consts = body(e.params, "jaxpr")
        return [analyze(flatten(jaxpr, consts, e.name), taint, prov, depth, ctx, never_last=True)]
    if e.prim.name == "cond":
        ops = slice(1, None)  # operand 0 is the branch index
        return [
            analyze(flatten(b.jaxpr, b.consts, e.name), taint[ops], prov[ops], depth[ops], ctx, never_last=True)
            for b in e.params["branches"]
        ]
    nc, nk = e.params["num_consts"], e.params["num_carry"]
    jaxpr, consts = body(e.params, "jaxpr")
    taint, depth = list(taint), list(depth)
    while True:  # probe without registering layers until the carry is stable
        prog = flatten(jaxpr, consts, e.name)
        probe = analyze(prog, taint, prov, depth, _Context(), never_last=True)
        carry_out = prog.outvars[:nk]
        out_t = [isinstance(v, Var) and v in probe.tainted for v in carry_out]
        out_d = [probe.depth.get(v, 0) if isinstance(v, Var) else 0 for v in carry_out]
        carry = list(zip(taint[nc:nc + nk], depth[nc:nc + nk], out_t, out_d))
        new_t = [t or ot for t, _, ot, _ in carry]
        new_d = [max(d, min(od, 1)) for _, d, _, od in carry]  # depth >= 1 is all that matters
        if new_t == taint[nc:nc + nk] and new_d == depth[nc:nc + nk]:
            break
        taint[nc:nc + nk], depth[nc:nc + nk] = new_t, new_d
    return [analyze(flatten(jaxpr, consts, e.name), taint, prov, depth, ctx, never_last=True)]


def _control_out_taint(e: Eqn, subs: list) -> list:
    out = [False] * len(e.outvars)
    for sub in subs:
        for k, v in enumerate(sub.program.outvars):
            out[k] = out[k] or (isinstance(v, Var) and v in sub.tainted)
    return out


# -------------------------------------------------------------------------- evaluation


def _node_call(spec: NodeSpec, rule, apply, example_ndim: int, fold=None):
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
        rel = rule(Node(kind, inputs, weight, bias, z, apply, example_ndim, spec.nonnegative), relevance)
        return tuple(r.astype(x.dtype) for r, x in zip(rel, inputs)), None, None, None

    call.defvjp(fwd, bwd)
    return call


def _passthrough(kind: str, rule, example_ndim: int, apply=None):
    """``(source, value) -> value`` sending the relevance of ``value`` to ``source``
    through ``rule`` (activations: Pass; softmax: its rule, with ``apply`` recomputing
    ``value`` from ``source``)."""

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
    pass (:func:`_condition`).
    """
    taps, masks = taps or {}, masks or {}
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
                passed[a] = _passthrough("activation", rules[spec.layer.index], example_ndim)(env[spec.origin], env[a])
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
                an, spec, rules[spec.layer.index], read, raw, taps.get(spec.layer.index), example_ndim
            )
            if spec.layer.index in masks:
                env[spec.out] = _condition(env[spec.out], *masks[spec.layer.index])
            continue
        elif kind == "scan":
            outs = _eval_scan(e, an.subs[i][0], rules, [read(a) for a in e.invars], example_ndim)
        elif kind == "cond":
            outs = _eval_cond(e, an.subs[i], rules, [read(a) for a in e.invars], example_ndim)
        elif kind == "shard_map":
            outs = _eval_shard_map(e, an.subs[i][0], rules, [read(a) for a in e.invars], example_ndim)
        else:
            outs = e.bind(*[read(a) for a in e.invars])
        for v, x in zip(e.outvars, outs):
            env[v] = x + starts[v] if v in starts else x
    return [read(a) for a in prog.outvars]


def start_values(program: Program, pattern: str, in_prov) -> list:
    """The variables where an explanation that starts at layer ``pattern`` begins.

    ``pattern`` is a glob matched against the module paths (name stacks) of the
    equations and the parameter paths of their operands. A matched module's
    start values are the floating-point values it computes and something outside
    it reads; for a matched parameter, the outputs of the equations that read it.
    Values computed from other start values are not start values.
    """
    params = {v for v, p in zip(program.invars, in_prov) if any(fnmatch.fnmatchcase(q, pattern) for q in p)}
    scope = {}
    for i, e in enumerate(program.eqns):
        parts = e.name.split("/") if e.name else []
        prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        hit = next((q for q in prefixes if fnmatch.fnmatchcase(q, pattern)), None)
        if hit is not None or any(isinstance(a, Var) and a in params for a in e.invars):
            scope[i] = hit
    users = readers(program)
    outputs = {v for v in program.outvars if isinstance(v, Var)}
    starts, downstream = [], set()
    for i, e in enumerate(program.eqns):
        if any(isinstance(a, Var) and a in downstream for a in e.invars):
            downstream.update(e.outvars)
            continue
        if i not in scope:
            continue
        for v in e.outvars:
            leaves = v in outputs or any(scope.get(j, 0) != scope[i] for j in users.get(v, ()))
            if _inexact(v) and (scope[i] is None or leaves):
                starts.append(v)
                downstream.add(v)
    return starts


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


def _eval_node(an: Analysis, spec: NodeSpec, rule, read, raw, tap, example_ndim: int) -> Any:
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
        wpos = spec.weight
        chain = spec.chain
        # the layer's own map: the primitive, then psum and size-1 reshapes
        shaping = [an.program.eqns[j] for j in chain.post + tuple(j for j in chain.members if j in chain.reshapes)]
        if any(j not in chain.reshapes for j in chain.members):
            start = (an.program.eqns[chain.post[-1]] if chain.post else e).outvars[0]
            a, bias = canonize.chain_coefficients(an.program, chain, start, start.dtype, raw)
            if chain.scales:
                scale = a

                def fold(w, a):
                    return canonize.fold_scale(w, a, chain.out_axes)

        def apply(xs, w):
            args = list(ops)
            args[spec.tainted[0]] = xs[0]
            args[wpos] = w
            (z,) = e.bind(*args)
            for s_eqn in shaping:
                (z,) = s_eqn.bind(z)
            return z

    elif spec.affine:
        zeros = {k: jnp.zeros_like(ops[k]) for k in spec.tainted}
        frozen = [
            jnp.zeros_like(x) if k not in spec.tainted and _inexact(e.invars[k]) else x
            for k, x in enumerate(ops)
        ]
        bias_args = [zeros.get(k, x) for k, x in enumerate(ops)]
        if any(k not in spec.tainted and _inexact(e.invars[k]) for k in range(len(ops))):
            bias = e.bind(*bias_args)[0]

        def apply(xs, w):
            args = list(frozen)
            for k, x in zip(spec.tainted, xs):
                args[k] = x
            return e.bind(*args)[0]

    else:

        def apply(xs, w):
            args = list(ops)
            for k, x in zip(spec.tainted, xs):
                args[k] = x
            return e.bind(*args)[0]

    z = _node_call(spec, rule, apply, example_ndim, fold)(inputs, weight, scale, bias)
    if tap is not None:
        z = z + tap[1]
    return z


def _eval_scan(e: Eqn, sub: Analysis, rules: dict, vals: list, example_ndim: int) -> list:
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


def _eval_shard_map(e: Eqn, sub: Analysis, rules: dict, vals: list, example_ndim: int) -> list:
    p = e.params
    inner = jax.shard_map(
        lambda *xs: tuple(evaluate(sub, rules, list(xs), example_ndim=example_ndim)),
        mesh=p["mesh"], in_specs=p["in_specs"], out_specs=p["out_specs"],
        axis_names=p["newly_manual_axes"], check_vma=p["check_vma"],
    )
    return list(inner(*vals))
