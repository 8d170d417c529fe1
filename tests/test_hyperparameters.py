"""Which hyperparameters are free, their checks, and the likelihood searches.

The searches are tested on synthetic likelihoods with a known optimum (a concave
quadratic in log space) and on synthetic whitened designs, so that no descriptor is
computed except in the one test of :func:`search_on_subset`.
"""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from ase.io import read
from helpers import DATA
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from kernelpot import SOAP, SparseGPPotential, SquaredExponential, gp
from kernelpot.hyperparameters import (
    HYPERPARAMETERS,
    NoiseSearch,
    check_hyperparameter_values,
    fitted_names,
    forces_unexplained,
    free_mask,
    kernel_profile_search,
    search_on_subset,
    values_kept_where_fixed,
    warn_if_force_noise_at_bound,
    warn_if_forces_unexplained,
    warn_if_signal_std_at_bound,
)

BOUNDS = {"signal_std_bounds": (1e-2, 1e2), "energy_noise_bounds": (1e-4, 1.0),
          "force_noise_bounds": (1e-4, 10.0), "stress_noise_bounds": (1e-6, 1.0)}


def _search(n_restarts=0):
    return NoiseSearch(**BOUNDS, n_restarts=n_restarts, owner="Test")


def _quadratic(optimum, hessian):
    """Concave ``-½ (θ - θ*)ᵀ H (θ - θ*)`` and its gradient."""
    def likelihood(theta):
        delta = np.asarray(theta) - optimum
        return -0.5 * float(delta @ hessian @ delta), -hessian @ delta
    return likelihood


# -- fitted_names, free_mask, values_kept_where_fixed ---------------------------------------

def test_fitted_names_from_bools_and_lists():
    assert fitted_names(True, "Test") == set(HYPERPARAMETERS)
    assert fitted_names(np.bool_(True), "Test") == set(HYPERPARAMETERS)
    assert fitted_names(False, "Test") == set()
    assert fitted_names(["signal_std", "force_noise"], "Test") == {"signal_std", "force_noise"}
    assert fitted_names(("kernel",), "Test") == {"kernel"}
    assert fitted_names(iter(["two_body", "two_body"]), "Test") == {"two_body"}
    assert fitted_names([], "Test") == set()


@pytest.mark.parametrize("optimize", ["signal_std", 1, None, 2.5])
def test_fitted_names_rejects_non_lists(optimize):
    with pytest.raises(TypeError, match="Owner: optimize must be True, False or a list"):
        fitted_names(optimize, "Owner")


def test_fitted_names_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"Owner: .*unknown hyperparameters \['sigma'\]"):
        fitted_names(["signal_std", "sigma"], "Owner")


def test_free_mask_leaves_uninformed_noise_fixed():
    every = set(HYPERPARAMETERS)
    assert free_mask(every, 5, 30) == [True, True, True, False]
    assert free_mask(every, 5, 30, n_stress=12) == [True, True, True, True]
    assert free_mask(every - {"stress_noise"}, 5, 30, n_stress=12) == [True, True, True, False]
    assert free_mask(every, 0, 30) == [True, False, True, False]
    assert free_mask(every, 5, 0) == [True, True, False, False]
    assert free_mask({"energy_noise"}, 0, 30) == [False, False, False, False]
    assert free_mask({"force_noise", "kernel"}, 5, 30) == [False, False, True, False]
    assert free_mask(every, 5, 30, n_signal=3) == [True, True, True, True, True, False]
    assert free_mask({"energy_noise"}, 5, 0, n_signal=2) == [False, False, True, False, False]


def test_values_kept_where_fixed_returns_given_values_exactly():
    given = [0.1, 0.003, 0.05]
    # exp(log(x)) is not x for these: the point of the function
    assert all(np.exp(np.log(x)) != x for x in given)
    log_params = np.log(given)
    values = values_kept_where_fixed(log_params, given, [False, False, False])
    assert values == given  # exact, not approximate
    moved = log_params + np.array([0.5, 0.0, -0.25])
    values = values_kept_where_fixed(moved, given, [True, False, True])
    assert values[1] == given[1]
    np.testing.assert_allclose([values[0], values[2]], np.exp(moved[[0, 2]]), rtol=1e-15)
    assert all(isinstance(v, float) for v in values)


def test_values_kept_where_fixed_rejects_length_mismatch():
    with pytest.raises(ValueError):
        values_kept_where_fixed(np.zeros(3), [1.0, 1.0], [True, True, True])


# -- warn_if_force_noise_at_bound ---------------------------------------------------------

