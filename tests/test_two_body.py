"""The two-body term (kernelpot.TwoBody) and the sparse model that fits it jointly."""

import json

import numpy as np
import pytest
import scipy.linalg as sla
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import assert_symmetries, numerical_forces, relative_error
from sklearn.base import clone

from kernelpot import SOAP, SparseGPPotential, TwoBody, gp, load


def test_basis_derivative_matches_finite_differences_and_vanishes_at_the_cutoff():
    term = TwoBody(r_cut=4.0, n_basis=6, r_min=1.0)
    r = np.linspace(0.5, 4.5, 81)
    values, derivatives = term.basis(r)
    h = 1e-6
    fd = (term.basis(r + h)[0] - term.basis(r - h)[0]) / (2 * h)
    inside = np.abs(r - 4.0) > 2 * h
    assert relative_error(derivatives[inside], fd[inside]) < 1e-7
    assert np.all(values[r >= 4.0] == 0) and np.all(derivatives[r >= 4.0] == 0)
    # smooth at the cutoff: value and slope go to zero continuously
    near = term.basis(np.array([4.0 - 1e-4]))
    assert np.abs(near[0]).max() < 1e-7 and np.abs(near[1]).max() < 1e-3


def _rows_fd(term, atoms, index, n_species, h=1e-5):
    """-∂(energy row)/∂r by central differences, shape (3 n_atoms, n_columns)."""
    out = np.zeros((3 * len(atoms), term.n_columns(n_species)))
    for a in range(len(atoms)):
        for c in range(3):
            moved = atoms.copy()
            moved.positions[a, c] += h
            plus = term.rows(moved, index, n_species, forces=False)[0]
            moved.positions[a, c] -= 2 * h
            minus = term.rows(moved, index, n_species, forces=False)[0]
            out[3 * a + c] = -(plus - minus) / (2 * h)
    return out


@pytest.mark.parametrize("system", ["ethanol", "copper"])
def test_force_rows_are_minus_the_gradient_of_the_energy_row(system, ethanol_frames):
    if system == "ethanol":
        atoms = ethanol_frames[0]
        species = np.array([1, 6, 8])
    else:  # periodic, with a cell small enough for an atom to see its own images
        atoms = bulk("Cu", "fcc", 3.6, cubic=True)
        atoms.positions += np.random.default_rng(0).normal(0, 0.1, atoms.positions.shape)
        species = np.array([29])
    index = np.searchsorted(species, atoms.numbers)
    term = TwoBody(r_cut=4.5, n_basis=5, r_min=1.0)
    energy_row, force_rows = term.rows(atoms, index, len(species))
    assert energy_row.shape == (term.n_columns(len(species)),)
    assert relative_error(force_rows, _rows_fd(term, atoms, index, len(species))) < 1e-6
    # no net force from a pair term, in every column
    np.testing.assert_allclose(force_rows.reshape(len(atoms), 3, -1).sum(axis=0), 0,
                               atol=1e-12)


def test_predict_agrees_with_the_design_rows(ethanol_frames):
    """The fast path (energies and forces for given coefficients) equals rows @ w."""
    atoms = ethanol_frames[7]
    species = np.array([1, 6, 8])
    index = np.searchsorted(species, atoms.numbers)
    term = TwoBody(r_cut=4.0, n_basis=5)
    w = np.random.default_rng(1).normal(size=term.n_columns(3))
    energy_row, force_rows = term.rows(atoms, index, 3)
    local, forces = term.predict(atoms, index, 3, w)
    assert local.sum() == pytest.approx(energy_row @ w, rel=1e-12)
    np.testing.assert_allclose(forces, (force_rows @ w).reshape(-1, 3), rtol=1e-10,
                               atol=1e-12)


def test_energy_row_of_a_dimer_sits_in_its_pair_type():
    """H–O dimer in a model of H, C, O: only the (H, O) columns, holding b(r)."""
    term = TwoBody(r_cut=3.0, n_basis=4, r_min=0.8)
    dimer = Atoms("HO", positions=[[0, 0, 0], [0, 0, 1.1]])
    index = np.array([0, 2])
    energy_row, _ = term.rows(dimer, index, 3)
    # pair types in order (H,H) (H,C) (H,O) (C,C) (C,O) (O,O)
    expected = np.zeros((6, 4))
    expected[2] = term.basis(np.array([1.1]))[0][0]
    np.testing.assert_allclose(energy_row.reshape(6, 4), expected)
    swapped = term.rows(dimer[::-1], index[::-1], 3)[0]
    np.testing.assert_allclose(swapped, energy_row)


