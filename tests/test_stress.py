"""Stress: descriptor strain gradients, the model's analytic stress and the calculator."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from helpers import emt_copper_frames, relative_error

from kernelpot import ACSF, SOAP, KernelPotCalculator, SparseGPPotential, TwoBody
from kernelpot.gp import stress_from_strain_derivative

ACSF_PARAMS = dict(g2_params=[[1.0, 0.0], [0.5, 1.5]], g3_params=[1.0],
                   g4_params=[[0.1, 2.0, 1.0], [0.1, 1.0, -1.0]], g5_params=[[0.05, 1.0, 1.0]])


def strained(atoms, epsilon):
    """``atoms`` under ``r → (1 + ε) r`` of cell and positions (open: positions only)."""
    out = atoms.copy()
    deformation = np.eye(3) + epsilon
    if atoms.pbc.any():
        out.set_cell(atoms.cell @ deformation.T, scale_atoms=True)
    else:
        out.positions = atoms.positions @ deformation.T
    return out


def numerical_strain_gradients(descriptor, atoms, h=1e-5):
    out = np.zeros((len(atoms), 3, 3, descriptor.get_number_of_features()))
    for a in range(3):
        for b in range(3):
            epsilon = np.zeros((3, 3))
            epsilon[a, b] = h
            plus = descriptor.create(strained(atoms, epsilon))
            minus = descriptor.create(strained(atoms, -epsilon))
            out[:, a, b] = (plus - minus) / (2 * h)
    return out


def descriptors(species):
    return [ACSF(species, 4.0, **ACSF_PARAMS), SOAP(species, 3.5, n_max=4, l_max=3, sigma=0.5)]


@pytest.mark.parametrize("kind", [0, 1], ids=["ACSF", "SOAP"])
def test_strain_gradients_match_finite_differences(kind, sic_cell, triclinic_small, ethanol):
    """Periodic (two species, and a cell far smaller than the cutoff) and open."""
    for atoms, species in [(sic_cell, ["Si", "C"]), (triclinic_small, ["Si", "Ge"]),
                           (ethanol, ["H", "C", "O"])]:
        descriptor = descriptors(species)[kind]
        result = descriptor.compute(atoms, strain=True)
        assert result.strain_gradients.shape == (len(atoms), 3, 3, descriptor.n_features)
        expected = numerical_strain_gradients(descriptor, atoms)
        assert relative_error(result.strain_gradients, expected) < 1e-6
        # the rest of the result is what compute() gives without strain
        plain = descriptor.compute(atoms)
        assert plain.strain_gradients is None
        np.testing.assert_allclose(result.features, plain.features, rtol=0, atol=1e-12)
        np.testing.assert_allclose(result.gradients, plain.gradients, rtol=0, atol=1e-12)


def test_strain_flag_must_be_bool(sic_cell):
    for descriptor in descriptors(["Si", "C"]):
        with pytest.raises(TypeError, match="strain must be True or False"):
            descriptor.compute(sic_cell, strain="yes")


def test_stress_voigt_order_and_symmetrisation():
    derivative = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    np.testing.assert_allclose(stress_from_strain_derivative(derivative, 2.0),
                               [0.5, 2.5, 4.5, 3.5, 2.5, 1.5])


@pytest.fixture(scope="module")
def copper():
    return emt_copper_frames(6, seed=0)


@pytest.fixture(scope="module")
def skewed_copper(copper):
    atoms = strained(copper[0], np.array([[0.01, 0.02, 0.0], [0.0, -0.01, 0.015],
                                          [0.005, 0.0, 0.02]]))
    atoms.rattle(0.03, seed=5)
    return atoms


MODELS = {
    "sparse-acsf": lambda: SparseGPPotential(ACSF(["Cu"], 4.5, **ACSF_PARAMS), random_state=0,
                                             method="sparse"),
    "exact-acsf": lambda: SparseGPPotential(ACSF(["Cu"], 4.5, **ACSF_PARAMS), random_state=0,
                                            method="exact"),
    "sparse-soap-two-body": lambda: SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5),
                                                      two_body=TwoBody(4.0), random_state=0,
                                                      method="sparse"),
    "exact-soap": lambda: SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), method="exact",
                                            random_state=0),
}


@pytest.fixture(scope="module", params=list(MODELS))
def copper_model(request, copper):
    return MODELS[request.param]().fit(copper[1:])


def test_stress_is_the_strain_derivative_of_the_energy(copper_model, skewed_copper):
    """Against ASE's central differences of the model's own energy, every component."""
    stress = copper_model.predict_stress([skewed_copper])[0]
    atoms = skewed_copper.copy()
    atoms.calc = KernelPotCalculator(copper_model, uncertainty=False)
    # eps 1e-4: central differences are exact to ~1e-8 there, while at 1e-5 the round-off
    # of ~300 eV energies reaches 1e-4 of the stress (measured on the exact ACSF model)
    numerical = calculate_numerical_stress(atoms, eps=1e-4)
    assert relative_error(stress, numerical) < 1e-4


def test_stress_symmetries(copper_model, skewed_copper):
    """Invariant to translation and permutation, equivariant (R σ Rᵀ) under rotation,
    intensive (a 2x1x1 supercell has the same stress)."""
    def full(voigt):
        xx, yy, zz, yz, xz, xy = voigt
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])

    stress = full(copper_model.predict_stress([skewed_copper])[0])
    moved = skewed_copper.copy()
    moved.positions += [1.3, -0.4, 2.2]
    order = np.random.default_rng(0).permutation(len(moved))
    moved = moved[order]
    np.testing.assert_allclose(full(copper_model.predict_stress([moved])[0]), stress,
                               rtol=0, atol=1e-9)
    rotated = skewed_copper.copy()
    rotated.euler_rotate(30, 50, 70, center=(0, 0, 0))
    rotated.set_cell(skewed_copper.cell @ _rotation(skewed_copper, rotated).T,
                     scale_atoms=False)
    R = _rotation(skewed_copper, rotated)
    np.testing.assert_allclose(full(copper_model.predict_stress([rotated])[0]),
                               R @ stress @ R.T, rtol=0, atol=1e-8)
    supercell = skewed_copper.repeat((2, 1, 1))
    np.testing.assert_allclose(full(copper_model.predict_stress([supercell])[0]), stress,
                               rtol=0, atol=1e-8)


def _rotation(before, after):
    """The rotation ASE applied (positions relative to atom 0, least squares)."""
    a = before.positions - before.positions[0]
    b = after.positions - after.positions[0]
    u, _, vt = np.linalg.svd(b.T @ a)
    return u @ vt


def test_stress_from_energies_and_forces_matches_emt():
    """A SOAP model fitted on EMT energies and forces of cells of several volumes
    predicts EMT's own stress: the strain derivative carries the physics the
    labels determine (measured RMSE 9e-5 eV/Å³ against a spread of 0.026)."""
    train, test = emt_copper_frames(20, seed=0), emt_copper_frames(5, seed=1)
    model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), random_state=0,
                              method="sparse").fit(train)
    reference = []
    for atoms in test:
        atoms = atoms.copy()
        atoms.calc = EMT()
        reference.append(atoms.get_stress())
    reference = np.array(reference)
    error = model.predict_stress(test) - reference
    assert np.sqrt(np.mean(error**2)) < 0.02 * reference.std()


def test_calculator_stress_and_cell_relaxation(copper_model, skewed_copper):
    atoms = skewed_copper.copy()
    atoms.calc = KernelPotCalculator(copper_model, uncertainty=False)
    np.testing.assert_allclose(atoms.get_stress(),
                               copper_model.predict_stress([skewed_copper])[0], rtol=1e-12)
    assert "stress" in atoms.calc.results
    before = np.abs(atoms.get_stress()).max()
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.02, steps=60)
    assert np.abs(atoms.get_stress()).max() < 0.5 * before


def test_stress_needs_a_periodic_cell(copper_model, copper, ethanol):
    with pytest.raises(TypeError, match="stress must be True or False"):
        copper_model.predict_structure(copper[0], stress="yes")
    slab = copper[0].copy()
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="periodic along all three axes"):
        copper_model.predict_stress([slab])
    # the calculator computes no stress unless asked, so open structures still run
    cluster = Atoms("Cu4", positions=np.eye(4, 3) * 2.4)
    cluster.calc = KernelPotCalculator(copper_model, uncertainty=False)
    assert cluster.get_forces().shape == (4, 3)
    with pytest.raises(PropertyNotImplementedError, match="periodic along all three axes"):
        cluster.get_stress()
    flat = bulk("Cu", "fcc", 3.6, cubic=True)
    flat.cell[2] = 0.0
    with pytest.raises(ValueError):
        copper_model.predict_stress([flat])


def test_loaded_model_gives_the_same_stress(copper_model, skewed_copper, tmp_path):
    from kernelpot import load

    loaded = load(copper_model.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.predict_stress([skewed_copper]),
                                  copper_model.predict_stress([skewed_copper]))


def test_cli_predict_writes_the_stress_of_periodic_frames(copper_model, skewed_copper,
                                                          ethanol, tmp_path):
    from ase.io import read, write

    from kernelpot.cli import main

    model_path = copper_model.save(tmp_path / "model")
    write(tmp_path / "cells.xyz", [skewed_copper, skewed_copper.repeat((1, 2, 1))])
    assert main(["predict", str(model_path), str(tmp_path / "cells.xyz"), "-o",
                 str(tmp_path / "out.xyz")]) == 0
    back = read(tmp_path / "out.xyz", ":")
    expected, expected_std = (x[0] for x in copper_model.predict_stress([skewed_copper],
                                                                         return_std=True))
    for atoms in back:
        np.testing.assert_allclose(atoms.get_stress(), expected, rtol=0, atol=1e-9)  # xyz digits
        # the total std, as kernelpot predict writes the energy's and forces'
        np.testing.assert_allclose(atoms.info["stress_std"], expected_std, rtol=1e-6)
