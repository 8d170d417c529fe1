"""Split-conformal intervals: the quantile rule, and coverage on held-back frames."""

import warnings

import numpy as np
import pytest

from kernelpot import SOAP, SparseGPPotential, conformal, load, load_ethanol

COVERAGES = (0.5, 0.68, 0.9, 0.95)


def test_interval_quantile_rule():
    scores = np.arange(1.0, 20.0)  # 19 scores
    assert conformal.interval_quantile(scores, 0.9) == 18.0  # k = ceil(20 * 0.9) = 18
    assert conformal.interval_quantile(scores, 0.5) == 10.0
    with pytest.raises(ValueError, match="too few"):
        conformal.interval_quantile(scores, 0.96)  # k = 20 > 19
    for bad in (0.0, 1.0, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="coverage"):
            conformal.interval_quantile(scores, bad)
    with pytest.raises(ValueError, match="finite"):
        conformal.normalised_scores([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="errors but"):
        conformal.normalised_scores([1.0, 2.0], [1.0])


def test_finite_sample_coverage_on_exchangeable_data():
    """Heavy-tailed, heteroscedastic synthetic data: coverage is k / (n + 1), not Gaussian."""
    rng = np.random.default_rng(0)
    n_cal, trials = 19, 4000
    hits = {p: 0 for p in COVERAGES}
    for _ in range(trials):
        std = rng.uniform(0.5, 2.0, n_cal + 1)
        errors = std * rng.standard_t(df=2, size=n_cal + 1)
        scores = conformal.normalised_scores(errors[:-1], std[:-1])
        for p in COVERAGES:
            hits[p] += abs(errors[-1]) <= conformal.interval_quantile(scores, p) * std[-1]
    for p in COVERAGES:
        expected = np.ceil((n_cal + 1) * p) / (n_cal + 1)
        tolerance = 3 * np.sqrt(expected * (1 - expected) / trials)
        assert hits[p] / trials == pytest.approx(expected, abs=tolerance)


@pytest.fixture(scope="module")
def calibrated_split():
    """Fit on 20 bundled ethanol frames, calibrate on 90, hold back 90 (frames 10 MD steps
    apart, interleaved so that both halves cover the trajectory)."""
    frames = load_ethanol()
    model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, n_max=4, l_max=3, sigma=0.4),
                              calibration=None, random_state=0,
                              n_restarts=0, method="sparse").fit(frames[:200:10])
    rest = [a for k, a in enumerate(frames) if k % 10]
    return model.calibrate(rest[0::2]), rest[1::2]


@pytest.mark.parametrize("coverage", COVERAGES)
def test_conformal_coverage_on_held_back_frames(calibrated_split, coverage):
    """Empirical coverage within a binomial tolerance counted in frames, not components."""
    model, test = calibrated_split
    n_frames = len(test)
    tolerance = 3 * np.sqrt(coverage * (1 - coverage) / n_frames)
    forces, intervals = model.predict_forces(test, return_interval=coverage)
    inside = np.concatenate([((a.get_forces() >= iv[..., 0]) & (a.get_forces() <= iv[..., 1]))
                             .ravel() for a, iv in zip(test, intervals, strict=True)])
    assert coverage - tolerance <= inside.mean() <= coverage + tolerance
    for f, iv in zip(forces, intervals, strict=True):
        assert np.all(iv[..., 0] <= f) and np.all(f <= iv[..., 1])
    energies, e_intervals = model.predict(test, return_interval=coverage)
    reference = np.array([a.get_potential_energy() for a in test])
    e_inside = (reference >= e_intervals[:, 0]) & (reference <= e_intervals[:, 1])
    assert coverage - tolerance <= e_inside.mean() <= coverage + tolerance


