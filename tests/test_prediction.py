"""Prediction: parts, batched variances, and the estimator's predict* methods."""

import numpy as np
import pytest
from ase.io import read
from helpers import DATA
from scipy.stats import norm

import kernelpot.prediction
from kernelpot import SOAP, SparseGPPotential
from kernelpot.calibration import StdCalibration
from kernelpot.prediction import Prediction, PredictionParts


@pytest.fixture(scope="module")
def frames():
    return read(DATA / "ethanol_xtb_500K_60.xyz", ":")


@pytest.fixture(scope="module")
def soap():
    return SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)


@pytest.fixture(scope="module")
def sparse(frames, soap):
    return SparseGPPotential(soap, n_sparse=8, calibration=None, random_state=0,
                             n_restarts=0, method="sparse").fit(frames[:6])


@pytest.fixture(scope="module")
def exact(frames, soap):
    return SparseGPPotential(soap, method="exact", calibration=None, random_state=0,
                             n_restarts=0).fit(frames[:3])


def test_without_variance_keeps_the_mean():
    forces, local, stress = np.ones((2, 3)), np.array([1.0, 2.0]), np.arange(6.0)
    parts = PredictionParts(3.0, forces, local, stress, variance_rows=7, variance_input="x")
    prediction = parts.without_variance()
    assert isinstance(prediction, Prediction)
    assert prediction.energy == 3.0
    assert prediction.forces is forces and prediction.local_energies is local
    assert prediction.stress is stress
    assert prediction[2:6] == (None, None, None, None)
    assert Prediction(1.0, None, None, None, None, None, local).stress is None
    assert PredictionParts(1.0, None, local, None).variance_input is None


class _CountingPosterior:
    """Wraps a posterior, recording the structures of every ``finish`` call."""

    def __init__(self, posterior):
        self.posterior = posterior
        self.batches = []

    def __getattr__(self, name):
        return getattr(self.posterior, name)

    def finish(self, parts):
        self.batches.append(len(parts))
        return self.posterior.finish(parts)


