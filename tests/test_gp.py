"""Sparse GP maths against dense reference formulas and finite differences."""

import numpy as np
import pytest
import scipy.linalg as sla
from scipy.stats import multivariate_normal

from kernelpot import gp


@pytest.fixture
def problem():
    """A small random DTC problem: whitened design, noise layout, labels."""
    rng = np.random.default_rng(0)
    M, n_E, n_F = 7, 5, 24
    K_mm = rng.normal(size=(M, M))
    K_mm = K_mm @ K_mm.T + M * np.eye(M)
    K_nm = rng.normal(size=(n_E + n_F, M))
    n_atoms = rng.integers(2, 9, size=n_E).astype(float)
    y = rng.normal(size=n_E + n_F)
    return K_mm, K_nm, n_atoms, y, n_E


def _dense_lml(K_mm, K_nm, n_atoms, y, n_E, sigma, se, sf):
    Q = sigma**2 * K_nm @ np.linalg.solve(K_mm, K_nm.T)
    noise = np.concatenate([se**2 * n_atoms, np.full(len(y) - n_E, sf**2)])
    return multivariate_normal(mean=np.zeros(len(y)), cov=Q + np.diag(noise)).logpdf(y), \
        Q, noise


def _stats(K_mm, K_nm, n_atoms, y, n_E):
    L = np.linalg.cholesky(K_mm)
    Kw = sla.solve_triangular(L, K_nm.T, lower=True).T
    return L, Kw, gp.whitened_statistics(Kw[:n_E], n_atoms, y[:n_E], Kw[n_E:], y[n_E:])


@pytest.mark.parametrize("params", [(1.0, 0.1, 0.3), (3.0, 0.01, 0.05), (0.2, 1.0, 2.0)])
def test_lml_equals_dense_gaussian(problem, params):
    K_mm, K_nm, n_atoms, y, n_E = problem
    _, _, stats = _stats(K_mm, K_nm, n_atoms, y, n_E)
    expected, _, _ = _dense_lml(K_mm, K_nm, n_atoms, y, n_E, *params)
    assert gp.log_marginal_likelihood(np.log(params), stats) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("params", [(1.0, 0.1, 0.3), (3.0, 0.01, 0.05)])
def test_lml_gradient_equals_finite_differences(problem, params):
    K_mm, K_nm, n_atoms, y, n_E = problem
    _, _, stats = _stats(K_mm, K_nm, n_atoms, y, n_E)
    theta = np.log(params)
    _, grad = gp.log_marginal_likelihood(theta, stats, eval_gradient=True)
    h = 1e-6
    for t in range(3):
        step = np.zeros(3)
        step[t] = h
        fd = (gp.log_marginal_likelihood(theta + step, stats)
              - gp.log_marginal_likelihood(theta - step, stats)) / (2 * h)
        assert grad[t] == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_lml_without_energies_or_forces(problem):
    K_mm, K_nm, n_atoms, y, n_E = problem
    L = np.linalg.cholesky(K_mm)
    Kw = sla.solve_triangular(L, K_nm.T, lower=True).T
    forces_only = gp.whitened_statistics(Kw[:0], n_atoms[:0], y[:0], Kw[n_E:], y[n_E:])
    Q = K_nm[n_E:] @ np.linalg.solve(K_mm, K_nm[n_E:].T)
    expected = multivariate_normal(cov=Q + 0.09 * np.eye(len(Q))).logpdf(y[n_E:])
    value, grad = gp.log_marginal_likelihood(np.log([1.0, 0.5, 0.3]), forces_only, True)
    assert value == pytest.approx(expected, rel=1e-9)
    assert grad[1] == 0.0
    energies_only = gp.whitened_statistics(Kw[:n_E], n_atoms, y[:n_E], Kw[:0], y[:0])
    Q = K_nm[:n_E] @ np.linalg.solve(K_mm, K_nm[:n_E].T)
    expected = multivariate_normal(cov=Q + np.diag(0.01 * n_atoms)).logpdf(y[:n_E])
    value, grad = gp.log_marginal_likelihood(np.log([1.0, 0.1, 0.3]), energies_only, True)
    assert value == pytest.approx(expected, rel=1e-9)
    assert grad[2] == 0.0


def test_posterior_mean_and_variance_equal_dense_dtc(problem):
    K_mm, K_nm, n_atoms, y, n_E = problem
    sigma, se, sf = 1.7, 0.2, 0.4
    L, Kw, _ = _stats(K_mm, K_nm, n_atoms, y, n_E)
    _, Q, noise = _dense_lml(K_mm, K_nm, n_atoms, y, n_E, sigma, se, sf)
    n, M = K_nm.shape
    design = np.empty((n + M, M))
    design[:n] = Kw
    posterior = gp.solve_posterior(design, n, L, np.sqrt(noise), y, sigma)
    # DTC mean at new rows k_*: σ² k_* K_mm⁻¹ K_mn (Q + Λ)⁻¹ y
    rng = np.random.default_rng(5)
    k_star = rng.normal(size=(4, M))
    expected_mean = sigma**2 * k_star @ np.linalg.solve(K_mm, K_nm.T) @ np.linalg.solve(
        Q + np.diag(noise), y)
    np.testing.assert_allclose(k_star @ posterior.weights, expected_mean, rtol=1e-9)
    # DTC: var = K** - Q** + K*m Σ Km*, Σ = (K_mm + K_mn Λ⁻¹ K_nm)⁻¹ with K = σ² k
    sigma2 = sigma**2
    Sigma = np.linalg.inv(sigma2 * K_mm + sigma2**2 * K_nm.T @ np.diag(1 / noise) @ K_nm)
    expected_post = sigma2**2 * np.einsum("nm,mk,nk->n", k_star, Sigma, k_star)
    expected_proj = sigma2 * np.einsum("nm,mk,nk->n", k_star, np.linalg.inv(K_mm), k_star)
    post, proj = gp.variance_terms(k_star, posterior, sigma)
    np.testing.assert_allclose(post, expected_post, rtol=1e-8)
    np.testing.assert_allclose(proj, expected_proj, rtol=1e-8)


def test_cholesky_with_jitter_retries():
    K = np.ones((3, 3)) - 1e-9 * np.eye(3)  # slightly indefinite: needs jitter
    L, used = gp.cholesky_with_jitter(K, jitter=1e-12)
    assert used >= 1e-9
    np.testing.assert_allclose(L @ L.T, K + used * np.mean(np.diag(K)) * np.eye(3), atol=1e-12)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        gp.cholesky_with_jitter(-np.eye(2), max_tries=2)


def test_clip_variance_warns_only_when_not_round_off():
    with pytest.warns(RuntimeWarning, match="negative variances clipped"):
        out = gp.clip_variance(np.array([1.0, -0.5]), "test")
    assert out.tolist() == [1.0, 0.0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gp.clip_variance(np.array([1.0, -1e-15]), "test").tolist() == [1.0, 0.0]
