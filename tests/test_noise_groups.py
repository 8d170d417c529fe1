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
    row_group, free = noise_groups.scale_groups(types, kinds, 2, [True] * 3)
    return noise_groups.grouped_statistics(Kw, y, kinds, row_group, atoms, 6), row_group, free


def test_grouped_likelihood_with_unit_scales_equals_the_one_noise_likelihood(grouped_problem):
    Kw, y, kinds, atoms, _ = grouped_problem
    stats, _, _ = _grouped(grouped_problem)
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
    stats, row_group, _ = _grouped(grouped_problem)
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


def test_scale_groups_keep_the_largest_type_and_empty_kinds_fixed():
    # type 0: energies and forces; type 1 (most rows): every kind; type 2: forces only
    types = np.array([0, 1, 1, 0, 0, 1, 1, 1, 1, 2, 2, 1])
    kinds = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2])
    row_group, free = noise_groups.scale_groups(types, kinds, 3, [True, True, True])
    np.testing.assert_array_equal(row_group, 3 * types + kinds)
    # scales of type 1 stay at 1; type 0 has no stress, type 2 no energy or stress
    np.testing.assert_array_equal(free, [True, True, False, False, False, False,
                                         False, True, False])
    _, free = noise_groups.scale_groups(types, kinds, 3, [True, False, True])
    assert not free[1] and not free[7]  # a fixed force noise keeps its scales at 1


def _typed_cells(force_noise=0.15, seed=0):
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
    # 0.15 eV/Å of noise on the noisy frames' forces, ~1e-3 eV/Å of misfit on the clean ones
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
    names, types = noise_groups.config_types(typed_cells)
    kinds = np.r_[np.zeros(obs.n_energy, int), np.where(obs.is_stress, 2, 1)]
    has_energy = np.ones(len(typed_cells), bool)
    obs_group, free = noise_groups.scale_groups(
        types[exact.observation_structures(obs, has_energy)], kinds, 2, [False, True, False])
    log_scales = np.log([model.config_type_noise_[n][k] for n in names for k in KINDS])
    theta = np.concatenate([np.log([model.signal_std_, model.energy_noise_,
                                    model.force_noise_, model.stress_noise_]), log_scales])
    value, grad = exact.log_marginal_likelihood(theta, posterior.prior_covariance(),
                                                posterior.y, obs, True, obs_group)
    assert value == pytest.approx(model.log_marginal_likelihood_value_, rel=1e-9)
    free_all = np.r_[[False, False, True, False], free]
    assert free_all.sum() == 2  # σ_F and the noisy type's force scale
    np.testing.assert_allclose(grad[free_all], 0.0, atol=1e-2)
    fd = finite_difference_gradient(
        lambda t: exact.log_marginal_likelihood(t, posterior.prior_covariance(), posterior.y,
                                                obs, False, obs_group), theta, 1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-3)


def test_save_load_keeps_the_scales(typed_cells, tmp_path):
    model = _model("sparse", config_type_noise=True).fit(typed_cells)
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
    frame.info["config_type"] = 3
    with pytest.raises(TypeError, match="config_type that is not a string"):
        _model("exact", config_type_noise=True).fit([frame, *typed_cells[1:6]])


@pytest.mark.parametrize("entry", [{"bulk": 2.0}, {"bulk": {"energy": 1, "forces": -1,
                                                            "stress": 1}}, [1, 2]])
def test_malformed_scales_in_a_file_are_refused(entry):
    with pytest.raises(ValueError, match="malformed config_type_noise"):
        noise_groups.checked_scales(entry, "model.npz")
