"""Test helpers: finite differences and error measures."""

import numpy as np


def finite_difference_jacobian(descriptor, atoms, atom_indices, h=1e-5):
    """Central differences of features w.r.t. the positions of ``atom_indices``.

    Returns an array (n_atoms, len(atom_indices), 3, n_features).
    """
    work = atoms.copy()
    base = work.get_positions()
    n_features = descriptor.get_number_of_features()
    out = np.zeros((len(atoms), len(atom_indices), 3, n_features))
    for col, j in enumerate(atom_indices):
        for c in range(3):
            shifted = base.copy()
            shifted[j, c] += h
            work.set_positions(shifted)
            plus = descriptor.compute(work).features
            shifted[j, c] -= 2 * h
            work.set_positions(shifted)
            minus = descriptor.compute(work).features
            out[:, col, c] = (plus - minus) / (2 * h)
    return out


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| over the block (CLARIFICATIONS.md)."""
    return np.abs(actual - expected).max() / np.abs(expected).max()


def numerical_forces(model, atoms, atom_indices, h=1e-4):
    """Central differences -dE/dr of a model's predicted energy, shape (len(atom_indices), 3)."""
    out = np.zeros((len(atom_indices), 3))
    for row, j in enumerate(atom_indices):
        for c in range(3):
            shifted = atoms.copy()
            shifted.positions[j, c] += h
            plus = model.predict([shifted])[0]
            shifted.positions[j, c] -= 2 * h
            minus = model.predict([shifted])[0]
            out[row, c] = -(plus - minus) / (2 * h)
    return out
