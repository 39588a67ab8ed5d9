"""The eager call of an explainer runs as one compiled program, cached per explainer
(:class:`jaxlrp._core.eager.CompiledCall`): it must equal the uncompiled evaluation, reuse
the program for new values, and never reuse it where the program differs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

TOL = dict(rtol=1e-5, atol=1e-6)


def _params(key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {"w1": jax.random.normal(k1, (6, 8)), "b1": jax.random.normal(k2, (8,)) * 0.1,
            "w2": jax.random.normal(k3, (8, 4))}


def _mlp(p, x, scale=1.0):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] * scale


def _uncompiled(explain, *args, **kw):
    with jax.disable_jit():
        return explain(*args, **kw)


@pytest.fixture
def data():
    return _params(), jax.random.normal(jax.random.key(7), (3, 6))


def test_eager_equals_jit_and_uncompiled(data):
    p, x = data
    explain = jaxlrp.lrp(_mlp, composites.EpsilonAlpha2Beta1(), argnums=1)
    for target in (None, 2, jnp.array([0, 3, 1])):
        r = explain(p, x, target=target)
        np.testing.assert_allclose(r, jax.jit(explain)(p, x, target=target), **TOL)
        np.testing.assert_allclose(r, _uncompiled(explain, p, x, target=target), **TOL)


def test_new_values_reuse_the_program_new_structure_does_not(data):
    p, x = data
    traces = []

    def fn(p, x):
        traces.append(x.shape)
        return _mlp(p, x)

    explain = jaxlrp.lrp(fn)
    explain(p, x, target=1)
    explain(_params(3), x + 1.0, target=2)  # new parameters, input and class: no new trace
    assert len(traces) == 1
    r4 = explain(p, jnp.ones((4, 6)), target=1)  # a new shape is traced again
    assert traces[-1] == (4, 6) and r4.shape == (4, 6)
    np.testing.assert_allclose(r4, _uncompiled(explain, p, jnp.ones((4, 6)), target=1), **TOL)
    n = len(traces)
    explain(p, x, output_relevance=jnp.ones((3, 4)))  # a seed instead of a target: another program
    assert len(traces) == n + 1


def test_targets_composites_and_static_leaves_do_not_leak(data):
    p, x = data
    explain = jaxlrp.lrp(_mlp, argnums=1)
    r1, r2 = explain(p, x, target=1), explain(p, x, target=2)
    np.testing.assert_allclose(r2, _uncompiled(explain, p, x, target=2), **TOL)
    assert not np.allclose(r1, r2)
    np.testing.assert_allclose(explain(p, x), _uncompiled(explain, p, x), **TOL)  # argmax, not the last target
    # a non-array leaf is static: a new value is a new program
    a = explain(p, x, 1.0, target=1)
    b = explain(p, x, 2.0, target=1)
    np.testing.assert_allclose(b, 2.0 * a, rtol=1e-4, atol=1e-6)
    # two explainers of one function with different composites keep their own programs
    plus = jaxlrp.lrp(_mlp, rule=rules.ZPlus(), argnums=1)
    np.testing.assert_allclose(plus(p, x, target=1), _uncompiled(plus, p, x, target=1), **TOL)
    np.testing.assert_allclose(explain(p, x, target=1), r1, **TOL)


def test_errors_and_per_layer_under_the_compiled_call(data):
    p, x = data
    explain = jaxlrp.lrp(_mlp, argnums=1)
    explain(p, x, target=3)
    with pytest.raises(ValueError, match="out of range"):
        explain(p, x, target=4)  # same program, concrete target still checked
    with pytest.raises(ValueError, match="out of range"):
        explain(p, x, target=[0, 1, 9])
    r, per_layer = explain(p, x, target=1, layers=["*"])  # a list of matchers: hashed as a tuple
    r0, per_layer0 = _uncompiled(explain, p, x, target=1, layers=["*"])
    assert per_layer.keys() == per_layer0.keys()
    for k in per_layer:
        np.testing.assert_allclose(per_layer[k], per_layer0[k], **TOL)


def test_transformations_of_the_explainer_still_compose(data):
    p, x = data
    explain = jaxlrp.lrp(_mlp, argnums=1)
    per_example = jax.vmap(lambda xi: explain(p, xi[None], target=1)[0])(x)
    np.testing.assert_allclose(per_example, explain(p, x, target=1), **TOL)
    g = jax.grad(lambda w: jnp.sum(explain({**p, "w2": w}, x, target=1)))(p["w2"])
    assert g.shape == p["w2"].shape and np.all(np.isfinite(g))


def test_per_layer_keys_keep_program_order():
    """jax.jit returns dicts with sorted keys; the compiled eager call must not: with
    eleven layers, "layer#10" would come before "layer#2"."""
    ws = [jnp.eye(3) + 0.1 * k for k in range(11)]

    def f(ws, x):
        for w in ws:
            x = jax.nn.relu(x @ w)
        return x

    explain = jaxlrp.lrp(f)
    x = jnp.ones((2, 3))
    _, per = explain(ws, x, target=0, layers="dense")
    _, ref = _uncompiled(explain, ws, x, target=0, layers="dense")
    assert list(per) == list(ref) and len(per) == 11
    for k in ref:
        np.testing.assert_allclose(per[k], ref[k], rtol=1e-5, atol=1e-7)


def test_other_entry_points_compile_their_eager_call_and_keep_dict_order():
    """``concepts``' functions, ``inspect`` and ``explain_generation`` run an eager call
    as one compiled program too (:class:`jaxlrp._core.eager.CompiledFunction`): the
    same result as uncompiled, dicts in program order (eleven layers keyed "0" to
    "10": "10" last, not after "1"), and new values of the same shapes reuse the program."""
    from jaxlrp import concepts

    traces = []
    ws = [jnp.eye(3) + 0.1 * k for k in range(11)]

    def f(ws, x):
        traces.append(x.shape)
        for w in ws:
            x = jax.nn.relu(x @ w)
        return x

    scores = concepts.channel_relevance(f, composites.EpsilonPlus())
    x = jnp.ones((2, 3))
    got = scores(ws, x, target=0)
    assert len(traces) == 1
    ref = _uncompiled(scores, ws, x, target=0)
    assert list(got) == list(ref) and len(got) == 11
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], **TOL)
    scores(ws, x + 1.0, target=0)  # new values: no new trace
    assert len(traces) == 2  # the uncompiled call traced once more, the compiled one did not
    crp = concepts.conditional(f, composites.EpsilonPlus())
    np.testing.assert_allclose(crp(ws, x, conditions={"4": jnp.array([1.0, 0.0, 1.0])}, target=1),
                               _uncompiled(crp, ws, x, conditions={"4": jnp.array([1.0, 0.0, 1.0])}, target=1),
                               **TOL)


def test_a_call_under_vmap_alone_is_one_compiled_program(data):
    """Under ``jax.vmap`` (no ``jax.jit``) the explainer's call is compiled once and
    batched, not dispatched operation by operation (49 XLA compilations before)."""
    import logging

    p, x = data
    explain = jaxlrp.lrp(_mlp, composites.EpsilonAlpha2Beta1(), argnums=1)
    compiled = []

    class Count(logging.Handler):
        def emit(self, record):
            if "Finished XLA compilation" in record.getMessage():
                compiled.append(record.getMessage())

    handler = Count()
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            per_example = jax.vmap(lambda xi: explain(p, xi, target=1))(x)
    finally:
        logging.getLogger("jax").removeHandler(handler)
    assert len(compiled) <= 3, compiled
    np.testing.assert_allclose(per_example, _uncompiled(explain, p, x, target=1), **TOL)
