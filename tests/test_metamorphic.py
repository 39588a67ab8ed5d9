"""Metamorphic tests: one function in two spellings gives one map.

Small random models (every parameter random, float64) are built from blocks, each
block written in a canonical spelling or in a rewrite that computes the same
function: a dense layer as ``x @ W``, ``einsum``, ``dot_general``, a vmapped ``W @ x``
or with Haiku's broadcast bias; an activation in each of its spellings (ReLU,
silu, GELU, sigmoid, hard_sigmoid); masks as ``where`` or a product; reshape,
transpose and concat-then-split round trips; LayerNorm's spellings. The relevance
must agree to 1e-10 under several composites.

Rewrites that change the layer structure (a bias folded into a layer, added after
the sum of two layers, or split between them; a scan unrolled) agree under LRP-0
with zero stabilisers (a stabiliser applied at a different place changes the map
by O(epsilon)), except the scan, which keeps its structure and agrees under every
composite.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlrp
from jaxlrp import composites, rules

D = 4  # every block maps (N, D) -> (N, D)
N = 2

# Composites under which a spelling that keeps the layer structure must not matter.
INVARIANT = {
    "default": None,  # Epsilon(1e-6) on every layer
    "epsilon_gamma_box": composites.EpsilonGammaBox(-3.0, 3.0),  # ZBox on the first layer
    "attn_lrp": composites.AttnLRP(),
    "alpha_beta": composites.Composite([("dense", rules.AlphaBeta(2.0, 1.0)), ("gate", rules.Uniform())]),
}
# LRP-0 with zero stabilisers: also for rewrites that move a bias between layers.
EXACT = {
    "zero": composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0))]),
    "zero_uniform": composites.Composite(
        [("linear", rules.Zero()), ("sum", rules.Norm(0.0)), (composites.kind("product", "glu"), rules.Uniform(0.0)),
         ("gate", rules.Uniform(0.0))]
    ),
}

# ------------------------------------------------------------------ spellings


def _silu_tanh(a):
    return a * (1.0 + jnp.tanh(a / 2.0)) / 2.0


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {
    "relu": [jax.nn.relu, lambda x: jnp.maximum(x, 0.0), lambda x: jnp.where(x > 0, x, 0.0),
             lambda x: x * (x > 0)],
    "silu": [jax.nn.silu, lambda a: a * jax.nn.sigmoid(a), _silu_tanh, lambda a: a / (1.0 + jnp.exp(-a))],
    "gelu_tanh": [functools.partial(jax.nn.gelu, approximate=True), _gelu_tanh],
    "gelu_erf": [functools.partial(jax.nn.gelu, approximate=False),
                 lambda x: 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))],
}
GATES = {
    "sigmoid": [jax.nn.sigmoid, lambda z: 0.5 * (1.0 + jnp.tanh(z / 2.0)), lambda z: 1.0 / (1.0 + jnp.exp(-z))],
    "hard_sigmoid": [jax.nn.hard_sigmoid, lambda z: jax.nn.relu6(z + 3.0) / 6.0,
                     lambda z: jnp.clip(z / 6.0 + 0.5, 0.0, 1.0)],
}


def _dense(p, x, spelling):
    """``x @ W + b`` in one of its spellings."""
    w, b = p["w"], p["b"]
    if spelling == 0:
        return x @ w + b
    if spelling == 1:
        return jnp.einsum("nd,de->ne", x, w) + b
    if spelling == 2:
        return jax.lax.dot_general(x, w, (((1,), (0,)), ((), ()))) + b
    if spelling == 3:
        return jax.vmap(lambda v: w.T @ v + b)(x)
    if spelling == 4:
        out = jnp.dot(x, w)
        return out + jnp.broadcast_to(b, out.shape)  # Haiku
    if spelling == 5:
        return b + x @ w
    if spelling == 6:
        return (x @ w + p["b1"]) + (b - p["b1"])  # a bias in two parts
    return jax.lax.dot_general(w, x, (((0,), (1,)), ((), ()))).T + b  # W on the left, then transposed


DENSE_SPELLINGS = 8


def _route(x, spelling):
    """The identity in one of its spellings (routing round trips)."""
    if spelling == 0:
        return x
    if spelling == 1:
        return x.reshape(x.shape[0], 2, D // 2).reshape(x.shape)
    if spelling == 2:
        return jnp.split(jnp.concatenate([x[:, :1], x, x[:, 1:]], axis=-1), [1, 1 + D], axis=-1)[1]
    return x.reshape(x.shape[0], 2, D // 2).transpose(0, 2, 1).transpose(0, 2, 1).reshape(x.shape)


ROUTE_SPELLINGS = 4
_KEEP = np.array([True, False, True, True])


def _mask(x, spelling):
    """``x`` with the entries of a fixed mask zeroed."""
    if spelling == 0:
        return jnp.where(_KEEP, x, 0.0)
    if spelling == 1:
        return x * _KEEP
    return x * jnp.asarray(_KEEP, x.dtype)


MASK_SPELLINGS = 3


def _layernorm(p, x, spelling):
    """LayerNorm with a random scale and bias, as Flax, Equinox and by hand write it."""
    mean = x.mean(-1, keepdims=True)
    if spelling == 0:  # flax: the scale multiplied into the inverse
        var = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
        return (x - mean) * (jax.lax.rsqrt(var + 1e-5) * p["g"]) + p["b"]
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    if spelling == 1:
        return p["g"] * ((x - mean) * jax.lax.rsqrt(var + 1e-5)) + p["b"]
    return (x - mean) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]


LAYERNORM_SPELLINGS = 3

# A block: (kind, family, spelling). Its parameters come from its position's key.
BLOCKS = {
    "dense": DENSE_SPELLINGS,
    "route": ROUTE_SPELLINGS,
    "mask": MASK_SPELLINGS,
    "layernorm": LAYERNORM_SPELLINGS,
    **{f"act:{k}": len(v) for k, v in ACTIVATIONS.items()},
    **{f"glu:{k}": len(v) for k, v in GATES.items()},
    **{f"swiglu:{k}": len(v) for k, v in ACTIVATIONS.items() if k != "relu"},
}


def _block(kind, spelling, p, x):
    if kind == "dense":
        return _dense(p, x, spelling)
    if kind == "route":
        return _route(x, spelling)
    if kind == "mask":
        return _mask(x, spelling)
    if kind == "layernorm":
        return _layernorm(p["ln"], x, spelling)
    family, name = kind.split(":")
    if family == "act":
        return ACTIVATIONS[name][spelling](_dense(p, x, 0))
    if family == "glu":
        return (_dense(p["a"], x, 0) * GATES[name][spelling](_dense(p["gate"], x, 0))) @ p["w"]
    return (ACTIVATIONS[name][spelling](_dense(p["a"], x, 0)) * _dense(p["gate"], x, 0)) @ p["w"]


def _params(rng, n_blocks):
    """Every parameter random: weights, biases, LayerNorm's scale and bias."""

    def dense():
        return {"w": rng.normal(size=(D, D)) / math.sqrt(D), "b": rng.normal(size=D) / 2,
                "b1": rng.normal(size=D) / 2}

    return [{**dense(), "a": dense(), "gate": dense(),
             "ln": {"g": 1.0 + rng.normal(size=D) / 2, "b": rng.normal(size=D) / 2}}
            for _ in range(n_blocks)]


