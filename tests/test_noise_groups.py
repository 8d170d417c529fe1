"""Noise scales per configuration type (config_type_noise): likelihoods, fit, files."""

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import emt_strained_cells, finite_difference_gradient
from scipy.stats import multivariate_normal

from kernelpot import SOAP, SparseGPPotential, exact, gp, load, noise_groups

KINDS = noise_groups.KINDS


@pytest.fixture
def grouped_problem():
    """A random whitened design with energy, force and stress rows of two types."""
    rng = np.random.default_rng(1)
    M, n_E, n_F, n_S = 6, 6, 30, 12
    Kw = rng.normal(size=(n_E + n_F + n_S, M))
    kinds = np.repeat([0, 1, 2], [n_E, n_F, n_S])
    atoms = np.ones(len(kinds))
    atoms[:n_E] = rng.integers(2, 9, size=n_E)
    types = rng.integers(0, 2, size=len(kinds))
    y = rng.normal(size=len(kinds))
    return Kw, y, kinds, atoms, types


def _grouped(problem):
    Kw, y, kinds, atoms, types = problem
    row_group = 3 * types + kinds
    return noise_groups.grouped_statistics(Kw, y, kinds, row_group, atoms, 6), row_group


def test_grouped_likelihood_with_unit_scales_equals_the_one_noise_likelihood(grouped_problem):
    Kw, y, kinds, atoms, _ = grouped_problem
    stats, _ = _grouped(grouped_problem)
    E, F, S = (kinds == k for k in range(3))
    one = gp.whitened_statistics(Kw[E], atoms[E], y[E], Kw[F], y[F], Kw_S=Kw[S], y_S=y[S])
    base = np.log([1.3, 0.2, 0.4, 0.3])
    value, grad = noise_groups.sparse_log_marginal_likelihood(
        np.concatenate([base, np.zeros(6)]), stats, eval_gradient=True)
    expected, expected_grad = gp.log_marginal_likelihood(base, one, eval_gradient=True)
    assert value == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad[:4], expected_grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("scales", [(1.0, 1.0, 1.0, 2.0, 0.5, 3.0),
                                    (1.0, 1.0, 1.0, 0.1, 8.0, 1.0)])
def test_grouped_likelihood_equals_the_dense_gaussian(grouped_problem, scales):
    Kw, y, kinds, atoms, _ = grouped_problem
    stats, row_group = _grouped(grouped_problem)
    sigma, noise = 1.3, np.array([0.2, 0.4, 0.3])
    theta = np.log(np.concatenate([[sigma], noise, scales]))
    variance = (noise[kinds] * np.asarray(scales)[row_group]) ** 2 * atoms
    dense = multivariate_normal(np.zeros(len(y)), sigma**2 * Kw @ Kw.T + np.diag(variance))
    assert noise_groups.sparse_log_marginal_likelihood(theta, stats) == pytest.approx(
        dense.logpdf(y), rel=1e-9)
    _, grad = noise_groups.sparse_log_marginal_likelihood(theta, stats, eval_gradient=True)
    fd = finite_difference_gradient(
        lambda t: noise_groups.sparse_log_marginal_likelihood(t, stats), theta, 1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def test_scale_groups_keep_each_kinds_largest_type_and_thin_types_fixed():
    # structures 0-5 type 0 (energies, forces), 6-13 type 1 (energies; 8 with stress),
    # 14-16 type 2 (forces only: 3 structures, too few)
    e_structures = np.arange(14)
    f_structures = np.r_[np.arange(6), np.arange(14, 17)]
    s_structures = np.arange(6, 14)
    structure_type = np.r_[np.zeros(6, int), np.ones(8, int), np.full(3, 2)]
    row_structure = np.r_[e_structures, np.repeat(f_structures, 3), np.repeat(s_structures, 6)]
    kinds = np.repeat([0, 1, 2], [14, 27, 48])
    row_group, free = noise_groups.scale_groups(structure_type[row_structure], kinds,
                                                row_structure, 3, [True, True, True])
    np.testing.assert_array_equal(row_group, 3 * structure_type[row_structure] + kinds)
    # energies: type 1 (8 structures) is the reference, type 0 (6) moves; forces: type 0
    # is the reference, type 2 has 3 structures; stress: type 1 alone
    np.testing.assert_array_equal(free.reshape(3, 3), [[True, False, False],
                                                       [False, False, False],
                                                       [False, False, False]])
    _, free = noise_groups.scale_groups(structure_type[row_structure], kinds, row_structure,
                                        3, [False, True, True])
    assert not free.any()  # a fixed energy noise keeps its scales at 1


def _typed_cells(force_noise=0.05, seed=0):
    """EMT cells of two types; the forces of the "noisy" type carry Gaussian noise."""
    rng = np.random.default_rng(seed)
    frames = emt_strained_cells(24, seed=seed)
    for k, atoms in enumerate(frames):
        noisy = k % 3 == 0
        forces = atoms.get_forces() + (rng.normal(0, force_noise, (len(atoms), 3))
                                       if noisy else 0.0)
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=forces, stress=atoms.get_stress())
        atoms.info["config_type"] = "noisy" if noisy else "clean"
    return frames


