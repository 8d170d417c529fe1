"""Training on stresses: labels, design rows, the likelihood's stress noise, the fit."""


import re

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import emt_strained_cells, finite_difference_gradient, finite_difference_stress

from kernelpot import SOAP, SparseGPPotential, TwoBody, gp, load
from kernelpot._labels import read_labels
from kernelpot.design import with_two_body

CU_SOAP = SOAP(["Cu"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5)


@pytest.fixture(scope="module")
def cells():
    return emt_strained_cells(14, seed=0)


@pytest.fixture(scope="module")
def stress_model(cells):
    return SparseGPPotential(CU_SOAP, two_body=TwoBody(r_cut=4.0, n_basis=6),
                             method="sparse", random_state=0).fit(cells[:8])


# -- labels ----------------------------------------------------------------------------------

def test_read_labels_reads_stresses_of_periodic_cells_only(cells):
    cell = cells[0]
    water = molecule("H2O")
    water.calc = SinglePointCalculator(water, energy=-1.0, forces=np.zeros((3, 3)),
                                       stress=np.ones(6))
    matrix = cell.copy()
    voigt = cell.get_stress()
    full = np.array([[voigt[0], voigt[5], voigt[4]], [voigt[5], voigt[1], voigt[3]],
                     [voigt[4], voigt[3], voigt[2]]])
    matrix.calc = SinglePointCalculator(matrix, energy=1.0, stress=full)
    with pytest.warns(UserWarning, match=r"structure\(s\) \[1\] carry a stress but are not "
                      r"periodic along all three axes .* theirs is not used"):
        labels = read_labels([cell, water, matrix], "Test", stress=True)
    np.testing.assert_array_equal(labels.has_stress, [True, False, True])
    np.testing.assert_array_equal(labels.stresses[0], voigt)
    np.testing.assert_allclose(labels.stresses[2], voigt, rtol=0, atol=0)
    assert read_labels([cell], "Test").stresses is None  # not asked for
    assert not read_labels([cell], "Test").has_stress.any()


@pytest.mark.parametrize(("stress", "message"), [
    (np.ones(5), r"Test: structure 0 has a stress of shape \(5,\)"),
    (np.array([0.1, 0.2, np.nan, 0, 0, 0]), "Test: structure 0 has a non-finite stress"),
    (np.arange(9.0).reshape(3, 3), "Test: structure 0 has a non-symmetric 3 x 3 stress"),
])
def test_read_labels_rejects_malformed_stresses(stress, message):
    cell = bulk("Cu", "fcc", 3.6)
    cell.calc = SinglePointCalculator(cell, energy=1.0, stress=stress)
    with pytest.raises(ValueError, match=message):
        read_labels([cell], "Test", stress=True)


# -- design rows -------------------------------------------------------------------------------

def _stress_rows(model, atoms):
    post = model.posterior_
    index = np.searchsorted(model.species_, atoms.numbers)
    result = model.descriptor_.compute(atoms, strain=True)
    rows = gp.design_rows(result, index, post.inducing, post.kernel, energy=True,
                          forces=False, columns=post.columns, n_columns=post.weights.size,
                          stress_volume=atoms.get_volume())
    return with_two_body(rows, post.two_body, atoms, index, post.n_species, post.pair_columns)


def test_stress_rows_predict_the_models_stress(stress_model, cells):
    for atoms in cells[10:12]:
        rows = _stress_rows(stress_model, atoms)
        # the prediction goes through the closed-form mean map, the rows through the
        # inducing sum: equal to round-off of the cancelling sums (measured 2e-9)
        expected = stress_model.predict_stress([atoms])[0]
        np.testing.assert_allclose(rows.stress @ stress_model.alpha_, expected, rtol=0,
                                   atol=1e-8 * np.abs(expected).max())


def test_stress_rows_equal_finite_differences_of_the_energy_row(stress_model, cells):
    """σ_v row = (1/V) ∂(energy row)/∂ε_v under r → (1 + ε) r, for every column."""
    atoms = cells[11]
    rows = _stress_rows(stress_model, atoms)
    fd = finite_difference_stress(lambda a: _stress_rows(stress_model, a).energy, atoms)
    for v in range(6):  # (n_columns, 6): column by column, each against its own scale
        np.testing.assert_allclose(rows.stress[v], fd[:, v], rtol=1e-5,
                                   atol=1e-5 * np.abs(fd[:, v]).max())


# -- the fit -----------------------------------------------------------------------------------

def test_fit_trains_on_stresses_and_learns_their_noise(stress_model, cells):
    stats = stress_model.posterior_.stats
    assert stats.n_S == 6 * 8
    assert stress_model.stress_noise_ != SparseGPPotential().stress_noise
    without = SparseGPPotential(CU_SOAP, two_body=TwoBody(r_cut=4.0, n_basis=6),
                                method="sparse", random_state=0,
                                use_stress=False).fit(cells[:8])
    assert without.posterior_.stats.n_S == 0
    assert without.stress_noise_ == SparseGPPotential().stress_noise  # not informed


def test_stress_training_predicts_new_cells_stress_better(cells):
    train, test = cells[:4], cells[8:]
    reference = np.array([a.get_stress() for a in test])
    errors = {}
    for use_stress in (True, False):
        model = SparseGPPotential(CU_SOAP, method="sparse", random_state=0,
                                  use_stress=use_stress).fit(train)
        errors[use_stress] = np.sqrt(np.mean((model.predict_stress(test) - reference)**2))
    assert errors[True] < 0.5 * errors[False], errors
    # without stress labels no σ_S was learned: the total std is the epistemic one, said so
    assert model.posterior_.n_stress_observations == 0
    with pytest.warns(UserWarning, match="trained on no stresses"):
        _, total = model.predict_stress(test, return_std=True)
    _, epistemic = model.predict_stress(test, return_std=True, std_type="epistemic")
    np.testing.assert_array_equal(total, epistemic)


def test_noisy_stress_labels_give_a_larger_stress_noise():
    fitted = {}
    for noise in (0.0, 0.003):
        frames = emt_strained_cells(10, seed=3, stress_noise=noise)
        fitted[noise] = SparseGPPotential(CU_SOAP, method="sparse",
                                          random_state=0).fit(frames).stress_noise_
    assert fitted[0.003] > 3 * fitted[0.0], fitted
    assert fitted[0.003] == pytest.approx(0.003, rel=0.6)


def test_stresses_in_other_units_and_sign_warn(cells):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    kbar = []  # the pressure in kbar, as some codes print it, stored as if eV/Å³
    for source in cells[:8]:
        atoms = source.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=source.get_potential_energy(),
                                           forces=source.get_forces(),
                                           stress=-1602.1766 * source.get_stress())
        kbar.append(atoms)
    with pytest.warns(ConvergenceWarning, match=r"stress noise σ_S = .* the energies and "
                                                r"forces do not explain the stress labels. "
                                                r"Check their units"):
        SparseGPPotential(CU_SOAP, method="sparse", random_state=0).fit(kbar)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*do not explain the stress labels")
        SparseGPPotential(CU_SOAP, method="sparse", random_state=0).fit(cells[:8])


