"""Training structures in files, read when they are used rather than held in memory.

:class:`FrameFiles` is a sequence of :class:`ase.Atoms` over one or more files that
``ase.io`` reads (any format it can iterate). It holds the files' names and each frame's
position and number of atoms, never the structures: ``frames[k]`` parses frame ``k``
when asked, keeping the last few. The fit reads its training set in a few passes in
order (labels, geometry checks, features, design blocks, the leave-one-structure-out
pass), so each pass parses every file once, front to back, through one open
``ase.io.iread`` per file; going back to an earlier frame reopens the file.

``SparseGPPotential.fit`` takes one (or a path, or a list of paths, which it wraps in
one). A generator such as ``ase.io.iread(...)`` can be read only once, and the fit needs
several passes: :func:`spooled` writes it, structure by structure, to a temporary ASE
trajectory (float64, the labels and ``info`` as they are) and hands the fit a
``FrameFiles`` over that file, removed when the fit ends.
"""

from __future__ import annotations

import logging
import operator
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from ase import Atoms

__all__ = ["FrameFiles", "is_paths", "spooled"]

logger = logging.getLogger(__name__)

_KEPT = 8  # recently read frames kept (a structure is asked for several times in a row)


def is_paths(X) -> bool:
    """Return whether ``X`` is a path or a non-empty list of paths (str or os.PathLike)."""
    if isinstance(X, (str, os.PathLike)):
        return True
    return isinstance(X, (list, tuple)) and len(X) > 0 \
        and all(isinstance(item, (str, os.PathLike)) for item in X)


class FrameFiles(Sequence):
    """Structures in files (any format ``ase.io`` iterates), read when used.

    Parameters
    ----------
    paths : str, os.PathLike or list of them
        The files, their frames in order.
    format : str or None, default=None
        ``ase.io`` format of every file; None guesses it from each name.

    Attributes
    ----------
    paths : list of pathlib.Path
    n_atoms : ndarray of int of shape (n_frames,)
        Atoms of every frame (from the scan when constructed).

    Raises
    ------
    ValueError
        If a file does not exist, cannot be read, or holds no frames.

    Notes
    -----
    Constructing one reads every file once (to count frames and atoms). Reading frame
    ``k`` after frame ``k - 1`` of the same file costs one frame; going back reopens the
    file. The files must not change while it is in use. Pickled, it carries the file
    names only, so that a worker process reads the frames itself.

    Examples
    --------
    >>> from kernelpot import FrameFiles, SparseGPPotential
    >>> frames = FrameFiles(["train_1.xyz", "train_2.xyz"])  # doctest: +SKIP
    >>> SparseGPPotential().fit(frames)  # doctest: +SKIP
    """

    def __init__(self, paths, format: str | None = None):
        from ase.io import iread

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p).absolute() for p in paths]  # a copy elsewhere finds them
        self.format = format
        if not self.paths:
            raise ValueError("FrameFiles: no files given")
        files, positions, n_atoms = [], [], []
        for f, path in enumerate(self.paths):
            if not path.exists():  # a file, or a directory format (BundleTrajectory)
                raise ValueError(f"FrameFiles: {path} does not exist")
            before = len(n_atoms)
            try:
                for k, atoms in enumerate(iread(path, index=":", format=format)):
                    files.append(f)
                    positions.append(k)
                    n_atoms.append(len(atoms))
            except Exception as err:  # ase.io raises many kinds for a bad file
                raise ValueError(f"FrameFiles: cannot read {path}: {err}") from err
            if len(n_atoms) == before:
                raise ValueError(f"FrameFiles: {path} holds no structures")
        self._file = np.array(files)
        self._position = np.array(positions)
        self.n_atoms = np.array(n_atoms, dtype=int)
        self._first = np.searchsorted(self._file, np.arange(len(self.paths)))  # per file
        self._reset()

    def _reset(self) -> None:
        self._cursor = None  # (file, next position, open iterator)
        self._kept = OrderedDict()

    def __getstate__(self) -> dict:
        """Return the state without the open file and the kept frames."""
        state = self.__dict__.copy()
        state["_cursor"], state["_kept"] = None, OrderedDict()
        return state

    def __len__(self) -> int:
        """Return the number of frames in all files."""
        return len(self.n_atoms)

    def __repr__(self) -> str:
        """Name the first files and the number of frames."""
        names = ", ".join(p.name for p in self.paths[:3]) + (", ..." if len(self.paths) > 3
                                                               else "")
        return f"FrameFiles([{names}], {len(self)} frames)"

    def __iter__(self) -> Iterator[Atoms]:
        """Yield the frames in order, reading each file once."""
        for k in range(len(self)):
            yield self[k]

    def __getitem__(self, index):
        """Return frame ``index`` (a slice: a list of frames), read now or kept."""
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        k = operator.index(index)  # an integer; a float index is a TypeError
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"FrameFiles: frame {index} of {len(self)}")
        if k in self._kept:
            self._kept.move_to_end(k)
            return self._kept[k]
        atoms = self._read(int(self._file[k]), int(self._position[k]))
        self._kept[k] = atoms
        if len(self._kept) > _KEPT:
            self._kept.popitem(last=False)
        return atoms

    def _read(self, f: int, position: int) -> Atoms:
        """Parse frame ``position`` of file ``f``, going on from the open one if it can."""
        from ase.io import iread

        if self._cursor is None or self._cursor[0] != f or self._cursor[1] > position:
            self._cursor = (f, 0, iread(self.paths[f], index=":", format=self.format))
        _, next_position, frames = self._cursor
        try:
            while next_position < position:
                next(frames)
                next_position += 1
            atoms = next(frames)
        except StopIteration as err:
            self._cursor = None
            raise ValueError(f"FrameFiles: {self.paths[f]} has fewer frames than when it "
                             f"was scanned (it changed)") from err
        self._cursor = (f, position + 1, frames)
        k = int(self._first[f]) + position
        if len(atoms) != self.n_atoms[k]:
            raise ValueError(f"FrameFiles: frame {position} of {self.paths[f]} has "
                             f"{len(atoms)} atoms, {self.n_atoms[k]} when it was scanned "
                             f"(the file changed)")
        return atoms


