"""SparseGPPotential: physics, learned noise, variances, scikit-learn contract, bad input."""

import logging
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import SHARED_DATA, assert_symmetries, emt_copper_frames, numerical_forces
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from kernelpot import ACSF, SOAP, SparseGPPotential
from kernelpot.kernels import NormalizedDotProduct, Scaled, SquaredExponential


def _energy(model, atoms):
    return model.predict([atoms])[0]


# -- physics -------------------------------------------------------------------------
def test_forces_are_minus_energy_gradient(fitted_ethanol, ethanol_frames):
    atoms = ethanol_frames[45].copy()
    forces = fitted_ethanol.predict_forces([atoms])[0]
    fd = numerical_forces(fitted_ethanol, atoms, range(len(atoms)), h=1e-4)
    np.testing.assert_allclose(forces, fd, rtol=1e-5, atol=1e-6)


def test_periodic_forces_are_minus_energy_gradient():
    frames = emt_copper_frames(6, seed=3, rattle=0.2)
    model = SparseGPPotential(SOAP(["Cu"], 4.0, n_max=4, l_max=3, sigma=0.5), n_sparse=30,
                              random_state=0, method="sparse").fit(frames[:5])
    atoms = frames[5]
    forces = model.predict_forces([atoms])[0]
    fd = numerical_forces(model, atoms, [0, 7], h=1e-4)
    np.testing.assert_allclose(forces[[0, 7]], fd, rtol=1e-4, atol=1e-4)


def test_invariances_and_equivariance(fitted_ethanol, ethanol_frames):
    assert_symmetries(fitted_ethanol, ethanol_frames[50])


def test_size_extensivity(fitted_ethanol, ethanol_frames):
    atoms = ethanol_frames[40]
    far = atoms.copy()
    far.positions += np.array([30.0, 0.0, 0.0])
    pair = atoms + far
    e1 = _energy(fitted_ethanol, atoms)
    e2 = _energy(fitted_ethanol, pair)
    assert e2 == pytest.approx(2 * e1, rel=1e-12)
    f1, s1 = fitted_ethanol.predict_forces([atoms], return_std=True)
    f2, s2 = fitted_ethanol.predict_forces([pair], return_std=True)
    n = len(atoms)
    np.testing.assert_allclose(f2[0][:n], f1[0], atol=1e-10)
    np.testing.assert_allclose(f2[0][n:], f1[0], atol=1e-10)
    np.testing.assert_allclose(s2[0][:n], s1[0], rtol=1e-8)
    np.testing.assert_allclose(s2[0][n:], s1[0], rtol=1e-8)
    local = fitted_ethanol.predict_local_energies([atoms, pair])
    assert local[0].sum() == pytest.approx(e1, rel=1e-12)
    np.testing.assert_allclose(local[1], np.tile(local[0], 2), rtol=1e-10)


def test_all_inducing_fits_training_forces_well(fitted_ethanol, ethanol_frames):
    """With every training environment inducing, training forces fit to near the noise."""
    train_r2 = fitted_ethanol.score(ethanol_frames[:30])
    test_r2 = fitted_ethanol.score(ethanol_frames[30:])
    assert train_r2 > 0.97
    assert 0.5 < test_r2 < train_r2


# -- hyperparameters, noise ---------------------------------------------------------------
def test_learned_force_noise():
    """Known noise σ_F = 0.05 eV/Å on EMT Cu forces is learned to within 25 %."""
    descriptor = SOAP(["Cu"], 4.5, n_max=4, l_max=3, sigma=0.5)
    noisy = SparseGPPotential(descriptor, n_sparse=200, random_state=0, method="sparse").fit(
        emt_copper_frames(40, seed=0, force_noise=0.05))
    assert noisy.force_noise_ == pytest.approx(0.05, rel=0.25)
    clean = SparseGPPotential(descriptor, n_sparse=200, random_state=0, method="sparse").fit(
        emt_copper_frames(40, seed=0, force_noise=0.0))
    assert clean.force_noise_ < 0.4 * 0.05


def test_optimize_false_keeps_given_values(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, signal_std=2.0, energy_noise=0.003, force_noise=0.07,
                              optimize=False, sparse_method="all",
                              method="sparse").fit(ethanol_frames[:10])
    assert (model.signal_std_, model.energy_noise_, model.force_noise_) == (2.0, 0.003, 0.07)
    optimised = SparseGPPotential(small_soap, signal_std=2.0, energy_noise=0.003,
                                  force_noise=0.07, sparse_method="all",
                                  method="sparse").fit(ethanol_frames[:10])
    assert optimised.log_marginal_likelihood() > model.log_marginal_likelihood()
    partial = SparseGPPotential(small_soap, signal_std=2.0, energy_noise=0.003,
                                force_noise=0.07, optimize=["signal_std", "force_noise"],
                                sparse_method="all", method="sparse").fit(ethanol_frames[:10])
    assert partial.energy_noise_ == 0.003
    assert partial.force_noise_ != 0.07 and partial.signal_std_ != 2.0
    assert model.log_marginal_likelihood() < partial.log_marginal_likelihood() <= \
        optimised.log_marginal_likelihood() + 1e-6
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        SparseGPPotential(small_soap, optimize=["energy"], method="sparse").fit(ethanol_frames[:3])
    with pytest.raises(TypeError, match="optimize must be"):
        SparseGPPotential(small_soap, optimize="all", method="sparse").fit(ethanol_frames[:3])


