"""Leave-one-structure-out predictions in closed form against brute-force refits."""

import numpy as np
import pytest
from ase.io import read
from helpers import DATA

from kernelpot import SOAP, SparseGPPotential, gp
from kernelpot._labels import TrainingSet, read_labels
from kernelpot.design import SparseDesign
from kernelpot.loso import exact_loso, own_columns, own_span, own_spans, sparse_loso

SOAP_SMALL = SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)


@pytest.fixture(scope="module")
def frames():
    return read(DATA / "ethanol_xtb_500K_60.xyz", ":14")


def _fixed(model):
    """Parameters that refit ``model`` with its fitted hyperparameters and e0 held fixed."""
    return dict(signal_std=model.signal_std_, energy_noise=model.energy_noise_,
                force_noise=model.force_noise_, optimize=False,
                e0={s: float(v) for s, v in zip(["H", "C", "O"], model.e0_, strict=True)})


def _relative(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


def test_exact_loso_equals_refits_without_each_structure(frames):
    train = frames[:6]
    full = SparseGPPotential(SOAP_SMALL, method="exact", random_state=0).fit(train)
    post = full.posterior_
    obs = post.observations
    structure = np.concatenate([np.arange(len(train)), obs.force_structure])
    residual, variance = exact_loso(post.L, post.weights, structure)
    noise = np.concatenate([full.energy_noise_**2 * obs.energy_atoms,
                            np.full(obs.n_force, full.force_noise_**2)])
    for B, atoms in enumerate(train):
        rest = [a for k, a in enumerate(train) if k != B]
        refit = SparseGPPotential(SOAP_SMALL, method="exact", **_fixed(full)).fit(rest)
        p = refit.predict_structure(atoms, variance=True)
        rows = np.flatnonzero(structure == B)
        expected = np.concatenate([[atoms.get_potential_energy() - p.energy],
                                   (atoms.get_forces() - p.forces).ravel()])
        expected_var = np.concatenate([[p.energy_var_posterior],
                                       p.forces_var_posterior.ravel()]) + noise[rows]
        assert _relative(residual[rows], expected) < 1e-6
        assert _relative(variance[rows], expected_var) < 1e-6


def _design(model, frames):
    """The sparse design of ``frames`` on ``model``'s inducing environments, as fit builds it."""
    species = model.species_
    index = [np.searchsorted(species, a.numbers) for a in frames]
    counts = np.stack([np.bincount(i, minlength=len(species)) for i in index])
    training = TrainingSet(frames, read_labels(frames, "test"), species, index, counts,
                           model.e0_)
    design = SparseDesign(training, model.descriptor_, model.posterior_.inducing, None,
                          lambda fn, items, desc: map(fn, items))
    assembled = design.assemble(model.kernel_)
    noise_std = np.concatenate([model.energy_noise_ * np.sqrt(design.n_atoms),
                                np.full(design.n_force, model.force_noise_)])
    y = np.concatenate([design.y_energy, design.y_force])
    return design, assembled, noise_std, y


def test_sparse_loso_equals_refits_on_the_same_inducing_points(frames):
    frames = frames[:8]
    full = SparseGPPotential(SOAP_SMALL, n_sparse=25, random_state=0, method="sparse").fit(frames)
    design, assembled, noise_std, y = _design(full, frames)
    structure = np.concatenate([np.arange(len(frames)),
                                np.repeat(np.arange(len(frames)), 3 * design.n_atoms)])
    Kw = assembled.design[:design.n_obs].copy()
    residual, variance = sparse_loso(Kw, y, noise_std, full.signal_std_, structure)
    np.testing.assert_array_equal(Kw, assembled.design[:design.n_obs])  # not modified
    post = full.posterior_
    for B, atoms in enumerate(frames):
        rest = [a for k, a in enumerate(frames) if k != B]
        d, a, noise_rest, y_rest = _design(full, rest)
        factors = gp.solve_posterior(a.design, d.n_obs, a.L_mm, noise_rest, y_rest,
                                     full.signal_std_)
        rows = gp.design_rows(full.descriptor_.compute(atoms),
                              np.searchsorted(full.species_, atoms.numbers), post.inducing,
                              full.kernel_, energy=True, forces=True, columns=post.columns,
                              n_columns=post.weights.size)
        stacked = np.vstack([rows.energy, rows.forces])
        posterior_var, _ = gp.variance_terms(stacked, factors, full.signal_std_)
        sel = np.flatnonzero(structure == B)
        assert _relative(residual[sel], y[sel] - stacked @ factors.weights) < 1e-6
        assert _relative(variance[sel], posterior_var + noise_std[sel]**2) < 1e-6


def test_sparse_loso_with_a_known_factor_equals_the_assembled_one():
    """The incremental state's QR factor R (RᵀR = A, rows of any sign) stands in for
    assembling and factoring A."""
    from kernelpot import _incremental

    rng = np.random.default_rng(1)
    Kw = rng.normal(size=(40, 6))
    y = rng.normal(size=40)
    noise = rng.uniform(0.2, 0.5, 40)
    structure = np.repeat(np.arange(8), 5)
    R, _ = _incremental.factor(Kw, noise, y, 1.3)
    assert np.any(np.diag(R) < 0)  # LAPACK's QR: signs a Cholesky factor would not have
    plain = sparse_loso(Kw, y, noise, 1.3, structure, shifts=True)
    known = sparse_loso(Kw, y, noise, 1.3, structure, shifts=True, factor=R)
    for a, b in zip(plain, known, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"factor has shape \(5, 5\); the design has 6"):
        sparse_loso(Kw, y, noise, 1.3, structure, factor=R[:5, :5])


def test_loso_accepts_rows_of_a_structure_that_are_not_adjacent():
    """Energies come first, then forces: a structure's rows are apart in both models."""
    rng = np.random.default_rng(0)
    Kw = rng.normal(size=(12, 5))
    y = rng.normal(size=12)
    noise = np.full(12, 0.3)
    structure = np.array([0, 1, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    residual, variance = sparse_loso(Kw, y, noise, 1.3, structure)
    # the same rows grouped by structure give the same answer
    order = np.argsort(structure, kind="stable")
    r2, v2 = sparse_loso(Kw[order], y[order], noise[order], 1.3, structure[order])
    np.testing.assert_allclose(residual[order], r2, rtol=1e-12)
    np.testing.assert_allclose(variance[order], v2, rtol=1e-12)
    # and the dense formula of the Bayesian linear model, K_y = Φ Φᵀ + Λ
    Phi = 1.3 * Kw
    K_y = Phi @ Phi.T + np.diag(noise**2)
    K_inv = np.linalg.inv(K_y)
    alpha = K_inv @ y
    for s in range(3):
        rows = np.flatnonzero(structure == s)
        block = np.linalg.inv(K_inv[np.ix_(rows, rows)])
        np.testing.assert_allclose(residual[rows], block @ alpha[rows], rtol=1e-9)
        np.testing.assert_allclose(variance[rows], np.diag(block), rtol=1e-9)
    L = np.linalg.cholesky(K_y)
    r3, v3 = exact_loso(L, alpha, structure)
    np.testing.assert_allclose(r3, residual, rtol=1e-9)
    np.testing.assert_allclose(v3, variance, rtol=1e-9)


# -- the estimator's default calibration ------------------------------------------------------
def test_the_estimators_loso_terms_are_the_refits_errors(frames):
    """Wiring: the rows of each structure (energies first, then forces) are its own."""
    train = frames[:5]
    for method in ("exact", "sparse"):
        model = SparseGPPotential(SOAP_SMALL, method=method, n_sparse=20,
                                  random_state=0).fit(train)
        loso = model.posterior_.loso
        assert loso.n_structures == 5 and loso.is_energy.sum() == 5
        B = 3
        rest = [a for k, a in enumerate(train) if k != B]
        if method == "exact":
            refit = SparseGPPotential(SOAP_SMALL, method="exact", **_fixed(model)).fit(rest)
            p = refit.predict_structure(train[B])
            expected = np.concatenate([[p.energy - train[B].get_potential_energy()],
                                       (p.forces - train[B].get_forces()).ravel()])
            rows = np.flatnonzero(loso.structure == B)
            assert _relative(loso.errors[rows], expected) < 1e-6
        # a structure's energy row comes before its force rows, in training order
        assert np.array_equal(loso.structure[:5], np.arange(5))
        assert np.array_equal(loso.structure[5:], np.repeat(np.arange(5), 27))


def test_default_std_is_the_loso_calibrated_one_and_none_gives_the_raw_one(frames):
    train, test = frames[:6], frames[6:8]
    default = SparseGPPotential(SOAP_SMALL, n_sparse=30, random_state=0,
                                method="sparse").fit(train)
    raw = SparseGPPotential(SOAP_SMALL, n_sparse=30, calibration=None,
                            random_state=0, method="sparse").fit(train)
    assert default.interval_kind_ == "loso" and raw.interval_kind_ is None
    assert raw.std_scale_ is None and set(default.std_scale_) >= {"energy", "forces"}
    np.testing.assert_array_equal(default.predict_forces(test), raw.predict_forces(test))
    _, std_default = default.predict_forces(test, return_std=True, std_type="epistemic")
    _, std_raw = raw.predict_forces(test, return_std=True, std_type="epistemic")
    for k, atoms in enumerate(test):
        p = raw.predict_structure(atoms, variance=True)
        np.testing.assert_allclose(std_raw[k]**2, p.forces_var_posterior
                                   + p.forces_var_projection, rtol=1e-10)
        np.testing.assert_allclose(std_default[k]**2, default.epistemic_variance(
            "forces", p.forces_var_posterior, p.forces_var_projection, atoms.numbers),
            rtol=1e-10)
    assert not np.allclose(std_default[0], std_raw[0], rtol=1e-3)


def test_loso_calibrated_forces_stay_equivariant(frames):
    from helpers import assert_symmetries

    model = SparseGPPotential(SOAP_SMALL, n_sparse=30, random_state=0,
                              method="sparse").fit(frames[:6])
    assert model.std_scale_["forces_atom_exponent"] != 1.0  # the exponent is in play
    assert_symmetries(model, frames[7])


def test_loso_calibration_is_saved_replaced_by_calibrate_and_refitted_by_update(frames,
                                                                               tmp_path,
                                                                                       float64_factor_files):
    from kernelpot import load

    model = SparseGPPotential(SOAP_SMALL, n_sparse=30, incremental=True,
                              random_state=0, method="sparse").fit(frames[:5])
    loaded = load(model.save(tmp_path / "m.npz", training_state=True))
    assert loaded.interval_kind_ == "loso" and loaded.std_scale_ == model.std_scale_
    for quantity, scores in model.interval_scores_.items():
        np.testing.assert_array_equal(loaded.interval_scores_[quantity], scores)
    np.testing.assert_array_equal(loaded.predict_forces(frames[7:8], return_std=True)[1][0],
                                  model.predict_forces(frames[7:8], return_std=True)[1][0])
    before = dict(model.std_scale_)
    model.update(frames[5:7], n_inducing=4)
    assert model.interval_kind_ == "loso" and model.posterior_.loso.n_structures == 7
    assert model.std_scale_ != before
    # the updated model's map is the one a fit of the same posterior's LOSO terms gives
    from kernelpot.calibration import StdCalibration

    terms = model.posterior_.loso
    refit = StdCalibration.fit(terms.calibration_terms(), "t", kind="loso",
                               force_atoms=terms.force_atoms([a.numbers for a in frames[:7]]))
    from kernelpot.element_scales import MIN_ATOMS

    numbers, counts = np.unique(np.concatenate([a.numbers for a in frames[:7]]),
                                return_counts=True)
    assert set(model.element_scales()) == set(numbers[counts >= MIN_ATOMS])  # not O (7)
    assert refit.element_scales() == pytest.approx(model.element_scales(), rel=1e-12)
    assert refit.std_scale == pytest.approx(model.std_scale_, rel=1e-12)
    model.calibrate(frames[8:12])
    assert model.interval_kind_ == "validation"
    with pytest.warns(UserWarning, match="calibration no longer applies"):
        model.update(frames[12:13])
    assert model.interval_kind_ == "loso"


def test_too_few_structures_give_raw_stds_and_bad_values_fail(frames):
    model = SparseGPPotential(SOAP_SMALL, n_sparse=20, random_state=0,
                              method="sparse").fit(frames[:2])
    assert model.std_scale_ is None and model.interval_kind_ is None
    with pytest.raises(ValueError, match="calibration must be 'loso' or None"):
        SparseGPPotential(SOAP_SMALL, calibration="validation", method="sparse").fit(frames[:3])


# -- jackknife+ intervals ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "sparse"])
def test_loo_shifts_give_the_refits_predictions_and_the_intervals_are_jackknife_plus(
        method, frames):
    from kernelpot import conformal

    train, new = frames[:5], frames[9]
    model = SparseGPPotential(SOAP_SMALL, method=method, n_sparse=30,
                              random_state=0).fit(train)
    p = model.predict_structure(new, variance=True)
    parts = model.posterior_.finish([model._predict_parts(new, True, True, shifts=True)])[0]
    assert parts.loo_shifts.shape == (1 + 3 * len(new), len(train))
    mean = np.concatenate([[p.energy], p.forces.ravel()])
    loo = np.empty((mean.size, len(train)))
    for B in range(len(train)):
        rest = [a for k, a in enumerate(train) if k != B]
        if method == "exact":
            refit = SparseGPPotential(SOAP_SMALL, method="exact", **_fixed(model)).fit(rest)
            q = refit.predict_structure(new)
            loo[:, B] = np.concatenate([[q.energy], q.forces.ravel()])
        else:  # the same inducing points and hyperparameters, without structure B
            d, a, noise_rest, y_rest = _design(model, rest)
            factors = gp.solve_posterior(a.design, d.n_obs, a.L_mm, noise_rest, y_rest,
                                         model.signal_std_)
            post = model.posterior_
            rows = gp.design_rows(model.descriptor_.compute(new),
                                  np.searchsorted(model.species_, new.numbers),
                                  post.inducing, model.kernel_, energy=True, forces=True,
                                  columns=post.columns, n_columns=post.weights.size)
            e0 = model.e0_[np.searchsorted(model.species_, new.numbers)].sum()
            loo[:, B] = np.vstack([rows.energy, rows.forces]) @ factors.weights
            loo[0, B] += e0
        np.testing.assert_allclose(mean - parts.loo_shifts[:, B], loo[:, B], rtol=1e-6,
                                   atol=1e-8 * np.abs(loo[:, B]).max())
    # the model's intervals are the jackknife+ ones of those leave-out predictions
    _, f_std, intervals = model.predict_forces([new], return_std=True,
                                               return_interval=0.8)
    scores, structure = model.jackknife_scores_["forces"]
    lower, upper = conformal.jackknife_plus(loo[1:][:, structure], scores,
                                            f_std[0].ravel(), 0.8)
    # (the refits agree with the closed form to about 1e-6 relative, and so do the bounds)
    np.testing.assert_allclose(intervals[0][..., 0].ravel(), lower, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(intervals[0][..., 1].ravel(), upper, rtol=1e-5, atol=1e-5)
    _, e_std, e_interval = model.predict([new], return_std=True, return_interval=0.8)
    e_scores, e_structure = model.jackknife_scores_["energy"]
    if len(e_scores) >= 9:  # enough values for finite 80 % bounds
        lower, upper = conformal.jackknife_plus(loo[:1][:, e_structure], e_scores, e_std,
                                                0.8)
        np.testing.assert_allclose(e_interval[0], [lower[0], upper[0]], rtol=1e-5)


def test_jackknife_scores_and_shift_basis_survive_save_and_load(frames, tmp_path,
        float64_factor_files):
    from kernelpot import load

    model = SparseGPPotential(SOAP_SMALL, n_sparse=30, random_state=0,
                              method="sparse").fit(frames[:5])
    loaded = load(model.save(tmp_path / "m.npz"))
    assert loaded.interval_kind_ == "loso"
    for quantity, (scores, structure) in model.jackknife_scores_.items():
        np.testing.assert_array_equal(loaded.jackknife_scores_[quantity][0], scores)
        np.testing.assert_array_equal(loaded.jackknife_scores_[quantity][1], structure)
    a = model.predict_forces(frames[9:10], return_interval=0.8)[1][0]
    b = loaded.predict_forces(frames[9:10], return_interval=0.8)[1][0]
    np.testing.assert_array_equal(a, b)


def _projection_without(model, atoms, own):
    """Brute force: the projection term of ``atoms``' rows with the inducing columns ``own``
    removed from ``k_mm`` (the factor the prediction uses), from the unwhitened rows."""
    post = model.posterior_
    rows = gp.design_rows(model.descriptor_.compute(atoms),
                          np.searchsorted(model.species_, atoms.numbers), post.inducing,
                          model.kernel_, energy=True, forces=True, columns=post.columns,
                          n_columns=post.weights.size)
    # the two-body columns stay zero: k_mm is block diagonal between them and the GP's,
    # so removing GP columns changes only the GP part of the spanned variance
    g = np.vstack([rows.energy, rows.forces])
    K = post.factors.L_mm @ post.factors.L_mm.T
    keep = np.setdiff1d(np.arange(len(K)), own)
    full = np.einsum("nm,nm->n", g, np.linalg.solve(K, g.T).T)
    reduced = np.einsum("nm,nm->n", g[:, keep],
                        np.linalg.solve(K[np.ix_(keep, keep)], g[:, keep].T).T)
    p = model.predict_structure(atoms, variance=True)
    predicted = np.concatenate([[p.energy_var_projection], p.forces_var_projection.ravel()])
    return predicted + model.signal_std_**2 * (full - reduced), predicted


def test_own_span_is_the_schur_complement_of_the_removed_columns():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(9, 12))
    K = A @ A.T + 0.1 * np.eye(9)
    L = np.linalg.cholesky(K)
    g = rng.normal(size=(5, 9))
    w = np.linalg.solve(L, g.T).T
    for own in ([4], [2, 7], [0, 3, 8]):
        keep = np.setdiff1d(np.arange(9), own)
        expected = np.einsum("nm,nm->n", g, np.linalg.solve(K, g.T).T) - np.einsum(
            "nm,nm->n", g[:, keep], np.linalg.solve(K[np.ix_(keep, keep)], g[:, keep].T).T)
        np.testing.assert_allclose(own_span(w, L, np.array(own)), expected, rtol=1e-10)
    assert not np.any(own_span(w, L, np.array([], dtype=int)))


def test_own_spans_element_by_element_equal_one_solve_over_every_column():
    """k_mm has no kernel between elements: one solve per element's factor gives the same
    spans, also with the elements' columns interleaved (as updates append them)."""
    rng = np.random.default_rng(4)
    species_columns = [np.array([0, 1, 2, 5, 6, 9, 10]), np.array([3, 4, 7, 8, 11])]
    K = np.zeros((12, 12))
    for columns in species_columns:
        A = rng.normal(size=(len(columns), 8))
        K[np.ix_(columns, columns)] = A @ A.T + 0.1 * np.eye(len(columns))
    L = np.linalg.cholesky(K)
    g = rng.normal(size=(6, 12))
    Kw = np.linalg.solve(L, g.T).T
    structure = np.array([0, 0, 1, 1, 2, 2])
    own = [np.array([1, 4]), np.array([9, 10, 11]), np.array([], dtype=int)]
    one = own_spans(Kw, L, structure, own)
    by_element = own_spans(Kw, L, structure, own, species_columns)
    np.testing.assert_allclose(by_element, one, rtol=1e-12, atol=1e-14)
    assert np.all(one[:4] > 0) and not np.any(one[4:])
    with pytest.raises(ValueError, match="not all inducing columns of an element"):
        own_spans(Kw, L, structure, own, [species_columns[0]])


def test_own_columns_groups_the_inducing_columns_by_structure():
    origins = [np.array([0, 2, -1]), np.array([2, 1])]
    columns = [np.array([0, 1, 2]), np.array([3, 4])]
    own = own_columns(origins, columns, 4)
    assert [sorted(c.tolist()) for c in own] == [[0], [4], [1, 3], []]
    assert own_columns(None, columns, 4) is None
    assert own_columns([np.array([-1, -1, -1]), np.array([-1, -1])], columns, 4) is None


def test_loso_projection_leaves_out_the_structures_own_inducing_environments(frames):
    """A left-out structure's projection term is the prediction-time one of a model whose
    inducing set lacks the environments chosen from that structure: larger than the
    full model's where it has some, equal where it has none (also with a two-body term
    whose prior std the search moved after the prior variances were computed)."""
    from kernelpot import TwoBody

    train = frames[:6]
    model = SparseGPPotential(SOAP_SMALL, n_sparse=15, two_body=TwoBody(r_cut=3.5, n_basis=5,
                                                                         prior_std=0.1),
                              random_state=0, method="sparse").fit(train)
    assert not np.isclose(model.two_body_.prior_std, 0.1)  # the search moved it
    loso = model.posterior_.loso
    own = model.posterior_.own_columns(len(train))
    # every inducing environment has its origin
    assert sum(len(c) for c in own) == sum(len(z) for z in model.posterior_.inducing)
    checked = 0
    for B in range(len(train)):
        expected, predicted = _projection_without(model, train[B], own[B])
        rows = np.flatnonzero(loso.structure == B)
        np.testing.assert_allclose(loso.projection[rows[1:]], expected[1:], rtol=1e-6,
                                   atol=1e-9 * expected[1:].max())
        # the energy row differs by the jitter's share of the two-body prior, which
        # the prediction counts and the LOSO term (exactly spanned) leaves out
        assert loso.projection[rows[0]] == pytest.approx(expected[0], rel=1e-2)
        if len(own[B]):
            assert np.all(loso.projection[rows[1:]] >= predicted[1:] * (1 - 1e-9))
            assert np.mean(loso.projection[rows[1:]]) > np.mean(predicted[1:])
            checked += 1
        else:
            np.testing.assert_allclose(loso.projection[rows[1:]], predicted[1:], rtol=1e-6)
    assert checked >= 3


def test_restore_training_keeps_a_validation_map(frames, tmp_path):
    from kernelpot import load

    model = SparseGPPotential(SOAP_SMALL, n_sparse=30, incremental=True,
                              random_state=0,
                              method="sparse").fit(frames[:5]).calibrate(frames[8:12])
    loaded = load(model.save(tmp_path / "m.npz", training_state=True))
    loaded.restore_training(frames[:5])
    assert loaded.interval_kind_ == "validation" and loaded.std_scale_ == model.std_scale_
    assert loaded.posterior_.loso.n_structures == 5  # ready for the next update


def test_updates_and_model_files_keep_the_inducing_origins(frames, tmp_path):
    from kernelpot import load
    from kernelpot.sparse_posterior import _inducing_origin_from_arrays

    model = SparseGPPotential(SOAP_SMALL, n_sparse=20, incremental=True, random_state=0,
                              method="sparse").fit(frames[:5])
    model.update(frames[5:7], n_inducing="all")
    post = model.posterior_
    own = post.own_columns(7)
    # every environment of the two new structures became inducing, with its structure
    assert [len(own[k]) for k in (5, 6)] == [len(frames[5]), len(frames[6])]
    assert sum(len(c) for c in own) == post.weights.size
    loaded = load(model.save(tmp_path / "m.npz", training_state=True))
    loaded.restore_training(frames[:7])
    for a, b in zip(loaded.posterior_.inducing_origin, post.inducing_origin, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.posterior_.loso.projection, post.loso.projection,
                               rtol=1e-9, atol=1e-15)
    arrays = {"state_inducing_origin_0": np.array([0, 9]),
              "state_inducing_origin_1": np.array([1])}
    inducing = [np.zeros((2, 3)), np.zeros((1, 3))]
    with pytest.raises(ValueError, match="malformed state_inducing_origin"):
        _inducing_origin_from_arrays(arrays, inducing, 7, "m.npz")
    assert _inducing_origin_from_arrays({}, inducing, 7, "m.npz") is None
