"""Small transformers for LRP: a vision transformer and a text encoder, linen and nnx.

Both are pre-LN encoders built from Flax's own layers (``LayerNorm``,
multi-head dot-product attention, ``Dense``/``Linear``, GELU), so that
:func:`jaxlrp.lrp` explains them with no change: the softmax, the two attention
products, the normalisers and the residual adds are recognised from the jaxpr and
get the rules of :class:`~jaxlrp.composites.AttnLRP` or
:class:`~jaxlrp.composites.CPLRP`.

===================  ==========================================================
model                layer names (``params/<name>/...``)
===================  ==========================================================
:class:`ViT`         ``patch_embed`` (dense on flattened patches), ``cls_token``,
                     ``pos_embed``, ``block{i}/{ln1,attn,ln2,mlp1,mlp2}``,
                     ``ln_final``, ``head``
:class:`TextEncoder` ``token_embed``, ``pos_embed``, ``cls_token`` (class pooling
                     only), ``block{i}/...`` as above, ``ln_final``, ``head``
===================  ==========================================================

The nnx twins (:class:`NnxViT`, :class:`NnxTextEncoder`) have the same parameter
paths, so :func:`jaxlrp.flax.load_linen_variables` copies linen weights into them.

Explaining from the embeddings
------------------------------
Only floating-point inputs can be explained, so token ids are not: every model
splits into ``embed`` (ids or pixels -> the embedded sequence, positions and class
token included) and ``encode`` (embedded sequence -> logits), and ``__call__`` is
``encode(embed(x))``. Explain ``encode`` and sum the relevance over the embedding
axis with :func:`token_relevance`::

    h = model.apply(variables, tokens, method=TextEncoder.embed)          # (N, L, D)
    R = jaxlrp.lrp(from_embeddings(model), composites.AttnLRP())(variables, h)
    r = token_relevance(R)                                                # (N, L)

or in one call, ``explain_tokens(model, variables, tokens, composites.AttnLRP())``.
With class pooling the embedded sequence starts with the class token, so
``r[..., 0]`` is the class token's relevance and ``r[..., 1:]`` the tokens'.
For conservative rules (``CPLRP`` with exact stabilisers and zero biases) the
relevance of the embedded sequence sums to the explained logit; the positions and
the class token are part of the embedded sequence, so nothing is lost to them.

Every model accepts a batch ``(N, ...)`` or a single example (as inside
``jax.vmap``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights as _attention_weights

from ..explain import lrp as _lrp

__all__ = [
    "Block",
    "ViT",
    "TextEncoder",
    "NnxBlock",
    "NnxViT",
    "NnxTextEncoder",
    "patchify",
    "token_relevance",
    "from_embeddings",
    "embed",
    "explain_tokens",
]

#: JAX arrays, as Flax types its layers' inputs and outputs (NumPy inputs work too).
Array = jax.Array

_POS_INIT = nn.initializers.normal(stddev=0.02)
_POOLS = ("mean", "cls")


def _check_pool(pool: str) -> None:
    if pool not in _POOLS:
        raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")


def patchify(images: Array, patch_size: int) -> Array:
    """Cut images ``(..., H, W, C)`` into flattened non-overlapping patches.

    Parameters
    ----------
    images:
        Images with channels last; ``H`` and ``W`` must be multiples of
        ``patch_size``.
    patch_size:
        Side of the square patches.

    Returns
    -------
    Array of shape ``(..., (H / p) * (W / p), p * p * C)``, patches in row-major
    order, each flattened as ``(row, column, channel)``.
    """
    *batch, h, w, c = images.shape
    p = int(patch_size)
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p}")
    x = images.reshape(*batch, h // p, p, w // p, p, c)
    x = jnp.swapaxes(x, -4, -3)  # (..., h/p, w/p, p, p, C)
    return x.reshape(*batch, (h // p) * (w // p), p * p * c)


def token_relevance(relevance: Array, axis: int = -1) -> Array:
    """Relevance per token: the relevance of an embedded sequence summed over the
    embedding axis (``(..., L, D) -> (..., L)``)."""
    return jnp.sum(relevance, axis=axis)


def _prepend(token: Array, x: Array) -> Array:
    """Prepend a learned ``(D,)`` token to a sequence ``(..., L, D)``."""
    t = jnp.broadcast_to(token.astype(x.dtype), x.shape[:-2] + (1, x.shape[-1]))
    return jnp.concatenate([t, x], axis=-2)


def _pool(x: Array, pool: str) -> Array:
    return x[..., 0, :] if pool == "cls" else jnp.mean(x, axis=-2)


# ------------------------------------------------------------------------------ linen


class Block(nn.Module):
    """A pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp2(gelu(mlp1(ln2(x))))``.

    Attributes
    ----------
    dim:
        Width of the residual stream.
    heads:
        Attention heads (``dim`` must be a multiple).
    mlp_dim:
        Hidden width of the MLP.
    use_bias:
        Biases of the dense layers, the attention projections and the LayerNorms.
    param_dtype:
        Dtype of the parameters.
    """

    dim: int
    heads: int
    mlp_dim: int
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.LayerNorm(use_bias=self.use_bias, param_dtype=self.param_dtype, name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(
            num_heads=self.heads,
            qkv_features=self.dim,
            out_features=self.dim,
            use_bias=self.use_bias,
            param_dtype=self.param_dtype,
            deterministic=True,
            name="attn",
        )(h, h)
        h = nn.LayerNorm(use_bias=self.use_bias, param_dtype=self.param_dtype, name="ln2")(x)
        h = nn.Dense(self.mlp_dim, use_bias=self.use_bias, param_dtype=self.param_dtype, name="mlp1")(h)
        return x + nn.Dense(self.dim, use_bias=self.use_bias, param_dtype=self.param_dtype, name="mlp2")(nn.gelu(h))


class _Encoder(nn.Module):
    """Shared body of the linen models: blocks, final LayerNorm, pooling, head."""

    dim: int = 32
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 64
    num_classes: int = 2
    pool: str = "cls"
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    def _setup_body(self) -> None:
        _check_pool(self.pool)
        for i in range(self.depth):
            setattr(
                self,
                f"block{i}",
                Block(self.dim, self.heads, self.mlp_dim, self.use_bias, self.param_dtype),
            )
        self.ln_final = nn.LayerNorm(use_bias=self.use_bias, param_dtype=self.param_dtype)
        self.head = nn.Dense(self.num_classes, use_bias=self.use_bias, param_dtype=self.param_dtype)

    def encode(self, x: Array) -> Array:
        """Logits ``(..., num_classes)`` of an embedded sequence ``(..., L, dim)``
        (the output of :meth:`embed`)."""
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return self.head(_pool(self.ln_final(x), self.pool))

    def __call__(self, x: Array) -> Array:
        """Logits of the raw input: ``encode(embed(x))``."""
        return self.encode(self.embed(x))


class ViT(_Encoder):
    """A small vision transformer (Dosovitskiy et al. 2021), pre-LN.

    Patches are embedded by a dense layer on the flattened patches (the same map as
    a convolution with stride = kernel = ``patch_size``), a learned class token is
    prepended and learned positions are added; ``pool="cls"`` (default) reads the
    class token out, ``"mean"`` averages the sequence.

    Attributes
    ----------
    image_size:
        ``(H, W)`` of the input images ``(N, H, W, C)``.
    patch_size:
        Side of the square patches.
    dim, depth, heads, mlp_dim, num_classes, pool, use_bias, param_dtype:
        Width, number of blocks, attention heads, MLP width, outputs, pooling,
        biases and parameter dtype.

    Examples
    --------
    >>> model = ViT(image_size=(16, 16), patch_size=4, num_classes=3)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
    >>> R = jaxlrp.lrp(model.apply, composites.AttnLRP())(variables, images)   # pixels
    """

    image_size: tuple = (16, 16)
    patch_size: int = 4

    def setup(self) -> None:
        self.patch_embed = nn.Dense(self.dim, use_bias=self.use_bias, param_dtype=self.param_dtype)
        self.cls_token = self.param("cls_token", _POS_INIT, (self.dim,), self.param_dtype)
        n = (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        n += self.pool == "cls"
        self.pos_embed = self.param("pos_embed", _POS_INIT, (n, self.dim), self.param_dtype)
        self._setup_body()

    def embed(self, images: Array) -> Array:
        """The embedded sequence ``(..., 1 + patches, dim)`` of images ``(..., H, W, C)``
        (with ``pool="mean"`` there is no class token)."""
        x = self.patch_embed(patchify(images, self.patch_size))
        if self.pool == "cls":
            x = _prepend(self.cls_token, x)
        return x + self.pos_embed.astype(x.dtype)


class TextEncoder(_Encoder):
    """A small text encoder (BERT-like, pre-LN): token and learned position
    embeddings, transformer blocks, mean or class-token pooling, a dense head.

    Attributes
    ----------
    vocab_size:
        Number of token ids.
    max_len:
        Longest sequence (rows of the position table).
    dim, depth, heads, mlp_dim, num_classes, pool, use_bias, param_dtype:
        As in :class:`ViT`; ``pool`` defaults to ``"mean"`` here.

    Examples
    --------
    >>> model = TextEncoder(vocab_size=32, max_len=24)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 24), jnp.int32))
    >>> r = explain_tokens(model, variables, tokens, composites.AttnLRP())   # (N, 24)
    """

    vocab_size: int = 32
    max_len: int = 32
    pool: str = "mean"

    def setup(self) -> None:
        self.token_embed = nn.Embed(self.vocab_size, self.dim, param_dtype=self.param_dtype)
        self.pos_embed = self.param("pos_embed", _POS_INIT, (self.max_len, self.dim), self.param_dtype)
        if self.pool == "cls":
            self.cls_token = self.param("cls_token", _POS_INIT, (self.dim,), self.param_dtype)
        self._setup_body()

    def embed(self, tokens: Array) -> Array:
        """The embedded sequence ``(..., L, dim)`` of token ids ``(..., L)``: token
        plus position embeddings, and with ``pool="cls"`` the class token first
        (``(..., 1 + L, dim)``)."""
        length = tokens.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence of length {length} is longer than max_len={self.max_len}")
        x = self.token_embed(tokens) + self.pos_embed[:length]
        if self.pool == "cls":
            x = _prepend(self.cls_token, x)
        return x


# -------------------------------------------------------------------------------- nnx


def _nnx_attention(query: Array, key: Array, value: Array, bias: Optional[Array] = None,
                   mask: Optional[Array] = None, **kwargs: Any) -> Array:
    """Dot-product attention as linen computes it (softmax in the input's dtype).

    ``nnx.dot_product_attention`` without dropout calls
    ``jax.nn.dot_product_attention``, whose XLA implementation takes the softmax in
    float32 even for float64 inputs; the nnx models use this function instead, so
    that they compute (and are explained) exactly as their linen twins. Dropout
    arguments are ignored: the models are built without dropout.
    """
    weights = _attention_weights(query, key, bias, mask, precision=kwargs.get("precision"))
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=kwargs.get("precision"))


class NnxBlock(nnx.Module):
    """The nnx twin of :class:`Block` (same parameter paths)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        kw = dict(use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
        self.ln1 = nnx.LayerNorm(dim, **kw)
        self.attn = nnx.MultiHeadAttention(
            heads, dim, qkv_features=dim, out_features=dim, decode=False, deterministic=True, keep_rngs=False,
            attention_fn=_nnx_attention, **kw
        )
        self.ln2 = nnx.LayerNorm(dim, **kw)
        self.mlp1 = nnx.Linear(dim, mlp_dim, **kw)
        self.mlp2 = nnx.Linear(mlp_dim, dim, **kw)

    def __call__(self, x: Array) -> Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp2(nnx.gelu(self.mlp1(self.ln2(x))))


class _NnxEncoder(nnx.Module):
    """Shared body of the nnx models."""

    def _init_body(self, dim, depth, heads, mlp_dim, num_classes, pool, use_bias, param_dtype, rngs) -> None:
        _check_pool(pool)
        self.pool = pool
        self.depth = depth
        for i in range(depth):
            setattr(self, f"block{i}", NnxBlock(dim, heads, mlp_dim, use_bias, param_dtype, rngs=rngs))
        self.ln_final = nnx.LayerNorm(dim, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
        self.head = nnx.Linear(dim, num_classes, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)

    def embed(self, x: Array) -> Array:
        """The embedded sequence of the raw input (each model has its own)."""
        raise NotImplementedError

    def encode(self, x: Array) -> Array:
        """Logits of an embedded sequence (see :meth:`ViT.encode`)."""
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return self.head(_pool(self.ln_final(x), self.pool))

    def __call__(self, x: Array) -> Array:
        """Logits of the raw input: ``encode(embed(x))``."""
        return self.encode(self.embed(x))


class NnxViT(_NnxEncoder):
    """The nnx twin of :class:`ViT`; ``channels`` is the number of image channels."""

    def __init__(
        self,
        image_size: tuple = (16, 16),
        patch_size: int = 4,
        channels: int = 1,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 64,
        num_classes: int = 2,
        pool: str = "cls",
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.patch_size = patch_size
        self.patch_embed = nnx.Linear(
            patch_size * patch_size * channels, dim, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs
        )
        n = (image_size[0] // patch_size) * (image_size[1] // patch_size) + (pool == "cls")
        self.cls_token = nnx.Param(_POS_INIT(rngs.params(), (dim,), param_dtype))
        self.pos_embed = nnx.Param(_POS_INIT(rngs.params(), (n, dim), param_dtype))
        self._init_body(dim, depth, heads, mlp_dim, num_classes, pool, use_bias, param_dtype, rngs)

    def embed(self, images: Array) -> Array:
        """See :meth:`ViT.embed`."""
        x = self.patch_embed(patchify(images, self.patch_size))
        if self.pool == "cls":
            x = _prepend(self.cls_token[...], x)
        return x + self.pos_embed[...].astype(x.dtype)


class NnxTextEncoder(_NnxEncoder):
    """The nnx twin of :class:`TextEncoder`."""

    def __init__(
        self,
        vocab_size: int = 32,
        max_len: int = 32,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 64,
        num_classes: int = 2,
        pool: str = "mean",
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.max_len = max_len
        self.token_embed = nnx.Embed(vocab_size, dim, param_dtype=param_dtype, rngs=rngs)
        self.pos_embed = nnx.Param(_POS_INIT(rngs.params(), (max_len, dim), param_dtype))
        if pool == "cls":
            self.cls_token = nnx.Param(_POS_INIT(rngs.params(), (dim,), param_dtype))
        self._init_body(dim, depth, heads, mlp_dim, num_classes, pool, use_bias, param_dtype, rngs)

    def embed(self, tokens: Array) -> Array:
        """See :meth:`TextEncoder.embed`."""
        length = tokens.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence of length {length} is longer than max_len={self.max_len}")
        x = self.token_embed(tokens) + self.pos_embed[...][:length]
        if self.pool == "cls":
            x = _prepend(self.cls_token[...], x)
        return x


# ---------------------------------------------------------------------------- helpers


def from_embeddings(model: Any) -> Callable:
    """The model as a function of its embedded sequence, ready for :func:`jaxlrp.lrp`.

    Parameters
    ----------
    model:
        A linen :class:`ViT` / :class:`TextEncoder`, or an nnx :class:`NnxViT` /
        :class:`NnxTextEncoder`.

    Returns
    -------
    callable
        ``f(variables, embedded) -> logits`` for linen; for nnx ``f(state, embedded)``
        with ``state = nnx.state(model)`` (the graph is taken from ``model`` now).
    """
    if isinstance(model, nnx.Module):
        graphdef = nnx.graphdef(model)
        return lambda state, x: nnx.merge(graphdef, state).encode(x)
    if isinstance(model, nn.Module):
        return lambda variables, x: model.apply(variables, x, method="encode")
    raise TypeError(f"expected a linen or nnx transformer, got {type(model).__name__}")


def embed(model: Any, variables: Any, inputs: Array) -> Array:
    """The embedded sequence of ``inputs`` (token ids or images).

    ``variables`` are the linen variables, or for nnx ``None`` or a state to use
    instead of the model's own.
    """
    if isinstance(model, nnx.Module):
        if variables is not None:
            model = nnx.merge(nnx.graphdef(model), variables)
        return model.embed(inputs)
    return model.apply(variables, inputs, method=type(model).embed)


def explain_tokens(
    model: Any,
    variables: Any,
    inputs: Array,
    composite: Any = None,
    *,
    target: Any = None,
    output_relevance: Any = None,
) -> Array:
    """Token relevance ``(..., L)`` of ``inputs`` (token ids or images): the LRP
    relevance of the embedded sequence summed over the embedding axis.

    Parameters
    ----------
    model, variables:
        As in :func:`embed` (for nnx, ``variables=None`` uses the model's state).
    inputs:
        Token ids ``(N, L)`` / ``(L,)`` or images.
    composite:
        Passed to :func:`jaxlrp.lrp`, e.g. ``composites.AttnLRP()``.
    target, output_relevance:
        As in :func:`jaxlrp.lrp`.

    Returns
    -------
    Array of the embedded sequence's shape without the last axis (with class
    pooling, the class token comes first).
    """
    if isinstance(model, nnx.Module) and variables is None:
        variables = nnx.state(model)
    h = embed(model, variables, inputs)
    rel = _lrp(from_embeddings(model), composite)(variables, h, target=target, output_relevance=output_relevance)
    return token_relevance(rel)