def test_force_noise_at_upper_bound_warns_only_when_free():
    with pytest.warns(ConvergenceWarning, match="Owner: the fitted force noise sits at its"):
        warn_if_force_noise_at_bound(10.0, (1e-4, 10.0), True, "Owner")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_force_noise_at_bound(10.0, (1e-4, 10.0), False, "Owner")  # fixed
        warn_if_force_noise_at_bound(9.0, (1e-4, 10.0), True, "Owner")  # below
        warn_if_force_noise_at_bound(1e-4, (1e-4, 10.0), True, "Owner")  # lower bound


def test_forces_unexplained_when_the_noise_holds_most_of_their_variance():
    assert forces_unexplained(0.6, 1.0) and not forces_unexplained(0.4, 1.0)
    assert not forces_unexplained(1e-3, 1e-4)  # a lattice's zero forces: nothing to explain
    with pytest.warns(ConvergenceWarning, match=r"Owner: the fitted force noise σ_F = 0.9 "
                                                r"eV/Å is 90% of the force labels' RMS"):
        warn_if_forces_unexplained(0.9, 1.0, "Owner")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_forces_unexplained(0.2, 1.0, "Owner")


def test_a_signal_std_at_its_lower_bound_warns(caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="kernelpot")
    bounds = (0.01, 100.0)
    with pytest.warns(ConvergenceWarning, match="Owner: the fitted signal std sits at its "
                                                "lower bound 0.01 eV: the likelihood reads"):
        warn_if_signal_std_at_bound(0.01, bounds, "Owner")
    with pytest.warns(ConvergenceWarning, match="lower bound"):
        warn_if_signal_std_at_bound({"H": 0.01, "C": 0.01}, bounds, "Owner")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_signal_std_at_bound({"H": 0.01, "C": 2.0}, bounds, "Owner")  # C learned
        warn_if_signal_std_at_bound(2.0, bounds, "Owner")
        warn_if_signal_std_at_bound(100.0, bounds, "Owner")  # the upper bound: logged
    assert "sits at its upper bound 100 eV" in caplog.text
    for descriptor, advice, not_said in (("ACSF", "use SOAP", "SOAP sigma"),
                                         ("SOAP", "smaller SOAP sigma", "ACSF"),
                                         ("FeatomicSOAP", "smaller SOAP sigma", "ACSF"),
                                         ("MyACSF", "use SOAP", "SOAP sigma"),
                                         (None, "larger zeta", "ACSF")):
        caplog.clear()
        warn_if_signal_std_at_bound(100.0, bounds, "Owner", descriptor)
        assert advice in caplog.text and not_said not in caplog.text, caplog.text


# -- check_hyperparameter_values ----------------------------------------------------------

def _estimator(**changes):
    values = {"signal_std": 1.0, "energy_noise": 0.002, "force_noise": 0.05,
              "stress_noise": 0.001, **BOUNDS}
    values.update(changes)
    return SimpleNamespace(**values)


def test_check_hyperparameter_values_accepts_defaults():
    check_hyperparameter_values(_estimator(), set(HYPERPARAMETERS), "Owner")
    # a fixed start value may lie outside its bounds
    check_hyperparameter_values(_estimator(signal_std=500.0), {"force_noise"}, "Owner")


@pytest.mark.parametrize(("changes", "message"), [
    ({"signal_std": 0.0}, "Owner: signal_std must be a finite number > 0; got 0.0"),
    ({"energy_noise": -1.0}, "Owner: energy_noise must be a finite number > 0"),
    ({"force_noise": True}, "Owner: force_noise must be a finite number > 0; got True"),
    ({"force_noise": "0.1"}, "Owner: force_noise must be a finite number > 0"),
    ({"signal_std": float("nan")}, "Owner: signal_std must be a finite number > 0"),
    ({"signal_std": float("inf")}, "Owner: signal_std must be a finite number > 0"),
    ({"energy_noise_bounds": (1.0,)}, r"Owner: energy_noise_bounds must be a pair"),
    ({"energy_noise_bounds": None}, r"Owner: energy_noise_bounds must be a pair"),
    ({"force_noise_bounds": ("a", "b")}, r"Owner: force_noise_bounds must be a pair"),
    ({"signal_std_bounds": (0.0, 1.0)}, r"Owner: signal_std_bounds must satisfy 0 < low"),
    ({"force_noise_bounds": (2.0, 1.0)}, r"Owner: force_noise_bounds must satisfy 0 < low"),
    ({"signal_std": 500.0}, r"Owner: signal_std=500.0 lies outside signal_std_bounds"),
    ({"force_noise": 1e-6}, r"Owner: force_noise=1e-06 lies outside force_noise_bounds"),
])
def test_check_hyperparameter_values_names_the_parameter(changes, message):
    with pytest.raises(ValueError, match=message):
        check_hyperparameter_values(_estimator(**changes), set(HYPERPARAMETERS), "Owner")


