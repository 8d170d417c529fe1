"""Crash-safe file writes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object],
                 binary: bool = True) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file, fsync, then rename.

    A crash at any moment leaves either the old file or the complete new one.

    Parameters
    ----------
    path : str or path-like
        The file to write; its directory must exist.
    write : callable
        Called once with the open handle of ``<path>.partial``; writes the content.
    binary : bool, default=True
        Open the handle in binary (``"wb"``) or text (``"w"``) mode.

    Returns
    -------
    pathlib.Path
        ``path``, written.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb" if binary else "w") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path