def test_log_marginal_likelihood_gradient(fitted_ethanol):
    theta = np.log([2.0, 0.005, 0.08, 0.001])
    value, grad = fitted_ethanol.log_marginal_likelihood(theta, eval_gradient=True)
    assert grad[3] == 0.0  # no stress observations
    # h = 1e-4: the central difference's truncation error (~1e-6 here) stays far below
    # the tolerance, and so does the round-off of a likelihood of a few hundred (at
    # h = 1e-6 that round-off reached 1.3e-4 on one machine's BLAS)
    h = 1e-4
    for t in range(3):
        step = np.zeros(4)
        step[t] = h
        fd = (fitted_ethanol.log_marginal_likelihood(theta + step)
              - fitted_ethanol.log_marginal_likelihood(theta - step)) / (2 * h)
        assert grad[t] == pytest.approx(fd, rel=1e-5, abs=1e-4)
    # the fitted point is a maximum within the bounds: gradient small there
    _, grad = fitted_ethanol.log_marginal_likelihood(eval_gradient=True)
    assert np.abs(grad).max() < 1.0


def test_squared_exponential_length_scale_is_fitted(ethanol_frames):
    descriptor = ACSF.from_grid(["H", "C", "O"], 4.0, n_radial=6, n_angular=4)
    fixed = SparseGPPotential(descriptor, SquaredExponential(5.0, length_scale_bounds="fixed"),
                              sparse_method="all", random_state=0,
                              method="sparse").fit(ethanol_frames[:15])
    fitted = SparseGPPotential(descriptor, SquaredExponential(5.0, (0.5, 50.0)),
                               sparse_method="all", random_state=0,
                               method="sparse").fit(ethanol_frames[:15])
    assert fixed.kernel_.length_scale == 5.0
    assert fitted.kernel_.length_scale != 5.0
    assert 0.5 <= fitted.kernel_.length_scale <= 50.0
    assert fitted.log_marginal_likelihood() > fixed.log_marginal_likelihood()
    assert fitted.score(ethanol_frames[15:25]) > 0.5


def test_sum_kernel_hyperparameters_maximise_the_likelihood(ethanol_frames, tmp_path):
    """The fitted kernel θ is a (bounded) maximum of the profile likelihood."""
    descriptor = ACSF.from_grid(["H", "C", "O"], 4.0, n_radial=5, n_angular=3)
    kernel = NormalizedDotProduct(2) + Scaled(SquaredExponential(3.0, (0.3, 30.0)), 0.3,
                                              (1e-3, 10.0))
    frames = ethanol_frames[:10]
    fitted = SparseGPPotential(descriptor, kernel, sparse_method="all", n_restarts=0,
                               random_state=0, method="sparse").fit(frames)
    best = fitted.log_marginal_likelihood()
    theta = fitted.kernel_.theta
    assert not np.allclose(theta, kernel.theta)
    bounds = fitted.kernel_.bounds
    for t in range(len(theta)):
        for sign in (-1, 1):
            moved = theta.copy()
            moved[t] = np.clip(moved[t] + sign * 0.1, *bounds[t])
            if moved[t] == theta[t]:
                continue
            trial = fitted.kernel_.clone_with_theta(moved)
            fixed = SparseGPPotential(descriptor, _fixed(trial), sparse_method="all",
                                      n_restarts=0, random_state=0, method="sparse").fit(frames)
            assert fixed.log_marginal_likelihood() <= best + 1e-3
    # a composite kernel survives save/load
    from kernelpot import load

    fitted.save(tmp_path / "sum.npz")
    loaded = load(tmp_path / "sum.npz")
    assert repr(loaded.kernel_) == repr(fitted.kernel_)
    np.testing.assert_array_equal(loaded.predict(ethanol_frames[20:22]),
                                  fitted.predict(ethanol_frames[20:22]))


def test_kernel_search_on_a_subset(ethanol_frames):
    descriptor = ACSF.from_grid(["H", "C", "O"], 4.0, n_radial=5, n_angular=3)
    kernel = NormalizedDotProduct(2) + Scaled(SquaredExponential(3.0, (0.3, 30.0)), 0.3,
                                              (1e-3, 10.0))
    frames = ethanol_frames[:16]
    model = SparseGPPotential(descriptor, kernel, sparse_method="all", n_restarts=0,
                              search_frames=6, random_state=0, method="sparse").fit(frames)
    assert not np.allclose(model.kernel_.theta, kernel.theta)
    assert model.kernel_.k2.scale_bounds == (1e-3, 10.0)  # bounds kept
    assert sum(model.n_inducing_.values()) == 16 * 9  # every environment of all 16
    # the full fit keeps the subset's kernel and fits the noise levels on all structures
    refit = SparseGPPotential(descriptor, _fixed(model.kernel_), sparse_method="all",
                              n_restarts=0, random_state=0, method="sparse").fit(frames)
    assert refit.log_marginal_likelihood() == pytest.approx(model.log_marginal_likelihood(),
                                                            abs=1e-3)
    assert model.score(ethanol_frames[20:30]) > 0.5
    with pytest.raises(ValueError, match="search_frames must be None or an int >= 2"):
        SparseGPPotential(descriptor, kernel, search_frames=1, method="sparse").fit(frames)