def test_likelihood_gradient_in_the_stress_noise(stress_model):
    theta = np.log([2.0, 0.003, 0.05, 0.002])
    value, grad = stress_model.log_marginal_likelihood(theta, eval_gradient=True)
    assert grad.shape == (4,)
    # steps below 1e-4 drown in the round-off of the likelihood
    fd = finite_difference_gradient(stress_model.log_marginal_likelihood, theta, 1e-4)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4)


def test_save_load_keeps_the_stress_noise_and_statistics(stress_model, cells, tmp_path):
    loaded = load(stress_model.save(tmp_path / "stress"))
    assert loaded.stress_noise_ == stress_model.stress_noise_
    assert loaded.log_marginal_likelihood() == stress_model.log_marginal_likelihood()
    theta = np.log([1.0, 0.003, 0.05, 0.002])
    assert loaded.log_marginal_likelihood(theta) == pytest.approx(
        stress_model.log_marginal_likelihood(theta), rel=1e-12)
    np.testing.assert_array_equal(loaded.predict_stress(cells[12:13]),
                                  stress_model.predict_stress(cells[12:13]))


def _fixed(model, **params):
    """An estimator with ``model``'s fitted hyperparameters, not optimised again."""
    return SparseGPPotential(CU_SOAP, method="sparse", optimize=False, random_state=0,
                             signal_std=model.signal_std_, energy_noise=model.energy_noise_,
                             force_noise=model.force_noise_, stress_noise=model.stress_noise_,
                             e0={"Cu": float(model.e0_[0])}, **params)


