"""ACSF: DScribe as the oracle for values, finite differences for gradients."""

import numpy as np
import pytest
from dscribe.descriptors import ACSF as DScribeACSF
from helpers import finite_difference_jacobian, relative_error

from kernelpot.descriptors import ACSF

G2 = [[1.0, 0.0], [0.5, 2.0], [0.2, 3.5]]
G3 = [1.0, 2.5]
G4 = [[0.05, 1.0, 1.0], [0.1, 2.0, -1.0], [0.02, 4.0, 1.0], [0.01, 16.0, -1.0]]
G5 = [[0.03, 1.0, -1.0], [0.08, 2.0, 1.0]]


def _ours(species, r_cut):
    return ACSF(species, r_cut, g2_params=G2, g3_params=G3, g4_params=G4, g5_params=G5)


def _dscribe(species, r_cut, periodic):
    return DScribeACSF(species=species, r_cut=r_cut, g2_params=G2, g3_params=G3,
                       g4_params=G4, g5_params=G5, periodic=periodic)


CASES = {
    "ethanol": (["H", "C", "O"], 5.0),
    "si_cell": (["Si"], 5.0),
    "sic_cell": (["Si", "C"], 4.5),
    "triclinic_small": (["Si", "Ge"], 4.0),
    "si_mlearn": (["Si"], 5.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_equal_dscribe(name, request):
    atoms = request.getfixturevalue(name)
    frames = atoms if isinstance(atoms, list) else [atoms]
    species, r_cut = CASES[name]
    for frame in frames:
        periodic = bool(frame.pbc.any())
        expected = _dscribe(species, r_cut, periodic).create(frame)
        actual = _ours(species, r_cut).compute(frame).features
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-10)


def test_values_equal_dscribe_mixed_pbc(triclinic_small):
    atoms = triclinic_small.copy()
    atoms.pbc = [True, False, True]
    expected = _dscribe(["Si", "Ge"], 4.0, True).create(atoms)
    actual = _ours(["Si", "Ge"], 4.0).compute(atoms).features
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-10)


def test_periodic_false_ignores_cell(si_cell):
    open_atoms = si_cell.copy()
    open_atoms.pbc = False
    expected = _dscribe(["Si"], 5.0, False).create(open_atoms)
    actual = ACSF(["Si"], 5.0, g2_params=G2, g4_params=G4, g3_params=G3, g5_params=G5,
                  periodic=False).compute(si_cell).features
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["ethanol", "si_cell", "sic_cell", "triclinic_small"])
def test_gradients_equal_finite_differences(name, request):
    atoms = request.getfixturevalue(name)
    species, r_cut = CASES[name]
    acsf = _ours(species, r_cut)
    dense = acsf.compute(atoms).dense_gradients()
    moved = list(range(min(len(atoms), 4)))
    fd = finite_difference_jacobian(acsf, atoms, moved, h=1e-5)
    for col, j in enumerate(moved):
        assert relative_error(dense[:, j], fd[:, col]) < 1e-6


