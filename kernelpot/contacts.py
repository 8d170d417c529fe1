"""Shortest pair distances of labelled structures, and contacts closer than any of them.

A descriptor with a smooth, normalised kernel sees a pair of atoms pressed closer than
any training pair as a small change of its environment: the normalised SOAP dot product
barely moves when a neighbour shell is compressed, and neither does the posterior std.
The energy does, steeply (the repulsive wall). Measured (``benchmarks/otf_contact.py``):
a model of fifteen 600 K EMT Ni–Al cells driven at 900 K met pairs more than 5 % closer
than any it was trained on with a median largest force error of 303 meV/Å (71 elsewhere)
at the same calibrated stds (median 42 against 46 meV/Å). A pair distance is cheap to
check: the on-the-fly learner's contact gate (``OnTheFlyLearner(contact_margin=...)``)
labels such a structure, and a prediction on one warns.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from contextvars import ContextVar
from typing import NamedTuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from kernelpot._validation import _complete_cell, resolve_pbc

__all__ = ["CONTACT_MARGIN", "Contact", "ContactWarning", "ShortestPairs",
           "contact_warnings_handled"]

#: The default margin: a pair this fraction closer than the shortest labelled pair of its
#: elements is a contact no training structure held (the learner's ``contact_margin``,
#: and the prediction's warning).
CONTACT_MARGIN = 0.05

#: The neighbour list bins at this many Å at least (see ``_validation.close_contact``).
_MIN_SEARCH = 2.0
#: Recorded distances are at least this, Å: coincident atoms (``min_distance=None``)
#: would otherwise record 0, which no ratio can be taken against.
_FLOOR = 1e-6

_HANDLED: ContextVar[bool] = ContextVar("kernelpot_contacts_handled", default=False)


class ContactWarning(UserWarning):
    """A prediction on a pair of atoms closer than any training pair of its elements.

    Filter it by category (``warnings.filterwarnings("ignore", category=ContactWarning)``);
    the model logs every case at INFO level either way.
    """


@contextlib.contextmanager
def contact_warnings_handled() -> Iterator[None]:
    """Within this block, predictions log contacts but do not warn of them.

    For callers that report contacts themselves (the on-the-fly learner, which labels
    them or counts them in its own end-of-run warning; ``calibrate``; learning curves):
    a model's once-per-model :class:`ContactWarning` is then kept for the user's own
    predictions.

    Yields
    ------
    None
    """
    token = _HANDLED.set(True)
    try:
        yield
    finally:
        _HANDLED.reset(token)


def contacts_handled() -> bool:
    """Return whether the caller reports contacts itself (:func:`contact_warnings_handled`)."""
    return _HANDLED.get()


def pair_list(atoms: Atoms, periodic: bool | None, cutoff: float):
    """Return ``(i, j, d)`` of the pairs of ``atoms`` closer than ``cutoff`` (half list).

    Parameters
    ----------
    atoms : ase.Atoms
    periodic : bool or None
        A descriptor's ``periodic`` setting.
    cutoff : float
        Å; the search bins at 2 Å at least (vesin's cell list is slower below).

    Returns
    -------
    tuple of ndarray
        Atom indices ``i``, ``j`` and distances ``d`` (an atom and its own periodic image
        included).
    """
    import vesin

    pbc = resolve_pbc(atoms, periodic, "shortest pairs")
    cell = _complete_cell(np.array(atoms.cell.array, dtype=np.float64), pbc) if pbc.any() \
        else np.zeros((3, 3))
    search = vesin.NeighborList(cutoff=max(float(cutoff), _MIN_SEARCH), full_list=False)
    i, j, d = search.compute(points=np.asarray(atoms.positions, dtype=np.float64), box=cell,
                             periodic=pbc.tolist(), quantities="ijd")
    keep = np.asarray(d) < cutoff
    return np.asarray(i)[keep], np.asarray(j)[keep], np.asarray(d)[keep]


class ShortestPairs:
    """The shortest distance of each pair of elements in a set of structures.

    Parameters
    ----------
    species : array-like of int or str
        The model's elements (atomic numbers or symbols; kept sorted by atomic number).
    cutoff : float
        Pairs at or beyond this distance (Å; the descriptor's cutoff) are not counted: a
        pair of elements no structure holds closer than it has ``cutoff`` as its shortest
        distance, so any pair of them within it is closer than every one seen.
    periodic : bool or None, default=None
        The descriptor's ``periodic`` setting (None: each structure's ``pbc``).

    Attributes
    ----------
    distances : ndarray of shape (n_species, n_species)
        Symmetric, Å.
    """

    def __init__(self, species, cutoff: float, periodic: bool | None = None) -> None:
        try:
            numbers_ = [atomic_numbers[z] if isinstance(z, str) else int(z) for z in species]
        except (KeyError, TypeError, ValueError):
            raise ValueError("ShortestPairs: species must be atomic numbers or element "
                             f"symbols; got {species!r}") from None
        self.species = np.unique(np.asarray(numbers_, dtype=int))
        if self.species.size != len(numbers_) or not self.species.size:
            raise ValueError(f"ShortestPairs: species must be distinct elements, at least "
                             f"one; got {species!r}")
        if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) \
                or not (np.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"ShortestPairs: cutoff must be a positive distance in Å; got "
                             f"{cutoff!r}")
        self.cutoff = float(cutoff)
        self.periodic = periodic
        self.distances = np.full((self.species.size, self.species.size), self.cutoff)

    @classmethod
    def of_descriptor(cls, species, descriptor) -> ShortestPairs | None:
        """Return an empty instance at a descriptor's cutoff and periodicity.

        Parameters
        ----------
        species : array-like of int or str
            The model's elements.
        descriptor : kernelpot.descriptors.Descriptor
            Its ``r_cut`` is the cutoff, its ``periodic`` the periodicity.

        Returns
        -------
        ShortestPairs or None
            None for a descriptor without a numeric ``r_cut``.
        """
        r_cut = getattr(descriptor, "r_cut", None)
        if isinstance(r_cut, bool) or not isinstance(r_cut, numbers.Real):
            return None
        return cls(species, r_cut, getattr(descriptor, "periodic", None))

    def _indices(self, atoms: Atoms) -> np.ndarray:
        index = np.searchsorted(self.species, atoms.numbers)
        index = np.minimum(index, self.species.size - 1)
        if np.any(self.species[index] != atoms.numbers):
            unknown = sorted(set(atoms.numbers.tolist()) - set(self.species.tolist()))
            raise ValueError("ShortestPairs: the structure holds elements outside the "
                             f"model's: {[chemical_symbols[z] for z in unknown]}")
        return index

    def add(self, frames) -> ShortestPairs:
        """Lower the shortest distances to those of ``frames`` (a list of ase.Atoms).

        Returns
        -------
        self : ShortestPairs
        """
        for atoms in frames:
            self.add_pairs(atoms, *pair_list(atoms, self.periodic, self.cutoff))
        return self

    def add_pairs(self, atoms: Atoms, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        """Lower the shortest distances to those of the pairs ``(i, j)`` of ``atoms``.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure (its atomic numbers).
        i, j : ndarray of int
            Atom indices of each pair (a half or a full list).
        d : ndarray of float
            Their distances, Å; those at or beyond ``cutoff`` are skipped, those under
            1e-6 Å (coincident atoms) count as 1e-6.
        """
        index = self._indices(atoms)
        keep = d < self.cutoff
        a, b, d = index[i[keep]], index[j[keep]], np.maximum(d[keep], _FLOOR)
        np.minimum.at(self.distances, (a, b), d)
        np.minimum.at(self.distances, (b, a), d)

    def copy(self) -> ShortestPairs:
        """Return an independent copy."""
        other = ShortestPairs(self.species, self.cutoff, self.periodic)
        other.distances = self.distances.copy()
        return other

    @property
    def reach(self) -> float:
        """Return the longest shortest distance, Å: no pair beyond it can be closer."""
        return float(self.distances.max())

    def closest(self, atoms: Atoms, pairs: tuple | None = None) -> Contact | None:
        """Return the pair of ``atoms`` closest relative to its elements' shortest distance.

        Parameters
        ----------
        atoms : ase.Atoms
        pairs : tuple of ndarray, optional
            ``(i, j, d)`` of :func:`pair_list` at :attr:`reach` or beyond (a neighbour list
            the caller has already); by default searched here.

        Returns
        -------
        Contact or None
            The pair with the smallest ``distance / shortest`` (its ``ratio``); None when
            no pair lies within the shortest distance of its elements.
        """
        index = self._indices(atoms)
        i, j, d = pairs if pairs is not None else pair_list(atoms, self.periodic, self.reach)
        if not d.size:
            return None
        shortest = self.distances[index[i], index[j]]
        ratio = d / shortest
        n = int(np.argmin(ratio))
        if not ratio[n] < 1.0:
            return None
        return Contact(int(i[n]), int(j[n]), float(d[n]), float(shortest[n]), float(ratio[n]),
                       f"{chemical_symbols[atoms.numbers[i[n]]]}–"
                       f"{chemical_symbols[atoms.numbers[j[n]]]}",
                       not shortest[n] < self.cutoff)


class Contact(NamedTuple):
    """A pair of atoms closer than the shortest pair of their elements seen before."""

    i: int
    j: int
    distance: float
    shortest: float
    ratio: float
    elements: str
    unseen: bool = False  # no structure held a pair of these elements within the cutoff

    def describe(self, structures: str = "labelled") -> str:
        """Return "atoms i and j (Ni–Ni) are d Å apart, p % closer than any labelled ...".

        Parameters
        ----------
        structures : str, default="labelled"
            What the shortest distance was taken over ("labelled", "training").

        Returns
        -------
        str
        """
        what = "an atom and its own periodic image" if self.i == self.j else \
            f"atoms {self.i} and {self.j}"
        if self.unseen:
            return (f"{what} ({self.elements}) are {self.distance:.3f} Å apart, and no "
                    f"{structures} structure holds a {self.elements} pair within the "
                    f"cutoff ({self.shortest:g} Å)")
        return (f"{what} ({self.elements}) are {self.distance:.3f} Å apart, "
                f"{100 * (1 - self.ratio):.1f} % closer than any {structures} "
                f"{self.elements} pair ({self.shortest:.3f} Å)")

