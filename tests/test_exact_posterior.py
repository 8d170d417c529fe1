"""The exact posterior: arrays round trip, checks, updates by refitting."""

import json

import numpy as np
import pytest
from ase.io import read
from helpers import DATA
from sklearn.base import clone

from kernelpot import SOAP, SparseGPPotential, SquaredExponential, gp, load
from kernelpot.exact_posterior import ExactPosterior


@pytest.fixture(scope="module")
def frames():
    return read(DATA / "ethanol_xtb_500K_60.xyz", ":")


@pytest.fixture(scope="module")
def soap():
    return SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)


@pytest.fixture(scope="module")
def exact(frames, soap):
    return SparseGPPotential(soap, method="exact", calibration=None, random_state=0,
                             n_restarts=0).fit(frames[:3])


@pytest.fixture(scope="module")
def per_element(frames, soap):
    return SparseGPPotential(soap, method="exact", signal_per_element=True, random_state=0,
                             n_restarts=0).fit(frames[:2])


def _predictions(posterior, model, frames):
    parts = [posterior.parts(model.descriptor_, atoms, np.searchsorted(model.species_,
                                                                       atoms.numbers),
                             model.e0_, True, True) for atoms in frames]
    return posterior.finish(parts)


def _file(model):
    """The posterior's arrays and metadata as a model file holds them (copies, JSON)."""
    arrays, fitted = model.posterior_.to_arrays()
    return ({k: np.array(v) for k, v in arrays.items()}, json.loads(json.dumps(fitted)))


def _load(model, arrays, fitted):
    return ExactPosterior.from_arrays(arrays, fitted, model.kernel_, model.descriptor_,
                                      model.species_, "model.npz")


@pytest.mark.parametrize("name", ["exact", "per_element"])
def test_arrays_round_trip_predicts_the_same(request, frames, soap, name):
    model = request.getfixturevalue(name)
    posterior = model.posterior_
    restored = _load(model, *_file(model))
    assert restored.kind == "exact" and restored.two_body is None
    assert restored.signal_std == posterior.signal_std
    assert restored.log_marginal_likelihood_value == posterior.log_marginal_likelihood_value
    test = frames[40:43]
    for x, y in zip(_predictions(restored, model, test), _predictions(posterior, model, test),
                    strict=True):
        np.testing.assert_allclose(x.energy, y.energy, rtol=1e-12)
        np.testing.assert_allclose(x.forces, y.forces, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(x.energy_var_posterior, y.energy_var_posterior, rtol=1e-8)
        np.testing.assert_allclose(x.forces_var_posterior, y.forces_var_posterior, rtol=1e-8,
                                   atol=1e-14)
        assert x.energy_var_projection == 0.0
        np.testing.assert_array_equal(x.forces_var_projection, 0.0)
    sigmas = np.sqrt(posterior.signal_variances()) if name == "per_element" \
        else [posterior.signal_std]
    theta = np.log([*sigmas, 0.01, 0.1, 0.001])
    value, grad = restored.log_marginal_likelihood(theta, eval_gradient=True)
    value_ref, grad_ref = posterior.log_marginal_likelihood(theta, eval_gradient=True)
    assert value == pytest.approx(value_ref, rel=1e-10)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-8, atol=1e-8)
    again = SparseGPPotential(soap).from_posterior(restored, descriptor=model.descriptor_,
                                                   species=model.species_, e0=model.e0_)
    assert again.method_ == "exact"
    e, e_std = again.predict(test, return_std=True)
    e_ref, e_std_ref = model.predict(test, return_std=True)
    np.testing.assert_allclose(e, e_ref, rtol=1e-12)
    np.testing.assert_allclose(e_std, e_std_ref, rtol=1e-8)


