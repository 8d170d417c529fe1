"""SOAP: features equal DScribe's, analytic periodic gradients equal finite differences."""

import numpy as np
import pytest
from dscribe.descriptors import SOAP as DScribeSOAP
from helpers import finite_difference_jacobian, relative_error

from kernelpot.descriptors import SOAP

SETTINGS = {"n_max": 4, "l_max": 3, "sigma": 0.5}


def _ours(species, r_cut, **kwargs):
    return SOAP(species, r_cut, **{**SETTINGS, **kwargs})


def _dscribe(species, r_cut, periodic, **kwargs):
    return DScribeSOAP(species=species, r_cut=r_cut, periodic=periodic, **{**SETTINGS, **kwargs})


CASES = {
    "ethanol": (["H", "C", "O"], 4.0),
    "si_cell": (["Si"], 4.0),
    "sic_cell": (["Si", "C"], 3.5),
    "triclinic_small": (["Si", "Ge"], 3.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_features_equal_dscribe_create(name, request):
    atoms = request.getfixturevalue(name)
    species, r_cut = CASES[name]
    expected = _dscribe(species, r_cut, bool(atoms.pbc.any())).create(atoms)
    actual = _ours(species, r_cut).compute(atoms).features
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-10)


def test_features_equal_dscribe_crossover_compression(sic_cell):
    kwargs = {"compression": "crossover"}
    expected = _dscribe(["Si", "C"], 3.5, True,
                        compression={"mode": "crossover"}).create(sic_cell)
    actual = _ours(["Si", "C"], 3.5, **kwargs).compute(sic_cell).features
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-10)


def test_features_equal_dscribe_mixed_pbc(triclinic_small):
    atoms = triclinic_small.copy()
    atoms.pbc = [False, True, True]
    expected = _dscribe(["Si", "Ge"], 3.0, True).create(atoms)
    actual = _ours(["Si", "Ge"], 3.0).compute(atoms).features
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_equal_finite_differences(name, request):
    atoms = request.getfixturevalue(name)
    species, r_cut = CASES[name]
    soap = _ours(species, r_cut)
    dense = soap.compute(atoms).dense_gradients()
    moved = list(range(min(len(atoms), 3)))
    fd = finite_difference_jacobian(soap, atoms, moved, h=1e-5)
    for col, j in enumerate(moved):
        assert relative_error(dense[:, j], fd[:, col]) < 1e-6


