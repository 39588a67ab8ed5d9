"""The static analysis of the LRP interpreter: which equations carry relevance, and how.

:func:`analyze` walks a flattened program (:mod:`jaxlrp._core.program`) once, in
order, keeping what it knows in one :class:`_State`:

* **taint**: which floating-point variables depend on the explained input.
  Untainted equations (parameter preprocessing, BatchNorm statistics, integer
  index arithmetic) run unchanged and carry no relevance;
* **treatments**: every tainted equation is handed to the treatment registered
  for its primitive in :data:`TREATMENTS` (filled from the tables of
  :mod:`jaxlrp._core.primitives` by :func:`_define`, the way ``jax.interpreters.ad``
  registers one rule per primitive):

  - *routing* (reshape, slicing, gathers, ...; also linear maps whose other
    operand is built from literals, such as an interpolation matrix): relevance
    follows the plain VJP;
  - *activation regions*: an elementwise operation whose tainted operands all stem
    from one *origin* (and keep its shape) belongs to that origin's region
    (``max(x, 0)``, GELU's inline arithmetic, ``x * logistic(x)``, an unfolded
    BatchNorm ...). Region values are computed normally; whenever one is read
    outside its region, relevance goes to the origin through the activation rule;
  - *nodes*: the rule-bearing operations (:class:`Layer`): dense/conv layers
    (fused with the affine chain after them, :mod:`jaxlrp.canonize`), sums,
    average and max pools, products, and the patterns of :mod:`jaxlrp._core.patterns`
    (softmax, normalisers, gates, attention);
  - *control flow* (scan, cond, shard_map): the bodies are analysed in turn;
  - anything else raises :class:`~jaxlrp.UnsupportedOperationError` naming the
    operation and the layer;

* **layers**: descriptions for the composite, with name stack, parameter paths
  (from data flow), sign knowledge and first/last flags.

Adding a primitive to an existing treatment is one word in
:mod:`jaxlrp._core.primitives`; adding a treatment is one function here and one
:func:`_define` line.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable, Literal, NamedTuple, NoReturn, Optional

import jax.numpy as jnp
import numpy as np

from . import patterns as _patterns
from . import primitives as P
from . import canonize
from .errors import UnsupportedOperationError
from .kinds import WEIGHTED_KINDS, Kind
from .paths import layer_name
from .program import Eqn, Lit, Program, Var, body, flatten, producers, readers

# ------------------------------------------------------------------- layers

#: What the evaluation does with each equation.
Step = Literal[
    "bind",  # evaluate unchanged (untainted, routing: the plain VJP)
    "region",  # evaluate unchanged, inside an activation region
    "skip",  # folded into a node evaluated later
    "node",  # a rule-bearing node (possibly ending a folded chain)
    "control",  # scan / cond / shard_map, with analysed bodies
]


@dataclasses.dataclass(frozen=True)
class Layer:
    """A static description of one rule-bearing operation of the traced function.

    Attributes
    ----------
    index:
        Position among the rule-bearing operations, in program order.
    kind:
        One of :data:`jaxlrp.composites.KINDS`.
    primitive:
        The JAX primitive, e.g. ``"conv_general_dilated"``.
    name:
        The name stack of the equation (Flax module path), e.g. ``"CNN/conv1"``;
        for functions that push no names, derived from the weight's parameter path
        (``"blocks/0/conv1"``); empty if there is neither.
    param_paths:
        Paths of the parameters the weight is computed from, e.g.
        ``("params/conv1/kernel",)``.
    first, last:
        See :mod:`jaxlrp.composites`.
    input_shapes, output_shape:
        Shapes of the relevance-carrying inputs and of the output.
    folded:
        Names of the operations folded into this layer (bias add, BatchNorm).
    nonnegative:
        Whether the inputs are provably non-negative (e.g. ReLU outputs).
    constant_weight:
        Whether the weight is an array the function closes over rather than an
        argument: the jaxpr cannot tell a captured parameter from a constant.
        (Weights built inside the function from literals, such as
        ``jax.image.resize``'s interpolation matrix, are never layers: their
        relevance follows the plain VJP.)
    key:
        A unique name for the layer, used in reports and per-layer relevance.
    function:
        Activations only: ``"relu"`` when the activation is exactly
        ``max(origin, 0)`` (``jax.nn.relu``, ``jnp.maximum(z, 0)``);
        ``"rectified"`` when it contains such a step among other operations
        (an unfolded BatchNorm before a ReLU); otherwise ``""``. Read by the
        ReLU rules of :mod:`jaxlrp.rules` (``ReLUGuidedBackprop``, ...).
    """

    index: int
    kind: Kind
    primitive: str
    name: str
    param_paths: tuple = ()
    first: bool = False
    last: bool = False
    input_shapes: tuple = ()
    output_shape: tuple = ()
    folded: tuple = ()
    nonnegative: bool = False
    constant_weight: bool = False
    key: str = ""
    function: str = ""


@dataclasses.dataclass(eq=False, kw_only=True)
class NodeSpec:
    """A rule-bearing operation: where it is and how to evaluate it.

    This class itself is an operation applied to its relevance-carrying operands
    as it is (products, gates, sums, pools, normalisers); :class:`LayerSpec` (a
    dense or conv layer with its weight and folded chain) and :class:`ReplaySpec`
    (a softmax or activation, recomputed from its source) say more.
    """

    layer: Layer
    eqn: int  # index of the head equation (-1 for activations)
    out: Var  # the value the node computes
    tainted: tuple[int, ...] = ()  # operand positions of the relevance-carrying inputs
    nonnegative: bool = False  # the inputs are known to be >= 0
    affine: bool = False  # untainted float operands are a bias (add, sub, scatter-add)


@dataclasses.dataclass(eq=False, kw_only=True)
class LayerSpec(NodeSpec):
    """A dense or conv layer: its weight operand and the affine chain folded into it."""

    weight: int  # operand position of the weight
    chain: canonize.Chain  # what follows the layer and is folded in


@dataclasses.dataclass(eq=False, kw_only=True)
class ReplaySpec(NodeSpec):
    """A softmax or an activation: its value recomputed from the source its
    relevance goes to by replaying the equations between them."""

    origin: Var  # the source the relevance goes to
    replay: tuple[int, ...]  # the equations (indices) computing ``out`` from ``origin``


@dataclasses.dataclass(eq=False)
class Analysis:
    """The result of :func:`analyze`, read by :func:`jaxlrp._core.interpreter.evaluate`."""

    program: Program
    tainted: set[Var]
    plan: list[Step]  # per equation
    nodes: dict[int, NodeSpec]  # by equation index (where the node is evaluated)
    activations: dict[Var, ReplaySpec]  # by region variable
    subs: dict[int, list[Analysis]]  # by equation index: scan body, cond branches, shard_map body
    routed: list[int]  # tainted routing equations: plain VJP fallbacks
    depth: dict[Var, int]  # dense/conv layers on a tainted variable's path from the input
    output_softmax: tuple[int, ...] = ()  # layer indices of softmaxes whose output is the function's


class Context:
    """State shared across nested analyses: the layers, numbered in program order."""

    def __init__(self):
        self.layers: list = []

    def new_layer(self, **kw) -> Layer:
        layer = Layer(index=len(self.layers), **kw)
        self.layers.append(layer)
        return layer


# ------------------------------------------------------------------------ state


class _Site(NamedTuple):
    """A tainted equation, as its treatment sees it."""

    i: int  # position in the program
    eqn: Eqn
    tainted: tuple  # operand positions that carry relevance
    outs: list  # the floating-point outputs
    depth: int  # dense/conv layers on the deepest input's path from the input
    tags: frozenset  # union of the tainted operands' tags
    sums: frozenset  # union of the origins summed into the tainted operands


class _State:
    """What the analysis knows while it walks one program."""

    def __init__(self, program: Program, in_taint, in_prov, in_depth, ctx: Context, starts: frozenset):
        self.program, self.ctx, self.starts = program, ctx, starts
        self.tainted: set = {v for v, t in zip(program.invars, in_taint) if t and inexact(v)}
        # Which variables will depend on the input, known before the main pass
        # (which looks ahead when it folds BatchNorm chains): an over-approximation.
        self.will_taint = _reachable(program, self.tainted | starts)
        # ... and which depend on it at all, through stop_gradient too (a softmax's
        # detached maximum is computed from the input: it is no constant summand)
        self.from_input = _reachable(program, self.tainted | starts, through_stop=True)
        self.prov: dict = {v: p for v, p in zip(program.invars, in_prov) if p}
        self.from_params = _parameter_prepass(program, set(self.prov))
        self.depth: dict = dict(zip(program.invars, in_depth))
        self.origin: dict[Var, Var] = {}  # region variable -> its origin
        self.tags: dict = {}  # tainted variable -> set of _patterns.Tag
        self.sums: dict[Var, set] = {}  # tainted variable -> origins summed into it
        self.ranges: dict = {}  # variable -> its bounded range (_patterns.value_range)
        self.normalized: set = set()  # outputs of normalisers (LayerNorm before its affine map)
        self.summands: dict[Var, Var] = {}  # output of a constant summand -> its relevance-carrying operand
        self.nonneg: set = set()  # tainted variables that are never negative
        outputs = {v for v in program.outvars if isinstance(v, Var)}
        self.readers = {v: (u if v not in outputs else u + [-1]) for v, u in readers(program).items()}
        self.producer = producers(program)
        self.plan: list[Step] = ["bind"] * len(program.eqns)
        self.nodes: dict = {}
        self.subs: dict = {}
        self.routed: list = []

    def is_tainted(self, a) -> bool:
        return isinstance(a, Var) and a in self.tainted

    def origin_of(self, a):
        return self.origin.get(a, a)

    def is_parameter(self, a) -> bool:
        return _is_parameter(a, self.from_params)

    def range_of(self, a) -> _patterns.Interval:
        """The bound on operand ``a``'s values known from literals (else unbounded)."""
        return self.ranges.get(a, _patterns.UNBOUNDED) if isinstance(a, Var) else _patterns.literal_range(a)

    def has(self, site: _Site) -> _patterns.Has:
        """``has(k, tag)`` for the operands of ``site`` (see :mod:`jaxlrp._core.patterns`):
        ``"gate"`` is decided by the operand's range, and a gate is no ``"inverse"``."""

        def has(k: int, tag: _patterns.Tag) -> bool:
            a = site.eqn.invars[k]
            if tag in ("gate", "inverse") and _patterns.is_gate(self.range_of(a)):
                return tag == "gate"
            return tag in self.tags.get(a, ())

        return has

    def track_range(self, e: Eqn) -> None:
        """Record the bounded ranges of ``e``'s outputs (see :func:`_patterns.value_range`)."""
        r = _patterns.value_range(e, [self.range_of(a) for a in e.invars])
        if r != _patterns.UNBOUNDED:
            for v in e.outvars:
                self.ranges[v] = r

    def param_paths(self, a) -> tuple:
        return tuple(sorted(self.prov.get(a, ()))) if isinstance(a, Var) else ()

    def mark(self, v: Var, depth: int) -> None:
        self.tainted.add(v)
        self.depth[v] = depth

    def keep_tags(self, site: _Site, vs, kept: frozenset, made=()) -> None:
        """Pass the inputs' tags in ``kept`` (and the sums) on to ``vs``, adding ``made``."""
        new = (site.tags & kept) | set(made)
        for v in vs:
            self.tags[v] = self.tags.get(v, set()) | new
            if site.sums:
                self.sums[v] = set(site.sums)

    def route(self, site: _Site, vs) -> None:
        """Plain VJP: ``vs`` carry relevance, the equation takes no rule."""
        self.routed.append(site.i)
        for v in vs:
            self.mark(v, site.depth)

    def node(self, site: _Site, kind: Kind, out: Var, at: Optional[int] = None, order=None,
             spec: type[NodeSpec] = NodeSpec, **kw) -> NodeSpec:
        """Register a rule-bearing node of class ``spec`` (its extra fields in ``kw``),
        evaluated at equation ``at`` (default: here)."""
        e, at = site.eqn, site.i if at is None else at
        order = site.tainted if order is None else order
        positive = all(e.invars[k] in self.nonneg for k in order)
        paths = kw.pop("param_paths", ())
        layer = self.ctx.new_layer(
            kind=kind,
            primitive=e.prim.name,
            name=e.name or layer_name(paths),
            param_paths=paths,
            first=kind in WEIGHTED_KINDS and site.depth == 0,
            input_shapes=tuple(e.invars[k].shape for k in order),
            output_shape=out.shape,
            folded=kw.pop("folded", ()),
            nonnegative=positive,
            constant_weight=kw.pop("constant_weight", False),
        )
        node = spec(layer=layer, eqn=site.i, tainted=order, out=out, nonnegative=positive, **kw)
        self.nodes[at] = node
        self.plan[at] = "node"
        self.mark(out, site.depth + (1 if kind in WEIGHTED_KINDS else 0))
        return node

    def fail(self, site: _Site, reason: str, hint: str = "") -> NoReturn:
        raise UnsupportedOperationError(site.eqn.prim.name, site.eqn.name, reason, hint)

    def result(self) -> Analysis:
        return Analysis(self.program, self.tainted, self.plan, self.nodes, {}, self.subs, self.routed, self.depth)