def test_to_arrays_holds_the_structures_not_the_jacobians(exact):
    arrays, fitted = exact.posterior_.to_arrays()
    n_obs = 3 + 3 * 27
    assert arrays["alpha"].shape == arrays["exact_y"].shape == (n_obs,)
    # the factor's lower triangle only (format 9): half the square's size
    assert arrays["exact_L_tril"].shape == (n_obs * (n_obs + 1) // 2,)
    assert "exact_L" not in arrays
    np.testing.assert_array_equal(arrays["exact_L_tril"],
                                  exact.posterior_.L[np.tril_indices(n_obs)])
    assert {k for k in arrays if k.startswith("exact_structures_")} == {
        f"exact_structures_{n}" for n in ("n_atoms", "numbers", "positions", "cells", "pbc",
                                          "has_energy", "has_forces")}
    assert fitted["method"] == "exact" and fitted["stats"] is None
    assert fitted["jitter"] == 0.0
    # the file holds the structures either way: with the training state, the same arrays
    state, _ = exact.posterior_.to_arrays(training_state=True)
    assert state.keys() == arrays.keys()


@pytest.mark.parametrize("missing", ["exact_L_tril", "exact_y", "exact_structures_positions"])
def test_from_arrays_names_missing_arrays(exact, missing):
    arrays, fitted = _file(exact)
    del arrays[missing]
    name = missing.removeprefix("exact_structures_")
    with pytest.raises(ValueError, match=f"load: model.npz is an exact model without "
                                         f".*'{name}'"):
        _load(exact, arrays, fitted)


def test_from_arrays_reads_the_square_factor_of_earlier_files_and_checks_the_packed_one(
        exact, frames):
    arrays, fitted = _file(exact)
    n_obs = len(arrays["alpha"])
    square = dict(arrays)
    square["exact_L"] = gp.unpack_lower(square.pop("exact_L_tril"), n_obs, "model.npz")
    packed, squared = (_predictions(_load(exact, a, fitted), exact, frames[40:42])
                       for a in (arrays, square))
    for x, y in zip(packed, squared, strict=True):  # the same factor, bit for bit
        np.testing.assert_array_equal(x.forces_var_posterior, y.forces_var_posterior)
        np.testing.assert_array_equal(x.energy_var_posterior, y.energy_var_posterior)
    arrays["exact_L_tril"] = arrays["exact_L_tril"][:-1]
    with pytest.raises(ValueError, match="load: model.npz holds exact-model arrays that do "
                                         f"not match its {n_obs} training observations"):
        _load(exact, arrays, fitted)


@pytest.mark.parametrize(("key", "change"), [
    ("alpha", lambda a: a[:-1]),
    ("exact_y", lambda a: np.concatenate([a, [1.0]])),
    # the stored structures say one fewer force set: fewer observations than the arrays
    ("exact_structures_has_forces", lambda a: np.array([True, False, True])),
    ("exact_structures_has_energy", lambda a: np.array([True, True, False])),
])
def test_from_arrays_rejects_arrays_that_do_not_match_the_observations(exact, key, change):
    arrays, fitted = _file(exact)
    arrays[key] = change(arrays[key])
    with pytest.raises(ValueError, match="load: model.npz holds exact-model arrays that do "
                                         "not match its .* training observations"):
        _load(exact, arrays, fitted)


@pytest.mark.parametrize("signal_std", [True, 0.0, -2.0, "2.0", None,
                                        {"H": 1.0, "C": 1.0},
                                        {"H": 1.0, "C": 1.0, "O": 1.0, "N": 1.0},
                                        {"H": 1.0, "C": -1.0, "O": 1.0}])
def test_from_arrays_rejects_a_malformed_signal_std(exact, signal_std):
    arrays, fitted = _file(exact)
    fitted["signal_std"] = signal_std
    with pytest.raises(ValueError, match="load: model.npz has a malformed signal_std entry"):
        _load(exact, arrays, fitted)


def test_per_element_signal_stds_are_a_dict(per_element):
    sigma = per_element.posterior_.signal_std
    assert isinstance(sigma, dict) and set(sigma) == {"H", "C", "O"}
    np.testing.assert_allclose(per_element.posterior_.signal_variances(),
                               [sigma["H"] ** 2, sigma["C"] ** 2, sigma["O"] ** 2], rtol=1e-15)


def test_every_exact_fit_keeps_its_structures_and_a_loaded_one_gets_them_back(
        exact, frames, tmp_path):
    """incremental=False (the default) too: update refits an exact model on them."""
    assert exact.posterior_.keeps_training_data and len(exact.posterior_.training_frames) == 3
    loaded = load(exact.save(tmp_path / "exact.npz"))
    with pytest.raises(ValueError, match="Owner: this exact model keeps no training "
                                         r"structures.*restore_training\(frames\)"):
        loaded.posterior_.check_updatable("Owner")
    with pytest.raises(ValueError, match="keeps no training structures"):
        loaded.update(frames[10:11])
    with pytest.raises(ValueError, match="save: training_state=True needs the model's "
                                         "training structures"):
        loaded.save(tmp_path / "state.npz", training_state=True)
    with pytest.raises(ValueError, match="Owner: an exact model restores a checked training"):
        loaded.posterior_.restore_training(frames[:3], None, "Owner")
    with pytest.raises(ValueError, match="not the 3 the model was fitted on"):
        loaded.restore_training(frames[3:6])
    given = [atoms.copy() for atoms in frames[:3]]
    for atoms, source in zip(given, frames[:3], strict=True):
        atoms.calc = source.calc
    loaded.restore_training(given)
    assert all(kept is not atoms for kept, atoms in zip(loaded.posterior_.training_frames,
                                                        given, strict=True))
    given[0].positions += 0.2  # the caller's objects move on: the model's copies do not
    loaded.update(frames[10:11])
    refitted = clone(exact).fit(frames[:3]).update(frames[10:11])
    assert loaded.posterior_.n_training_structures == 4
    np.testing.assert_allclose(loaded.predict_forces(frames[20:22]),
                               refitted.predict_forces(frames[20:22]), rtol=1e-8, atol=1e-10)


def _e0(model):
    return dict(zip(["H", "C", "O"], model.e0_, strict=True))  # species_ order: H, C, O


def test_an_incremental_exact_model_updates_by_refitting_on_all_structures(frames, soap):
    """An update is the exact fit on every structure, at the fitted hyperparameters (and
    reference energies) unless it re-optimises them."""
    model = SparseGPPotential(soap, method="exact", incremental=True, random_state=0,
                              n_restarts=0).fit(frames[:4])
    model.update(frames[4:7])
    assert model.posterior_.n_training_structures == 7
    fresh = SparseGPPotential(soap, method="exact", optimize=False, e0=_e0(model),
                              signal_std=model.signal_std_, energy_noise=model.energy_noise_,
                              force_noise=model.force_noise_).fit(frames[:7])
    for a, b in zip(model.predict_forces(frames[40:42]), fresh.predict_forces(frames[40:42]),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.predict(frames[40:42]), fresh.predict(frames[40:42]),
                               rtol=1e-12)
    sigma = model.signal_std_
    model.update(frames[7:9], optimize=True)
    assert model.signal_std_ != sigma and model.posterior_.n_training_structures == 9
    assert model.std_scale_ is not None and model.interval_kind_ == "loso"


def test_auto_starts_exact_and_becomes_sparse_once_the_data_pass_its_limits(frames, soap,
                                                                         caplog):
    """On-the-fly learning with method="auto": exact while cheap, then the sparse model on
    every structure (once), at the exact model's hyperparameters and reference energies."""
    from kernelpot import KernelPotCalculator

    # a limit between the estimates of 5 and 7 structures
    limit = np.mean([SparseGPPotential(soap).exact_cost_estimate(frames[:n])
                     ["prediction_ms_per_atom"] for n in (5, 7)])
    model = SparseGPPotential(soap, incremental=True, random_state=0, n_restarts=0,
                              exact_prediction_limit=limit).fit(frames[:3])
    assert model.method_ == "exact"
    model.update(frames[3:5])  # 5 structures: within the limit
    assert model.method_ == "exact" and model.posterior_.n_training_structures == 5
    exact = {name: getattr(model, f"{name}_") for name in ("signal_std", "energy_noise",
                                                           "force_noise")}
    e0 = _e0(model)
    with caplog.at_level("INFO", logger="kernelpot.estimator"):
        model.update(frames[5:7])
    assert model.method_ == "sparse" and "the exact model passed the limits" in caplog.text
    assert "method='auto' turns 'sparse'" in caplog.text
    assert model.get_params()["method"] == "auto"
    # the exact model's hyperparameters and reference energies, not the defaults
    assert {name: getattr(model, f"{name}_") for name in exact} == pytest.approx(exact)
    assert _e0(model) == pytest.approx(e0)
    fresh = SparseGPPotential(soap, method="sparse", incremental=True, optimize=False,
                              e0=e0, random_state=0, **exact).fit(frames[:7])
    assert model.n_inducing_ == fresh.n_inducing_
    for a, b in zip(model.predict_forces(frames[40:42], return_std=True)[1],
                    fresh.predict_forces(frames[40:42], return_std=True)[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8)
    np.testing.assert_allclose(model.predict(frames[40:42]), fresh.predict(frames[40:42]),
                               rtol=1e-10)
    # later updates are the sparse model's low-rank ones; the calculator follows
    model.update(frames[7:8], n_inducing="all")
    assert model.method_ == "sparse" and model.posterior_.kind == "sparse"
    atoms = frames[41].copy()
    atoms.calc = KernelPotCalculator(model)
    assert np.all(np.isfinite(atoms.get_forces()))


def test_the_switch_to_sparse_keeps_the_inducing_cap_and_values_fitted_at_a_bound(frames,
                                                                                soap):
    from ase.calculators.singlepoint import SinglePointCalculator

    def scaled(atoms):  # labels 50 times larger: the signal std wants far more than 10
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=50 * atoms.get_potential_energy(),
                                          forces=50 * atoms.get_forces())
        return copy

    cells = [scaled(atoms) for atoms in frames[:7]]
    limit = np.mean([SparseGPPotential(soap).exact_cost_estimate(cells[:n])
                     ["prediction_ms_per_atom"] for n in (3, 6)])  # between 3 and 6 cells
    # a signal std fitted at its upper bound comes back from log space a rounding past
    # it (exp(log(10)) = 10.000000000000002), which the sparse refit's checks refused
    model = SparseGPPotential(soap, incremental=True, random_state=0, n_restarts=0,
                              signal_std_bounds=(1e-2, 10.0),
                              exact_prediction_limit=limit).fit(cells[:3])
    assert model.method_ == "exact" and model.signal_std_ == pytest.approx(10.0)
    model.update(cells[3:6], optimize=True, max_inducing={"H": 10})
    assert model.method_ == "sparse"
    assert model.n_inducing_["H"] == 10 and model.n_inducing_["C"] == 12  # 6 × 2 C atoms
    model.update(cells[6:7], n_inducing="all", max_inducing={"H": 10})
    assert model.n_inducing_["H"] == 10


def test_an_incremental_exact_model_restores_its_training_structures(frames, soap, tmp_path):
    from kernelpot import load

    model = SparseGPPotential(soap, method="exact", incremental=True, random_state=0,
                              n_restarts=0).fit(frames[:5])
    loaded = load(model.save(tmp_path / "model.npz", training_state=True))
    assert not loaded.posterior_.keeps_training_data
    with pytest.raises(ValueError, match="restore_training: these 5 structures are not the 5"):
        loaded.restore_training(frames[1:6])
    relabelled = [a.copy() for a in frames[:5]]
    for a, b in zip(relabelled, frames[:5], strict=True):
        a.calc = type(b.calc)(a, energy=b.get_potential_energy() + 0.1, forces=b.get_forces())
    with pytest.raises(ValueError, match="labels are not the ones the model was fitted on"):
        loaded.restore_training(relabelled)
    loaded.restore_training(frames[:5])
    assert loaded.posterior_.keeps_training_data
    np.testing.assert_array_equal(loaded.predict_forces(frames[40:41])[0],
                                  model.predict_forces(frames[40:41])[0])
    loaded.update(frames[5:6])
    model.update(frames[5:6])
    np.testing.assert_allclose(loaded.predict_forces(frames[40:41])[0],
                               model.predict_forces(frames[40:41])[0], rtol=0, atol=1e-10)


def test_fixed_hyperparameters_are_kept_exactly(frames, soap):
    given = {"signal_std": 0.1, "energy_noise": 0.003, "force_noise": 0.05}
    model = SparseGPPotential(soap, method="exact", optimize=["force_noise"],
                              **given).fit(frames[:2])
    assert model.signal_std_ == given["signal_std"]  # exact: never exp(log(x))
    assert model.energy_noise_ == given["energy_noise"]
    assert model.force_noise_ != given["force_noise"]


def test_kernel_search_is_refused(frames, soap):
    model = SparseGPPotential(soap, SquaredExponential(1.0), method="exact",
                              optimize=["kernel", "signal_std"])
    with pytest.raises(ValueError, match="method='exact' keeps the kernel's hyperparameters"):
        model.fit(frames[:2])


def test_finish_without_variance_and_empty(exact, frames):
    posterior = exact.posterior_
    atoms = frames[45]
    index = np.searchsorted(exact.species_, atoms.numbers)
    mean = posterior.parts(exact.descriptor_, atoms, index, exact.e0_, True, False)
    assert mean.variance_rows == 0
    energy = posterior.parts(exact.descriptor_, atoms, index, exact.e0_, False, "energy")
    assert energy.variance_rows == 1
    out = posterior.finish([mean, energy])
    assert out[0].energy_var_posterior is None
    assert out[1].energy_var_posterior > 0 and out[1].forces_var_posterior is None
    assert posterior.finish([]) == []
    local = posterior.local_energies(exact.descriptor_, atoms, index)
    np.testing.assert_allclose((local + exact.e0_[index]).sum(), mean.energy, rtol=1e-12)
