"""Unit tests of the interpreter alone: an analysed program, rules by layer index, values.

The program is traced and analysed as in ``test_analysis.py`` (last argument
explained); the rules are assigned here by kind, without composites, and
``_interpreter.evaluate`` is differentiated with ``jax.vjp`` as ``jaxlrp.lrp`` does.
What is checked:

* the forward values are the function's, whatever the rules;
* with :class:`~jaxlrp.rules.Gradient` on every node (and ``Pass`` nowhere) the
  backward pass is ``jax.vjp`` of the function: every node's ``apply``, context and
  folded chain is the model's own map, in scan and cond bodies too;
* fixed rules give the float64 NumPy reference (``tests/reference.py``);
* LRP-0 on a ReLU network is gradient x input, through scan and cond bodies;
* taps, masks, the ReLU-gating flag, and the recompute map of activations and
  softmaxes (``_region_map``, ``_program.replay``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from jaxlrp._core import analysis as A
from jaxlrp._core import interpreter as I
from jaxlrp._core import program as G
from jaxlrp import rules as R

_rng = np.random.default_rng(1)


def _w(*shape) -> np.ndarray:
    return _rng.normal(size=shape)


def analyse(fn, *args):
    """``(analysis, layers)`` of ``fn(*args)``, the last argument explained."""
    closed = jax.make_jaxpr(fn)(*args)
    program = G.flatten(closed.jaxpr, closed.consts)
    n = len(program.invars)
    taint = [k == n - 1 for k in range(n)]
    prov = [set() if t else {f"p{k}"} for k, t in enumerate(taint)]
    ctx = A.Context()
    return A.analyze(program, taint, prov, [0] * n, ctx), tuple(ctx.layers)


DEFAULT = {
    "dense": R.Epsilon(1e-6), "conv": R.Epsilon(1e-6), "sum": R.Norm(), "avgpool": R.Norm(),
    "maxpool": R.WinnerTakesAll(), "product": R.Uniform(), "glu": R.Uniform(), "gate": R.SignalTakesAll(),
    "attention": R.Uniform(), "normalize": R.SignalTakesAll(), "divide": R.SignalTakesAll(),
    "softmax": R.Softmax(), "activation": R.Pass(),
}


def rules_for(layers, everywhere=None, **by_kind) -> dict:
    table = {**DEFAULT, **by_kind}
    return {x.index: everywhere or table[x.kind] for x in layers}


@functools.partial(jax.jit, static_argnums=0)
def _vjp(fn, args, seed):
    """``(fn(*args), vjp of seed)`` for the last argument."""
    out, pull = jax.vjp(lambda x: fn(*args[:-1], x), args[-1])
    return out, pull(seed)[0]


def explain(fn, args, rules=None, seed=None, **kw):
    """``(out, relevance of the last argument)`` of the interpreter with ``rules``
    (default: :data:`DEFAULT` by kind) for output relevance ``seed`` (default: ones)."""
    an, layers = analyse(fn, *args)
    rules = rules_for(layers) if rules is None else rules(layers)
    params = list(args[:-1])

    @jax.jit  # one compilation: eager dispatch compiles every primitive on its own
    def run(x, seed):
        out, pull = jax.vjp(lambda x: I.evaluate(an, rules, [*params, x], **kw)[0], x)
        (rel,) = pull(jnp.ones_like(out) if seed is None else seed)
        return out, rel

    return run(args[-1], seed)


# ------------------------------------------------------------- functions


def _mlp(w, b, v, c, x):
    return jax.nn.relu(x @ w + b) @ v + c


def _folded_batchnorm(w, m, a, c, x):
    return jnp.tanh(((x @ w) - m) * a + c)


def _attention(wq, wk, wv, x):
    s = (x @ wq) @ (x @ wk).T / 2.0
    return jax.nn.softmax(s, -1) @ (x @ wv)


def _gated(w, u, x):
    return (x @ w) * jax.nn.sigmoid(x @ u) + jax.nn.silu(x @ u) * (x @ w)


def _layernorm(g, b, x):
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b


def _pools(x):
    y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2), (1, 2), "VALID")
    return jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 2), (1, 1), "VALID") + jnp.cumsum(x, 1)[:, :1]


def _divide(x):
    return x / (1.0 + jnp.sum(x * x, -1, keepdims=True))


def _conv(k, x):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")


def _rnn(w, u, xs):
    """A ReLU RNN without biases: LRP-0 is gradient x input."""
    def step(c, x):
        h = jax.nn.relu(c @ w + x @ u)
        return h, h

    return jax.lax.scan(step, jnp.zeros(3), xs)[1].sum(0)


def _rnn_unrolled(w, u, xs):
    c, total = jnp.zeros(3), 0.0
    for x in xs:
        c = jax.nn.relu(c @ w + x @ u)
        total = total + c
    return total


def _scan_with_context(s, w, m, xs):
    """A body whose nodes read traced operands besides their inputs: the activation's
    scale ``s`` and the softmax's mask row ``m_t`` (a scanned parameter)."""
    def step(c, xm):
        x, mt = xm
        h = jnp.tanh((x + c) * s)
        p = jax.nn.softmax(h @ w + mt)
        return h * 0.5, p

    return jax.lax.scan(step, jnp.zeros(3), (xs, m))[1]