@pytest.fixture(scope="module")
def typed_cells():
    return _typed_cells()


def _model(method, **kwargs):
    return SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), method=method, random_state=0,
                             **kwargs)


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_noisy_type_gets_a_larger_force_noise_and_the_fit_a_higher_likelihood(typed_cells,
                                                                            method):
    one = _model(method).fit(typed_cells)
    typed = _model(method, config_type_noise=True).fit(typed_cells)
    assert one.config_type_noise_ is None
    scales = typed.config_type_noise_
    assert set(scales) == {"clean", "noisy"}
    assert scales["clean"] == {"energy": 1.0, "forces": 1.0, "stress": 1.0}
    # 0.05 eV/Å of noise on the noisy frames' forces, ~1e-3 eV/Å of misfit on the clean ones
    assert scales["noisy"]["forces"] > 20
    assert typed.force_noise_ < 0.3 * one.force_noise_
    assert typed.log_marginal_likelihood_value_ > one.log_marginal_likelihood_value_ + 100
    # and new clean frames are predicted better without the noisy ones' pull
    held_out = emt_strained_cells(6, seed=7)
    reference = np.concatenate([a.get_forces() for a in held_out])

    def mae(model):
        return np.abs(np.concatenate(model.predict_forces(held_out)) - reference).mean()

    print(f"{method}: held-out force MAE {mae(typed):.5f} (typed) {mae(one):.5f} (one noise)")
    assert mae(typed) < 0.8 * mae(one)


def test_the_fitted_scales_are_a_likelihood_optimum(typed_cells):
    model = _model("exact", config_type_noise=True, optimize=["force_noise"]).fit(typed_cells)
    posterior = model.posterior_
    obs = posterior.observations
    # observation order, built here: 24 energies, then per cell 3 × 8 forces and 6 stresses
    noisy = np.array([a.info["config_type"] == "noisy" for a in typed_cells])
    kinds = np.r_[np.zeros(24, int), np.tile(np.r_[np.ones(24, int), np.full(6, 2)], 24)]
    cell = np.r_[np.arange(24), np.repeat(np.arange(24), 30)]
    obs_group = 3 * noisy[cell] + kinds  # types sorted: clean 0, noisy 1
    assert obs.n_obs == len(obs_group)
    log_scales = np.log([model.config_type_noise_[n][k] for n in ("clean", "noisy")
                         for k in KINDS])
    theta = np.concatenate([np.log([model.signal_std_, model.energy_noise_,
                                    model.force_noise_, model.stress_noise_]), log_scales])
    value, grad = exact.log_marginal_likelihood(theta, posterior.prior_covariance(),
                                                posterior.y, obs, True, obs_group)
    assert value == pytest.approx(model.log_marginal_likelihood_value_, rel=1e-9)
    # σ_F and the noisy type's force scale move (clean has more cells: the reference)
    free = np.zeros(len(theta), bool)
    free[[2, 4 + 3 + 1]] = True
    # the search stops at a relative decrease of LIKELIHOOD_FTOL (1e-7 of |log L|): a
    # gradient of a few hundredths moves log L by 1e-4 nats over a 1 % change of a scale
    np.testing.assert_allclose(grad[free], 0.0, atol=5e-2)
    assert log_scales[[0, 1, 2, 3, 5]].tolist() == [0.0] * 5  # the others stay 1
    fd = finite_difference_gradient(
        lambda t: exact.log_marginal_likelihood(t, posterior.prior_covariance(), posterior.y,
                                                obs, False, obs_group), theta, 1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-3)


def test_the_posterior_and_its_loso_terms_use_the_scaled_noise(typed_cells):
    model = _model("exact", config_type_noise=True, optimize=["force_noise"]).fit(typed_cells)
    posterior = model.posterior_
    L = posterior.L
    noise = np.diag(L @ L.T) - model.signal_std_**2 * np.diag(posterior.prior_covariance())
    force_rows = np.r_[np.zeros(24, bool), np.tile(np.r_[np.ones(24, bool),
                                                         np.zeros(6, bool)], 24)]
    noisy = np.r_[np.zeros(24, bool), np.repeat([a.info["config_type"] == "noisy"
                                                 for a in typed_cells], 30)]
    scale = model.config_type_noise_["noisy"]["forces"]
    np.testing.assert_allclose(noise[force_rows & ~noisy], model.force_noise_**2, rtol=1e-6)
    np.testing.assert_allclose(noise[force_rows & noisy], (scale * model.force_noise_)**2,
                               rtol=1e-6)
    np.testing.assert_allclose(posterior.loso.noise, noise, rtol=1e-6)


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_mixed_labels_two_body_and_no_stress(typed_cells, method):
    from kernelpot import TwoBody

    frames = []
    for k, atoms in enumerate(typed_cells):
        copy = atoms.copy()
        copy.info = dict(atoms.info)
        forces = None if k in (1, 5) else atoms.get_forces()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                          forces=forces, stress=atoms.get_stress())
        frames.append(copy)
    frames[2].info["config_type"] = 7  # an integer label, as extended XYZ reads one
    options = {"two_body": TwoBody(4.0, 6, 1.5)} if method == "sparse" else \
        {"signal_per_element": True}
    model = _model(method, config_type_noise=True, use_stress=False, **options).fit(frames)
    assert set(model.config_type_noise_) == {"clean", "noisy", "7"}
    assert model.config_type_noise_["7"] == {"energy": 1.0, "forces": 1.0, "stress": 1.0}
    assert model.config_type_noise_["noisy"]["forces"] > 5
    assert model.posterior_.n_stress_observations == 0


