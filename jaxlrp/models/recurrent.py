"""Recurrent image classifiers: an echo state network, an LSTM and a GRU (Flax linen).

Each model reads an image ``(N, H, W, C)`` as a sequence -- column by column
(``feed="columns"``: ``W`` steps of ``H * C`` features) or row by row
(``feed="rows"``: ``H`` steps of ``W * C`` features), from the first column/row to
the last or, with ``reverse=True``, from the last to the first -- and maps its last
state to the logits with a dense readout. These are the models of the "Fact or
Artifact" study (Landt-Hayen, Rath, Claus & Kröger 2023), whose relevance maps fade
with the distance from the last step fed: an artifact of the model's memory, not of
the data (see :func:`jaxlrp.diagnostics.decay_profile`).

=====================  =========================================================
model                  state update
=====================  =========================================================
:class:`EchoStateNetwork`  ``x_t = (1 - a) x_{t-1} + a tanh(u_t W_in + x_{t-1} W + b)``,
                       fixed random reservoir (collection ``"reservoir"``), readout
                       fitted in closed form with :func:`fit_readout`
:class:`LSTMClassifier`    ``flax.linen.OptimizedLSTMCell``, trained by gradient
:class:`GRUClassifier`     ``flax.linen.GRUCell``, trained by gradient
=====================  =========================================================

All three run their time loop with ``jax.lax.scan`` (or, with ``unroll=True``, a
Python loop), so ``jaxlrp.lrp(model.apply)`` explains them directly: the gated
products of the LSTM and GRU cells are detected as gates and, by default, send all
their relevance to the signal (``rules.SignalTakesAll``).

>>> from jaxlrp.models import recurrent
>>> esn = recurrent.EchoStateNetwork(reservoir_size=300, leak_rate=0.05)
>>> variables = esn.init(jax.random.PRNGKey(0), x[:1])
>>> variables = recurrent.fit_readout(esn, variables, x, y, ridge=1e-3)
>>> R = jaxlrp.lrp(esn.apply)(variables, x, target=y)
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import freeze, unfreeze

__all__ = [
    "FEEDS",
    "image_to_sequence",
    "EchoStateNetwork",
    "LSTMClassifier",
    "GRUClassifier",
    "reservoir_states",
    "ridge_regression",
    "fit_readout",
]

FEEDS = ("columns", "rows")


def _check_feed(feed: str) -> None:
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")


def image_to_sequence(x: jax.Array, feed: str = "columns", reverse: bool = False) -> jax.Array:
    """Turn images ``(N, H, W, C)`` into sequences ``(N, T, F)``.

    Parameters
    ----------
    x:
        Batched images, NHWC.
    feed:
        ``"columns"``: one step per column (``T = W``, ``F = H * C``, features ordered
        row-major over ``(H, C)``); ``"rows"``: one step per row (``T = H``,
        ``F = W * C``).
    reverse:
        Feed the last column (row) first.

    Returns
    -------
    jax.Array
        ``(N, T, F)``; step ``t`` holds column (row) ``t``, or ``T - 1 - t`` if
        ``reverse``.
    """
    _check_feed(feed)
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got shape {x.shape}")
    n, h, w, c = x.shape
    if feed == "columns":
        seq = jnp.transpose(x, (0, 2, 1, 3)).reshape(n, w, h * c)
    else:
        seq = x.reshape(n, h, w * c)
    return seq[:, ::-1] if reverse else seq


# ------------------------------------------------------------------ echo state network


def _uniform(key: jax.Array, shape: tuple, scale: float, dtype: Any) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -scale, scale)


def _reservoir_matrix(key: jax.Array, size: int, spectral_radius: float, sparsity: float, dtype: Any) -> jax.Array:
    """Uniform weights in [-0.5, 0.5], a share ``sparsity`` of them set to zero,
    rescaled to the given spectral radius (largest absolute eigenvalue)."""
    k_w, k_mask = jax.random.split(key)
    w = jax.random.uniform(k_w, (size, size), jnp.float32, -0.5, 0.5)
    w = jnp.where(jax.random.uniform(k_mask, (size, size)) < sparsity, 0.0, w)
    radius = jnp.max(jnp.abs(jnp.linalg.eigvals(w)))
    scale = jnp.where(radius > 0, spectral_radius / jnp.where(radius > 0, radius, 1.0), 0.0)
    return (w * scale).astype(dtype)


class EchoStateNetwork(nn.Module):
    """A leaky echo state network reading an image column by column or row by row.

    ``x_t = (1 - a) x_{t-1} + a tanh(u_t W_in + x_{t-1} W + b)`` from ``x_0 = 0``,
    then ``logits = x_T W_out + b_out``. ``W_in``, ``W`` and ``b`` are drawn once at
    ``init`` and live in the variable collection ``"reservoir"`` (they are never
    trained); the readout ``W_out, b_out`` (``params/readout``, initialised to zero)
    is fitted with :func:`fit_readout`.

    Attributes
    ----------
    reservoir_size:
        Number of reservoir units.
    num_outputs:
        Number of outputs (logits) of the readout.
    leak_rate:
        ``a`` in ``(0, 1]``: small values give a long memory.
    spectral_radius:
        Largest absolute eigenvalue of ``W``.
    sparsity:
        Share of the recurrent weights set to zero, in ``[0, 1)``.
    input_scale:
        ``W_in`` is uniform in ``[-input_scale, input_scale]``.
    bias_scale:
        ``b`` is uniform in ``[-bias_scale, bias_scale]`` (0: no reservoir bias).
    feed, reverse:
        How the image is read (see :func:`image_to_sequence`).
    unroll:
        Run the time loop as a Python loop instead of ``lax.scan`` (same result).
    dtype:
        Dtype of the reservoir and the computation.
    """

    reservoir_size: int = 300
    num_outputs: int = 2
    leak_rate: float = 0.05
    spectral_radius: float = 0.8
    sparsity: float = 0.3
    input_scale: float = 0.1
    bias_scale: float = 0.0
    feed: str = "columns"
    reverse: bool = False
    unroll: bool = False
    dtype: Any = jnp.float32

    def _check(self) -> None:
        _check_feed(self.feed)
        if not 0.0 < self.leak_rate <= 1.0:
            raise ValueError(f"leak_rate must be in (0, 1], got {self.leak_rate}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.reservoir_size < 1 or self.num_outputs < 1:
            raise ValueError("reservoir_size and num_outputs must be >= 1")

    @nn.compact
    def __call__(self, x: jax.Array, return_state: bool = False) -> jax.Array:
        """Logits ``(N, num_outputs)`` of images ``(N, H, W, C)``, or with
        ``return_state=True`` the final reservoir state ``(N, reservoir_size)``."""
        self._check()
        seq = image_to_sequence(x, self.feed, self.reverse).astype(self.dtype)
        n_res, dt = self.reservoir_size, self.dtype
        rng = lambda: self.make_rng("params")
        w_in = self.variable("reservoir", "w_in",
                             lambda: _uniform(rng(), (seq.shape[-1], n_res), self.input_scale, dt)).value
        w = self.variable("reservoir", "w",
                          lambda: _reservoir_matrix(rng(), n_res, self.spectral_radius, self.sparsity, dt)).value
        b = self.variable("reservoir", "b", lambda: _uniform(rng(), (n_res,), self.bias_scale, dt)).value
        a = self.leak_rate

        def step(state, u):
            act = jnp.tanh(u @ w_in + state @ w + b)
            return (1.0 - a) * state + a * act, None

        state = jnp.zeros((seq.shape[0], n_res), dt)
        steps = jnp.swapaxes(seq, 0, 1)  # (T, N, F)
        if self.unroll:
            for t in range(steps.shape[0]):
                state, _ = step(state, steps[t])
        else:
            state, _ = jax.lax.scan(step, state, steps)
        if return_state:
            return state
        return nn.Dense(self.num_outputs, kernel_init=nn.initializers.zeros, name="readout",
                        dtype=dt, param_dtype=dt)(state)


def reservoir_states(model: EchoStateNetwork, variables: Any, x: jax.Array, batch_size: Optional[int] = None) -> np.ndarray:
    """Final reservoir states ``(N, reservoir_size)`` of images ``x``, in batches."""
    x = np.asarray(x)
    fn = jax.jit(lambda v, xb: model.apply(v, xb, return_state=True))
    bs = len(x) if batch_size is None else int(batch_size)
    return np.concatenate([np.asarray(fn(variables, x[i:i + bs])) for i in range(0, len(x), bs)])


def ridge_regression(features: np.ndarray, targets: np.ndarray, ridge: float = 1e-6) -> tuple:
    """Closed-form ridge regression with an unpenalised intercept.

    Solves ``min_{W, b} ||features W + b - targets||^2 + ridge ||W||^2`` in float64
    on the centred data: ``W = (Xc^T Xc + ridge I)^-1 Xc^T Yc``,
    ``b = mean(Y) - mean(X) W``.

    Parameters
    ----------
    features:
        ``(N, D)``.
    targets:
        ``(N, K)`` or ``(N,)``.
    ridge:
        Penalty ``>= 0`` (0: least squares; a pseudo-inverse where singular).

    Returns
    -------
    (W, b):
        ``(D, K)`` and ``(K,)`` float64 (``(D,)`` and a scalar for 1-D targets).
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    X = np.asarray(features, np.float64)
    Y = np.asarray(targets, np.float64)
    vec = Y.ndim == 1
    Y = Y[:, None] if vec else Y
    if X.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"features (N, D) and targets (N, K) must agree, got {X.shape} and {Y.shape}")
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    gram = Xc.T @ Xc + ridge * np.eye(X.shape[1])
    if ridge > 0:
        W = np.linalg.solve(gram, Xc.T @ Yc)
    else:
        W = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
    b = my - mx @ W
    return (W[:, 0], b[0]) if vec else (W, b)


