"""No function or method of the package longer than ``MAX_LINES`` without a reason.

A function whose body spans more lines than ``MAX_LINES`` fails unless the line just
above its ``def`` (or above its first decorator) is a comment starting with
``# long:`` that says why it stays in one piece. The body is counted from its first
statement after the docstring to its last line: documentation (which
``test_docstrings.py`` asks for) does not count against the limit, code, comments and
blank lines inside it do.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kernelpot"
MAX_LINES = 80
MARKER = "# long:"



def _body_lines(node):
    """Lines from the first statement after the docstring to the end of the body."""
    body = node.body
    if (len(body) > 1 and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def _justified(node, lines):
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return first >= 2 and lines[first - 2].strip().startswith(MARKER)


def long_functions(source, max_lines=MAX_LINES):
    """``(name, line, body lines)`` of the unjustified functions longer than ``max_lines``."""
    tree = ast.parse(source)
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = _body_lines(node)
            if n > max_lines and not _justified(node, lines):
                out.append((node.name, node.lineno, n))
    return out


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def test_checker_sees_long_functions_and_markers():
    body = "".join(f"    x{k} = {k}\n" for k in range(5))
    plain = "def f():\n" + body
    assert long_functions(plain, max_lines=4) == [("f", 1, 5)]
    assert long_functions(plain, max_lines=5) == []
    marked = "# long: one table\n@decorator\ndef f():\n" + body
    assert long_functions(marked, max_lines=4) == []
    documented = 'def f():\n    """Doc.\n\n    More.\n    """\n' + body
    assert long_functions(documented, max_lines=5) == []
    nested = "class C:\n    def m(self):\n" + "".join("    " + line + "\n"
                                                      for line in body.splitlines())
    assert long_functions(nested, max_lines=4) == [("m", 2, 5)]


def test_no_unjustified_long_functions():
    offenders = [f"kernelpot/{relative}:{line} {name}: {n} lines (limit {MAX_LINES})"
                 for relative, path in _modules()
                 for name, line, n in long_functions(path.read_text(encoding="utf-8"))]
    assert not offenders, ("functions over the limit need splitting or a '# long: reason' "
                           "comment above their def:\n" + "\n".join(offenders))
