"""Exact GP with one signal std per element (``signal_per_element=True``)."""

import numpy as np
import pytest
from helpers import assert_symmetries, exact_observations, numerical_forces
from sklearn.base import clone

from kernelpot import SparseGPPotential, exact, load
from kernelpot.kernels import NormalizedDotProduct

SPECIES = np.array([1, 6, 8])


def _observations(descriptor, frames, energy=True, forces=True):
    return exact_observations(descriptor, frames, SPECIES, energy, forces)


@pytest.fixture(scope="module")
def per_element(ethanol_frames, small_soap):
    return SparseGPPotential(small_soap, method="exact", signal_per_element=True,
                             n_restarts=0, random_state=0).fit(ethanol_frames[:20])


def test_weighted_covariance_is_the_sum_of_weighted_element_parts(ethanol_frames,
                                                                  small_soap):
    kernel = NormalizedDotProduct(2)
    obs = _observations(small_soap, ethanol_frames[:3])
    parts = exact.prior_covariance(obs, kernel, per_element=True)
    whole = exact.covariance(obs, obs, kernel, symmetric=True)
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-12, atol=1e-12)
    weights = np.array([0.5, 2.0, 3.0])
    weighted = exact.covariance(obs, obs, kernel, weights=weights)  # general assembly
    np.testing.assert_allclose(weighted, sum(w * K for w, K in zip(weights, parts,
                                                                    strict=True)),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="weights must have shape"):
        exact.covariance(obs, obs, kernel, weights=[1.0, 2.0])


def test_fitted_sigmas_differ_and_raise_the_likelihood(per_element, ethanol_frames,
                                                       small_soap):
    sigma = per_element.signal_std_
    assert set(sigma) == {"H", "C", "O"} and len(set(sigma.values())) == 3
    shared = SparseGPPotential(small_soap, method="exact", n_restarts=0,
                               random_state=0).fit(ethanol_frames[:20])
    assert isinstance(shared.signal_std_, float)
    # the shared model is the per-element one with equal σ: the optimum can only be higher
    assert per_element.log_marginal_likelihood_value_ \
        >= shared.log_marginal_likelihood_value_ - 1e-6
    theta = np.log([sigma["H"], sigma["C"], sigma["O"], per_element.energy_noise_,
                    per_element.force_noise_, per_element.stress_noise_])
    value, gradient = per_element.log_marginal_likelihood(theta, eval_gradient=True)
    assert value == pytest.approx(per_element.log_marginal_likelihood_value_, rel=1e-10)
    assert gradient.shape == (6,)
    with pytest.raises(ValueError, match=r"theta must have shape \(6,\)"):
        per_element.log_marginal_likelihood(theta[:3])


def test_posterior_matches_the_dense_gp(per_element, ethanol_frames, small_soap):
    model = per_element
    test = ethanol_frames[40]
    post = model.posterior_
    obs_test = _observations(small_soap, [test])
    weights = np.array([model.signal_std_[s] for s in ("H", "C", "O")])**2
    K_star = exact.covariance(obs_test, post.observations, model.kernel_, weights=weights)
    prediction = model.predict_structure(test, variance=True)
    mean = K_star @ post.weights
    e0 = model.e0_[np.searchsorted(model.species_, test.numbers)].sum()
    assert prediction.energy == pytest.approx(mean[0] + e0, rel=1e-10)
    np.testing.assert_allclose(prediction.forces.ravel(), mean[1:], rtol=1e-7, atol=1e-9)
    K_y = exact.covariance(post.observations, post.observations, model.kernel_,
                           weights=weights) \
        + np.diag(exact.noise_variances(np.log([model.energy_noise_, model.force_noise_,
                                                                model.stress_noise_]),
                                        post.observations))
    K_ss = exact.covariance(obs_test, obs_test, model.kernel_, weights=weights)
    var = np.diag(K_ss) - np.einsum("ij,ji->i", K_star, np.linalg.solve(K_y, K_star.T))
    assert prediction.energy_var_posterior == pytest.approx(var[0], rel=1e-5, abs=1e-12)
    np.testing.assert_allclose(prediction.forces_var_posterior.ravel(), var[1:], rtol=1e-5,
                               atol=1e-12)