def fit_readout(model: EchoStateNetwork, variables: Any, x: jax.Array, y: jax.Array, *, ridge: float = 1e-6,
                batch_size: Optional[int] = None) -> Any:
    """Fit the readout of an echo state network in closed form (ridge regression).

    The final reservoir states of ``x``, augmented with a bias, are regressed on the
    targets (see :func:`ridge_regression`; runs eagerly, in float64).

    Parameters
    ----------
    model, variables:
        The network and its variables from ``model.init``.
    x:
        Training images ``(N, H, W, C)``.
    y:
        Integer labels ``(N,)`` -- regressed as one-hot targets in ``{-1, +1}``
        (for ``num_outputs == 1``: ``+1`` for label 1, ``-1`` for label 0) -- or
        real targets ``(N, num_outputs)``.
    ridge:
        Ridge penalty on the readout weights (not on the bias).
    batch_size:
        Images per forward pass when collecting states (all at once if ``None``).

    Returns
    -------
    The variables with ``params/readout`` replaced by the fitted weights.
    """
    y = np.asarray(y)
    k = model.num_outputs
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        if y.ndim != 1:
            raise ValueError(f"integer labels must have shape (N,), got {y.shape}")
        if k == 1:
            targets = (2.0 * (y == 1) - 1.0)[:, None]
        else:
            targets = 2.0 * np.eye(k)[y] - 1.0
    else:
        targets = y.reshape(len(y), -1)
        if targets.shape[1] != k:
            raise ValueError(f"targets must have {k} columns, got shape {y.shape}")
    states = reservoir_states(model, variables, x, batch_size)
    W, b = ridge_regression(states, targets, ridge)
    v = unfreeze(variables) if not isinstance(variables, dict) else jax.tree_util.tree_map(lambda a: a, variables)
    readout = v["params"]["readout"]
    readout["kernel"] = jnp.asarray(W, readout["kernel"].dtype)
    readout["bias"] = jnp.asarray(b, readout["bias"].dtype)
    return v if isinstance(variables, dict) else freeze(v)