# -- NoiseSearch on synthetic likelihoods -------------------------------------------------

HESSIAN = np.array([[4.0, 1.0, 0.5, 0.2], [1.0, 3.0, -0.8, 0.0], [0.5, -0.8, 2.0, 0.3],
                    [0.2, 0.0, 0.3, 1.0]])
OPTIMUM = np.log([3.0, 0.01, 0.2, 0.003])  # inside the bounds


def test_noise_search_finds_a_known_maximum():
    start = np.log([1.0, 0.002, 0.05, 0.001])
    found = _search().optimize(_quadratic(OPTIMUM, HESSIAN), start,
                               np.random.RandomState(0), [True] * 4)
    # L-BFGS-B stops at a relative decrease of LIKELIHOOD_FTOL (1e-7 of max(|log L|, 1))
    np.testing.assert_allclose(found, OPTIMUM, atol=1e-3)


def test_noise_search_keeps_fixed_entries_exactly():
    start = np.log([1.0, 0.002, 0.05, 0.001])
    free = [True, False, True, True]
    found = _search(n_restarts=3).optimize(_quadratic(OPTIMUM, HESSIAN), start,
                                           np.random.RandomState(0), free)
    assert found[1] == start[1]  # exact: a fixed entry never moves
    # the free entries go to the conditional optimum given the fixed one
    f = np.array(free)
    conditional = OPTIMUM[f] - np.linalg.solve(HESSIAN[np.ix_(f, f)],
                                               HESSIAN[np.ix_(f, ~f)] @ (start[~f] - OPTIMUM[~f]))
    np.testing.assert_allclose(found[f], conditional, atol=1e-5)


def test_noise_search_keeps_a_fixed_entry_outside_its_bounds():
    start = np.log([1.0, 5.0, 0.05, 0.001])  # energy noise above its upper bound 1.0, fixed
    found = _search(n_restarts=2).optimize(_quadratic(OPTIMUM, HESSIAN), start,
                                           np.random.RandomState(1), [True, False, True, True])
    assert found[1] == start[1]


def test_noise_search_stops_at_the_bound_and_clips_starts():
    seen = []
    outside = np.log([3.0, 0.01, 1e3, 0.003])  # force noise optimum above its bound 10 eV/Å
    quadratic = _quadratic(outside, np.diag([2.0, 2.0, 2.0, 2.0]))

    def likelihood(theta):
        seen.append(np.array(theta))
        return quadratic(theta)

    start = np.log([1e4, 1e-6, 50.0, 100.0])  # every entry outside its bounds
    extra = np.log([1e-5, 10.0, 1e-6, 1e-8])
    found = _search(n_restarts=2).optimize(likelihood, start, np.random.RandomState(0),
                                           [True] * 4, extra_starts=[extra])
    low = np.log([BOUNDS[k][0] for k in BOUNDS])
    high = np.log([BOUNDS[k][1] for k in BOUNDS])
    seen = np.array(seen)
    assert np.all(seen >= low - 1e-12) and np.all(seen <= high + 1e-12)
    np.testing.assert_allclose(found, np.log([3.0, 0.01, 10.0, 0.003]), atol=1e-5)


def test_noise_search_uses_extra_starts_and_restarts():
    # two maxima in log σ: a low one at log σ = -2, a high one at log σ = 3
    def likelihood(theta):
        a = np.exp(-2.0 * (theta[0] + 2.0) ** 2)
        b = 2.0 * np.exp(-2.0 * (theta[0] - 3.0) ** 2)
        value = a + b - 0.5 * float(theta[1:] @ theta[1:]) * 1e-3
        grad = np.array([-4.0 * (theta[0] + 2.0) * a - 4.0 * (theta[0] - 3.0) * b,
                         *(-1e-3 * theta[1:])])
        return value, grad

    start = np.array([-2.2, -3.0, -1.0, -7.0])
    free = [True, False, False, False]
    search = _search()
    local = search.optimize(likelihood, start, np.random.RandomState(0), free)
    np.testing.assert_allclose(local[0], -2.0, atol=1e-4)
    best = search.optimize(likelihood, start, np.random.RandomState(0), free,
                           extra_starts=[np.array([2.5, 0.0, 0.0, 0.0])])
    np.testing.assert_allclose(best[0], 3.0, atol=1e-4)
    np.testing.assert_allclose(best[1:], start[1:], rtol=0, atol=0)  # fixed entries kept
    restarted = search.optimize(likelihood, start, np.random.RandomState(0), free, restarts=20)
    np.testing.assert_allclose(restarted[0], 3.0, atol=1e-4)


