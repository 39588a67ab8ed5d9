"""Gates are decided by what a factor computes (its range), not by how it is spelled.

A factor is a gate when the interval analysis of :mod:`jaxlrp._core.patterns` bounds it
within ``[0, 1]`` from the literal constants of the program: ``sigmoid`` in any
spelling, ``hard_sigmoid``, ``1 - sigmoid``, a clip to ``[0, 1]``. ``silu``, GELU and
swish are unbounded, so a SwiGLU product is a plain product (``Uniform``: half to
each factor, as in AttnLRP and LXT).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp._core import patterns as _patterns
from jaxlrp import composites, rules

EXACT = composites.Composite([("linear", rules.Zero()), ("sum", rules.Norm(0.0)), (composites.kind("product", "glu"), rules.Uniform(0.0))])

# the same function in different spellings
SIGMOIDS = {
    "jax.nn.sigmoid": jax.nn.sigmoid,
    "tanh": lambda z: 0.5 * (1.0 + jnp.tanh(z / 2.0)),
    "exp": lambda z: 1.0 / (1.0 + jnp.exp(-z)),
    "exp, times": lambda z: jnp.reciprocal(1.0 + jnp.exp(-z)),
}
HARD_SIGMOIDS = {
    "jax.nn.hard_sigmoid": jax.nn.hard_sigmoid,
    "relu6": lambda z: jax.nn.relu6(z + 3.0) / 6.0,
    "clip": lambda z: jnp.clip(z / 6.0 + 0.5, 0.0, 1.0),
}
SILUS = {
    "jax.nn.silu": jax.nn.silu,
    "a * sigmoid(a)": lambda a: a * jax.nn.sigmoid(a),
    "tanh": lambda a: a * (1.0 + jnp.tanh(a / 2.0)) / 2.0,
    "exp": lambda a: a / (1.0 + jnp.exp(-a)),
}


def _kinds(fn, params, x, composite=EXACT) -> list:
    rep = jaxlrp.inspect(fn, composite, verbose=False)(params, x)
    return [r.kind for r in rep.rows if r.kind not in ("dense", "activation")]


def _se_params(rng):
    return {"a": rng.normal(size=(4, 2)), "b": rng.normal(size=(2, 4)), "w": rng.normal(size=(3 * 3 * 4, 2)),
            "c": rng.normal(size=4)}


def _se(p, x, gate):
    """A squeeze-excitation block: the gate is broadcast over the spatial axes."""
    s = x.mean(axis=(1, 2))
    s = gate(jax.nn.relu(s @ p["a"]) @ p["b"] + p["c"])
    y = x * s[:, None, None, :]
    return y.reshape(y.shape[0], -1) @ p["w"]


@pytest.mark.parametrize("family", [SIGMOIDS, HARD_SIGMOIDS], ids=["sigmoid", "hard_sigmoid"])
def test_squeeze_excitation_gate_spellings_agree_and_signal_takes_all(family):
    rng = np.random.default_rng(0)
    p, x = _se_params(rng), rng.normal(size=(2, 3, 3, 4))
    maps = {}
    for name, gate in family.items():
        fn = lambda p, x, gate=gate: _se(p, x, gate)  # noqa: E731
        assert _kinds(fn, p, x) == ["sum", "gate"], name
        maps[name] = jaxlrp.lrp(fn, EXACT)(p, x, target=1)
    first = next(iter(maps.values()))
    for name, R in maps.items():
        np.testing.assert_allclose(R, first, rtol=1e-10, atol=1e-12, err_msg=name)
    # SignalTakesAll: the gate is a constant; all relevance reaches x directly
    gate = next(iter(family.values()))
    const = jaxlrp.lrp(lambda p, x: _se_with_constant_gate(p, x, gate), EXACT)(p, x, target=1)
    np.testing.assert_allclose(first, const, rtol=1e-10, atol=1e-12)


def _se_with_constant_gate(p, x, gate):
    s = jax.lax.stop_gradient(gate(jax.nn.relu(x.mean(axis=(1, 2)) @ p["a"]) @ p["b"] + p["c"]))
    y = x * s[:, None, None, :]
    return y.reshape(y.shape[0], -1) @ p["w"]


def _swiglu(p, x, act):
    return (act(x @ p["w1"]) * (x @ p["w3"])) @ p["w2"]


def _swiglu_reference(p, x, target):
    """float64 NumPy: LRP-0 on the dense layers, the product split in half."""
    a, u = x @ p["w1"], x @ p["w3"]
    s = a / (1.0 + np.exp(-a))
    h = s * u
    y = h @ p["w2"]
    R_y = np.zeros_like(y)
    R_y[:, target] = y[:, target]
    R_h = h * ((R_y / y) @ p["w2"].T)
    R_a = R_u = R_h / 2  # silu passes R_s to a unchanged
    return x * ((R_a / a) @ p["w1"].T) + x * ((R_u / u) @ p["w3"].T)


def test_swiglu_is_a_glu_product_in_every_silu_spelling():
    rng = np.random.default_rng(1)
    p = {"w1": rng.normal(size=(4, 6)), "w3": rng.normal(size=(4, 6)), "w2": rng.normal(size=(6, 2))}
    x = rng.normal(size=(3, 4))
    ref = _swiglu_reference(p, x, 0)
    for name, act in SILUS.items():
        fn = lambda p, x, act=act: _swiglu(p, x, act)  # noqa: E731
        assert _kinds(fn, p, x) == ["glu"], name  # an activated factor times a linear one, no gate
        for comp in (EXACT, composites.AttnLRP(epsilon=0.0, rules=[(composites.kind("product", "glu"), rules.Uniform(0.0))])):
            R = jaxlrp.lrp(fn, comp)(p, x, target=0)
            np.testing.assert_allclose(R, ref, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "factor, kind",
    [
        (jax.nn.sigmoid, "gate"),
        (lambda z: 1.0 - jax.nn.sigmoid(z), "gate"),
        (lambda z: jnp.clip(z, 0.0, 1.0), "gate"),
        (lambda z: jnp.minimum(jax.nn.relu(z), 1.0), "gate"),
        (lambda z: 1.0 / (1.0 + z * z), "gate"),  # (0, 1]
        (lambda z: 0.5 * jax.nn.sigmoid(z) + 0.25, "gate"),
        (lambda z: 2.0 * jax.nn.sigmoid(z), "glu"),  # (0, 2)
        (jnp.tanh, "glu"),
        (jax.nn.relu, "glu"),
        (jax.nn.silu, "glu"),
        (jax.nn.gelu, "glu"),
        (jax.nn.softplus, "glu"),
    ],
)
def test_a_gate_is_a_factor_bounded_in_zero_one(factor, kind):
    """A bounded factor is a gate; an unbounded activated one makes a GLU product."""
    rng = np.random.default_rng(2)
    p = {"u": rng.normal(size=(3, 4)), "v": rng.normal(size=(3, 4)), "w": rng.normal(size=(4, 2))}
    x = rng.normal(size=(2, 3))
    fn = lambda p, x: ((x @ p["u"]) * factor(x @ p["v"])) @ p["w"]  # noqa: E731
    assert _kinds(fn, p, x) == [kind]


def test_a_parameter_scale_makes_a_factor_unbounded():
    """Only literals bound a range: ``sigmoid(z) * gamma`` is not a gate, whatever
    gamma's values (the same model with gamma closed over or passed as an argument
    is treated the same)."""
    rng = np.random.default_rng(3)
    p = {"u": rng.normal(size=(3, 4)), "v": rng.normal(size=(3, 4)), "w": rng.normal(size=(4, 2)),
         "g": rng.uniform(0.1, 0.5, size=4)}
    x = rng.normal(size=(2, 3))
    g = p["g"]
    as_argument = lambda p, x: ((x @ p["u"]) * (jax.nn.sigmoid(x @ p["v"]) * p["g"])) @ p["w"]  # noqa: E731
    closed_over = lambda p, x: ((x @ p["u"]) * (jax.nn.sigmoid(x @ p["v"]) * g)) @ p["w"]  # noqa: E731
    # the inner product is a gated constant (the gate gets nothing, as in a scan),
    # its output unbounded, so the outer one is a plain product
    assert _kinds(as_argument, p, x) == _kinds(closed_over, p, x) == ["gate", "product"]
    _close = functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-12)
    _close(jaxlrp.lrp(as_argument, EXACT)(p, x, target=1), jaxlrp.lrp(closed_over, EXACT)(p, x, target=1))


def test_value_range_arithmetic():
    """The interval analysis on whole programs, equation by equation."""

    def bound(f, *shapes):
        jaxpr = jax.make_jaxpr(f)(*[jnp.ones(s) for s in shapes])
        ranges = {v: _patterns.UNBOUNDED for v in jaxpr.jaxpr.invars}
        for e in jaxpr.jaxpr.eqns:
            from jaxlrp._core.program import Lit

            ops = [ranges.get(a, _patterns.UNBOUNDED) if not hasattr(a, "val")
                   else _patterns.literal_range(Lit(a.val, a.aval)) for a in e.invars]
            r = _patterns.value_range(_Eqn(e), ops)
            for v in e.outvars:
                ranges[v] = r
        return ranges[jaxpr.jaxpr.outvars[0]]

    assert bound(jax.nn.sigmoid, (3,)) == (0.0, 1.0)
    assert bound(lambda z: 1.0 / (1.0 + jnp.exp(-z)), (3,)) == (0.0, 1.0)
    assert bound(lambda z: jax.lax.integer_pow(z, 2), (3,)) == (0.0, math.inf)
    assert bound(lambda z: jnp.tanh(z) * 3.0 - 1.0, (3,)) == (-4.0, 2.0)
    assert bound(lambda z: jnp.abs(jnp.sin(z)), (3,)) == (0.0, 1.0)
    assert bound(lambda z: jnp.log(z), (3,)) == _patterns.UNBOUNDED
    assert bound(lambda z: jnp.log(1.0 + jnp.exp(z)), (3,)) == (0.0, math.inf)
    assert bound(lambda z: z * jax.nn.sigmoid(z), (3,)) == _patterns.UNBOUNDED


class _Eqn:
    """A jaxpr equation seen as a :class:`jaxlrp._core.program.Eqn` (primitive and params)."""

    def __init__(self, e):
        self.prim, self.params, self.invars, self.outvars = e.primitive, e.params, e.invars, e.outvars
