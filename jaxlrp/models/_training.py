"""Training a zoo model in seconds: :func:`fit`, the loop the demo and the examples share."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, Union

import jax
import numpy as np
from tqdm import tqdm

__all__ = ["fit"]

Params = Any  # a pytree of arrays (linen variables, an nnx state, a dict)
Data = Union[np.ndarray, jax.Array]


def _optax() -> Any:
    try:
        import optax
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
        raise ImportError("jaxlrp.models.fit trains with optax: pip install 'jaxlrp[demo]'") from e
    return optax


def _windows(n: int, batch_size: int, steps: int, seed: int, shuffle: bool) -> Iterator[np.ndarray]:
    """Consecutive windows of one fixed order of the examples (a random permutation
    drawn from ``seed``, or ``0..n-1``): window ``i`` starts at ``(i b) mod (n - b)``."""
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] for {n} examples, got {batch_size}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    span = n - batch_size
    for i in range(steps):
        start = (i * batch_size) % span if span else 0
        yield order[start:start + batch_size]


def fit(
    apply: Callable[[Params, jax.Array], jax.Array],
    params: Params,
    x: Data,
    y: Data,
    *,
    steps: int,
    learning_rate: float = 2e-3,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    batches: Optional[Iterable[np.ndarray]] = None,
    progress: bool = False,
) -> tuple[Params, float]:
    r"""Train a classifier with Adam on the softmax cross-entropy.

    Each of ``steps`` steps takes one mini-batch ``B`` and minimises

    .. math:: L(\theta) = -\frac{1}{|B|} \sum_{n \in B} \log \operatorname{softmax}(f_\theta(x_n))_{y_n}

    with :func:`optax.adam` at ``learning_rate`` (one jitted step; optax is imported
    here, from the ``demo`` extra). It is the loop of ``jaxlrp demo`` and the
    examples: enough to get a small model of :mod:`jaxlrp.models` to explain.

    Parameters
    ----------
    apply:
        ``apply(params, x_batch) -> logits`` of shape ``(batch, classes)``, e.g. a
        linen module's ``apply``.
    params:
        The initial parameters (e.g. ``model.init(key, x[:1])``).
    x, y:
        The examples (leading axis) and their integer labels.
    steps:
        Optimisation steps.
    learning_rate:
        Adam's step size.
    batch_size, shuffle, seed:
        The default batches: consecutive windows of ``batch_size`` examples of one
        fixed order, a permutation drawn from ``seed`` (``shuffle=True``) or the
        given order; window ``i`` starts at ``(i * batch_size) % (n - batch_size)``.
    batches:
        Instead: an iterable of index arrays, one per step (e.g.
        ``(rng.choice(n, 64, replace=False) for _ in range(steps))``); its first
        ``steps`` batches are used.
    progress:
        Show a progress bar with the loss (on a terminal only).

    Returns
    -------
    params, loss
        The trained parameters and the loss of the last step's batch.

    Examples
    --------
    >>> params, loss = models.fit(model.apply, variables, x, y, steps=3, batch_size=4)
    >>> bool(loss > 0)
    True
    """
    optax = _optax()
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)} labels")
    order = iter(batches) if batches is not None else _windows(n, batch_size, steps, seed, shuffle)
    opt = optax.adam(learning_rate)

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    state = opt.init(params)
    value: Any = None
    # the same progress library as explain_dataset: quiet off a terminal (disable=None)
    with tqdm(total=steps, desc="training", file=sys.stderr, disable=None if progress else True) as bar:
        for i in range(steps):
            idx = next(order, None)
            if idx is None:
                raise ValueError(f"batches gave {i} index arrays for steps={steps}")
            params, state, value = step(params, state, x[idx], y[idx])
            if not bar.disable and (i % 10 == 0 or i + 1 == steps):  # reading the loss waits for the step
                bar.set_postfix(loss=f"{float(value):.3f}", refresh=False)
                bar.update(i + 1 - bar.n)
    return params, float(value)