def test_noise_search_keeps_the_start_when_the_likelihood_fails_everywhere():
    calls = []

    def likelihood(theta):
        calls.append(1)
        return -np.inf, np.zeros_like(theta)

    start = np.log([1e4, 0.002, 0.05, 0.001])  # outside the bounds: returned as given
    with pytest.warns(ConvergenceWarning, match="Test: the marginal likelihood could not"):
        found = _search(n_restarts=2).optimize(likelihood, start, np.random.RandomState(0),
                                               [True] * 4)
    np.testing.assert_array_equal(found, start)
    assert len(calls) >= 3  # every start was tried


def test_noise_search_with_nan_likelihood_keeps_the_start():
    def likelihood(theta):
        return np.nan, np.full_like(theta, np.nan)

    start = np.log([1.0, 0.002, 0.05, 0.001])
    with pytest.warns(ConvergenceWarning):
        found = _search().optimize(likelihood, start, np.random.RandomState(0), [True] * 4)
    np.testing.assert_array_equal(found, start)


def test_noise_search_avoids_a_region_where_the_likelihood_fails():
    quadratic = _quadratic(OPTIMUM, HESSIAN)

    def likelihood(theta):
        if theta[0] > np.log(20.0):  # cannot be evaluated for large σ
            return -np.inf, np.zeros(4)
        return quadratic(theta)

    found = _search(n_restarts=4).optimize(likelihood, np.log([1.0, 0.002, 0.05, 0.001]),
                                           np.random.RandomState(3), [True] * 4)
    # L-BFGS-B stops at a relative decrease of LIKELIHOOD_FTOL (1e-7 of max(|log L|, 1))
    np.testing.assert_allclose(found, OPTIMUM, atol=1e-3)


def _synthetic_statistics(seed=0, n_energy=8, n_force=60, n_columns=5, theta=0.0):
    """Whitened statistics of a synthetic design ``A + θ B`` and labels drawn from it."""
    rng = np.random.default_rng(seed)
    A_E, B_E = rng.normal(size=(2, n_energy, n_columns))
    A_F, B_F = rng.normal(size=(2, n_force, n_columns))
    n_atoms = rng.integers(3, 10, n_energy).astype(float)
    w = rng.normal(size=n_columns)
    true_theta = 0.7
    y_E = 2.0 * (A_E + true_theta * B_E) @ w + 0.05 * np.sqrt(n_atoms) * rng.normal(
        size=n_energy)
    y_F = 2.0 * (A_F + true_theta * B_F) @ w + 0.3 * rng.normal(size=n_force)

    def statistics(t):
        return gp.whitened_statistics(A_E + t * B_E, n_atoms, y_E, A_F + t * B_F, y_F)

    return statistics(theta), statistics


def test_noise_search_on_whitened_statistics():
    stats, _ = _synthetic_statistics()
    start = np.log([1.0, 0.002, 0.05, 0.001])
    search = _search(n_restarts=2)
    free = [True, True, True, False]  # no stress rows: σ_S is not informed
    found = search.optimize(stats, start, np.random.RandomState(0), free)
    value, grad = gp.log_marginal_likelihood(found, stats, eval_gradient=True)
    assert value > gp.log_marginal_likelihood(start, stats)
    # an interior maximum: the gradient vanishes
    low = np.log([BOUNDS[k][0] for k in BOUNDS])
    high = np.log([BOUNDS[k][1] for k in BOUNDS])
    assert np.all((found > low + 1e-3) & (found < high - 1e-3))
    np.testing.assert_allclose(grad, 0.0, atol=1e-3)
    # the statistics and the callable on them are the same search
    same = search.optimize(lambda t: gp.log_marginal_likelihood(t, stats, eval_gradient=True),
                           start, np.random.RandomState(0), free)
    np.testing.assert_allclose(same, found, rtol=0, atol=1e-12)


def test_noise_search_of_an_estimator():
    estimator = SparseGPPotential(signal_std_bounds=(0.5, 5.0), energy_noise_bounds=(1e-3, 1e-1),
                                  force_noise_bounds=(1e-2, 1.0), n_restarts=4, method="sparse")
    search = NoiseSearch.of(estimator)
    assert search.signal_std_bounds == (0.5, 5.0)
    assert search.energy_noise_bounds == (1e-3, 1e-1)
    assert search.force_noise_bounds == (1e-2, 1.0)
    assert search.n_restarts == 4
    assert search.owner == "SparseGPPotential"


# -- kernel_profile_search on a synthetic design ------------------------------------------

