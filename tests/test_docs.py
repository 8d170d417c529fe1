"""The documentation builds with warnings as errors, covers the public API and shows
every example with a figure.

Runs ``sphinx-build -W --keep-going`` on ``docs/`` into a temporary directory, as the
README's one command does, with the gallery's examples executed in their quick mode
(``KERNELPOT_DOCS_QUICK=1``, which ``docs/conf.py`` sets) even when sphinx-gallery has
results of unchanged examples from an earlier build. About a minute on two cores.
Skipped when the ``[docs]`` extra (Sphinx, numpydoc, sphinx-gallery, myst-parser, furo)
or tblite, which an example needs, is not installed.
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kernelpot

for _module in ("sphinx", "numpydoc", "sphinx_gallery", "myst_parser", "furo", "tblite"):
    pytest.importorskip(_module, reason=f"{_module} not installed (pip install -e '.[docs]')")

ROOT = Path(__file__).resolve().parents[1]

#: Submodules users import from, whose ``__all__`` the API reference covers too (the
#: same list as tests/test_docstrings.py).
SUBMODULES = ("calculator", "conformal", "contacts", "datasets", "descriptors",
              "descriptors.defaults", "kernels", "metrics", "plotting", "selection",
              "studies", "two_body")


@pytest.fixture(scope="module")
def built_html(tmp_path_factory):
    """Build the documentation once; return the HTML directory."""
    out = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "KERNELPOT_DOCS_QUICK": "1"}
    # two processes read and write the pages (74 against 83 s here); the gallery runs serially
    command = [sys.executable, "-m", "sphinx", "-j", "2", "-W", "--keep-going", "-E", "-b",
               "html",
               "-d", str(out / "doctrees"),
               "-D", "sphinx_gallery_conf.run_stale_examples=1",
               str(ROOT / "docs"), str(out / "html")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"sphinx-build failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return out / "html"


def _documented_ids(html: Path) -> set[str]:
    """Every ``kernelpot.*`` object the API pages document (their anchor ids)."""
    ids = set()
    for page in [html / "api.html", *(html / "generated").glob("*.html")]:
        ids.update(re.findall(r'id="(kernelpot\.[\w.]+)"', page.read_text(encoding="utf-8")))
    return ids


def test_api_index_lists_every_public_name(built_html):
    api = (built_html / "api.html").read_text(encoding="utf-8")
    ids = _documented_ids(built_html)
    missing = []
    for name in kernelpot.__all__:
        target = re.escape(f"kernelpot.{name}")
        listed = re.search(rf'href="generated/{target}\.html"|id="{target}"', api)
        if not listed or f"kernelpot.{name}" not in ids:
            missing.append(name)
    assert not missing, f"kernelpot.__all__ names missing from the API reference: {missing}"


def test_api_covers_public_submodules(built_html):
    ids = _documented_ids(built_html)
    missing = []
    for short in SUBMODULES:
        module = importlib.import_module(f"kernelpot.{short}")
        for name in module.__all__:
            top = getattr(kernelpot, name, None) is getattr(module, name)
            if f"kernelpot.{short}.{name}" not in ids and not (
                    top and f"kernelpot.{name}" in ids):
                missing.append(f"kernelpot.{short}.{name}")
    assert not missing, f"public submodule names missing from the API reference: {missing}"


@pytest.mark.parametrize("example", sorted(p.stem for p in (ROOT / "examples").glob("*.py")))
def test_every_example_has_a_gallery_page_with_a_figure(built_html, example):
    page = built_html / "auto_examples" / f"{example}.html"
    assert page.is_file(), f"no gallery page for examples/{example}.py"
    images = re.findall(rf'<img[^>]+src="([^"]*sphx_glr_{re.escape(example)}_\d+\.png)"',
                        page.read_text(encoding="utf-8"))
    assert images, f"the gallery page of examples/{example}.py shows no figure"
    for src in images:
        assert (page.parent / src).resolve().is_file(), src
