"""The sparse model's design: whitened rows in their layout, statistics, kernel gradient."""

import numpy as np
import pytest
import scipy.linalg as sla
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read
from helpers import DATA

from kernelpot import SOAP, NormalizedDotProduct, Scaled, SquaredExponential, TwoBody, gp
from kernelpot._labels import TrainingSet, read_labels
from kernelpot.design import SparseDesign, inducing_factor, with_two_body

INNER = np.log([2.0, 0.01, 0.2])  # (σ, σ_E, σ_F)


def imap(fn, items, desc):
    return map(fn, items)


@pytest.fixture(scope="module")
def soap():
    return SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)


@pytest.fixture(scope="module")
def frames():
    """Five ethanol frames: one with only an energy, one with only forces."""
    frames = read(DATA / "ethanol_xtb_500K_60.xyz", ":5")
    energy_only = frames[1].copy()
    energy_only.calc = SinglePointCalculator(energy_only,
                                             energy=frames[1].get_potential_energy())
    forces_only = frames[3].copy()
    forces_only.calc = SinglePointCalculator(forces_only, forces=frames[3].get_forces())
    return [frames[0], energy_only, frames[2], forces_only, frames[4]]


def _training(frames):
    """A TrainingSet as the estimator's fit builds it (reference energies given)."""
    labels = read_labels(frames, "Test")
    species = np.unique(np.concatenate([a.numbers for a in frames])).astype(np.int64)
    species_index = [np.searchsorted(species, a.numbers) for a in frames]
    counts = np.stack([np.bincount(i, minlength=len(species)) for i in species_index])
    return TrainingSet(frames, labels, species, species_index, counts,
                       np.array([-10.0, -40.0, -70.0]))


def _inducing(soap, training, per_species=(5, 3, 2)):
    """The first environments of each species, from the first two structures."""
    features = np.concatenate([soap.create(a) for a in training.frames[:2]])
    index = np.concatenate(training.species_index[:2])
    out = []
    for s, m in enumerate(per_species):
        z = features[index == s][:m].copy()
        z.setflags(write=False)
        out.append(z)
    return out


def _direct_rows(soap, training, inducing, kernel, pair=None):
    """Every structure's full-width rows, stacked in the documented layout, unwhitened."""
    n_species = len(training.species)
    n_pair = pair.n_columns(n_species) if pair is not None else 0
    n_columns = sum(len(z) for z in inducing) + n_pair
    pair_columns = np.arange(n_columns - n_pair, n_columns)
    energies, forces = [], []
    for k, atoms in enumerate(training.frames):
        rows = gp.design_rows(soap.compute(atoms), training.species_index[k], inducing,
                              kernel, energy=bool(training.has_energy[k]),
                              forces=bool(training.has_forces[k]), n_columns=n_columns)
        rows = with_two_body(rows, pair, atoms, training.species_index[k], n_species,
                             pair_columns)
        if rows.energy is not None:
            energies.append(rows.energy)
        if rows.forces is not None:
            forces.append(rows.forces)
    return np.array(energies), np.vstack(forces)


def test_layout_of_a_design(soap, frames):
    training = _training(frames)
    inducing = _inducing(soap, training)
    design = SparseDesign(training, soap, inducing, None, imap)
    assert design.n_energy == 4 and design.n_force == 3 * 9 * 4
    assert design.n_obs == 4 + 108 and design.n_columns == 10 and design.n_pair == 0
    np.testing.assert_array_equal(design.energy_row[training.has_energy], [0, 1, 2, 3])
    # force rows follow the energies, structure by structure, skipping the energy-only one
    np.testing.assert_array_equal(design.force_start[:5], [4, 31, 31, 58, 85])
    np.testing.assert_allclose(design.y_energy, training.labels.energies[[0, 1, 2, 4]]
                               - training.counts[[0, 1, 2, 4]] @ training.e0, rtol=1e-14)
    np.testing.assert_allclose(design.y_force, np.concatenate(
        [frames[k].get_forces().ravel() for k in (0, 2, 3, 4)]), rtol=0, atol=0)
    np.testing.assert_array_equal(design.n_atoms_energy, [9.0] * 4)


