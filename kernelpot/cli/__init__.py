"""The ``kernelpot`` command line.

Only this package prints or configures logging handlers. :func:`main` parses the
arguments (:mod:`kernelpot.cli._parser`) and runs the command's function, one module
per command: ``demo``, ``descriptors``, ``fit``, ``evaluate`` (eval, predict),
``curves`` (learning-curve) and ``md``; :mod:`kernelpot.cli._common` holds what they
share.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
import warnings
from collections.abc import Sequence

from kernelpot.cli._common import CLIError, _configure_logging, mark_start
from kernelpot.cli._parser import _build_parser

__all__ = ["CLIError", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kernelpot`` command line.

    Errors in the input (``CLIError``, ``ValueError``, ``TypeError``, ``OSError``)
    are printed as one line on stderr, with the traceback only under ``--debug``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        Exit code: 0 on success, 1 on an error, 130 when interrupted.
    """
    parser = _build_parser()
    mark_start()
    _refuse_unknown_options(parser, sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        with _one_line_warnings(args.command, args.debug):
            return args.func(args)
    except (CLIError, ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        print(f"kernelpot {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kernelpot: interrupted", file=sys.stderr)
        return 130


def _refuse_unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Exit naming an option the command does not have, with the closest one it has.

    argparse reports a missing required option before an unknown one: ``kernelpot md ...
    --temprature 900`` said "the following arguments are required: --temperature" and
    never named the typo. Abbreviations argparse accepts (a unique prefix) pass.
    """
    commands = next((action.choices for action in parser._actions
                     if isinstance(action, argparse._SubParsersAction)), {})
    command = next((token for token in argv if not token.startswith("-")), None)
    sub = commands.get(command)
    if sub is None:
        return  # no command yet: argparse says what is missing
    known = sorted(name for name in sub._option_string_actions if name.startswith("--"))
    for token in argv:
        name = token.split("=", 1)[0]
        if not name.startswith("--") or name == "--" or any(k.startswith(name) for k in known):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        sub.error(f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else ""))


@contextlib.contextmanager
def _one_line_warnings(command: str, debug: bool):
    """Show warnings as one ``kernelpot COMMAND: warning: ...`` line each.

    With ``--debug`` they stay as Python shows them, with the file and source line.
    """
    if debug:
        yield
        return
    original = warnings.formatwarning
    warnings.formatwarning = (lambda message, category, filename, lineno, line=None:
                              f"kernelpot {command}: warning: {message}\n")
    try:
        yield
    finally:
        warnings.formatwarning = original