# ------------------------------------------------------------------- treatments

Treatment = Callable[[_State, _Site], None]
#: Primitive name -> treatment of a tainted equation of that primitive.
TREATMENTS: dict = {}


def _define(names, treatment: Treatment) -> None:
    """Register ``treatment`` for every primitive in ``names`` (each only once)."""
    P.register(TREATMENTS, names, treatment, "treatment")


def _route(st: _State, site: _Site) -> None:
    """Reshapes, slices, gathers, concatenation, global max: the plain VJP."""
    st.route(site, site.outs)
    st.keep_tags(site, site.outs, _patterns.KEPT_BY_ROUTING)


def _linear(st: _State, site: _Site) -> None:
    """``dot_general`` / ``conv_general_dilated``: a weighted layer with its folded
    affine chain, a constant map (routing), or a product of two tainted values."""
    e = site.eqn
    if _patterns.constant_map(e, site.tainted, st.is_parameter):
        _route(st, site)
    elif len(site.tainted) == 1:
        wpos = 1 - site.tainted[0]
        chain = canonize.affine_chain(
            st.program, site.i, canonize.output_axis_map(e, wpos), st.will_taint.__contains__,
            st.readers, st.is_parameter, st.producer,
        )
        folded = list(chain.post + chain.members)
        for j in [site.i] + folded[:-1]:
            st.plan[j] = "skip"
        paths = st.param_paths(e.invars[wpos])
        # Evaluated where its folded chain ends: the chain's other operands
        # (BatchNorm statistics) may be computed after the head equation.
        st.node(site, P.LINEAR[e.prim.name], chain.out, at=folded[-1] if folded else None, spec=LayerSpec, weight=wpos,
                chain=chain, param_paths=paths, folded=tuple(st.program.eqns[j].prim.name for j in folded),
                constant_weight=not paths)  # not computed from an argument
    else:
        _product(st, site, "matrix product of inverses of input-dependent values")