@pytest.mark.parametrize("cached", [False, True])
def test_assemble_equals_the_directly_whitened_design(soap, frames, cached):
    training = _training(frames)
    inducing = _inducing(soap, training)
    kernel = NormalizedDotProduct(2)
    results = [soap.compute(a) for a in frames] if cached else None
    design = SparseDesign(training, soap, inducing, None, imap, results)
    assembled = design.assemble(kernel, keep_basis=True, keep_gram=True)
    K_E, K_F = _direct_rows(soap, training, inducing, kernel)
    L, jitter, jitter_abs = inducing_factor(inducing, kernel, None, 3)
    np.testing.assert_allclose(assembled.L_mm, L, rtol=0, atol=0)
    assert (assembled.jitter, assembled.jitter_abs) == (jitter, jitter_abs)
    Kw_E = sla.solve_triangular(L, K_E.T, lower=True).T
    Kw_F = sla.solve_triangular(L, K_F.T, lower=True).T
    assert assembled.design.shape == (design.n_obs + 10, 10)
    np.testing.assert_allclose(assembled.design[:4], Kw_E, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(assembled.design[4:design.n_obs], Kw_F, rtol=1e-12,
                               atol=1e-12 * np.abs(Kw_F).max())
    np.testing.assert_allclose(assembled.gram, Kw_F.T @ Kw_F, rtol=1e-10,
                               atol=1e-12 * np.abs(Kw_F.T @ Kw_F).max())
    expected = gp.whitened_statistics(Kw_E, design.n_atoms_energy, design.y_energy, Kw_F,
                                      design.y_force, keep_basis=True)
    _assert_same_statistics(assembled.stats, expected)


def _assert_same_statistics(stats, expected):
    """Equal up to the signs of the eigenvectors of ``W_F`` (compared rotated back)."""
    np.testing.assert_allclose(stats.eigenvalues, expected.eigenvalues, rtol=1e-9,
                               atol=1e-10 * expected.eigenvalues.max())
    for name in ("c_E", "c_F", "n_E", "n_F", "logdet_D_E"):
        assert getattr(stats, name) == pytest.approx(getattr(expected, name), rel=1e-12)
    for name in ("U", "beta_E", "beta_F"):
        mine, theirs = stats.V @ getattr(stats, name), expected.V @ getattr(expected, name)
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-10 * np.abs(theirs).max())
    for theta in (INNER, np.log([0.5, 0.001, 0.05])):
        value, grad = gp.log_marginal_likelihood(theta, stats, eval_gradient=True)
        value_e, grad_e = gp.log_marginal_likelihood(theta, expected, eval_gradient=True)
        assert value == pytest.approx(value_e, rel=1e-9)
        np.testing.assert_allclose(grad, grad_e, rtol=1e-7, atol=1e-7)


def test_row_order_of_the_parallel_map_does_not_matter(soap, frames):
    training = _training(frames)
    inducing = _inducing(soap, training)
    kernel = NormalizedDotProduct(2)

    def backwards(fn, items, desc):
        return (fn(item) for item in reversed(list(items)))

    forwards = SparseDesign(training, soap, inducing, None, imap).assemble(kernel)
    reverse = SparseDesign(training, soap, inducing, None, backwards).assemble(kernel)
    n_obs = 4 + 108
    np.testing.assert_array_equal(forwards.design[:n_obs], reverse.design[:n_obs])


def test_rows_of_one_structure(soap, frames):
    training = _training(frames)
    inducing = _inducing(soap, training)
    design = SparseDesign(training, soap, inducing, None, imap)
    k, rows = design.rows(1, NormalizedDotProduct(2))  # the energy-only structure
    assert k == 1 and rows.forces is None and rows.energy.shape == (10,)
    k, rows = design.rows(3, NormalizedDotProduct(2))  # the forces-only structure
    assert k == 3 and rows.energy is None and rows.forces.shape == (27, 10)


