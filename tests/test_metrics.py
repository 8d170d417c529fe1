"""Metrics on hand-computed cases."""

import numpy as np
import pytest

from kernelpot import metrics


def test_errors_on_lists_and_arrays():
    pred = [np.array([[1.0, 2.0, 3.0]]), np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])]
    ref = [np.array([[1.0, 2.0, 4.0]]), np.array([[0.0, 0.0, 0.0], [1.0, 1.0, -1.0]])]
    assert metrics.mae(pred, ref) == pytest.approx(3.0 / 9)
    assert metrics.rmse(pred, ref) == pytest.approx(np.sqrt(5.0 / 9))
    assert metrics.max_error(pred, ref) == 2.0
    assert metrics.force_errors(pred, ref)["max"] == 2.0
    with pytest.raises(ValueError, match="different sizes"):
        metrics.mae([np.zeros(3)], [np.zeros(4)])


def test_coverage_counts_within_k_std():
    pred = np.zeros(4)
    ref = np.array([0.5, -1.5, 2.5, 0.0])
    std = np.ones(4)
    assert metrics.coverage(pred, ref, std, 1.0) == 0.5
    assert metrics.coverage(pred, ref, std, 2.0) == 0.75
    rng = np.random.default_rng(0)
    err = rng.normal(size=200_000)
    assert metrics.coverage(err, np.zeros_like(err), np.ones_like(err), 1.0) == \
        pytest.approx(0.6827, abs=0.005)


def test_spearman_uses_per_atom_norms():
    ref = [np.zeros((4, 3))]
    pred = [np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [4.0, 0, 0]])]
    std = [np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3], [0.4, 0.4, 0.4]])]
    assert metrics.spearman_std_error(pred, ref, std) == pytest.approx(1.0)
    np.testing.assert_allclose(metrics.per_atom_norms(pred), [1, 2, 3, 4])


def test_expected_spearman_matches_a_calibrated_model_and_follows_the_spread():
    rng = np.random.default_rng(1)
    # log-normal stds of two spreads; errors drawn from the stds themselves
    narrow = [np.exp(0.2 * rng.standard_normal((50, 1))) * np.ones(3) for _ in range(20)]
    wide = [np.exp(1.0 * rng.standard_normal((50, 1))) * np.ones(3) for _ in range(20)]
    for stds in (narrow, wide):
        errors = [s * rng.standard_normal(s.shape) for s in stds]
        measured = metrics.spearman_std_error(errors, [np.zeros_like(e) for e in errors],
                                              stds)
        ceiling = metrics.expected_spearman(stds, n_draws=50, random_state=0)
        assert abs(measured - ceiling) < 0.05  # 1000 atoms: Spearman's scatter ~ 0.02
    low = metrics.expected_spearman(narrow, n_draws=50, random_state=0)
    high = metrics.expected_spearman(wide, n_draws=50, random_state=0)
    assert low < 0.5 < high
    # it follows the spread of the stds: squaring them (same ranks, so the measured
    # Spearman of given errors is unchanged) widens the spread and raises it
    errors = [s * rng.standard_normal(s.shape) for s in narrow]
    zeros = [np.zeros_like(e) for e in errors]
    squared = [s**2 for s in narrow]
    assert metrics.spearman_std_error(errors, zeros, squared) == pytest.approx(
        metrics.spearman_std_error(errors, zeros, narrow))
    assert metrics.expected_spearman(squared, n_draws=50, random_state=0) > low + 0.1
    # equal stds: no ranking, the correlation is undefined (as scipy's)
    with pytest.warns(Warning):
        assert np.isnan(metrics.expected_spearman([np.ones((100, 3))], 5, random_state=0))
    with pytest.raises(ValueError, match="finite and > 0"):
        metrics.expected_spearman([np.zeros((3, 3))])
    with pytest.raises(ValueError, match="at least 2 atoms"):
        metrics.expected_spearman([np.ones((1, 3))])