@contextmanager
def spooled(X, owner: str, in_memory: bool = False):
    """Give an iterator of structures to a fit as a :class:`FrameFiles`, held on disk.

    A generator (``ase.io.iread(...)``, ``(a for a in ...)``, ``map(...)``) can be read
    once; a fit reads its structures in several passes. Rather than a list of every
    structure, it is written, one structure at a time, to an ASE trajectory in a new
    temporary directory, read back when used, and removed when the ``with`` block
    ends. Each structure is written with its labels only (the energy, free energy,
    forces and stress its calculator holds, as a ``SinglePointCalculator``:
    ``kernelpot._structures.labels_only``): the trajectory keeps positions, cell and labels in
    float64 and ``info`` entries that JSON can encode (``config_type`` among them), so
    the fit is the one on the structures as a list. The directory is
    :func:`tempfile.gettempdir`'s: where that is memory (a tmpfs ``/tmp``), point
    ``TMPDIR`` at a disk. Anything else (a list, a path, a ``FrameFiles``) is yielded as
    it is.

    Parameters
    ----------
    X : object
        What the caller was given.
    owner : str
        Names the caller in errors.
    in_memory : bool, default=False
        Read an iterator into a list instead: for a model that keeps its training
        structures (``incremental=True``), which outlive the file.

    Yields
    ------
    object
        ``X``, or a ``FrameFiles`` over the written trajectory.

    Raises
    ------
    TypeError
        If the iterator yields something other than an ase.Atoms (named by position).
    ValueError
        If it yields no structure or an empty one.
    """
    if not isinstance(X, Iterator) or in_memory:
        yield list(X) if isinstance(X, Iterator) else X
        return
    from ase.io.trajectory import Trajectory

    from kernelpot._structures import check_structure, labels_only

    with tempfile.TemporaryDirectory(prefix="kernelpot-frames-") as root:
        path = Path(root) / "frames.traj"
        n_frames = 0
        with Trajectory(path, "w") as out:
            for k, atoms in enumerate(X):
                check_structure(atoms, k, owner)
                out.write(labels_only(atoms))
                n_frames += 1
        if not n_frames:
            raise ValueError(f"{owner}: got an iterator of no structures")
        logger.info("%s: %d structures from an iterator written to %s (%.1f MB), read "
                    "from there when used", owner, n_frames, path, path.stat().st_size / 1e6)
        yield FrameFiles(path, format="traj")

