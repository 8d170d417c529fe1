"""Shared fixtures for the tests (plain helpers and data paths live in ``helpers.py``)."""

import logging

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read
from helpers import DATA


@pytest.fixture(scope="session")
def ethanol():
    """One ethanol frame from GFN2-xTB MD (open boundaries)."""
    return read(DATA / "ethanol_xtb_500K_10.xyz", 0)


@pytest.fixture(scope="session")
def si_cell():
    """Rattled periodic diamond Si, 8 atoms (cell 5.43 Å, smaller than 2 r_cut)."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.1, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="session")
def si_64():
    """Rattled 64-atom periodic diamond Si cell."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    atoms.positions += np.random.default_rng(1).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="session")
def sic_cell():
    """Rattled two-species periodic crystal (zincblende SiC, 2x1x1 cubic cells)."""
    atoms = bulk("SiC", "zincblende", 4.36, cubic=True).repeat((2, 1, 1))
    atoms.positions += np.random.default_rng(2).normal(0.0, 0.08, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="session")
def triclinic_small():
    """Skewed triclinic two-atom cell, far smaller than the cutoffs used."""
    return Atoms(
        "SiGe",
        positions=[[0.0, 0.0, 0.0], [0.9, 0.7, 1.1]],
        cell=[[2.5, 0.0, 0.0], [1.4, 2.2, 0.0], [0.5, 0.8, 2.1]],
        pbc=True,
    )


@pytest.fixture(scope="session")
def si_mlearn():
    """Two DFT Si frames of the mlearn set (a triclinic vacancy cell and a surface slab)."""
    return read(DATA / "si_mlearn_2.xyz", ":")


@pytest.fixture(scope="session")
def ethanol_frames():
    """60 ethanol frames (GFN2-xTB, 500 K, every 20th of the first 1200)."""
    return read(DATA / "ethanol_xtb_500K_60.xyz", ":")


@pytest.fixture(scope="session")
def small_soap():
    from kernelpot.descriptors import SOAP

    return SOAP(["H", "C", "O"], 4.0, n_max=4, l_max=3, sigma=0.4)


@pytest.fixture(scope="session")
def fitted_ethanol(ethanol_frames, small_soap):
    """A sparse GP fitted on 30 ethanol frames (all environments inducing)."""
    from kernelpot import SparseGPPotential

    model = SparseGPPotential(small_soap, sparse_method="all", calibration=None,
                              random_state=0, method="sparse")
    return model.fit(ethanol_frames[:30])


@pytest.fixture(autouse=True)
def _restore_kernelpot_logging():
    """Undo what a CLI call does to the "kernelpot" logger (its handler on the test's
    captured stderr, closed once the test ends, would make later log calls fail)."""
    logger = logging.getLogger("kernelpot")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture
def float64_factor_files(monkeypatch):
    """Sparse model files with the whitened factor in float64, so that a save and load
    round trip is bit for bit (the default stores it in float32 where its bound allows:
    tests/test_sparse_posterior.py and test_io.py check that path)."""
    from kernelpot import gp

    monkeypatch.setattr(gp, "FLOAT32_FACTOR_TOLERANCE", -1.0)