def test_intervals_scale_with_the_std_and_survive_save_load(calibrated_split, tmp_path,
        float64_factor_files):
    model, test = calibrated_split
    _, std, intervals = model.predict_forces(test[:3], return_std=True, return_interval=0.9)
    multiplier = conformal.interval_quantile(model.interval_scores_["forces"], 0.9)
    for s, iv in zip(std, intervals, strict=True):
        np.testing.assert_allclose(iv[..., 1] - iv[..., 0], 2 * multiplier * s, rtol=1e-10)
    loaded = load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.interval_scores_["forces"],
                                  model.interval_scores_["forces"])
    _, again = loaded.predict_forces(test[:3], return_interval=0.9)
    np.testing.assert_array_equal(again[0], intervals[0])


def test_without_calibration_intervals_are_gaussian_and_warn(fitted_ethanol, ethanol_frames):
    from scipy.stats import norm

    with pytest.warns(UserWarning, match="no calibration scores"):
        _, std, intervals = fitted_ethanol.predict_forces(ethanol_frames[40:41], return_std=True,
                                                          return_interval=0.9)
    np.testing.assert_allclose(intervals[0][..., 1] - intervals[0][..., 0],
                               2 * norm.ppf(0.95) * std[0], rtol=1e-10)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="coverage"):
        warnings.simplefilter("ignore")
        fitted_ethanol.predict(ethanol_frames[40:41], return_interval=1.2)


def test_refit_drops_the_calibration(calibrated_split, ethanol_frames):
    from sklearn.base import clone

    model, _ = calibrated_split
    twin = clone(model).fit(ethanol_frames[:5])
    assert twin.interval_scores_ is None and twin.std_scale_ is None


def test_jackknife_plus_covers_gaussian_process_data_over_many_seeds():
    """Jackknife+ (CV+ with folds of two points) on draws from the GP the model assumes:
    coverage at least 1 - 2α (the guarantee), and in practice about 1 - α."""
    from kernelpot.conformal import jackknife_plus
    from kernelpot.loso import exact_loso

    coverage, hits, trials = 0.8, 0, 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, 10, 41)
        K = np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) + 0.05 * np.eye(41)
        y = np.linalg.cholesky(K) @ rng.normal(size=41)
        train, new = slice(0, 40), 40
        K_y = K[train, train]
        L = np.linalg.cholesky(K_y)
        alpha = np.linalg.solve(K_y, y[train])
        folds = np.repeat(np.arange(20), 2)
        residual, variance = exact_loso(L, alpha, folds)
        k_new = K[new, train]
        P = np.linalg.inv(K_y)
        shifts = np.array([k_new @ (P[:, folds == f] @ residual[folds == f])
                           for f in range(20)])
        mean = k_new @ alpha
        std = np.sqrt(K[new, new] - k_new @ np.linalg.solve(K_y, k_new))
        scores = np.abs(residual) / np.sqrt(variance)
        lower, upper = jackknife_plus((mean - shifts[folds])[None, :], scores, [std],
                                      coverage)
        hits += int(lower[0] <= y[new] <= upper[0])
        trials += 1
    observed = hits / trials
    spread = 3 * np.sqrt(coverage * (1 - coverage) / trials)
    assert observed >= 1 - 2 * (1 - coverage) - spread  # the guarantee
    assert abs(observed - coverage) < spread  # and what it gives in practice


def test_jackknife_plus_bounds_and_checks():
    from kernelpot.conformal import jackknife_plus

    means = np.zeros((2, 9))
    scores = np.arange(1.0, 10.0)
    lower, upper = jackknife_plus(means, scores, [1.0, 2.0], 0.8)
    # α = 0.2, n = 9: the 2nd smallest of -R s and the 8th smallest of +R s
    np.testing.assert_allclose(lower, [-8.0, -16.0])
    np.testing.assert_allclose(upper, [8.0, 16.0])
    lower, upper = jackknife_plus(means, scores, [1.0, 1.0], 0.95)
    assert np.all(np.isinf(lower)) and np.all(np.isinf(upper))  # too few points
    with pytest.raises(ValueError, match="leave-out means"):
        jackknife_plus(np.zeros((2, 8)), scores, [1.0, 1.0], 0.8)