@pytest.fixture(scope="module")
def two_body_model(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, sparse_method="all", random_state=0,
                              two_body=TwoBody(r_cut=4.0, n_basis=8), method="sparse")
    return model.fit(ethanol_frames[:20])


def test_model_forces_are_minus_the_energy_gradient(two_body_model, ethanol_frames):
    atoms = ethanol_frames[45]
    forces = two_body_model.predict_forces([atoms])[0]
    numerical = numerical_forces(two_body_model, atoms, [0, 3, 8])
    assert relative_error(forces[[0, 3, 8]], numerical) < 1e-5


def test_model_is_invariant_and_local_energies_add_up(two_body_model, ethanol_frames):
    atoms = ethanol_frames[50]
    assert_symmetries(two_body_model, atoms)
    local = two_body_model.predict_local_energies([atoms])[0]
    assert local.sum() == pytest.approx(two_body_model.predict([atoms])[0], abs=1e-9)


def test_two_body_variance_terms_stay_consistent(two_body_model, ethanol_frames):
    """The pair term's prior is spanned by its coefficients: variances stay >= 0 and the
    projection term is the GP block's alone, as the training rows' LOSO projection term
    (which the std map is fitted on) is. Before, the jitter of k_mm's pair block left a
    fraction jitter / prior_std² of the pair prior in it: 0.4 meV/atom on every mlearn
    Li test cell, ten times the LOSO cells', and energy stds ten times the errors."""
    atoms = ethanol_frames[55]
    prediction = two_body_model.predict_structure(atoms, variance=True)
    assert prediction.energy_var_posterior > 0
    assert prediction.forces_var_projection.min() >= 0
    assert prediction.forces_var_posterior.min() > 0
    post = two_body_model.posterior_
    index = np.searchsorted(two_body_model.species_, atoms.numbers)
    result = two_body_model.descriptor_.compute(atoms)
    rows = gp.design_rows(result, index, post.inducing, post.kernel, energy=True, forces=True,
                          columns=post.columns, n_columns=post.weights.size)
    prior_e, prior_f = gp.prior_variances(result, index, post.n_species, post.kernel)
    prior = post.signal_std**2 * np.r_[prior_e, prior_f.ravel()]
    spanned = sla.solve_triangular(post.factors.L_mm, np.vstack([rows.energy, rows.forces]).T,
                                   lower=True)  # the pair columns of these rows are zero
    gp_alone = np.maximum(prior - post.signal_std**2 * np.einsum("mn,mn->n", spanned, spanned),
                          0.0)
    got = np.r_[prediction.energy_var_projection, prediction.forces_var_projection.ravel()]
    np.testing.assert_array_less(np.abs(got - gp_alone), 1e-10 * prior + 1e-300)


def test_two_body_term_improves_a_pair_potential_fit():
    """Labels from a Lennard-Jones pair potential: the joint model fits them better than
    the GP alone, and the learned pair energy follows the true one's shape."""
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(8):
        atoms = bulk("Ar", "fcc", 5.4, cubic=True).repeat((2, 1, 1))
        atoms.positions += rng.normal(0, 0.15, atoms.positions.shape)
        atoms.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=5.0, smooth=True)
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(atoms)
    train, test = frames[:6], frames[6:]
    soap = SOAP(["Ar"], 5.0, n_max=3, l_max=2, sigma=0.5)
    errors = {}
    for name, pair in (("gp", None), ("gp+2b", TwoBody(r_cut=5.0, n_basis=12, r_min=3.0,
                                                        prior_std=1.0))):
        model = SparseGPPotential(soap, n_sparse=4, random_state=0, two_body=pair,
                                  method="sparse").fit(train)
        predicted = np.concatenate(model.predict_forces(test))
        errors[name] = np.abs(predicted - np.concatenate([a.get_forces() for a in test])).mean()
    assert errors["gp+2b"] < 0.5 * errors["gp"]


