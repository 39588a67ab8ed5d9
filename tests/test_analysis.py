"""Unit tests of the static analysis: a jaxpr in, the plan and the node kinds out.

Each case is a tiny function, traced with ``jax.make_jaxpr`` (its last argument is
the explained input, the others are parameters), flattened and analysed. The case
states the treatment it exercises (a function registered in
``_analysis.TREATMENTS``, or ``_unknown`` for primitives in no table), the layers the
analysis must create (``"kind:primitive"``), what it must do with each equation
(:data:`LABELS`), and, for refusals, the primitive the error must name. A spy on the
registry checks that the case reaches its treatment, and
:func:`test_every_treatment_and_kind_has_a_case` fails when a treatment or a kind is
added without a case here. When an end-to-end test fails, these say whether the
analysis (here) or the rule (``test_rules.py``) is wrong.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp._core import analysis as A
from jaxlrp._core import example_axes as EX
from jaxlrp._core import kinds as K
from jaxlrp._core import primitives as P
from jaxlrp._core import program as G
from jaxlrp import rules as R

# What the analysis does with an equation, as the cases state it:
#   node    a rule-bearing node is evaluated here
#   skip    folded into a node evaluated later (a dense layer's head before its bias add)
#   region  part of an activation region
#   control scan / cond / shard_map with analysed bodies
#   routed  relevance-carrying, plain VJP
#   const   no relevance: runs unchanged (parameters, stop_gradient, untainted values)
LABELS = ("node", "skip", "region", "control", "routed", "const")

_rng = np.random.default_rng(0)


def _w(*shape) -> np.ndarray:
    return _rng.normal(size=shape)


# ---------------------------------------------------------------------- harness


def analyse(fn: Callable, *args):
    """``(analysis, layers)`` of ``fn(*args)`` with the leaves of the last argument
    explained and every other leaf a parameter (path ``"p<k>"``)."""
    closed = jax.make_jaxpr(fn)(*args)
    program = G.flatten(closed.jaxpr, closed.consts)
    n, n_x = len(program.invars), len(jax.tree_util.tree_leaves(args[-1]))
    taint = [k >= n - n_x for k in range(n)]
    prov = [set() if t else {f"p{k}"} for k, t in enumerate(taint)]
    ctx = A.Context()
    an = A.analyze(program, taint, prov, [0] * n, ctx)
    return an, tuple(ctx.layers)


def label(an, i: int) -> str:
    """The :data:`LABELS` entry of equation ``i``."""
    step = an.plan[i]
    if step != "bind":
        return step
    if i in an.routed:
        return "routed"
    outs = an.program.eqns[i].outvars
    return "bind" if any(v in an.tainted for v in outs) else "const"


def labels(an) -> dict:
    """Primitive -> labels of its equations, in program order."""
    found: dict = collections.defaultdict(list)
    for i, e in enumerate(an.program.eqns):
        found[e.prim.name].append(label(an, i))
    return dict(found)


def kinds(layers) -> collections.Counter:
    return collections.Counter(f"{layer.kind}:{layer.primitive}" for layer in layers)


def node_of(an, kind: str):
    """The one node of ``kind`` in ``an`` (top level), and its head equation."""
    (spec,) = [s for s in an.nodes.values() if s.layer.kind == kind]
    return spec, an.program.eqns[spec.eqn]


def subs_of(an, primitive: str) -> list:
    (i,) = [i for i, e in enumerate(an.program.eqns) if e.prim.name == primitive]
    return an.subs[i]


@pytest.fixture
def spy(monkeypatch):
    """Record ``(treatment, primitive)`` for every tainted equation analysed."""
    calls: list = []
    wrapped: dict = {}

    def wrap(t):
        if t not in wrapped:
            def recorded(st, site, t=t):
                calls.append((t.__name__, site.eqn.prim.name))
                return t(st, site)

            wrapped[t] = recorded
        return wrapped[t]

    monkeypatch.setattr(A, "TREATMENTS", {name: wrap(t) for name, t in A.TREATMENTS.items()})
    monkeypatch.setattr(A, "_unknown", wrap(A._unknown))
    return calls


# ------------------------------------------------------------------------ cases


@dataclasses.dataclass
class Case:
    id: str
    treatment: str  # the registered treatment the case reaches (by function name)
    fn: Callable
    args: tuple  # parameters ..., explained input (last)
    kinds: tuple = ()  # "kind:primitive" of every layer, in any order
    steps: dict = dataclasses.field(default_factory=dict)  # primitive -> label, or labels in order
    raises: str = ""  # the primitive an UnsupportedOperationError must name
    check: Optional[Callable] = None  # (analysis, layers) -> None: further assertions


def _check_dense(an, layers):
    spec, e = node_of(an, "dense")
    (layer,) = layers
    assert spec.weight == 1 and spec.tainted == (0,) and e.prim.name == "dot_general"
    assert layer.folded == ("add",) and layer.param_paths == ("p0",)
    assert layer.first and layer.last and not layer.constant_weight
    assert layer.input_shapes == ((2, 3),) and layer.output_shape == (2, 4)


def _check_preprocessed_weight(an, layers):
    (layer,) = layers
    assert layer.param_paths == ("p0",) and layer.folded == ()


def _check_closed_over_weight(an, layers):
    (layer,) = layers
    assert layer.constant_weight and layer.param_paths == ()


def _check_two_layers(an, layers):
    first, second = sorted((x for x in layers if x.kind == "dense"), key=lambda x: x.index)
    assert (first.first, first.last, second.first, second.last) == (True, False, False, True)
    (act,) = [x for x in layers if x.kind == "activation"]
    assert act.function == "relu"


def _check_nonnegative(an, layers):
    second = max((x for x in layers if x.kind == "dense"), key=lambda x: x.index)
    assert second.nonnegative  # its input is a ReLU's output


def _check_attention(an, layers):
    spec, e = node_of(an, "attention")
    assert e.prim.name == "dot_general"
    assert spec.tainted == (1, 0)  # (values, probabilities): the special factor second
    softmax, e = node_of(an, "softmax")
    assert e.prim.name == "div" and spec.layer.index > softmax.layer.index


def _check_gate(an, layers):
    spec, e = node_of(an, "gate")
    signal, gate = (e.invars[k] for k in spec.tainted)
    assert an.program.eqns[G.producers(an.program)[gate]].prim.name == "logistic"
    assert an.program.eqns[G.producers(an.program)[signal]].prim.name == "dot_general"


def _check_gated_constant(an, layers):
    spec, e = node_of(an, "gate")
    signal, gate = (e.invars[k] for k in spec.tainted)
    assert signal not in an.tainted  # the (broadcast) parameter is the signal
    assert gate in an.tainted


def _check_glu(an, layers):
    spec, e = node_of(an, "glu")
    other, activated = (e.invars[k] for k in spec.tainted)
    prod = G.producers(an.program)
    assert an.program.eqns[prod[other]].prim.name == "dot_general"
    assert an.program.eqns[prod[activated]].prim.name == "mul"  # silu's x * sigmoid(x)


def _check_normalize_mul(an, layers):
    spec, e = node_of(an, "normalize")
    _, normaliser = (e.invars[k] for k in spec.tainted)
    assert an.program.eqns[G.producers(an.program)[normaliser]].prim.name == "rsqrt"


def _check_softmax(an, layers):
    spec, e = node_of(an, "softmax")
    assert an.program.eqns[G.producers(an.program)[spec.origin]].prim.name == "dot_general"
    # the equations that recompute the probabilities from the source: shift, exp, sum, div
    assert spec.replay[-1] == spec.eqn
    assert {"sub", "exp", "reduce_sum", "div"} <= {an.program.eqns[j].prim.name for j in spec.replay}
    assert an.output_softmax == (spec.layer.index,)  # probabilities are returned


def _check_inner_softmax(an, layers):
    assert an.output_softmax == ()  # a layer follows: not the function's output


def _check_masked_softmax(an, layers):
    spec, _ = node_of(an, "softmax")
    # the relevance goes to the scores, not to the scores plus the mask
    assert an.program.eqns[G.producers(an.program)[spec.origin]].prim.name == "dot_general"
    (summand,) = [s for s in an.nodes.values() if an.program.eqns[s.eqn].prim.name == "add"]
    assert summand.layer.kind == "sum" and summand.affine


def _check_constant_summand(an, layers):
    spec, e = node_of(an, "sum")
    assert spec.affine and spec.tainted == (0,) and e.invars[1] not in an.tainted  # the broadcast parameter


def _check_residual(an, layers):
    spec, e = node_of(an, "sum")
    assert spec.affine and spec.tainted == (0, 1)


def _check_scaling(an, layers):
    spec, e = node_of(an, "sum")
    assert spec.tainted == (1,) and spec.out.shape == (2, 3)


def _check_scatter(an, layers):
    spec, _ = node_of(an, "sum")
    assert spec.affine


def _check_stop(an, layers):
    (i,) = [i for i, e in enumerate(an.program.eqns) if e.prim.name == "stop_gradient"]
    assert an.program.eqns[i].outvars[0] not in an.tainted


def _check_scan(an, layers):
    (body,) = subs_of(an, "scan")
    inner = {spec.layer.kind for spec in body.nodes.values()}
    assert inner == {"dense", "sum"}
    dense = [spec.layer for spec in body.nodes.values() if spec.layer.kind == "dense"]
    # the carry's dense layer is first in no iteration but the first: not "first";
    # the input's is first in every one; nothing in a body is "last"
    assert sorted(x.first for x in dense) == [False, True] and not any(x.last for x in dense)
    assert body.program.invars[2] in body.tainted  # the carry (after 2 consts), by the fixed point


def _check_cond(an, layers):
    branches = subs_of(an, "cond")
    assert [sorted(s.layer.kind for s in b.nodes.values()) for b in branches] == [["dense"], ["dense"]]
    assert sorted(len(b.activations) for b in branches) == [0, 1]


def _check_shard_map(an, layers):
    (body,) = subs_of(an, "shard_map")
    # v.sum() and the psum over devices (jax 0.10: psum_invariant), both sum nodes
    prims = sorted(s.layer.primitive for s in body.nodes.values() if s.layer.kind == "sum")
    assert len(prims) == 2 and prims[0].startswith("psum") and prims[1] == "reduce_sum"
    assert {s.layer.index for s in body.nodes.values()} == {x.index for x in layers}


def _check_inlined(an, layers):
    calls = set(P.CALLS)
    assert not calls.intersection(e.prim.name for e in an.program.eqns)


def _check_named(an, layers):
    (dense,) = [x for x in layers if x.kind == "dense"]
    assert "block" in dense.name  # the name stack of the inlined call


def _check_constant_summand_after_norm(an, layers):
    # LayerNorm's beta after the normaliser is a constant summand, not part of an
    # unfolded normalisation
    adds = [s for s in an.nodes.values() if s.layer.kind == "sum" and an.program.eqns[s.eqn].prim.name == "add"]
    assert any(s.affine and s.tainted == (0,) and an.program.eqns[s.eqn].invars[1] not in an.tainted for s in adds)
    assert "normalize:mul" in kinds(layers)


def _check_root_normalization(an, layers):
    spec, e = node_of(an, "normalize")
    assert e.prim.name == "div" and spec.tainted == (0, 1)
    assert an.program.eqns[G.producers(an.program)[e.invars[1]]].prim.name == "sqrt"


def _conv(w, b, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")
    return y + b[None, :, None, None]


def _maxpool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2), (1, 2), "VALID")


def _avgpool(x):
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2), (1, 2), "VALID")


def _scan(w, u, xs):
    def step(c, x):
        h = jax.nn.relu(c @ w + x @ u)
        return h, h

    return jax.lax.scan(step, jnp.zeros(3), xs)[1]


def _shard_map(x):
    mesh = jax.make_mesh((1,), ("d",))
    f = jax.shard_map(lambda v: jax.lax.psum(v.sum(), "d"), mesh=mesh, in_specs=jax.sharding.PartitionSpec(),
                      out_specs=jax.sharding.PartitionSpec())
    return f(x)


def _custom_vjp():
    @jax.custom_vjp
    def f(x):
        return jnp.tanh(x)

    f.defvjp(lambda x: (f(x), x), lambda x, g: (g,))
    return f


def _named(w, x):
    @jax.jit
    def block(x):
        with jax.named_scope("block"):
            return x @ w

    return block(x)


_tanh_vjp = _custom_vjp()
W34, W43, W33, B4 = _w(3, 4), _w(4, 3), _w(3, 3), _w(4)
X23, X3, C3, C23 = _w(2, 3), _w(3), _w(3), _w(2, 3)
dense = "dense:dot_general"
# jax.nn.softmax's exp, read by the sum of the denominator, and max(reduce_max(x), -inf),
# read by stop_gradient: activation regions of their own (Pass)
SOFTMAX_ACTS = ("activation:exp", "activation:max")

CASES = [
    # --- weighted layers: a weight operand computed from parameters
    Case("dense+bias", "_linear", lambda w, b, x: x @ w + b, (W34, B4, X23), (dense,),
         {"dot_general": "skip", "add": "node"}, check=_check_dense),
    Case("conv+bias", "_linear", _conv, (_w(3, 2, 3, 3), _w(3), _w(1, 2, 4, 4)), ("conv:conv_general_dilated",),
         {"conv_general_dilated": "skip", "add": "node", "broadcast_in_dim": "const"}),
    Case("preprocessed weight", "_linear", lambda w, x: x @ (2.0 * w.T).T, (W34, X23), (dense,),
         {"mul": "const", "transpose": "const", "dot_general": "node"}, check=_check_preprocessed_weight),
    Case("closed-over weight", "_linear", lambda x: x @ W34, (X23,), (dense,), {"dot_general": "node"},
         check=_check_closed_over_weight),
    Case("weight of literals: routing", "_linear", lambda x: x @ jnp.ones((3, 4)), (X23,), (),
         {"dot_general": "routed", "broadcast_in_dim": "const"}),
    Case("relu network", "_linear", lambda w, v, x: jax.nn.relu(x @ w) @ v, (W34, W43, X23),
         (dense, dense, "activation:max"), {"dot_general": ["node", "node"], "max": "region"},
         check=_check_two_layers),
    Case("nonnegative input", "_linear", lambda w, v, x: jax.nn.relu(x @ w) @ v, (W34, W43, X23),
         (dense, dense, "activation:max"), check=_check_nonnegative),
    Case("matrix product of inverses", "_linear", lambda x: (1.0 / x) @ (1.0 / x).T, (X23,), raises="dot_general"),
    Case("attention", "_linear", lambda x: jax.nn.softmax(x @ x.T) @ x, (X23,),
         ("product:dot_general", "softmax:div", "attention:dot_general", "sum:reduce_sum", *SOFTMAX_ACTS),
         check=_check_attention),
    # --- elementwise functions of one origin: activation regions
    Case("tanh", "_activation", lambda w, x: jnp.tanh(x @ w), (W34, X23), (dense, "activation:tanh"),
         {"tanh": "region"}),
    Case("inline gelu", "_activation", lambda x: jax.nn.gelu(x, approximate=True), (X23,), ("activation:mul",),
         {"tanh": "region", "integer_pow": "region", "mul": "region", "add": "region"}),
    Case("two origins, no rule", "_activation", lambda w, v, x: jnp.arctan2(x @ w, x @ v), (W34, W34, X23),
         raises="atan2"),
    Case("relu", "_select", lambda w, x: jax.nn.relu(x @ w), (W34, X23), (dense, "activation:max"),
         {"max": "region"}, check=lambda an, ls: [x for x in ls if x.kind == "activation"][0].function == "relu"),
    Case("max of two origins", "_select", lambda w, v, x: jnp.maximum(x @ w, x @ v), (W34, W34, X23),
         (dense, dense), {"max": "routed"}),
    # --- sums and constant summands
    Case("residual", "_elementwise_sum", lambda w, x: jnp.tanh(x @ w) + x, (W33, X23),
         (dense, "sum:add", "activation:tanh"), {"add": "node"}, check=_check_residual),
    Case("constant summand", "_elementwise_sum", lambda c, x: jnp.tanh(x) + c, (C3, X23),
         ("sum:add", "activation:tanh"), {"add": "node"}, check=_check_constant_summand),
    Case("literal summand", "_elementwise_sum", lambda x: jnp.tanh(x) + 3.0, (X23,), ("activation:add",),
         {"add": "region"}),
    Case("unfolded batchnorm", "_elementwise_sum", lambda m, a, c, x: (x - m) * a + c, (C3, C3, C3, X23),
         ("activation:add",), {"sub": "region", "mul": "region", "add": "region"}),
    Case("summand after a normaliser", "_elementwise_sum",
         lambda c, x: jax.nn.standardize(x, axis=-1) * 2.0 + c, (C3, X23), check=_check_constant_summand_after_norm),
    # --- products
    Case("gate", "_multiply", lambda w, v, x: (x @ w) * jax.nn.sigmoid(x @ v), (W34, W34, X23),
         (dense, dense, "gate:mul", "activation:logistic"), check=_check_gate),
    Case("gated constant", "_multiply", lambda c, x: c * jax.nn.sigmoid(x), (C3, X23),
         ("gate:mul", "activation:logistic"), check=_check_gated_constant),
    Case("hard sigmoid gate", "_multiply", lambda w, x: (x @ w) * jax.nn.hard_sigmoid(x @ w), (W33, X23),
         (dense, dense, "gate:mul", "activation:div")),
    Case("glu", "_multiply", lambda w, v, x: jax.nn.silu(x @ w) * (x @ v), (W34, W34, X23),
         (dense, dense, "glu:mul", "activation:mul"), check=_check_glu),
    Case("product", "_multiply", lambda w, v, x: (x @ w) * (x @ v), (W34, W34, X23), (dense, dense, "product:mul"),
         {"mul": "node"}),
    Case("scaling with broadcast", "_multiply", lambda c, x: c * x, (C23, X3), ("sum:mul",), {"mul": "node"},
         check=_check_scaling),
    Case("rmsnorm", "_multiply", lambda x: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6), (X23,),
         ("normalize:mul", "sum:reduce_sum", "activation:rsqrt", "activation:mul"), check=_check_normalize_mul),
    Case("product of two inverses", "_multiply", lambda w, x: jax.lax.rsqrt(x) * jax.lax.rsqrt(x @ w),
         (W33, jnp.abs(X23)), raises="mul"),
    # --- quotients
    Case("softmax", "_quotient", lambda w, x: jax.nn.softmax(x @ w), (W34, X23),
         (dense, "softmax:div", "sum:reduce_sum", *SOFTMAX_ACTS), {"stop_gradient": "const", "exp": "region"},
         check=_check_softmax),
    Case("softmax, then a layer", "_quotient", lambda w, v, x: jax.nn.softmax(x @ w) @ v, (W34, W43, X23),
         (dense, dense, "softmax:div", "sum:reduce_sum", *SOFTMAX_ACTS), check=_check_inner_softmax),
    Case("masked softmax", "_quotient", lambda w, m, x: jax.nn.softmax(x @ w + m), (W34, _w(2, 4), X23),
         (dense, "softmax:div", "sum:reduce_sum", "sum:add", *SOFTMAX_ACTS), check=_check_masked_softmax),
    Case("layernorm with div", "_quotient",
         lambda x: (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5), (X23,),
         check=_check_root_normalization),
    Case("x / sum(x): divide", "_quotient", lambda x: x / jnp.sum(x, -1, keepdims=True), (X23,),
         ("divide:div", "sum:reduce_sum"), {"div": "node"}),
    Case("inverse over a value", "_quotient", lambda w, x: (1.0 / x) / (x @ w), (W33, X23), raises="div"),
    # --- sums, pools
    Case("reduce_sum", "_sum", lambda x: jnp.sum(x, 0), (X23,), ("sum:reduce_sum",), {"reduce_sum": "node"}),
    Case("cumsum", "_sum", lambda x: jnp.cumsum(x, 1), (X23,), ("sum:cumsum",), {"cumsum": "node"}),
    Case("avgpool", "_sum", _avgpool, (_w(2, 4),), ("avgpool:reduce_window_sum",)),
    Case("scatter-add", "_sum", lambda x: jnp.zeros(5).at[jnp.array([0, 2, 2])].add(x), (X3,),
         ("sum:scatter-add",), check=_check_scatter),
    Case("maxpool", "_pool", _maxpool, (_w(2, 4),), ("maxpool:reduce_window_max",)),
    # --- routing: the plain VJP
    Case("structural", "_route", lambda x: jnp.concatenate([x.T.reshape(-1)[1:4], x[0, ::-1]]), (X23,), (),
         {"transpose": "routed", "reshape": "routed", "slice": "routed", "concatenate": "routed", "rev": "routed"}),
    Case("gather", "_route", lambda x: x[jnp.array([1, 0, 1])], (X23,), (), {"gather": "routed"}),
    Case("global max", "_route", lambda x: jnp.max(x, 1), (X23,), (), {"reduce_max": "routed"}),
    Case("stop_gradient", "_activation", lambda x: jnp.tanh(x) * jax.lax.stop_gradient(x), (X23,),
         ("activation:mul",), {"stop_gradient": "const", "mul": "region"}, check=_check_stop),
    # --- control flow
    Case("scan", "_control", _scan, (W33, W33, _w(4, 3)), (dense, dense, "sum:add", "activation:max"),
         {"scan": "control"}, check=_check_scan),
    Case("cond", "_control", lambda p, w, v, x: jax.lax.cond(p[0] > 0, lambda x: x @ w, lambda x: jnp.tanh(x @ v), x),
         (C3, W34, W34, X23), (dense, dense, "activation:tanh"), {"cond": "control"}, check=_check_cond),
    Case("shard_map", "_control", _shard_map, (X3,), (), {"shard_map": "control"},
         check=_check_shard_map),
    Case("jit", "_linear", _named, (W34, X23), (dense,), check=_check_named),
    Case("custom_jvp", "_select", lambda x: jax.nn.relu(x), (X23,), ("activation:max",), {"max": "region"},
         check=_check_inlined),
    Case("custom_vjp", "_activation", lambda x: _tanh_vjp(x), (X23,), ("activation:tanh",), {"tanh": "region"},
         check=_check_inlined),
    Case("remat", "_activation", lambda x: jax.checkpoint(jnp.sin)(x), (X23,), ("activation:sin",),
         check=_check_inlined),
    # --- refused
    Case("while", "_unsupported", lambda x: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2), (0, x))[1],
         (X23,), raises="while"),
    Case("reduce_prod", "_unsupported", lambda x: jnp.prod(x, 0), (X23,), raises="reduce_prod"),
    Case("cumprod", "_unsupported", lambda x: jnp.cumprod(x, 0), (X23,), raises="cumprod"),
    Case("unknown primitive", "_unknown", lambda x: jax.lax.top_k(x, 2)[0], (X23,), raises="top_k"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, spy):
    if case.raises:
        with pytest.raises(jaxlrp.UnsupportedOperationError) as info:
            analyse(case.fn, *case.args)
        assert info.value.primitive == case.raises
        assert f"'{case.raises}'" in str(info.value)
        assert (case.treatment, case.raises) in spy
        return
    an, layers = analyse(case.fn, *case.args)
    assert case.treatment in {t for t, _ in spy}, spy
    if case.kinds:
        assert kinds(layers) == collections.Counter(case.kinds)
    else:
        assert case.check is not None or not layers, kinds(layers)
    found = labels(an)
    for prim, want in case.steps.items():
        got = found.get(prim)
        assert got is not None, f"no {prim} in {sorted(found)}"
        want = list(want) if isinstance(want, list) else [want] * len(got)
        assert got == want, (prim, got, want)
    assert [layer.index for layer in layers] == list(range(len(layers)))
    if case.check is not None:
        assert case.check(an, layers) is not False


def test_every_treatment_and_kind_has_a_case():
    """A new treatment (a ``_define`` line) or a new kind fails here until it has a case."""
    registered = {t.__name__ for t in A.TREATMENTS.values()} | {A._unknown.__name__}
    covered = {c.treatment for c in CASES}
    assert registered <= covered, f"treatments without a case: {sorted(registered - covered)}"
    assert covered <= registered, f"cases name no treatment: {sorted(covered - registered)}"
    made = {k.split(":")[0] for c in CASES for k in c.kinds} | {"normalize"}  # layernorm with div: in its check
    assert set(K.KINDS) <= made, f"kinds without a case: {sorted(set(K.KINDS) - made)}"


def test_every_treated_primitive_has_an_axis_rule_or_is_untracked():
    """Every primitive that carries relevance (a treatment other than the refusal) has
    an example-axis rule or is listed as not tracked, and the lists say no more: a new
    primitive in a treatment's table fails here until ``primitives`` says how it moves
    the example axes."""
    carrying = {name for name, t in A.TREATMENTS.items() if t is not A._unsupported}
    missing = carrying - EX.AXIS_RULES.keys() - P.AXES_UNTRACKED
    assert not missing, f"primitives with a treatment but no axis rule: {sorted(missing)}"
    assert P.AXES_UNTRACKED <= carrying, sorted(P.AXES_UNTRACKED - carrying)
    assert not EX.AXIS_RULES.keys() & P.AXES_UNTRACKED


def test_control_flow_has_one_table():
    """The analysis and the interpreter handle exactly the control flow of ``primitives``."""
    from jaxlrp._core import interpreter as I

    assert set(A.CONTROL_FLOW) == set(I.CONTROL_FLOW) == set(P.CONTROL) == {n for n, t in A.TREATMENTS.items() if t is A._control}


def test_every_refused_primitive_names_its_hint():
    """Every known-unsupported primitive has a hint, and the treatment quotes it."""
    for name, hint in P.UNSUPPORTED_HINTS.items():
        assert A.TREATMENTS[name] is A._unsupported and hint
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="lax.scan"):
        analyse(CASES[[c.id for c in CASES].index("while")].fn, X23)


def test_untainted_work_is_constant():
    """Parameter preprocessing and integer index arithmetic carry no relevance."""
    an, layers = analyse(lambda w, x: x[jnp.argmax(w[0])] * jnp.exp(w).sum(), W34, X23)
    found = labels(an)
    assert set(found["exp"]) == {"const"} and set(found["argmax"]) == {"const"}
    assert not any(v in an.tainted for i, e in enumerate(an.program.eqns) for v in e.outvars
                   if e.prim.name in ("exp", "argmax"))


# ------------------------------------------------------------------- relu gating


def _relu_net(w, v, x):
    return jax.nn.relu(x @ w) @ v


def _rules(layers, **by_kind):
    default = {"dense": R.Zero(), "activation": R.Pass(), "sum": R.Norm(), "maxpool": R.WinnerTakesAll()}
    default.update(by_kind)
    return {layer.index: default[layer.kind] for layer in layers}


def _gated(fn, *args, **by_kind):
    an, layers = analyse(fn, *args)
    gated = A.relu_gated(an, _rules(layers, **by_kind))
    return {(layers[i].kind, layers[i].first) for i in gated}


def test_relu_gating_of_a_layer_before_a_relu():
    # the first layer's output relevance is zero wherever its output is <= 0
    assert _gated(_relu_net, W34, W43, X23) == {("dense", True)}


def test_relu_gating_is_a_sufficient_condition():
    # a rule that may give relevance to zeros after the ReLU: no promise
    assert _gated(_relu_net, W34, W43, X23, dense=R.Gradient()) == set()
    # an activation rule other than Pass (ReLUGuidedBackprop: "any")
    assert _gated(_relu_net, W34, W43, X23, activation=R.Gradient()) == set()
    # the ReLU's output is the program's output
    assert _gated(lambda w, x: jax.nn.relu(x @ w), W34, X23) == set()
    # the layer's output is read outside the ReLU too
    def read_twice(w, v, x):
        h = x @ w
        return jax.nn.relu(h) @ v + h.sum()

    assert _gated(read_twice, W34, W43, X23) == set()
    # a tanh is no ReLU
    assert _gated(lambda w, v, x: jnp.tanh(x @ w) @ v, W34, W43, X23) == set()


def test_relu_gating_through_copies_and_max_pooling():
    def fn(w, v, x):
        h = _maxpool(jax.nn.relu(x @ w))
        return h.reshape(2, 2) @ v[:2]

    assert _gated(fn, W34, W43, X23) == {("dense", True)}
