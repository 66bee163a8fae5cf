"""
Sphinx configuration of twistproxy's documentation.

Build it with ``python -m sphinx -W -b html docs docs/_build/html`` (the test
``tests/test_docs.py`` runs the same build). The build needs no network:
the intersphinx inventories of Python's and Twisted's documentation are
vendored in ``docs/_inv`` (see ``docs/_inv/README.rst``), and links to those
sites are made from them.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # this checkout's twistproxy, not an installed one

import twistproxy  # noqa: E402

project = "twistproxy"
author = "the twistproxy authors"
copyright = "the twistproxy authors"
release = version = twistproxy.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "twistproxy_sphinx",
]

root_doc = "index"
exclude_patterns = ["_build", "_inv", "_ext", "examples"]
templates_path: list[str] = []

html_theme = "furo"
html_title = f"twistproxy {release}"

# Python's and Twisted's inventories are files of this checkout: nothing is
# fetched at build time (the tests run without a network).
intersphinx_mapping = {
    "python": ("https://docs.python.org/3.11/", str(HERE / "_inv" / "python.inv")),
    "twisted": ("https://docs.twisted.org/en/stable/api/", str(HERE / "_inv" / "twisted.inv")),
}

autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autoclass_content = "both"
autodoc_inherit_docstrings = False  # not Twisted's epytext docstrings for overrides

suppress_warnings: list[str] = []
