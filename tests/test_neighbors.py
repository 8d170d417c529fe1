"""vesin-backed neighbour lists give ASE's pairs."""

import numpy as np
import pytest
from ase.neighborlist import neighbor_list as ase_neighbor_list

from kernelpot._validation import check_atoms
from kernelpot.descriptors.neighbors import neighbor_list, unique_pairs


@pytest.mark.parametrize("structure", ["ethanol", "sic_cell", "triclinic_small", "si_mlearn"])
@pytest.mark.parametrize("r_cut", [2.0, 4.5])
def test_same_pairs_as_ase(structure, r_cut, request):
    atoms = request.getfixturevalue(structure)
    atoms = atoms[0] if isinstance(atoms, list) else atoms
    positions, _, pbc, cell = check_atoms(atoms, np.unique(atoms.numbers), None, "test")
    nl = neighbor_list(positions, cell, pbc, r_cut)
    i, j, shifts, vectors = ase_neighbor_list("ijSD", atoms, r_cut)
    ours = sorted(zip(nl.i.tolist(), nl.j.tolist(), map(tuple, nl.shifts.tolist()), strict=True))
    theirs = sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True))
    assert ours == theirs
    assert np.all(np.diff(nl.i) >= 0)
    np.testing.assert_allclose(nl.vectors, positions[nl.j] + nl.shifts @ cell - positions[nl.i],
                               atol=1e-12)
    np.testing.assert_allclose(nl.distances, np.linalg.norm(nl.vectors, axis=1))
    for a in range(len(atoms)):
        assert np.all(nl.i[nl.starts[a]:nl.starts[a + 1]] == a)


def test_unique_pairs_fold_images():
    i = np.array([0, 0, 0, 1])
    j = np.array([1, 1, 0, 0])  # two images of atom 1 and a self image of atom 0
    pairs, neighbor_pair, self_pair = unique_pairs(2, i, j)
    assert pairs.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert neighbor_pair.tolist() == [1, 1, 0, 2]
    assert self_pair.tolist() == [0, 3]