def _fixed(kernel):
    """A copy of a kernel with every hyperparameter fixed."""
    params = {name: "fixed" for name in kernel.get_params() if name.endswith("_bounds")}
    return clone(kernel).set_params(**params)


def test_partial_labels(ethanol_frames, small_soap):
    frames = [a.copy() for a in ethanol_frames[:12]]
    for k, atoms in enumerate(frames):
        src = ethanol_frames[k]
        if k % 3 == 0:  # energy only
            atoms.calc = SinglePointCalculator(atoms, energy=src.get_potential_energy())
        elif k % 3 == 1:  # forces only
            atoms.calc = SinglePointCalculator(atoms, forces=src.get_forces())
        else:
            atoms.calc = SinglePointCalculator(atoms, energy=src.get_potential_energy(),
                                               forces=src.get_forces())
    model = SparseGPPotential(small_soap, sparse_method="all", method="sparse").fit(frames)
    assert np.isfinite(model.log_marginal_likelihood())
    forces_only = [a.copy() for a in ethanol_frames[:6]]
    for atoms, src in zip(forces_only, ethanol_frames[:6], strict=True):
        atoms.calc = SinglePointCalculator(atoms, forces=src.get_forces())
    model = SparseGPPotential(small_soap, sparse_method="all", method="sparse").fit(forces_only)
    assert model.energy_noise_ == 0.002  # no energies: nothing to learn it from


# -- variances --------------------------------------------------------------------------
def test_variances_non_negative_and_split(fitted_ethanol, ethanol_frames):
    frames = ethanol_frames[30:36]
    energies, total = fitted_ethanol.predict(frames, return_std=True)
    _, epistemic = fitted_ethanol.predict(frames, return_std=True, std_type="epistemic")
    np.testing.assert_allclose(total**2, epistemic**2 + fitted_ethanol.energy_noise_**2 * 9,
                               rtol=1e-10)
    _, f_total = fitted_ethanol.predict_forces(frames, return_std=True)
    _, f_epi = fitted_ethanol.predict_forces(frames, return_std=True, std_type="epistemic")
    for t, e in zip(f_total, f_epi, strict=True):
        assert np.all(e >= 0) and np.all(np.isfinite(e))
        np.testing.assert_allclose(t**2, e**2 + fitted_ethanol.force_noise_**2, rtol=1e-10)
    with pytest.raises(ValueError, match="std_type"):
        fitted_ethanol.predict(frames, return_std=True, std_type="aleatoric-ish")


def test_variance_grows_far_from_data(fitted_ethanol, ethanol_frames):
    atoms = ethanol_frames[50]
    squeezed = atoms.copy()
    squeezed.positions = atoms.positions.mean(axis=0) + 0.8 * (
        atoms.positions - atoms.positions.mean(axis=0))
    _, normal = fitted_ethanol.predict_forces([atoms], return_std=True, std_type="epistemic")
    _, odd = fitted_ethanol.predict_forces([squeezed], return_std=True, std_type="epistemic")
    assert odd[0].mean() > 2 * normal[0].mean()


@pytest.mark.skipif(not (SHARED_DATA / "xtb").exists(), reason="../shared/data not available")
def test_uncertainty_on_shared_xtb_data(small_soap):
    """Std larger out of distribution (1000 K) than in distribution; shrinks with more data."""
    from ase.io import read

    frames = read(SHARED_DATA / "xtb" / "ethanol_500K.xyz", ":")
    hot = read(SHARED_DATA / "xtb" / "ethanol_1000K.xyz", "::25")
    idx = np.arange(len(frames))
    test = [frames[i] for i in idx[idx % 4 == 3][::20]]
    rest = idx[idx % 4 != 3]
    order = np.random.default_rng(0).permutation(rest)
    means = {}
    for n in (40, 150):
        model = SparseGPPotential(small_soap, random_state=0, n_restarts=0,
                                  method="sparse").fit([frames[i] for i in order[:n]])
        _, std_test = model.predict_forces(test, return_std=True)
        means[n] = np.mean(np.concatenate([s.ravel() for s in std_test]))
        if n == 150:
            _, std_hot = model.predict_forces(hot, return_std=True)
            hot_mean = np.mean(np.concatenate([s.ravel() for s in std_hot]))
            assert hot_mean > means[150]
    assert means[150] < means[40]


# -- scikit-learn contract -----------------------------------------------------------------
def test_constructor_stores_and_no_fitted_attributes(small_soap):
    model = SparseGPPotential(small_soap, n_sparse=10, method="sparse")
    assert model.get_params()["n_sparse"] == 10
    assert not [k for k in vars(model) if k.endswith("_") and not k.startswith("_")]
    with pytest.raises(NotFittedError):
        model.predict([Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]])])


def test_clone_and_nested_params(small_soap):
    model = SparseGPPotential(small_soap, n_sparse=10, method="sparse")
    twin = clone(model)
    assert twin.get_params()["descriptor"] is not small_soap
    twin.set_params(descriptor__r_cut=3.5, force_noise=0.1)
    assert twin.descriptor.r_cut == 3.5 and small_soap.r_cut == 4.0
    assert model.get_params(deep=True)["descriptor__n_max"] == 4


