"""Sparse GP maths against dense reference formulas and finite differences."""

import numpy as np
import pytest
import scipy.linalg as sla
from helpers import finite_difference_gradient
from scipy.stats import multivariate_normal

from kernelpot import gp
from kernelpot.kernels import NormalizedDotProduct, SquaredExponential


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


def _stress_problem(problem):
    """The fixture's problem with its last 12 force rows recast as two cells' stresses."""
    K_mm, K_nm, n_atoms, y, n_E = problem
    L = np.linalg.cholesky(K_mm)
    Kw = sla.solve_triangular(L, K_nm.T, lower=True).T
    n_S = 12
    Kw_E, Kw_F, Kw_S = Kw[:n_E], Kw[n_E:-n_S], Kw[-n_S:]
    y_E, y_F, y_S = y[:n_E], y[n_E:-n_S], 0.01 * y[-n_S:]
    stats = gp.whitened_statistics(Kw_E, n_atoms, y_E, Kw_F, y_F, Kw_S=Kw_S, y_S=y_S)
    return K_mm, K_nm, n_atoms, np.concatenate([y_E, y_F, y_S]), n_E, n_S, stats


@pytest.mark.parametrize("params", [(1.0, 0.1, 0.3, 0.002), (3.0, 0.01, 0.05, 0.05),
                                    (0.2, 1.0, 2.0, 1e-3)])