def _product(st: _State, site: _Site, reason: str, hint: str = "") -> None:
    """A product of tainted values: a normaliser, attention, a gate or a plain
    product (:func:`_patterns.product`), or refused with ``reason``."""
    kind = _patterns.product(site.tainted, st.has(site))
    if kind is None:
        st.fail(site, reason, hint)
    st.node(site, kind[0], site.eqn.outvars[0], order=kind[1])
    if kind[0] == "normalize":
        st.normalized.add(site.eqn.outvars[0])


def _region(st: _State, site: _Site) -> bool:
    """Make an elementwise equation of one origin part of that origin's activation
    region; ``False`` if its tainted operands have several origins (or broadcast)."""
    (out,) = site.eqn.outvars
    origins = {st.origin_of(site.eqn.invars[k]) for k in site.tainted}
    if len(origins) != 1 or out.shape != next(iter(origins)).shape:
        return False
    st.plan[site.i] = "region"
    st.mark(out, site.depth)
    st.origin[out] = origins.pop()
    st.keep_tags(site, [out], _patterns.KEPT_BY_REGIONS, _patterns.made_by(site.eqn, site.tainted))
    return True


def _scaling(st: _State, site: _Site, affine: bool = False) -> None:
    """A sum node: residual additions (``affine``: the constants are a bias) and
    scalings of one value by a constant with broadcasting (a linear map)."""
    st.node(site, "sum", site.eqn.outvars[0], affine=affine)
    st.keep_tags(site, site.eqn.outvars, _patterns.KEPT_BY_SUMS)