@pytest.fixture(scope="module")
def si_64_soap(si_64):
    """Periodic 64-atom Si with the benchmark's SOAP settings, computed once."""
    ours = SOAP(["Si"], 5.0, n_max=8, l_max=6, sigma=0.5)
    reference = DScribeSOAP(species=["Si"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5,
                            periodic=True)
    return ours, reference, ours.compute(si_64)


def test_si_64_features_equal_dscribe(si_64, si_64_soap):
    _, reference, result = si_64_soap
    np.testing.assert_allclose(result.features, reference.create(si_64), rtol=1e-8, atol=1e-10)


def test_si_64_gradients_equal_finite_differences_of_dscribe_create(si_64, si_64_soap):
    """Analytic periodic gradients vs central differences of DScribe's periodic create()."""
    _, reference, result = si_64_soap
    dense = result.dense_gradients()
    work = si_64.copy()
    base = si_64.get_positions()
    h = 1e-5
    for j in (0, 17, 42):
        for c in range(3):
            shifted = base.copy()
            shifted[j, c] += h
            work.set_positions(shifted)
            plus = reference.create(work)
            shifted[j, c] -= 2 * h
            work.set_positions(shifted)
            minus = reference.create(work)
            fd = (plus - minus) / (2 * h)
            assert relative_error(dense[:, j, c], fd) < 1e-6


def test_si_64_gradients_equal_dscribe_numerical_periodic_derivatives(si_64, si_64_soap):
    """DScribe's numerical periodic derivatives, on the blocks where they are Jacobians.

    With ``attach=False`` DScribe holds the centres fixed while it moves atoms,
    so only its off-diagonal blocks (i != j) are what forces need. With
    ``attach=True`` it moves the centre at position ``a`` of ``centers`` with atom
    index ``a`` (measured), so its blocks are full Jacobians only when
    ``centers == [0, 1, ..., k - 1]``.
    """
    _, reference, result = si_64_soap
    dense = result.dense_gradients()
    centres = [0, 5, 33]
    include = [0, 1, 5, 20, 33, 63]
    fixed = reference.derivatives(si_64, centers=centres, include=include, attach=False,
                                  method="numerical", return_descriptor=False)
    n_checked = 0
    for a, i in enumerate(centres):
        for b, j in enumerate(include):
            if i == j:
                continue
            if np.abs(dense[i, j]).max() == 0:
                assert np.abs(fixed[a, b]).max() < 1e-8
            else:
                assert relative_error(dense[i, j], fixed[a, b]) < 1e-6
                n_checked += 1
    assert n_checked >= 10
    centres = [0, 1, 2]
    attached = reference.derivatives(si_64, centers=centres, include=include, attach=True,
                                     method="numerical", return_descriptor=False)
    for a, i in enumerate(centres):
        for b, j in enumerate(include):
            if np.abs(dense[i, j]).max() == 0:
                assert np.abs(attached[a, b]).max() < 1e-8
            else:
                assert relative_error(dense[i, j], attached[a, b]) < 1e-6


def test_pairs_reach_r_cut_plus_padding(si_64, si_64_soap):
    """Every atom within r_cut + padding of a centre is one of its pairs (and none beyond)."""
    ours, _, result = si_64_soap
    from ase.neighborlist import neighbor_list

    reach = 5.0 + ours.get_cutoff_padding()
    assert reach == pytest.approx(5.0 + 0.5 * np.sqrt(-2 * np.log(0.001)))
    i, j = neighbor_list("ij", si_64, reach)
    expected = set(zip(i.tolist(), j.tolist(), strict=True)) | {(a, a) for a in range(64)}
    assert set(map(tuple, result.pairs.tolist())) == expected
    within_r_cut = set(zip(*neighbor_list("ij", si_64, 5.0), strict=True))
    assert len(expected) > len(within_r_cut) + 64  # the padding adds pairs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rbf": "polynomial"}, "rbf must be 'gto'"),
        ({"weighting": {"function": "pow", "r0": 1, "c": 1, "m": 1}}, "weighting has no"),
        ({"average": "inner"}, "average must be 'off'"),
        ({"compression": "mu2"}, "compression must be"),
        ({"r_cut": -3.0}, "r_cut must be > 0"),
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"n_max": 0}, "n_max must be >= 1"),
        ({"l_max": -1}, "l_max must be >= 0"),
        ({"species": ["C", "Qq"]}, "unknown chemical symbol"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match, ethanol):
    params = {"species": ["H", "C", "O"], "r_cut": 4.0, "n_max": 3, "l_max": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        SOAP(**params).compute(ethanol)


def test_bad_parameter_types_raise_type_error(ethanol):
    with pytest.raises(TypeError, match="n_max must be an int"):
        SOAP(["H", "C", "O"], 4.0, n_max=2.5, l_max=2).compute(ethanol)
    with pytest.raises(TypeError, match="periodic must be"):
        SOAP(["H", "C", "O"], 4.0, n_max=2, l_max=2, periodic=1).compute(ethanol)


def test_location_matches_dscribe():
    ours = _ours(["H", "C", "O"], 4.0)
    reference = _dscribe(["H", "C", "O"], 4.0, False)
    assert ours.get_location(("C", "O")) == reference.get_location(("C", "O"))
    assert ours.get_location(("H", "H")) == reference.get_location(("H", "H"))
    assert ours.n_features == reference.get_number_of_features()


def test_gradients_equal_dscribe_analytical_derivatives(ethanol):
    """The Numba kernels against DScribe's own analytic derivatives (open system, the
    centre attached), which the earlier padded-cluster implementation called."""
    soap = _ours(["H", "C", "O"], 4.0)
    dense = soap.compute(ethanol).dense_gradients()  # (n_centres, n_atoms, 3, n_features)
    derivatives = _dscribe(["H", "C", "O"], 4.0, False).derivatives(
        ethanol, attach=True, method="analytical", return_descriptor=False)
    scale = np.abs(derivatives).max()
    np.testing.assert_allclose(dense, derivatives, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("kwargs", [{"n_max": 5, "l_max": 9, "sigma": 0.4},
                                    {"n_max": 2, "l_max": 0, "sigma": 0.3}])
def test_features_equal_dscribe_at_high_and_zero_degree(ethanol, kwargs):
    """The solid-harmonic recursion at l = 9 and the bare l = 0 case."""
    expected = _dscribe(["H", "C", "O"], 4.0, False, **kwargs).create(ethanol)
    actual = _ours(["H", "C", "O"], 4.0, **kwargs).compute(ethanol).features
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())


def test_species_in_any_order_give_dscribe_s_sorted_layout(ethanol):
    expected = _dscribe(["H", "C", "O"], 4.0, False).create(ethanol)
    for species in (["O", "H", "C"], [8, 1, 6]):
        soap = _ours(species, 4.0)
        np.testing.assert_allclose(soap.compute(ethanol).features, expected, rtol=1e-8,
                                   atol=1e-10)
        np.testing.assert_allclose(soap.create(ethanol), expected, rtol=1e-8, atol=1e-10)


def test_parallel_centres_equal_the_serial_kernel_and_threads_run_serially(
        si_64, monkeypatch):
    """Centres in parallel ranges give the serial kernel's numbers exactly; a call from
    another thread (Dask's or joblib's threads) takes the serial kernel."""
    import threading

    from kernelpot.descriptors import soap as soap_module

    soap = SOAP(["Si"], 5.0, n_max=4, l_max=3, sigma=0.5)

    monkeypatch.setattr(soap_module, "_parallel_chunks", lambda n_atoms: 1)
    serial = soap.compute(si_64, strain=True)
    monkeypatch.setattr(soap_module, "_parallel_chunks", lambda n_atoms: 3)
    parallel = soap.compute(si_64, strain=True)
    for name in ("features", "gradients", "strain_gradients"):
        np.testing.assert_array_equal(getattr(parallel, name), getattr(serial, name))
    monkeypatch.undo()
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(
        chunks=soap_module._parallel_chunks(64), result=soap.compute(si_64)))
    thread.start()
    thread.join()
    assert seen["chunks"] == 1
    np.testing.assert_array_equal(seen["result"].gradients, serial.gradients)


def test_a_child_forked_after_a_parallel_run_computes_serially(si_64):
    """GNU OpenMP aborts a forked child that uses it after its parent did."""
    import multiprocessing

    from kernelpot.descriptors import soap as soap_module

    soap = SOAP(["Si"], 4.0, n_max=3, l_max=2, sigma=0.5)
    expected = soap.compute(si_64).features
    if soap_module._PARALLEL_PID is None:
        pytest.skip("numba runs one thread here: nothing ran in parallel")
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        features, chunks = pool.apply(_compute_in_child, (soap, si_64))
    assert chunks == 1
    np.testing.assert_array_equal(features, expected)


def _compute_in_child(soap, atoms):
    from kernelpot.descriptors import soap as soap_module

    return soap.compute(atoms).features, soap_module._parallel_chunks(len(atoms))
