"""The models of the coverage report (``bench/coverage.py``), one builder each.

Each builder returns ``(fn, args)``: ``fn(*args)`` gives logits ``(N, classes)`` and
the explained input is the last argument. Every parameter is random
(:func:`randomize`). Models written in plain JAX follow the source they
are named after (layer structure and operation spelling), at toy sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp import composites

F64 = jnp.float64


@dataclasses.dataclass
class Case:
    """One model: ``build()`` returns ``(fn, args)`` with ``fn(*args)`` the logits
    and the explained input last; ``identity``: LRP-0 is gradient x input."""

    name: str
    library: str
    build: Callable[[], tuple]
    identity: bool
    composite: Any = None
    note: str = ""


# ------------------------------------------------------------------ random weights


def randomize(tree: Any, seed: int) -> Any:
    """Every float leaf replaced by random values of its shape and dtype: variances
    and scales in [0.5, 1.5], matrices N(0, 1/fan_in), vectors N(0, 0.1^2)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            out.append(leaf)
            continue
        key = jax.tree_util.keystr(path).lower()
        shape = np.shape(leaf)
        if any(w in key for w in ("var", "scale", "gamma", "weight")) and len(shape) <= 1:
            v = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            v = rng.normal(size=shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        else:
            v = rng.normal(size=shape) * 0.1
        out.append(jnp.asarray(v, F64))
    return jax.tree_util.tree_unflatten(treedef, out)


def images(n=2, h=16, w=16, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w, c)), F64)




# --------------------------------------------------------------------------- Flax


def linen_resnet():
    from jaxlrp import models

    model = models.ResNet(depth=18, num_classes=5, width=4)
    x = images(2, 32, 32, 3)
    return model.apply, (randomize(model.init(jax.random.key(0), x[:1].astype(jnp.float32)), 1), x)


def linen_vit():
    from jaxlrp import models

    model = models.ViT(image_size=(16, 16), patch_size=4, num_classes=3, dim=16, depth=2, heads=2, mlp_dim=32)
    x = images(2, 16, 16, 1)
    return model.apply, (randomize(model.init(jax.random.key(0), x[:1].astype(jnp.float32)), 2), x)


def linen_lstm():
    from jaxlrp.models import recurrent

    model = recurrent.LSTMClassifier(8, 3)
    x = images(2, 8, 8, 1)
    return model.apply, (randomize(model.init(jax.random.key(0), x[:1].astype(jnp.float32)), 3), x)