def _activation(st: _State, site: _Site) -> None:
    """Elementwise functions: activation regions only."""
    if not _region(st, site):
        st.fail(site, "elementwise operation of several input-dependent values with no rule")


def _select(st: _State, site: _Site) -> None:
    """``max``, ``min``, ``select_n``, ``clamp`` of values of different origin: the
    plain VJP (the winner takes the relevance)."""
    if not _region(st, site):
        st.route(site, site.eqn.outvars)


def _elementwise_sum(st: _State, site: _Site) -> None:
    """``add``, ``sub``: a constant summand or a residual connection (a sum node whose
    constant operands absorb their share), or a step of an activation region."""
    if _constant_summand(st, site):
        _scaling(st, site, affine=True)
        st.summands[site.eqn.outvars[0]] = site.eqn.invars[site.tainted[0]]
    elif not _region(st, site):
        _scaling(st, site, affine=True)


def _constant_summand(st: _State, site: _Site) -> bool:
    """Whether ``site`` adds a tensor computed from parameters to one relevance-carrying
    value outside a dense/conv layer's folded chain::

        y = add t pos          # position embeddings, LayerNorm's beta,
        y = add s b            # a bias after the sum of two layers (LSTM cells),
                               # or added to a slice of a layer's output (GRU cells)

    Such a summand absorbs its proportional share, as a folded bias does
    (:class:`~jaxlrp.rules.Norm` with the summand as the bias). Literals are
    part of the activation (``hard_sigmoid``'s ``+ 3``), and so is the shift of an
    unfolded normalisation (:func:`_unfolded_normalization`).
    """
    e = site.eqn
    consts = [a for k, a in enumerate(e.invars) if k not in site.tainted and inexact(a)]
    return (
        len(site.tainted) == 1
        and any(st.is_parameter(a) and a not in st.from_input for a in consts)
        and not _unfolded_normalization(st, site.i)
    )


def _affine_operand(st: _State, e: Eqn) -> Optional[int]:
    """The position of the value that ``e`` shifts, scales or casts by constants
    (``x + c``, ``c - x``, ``x * a``, ``x / a``), or ``None``."""
    if e.prim.name in P.CASTS:
        return 0
    if e.prim.name not in P.FOLDABLE or len(e.invars) != 2:
        return None
    t = [k for k, a in enumerate(e.invars) if isinstance(a, Var) and a in st.will_taint]
    if len(t) != 1 or (e.prim.name in P.QUOTIENTS and t[0] != 0):
        return None
    return t[0]