class _MixKernel:
    """A stand-in kernel with one hyperparameter ``θ`` mixing two synthetic designs."""

    theta_names = ["mix"]
    n_theta = 1
    bounds = np.array([[-1.0, 2.0]])

    def __init__(self, theta):
        self.theta = np.array([float(theta)])

    def clone_with_theta(self, theta):
        return _MixKernel(np.asarray(theta).ravel()[0])


def test_kernel_profile_search_maximises_the_profile():
    _, statistics = _synthetic_statistics(seed=1, n_force=120)

    def likelihood_at(trial):
        t = float(trial.theta[0])
        stats = statistics(t)

        def gradient(inner, h=1e-6):  # ∂ log p / ∂θ at fixed noise levels
            plus = gp.log_marginal_likelihood(inner, statistics(t + h))
            minus = gp.log_marginal_likelihood(inner, statistics(t - h))
            return np.array([(plus - minus) / (2 * h)])

        return stats, gradient

    search = _search()
    start = np.log([1.0, 0.01, 0.1, 0.001])
    free = [True, True, True, False]
    kernel, inner = kernel_profile_search(_MixKernel(0.0), start, free, likelihood_at,
                                          search, seed=0, owner="Test")

    def profile(t):
        stats = statistics(t)
        best = search.optimize(stats, start, np.random.RandomState(0), free)
        return gp.log_marginal_likelihood(best, stats)

    grid = np.linspace(-1.0, 2.0, 31)
    on_grid = max(profile(t) for t in grid)
    found = float(kernel.theta[0])
    assert -1.0 <= found <= 2.0
    # each search stops at a relative decrease of LIKELIHOOD_FTOL (1e-7 of |log L|)
    assert profile(found) >= on_grid - 1e-4
    assert profile(found) > profile(0.0) + 1.0  # it moved from a worse start
    # the inner optimum returned is that of the kernel returned
    np.testing.assert_allclose(gp.log_marginal_likelihood(inner, statistics(found)),
                               profile(found), rtol=0, atol=1e-4)


def test_kernel_profile_search_without_free_noise_keeps_it():
    _, statistics = _synthetic_statistics(seed=2)
    start = np.log([2.0, 0.05, 0.3, 0.001])

    def likelihood_at(trial):
        t = float(trial.theta[0])

        def gradient(inner, h=1e-6):
            plus = gp.log_marginal_likelihood(inner, statistics(t + h))
            minus = gp.log_marginal_likelihood(inner, statistics(t - h))
            return np.array([(plus - minus) / (2 * h)])

        return statistics(t), gradient

    kernel, inner = kernel_profile_search(_MixKernel(-0.5), start, [False] * 4,
                                          likelihood_at, _search(), seed=0, owner="Test")
    np.testing.assert_array_equal(inner, start)
    grid = np.linspace(-1.0, 2.0, 61)
    values = [gp.log_marginal_likelihood(start, statistics(t)) for t in grid]
    found = gp.log_marginal_likelihood(start, statistics(float(kernel.theta[0])))
    assert found >= max(values) - 1e-6


# -- search_on_subset ---------------------------------------------------------------------

def test_search_on_subset_fits_a_clone_on_the_chosen_structures():
    frames = read(DATA / "ethanol_xtb_500K_60.xyz", ":8")
    soap = SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)
    estimator = SparseGPPotential(soap, SquaredExponential(1.0), n_sparse=6,
                                  optimize=["kernel", "signal_std"], search_frames=3,
                                  n_restarts=0, method="sparse")
    before = estimator.get_params(deep=False)
    kernel, start = search_on_subset(estimator, frames, estimator.kernel,
                                     np.random.RandomState(0))
    assert estimator.get_params(deep=False) == before  # not changed
    assert not hasattr(estimator, "posterior_")
    # the same subset and seed, fitted directly
    rng = np.random.RandomState(0)
    chosen = np.sort(rng.choice(len(frames), size=3, replace=False))
    direct = clone(estimator).set_params(search_frames=None, random_state=rng.randint(2**31 - 1))
    direct.fit([frames[k] for k in chosen])
    np.testing.assert_allclose(kernel.theta, direct.kernel_.theta, rtol=1e-10)
    assert kernel.theta[0] != estimator.kernel.theta[0]  # the search moved it
    # unfitted noise levels: the given values; the fitted signal std: the subset's
    np.testing.assert_allclose(start[1:], np.log([estimator.energy_noise,
                                                  estimator.force_noise,
                                                  estimator.stress_noise]), rtol=0, atol=0)
    np.testing.assert_allclose(start[0], np.log(direct.signal_std_), rtol=1e-12)
