"""Sphinx configuration of fastopt's API reference (build: see CONTRIBUTING.md)."""

import fastopt

project = "fastopt"
author = "fastopt developers"
copyright = "fastopt developers"
release = fastopt.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]

exclude_patterns = ["_build"]
root_doc = "index"

# autodoc: members in source order; the numpydoc Parameters sections give the types, so the
# signatures stay short.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_preserve_defaults = True
autodoc_default_options = {"exclude-members": "__init__, __new__"}

# numpydoc: methods are documented by explicit :members: lists, not numpydoc's member tables.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

html_theme = "pydata_sphinx_theme"
html_title = f"fastopt {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_show_sourcelink = False