def test_calibration_metrics_on_synthetic_gaussian_errors():
    from kernelpot import metrics

    rng = np.random.default_rng(0)
    std = rng.uniform(0.5, 2.0, size=200_000)
    reference = rng.normal(size=std.size)
    predicted = reference + std * rng.normal(size=std.size)
    nominal, observed = metrics.coverage_curve(predicted, reference, std)
    np.testing.assert_allclose(observed, nominal, atol=0.005)
    assert metrics.recalibration_factor(predicted, reference, std) == pytest.approx(1, abs=0.01)
    assert metrics.recalibration_factor(predicted, reference, 2 * std) == pytest.approx(0.5,
                                                                                      abs=0.01)
    nll = metrics.negative_log_likelihood(predicted, reference, std)
    assert nll < metrics.negative_log_likelihood(predicted, reference, 2 * std)
    assert nll < metrics.negative_log_likelihood(predicted, reference, 0.5 * std)
    # analytic value for calibrated Gaussian errors: ½ log(2π) + mean log σ + ½
    expected = 0.5 * np.log(2 * np.pi) + np.mean(np.log(std)) + 0.5
    assert nll == pytest.approx(expected, abs=0.01)
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        metrics.negative_log_likelihood(predicted[:3], reference[:3], [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="levels must lie in"):
        metrics.coverage_curve(predicted, reference, std, levels=[0.5, 1.0])


def test_fixed_components_are_zero_in_both_reference_and_prediction():
    pred = [np.array([[0.0, 1e-9, 0.3]]), np.array([[2e-6, 0.0, -1e-7]])]
    ref = [np.array([[0.0, 0.0, 0.2]]), np.array([[0.0, 0.5, 0.0]])]
    np.testing.assert_array_equal(metrics.fixed_components(pred, ref),
                                  [True, True, False, False, False, True])
    np.testing.assert_array_equal(metrics.fixed_components(pred, ref, atol=1e-5),
                                  [True, True, False, True, False, True])
    with pytest.raises(ValueError, match="atol"):
        metrics.fixed_components(pred, ref, atol=-1.0)
    with pytest.raises(ValueError, match="different sizes"):
        metrics.fixed_components([0.0], [0.0, 1.0])


def test_coverage_can_leave_out_the_fixed_components():
    pred = np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    ref = np.array([0.0, 0.0, 0.0, 1.5, 2.5])
    std = np.array([0.1, 0.1, 0.1, 1.0, 0.1])
    assert metrics.coverage(pred, ref, std) == pytest.approx(0.8)
    assert metrics.coverage(pred, ref, std, exclude_fixed=True) == pytest.approx(0.5)
    assert np.isnan(metrics.coverage(np.zeros(3), np.zeros(3), np.ones(3),
                                     exclude_fixed=True))


def test_spearman_names_inputs_of_different_sizes():
    three, four = [np.zeros((3, 3))], [np.zeros((4, 3))]
    with pytest.raises(ValueError, match="spearman_std_error: predicted forces, reference "
                                         "forces and stds have different sizes"):
        metrics.spearman_std_error(three, four, three)
    with pytest.raises(ValueError, match="different sizes"):
        metrics.spearman_std_error(three, three, [np.zeros((3, 3))] * 2)


def test_element_recalibration_factors_split_the_rms_z_score_by_element():
    rng = np.random.default_rng(2)
    numbers = [np.array([1, 1, 8]), np.array([8, 1, 6, 1])]
    scale = {1: 0.5, 6: 1.0, 8: 2.0}  # each element's errors over its stds
    stds = [rng.uniform(0.1, 0.3, (len(z), 3)) for z in numbers]
    reference = [rng.normal(size=(len(z), 3)) for z in numbers]
    # errors of exactly scale × std on every component
    predicted = [r + np.array([scale[n] for n in z])[:, None] * s * rng.choice([-1, 1], s.shape)
                 for r, s, z in zip(reference, stds, numbers, strict=True)]
    factors = metrics.element_recalibration_factors(predicted, reference, stds, numbers)
    assert factors == pytest.approx(scale, rel=1e-12)
    # a fixed component (zero in both, zero std) is left out, not divided by
    predicted[0][0, 0] = reference[0][0, 0] = stds[0][0, 0] = 0.0
    assert metrics.element_recalibration_factors(predicted, reference, stds,
                                                 numbers) == pytest.approx(scale, rel=1e-12)
    # the overall factor is the RMS over every counted component
    z2 = np.concatenate([((p - r) / s).ravel()[s.ravel() > 0] ** 2
                         for p, r, s in zip(predicted, reference, stds, strict=True)])
    assert np.sqrt(z2.mean()) == pytest.approx(metrics.recalibration_factor(
        [p.ravel()[s.ravel() > 0] for p, s in zip(predicted, stds, strict=True)],
        [r.ravel()[s.ravel() > 0] for r, s in zip(reference, stds, strict=True)],
        [s.ravel()[s.ravel() > 0] for s in stds]))


@pytest.mark.parametrize("change, message", [
    ("numbers", "structure 1 has forces of shape \\(4, 3\\) for 3 atomic numbers"),
    ("structures", "numbers for 1 structures, forces for 2"),
    ("zero std", "std must be finite and > 0"),
])
def test_element_recalibration_factors_name_bad_input(change, message):
    predicted = [np.ones((3, 3)), np.ones((4, 3))]
    reference = [np.zeros((3, 3)), np.zeros((4, 3))]
    stds = [np.ones((3, 3)), np.ones((4, 3))]
    numbers = [[1, 1, 8], [8, 1, 6, 1]]
    if change == "numbers":
        numbers[1] = [8, 1, 6]
    elif change == "structures":
        numbers = numbers[:1]
    else:
        stds[1][0, 0] = 0.0
    with pytest.raises(ValueError, match=message):
        metrics.element_recalibration_factors(predicted, reference, stds, numbers)