def test_forces_are_minus_energy_gradient_and_symmetries_hold(per_element, ethanol_frames):
    atoms = ethanol_frames[45].copy()
    forces = per_element.predict_forces([atoms])[0]
    fd = numerical_forces(per_element, atoms, range(len(atoms)), h=1e-4)
    np.testing.assert_allclose(forces, fd, rtol=1e-5, atol=1e-5)
    assert_symmetries(per_element, ethanol_frames[50], euler=(0.3, -0.9, 1.1), seed=1)


def test_equal_fixed_sigmas_reproduce_the_shared_model(ethanol_frames, small_soap):
    kwargs = dict(method="exact", optimize=False, signal_std=1.3, energy_noise=0.004,
                  force_noise=0.08)
    shared = SparseGPPotential(small_soap, **kwargs).fit(ethanol_frames[:8])
    split = SparseGPPotential(small_soap, signal_per_element=True, **kwargs).fit(
        ethanol_frames[:8])
    assert split.signal_std_ == {"H": 1.3, "C": 1.3, "O": 1.3}
    a = shared.predict_structure(ethanol_frames[30], variance=True)
    b = split.predict_structure(ethanol_frames[30], variance=True)
    for x, y in zip(a, b, strict=True):
        if x is None:  # the stress, not asked
            assert y is None
            continue
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
    assert split.log_marginal_likelihood_value_ == pytest.approx(
        shared.log_marginal_likelihood_value_, rel=1e-10)


def test_save_load_is_bit_for_bit(per_element, ethanol_frames, tmp_path):
    loaded = load(per_element.save(tmp_path / "per_element"))
    assert loaded.signal_std_ == per_element.signal_std_
    assert loaded.get_params()["signal_per_element"] is True
    for a, b in zip(per_element.predict_structure(ethanol_frames[33], variance=True),
                    loaded.predict_structure(ethanol_frames[33], variance=True), strict=True):
        np.testing.assert_array_equal(a, b)
    theta = np.log([1.0, 2.0, 3.0, 0.01, 0.1, 0.001])
    assert loaded.log_marginal_likelihood(theta) == pytest.approx(
        per_element.log_marginal_likelihood(theta), rel=1e-10)


def test_bad_settings_are_refused(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, method="exact", signal_per_element=True)
    assert clone(model).get_params()["signal_per_element"] is True
    with pytest.raises(ValueError, match="signal_per_element=True needs method='exact'"):
        SparseGPPotential(small_soap, method="sparse", signal_per_element=True).fit(
            ethanol_frames[:3])
    # "auto" (the default) takes it as asking for the exact model, whatever its cost
    chosen = SparseGPPotential(small_soap, signal_per_element=True, exact_time_limit=1e-9,
                               n_restarts=0).fit(ethanol_frames[:3])
    assert chosen.method_ == "exact" and isinstance(chosen.signal_std_, dict)
    with pytest.raises(ValueError, match="needs the exact model and n_sparse the sparse"):
        SparseGPPotential(small_soap, signal_per_element=True, n_sparse=5).fit(
            ethanol_frames[:3])
    with pytest.raises(TypeError, match="signal_per_element must be True or False"):
        SparseGPPotential(small_soap, method="exact", signal_per_element="yes").fit(
            ethanol_frames[:3])


@pytest.mark.parametrize("bad", [{"H": 1.0, "C": 1.0}, {"H": 1.0, "C": 1.0, "O": -2.0},
                                 "2.0", None])
def test_a_signed_file_with_a_malformed_signal_std_is_refused(per_element, tmp_path, bad):
    """A file whose checksum matches but whose signal_std is not one positive number or
    one per element of the model (as a faulty writer could produce) fails clearly."""
    import json

    from kernelpot import io

    path = per_element.save(tmp_path / "model")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    metadata = json.loads(arrays.pop("metadata").tobytes().decode("utf-8"))
    metadata.pop("checksum")
    metadata["fitted"]["signal_std"] = bad
    metadata["checksum"] = io._checksum(arrays, metadata)
    blob = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", metadata=blob, **arrays)
    with pytest.raises(ValueError, match="malformed signal_std"):
        load(tmp_path / "bad.npz")
