"""Reference labels (energies, forces) read from ase.Atoms, with clear errors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from ase import Atoms


class Labels(NamedTuple):
    """Labels of a list of structures.

    Attributes
    ----------
    energies : ndarray of shape (n_structures,)
        eV; NaN where a structure has no energy.
    forces : list of (ndarray of shape (n_atoms, 3) or None)
        eV/Å; ``None`` where a structure has no forces.
    """

    energies: np.ndarray
    forces: list

    @property
    def has_energy(self) -> np.ndarray:
        """Which structures carry an energy, bool of shape (n_structures,)."""
        return ~np.isnan(self.energies)


def check_frames(frames: Iterable[Atoms], owner: str) -> list[Atoms]:
    """Return ``frames`` as a non-empty list of ase.Atoms.

    Parameters
    ----------
    frames : iterable of ase.Atoms
        Structures, each with at least one atom.
    owner : str
        Name used in error messages.

    Returns
    -------
    list of ase.Atoms
        The same objects, in a new list.

    Raises
    ------
    TypeError
        If ``frames`` is a single Atoms, not iterable, or holds something else.
    ValueError
        If ``frames`` or one of its structures is empty.
    """
    if isinstance(frames, Atoms):
        raise TypeError(f"{owner}: expected a list of ase.Atoms; got a single Atoms "
                        "(wrap it in a list)")
    if isinstance(frames, (str, bytes)) or not hasattr(frames, "__iter__"):
        raise TypeError(f"{owner}: expected a list of ase.Atoms; got {type(frames).__name__}")
    frames = list(frames)
    if not frames:
        raise ValueError(f"{owner}: got an empty list of structures")
    for k, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"{owner}: structure {k} is a {type(atoms).__name__}, "
                            "not an ase.Atoms")
        if len(atoms) == 0:
            raise ValueError(f"{owner}: structure {k} is empty (0 atoms)")
    return frames


def _stored(atoms: Atoms, name: str):
    calc = atoms.calc
    if calc is None:
        return None
    try:
        return calc.get_property(name, atoms, allow_calculation=False)
    except Exception:  # calculators disagree on how they say "not available"
        return None


def read_labels(frames: list[Atoms], owner: str) -> Labels:
    """Read stored energies and forces; a frame may lack either, not both sets entirely.

    Parameters
    ----------
    frames : list of ase.Atoms
        Structures with results attached (a SinglePointCalculator, as
        ``ase.io.read`` gives).
    owner : str
        Name used in error messages.

    Returns
    -------
    Labels
        Energies (NaN where missing) and forces (``None`` where missing).

    Raises
    ------
    ValueError
        If no frame carries any label, a label is NaN/inf, or forces have the
        wrong shape.
    """
    energies = np.full(len(frames), np.nan)
    forces = []
    for k, atoms in enumerate(frames):
        energy = _stored(atoms, "energy")
        if energy is not None:
            energy = float(energy)
            if not np.isfinite(energy):
                raise ValueError(f"{owner}: structure {k} has a non-finite energy ({energy})")
            energies[k] = energy
        f = _stored(atoms, "forces")
        if f is not None:
            f = np.asarray(f, dtype=np.float64)
            if f.shape != (len(atoms), 3):
                raise ValueError(f"{owner}: structure {k} has forces of shape {f.shape}; "
                                 f"expected ({len(atoms)}, 3)")
            if not np.all(np.isfinite(f)):
                raise ValueError(f"{owner}: structure {k} has non-finite forces")
        forces.append(f)
    if np.all(np.isnan(energies)) and all(f is None for f in forces):
        raise ValueError(f"{owner}: none of the {len(frames)} structures carries an energy or "
                         "forces (attach them with a SinglePointCalculator, as ase.io.read "
                         "does for extxyz)")
    return Labels(energies, forces)


@dataclass
class TrainingSet:
    """Checked training structures, their labels and compositions, in one object.

    Attributes
    ----------
    frames : list of ase.Atoms
    labels : Labels
    species : ndarray of int
        Atomic numbers of the training elements, sorted.
    species_index : list of ndarray of int
        Per structure, the index into ``species`` of every atom.
    counts : ndarray of shape (n_structures, n_species)
        Compositions.
    e0 : ndarray of shape (n_species,)
        Reference energy per element, eV.
    """

    frames: list
    labels: Labels
    species: np.ndarray
    species_index: list
    counts: np.ndarray
    e0: np.ndarray

    @property
    def has_energy(self) -> np.ndarray:
        """Return which structures carry an energy, shape (n_structures,)."""
        return self.labels.has_energy

    @property
    def has_forces(self) -> np.ndarray:
        """Return which structures carry forces, shape (n_structures,)."""
        return np.array([f is not None for f in self.labels.forces])

    @property
    def n_atoms(self) -> np.ndarray:
        """Return the atoms of every structure, shape (n_structures,)."""
        return np.array([len(a) for a in self.frames])

    def row_structures(self) -> np.ndarray:
        """Return the structure of every observation: energies first, then force components."""
        n_atoms = self.n_atoms
        return np.concatenate([np.flatnonzero(self.has_energy),
                               np.repeat(np.arange(len(self.frames)),
                                         3 * n_atoms * self.has_forces)])

    def energy_targets(self) -> np.ndarray:
        """Return the energies minus reference energies, of the structures that have one."""
        has_energy = self.has_energy
        return self.labels.energies[has_energy] - self.counts[has_energy] @ self.e0

    def force_targets(self) -> np.ndarray:
        """Return every force component of the structures that have forces, flattened."""
        forces = [f.ravel() for f in self.labels.forces if f is not None]
        return np.concatenate(forces) if forces else np.zeros(0)
