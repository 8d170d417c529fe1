"""The sparse posterior: arrays round trip, checks, updates, refactorisation."""

import json
import pickle
from unittest import mock

import numpy as np
import pytest
from ase.io import read
from helpers import DATA
from sklearn.base import clone

from kernelpot import SOAP, SparseGPPotential, TwoBody, gp, load
from kernelpot.sparse_posterior import SparsePosterior

FIXED = {"optimize": False, "signal_std": 3.0, "energy_noise": 0.003, "force_noise": 0.08,
         "n_sparse": {"H": 6, "C": 3, "O": 2}, "random_state": 0}


@pytest.fixture(scope="module")
def frames():
    return read(DATA / "ethanol_xtb_500K_60.xyz", ":")


@pytest.fixture(scope="module")
def soap():
    return SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)


@pytest.fixture(scope="module")
def plain(frames, soap):
    return SparseGPPotential(soap, n_sparse=8, calibration=None, random_state=0,
                             n_restarts=0, method="sparse").fit(frames[:5])


@pytest.fixture(scope="module")
def with_pair(frames, soap):
    return SparseGPPotential(soap, two_body=TwoBody(r_cut=3.0, n_basis=4), n_sparse=6,
                             calibration=None, random_state=0, n_restarts=0,
                             method="sparse").fit(frames[:5])


def _incremental(soap, frames, n=4):
    return SparseGPPotential(soap, incremental=True, **FIXED).fit(frames[:n])


def _predictions(posterior, model, frames):
    """Means and variance terms of ``frames`` from the posterior's parts, in one batch."""
    parts = [posterior.parts(model.descriptor_, atoms, np.searchsorted(model.species_,
                                                                       atoms.numbers),
                             model.e0_, True, True) for atoms in frames]
    return posterior.finish(parts)


def _assert_same(a, b, rtol):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.energy, y.energy, rtol=rtol)
        np.testing.assert_allclose(x.forces, y.forces, rtol=rtol, atol=rtol * 1e-2)
        np.testing.assert_allclose(x.local_energies, y.local_energies, rtol=rtol)
        for name in ("energy_var_posterior", "energy_var_projection", "forces_var_posterior",
                     "forces_var_projection"):
            np.testing.assert_allclose(getattr(x, name), getattr(y, name), rtol=rtol,
                                       atol=rtol * 1e-4)


def _round_trip(posterior, model, training_state=False, float32=False):
    """``to_arrays`` then ``from_arrays``; ``R_w`` in float64 unless ``float32``."""
    tolerance = gp.FLOAT32_FACTOR_TOLERANCE if float32 else -1.0
    with mock.patch.object(gp, "FLOAT32_FACTOR_TOLERANCE", tolerance):
        arrays, fitted = posterior.to_arrays(training_state=training_state)
    assert arrays["R_w_tril"].dtype == (np.float32 if float32 else np.float64)
    arrays = {k: np.array(v) for k, v in arrays.items()}  # copies, as a file holds
    fitted = json.loads(json.dumps(fitted))  # JSON-ready, as the file's metadata
    return SparsePosterior.from_arrays(arrays, fitted, model.kernel_, model.two_body_,
                                       len(model.species_), "model.npz")


@pytest.mark.parametrize("name", ["plain", "with_pair"])
def test_arrays_round_trip_predicts_the_same(request, frames, soap, name):
    model = request.getfixturevalue(name)
    posterior = model.posterior_
    restored = _round_trip(posterior, model)
    assert restored.kind == "sparse"
    assert (restored.two_body is None) == (name == "plain")
    assert not restored.keeps_training_data and not restored.needs_frames
    test = frames[40:43]
    _assert_same(_predictions(restored, model, test), _predictions(posterior, model, test),
                 rtol=1e-12)
    for attribute in ("signal_std", "energy_noise", "force_noise", "jitter", "jitter_abs",
                      "log_marginal_likelihood_value"):
        assert getattr(restored, attribute) == getattr(posterior, attribute)
    theta = np.log([1.5, 0.01, 0.1])
    np.testing.assert_allclose(restored.log_marginal_likelihood(theta, eval_gradient=True)[1],
                               posterior.log_marginal_likelihood(theta, eval_gradient=True)[1],
                               rtol=1e-12)
    for z in restored.inducing:
        assert not z.flags.writeable
    # through the estimator
    again = SparseGPPotential(soap, method="sparse").from_posterior(
        restored, descriptor=model.descriptor_, species=model.species_, e0=model.e0_)
    f, f_std = again.predict_forces(test, return_std=True)
    f_ref, f_std_ref = model.predict_forces(test, return_std=True)
    for a, b, c, d in zip(f, f_ref, f_std, f_std_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c, d, rtol=1e-12)
    np.testing.assert_allclose(again.predict_local_energies(test)[0],
                               model.predict_local_energies(test)[0], rtol=1e-12)


