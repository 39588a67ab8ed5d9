"""Tests for jaxlrp.attribution: each baseline against its closed form on small
functions, composition with lrp, jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import attribution as A

RNG = np.random.default_rng(0)
WL = RNG.normal(size=(5, 3))
Q = RNG.normal(size=(5, 5))


def linear(x):
    return x @ jnp.asarray(WL)


def quadratic(x):
    """Two outputs: x^T Q x and the sum of x."""
    return jnp.stack([jnp.einsum("ni,ij,nj->n", x, jnp.asarray(Q), x), x.sum(-1)], -1)


def close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


X = RNG.normal(size=(4, 5))


def test_gradient_and_gradient_x_input_closed_forms():
    close(A.gradient(linear)(X, target=1), np.broadcast_to(WL[:, 1], X.shape))
    close(A.gradient_x_input(linear)(X, target=2), X * WL[:, 2])
    # target None: argmax per example; output_relevance: weights
    t = np.argmax(X @ WL, 1)
    close(A.gradient(linear)(X), WL[:, t].T)
    w = RNG.normal(size=(4, 3))
    close(A.gradient(linear)(X, output_relevance=w), w @ WL.T)
    close(A.gradient(quadratic)(X, target=0), X @ (Q + Q.T))


@pytest.mark.parametrize("method", ["midpoint", "trapezoid"])
def test_integrated_gradients_exact_on_a_quadratic_and_complete(method):
    b = RNG.normal(size=5)
    ig = A.integrated_gradients(quadratic, baseline=b, steps=4, method=method)(X, target=0)
    d = X - b
    # grad along the path is linear in alpha: IG = d * (Q+Q^T)(b + d/2)
    close(ig, d * ((b + d / 2) @ (Q + Q.T)))
    close(ig.sum(-1), np.einsum("ni,ij,nj->n", X, Q, X) - b @ Q @ b)


def test_integrated_gradients_riemann_converges_and_chunks():
    cubic = lambda x: (x**3).sum(-1, keepdims=True)
    exact = X**3  # baseline 0: x * int 3 (a x)^2 da = x^3
    coarse = A.integrated_gradients(cubic, steps=4, method="right")(X)
    fine = A.integrated_gradients(cubic, steps=400, method="midpoint")(X)
    assert np.abs(coarse - exact).max() > 1e-2
    close(fine, exact, 1e-4)
    chunked = A.integrated_gradients(cubic, steps=400, method="midpoint", batch_size=64)(X)
    close(chunked, fine)


def test_occlusion_closed_forms():
    # window 1 on a linear map: the drop is x_i w_i
    close(A.occlusion(linear, window=1)(X, target=0), X * WL[:, 0])
    # overlapping 2x2 windows of a squared sum: a position's value is the mean drop
    img = RNG.normal(size=(2, 4, 4, 1))
    f = lambda x: (x**2).sum((1, 2, 3))[:, None]
    got = jax.jit(A.occlusion(f, window=(2, 2, 1), stride=1, baseline=0.5))(img)
    ref = np.zeros_like(img)
    cnt = np.zeros((4, 4, 1))
    for i in range(3):
        for j in range(3):
            xo = img.copy()
            xo[:, i:i + 2, j:j + 2] = 0.5
            d = (img**2).sum((1, 2, 3)) - (xo**2).sum((1, 2, 3))
            ref[:, i:i + 2, j:j + 2] += d[:, None, None, None]
            cnt[i:i + 2, j:j + 2] += 1
    close(got, ref / cnt)
    close(jax.jit(A.occlusion(f, window=(2, 2, 1), stride=1, baseline=0.5, batch_size=4))(img), ref / cnt)
    with pytest.raises(ValueError, match="window"):
        A.occlusion(f, window=(5, 5, 1))(img)


def test_smooth_over_gradient_and_over_lrp():
    noise = RNG.normal(size=(6,) + X.shape) * 0.3
    got = A.smooth(A.gradient(quadratic))(X, noise=noise, target=0)
    close(got, np.mean([(X + e) @ (Q + Q.T) for e in noise], axis=0))
    # a linear map: SmoothGrad of the gradient is the gradient
    close(A.smooth(A.gradient(linear), n_samples=3)(X, key=jax.random.key(0, impl="rbg"), target=1),
          np.broadcast_to(WL[:, 1], X.shape))
    # over an LRP explainer, with the parameters as the first argument
    params = {"w": jnp.asarray(WL)}
    f = lambda p, x: jax.nn.relu(x) @ p["w"]
    lrp = jaxlrp.lrp(f, rule=jaxlrp.rules.Epsilon(1e-9))
    got = jax.jit(lambda p, x, e: A.smooth(lrp, batch_size=2)(p, x, noise=e, target=0))(params, X, noise)
    ref = np.mean([lrp(params, X + e, target=0) for e in noise], axis=0)
    close(got, ref, 1e-8)
    with pytest.raises(ValueError, match="exactly one"):
        A.smooth(A.gradient(linear))(X)


def test_jit_vmap_and_pytrees():
    g = jax.jit(lambda x: A.integrated_gradients(quadratic, steps=3)(x, target=0))(X)
    close(g, A.integrated_gradients(quadratic, steps=3)(X, target=0))
    one = jax.vmap(lambda x: A.gradient_x_input(lambda v: v @ jnp.asarray(WL))(x, target=1))(X)
    close(one, X * WL[:, 1])
    two = lambda a, b: a @ jnp.asarray(WL) + b @ jnp.asarray(WL)
    ga, gb = A.gradient_x_input(two, argnums=(0, 1))(X, 2 * X, target=0)
    close(ga, X * WL[:, 0])
    close(gb, 2 * X * WL[:, 0])
    with pytest.raises(TypeError, match="floating-point"):
        A.gradient(linear)(np.ones((2, 5), np.int32))