# ------------------------------------------------------------------ gated RNNs


class _GatedClassifier(nn.Module):
    """Shared body: image -> sequence -> recurrent cell -> last state -> dense."""

    hidden_size: int = 32
    num_classes: int = 2
    feed: str = "columns"
    reverse: bool = False
    unroll: bool = False

    def cell(self) -> nn.RNNCellBase:  # pragma: no cover - overridden
        raise NotImplementedError

    def initial_carry(self, n: int, dtype: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def output(carry: Any) -> jax.Array:  # pragma: no cover - overridden
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(N, num_classes)`` of images ``(N, H, W, C)``."""
        seq = image_to_sequence(x, self.feed, self.reverse)
        carry = self.initial_carry(seq.shape[0], seq.dtype)
        cell = self.cell()
        if self.unroll:
            for t in range(seq.shape[1]):
                carry, _ = cell(carry, seq[:, t])
        else:
            carry = nn.RNN(cell, return_carry=True, name="rnn")(seq, initial_carry=carry)[0]
        return nn.Dense(self.num_classes, name="head")(self.output(carry))


class LSTMClassifier(_GatedClassifier):
    """An LSTM (``flax.linen.OptimizedLSTMCell``) reading an image sequentially.

    Attributes
    ----------
    hidden_size:
        Units of the cell.
    num_classes:
        Logits of the dense head on the last hidden state.
    feed, reverse:
        How the image is read (see :func:`image_to_sequence`).
    unroll:
        Run the cell in a Python loop instead of ``nn.RNN`` (``lax.scan``); the
        parameters are the same (``params/cell/...``, ``params/head/...``).
    """

    def cell(self) -> nn.RNNCellBase:
        return nn.OptimizedLSTMCell(self.hidden_size, name="cell")

    def initial_carry(self, n: int, dtype: Any) -> Any:
        zeros = jnp.zeros((n, self.hidden_size), dtype)
        return (zeros, zeros)  # (c, h)

    @staticmethod
    def output(carry: Any) -> jax.Array:
        return carry[1]


class GRUClassifier(_GatedClassifier):
    """A GRU (``flax.linen.GRUCell``) reading an image sequentially.

    Attributes as for :class:`LSTMClassifier`. The cell's products
    ``r * (h W_hn + b_hn)``, ``(1 - z) * n`` and ``z * h`` are gates: with the
    default ``SignalTakesAll`` the reset and update gates get no relevance.
    """

    def cell(self) -> nn.RNNCellBase:
        return nn.GRUCell(self.hidden_size, name="cell")

    def initial_carry(self, n: int, dtype: Any) -> Any:
        return jnp.zeros((n, self.hidden_size), dtype)

    @staticmethod
    def output(carry: Any) -> jax.Array:
        return carry