def test_to_arrays_holds_the_documented_entries(with_pair):
    posterior = with_pair.posterior_
    arrays, fitted = posterior.to_arrays()
    M = posterior.weights.size
    assert arrays["alpha"].shape == (M,)
    # R_w as its triangle (format 12); L_mm not at all: a fresh fit's is rebuilt from
    # the inducing environments at load (format 11)
    assert arrays["R_w_tril"].shape == (M * (M + 1) // 2,)
    assert not any(k.startswith("L_mm") for k in arrays)
    assert sum(len(arrays[f"inducing_{s}"]) for s in range(3)) + 4 * 6 == M
    np.testing.assert_array_equal(np.sort(np.concatenate(
        [arrays[f"columns_{s}"] for s in range(3)] + [arrays["pair_columns"]])), np.arange(M))
    assert not any(k.startswith("state_") for k in arrays)
    assert fitted["method"] == "sparse"
    assert set(fitted["stats"]) == {"c_E", "c_F", "n_E", "n_F", "logdet_D_E", "c_S", "n_S",
                                    "m_E", "m_S"}  # U's columns per kind (format 7)
    assert fitted["stats"]["n_S"] == 0 and "stats_beta_S" not in arrays
    assert fitted["stats"]["n_E"] == 5 and fitted["stats"]["n_F"] == 5 * 27
    with pytest.raises(ValueError, match="training_state=True needs a model fitted with "
                                         "incremental=True"):
        posterior.to_arrays(training_state=True)


def _arrays(model, **changes):
    arrays, fitted = model.posterior_.to_arrays()
    arrays = {k: np.array(v) for k, v in arrays.items()}
    fitted = json.loads(json.dumps(fitted))
    for key, value in changes.items():
        if key == "signal_std":
            fitted[key] = value
        elif value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays[key])
    return arrays, fitted


@pytest.mark.parametrize("changes", [
    {"alpha": lambda a: a[:-1]},
    {"alpha": lambda a: np.concatenate([a, [0.0]])},
])
def test_from_arrays_rejects_weights_of_the_wrong_length(plain, changes):
    arrays, fitted = _arrays(plain, **changes)
    with pytest.raises(ValueError, match="load: model.npz holds .* weights, which does not "
                                         "match its inducing environments"):
        SparsePosterior.from_arrays(arrays, fitted, plain.kernel_, None, 3, "model.npz")


def test_from_arrays_rejects_weights_without_the_two_body_columns(with_pair):
    arrays, fitted = _arrays(with_pair)
    # the same arrays read as a model without its two-body term
    with pytest.raises(ValueError, match="weights, which does not match"):
        SparsePosterior.from_arrays(arrays, fitted, with_pair.kernel_, None, 3, "model.npz")


@pytest.mark.parametrize("signal_std", [True, 0.0, -1.0, "1.0", None, [1.0]])
def test_from_arrays_rejects_a_malformed_signal_std(plain, signal_std):
    arrays, fitted = _arrays(plain, signal_std=signal_std)
    with pytest.raises(ValueError, match="load: model.npz has a malformed signal_std entry"):
        SparsePosterior.from_arrays(arrays, fitted, plain.kernel_, None, 3, "model.npz")


def test_the_structure_count_is_recorded_and_checked(plain):
    arrays, fitted = _arrays(plain)
    assert fitted["n_structures"] == plain.posterior_.fitted_structures()
    fitted["n_structures"] = 7  # what a file records is what the loaded posterior says
    loaded = SparsePosterior.from_arrays(arrays, fitted, plain.kernel_, None, 3, "model.npz")
    assert loaded.training is None
    assert loaded.recorded_structures == loaded.fitted_structures() == 7
    for bad in (True, 0, 2.5, "3"):
        with pytest.raises(ValueError, match="malformed n_structures entry"):
            SparsePosterior.from_arrays(arrays, {**fitted, "n_structures": bad},
                                        plain.kernel_, None, 3, "model.npz")
    del fitted["n_structures"]  # a file written before the count was recorded
    assert SparsePosterior.from_arrays(arrays, fitted, plain.kernel_, None, 3,
                                       "model.npz").recorded_structures is None


