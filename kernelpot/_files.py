"""Crash-safe file writes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path, write: Callable, binary: bool = True) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file, fsync, then rename.

    A crash at any moment leaves either the old file or the complete new one.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb" if binary else "w") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path