def _model(blocks):
    """A function ``(params, x)`` of the blocks in order, read out by a dense layer."""

    def fn(params, x):
        for (kind, spelling), p in zip(blocks, params["blocks"]):
            x = _block(kind, spelling, p, x)
        return x @ params["out"]

    return fn


def _maps(fns, composites_, *args, target):
    """``{name: [lrp(fn, comp)(*args, target=target) for fn in fns]}``, every map in one
    compiled program: an explainer's eager call compiles its own program, and the
    compilation, not the run, is the time of these small models (one program instead
    of ``len(fns) * len(composites_)`` roughly halves it)."""

    def run(*args):
        return {name: [jaxlrp.lrp(fn, comp)(*args, target=target) for fn in fns] for name, comp in composites_.items()}

    return jax.tree_util.tree_map(np.asarray, jax.jit(run)(*args))


def _assert_same_maps(blocks, rewritten, composites_, seed=0):
    rng = np.random.default_rng(seed)
    params = {"blocks": _params(rng, len(blocks)), "out": rng.normal(size=(D, 3))}
    x = rng.normal(size=(N, D))
    f, g = _model(blocks), _model(rewritten)
    np.testing.assert_allclose(g(params, x), f(params, x), rtol=1e-10, atol=1e-12)
    for name, (a, b) in _maps([f, g], composites_, params, x, target=1).items():
        assert np.isfinite(a).all(), (name, blocks)
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10 * np.abs(a).max(),
                                   err_msg=f"{name}: {blocks} -> {rewritten}")


