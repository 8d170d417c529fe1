"""FeatomicSOAP: analytic position and strain gradients against finite differences, the
smooth cutoff, and a model trained through it."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

pytest.importorskip("featomic")

from kernelpot import SparseGPPotential, load  # noqa: E402
from kernelpot.descriptors import FeatomicSOAP  # noqa: E402


def _strained(atoms, eps):
    """``r → (1 + ε) r`` for every position and cell vector (kernelpot's convention)."""
    out = atoms.copy()
    F = np.eye(3) + eps
    out.set_cell(atoms.cell.array @ F.T, scale_atoms=False)
    out.positions = atoms.positions @ F.T
    return out


@pytest.fixture
def skewed_cell():
    atoms = bulk("Cu", "fcc", 3.7, cubic=True).repeat((2, 1, 1))
    atoms.symbols[[0, 5]] = "Au"
    atoms.set_cell(atoms.cell.array + [[0, 0.3, 0.1], [0.2, 0, 0], [0, 0.1, 0]],
                   scale_atoms=True)
    atoms.rattle(0.08, seed=3)
    return atoms


@pytest.mark.parametrize("radial_scaling", [None, 2.5])
@pytest.mark.parametrize("structure", ["ethanol", "skewed_cell", "triclinic_small"])
def test_position_gradients_equal_finite_differences(structure, radial_scaling, request):
    atoms = request.getfixturevalue(structure)
    species = sorted(set(atoms.get_chemical_symbols()))
    descriptor = FeatomicSOAP(species, 4.0, n_max=3, l_max=3, sigma=0.4,
                              radial_scaling=radial_scaling)
    dense = descriptor.compute(atoms).dense_gradients()
    h = 1e-5
    for j in (0, len(atoms) - 1):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[j, c] += h
            minus.positions[j, c] -= h
            numerical = (descriptor.create(plus) - descriptor.create(minus)) / (2 * h)
            np.testing.assert_allclose(dense[:, j, c], numerical, rtol=1e-5,
                                       atol=1e-7 * np.abs(numerical).max())


@pytest.mark.parametrize("radial_scaling", [None, 2.5])
@pytest.mark.parametrize("structure", ["ethanol", "skewed_cell", "triclinic_small"])
def test_strain_gradients_equal_finite_differences(structure, radial_scaling, request):
    atoms = request.getfixturevalue(structure)
    species = sorted(set(atoms.get_chemical_symbols()))
    descriptor = FeatomicSOAP(species, 4.0, n_max=3, l_max=3, sigma=0.4,
                              radial_scaling=radial_scaling)
    strain = descriptor.compute(atoms, strain=True).strain_gradients
    assert descriptor.compute(atoms).strain_gradients is None
    h = 1e-5
    for a, b in ((0, 0), (0, 1), (1, 0), (2, 1), (1, 2)):
        eps = np.zeros((3, 3))
        eps[a, b] = h
        numerical = (descriptor.create(_strained(atoms, eps))
                     - descriptor.create(_strained(atoms, -eps))) / (2 * h)
        np.testing.assert_allclose(strain[:, a, b], numerical, rtol=1e-5,
                                   atol=1e-7 * np.abs(numerical).max())


def test_features_are_smooth_at_the_cutoff():
    """A neighbour crossing r_cut changes the features continuously (no DScribe step)."""
    descriptor = FeatomicSOAP(["Ar"], 4.0, n_max=4, l_max=2, sigma=0.4, smoothing=0.5)

    def dimer(r):
        return Atoms("Ar2", positions=[[0, 0, 0], [r, 0, 0]])

    alone = descriptor.create(Atoms("Ar", positions=[[0, 0, 0]]))[0]
    inside, outside = (descriptor.create(dimer(4.0 + d))[0] for d in (-1e-6, 1e-6))
    np.testing.assert_allclose(outside, alone, atol=1e-14)
    assert np.abs(inside - outside).max() < 1e-9 * np.abs(alone).max()
    # and its gradient goes to zero there too (the shifted cosine is flat at r_cut)
    near = np.abs(descriptor.compute(dimer(4.0 - 1e-6)).gradients).max()
    assert near < 1e-4 * np.abs(descriptor.compute(dimer(3.5)).gradients).max()


def test_bad_parameters_and_inputs(ethanol):
    with pytest.raises(ValueError, match="smoothing must be smaller than r_cut"):
        FeatomicSOAP(["H", "C", "O"], 3.0, 3, 2, smoothing=3.0).compute(ethanol)
    with pytest.raises(ValueError, match="n_max"):
        FeatomicSOAP(["H", "C", "O"], 3.0, 0, 2).compute(ethanol)
    with pytest.raises(TypeError, match="periodic must be None, True or False"):
        FeatomicSOAP(["H", "C", "O"], 3.0, 3, 2, periodic="yes").compute(ethanol)
    # three pairs of different types (9 (n_1, n_2) each), three of one type (6), 3 l
    assert FeatomicSOAP(["H", "C", "O"], 3.0, 3, 2).n_features == 3 * (3 * 9 + 3 * 6)
    with pytest.raises(ValueError, match="radial_scaling"):
        FeatomicSOAP(["H", "C", "O"], 3.0, 3, 2, radial_scaling=-1.0).compute(ethanol)
    with pytest.raises(ValueError, match="scaling_exponent"):
        FeatomicSOAP(["H", "C", "O"], 3.0, 3, 2, radial_scaling=2.0,
                     scaling_exponent=0).compute(ethanol)
    # the scaling changes the features (it weights far neighbours down)
    plain = FeatomicSOAP(["H", "C", "O"], 3.0, 3, 2).create(ethanol)
    scaled = FeatomicSOAP(["H", "C", "O"], 3.0, 3, 2, radial_scaling=1.5).create(ethanol)
    assert not np.allclose(plain, scaled)


def test_the_symmetric_blocks_keep_every_dot_product(ethanol):
    """Dropping n_1 > n_2 of one-type blocks (and √2 on n_1 < n_2) changes no dot product:
    against featomic's full power spectrum, every neighbour-type pair joined."""
    import metatensor

    descriptor = FeatomicSOAP(["H", "C", "O"], 4.0, 3, 2, 0.4)
    checked = descriptor._check_params()
    system, _ = descriptor._system(ethanol, "test")
    pairs = np.unique(checked["selected_keys"].values[:, 1:], axis=0)
    full = checked["calculator"].compute(system, selected_keys=checked["selected_keys"])
    block = full.keys_to_properties(metatensor.Labels(
        ["neighbor_1_type", "neighbor_2_type"], pairs)).keys_to_samples("center_type").block(0)
    dense = np.zeros((len(ethanol), block.values.shape[1]))
    dense[np.asarray(block.samples.column("atom"))] = block.values
    reduced = descriptor.create(ethanol)
    assert reduced.shape[1] < dense.shape[1]
    np.testing.assert_allclose(reduced @ reduced.T, dense @ dense.T, rtol=1e-12)


def test_a_model_on_featomic_soap_predicts_forces_as_energy_derivatives(skewed_cell,
                                                                        tmp_path):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for seed in range(4):
        atoms = skewed_cell.copy()
        atoms.rattle(0.05, seed=10 + seed)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(atoms)
    for method in ("sparse", "exact"):
        model = SparseGPPotential(FeatomicSOAP(["Cu", "Au"], 4.0, 3, 3, 0.4), method=method,
                                  n_restarts=0, random_state=0).fit(frames[:3])
        test = frames[3]
        forces = model.predict_forces([test])[0]
        h, j = 1e-4, 2
        numerical = np.zeros(3)
        for c in range(3):
            plus, minus = test.copy(), test.copy()
            plus.positions[j, c] += h
            minus.positions[j, c] -= h
            numerical[c] = -(model.predict([plus])[0] - model.predict([minus])[0]) / (2 * h)
        np.testing.assert_allclose(forces[j], numerical, rtol=1e-5, atol=1e-7)
        stress = model.predict_stress([test])[0]
        assert stress.shape == (6,) and np.all(np.isfinite(stress))
        # saved as a named descriptor with its parameters, loaded the same
        path = model.save(tmp_path / f"{method}.npz")
        loaded = load(path)
        assert isinstance(loaded.descriptor_, FeatomicSOAP)
        np.testing.assert_array_equal(loaded.predict_forces([test])[0], forces)


def test_compute_many_batches_and_equals_compute(ethanol_frames, skewed_cell):
    """Structures go to featomic in batches (molecules and cells apart); each result is
    what compute gives for it alone."""
    frames = [*ethanol_frames[:3], skewed_cell, ethanol_frames[3]]
    descriptor = FeatomicSOAP(["H", "C", "O", "Cu", "Au"], 4.0, 3, 2, 0.4)
    descriptor.batch_size = 2
    many = descriptor.compute_many(frames)
    assert len(many) == len(frames)
    for atoms, result in zip(frames, many, strict=True):
        alone = descriptor.compute(atoms)
        np.testing.assert_allclose(result.features, alone.features, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(result.pairs, alone.pairs)
        np.testing.assert_allclose(result.gradients, alone.gradients, rtol=1e-12, atol=1e-14)
    assert descriptor.compute_many([]) == []


def test_compute_all_goes_through_the_map_in_batches(ethanol_frames):
    """What fits use: the estimator's map over batches, each result equal to compute."""
    descriptor = FeatomicSOAP(["H", "C", "O"], 4.0, 3, 2, 0.4)
    descriptor.batch_size = 4
    calls = []

    def imap(fn, items, desc):
        items = list(items)
        calls.append((len(items), desc))
        return (fn(item) for item in items)

    frames = ethanol_frames[:10]
    results = descriptor.compute_all(frames, imap)
    assert calls == [(3, "descriptors")]  # batches of 4, 4 and 2
    for atoms, result in zip(frames, results, strict=True):
        np.testing.assert_allclose(result.features, descriptor.compute(atoms).features,
                                   rtol=1e-12, atol=1e-14)
