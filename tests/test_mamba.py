"""MambaLRP (Jafari et al. 2024) on a selective state-space block, in float64.

The reference is MambaLRP's own definition: gradient x input of the block made
explainable the way its code does it (``detach`` calls), i.e. with
``jax.lax.stop_gradient`` on RMSNorm's ``rsqrt``, on the scan's input-dependent
``exp(Delta A)``, ``Delta B`` and ``C``, SiLU as ``x * stop_gradient(silu(x) / x)``
(the identity rule) and the multiplicative gate halved,
``p / 2 + stop_gradient(p / 2)``. jaxlrp explains the plain block (stop-gradients on
``exp(Delta A)``, ``Delta B``, ``C`` only, which the MambaLRP composite documents)
with ``composites.MambaLRP``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

N, L, DM, DI, S, K = 2, 8, 4, 6, 3, 3  # batch, length, model width, inner width, state, conv width


@functools.partial(jax.jit, static_argnames="biases")  # one program, not one per operation
def _params(key, biases: bool = True):
    ks = iter(jax.random.split(key, 16))
    p = {
        "norm": 1.0 + 0.1 * jax.random.normal(next(ks), (DM,)),
        "in_w": jax.random.normal(next(ks), (DM, 2 * DI)) / 2, "in_b": 0.1 * jax.random.normal(next(ks), (2 * DI,)),
        "conv_w": jax.random.normal(next(ks), (K, 1, DI)) / 2, "conv_b": 0.1 * jax.random.normal(next(ks), (DI,)),
        "x_w": jax.random.normal(next(ks), (DI, 2 + 2 * S)) / 2,
        "dt_w": jax.random.normal(next(ks), (2, DI)) / 2, "dt_b": 0.1 * jax.random.normal(next(ks), (DI,)),
        "A_log": jax.random.normal(next(ks), (DI, S)) / 2, "D": jax.random.normal(next(ks), (DI,)),
        "out_w": jax.random.normal(next(ks), (DI, DM)) / 2, "out_b": 0.1 * jax.random.normal(next(ks), (DM,)),
        "head_w": jax.random.normal(next(ks), (DM, 3)), "head_b": 0.1 * jax.random.normal(next(ks), (3,)),
    }
    if not biases:
        p = {k: (jnp.zeros_like(v) if k.endswith("_b") else v) for k, v in p.items()}
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p)


def _silu_identity(x):
    return x * jax.lax.stop_gradient(jax.nn.silu(x) / x)


def block(p, x, mamba_lrp_graph: bool = False):
    """A Mamba block (pre-RMSNorm, residual) and a head on the last position.
    ``mamba_lrp_graph``: MambaLRP's modified graph (the reference)."""
    sg = jax.lax.stop_gradient
    silu = _silu_identity if mamba_lrp_graph else jax.nn.silu
    r = jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5)
    h = x * (sg(r) if mamba_lrp_graph else r) * p["norm"]
    u, z = jnp.split(h @ p["in_w"] + p["in_b"], 2, axis=-1)
    u = jax.lax.conv_general_dilated(u, p["conv_w"], (1,), ((K - 1, 0),), dimension_numbers=("NWC", "WIO", "NWC"),
                                     feature_group_count=DI) + p["conv_b"]
    u = silu(u)
    dt, B, C = jnp.split(u @ p["x_w"], [2, 2 + S], axis=-1)
    dt = jax.nn.softplus(dt @ p["dt_w"] + p["dt_b"])
    dA = sg(jnp.exp(dt[..., None] * -jnp.exp(p["A_log"])))
    dB, C = sg(dt[..., None] * B[..., None, :]), sg(C)
    _, states = jax.lax.associative_scan(lambda f, s: (s[0] * f[0], s[0] * f[1] + s[1]), (dA, dB * u[..., None]),
                                         axis=1)
    y = jnp.sum(states * C[..., None, :], -1) + u * p["D"]
    y = y * silu(z)
    if mamba_lrp_graph:
        y = y / 2 + sg(y / 2)
    out = x + (y @ p["out_w"] + p["out_b"])  # the bias in the layer, as nn.Dense has it
    return out[:, -1] @ p["head_w"] + p["head_b"]


EXACT = composites.MambaLRP(epsilon=0.0, rules=[
    ("sum", rules.Norm(0.0)), (composites.kind("product", "glu", "gate"), rules.Uniform(0.0)),
    ("normalize", rules.SignalTakesAll(0.0)),
])


@pytest.mark.parametrize("biases", [True, False])
def test_mamba_lrp_is_gradient_x_input_of_its_modified_graph(biases):
    p = _params(jax.random.key(1), biases)
    x = jax.random.normal(jax.random.key(2), (N, L, DM), jnp.float64)
    onehot = jax.nn.one_hot(jnp.array([0, 2]), 3, dtype=jnp.float64)
    R = jaxlrp.lrp(block, EXACT)(p, x, target=jnp.array([0, 2]))  # seeded with f_c(x)
    g = jax.jit(lambda p, x: jax.vjp(lambda x: block(p, x, mamba_lrp_graph=True), x)[1](onehot)[0])(p, x)  # df_c/dx
    np.testing.assert_allclose(R, x * g, rtol=1e-9, atol=1e-12)


def test_mamba_lrp_conserves_without_biases():
    p = _params(jax.random.key(3), biases=False)
    x = jax.random.normal(jax.random.key(4), (N, L, DM), jnp.float64)
    R = jaxlrp.lrp(block, EXACT)(p, x, target=1)
    out = jax.jit(block)(p, x)[:, 1]
    np.testing.assert_allclose(R.sum((1, 2)), out, rtol=1e-12)
    # the default stabilisers (1e-6) move it by about their size only
    R6 = jaxlrp.lrp(block, "mamba_lrp")(p, x, target=1)
    assert np.max(np.abs(R6.sum((1, 2)) - out) / np.abs(out)) < 1e-4