def _scan_ctx(s, w, m, xs):  # argument order: explained input last
    return _scan_with_context(s, w, m, xs)


def _cond(p, w, v, x):
    return jax.lax.cond(p[0] > 0, lambda x: jax.nn.relu(x @ w) @ v, lambda x: (x @ w) @ v, x)


FUNCTIONS = {
    "mlp": (_mlp, (_w(3, 4), _w(4), _w(4, 2), _w(2), _w(5, 3))),
    "folded batchnorm": (_folded_batchnorm, (_w(3, 4), _w(4), _w(4), _w(4), _w(5, 3))),
    "conv": (_conv, (_w(3, 2, 3, 3), _w(1, 2, 4, 4))),
    "attention": (_attention, (_w(3, 3), _w(3, 3), _w(3, 3), _w(4, 3))),
    "gates and glu": (_gated, (_w(3, 3), _w(3, 3), _w(4, 3))),
    "layernorm": (_layernorm, (_w(3), _w(3), _w(4, 3))),
    "pools and cumsum": (_pools, (_w(2, 8),)),
    "divide": (_divide, (_w(2, 3),)),
    "scan": (_rnn, (_w(3, 3), _w(3, 3), _w(4, 3))),
    "scan with context": (_scan_ctx, (_w(3), _w(3, 3), _w(4, 3), _w(4, 3))),
    "cond, true": (_cond, (np.ones(1), _w(3, 4), _w(4, 2), _w(3))),
    "cond, false": (_cond, (-np.ones(1), _w(3, 4), _w(4, 2), _w(3))),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_forward_is_the_function_and_gradient_rule_is_the_vjp(name):
    """The forward values are the function's; every node's backward pass with the
    Gradient rule is the VJP of its own map: weights and folded scales, affine
    biases, replayed activations and softmaxes with their context operands
    (residuals of the custom VJP, inside scans too)."""
    fn, args = FUNCTIONS[name]
    seed = _rng.normal(size=jax.eval_shape(fn, *args).shape)
    want, grad = _vjp(fn, args, seed)
    out, rel = explain(fn, args, rules=lambda layers: rules_for(layers, everywhere=R.Gradient()), seed=seed)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(rel, grad, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- fixed rules vs NumPy


def test_epsilon_on_a_dense_network_is_the_reference():
    w, b, v, c = _w(3, 4), _w(4), _w(4, 2), _w(2)
    x = _w(3)
    seed = _w(2)
    eps = 0.1
    _, rel = explain(_mlp, (w, b, v, c, x), rules=lambda ls: rules_for(ls, dense=R.Epsilon(eps)), seed=seed)
    h = np.maximum(x @ w + b, 0.0)
    r_h = ref.lrp_linear("epsilon", h, v, c, seed, lambda m: m.T, epsilon=eps)
    r_x = ref.lrp_linear("epsilon", x, w, b, r_h, lambda m: m.T, epsilon=eps)  # ReLU: Pass
    np.testing.assert_allclose(rel, r_x, rtol=1e-10, atol=1e-12)


def test_folded_batchnorm_is_the_reference():
    """The chain ``((x W) - m) * a + c`` is one layer with weight ``W a`` and bias
    ``c - m a``; the tanh after it passes relevance unchanged."""
    w, m, a, c, x, seed = _w(3, 4), _w(4), _w(4), _w(4), _w(3), _w(4)
    an, layers = analyse(_folded_batchnorm, w, m, a, c, x)
    (dense,) = [x for x in layers if x.kind == "dense"]
    assert dense.folded == ("sub", "mul", "add")
    _, rel = explain(_folded_batchnorm, (w, m, a, c, x), rules=lambda ls: rules_for(ls, dense=R.Zero()), seed=seed)
    want = ref.lrp_linear("zero", x, w * a, c - m * a, seed, lambda k: k.T)
    np.testing.assert_allclose(rel, want, rtol=1e-10, atol=1e-12)


def _conv_nhwc(k, b, x):
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, k, (2, 1), ((1, 1), (1, 0)), dimension_numbers=dn) + b


def test_epsilon_on_a_conv_layer_is_the_reference():
    k, b, x = _w(3, 2, 2, 3), _w(3), _w(1, 5, 4, 2)
    seed = _w(*jax.eval_shape(_conv_nhwc, k, b, x).shape)
    _, rel = explain(_conv_nhwc, (k, b, x), rules=lambda ls: rules_for(ls, conv=R.Epsilon(0.1)), seed=seed)
    (layer,) = analyse(_conv_nhwc, k, b, x)[1]
    assert (layer.kind, layer.folded) == ("conv", ("add",))

    def to_matrix(kernel):
        return ref.conv_matrix(kernel, (5, 4, 2), (2, 1), ((1, 1), (1, 0)))[0]

    want = ref.lrp_linear("epsilon", x[0].ravel(), k, np.tile(b, seed.size // 3), seed.ravel(), to_matrix,
                          epsilon=0.1)
    np.testing.assert_allclose(rel[0].ravel(), want, rtol=1e-10, atol=1e-12)


def test_subtracted_from_a_constant_absorbs_its_share():
    """``c - x``: a sum node whose bias is ``c``; ``Norm`` gives ``-x R / (c - x)``."""
    c, x, seed = _w(3), _w(3), _w(3)
    _, rel = explain(lambda c, x: c - x, (c, x), rules=lambda ls: rules_for(ls, sum=R.Norm(0.01)), seed=seed)
    np.testing.assert_allclose(rel, -x * seed / ref.stabilize(c - x, 0.01), rtol=1e-12)


def test_constant_summand_absorbs_its_share():
    """``x + c`` with ``c`` a parameter: ``Norm`` gives ``x R / (x + c)``."""
    c, x, seed = _w(3), _w(3), _w(3)
    _, rel = explain(lambda c, x: x + c, (c, x), rules=lambda ls: rules_for(ls, sum=R.Norm(0.01)), seed=seed)
    np.testing.assert_allclose(rel, x * seed / ref.stabilize(x + c, 0.01), rtol=1e-12)


def test_residual_sum_splits_in_proportion():
    w, x, seed = _w(3, 3), _w(3), _w(3)
    _, rel = explain(lambda w, x: x @ w + x, (w, x), rules=lambda ls: rules_for(ls, dense=R.Zero(), sum=R.Norm(0.0)),
                     seed=seed)
    z = x @ w + x
    r_dense, r_skip = (x @ w) * seed / z, x * seed / z
    want = ref.lrp_linear("zero", x, w, None, r_dense, lambda k: k.T) + r_skip
    np.testing.assert_allclose(rel, want, rtol=1e-10)


def test_softmax_rule_is_the_reference():
    """AttnLRP's softmax rule ``x (R - s sum R)`` at the softmax's source, replayed
    through the shift by the (stopped) maximum."""
    x, seed = _w(5), _w(5)
    _, rel = explain(lambda x: jax.nn.softmax(x), (x,), seed=seed,
                     rules=lambda ls: rules_for(ls, softmax=R.Softmax(0.0)))
    s = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    np.testing.assert_allclose(rel, x * (seed - s * seed.sum()), rtol=1e-10)


def test_products_split_as_their_rules_say():
    a_w, g_w, x, seed = _w(3, 3), _w(3, 3), _w(3), _w(3)

    def fn(w, u, x):
        return (x @ w) * jax.nn.sigmoid(x @ u)

    def r(**kw):
        return explain(fn, (a_w, g_w, x), seed=seed, rules=lambda ls: rules_for(ls, dense=R.Zero(), **kw))[1]

    a, g = x @ a_w, 1.0 / (1.0 + np.exp(-(x @ g_w)))
    z = a * g
    half = 0.5 * seed  # Uniform: each factor a z'/z R = R / 2
    want_uniform = ref.lrp_linear("zero", x, a_w, None, half, lambda k: k.T) + \
        ref.lrp_linear("zero", x, g_w, None, half, lambda k: k.T)  # the gate's half passes the sigmoid
    np.testing.assert_allclose(r(gate=R.Uniform(0.0)), want_uniform, rtol=1e-9)
    want_signal = ref.lrp_linear("zero", x, a_w, None, seed, lambda k: k.T)
    np.testing.assert_allclose(r(gate=R.SignalTakesAll(0.0)), want_signal, rtol=1e-10)
    assert np.all(np.isfinite(z))


# -------------------------------------------------------------- control flow


def _gradient_times_input(fn, args):
    """``x * df/dx`` summed over the outputs: LRP-0's relevance for the seed ``f(x)``."""
    return args[-1] * jax.jit(jax.grad(lambda x: fn(*args[:-1], x).sum()))(args[-1])


LRP0 = {"dense": R.Zero(), "sum": R.Norm(0.0)}


@pytest.mark.parametrize("name", ["scan", "cond, true", "cond, false"])
def test_lrp0_through_control_flow_is_gradient_times_input(name):
    fn, args = FUNCTIONS[name]
    _, rel = explain(fn, args, rules=lambda ls: rules_for(ls, **LRP0), seed=jax.jit(fn)(*args))
    np.testing.assert_allclose(rel, _gradient_times_input(fn, args), rtol=1e-9, atol=1e-12)


def test_scan_body_equals_the_unrolled_loop():
    w, u, xs = _w(3, 3), _w(3, 3), _w(4, 3)
    # Norm(0): at the first step the scan's carry layer gives 0 (h0 = 0) and its sum
    # node passes the rest on whole, as the unrolled loop, which has no sum there;
    # a stabiliser there would absorb a share the loop does not
    kw = {"dense": R.Epsilon(0.3), "sum": R.Norm(0.0)}
    _, scanned = explain(_rnn, (w, u, xs), rules=lambda ls: rules_for(ls, **kw))
    _, unrolled = explain(_rnn_unrolled, (w, u, xs), rules=lambda ls: rules_for(ls, **kw))
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-10, atol=1e-12)


def test_scan_under_jit_keeps_context_as_residuals():
    """The body's context operands are residuals of the custom VJPs: transposing the
    scan under ``jit`` leaks no tracer, and equals the eager result."""
    fn, args = FUNCTIONS["scan with context"]
    an, layers = analyse(fn, *args)
    rules = rules_for(layers, everywhere=R.Gradient())
    params = list(args[:-1])

    def rel(x):
        out, pull = jax.vjp(lambda x: I.evaluate(an, rules, [*params, x])[0], x)
        return pull(jnp.ones_like(out))[0]

    np.testing.assert_allclose(jax.jit(rel)(args[-1]), rel(args[-1]), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- recompute map


def test_region_map_recomputes_the_activation_from_its_origin():
    s = _w(3)
    an, layers = analyse(lambda s, x: jnp.tanh(x * s) ** 2, s, _w(2, 3))
    (spec,) = an.activations.values()
    apply, outer = I._region_map(an, spec)
    assert len(outer) == 1 and outer[0].shape == (1, 3)  # s, broadcast: read by the replay
    x2 = _w(2, 3)
    got = jax.jit(lambda x2, s: apply((x2,), None, (s,)))(x2, s[None])
    np.testing.assert_allclose(got, np.tanh(x2 * s) ** 2, rtol=1e-13)


def test_softmax_replay_recomputes_the_probabilities_from_the_scores():
    w = _w(3, 4)
    an, _ = analyse(lambda w, x: jax.nn.softmax(x @ w), w, _w(2, 3))
    (spec,) = [s for s in an.nodes.values() if s.layer.kind == "softmax"]
    outer = I._replay_inputs(an, spec)
    z2 = _w(2, 4)
    # the replay reads the maximum it subtracts (stopped) besides the source
    ctx = {v: np.broadcast_to(z2.max(-1, keepdims=True), v.shape) for v in outer}
    out = jax.jit(lambda z2: G.replay(an.program, spec.replay, {spec.origin: z2, **ctx}, lambda a: a.val)[spec.out])
    s = np.exp(z2 - z2.max(-1, keepdims=True))
    np.testing.assert_allclose(out(z2), s / s.sum(-1, keepdims=True), rtol=1e-13)


# ---------------------------------------------------------- taps, masks, flags


def test_taps_give_the_relevance_at_a_layers_input_and_output():
    w, b, v, c, x, seed = _w(3, 4), _w(4), _w(4, 2), _w(2), _w(3), _w(2)
    an, layers = analyse(_mlp, w, b, v, c, x)
    rules = rules_for(layers)
    last = max(i for i, s in an.nodes.items() if s.layer.kind == "dense")
    spec = an.nodes[last]
    e = an.program.eqns[spec.eqn]
    taps = {spec.layer.index: ((jnp.zeros(e.invars[0].shape),), jnp.zeros(spec.out.shape))}

    def f(x, taps):
        return I.evaluate(an, rules, [w, b, v, c, x], taps)[0]

    @jax.jit
    def run(x, taps, seed):
        return jax.vjp(f, x, taps)[1](seed)

    rel, tap_rel = run(x, taps, seed)
    (r_in,), r_out = tap_rel[spec.layer.index]
    h = np.maximum(x @ w + b, 0.0)
    np.testing.assert_allclose(r_out, seed, rtol=1e-13)
    np.testing.assert_allclose(r_in, ref.lrp_linear("epsilon", h, v, c, seed, lambda m: m.T), rtol=1e-10)


def test_masks_condition_a_layers_output_relevance():
    w, b, v, c, x, seed = _w(3, 4), _w(4), _w(4, 2), _w(2), _w(3), _w(2)
    an, layers = analyse(_mlp, w, b, v, c, x)
    first = min(s.layer.index for s in an.nodes.values() if s.layer.kind == "dense")

    @jax.jit
    def rel(masks):
        out, pull = jax.vjp(lambda x: I.evaluate(an, rules_for(layers), [w, b, v, c, x], masks=masks)[0], x)
        return pull(seed)[0]

    np.testing.assert_allclose(rel({first: (jnp.ones(4), None)}), rel({}), rtol=1e-13)
    np.testing.assert_allclose(rel({first: (jnp.zeros(4), None)}), np.zeros(3), atol=0)
    # m = 0, s = 1: the layer's output relevance is its output z
    z = x @ w + b
    want = ref.lrp_linear("epsilon", x, w, b, z, lambda m: m.T, epsilon=1e-6)
    np.testing.assert_allclose(rel({first: (jnp.zeros(4), jnp.ones(4))}), want, rtol=1e-10)


def test_relu_gated_reaches_the_rule():
    seen = {}

    class Recording(R.Rule):
        kinds = R.WEIGHTED_KINDS
        relevance_to_zeros = "none"

        def __call__(self, node, relevance):
            seen[node.weight.shape] = node.relu_gated
            return R.Zero()(node, relevance)

    fn, args = FUNCTIONS["mlp"]
    jax.eval_shape(lambda *a: explain(fn, a, rules=lambda ls: rules_for(ls, dense=Recording())), *args)
    assert seen == {(3, 4): True, (4, 2): False}
    seen.clear()
    # masks turn it off (their s * z term gives relevance where z <= 0)
    an, layers = analyse(fn, *args)
    first = min(s.layer.index for s in an.nodes.values() if s.layer.kind == "dense")
    jax.eval_shape(lambda x: jax.vjp(lambda x: I.evaluate(an, rules_for(layers, dense=Recording()), [*args[:-1], x],
                                                          masks={first: (1.0, None)})[0], x)[1](jnp.ones((5, 2))), args[-1])
    assert seen == {(3, 4): False, (4, 2): False}
