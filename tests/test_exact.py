"""Exact force-domain GP: covariance blocks, likelihood, posterior, estimator surface."""

import numpy as np
import pytest
from helpers import (
    assert_symmetries,
    emt_copper_frames,
    exact_observations,
    numerical_forces,
    relative_error,
)
from sklearn.base import clone
from sklearn.model_selection import KFold, cross_val_score

from kernelpot import SOAP, SparseGPPotential, TwoBody, exact, load
from kernelpot.kernels import NormalizedDotProduct, SquaredExponential

SPECIES = np.array([1, 6, 8])
KERNELS = [NormalizedDotProduct(2), SquaredExponential(3.0),
           NormalizedDotProduct(2) + 0.3 * SquaredExponential(2.0)]
KERNEL_IDS = ["ndp", "se", "ndp+se"]


def _observations(descriptor, frames, energy=True, forces=True):
    return exact_observations(descriptor, frames, SPECIES, energy, forces)


@pytest.fixture(scope="module")
def fitted_exact(ethanol_frames, small_soap):
    return SparseGPPotential(small_soap, method="exact", n_restarts=0, calibration=None,
                             random_state=0).fit(ethanol_frames[:20])


# -- covariance blocks -------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_covariance_blocks_equal_finite_differences(kernel, ethanol_frames, small_soap):
    """cov(E_A, F_B) = -∂cov(E_A, E_B)/∂r_B and cov(F_A, F_B) = -∂cov(F_A, E_B)/∂r_B."""
    A, B = ethanol_frames[0], ethanol_frames[7]
    obs_A = _observations(small_soap, [A])
    K = exact.covariance(obs_A, _observations(small_soap, [B]), kernel)
    h = 1e-5
    fd = np.zeros((1 + 3 * len(A), 3 * len(B)))
    for jc in range(3 * len(B)):
        plus, minus = B.copy(), B.copy()
        plus.positions.flat[jc] += h
        minus.positions.flat[jc] -= h
        K_plus = exact.covariance(obs_A, _observations(small_soap, [plus], forces=False), kernel)
        K_minus = exact.covariance(obs_A, _observations(small_soap, [minus], forces=False),
                                   kernel)
        fd[:, jc] = -(K_plus[:, 0] - K_minus[:, 0]) / (2 * h)
    assert relative_error(K[0, 1:], fd[0]) < 1e-6  # energy–force
    assert relative_error(K[1:, 1:], fd[1:]) < 1e-6  # force–force
    # force–energy block of the other order is the transpose of the swapped call
    K_swapped = exact.covariance(_observations(small_soap, [B]), obs_A, kernel)
    np.testing.assert_allclose(K_swapped.T, K, rtol=1e-10, atol=1e-12)


