"""Dense outputs (segmentation maps, regression fields): ``target=`` as a mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import attribution, composites, rules


def _seg(p, x):
    """A fully convolutional net: (N, 8, 8, 2) images to (N, 8, 8, 3) per-pixel logits."""
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, p[0], (1, 1), "SAME", dimension_numbers=dn) + p[1])
    return jax.lax.conv_general_dilated(h, p[2], (1, 1), "SAME", dimension_numbers=dn) + p[3]


@pytest.fixture(scope="module")
def seg():
    k = jax.random.split(jax.random.key(3), 5)
    p = [jax.random.normal(k[0], (3, 3, 2, 4)), 0.1 * jax.random.normal(k[1], (4,)),
         jax.random.normal(k[2], (3, 3, 4, 3)), 0.1 * jax.random.normal(k[3], (3,))]
    return p, jax.random.normal(k[4], (2, 8, 8, 2))


def test_mask_target_is_the_masked_output(seg):
    p, x = seg
    out = _seg(p, x)
    mask = np.zeros(out.shape, bool)
    mask[:, 2:5, 3:6, 1] = True  # a box of pixels, class 1
    explain = jaxlrp.lrp(_seg, composites.EpsilonPlus())
    R = explain(p, x, target=mask)
    np.testing.assert_allclose(R, explain(p, x, output_relevance=out * mask), rtol=1e-6, atol=1e-7)
    weights = mask * 0.5
    np.testing.assert_allclose(jax.jit(explain)(p, x, target=jnp.asarray(weights)), 0.5 * R, rtol=1e-5, atol=1e-7)
    # broadcast: one (H, W, 1) region over the batch and every channel
    region = mask[0, :, :, 1:2]
    np.testing.assert_allclose(explain(p, x, target=region),
                               explain(p, x, output_relevance=out * region), rtol=1e-6, atol=1e-7)


def test_mask_target_conserves_the_masked_sum(seg):
    p, x = seg
    out = _seg(p, x)
    mask = np.zeros(out.shape, bool)
    mask[:, 1:4, 1:7, 2] = True
    R = jaxlrp.lrp(_seg, rule=rules.Zero())([p[0], 0 * p[1], p[2], 0 * p[3]], x, target=mask)
    out0 = _seg([p[0], 0 * p[1], p[2], 0 * p[3]], x)
    np.testing.assert_allclose(R.sum((1, 2, 3)), (out0 * mask).sum((1, 2, 3)), rtol=1e-4)


def test_mask_target_for_gradient_methods(seg):
    p, x = seg
    mask = np.zeros((2, 8, 8, 3), np.float32)
    mask[:, 4:, :, 0] = 1.0
    g = attribution.gradient(_seg)(p, x, target=mask)
    expected = jax.vjp(lambda x: _seg(p, x), x)[1](jnp.asarray(mask, x.dtype))[0]
    np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("target,match", [
    (np.ones((8, 8, 2), bool), "broadcast to the function's output shape"),
    (np.ones((2, 8, 8, 3, 1), np.float32), "broadcast to the function's output shape"),
])
def test_bad_masks_raise(seg, target, match):
    p, x = seg
    with pytest.raises(ValueError, match=match):
        jaxlrp.lrp(_seg)(p, x, target=target)
