"""LRP composes with jit, vmap and sharding, and gives the same relevance."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites

import nets
from test_networks import CNN, RESNET

COMPOSITES = {
    "epsilon": None,
    "plus_flat": composites.EpsilonPlusFlat(),
    "gamma_box": composites.EpsilonGammaBox(-3.0, 3.0),
    "alpha2beta1": composites.EpsilonAlpha2Beta1(),
}


def _cnn(spec=CNN, batch=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    layers = nets.random_layers(rng, spec, (8, 8, 3))
    fn, params = nets.build(layers)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    x = jnp.asarray(rng.normal(size=(batch, 8, 8, 3)), dtype)
    return fn, params, x


@pytest.mark.parametrize("comp", list(COMPOSITES))
def test_jit_equals_eager(comp):
    fn, params, x = _cnn()
    explain = jaxlrp.lrp(fn, COMPOSITES[comp])
    eager = explain(params, x, target=1)
    jitted = jax.jit(explain)(params, x, target=1)
    np.testing.assert_allclose(jitted, eager, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("comp", list(COMPOSITES))
def test_vmap_equals_loop_and_batch(comp):
    fn, params, x = _cnn(RESNET)
    explain = jaxlrp.lrp(fn, COMPOSITES[comp])
    target = jnp.array([0, 3, 1, 2])
    batched = explain(params, x, target=target)
    single = lambda p, xi, t: explain(p, xi[None], target=t[None])[0]
    vmapped = jax.jit(jax.vmap(single, in_axes=(None, 0, 0)))(params, x, target)
    loop = jnp.stack([explain(params, x[i:i + 1], target=int(target[i]))[0] for i in range(4)])
    np.testing.assert_allclose(batched, loop, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(vmapped, loop, rtol=1e-10, atol=1e-14)


def test_vmap_over_unbatched_function():
    """A function of one example (1-D output) under vmap: the case the docs promise."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.normal(size=(5, 8)), rng.normal(size=(8, 3))
    fn = lambda p, x: jax.nn.relu(x @ p[0]) @ p[1]
    x = rng.normal(size=(6, 5))
    explain = jaxlrp.lrp(fn)
    vm = jax.vmap(explain, in_axes=(None, 0))((w1, w2), x)
    loop = np.stack([explain((w1, w2), x[i]) for i in range(6)])
    np.testing.assert_allclose(vm, loop, rtol=1e-12)
    # the default target is each example's own argmax: LRP-0-like epsilon on a
    # zero-bias ReLU net conserves, so relevance sums to that example's top logit
    logits = np.maximum(x @ w1, 0) @ w2
    np.testing.assert_allclose(vm.sum(1), logits.max(1), rtol=1e-5)


def test_float32_stays_float32():
    fn, params, x = _cnn(dtype=np.float32)
    rel = jax.jit(jaxlrp.lrp(fn, composites.EpsilonGammaBox(-3.0, 3.0)))(params, x)
    assert rel.dtype == jnp.float32 and rel.shape == x.shape
    assert np.all(np.isfinite(rel))


SHARDED = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import jaxlrp
    from jaxlrp import composites
    import nets
    from test_networks import RESNET
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    layers = nets.random_layers(rng, RESNET, (6, 6, 3))
    fn, params = nets.build(layers)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = jnp.asarray(rng.normal(size=(16, 6, 6, 3)), jnp.float32)
    explain = jax.jit(jaxlrp.lrp(fn, composites.EpsilonGammaBox(-3.0, 3.0)))
    single = explain(params, x, target=1)
    mesh = jax.make_mesh((8,), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    sharded = explain(params, xs, target=1)
    assert len(sharded.sharding.device_set) == 8, sharded.sharding
    err = float(jnp.max(jnp.abs(sharded - single)) / jnp.max(jnp.abs(single)))
    print("max relative difference", err)
    assert err < 1e-5, err
    """
)


def test_sharded_over_8_devices_equals_single_device():
    code = SHARDED.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max relative difference" in proc.stdout


SHARD_MAP = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import jaxlrp
    from jaxlrp import composites, rules
    mesh = jax.make_mesh((4,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(0)
    w1, w2 = jnp.asarray(rng.normal(size=(8, 12)), jnp.float32), jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)

    def row_parallel(p, x):  # the second layer's contraction split over 4 devices, then psum
        h = jax.nn.relu(x @ p[0])
        part = lambda w, h: jax.lax.psum(h @ w, "d")
        return jax.shard_map(part, mesh=mesh, in_specs=(P("d", None), P(None, "d")), out_specs=P())(p[1], h)

    def plain(p, x):
        return jax.nn.relu(x @ p[0]) @ p[1]

    np.testing.assert_allclose(row_parallel((w1, w2), x), plain((w1, w2), x), rtol=1e-5)
    comp = composites.Composite([("linear", rules.ZPlus()), ("sum", rules.Norm(0.0))])
    a = jax.jit(jaxlrp.lrp(row_parallel, comp))((w1, w2), x, target=1)
    b = jaxlrp.lrp(plain, comp)((w1, w2), x, target=1)
    err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    print("max relative difference", err)
    assert err < 1e-5, err
    """
)


def test_shard_map_with_psum_inside_the_model():
    """Tensor parallelism inside the model: a dense layer whose contraction is split
    over devices and summed by psum is one layer, with the rule's denominators global."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARD_MAP], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max relative difference" in proc.stdout
