"""Uncertainty-driven selection of structures to label."""

import numpy as np
import pytest
import scipy.linalg as sla

from kernelpot import select_frames
from kernelpot.studies import learning_curve


@pytest.fixture(scope="module")
def seed_model(ethanol_frames, small_soap):
    from kernelpot import SparseGPPotential

    return SparseGPPotential(small_soap, n_restarts=0, random_state=0,
                             method="sparse").fit(ethanol_frames[:5])


def _residual_variance(model, conditioning, candidate):
    """Σ_i over the candidate's atoms of s_i² [k(x_i, x_i) - k_iᵀ K⁻¹ k_i]^p, brute force, p
    the exponent of the model's calibrated force-std map (1 when raw) and s_i its factor
    of atom i's element (1 where none)."""
    exponent = model._calibration().factors("forces")[2]
    scales = model.element_scales()
    total = 0.0
    species = model.species_
    for s in range(len(species)):
        Z = [model.inducing_[s]] + [model.descriptor_.create(a)[a.numbers == species[s]]
                                    for a in conditioning]
        Z = np.vstack([z for z in Z if len(z)])
        X = model.descriptor_.create(candidate)[candidate.numbers == species[s]]
        K = model.kernel_(Z) + 1e-8 * np.eye(len(Z))
        k = model.kernel_(Z, X)
        residual = model.kernel_.diag(X) - np.einsum("ij,ij->j", k,
                                                     sla.solve(K, k, assume_a="pos"))
        total += scales.get(int(species[s]), 1.0) ** 2 * float(
            np.sum(np.maximum(residual, 0.0) ** exponent))
    return total


@pytest.mark.parametrize("calibrated", [True, False])
def test_first_pick_has_the_largest_variance_and_greedy_matches_brute_force(
        seed_model, ethanol_frames, calibrated):
    from sklearn.base import clone

    pool = ethanol_frames[5:25]
    if calibrated:  # the LOSO map's exponent shapes the score (here far from 1)
        assert abs(seed_model._calibration().factors("forces")[2] - 1) > 0.5
    else:
        seed_model = clone(seed_model).set_params(calibration=None).fit(ethanol_frames[:5])
    picked = select_frames(seed_model, pool, 3)
    first = [_residual_variance(seed_model, [], a) for a in pool]
    assert picked[0] == int(np.argmax(first))
    # the second pick maximises the variance left after conditioning on the first
    second = [_residual_variance(seed_model, [pool[picked[0]]], a) if k != picked[0] else -1
              for k, a in enumerate(pool)]
    assert picked[1] == int(np.argmax(second))
    assert len(set(picked.tolist())) == 3


def test_reduction_first_pick_matches_brute_force(seed_model, ethanol_frames):
    """"reduction" picks the structure whose environments most reduce the pool's variance."""
    pool = ethanol_frames[5:20]
    model = seed_model
    gains = np.zeros(len(pool))
    for s in range(len(model.species_)):
        Z = model.inducing_[s]
        X = [model.descriptor_.create(a)[a.numbers == model.species_[s]] for a in pool]
        owner = np.concatenate([np.full(len(x), k) for k, x in enumerate(X)])
        X = np.vstack(X)
        K_zz = model.kernel_(Z)
        K_zz += 1e-8 * np.mean(np.diag(K_zz)) * np.eye(len(Z))
        R = model.kernel_(X) - model.kernel_(X, Z) @ sla.solve(K_zz, model.kernel_(Z, X))
        gain = np.sum(R**2, axis=1) / (np.diag(R) + 1e-8)
        gains += np.bincount(owner, weights=gain, minlength=len(pool))
    picked = select_frames(seed_model, pool, 2, strategy="reduction")
    assert picked[0] == int(np.argmax(gains))
    assert picked[1] != picked[0]


def test_near_duplicates_are_not_picked_twice(seed_model, ethanol_frames):
    copies = [ethanol_frames[30].copy() for _ in range(4)]
    for k, atoms in enumerate(copies):
        atoms.positions += 1e-4 * k  # rigid shifts: the same environments
    pool = copies + [ethanol_frames[50]]
    picked = select_frames(seed_model, pool, 2)
    assert sorted(picked.tolist())[-1] == 4 and int(np.sum(picked < 4)) == 1


def test_random_strategy_and_bad_input(seed_model, ethanol_frames):
    pool = ethanol_frames[5:25]
    a = select_frames(seed_model, pool, 5, strategy="random", random_state=3)
    b = select_frames(seed_model, pool, 5, strategy="random", random_state=3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 5
    with pytest.raises(ValueError, match="strategy"):
        select_frames(seed_model, pool, 5, strategy="largest")
    with pytest.raises(ValueError, match="between 1 and 20"):
        select_frames(seed_model, pool, 21)
    from ase import Atoms

    with pytest.raises(ValueError, match="not trained on"):
        select_frames(seed_model, [Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]])], 1)


def test_learning_curve_reports_the_method_auto_chose_per_size(ethanol_frames, small_soap,
                                                               monkeypatch):
    from kernelpot import SparseGPPotential, exact

    # an estimate of one second per observation: 8 ethanol frames (224) fit the limit,
    # 15 (420) do not
    monkeypatch.setattr(exact, "fit_time_estimate", lambda n_obs, rows, n_features: n_obs)
    model = SparseGPPotential(small_soap, n_restarts=0, random_state=0, exact_time_limit=300)
    curve = learning_curve(model, ethanol_frames[:40], ethanol_frames[50:53], [8, 15],
                           repeats=2)
    assert curve["method"].tolist() == [["exact", "exact"], ["sparse", "sparse"]]


def test_learning_curve_variance_strategy(ethanol_frames, small_soap):
    from kernelpot import SparseGPPotential

    model = SparseGPPotential(small_soap, n_restarts=0, random_state=0, method="sparse")
    curve = learning_curve(model, ethanol_frames[:40], ethanol_frames[50:], [8, 15],
                           strategy="variance", initial=5)
    assert np.all(np.isfinite(curve["force_mae"]))
    with pytest.raises(ValueError, match="initial"):
        learning_curve(model, ethanol_frames[:40], ethanol_frames[50:], [8, 15],
                       strategy="variance", initial=9)
    with pytest.raises(ValueError, match="strategy"):
        learning_curve(model, ethanol_frames[:40], ethanol_frames[50:], [8], strategy="best")


def test_greedy_picks_follow_the_calibrated_exponent(seed_model, ethanol_frames):
    """Four greedy picks equal brute force with the map's exponent (here 2.8), and differ
    from those of the raw score Σ residual (the third and fourth picks change)."""
    pool = ethanol_frames[5:60]
    assert set(seed_model.element_scales()) == {1, 6}  # five O atoms: too few for one
    picked = select_frames(seed_model, pool, 4).tolist()
    chosen = []
    for _ in range(4):
        scores = [-np.inf if k in chosen else
                  _residual_variance(seed_model, [pool[c] for c in chosen], a)
                  for k, a in enumerate(pool)]
        chosen.append(int(np.argmax(scores)))
    assert picked == chosen