def test_incremental_models_train_on_stresses_and_update_adds_them(cells, tmp_path):
    model = SparseGPPotential(CU_SOAP, method="sparse", incremental=True, n_sparse=40,
                              random_state=0).fit(cells[:4])
    assert model.posterior_.stats.n_S == 24
    assert model.posterior_.training.is_stress.sum() == 24
    model.update(cells[4:7], n_inducing="all")
    assert model.posterior_.stats.n_S == 42
    # a checkpoint keeps the stress rows: restore and update give the same model
    path = model.save(tmp_path / "checkpoint", training_state=True)
    loaded = load(path).restore_training(cells[:7])
    assert loaded.posterior_.training.is_stress.sum() == 42
    model.update(cells[7:8])
    loaded.update(cells[7:8])
    # the restored design is rebuilt from the structures: equal to round-off (2e-8)
    np.testing.assert_allclose(loaded.predict_stress(cells[12:]),
                               model.predict_stress(cells[12:]), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(loaded.predict(cells[12:]), model.predict(cells[12:]),
                               rtol=0, atol=1e-7)
    assert loaded.posterior_.loso.is_stress.sum() == 48


def test_update_with_stresses_equals_a_fit_on_all_the_data(cells):
    first = SparseGPPotential(CU_SOAP, method="sparse", incremental=True, random_state=0,
                              sparse_method="all").fit(cells[:4])
    fixed = _fixed(first, incremental=True, sparse_method="all").fit(cells[:4])
    fixed.update(cells[4:6], n_inducing="all")
    direct = _fixed(first, sparse_method="all").fit(cells[:6])
    np.testing.assert_allclose(fixed.predict_stress(cells[10:]),
                               direct.predict_stress(cells[10:]), rtol=1e-6,
                               atol=1e-9)
    # QR updates against one factorisation, with k_mm's jitter: equal to round-off
    np.testing.assert_allclose(fixed.predict(cells[10:]), direct.predict(cells[10:]),
                               rtol=0, atol=1e-7)


# -- the exact model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exact_stress_model(cells):
    return SparseGPPotential(CU_SOAP, method="exact", random_state=0).fit(cells[:6])


def test_exact_model_trains_on_stresses(exact_stress_model, cells):
    obs = exact_stress_model.posterior_.observations
    assert obs.n_stress == 36
    assert exact_stress_model.stress_noise_ != SparseGPPotential().stress_noise
    test = cells[8:]
    reference = np.array([a.get_stress() for a in test])
    without = SparseGPPotential(CU_SOAP, method="exact", random_state=0,
                                use_stress=False).fit(cells[:6])
    error = {name: np.sqrt(np.mean((m.predict_stress(test) - reference)**2))
             for name, m in (("with", exact_stress_model), ("without", without))}
    assert error["with"] < 0.7 * error["without"], error  # measured 0.52


def test_exact_stress_covariance_equals_finite_differences_of_energy_covariance(cells):
    """cov(σ_v(A), E(B)) = (1/V_A) ∂ cov(E(A), E(B)) / ∂ε_v of cell A."""
    from kernelpot import NormalizedDotProduct, exact

    kernel = NormalizedDotProduct(2)
    A, B = cells[0], cells[1]
    index = [np.zeros(len(A), int)]

    def energy_obs(atoms):
        return exact.build_observations([CU_SOAP.compute(atoms)], index, 1, [True], [False])

    stress_obs = exact.build_observations([CU_SOAP.compute(A, strain=True)], index, 1,
                                          [False], [False], [A.get_volume()])
    analytic = exact.covariance(stress_obs, energy_obs(B), kernel)[:, 0]
    fd = finite_difference_stress(
        lambda a: exact.covariance(energy_obs(a), energy_obs(B), kernel)[0, 0], A)
    # a stress observation is a "force" of the pseudo-Jacobian: F = -(-σ) = σ
    np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-9)


def test_exact_likelihood_gradient_in_the_stress_noise(exact_stress_model):
    theta = np.log([2.0, 0.003, 0.05, 0.002])
    _, grad = exact_stress_model.log_marginal_likelihood(theta, eval_gradient=True)
    fd = finite_difference_gradient(exact_stress_model.log_marginal_likelihood, theta, 1e-4)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4)


def test_exact_save_load_keeps_the_stress_observations(exact_stress_model, cells, tmp_path):
    loaded = load(exact_stress_model.save(tmp_path / "exact_stress"))
    assert loaded.posterior_.observations.n_stress == 36
    assert loaded.stress_noise_ == exact_stress_model.stress_noise_
    np.testing.assert_array_equal(loaded.predict_stress(cells[12:13]),
                                  exact_stress_model.predict_stress(cells[12:13]))
    _, std = loaded.predict_forces(cells[12:13], return_std=True)
    _, std_ref = exact_stress_model.predict_forces(cells[12:13], return_std=True)
    np.testing.assert_allclose(std[0], std_ref[0], rtol=1e-10)


