"""A catalogue of layer families, each explained under every preset composite and
checked against the independent float64 NumPy reference (``tests/reference.py``).

Every case is written the way a user writes it (Flax linen modules applied inside a
plain function, ``jax.nn`` activations, ``jax.image.resize``, ``jnp.einsum``,
``jax.vmap``) and described a second time, layer by layer, for the reference, which
turns every layer into an explicit matrix. The reference's semantics:

* a dense/conv layer has exactly its own weight and bias, plus a BatchNorm that
  directly follows it (folded: Zennit's MergeBatchNorm);
* an activation is an elementwise map through which relevance passes unchanged; its
  constants (hard_sigmoid's ``+3``, log_sigmoid's sign flips, ``tanh(z / 2)``'s
  scale) belong to it, not to the layer before it;
* parameter-free linear maps (resizing, circular/reflect/causal padding) route
  relevance by their plain VJP (Zennit's treatment of upsampling) and never take a
  rule or the "first layer" rule away from the layer after them;
* sums and average pools use the Norm rule with the preset's stabiliser, the
  stabiliser applied to the pool's output (the mean, as Zennit does);
* a 3-operand einsum is a chain of two-operand products, each a layer with its rule.

Tolerance: ``max |R - R_ref| / max |R_ref| <= 1e-10`` per example. Set
``JAXLRP_CATALOGUE_REPORT=path.json`` to write the worst deviation of every case.
"""

from __future__ import annotations

import json
import os
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

import reference as ref

RTOL = 1e-10
N = 2  # examples per batch
TARGET = np.array([0, 2])
# ``rule=rules.Zero()`` applies LRP-0 to sums and pools too (composites.from_rule).
ZERO_NORM_STABILIZER = 0.0

# Presets restated in the reference (tests/reference.py: composite_rules).
REFERENCE_PRESETS = ("epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
                     "epsilon_alpha2_beta1_flat", "attn_lrp", "cp_lrp")
# (label, jaxlrp lrp keyword arguments, reference preset)
COMPOSITES = [(name, {"composite": composites.get(name, **ref.preset_kwargs(name))}, name) for name in composites.names()
              if name in REFERENCE_PRESETS] + [
    ("zero", {"rule": rules.Zero()}, "zero"),
    ("default", {}, "epsilon"),
]
_REPORT: dict = {}


def _ref_preset(name):
    if name == "zero":
        return ref.composite_rules("zero", norm_stabilizer=ZERO_NORM_STABILIZER)
    return ref.composite_rules(name)


# ----------------------------------------------------------------------------- builder


# Where the Norm rule of an average pool puts its stabiliser: on the pooled mean
# (Zennit's Norm rule on the pooling module), or on the window sum (the division by
# the window size then being an elementwise step through which relevance passes).
# jaxlrp's choice: the window sum (nn.avg_pool and jnp.mean divide after the sum; the
# division is elementwise, so relevance passes it unchanged). Zennit stabilises the
# mean: the two differ by ~1e-5 relative with stabiliser 1e-6 (see bench/zennit.md).
POOL_STABILISES = "sum"


def _pool_layers(A, out_shape):
    """Reference layers of an average pool with matrix ``A`` (see POOL_STABILISES)."""
    if POOL_STABILISES == "mean":
        return (("pool", A, out_shape),)
    S = (A != 0).astype(float)
    return ("pool", S, out_shape), ("affine", (A.sum(1) / S.sum(1)).reshape(out_shape), 0.0)