def test_save_load_is_bit_for_bit(two_body_model, ethanol_frames, tmp_path, float64_factor_files):
    path = two_body_model.save(tmp_path / "model")
    loaded = load(path)
    test = ethanol_frames[40:43]
    f1, s1 = two_body_model.predict_forces(test, return_std=True)
    f2, s2 = loaded.predict_forces(test, return_std=True)
    for a, b in zip(f1 + s1, f2 + s2, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(two_body_model.predict_local_energies(test)[0],
                                  loaded.predict_local_energies(test)[0])


def _resigned(model, tmp_path, edit):
    """Save ``model``, apply ``edit(arrays, metadata)`` and sign the result again: a file
    that passes the checksum but holds what ``edit`` put there."""
    from kernelpot import io

    path = model.save(tmp_path / "model")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    metadata = json.loads(arrays.pop("metadata").tobytes().decode("utf-8"))
    metadata.pop("checksum")
    edit(arrays, metadata)
    metadata["checksum"] = io._checksum(arrays, metadata)
    blob = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", metadata=blob, **arrays)
    return tmp_path / "bad.npz"


def test_a_signed_file_whose_weights_do_not_match_the_two_body_term_is_refused(
        two_body_model, tmp_path):
    def edit(arrays, metadata):
        metadata["two_body"]["params"]["n_basis"] = 9

    with pytest.raises(ValueError, match="does not match its inducing environments"):
        load(_resigned(two_body_model, tmp_path, edit))


@pytest.mark.parametrize("params, match", [
    ({"prior_std": -1.0}, "prior_std must be"),
    ({"prior_std": 0.0}, "prior_std must be"),
    ({"prior_std": "x"}, "prior_std must be"),
    ({"r_cut": -1.0}, "r_cut must be"),
    ({"r_min": 10.0}, "r_min"),
])
def test_a_signed_file_with_an_invalid_two_body_term_is_refused(two_body_model, tmp_path,
                                                                 params, match):
    def edit(arrays, metadata):
        metadata["two_body"]["params"].update(params)

    with pytest.raises(ValueError, match=f"invalid two_body entry.*{match}"):
        load(_resigned(two_body_model, tmp_path, edit))


def test_a_signed_file_with_non_integer_two_body_columns_is_refused(two_body_model, tmp_path):
    def edit(arrays, metadata):
        arrays["pair_columns"] = arrays["pair_columns"].astype(float)

    with pytest.raises(ValueError, match="malformed two-body columns"):
        load(_resigned(two_body_model, tmp_path, edit))


def test_nested_parameters_and_clone(small_soap):
    model = SparseGPPotential(small_soap, two_body=TwoBody(), method="sparse")
    model.set_params(two_body__prior_std=0.3, two_body__r_cut=4.5)
    copy = clone(model)
    assert copy.two_body.prior_std == 0.3 and copy.two_body.r_cut == 4.5
    assert copy.two_body is not model.two_body


@pytest.mark.parametrize("kwargs, error, match", [
    ({"two_body": "pair"}, TypeError, "two_body must be a kernelpot.TwoBody"),
    ({"two_body": TwoBody(), "method": "exact"}, ValueError, "two_body needs method='sparse'"),
    ({"two_body": TwoBody(n_basis=1)}, ValueError, "n_basis must be an int >= 2"),
    ({"two_body": TwoBody(r_min=5.0, r_cut=4.0)}, ValueError, "r_min"),
    ({"two_body": TwoBody(prior_std=0.0)}, ValueError, "prior_std must be"),
    ({"two_body": TwoBody(r_cut=float("nan"))}, ValueError, "r_cut must be"),
    ({"two_body": TwoBody(prior_std_bounds=(1.0, 0.1))}, ValueError, "prior_std_bounds"),
    ({"two_body": TwoBody(prior_std_bounds=0.1)}, ValueError, "prior_std_bounds"),
    ({"two_body": TwoBody(prior_std=1e3)}, ValueError, "lies outside two_body.prior_std_bounds"),
])
def test_bad_two_body_settings_fail_clearly(small_soap, ethanol_frames, kwargs, error, match):
    with pytest.raises(error, match=match):
        SparseGPPotential(small_soap, **kwargs).fit(ethanol_frames[:3])


def test_kernel_gradient_with_two_body_columns_equals_finite_differences(ethanol_frames,
                                                                        small_soap):
    """The likelihood gradient in the kernel's hyperparameters, with the design padded by
    the pair columns (zero derivatives) as the fit builds it, against central differences."""
    import scipy.linalg as sla

    from kernelpot import gp
    from kernelpot.design import with_two_body as _with_two_body
    from kernelpot.kernels import NormalizedDotProduct, SquaredExponential

    frames = ethanol_frames[:5]
    species = np.array([1, 6, 8])
    pair = TwoBody(r_cut=4.0, n_basis=6, prior_std=0.5)
    results = [small_soap.compute(a) for a in frames]
    index = [np.searchsorted(species, a.numbers) for a in frames]
    X = np.concatenate([r.features for r in results])
    all_index = np.concatenate(index)
    inducing = [np.array(X[all_index == s][::3]) for s in range(3)]
    n_atoms = np.array([len(a) for a in frames], dtype=float)
    y_E = np.array([a.get_potential_energy() for a in frames])
    y_E = y_E - y_E.mean()
    y_F = np.concatenate([a.get_forces().ravel() for a in frames])
    log_params = np.log([2.0, 0.005, 0.1])

    n_inducing = sum(len(z) for z in inducing)
    n_pair = pair.n_columns(3)
    pair_columns = np.arange(n_inducing, n_inducing + n_pair)

    def problem(kernel, theta_gradient=False):
        rows = [_with_two_body(gp.design_rows(r, i, inducing, kernel,
                                              theta_gradient=theta_gradient,
                                              n_columns=n_inducing + n_pair),
                               pair, a, i, 3, pair_columns)
                for r, i, a in zip(results, index, frames, strict=True)]
        k_mm = sla.block_diag(gp.inducing_kernel(inducing, kernel),
                              pair.prior_std**2 * np.eye(n_pair))
        L, _ = gp.cholesky_with_jitter(k_mm, jitter=0)
        Kw_E = sla.solve_triangular(L, np.stack([r.energy for r in rows]).T, lower=True).T
        Kw_F = sla.solve_triangular(L, np.concatenate([r.forces for r in rows]).T,
                                    lower=True).T
        stats = gp.whitened_statistics(Kw_E, n_atoms, y_E, Kw_F, y_F, keep_basis=True)
        return rows, L, Kw_E, Kw_F, stats

    kernel = NormalizedDotProduct(2) + 0.5 * SquaredExponential(0.3)
    rows, L, Kw_E, Kw_F, stats = problem(kernel, theta_gradient=True)
    grad = gp.KernelThetaGradient(log_params, stats, L, kernel.n_theta)
    sigma_e, sigma_f = np.exp(log_params[1:])
    grad.add_rows(np.stack([r.d_energy for r in rows]), Kw_E, y_E, sigma_e**2 * n_atoms)
    grad.add_rows(np.concatenate([r.d_forces for r in rows]), Kw_F, y_F,
                  np.full(len(y_F), sigma_f**2))
    M = Kw_E.shape[1]
    d_kmm = np.zeros((M, M, kernel.n_theta))
    d_kmm[:M - n_pair, :M - n_pair] = gp.inducing_kernel_gradient(inducing, kernel)
    analytic = grad.gradient(d_kmm)
    h = 1e-5
    for t in range(kernel.n_theta):
        step = np.zeros(kernel.n_theta)
        step[t] = h
        values = [gp.log_marginal_likelihood(log_params,
                                             problem(kernel.clone_with_theta(kernel.theta + d))[4])
                  for d in (step, -step)]
        assert analytic[t] == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5,
                                            abs=1e-5)


