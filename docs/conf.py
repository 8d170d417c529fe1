"""Sphinx configuration of the kernelpot documentation.

Build (from the repository root)::

    pip install -e ".[docs]" && sphinx-build -W docs docs/_build/html

Choices, and why:

- Sphinx with ``sphinx.ext.autodoc`` + ``sphinx.ext.autosummary`` for the API reference
  (one page per object, in ``docs/generated/``, written at build time), ``numpydoc`` to
  render the docstrings (they follow numpydoc, which ``tests/test_docstrings.py``
  validates), and ``sphinx-gallery`` to run ``examples/`` at build time and show their
  output and figures, as scikit-learn's documentation does.
- ``myst-parser`` so that the guide pages are Markdown restructured from the README, in
  its own format, and ``CHANGELOG.md`` and ``benchmarks/RESULTS.md`` are included as
  they are, never copied.
- The ``furo`` theme: readable, light and dark, few dependencies (no JavaScript
  framework), good on narrow screens.
- No intersphinx: the build needs no network.
- Local helpers in ``_ext/kernelpot_docs.py``: the ``--help`` of every command generated
  at build time, a scraper for the PNG files the examples write, the API pages' choice
  of members, and the links of the included ``RESULTS.md``.

The gallery runs in a quick mode (``KERNELPOT_DOCS_QUICK=1``, set below unless already
set; each example reads it and uses fewer frames and steps), so the whole build, the
examples included, takes under a minute on the project's two cores (43 s measured on a
fresh copy with two other jobs running). ``KERNELPOT_DOCS_QUICK=0 sphinx-build ...``
runs the examples as written, for as long as their docstrings say. sphinx-gallery
wants a gallery header file beside the scripts and runs them in their own directory, so
the build copies ``examples/*.py`` into ``docs/_examples/`` (git-ignored) with the
header: the examples' output files stay out of the source tree.
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

os.environ.setdefault("KERNELPOT_DOCS_QUICK", "1")

import kernelpot_docs  # noqa: E402

import kernelpot  # noqa: E402

project = "kernelpot"
author = "kernelpot developers"
copyright = "kernelpot developers, BSD-3-Clause"
version = release = kernelpot.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "kernelpot_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_examples", "README.md", "Thumbs.db", ".DS_Store",
                    "**/sg_execution_times.rst", "sg_execution_times.rst"]
templates_path = ["_templates"]

# -- API reference ---------------------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections give the types
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True}
numpydoc_show_class_members = False  # members come from autodoc (_templates/autosummary)
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

# -- Markdown pages (MyST) -------------------------------------------------------------
myst_heading_anchors = 3  # GitHub-style anchors, as the README and RESULTS.md link them
myst_enable_extensions = ["deflist"]  # the index page's list of sections

# -- Gallery ---------------------------------------------------------------------------
kernelpot_docs.mirror_examples(ROOT / "examples", DOCS / "_examples")
sphinx_gallery_conf = {
    "examples_dirs": "_examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"\.py$",  # run every example, not only plot_*.py
    "within_subsection_order": "kernelpot_docs.gallery_order",  # quick start first
    # figures the examples draw and leave open, and the PNG files they write
    "image_scrapers": ("matplotlib", "kernelpot_docs.png_scraper"),
    "capture_repr": (),
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_memory": False,
    "min_reported_time": 1,
}

# -- HTML ------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"kernelpot {release}"
html_theme_options = {"navigation_with_keys": True}
html_static_path = ["_static"]
html_css_files = ["kernelpot.css"]
html_show_sourcelink = False
