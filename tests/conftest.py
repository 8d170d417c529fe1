"""Shared structures and helpers for the tests."""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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