def test_exact_loso_leaves_stress_rows_out_of_the_force_terms(exact_stress_model):
    loso = exact_stress_model.posterior_.loso
    assert loso.is_stress.sum() == 36
    assert len(loso.calibration_terms()["forces"][0]) == 3 * 8 * 6


def test_use_stress_must_be_a_bool(cells):
    with pytest.raises(TypeError, match="use_stress must be True or False"):
        SparseGPPotential(CU_SOAP, use_stress="yes").fit(cells[:2])


def test_loso_calibration_leaves_stress_rows_out_of_the_force_terms(stress_model):
    loso = stress_model.posterior_.loso
    assert loso.is_stress is not None and loso.is_stress.sum() == 6 * 8
    terms = loso.calibration_terms()
    n_force = 3 * sum(len(a) for a in stress_model.posterior_.training_frames) \
        if stress_model.posterior_.keeps_training_data else 3 * 8 * 8
    assert len(terms["forces"][0]) == n_force


# -- the stress std ------------------------------------------------------------------------

def test_exact_stress_variance_equals_the_dense_gp(exact_stress_model, cells):
    from kernelpot import exact

    model, atoms = exact_stress_model, cells[12]
    post = model.posterior_
    index = [np.zeros(len(atoms), int)]
    test = exact.build_observations([model.descriptor_.compute(atoms, strain=True)], index, 1,
                                    [False], [False], [atoms.get_volume()])
    sigma2 = model.signal_std_**2
    K_star = sigma2 * exact.covariance(test, post.observations, model.kernel_)
    K_ss = sigma2 * exact.covariance(test, test, model.kernel_)
    L = post.L
    V = np.linalg.solve(L, K_star.T)
    dense = np.diag(K_ss) - np.einsum("ij,ij->j", V, V)
    model.set_params(apply_calibration=False)  # the raw std: the model's own variance
    try:
        stress, std = model.predict_stress([atoms], return_std=True, std_type="epistemic")
        _, total = model.predict_stress([atoms], return_std=True)
    finally:
        model.set_params(apply_calibration=True)
    np.testing.assert_allclose(std[0]**2, dense, rtol=1e-6, atol=1e-14)
    np.testing.assert_allclose(stress[0], K_star @ post.weights, rtol=1e-8,
                               atol=1e-8 * np.abs(stress).max())
    np.testing.assert_allclose(total[0]**2, dense + model.stress_noise_**2, rtol=1e-6)
    # by default the LOSO "stress" map of the training cells applies
    assert "stress_reference" in model.std_scale_
    _, calibrated = model.predict_stress([atoms], return_std=True, std_type="epistemic")
    np.testing.assert_allclose(calibrated[0]**2, model.epistemic_variance(
        "stress", std[0]**2, np.zeros(6)), rtol=1e-10)


def test_the_stress_map_is_fitted_on_loso_stresses_and_saved(stress_model, cells, tmp_path,
        float64_factor_files):
    scale = stress_model.std_scale_
    assert {"stress", "stress_projection", "stress_noise"} <= set(scale)
    assert scale["stress"] != 1.0
    loaded = load(stress_model.save(tmp_path / "calibrated"))
    assert loaded.std_scale_ == scale
    np.testing.assert_allclose(loaded.predict_stress(cells[12:13], return_std=True)[1],
                               stress_model.predict_stress(cells[12:13], return_std=True)[1],
                               rtol=1e-10)
    without = SparseGPPotential(CU_SOAP, method="sparse", random_state=0,
                                use_stress=False).fit(cells[:8])
    assert without.std_scale_["stress"] == 1.0 and "stress_noise" not in without.std_scale_


def test_sparse_stress_std_grows_away_from_the_training_cells(stress_model, cells):
    near = cells[12]
    far = near.copy()
    far.set_cell(near.cell * 1.08, scale_atoms=True)  # 8 % expanded: outside the data
    _, std = stress_model.predict_stress([near, far], return_std=True, std_type="epistemic")
    assert np.all(std > 0)
    assert std[1].mean() > 2 * std[0].mean(), std