@pytest.mark.parametrize("change", [
    None,
    lambda c: c.astype(float),
    lambda c: c[:-1],
    lambda c: np.concatenate([[0], c[1:]]),  # overlaps the inducing columns
])
def test_from_arrays_rejects_malformed_two_body_columns(with_pair, change):
    arrays, fitted = _arrays(with_pair, pair_columns=change)
    with pytest.raises(ValueError, match="load: model.npz has malformed two-body columns"):
        SparsePosterior.from_arrays(arrays, fitted, with_pair.kernel_, with_pair.two_body_, 3,
                                    "model.npz")


def test_check_updatable(plain, soap, frames, tmp_path):
    # a fit on structures in memory has no training state, but keeps the structures: the
    # estimator's update refits it first (test_update_refits_a_fit_without_a_state_once)
    with pytest.raises(ValueError, match=r"Owner: the model keeps no training state \(loaded "
                                         "from a file, a pickled copy, or a fit that kept no "
                                         "structures"):
        plain.posterior_.check_updatable("Owner")
    assert plain.posterior_.can_update and len(plain.posterior_.fitted_on.frames) == 5
    loaded = load(plain.save(tmp_path / "plain.npz"))  # files keep no structures
    assert not loaded.posterior_.can_update and loaded.posterior_.fitted_on is None
    # nor do pickled copies (models sent to joblib or Dask workers, which predict)
    assert not pickle.loads(pickle.dumps(plain)).posterior_.can_update
    assert plain.posterior_.can_update
    with pytest.raises(ValueError, match="keeps no training state"):
        loaded.update(frames[10:11])
    model = _incremental(soap, frames)
    model.posterior_.check_updatable("Owner")  # no error
    assert model.posterior_.keeps_training_data
    assert model.posterior_.n_training_structures == 4
    assert len(model.posterior_.training_frames) == 4


def test_refactor_leaves_predictions_unchanged(soap, frames):
    model = _incremental(soap, frames)
    model.update(frames[4:7], n_inducing=3)  # low-rank updates of rows and columns
    posterior = model.posterior_
    test = frames[40:43]
    before = _predictions(posterior, model, test)
    weights = posterior.weights.copy()
    posterior.refactor()
    _assert_same(_predictions(posterior, model, test), before, rtol=1e-10)
    np.testing.assert_allclose(posterior.weights, weights, rtol=1e-9,
                               atol=1e-12 * np.abs(weights).max())


def test_update_grows_the_stored_state(soap, frames):
    model = _incremental(soap, frames)
    arrays, _ = model.posterior_.to_arrays(training_state=True)
    M, n_obs = arrays["alpha"].size, len(arrays["state_y"])
    assert n_obs == 4 * (1 + 27)
    state = model.posterior_.training
    assert state.Kw.shape == (n_obs, M)
    model.update(frames[4:6], n_inducing=3)
    arrays, _ = model.posterior_.to_arrays(training_state=True)
    assert arrays["alpha"].size == M + 3
    state = model.posterior_.training
    assert state.Kw.shape == (n_obs + 2 * 28, M + 3)
    assert state.L_mm.shape == state.R.shape == (M + 3, M + 3)
    # the file keeps labels and row layout only: the design is rebuilt from the frames
    assert not any(f"state_{name}" in arrays for name in ("Kw", "L_mm", "R", "b"))
    assert arrays["state_y"].shape == arrays["state_noise_std"].shape == (n_obs + 56,)
    # the fit's rows: energies first, then forces; each update appends a structure's
    # energy then its forces
    np.testing.assert_array_equal(arrays["state_energy_row"], [0, 1, 2, 3, 112, 140])
    np.testing.assert_array_equal(arrays["state_force_row"], [4, 31, 58, 85, 113, 141])
    assert arrays["state_is_energy"].sum() == 6
    np.testing.assert_allclose(arrays["state_y"][113:140],
                               frames[4].get_forces().ravel(), rtol=0, atol=0)
    assert model.posterior_.n_training_structures == 6


