"""Test helpers: structures, data paths, finite differences and error measures.

Tests import these plain functions and constants from here (``from helpers import ...``);
``conftest.py`` holds only fixtures and imports what it needs from this module.
"""

from pathlib import Path

import numpy as np
from ase.build import bulk

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def emt_copper_frames(n_frames, seed, rattle=0.08, force_noise=0.0):
    """Rattled 32-atom fcc Cu cells labelled by ASE's EMT (optionally noisy forces)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
        atoms.set_cell(atoms.cell * (1 + rng.normal(0, 0.01)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces() + rng.normal(0.0, force_noise, (len(atoms), 3))
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


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


def assert_symmetries(model, atoms, euler=(0.7, 0.2, -1.3), shift=(3.0, -2.0, 1.0), seed=0):
    """Energies (and their std) invariant and forces equivariant under a rotation plus
    translation and a permutation of the hydrogens; per-atom force variance traces
    invariant; zero net force."""
    from scipy.spatial.transform import Rotation

    energy, e_std = model.predict([atoms], return_std=True)
    forces, f_std = model.predict_forces([atoms], return_std=True)
    rotation = Rotation.from_euler("zyx", euler).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.asarray(shift)
    e2, e2_std = model.predict([moved], return_std=True)
    f2, f2_std = model.predict_forces([moved], return_std=True)
    np.testing.assert_allclose(e2, energy, rtol=1e-10)
    np.testing.assert_allclose(e2_std, e_std, rtol=1e-6)
    np.testing.assert_allclose(f2[0], forces[0] @ rotation.T, atol=1e-8)
    # per-component variances are the diagonal of a rotating 3 × 3 covariance: their sum
    # (the trace) is invariant
    np.testing.assert_allclose((f2_std[0] ** 2).sum(axis=1), (f_std[0] ** 2).sum(axis=1),
                               rtol=1e-6)
    perm = np.arange(len(atoms))
    hydrogens = np.flatnonzero(atoms.numbers == 1)
    perm[hydrogens] = np.random.default_rng(seed).permutation(hydrogens)
    e3 = model.predict([atoms[perm]])
    f3, f3_std = model.predict_forces([atoms[perm]], return_std=True)
    np.testing.assert_allclose(e3, energy, rtol=1e-10)
    np.testing.assert_allclose(f3[0], forces[0][perm], atol=1e-8)
    np.testing.assert_allclose(f3_std[0], f_std[0][perm], rtol=1e-6)
    assert np.abs(forces[0].sum(axis=0)).max() < 1e-8


def exact_observations(descriptor, frames, species, energy=True, forces=True):
    """The exact GP's observations of ``frames`` (every structure with the same labels)."""
    from kernelpot import exact

    results = [descriptor.compute(a) for a in frames]
    index = [np.searchsorted(species, a.numbers) for a in frames]
    n = len(frames)
    return exact.build_observations(results, index, len(species), np.full(n, energy),
                                    np.full(n, forces))


def emt_strained_cells(n_frames, seed, stress_noise=0.0, n_repeat=(2, 1, 1), strain=0.03,
                       rattle=0.05):
    """Rattled, randomly strained fcc Cu cells labelled by EMT: energy, forces and stress.

    ``stress_noise`` (eV/Å³) adds Gaussian noise to the stress labels only.
    """
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(n_repeat)
        deformation = np.eye(3) + rng.uniform(-strain, strain, (3, 3))
        atoms.set_cell(atoms.cell @ deformation, scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        stress = atoms.get_stress() + rng.normal(0.0, stress_noise, 6)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        frames.append(atoms)
    return frames


#: ASE's Voigt order as (a, b) pairs of the strain tensor.
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def finite_difference_stress(energy, atoms, h=1e-5):
    """ASE's stress, ``(1/V) ∂E/∂ε`` in Voigt order, by central differences of the strain.

    ``energy(atoms)`` may return a number or an array (one stress per entry, last axis
    the six Voigt components). A shear ``ε_ab = ε_ba = h`` moves both off-diagonal slots,
    so its difference is halved.
    """
    out = []
    for a, b in VOIGT_PAIRS:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h
        values = []
        for sign in (1, -1):
            strained = atoms.copy()
            strained.set_cell(atoms.cell @ (np.eye(3) + sign * eps), scale_atoms=True)
            values.append(np.asarray(energy(strained), dtype=np.float64))
        out.append((0.5 if a != b else 1.0) * (values[0] - values[1]) / (2 * h)
                   / atoms.get_volume())
    return np.stack(out, axis=-1)


def finite_difference_forces(energy, atoms, components, h=1e-5):
    """``-∂E/∂r_jc`` by central differences, for each ``(j, c)`` of ``components``."""
    out = []
    for j, c in components:
        shifted = [atoms.copy() for _ in range(2)]
        shifted[0].positions[j, c] += h
        shifted[1].positions[j, c] -= h
        out.append(-(energy(shifted[0]) - energy(shifted[1])) / (2 * h))
    return np.array(out)


def finite_difference_gradient(function, theta, h):
    """Central differences of a scalar ``function`` at ``theta``, one entry at a time."""
    theta = np.asarray(theta, dtype=np.float64)
    out = np.zeros(len(theta))
    for t in range(len(theta)):
        step = np.zeros(len(theta))
        step[t] = h
        out[t] = (function(theta + step) - function(theta - step)) / (2 * h)
    return out


def pressed_pair(frames, fraction, cutoff=4.0):
    """The first of ``frames`` with atom 0 and its nearest neighbour ``fraction`` × the
    frames' shortest distance of that pair of elements apart, unlabelled; and that
    shortest distance."""
    from kernelpot.contacts import ShortestPairs

    species = np.unique(np.concatenate([a.numbers for a in frames]))
    atoms = frames[0].copy()
    atoms.calc = None
    vectors = atoms.get_distances(0, range(1, len(atoms)), mic=True, vector=True)
    k = int(np.argmin(np.linalg.norm(vectors, axis=1)))
    pair = np.searchsorted(species, atoms.numbers[[0, 1 + k]])
    shortest = ShortestPairs(species, cutoff).add(frames).distances[pair[0], pair[1]]
    atoms.positions[1 + k] = atoms.positions[0] + fraction * shortest * vectors[k] / \
        np.linalg.norm(vectors[k])
    return atoms, shortest


def shortest_pairs_by_ase(frames, species, cutoff):
    """The shortest distance per pair of elements (sorted atomic numbers ``species``) within
    ``cutoff``, from ASE's own neighbour list; ``cutoff`` where no pair is closer."""
    from ase.neighborlist import neighbor_list

    species = list(species)
    out = np.full((len(species), len(species)), float(cutoff))
    for atoms in frames:
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        for a, b, r in zip(atoms.numbers[i], atoms.numbers[j], d, strict=True):
            m, n = species.index(a), species.index(b)
            out[m, n] = out[n, m] = min(out[m, n], r)
    return out


def read_back_std_rtol(model):
    """Largest relative change of a std that a save and load round trip may make.

    0 for a file that holds the sparse whitened factor in float64 (or an exact model);
    else ``(1 - ε)⁻⁵ - 1`` for the factor's float32 bound ``ε``: a calibrated std's map
    raises the variance to a power of at most 5 (``kernelpot.gp.FLOAT32_FACTOR_TOLERANCE``).
    """
    from kernelpot import gp

    if model.posterior_.kind != "sparse":
        return 0.0
    packed, bound = gp.packed_whitened_factor(model.posterior_.factors.R_w)
    return 0.0 if packed.dtype == np.float64 else (1 - bound) ** -5 - 1