# ------------------------------------------------------------------ every rewrite, once


def test_every_rewrite_of_every_block_at_once():
    """One model per block kind with a block in each spelling, against the same
    model in the canonical spelling: every rewrite is exercised on every run."""
    for kind, n in BLOCKS.items():
        canonical = [(kind, 0)] * (n - 1)
        rewritten = [(kind, s) for s in range(1, n)]
        _assert_same_maps(canonical, rewritten, {"default": None, "epsilon_gamma_box": INVARIANT["epsilon_gamma_box"]})


# ------------------------------------------------------------------ random models, random rewrites


@st.composite
def _models(draw):
    kinds = draw(st.lists(st.sampled_from(sorted(BLOCKS)), min_size=1, max_size=4))
    canonical = [(k, 0) for k in kinds]
    rewritten = [(k, draw(st.integers(0, BLOCKS[k] - 1))) for k in kinds]
    return canonical, rewritten, draw(st.integers(0, 2**16))


@settings(max_examples=6, deadline=None, derandomize=True)
@given(_models())
def test_random_models_random_rewrites(case):
    canonical, rewritten, seed = case
    _assert_same_maps(canonical, rewritten, INVARIANT, seed)


# ------------------------------------------------------------------ rewrites that move a bias


def _two_branch(p, x, placement):
    """``relu(x W1 + tanh(x) W2 + b)``: the bias in several places."""
    a, c = x @ p["w1"], jnp.tanh(x) @ p["w2"]
    z = {
        "after the sum": lambda: a + c + p["b"],
        "in the first layer": lambda: (a + p["b"]) + c,
        "in the second layer": lambda: a + (c + p["b"]),
        "split": lambda: (a + p["b1"]) + (c + (p["b"] - p["b1"])),
        "broadcast": lambda: a + c + jnp.broadcast_to(p["b"], a.shape),
    }[placement]()
    return jax.nn.relu(z) @ p["out"]


def test_bias_placement_gives_one_map_under_lrp0():
    rng = np.random.default_rng(1)
    p = {"w1": rng.normal(size=(D, 5)), "w2": rng.normal(size=(D, 5)), "b": rng.normal(size=5),
         "b1": rng.normal(size=5), "out": rng.normal(size=(5, 3))}
    x = rng.normal(size=(N, D))
    placements = ["after the sum", "in the first layer", "in the second layer", "split", "broadcast"]
    fns = [functools.partial(_two_branch, placement=s) for s in placements]
    for name, maps in _maps(fns, EXACT, p, x, target=2).items():
        for s, R in zip(placements[1:], maps[1:]):
            np.testing.assert_allclose(R, maps[0], rtol=1e-10, atol=1e-10 * np.abs(maps[0]).max(),
                                       err_msg=f"{name}: {s}")


# ------------------------------------------------------------------ scan vs unrolled


def _gru(p, xs, unroll):
    """A GRU (sigmoid and hard_sigmoid gates, biases after the sums) over xs (T, N, D)."""

    def cell(h, x):
        r = jax.nn.sigmoid(x @ p["wr"] + h @ p["ur"] + p["br"])
        z = jax.nn.hard_sigmoid(x @ p["wz"] + h @ p["uz"] + p["bz"])
        n = jnp.tanh(x @ p["wn"] + r * (h @ p["un"] + p["bn"]))
        return (1.0 - z) * n + z * h, None

    h = jnp.zeros((xs.shape[1], D)) + p["h0"]  # a learned initial state
    if unroll:
        for t in range(xs.shape[0]):
            h, _ = cell(h, xs[t])
    else:
        h, _ = jax.lax.scan(cell, h, xs)
    return h @ p["out"]


def test_scan_equals_unrolled_under_every_composite():
    rng = np.random.default_rng(2)
    p = {k: rng.normal(size=(D, D)) / math.sqrt(D) for k in ("wr", "ur", "wz", "uz", "wn", "un")}
    p |= {k: rng.normal(size=D) / 2 for k in ("br", "bz", "bn", "h0")}
    p["out"] = rng.normal(size=(D, 3))
    xs = rng.normal(size=(3, N, D))
    fns = [functools.partial(_gru, unroll=False), functools.partial(_gru, unroll=True)]
    for name, (a, b) in _maps(fns, {**INVARIANT, **EXACT}, p, xs, target=0).items():
        assert np.isfinite(a).all()
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10 * np.abs(a).max(), err_msg=name)
