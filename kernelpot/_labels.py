"""Reference labels (energies, forces, stresses) read from ase.Atoms, with clear errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from ase import Atoms

from kernelpot._structures import check_structure
from kernelpot._structures import stored_label as _stored
from kernelpot._validation import check_finite_positions

#: ``info`` key ``kernelpot predict`` marks its output with: its energies and forces are
#: the model's, stored where labels go (for ASE's readers), not reference labels.
PREDICTION_KEY = "kernelpot_prediction"


class Labels(NamedTuple):
    """Labels of a list of structures.

    Attributes
    ----------
    energies : ndarray of shape (n_structures,)
        eV; NaN where a structure has no energy.
    forces : list of (ndarray of shape (n_atoms, 3) or None)
        eV/Å; ``None`` where a structure has no forces.
    stresses : list of (ndarray of shape (6,) or None)
        eV/Å³, ASE's Voigt order (``xx yy zz yz xz xy``); ``None`` where a structure
        has no stress or is not periodic along all three axes (a stress is defined for
        a cell only). ``None`` for the whole set when stresses were not read.
    """

    energies: np.ndarray
    forces: list
    stresses: list | None = None

    @property
    def has_stress(self) -> np.ndarray:
        """Which structures carry a stress, bool of shape (n_structures,)."""
        if self.stresses is None:
            return np.zeros(len(self.energies), dtype=bool)
        return np.array([s is not None for s in self.stresses], dtype=bool)

    @property
    def has_energy(self) -> np.ndarray:
        """Which structures carry an energy, bool of shape (n_structures,)."""
        return ~np.isnan(self.energies)


def atom_counts(frames) -> np.ndarray:
    """Return the atoms of every structure, shape (n_structures,).

    A :class:`~kernelpot.frame_files.FrameFiles` knows them from its scan, without
    reading the structures.
    """
    known = getattr(frames, "n_atoms", None)
    if known is not None:
        return np.asarray(known)
    return np.array([len(a) for a in frames])


def check_frames(frames: Iterable[Atoms], owner: str) -> list[Atoms]:
    """Return ``frames`` as a non-empty list of ase.Atoms.

    Parameters
    ----------
    frames : iterable of ase.Atoms
        Structures, each with at least one atom; a
        :class:`~kernelpot.frame_files.FrameFiles` is returned as it is (read when used).
    owner : str
        Name used in error messages.

    Returns
    -------
    list of ase.Atoms
        The same objects, in a new list (or the ``FrameFiles``).

    Raises
    ------
    TypeError
        If ``frames`` is a single Atoms, not iterable, or holds something else.
    ValueError
        If ``frames`` or one of its structures is empty, or a position is not finite (a
        ``FrameFiles`` is checked for positions where its structures are read).
    """
    from kernelpot.frame_files import FrameFiles

    if isinstance(frames, FrameFiles):  # read when used; its scan found every frame's atoms
        empty = np.flatnonzero(frames.n_atoms == 0)
        if len(empty):
            raise ValueError(f"{owner}: structure {int(empty[0])} is empty (0 atoms)")
        return frames
    if isinstance(frames, Atoms):
        raise TypeError(f"{owner}: expected a list of ase.Atoms; got a single Atoms "
                        "(wrap it in a list)")
    if isinstance(frames, (str, bytes)) or not hasattr(frames, "__iter__"):
        raise TypeError(f"{owner}: expected a list of ase.Atoms; got {type(frames).__name__}")
    frames = list(frames)
    if not frames:
        raise ValueError(f"{owner}: got an empty list of structures")
    for k, atoms in enumerate(frames):
        check_structure(atoms, k, owner)
    return frames


def read_labels(frames: list[Atoms], owner: str, stress: bool = False,
                every: bool = False) -> Labels:
    """Read stored energies and forces; a frame may lack either, not both sets entirely.

    Parameters
    ----------
    frames : list of ase.Atoms
        Structures with results attached (a SinglePointCalculator, as
        ``ase.io.read`` gives).
    owner : str
        Name used in error messages.
    stress : bool, default=False
        Also read the stresses of the frames periodic along all three axes (ASE's
        convention: Voigt ``xx yy zz yz xz xy`` or a 3 × 3 matrix, eV/Å³). A stress
        stored with a structure that is not periodic along all three axes is not read.
    every : bool, default=False
        Every frame must carry a label (training: a frame without one has nothing to
        fit; scoring and calibration: a frame without one is a slip, not data).

    Returns
    -------
    Labels
        Energies (NaN where missing), forces and stresses (``None`` where missing).

    Raises
    ------
    ValueError
        If no frame carries any label, a frame carries none (with ``every``), a label
        or a position is NaN/inf, or forces or a stress have the wrong shape.
    """
    energies = np.full(len(frames), np.nan)
    forces = []
    for k, atoms in enumerate(frames):
        # non-finite positions make ASE's stored results look stale: say so, not "no label"
        check_finite_positions(atoms.positions, f"{owner}: structure {k}")
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
    stresses = [_read_stress(atoms, k, owner) for k, atoms in enumerate(frames)] \
        if stress else None
    if stress:
        unused = [k for k, atoms in enumerate(frames)
                  if not np.all(atoms.pbc) and _stored(atoms, "stress") is not None]
        if unused:  # said once, not dropped in silence
            warnings.warn(f"{owner}: structure(s) {unused[:10]} carry a stress but are not "
                          f"periodic along all three axes (pbc="
                          f"{frames[unused[0]].pbc.tolist()}): a stress is defined for a "
                          "cell only, and theirs is not used", UserWarning, stacklevel=3)
    if np.all(np.isnan(energies)) and all(f is None for f in forces):
        md = any("model_forces" in atoms.arrays or "model_energy" in atoms.info
                 for atoms in frames)
        raise ValueError(f"{owner}: none of the {len(frames)} structures carries an energy or "
                         "forces (attach them with a SinglePointCalculator, as ase.io.read "
                         "does for extxyz)" + (
                             "; these look like a kernelpot md trajectory, whose model_energy "
                             "and model_forces are the model's predictions, not labels: label "
                             "its frames with the reference first" if md else ""))
    unlabelled = [k for k in range(len(frames)) if np.isnan(energies[k]) and forces[k] is None
                  and (stresses is None or stresses[k] is None)]
    if every and unlabelled:
        raise ValueError(f"{owner}: structure(s) {unlabelled[:10]} carry no energy, forces or "
                         f"stress: nothing to train on or score against (label them or "
                         f"leave them out)")
    predicted = [k for k, atoms in enumerate(frames) if PREDICTION_KEY in atoms.info]
    if predicted:
        warnings.warn(f"{owner}: structure(s) {predicted[:10]} hold a model's predictions "
                      f"({frames[predicted[0]].info[PREDICTION_KEY]}: written by kernelpot "
                      "predict), not reference labels; used as labels, they train on or "
                      "test against the model's own output", UserWarning, stacklevel=3)
    return Labels(energies, forces, stresses)


def _read_stress(atoms: Atoms, k: int, owner: str) -> np.ndarray | None:
    """Return the stored stress of a 3D-periodic structure in Voigt order, else None."""
    if not np.all(atoms.pbc):
        return None
    value = _stored(atoms, "stress")
    if value is None:
        return None
    value = np.asarray(value, dtype=np.float64)
    if value.shape == (3, 3):
        if not np.allclose(value, value.T, rtol=1e-8, atol=1e-12):
            raise ValueError(f"{owner}: structure {k} has a non-symmetric 3 x 3 stress")
        value = value[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    if value.shape != (6,):
        raise ValueError(f"{owner}: structure {k} has a stress of shape {value.shape}; "
                         "expected (6,) (Voigt xx yy zz yz xz xy) or (3, 3)")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{owner}: structure {k} has a non-finite stress")
    return value


def composition_counts(species_index: list, n_species: int) -> np.ndarray:
    """Return the atoms of each species in each structure, shape (n_structures, n_species).

    Parameters
    ----------
    species_index : list of ndarray of int
        Per structure, the species index of every atom.
    n_species : int
    """
    return np.stack([np.bincount(index, minlength=n_species) for index in species_index])


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
    raw_labels : Labels or None
        With a baseline, the labels as read (``labels`` are then the labels minus the
        baseline, what the GP is fitted to); kept with the training structures.
    """

    frames: list
    labels: Labels
    species: np.ndarray
    species_index: list
    counts: np.ndarray
    e0: np.ndarray
    raw_labels: Labels | None = None

    @property
    def has_energy(self) -> np.ndarray:
        """Return which structures carry an energy, shape (n_structures,)."""
        return self.labels.has_energy

    def numbers(self) -> list[np.ndarray]:
        """Return each structure's atomic numbers (from ``species_index``)."""
        return [self.species[index] for index in self.species_index]

    @property
    def has_forces(self) -> np.ndarray:
        """Return which structures carry forces, shape (n_structures,)."""
        return np.array([f is not None for f in self.labels.forces])

    def force_label_rms(self) -> float:
        """Return the root mean square of the force labels' components, eV/Å (0: none)."""
        forces = self.force_targets()
        return float(np.sqrt(np.mean(forces**2))) if forces.size else 0.0

    def stress_label_rms(self) -> float:
        """Return the root mean square of the stress labels' components, eV/Å³ (0: none)."""
        stresses = [s for s in (self.labels.stresses or []) if s is not None]
        return float(np.sqrt(np.mean(np.square(stresses)))) if stresses else 0.0

    @property
    def n_atoms(self) -> np.ndarray:
        """Return the atoms of every structure, shape (n_structures,)."""
        return atom_counts(self.frames)

    @property
    def has_stress(self) -> np.ndarray:
        """Return which structures carry a stress, shape (n_structures,)."""
        return self.labels.has_stress

    def subset(self, indices) -> TrainingSet:
        """Return the structures ``indices`` (in that order) as a training set of their own.

        Species, their numbering and the reference energies stay the whole set's, so
        design rows built from the subset are the whole set's rows of those structures.
        """
        indices = [int(k) for k in indices]
        labels = self.labels
        stresses = None if labels.stresses is None else [labels.stresses[k] for k in indices]
        return TrainingSet([self.frames[k] for k in indices],
                           Labels(labels.energies[indices], [labels.forces[k] for k in indices],
                                  stresses),
                           self.species, [self.species_index[k] for k in indices],
                           self.counts[indices], self.e0)

    def extended(self, frames: list, labels: Labels, species_index: list,
                 raw_labels: Labels | None = None) -> TrainingSet:
        """Return this set with ``frames`` (labelled ``labels``) appended, same species and e0.

        Parameters
        ----------
        frames : list of ase.Atoms
        labels : Labels
            The GP's labels of ``frames`` (minus a baseline, if any).
        species_index : list of ndarray of int
            Per new structure, the index into ``species`` of every atom.
        raw_labels : Labels or None, default=None
            With a baseline, the labels as read.

        Returns
        -------
        TrainingSet
        """
        def joined(old: Labels | None, new: Labels | None, n_old: int) -> Labels | None:
            if old is None or new is None:
                return None
            if old.stresses is None and new.stresses is None:
                stresses = None
            else:
                stresses = list(old.stresses or [None] * n_old) \
                    + list(new.stresses or [None] * len(new.energies))
            return Labels(np.concatenate([old.energies, new.energies]),
                          list(old.forces) + list(new.forces), stresses)

        n_old = len(self.frames)
        counts = composition_counts(species_index, len(self.species))
        return TrainingSet(list(self.frames) + list(frames),
                           joined(self.labels, labels, n_old), self.species,
                           list(self.species_index) + list(species_index),
                           np.concatenate([self.counts, counts]), self.e0,
                           joined(self.raw_labels, raw_labels, n_old))

    def row_structures(self) -> np.ndarray:
        """Return the structure of every observation: energies, force components, stresses."""
        n_atoms = self.n_atoms
        structures = np.arange(len(self.frames))
        return np.concatenate([np.flatnonzero(self.has_energy),
                               np.repeat(structures, 3 * n_atoms * self.has_forces),
                               np.repeat(structures, 6 * self.has_stress)])

    def energy_targets(self) -> np.ndarray:
        """Return the energies minus reference energies, of the structures that have one."""
        has_energy = self.has_energy
        return self.labels.energies[has_energy] - self.counts[has_energy] @ self.e0

    def force_targets(self) -> np.ndarray:
        """Return every force component of the structures that have forces, flattened."""
        forces = [f.ravel() for f in self.labels.forces if f is not None]
        return np.concatenate(forces) if forces else np.zeros(0)

    def stress_targets(self) -> np.ndarray:
        """Return the six stress components of the structures that have one, flattened."""
        stresses = [s for s in (self.labels.stresses or []) if s is not None]
        return np.concatenate(stresses) if stresses else np.zeros(0)