def test_calculator_reports_the_stress_std(stress_model, cells):
    from kernelpot import KernelPotCalculator

    atoms = cells[12].copy()
    atoms.calc = KernelPotCalculator(stress_model)
    stress = atoms.get_stress()
    expected, std = stress_model.predict_stress([atoms], return_std=True,
                                                std_type="epistemic")
    np.testing.assert_allclose(stress, expected[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(atoms.calc.results["stress_std"], std[0], rtol=1e-10)
    assert atoms.calc.results["stress_noise"] == stress_model.stress_noise_


# -- the command line --------------------------------------------------------------------------

def test_cli_fit_trains_on_the_stresses_in_the_file(cells, tmp_path, capsys):
    from ase.io import write

    from kernelpot.cli import main

    train = tmp_path / "cells.xyz"
    write(train, cells[:5])
    config = tmp_path / "small.toml"
    config.write_text("descriptor.n_max = 4\ndescriptor.l_max = 3\nn_restarts = 0\n")
    common = ["--config", str(config), "--r-cut", "4.0", "--no-train-eval", "--quiet"]
    assert main(["fit", str(train), "-o", str(tmp_path / "with.npz"), *common]) == 0
    out = capsys.readouterr().out
    assert "trained on the stresses of 5 cells: learned stress noise" in out
    with_stress = load(tmp_path / "with.npz")
    assert with_stress.posterior_.n_stress_observations == 30
    assert "stress RMSE" in out  # the LOSO errors of the fit
    assert main(["info", str(tmp_path / "with.npz")]) == 0
    out = capsys.readouterr().out
    assert "trained on 5 cells' stresses" in out and "; stress: factor" in out
    test = tmp_path / "test.xyz"
    write(test, cells[10:13])
    assert main(["eval", str(tmp_path / "with.npz"), str(test)]) == 0
    out = capsys.readouterr().out
    assert "stress (3 cells): MAE" in out and "within 1 std" in out
    assert re.search(r"stress \(3 cells\).* RMS z-score [\d.]+", out)  # sized like the others
    assert main(["fit", str(train), "-o", str(tmp_path / "without.npz"), "--no-stress",
                 *common]) == 0
    assert "trained on the stresses" not in capsys.readouterr().out
    assert load(tmp_path / "without.npz").posterior_.n_stress_observations == 0


# -- found in review ---------------------------------------------------------------------------

def test_a_model_file_from_before_stress_training_predicts_a_raw_stress_std():
    from helpers import DATA

    from kernelpot import KernelPotCalculator

    model = load(DATA / "frozen_models" / "sparse_calibrated.npz")
    assert "stress" not in model.std_scale_
    atoms = read_ethanol_box()
    stress, std = model.predict_stress([atoms], return_std=True, std_type="epistemic")
    assert np.all(np.isfinite(std)) and np.all(std > 0)
    atoms.calc = KernelPotCalculator(model)
    np.testing.assert_allclose(atoms.get_stress(), stress[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(atoms.calc.results["stress_std"], std[0], rtol=1e-10)


def read_ethanol_box():
    from ase.io import read as ase_read
    from helpers import DATA

    atoms = ase_read(DATA / "ethanol_xtb_500K_10.xyz", 0)
    atoms.set_cell([12.0, 12.0, 12.0])
    atoms.pbc = True
    atoms.center()
    return atoms


def test_calibrate_keeps_the_loso_stress_map(cells):
    model = SparseGPPotential(CU_SOAP, method="sparse", random_state=0).fit(cells[:8])
    before = {k: v for k, v in model.std_scale_.items() if k.startswith("stress")}
    assert before["stress"] != 1.0
    model.calibrate(cells[8:12])
    assert {k: v for k, v in model.std_scale_.items() if k.startswith("stress")} == before


def test_a_descriptor_that_ignores_periodicity_does_not_train_on_stresses(cells):
    soap = SOAP(["Cu"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5, periodic=False)
    with pytest.warns(UserWarning, match="periodic=False.*stresses of 4 cells are not trained"):
        model = SparseGPPotential(soap, method="sparse", random_state=0).fit(cells[:4])
    assert model.posterior_.n_stress_observations == 0


def test_the_exact_cost_estimate_counts_the_stress_observations(cells):
    with_stress = SparseGPPotential(CU_SOAP).exact_cost_estimate(cells[:5])
    without = SparseGPPotential(CU_SOAP, use_stress=False).exact_cost_estimate(cells[:5])
    assert with_stress["n_observations"] == without["n_observations"] + 30
    assert with_stress["memory_gib"] > without["memory_gib"]
