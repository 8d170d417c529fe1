"""Bundled data sets load with their labels."""

import numpy as np
import pytest

from kernelpot import load_ethanol, load_silicon
from kernelpot.datasets import data_path


def test_ethanol():
    frames = load_ethanol()
    assert len(frames) == 200
    assert all(len(a) == 9 and not a.pbc.any() for a in frames)
    assert np.isfinite(frames[0].get_potential_energy())
    assert frames[0].get_forces().shape == (9, 3)


def test_silicon():
    frames = load_silicon()
    assert len(frames) == 4 and all(a.pbc.all() for a in frames)
    assert frames[0].get_stress().shape == (6,)


def test_unknown_file():
    with pytest.raises(ValueError, match="no bundled file"):
        data_path("nope.xyz")
