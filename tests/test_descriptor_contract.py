"""The contract every descriptor keeps: layout, invariances, inputs, parameters."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation
from sklearn.base import clone

from kernelpot.descriptors import ACSF, SOAP, DescriptorResult, FeatomicSOAP


def _acsf(species, r_cut, periodic=None):
    return ACSF.from_grid(species, r_cut, n_radial=6, n_angular=4, periodic=periodic)


def _soap(species, r_cut, periodic=None):
    return SOAP(species, r_cut, n_max=3, l_max=2, sigma=0.5, periodic=periodic)


def _featomic(species, r_cut, periodic=None):
    return FeatomicSOAP(species, r_cut, n_max=3, l_max=2, sigma=0.5, smoothing=0.5,
                        periodic=periodic)


FACTORIES = {"acsf": _acsf, "soap": _soap, "featomic": _featomic}


@pytest.fixture(params=list(FACTORIES))
def make(request):
    if request.param == "featomic":
        pytest.importorskip("featomic")
    return FACTORIES[request.param]


def _check_layout(result: DescriptorResult, n_atoms: int, n_features: int):
    assert result.features.dtype == np.float64 and result.features.shape == (n_atoms, n_features)
    assert result.pairs.dtype == np.int64 and result.pairs.shape[1] == 2
    assert result.gradients.dtype == np.float64
    assert result.gradients.shape == (len(result.pairs), 3, n_features)
    keys = result.pairs[:, 0] * n_atoms + result.pairs[:, 1]
    assert np.all(np.diff(keys) > 0), "pairs sorted by (i, j) and unique"
    assert set(map(tuple, result.pairs[result.pairs[:, 0] == result.pairs[:, 1]].tolist())) == {
        (a, a) for a in range(n_atoms)}
    assert result.pairs.min() >= 0 and result.pairs.max() < n_atoms


def _centre_sums(result: DescriptorResult):
    starts = np.searchsorted(result.pairs[:, 0], np.arange(result.n_atoms))
    return np.add.reduceat(result.gradients, starts, axis=0)


@pytest.mark.parametrize("structure, species", [
    ("ethanol", ["H", "C", "O"]), ("sic_cell", ["Si", "C"]),
    ("triclinic_small", ["Si", "Ge"]), ("si_mlearn", ["Si"]),
])
def test_layout_and_translation_sum_rule(make, structure, species, request):
    atoms = request.getfixturevalue(structure)
    atoms = atoms[0] if isinstance(atoms, list) else atoms
    descriptor = make(species, 3.5)
    result = descriptor.compute(atoms)
    _check_layout(result, len(atoms), descriptor.n_features)
    # Σ_j ∂d_i/∂r_j = 0 for every centre: a rigid translation changes nothing
    scale = np.abs(result.gradients).max()
    assert np.abs(_centre_sums(result)).max() < 1e-12 * max(scale, 1.0)


@pytest.mark.parametrize("structure, species", [
    ("ethanol", ["H", "C", "O"]), ("sic_cell", ["Si", "C"]), ("triclinic_small", ["Si", "Ge"]),
])
def test_rotation_invariance_and_gradient_equivariance(make, structure, species, request):
    atoms = request.getfixturevalue(structure)
    descriptor = make(species, 3.5)
    before = descriptor.compute(atoms)
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    rotated.set_positions(atoms.get_positions() @ rotation.T)
    after = descriptor.compute(rotated)
    np.testing.assert_array_equal(after.pairs, before.pairs)
    np.testing.assert_allclose(after.features, before.features, rtol=1e-9, atol=1e-10)
    expected = np.einsum("ab,pbf->paf", rotation, before.gradients)
    np.testing.assert_allclose(after.gradients, expected, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("structure, species", [
    ("ethanol", ["H", "C", "O"]), ("sic_cell", ["Si", "C"]),
])
def test_translation_invariance(make, structure, species, request):
    atoms = request.getfixturevalue(structure)
    descriptor = make(species, 3.5)
    before = descriptor.compute(atoms)
    moved = atoms.copy()
    moved.positions += np.array([1.3, -0.7, 2.9])  # also crosses the cell for periodic ones
    after = descriptor.compute(moved)
    np.testing.assert_allclose(after.features, before.features, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(after.dense_gradients(), before.dense_gradients(),
                               rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("structure, species", [
    ("ethanol", ["H", "C", "O"]), ("sic_cell", ["Si", "C"]),
])
def test_permutation_of_like_atoms(make, structure, species, request):
    atoms = request.getfixturevalue(structure)
    descriptor = make(species, 3.5)
    rng = np.random.default_rng(3)
    perm = np.arange(len(atoms))
    for z in np.unique(atoms.numbers):  # shuffle within each element
        idx = np.flatnonzero(atoms.numbers == z)
        perm[idx] = rng.permutation(idx)
    permuted = atoms[perm]
    before = descriptor.compute(atoms).dense_gradients()
    result = descriptor.compute(permuted)
    np.testing.assert_allclose(result.features, descriptor.compute(atoms).features[perm],
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(result.dense_gradients(), before[np.ix_(perm, perm)],
                               rtol=1e-8, atol=1e-9)


def test_supercell_repeats_the_cell(make, sic_cell):
    """A 2x2x2 supercell gives the cell's features repeated, and its Jacobian folds back."""
    descriptor = make(["Si", "C"], 3.5)
    cell_result = descriptor.compute(sic_cell)
    supercell = sic_cell.repeat((2, 2, 2))
    super_result = descriptor.compute(supercell)
    n = len(sic_cell)
    np.testing.assert_allclose(super_result.features, np.tile(cell_result.features, (8, 1)),
                               rtol=1e-9, atol=1e-10)
    # fold the supercell Jacobian of the first copy's centres onto cell atoms
    dense = super_result.dense_gradients()[:n]
    folded = dense.reshape(n, 8, n, 3, -1).sum(axis=1)
    np.testing.assert_allclose(folded, cell_result.dense_gradients(), rtol=1e-8, atol=1e-9)