def test_two_body_columns_hold_the_scaled_basis_rows(soap, frames):
    training = _training(frames)
    inducing = _inducing(soap, training)
    pair = TwoBody(r_cut=3.0, n_basis=4, prior_std=0.3)
    kernel = NormalizedDotProduct(2)
    design = SparseDesign(training, soap, inducing, pair, imap)
    n_pair = pair.n_columns(3)
    assert design.n_pair == n_pair == 24
    assert design.n_columns == 10 + 24
    np.testing.assert_array_equal(design.pair_columns, np.arange(10, 34))
    for k in (0, 1, 3):
        _, rows = design.rows(k, kernel)
        e_pair, f_pair = pair.rows(frames[k], training.species_index[k], 3)
        if rows.energy is not None:
            np.testing.assert_allclose(rows.energy[10:], 0.09 * e_pair, rtol=1e-14)
            assert np.any(rows.energy[10:] != 0)
            # the GP columns do not see the two-body term
            plain = gp.design_rows(soap.compute(frames[k]), training.species_index[k],
                                   inducing, kernel, forces=False)
            np.testing.assert_allclose(rows.energy[:10], plain.energy, rtol=1e-14)
        if rows.forces is not None:
            np.testing.assert_allclose(rows.forces[:, 10:], 0.09 * f_pair, rtol=1e-14,
                                       atol=1e-300)
    # k_mm's factor: the GP block, then (prior_std² + jitter) I with the GP block's jitter
    L, jitter, jitter_abs = inducing_factor(inducing, kernel, pair, 3)
    K = gp.inducing_kernel(inducing, kernel)
    np.testing.assert_allclose((L @ L.T)[:10, :10], K + jitter_abs * np.eye(10), rtol=1e-12)
    assert jitter_abs == pytest.approx(jitter * np.mean(np.diag(K)), rel=1e-14)
    np.testing.assert_allclose(L[10:, 10:], np.sqrt(0.09 + jitter_abs) * np.eye(24),
                               rtol=1e-14)
    np.testing.assert_array_equal(L[10:, :10], 0.0)
    # and the assembled design is the whitened one of those rows
    assembled = design.assemble(kernel, keep_basis=True)
    K_E, K_F = _direct_rows(soap, training, inducing, kernel, pair)
    Kw_E = sla.solve_triangular(L, K_E.T, lower=True).T
    Kw_F = sla.solve_triangular(L, K_F.T, lower=True).T
    np.testing.assert_allclose(assembled.design[:4], Kw_E, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(assembled.design[4:design.n_obs], Kw_F, rtol=1e-12,
                               atol=1e-12 * np.abs(Kw_F).max())
    _assert_same_statistics(assembled.stats, gp.whitened_statistics(
        Kw_E, design.n_atoms_energy, design.y_energy, Kw_F, design.y_force,
        keep_basis=True))


def test_with_two_body_without_a_term_returns_the_rows():
    rows = gp.DesignRows(np.ones(3), np.ones((6, 3)))
    assert with_two_body(rows, None, None, None, 1, None) is rows


def test_inducing_factor_without_two_body(soap, frames):
    training = _training(frames)
    inducing = _inducing(soap, training)
    kernel = SquaredExponential(2.0)
    L, jitter, jitter_abs = inducing_factor(inducing, kernel, None, 3)
    K = gp.inducing_kernel(inducing, kernel)
    assert L.shape == (10, 10)
    np.testing.assert_allclose(L @ L.T, K + jitter_abs * np.eye(10), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.triu(L, 1), 0.0)
    assert jitter >= gp.JITTER


@pytest.mark.parametrize("with_pair", [False, True])
def test_kernel_gradient_is_that_of_the_likelihood(soap, frames, with_pair):
    training = _training(frames[:4])
    inducing = _inducing(soap, training, (4, 2, 2))
    pair = TwoBody(r_cut=3.0, n_basis=3, prior_std=0.5) if with_pair else None
    kernel = Scaled(SquaredExponential(0.8), 2.0)  # the scale moves k_mm's diagonal
    design = SparseDesign(training, soap, inducing, pair, imap,
                          [soap.compute(a) for a in training.frames])
    assembled = design.assemble(kernel, keep_basis=True)
    gradient = design.kernel_gradient(kernel, assembled, INNER)
    assert gradient.shape == (2,)
    h = 1e-3  # the likelihood's round-off dominates below about 1e-4
    numerical = []
    for t in range(2):
        step = np.zeros(2)
        step[t] = h
        plus = design.assemble(kernel.clone_with_theta(kernel.theta + step)).stats
        minus = design.assemble(kernel.clone_with_theta(kernel.theta - step)).stats
        numerical.append((gp.log_marginal_likelihood(INNER, plus)
                          - gp.log_marginal_likelihood(INNER, minus)) / (2 * h))
    np.testing.assert_allclose(gradient, numerical, rtol=2e-5, atol=1e-5)
