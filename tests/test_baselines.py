"""Physics baselines (Δ-learning): the pair terms themselves and the estimator with one."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import emt_strained_cells, finite_difference_forces, finite_difference_stress

from kernelpot import (
    SOAP,
    ZBL,
    Coulomb,
    KernelPotCalculator,
    LennardJones,
    Pair,
    SparseGPPotential,
    load,
)
from kernelpot._labels import read_labels
from kernelpot.baselines import COULOMB_EV_A, CalculatorBaseline, residual_labels

CU_SOAP = SOAP(["Cu"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5)


def _compressed_cell():
    atoms = bulk("Cu", "fcc", 3.0, cubic=True)  # neighbours at 2.1 Å
    atoms.rattle(0.15, seed=1)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.0, 0.02, 0.0], [0.0, 0.0, -0.01],
                                              [0.01, 0.0, 0.0]]), scale_atoms=True)
    return atoms


# -- the pair terms --------------------------------------------------------------------------

def test_zbl_is_the_bare_coulomb_repulsion_at_short_range_and_zero_beyond_r_cut():
    zbl = ZBL(r_inner=1.0, r_cut=2.0)
    for r, factor in ((1e-5, 1.0), (0.5, None), (1.99999, None), (2.0, 0.0), (3.0, 0.0)):
        dimer = Atoms("Cu2", positions=[[0, 0, 0], [r, 0, 0]])
        energy = zbl.compute(dimer).energy
        if factor is not None:
            assert energy == pytest.approx(factor * COULOMB_EV_A * 29**2 / r, rel=0.01,
                                           abs=1e-12)
        else:
            assert energy > 0
    # energy and force go continuously to zero at r_cut
    near = Atoms("Cu2", positions=[[0, 0, 0], [1.9999, 0, 0]])
    terms = zbl.compute(near)
    assert terms.energy < 1e-6 and np.abs(terms.forces).max() < 1e-2


def test_lennard_jones_has_its_minimum_and_zero_force_at_the_cutoff():
    lj = LennardJones(epsilon=0.1, sigma=2.0, r_cut=6.0)
    r_min = 2 ** (1 / 6) * 2.0
    energies = [lj.compute(Atoms("Ar2", positions=[[0, 0, 0], [r, 0, 0]])).energy
                for r in (r_min - 0.01, r_min, r_min + 0.01)]
    assert energies[1] < energies[0] and energies[1] < energies[2]
    assert energies[1] == pytest.approx(-0.1, abs=0.01)  # the shift is small at 3σ
    at_cut = lj.compute(Atoms("Ar2", positions=[[0, 0, 0], [5.99999, 0, 0]]))
    assert abs(at_cut.energy) < 1e-9 and np.abs(at_cut.forces).max() < 1e-6
    assert LennardJones(sigma=2.0).compute(
        Atoms("Ar2", positions=[[0, 0, 0], [5.9, 0, 0]])).energy != 0.0  # r_cut 3σ = 6 Å


_TABLE_R = np.linspace(1.6, 5.0, 30)
_TABLE_E = 0.3 * np.exp(-2.0 * (_TABLE_R - 1.6)) - 0.05 * np.exp(-((_TABLE_R - 2.6) ** 2))


@pytest.mark.parametrize("baseline", [ZBL(r_inner=1.5, r_cut=2.6), LennardJones(0.05, 2.2, 5.0),
                                      Pair(_TABLE_R, _TABLE_E)], ids=["zbl", "lj", "pair"])
def test_forces_and_stress_are_finite_differences_of_the_energy(baseline):
    atoms = _compressed_cell()
    terms = baseline.compute(atoms, stress=True)
    energy = lambda a: baseline.compute(a).energy  # noqa: E731
    components = [(0, 0), (1, 2), (3, 1)]
    np.testing.assert_allclose(terms.forces[tuple(np.array(components).T)],
                               finite_difference_forces(energy, atoms, components),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(terms.stress, finite_difference_stress(energy, atoms),
                               rtol=1e-5, atol=1e-9)
    assert terms.local_energies.sum() == pytest.approx(terms.energy)
    # translation and rotation invariance of the energy, equivariance of the forces
    moved = atoms.copy()
    moved.translate([0.3, -0.2, 0.1])
    assert baseline.compute(moved).energy == pytest.approx(terms.energy, rel=1e-12)
    mol = molecule("CH4")
    mol.positions *= 0.6  # close contacts
    rotated = mol.copy()
    rotated.rotate(37, "x")
    rotated.rotate(11, "z")
    R = np.linalg.lstsq(mol.positions - mol.positions.mean(0),
                        rotated.positions - rotated.positions.mean(0), rcond=None)[0]
    a, b = baseline.compute(mol), baseline.compute(rotated)
    assert b.energy == pytest.approx(a.energy, rel=1e-10)
    np.testing.assert_allclose(b.forces, a.forces @ R, atol=1e-9 * np.abs(a.forces).max())


@pytest.mark.parametrize(("baseline", "message"), [
    (ZBL(r_inner=2.0, r_cut=1.0), "ZBL: r_inner must be below r_cut"),
    (ZBL(r_cut=-1.0), "ZBL: r_cut must be a finite number > 0"),
    (LennardJones(epsilon=0.0), "LennardJones: epsilon must be a finite number > 0"),
])
def test_bad_parameters_are_named(baseline, message):
    with pytest.raises(ValueError, match=message):
        baseline.compute(bulk("Cu"))


def test_stress_needs_a_periodic_cell():
    with pytest.raises(ValueError, match="stress needs a structure periodic"):
        ZBL().compute(molecule("H2O"), stress=True)


# -- the estimator with a baseline -------------------------------------------------------------

@pytest.fixture(scope="module")
def cells():
    return emt_strained_cells(8, seed=5)


def test_the_gp_learns_the_residual_and_predictions_add_the_baseline_back(cells):
    baseline = LennardJones(0.05, 2.2, 5.0)
    model = SparseGPPotential(CU_SOAP, baseline=baseline, method="sparse",
                              random_state=0).fit(cells[:6])
    # the same GP fitted by hand on the residual labels
    labels = residual_labels(cells[:6], read_labels(cells[:6], "t", stress=True), baseline)
    residual = []
    for atoms, e, f, s in zip(cells[:6], labels.energies, labels.forces, labels.stresses,
                              strict=True):
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=e, forces=f, stress=s)
        residual.append(copy)
    plain = SparseGPPotential(CU_SOAP, method="sparse", random_state=0).fit(residual)
    test = cells[6:]
    e_b = np.array([baseline.compute(a).energy for a in test])
    np.testing.assert_allclose(model.predict(test), plain.predict(test) + e_b, rtol=1e-10)
    _, f_model = model.predict_energies_and_forces(test)
    _, f_plain = plain.predict_energies_and_forces(test)
    for a, fm, fp in zip(test, f_model, f_plain, strict=True):
        np.testing.assert_allclose(fm, fp + baseline.compute(a).forces, atol=1e-9)
    np.testing.assert_allclose(
        model.predict_stress(test),
        plain.predict_stress(test) + [baseline.compute(a, stress=True).stress for a in test],
        atol=1e-10)
    local = model.predict_local_energies(test[:1])[0]
    assert local.sum() == pytest.approx(model.predict(test[:1])[0], rel=1e-10)
    # the std is the GP's
    np.testing.assert_allclose(model.predict(test, return_std=True)[1],
                               plain.predict(test, return_std=True)[1], rtol=1e-8)


def test_zbl_keeps_atoms_apart_where_the_data_say_nothing(cells):
    with_zbl = SparseGPPotential(CU_SOAP, baseline=ZBL(r_inner=1.0, r_cut=2.0),
                                 method="sparse", random_state=0).fit(cells[:6])
    without = SparseGPPotential(CU_SOAP, method="sparse", random_state=0).fit(cells[:6])
    dimer_cell = cells[0].copy()
    dimer_cell.positions[1] = dimer_cell.positions[0] + [0.9, 0.0, 0.0]  # a 0.9 Å contact
    dimer_cell.calc = EMT()
    emt_force = dimer_cell.get_forces()[1, 0]
    f_zbl = with_zbl.predict_forces([dimer_cell])[0][1, 0]
    f_none = without.predict_forces([dimer_cell])[0][1, 0]
    assert emt_force > 1.0 and f_zbl > 100.0  # pushed apart, hard
    assert abs(f_zbl - f_none) > 100.0
    # reaching into the training data's distances: said at fit
    closest = float(np.min(with_zbl.shortest_pairs_.distances))
    assert 2.0 < closest < 3.0
    with pytest.warns(UserWarning, match=r"the ZBL baseline acts up to r_cut=3 Å, beyond the "
                                         r"shortest pair of the training structures"):
        SparseGPPotential(CU_SOAP, baseline=ZBL(r_inner=1.0, r_cut=3.0), method="sparse",
                          random_state=0).fit(cells[:6])


def test_save_load_keeps_a_registered_baseline_and_refuses_a_calculator(cells, tmp_path):
    model = SparseGPPotential(CU_SOAP, baseline=ZBL(r_cut=2.2), method="sparse",
                              random_state=0).fit(cells[:4])
    loaded = load(model.save(tmp_path / "zbl"))
    assert isinstance(loaded.baseline_, ZBL) and loaded.baseline_.r_cut == 2.2
    np.testing.assert_array_equal(loaded.predict(cells[6:]), model.predict(cells[6:]))
    runtime = SparseGPPotential(CU_SOAP, baseline=EMT(), method="sparse",
                                random_state=0).fit(cells[:4])
    assert isinstance(runtime.baseline_, CalculatorBaseline)
    # EMT as the baseline: the GP learns (almost) nothing, predictions are EMT's
    reference = np.array([a.get_potential_energy() for a in cells[6:]])
    np.testing.assert_allclose(runtime.predict(cells[6:]), reference, atol=0.05)
    with pytest.raises(ValueError, match="save: the model's baseline is CalculatorBaseline"):
        runtime.save(tmp_path / "emt")


def test_the_calculator_and_update_use_the_baseline(cells):
    baseline = ZBL(r_cut=2.2)
    model = SparseGPPotential(CU_SOAP, baseline=baseline, method="sparse", incremental=True,
                              random_state=0, use_stress=False).fit(cells[:4])
    atoms = cells[6].copy()
    atoms.calc = KernelPotCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(model.predict([cells[6]])[0],
                                                         rel=1e-12)
    refit = SparseGPPotential(CU_SOAP, baseline=baseline, method="sparse",
                              incremental=True, random_state=0, use_stress=False)
    refit.fit(cells[:4]).update(cells[4:6], n_inducing="all")
    direct = SparseGPPotential(CU_SOAP, baseline=baseline, method="sparse",
                               use_stress=False, random_state=0,
                               optimize=False).set_params(
        signal_std=refit.signal_std_, energy_noise=refit.energy_noise_,
        force_noise=refit.force_noise_, e0=dict(zip(["Cu"], refit.e0_, strict=True)))
    direct.fit(cells[:6])
    np.testing.assert_allclose(refit.predict(cells[6:]), direct.predict(cells[6:]), rtol=1e-6)


def test_a_baseline_of_the_wrong_type_is_refused(cells):
    with pytest.raises(TypeError, match="baseline must be a kernelpot baseline"):
        SparseGPPotential(CU_SOAP, baseline="zbl").fit(cells[:2])


# -- Coulomb -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("structure", "a", "r0_factor", "madelung", "pairs"), [
    (bulk("NaCl", "rocksalt", 5.64, cubic=True), 5.64, 0.5, 1.747564594633, 4),
    (bulk("NaCl", "rocksalt", 5.64), 5.64, 0.5, 1.747564594633, 1),
    (bulk("CsCl", "cesiumchloride", 4.1), 4.1, np.sqrt(3) / 2, 1.762674773070, 1),
], ids=["NaCl-cubic", "NaCl-primitive", "CsCl"])
def test_coulomb_gives_the_madelung_constants(structure, a, r0_factor, madelung, pairs):
    charges = {s: (1 if s in ("Na", "Cs") else -1) for s in set(structure.get_chemical_symbols())}
    energy = Coulomb(charges).compute(structure).energy
    assert -energy / pairs * (r0_factor * a) / COULOMB_EV_A == pytest.approx(madelung, rel=1e-6)
    # a tighter accuracy moves it by less than the looser one's tolerance
    tight = Coulomb(charges, r_cut=10.0, accuracy=1e-10).compute(structure).energy
    assert energy == pytest.approx(tight, rel=1e-6)


def _ionic_cell():
    atoms = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    atoms.rattle(0.1, seed=3)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.01, 0.02, 0.0], [0.0, -0.01, 0.015],
                                              [0.0, 0.0, 0.005]]), scale_atoms=True)
    return atoms


@pytest.mark.parametrize("charged", [False, True], ids=["neutral", "charged"])
def test_coulomb_forces_and_stress_are_finite_differences(charged):
    atoms = _ionic_cell()
    coulomb = Coulomb({"Na": 1.0, "Cl": -0.7 if charged else -1.0}, r_cut=7.0, accuracy=1e-10)
    terms = coulomb.compute(atoms, stress=True)
    energy = lambda a: coulomb.compute(a).energy  # noqa: E731
    components = [(0, 0), (3, 2), (6, 1)]
    np.testing.assert_allclose(terms.forces[tuple(np.array(components).T)],
                               finite_difference_forces(energy, atoms, components),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms.stress, finite_difference_stress(energy, atoms),
                               rtol=1e-5, atol=1e-8)
    if not charged:
        np.testing.assert_allclose(terms.forces.sum(axis=0), 0.0, atol=1e-8)


def test_coulomb_of_a_molecule_is_the_plain_sum():
    mol = molecule("H2O")
    charges = {"O": -0.8, "H": 0.4}
    terms = Coulomb(charges).compute(mol)
    q = np.array([charges[s] for s in mol.get_chemical_symbols()])
    expected = sum(COULOMB_EV_A * q[i] * q[j] / mol.get_distance(i, j)
                   for i in range(3) for j in range(i + 1, 3))
    assert terms.energy == pytest.approx(expected, rel=1e-12)
    h = 1e-6
    shifted = [mol.copy() for _ in range(2)]
    shifted[0].positions[1, 0] += h
    shifted[1].positions[1, 0] -= h
    fd = -(Coulomb(charges).compute(shifted[0]).energy
           - Coulomb(charges).compute(shifted[1]).energy) / (2 * h)
    assert terms.forces[1, 0] == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize(("coulomb", "atoms", "error", "message"), [
    (Coulomb({"Na": 1}), bulk("NaCl", "rocksalt", 5.64), ValueError,
     r"Coulomb: no charge given for \['Cl'\]"),
    (Coulomb(None), bulk("NaCl", "rocksalt", 5.64), TypeError, "charges must be a dict"),
    (Coulomb({"Na": "1", "Cl": -1}), bulk("NaCl", "rocksalt", 5.64), ValueError,
     "the charge of 'Na' must be a finite number"),
    (Coulomb({"Na": 1, "Cl": -1}, accuracy=2.0), bulk("NaCl", "rocksalt", 5.64), ValueError,
     r"accuracy must lie in \(0, 1\)"),
])
def test_coulomb_errors_name_the_problem(coulomb, atoms, error, message):
    with pytest.raises(error, match=message):
        coulomb.compute(atoms)


def test_coulomb_refuses_mixed_periodicity():
    slab = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="periodic along all three axes or none"):
        Coulomb({"Na": 1, "Cl": -1}).compute(slab)


def _ionic_frames(n: int = 4) -> list:
    """Rattled NaCl cells labelled by ASE's Lennard-Jones (a stand-in reference)."""
    from ase.calculators.lj import LennardJones as AseLJ

    frames = []
    for seed in range(n):
        atoms = _ionic_cell()
        atoms.rattle(0.05, seed=seed)
        atoms.calc = AseLJ(sigma=2.5, epsilon=0.01, rc=5.0)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def test_a_model_with_a_coulomb_baseline_saves_and_loads(tmp_path):
    frames = _ionic_frames()
    soap = SOAP(["Na", "Cl"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5)
    model = SparseGPPotential(soap, baseline=Coulomb({"Na": 1, "Cl": -1}), method="sparse",
                              random_state=0).fit(frames[:3])
    loaded = load(model.save(tmp_path / "coulomb"))
    assert loaded.baseline_.get_params() == model.baseline_.get_params()
    np.testing.assert_array_equal(loaded.predict(frames[3:]), model.predict(frames[3:]))


def test_coulomb_and_zbl_together_add_up_fit_save_and_load(tmp_path):
    """An ionic model that also guards close contacts: ``baseline=[Coulomb, ZBL]``."""
    from ase.calculators.lj import LennardJones as AseLJ

    from kernelpot import BaselineSum

    frames = _ionic_frames()
    coulomb, zbl = Coulomb({"Na": 1, "Cl": -1}), ZBL(r_inner=0.8, r_cut=1.6)
    both = coulomb + zbl
    assert isinstance(both, BaselineSum) and len((both + zbl).terms) == 3  # flattened
    parts = [term.compute(frames[0], forces=True, stress=True) for term in (coulomb, zbl)]
    summed = both.compute(frames[0], forces=True, stress=True)
    np.testing.assert_allclose(summed.local_energies, sum(p.local_energies for p in parts))
    np.testing.assert_allclose(summed.forces, sum(p.forces for p in parts))
    np.testing.assert_allclose(summed.stress, sum(p.stress for p in parts))
    soap = SOAP(["Na", "Cl"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5)
    model = SparseGPPotential(soap, baseline=[coulomb, zbl], method="sparse",
                              random_state=0).fit(frames[:3])
    assert isinstance(model.baseline_, BaselineSum)
    loaded = load(model.save(tmp_path / "both"))
    assert [type(t).__name__ for t in loaded.baseline_.terms] == ["Coulomb", "ZBL"]
    np.testing.assert_array_equal(loaded.predict(frames[3:]), model.predict(frames[3:]))
    # a Na–Cl pair pressed to 1 Å: Coulomb alone pulls it together, with ZBL it is pushed
    # apart
    pressed = frames[3].copy()
    neighbour = int(np.argsort(pressed.get_distances(0, range(len(pressed)), mic=True))[1])
    direction = pressed.get_distance(0, neighbour, mic=True, vector=True)
    pressed.positions[neighbour] = pressed.positions[0] + direction / np.linalg.norm(direction)
    coulomb_only = SparseGPPotential(soap, baseline=coulomb, method="sparse",
                                     random_state=0).fit(frames[:3])
    unit = direction / np.linalg.norm(direction)
    with pytest.warns(UserWarning):  # the contact: closer than any training pair
        pull = coulomb_only.predict_forces([pressed])[0][neighbour] @ unit
    push = model.predict_forces([pressed])[0][neighbour] @ unit
    assert pull < 0 < push  # along the bond, away from atom 0 is positive
    # a sum holding an ASE calculator fits, but is not saved
    runtime = SparseGPPotential(soap, baseline=[coulomb, AseLJ(sigma=2.0, epsilon=0.001)],
                                method="sparse", random_state=0).fit(frames[:3])
    with pytest.raises(ValueError, match="save: the model's baseline is CalculatorBaseline"):
        runtime.save(tmp_path / "runtime")
    with pytest.raises(TypeError, match="empty list"):
        SparseGPPotential(soap, baseline=[]).fit(frames[:3])


def test_a_baseline_model_restores_its_checkpoint_from_the_original_frames(cells, tmp_path):
    baseline = LennardJones(0.05, 2.2, 5.0)
    model = SparseGPPotential(CU_SOAP, baseline=baseline, method="sparse", incremental=True,
                              random_state=0).fit(cells[:4])
    # the structures keep the labels as read, not the GP's residuals
    kept = model.posterior_.training_frames
    assert kept[0].get_potential_energy() == pytest.approx(cells[0].get_potential_energy())
    loaded = load(model.save(tmp_path / "checkpoint", training_state=True))
    loaded.restore_training(cells[:4])  # the reference's labels, as an on-the-fly run keeps
    model.update(cells[4:5])
    loaded.update(cells[4:5])
    np.testing.assert_allclose(loaded.predict(cells[6:]), model.predict(cells[6:]),
                               rtol=0, atol=1e-7)
    assert model.posterior_.training_frames[4].get_potential_energy() == pytest.approx(
        cells[4].get_potential_energy())


def test_the_fitted_baseline_stays_until_the_next_fit(cells):
    model = SparseGPPotential(CU_SOAP, baseline=LennardJones(0.05, 2.2, 5.0),
                              method="sparse", random_state=0).fit(cells[:6])
    before = model.predict(cells[6:])
    model.set_params(baseline=None)
    model.calibrate(cells[6:8])
    np.testing.assert_allclose(model.predict(cells[6:]), before, rtol=1e-12)
    assert isinstance(model.baseline_, LennardJones)


def test_coulomb_charges_must_name_elements():
    with pytest.raises(ValueError, match="'Xx' is not a chemical element"):
        Coulomb({"Xx": 1.0, "Cl": -1.0}).compute(bulk("NaCl", "rocksalt", 5.64))


def test_a_tabulated_pair_follows_its_table_and_saves(cells, tmp_path):
    lj = LennardJones(0.05, 2.2, 5.0)
    r = np.linspace(1.9, 5.0, 60)
    table = [lj.compute(Atoms("Ar2", positions=[[0, 0, 0], [x, 0, 0]])).energy for x in r]
    pair = Pair(r.tolist(), table)
    for x in (2.0, 2.47, 3.3, 4.9, 5.2):
        dimer = Atoms("Ar2", positions=[[0, 0, 0], [x, 0, 0]])
        assert pair.compute(dimer).energy == pytest.approx(lj.compute(dimer).energy, rel=2e-3,
                                                           abs=2e-4)
    with pytest.raises(ValueError, match="increasing"):
        Pair([1.0, 3.0, 2.0, 4.0], [0, 0, 0, 0]).compute(bulk("Cu"))
    with pytest.raises(ValueError, match="at least 4"):
        Pair([1.0, 2.0], [0.0, 0.0]).compute(bulk("Cu"))
    model = SparseGPPotential(CU_SOAP, baseline=pair, method="sparse",
                              random_state=0).fit(cells[:3])
    loaded = load(model.save(tmp_path / "pair"))
    np.testing.assert_array_equal(loaded.predict(cells[6:]), model.predict(cells[6:]))