def test_fit_returns_self_and_refit_equals_fresh_fit(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, n_sparse=20, random_state=1, method="sparse")
    assert model.fit(ethanol_frames[:8]) is model
    model.fit(ethanol_frames[8:16])
    fresh = SparseGPPotential(small_soap, n_sparse=20, random_state=1,
                              method="sparse").fit(ethanol_frames[8:16])
    np.testing.assert_array_equal(model.predict(ethanol_frames[20:22]),
                                  fresh.predict(ethanol_frames[20:22]))


@pytest.mark.parametrize("method", ["cur", "fps", "random"])
def test_sparse_methods_deterministic(method, ethanol_frames, small_soap):
    kwargs = {"n_sparse": {"H": 15, "C": 6}, "sparse_method": method, "random_state": 3}
    a = SparseGPPotential(small_soap, **kwargs).fit(ethanol_frames[:6])
    b = SparseGPPotential(small_soap, **kwargs).fit(ethanol_frames[:6])
    assert a.n_inducing_ == {"H": 15, "C": 6, "O": 6}
    for za, zb in zip(a.inducing_, b.inducing_, strict=True):
        np.testing.assert_array_equal(za, zb)


def test_n_jobs_does_not_change_results(ethanol_frames, small_soap):
    serial = SparseGPPotential(small_soap, n_sparse=20, random_state=0,
                               method="sparse").fit(ethanol_frames[:6])
    parallel = SparseGPPotential(small_soap, n_sparse=20, random_state=0, n_jobs=2,
                                 method="sparse").fit(
        ethanol_frames[:6])
    np.testing.assert_allclose(parallel.predict(ethanol_frames[10:12]),
                               serial.predict(ethanol_frames[10:12]), rtol=1e-9)


def test_cross_val_score_and_grid_search(ethanol_frames, small_soap):
    frames = ethanol_frames[:12]
    model = SparseGPPotential(small_soap, n_sparse=20, random_state=0, method="sparse")
    scores = cross_val_score(model, frames, cv=KFold(3))
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    search = GridSearchCV(model, {"descriptor__r_cut": [3.5, 4.0]}, cv=KFold(2))
    search.fit(frames)
    assert search.best_params_["descriptor__r_cut"] in (3.5, 4.0)
    assert np.isfinite(search.best_score_)


def test_scorers_for_cross_validation_read_the_references_from_the_structures(
        fitted_ethanol, ethanol_frames, small_soap):
    from kernelpot import metrics

    test = ethanol_frames[40:44]
    forces = fitted_ethanol.predict_forces(test)
    assert metrics.neg_force_mae(fitted_ethanol, test) == pytest.approx(
        -metrics.mae(forces, [a.get_forces() for a in test]), rel=1e-12)
    energies = fitted_ethanol.predict(test)
    reference = np.array([a.get_potential_energy() for a in test])
    assert metrics.neg_energy_mae(fitted_ethanol, test) == pytest.approx(
        -np.mean(np.abs(energies - reference)) / 9, rel=1e-12)
    model = SparseGPPotential(small_soap, n_sparse=20, random_state=0, method="sparse")
    scores = cross_val_score(model, ethanol_frames[:12], cv=KFold(3),
                             scoring=metrics.neg_force_mae)
    assert scores.shape == (3,) and np.all(scores < 0) and np.all(np.isfinite(scores))
    with pytest.raises(TypeError, match="y must be None"):
        metrics.neg_energy_mae(fitted_ethanol, test, y=reference)
    bare = [a.copy() for a in test]  # copies drop the labels
    with pytest.raises(ValueError, match="carries an energy or forces"):
        metrics.neg_force_mae(fitted_ethanol, bare)