def test_lml_with_stress_rows_equals_dense_gaussian(problem, params):
    K_mm, K_nm, n_atoms, y, n_E, n_S, stats = _stress_problem(problem)
    sigma, se, sf, ss = params
    Q = sigma**2 * K_nm @ np.linalg.solve(K_mm, K_nm.T)
    n_F = len(y) - n_E - n_S
    noise = np.concatenate([se**2 * n_atoms, np.full(n_F, sf**2), np.full(n_S, ss**2)])
    expected = multivariate_normal(cov=Q + np.diag(noise)).logpdf(y)
    assert gp.log_marginal_likelihood(np.log(params), stats) == pytest.approx(expected,
                                                                              rel=1e-9)
    # finite differences of the four noise parameters
    theta = np.log(params)
    _, grad = gp.log_marginal_likelihood(theta, stats, eval_gradient=True)
    assert grad.shape == (4,)
    h = 1e-6
    for t in range(4):
        step = np.zeros(4)
        step[t] = h
        fd = (gp.log_marginal_likelihood(theta + step, stats)
              - gp.log_marginal_likelihood(theta - step, stats)) / (2 * h)
        assert grad[t] == pytest.approx(fd, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("params", [(1.0, 0.1, 0.3, 0.002), (3.0, 0.01, 0.05, 0.05)])
def test_lml_with_more_energy_and_stress_rows_than_inducing_points(params):
    # 5 energies + 12 stress rows > M = 4: the M × M form instead of the Woodbury step
    rng = np.random.default_rng(3)
    M, n_E, n_F, n_S = 4, 5, 9, 12
    K_mm = rng.normal(size=(M, M))
    K_mm = K_mm @ K_mm.T + M * np.eye(M)
    K_nm = rng.normal(size=(n_E + n_F + n_S, M))
    n_atoms = rng.integers(2, 9, size=n_E).astype(float)
    y = rng.normal(size=n_E + n_F + n_S)
    y[n_E + n_F:] *= 0.01  # stresses, eV/Å³
    L = np.linalg.cholesky(K_mm)
    Kw = sla.solve_triangular(L, K_nm.T, lower=True).T
    stats = gp.whitened_statistics(Kw[:n_E], n_atoms, y[:n_E], Kw[n_E:n_E + n_F],
                                   y[n_E:n_E + n_F], Kw_S=Kw[n_E + n_F:], y_S=y[n_E + n_F:])
    assert stats.grams is not None
    sigma, se, sf, ss = params
    Q = sigma**2 * K_nm @ np.linalg.solve(K_mm, K_nm.T)
    noise = np.concatenate([se**2 * n_atoms, np.full(n_F, sf**2), np.full(n_S, ss**2)])
    expected = multivariate_normal(cov=Q + np.diag(noise)).logpdf(y)
    theta = np.log(params)
    value, grad = gp.log_marginal_likelihood(theta, stats, eval_gradient=True)
    assert value == pytest.approx(expected, rel=1e-9)
    fd = finite_difference_gradient(lambda t: gp.log_marginal_likelihood(t, stats), theta,
                                    1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)


def test_lml_with_stress_rows_needs_the_stress_noise(problem):
    *_, stats = _stress_problem(problem)
    with pytest.raises(ValueError, match="σ_S"):
        gp.log_marginal_likelihood(np.log([1.0, 0.1, 0.3]), stats)


def test_lml_without_stress_rows_takes_three_or_four_parameters(problem):
    K_mm, K_nm, n_atoms, y, n_E = problem
    _, _, stats = _stats(K_mm, K_nm, n_atoms, y, n_E)
    three, g3 = gp.log_marginal_likelihood(np.log([1.0, 0.1, 0.3]), stats, True)
    four, g4 = gp.log_marginal_likelihood(np.log([1.0, 0.1, 0.3, 0.7]), stats, True)
    assert four == three
    np.testing.assert_array_equal(g4[:3], g3)
    assert g4[3] == 0.0


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


def test_clip_variance_measures_round_off_against_the_prior():
    # a model sure everywhere: posterior variances at the round-off of a prior of 1
    import warnings

    var = np.array([3e-12, -4.7e-15])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gp.clip_variance(var, "test", np.ones(2)).tolist() == [3e-12, 0.0]
        # a prior that vanishes by symmetry (a perfect lattice's forces): no scale but 1e-16
        assert gp.clip_variance(np.array([5.2e-21, -4.7e-21]), "test",
                                np.full(2, 5.2e-21)).tolist() == [5.2e-21, 0.0]
    with pytest.warns(RuntimeWarning, match="negative variances clipped"):
        gp.clip_variance(var, "test")  # against the largest variance alone it is not tiny
    with pytest.warns(RuntimeWarning, match="negative variances clipped"):
        gp.clip_variance(np.array([3e-12, -1e-3]), "test", np.ones(2))
    # each value against its own prior: a force row is not excused by an energy row's
    with pytest.warns(RuntimeWarning, match="negative variances clipped"):
        gp.clip_variance(np.array([5.0, -0.06]), "test", np.array([1e7, 12.9]))


def test_clip_variance_scales_a_vanished_prior_by_the_signal_variance():
    # a perfect lattice under a signal std of 100 eV: the prior's terms, of order σ² = 1e4,
    # cancel to round-off of about 1e-12 (measured: -6.7e-13 on fcc Cu, exact model)
    import warnings

    var, prior = np.array([2e-13, -6.7e-13]), np.array([1e-13, 3e-13])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gp.clip_variance(var, "test", prior, signal_var=1e4).tolist() == [2e-13, 0.0]
    with pytest.warns(RuntimeWarning, match="negative variances clipped"):
        gp.clip_variance(var, "test", prior)  # without the signal variance: not round-off
    with pytest.warns(RuntimeWarning, match="negative variances clipped"):
        gp.clip_variance(np.array([1.0, -1e-9]), "test", np.full(2, 1e-12), signal_var=1e4)


def _real_problem(frames, descriptor, kernel, theta_gradient=False):
    """Design rows of labelled frames, inducing = every 3rd environment per species."""
    from kernelpot.kernels import Kernel  # noqa: F401  (documentation of the argument)

    species = np.unique(np.concatenate([a.numbers for a in frames]))
    results = [descriptor.compute(a) for a in frames]
    index = [np.searchsorted(species, a.numbers) for a in frames]
    X = np.concatenate([r.features for r in results])
    all_index = np.concatenate(index)
    inducing = [np.array(X[all_index == s][::3]) for s in range(len(species))]
    rows = [gp.design_rows(r, i, inducing, kernel, theta_gradient=theta_gradient)
            for r, i in zip(results, index, strict=True)]
    return results, index, inducing, rows


def _assemble(frames, rows, inducing, kernel):
    K_E = np.stack([r.energy for r in rows])
    K_F = np.concatenate([r.forces for r in rows])
    n_atoms = np.array([len(a) for a in frames], dtype=float)
    y_E = np.array([a.get_potential_energy() for a in frames])
    y_E = y_E - y_E.mean()
    y_F = np.concatenate([a.get_forces().ravel() for a in frames])
    L, _ = gp.cholesky_with_jitter(gp.inducing_kernel(inducing, kernel))
    Kw_E = sla.solve_triangular(L, K_E.T, lower=True).T
    Kw_F = sla.solve_triangular(L, K_F.T, lower=True).T
    stats = gp.whitened_statistics(Kw_E, n_atoms, y_E, Kw_F, y_F, keep_basis=True)
    return L, Kw_E, Kw_F, y_E, y_F, n_atoms, stats


@pytest.fixture(scope="module")
def sum_kernel():
    from kernelpot.kernels import NormalizedDotProduct, SquaredExponential

    return NormalizedDotProduct(2) + 0.5 * SquaredExponential(0.3)


def test_design_row_theta_derivatives_equal_finite_differences(ethanol_frames, small_soap,
                                                              sum_kernel):
    frames = ethanol_frames[:3]
    _, _, _, rows = _real_problem(frames, small_soap, sum_kernel, theta_gradient=True)
    h = 1e-5
    for t in range(sum_kernel.n_theta):
        step = np.zeros(sum_kernel.n_theta)
        step[t] = h
        plus = sum_kernel.clone_with_theta(sum_kernel.theta + step)
        minus = sum_kernel.clone_with_theta(sum_kernel.theta - step)
        # same inducing set: built from the same features
        _, _, _, rows_p = _real_problem(frames, small_soap, plus)
        _, _, _, rows_m = _real_problem(frames, small_soap, minus)
        for r, rp, rm in zip(rows, rows_p, rows_m, strict=True):
            fd_E = (rp.energy - rm.energy) / (2 * h)
            fd_F = (rp.forces - rm.forces) / (2 * h)
            assert np.max(np.abs(r.d_energy[:, t] - fd_E)) <= 1e-6 * np.max(np.abs(fd_E))
            assert np.max(np.abs(r.d_forces[:, :, t] - fd_F)) <= 1e-6 * np.max(np.abs(fd_F))
        # the plain rows do not change when derivatives are asked for
    _, _, _, plain = _real_problem(frames, small_soap, sum_kernel)
    np.testing.assert_array_equal(plain[0].forces, rows[0].forces)
    np.testing.assert_array_equal(plain[0].energy, rows[0].energy)


@pytest.mark.parametrize("log_params", [np.log([1.0, 0.01, 0.1]), np.log([5.0, 0.002, 0.03])])
def test_lml_kernel_gradient_equals_finite_differences(ethanol_frames, small_soap, sum_kernel,
                                                       log_params):
    frames = ethanol_frames[:6]

    def lml(kernel):
        _, _, inducing, rows = _real_problem(frames, small_soap, kernel)
        *_, stats = _assemble(frames, rows, inducing, kernel)
        return gp.log_marginal_likelihood(log_params, stats)

    _, _, inducing, rows = _real_problem(frames, small_soap, sum_kernel, theta_gradient=True)
    L, Kw_E, Kw_F, y_E, y_F, n_atoms, stats = _assemble(frames, rows, inducing, sum_kernel)
    grad = gp.KernelThetaGradient(log_params, stats, L, sum_kernel.n_theta)
    sigma_e, sigma_f = np.exp(log_params[1:])
    grad.add_rows(np.stack([r.d_energy for r in rows]), Kw_E, y_E, sigma_e**2 * n_atoms)
    grad.add_rows(np.concatenate([r.d_forces for r in rows]), Kw_F, y_F,
                  np.full(len(y_F), sigma_f**2))
    analytic = grad.gradient(gp.inducing_kernel_gradient(inducing, sum_kernel))
    h = 1e-5
    for t in range(sum_kernel.n_theta):
        step = np.zeros(sum_kernel.n_theta)
        step[t] = h
        fd = (lml(sum_kernel.clone_with_theta(sum_kernel.theta + step))
              - lml(sum_kernel.clone_with_theta(sum_kernel.theta - step))) / (2 * h)
        assert analytic[t] == pytest.approx(fd, rel=1e-5, abs=1e-5)


def test_kernel_gradient_needs_the_basis(problem):
    K_mm, K_nm, n_atoms, y, n_E = problem
    L, _, stats = _stats(K_mm, K_nm, n_atoms, y, n_E)
    with pytest.raises(ValueError, match="keep_basis"):
        gp.KernelThetaGradient(np.zeros(3), stats, L, 1)


def test_statistics_from_a_rescaled_force_gram_equal_those_of_the_rescaled_design(problem):
    """Rescaling design columns through the force Gram matrix (the two-body prior-std
    search) gives the statistics, and so the likelihood, of the rescaled design."""
    K_mm, K_nm, n_atoms, y, n_E = problem
    L = np.linalg.cholesky(K_mm)
    Kw = sla.solve_triangular(L, K_nm.T, lower=True).T
    scale = np.ones(Kw.shape[1])
    scale[-2:] = 3.7
    direct = gp.whitened_statistics(Kw[:n_E] * scale, n_atoms, y[:n_E], Kw[n_E:] * scale,
                                    y[n_E:])
    W_F = Kw[n_E:].T @ Kw[n_E:]
    via_gram = gp.statistics_from_force_gram(W_F * np.outer(scale, scale),
                                             Kw[n_E:].T @ y[n_E:] * scale,
                                             float(y[n_E:] @ y[n_E:]), len(y) - n_E,
                                             Kw[:n_E] * scale, n_atoms, y[:n_E])
    theta = np.log([1.3, 0.02, 0.1])
    assert gp.log_marginal_likelihood(theta, via_gram) == pytest.approx(
        gp.log_marginal_likelihood(theta, direct), rel=1e-12)
    np.testing.assert_allclose(via_gram.eigenvalues, direct.eigenvalues, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(2),
                                    NormalizedDotProduct(2) + 0.3 * SquaredExponential(2.0)],
                         ids=["ndp", "ndp+se"])