def nnx_vgg():
    from flax import nnx

    from jaxlrp.models import nnx as zoo

    model = zoo.VGG(11, 5, batch_norm=True, width=4, hidden=16, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    return (lambda s, x: nnx.merge(graphdef, s)(x)), (randomize(state, 4), images(2, 32, 32, 3))


def unet():
    """A two-level UNet (Ronneberger et al.): conv-ReLU pairs, max pooling, nearest
    upsampling, skip concatenation, a 1x1 head and global average pooling."""
    import flax.linen as nn

    class UNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            def pair(h, c, name):
                h = nn.relu(nn.Conv(c, (3, 3), name=f"{name}_a")(h))
                return nn.relu(nn.Conv(c, (3, 3), name=f"{name}_b")(h))

            d1 = pair(x, 4, "down1")
            d2 = pair(nn.max_pool(d1, (2, 2), (2, 2)), 8, "down2")
            up = jax.image.resize(d2, d1.shape[:1] + d1.shape[1:3] + d2.shape[3:], "nearest")
            u1 = pair(jnp.concatenate([d1, nn.Conv(4, (1, 1), name="up1_proj")(up)], -1), 4, "up1")
            return jnp.mean(nn.Conv(3, (1, 1), name="head")(u1), axis=(1, 2))

    model, x = UNet(), images(2, 16, 16, 3)
    return model.apply, (randomize(model.init(jax.random.key(0), x[:1]), 5), x)


def convnext():
    """ConvNeXt blocks (Liu et al. 2022): patchify stem, depthwise 7x7 conv,
    LayerNorm, 4x pointwise MLP with GELU, layer scale, residual; mean pool, LayerNorm, head."""
    import flax.linen as nn

    class Block(nn.Module):
        dim: int

        @nn.compact
        def __call__(self, x):
            h = nn.Conv(self.dim, (7, 7), padding=3, feature_group_count=self.dim, name="dwconv")(x)
            h = nn.LayerNorm(name="norm")(h)
            h = nn.Dense(4 * self.dim, name="pwconv1")(h)
            h = nn.Dense(self.dim, name="pwconv2")(nn.gelu(h))
            return x + self.param("gamma", nn.initializers.ones, (self.dim,)) * h

    class ConvNeXt(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.LayerNorm(name="stem_norm")(nn.Conv(8, (4, 4), strides=4, name="stem")(x))
            for i in range(2):
                x = Block(8, name=f"block{i}")(x)
            return nn.Dense(3, name="head")(nn.LayerNorm(name="norm")(jnp.mean(x, axis=(1, 2))))

    model, x = ConvNeXt(), images(2, 16, 16, 3)
    return model.apply, (randomize(model.init(jax.random.key(0), x[:1]), 6), x)


# ----------------------------------------------------------------------- Equinox


def _eqx_batched(model, x):
    return jax.vmap(model)(x)


def eqx_mlp():
    import equinox as eqx

    model = eqx.nn.MLP(12, 3, 16, 2, activation=jax.nn.relu, key=jax.random.key(0))
    return _eqx_batched, (randomize(model, 7), jnp.asarray(np.random.default_rng(1).normal(size=(2, 12)), F64))


def eqx_cnn():
    import equinox as eqx

    k = jax.random.split(jax.random.key(0), 3)
    model = eqx.nn.Sequential([
        eqx.nn.Conv2d(3, 4, 3, padding=1, key=k[0]), eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.MaxPool2d(2, 2), eqx.nn.Conv2d(4, 8, 3, padding=1, key=k[1]), eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.Lambda(lambda h: jnp.mean(h, axis=(1, 2))), eqx.nn.Linear(8, 3, key=k[2]),
    ])
    x = jnp.transpose(images(2, 16, 16, 3), (0, 3, 1, 2))  # Equinox is channels first
    return _eqx_batched, (randomize(model, 8), x)


def _eqx_rnn(cell_cls, seed):
    import equinox as eqx

    k1, k2 = jax.random.split(jax.random.key(seed))
    model = {"cell": cell_cls(4, 8, key=k1), "head": eqx.nn.Linear(8, 3, key=k2)}

    def run(m, xs):  # xs: (N, T, 4)
        def one(seq):
            h0 = (jnp.zeros(8, seq.dtype),) * 2 if cell_cls is eqx.nn.LSTMCell else jnp.zeros(8, seq.dtype)

            def step(h, x_t):
                return m["cell"](x_t, h), None

            h, _ = jax.lax.scan(step, h0, seq)
            return m["head"](h[0] if isinstance(h, tuple) else h)

        return jax.vmap(one)(xs)

    return run, (randomize(model, seed), jnp.asarray(np.random.default_rng(seed).normal(size=(2, 6, 4)), F64))


def eqx_lstm():
    import equinox as eqx

    return _eqx_rnn(eqx.nn.LSTMCell, 9)


def eqx_gru():
    import equinox as eqx

    return _eqx_rnn(eqx.nn.GRUCell, 10)


# ------------------------------------------------------------------ Haiku, penzai


def haiku_cnn():
    import haiku as hk

    def forward(x):
        h = jax.nn.relu(hk.Conv2D(4, 3, name="conv1")(x))
        h = hk.max_pool(h, 2, 2, "VALID")
        h = jax.nn.relu(hk.Conv2D(8, 3, name="conv2")(h))
        return hk.Linear(3, name="fc")(hk.Flatten()(h))

    f = hk.without_apply_rng(hk.transform(forward))
    x = images(2, 8, 8, 3)
    return f.apply, (randomize(f.init(jax.random.key(0), x), 11), x)


def penzai_mlp():
    from penzai import pz
    from penzai.models import simple_mlp

    model = simple_mlp.MLP.from_config(init_base_rng=jax.random.key(0), feature_sizes=[12, 16, 16, 3])
    unbound, params = pz.unbind_params(model, freeze=True)

    def fn(p, x):
        y = pz.bind_variables(unbound, p)(pz.nx.wrap(x).tag("batch", "features"))
        return y.untag("batch", "features").unwrap()

    return fn, (randomize(params, 12), jnp.asarray(np.random.default_rng(2).normal(size=(2, 12)), F64))


# ------------------------------------------------------------------------- Keras


def keras_cnn():
    import keras

    import jaxlrp.keras as jk

    d = "float64"
    inp = keras.Input((16, 16, 3), dtype=d)
    h = keras.layers.Conv2D(4, 3, padding="same", dtype=d, name="conv1")(inp)
    h = keras.layers.BatchNormalization(dtype=d, name="bn1")(h)
    h = keras.layers.MaxPooling2D(2, dtype=d)(keras.layers.ReLU(dtype=d)(h))
    h = keras.layers.Conv2D(8, 3, activation="relu", dtype=d, name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(dtype=d)(keras.layers.Dropout(0.3, dtype=d)(h))
    model = keras.Model(inp, keras.layers.Dense(3, dtype=d, name="head")(h), name="kcnn")
    return jk.call(model), (randomize(jk.variables(model), 13), images(2, 16, 16, 3))


# ---------------------------------------------------------- plain-JAX transformer ports


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _layer_norm(p, x, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * p["gamma"] + p["beta"]


def _lin(rng, n_in, n_out):
    return {"kernel": rng.normal(size=(n_in, n_out)) / np.sqrt(n_in), "bias": rng.normal(size=n_out) * 0.1}


def _ln(rng, n):
    return {"gamma": rng.uniform(0.5, 1.5, n), "beta": rng.normal(size=n) * 0.1}


def hf_bert():
    """A BERT encoder as Hugging Face's Flax port writes it (``embeddings/LayerNorm``,
    ``attention/self/query``, an additive attention mask, ``intermediate``/``output``
    with GELU), explained from the summed embeddings."""
    rng, d, heads, n_layers = np.random.default_rng(14), 16, 2, 2
    layer = lambda: {"attention": {"self": {k: _lin(rng, d, d) for k in ("query", "key", "value")},
                                   "output": {"dense": _lin(rng, d, d), "LayerNorm": _ln(rng, d)}},
                     "intermediate": {"dense": _lin(rng, d, 4 * d)},
                     "output": {"dense": _lin(rng, 4 * d, d), "LayerNorm": _ln(rng, d)}}
    params = {"embeddings": {"LayerNorm": _ln(rng, d)}, "encoder": {"layer": [layer() for _ in range(n_layers)]},
              "pooler": {"dense": _lin(rng, d, d)}, "classifier": _lin(rng, d, 3)}
    params = jax.tree.map(lambda a: jnp.asarray(a, F64), params)
    mask = jnp.asarray([[1.0] * 6, [1.0] * 4 + [0.0] * 2], F64)

    def attention(p, h):
        n, t, _ = h.shape
        split = lambda a: a.reshape(n, t, heads, d // heads)
        q, k, v = (split(_dense(p["self"][name], h)) for name in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads)
        scores = scores + ((1.0 - mask) * -1e9)[:, None, None, :]
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v).reshape(n, t, d)
        return _layer_norm(p["output"]["LayerNorm"], _dense(p["output"]["dense"], ctx) + h)

    def bert(p, emb):
        h = _layer_norm(p["embeddings"]["LayerNorm"], emb)
        for lp in p["encoder"]["layer"]:
            h = attention(lp["attention"], h)
            inter = jax.nn.gelu(_dense(lp["intermediate"]["dense"], h), approximate=False)
            h = _layer_norm(lp["output"]["LayerNorm"], _dense(lp["output"]["dense"], inter) + h)
        pooled = jnp.tanh(_dense(p["pooler"]["dense"], h[:, 0]))
        return _dense(p["classifier"], pooled)

    return bert, (params, jnp.asarray(np.random.default_rng(15).normal(size=(2, 6, d)), F64))


def llama():
    """A LLaMA-style decoder (Touvron et al. 2023): RMSNorm, rotary position
    embeddings, causal softmax attention, SwiGLU MLP, no biases; explained from the
    token embeddings, the last position's logits."""
    rng, d, heads, t, n_layers = np.random.default_rng(16), 16, 2, 6, 2
    hd = d // heads
    w = lambda a, b: rng.normal(size=(a, b)) / np.sqrt(a)
    layer = lambda: {"attn_norm": rng.uniform(0.5, 1.5, d), "wq": w(d, d), "wk": w(d, d), "wv": w(d, d),
                     "wo": w(d, d), "mlp_norm": rng.uniform(0.5, 1.5, d), "w1": w(d, 2 * d), "w3": w(d, 2 * d),
                     "w2": w(2 * d, d)}
    params = {"layers": [layer() for _ in range(n_layers)], "norm": rng.uniform(0.5, 1.5, d), "lm_head": w(d, 5)}
    params = jax.tree.map(lambda a: jnp.asarray(a, F64), params)
    inv = 1.0 / (10000 ** (np.arange(0, hd, 2) / hd))
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = jnp.asarray(np.cos(ang), F64), jnp.asarray(np.sin(ang), F64)

    def rms(g, x):
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * g

    def rope(x):  # (N, T, H, hd): rotate pairs (even, odd)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        c, s = cos[None, :, None], sin[None, :, None]
        return jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).reshape(x.shape)

    def block(p, h):
        n = h.shape[0]
        a = rms(p["attn_norm"], h)
        q, k, v = (jnp.reshape(a @ p[m], (n, t, heads, hd)) for m in ("wq", "wk", "wv"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", rope(q), rope(k)) / np.sqrt(hd)
        scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v).reshape(n, t, d)
        h = h + ctx @ p["wo"]
        m = rms(p["mlp_norm"], h)
        return h + (jax.nn.silu(m @ p["w1"]) * (m @ p["w3"])) @ p["w2"]

    def decoder(p, emb):
        h = emb
        for lp in p["layers"]:
            h = block(lp, h)
        return rms(p["norm"], h)[:, -1] @ p["lm_head"]

    return decoder, (params, jnp.asarray(np.random.default_rng(17).normal(size=(2, t, d)), F64))


CASES = [
    Case("ResNet-18 (zoo, BatchNorm)", "Flax linen", linen_resnet, True),
    Case("VGG-11 BN (zoo)", "Flax nnx", nnx_vgg, True),
    Case("ViT (zoo)", "Flax linen", linen_vit, False, composites.AttnLRP(),
         "LayerNorm, softmax attention and GELU: no gradient identity"),
    Case("LSTM classifier (zoo, nn.RNN)", "Flax linen", linen_lstm, False, None,
         "gates (SignalTakesAll) and tanh: no gradient identity"),
    Case("UNet (nearest upsampling)", "Flax linen", unet, True, None,
         "with bilinear upsampling the identity does not apply: a constant linear map (the interpolation "
         "matrix M) routes relevance by the plain VJP, M^T R (Zennit's treatment of upsampling), not by "
         "LRP-0's proportional split x * M^T (R / M x); it measured 21.5 on this UNet"),
    Case("ConvNeXt blocks", "Flax linen", convnext, False, None,
         "LayerNorm and GELU: no gradient identity"),
    Case("MLP (eqx.nn.MLP)", "Equinox", eqx_mlp, True),
    Case("CNN (eqx.nn.Conv2d, MaxPool2d)", "Equinox", eqx_cnn, True),
    Case("LSTM (eqx.nn.LSTMCell, lax.scan)", "Equinox", eqx_lstm, False, None,
         "gates: no gradient identity; the bias after the sum of two layers is issue 24 item 2"),
    Case("GRU (eqx.nn.GRUCell, lax.scan)", "Equinox", eqx_gru, False, None,
         "gates: no gradient identity; the bias on a slice is issue 24 item 2"),
    Case("ConvNet (hk.Conv2D, hk.Linear)", "Haiku", haiku_cnn, True, None,
         "Haiku adds jnp.broadcast_to(b): issue 24 item 1 (fixed on another branch)"),
    Case("MLP (penzai simple_mlp)", "penzai", penzai_mlp, True),
    Case("CNN with BatchNorm, Dropout (jaxlrp.keras)", "Keras 3", keras_cnn, True),
    Case("BERT encoder (HF Flax port, plain JAX)", "plain JAX", hf_bert, False, composites.AttnLRP(),
         "LayerNorm, softmax attention, GELU, tanh pooler: no gradient identity"),
    Case("LLaMA-style decoder (RoPE, SwiGLU)", "plain JAX", llama, False, composites.AttnLRP(),
         "RMSNorm, causal softmax, SwiGLU: no gradient identity"),
]