def _unfolded_normalization(st: _State, i: int) -> bool:
    """Whether equation ``i`` (a shift by constants) belongs to a per-channel affine
    map with a parameter scale that follows no layer and no normaliser::

        y = sub x mean; y = mul y a; y = add y c    # inference BatchNorm, unfolded
        y = mul x a; y = add y c                    # Keras' spelling of it

    Its shift is part of the elementwise map, which passes relevance unchanged
    (Zennit's rule for a BatchNorm it cannot merge into a layer). After a
    normaliser (LayerNorm's ``n * gamma + beta``) the shift is a constant summand.
    """
    eqns = st.program.eqns
    chain = {i: _affine_operand(st, eqns[i])}  # member -> position of the value it transforms
    first = i
    while True:  # back to the start of the chain
        start = eqns[first].invars[chain[first] or 0]
        k = st.producer.get(start)
        if k is None:
            break
        pos = _affine_operand(st, eqns[k])
        if pos is None or st.readers.get(start) != [first]:
            break
        chain[k], first = pos, k
    last = i
    while True:  # on to its end
        out = eqns[last].outvars[0]
        users = st.readers.get(out, [])
        pos = _affine_operand(st, eqns[users[0]]) if len(users) == 1 and users[0] >= 0 else None
        if pos is None or eqns[users[0]].invars[pos] is not out:
            break
        chain[users[0]], last = pos, users[0]
    scales = any(
        eqns[k].prim.name in P.SCALING and st.is_parameter(eqns[k].invars[1 - pos])
        for k, pos in chain.items() if pos is not None
    )
    return scales and start not in st.normalized


def _multiply(st: _State, site: _Site) -> None:
    """``mul``: a gated constant, a region, a scaling, or a product (see
    :func:`_patterns.product`)."""
    if _gated_constant(st, site) or _region(st, site):
        return
    if len(site.tainted) == 1:
        return _scaling(st, site)
    _product(st, site, "product of inverses of input-dependent values",
             "wrap the normalisers in jax.lax.stop_gradient to treat them as constants")


def _gated_constant(st: _State, site: _Site) -> bool:
    """A gate times a tensor computed from parameters is a ``gate`` node whose
    signal is that constant (it absorbs what the signal takes)::

        r = logistic a; y = mul r c      # GRU's r * (W_hn h + b_hn) at the first
                                         # step of an unrolled loop (h = 0), z * h0

    In a scan the same product has the carry as its signal, so this makes an
    unrolled loop give the map of the scan: under SignalTakesAll the gate gets
    nothing, under Uniform half. (The constant's own relevance goes nowhere.)
    """
    e = site.eqn
    if e.prim.name not in P.PRODUCTS or len(site.tainted) != 1 or len(e.invars) != 2:
        return False
    (k,) = site.tainted
    c = e.invars[1 - k]
    if not (inexact(c) and st.is_parameter(c) and c not in st.from_input and st.has(site)(k, "gate")):
        return False
    st.node(site, "gate", e.outvars[0], order=(1 - k, k))
    return True


def _quotient(st: _State, site: _Site) -> None:
    """``div``: a region, a scaling, a softmax, a normaliser, or an opt-in ``divide``."""
    if _region(st, site):
        return
    e, has, out = site.eqn, st.has(site), site.eqn.outvars[0]
    if site.tainted == (0,):
        return _scaling(st, site)
    source = _patterns.softmax(e, has, st.origin_of, st.sums.get)
    while source in st.summands:  # scores + mask: the softmax's input is the scores
        source = st.origin_of(st.summands[source])
    if source is not None:
        st.node(site, "softmax", out, order=(0,), spec=ReplaySpec, origin=source,
                replay=_patterns.replayed(st.program, st.producer, out, source, st.is_tainted))
        st.tags[out] = {"probs"}
    elif _patterns.root_normalization(site.tainted, has):
        st.node(site, "normalize", out, order=(0, 1))
        st.normalized.add(out)
    elif _patterns.quotient(site.tainted, has):
        st.node(site, "divide", out, order=(0, 1))
    else:
        st.fail(site, "division by an input-dependent value that is neither a softmax nor a "
                "normalisation by a square root",
                "explain the logits rather than probabilities, or wrap the denominator in "
                "jax.lax.stop_gradient to treat it as a constant")


def _sum(st: _State, site: _Site) -> None:
    """Reductions, cumulative sums, average pools, scatter-add, psum: a sum node."""
    e = site.eqn
    st.node(site, P.SUMS[e.prim.name], e.outvars[0], affine=e.prim.name in P.AFFINE)
    st.keep_tags(site, e.outvars, _patterns.KEPT_BY_SUMS)
    st.sums[e.outvars[0]] = {st.origin_of(e.invars[k]) for k in site.tainted}


def _pool(st: _State, site: _Site) -> None:
    """Max pooling: a node (winner-takes-all by default)."""
    st.node(site, P.POOLS[site.eqn.prim.name], site.eqn.outvars[0])
    st.keep_tags(site, site.eqn.outvars, _patterns.KEPT_BY_ROUTING)


def _control(st: _State, site: _Site) -> None:
    """``scan``, ``cond``, ``shard_map``: analyse the bodies."""
    e = site.eqn
    st.plan[site.i] = "control"
    taint = [st.is_tainted(a) for a in e.invars]
    prov = [st.prov.get(a, set()) if isinstance(a, Var) else set() for a in e.invars]
    depth = [st.depth.get(a, 0) for a in e.invars]
    st.subs[site.i] = CONTROL_FLOW[e.prim.name](e, taint, prov, depth, st.ctx)
    for v, t, d in zip(e.outvars, _control_out_taint(e, st.subs[site.i]), _control_out_depth(e, st.subs[site.i])):
        if t and inexact(v):
            st.mark(v, d)  # after the body's layers: a layer reading a scan's output is not "first"


