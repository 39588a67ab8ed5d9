"""Issue 28 ("a new user's first day"): no silent degenerate results, one nnx API,
a CLI that validates first, an ``inspect`` that prints once and reports only real
fallbacks. Each test is the failing case of the issue."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp import composites, rules

RNG = np.random.default_rng(28)


def _mlp_params():
    return {"w1": jnp.asarray(RNG.normal(size=(5, 4))), "b1": jnp.asarray(RNG.normal(size=4)),
            "w2": jnp.asarray(RNG.normal(size=(4, 3))), "b2": jnp.asarray(RNG.normal(size=3))}


def _logits(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


X = jnp.asarray(RNG.normal(size=(2, 5)))


# ------------------------------------------------------------ 1a. probabilities


@pytest.mark.parametrize("tail", [
    lambda z: jax.nn.softmax(z, axis=-1),
    lambda z: jax.nn.softmax(z, axis=-1).reshape(z.shape[0], -1)[:, :3],  # routing after it
])
def test_probabilities_at_the_output_are_refused(tail):
    probs = lambda p, x: tail(_logits(p, x))  # noqa: E731
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="returns probabilities.*explain the logits"):
        jaxlrp.lrp(probs)(_mlp_params(), X)
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="returns probabilities"):
        jaxlrp.inspect(probs, verbose=False)(_mlp_params(), X)


def test_softmax_inside_attention_keeps_its_rule():
    wq, wk, wv = (jnp.asarray(RNG.normal(size=(4, 4))) for _ in range(3))

    def attn(p, x):  # (N, T, 4) -> (N, T, 4), a softmax read by the product with the values
        a = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", x @ wq, x @ wk), axis=-1)
        return jnp.einsum("nts,nsd->ntd", a, x @ wv).sum(1) @ p

    x = jnp.asarray(RNG.normal(size=(2, 3, 4)))
    rep = jaxlrp.inspect(attn, verbose=False)(jnp.asarray(RNG.normal(size=(4, 3))), x)
    assert [r.rule for r in rep.rows if r.kind == "softmax"] == [repr(rules.Softmax())]


def test_logits_explained_and_conserving():
    R = jaxlrp.lrp(_logits, rule=rules.Zero())(_mlp_params(), X, target=1)
    assert np.all(np.isfinite(R))


# ---------------------------------------------------------- 1b. z^B bounds


@pytest.mark.parametrize("build", [
    lambda: composites.EpsilonGammaBox(),
    lambda: composites.EpsilonGammaBox(low=0.0),
    lambda: composites.get("epsilon_gamma_box"),
    lambda: composites.ZeroEpsilonGammaBox(),
    lambda: composites.get("zero_epsilon_gamma_box"),
    lambda: jaxlrp.lrp(_logits, "epsilon_gamma_box"),
])
def test_zbox_presets_require_bounds(build):
    with pytest.raises(TypeError, match=r"needs the bounds.*\(low=0\.0, high=1\.0\)"):
        build()


def test_zbox_presets_with_bounds_use_them():
    comp = composites.EpsilonGammaBox(low=0.0, high=1.0)
    assert ("first", rules.ZBox(0.0, 1.0)) in comp.rules
    assert ("first", rules.ZBox(0.0, 255.0, 1e-9)) in composites.get("zero_epsilon_gamma_box", low=0.0, high=255.0).rules


# ----------------------------------------------------------- 1c. kind typos


@pytest.mark.parametrize("word", ["convolution", "Dense", "fully_connected_layer", "batchnorm"])
def test_bare_word_matching_nothing_is_an_error(word):
    comp = composites.Composite([(word, rules.ZPlus())])
    with pytest.raises(ValueError, match=f"{word!r} is neither a layer kind nor a glob"):
        jaxlrp.lrp(_logits, comp)(_mlp_params(), X)


def test_kind_typo_names_the_closest_kind():
    with pytest.raises(ValueError, match="did you mean 'conv'"):
        jaxlrp.lrp(_logits, composites.Composite([("convolution", rules.ZPlus())]))(_mlp_params(), X)


def test_globs_and_matching_words_still_warn_or_work():
    with pytest.warns(composites.UnmatchedPatternWarning):  # a glob: a warning, as before
        jaxlrp.lrp(_logits, composites.Composite([("*/conv9", rules.ZPlus())]))(_mlp_params(), X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bare word that names a layer (its parameter path) is fine
        jaxlrp.lrp(_logits, composites.Composite([("w1", rules.ZPlus())]))(_mlp_params(), X)


# -------------------------------------------------------- 2. argnums=0 habit


def _linen_dense(features=2, n=3):
    import flax.linen as nn

    m = nn.Dense(features)
    x = jnp.asarray(RNG.normal(size=(n, 3)))
    return m, m.init(jax.random.PRNGKey(0), x), x


@pytest.mark.parametrize("features,n", [(3, 3), (2, 3)])  # (3, 3): was a false TrainingModeError
def test_argnums_0_on_the_variables_says_so(features, n):
    m, v, x = _linen_dense(features, n)
    with pytest.raises(ValueError, match=r"explaining argument 0 \(the variables.*'params/(bias|kernel)'\); "
                                         r"the input is argument 1: pass argnums=1 or leave the default"):
        jaxlrp.lrp(m.apply, argnums=0)(v, x)
    assert jaxlrp.lrp(m.apply, argnums=1)(v, x).shape == x.shape


def test_argnums_0_on_a_plain_parameter_tuple_with_integer_leaves():
    f = lambda p, x: x @ p[0] * p[1]  # noqa: E731
    with pytest.raises(ValueError, match="explaining argument 0"):
        jaxlrp.lrp(f, argnums=0)((jnp.ones((3, 2)), jnp.asarray(2)), jnp.ones((4, 3)))


def test_explaining_a_dict_input_is_still_allowed():
    f = lambda x, w: (x["a"] + x["b"]) @ w  # noqa: E731
    R = jaxlrp.lrp(f, argnums=0)({"a": jnp.ones((2, 3)), "b": jnp.ones((2, 3))}, jnp.ones((3, 2)))
    assert set(R) == {"a", "b"}


# ------------------------------------------------------------- 8. smaller


def _relu_norm_model():
    import flax.linen as nn

    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(6, name="fc")(x))
            x = nn.LayerNorm(name="norm")(x)
            return nn.Dense(2, name="head")(x.reshape(x.shape[0], 2, 3).max(-1))

    m = M()
    x = jnp.asarray(RNG.normal(size=(2, 4)))
    return m, m.init(jax.random.PRNGKey(0), x), x


def test_inspect_prints_once(capsys):
    m, v, x = _relu_norm_model()
    rep = jaxlrp.inspect(m.apply)(v, x)
    assert capsys.readouterr().out == ""
    print(rep)
    assert capsys.readouterr().out.count("layer     kind") == 1
    assert repr(rep) == str(rep)  # a notebook shows the table, not a dataclass dump
    jaxlrp.inspect(m.apply, verbose=True)(v, x)
    assert capsys.readouterr().out.count("layer     kind") == 1


def test_inspect_reports_only_real_fallbacks():
    m, v, x = _relu_norm_model()
    rep = jaxlrp.inspect(m.apply)(v, x)
    assert [p for _, p, _ in rep.fallbacks] == ["reduce_max"]  # the global max chooses a winner
    assert {p for _, p, _ in rep.activations} >= {"max", "rsqrt"}  # ReLU, LayerNorm internals: a rule
    text = str(rep)
    assert "activations, rule Pass()" in text
    fallback_part = text.split("handled by a fallback")[1]
    assert "rsqrt" not in fallback_part and "reshape" not in fallback_part and "broadcast" not in fallback_part


def test_public_modules_have_complete_all():
    import importlib
    import inspect as pyinspect
    import pkgutil

    names = ["jaxlrp"] + [f"jaxlrp.{m.name}" for m in pkgutil.iter_modules(jaxlrp.__path__)
                          if not m.name.startswith("_") and m.name not in jaxlrp._DEPRECATED_SUBMODULES] \
        + ["jaxlrp.__main__"]  # (a deprecated alias such as jaxlrp.data re-exports another module's names)
    for name in names:
        mod = importlib.import_module(name)
        assert hasattr(mod, "__all__"), name
        assert not {"np", "jnp", "Any", "jax"} & set(mod.__all__), name
        assert all(hasattr(mod, n) for n in mod.__all__), name
        own = [n for n, v in vars(mod).items() if not n.startswith("_") and
               (pyinspect.isfunction(v) or pyinspect.isclass(v)) and v.__module__ == name
               and n not in getattr(mod, "_DEPRECATED", ())]
        assert set(own) <= set(mod.__all__), (name, set(own) - set(mod.__all__))


def test_mutable_apply_counts_outputs_not_leaves():
    import flax.linen as nn

    class Sow(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(3, name="fc")(x)
            self.sow("intermediates", "h", h)
            return h

    m = Sow()
    x = jnp.ones((2, 4))
    v = m.init(jax.random.PRNGKey(0), x)
    f = lambda v, x: m.apply(v, x, mutable=["intermediates"])  # noqa: E731  (out, {"intermediates": ...})
    with pytest.raises(TypeError, match=r"got a tuple of 2 outputs; .*\[0\]"):
        jaxlrp.lrp(f)(v, x)


# ------------------------------------------------------------------ 7. the CLI


@pytest.fixture
def no_demo_run(monkeypatch):
    monkeypatch.setattr("jaxlrp.demo.run", lambda cfg: pytest.fail("the demo ran before its arguments were checked"))


@pytest.mark.parametrize("args, message", [
    (["demo", "--explain", "8", "--show", "20"], "--show (20) must not exceed --explain (8)"),
    (["demo", "--train", "10"], "--train: must be at least 64"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_validates_first_with_the_demo_usage(args, message, capsys, no_demo_run):
    from jaxlrp.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("usage: jaxlrp demo [-h]")  # the demo's usage line, not the top level's


def test_cli_help_imports_no_jax():
    import subprocess
    import sys

    code = ("import sys\nimport jaxlrp.__main__ as m\ntry:\n    m.main(['demo', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted({k.split('.')[0] for k in sys.modules} & {'jax', 'jaxlib', 'flax', 'numpy', 'optax'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--show SHOW" in proc.stdout and proc.stdout.strip().endswith("[]")


def test_lazy_package_attributes():
    assert jaxlrp.lrp is jaxlrp.explain.lrp and jaxlrp.inspect is jaxlrp.diagnostics.inspect
    assert set(jaxlrp.__all__) <= set(dir(jaxlrp))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxlrp.nope  # noqa: B018


# ------------------------------------------------------------- 3. one nnx API


def _nnx_net(train: bool = False):
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, c, rngs):
            self.conv1 = nnx.Conv(c, c, (3, 3), rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.conv1(x))

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([Block(2, rngs), Block(2, rngs)])
            self.norm = nnx.BatchNorm(2, rngs=rngs)
            self.head = nnx.Linear(2, 3, rngs=rngs)

        def __call__(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(self.norm(x).mean((1, 2)))

    model = Net(nnx.Rngs(0))
    # every parameter random (biases, norm scales, statistics)
    for path, var in nnx.to_flat_state(nnx.state(model)):
        var.set_value(jnp.asarray(RNG.normal(size=var.get_value().shape), var.get_value().dtype)
                      if "var" not in str(path[-1]) else jnp.asarray(RNG.uniform(0.5, 2, var.get_value().shape)))
    model.train() if train else model.eval()
    return model, jnp.asarray(RNG.normal(size=(2, 5, 5, 2)))


def _entry_points(model):
    """Every public way to explain an nnx model, as functions of ``x`` (and keywords)."""
    import jaxlrp.flax as jf
    from flax import nnx

    comp = composites.EpsilonPlusFlat()
    return {
        "jaxlrp.lrp(model)(x)": lambda x, **k: jaxlrp.lrp(model, comp)(x, **k),
        "jaxlrp.lrp(model)(state, x)": lambda x, **k: jaxlrp.lrp(model, comp)(nnx.state(model), x, **k),
        "jaxlrp.value_and_lrp(model)(x)[1]": lambda x, **k: jaxlrp.value_and_lrp(model, comp)(x, **k)[1],
        "flax.lrp(model)(x)": lambda x, **k: jf.lrp(model, comp)(x, **k),
        "flax.lrp(model)(state, x)": lambda x, **k: jf.lrp(model, comp)(nnx.state(model), x, **k),
        "flax.explain(model, x)": lambda x, **k: jf.explain(model, x, composite=comp, **k),
    }


def test_nnx_entry_points_agree():
    model, x = _nnx_net()
    results = {name: f(x, target=1) for name, f in _entry_points(model).items()}
    first = next(iter(results.values()))
    assert first.shape == x.shape and np.all(np.isfinite(first))
    for name, R in results.items():
        np.testing.assert_allclose(R, first, rtol=1e-6, atol=1e-9, err_msg=name)


def test_nnx_layer_names_through_every_entry_point():
    model, x = _nnx_net()
    for name, f in _entry_points(model).items():
        if "value_and_lrp" in name:
            continue
        _, per_layer = f(x, target=0, layers="blocks/*")
        assert set(per_layer) == {"blocks/0/conv1", "blocks/1/conv1"}, name


def test_nnx_training_mode_is_the_same_error_everywhere():
    import jaxlrp.flax as jf

    model, x = _nnx_net(train=True)
    for name, f in _entry_points(model).items():
        with pytest.raises(jaxlrp.TrainingModeError, match="norm"):
            f(x)
    with pytest.raises(jaxlrp.TrainingModeError):
        jaxlrp.inspect(model)(x)
    with pytest.raises(jaxlrp.TrainingModeError):
        jf.inspect(model)(x)


def test_nnx_mode_checked_at_each_call():
    model, x = _nnx_net()
    explain = jaxlrp.lrp(model)
    explain(x)
    model.train()
    with pytest.raises(jaxlrp.TrainingModeError):
        explain(x)


def test_nnx_inspect_takes_x_alone():
    import jaxlrp.flax as jf
    from flax import nnx

    model, x = _nnx_net()
    comp = composites.EpsilonPlusFlat()
    a = jf.inspect(model, comp)(x, target=0)
    b = jaxlrp.inspect(model, comp)(x, target=0)
    c = jf.inspect(model, comp)(nnx.state(model), x, target=0)
    assert a == b == c
    assert {r.key for r in a.rows} >= {"blocks/0/conv1", "blocks/1/conv1", "head"}


def test_nnx_explainer_under_jit():
    from flax import nnx

    model, x = _nnx_net()
    graphdef, state = nnx.split(model)
    explain = jax.jit(jaxlrp.lrp(model, composites.EpsilonPlusFlat()))
    np.testing.assert_allclose(explain(state, x, target=2), jaxlrp.lrp(model, composites.EpsilonPlusFlat())(x, target=2),
                               rtol=1e-5, atol=1e-8)


def test_nnx_patterns_checked_like_any_other():
    model, x = _nnx_net()
    with pytest.raises(ValueError, match="did you mean 'conv'"):
        jaxlrp.lrp(model, composites.Composite([("convolution", rules.ZPlus())]))(x)
    with pytest.warns(composites.UnmatchedPatternWarning, match="conv9"):
        jaxlrp.lrp(model, composites.Composite([("*/conv9", rules.ZPlus())]))(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # module paths with and without the root match
        jaxlrp.lrp(model, composites.Composite([("blocks/0/conv1", rules.ZPlus()), ("Net/head", rules.Epsilon())]))(x)


def test_probabilities_explained_when_the_softmax_rule_is_chosen():
    probs = lambda p, x: jax.nn.softmax(_logits(p, x), axis=-1)  # noqa: E731
    comp = composites.Composite([("softmax", rules.Softmax())])
    R = jaxlrp.lrp(probs, comp)(_mlp_params(), X, target=0)
    assert R.shape == X.shape and np.all(np.isfinite(R))
    from jaxlrp import variants

    assert jaxlrp.lrp(probs, variants.pruned(comp, 0.3))(_mlp_params(), X, target=0).shape == X.shape
    with pytest.raises(jaxlrp.UnsupportedOperationError, match="returns probabilities"):
        jaxlrp.lrp(probs, variants.pruned(composites.EpsilonPlus(), 0.3))(_mlp_params(), X)
