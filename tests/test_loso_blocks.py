"""Leave-out blocks of consecutive, correlated training structures (kernelpot.loso_blocks)."""

import re

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read
from ase.md.langevin import Langevin
from helpers import DATA, relative_error

from kernelpot import SOAP, SparseGPPotential
from kernelpot.loso_blocks import (
    MIN_BLOCKS,
    block_columns,
    block_length,
    by_block,
    fingerprint_distance,
    gram_distance,
    structure_blocks,
)
from kernelpot.loso_blocks import lag_ratios as _lag_ratios


def lag_ratios(fingerprints, max_lag):
    return _lag_ratios(fingerprint_distance(fingerprints), max_lag)

SOAP_SMALL = SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)


def test_block_length_is_one_in_random_order_and_longer_along_a_trajectory():
    rng = np.random.default_rng(0)
    block_length = _length
    independent = rng.normal(size=(200, 5))
    assert block_length(independent) == 1
    assert np.all(np.abs(lag_ratios(independent, 5) - 1.0) < 0.15)
    walk = np.cumsum(rng.normal(size=(200, 5)), axis=0)  # neighbours near-duplicates
    length = block_length(walk)
    assert 1 < length <= 200 // MIN_BLOCKS
    assert block_length(walk[rng.permutation(200)]) == 1  # the order carries it
    # a given length, capped so that MIN_BLOCKS blocks remain; too few structures: one each
    assert block_length(independent, 7) == 7 and block_length(independent, 50) == 20
    assert block_length(walk[:19]) == 1 and block_length(walk[:19], 3) == 1
    assert block_length(np.zeros((50, 3))) == 1  # all alike: nothing to read


