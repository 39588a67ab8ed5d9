"""Sphinx configuration of the jaxlrp documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are
errors, so a broken reference or docstring fails CI). Markdown pages are read by
MyST; pages with a jupytext header are notebooks that myst-nb executes at build time.
"""

from __future__ import annotations

import importlib.util
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import jaxlrp  # noqa: E402

project = "jaxlrp"
author = "jaxlrp developers"
copyright = "jaxlrp developers, Apache-2.0"  # noqa: A001 - Sphinx's name
release = jaxlrp.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute", "_notebooks"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}

# numpy-style docstrings (the project's standard)
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes sections as fields: no duplicate entries beside autodoc's members
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# tutorials: executed on every build, on the built-in data, each in seconds on a CPU
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_in_temp = True  # files a tutorial writes stay out of the source tree
nb_execution_show_tb = True

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"jaxlrp {release}"


# ------------------------------------------------------- notebooks to download
#
# Every page with a jupytext header is a notebook: the build writes it as a .ipynb
# (docs/_notebooks, not in git) and the page links it under its title, so a reader
# can run the tutorial in Jupyter.

_NOTEBOOK_HEADER = "---\njupytext:"


def _notebook_pages(srcdir: str) -> list:
    import pathlib

    return [p for p in sorted(pathlib.Path(srcdir).glob("*.md")) if p.read_text().startswith(_NOTEBOOK_HEADER)]


def _write_notebooks(app) -> None:
    import nbformat
    from myst_nb.core.read import read_myst_markdown_notebook

    out = os.path.join(app.srcdir, "_notebooks")
    os.makedirs(out, exist_ok=True)
    for page in _notebook_pages(app.srcdir):
        nb = read_myst_markdown_notebook(page.read_text())
        nb.metadata.pop("jupytext", None)
        nbformat.write(nb, os.path.join(out, page.stem + ".ipynb"))


def _link_notebook(app, docname: str, source: list) -> None:
    """Below the page's title: a link to the page as a notebook."""
    text = source[0]
    if not text.startswith(_NOTEBOOK_HEADER):
        return
    title = text.index("\n# ")
    end = text.index("\n", title + 1)
    link = (f"\n\n{{download}}`Download this page as a notebook <_notebooks/{docname}.ipynb>` "
            "(`pip install 'jaxlrp[demo]'` first).\n")
    source[0] = text[:end] + link + text[end:]


def setup(app) -> None:
    app.connect("builder-inited", _write_notebooks)
    app.connect("source-read", _link_notebook)