def test_prior_std_is_fitted_to_the_likelihood_maximum(ethanol_frames, small_soap):
    """By default the likelihood chooses prior_std: refits that keep it fixed at three
    times or a third of the chosen value have lower likelihood; leaving "two_body" out
    of optimize keeps the given value exactly."""
    frames = ethanol_frames[:12]
    fitted = SparseGPPotential(small_soap, sparse_method="all", random_state=0,
                               two_body=TwoBody(r_cut=4.0, n_basis=8), method="sparse").fit(frames)
    chosen = fitted.two_body_.prior_std
    assert chosen != TwoBody().prior_std and fitted.two_body.prior_std == TwoBody().prior_std
    inner = ["signal_std", "energy_noise", "force_noise"]
    # the fit rescales the pair columns it built at the start value: the same model as a
    # fit at the chosen value (up to the jitter of k_mm, 1e-8 of its mean diagonal)
    again = SparseGPPotential(small_soap, sparse_method="all", random_state=0,
                              optimize=inner, two_body=TwoBody(r_cut=4.0, n_basis=8,
                                                               prior_std=chosen),
                                                               method="sparse").fit(frames)
    test = ethanol_frames[40:42]
    for a, b in zip(fitted.predict_forces(test), again.predict_forces(test), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())
    # (and the optimiser's tolerance: they start (σ, σ_E, σ_F) from different points)
    assert again.log_marginal_likelihood_value_ == pytest.approx(
        fitted.log_marginal_likelihood_value_, abs=5e-3)
    for factor in (3.0, 1 / 3):
        fixed = SparseGPPotential(small_soap, sparse_method="all", random_state=0,
                                  optimize=inner, two_body=TwoBody(
                                      r_cut=4.0, n_basis=8, prior_std=chosen * factor),
                                      method="sparse")
        fixed.fit(frames)
        assert fixed.two_body_.prior_std == chosen * factor
        assert fixed.log_marginal_likelihood_value_ < fitted.log_marginal_likelihood_value_