def _unsupported(st: _State, site: _Site) -> None:
    st.fail(site, "not supported on the relevance path", P.UNSUPPORTED_HINTS[site.eqn.prim.name])


def _unknown(st: _State, site: _Site) -> None:
    st.fail(site, "no LRP rule is known for this primitive",
            "explain a function without it, or wrap the input-independent part in "
            "jax.lax.stop_gradient; please report it if it should be supported")


_define(P.ROUTING, _route)
_define(P.LINEAR, _linear)
_define(P.ACTIVATIONS, _activation)
_define(P.SELECTING, _select)
_define(P.ELEMENTWISE_SUMS, _elementwise_sum)
_define(P.PRODUCTS, _multiply)
_define(P.QUOTIENTS, _quotient)
_define(P.SUMS, _sum)
_define(P.POOLS, _pool)
_define(P.CONTROL, _control)
_define(P.UNSUPPORTED_HINTS, _unsupported)


# --------------------------------------------------------------------- analysis


def analyze(
    program: Program, in_taint, in_prov, in_depth, ctx: Context, never_last: bool = False,
    starts: frozenset = frozenset(),
) -> Analysis:
    """Static analysis of ``program`` given which inputs carry relevance.

    ``in_prov`` gives each input's parameter paths, ``in_depth`` its layer depth.
    ``starts`` are variables computed inside the program where relevance starts
    (the output of an embedding layer): they are explained as if they were inputs.
    Layers inside control flow (``never_last``) are never ``last``.
    """
    st = _State(program, in_taint, in_prov, in_depth, ctx, starts)
    for i, e in enumerate(program.eqns):
        if st.plan[i] != "bind":  # folded into an earlier layer
            continue
        tpos = tuple(k for k, a in enumerate(e.invars) if st.is_tainted(a))
        outs = [v for v in e.outvars if inexact(v)]
        st.track_range(e)
        if not tpos or not outs or e.prim.name in P.STOP:
            _pass_provenance(st, e, outs)
            continue
        site = _Site(
            i, e, tpos, outs,
            depth=max(st.depth.get(e.invars[k], 0) for k in tpos),
            tags=frozenset().union(*(st.tags.get(e.invars[k], ()) for k in tpos)),
            sums=frozenset().union(*(st.sums.get(e.invars[k], ()) for k in tpos)),
        )
        if P.output_nonnegative(e, tpos, all(e.invars[k] in st.nonneg for k in tpos)):
            st.nonneg.update(outs)
        TREATMENTS.get(e.prim.name, _unknown)(st, site)
    an = st.result()
    an.activations = _activations(st)
    _mark_last(an, st.ctx, never_last)
    if not never_last:
        an.output_softmax = _output_softmaxes(an)
    return an


def _pass_provenance(st: _State, e: Eqn, outs: list) -> None:
    """An untainted equation: its outputs inherit the parameter paths of its inputs;
    start values among them begin to carry relevance."""
    ps = set().union(*(st.prov.get(a, set()) for a in e.invars if isinstance(a, Var)))
    if ps:
        for v in e.outvars:
            st.prov[v] = ps
    for v in st.starts.intersection(outs):
        st.mark(v, 0)


def _activations(st: _State) -> dict:
    """One activation node per region value read outside its region."""
    program, producer, found = st.program, st.producer, {}

    def visit(a):
        if isinstance(a, Var) and a in st.origin and a not in found:
            src = program.eqns[producer[a]]
            steps = _patterns.replayed(program, producer, a, st.origin[a], st.is_tainted)
            layer = st.ctx.new_layer(
                kind="activation", primitive=src.prim.name, name=src.name,
                input_shapes=(st.origin[a].shape,), output_shape=a.shape,
                function=_activation_function(program, steps, st.origin[a]),
            )
            found[a] = ReplaySpec(layer=layer, eqn=-1, origin=st.origin[a], out=a, replay=steps)

    for i, e in enumerate(program.eqns):
        if st.plan[i] == "node":
            if st.nodes[i].layer.kind == "softmax":  # reads its source directly
                continue
            e = program.eqns[st.nodes[i].eqn]
        if st.plan[i] not in ("region", "skip"):
            for a in e.invars:
                visit(a)
    for a in program.outvars:
        visit(a)
    return found


def _activation_function(program: Program, steps: tuple, origin: Var) -> str:
    """``Layer.function`` of an activation computed by equations ``steps`` from ``origin``."""
    if len(steps) == 1 and _patterns.relu(program.eqns[steps[0]], origin):
        return "relu"
    for j in steps:
        e = program.eqns[j]
        if any(isinstance(a, Var) and _patterns.relu(e, a) for a in e.invars):
            return "rectified"
    return ""