def test_structure_blocks_and_the_rows_and_columns_they_merge():
    walk = fingerprint_distance(np.cumsum(np.random.default_rng(1).normal(size=(40, 3)),
                                          axis=0))
    assert structure_blocks(walk, 40, 1) is None
    assert structure_blocks(None, 40) is None and structure_blocks(walk, 39) is None
    blocks = structure_blocks(walk, 40, 4)
    assert np.array_equal(blocks, np.arange(40) // 4)
    rows = np.array([0, 0, 5, 7, 39])
    assert np.array_equal(by_block(rows, blocks), [0, 0, 1, 1, 9])
    assert np.array_equal(by_block(rows, None), rows)
    own = [np.array([k]) if k % 2 else np.zeros(0, int) for k in range(40)]
    merged = block_columns(own, blocks)
    assert len(merged) == 10 and np.array_equal(merged[0], [1, 3])
    assert block_columns(own, None) is own


def _length(fingerprints, setting="auto"):
    return block_length(fingerprint_distance(fingerprints), setting)


def test_the_gram_distance_is_the_fingerprints_distance_of_their_dot_products():
    fingerprints = np.random.default_rng(2).normal(size=(30, 4))
    i, j = np.arange(29), np.arange(1, 30)
    np.testing.assert_allclose(gram_distance(fingerprints @ fingerprints.T)(i, j),
                               fingerprint_distance(fingerprints)(i, j), rtol=1e-10)


def test_exact_leave_block_out_equals_refits_without_the_block():
    frames = read(DATA / "ethanol_xtb_500K_60.xyz", ":20")
    model = SparseGPPotential(SOAP_SMALL, method="exact", loso_blocks=2,
                              random_state=0).fit(frames)
    loso = model.posterior_.loso
    assert loso.n_structures == 10 and np.array_equal(model.posterior_.loso_blocks[1],
                                                      np.arange(20) // 2)
    fixed = dict(signal_std=model.signal_std_, energy_noise=model.energy_noise_,
                 force_noise=model.force_noise_, optimize=False, calibration=None,
                 e0={s: float(v) for s, v in zip(["H", "C", "O"], model.e0_, strict=True)})
    rest = frames[:6] + frames[8:]  # block 3: structures 6 and 7
    refit = SparseGPPotential(SOAP_SMALL, method="exact", **fixed).fit(rest)
    predicted = [refit.predict_structure(a) for a in frames[6:8]]
    energy_rows = np.flatnonzero(loso.is_energy & (loso.structure == 3))
    expected = [p.energy - a.get_potential_energy()
                for p, a in zip(predicted, frames[6:8], strict=True)]
    assert relative_error(loso.errors[energy_rows], np.array(expected)) < 1e-6
    force_rows = np.flatnonzero(~loso.is_energy & (loso.structure == 3))
    expected = np.concatenate([(p.forces - a.get_forces()).ravel()
                               for p, a in zip(predicted, frames[6:8], strict=True)])
    assert relative_error(loso.errors[force_rows], expected) < 1e-6


def _copper_trajectory(n, seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.calc = EMT()
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=600, friction=0.02,
                   rng=np.random.default_rng(seed))
    frames = []
    for _ in range(n):
        dyn.run(2)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(frame)
    return frames


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_auto_blocks_a_dense_trajectory_and_not_the_same_frames_shuffled(method):
    frames = _copper_trajectory(40)
    settings = dict(descriptor=SOAP(["Cu"], 3.5, n_max=3, l_max=2, sigma=0.4),
                    method=method, random_state=0, n_restarts=0)
    along = SparseGPPotential(**settings).fit(frames)
    blocks = along.posterior_.loso_blocks[1]
    assert blocks is not None and 1 < np.bincount(blocks).max() <= 4
    assert along.posterior_.loso.n_structures == blocks.max() + 1
    shuffled = [frames[k] for k in np.random.default_rng(0).permutation(40)]
    assert SparseGPPotential(**settings).fit(shuffled).posterior_.loso_blocks[1] is None
    one = SparseGPPotential(**settings, loso_blocks=1).fit(frames)
    assert one.posterior_.loso_blocks[1] is None and one.posterior_.loso.n_structures == 40


def test_loso_blocks_is_checked():
    frames = read(DATA / "ethanol_xtb_500K_60.xyz", ":4")
    for bad in (0, "all", True, 1.5):
        with pytest.raises(ValueError, match="loso_blocks must be 'auto' or an int >= 1"):
            SparseGPPotential(SOAP_SMALL, loso_blocks=bad).fit(frames)


def test_kernelpot_fit_says_when_it_leaves_out_blocks(tmp_path, capsys):
    from ase.io import write

    from kernelpot.cli import main

    write(tmp_path / "traj.xyz", _copper_trajectory(40))
    assert main(["fit", str(tmp_path / "traj.xyz"), "-o", str(tmp_path / "m.npz"),
                 "--no-train-eval"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"leave-one-block-out \(\d+ blocks of up to [2-4] consecutive "
                     r"structures, as they look correlated; --config loso_blocks = 1 leaves "
                     r"one out at a time; each block predicted without its labels", out)
    n_blocks = int(re.search(r"leave-one-block-out \((\d+) blocks", out).group(1))
    expected = (f"leave-one-structure-out errors (default; {n_blocks} blocks of consecutive "
                "structures, as they looked correlated, loso_blocks='auto')")
    assert main(["info", str(tmp_path / "m.npz")]) == 0
    assert expected in capsys.readouterr().out
    # the sparse model's file keeps no training state: it records the structure count
    assert main(["fit", str(tmp_path / "traj.xyz"), "-o", str(tmp_path / "sparse.npz"),
                 "--no-train-eval", "--method", "sparse"]) == 0
    n_blocks = int(re.search(r"leave-one-block-out \((\d+) blocks",
                             capsys.readouterr().out).group(1))
    assert main(["info", str(tmp_path / "sparse.npz")]) == 0
    out = capsys.readouterr().out
    assert "training data: 40 structures" in out and (
        f"(default; {n_blocks} blocks of consecutive structures, as they looked correlated"
        in out)
    # the same frames shuffled: checked, and one at a time
    shuffled = [frames for frames in read(tmp_path / "traj.xyz", ":")]
    shuffled = [shuffled[k] for k in np.random.default_rng(0).permutation(40)]
    write(tmp_path / "shuffled.xyz", shuffled)
    assert main(["fit", str(tmp_path / "shuffled.xyz"), "-o", str(tmp_path / "s.npz"),
                 "--no-train-eval"]) == 0
    assert "leave-one-structure-out (40 structures; consecutive structures do not look " \
           "correlated (loso_blocks); each predicted without its labels; hyperparameters " \
           "kept)" in capsys.readouterr().out  # the exact model: no inducing points
    assert main(["info", str(tmp_path / "s.npz")]) == 0
    assert "(default; one at a time: consecutive structures did not look correlated, " \
           "loso_blocks='auto')" in capsys.readouterr().out


def test_blocks_are_capped_in_rows_and_a_given_length_needs_no_fingerprint():
    walk = fingerprint_distance(np.cumsum(np.random.default_rng(3).normal(size=(400, 3)),
                                          axis=0))
    assert block_length(walk) == 40  # up to n // MIN_BLOCKS by structures
    assert block_length(walk, rows_per_structure=500) == 4  # MAX_BLOCK_ROWS = 2000 rows
    assert block_length(walk, 30, rows_per_structure=500) == 4
    # forces-only training (no energy rows, no fingerprint): a given length still holds
    assert np.array_equal(structure_blocks(None, 40, 4), np.arange(40) // 4)
    assert structure_blocks(None, 40, "auto") is None
    with pytest.raises(ValueError, match="loso_blocks must be 'auto' or an int >= 1"):
        structure_blocks(walk, 400, "none")


def test_blocks_through_update_and_the_cli_energies_per_atom(capsys):
    from ase.build import bulk

    from kernelpot.cli._common import _print_loso

    frames = _copper_trajectory(20)
    small = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms among the 8-atom cells
    for k in range(10):
        atoms = small.copy()
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(atoms)
    model = SparseGPPotential(SOAP(["Cu"], 3.5, n_max=3, l_max=2, sigma=0.4), method="sparse",
                              loso_blocks=2, incremental=True, random_state=0,
                              n_restarts=0).fit(frames[:28])
    loso = model.posterior_.loso
    assert loso.n_structures == 14 and np.array_equal(loso.structure, loso.member // 2)
    model.update(frames[28:])
    assert model.posterior_.loso.n_structures == 15
    assert np.array_equal(model.posterior_.loso_blocks[1], np.arange(30) // 2)
    _print_loso(model, frames)  # per atom: each energy over its own structure's atoms
    loso = model.posterior_.loso
    n_atoms = np.array([len(frames[k]) for k in loso.member[loso.is_energy]])
    expected = 1e3 * np.mean(np.abs(loso.errors[loso.is_energy] / n_atoms))
    printed = float(re.search(r"energy MAE ([\d.]+) meV/atom", capsys.readouterr().out)[1])
    assert printed == pytest.approx(expected, abs=0.006)
    assert n_atoms.min() == 4 and n_atoms.max() == 8


def test_the_on_the_fly_learner_leaves_one_labelled_structure_out_at_a_time(tmp_path):
    from kernelpot import OnTheFlyLearner

    frames = _copper_trajectory(40)
    model = SparseGPPotential(SOAP(["Cu"], 3.5, n_max=3, l_max=2, sigma=0.4),
                              method="sparse", incremental=True, random_state=0,
                              n_restarts=0).fit(frames)
    assert model.posterior_.loso_blocks[1] is not None  # a dense trajectory: blocks
    atoms = frames[-1].copy()
    atoms.calc = None
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=600, friction=0.02,
                   rng=np.random.default_rng(1))
    learner = OnTheFlyLearner(model, EMT(), directory=tmp_path, max_calls=0)
    learner.run(dyn, 2)
    assert learner.model.loso_blocks == 1 and learner.model.posterior_.loso_blocks[1] is None
    assert learner.model.posterior_.loso.n_structures == 40