def test_reference_kernel_matches_plain_numpy(sic_cell):
    """The Numba kernel against a direct NumPy evaluation of the formulas."""
    from ase.neighborlist import neighbor_list

    species, r_cut = ["Si", "C"], 4.5
    features = _ours(species, r_cut).compute(sic_cell).features
    numbers = sorted({14, 6})
    n_species = len(numbers)
    i_list, j_list, vectors = neighbor_list("ijD", sic_cell, r_cut)
    radial_block = 1 + len(G2) + len(G3)

    def fc(r):
        return np.where(r < r_cut, 0.5 * (np.cos(np.pi * r / r_cut) + 1), 0.0)

    expected = np.zeros_like(features)
    for centre in range(len(sic_cell)):
        mask = i_list == centre
        js, vs = j_list[mask], vectors[mask]
        rs = np.linalg.norm(vs, axis=1)
        for s, z in enumerate(numbers):
            sel = sic_cell.numbers[js] == z
            r = rs[sel]
            row = [fc(r).sum()]
            row += [(np.exp(-eta * (r - rs_) ** 2) * fc(r)).sum() for eta, rs_ in G2]
            row += [(np.cos(k * r) * fc(r)).sum() for k in G3]
            expected[centre, s * radial_block:(s + 1) * radial_block] = row
        for a in range(len(js)):
            for b in range(a):
                sa = numbers.index(sic_cell.numbers[js[a]])
                sb = numbers.index(sic_cell.numbers[js[b]])
                hi, lo = max(sa, sb), min(sa, sb)
                start = n_species * radial_block + (hi * (hi + 1) // 2 + lo) * (len(G4) + len(G5))
                ra, rb = rs[a], rs[b]
                rw = np.linalg.norm(vs[a] - vs[b])
                cos = vs[a] @ vs[b] / (ra * rb)
                for q, (eta, zeta, lam) in enumerate(G4):
                    expected[centre, start + q] += (
                        2 ** (1 - zeta) * (1 + lam * cos) ** zeta
                        * np.exp(-eta * (ra**2 + rb**2 + rw**2)) * fc(ra) * fc(rb) * fc(rw))
                for q, (eta, zeta, lam) in enumerate(G5):
                    expected[centre, start + len(G4) + q] += (
                        2 ** (1 - zeta) * (1 + lam * cos) ** zeta
                        * np.exp(-eta * (ra**2 + rb**2)) * fc(ra) * fc(rb))
    np.testing.assert_allclose(features, expected, rtol=1e-10, atol=1e-12)


def test_n_features_and_location():
    acsf = _ours(["H", "C", "O"], 5.0)
    radial = 1 + len(G2) + len(G3)
    angular = len(G4) + len(G5)
    assert acsf.n_features == 3 * radial + 6 * angular
    assert acsf.n_features == _dscribe(["H", "C", "O"], 5.0, False).get_number_of_features()
    # species sorted by atomic number: H (0), C (1), O (2)
    assert acsf.get_location(("C",)) == slice(radial, 2 * radial)
    assert acsf.get_location(("O", "C")) == acsf.get_location(("C", "O"))
    start = 3 * radial + (2 * 3 // 2 + 1) * angular
    assert acsf.get_location(("C", "O")) == slice(start, start + angular)
    with pytest.raises(ValueError, match="not all in species"):
        acsf.get_location(("N",))


def test_from_grid_builds_documented_set():
    acsf = ACSF.from_grid(["Si"], 5.0, n_radial=8, n_angular=8)
    g2 = np.array(acsf.g2_params)
    g4 = np.array(acsf.g4_params)
    assert g2.shape == (8, 2) and g4.shape == (8, 3)
    assert np.all(g2[:4, 1] == 0.0) and np.all(np.diff(g2[4:, 1]) > 0)
    assert g2[4:, 1].max() < 5.0
    assert {tuple(row) for row in g4[:, 1:]} == {
        (z, lam) for z in (1.0, 2.0, 4.0, 16.0) for lam in (1.0, -1.0)}
    assert acsf.n_features == 1 + 8 + 8
    # the set scales with r_cut: doubling r_cut halves distances, quarters eta
    big = ACSF.from_grid(["Si"], 10.0, n_radial=8, n_angular=8, r_min=1.0)
    small = ACSF.from_grid(["Si"], 5.0, n_radial=8, n_angular=8, r_min=0.5)
    np.testing.assert_allclose(np.array(big.g2_params)[:, 1], 2 * np.array(small.g2_params)[:, 1])
    np.testing.assert_allclose(np.array(big.g2_params)[:, 0], np.array(small.g2_params)[:, 0] / 4)
    more = ACSF.from_grid(["Si"], 5.0, n_radial=4, n_angular=12, angular="g5")
    assert np.array(more.g5_params).shape == (12, 3) and more.g4_params is None
    assert len({row[0] for row in more.g5_params}) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r_cut": -1.0}, "r_cut must be > 0"),
        ({"r_cut": 0.0}, "r_cut must be > 0"),
        ({"g2_params": [[1.0, 0.0, 3.0]]}, r"g2_params must have shape \(n, 2\)"),
        ({"g2_params": [[-1.0, 0.0]]}, "g2_params eta must be > 0"),
        ({"g3_params": [[1.0, 2.0]]}, r"g3_params must have shape \(n,\)"),
        ({"g4_params": [[0.1, 1.0]]}, r"g4_params must have shape \(n, 3\)"),
        ({"g4_params": [[0.1, 0.5, 1.0]]}, "g4_params zeta must be >= 1"),
        ({"g5_params": [[0.1, 1.0, 2.0]]}, r"g5_params lambda must lie in \[-1, 1\]"),
        ({"g5_params": [[0.0, 1.0, 1.0]]}, "g5_params eta must be > 0"),
        ({"g2_params": [[np.nan, 1.0]]}, "g2_params must be finite"),
        ({"species": ["Xx"]}, "unknown chemical symbol"),
        ({"species": []}, "at least one element"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match, ethanol):
    params = {"species": ["H", "C", "O"], "r_cut": 4.0, **kwargs}
    acsf = ACSF(**params)  # the constructor stores, validation happens on use
    with pytest.raises(ValueError, match=match):
        acsf.compute(ethanol)


@pytest.mark.parametrize(
    "kwargs",
    [{"r_cut": "4"}, {"species": "HCO"}, {"periodic": "yes"}, {"g2_params": [["a", "b"]]}],
)
def test_bad_parameter_types_raise_type_error(kwargs, ethanol):
    params = {"species": ["H", "C", "O"], "r_cut": 4.0, **kwargs}
    with pytest.raises(TypeError):
        ACSF(**params).compute(ethanol)


def test_from_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="r_cut must be > 0"):
        ACSF.from_grid(["Si"], -2.0)
    with pytest.raises(ValueError, match="n_radial"):
        ACSF.from_grid(["Si"], 5.0, n_radial=-1)
    with pytest.raises(ValueError, match="angular must be"):
        ACSF.from_grid(["Si"], 5.0, angular="g3")
    with pytest.raises(ValueError, match="r_min must be below"):
        ACSF.from_grid(["Si"], 2.0, r_min=1.5)