@pytest.mark.parametrize("model_name", ["sparse", "exact"])
def test_variance_batches_do_not_change_the_stds(request, frames, monkeypatch, model_name):
    model = request.getfixturevalue(model_name)
    # the exact variance σ² k** - k*ᵀ K_y⁻¹ k* cancels: round-off of other block shapes
    # shows at 1e-11 relative in its small stds
    rtol = 1e-12 if model_name == "sparse" else 1e-9
    test = frames[40:47]
    energies, forces, e_std, f_std = model.predict_energies_and_forces(test, return_std=True)
    only_e, only_e_std = model.predict(test, return_std=True)
    counting = _CountingPosterior(model.posterior_)
    monkeypatch.setattr(model, "posterior_", counting)
    monkeypatch.setattr(kernelpot.prediction, "_VARIANCE_BATCH_ROWS", 60)  # 28 per structure
    energies_b, forces_b, e_std_b, f_std_b = model.predict_energies_and_forces(
        test, return_std=True)
    assert counting.batches == [3, 3, 1]  # a batch closes once it holds 60 rows or more
    np.testing.assert_allclose(e_std_b, e_std, rtol=rtol)
    for a, b in zip(f_std_b, f_std, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol)
    np.testing.assert_allclose(energies_b, energies, rtol=1e-14)
    for a, b in zip(forces_b, forces, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # energy variances: one row per structure, one structure per batch
    counting.batches.clear()
    monkeypatch.setattr(kernelpot.prediction, "_VARIANCE_BATCH_ROWS", 1)
    only_e_b, only_e_std_b = model.predict(test, return_std=True)
    assert counting.batches == [1] * 7 + [0]
    np.testing.assert_allclose(only_e_std_b, only_e_std, rtol=rtol)
    np.testing.assert_allclose(only_e_b, only_e, rtol=1e-14)


def test_energy_and_force_stds_agree_between_methods(sparse, frames):
    test = frames[40:44]
    energies, forces, e_std, f_std = sparse.predict_energies_and_forces(test, return_std=True)
    e_alone, e_std_alone = sparse.predict(test, return_std=True)
    f_alone, f_std_alone = sparse.predict_forces(test, return_std=True)
    np.testing.assert_allclose(energies, e_alone, rtol=1e-12)
    np.testing.assert_allclose(e_std, e_std_alone, rtol=1e-10)
    for a, b, c, d in zip(forces, f_alone, f_std, f_std_alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(c, d, rtol=1e-10)


def test_total_std_adds_the_learned_noise(sparse, frames):
    test = frames[40:44]
    _, total = sparse.predict(test, return_std=True)
    _, epistemic = sparse.predict(test, return_std=True, std_type="epistemic")
    np.testing.assert_allclose(total**2 - epistemic**2, sparse.energy_noise_**2 * 9,
                               rtol=1e-8)
    _, f_total = sparse.predict_forces(test, return_std=True)
    _, f_epistemic = sparse.predict_forces(test, return_std=True, std_type="epistemic")
    for a, b in zip(f_total, f_epistemic, strict=True):
        np.testing.assert_allclose(a**2 - b**2, sparse.force_noise_**2, rtol=1e-8)
    structure = sparse.predict_structure(test[0], variance=True)
    np.testing.assert_allclose(epistemic[0] ** 2, structure.energy_var_posterior
                               + structure.energy_var_projection, rtol=1e-10)
    np.testing.assert_allclose(f_epistemic[0] ** 2, structure.forces_var_posterior
                               + structure.forces_var_projection, rtol=1e-10)


def test_predicted_stds_follow_the_calibration(sparse, frames, soap):
    test = frames[40:43]
    raw = sparse.predict_structure(test[0], variance=True)
    scale = {"energy": 2.0, "energy_projection": 0.5, "energy_noise": 3.0,
             "forces": 0.7, "forces_exponent": 1.4, "forces_reference": 0.05,
             "forces_noise": 0.5}
    calibrated = SparseGPPotential(soap, method="sparse").from_posterior(
        sparse.posterior_, descriptor=sparse.descriptor_, species=sparse.species_,
        e0=sparse.e0_, calibration=StdCalibration(scale, None))
    _, e_std = calibrated.predict(test[:1], return_std=True)
    expected = 4.0 * (raw.energy_var_posterior + 0.25 * raw.energy_var_projection) \
        + 9.0 * sparse.energy_noise_**2 * 9
    np.testing.assert_allclose(e_std[0] ** 2, expected, rtol=1e-10)
    _, f_std = calibrated.predict_forces(test[:1], return_std=True)
    u = raw.forces_var_posterior + raw.forces_var_projection
    expected = 0.49 * 0.05 * (u / 0.05) ** 1.4 + 0.25 * sparse.force_noise_**2
    np.testing.assert_allclose(f_std[0] ** 2, expected, rtol=1e-10)
    # the same posterior without the calibration applied: raw stds
    calibrated.set_params(apply_calibration=False)
    _, e_raw = calibrated.predict(test[:1], return_std=True)
    _, e_sparse = sparse.predict(test[:1], return_std=True)
    np.testing.assert_allclose(e_raw, e_sparse, rtol=1e-12)


def test_gaussian_intervals_before_calibration(sparse, frames):
    test = frames[40:43]
    with pytest.warns(UserWarning, match="no calibration scores for energy"):
        energies, std, interval = sparse.predict(test, return_std=True, return_interval=0.9)
    half = norm.ppf(0.95) * std
    np.testing.assert_allclose(interval, np.column_stack([energies - half, energies + half]),
                               rtol=1e-12)
    with pytest.warns(UserWarning, match="no calibration scores for forces"):
        forces, f_std, f_interval = sparse.predict_forces(test, return_std=True,
                                                          return_interval=0.9)
    for f, s, i in zip(forces, f_std, f_interval, strict=True):
        assert i.shape == (9, 3, 2)
        np.testing.assert_allclose(i.mean(axis=-1), f, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(i[..., 1] - i[..., 0], 2 * norm.ppf(0.95) * s, rtol=1e-12)


def test_predict_structure_variance_options(sparse, frames):
    atoms = frames[41]
    mean = sparse.predict_structure(atoms)
    assert mean.energy_var_posterior is None and mean.forces_var_posterior is None
    assert mean.forces.shape == (9, 3) and mean.stress is None
    energy_only = sparse.predict_structure(atoms, variance="energy")
    assert energy_only.energy_var_posterior > 0 and energy_only.energy_var_projection >= 0
    assert energy_only.forces_var_posterior is None
    both = sparse.predict_structure(atoms, variance=True)
    assert both.forces_var_posterior.shape == (9, 3)
    np.testing.assert_allclose(both.energy_var_posterior, energy_only.energy_var_posterior,
                               rtol=1e-10)
    np.testing.assert_allclose(both.energy, mean.energy, rtol=1e-14)
    no_forces = sparse.predict_structure(atoms, forces=False, variance=True)
    assert no_forces.forces is None and no_forces.forces_var_posterior is None
    np.testing.assert_allclose(no_forces.local_energies.sum(), mean.energy, rtol=1e-12)
    np.testing.assert_allclose(sparse.predict_local_energies([atoms])[0],
                               mean.local_energies, rtol=1e-12)


def test_prediction_input_errors(sparse, frames):
    atoms = frames[41]
    with pytest.raises(ValueError, match="variance must be True, False or 'energy'"):
        sparse.predict_structure(atoms, variance="forces")
    with pytest.raises(TypeError, match="stress must be True or False"):
        sparse.predict_structure(atoms, stress="yes")
    with pytest.raises(ValueError, match="std_type must be 'total' or 'epistemic'"):
        sparse.predict([atoms], return_std=True, std_type="aleatoric")
    with pytest.raises(ValueError, match="stress needs a structure periodic"):
        sparse.predict_stress([atoms])
    nitrogen = atoms.copy()
    nitrogen.numbers[0] = 7
    with pytest.raises(ValueError, match=r"structure 1 contains elements the model was not "
                                         r"trained on: \['N'\]"):  # which one, in a list
        sparse.predict([atoms, nitrogen])
    with pytest.raises(ValueError, match=r"the structure contains elements the model was not"):
        sparse.predict_structure(nitrogen)
    with pytest.raises(TypeError, match="got a single Atoms"):
        sparse.predict(atoms)


def _close_copper(rattle_seed=None):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
    atoms.positions[5] = atoms.positions[0] + [0.3, 0.0, 0.0]
    if rattle_seed is not None:
        atoms.positions += np.random.default_rng(rattle_seed).normal(0, 0.01, (32, 3))
    return atoms


def _copper_model(**params):
    from helpers import emt_copper_frames

    from kernelpot import ACSF, SparseGPPotential

    return SparseGPPotential(ACSF.from_grid(["Cu"], 4.0, n_radial=6, n_angular=4),
                             random_state=0, n_restarts=0, method="sparse", **params).fit(
        emt_copper_frames(3, seed=1, rattle=0.05))


def test_prediction_warns_on_atoms_closer_than_min_distance(caplog):
    """fit refuses such structures; a prediction warns once per model naming the pair and
    logs every later case (MD would repeat it every step); ordinary structures say
    nothing, and with min_distance=None the warning of a pair closer than the training
    pairs takes over."""
    import logging
    import warnings

    from ase.build import bulk

    from kernelpot import KernelPotCalculator

    model = _copper_model()
    close = _close_copper()
    with pytest.warns(UserWarning, match=r"predict_forces: atoms 0 and 5 are 0\.300 Å "
                                         r"apart, closer than min_distance=0\.5"):
        model.predict_forces([close], return_std=True)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="kernelpot"):
        warnings.simplefilter("error")
        model.predict([close, _close_copper(1)])  # warned already: logged only
    assert caplog.text.count("closer than min_distance") == 2
    fresh = _copper_model()
    atoms = _close_copper()
    atoms.calc = KernelPotCalculator(fresh)
    with pytest.warns(UserWarning, match=r"predict_structure: atoms 0 and 5 are 0\.300 Å"):
        atoms.get_forces()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(3):  # the next MD steps
            atoms.positions += np.random.default_rng(seed).normal(0, 0.001, (32, 3))
            atoms.get_forces()
        fresh.predict([bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)], return_std=True)
    # without min_distance the pair is still far closer than any training pair
    with pytest.warns(UserWarning, match=r"predict: atoms 0 and 5 \(Cu–Cu\) are 0\.300 Å "
                                         r"apart, 8\d\.\d % closer than any training Cu–Cu"):
        _copper_model(min_distance=None).predict([close])
    with pytest.warns(UserWarning, match=r"predict_local_energies: atoms 0 and 5 are 0\.300"):
        _copper_model().predict_local_energies([close])


def test_close_contact_warning_reaches_the_caller_from_joblib_workers():
    model = _copper_model(n_jobs=2)
    with pytest.warns(UserWarning, match=r"predict: atoms 0 and 5 are 0\.3"):
        model.predict([_close_copper(1), _close_copper()])


def test_update_takes_close_contacts_without_the_prediction_warning():
    """update trains on what an on-the-fly run labelled, close contacts included."""
    import warnings

    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    model = _copper_model(incremental=True)
    labelled = _close_copper()
    labelled.calc = EMT()
    labelled.calc = SinglePointCalculator(labelled, energy=labelled.get_potential_energy(),
                                          forces=labelled.get_forces())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.update([labelled])
