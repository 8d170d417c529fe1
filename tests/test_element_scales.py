"""The std map's force factor per element: its fit, its use, its storage."""

import numpy as np
import pytest

from kernelpot import SparseGPPotential, element_scales, load
from kernelpot.calibration import StdCalibration
from kernelpot.element_scales import (
    MIN_ATOMS,
    element_key,
    fit_element_scales,
    is_element_key,
    per_value_scales,
    scales_of,
)


def _errors(factors: dict, atoms_per_structure: dict, n_structures: int, seed: int,
            noise: float = 1e-4):
    """Force errors drawn with a known factor per element, three components per atom."""
    rng = np.random.default_rng(seed)
    numbers = np.concatenate([np.full(k, z) for z, k in atoms_per_structure.items()])
    numbers = np.tile(np.repeat(numbers, 3), n_structures)
    structures = np.repeat(np.arange(n_structures), numbers.size // n_structures)
    epistemic = np.exp(rng.normal(np.log(0.01), 1.0, numbers.size))
    scale = np.array([factors[z] for z in numbers])
    errors = rng.normal(size=numbers.size) * np.sqrt(scale**2 * epistemic + noise)
    return errors, epistemic, np.full(numbers.size, noise), numbers, structures


def test_the_fit_recovers_known_factors_per_element():
    truth = {1: 0.7, 6: 1.3, 8: 1.0}
    errors, epistemic, noise, numbers, structures = _errors(truth, {1: 6, 6: 2, 8: 1},
                                                            n_structures=400, seed=0)
    fitted = fit_element_scales(errors, epistemic, noise, numbers, structures)
    assert set(fitted) == {1, 6, 8}
    for number, factor in truth.items():
        assert fitted[number] == pytest.approx(factor, rel=0.08)


def test_an_element_with_too_few_atoms_keeps_no_factor():
    errors, epistemic, noise, numbers, structures = _errors(
        {1: 2.0, 8: 2.0}, {1: 6, 8: 1}, n_structures=MIN_ATOMS - 1, seed=1)
    fitted = fit_element_scales(errors, epistemic, noise, numbers, structures)
    assert 8 not in fitted  # MIN_ATOMS - 1 oxygen atoms
    assert 1 in fitted  # six per structure


def test_errors_of_one_element_get_no_factor():
    """The map's own scale is that element's: a factor would only add noise."""
    errors, epistemic, noise, numbers, structures = _errors({29: 2.0}, {29: 4},
                                                            n_structures=50, seed=4)
    assert fit_element_scales(errors, epistemic, noise, numbers, structures) == {}


def test_the_prior_pulls_a_factor_from_few_structures_towards_one():
    """Ten structures of one atom each: the fit stays between 1 and the plain ML value."""
    errors, epistemic, noise, numbers, structures = _errors({8: 2.5, 1: 1.0}, {8: 1, 1: 1},
                                                            n_structures=10, seed=2)
    fitted = fit_element_scales(errors, epistemic, noise, numbers, structures)[8]
    oxygen = numbers == 8
    errors, epistemic, noise = errors[oxygen], epistemic[oxygen], noise[oxygen]
    grid = np.linspace(0.0, 4.0, 4001)  # log s²
    nll = [np.sum(0.5 * np.log(np.exp(t) * epistemic + noise)
                  + 0.5 * errors**2 / (np.exp(t) * epistemic + noise)) for t in grid]
    plain = float(np.exp(0.5 * grid[int(np.argmin(nll))]))
    assert 1.0 < fitted < plain


def test_values_of_one_structure_count_as_one_atom():
    """Copies of one structure's values tell no more than the structure itself."""
    errors, epistemic, noise, numbers, structures = _errors({1: 1.5, 6: 1.0}, {1: 1, 6: 1},
                                                            n_structures=20, seed=3)
    once = fit_element_scales(errors, epistemic, noise, numbers, structures)
    tiled = [np.repeat(a.reshape(-1, 3), 4, axis=0).ravel()
             for a in (errors, epistemic, noise, numbers, structures)]
    assert fit_element_scales(*tiled) == pytest.approx(once, rel=1e-5)
    assert once[1] > 1.1  # the factor is in play


def test_keys_name_elements_by_atomic_number():
    assert element_key(8) == "forces_element_8"
    assert is_element_key("forces_element_1") and is_element_key("forces_element_118")
    for key in ("forces_element_0", "forces_element_119", "energy_element_8",
                "forces_element_x", "forces_element_8_"):
        assert not is_element_key(key)
    assert scales_of({"forces": 2.0, "forces_element_6": 1.2}) == {6: 1.2}
    assert scales_of(None) == {}


def test_per_value_scales_take_atoms_or_values():
    scales = {1: 0.5, 8: 2.0}
    per_atom = per_value_scales(scales, [8, 1, 6], 9, "Test")
    np.testing.assert_array_equal(per_atom, [2, 2, 2, 0.5, 0.5, 0.5, 1, 1, 1])
    np.testing.assert_array_equal(per_value_scales(scales, np.repeat([8, 1, 6], 3), 9, "Test"),
                                  per_atom)
    with pytest.raises(ValueError, match="Test: 2 atomic numbers do not match 9 force values"):
        per_value_scales(scales, [8, 1], 9, "Test")


def _calibration_with_scales():
    return StdCalibration({"energy": 1.0, "forces": 2.0, "forces_element_1": 0.5,
                           "forces_element_8": 3.0}, None)


def test_the_calibrated_force_variance_takes_each_atoms_factor():
    calibration = _calibration_with_scales()
    post, proj = np.full((3, 3), 0.01), np.full((3, 3), 0.02)
    variance = calibration.epistemic_variance("forces", post, proj, numbers=[1, 6, 8])
    np.testing.assert_allclose(variance[:, 0], 4.0 * 0.03 * np.array([0.25, 1.0, 9.0]))
    assert variance.shape == (3, 3)
    # energies have no element factor
    assert calibration.epistemic_variance("energy", 0.01, 0.02) == pytest.approx(0.03)
    # the largest std of the fitted range is the largest factor's (no range: None)
    ranged = StdCalibration({**calibration.std_scale, "forces_lower": 0.01,
                             "forces_upper": 0.04}, None)
    assert ranged.largest_fitted_std("forces") == pytest.approx(3.0 * 2.0 * 0.2)
    assert "per element H ×0.5, O ×3" in calibration.describe("forces")


def test_force_variances_of_a_map_with_factors_need_the_numbers():
    with pytest.raises(ValueError, match="one factor per element: pass the atomic numbers"):
        _calibration_with_scales().epistemic_variance("forces", np.ones(3), np.ones(3))


def test_stored_entries_with_element_factors_are_checked():
    good = {"energy": 1.0, "forces": 1.0, "forces_element_8": 1.3}
    assert StdCalibration.check_std_scale(good, "file") == good
    for bad in ({**good, "forces_element_0": 1.0}, {**good, "forces_element_8": -1.0},
                {**good, "forces_element_8": float("inf")}):
        with pytest.raises(ValueError, match="malformed std_scale entry"):
            StdCalibration.check_std_scale(bad, "file")


@pytest.fixture(scope="module")
def default_ethanol(ethanol_frames, small_soap):
    """Default LOSO calibration, exact and sparse, on 30 ethanol frames."""
    return {method: SparseGPPotential(small_soap, method=method, random_state=0,
                                      verbose=False).fit(ethanol_frames[:30])
            for method in ("exact", "sparse")}


@pytest.mark.parametrize("method", ["exact", "sparse"])
def test_the_default_map_has_a_factor_per_element(default_ethanol, ethanol_frames, method):
    model = default_ethanol[method]
    assert set(model.element_scales()) == {1, 6, 8}
    # the factors are those the LOSO errors give, after the rest of the map
    terms = model.posterior_.loso
    numbers, structures = terms.force_atoms([a.numbers for a in ethanol_frames[:30]])
    assert numbers.size == 3 * sum(len(a) for a in ethanol_frames[:30])
    errors, post, proj, noise = terms.calibration_terms()["forces"]
    plain = StdCalibration({k: v for k, v in model.std_scale_.items()
                            if not is_element_key(k)}, None)
    refit = fit_element_scales(errors, plain.epistemic_variance("forces", post, proj),
                               plain.noise_variance("forces", noise), numbers, structures)
    assert refit == pytest.approx(model.element_scales(), rel=1e-6)
    # every std the model gives is the map's times its atom's factor
    atoms = ethanol_frames[45]
    prediction = model.predict_structure(atoms, forces=True, variance=True)
    _, std = model.predict_forces([atoms], return_std=True, std_type="epistemic")
    factor = np.array([model.element_scales()[z] for z in atoms.numbers])[:, None]
    np.testing.assert_allclose(std[0], factor * np.sqrt(plain.epistemic_variance(
        "forces", prediction.forces_var_posterior, prediction.forces_var_projection)),
        rtol=1e-10)
    with pytest.raises(ValueError, match="pass the atomic numbers"):
        model.epistemic_variance("forces", prediction.forces_var_posterior,
                                 prediction.forces_var_projection)


def test_the_factors_improve_the_fit_on_their_own_errors(default_ethanol):
    """On the LOSO errors they were fitted on, the factors can only lower the NLL
    (up to their prior)."""
    model = default_ethanol["exact"]
    terms = model.posterior_.loso
    numbers, _ = terms.force_atoms(model.posterior_.training_numbers())  # an exact model's
    errors, post, proj, noise = terms.calibration_terms()["forces"]
    plain = StdCalibration({k: v for k, v in model.std_scale_.items()
                            if not is_element_key(k)}, None)
    noise = plain.noise_variance("forces", noise)
    before = plain.epistemic_variance("forces", post, proj) + noise
    after = model.epistemic_variance("forces", post, proj, numbers) + noise
    nll = [np.mean(0.5 * np.log(v) + 0.5 * errors**2 / v) for v in (before, after)]
    assert nll[1] <= nll[0] + 1e-12


def test_save_and_load_keep_the_factors(default_ethanol, ethanol_frames, tmp_path,
        float64_factor_files):
    for method, model in default_ethanol.items():
        path = model.save(tmp_path / f"{method}.npz")
        loaded = load(path)
        assert loaded.element_scales() == model.element_scales()
        stds = [m.predict_forces(ethanol_frames[50:52], return_std=True)[1]
                for m in (model, loaded)]
        for a, b in zip(*stds, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10)


def test_calibrate_fits_factors_on_the_validation_errors(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, method="sparse", calibration=None,
                              random_state=0, verbose=False).fit(ethanol_frames[:20])
    assert model.element_scales() == {}
    model.calibrate(ethanol_frames[20:50])
    assert set(model.element_scales()) == {1, 6, 8}
    model.set_params(apply_calibration=False)
    assert model.element_scales() == {}


def test_force_atoms_refuses_numbers_that_do_not_match(default_ethanol):
    model = default_ethanol["exact"]
    numbers = model.posterior_.training_numbers()
    terms = model.posterior_.loso
    assert terms.force_atoms(None) is None
    assert terms.force_atoms([n[:-1] for n in numbers]) is None
    assert element_scales.MIN_ATOMS == MIN_ATOMS


def test_the_edge_of_the_fitted_range_is_each_elements(default_ethanol, ethanol_frames,
                                                       capsys):
    """``kernelpot md``'s beyond-the-training-data check compares each atom with its own
    element's edge, not the element with the largest factor's."""
    from types import SimpleNamespace

    from kernelpot.cli.md import BEYOND_TRAINING, _StdsWhenShown

    model = default_ethanol["sparse"]
    scales = model.element_scales()
    atoms = ethanol_frames[50]
    edges = model.largest_fitted_std("forces", numbers=atoms.numbers)
    base = model.largest_fitted_std("forces", numbers=[6])[0] / scales[6]
    np.testing.assert_allclose(edges, base * np.array([scales[z] for z in atoms.numbers]))
    assert model.largest_fitted_std("forces") == pytest.approx(
        base * max(1.0, *scales.values()))
    small = min(scales, key=scales.get)  # the element of the smallest factor
    atom = int(np.flatnonzero(atoms.numbers == small)[0])
    watch = _StdsWhenShown(model, SimpleNamespace(nsteps=7, atoms=atoms))
    stds = np.zeros((len(atoms), 3))
    stds[atom] = 1.01 * BEYOND_TRAINING * edges[atom]  # past its own edge only
    assert stds[atom, 0] < BEYOND_TRAINING * model.largest_fitted_std("forces")
    watch._watch(stds)
    assert watch.beyond == [7]
    assert f"atom {atom}'s epistemic force std" in capsys.readouterr().err
    assert "the calibrated H " in watch.summary() and " O " in watch.summary()