def test_prior_force_variances_sum_each_atoms_same_element_centres(sic_cell, kernel):
    """Each atom's prior force variance is the sum over the same-element pairs of centres
    it moves, weighted by the element's weight: one batched call per block of atoms
    gives the per-atom, per-element sums."""
    from kernelpot import SOAP

    result = SOAP(["Si", "C"], 3.5, n_max=3, l_max=2, sigma=0.5, periodic=True).compute(
        sic_cell)
    index = np.searchsorted([6, 14], sic_cell.numbers)
    weights = np.array([1.3, 0.7])
    energy, forces = gp.prior_variances(result, index, 2, kernel, weights=weights)
    expected = np.zeros((len(sic_cell), 3))
    for j in range(len(sic_cell)):
        p = np.flatnonzero(result.pairs[:, 1] == j)
        centres = result.pairs[p, 0]
        for s in range(2):
            sel = index[centres] == s
            expected[j] += weights[s] * sum(
                kernel.contracted_hessian(result.features[centres[sel]],
                                          result.gradients[p[sel], c]).sum() * np.eye(3)[c]
                for c in range(3))
    assert np.all(forces > 0)
    np.testing.assert_allclose(forces, expected, rtol=1e-10, atol=1e-14)
    X = result.features
    assert energy == pytest.approx(sum(weights[s] * kernel(X[index == s]).sum()
                                       for s in range(2)), rel=1e-12)
