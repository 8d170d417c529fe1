"""Shortest pair distances per pair of elements, and the contacts closer than them."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from kernelpot.contacts import ShortestPairs


def _brute_force(frames, species, cutoff):
    from helpers import shortest_pairs_by_ase

    return shortest_pairs_by_ase(frames, species, cutoff)


def _alloy(seed):
    rng = np.random.default_rng(seed)
    atoms = bulk("Ni", "fcc", 3.6, cubic=True).repeat(2)
    symbols = np.array(["Ni"] * len(atoms))
    symbols[rng.choice(len(atoms), 6, replace=False)] = "Al"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.rattle(0.15, seed=seed)
    return atoms


def test_shortest_distances_match_ases_neighbour_list_for_periodic_cells():
    frames = [_alloy(seed) for seed in range(3)]
    species = [13, 28]
    shortest = ShortestPairs(species, 5.0).add(frames)
    np.testing.assert_allclose(shortest.distances, _brute_force(frames, species, 5.0),
                               rtol=1e-12)
    assert np.all(shortest.distances < 3.0)  # every pair of elements seen, and close
    # one at a time gives the same
    again = ShortestPairs(species, 5.0)
    for frame in frames:
        again.add([frame])
    np.testing.assert_array_equal(again.distances, shortest.distances)


def test_a_molecules_pairs_and_a_pair_never_seen_counts_from_the_cutoff():
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    shortest = ShortestPairs([1, 6, 8], 4.0).add([water])
    np.testing.assert_allclose(shortest.distances, _brute_force([water], [1, 6, 8], 4.0))
    assert shortest.distances[0, 2] == pytest.approx(0.96)
    assert shortest.distances[1, 1] == shortest.distances[0, 1] == 4.0  # no carbon seen
    methane = Atoms("CH", positions=[[0, 0, 0], [3.5, 0, 0]])  # a C-H pair within 4 Å
    contact = shortest.closest(methane)
    assert contact.ratio == pytest.approx(3.5 / 4.0) and contact.elements == "C–H"
    far = Atoms("CH", positions=[[0, 0, 0], [4.5, 0, 0]])
    assert shortest.closest(far) is None


def test_an_atom_and_its_own_periodic_image_are_a_pair():
    cell = Atoms("Cu", cell=np.eye(3) * 2.5, pbc=True)
    shortest = ShortestPairs([29], 4.0).add([cell])
    assert shortest.distances[0, 0] == pytest.approx(2.5)
    squeezed = Atoms("Cu", cell=np.eye(3) * 2.3, pbc=True)
    contact = shortest.closest(squeezed)
    assert contact.i == contact.j == 0
    assert "its own periodic image" in contact.describe()


def test_the_closest_contact_is_the_smallest_ratio_not_the_smallest_distance():
    frames = [Atoms("HO", positions=[[0, 0, 0], [0.97, 0, 0]]),
              Atoms("O2", positions=[[0, 0, 0], [2.8, 0, 0]])]
    shortest = ShortestPairs([1, 8], 5.0).add(frames)
    # O-H at 0.95 Å is 2 % under its shortest; O-O at 2.5 Å is 11 % under
    test = Atoms("HOO", positions=[[-0.95, 0, 0], [0, 0, 0], [2.5, 0, 0]])
    contact = shortest.closest(test)
    assert (contact.i, contact.j, contact.elements) == (1, 2, "O–O")
    assert contact.distance == pytest.approx(2.5) and contact.shortest == pytest.approx(2.8)
    assert "10.7 % closer than any labelled O–O pair (2.800 Å)" in contact.describe()
    # the learner lowers the shortest distance with each labelled frame
    shortest.add([test])
    assert shortest.closest(test) is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        ShortestPairs([29], 0.0)
    with pytest.raises(ValueError, match=r"elements outside the model's: \['Au'\]"):
        ShortestPairs([29], 4.0).add([Atoms("CuAu", positions=[[0, 0, 0], [2.5, 0, 0]])])


def _copper_model(frames, **params):
    from kernelpot import ACSF, SparseGPPotential

    return SparseGPPotential(ACSF.from_grid(["Cu"], 4.0, n_radial=6, n_angular=4),
                             random_state=0, n_restarts=0, method="sparse",
                             **params).fit(frames)


def test_a_fitted_model_keeps_its_training_pairs_updates_lower_them_and_files_keep_them(
        tmp_path):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from helpers import emt_copper_frames, pressed_pair

    from kernelpot import load

    frames = emt_copper_frames(4, seed=5, rattle=0.05)
    model = _copper_model(frames, incremental=True)
    expected = _brute_force(frames, [29], 4.0)
    np.testing.assert_allclose(model.shortest_pairs_.distances, expected, rtol=1e-12)
    # an update lowers them to a new frame's closer pair
    pressed = pressed_pair(frames, 0.9)[0]
    pressed.calc = SinglePointCalculator(pressed, energy=EMT().get_potential_energy(pressed),
                                         forces=EMT().get_forces(pressed))
    model.update([pressed])
    assert model.shortest_pairs_.distances[0, 0] == pytest.approx(0.9 * expected[0, 0])
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(load(tmp_path / "m.npz").shortest_pairs_.distances,
                                  model.shortest_pairs_.distances)
    # coincident atoms (fit with min_distance=None, or an update) record 1e-6 Å, not 0:
    # such a file loads again
    twin = frames[1].copy()
    twin.positions[1] = twin.positions[0]
    model.shortest_pairs_.add([twin])
    assert model.shortest_pairs_.distances[0, 0] == 1e-6
    model.save(tmp_path / "twin.npz")
    assert load(tmp_path / "twin.npz").shortest_pairs_.distances[0, 0] == 1e-6


@pytest.mark.parametrize("tampered", [
    np.array([[2.0, 2.1], [2.1, 2.0]]),  # another shape
    np.array([[-1.0]]),  # negative
    np.array([[0.0]]),  # zero
    np.array([[np.nan]]),  # not finite
    np.array([[5.0]]),  # beyond the cutoff (4 Å)
    np.array([[2]]),  # integers
])
def test_a_tampered_shortest_pairs_entry_is_refused_by_name(tmp_path, tampered):
    from helpers import emt_copper_frames

    from kernelpot import io, load

    model = _copper_model(emt_copper_frames(3, seed=5, rattle=0.05))
    model.save(tmp_path / "m.npz")
    metadata, arrays = io.read_model_file(tmp_path / "m.npz")
    arrays = {**arrays, "shortest_pairs": tampered}
    io.write_model_file(tmp_path / "bad.npz", metadata, arrays)
    with pytest.raises(ValueError, match="malformed shortest pair distances"):
        load(tmp_path / "bad.npz")


def test_an_asymmetric_shortest_pairs_entry_is_refused(tmp_path):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from kernelpot import ACSF, SparseGPPotential, io, load

    frames = [_alloy(seed) for seed in range(3)]
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=EMT().get_potential_energy(atoms),
                                           forces=EMT().get_forces(atoms))
    model = SparseGPPotential(ACSF.from_grid(["Al", "Ni"], 4.0, n_radial=4, n_angular=2),
                              random_state=0, n_restarts=0, method="sparse").fit(frames)
    model.save(tmp_path / "m.npz")
    metadata, arrays = io.read_model_file(tmp_path / "m.npz")
    bad = arrays["shortest_pairs"].copy()
    bad[0, 1] -= 0.1
    io.write_model_file(tmp_path / "bad.npz", metadata, {**arrays, "shortest_pairs": bad})
    with pytest.raises(ValueError, match="malformed shortest pair distances"):
        load(tmp_path / "bad.npz")


def test_species_are_sorted_and_may_be_symbols_and_bad_ones_are_named():
    cell = _alloy(0)
    by_numbers = ShortestPairs([28, 13], 5.0).add([cell])
    by_symbols = ShortestPairs(["Al", "Ni"], 5.0).add([cell])
    np.testing.assert_array_equal(by_numbers.species, [13, 28])
    np.testing.assert_array_equal(by_numbers.distances, by_symbols.distances)
    np.testing.assert_allclose(by_numbers.distances, _brute_force([cell], [13, 28], 5.0))
    with pytest.raises(ValueError, match="distinct elements"):
        ShortestPairs([13, 13], 5.0)
    with pytest.raises(ValueError, match="atomic numbers or element symbols"):
        ShortestPairs(["Xx"], 5.0)
    with pytest.raises(ValueError, match="cutoff must be a positive distance"):
        ShortestPairs([13], None)


def test_coincident_atoms_do_not_hide_a_real_contact():
    """A pair at 0 Å records 1e-6 Å: a ratio against it is finite, and a compressed pair of
    other elements in the same structure is still the closest relative contact."""
    import warnings

    frames = [Atoms("HO", positions=[[0, 0, 0], [0.97, 0, 0]]),
              Atoms("H2", positions=[[0, 0, 0], [0, 0, 0]])]
    shortest = ShortestPairs([1, 8], 5.0).add(frames)
    assert shortest.distances[0, 0] == 1e-6
    test = Atoms("HOH", positions=[[0.49, 0, 0], [0, 0, 0], [5.0, 5.0, 5.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero
        contact = shortest.closest(test)
    assert contact.elements == "H–O" and contact.ratio == pytest.approx(0.49 / 0.97)


def test_exact_updates_and_the_switch_to_sparse_lower_the_shortest_distances():
    import warnings

    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from helpers import emt_copper_frames, pressed_pair

    from kernelpot import ACSF, SparseGPPotential

    frames = emt_copper_frames(4, seed=5, rattle=0.05)
    pressed, shortest = pressed_pair(frames, 0.9)
    pressed.calc = SinglePointCalculator(pressed, energy=EMT().get_potential_energy(pressed),
                                         forces=EMT().get_forces(pressed))
    for method in ("exact", "auto"):
        model = SparseGPPotential(ACSF.from_grid(["Cu"], 4.0, n_radial=6, n_angular=4),
                                  incremental=True, random_state=0, n_restarts=0,
                                  method=method).fit(frames[:3])
        assert model.method_ == "exact"
        if method == "auto":  # the update passes the exact limits: refitted sparse
            model.set_params(exact_memory_limit=1e-9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.update([pressed])
        assert model.method_ == ("exact" if method == "exact" else "sparse")
        assert model.shortest_pairs_.distances[0, 0] == pytest.approx(0.9 * shortest)
