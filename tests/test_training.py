"""jaxlrp.models.fit: the training loop of the demo and the examples."""

import jax
import numpy as np
import pytest

optax = pytest.importorskip("optax")
pytest.importorskip("flax")

from jaxlrp import models  # noqa: E402


def _mlp(p, x):
    return jax.nn.relu(x @ p["w1"]) @ p["w2"]


def _problem(n=40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    p = {"w1": rng.normal(size=(5, 8)).astype(np.float32), "w2": rng.normal(size=(8, 2)).astype(np.float32)}
    return p, x, y


def _by_hand(p, x, y, batches, lr):
    opt = optax.adam(lr)
    state = opt.init(p)
    for idx in batches:
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(_mlp(q, x[idx]), y[idx]).mean()  # noqa: E731
        value, g = jax.value_and_grad(loss)(p)
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
    return p, float(value)


def test_default_batches_are_windows_of_one_shuffled_order():
    p, x, y = _problem()
    got, loss = models.fit(_mlp, p, x, y, steps=7, learning_rate=1e-2, batch_size=16, seed=3)
    order = np.random.default_rng(3).permutation(len(x))
    windows = [order[(i * 16) % (40 - 16):][:16] for i in range(7)]
    want, want_loss = _by_hand(p, x, y, windows, 1e-2)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)
    assert loss == pytest.approx(want_loss, rel=1e-6)


def test_given_batches_and_unshuffled_order():
    p, x, y = _problem()
    batches = [np.arange(0, 8), np.arange(8, 16), np.arange(3, 11)]
    got, _ = models.fit(_mlp, p, x, y, steps=3, batches=iter(batches))
    want, _ = _by_hand(p, x, y, batches, 2e-3)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)
    plain, _ = models.fit(_mlp, p, x, y, steps=2, batch_size=40, shuffle=False)  # one window: all examples
    want, _ = _by_hand(p, x, y, [np.arange(40)] * 2, 2e-3)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), plain, want)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be positive"),
    ({"steps": 2, "batch_size": 41}, "batch_size must be in"),
    ({"steps": 3, "batches": [np.arange(4)]}, "batches gave 1 index arrays for steps=3"),
])
def test_errors(kwargs, message):
    p, x, y = _problem()
    with pytest.raises(ValueError, match=message):
        models.fit(_mlp, p, x, y, **kwargs)
    with pytest.raises(ValueError, match="40 examples but y has 39"):
        models.fit(_mlp, p, x, y[:-1], steps=1)