def test_symmetric_assembly_matches_the_general_one(ethanol_frames, small_soap):
    kernel = NormalizedDotProduct(2)
    frames = ethanol_frames[:4]
    results = [small_soap.compute(a) for a in frames]
    index = [np.searchsorted(SPECIES, a.numbers) for a in frames]
    # mixed labels: a structure without energy, one without forces
    obs = exact.build_observations(results, index, 3, [True, False, True, True],
                                   [True, True, False, True])
    assert obs.n_energy == 3 and obs.n_force == 3 * 9 * 3
    general = exact.covariance(obs, obs, kernel)
    fast = exact.covariance(obs, obs, kernel, symmetric=True)
    np.testing.assert_allclose(fast, general, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(general, general.T, rtol=1e-12, atol=1e-12)
    assert np.linalg.eigvalsh(general).min() > -1e-8 * np.abs(general).max()


def test_chunked_assembly_matches(ethanol_frames, small_soap, monkeypatch):
    kernel = NormalizedDotProduct(2)
    obs = _observations(small_soap, ethanol_frames[:3])
    whole = exact.covariance(obs, obs, kernel, symmetric=True)
    monkeypatch.setattr(exact, "_CHUNK_ENTRIES", 1000)  # many small chunks
    np.testing.assert_allclose(exact.covariance(obs, obs, kernel, symmetric=True), whole,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(exact.covariance(obs, obs, kernel), whole, rtol=1e-12,
                               atol=1e-12)


# -- likelihood ----------------------------------------------------------------------------
@pytest.mark.parametrize("per_element", [False, True], ids=["one-sigma", "sigma-per-element"])
def test_log_marginal_likelihood_gradient(per_element, ethanol_frames, small_soap):
    obs = _observations(small_soap, ethanol_frames[:3])
    K0 = exact.prior_covariance(obs, NormalizedDotProduct(2), per_element=per_element)
    y = np.random.default_rng(0).normal(size=obs.n_obs)
    sigmas = [0.7, 1.5, 2.5] if per_element else [1.5]
    theta = np.log(sigmas + [0.01, 0.2, 0.001])
    value, gradient = exact.log_marginal_likelihood(theta, K0, y, obs, eval_gradient=True)
    assert gradient.shape == theta.shape
    h = 1e-5
    for k in range(len(theta)):
        step = np.zeros(len(theta))
        step[k] = h
        fd = (exact.log_marginal_likelihood(theta + step, K0, y, obs)
              - exact.log_marginal_likelihood(theta - step, K0, y, obs)) / (2 * h)
        assert gradient[k] == pytest.approx(fd, rel=1e-5, abs=1e-6)
    # against the dense Gaussian log density
    from scipy.stats import multivariate_normal

    K_y = exact.signal_covariance(K0, theta) + np.diag(exact.noise_variances(theta, obs))
    assert value == pytest.approx(multivariate_normal(cov=K_y).logpdf(y), rel=1e-9)
    if per_element:
        np.testing.assert_allclose(sum(K0), exact.prior_covariance(obs, NormalizedDotProduct(2)),
                                   rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="expected 6 log hyperparameters"):
            exact.log_marginal_likelihood(theta[1:], K0, y, obs)


# -- posterior: the fast mean and the variances against the dense formulas ------------------
def test_posterior_matches_dense_gp(fitted_exact, ethanol_frames, small_soap):
    model = fitted_exact
    test = ethanol_frames[40]
    post = model.posterior_
    obs_test = _observations(small_soap, [test])
    sigma2 = model.signal_std_**2
    K_star = sigma2 * exact.covariance(obs_test, post.observations, model.kernel_)
    mean = K_star @ post.weights
    prediction = model.predict_structure(test, variance=True)
    e0 = model.e0_[np.searchsorted(model.species_, test.numbers)].sum()
    assert prediction.energy == pytest.approx(mean[0] + e0, rel=1e-10)
    np.testing.assert_allclose(prediction.forces.ravel(), mean[1:], rtol=1e-7, atol=1e-9)
    K_ss = sigma2 * exact.covariance(obs_test, obs_test, model.kernel_)
    K_y = sigma2 * model.posterior_.prior_covariance() + np.diag(exact.noise_variances(
        np.log([model.signal_std_, model.energy_noise_, model.force_noise_,
                model.stress_noise_]),
        post.observations))
    var = np.diag(K_ss) - np.einsum("ij,ji->i", K_star, np.linalg.solve(K_y, K_star.T))
    assert prediction.energy_var_posterior == pytest.approx(var[0], rel=1e-5, abs=1e-12)
    np.testing.assert_allclose(prediction.forces_var_posterior.ravel(), var[1:], rtol=1e-5,
                               atol=1e-12)
    assert prediction.energy_var_projection == 0.0
    assert np.all(prediction.forces_var_projection == 0.0)


# -- physics of the fitted model ---------------------------------------------------------------
def test_forces_are_minus_energy_gradient(fitted_exact, ethanol_frames):
    atoms = ethanol_frames[45].copy()
    forces = fitted_exact.predict_forces([atoms])[0]
    fd = numerical_forces(fitted_exact, atoms, range(len(atoms)), h=1e-4)
    np.testing.assert_allclose(forces, fd, rtol=1e-5, atol=1e-5)


def test_periodic_exact_forces_are_minus_energy_gradient():
    frames = emt_copper_frames(4, seed=5, rattle=0.15)
    model = SparseGPPotential(SOAP(["Cu"], 4.0, n_max=3, l_max=2, sigma=0.5), method="exact",
                              n_restarts=0, random_state=0).fit(frames[:3])
    forces = model.predict_forces([frames[3]])[0]
    # the likelihood puts σ at its bound on three frames: large energies, so a larger
    # step keeps round-off (not truncation) below the tolerance
    fd = numerical_forces(model, frames[3], [0, 9], h=1e-3)
    np.testing.assert_allclose(forces[[0, 9]], fd, rtol=1e-5, atol=3e-5)


def test_invariances_and_equivariance(fitted_exact, ethanol_frames):
    assert_symmetries(fitted_exact, ethanol_frames[50], euler=(0.3, -0.9, 1.1), seed=1)


def test_size_extensivity(fitted_exact, ethanol_frames):
    atoms = ethanol_frames[41]
    far = atoms.copy()
    far.positions += np.array([40.0, 0.0, 0.0])
    pair = atoms + far
    e1, e2 = fitted_exact.predict([atoms, pair])
    assert e2 == pytest.approx(2 * e1, rel=1e-12)
    (f1,), (s1,) = fitted_exact.predict_forces([atoms], return_std=True, std_type="epistemic")
    (f2,), (s2,) = fitted_exact.predict_forces([pair], return_std=True, std_type="epistemic")
    n = len(atoms)
    np.testing.assert_allclose(f2[:n], f1, atol=1e-9)
    np.testing.assert_allclose(f2[n:], f1, atol=1e-9)
    # the two copies share the posterior: their stds are each copy's own
    np.testing.assert_allclose(s2[:n], s1, rtol=1e-6)
    np.testing.assert_allclose(s2[n:], s1, rtol=1e-6)


def test_exact_beats_all_environment_sparse_model(fitted_exact, ethanol_frames, small_soap):
    """The reason for the exact mode: more accurate than the sparse GP on the same data."""
    sparse = SparseGPPotential(small_soap, sparse_method="all", n_restarts=0,
                               random_state=0, method="sparse").fit(ethanol_frames[:20])
    test = ethanol_frames[30:]
    ref = np.concatenate([a.get_forces().ravel() for a in test])

    def mae(model):
        return np.abs(np.concatenate([f.ravel() for f in model.predict_forces(test)])
                      - ref).mean()

    assert mae(fitted_exact) < 0.8 * mae(sparse)


def test_learned_force_noise():
    """Known noise σ_F = 0.05 eV/Å on EMT Cu forces is learned to within 25 %."""
    descriptor = SOAP(["Cu"], 4.0, n_max=4, l_max=3, sigma=0.5)
    frames = emt_copper_frames(10, seed=0, force_noise=0.05)
    model = SparseGPPotential(descriptor, method="exact", n_restarts=0, random_state=0)
    assert model.fit(frames).force_noise_ == pytest.approx(0.05, rel=0.25)
    clean = clone(model).fit(emt_copper_frames(10, seed=0, force_noise=0.0))
    assert clean.force_noise_ < 0.4 * 0.05


def test_variances_non_negative_shrink_at_training_data_grow_outside(fitted_exact,
                                                                     ethanol_frames):
    _, inside = fitted_exact.predict_forces(ethanol_frames[:3], return_std=True,
                                            std_type="epistemic")
    _, held_out = fitted_exact.predict_forces(ethanol_frames[40:43], return_std=True,
                                              std_type="epistemic")
    squeezed = ethanol_frames[50].copy()
    centre = squeezed.positions.mean(axis=0)
    squeezed.positions = centre + 0.8 * (squeezed.positions - centre)
    _, odd = fitted_exact.predict_forces([squeezed], return_std=True, std_type="epistemic")
    inside, held_out = np.concatenate(inside), np.concatenate(held_out)
    assert np.all(inside >= 0) and np.all(held_out >= 0)
    assert inside.mean() < 0.5 * held_out.mean()
    assert odd[0].mean() > 2 * held_out.mean()


# -- estimator surface ----------------------------------------------------------------------------
def test_method_auto_follows_the_memory_limit(ethanol_frames, small_soap, caplog):
    frames = ethanol_frames[:5]
    model = SparseGPPotential(small_soap, method="auto", n_restarts=0, random_state=0)
    with caplog.at_level("INFO", logger="kernelpot.estimator"):
        assert model.fit(frames).method_ == "exact"
    assert "method='auto' chose 'exact'" in caplog.text
    tiny = clone(model).set_params(exact_memory_limit=1e-6)
    assert tiny.fit(frames).method_ == "sparse"


def test_method_exact_says_what_it_ignores_and_what_it_costs(ethanol_frames, small_soap,
                                                              caplog):
    frames = ethanol_frames[:4]
    model = SparseGPPotential(small_soap, method="exact", n_sparse=10, n_restarts=0,
                              random_state=0, exact_time_limit=1e-9)
    with caplog.at_level("WARNING", logger="kernelpot.estimator"), \
            pytest.warns(UserWarning, match="n_sparse=10 is ignored: method='exact' uses"):
        assert model.fit(frames).method_ == "exact"
    assert "method='exact': the exact model of 112 observations needs" in caplog.text
    assert "(limit 1e-09)" in caplog.text and "would fit the sparse model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kernelpot.estimator"):
        clone(model).set_params(n_sparse=None, exact_time_limit=60.0).fit(frames)
    assert "method='exact'" not in caplog.text  # within the limits: nothing to say


def test_method_auto_is_the_default_and_follows_the_time_limit(ethanol_frames, small_soap,
                                                                caplog):
    frames = ethanol_frames[:5]
    model = SparseGPPotential(small_soap, n_restarts=0, random_state=0)
    assert model.get_params()["method"] == "auto"
    with caplog.at_level("INFO", logger="kernelpot.estimator"):
        assert model.fit(frames).method_ == "exact"
    assert "s to fit (limit 60)" in caplog.text
    slow = clone(model).set_params(exact_time_limit=1e-6)
    assert slow.fit(frames).method_ == "sparse"
    assert "ms per atom to predict with every std (limit 20)" in caplog.text
    assert "set method='exact' or raise exact_time_limit" in slow._method_note
    assert "exact_prediction_limit" not in slow._method_note.split("set method")[1]
    slow_to_predict = clone(model).set_params(exact_prediction_limit=1e-6)
    assert slow_to_predict.fit(frames).method_ == "sparse"
    assert slow_to_predict._method_note.endswith("or raise exact_prediction_limit")
    assert "the more accurate from the same structures" in slow_to_predict._method_note
    # incremental does not decide (updates check the limits again: test_exact_posterior)
    assert clone(model).set_params(incremental=True).fit(frames).method_ == "exact"
    # what only the sparse model does makes "auto" choose it
    assert clone(model).set_params(n_sparse=10).fit(frames).method_ == "sparse"
    with caplog.at_level("INFO", logger="kernelpot.estimator"):
        two_body = clone(model).set_params(two_body=TwoBody(r_cut=3.0)).fit(frames)
    assert two_body.method_ == "sparse" and "a two-body term needs it" in caplog.text
    with pytest.raises(ValueError, match="exact_time_limit must be a number of seconds"):
        clone(model).set_params(exact_time_limit=-1.0).fit(frames)
    with pytest.raises(ValueError, match="exact_prediction_limit must be a number of milli"):
        clone(model).set_params(exact_prediction_limit=0).fit(frames)


def test_exact_cost_estimate_is_what_auto_weighs(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, n_restarts=0, random_state=0)
    cost = model.exact_cost_estimate(ethanol_frames[:10])
    assert cost["n_observations"] == 10 * (1 + 27)
    assert cost["fit_seconds"] > 0 and cost["memory_gib"] > 0
    # just above and just below the estimate flip the choice
    for factor, method in ((1.01, "exact"), (0.99, "sparse")):
        limits = {"exact_time_limit": factor * cost["fit_seconds"]}
        assert clone(model).set_params(**limits).fit(ethanol_frames[:10]).method_ == method
        limits = {"exact_prediction_limit": factor * cost["prediction_ms_per_atom"]}
        assert clone(model).set_params(**limits).fit(ethanol_frames[:10]).method_ == method


def test_fit_time_estimate_grows_with_the_cost_terms():
    likelihood = exact.fit_time_estimate(1000, [0.0, 0.0], 300)
    covariance = exact.fit_time_estimate(1000, [3000.0, 6000.0], 300) - likelihood
    assert likelihood > 0 and covariance > 0
    # the covariance term is quadratic in the Jacobian rows and linear in D, the
    # likelihood cubic in the observations
    assert exact.fit_time_estimate(1000, [6000.0, 12000.0], 300) - likelihood == \
        pytest.approx(4 * covariance)
    assert exact.fit_time_estimate(1000, [3000.0, 6000.0], 600) - likelihood == \
        pytest.approx(2 * covariance)
    assert exact.fit_time_estimate(2000, [0.0], 300) == pytest.approx(8 * likelihood)
    # memory: the D × D mean map of each element on top of the matrices and rows
    assert exact.memory_estimate(100, 10, 300, n_species=3) - exact.memory_estimate(
        100, 10, 300) == 8.0 * 3 * 300**2
    # prediction: a per-atom part, and parts linear in the training rows and in D
    # (their column sums) and in the predicted rows (the contraction)
    def estimate(rows_per_atom=(30.0, 60.0), training=(1000.0, 2000.0), D=300):
        return exact.prediction_time_estimate(rows_per_atom, training, D, (0.25, 0.75),
                                              1000.0)

    base = estimate(D=0)
    one = estimate()
    assert 0 < base < one and estimate(D=600) - base == pytest.approx(2 * (one - base))
    assert estimate(training=(2000.0, 4000.0)) > estimate(rows_per_atom=(60.0, 120.0)) > one
    contraction = estimate(rows_per_atom=(60.0, 120.0)) - one
    assert estimate(rows_per_atom=(90.0, 180.0)) - one == pytest.approx(2 * contraction)
    # the element shares weigh the training rows: more of the larger element costs more
    assert exact.prediction_time_estimate([30.0, 60.0], [1000.0, 2000.0], 300, (0.75, 0.25),
                                          1000.0) < one


def test_save_load_is_bit_for_bit(fitted_exact, ethanol_frames, tmp_path):
    path = fitted_exact.save(tmp_path / "exact")
    loaded = load(path)
    assert loaded.method_ == "exact" and loaded.get_params()["method"] == "exact"
    for a, b in zip(fitted_exact.predict_structure(ethanol_frames[33], variance=True),
                    loaded.predict_structure(ethanol_frames[33], variance=True), strict=True):
        np.testing.assert_array_equal(a, b)
    theta = np.log([1.0, 0.01, 0.1, 0.001])
    assert loaded.log_marginal_likelihood(theta) == pytest.approx(
        fitted_exact.log_marginal_likelihood(theta), rel=1e-10)
    # a tampered training structure is caught by the checksum
    import zipfile

    damaged = tmp_path / "damaged.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "exact_structures_positions.npy":
                data = data[:-8] + np.float64(1.0).tobytes()
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="checksum"):
        load(damaged)


