"""Checks and copies of single structures (ase.Atoms).

Shared by the label reader (:mod:`kernelpot._labels`) and the frame files
(:mod:`kernelpot.frame_files`), which import each other's work without importing each
other.
"""

from __future__ import annotations

import os

from ase import Atoms

from kernelpot._validation import check_finite_positions

__all__ = ["check_structure", "labels_only", "stored_label"]


def check_structure(atoms, k: int, owner: str) -> None:
    """Refuse structure ``k`` if it is not an ase.Atoms, holds no atom or a NaN position.

    Raises
    ------
    TypeError
        If it is something else (a path gets a hint: give paths as a list, or one path).
    ValueError
        If it is empty or a position is not finite.
    """
    if not isinstance(atoms, Atoms):
        hint = " (give paths as a list, or one path)" \
            if isinstance(atoms, (str, os.PathLike)) else ""
        raise TypeError(f"{owner}: structure {k} is a {type(atoms).__name__}, not an "
                        f"ase.Atoms{hint}")
    if len(atoms) == 0:
        raise ValueError(f"{owner}: structure {k} is empty (0 atoms)")
    check_finite_positions(atoms.positions, f"{owner}: structure {k}")


def labels_only(atoms: Atoms) -> Atoms:
    """Return a copy of ``atoms`` whose calculator holds only the labels it had.

    The energy, free energy, forces and stress its calculator stores (what
    ``kernelpot._labels.read_labels`` reads), as a ``SinglePointCalculator``; no
    calculator where it had none.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    if atoms.calc is None:
        return copy
    labels = {name: value for name in ("energy", "free_energy", "forces", "stress")
              if (value := stored_label(atoms, name)) is not None}
    copy.calc = SinglePointCalculator(copy, **labels)
    return copy


def stored_label(atoms: Atoms, name: str):
    """Return the property ``name`` the calculator of ``atoms`` stores, or None."""
    calc = atoms.calc
    if calc is None:
        return None
    try:
        return calc.get_property(name, atoms, allow_calculation=False)
    except Exception:  # calculators disagree on how they say "not available"
        return None