def _mark_last(an: Analysis, ctx: Context, never_last: bool) -> None:
    """``last``: dense/conv nodes whose output reaches the program output without
    crossing another dense/conv node."""
    free = set() if never_last else {v for v in an.program.outvars if isinstance(v, Var)}
    for i in reversed(range(len(an.program.eqns))):
        e = an.program.eqns[i]
        if an.plan[i] == "node":
            spec = an.nodes[i]
            reach = spec.out in free
            if spec.layer.kind in WEIGHTED_KINDS:
                if reach:
                    spec.layer = dataclasses.replace(spec.layer, last=True)
                    ctx.layers[spec.layer.index] = spec.layer
                continue
            if reach:
                free.update(a for a in e.invars if isinstance(a, Var))
        elif an.plan[i] == "skip":
            continue
        elif any(v in free for v in e.outvars):
            free.update(a for a in e.invars if isinstance(a, Var))


def _output_softmaxes(an: Analysis) -> tuple:
    """Layer indices of the softmaxes whose output reaches the function's output
    through routing and elementwise operations only (no layer after them): the
    function returns probabilities (see :func:`jaxlrp.explain._check_probabilities`)."""
    free = {v for v in an.program.outvars if isinstance(v, Var)}
    found = []
    for i in reversed(range(len(an.program.eqns))):
        e, step = an.program.eqns[i], an.plan[i]
        if step == "node":
            spec = an.nodes[i]
            if spec.layer.kind == "softmax" and spec.out in free:
                found.append(spec.layer.index)
        elif step in ("bind", "region") and any(v in free for v in e.outvars):
            free.update(a for a in e.invars if isinstance(a, Var))
    return tuple(sorted(found))


# ------------------------------------------------------------------ ReLU gating


def relu_gated(an: Analysis, rules: dict) -> frozenset:
    r"""Indices of the layers whose output relevance is provably zero wherever their
    output ``z`` is ``<= 0``, given the rules assigned (layer index -> rule).

    The rules of such a layer may skip the terms of non-positive outputs
    (:attr:`jaxlrp.rules.Node.relu_gated`). A layer qualifies when its output is
    read only through ``r = max(z, 0)`` (an activation whose rule routes relevance
    unchanged, :class:`~jaxlrp.rules.Pass`), and everything that reads ``r``,
    directly or through copies of its entries (reshapes, slices, max pooling under
    the winner-takes-all rule, ...), gives no relevance to entries that are zero:
    rules of the form :math:`x \odot g` (``relevance_to_zeros = "none"``). A program
    output, an activation of ``r``, or any other reader disqualifies it: the check
    is a sufficient condition, never a guess.
    """
    program = an.program
    users = readers(program)
    outputs = {v for v in program.outvars if isinstance(v, Var)}
    heads = {spec.eqn: spec for spec in an.nodes.values()}
    producer = producers(program)
    routed = set(an.routed)
    acts: dict = {}
    for value, spec in an.activations.items():
        acts.setdefault(spec.origin, []).append((value, spec))
    memo: dict = {}

    def mode(layer: Layer) -> str:
        return getattr(rules[layer.index], "relevance_to_zeros", "any")

    def none_to_zeros(v: Var) -> bool:
        """Whether the relevance arriving at ``v`` is zero wherever ``v == 0``."""
        if v not in memo:
            memo[v] = False  # while deciding: a cycle proves nothing
            memo[v] = v not in outputs and v not in acts and all(reader(j) for j in users.get(v, ()))
        return memo[v]

    def reader(j: int) -> bool:
        e = program.eqns[j]
        if j in heads:
            spec = heads[j]
            m = mode(spec.layer)
            return m == "none" or (m == "routed" and spec.layer.kind == "maxpool" and none_to_zeros(spec.out))
        if an.plan[j] == "bind" and e.prim.name in P.STOP:
            return True
        if an.plan[j] == "bind" and j in routed and e.prim.name in P.COPYING:
            return all(none_to_zeros(u) for u in e.outvars if inexact(u))
        return False

    def gated(spec: NodeSpec) -> bool:
        z = spec.out
        if z in outputs or len(acts.get(z, ())) != 1 or any(an.plan[j] != "region" for j in users.get(z, ())):
            return False
        ((r, act),) = acts[z]
        return mode(act.layer) == "routed" and _patterns.relu(program.eqns[producer[r]], z) and none_to_zeros(r)

    return frozenset(spec.layer.index for spec in an.nodes.values() if isinstance(spec, LayerSpec) and gated(spec))


# ------------------------------------------------------------------ control flow
#
# A body is one set of equations for every iteration (or branch), so its layers get
# one rule each: a scan layer is ``first`` only if it is first in every iteration
# (the carry's taint and layer depth are fixed points over iterations), and layers
# inside control flow are never ``last``.


def _analyze_shard_map(e: Eqn, taint, prov, depth, ctx) -> list:
    jaxpr, consts = body(e.params, "jaxpr")
    return [analyze(flatten(jaxpr, consts, e.name), taint, prov, depth, ctx, never_last=True)]


def _analyze_cond(e: Eqn, taint, prov, depth, ctx) -> list:
    ops = slice(1, None)  # operand 0 is the branch index
    return [
        analyze(flatten(b.jaxpr, b.consts, e.name), taint[ops], prov[ops], depth[ops], ctx, never_last=True)
        for b in e.params["branches"]
    ]