class Net:
    """A network written twice: as a JAX function of ``(params, x)`` on a batch, built
    from Flax linen modules and jax functions, and as reference layers for one
    example. Methods append a layer and return ``self``."""

    def __init__(self, in_shape, seed=0, rng=None, params=None, prefix=""):
        self.shape = tuple(in_shape)  # per-example shape
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.params = params if params is not None else {}
        self.steps: list = []  # f(params, x) -> x on batches
        self.layers: list = []  # reference layers
        self.prefix = prefix

    # -- helpers
    def _key(self):
        return f"{self.prefix}l{len(self.params)}"

    def _step(self, f, *layers):
        self.steps.append(f)
        self.layers.extend(layers)
        return self

    def fn(self, params, x):
        for f in self.steps:
            x = f(params, x)
        return x

    def normal(self, *shape, scale=1.0):
        return self.rng.normal(size=shape) * scale

    # -- weighted layers
    def dense(self, n, bias=True):
        (n_in,) = self.shape
        k = self._key()
        p = {"kernel": self.normal(n_in, n, scale=n_in ** -0.5)}
        if bias:
            p["bias"] = self.normal(n, scale=0.3)
        self.params[k] = p
        self.shape = (n,)
        mod = nn.Dense(n, use_bias=bias)
        return self._step(lambda P, x: mod.apply({"params": P[k]}, x), ("dense", p["kernel"], p.get("bias")))

    def conv(self, features, kernel, strides=1, padding="SAME", dilation=1, groups=1, bias=True):
        nd = len(self.shape) - 1
        ks = (kernel,) * nd if np.ndim(kernel) == 0 else tuple(kernel)
        st = (strides,) * nd if np.ndim(strides) == 0 else tuple(strides)
        dl = (dilation,) * nd if np.ndim(dilation) == 0 else tuple(dilation)
        cin = self.shape[-1]
        k = self._key()
        fan = int(np.prod(ks)) * cin // groups
        p = {"kernel": self.normal(*ks, cin // groups, features, scale=fan ** -0.5)}
        if bias:
            p["bias"] = self.normal(features, scale=0.3)
        self.params[k] = p
        mod = nn.Conv(features, ks, st, padding=padding, kernel_dilation=dl, feature_group_count=groups,
                      use_bias=bias)
        pre = []
        spatial = self.shape[:-1]
        eff = [(kk - 1) * d + 1 for kk, d in zip(ks, dl)]
        if padding == "SAME":
            pads = [ref.same_pads(n, kk, s, d) for n, kk, s, d in zip(spatial, ks, st, dl)]
        elif padding == "VALID":
            pads = [(0, 0)] * nd
        elif padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
            if padding == "CAUSAL":
                width, mode = [(eff[0] - 1, 0)], "constant"
            else:
                width = [((e - 1) // 2, e // 2) for e in eff]
                mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding]
            M, padded = ref.pad_matrix(self.shape, width, mode)
            pre.append(("linmap", M, padded))
            self.shape = padded
            pads = [(0, 0)] * nd
        else:
            pads = [tuple(p_) for p_ in padding]
        layer = ("conv", p["kernel"], p.get("bias"), st, pads, groups, dl)
        self._step(lambda P, x: mod.apply({"params": P[k]}, x), *pre, layer)
        self.shape = ref.conv_matrix_nd(np.zeros(p["kernel"].shape), self.shape, st, pads, dl, groups)[1]
        return self

    def conv_transpose(self, features, kernel, strides=1, padding="SAME", transpose_kernel=False, bias=True):
        nd = len(self.shape) - 1
        ks = (kernel,) * nd
        st = (strides,) * nd
        cin = self.shape[-1]
        k = self._key()
        shape = ks + ((features, cin) if transpose_kernel else (cin, features))
        p = {"kernel": self.normal(*shape, scale=(int(np.prod(ks)) * cin) ** -0.5)}
        if bias:
            p["bias"] = self.normal(features, scale=0.3)
        self.params[k] = p
        mod = nn.ConvTranspose(features, ks, st, padding=padding, transpose_kernel=transpose_kernel,
                               use_bias=bias)
        kern = p["kernel"]
        if transpose_kernel:  # the gradient of a conv: flip the taps, swap in/out
            kern = np.flip(kern, axis=tuple(range(nd))).swapaxes(-1, -2)
        pads = [ref.conv_transpose_pads(kk, s, padding) for kk, s in zip(ks, st)]
        layer = ("conv", kern, p.get("bias"), (1,) * nd, pads, 1, (1,) * nd, st)
        self._step(lambda P, x: mod.apply({"params": P[k]}, x), layer)
        self.shape = ref.conv_matrix_nd(np.zeros(kern.shape), self.shape, 1, pads, 1, 1, st)[1]
        return self

    # -- normalisation
    def batchnorm(self, fold):
        """Inference-mode BatchNorm; ``fold``: it follows a layer (folded in the reference)."""
        c = self.shape[-1]
        k = self._key()
        p = {"scale": 1 + self.normal(c, scale=0.3), "bias": self.normal(c, scale=0.3)}
        stats = {"mean": self.normal(c, scale=0.3), "var": 0.5 + self.rng.uniform(size=c)}
        self.params[k] = {"params": p, "batch_stats": stats}
        mod = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
        a = p["scale"] / np.sqrt(stats["var"] + 1e-5)
        c0 = p["bias"] - a * stats["mean"]
        f = lambda P, x: mod.apply(P[k], x)  # noqa: E731
        if not fold:
            return self._step(f, ("affine", a, c0))
        last = self.layers[-1]
        assert last[0] in ("dense", "conv"), "a folded BatchNorm follows a dense/conv layer"
        b = 0.0 if last[2] is None else np.asarray(last[2])
        self.layers[-1] = (last[0], np.asarray(last[1]) * a, a * b + c0, *last[3:])
        self.steps.append(f)
        return self

    # -- parameter-free layers
    def act(self, name):
        return self._step(lambda P, x: JAX_ACTIVATIONS[name](x), ("relu",) if name == "relu" else ("act", name))

    def relu(self):
        return self.act("relu")

    def glu(self):
        self.shape = self.shape[:-1] + (self.shape[-1] // 2,)
        return self._step(lambda P, x: jax.nn.glu(x, axis=-1), ("glu",))

    def flatten(self):
        self.shape = (int(np.prod(self.shape)),)
        return self._step(lambda P, x: x.reshape(x.shape[0], -1), ("flatten",))

    def maxpool(self, window, strides=None, padding="VALID"):
        nd = len(self.shape) - 1
        win = (window,) * nd
        st = (strides or window,) * nd
        pads = self._pool_pads(win, st, padding)
        y, _ = ref.maxpool_nd(np.zeros(self.shape), win, st, pads)
        self.shape = y.shape
        return self._step(lambda P, x: nn.max_pool(x, win, st, padding), ("maxpool", win, st, pads))

    def avgpool(self, window, strides=None, padding="VALID", count_include_pad=True):
        nd = len(self.shape) - 1
        win = (window,) * nd
        st = (strides or window,) * nd
        pads = self._pool_pads(win, st, padding)
        A, self.shape = ref.avgpool_matrix_nd(self.shape, win, st, pads, count_include_pad)
        return self._step(lambda P, x: nn.avg_pool(x, win, st, padding, count_include_pad), *_pool_layers(A, self.shape))

    def global_avgpool(self):
        """``x.mean(spatial axes)`` (keeps no spatial axes)."""
        nd = len(self.shape) - 1
        A, _ = ref.avgpool_matrix_nd(self.shape, self.shape[:-1], 1)
        self.shape = (self.shape[-1],)
        axes = tuple(range(1, nd + 1))
        return self._step(lambda P, x: jnp.mean(x, axis=axes), *_pool_layers(A, self.shape))

    def adaptive_avgpool(self, out):
        """PyTorch's AdaptiveAvgPool as JAX users write it: reshape into blocks, mean."""
        h, w, c = self.shape
        A, self.shape = ref.avgpool_matrix_nd(self.shape, (h // out, w // out), (h // out, w // out))

        def f(P, x):
            return x.reshape(x.shape[0], out, h // out, out, w // out, c).mean(axis=(2, 4))

        return self._step(f, *_pool_layers(A, self.shape))

    def _pool_pads(self, win, st, padding):
        if padding == "VALID":
            return [(0, 0)] * len(win)
        if padding == "SAME":
            return [ref.same_pads(n, w, s) for n, w, s in zip(self.shape[:-1], win, st)]
        return [tuple(p) for p in padding]

    def resize(self, out_spatial, method, antialias=True):
        M, shape = ref.resize_matrix(self.shape, out_spatial, method, antialias)
        self.shape = shape

        def f(P, x):
            return jax.image.resize(x, (x.shape[0],) + shape, method, antialias=antialias)

        return self._step(f, ("linmap", M, shape))

    def residual(self, main, skip=None):
        """``main(x) + skip(x)``; ``main``/``skip`` fill a fresh :class:`Net`."""
        m = main(Net(self.shape, rng=self.rng, params=self.params, prefix=self._key() + "m"))
        s = Net(self.shape, rng=self.rng, params=self.params, prefix=self._key() + "s")
        if skip is not None:
            s = skip(s)
        assert m.shape == s.shape, (m.shape, s.shape)
        self.shape = m.shape
        return self._step(lambda P, x: m.fn(P, x) + s.fn(P, x), ("residual", m.layers, s.layers))

    def build(self, x_scale=1.0):
        x = self.rng.normal(size=(N,) + self.in_shape) * x_scale
        return self.fn, self.params, x, self.layers


def net(in_shape, seed=0):
    n = Net(in_shape, seed)
    n.in_shape = tuple(in_shape)
    return n


JAX_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "hard_swish": jax.nn.hard_swish,
    "hard_tanh": jax.nn.hard_tanh,
    "sigmoid": jax.nn.sigmoid,
    "log_sigmoid": jax.nn.log_sigmoid,
    "softplus": jax.nn.softplus,
    "sparse_plus": jax.nn.sparse_plus,
    "squareplus": jax.nn.squareplus,
    "silu": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
    "tanh_half": lambda x: jnp.tanh(x / 2),
    "soft_sign": jax.nn.soft_sign,
    "elu": jax.nn.elu,
    "celu": jax.nn.celu,
    "selu": jax.nn.selu,
    "leaky_relu": jax.nn.leaky_relu,
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),
    "gelu_erf": partial(jax.nn.gelu, approximate=False),
    "relu_shift": lambda x: jax.nn.relu(x - 0.5),
    "relu_pow": lambda x: jax.nn.relu(x) ** 1.5,
    "square": jnp.square,
    "abs": jnp.abs,
    "sin": jnp.sin,
}
assert set(JAX_ACTIVATIONS) <= set(ref.ACTIVATIONS)


# ------------------------------------------------------------------------------- cases
# Cases are grouped (several features of a family in one network) to keep the file
# fast: one jit per case, explaining under every composite at once.


def head(n):
    """The classifier head shared by the cases: flatten and a dense layer (3 outputs)."""
    return n.flatten().dense(3)


def _vmapped_mlp():
    rng = np.random.default_rng(3)
    w1, b1 = rng.normal(size=(5, 6)) / 5 ** 0.5, rng.normal(size=6) * 0.3
    w2, b2 = rng.normal(size=(6, 3)) / 6 ** 0.5, rng.normal(size=3) * 0.3
    params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}

    def one(p, xi):  # the single-example module (Equinox style: W @ x + b)
        return p["w2"].T @ jax.nn.relu(p["w1"].T @ xi + p["b1"]) + p["b2"]

    fn = lambda p, x: jax.vmap(lambda xi: one(p, xi))(x)  # noqa: E731
    layers = [("dense", w1, b1), ("relu",), ("dense", w2, b2)]
    return fn, params, rng.normal(size=(N, 5)), layers


def _einsum3():
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(5, 4)) / 5 ** 0.5, rng.normal(size=(4, 3)) / 2
    params = {"w1": w1, "w2": w2}
    # a chain of two products, (x w1) w2 (also the cheaper contraction order here)
    fn = lambda p, x: jnp.einsum("ni,ij,jk->nk", x, p["w1"], p["w2"])  # noqa: E731
    return fn, params, rng.normal(size=(N, 5)), [("dense", w1, None), ("dense", w2, None)]


def _acts(names, conv=False):
    """Dense layers (or 1-d convs), each followed by one of ``names``."""
    def build():
        n = net((6, 2) if conv else (5,))
        for name in names:
            n = n.conv(3, 3).act(name) if conv else n.dense(5).act(name)
        return head(n).build()

    return build


def _block(stride, project, bn=False):
    def main(m):
        m = m.conv(3, 3, strides=stride, bias=not bn)
        m = (m.batchnorm(fold=True) if bn else m).relu().conv(3, 3, bias=not bn)
        return m.batchnorm(fold=True) if bn else m

    def skip(s):
        s = s.conv(3, 1, strides=stride, bias=not bn)
        return s.batchnorm(fold=True) if bn else s

    return main, (skip if project else None)


def _mark(bug):
    return pytest.mark.xfail(strict=True, reason=bug)


POOL_NOTE = ("average pools: the division by the window size is a separate elementwise step, so "
            "the Norm stabiliser acts on the window sum, not on the mean (Zennit): ~1e-5 relative")
BUG1 = "issue 12 bug 1: an activation's constants are folded into the layer before it"
BUG2 = "issue 12 bug 2: the bias of a vmapped W @ x + b is not folded into the layer"
BUG3 = "issue 12 bug 3: jax.image.resize (linear) is explained as a weighted dense layer"
BUG4 = "issue 12 bug 4: jit(lrp(f)) raises TracerBoolConversionError on x ** 1.5 (pow with a literal)"

PASSING_ACTIVATIONS = [
    ("relu", "relu6", "hard_swish", "hard_tanh", "leaky_relu"),
    ("sigmoid", "softplus", "sparse_plus", "squareplus", "soft_sign"),
    ("silu", "mish", "gelu_tanh", "gelu_erf", "tanh"),
    ("elu", "celu", "selu", "square"),
    ("abs", "sin", "relu"),
]
FOLDED_ACTIVATIONS = ("hard_sigmoid", "log_sigmoid", "tanh_half", "relu_shift")

CASES = [
    # (family, case, builder, xfail reason or None)
    ("dense", "bias_then_no_bias", lambda: net((5,), 2).dense(6).relu().dense(4, bias=False).relu().dense(3).build(), None),
    ("dense", "vmapped_W@x+b", _vmapped_mlp, None),
    ("dense", "einsum_3_operands", _einsum3, None),
    ("conv", "1d_stride2_same+causal_dilation2", lambda: head(
        net((8, 2)).conv(3, 3, strides=2).relu().conv(3, 3, padding="CAUSAL", dilation=2).relu()).build(), None),
    ("conv", "2d_valid+same_no_bias", lambda: head(
        net((5, 5, 2)).conv(4, 3, padding="VALID").relu().conv(3, 2, bias=False).relu()).build(), None),
    ("conv", "2d_explicit_stride+dilation2", lambda: head(
        net((5, 5, 2)).conv(3, 3, strides=(2, 1), padding=((1, 2), (0, 1))).relu().conv(3, 2, dilation=2)).build(),
     None),
    ("conv", "2d_circular+reflect", lambda: head(
        net((4, 4, 2)).conv(3, 3, padding="CIRCULAR").relu().conv(3, 3, padding="REFLECT")).build(), None),
    ("conv", "2d_groups2+depthwise", lambda: head(
        net((4, 4, 2)).conv(4, 3, groups=2).relu().conv(4, 3, groups=4).relu()).build(), None),
    ("conv", "3d_stride2_same", lambda: head(net((4, 4, 4, 2)).conv(3, 3, strides=2).relu()).build(), None),
    ("conv_transpose", "2d_stride2_same+valid", lambda: head(
        net((3, 3, 2)).conv_transpose(3, 3, 2, "SAME").relu().conv_transpose(2, 2, 2, "VALID")).build(), None),
    ("conv_transpose", "1d_transpose_kernel", lambda: head(
        net((4, 2)).conv_transpose(3, 3, 2, "SAME", transpose_kernel=True).relu()).build(), None),
    ("pool", "max_2d_same_overlap+valid", lambda: head(
        net((5, 5, 2)).conv(3, 3).relu().maxpool(3, 2, "SAME").conv(3, 2).relu().maxpool(2)).build(), None),
    ("pool", "max_1d", lambda: head(net((8, 2)).conv(3, 3).relu().maxpool(2)).build(), None),
    ("pool", "avg_2d_valid+global", lambda: net((4, 4, 2)).conv(3, 3).relu().avgpool(2).conv(3, 1).relu()
     .global_avgpool().dense(3).build(), None),
    ("pool", "avg_same_include+exclude_pad", lambda: head(
        net((5, 5, 2)).conv(3, 3).relu().avgpool(3, 2, "SAME").avgpool(2, 1, "SAME", False)).build(), None),
    ("pool", "avg_3d", lambda: head(net((4, 4, 4, 2)).conv(3, 3).relu().avgpool(2)).build(), None),
    ("pool", "adaptive_avg", lambda: head(net((4, 4, 2)).conv(3, 3).relu().adaptive_avgpool(2)).build(), None),
    ("batchnorm", "after_conv_with+without_bias", lambda: head(
        net((5, 5, 2)).conv(3, 3).batchnorm(True).relu().conv(3, 3, bias=False).batchnorm(True)).build(), None),
    ("batchnorm", "on_input+after_relu", lambda: head(
        net((5, 5, 2)).batchnorm(False).conv(3, 3).relu().batchnorm(False).conv(3, 3)).build(), None),
    ("batchnorm", "after_dense", lambda: net((5,)).dense(6).batchnorm(True).relu().dense(3).build(), None),
    ("resize", "nearest_before_first_conv", lambda: head(
        net((3, 3, 2)).resize((6, 6), "nearest").conv(3, 3).relu()).build(), None),
    ("resize", "linear_before_first_conv", lambda: head(
        net((3, 3, 2)).resize((6, 6), "linear").conv(3, 3).relu()).build(), None),
    ("resize", "linear_up+down_between_convs", lambda: head(
        net((3, 3, 2)).conv(3, 3).relu().resize((6, 6), "linear").conv(3, 3).resize((3, 3), "linear")).build(),
     None),
    ("residual", "identity+projection_stride2", lambda: head(
        net((4, 4, 2)).conv(3, 3).relu().residual(*_block(1, False)).relu().residual(*_block(2, True)).relu()).build(),
     None),
    ("residual", "projection_at_input", lambda: head(net((4, 4, 2)).residual(*_block(1, True)).relu()).build(), None),
    ("residual", "batchnorm_projection", lambda: head(
        net((4, 4, 2)).conv(3, 3).relu().residual(*_block(2, True, bn=True)).relu()).build(), None),
    ("activation", "glu", lambda: head(net((6, 2)).conv(4, 3).glu().conv(3, 3, padding="VALID")).build(), None),
] + [("activation", "+".join(g), _acts(g), None) for g in PASSING_ACTIVATIONS] + [
    ("activation", "+".join(g), _acts(g, conv=True), bug) for g, bug in
    [(("relu_shift", "hard_sigmoid", "tanh_half", "log_sigmoid"), None), (("relu_pow",), None), (("softplus", "sigmoid", "relu"), None)]
]
assert {a for g in PASSING_ACTIVATIONS for a in g} | set(FOLDED_ACTIVATIONS) | {"relu_pow"} == set(JAX_ACTIVATIONS)


def deviation(R, R_ref) -> float:
    """``max |R - R_ref| / max |R_ref|``."""
    return float(np.abs(np.asarray(R) - R_ref).max() / max(np.abs(R_ref).max(), 1e-300))


# Compile fast: the programs are tiny, XLA's CPU optimisations cost more than they save.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False}


def _distinct(layers, x0, comps):
    """The composites that give the layers of this network distinct rules (by the
    reference's table of presets): the others would repeat a check."""
    weighted = ref.weighted_layers(layers, x0)
    seen, out = set(), []
    for label, kw, preset in comps:
        rule_fn, stabs = _ref_preset(preset)
        key = repr(([rule_fn(*w) for w in weighted], sorted(stabs.items())))
        if key not in seen:
            seen.add(key)
            out.append((label, kw, preset))
    return out


def check_case(fn, params, x, layers, comps=COMPOSITES, name="", dedupe=True):
    """Explain ``fn`` (jitted, all composites at once); returns ``{label: deviation}``."""
    comps = _distinct(layers, x[0], comps) if dedupe else comps
    target = jnp.asarray(TARGET)

    def explain_all(params, x):
        return [jaxlrp.lrp(fn, **kw)(params, x, target=target) for _, kw, _ in comps]

    out = np.asarray(fn(params, x))
    for n in range(N):
        np.testing.assert_allclose(out[n], ref.forward(layers, x[n]), rtol=1e-12, atol=1e-12,
                                   err_msg="the reference describes a different network")
    relevances = jax.jit(explain_all, compiler_options=FAST)(params, x)
    devs = {}
    for (label, _, preset), R in zip(comps, relevances):
        rule_fn, stabs = _ref_preset(preset)
        devs[label] = 0.0
        for n in range(N):
            R_ref = ref.network_lrp(layers, x[n], int(TARGET[n]), rule_fn, **stabs)[0]
            assert np.abs(R_ref).max() > 1e-3 * np.abs(out[n]).max(), f"{label}: a degenerate case (no relevance)"
            devs[label] = max(devs[label], deviation(R[n], R_ref))
    _REPORT[name] = devs
    return devs


@pytest.mark.parametrize("family,build", [
    pytest.param(f, b, id=f"{f}-{c}", marks=[_mark(bug)] if bug else []) for f, c, b, bug in CASES
])
def test_catalogue(request, family, build):
    fn, params, x, layers = build()
    devs = check_case(fn, params, x, layers, name=request.node.callspec.id)
    bad = {k: f"{v:.1e}" for k, v in devs.items() if not v <= RTOL}
    assert not bad, f"deviation from the reference above {RTOL}: {bad}"


def test_every_preset_is_in_the_reference():
    missing = sorted(set(composites.names()) - set(REFERENCE_PRESETS))
    if missing:
        pytest.skip(f"presets without a reference (not in the catalogue): {', '.join(missing)}")


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    path = os.environ.get("JAXLRP_CATALOGUE_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_REPORT, f, indent=1, sort_keys=True)


# --------------------------------------------------------------- regressions (issue 12)

RULES = {
    "epsilon": rules.Epsilon(0.1), "zero": rules.Zero(), "zplus": rules.ZPlus(), "alphabeta": rules.AlphaBeta(),
    "gamma": rules.Gamma(0.5), "flat": rules.Flat(), "wsquare": rules.WSquare(), "zbox": rules.ZBox(-3.0, 3.0),
}
EVERY_RULE = [{"rule": r} for r in RULES.values()]  # on dense layers, the presets use these


def _two_layer(act, barrier):
    rng = np.random.default_rng(7)
    params = {"w": rng.normal(size=(5, 6)) / 2, "b": rng.normal(size=6), "w2": rng.normal(size=(6, 3)) / 2,
              "b2": rng.normal(size=3) * 0.3}

    def fn(p, x):
        z = x @ p["w"] + p["b"]
        if barrier:
            z = jax.lax.optimization_barrier(z)
        return JAX_ACTIVATIONS[act](z) @ p["w2"] + p["b2"]

    return fn, params, rng.normal(size=(N, 5))


def _explain_every_rule(fns, params, x, kws=EVERY_RULE):
    """``[lrp(f, **kw) for f in fns for kw in kws]``, in one jit."""
    target = jnp.asarray(TARGET)
    return jax.jit(lambda p, x: [jaxlrp.lrp(f, **kw)(p, x, target=target) for f in fns for kw in kws],
                   compiler_options=FAST)(params, x)


@pytest.mark.parametrize("act", [
    pytest.param(a) for a in
    FOLDED_ACTIVATIONS + ("relu",)
])
def test_activation_constants_stay_out_of_the_layer(act):
    """Bug 1: ``act(x @ W + b) @ W2`` is explained as if an optimization_barrier
    separated the layer from its activation, for every rule."""
    fn, params, x = _two_layer(act, barrier=False)
    fenced, _, _ = _two_layer(act, barrier=True)
    out = _explain_every_rule([fn, fenced], params, x)
    got, want = out[: len(EVERY_RULE)], out[len(EVERY_RULE):]
    for kw, a, b in zip(EVERY_RULE, got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(jnp.abs(b).max()), err_msg=repr(kw))


def test_vmapped_affine_layer_lrp0_is_gradient_times_input():
    """Bug 2: under ``jax.vmap`` a ``W @ x + b`` is one layer (bias folded), so LRP-0 on
    a ReLU network is gradient x input."""
    fn, params, x, _ = _vmapped_mlp()
    target = jnp.asarray(TARGET)
    R = jax.jit(jaxlrp.lrp(fn, rule=rules.Zero()))(params, x, target=target)
    g = jax.grad(lambda x: jnp.sum(fn(params, x)[jnp.arange(N), target]))(x)
    np.testing.assert_allclose(R, x * g, rtol=1e-12, atol=1e-14)


def _attention(mask):
    """Two heads of self-attention; ``mask``: Hugging Face BERT's head mask of ones
    (``einsum('bhqk,h->bhqk')``), built inside the function."""
    rng = np.random.default_rng(8)
    T, D, H = 3, 4, 2
    params = {k: rng.normal(size=(D, D)) / 2 for k in ("wq", "wk", "wv")}
    params["wo"] = rng.normal(size=(T * D, 3)) / 3

    def fn(p, x):
        n = x.shape[0]
        q, k, v = ((x @ p[w]).reshape(n, T, H, D // H) for w in ("wq", "wk", "wv"))
        probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D // H), axis=-1)
        if mask:
            probs = jnp.einsum("bhqk,h->bhqk", probs, jnp.ones(H, x.dtype))
        o = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return o.reshape(n, T * D) @ p["wo"]

    return fn, params, rng.normal(size=(N, T, D))


def test_head_mask_of_ones_changes_nothing():
    """Bug 3: a constant head mask of ones is routed by its plain VJP (it is no layer),
    so CP-LRP and AttnLRP explain the masked model exactly as the unmasked one, and
    still differ from each other."""
    fn, params, x = _attention(mask=False)
    masked, _, _ = _attention(mask=True)
    target = jnp.asarray(TARGET)
    comps = [composites.AttnLRP(), composites.CPLRP()]
    out = jax.jit(lambda p, x: [jaxlrp.lrp(f, c)(p, x, target=target) for f in (fn, masked) for c in comps],
                  compiler_options=FAST)(params, x)
    attn, cp, attn_masked, cp_masked = (np.asarray(r) for r in out)
    assert deviation(cp, attn) > 1e-3  # the unmasked model: the presets differ
    assert deviation(cp_masked, attn_masked) > 1e-3, "the mask hides the attention pattern"
    np.testing.assert_allclose(attn_masked, attn, rtol=1e-12, atol=1e-12 * np.abs(attn).max())
    np.testing.assert_allclose(cp_masked, cp, rtol=1e-12, atol=1e-12 * np.abs(cp).max())


@pytest.mark.parametrize("power", [
    pytest.param(lambda a: a ** 1.5, id="x**1.5"),
    pytest.param(lambda a: jnp.power(a, 1.5), id="jnp.power"),
    pytest.param(lambda a: a ** jax.lax.stop_gradient(1.5), id="x**stop_gradient(1.5)"),
])
def test_float_power_under_jit(power):
    """Bug 4: every decision of the analysis is taken on static values, so
    ``jax.jit(jaxlrp.lrp(f))`` works on float powers and agrees with the eager call
    and with the reference."""
    rng = np.random.default_rng(9)
    w, b, w2 = rng.normal(size=(5, 6)), rng.normal(size=6), rng.normal(size=(6, 3))
    params = {"w": w, "b": b, "w2": w2}
    fn = lambda p, x: power(jax.nn.relu(x @ p["w"] + p["b"])) @ p["w2"]  # noqa: E731
    x = rng.normal(size=(N, 5))
    target = jnp.asarray(TARGET)
    eager = jaxlrp.lrp(fn, "epsilon_plus_flat")(params, x, target=target)
    jitted = jax.jit(jaxlrp.lrp(fn, "epsilon_plus_flat"))(params, x, target=target)
    np.testing.assert_allclose(jitted, eager, rtol=1e-13, atol=0)
    rule_fn, stabs = ref.composite_rules("epsilon_plus_flat")
    layers = [("dense", w, b), ("act", "relu_pow"), ("dense", w2, None)]
    for n in range(N):
        R_ref = ref.network_lrp(layers, x[n], int(TARGET[n]), rule_fn, **stabs)[0]
        assert deviation(jitted[n], R_ref) <= RTOL


STABILISED = ["epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat"]
BUG5 = "issue 12 bug 5: a preset's stabilizer does not reach the Norm rules of sums and average pools"


def test_preset_stabilizer_reaches_sums():
    """Bug 5: ``Preset(stabilizer=1e-2)`` uses 1e-2 in the Norm rules of residual adds and
    sum pools too (as Zennit does), checked against the reference."""
    def build():
        n = net((4, 4, 2)).conv(3, 3).relu().residual(*_block(1, False)).relu()
        n.shape = (3,)
        A = np.kron(np.ones((1, 16)), np.eye(3))  # sum over the 4 x 4 positions
        return n._step(lambda P, x: jnp.sum(x, axis=(1, 2)), ("pool", A, (3,))).dense(3).build()

    fn, params, x, layers = build()
    comps = [(name, {"composite": composites.get(name, stabilizer=1e-2, **ref.preset_kwargs(name))}, name) for name in STABILISED]
    target = jnp.asarray(TARGET)
    out = jax.jit(lambda p, x: [jaxlrp.lrp(fn, **kw)(p, x, target=target) for _, kw, _ in comps],
                  compiler_options=FAST)(params, x)
    for (name, _, _), R in zip(comps, out):
        rule_fn, stabs = ref.composite_rules(name, stabilizer=1e-2)
        for n in range(N):
            R_ref = ref.network_lrp(layers, x[n], int(TARGET[n]), rule_fn, **stabs)[0]
            assert deviation(R[n], R_ref) <= RTOL, name


def test_preset_stabilizer_reaches_avgpool_rule():
    """Bug 5, average pools: the preset is the same as naming Norm(stabilizer) for them
    (independent of how the pool's Norm rule itself is computed)."""
    fn, params, x, _ = head(net((4, 4, 2)).conv(3, 3).relu().avgpool(2)).build()
    norms = [("avgpool", rules.Norm(1e-2)), ("sum", rules.Norm(1e-2))]
    kw = {name: ref.preset_kwargs(name) for name in STABILISED}
    pairs = [(composites.get(name, stabilizer=1e-2, **kw[name]), composites.get(name, stabilizer=1e-2, rules=norms, **kw[name]))
             for name in STABILISED]
    target = jnp.asarray(TARGET)
    out = jax.jit(lambda p, x: [jaxlrp.lrp(fn, c)(p, x, target=target) for pair in pairs for c in pair],
                  compiler_options=FAST)(params, x)
    for name, preset, named in zip(STABILISED, out[::2], out[1::2]):
        np.testing.assert_allclose(preset, named, rtol=1e-12, atol=0, err_msg=name)