def test_training_state_round_trip_then_update(soap, frames):
    model = _incremental(soap, frames)
    restored = _round_trip(model.posterior_, model, training_state=True)
    assert restored.keeps_training_data and restored.needs_frames
    test = frames[40:43]
    _assert_same(_predictions(restored, model, test),
                 _predictions(model.posterior_, model, test), rtol=1e-12)
    loaded = clone(model).from_posterior(restored, descriptor=model.descriptor_,
                                         species=model.species_, e0=model.e0_)
    with pytest.raises(ValueError, match="give its training structures back with "
                                         "restore_training"):
        loaded.update(frames[4:5])
    with pytest.raises(ValueError, match="was trained on 4 structures; got 3"):
        loaded.restore_training(frames[:3])
    loaded.restore_training(frames[:4])
    assert not restored.needs_frames
    loaded.update(frames[4:6], n_inducing=2)
    model.update(frames[4:6], n_inducing=2)
    assert loaded.n_inducing_ == model.n_inducing_
    _assert_same(_predictions(loaded.posterior_, loaded, test),
                 _predictions(model.posterior_, model, test), rtol=1e-10)


@pytest.mark.parametrize("name", ["plain", "with_pair"])
def test_restore_training_rebuilds_the_design_of_an_updated_model(request, soap, frames,
                                                                   name):
    """The file keeps no design: restore_training rebuilds the whitened design (kernel
    and two-body columns, inducing environments added by updates included) and its
    factor, equal to the state the model kept in memory."""
    fitted = request.getfixturevalue(name)
    model = SparseGPPotential(soap, incremental=True, two_body=fitted.two_body,
                              **FIXED).fit(frames[:4])
    model.update(frames[4:6], n_inducing=3)
    state = model.posterior_.training
    loaded = clone(model).from_posterior(_round_trip(model.posterior_, model, True),
                                         descriptor=model.descriptor_,
                                         species=model.species_, e0=model.e0_)
    assert loaded.posterior_.training.Kw is None
    loaded.restore_training(frames[:6])
    rebuilt = loaded.posterior_.training
    scale = np.abs(state.Kw).max()
    np.testing.assert_allclose(rebuilt.Kw, state.Kw, rtol=0, atol=1e-9 * scale)
    # R is unique up to the signs of its rows: compare RᵀR = A_w
    np.testing.assert_allclose(rebuilt.R.T @ rebuilt.R, state.R.T @ state.R, rtol=1e-9,
                               atol=1e-9 * np.abs(state.R).max()**2)
    np.testing.assert_allclose(rebuilt.b, state.b, rtol=1e-9,
                               atol=1e-9 * np.abs(state.b).max())
    # the restored structures carry their labels (a learner writes them to its file)
    for kept, given in zip(loaded.posterior_.training_frames, frames[:6], strict=True):
        assert kept is not given
        np.testing.assert_array_equal(kept.get_forces(), given.get_forces())


def test_restore_training_refuses_structures_in_another_order(soap, frames):
    model = _incremental(soap, frames)
    loaded = clone(model).from_posterior(_round_trip(model.posterior_, model, True),
                                         descriptor=model.descriptor_,
                                         species=model.species_, e0=model.e0_)
    with pytest.raises(ValueError, match="structure 0's forces are not the ones the model "
                                         "was trained on"):
        loaded.restore_training([frames[1], frames[0], frames[2], frames[3]])
    smaller = frames[0].copy()
    del smaller[-1]
    with pytest.raises(ValueError, match="structure 0 has 8 atoms; the model was trained on "
                                         "one of 9 there"):
        loaded.restore_training([smaller, frames[1], frames[2], frames[3]])
    unlabelled = [a.copy() for a in frames[:4]]  # no labels: only the layout is checked
    loaded.restore_training(unlabelled)
    assert loaded.posterior_.training.Kw.shape == model.posterior_.training.Kw.shape


def test_an_incomplete_training_state_fails_to_load(soap, frames):
    model = _incremental(soap, frames)
    arrays, fitted = model.posterior_.to_arrays(training_state=True)
    del arrays["state_noise_std"]
    with pytest.raises(ValueError, match=r"model.npz has an incomplete training state "
                                         r"without \['state_noise_std'\]"):
        SparsePosterior.from_arrays(arrays, fitted, model.kernel_, None, 3, "model.npz")
    arrays, fitted = model.posterior_.to_arrays(training_state=True)
    arrays["state_force_row"] = arrays["state_force_row"] + 10**6
    with pytest.raises(ValueError, match="model.npz has a malformed training state"):
        SparsePosterior.from_arrays(arrays, fitted, model.kernel_, None, 3, "model.npz")


def test_restore_training_without_a_state(plain):
    with pytest.raises(ValueError, match="Owner: the model has no stored training state"):
        plain.posterior_.restore_training([], lambda frames: ([], []), "Owner")