def test_pairs_grow_linearly(make):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    descriptor = make(["Si"], 3.0)
    counts = [len(descriptor.compute(atoms.repeat(k)).pairs) / (8 * k**3) for k in (2, 3)]
    assert counts[0] == pytest.approx(counts[1])


def test_compute_many_matches_compute_and_n_jobs(make, ethanol, sic_cell):
    frames = [ethanol, ethanol.copy(), ethanol]
    descriptor = make(["H", "C", "O"], 3.5)
    serial = descriptor.compute_many(frames, n_jobs=1, verbose=0)
    parallel = descriptor.compute_many(frames, n_jobs=2, verbose=True)
    single = descriptor.compute(ethanol)
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.pairs, b.pairs)
        np.testing.assert_array_equal(a.gradients, b.gradients)
    np.testing.assert_array_equal(serial[0].features, single.features)
    with pytest.raises(TypeError, match="verbose must be an int"):
        descriptor.compute_many(frames, verbose="loud")
    with pytest.raises(TypeError, match="sequence of ase.Atoms"):
        descriptor.compute_many(ethanol.copy().get_chemical_formula())
    with pytest.raises(ValueError, match="not in species"):
        descriptor.compute_many([ethanol, sic_cell])


def test_input_is_not_modified(make, sic_cell):
    atoms = sic_cell.copy()
    positions, cell, pbc = atoms.get_positions(), atoms.cell.array.copy(), atoms.pbc.copy()
    make(["Si", "C"], 3.5).compute(atoms)
    np.testing.assert_array_equal(atoms.get_positions(), positions)
    np.testing.assert_array_equal(atoms.cell.array, cell)
    np.testing.assert_array_equal(atoms.pbc, pbc)


def test_sklearn_parameters(make):
    descriptor = make(["H", "C", "O"], 3.5)
    params = descriptor.get_params()
    assert params["r_cut"] == 3.5 and params["species"] == ["H", "C", "O"]
    twin = clone(descriptor)
    assert twin.get_params() == params and twin is not descriptor
    twin.set_params(r_cut=4.5)
    assert twin.r_cut == 4.5 and descriptor.r_cut == 3.5
    assert twin.n_features == descriptor.n_features  # r_cut does not change the size


def test_create_returns_features(make, ethanol):
    descriptor = make(["H", "C", "O"], 3.5)
    np.testing.assert_allclose(descriptor.create(ethanol), descriptor.compute(ethanol).features,
                               rtol=1e-10, atol=1e-10)


# -- bad input ------------------------------------------------------------------------
def test_not_atoms_is_a_type_error(make):
    with pytest.raises(TypeError, match="expected an ase.Atoms"):
        make(["H"], 3.0).compute(np.zeros((3, 3)))


def test_empty_structure(make):
    with pytest.raises(ValueError, match="empty"):
        make(["H"], 3.0).compute(Atoms())


def test_nan_positions(make, ethanol):
    atoms = ethanol.copy()
    atoms.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"finite; atoms \[2\]"):
        make(["H", "C", "O"], 3.0).compute(atoms)
    atoms.positions[2, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        make(["H", "C", "O"], 3.0).compute(atoms)


def test_unknown_species(make, ethanol):
    with pytest.raises(ValueError, match=r"elements not in species: \['O'\]"):
        make(["H", "C"], 3.0).compute(ethanol)


def test_zero_volume_cell_under_pbc(make):
    flat = Atoms("Si2", positions=[[0, 0, 0], [1.0, 1.0, 0.0]],
                 cell=[[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]], pbc=True)
    with pytest.raises(ValueError, match="zero volume"):
        make(["Si"], 3.0).compute(flat)
    # the same cell is fine when the empty direction is not periodic (featomic: its
    # systems are periodic along all three axes or none, and it says so)
    flat.pbc = [True, True, False]
    descriptor = make(["Si"], 3.0)
    if isinstance(descriptor, FeatomicSOAP):
        with pytest.raises(ValueError, match="periodic along all three axes or none"):
            descriptor.compute(flat)
    else:
        assert descriptor.compute(flat).features.shape[0] == 2


def test_periodic_true_requires_a_periodic_axis(make, ethanol):
    with pytest.raises(ValueError, match="periodic=True but the structure has pbc"):
        make(["H", "C", "O"], 3.0, periodic=True).compute(ethanol)


def test_periodic_false_matches_open_copy(make, sic_cell):
    open_copy = sic_cell.copy()
    open_copy.pbc = False
    forced = make(["Si", "C"], 3.5, periodic=False).compute(sic_cell)
    expected = make(["Si", "C"], 3.5).compute(open_copy)
    np.testing.assert_array_equal(forced.features, expected.features)
