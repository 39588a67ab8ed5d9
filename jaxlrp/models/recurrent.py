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

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import freeze, unfreeze
from jax.typing import ArrayLike

from .. import composites as _composites
from .. import rules as _rules
from ..composites import Composite

__all__ = [
    "FEEDS",
    "image_to_sequence",
    "EchoStateNetwork",
    "landt_hayen_esn",
    "esn_composite",
    "ESNComposite",
    "RADII",
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


def _reservoir_matrix(key: jax.Array, size: int, spectral_radius: float, sparsity: float, dtype: Any,
                      radius: str = "abs") -> jax.Array:
    """Uniform weights in [-0.5, 0.5], a share ``sparsity`` of them set to zero,
    rescaled so that the largest absolute eigenvalue (``radius="abs"``) or the
    largest real part of an eigenvalue (``radius="real"``, the authors' code of
    Landt-Hayen et al.) equals ``spectral_radius``."""
    k_w, k_mask = jax.random.split(key)
    w = jax.random.uniform(k_w, (size, size), jnp.float32, -0.5, 0.5)
    w = jnp.where(jax.random.uniform(k_mask, (size, size)) < sparsity, 0.0, w)
    ev = jnp.linalg.eigvals(w)
    r = jnp.max(jnp.abs(ev)) if radius == "abs" else jnp.max(jnp.real(ev))
    scale = jnp.where(r > 0, spectral_radius / jnp.where(r > 0, r, 1.0), 0.0)
    return (w * scale).astype(dtype)


RADII = ("abs", "real")


class EchoStateNetwork(nn.Module):
    """A leaky echo state network reading an image column by column or row by row.

    ``x_t = (1 - a) x_{t-1} + a tanh(u_t W_in + x_{t-1} W + b)`` from ``x_0 = 0``,
    then ``logits = x_T W_out + b_out``. With ``joint=True`` the pre-activation is
    computed as one product ``[u_t, x_{t-1}] [W_in; W] + b`` (the same values up to
    rounding), so that a rule of dense layers sees both weights as one layer, as
    the authors' LRP for echo state networks does (:func:`esn_composite`). ``W_in``, ``W`` and ``b`` are drawn once at
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
        Largest absolute eigenvalue of ``W`` (``radius="real"``: largest real part
        of an eigenvalue).
    radius:
        ``"abs"`` (default, the usual spectral radius) or ``"real"`` (the authors'
        code: ``W`` scaled by its largest real eigenvalue, so the absolute spectral
        radius may be larger than ``spectral_radius``).
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
    joint:
        One product for the pre-activation (see above); needed by
        :func:`esn_composite`.
    dtype:
        Dtype of the reservoir and the computation.

    Notes
    -----
    The operations carry the name scopes ``preactivation`` and ``leak`` (the
    update ``(1 - a) x_{t-1} + a tanh(...)``), which composites can match, e.g.
    ``("*leak*", rules.FixedShares((1 - a, a)))``. :func:`landt_hayen_esn` builds
    the network with the authors' settings.
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
    joint: bool = False
    radius: str = "abs"
    dtype: Any = jnp.float32

    def _check(self) -> None:
        _check_feed(self.feed)
        if self.radius not in RADII:
            raise ValueError(f"radius must be one of {RADII}, got {self.radius!r}")
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
        w = self.variable("reservoir", "w", lambda: _reservoir_matrix(
            rng(), n_res, self.spectral_radius, self.sparsity, dt, self.radius)).value
        b = self.variable("reservoir", "b", lambda: _uniform(rng(), (n_res,), self.bias_scale, dt)).value
        a = self.leak_rate
        w_cat = jnp.concatenate([w_in, w], axis=0) if self.joint else None

        def step(state, u):
            with jax.named_scope("preactivation"):
                if w_cat is not None:
                    z = jnp.concatenate([u, state], axis=-1) @ w_cat + b
                else:
                    z = u @ w_in + state @ w + b
            act = jnp.tanh(z)
            with jax.named_scope("leak"):
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


def landt_hayen_esn(leak_rate: float, **overrides: Any) -> EchoStateNetwork:
    """An echo state network with the settings of Landt-Hayen et al.'s code (2023).

    300 units; ``W_in`` and the reservoir bias uniform in ``[-0.1, 0.1]`` (the
    authors draw an input and a recurrent bias; one uniform bias stands for their
    sum); recurrent weights uniform with 30% of them non-zero (the authors'
    ``sparsity=0.3`` is the share *kept*: ``sparsity=0.7`` here) and scaled so that
    the largest real eigenvalue is 0.8 (``radius="real"``); one readout output,
    fitted to ``+-1`` targets (:func:`fit_readout` with integer labels: ``+1`` for
    label 1, ``-1`` for label 0); fed column by column; the joint pre-activation
    that :func:`esn_composite` needs. Not reproduced: their first step
    ``x_1 = tanh(W_in u_1 + b)`` without the leak factor (here
    ``x_1 = a tanh(...)``, as every other step).

    Parameters
    ----------
    leak_rate:
        ``a`` in ``(0, 1]``.
    **overrides:
        Any other :class:`EchoStateNetwork` attribute.
    """
    kw: dict[str, Any] = dict(reservoir_size=300, num_outputs=1, leak_rate=leak_rate, spectral_radius=0.8, sparsity=0.7,
              input_scale=0.1, bias_scale=0.1, radius="real", joint=True, feed="columns")
    kw.update(overrides)
    return EchoStateNetwork(**kw)


class ESNComposite(Composite):
    r"""The LRP of Landt-Hayen et al. (2023) for :class:`EchoStateNetwork`.

    * dense layers -- the readout and the joint pre-activation
      :math:`[u_t, x_{t-1}] [W_\text{in}; W]` (``joint=True``) --:
      :math:`z^+` without bias (``rules.ZPlus(stabilizer, ignore_bias=True)``), so
      each activation's relevance goes to the input and the previous state by their
      positive contributions to the one pre-activation;
    * the leaky update :math:`x_t = (1 - a) x_{t-1} + a \tanh(\cdot)` (name scope
      ``leak``): ``rules.FixedShares((1 - a, a))``, so the relevance that stays in
      the state decays by :math:`1 - a` per step by construction;
    * ``tanh``: passed through.

    The relevance of the first state's leak term, :math:`(1 - a) R(x_1)`, goes to
    the zero initial state and is lost (the authors' loop leaves out the first
    column instead).

    Parameters
    ----------
    leak_rate:
        The network's ``a``.
    stabilizer:
        Of :math:`z^+` (default 0, as the authors': a neuron without positive
        contributions passes nothing).
    rules:
        ``(matcher, rule)`` pairs tried first.

    Raises
    ------
    ValueError
        At explanation time, if the network has a sum the composite does not know
        (a pre-activation computed as two products: build it with ``joint=True``)
        or no leaky update.
    """

    def __init__(self, leak_rate: float, stabilizer: float = 0.0, rules: Sequence[tuple] = ()):
        a = float(leak_rate)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"leak_rate must be in (0, 1], got {leak_rate}")
        rules = list(rules)
        self._user = tuple(_composites.as_matcher(m) for m, _ in rules)
        self.leak_rate = a
        super().__init__(rules + [("*leak*", _rules.FixedShares((1.0 - a, a))),
                                  ("linear", _rules.ZPlus(stabilizer, ignore_bias=True))])

    def assign(self, layers: Sequence[_composites.Layer]) -> tuple:
        assigned = super().assign(layers)
        own = [(l, r) for l, r in zip(layers, assigned) if not any(f(l) for f in self._user)]
        sums = [l for l, r in own if l.kind == "sum" and not isinstance(r, _rules.FixedShares)]
        if sums:
            raise ValueError(f"ESNComposite: the sum '{sums[0].key}' is not the leaky update; a pre-activation "
                             "computed as two products needs EchoStateNetwork(joint=True)")
        if not any(isinstance(r, _rules.FixedShares) for _, r in own):
            raise ValueError("ESNComposite found no leaky update (name scope 'leak'): explain a "
                             "jaxlrp.models.EchoStateNetwork")
        return assigned


def esn_composite(model: Any, **kwargs: Any) -> ESNComposite:
    """:class:`ESNComposite` for an :class:`EchoStateNetwork` (its leak rate), or
    for a leak rate given as a number.

    Raises ``ValueError`` for a network without ``joint=True``.
    """
    if isinstance(model, EchoStateNetwork):
        if not model.joint:
            raise ValueError("esn_composite needs EchoStateNetwork(joint=True): z+ must see [W_in; W] as one layer")
        return ESNComposite(model.leak_rate, **kwargs)
    return ESNComposite(float(model), **kwargs)


def reservoir_states(model: EchoStateNetwork, variables: Any, x: ArrayLike, batch_size: Optional[int] = None) -> np.ndarray:
    """Final reservoir states ``(N, reservoir_size)`` of images ``x``, in batches."""
    images = np.asarray(x)
    fn = jax.jit(lambda v, xb: model.apply(v, xb, return_state=True))
    bs = len(images) if batch_size is None else int(batch_size)
    return np.concatenate([np.asarray(fn(variables, images[i:i + bs])) for i in range(0, len(images), bs)])


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


def fit_readout(model: EchoStateNetwork, variables: Any, x: ArrayLike, y: ArrayLike, *, ridge: float = 1e-6,
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
    labels = np.asarray(y)
    k = model.num_outputs
    if np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
        if labels.ndim != 1:
            raise ValueError(f"integer labels must have shape (N,), got {labels.shape}")
        if k == 1:
            targets = (2.0 * (labels == 1) - 1.0)[:, None]
        else:
            targets = 2.0 * np.eye(k)[labels] - 1.0
    else:
        targets = labels.reshape(len(labels), -1)
        if targets.shape[1] != k:
            raise ValueError(f"targets must have {k} columns, got shape {labels.shape}")
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
