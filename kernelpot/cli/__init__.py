"""The ``kernelpot`` command line.

Only this package prints or configures logging handlers. :func:`main` parses the
arguments (:mod:`kernelpot.cli._parser`) and runs the command's function, one module
per command: ``demo``, ``descriptors``, ``fit``, ``evaluate`` (eval, predict),
``curves`` (learning-curve) and ``md``; :mod:`kernelpot.cli._common` holds what they
share.
"""

from __future__ import annotations

import contextlib
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
