"""Sphinx configuration: the API from the numpydoc docstrings, the tutorials from their stored outputs.

Build with ``make docs`` (warnings are errors). Nothing is fetched from the network: notebooks are
rendered as committed (no execution), there is no intersphinx, and MathJax is served from the site.
"""

import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "ppgen"
author = "the ppgen developers"
release = version = "0.1.0"

# sphinx-mathjax-offline copies MathJax into the site and points mathjax_path at it: maths renders offline
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "sphinx-mathjax-offline", "myst_nb"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# the tutorials live in tutorials/ beside the package; copy them in so Sphinx can render them
_tutorials = DOCS / "_generated" / "tutorials"
shutil.rmtree(_tutorials, ignore_errors=True)
_tutorials.mkdir(parents=True)
for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(notebook, _tutorials / notebook.name)

nb_execution_mode = "off"        # render the outputs committed with each notebook
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # notebooks use headings for their own sections, not for the site

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True
napoleon_use_param = False        # "num_chains, num_samples : int" stays one entry, not three with one text
autodoc_typehints = "none"        # the docstrings state the types; the signatures stay readable
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}

html_theme = "alabaster"
html_title = "ppgen"
html_static_path = []