def test_prior_std_search_reaches_the_same_maximum_from_any_start(ethanol_frames, small_soap):
    """σ and prior_std trade off (the pair prior std is their product); the search moves
    them together, so starts at 0.1, 1 and the upper bound (100) end at one maximum."""
    frames = ethanol_frames[:12]
    fits = [SparseGPPotential(small_soap, sparse_method="all", random_state=0,
                              two_body=TwoBody(r_cut=4.0, n_basis=8, prior_std=start),
                              method="sparse").fit(frames)
            for start in (0.1, 1.0, 100.0)]
    values = [fit.log_marginal_likelihood_value_ for fit in fits]
    products = [fit.signal_std_ * fit.two_body_.prior_std for fit in fits]
    assert max(values) - min(values) < 0.02
    np.testing.assert_allclose(products, products[0], rtol=0.03)
    # a value well below the maximum would not pass: refit with the product a third
    lower = SparseGPPotential(small_soap, sparse_method="all", random_state=0,
                              optimize=["signal_std", "energy_noise", "force_noise"],
                              two_body=TwoBody(r_cut=4.0, n_basis=8,
                                               prior_std=fits[0].two_body_.prior_std / 3),
                                               method="sparse")
    assert lower.fit(frames).log_marginal_likelihood_value_ < min(values) - 0.02


_FIXED = {"optimize": False, "signal_std": 3.0, "energy_noise": 0.003, "force_noise": 0.08,
          "sparse_method": "all", "e0": {"H": -10.0, "C": -40.0, "O": -70.0}}


def test_update_with_a_two_body_term_equals_a_fresh_fit(ethanol_frames, small_soap, tmp_path):
    """New inducing environments land after the pair columns; predictions, stds and the
    likelihood equal those of a fit on all structures, also after a save with the
    training state, a load and restore_training."""
    pair = TwoBody(r_cut=4.0, n_basis=6, prior_std=0.5)
    updated = SparseGPPotential(small_soap, incremental=True, two_body=pair,
                                **_FIXED).fit(ethanol_frames[:4])
    path = updated.save(tmp_path / "state", training_state=True)
    updated.update(ethanol_frames[4:7], n_inducing="all")
    fresh = SparseGPPotential(small_soap, two_body=pair, **_FIXED).fit(ethanol_frames[:7])
    resumed = load(path).restore_training(ethanol_frames[:4])
    resumed.update(ethanol_frames[4:7], n_inducing="all")
    test = ethanol_frames[40:43]
    # the fresh fit's jitter (1e-8 of the mean diagonal of k_mm, which the pair block
    # changes) differs from the updated one's: agreement to ~1e-6, not to round-off
    for other, atol, rel in ((fresh, 1e-5, 1e-6), (resumed, 1e-9, 1e-10)):
        np.testing.assert_allclose(updated.predict(test), other.predict(test), rtol=1e-9)
        fu, su = updated.predict_forces(test, return_std=True)
        fo, so = other.predict_forces(test, return_std=True)
        for a, b in zip(fu + su, fo + so, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=atol)
        assert updated.log_marginal_likelihood() == pytest.approx(
            other.log_marginal_likelihood(), rel=rel)
    # the pair columns sit between the first and the added inducing environments
    assert updated.posterior_.pair_columns[0] < updated.posterior_.columns[0][-1]
    np.testing.assert_allclose(updated.predict_local_energies(test)[0].sum(),
                               updated.predict(test[:1])[0], rtol=1e-12)