def test_a_scale_at_its_bound_is_named():
    with pytest.warns(UserWarning, match="forces noise scale of config_type 'noisy' ended at "
                                         "its bound"):
        _model("exact", config_type_noise=True).fit(_typed_cells(force_noise=0.3))


def test_nothing_to_fit_gives_a_one_noise_model(typed_cells):
    model = _model("exact", config_type_noise=True, optimize=False).fit(typed_cells)
    assert model.config_type_noise_ is None
    model.log_marginal_likelihood(np.log([1.0, 0.002, 0.05, 0.001]))  # available


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_save_load_keeps_the_scales(typed_cells, tmp_path, method):
    model = _model(method, config_type_noise=True).fit(typed_cells)
    loaded = load(model.save(tmp_path / "typed"))
    assert loaded.config_type_noise_ == model.config_type_noise_
    assert loaded.get_params()["config_type_noise"] is True
    np.testing.assert_array_equal(loaded.predict_forces(typed_cells[:2])[0],
                                  model.predict_forces(typed_cells[:2])[0])
    with pytest.raises(ValueError, match="config_type_noise_"):
        loaded.log_marginal_likelihood(np.zeros(4))
    assert loaded.log_marginal_likelihood() == model.log_marginal_likelihood_value_


def test_one_type_fits_one_noise(typed_cells):
    frames = [a.copy() for a in typed_cells[:8]]
    for a, b in zip(frames, typed_cells[:8], strict=True):
        a.calc = b.calc
        a.info.pop("config_type")
    model = _model("exact", config_type_noise=True).fit(frames)
    assert model.config_type_noise_ is None


def test_bad_settings_and_types_are_named(typed_cells):
    with pytest.raises(TypeError, match="config_type_noise must be True or False"):
        _model("sparse", config_type_noise="yes").fit(typed_cells)
    with pytest.raises(ValueError, match="incremental=True"):
        _model("sparse", config_type_noise=True, incremental=True).fit(typed_cells)
    frame = typed_cells[0].copy()
    frame.calc = typed_cells[0].calc
    frame.info["config_type"] = 3.5
    with pytest.raises(TypeError, match="neither a string nor an integer"):
        _model("exact", config_type_noise=True).fit([frame, *typed_cells[1:6]])


@pytest.mark.parametrize("entry", [{"bulk": 2.0}, {"bulk": {"energy": 1, "forces": -1,
                                                            "stress": 1}}, [1, 2]])
def test_malformed_scales_in_a_file_are_refused(entry):
    with pytest.raises(ValueError, match="malformed config_type_noise"):
        noise_groups.checked_scales(entry, "model.npz")


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_a_model_with_noise_per_type_is_not_updated_and_says_so(typed_cells, method,
                                                                tmp_path):
    """Updates keep one noise per kind: a refit would drop the fitted scales (the exact
    model's did, silently), so update and the learner refuse such a model up front."""
    from ase.calculators.emt import EMT

    from kernelpot import OnTheFlyLearner

    model = _model(method, config_type_noise=True, n_restarts=0,
                   optimize=False).fit(typed_cells[:8])
    assert not model.posterior_.can_update
    with pytest.raises(ValueError, match="update: a model fitted with config_type_noise="
                                         "True cannot be updated"):
        model.update(typed_cells[8:9])
    with pytest.raises(ValueError, match="OnTheFlyLearner: a model fitted with "
                                         "config_type_noise=True cannot be updated"):
        OnTheFlyLearner(model, EMT(), directory=tmp_path)
    # nor is an unfitted one taken (it would label a frame, then fail), nor a fitted one
    # whose parameter was switched off afterwards (the fitted scales would be dropped)
    with pytest.raises(ValueError, match="config_type_noise=True cannot be updated"):
        OnTheFlyLearner(_model(method, config_type_noise=True), EMT(), directory=tmp_path)
    if model.config_type_noise_:
        model.set_params(config_type_noise=False)
        with pytest.raises(ValueError, match="config_type_noise=True cannot be updated"):
            model.update(typed_cells[8:9])
