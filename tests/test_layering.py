"""The house's layering, checked statically (issue 27): the private core's modules
import only modules listed above them in ``jaxlrp/_core/__init__.py`` and no public
module, and no module of jaxlrp imports another module's underscore names."""

from __future__ import annotations

import ast
import pathlib
import re

import jaxlrp._core

ROOT = pathlib.Path(jaxlrp.__file__).parent
ORDER = re.findall(r"^\* ``(\w+)``", jaxlrp._core.__doc__, re.M)


def _imports(path: pathlib.Path):
    """``(module, names, in_type_checking)`` of every relative import of a file."""
    tree = ast.parse(path.read_text())
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node, [a.name for a in node.names], id(node) in guarded


def test_the_core_lists_every_module():
    files = {p.stem for p in (ROOT / "_core").glob("*.py") if p.stem != "__init__"}
    assert set(ORDER) == files and len(ORDER) == len(files)


def test_every_core_import_points_down():
    for i, name in enumerate(ORDER):
        for node, names, guarded in _imports(ROOT / "_core" / f"{name}.py"):
            if guarded:
                continue
            assert node.level == 1, f"_core/{name}.py imports from a public module: {ast.unparse(node)}"
            used = [node.module] if node.module else names
            for m in used:
                assert m in ORDER[:i], f"_core/{name}.py imports {m}, which is not above it"


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in ROOT.rglob("*.py"):
        for node, names, _ in _imports(path):
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                      if n.startswith("_") and not n.startswith("__") and node.module is not None]
    assert found == []
