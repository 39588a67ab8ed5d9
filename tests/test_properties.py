"""Property-based tests: random small dense/conv stacks."""

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxlrp
from jaxlrp import composites, rules

import nets

ALL_RULES = [
    rules.Epsilon(), rules.Epsilon(0.5), rules.Zero(), rules.ZPlus(), rules.AlphaBeta(2.0, 1.0),
    rules.Gamma(0.25), rules.Gamma(2.0), rules.Flat(), rules.WSquare(), rules.ZBox(-3.0, 3.0),
]


@st.composite
def stacks(draw, conv: bool):
    """A random spec of 1-3 hidden layers and a dense head, with its input shape."""
    act = draw(st.sampled_from(["relu", "tanh"]))
    spec = []
    if conv:
        shape = (draw(st.integers(4, 7)), draw(st.integers(4, 7)), draw(st.sampled_from([2, 4])))
        for _ in range(draw(st.integers(1, 2))):
            k, s = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2]))
            g = draw(st.sampled_from([1, 2]))
            spec += [("conv", k, 2 * draw(st.integers(1, 3)), s, k // 2, g), (act,)]
        spec.append(("flatten",))
    else:
        shape = (draw(st.integers(2, 8)),)
        for _ in range(draw(st.integers(1, 3))):
            spec += [("dense", draw(st.integers(2, 8))), (act,)]
    spec.append(("dense", draw(st.integers(1, 4))))
    return spec, shape


SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stack=st.one_of(stacks(conv=False), stacks(conv=True)), seed=st.integers(0, 2**16),
       first=st.sampled_from(ALL_RULES), rest=st.sampled_from(ALL_RULES[:7]), bias=st.booleans())
def test_relevance_is_finite(stack, seed, first, rest, bias):
    spec, shape = stack
    rng = np.random.default_rng(seed)
    fn, params = nets.build(nets.random_layers(rng, spec, shape, bias=bias))
    x = jnp.asarray(rng.uniform(-2, 2, size=(2,) + shape))
    comp = composites.Composite([("first", first), ("linear", rest)])
    rel = jaxlrp.lrp(fn, comp)(params, x)
    assert rel.shape == x.shape
    assert np.all(np.isfinite(rel))


@SETTINGS
@given(stack=st.one_of(stacks(conv=False), stacks(conv=True)), seed=st.integers(0, 2**16),
       first=st.sampled_from([rules.Zero(), rules.Flat(0.0), rules.WSquare(0.0), rules.ZBox(-3.0, 3.0, 0.0)]))
def test_conservation_without_bias(stack, seed, first):
    """Zero-bias tanh stacks (no exact zeros), LRP-0 after a conservative first layer:
    the relevance of each example sums to the explained logit."""
    spec, shape = stack
    spec = [("tanh",) if item == ("relu",) else item for item in spec]
    rng = np.random.default_rng(seed)
    fn, params = nets.build(nets.random_layers(rng, spec, shape, bias=False))
    x = jnp.asarray(rng.uniform(-2, 2, size=(2,) + shape))
    comp = composites.Composite([("first", first), ("linear", rules.Zero())])
    rel = jaxlrp.lrp(fn, comp)(params, x, target=0)
    logit = np.asarray(fn(params, x))[:, 0]
    np.testing.assert_allclose(np.asarray(rel).reshape(2, -1).sum(1), logit, rtol=1e-6, atol=1e-9)