# -- bad input -------------------------------------------------------------------------------
def test_bad_input(fitted_ethanol, ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, n_sparse=10, method="sparse")
    with pytest.raises(ValueError, match="empty list"):
        model.fit([])
    with pytest.raises(TypeError, match="y must be None"):
        model.fit(ethanol_frames[:3], y=np.zeros(3))
    with pytest.raises(TypeError, match="single Atoms"):
        model.fit(ethanol_frames[0])
    unlabelled = [Atoms(a.symbols, a.positions) for a in ethanol_frames[:3]]
    with pytest.raises(ValueError, match="carries an energy or forces"):
        model.fit(unlabelled)
    nan_label = ethanol_frames[0].copy()
    nan_label.calc = SinglePointCalculator(nan_label, energy=np.nan)
    with pytest.raises(ValueError, match="non-finite energy"):
        model.fit([nan_label])
    wrong_shape = ethanol_frames[0].copy()
    wrong_shape.calc = SinglePointCalculator(wrong_shape, energy=1.0, forces=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="forces of shape"):
        model.fit([wrong_shape])
    water = Atoms("H2N", positions=[[0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    with pytest.raises(ValueError, match=r"not trained on: \['N'\]"):
        fitted_ethanol.predict([water])
    with pytest.raises(ValueError, match="sparse_method"):
        SparseGPPotential(small_soap, sparse_method="kmeans",
                          method="sparse").fit(ethanol_frames[:3])
    with pytest.raises(ValueError, match="force_noise must be"):
        SparseGPPotential(small_soap, force_noise=-1, method="sparse").fit(ethanol_frames[:3])
    with pytest.raises(ValueError, match="n_sparse names 'N'"):
        SparseGPPotential(small_soap, n_sparse={"N": 3}, method="sparse").fit(ethanol_frames[:3])
    with pytest.raises(TypeError, match="descriptor must be"):
        SparseGPPotential("soap", method="sparse").fit(ethanol_frames[:3])
    nan_positions = ethanol_frames[1].copy()
    nan_positions.positions[0, 0] = np.nan
    # the method and the structure are named, in batches and one structure at a time
    with pytest.raises(ValueError, match=r"SparseGPPotential.predict_forces: structure 1: "
                       r"positions must be finite; atoms \[0\] have NaN or inf"):
        fitted_ethanol.predict_forces([ethanol_frames[0], nan_positions])
    with pytest.raises(ValueError, match=r"SparseGPPotential.predict_structure: positions "
                       r"must be finite; atoms \[0\]"):
        fitted_ethanol.predict_structure(nan_positions)
    with pytest.raises(ValueError, match="SparseGPPotential.predict_forces: got an empty list"):
        fitted_ethanol.predict_forces([])


def test_force_noise_at_upper_bound_warns(ethanol_frames, small_soap):
    """Forces that contradict the energies: the likelihood gives up on them, with a warning."""
    frames = []
    rng = np.random.default_rng(0)
    for atoms in ethanol_frames[:8]:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                          forces=rng.normal(0, 30.0, (len(atoms), 3)))
        frames.append(copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGPPotential(small_soap, n_sparse=5, force_noise_bounds=(1e-3, 1.0),
                          random_state=0, method="sparse").fit(frames)
    assert any("force noise sits at its upper bound" in str(w.message) for w in caught)


def test_a_fit_that_reads_the_forces_as_noise_warns(ethanol_frames, small_soap):
    """One inducing environment per element cannot carry the forces of eight frames: the
    likelihood puts them into σ_F, and the user is told; a model that learns them is not."""
    with pytest.warns(ConvergenceWarning, match=r"the fitted force noise σ_F = [\d.]+ eV/Å "
                                                r"is \d+% of the force labels' RMS.*noise"):
        model = SparseGPPotential(small_soap, n_sparse=1, random_state=0,
                                  method="sparse").fit(ethanol_frames[:8])
    forces = np.concatenate([a.get_forces() for a in ethanol_frames[:8]])
    assert model.force_noise_ > 0.5 * np.sqrt(np.mean(forces**2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        SparseGPPotential(small_soap, random_state=0, method="sparse").fit(ethanol_frames[:8])


def _scaled_labels(frames, factor):
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=factor * atoms.get_potential_energy(),
                                          forces=factor * atoms.get_forces())
        out.append(copy)
    return out


def test_signal_std_at_upper_bound_is_logged(ethanol_frames, small_soap, caplog):
    """A logged warning, not when σ is given. Labels 1000 times larger than the kernel
    reaches within signal_std_bounds (here up to 100 eV)."""
    frames = _scaled_labels(ethanol_frames[:6], 1e3)
    model = SparseGPPotential(small_soap, n_sparse=20, random_state=0, method="sparse",
                              signal_std_bounds=(1e-2, 1e2))
    with caplog.at_level(logging.WARNING, logger="kernelpot"):
        model.fit(frames)
    assert model.signal_std_ == pytest.approx(100.0)
    assert "signal std sits at its upper bound 100 eV" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kernelpot"):
        clone(model).set_params(signal_std=100.0, optimize=["energy_noise", "force_noise"]).fit(
            frames)
    assert "signal std" not in caplog.text


def test_calibrate_scales_every_std_and_survives_save_load(fitted_ethanol, ethanol_frames,
                                                           tmp_path, float64_factor_files):
    from kernelpot import KernelPotCalculator, load

    valid, test = ethanol_frames[30:45], ethanol_frames[45:55]
    _, raw_e = fitted_ethanol.predict(test, return_std=True, std_type="epistemic")
    _, raw_f = fitted_ethanol.predict_forces(test, return_std=True, std_type="epistemic")
    calibrated = load(_save(fitted_ethanol, tmp_path / "m.npz")).calibrate(valid)
    scale = calibrated.std_scale_

    def calibrated_var(q, post, proj, numbers=None):
        """c² v_ref (u / v_ref)^p for energies and c² u (ū / v_ref)^(p - 1) for force
        components (ū: the atom's mean), u = post + w² proj, written out independently;
        with ``numbers`` (per atom), times the square of each atom's element factor."""
        c, w, v_ref = scale[q], scale[f"{q}_projection"], scale[f"{q}_reference"]
        u = post + w**2 * proj
        if q == "energy":
            return c**2 * v_ref * (u / v_ref) ** scale["energy_exponent"]
        atom_mean = np.repeat(u.reshape(-1, 3).mean(axis=1), 3).reshape(u.shape)
        var = c**2 * u * (atom_mean / v_ref) ** (scale["forces_atom_exponent"] - 1)
        if numbers is None:
            return var
        factor = np.array([scale[f"forces_element_{z}"] for z in numbers])
        return var * np.repeat(factor**2, 3).reshape(var.shape)

    # the raw force std is too wide, through its projection term (see the benchmarks)
    assert scale["forces"] * scale["forces_projection"] < 1.0
    _, e_epi = calibrated.predict(test, return_std=True, std_type="epistemic")
    _, f_epi = calibrated.predict_forces(test, return_std=True, std_type="epistemic")
    _, f_tot = calibrated.predict_forces(test, return_std=True)
    terms = [fitted_ethanol.predict_structure(a, variance=True) for a in test]
    np.testing.assert_allclose(f_tot[0] ** 2, f_epi[0] ** 2 + scale["forces_noise"] ** 2
                               * calibrated.force_noise_**2, rtol=1e-9)
    np.testing.assert_allclose(e_epi**2, [calibrated_var("energy", t.energy_var_posterior,
                                                         t.energy_var_projection)
                                          for t in terms], rtol=1e-8)  # batch vs one
    np.testing.assert_allclose(f_epi[0] ** 2, calibrated_var(
        "forces", terms[0].forces_var_posterior, terms[0].forces_var_projection,
        test[0].numbers), rtol=1e-8)
    # the fitted map is a likelihood maximum on the validation data: it beats the same
    # family with any parameter moved, and a single factor on the raw variance
    raw_terms = [fitted_ethanol.predict_structure(a, variance=True) for a in valid]
    err = np.concatenate([(t.forces - a.get_forces()).ravel()
                          for t, a in zip(raw_terms, valid, strict=True)])
    post = np.concatenate([t.forces_var_posterior.ravel() for t in raw_terms])
    proj = np.concatenate([t.forces_var_projection.ravel() for t in raw_terms])
    noise = calibrated.force_noise_**2

    def nll(var):
        return float(np.mean(0.5 * np.log(var) + 0.5 * err**2 / var))

    best = nll(calibrated_var("forces", post, proj) + scale["forces_noise"] ** 2 * noise)
    original = dict(scale)
    for key, factor in (("forces", 1.05), ("forces", 1 / 1.05), ("forces_projection", 1.1),
                        ("forces_projection", 1 / 1.1), ("forces_atom_exponent", 1.02),
                        ("forces_atom_exponent", 1 / 1.02), ("forces_noise", 1.05),
                        ("forces_noise", 1 / 1.05)):
        if key == "forces_noise" and np.isclose(original[key], 1e-2) and factor < 1:
            continue  # at its lower limit
        scale[key] = original[key] * factor
        assert best < nll(calibrated_var("forces", post, proj) + scale["forces_noise"] ** 2
                          * noise)
        scale[key] = original[key]
    assert best < min(nll(s * (post + proj) + noise) for s in np.geomspace(1e-3, 10, 200))
    # the element factors, fitted after the map on the same errors, lower it further
    numbers = np.concatenate([a.numbers for a in valid])
    assert set(calibrated.element_scales()) == {1, 6, 8}
    assert nll(calibrated_var("forces", post, proj, numbers)
               + scale["forces_noise"] ** 2 * noise) < best
    atoms = test[0].copy()
    atoms.calc = KernelPotCalculator(calibrated)
    atoms.get_forces()
    np.testing.assert_allclose(atoms.calc.results["forces_std"], f_epi[0], rtol=1e-9)
    # saved, loaded, and switchable off
    reloaded = load(_save(calibrated, tmp_path / "c.npz"))
    assert reloaded.std_scale_ == calibrated.std_scale_
    reloaded.set_params(apply_calibration=False)
    _, off = reloaded.predict_forces(test[:1], return_std=True, std_type="epistemic")
    np.testing.assert_allclose(off[0], raw_f[0], rtol=1e-9)
    del raw_e
    with pytest.raises(ValueError, match="carries an energy or forces"):
        calibrated.calibrate([a.copy() for a in valid])


def test_predict_energies_and_forces_equals_the_two_calls(fitted_ethanol, ethanol_frames,
                                                          tmp_path):
    from kernelpot import load

    test = ethanol_frames[45:50]
    calibrated = load(_save(fitted_ethanol, tmp_path / "m.npz")).calibrate(
        ethanol_frames[30:45])
    for model in (fitted_ethanol, calibrated):
        energies, forces = model.predict_energies_and_forces(test)
        np.testing.assert_allclose(energies, model.predict(test), rtol=1e-12)
        for a, b in zip(forces, model.predict_forces(test), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        for std_type in ("total", "epistemic"):
            e, f, e_std, f_std = model.predict_energies_and_forces(test, return_std=True,
                                                                   std_type=std_type)
            _, e_std_ref = model.predict(test, return_std=True, std_type=std_type)
            _, f_std_ref = model.predict_forces(test, return_std=True, std_type=std_type)
            np.testing.assert_allclose(e_std, e_std_ref, rtol=1e-9)
            for a, b in zip(f_std, f_std_ref, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9)
    with pytest.raises(ValueError, match="std_type"):
        fitted_ethanol.predict_energies_and_forces(test, return_std=True, std_type="aleatoric")


def _save(model, path):
    model.save(path)
    return path


def test_atoms_closer_than_min_distance_are_refused_unless_allowed(ethanol_frames, small_soap):
    from ase.build import bulk

    frames = [a.copy() for a in ethanol_frames[:4]]
    for frame, original in zip(frames, ethanol_frames[:4], strict=True):
        frame.calc = original.calc
    stacked = frames[2].copy()
    stacked.positions[5] = stacked.positions[1]  # two atoms on top of each other
    stacked.calc = SinglePointCalculator(stacked, energy=0.0, forces=np.zeros((9, 3)))
    model = SparseGPPotential(small_soap, n_restarts=0, random_state=0, method="sparse")
    with pytest.raises(ValueError, match=r"structure 2: atoms (1 and 5|5 and 1) are 0.000 Å "
                                         r"apart, closer than min_distance=0.5"):
        model.fit([*frames[:2], stacked, frames[3]])
    model.set_params(min_distance=None).fit([*frames[:2], stacked, frames[3]])  # allowed
    with pytest.raises(ValueError, match="min_distance"):
        SparseGPPotential(small_soap, min_distance=-1.0, method="sparse").fit(frames)
    # periodic images count: a 0.4 Å simple cubic cell is one atom 0.4 Å from its images
    tight = bulk("Cu", "sc", a=0.4)
    tight.calc = SinglePointCalculator(tight, energy=0.0, forces=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="atom 0 is 0.400 Å from its own periodic image"):
        SparseGPPotential(ACSF.from_grid(["Cu"], 3.0, n_radial=3, n_angular=2),
                          method="sparse").fit([tight])
    # update takes labelled frames as they come: an on-the-fly close contact is data
    incremental = SparseGPPotential(small_soap, incremental=True, n_restarts=0,
                                    random_state=0, method="sparse").fit(frames[:3])
    close = frames[3].copy()
    close.positions[5] = close.positions[1] + [0.3, 0.0, 0.0]
    close.calc = SinglePointCalculator(close, energy=0.0, forces=np.zeros((9, 3)))
    incremental.update([close], optimize=False)
    assert incremental.posterior_.n_training_structures == 4
    # partly periodic structures with zero vectors along their open directions (a
    # nanotube) are checked in the cell the descriptor completes, not skipped
    from ase.build import nanotube

    tube = nanotube(3, 3, length=2, symbol="C")
    assert not np.all(tube.pbc) and abs(np.linalg.det(tube.cell.array)) < 1e-9
    tube += tube[:1]  # a duplicated atom
    tube.calc = SinglePointCalculator(tube, energy=0.0, forces=np.zeros((len(tube), 3)))
    with pytest.raises(ValueError, match="0.000 Å apart"):
        SparseGPPotential(ACSF.from_grid(["C"], 3.0, n_radial=3, n_angular=2),
                          method="sparse").fit([tube])
    # NaN positions get kernelpot's message, not the neighbour list's
    broken = frames[0].copy()
    broken.positions[3, 0] = np.nan
    broken.calc = SinglePointCalculator(broken, energy=0.0, forces=np.zeros((9, 3)))
    with pytest.raises(ValueError, match=r"structure 0: positions must be finite; atoms \[3\]"):
        model.fit([broken, *frames[1:]])


def test_too_few_structures_to_learn_the_noise_warn(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, n_restarts=0, random_state=0, method="sparse")
    with pytest.warns(UserWarning, match="1 training structure.*too few to learn the noise"):
        model.fit(ethanol_frames[:1])
    with pytest.warns(UserWarning, match="2 training structure"):
        model.fit(ethanol_frames[:2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(ethanol_frames[:3])
    # enough to learn from (three frames this close still leave most of the forces
    # unexplained by this sparse model, which fit says apart)
    assert not any("are too few" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # nothing learned from the data, nothing calibrated: nothing to warn about
        clone(model).set_params(optimize=False, calibration=None).fit(ethanol_frames[:1])
    with pytest.warns(UserWarning, match="to calibrate the std") as record:
        clone(model).set_params(optimize=False).fit(ethanol_frames[:1])
    assert "noise levels" not in str(record[0].message)


def test_a_kind_of_label_missing_everywhere_warns(ethanol_frames, small_soap):
    """Forces alone leave the energy's constants (and the stress) undetermined; energies
    alone leave σ_F at its given value. Both are said, not left to be found."""
    from ase.calculators.singlepoint import SinglePointCalculator

    def relabelled(energy, forces):
        out = []
        for atoms in ethanol_frames[:6]:
            copy = atoms.copy()
            labels = {"energy": atoms.get_potential_energy()} if energy else {}
            if forces:
                labels["forces"] = atoms.get_forces()
            copy.calc = SinglePointCalculator(copy, **labels)
            out.append(copy)
        return out

    model = SparseGPPotential(small_soap, n_restarts=0, random_state=0, method="sparse")
    with pytest.warns(UserWarning, match="no training structure has an energy.*energies "
                      "and stresses are not meaningful"):
        model.fit(relabelled(energy=False, forces=True))
    with pytest.warns(UserWarning, match="no training structure has forces.*keeps its "
                      "given value 0.05"):
        clone(model).set_params(force_noise=0.05).fit(relabelled(energy=True, forces=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clone(model).set_params(optimize=["signal_std", "energy_noise"]).fit(
            relabelled(energy=True, forces=False))  # σ_F given, not fitted: nothing to say
    # (six energies teach this model nothing: its σ sits at the lower bound, which is said)
    assert not any("force noise" in str(w.message) for w in caught)


def test_atoms_without_neighbours_warn(ethanol_frames, small_soap):
    from ase.build import bulk

    lonely = bulk("Cu", "sc", a=12.0)  # one atom, its images 12 Å away: beyond r_cut
    lonely.calc = SinglePointCalculator(lonely, energy=-0.1, forces=np.zeros((1, 3)))
    frames = emt_copper_frames(3, seed=4)
    descriptor = ACSF.from_grid(["Cu"], 4.0, n_radial=3, n_angular=2)
    with pytest.warns(UserWarning, match=r"1 training structure\(s\) hold atoms with no "
                                         r"neighbour within r_cut = 4.0 Å \(structure 3: 1"
                      ) as record:
        SparseGPPotential(descriptor, n_restarts=0, method="sparse").fit([*frames, lonely])
    assert {w.filename for w in record} == {__file__}  # the warning points at this line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SparseGPPotential(descriptor, n_restarts=0, method="sparse").fit(frames)
        # a free atom (one atom, open boundaries) is a reference on purpose: no warning
        free = Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
        free.calc = SinglePointCalculator(free, energy=-0.05, forces=np.zeros((1, 3)))
        SparseGPPotential(descriptor, n_restarts=0, method="sparse").fit([*frames, free])


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_a_training_frame_without_any_label_is_named(method):
    from ase.calculators.singlepoint import SinglePointCalculator
    from helpers import emt_strained_cells

    frames = emt_strained_cells(6, seed=0)
    frames[3].calc = SinglePointCalculator(frames[3])  # no energy, forces or stress
    with pytest.raises(ValueError, match=r"structure\(s\) \[3\] carry no energy, forces or "
                                         "stress"):
        SparseGPPotential(SOAP(["Cu"], 4.0, 3, 2, 0.5), method=method).fit(frames)


def test_without_a_descriptor_the_fit_uses_the_command_lines_default_soap():
    """One default for the estimator and `kernelpot fit`: SOAP 5 Å, 8/6, σ 0.5 for periodic
    cells, 4 Å, 6/4, σ 0.4 for molecules."""
    from kernelpot.cli._common import _default_descriptors

    cells = emt_copper_frames(3, seed=2, rattle=0.05)
    model = SparseGPPotential(method="sparse", n_restarts=0, random_state=0).fit(cells)
    assert model.descriptor_.get_params() == SOAP(["Cu"], 5.0, n_max=8, l_max=6,
                                                  sigma=0.5).get_params()
    assert model.descriptor_.get_params() == _default_descriptors(cells, "soap", None)[0][1] \
        .set_params(species=["Cu"]).get_params()
    molecules = []
    for k in range(3):
        atoms = Atoms("CO", positions=[[0, 0, 0], [1.13 + 0.02 * k, 0, 0]])
        atoms.calc = SinglePointCalculator(atoms, energy=-0.1 * k,
                                           forces=np.zeros((2, 3)))
        molecules.append(atoms)
    molecular = SparseGPPotential(method="sparse", n_restarts=0, random_state=0,
                                  optimize=False).fit(molecules)
    assert molecular.descriptor_.get_params() == SOAP(["C", "O"], 4.0, n_max=6, l_max=4,
                                                      sigma=0.4).get_params()


def test_a_nested_parameter_of_a_default_component_is_named():
    """GridSearchCV over descriptor__r_cut from the default constructor raised
    "'NoneType' object has no attribute 'set_params'" (a new user's walk)."""
    from sklearn.base import clone

    from kernelpot import SOAP, NormalizedDotProduct

    with pytest.raises(ValueError, match="descriptor__r_cut sets a parameter of the "
                                         "descriptor, which is None"):
        SparseGPPotential().set_params(descriptor__r_cut=3.5)
    with pytest.raises(ValueError, match="kernel__zeta sets a parameter of the kernel"):
        SparseGPPotential().set_params(kernel__zeta=3)
    # given in the same call, or before, the component takes it
    model = SparseGPPotential().set_params(descriptor=SOAP(["H"], 4.0, 4, 3),
                                           descriptor__r_cut=3.5)
    assert model.descriptor.r_cut == 3.5
    model = clone(SparseGPPotential(kernel=NormalizedDotProduct())).set_params(kernel__zeta=3)
    assert model.kernel.zeta == 3


def test_scorers_and_calibrate_refuse_a_structure_without_any_label(fitted_ethanol,
                                                                    ethanol_frames):
    """A partly unlabelled list was scored over the rest without a word; fit refuses it."""
    from ase import Atoms

    from kernelpot import metrics

    bare = Atoms(ethanol_frames[40].numbers, ethanol_frames[40].positions)
    frames = [ethanol_frames[41], bare, ethanol_frames[42]]
    for call in (fitted_ethanol.score, lambda X: metrics.neg_force_mae(fitted_ethanol, X),
                 lambda X: metrics.neg_energy_mae(fitted_ethanol, X)):
        with pytest.raises(ValueError, match=r"structure\(s\) \[1\] carry no energy, forces "
                                             "or stress: nothing to train on or score "
                                             "against"):
            call(frames)


def test_calibrate_on_a_few_structures_says_it_replaces_the_loso_map(fitted_ethanol,
                                                                     ethanol_frames):
    from sklearn.base import clone

    model = clone(fitted_ethanol).set_params(calibration="loso").fit(ethanol_frames[:30])
    assert model.interval_kind_ == "loso"
    with pytest.warns(UserWarning, match=r"3 validation structure\(s\) replace the std map "
                                         "fitted at fit time on the training structures'"):
        model.calibrate(ethanol_frames[40:43])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # ten or more: no warning
        model.calibrate(ethanol_frames[40:50])