def test_local_energies_sum_to_the_energy(with_pair, frames):
    posterior = with_pair.posterior_
    atoms = frames[44]
    index = np.searchsorted(with_pair.species_, atoms.numbers)
    local = posterior.local_energies(with_pair.descriptor_, atoms, index)
    parts = posterior.parts(with_pair.descriptor_, atoms, index, with_pair.e0_, False, False)
    np.testing.assert_allclose(local + with_pair.e0_[index], parts.local_energies, rtol=1e-12)
    np.testing.assert_allclose(parts.local_energies.sum(), parts.energy, rtol=1e-12)
    # the two-body term is part of them: its coefficients are prior_std² × weights
    np.testing.assert_allclose(posterior.two_body_coefficients(),
                               posterior.two_body.prior_std**2
                               * posterior.weights[posterior.pair_columns], rtol=1e-14)
    assert np.any(posterior.two_body_coefficients() != 0)


def test_finish_keeps_parts_without_variance(plain, frames):
    posterior = plain.posterior_
    atoms = frames[45]
    index = np.searchsorted(plain.species_, atoms.numbers)
    mean = posterior.parts(plain.descriptor_, atoms, index, plain.e0_, True, False)
    energy = posterior.parts(plain.descriptor_, atoms, index, plain.e0_, False, "energy")
    full = posterior.parts(plain.descriptor_, atoms, index, plain.e0_, True, True)
    assert (mean.variance_rows, energy.variance_rows, full.variance_rows) == (0, 1, 28)
    out = posterior.finish([mean, energy, full])
    assert out[0].energy_var_posterior is None
    assert out[1].forces_var_posterior is None and out[1].energy_var_posterior > 0
    np.testing.assert_allclose(out[1].energy_var_posterior, out[2].energy_var_posterior,
                               rtol=1e-12)
    assert out[2].forces_var_posterior.shape == (9, 3)
    assert np.all(out[2].forces_var_projection >= 0)
    assert posterior.finish([]) == []


def test_packed_factors_round_trip_and_refuse_a_wrong_length():
    from kernelpot.gp import pack_lower, unpack_lower

    L = np.tril(np.random.default_rng(0).normal(size=(5, 5)))
    packed = pack_lower(L)
    assert packed.shape == (15,)
    np.testing.assert_array_equal(packed, L[np.tril_indices(5)])
    np.testing.assert_array_equal(unpack_lower(packed, 5, "m.npz"), L)
    with pytest.raises(ValueError, match="m.npz holds a packed factor of shape"):
        unpack_lower(packed[:-1], 5, "m.npz")
    L[1, 3] = 1e-300  # not a lower-triangular factor: nothing of it is dropped silently
    with pytest.raises(ValueError, match="entries above its diagonal"):
        pack_lower(L)


def test_a_factors_envelope_drops_only_leading_zeros_and_refuses_bad_row_starts():
    from kernelpot.gp import pack_envelope, unpack_envelope

    L = np.tril(np.random.default_rng(1).normal(size=(6, 6)))
    L[3:, :3] = 0.0  # two diagonal blocks
    L[5, 3] = 0.0  # and a leading zero inside the second
    values, first = pack_envelope(L)
    np.testing.assert_array_equal(first, [0, 0, 0, 3, 3, 4])
    assert values.shape == (6 + 3 + 2,)
    np.testing.assert_array_equal(unpack_envelope(values, first, 6, "m.npz"), L)
    for bad in ([0, 0, 0, 3, 5, 4], [0, 0, 0, 3, 3], [0, 0, -1, 3, 3, 4],
                np.array([0, 0, 0, 3, 3, 4.0])):
        with pytest.raises(ValueError, match="m.npz holds a factor's row starts"):
            unpack_envelope(values, np.asarray(bad), 6, "m.npz")
    with pytest.raises(ValueError, match=r"m.npz holds a factor of shape \(11,\); its row "):
        unpack_envelope(values, np.array([0, 0, 0, 0, 3, 4]), 6, "m.npz")
    L[0, 2] = 1.0
    with pytest.raises(ValueError, match="entries above its diagonal"):
        pack_envelope(L)