def test_sklearn_contract(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, method="exact", optimize=False, force_noise=0.05,
                              energy_noise=0.005)
    assert clone(model).get_params()["method"] == "exact"
    scores = cross_val_score(model, ethanol_frames[:12], cv=KFold(3))
    assert scores.shape == (3,) and np.all(scores > 0.5)


def test_exact_refuses_what_it_cannot_do(fitted_exact, ethanol_frames, small_soap):
    with pytest.raises(ValueError, match="method must be one of"):
        SparseGPPotential(small_soap, method="dense").fit(ethanol_frames[:3])
    with pytest.raises(ValueError, match="exact_memory_limit"):
        SparseGPPotential(small_soap, method="auto", exact_memory_limit=0).fit(
            ethanol_frames[:3])
    with pytest.raises(ValueError, match="kernel"):
        SparseGPPotential(small_soap, SquaredExponential(2.0), method="exact",
                          optimize=["signal_std", "kernel"]).fit(ethanol_frames[:3])
    with pytest.raises(ValueError, match="not trained on"):
        from ase import Atoms

        fitted_exact.predict([Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]])])


def test_predict_energies_and_forces_equals_the_two_calls(fitted_exact, ethanol_frames):
    test = ethanol_frames[40:43]
    e, f, e_std, f_std = fitted_exact.predict_energies_and_forces(test, return_std=True)
    energies, e_std_ref = fitted_exact.predict(test, return_std=True)
    forces, f_std_ref = fitted_exact.predict_forces(test, return_std=True)
    np.testing.assert_allclose(e, energies, rtol=1e-12)
    np.testing.assert_allclose(e_std, e_std_ref, rtol=1e-9)
    for got, ref in zip(f + f_std, forces + f_std_ref, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-14)
    _, _, e_epi, f_epi = fitted_exact.predict_energies_and_forces(test, return_std=True,
                                                                  std_type="epistemic")
    np.testing.assert_allclose(e_epi, fitted_exact.predict(test, return_std=True,
                                                           std_type="epistemic")[1], rtol=1e-9)
    for got, ref in zip(f_epi, fitted_exact.predict_forces(test, return_std=True,
                                                           std_type="epistemic")[1],
                        strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_batched_variances_equal_one_structure_at_a_time(fitted_exact, ethanol_frames,
                                                         monkeypatch):
    """predict_forces solves the variances of many structures at once (in batches of
    rows); each equals the variance of the structure predicted alone."""
    import kernelpot.prediction as prediction

    frames = ethanol_frames[30:36]
    alone = [fitted_exact.predict_structure(a, variance=True) for a in frames]
    monkeypatch.setattr(prediction, "_VARIANCE_BATCH_ROWS", 60)  # batches of 3 structures
    forces, stds = fitted_exact.predict_forces(frames, return_std=True, std_type="epistemic")
    energies, energy_stds = fitted_exact.predict(frames, return_std=True,
                                                 std_type="epistemic")
    for k, p in enumerate(alone):
        np.testing.assert_allclose(forces[k], p.forces, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stds[k]**2, p.forces_var_posterior, rtol=1e-8, atol=1e-14)
        assert energies[k] == pytest.approx(p.energy, rel=1e-12)
        assert energy_stds[k]**2 == pytest.approx(p.energy_var_posterior, rel=1e-8)
