"""Every code snippet of the README, the documentation pages and the docstrings runs.

* README.md and docs/*.md: the ```python blocks of one file run in order in one
  namespace that starts empty, in a temporary working directory, so a page defines
  everything it uses, as a reader who copies it needs. ```{code-block} python
  blocks (multi-host launches) are shown, not run. The notebook pages
  (``{code-cell}``, every guide page with code) are executed by the documentation
  build (myst-nb, which CI runs with warnings as errors); here their cells are
  checked for names they use before defining (a page must not lean on another's).
* Docstring examples (``>>>``) of every module run as doctests after a prelude that
  defines what they assume (``model``, ``variables``, ``x``, ``y``, ``m``: a small
  CNN on :func:`jaxlrp.synthetic.shapes`), except those listed in ``_NOT_RUN``
  (pretrained weights).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pathlib
import pkgutil
import re

import pytest

import jaxlrp

ROOT = pathlib.Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)

# Docstring examples that are not run, with the reason.
_NOT_RUN = {
    "jaxlrp.models": "loads pretrained weights from a file that is not shipped",
    "jaxlrp.models.torchvision.load_torchvision": "loads pretrained weights from a file that is not shipped",
    "jaxlrp.flax.explain": "explains an ImageNet ResNet (3-channel bounds of resnet_composite)",
}

# Docstring examples that are wrong; each is a bug outside this file, kept visible.
_KNOWN_BAD = {
    "jaxlrp.variants.pruned": "jax.jit(explain)(..., layers='linear') passes a string through jit; "
                              "the example needs jax.jit(functools.partial(explain, layers='linear'))",
}


def _recurrent_data(ns: dict) -> None:
    """The recurrent models' docstring explains a two-class task."""
    sq = ns["synthetic"].squares(0, 8, 20)
    ns.update(x=ns["jnp"].asarray(sq.x), y=ns["jnp"].asarray(sq.y))


def _keras_model(ns: dict) -> None:
    """jaxlrp.keras's docstrings explain a small float64 Keras model."""
    import keras

    inp = keras.Input((6,), dtype="float64")
    h = keras.layers.Dense(5, activation="relu", dtype="float64", name="fc1")(inp)
    out = keras.layers.Dense(3, dtype="float64", name="fc2")(h)
    ns.update(keras_model=keras.Model(inp, out), keras_x=ns["np"].random.default_rng(0).normal(size=(2, 6)))


# Per-module additions to the prelude.
_PRELUDE_FOR = {"jaxlrp.models.recurrent": _recurrent_data, "jaxlrp.keras": _keras_model}


def _prelude() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlrp import composites, metrics, models, rules, synthetic, variants, viz

    ds = synthetic.shapes(0, 8, size=28)
    model = models.CNN(num_classes=4, channels=(4, 8), hidden=16)
    variables = model.init(jax.random.key(0), ds.x[:1])
    ns = dict(jax=jax, jnp=jnp, np=np, jaxlrp=jaxlrp, composites=composites, synthetic=synthetic, metrics=metrics,
              models=models, rules=rules, variants=variants, viz=viz, concepts=jaxlrp.concepts,
              attribution=jaxlrp.attribution)
    ns.update(model=model, variables=variables, x=jnp.asarray(ds.x), y=jnp.asarray(ds.y),
              m=jnp.asarray(ds.mask[..., None]))
    # names the model-zoo docstrings use
    ns.update(images=jnp.zeros((2, 16, 16, 1)), tokens=jnp.zeros((2, 24), jnp.int32), module=model)
    ns.update(nnx_model=_nnx_cnn())
    return ns


def _nnx_cnn():
    from flax import nnx

    from jaxlrp.models import nnx as zoo

    return zoo.CNN(1, 28, 4, channels=(4, 8), hidden=16, rngs=nnx.Rngs(0))


def _pages() -> list:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def python_blocks(path: pathlib.Path) -> list:
    """The ```python blocks of a Markdown file, in order."""
    return _FENCE.findall(path.read_text())


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_code_blocks_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no python blocks")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), ns)
        except Exception as e:  # name the block, not only the line
            raise AssertionError(f"{page.name}, python block {i} failed:\n{code}") from e


_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def _free_names(source: str) -> set:
    """Names ``source`` reads at module level (or as globals in its functions) but
    never binds, builtins aside."""
    import builtins
    import symtable

    top = symtable.symtable(source, "<page>", "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    unbound, stack = set(), [top]
    while stack:
        table = stack.pop()
        stack.extend(table.get_children())
        for sym in table.get_symbols():
            name = sym.get_name()
            if sym.is_referenced() and (table is top or sym.is_global()) and name not in defined \
                    and not hasattr(builtins, name):
                unbound.add(name)
    return unbound


@pytest.mark.parametrize("page", [p for p in _pages() if _CELL.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_pages_define_what_they_use(page):
    """Notebook pages run in their own kernel at build: every name a cell reads is
    bound by a cell of the same page (checked statically; the build runs them)."""
    cells = "\n".join(line for cell in _CELL.findall(page.read_text())
                       for line in cell.splitlines() if not line.startswith((":", "%")))
    assert _free_names(cells) == set(), f"{page.name} uses names it never defines"


def test_readme_ten_lines_are_self_contained(tmp_path, monkeypatch):
    """The README's first python block runs with nothing defined beforehand."""
    monkeypatch.chdir(tmp_path)
    (code, *_) = python_blocks(ROOT / "README.md")
    exec(compile(code, "README.md[Ten lines]", "exec"), {})


def _modules() -> list:
    names = ["jaxlrp"] + [m.name for m in pkgutil.walk_packages(jaxlrp.__path__, "jaxlrp.")]
    # jaxlrp.keras needs Keras (the test extra has it); without it, its docstrings are not run
    no_keras = importlib.util.find_spec("keras") is None
    # deprecated aliases (jaxlrp.data) warn on import and hold no examples of their own
    skip = {"jaxlrp.__main__"} | {f"jaxlrp.{m}" for m in jaxlrp._DEPRECATED_SUBMODULES}
    return [n for n in names if n not in skip and not (no_keras and n == "jaxlrp.keras")]


def _doctests() -> list:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _modules():
        for t in finder.find(importlib.import_module(name)):
            if not t.examples or t.name in _NOT_RUN:
                continue
            marks = [pytest.mark.xfail(strict=True, reason=_KNOWN_BAD[t.name])] if t.name in _KNOWN_BAD else []
            tests.append(pytest.param(t, id=t.name, marks=marks))
    return tests


@pytest.mark.parametrize("test", _doctests())
def test_docstring_examples_run(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _prelude()
    for module, extend in _PRELUDE_FOR.items():
        if test.name == module or test.name.startswith(module + "."):
            extend(ns)
    test.globs = {**ns, **test.globs}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {test.name} failed (output above)"
