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

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
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