def test_a_factor_that_does_not_rebuild_is_stored_as_its_blocks(with_pair):
    """An update's block that needed more jitter: L_mm is stored, as format 9 did."""
    posterior = with_pair.posterior_
    M = posterior.weights.size
    L_mm = posterior.factors.L_mm.copy()
    L_mm[0, 0] *= 1 + 1e-6  # as if the first column had been given more jitter
    changed = SparsePosterior.from_arrays(*_arrays_with(posterior, L_mm), with_pair.kernel_,
                                          with_pair.two_body_, 3, "m.npz")
    assert not changed._inducing_factor_rebuilds()
    arrays, fitted = changed.to_arrays()
    # L_mm, block diagonal (no kernel between elements; the two-body columns' prior is
    # diagonal), as its blocks (format 9)
    blocks = [len(arrays[f"inducing_{s}"]) for s in range(3)] + [1] * (4 * 6)
    assert arrays["L_mm_envelope"].shape == (sum(b * (b + 1) // 2 for b in blocks),)
    starts = np.repeat(np.cumsum([0, *blocks[:-1]]), blocks)
    np.testing.assert_array_equal(arrays["L_mm_first"], starts)
    restored = SparsePosterior.from_arrays(arrays, json.loads(json.dumps(fitted)),
                                           with_pair.kernel_, with_pair.two_body_, 3, "m.npz")
    np.testing.assert_array_equal(restored.factors.L_mm, L_mm)
    assert restored.weights.size == M


def _arrays_with(posterior, L_mm):
    """The posterior's arrays and metadata with ``L_mm`` stored as its blocks."""
    arrays, fitted = posterior.to_arrays()
    arrays["L_mm_envelope"], arrays["L_mm_first"] = gp.pack_envelope(L_mm)
    return arrays, json.loads(json.dumps(fitted))


@pytest.mark.parametrize("grow", [False, True])
def test_the_rebuilt_factor_equals_the_fitted_one(soap, frames, grow):
    """Exactly for a fresh fit; to round-off after updates appended factor blocks."""
    model = SparseGPPotential(soap, incremental=True, two_body=TwoBody(r_cut=3.0, n_basis=4),
                              **FIXED).fit(frames[:4])
    if grow:  # new environments, and one repeating a stored one
        model.update(frames[4:6], n_inducing="all")
        model.update(frames[:1], n_inducing="all")
    posterior = model.posterior_
    assert posterior._inducing_factor_rebuilds()
    rebuilt = posterior._rebuilt_inducing_factor()
    if grow:
        np.testing.assert_allclose(rebuilt, posterior.factors.L_mm, rtol=0, atol=1e-12)
    else:
        np.testing.assert_array_equal(rebuilt, posterior.factors.L_mm)
    restored = _round_trip(posterior, model, training_state=True)
    _assert_same(_predictions(restored, model, frames[40:43]),
                 _predictions(posterior, model, frames[40:43]), rtol=1e-9)


@pytest.mark.parametrize("change", ["negative jitter", "jitter text", "duplicate column",
                                    "column out of range"])
def test_a_file_whose_factor_cannot_be_rebuilt_is_refused(plain, change):
    arrays, fitted = plain.posterior_.to_arrays()
    arrays = {k: np.array(v) for k, v in arrays.items()}
    fitted = json.loads(json.dumps(fitted))
    if change == "negative jitter":  # k_mm minus a large jitter: not positive definite
        fitted["jitter_abs"] = -1e6
    elif change == "jitter text":
        fitted["jitter_abs"] = "0.001"
    elif change == "duplicate column":
        arrays["columns_0"][1] = arrays["columns_0"][0]
    else:
        arrays["columns_0"][0] = plain.posterior_.weights.size
    match = "jitter_abs" if "jitter" in change else "inducing columns"
    with pytest.raises(ValueError, match=match):
        SparsePosterior.from_arrays(arrays, fitted, plain.kernel_, plain.two_body_, 3,
                                    "m.npz")


def test_a_sparse_model_file_of_format_8_still_loads(with_pair, frames):
    """Format 4 to 8 held L_mm as its whole lower triangle, formats 4 to 11 ``L_post =
    L_mm R_wᵀ`` as its triangle; ``R_w`` is solved from it."""
    posterior = with_pair.posterior_
    arrays, fitted = posterior.to_arrays()
    M = posterior.weights.size
    old = {k: v for k, v in arrays.items() if k != "R_w_tril"}
    old["L_mm_tril"] = gp.pack_lower(posterior.factors.L_mm)
    old["L_post_tril"] = gp.pack_lower(posterior.factors.L_mm @ posterior.factors.R_w.T)
    restored = SparsePosterior.from_arrays(old, json.loads(json.dumps(fitted)),
                                           with_pair.kernel_, with_pair.two_body_, 3, "m.npz")
    np.testing.assert_array_equal(restored.factors.L_mm, posterior.factors.L_mm)
    assert restored.weights.size == M
    _assert_same(_predictions(restored, with_pair, frames[40:43]),
                 _predictions(posterior, with_pair, frames[40:43]), rtol=1e-9)


@pytest.mark.parametrize("pair", [None, TwoBody(r_cut=3.0, n_basis=4)])
def test_update_refits_a_fit_without_a_state_once(soap, frames, pair):
    """A default (non-incremental) sparse fit can be updated: its first update refits it
    as an incremental model at the fitted hyperparameters (two-body prior std among
    them), which then updates as a model fitted with incremental=True does."""
    settings = SparseGPPotential(soap, two_body=pair, n_sparse={"H": 6, "C": 3, "O": 2},
                                 random_state=0, n_restarts=0, method="sparse")
    plain = clone(settings).fit(frames[:6])
    incremental = clone(settings).set_params(incremental=True).fit(frames[:6])
    assert plain.posterior_.fitted_on is not None and not plain.posterior_.keeps_training_data
    for model in (plain, incremental):
        model.update(frames[6:8], n_inducing=2)
    assert plain.posterior_.keeps_training_data and plain.posterior_.fitted_on is None
    assert plain.posterior_.n_training_structures == 8
    assert plain.n_inducing_ == incremental.n_inducing_
    if pair is not None:
        assert plain.two_body_.prior_std == pytest.approx(incremental.two_body_.prior_std,
                                                          rel=1e-12)
    test = frames[40:43]
    _assert_same(_predictions(plain.posterior_, plain, test),
                 _predictions(incremental.posterior_, incremental, test), 1e-7)
    # both refitted their LOSO maps on the same terms; the raw stds are the same (a map
    # fitted on so few structures can land in another optimum from round-off: not compared)
    assert plain.interval_kind_ == incremental.interval_kind_ == "loso"
    for model in (plain, incremental):
        model.set_params(apply_calibration=False)
    for a, b in zip(plain.predict_forces(test, return_std=True)[1],
                    incremental.predict_forces(test, return_std=True)[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_the_one_off_refit_keeps_the_inducing_set_whatever_the_random_state(soap, frames):
    """A RandomState instance has moved on since the fit: a fresh selection would pick
    other inducing environments (measured in review: forces 0.92 eV/Å apart)."""
    model = SparseGPPotential(soap, n_sparse={"H": 6, "C": 3, "O": 2},
                              random_state=np.random.RandomState(3), n_restarts=0,
                              method="sparse", sparse_method="random").fit(frames[:6])
    test = frames[40:43]
    before_forces, before_std = model.predict_forces(test, return_std=True)
    inducing = [z.copy() for z in model.inducing_]
    model._make_updatable("Test")
    assert model.posterior_.keeps_training_data
    for a, b in zip(model.inducing_, inducing, strict=True):
        np.testing.assert_array_equal(a, b)
    after_forces, after_std = model.predict_forces(test, return_std=True)
    for a, b in zip(after_forces, before_forces, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    for a, b in zip(after_std, before_std, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_fit_on_an_iterator_keeps_no_structures(soap, frames):
    model = SparseGPPotential(soap, n_sparse=8, calibration=None, random_state=0,
                              n_restarts=0, method="sparse").fit(iter(frames[:5]))
    assert not model.posterior_.can_update  # the spooled file went with the fit
    with pytest.raises(ValueError, match="keeps no training state"):
        model.update(frames[10:11])


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_the_kept_structures_are_copies(soap, method):
    """MD started from a training frame moves the caller's object: a refit on it would pair
    the new positions with the old labels. The model keeps copies."""
    frames = [atoms.copy() for atoms in read(DATA / "ethanol_xtb_500K_60.xyz", ":8")]
    for atoms, source in zip(frames, read(DATA / "ethanol_xtb_500K_60.xyz", ":8"),
                             strict=True):
        atoms.calc = source.calc
    settings = SparseGPPotential(soap, n_sparse={"H": 6, "C": 3, "O": 2}, random_state=0,
                                 n_restarts=0, method=method, calibration=None)
    moved, clean = clone(settings).fit(frames[:6]), clone(settings).fit(frames[:6])
    shift = np.random.default_rng(0).normal(0.0, 0.1, frames[0].positions.shape)
    frames[0].positions += shift  # as an MD run on frames[0] would
    kept = (moved.posterior_.fitted_on if method == "sparse" else moved.posterior_.training)
    assert kept.frames[0] is not frames[0]
    assert not np.allclose(kept.frames[0].positions, frames[0].positions)
    extra = read(DATA / "ethanol_xtb_500K_60.xyz", "10:12")
    moved.update(extra)
    frames[0].positions -= shift
    clean.update(extra)
    test = read(DATA / "ethanol_xtb_500K_60.xyz", "40:42")
    np.testing.assert_allclose(moved.predict_forces(test), clean.predict_forces(test),
                               rtol=1e-8, atol=1e-10)


def test_a_deep_copy_can_be_updated_and_a_calibrate_map_survives_the_refit(soap, frames):
    import copy

    model = SparseGPPotential(soap, n_sparse={"H": 6, "C": 3, "O": 2}, random_state=0,
                              n_restarts=0, method="sparse").fit(frames[:6])
    twin = copy.deepcopy(model)
    assert twin.posterior_.can_update and twin.posterior_.fitted_on is not None
    model.calibrate(frames[20:30])
    scale = dict(model.std_scale_)
    model._make_updatable("Test")  # what the learner does before its first step
    assert model.posterior_.keeps_training_data
    assert model.interval_kind_ == "validation" and model.std_scale_ == scale
    twin.update(frames[6:7])
    assert twin.posterior_.n_training_structures == 7


@pytest.mark.parametrize("name", ["plain", "with_pair"])
def test_a_float32_whitened_factor_keeps_every_variance_within_its_bound(request, frames,
                                                                         name):
    """Format 12 stores ``R_w`` in float32 when ``‖E R_w⁻¹‖_F`` allows: the means and
    projection terms read back exactly, each posterior variance term within ``(1 ± ε)⁻²``."""
    model = request.getfixturevalue(name)
    posterior = model.posterior_
    R_w = posterior.factors.R_w
    packed, bound = gp.packed_whitened_factor(R_w)
    assert packed.dtype == np.float32 and 0 < bound <= gp.FLOAT32_FACTOR_TOLERANCE
    restored = _round_trip(posterior, model, float32=True)
    test = frames[40:43]
    for x, y in zip(_predictions(restored, model, test), _predictions(posterior, model, test),
                    strict=True):
        np.testing.assert_allclose(x.energy, y.energy, rtol=1e-12)
        np.testing.assert_allclose(x.forces, y.forces, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(x.forces_var_projection, y.forces_var_projection,
                                   rtol=1e-12, atol=1e-16)
        for a, b in ((x.energy_var_posterior, y.energy_var_posterior),
                     (x.forces_var_posterior, y.forces_var_posterior)):
            ratio = np.asarray(a) / np.asarray(b)
            assert np.all(ratio >= (1 + bound)**-2) and np.all(ratio <= (1 - bound)**-2)
            assert np.any(ratio != 1.0)  # read back in float32 indeed
    # the bound holds in the direction the rounding moves most
    rounding = R_w.astype(np.float32).astype(float) - R_w
    B = np.linalg.solve(R_w.T, rounding.T)  # R_w⁻ᵀ Eᵀ
    u = np.linalg.svd(B)[2][0]
    v = R_w.T @ u
    read_back = np.linalg.norm(np.linalg.solve((R_w + rounding).T, v))
    assert np.linalg.norm(B, 2) <= bound
    assert 1 / (1 + bound) <= read_back / np.linalg.norm(u) <= 1 / (1 - bound)


def test_the_whitened_factor_stays_float64_past_the_tolerance(plain):
    bound = gp.packed_whitened_factor(plain.posterior_.factors.R_w)[1]
    for tolerance, dtype in ((0.99 * bound, np.float64), (1.01 * bound, np.float32)):
        with mock.patch.object(gp, "FLOAT32_FACTOR_TOLERANCE", tolerance):
            assert gp.packed_whitened_factor(plain.posterior_.factors.R_w)[0].dtype == dtype


@pytest.mark.parametrize("change", ["nan", "small diagonal", "integers", "short"])
def test_a_tampered_whitened_factor_is_refused(plain, change):
    arrays, fitted = plain.posterior_.to_arrays()
    arrays = {k: np.array(v) for k, v in arrays.items()}
    values = arrays["R_w_tril"]
    if change == "nan":
        values[3] = np.nan
    elif change == "small diagonal":
        values[0] = 0.1  # R_w[0, 0]: the first column's only entry
    elif change == "integers":
        arrays["R_w_tril"] = values.astype(np.int64)
    else:
        arrays["R_w_tril"] = values[:-1]
    match = "packed factor of shape" if change == "short" else "whitened factor"
    with pytest.raises(ValueError, match=match):
        SparsePosterior.from_arrays(arrays, json.loads(json.dumps(fitted)), plain.kernel_,
                                    plain.two_body_, 3, "m.npz")