def _analyze_scan(e: Eqn, taint, prov, depth, ctx) -> list:
    nc, nk = e.params["num_consts"], e.params["num_carry"]
    jaxpr, consts = body(e.params, "jaxpr")
    taint, depth = list(taint), list(depth)
    while True:  # probe without registering layers until the carry is stable
        prog = flatten(jaxpr, consts, e.name)
        probe = analyze(prog, taint, prov, depth, Context(), never_last=True)
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


#: Control-flow primitive (:data:`jaxlrp._core.primitives.CONTROL`) -> the analysis
#: of its bodies; :data:`jaxlrp._core.interpreter.CONTROL_FLOW` holds their evaluation.
CONTROL_FLOW: dict = {"scan": _analyze_scan, "cond": _analyze_cond, "shard_map": _analyze_shard_map}
if set(CONTROL_FLOW) != set(P.CONTROL):
    raise AssertionError("the analysis needs a handler for every control-flow primitive")


def _control_out_depth(e: Eqn, subs: list) -> list:
    """The layer depth of each output of a control-flow equation: the deepest over
    its bodies (a scan's carry after its last step, a cond's branches)."""
    out = [0] * len(e.outvars)
    for sub in subs:
        for k, v in enumerate(sub.program.outvars):
            out[k] = max(out[k], sub.depth.get(v, 0) if isinstance(v, Var) else 0)
    return out


def _control_out_taint(e: Eqn, subs: list) -> list:
    out = [False] * len(e.outvars)
    for sub in subs:
        for k, v in enumerate(sub.program.outvars):
            out[k] = out[k] or (isinstance(v, Var) and v in sub.tainted)
    return out


# --------------------------------------------------------------------- helpers


def inexact(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.inexact)


def _reachable(program: Program, tainted: set, through_stop: bool = False) -> set:
    """Variables reachable from ``tainted`` (control flow: every float output), across
    ``stop_gradient`` only if ``through_stop``."""
    reach = set(tainted)
    for e in program.eqns:
        if (through_stop or e.prim.name not in P.STOP) and any(isinstance(a, Var) and a in reach for a in e.invars):
            reach.update(v for v in e.outvars if inexact(v))
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


def start_values(program: Program, pattern: str, in_prov, data=()) -> list:
    """The variables where an explanation that starts at layer ``pattern`` begins.

    ``pattern`` is a glob matched against the module paths (name stacks) of the
    equations and the parameter paths of their operands. A matched module's
    start values are the floating-point values it computes and something outside
    it reads. For a matched parameter they are the first values that depend both
    on it and on ``data`` (the variables of the argument that would be explained:
    the token ids), so that reads of the parameter alone are not start values: the
    transpose of a tied embedding table in ``h @ E.T``, or a table reshaped before
    its lookup. Without ``data`` (or where no value depends on both), the outputs
    of the equations that read the parameter. Values computed from other start
    values are not start values, and a start value read only by a reshape that
    drops unit axes (the slice axis of a gather) is replaced by that reshape's
    output, the layer's output.
    """
    params = {v for v, p in zip(program.invars, in_prov) if any(fnmatch.fnmatchcase(q, pattern) for q in p)}
    reads = _meeting(program, params, set(data)) if params and data else set()
    if not reads:
        reads = {i for i, e in enumerate(program.eqns) if any(isinstance(a, Var) and a in params for a in e.invars)}
    scope = {}
    for i, e in enumerate(program.eqns):
        parts = e.name.split("/") if e.name else []
        prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        hit = next((q for q in prefixes if fnmatch.fnmatchcase(q, pattern)), None)
        if hit is not None or i in reads:
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
            if inexact(v) and (scope[i] is None or leaves):
                starts.append(v)
                downstream.add(v)
    return [_unit_reshaped(program, v, users, outputs) for v in starts]


def _meeting(program: Program, params: set, data: set) -> set:
    """Indices of the equations where a value first depends on both ``params`` and
    ``data`` (none of their operands does yet)."""
    on_params, on_data, both = set(params), set(data), set()
    found = set()
    for i, e in enumerate(program.eqns):
        ins = [a for a in e.invars if isinstance(a, Var)]
        p, d = any(a in on_params for a in ins), any(a in on_data for a in ins)
        if p:
            on_params.update(e.outvars)
        if d:
            on_data.update(e.outvars)
        if p and d:
            if not any(a in both for a in ins):
                found.add(i)
            both.update(e.outvars)
    return found


def _unit_reshaped(program: Program, v: Var, users: dict, outputs: set) -> Var:
    """``v``, or the output of the reshape that is its only reader, when that
    reshape only drops unit axes (``squeeze``; a gather's slice axis)."""
    while v not in outputs and len(users.get(v, ())) == 1:
        e = program.eqns[users[v][0]]
        (out,) = e.outvars
        if e.prim.name not in P.UNIT_RESHAPES or out.shape != tuple(d for d in v.shape if d != 1):
            break
        v = out
    return v
