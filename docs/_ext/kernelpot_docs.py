"""Helpers of the kernelpot documentation build (a local Sphinx extension).

- :func:`mirror_examples`: copy ``examples/*.py`` into the gallery's source directory
  with its header, so that the examples' output files land in ``docs/_examples/``;
- :func:`gallery_order`: the quick start first in the gallery;
- :func:`png_scraper`: a sphinx-gallery image scraper for the PNG files an example
  writes (``kernelpot.plotting`` saves and closes its figures, which matplotlib's
  scraper would miss);
- the ``kernelpot-help`` directive: the ``--help`` text of a ``kernelpot`` command,
  generated at build time so that the CLI page never goes stale;
- :func:`skip_foreign_member`: the API pages document the methods kernelpot defines
  (inherited ones included, e.g. ``predict`` from ``PredictionMixin``), not those of
  scikit-learn, ASE or ``collections.abc``;
- :func:`rewrite_included_links`: Markdown files included from outside ``docs/``
  (``benchmarks/RESULTS.md``) link to files beside them that are not pages; those
  links become repository paths in code.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import shutil
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

GALLERY_HEADER = """\
Gallery
=======

The scripts in ``examples/``, run when these pages were built. The build runs them in
a quick mode (``KERNELPOT_DOCS_QUICK=1``: fewer frames, steps and test structures), so
the numbers and figures here are smaller and rougher than what ``python
examples/NAME.py`` prints and draws; the docstring of each says what the full run does
and how long it takes.
"""


def mirror_examples(source: Path, target: Path) -> None:
    """Copy ``source/*.py`` into ``target`` (made afresh) with a gallery header.

    Parameters
    ----------
    source : Path
        The repository's ``examples`` directory.
    target : Path
        The gallery's source directory (``sphinx_gallery_conf["examples_dirs"]``).
    """
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    (target / "GALLERY_HEADER.rst").write_text(GALLERY_HEADER, encoding="utf-8")
    for script in sorted(source.glob("*.py")):
        shutil.copy2(script, target / script.name)


def gallery_order(filename: str) -> tuple[bool, str]:
    """Sort key of the gallery: the quick start first, then the examples by file name.

    Parameters
    ----------
    filename : str
        An example's file name.

    Returns
    -------
    tuple
        ``(not the quick start, filename)``.
    """
    return Path(filename).name != "quickstart.py", Path(filename).name


def png_scraper(block, block_vars, gallery_conf):
    """Collect the PNG files an example wrote into its directory (sphinx-gallery scraper).

    Each file is moved into the gallery's image directory, so the next code block
    finds only what it wrote itself.

    Parameters
    ----------
    block : tuple
        The code block (unused).
    block_vars : dict
        sphinx-gallery's block variables: ``src_file``, ``image_path_iterator``.
    gallery_conf : dict
        sphinx-gallery's configuration: ``src_dir``.

    Returns
    -------
    str
        The reST of the images.
    """
    from sphinx_gallery.scrapers import figure_rst

    directory = Path(block_vars["src_file"]).parent
    images = []
    for png in sorted(directory.glob("*.png")):
        image_path = next(block_vars["image_path_iterator"])
        shutil.move(png, image_path)
        images.append(image_path)
    return figure_rst(images, gallery_conf["src_dir"])


class KernelpotHelp(SphinxDirective):
    """``.. kernelpot-help:: fit``: the output of ``kernelpot fit --help``, 88 columns."""

    required_arguments = 0
    optional_arguments = 1
    option_spec = {"caption": directives.unchanged}

    def run(self):
        """Run the command line's help and return it as a literal block."""
        from kernelpot.cli import main

        argv = [*self.arguments, "--help"]
        out = io.StringIO()
        columns = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"
        try:
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main(argv)
        finally:
            if columns is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = columns
        text = out.getvalue().rstrip()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _defining_module(obj) -> str | None:
    """Return the module of the function behind a method or property, if any."""
    if isinstance(obj, property):
        obj = obj.fget
    obj = getattr(obj, "__func__", obj)
    if inspect.isfunction(obj) or inspect.ismethoddescriptor(obj) or inspect.isbuiltin(obj):
        return getattr(obj, "__module__", None) or ""
    return None


def skip_foreign_member(app, what, name, obj, skip, options):
    """Skip class members whose code is not kernelpot's (``autodoc-skip-member``).

    Returns
    -------
    bool or None
        ``True`` to skip, ``None`` to let autodoc decide.
    """
    if what != "class":
        return None
    module = _defining_module(obj)
    if module is not None and not module.startswith("kernelpot"):
        return True
    return None


_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)#:\s][^)\s]*)\)")


def rewrite_included_links(app, relative_path, parent_docname, content):
    """Turn links to non-page files in an included Markdown file into code paths.

    ``[history/RESULTS-log.md](history/RESULTS-log.md)`` in ``benchmarks/RESULTS.md``
    becomes the code span ``benchmarks/history/RESULTS-log.md``: the file is in the
    repository, not in the documentation (``include-read`` event).
    """
    path = (Path(app.srcdir) / relative_path).resolve()
    root = Path(app.srcdir).resolve().parent
    if path.suffix != ".md" or Path(app.srcdir).resolve() in path.parents:
        return

    def code_path(match):
        text, target = match.group(1), match.group(2)
        if "://" in target or target.startswith("mailto:"):
            return match.group(0)
        try:
            shown = (path.parent / target).resolve().relative_to(root).as_posix()
        except ValueError:
            shown = target
        return f"`{shown}`" if text == target else f"{text} (`{shown}`)"

    content[0] = _LINK.sub(code_path, content[0])


def setup(app):
    """Register the directive and the event handlers."""
    app.add_directive("kernelpot-help", KernelpotHelp)
    app.connect("autodoc-skip-member", skip_foreign_member)
    app.connect("include-read", rewrite_included_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
