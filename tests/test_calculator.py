"""ASE calculator: agreement with the estimator, caching, drivers, energy conservation."""

import numpy as np
import pytest
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from helpers import emt_copper_frames

from kernelpot import ACSF, KernelPotCalculator, SparseGPPotential


@pytest.fixture(scope="module")
def copper_model():
    """ACSF model of EMT Cu (smooth cutoff: what MD needs)."""
    frames = emt_copper_frames(25, seed=11, rattle=0.12)
    descriptor = ACSF.from_grid(["Cu"], 4.5, n_radial=8, n_angular=8)
    return SparseGPPotential(descriptor, n_sparse=150, random_state=0, method="sparse").fit(frames)


def test_results_match_estimator(fitted_ethanol, ethanol_frames):
    atoms = ethanol_frames[55].copy()
    atoms.calc = KernelPotCalculator(fitted_ethanol)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert energy == pytest.approx(fitted_ethanol.predict([atoms])[0], rel=1e-12)
    np.testing.assert_allclose(forces, fitted_ethanol.predict_forces([atoms])[0], atol=1e-12)
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == energy
    _, f_std = fitted_ethanol.predict_forces([atoms], return_std=True, std_type="epistemic")
    # a std is a difference of near-equal terms: BLAS's rounding shows at ~1e-9
    np.testing.assert_allclose(atoms.calc.results["forces_std"], f_std[0], rtol=1e-8)
    _, e_std = fitted_ethanol.predict([atoms], return_std=True, std_type="epistemic")
    assert atoms.calc.results["energy_std"] == pytest.approx(e_std[0], rel=1e-8)
    assert atoms.calc.results["force_noise"] == fitted_ethanol.force_noise_
    assert "stress_noise" not in atoms.calc.results  # a molecule has no stress
    # the two terms are calibrated as the std is: their squares add up to its square,
    # in the ratio of the raw terms the map weighs
    results = atoms.calc.results
    np.testing.assert_allclose(results["forces_std_posterior"]**2
                               + results["forces_std_projection"]**2,
                               results["forces_std"]**2, rtol=1e-10)
    raw = fitted_ethanol.predict_structure(atoms, variance=True)
    weight = fitted_ethanol.projection_weight("forces")**2
    np.testing.assert_allclose(
        results["forces_std_posterior"]**2 / results["forces_std_projection"]**2,
        raw.forces_var_posterior / (weight * raw.forces_var_projection), rtol=1e-8)


def test_forces_match_numerical_derivative(fitted_ethanol, ethanol_frames):
    atoms = ethanol_frames[56].copy()
    atoms.calc = KernelPotCalculator(fitted_ethanol, uncertainty=False)
    numerical = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), numerical, rtol=1e-5, atol=1e-6)


def test_caching_and_uncertainty_switch(fitted_ethanol, ethanol_frames, monkeypatch):
    calls = []
    original = fitted_ethanol.predict_structure

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fitted_ethanol, "predict_structure", counting)
    atoms = ethanol_frames[57].copy()
    atoms.calc = KernelPotCalculator(fitted_ethanol, uncertainty=False)
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_potential_energies()
    assert len(calls) == 1 and calls[0]["variance"] is False
    assert "forces_std" not in atoms.calc.results
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert len(calls) == 2


def test_energy_only_uncertainty(fitted_ethanol, ethanol_frames):
    atoms = ethanol_frames[58].copy()
    atoms.calc = KernelPotCalculator(fitted_ethanol, uncertainty="energy")
    forces = atoms.get_forces()
    assert "forces_std" not in atoms.calc.results
    full = ethanol_frames[58].copy()
    full.calc = KernelPotCalculator(fitted_ethanol)
    np.testing.assert_array_equal(forces, full.get_forces())
    # the same variance, solved in a batch of different size: round-off only
    assert atoms.calc.results["energy_std"] == pytest.approx(full.calc.results["energy_std"],
                                                             rel=1e-9)
    with pytest.raises(ValueError, match="variance must be True, False or 'energy'"):
        fitted_ethanol.predict_structure(atoms, variance="forces")


def test_stds_computed_when_first_read(fitted_ethanol, ethanol_frames, monkeypatch):
    """By default the stds cost nothing until read, and then equal the eager ones."""
    import copy
    import pickle

    calls = []
    original = fitted_ethanol.predict_structure

    def counting(*args, **kwargs):
        calls.append(kwargs["variance"])
        return original(*args, **kwargs)

    monkeypatch.setattr(fitted_ethanol, "predict_structure", counting)
    eager = ethanol_frames[59].copy()
    eager.calc = KernelPotCalculator(fitted_ethanol, lazy=False)
    eager.get_forces()
    assert calls == [True]
    calls.clear()
    atoms = ethanol_frames[59].copy()
    atoms.calc = KernelPotCalculator(fitted_ethanol)
    np.testing.assert_array_equal(atoms.get_forces(), eager.get_forces())
    results = atoms.calc.results
    assert calls == [False]
    assert "forces_std" in results and "energy_std" in results  # announced, not computed
    assert "stress_std" not in results and calls == [False]
    # the positions the stds are of are the calculation's, even if the atoms move on
    atoms.positions[0, 0] += 0.05
    np.testing.assert_allclose(results["forces_std"], eager.calc.results["forces_std"],
                               rtol=1e-8)
    assert calls == [False, True]
    assert sorted(results) == sorted(eager.calc.results)
    for key in eager.calc.results:
        np.testing.assert_allclose(results[key], eager.calc.results[key], rtol=1e-8)
    results.get("energy_std")
    assert calls == [False, True]  # computed once
    for clone in (copy.deepcopy(results), pickle.loads(pickle.dumps(results)),
                  results.copy()):
        assert type(clone) is dict and sorted(clone) == sorted(results)
    # .get, len and dict() of a fresh calculation compute them as well
    atoms.calc.reset()
    atoms.get_forces()
    assert len(atoms.calc.results) == len(eager.calc.results)
    atoms.calc.reset()
    atoms.get_forces()
    assert atoms.calc.results.get("forces_std") is not None
    atoms.calc.reset()
    atoms.get_forces()
    assert "forces_std" in dict(atoms.calc.results)
    # a value written before the read wins over the computed one
    atoms.calc.reset()
    atoms.get_forces()
    atoms.calc.results["energy_std"] = -1.0
    assert atoms.calc.results["energy_std"] == -1.0
    assert "forces_std" in dict(atoms.calc.results)
    energy_only = ethanol_frames[59].copy()
    energy_only.calc = KernelPotCalculator(fitted_ethanol, uncertainty="energy")
    energy_only.get_forces()
    assert "forces_std" not in energy_only.calc.results
    assert sorted(energy_only.calc.results) == sorted(
        k for k in eager.calc.results if not k.startswith("forces_std"))
    with pytest.raises(KeyError):
        energy_only.calc.results["forces_std"]
    with pytest.raises(TypeError, match="lazy must be True or False"):
        KernelPotCalculator(fitted_ethanol, lazy="yes")
    with pytest.raises(ValueError, match="uncertainty must be True, False or 'energy'"):
        KernelPotCalculator(fitted_ethanol, uncertainty="forces")


def test_lazy_stds_of_a_cell_failures_and_a_changed_model(copper_model, monkeypatch):
    """The stress std is announced in both modes; a failed computation is retried; stds
    read after the model changed are refused, not given for another model."""
    import kernelpot.calculator as calculator_module

    cell = emt_copper_frames(1, seed=21, rattle=0.1)[0]
    for uncertainty in (True, "energy"):
        eager, lazy = cell.copy(), cell.copy()
        eager.calc = KernelPotCalculator(copper_model, uncertainty=uncertainty, lazy=False)
        lazy.calc = KernelPotCalculator(copper_model, uncertainty=np.bool_(uncertainty)
                                        if uncertainty is True else uncertainty)
        eager.get_stress()
        lazy.get_stress()
        assert "stress_std" in lazy.calc.results
        assert sorted(lazy.calc.results) == sorted(eager.calc.results)
        np.testing.assert_allclose(lazy.calc.results["stress_std"],
                                   eager.calc.results["stress_std"], rtol=1e-8)
    # a computation that fails leaves the entries pending: the next read computes them
    atoms = cell.copy()
    atoms.calc = KernelPotCalculator(copper_model)
    atoms.get_forces()
    results = atoms.calc.results
    original = calculator_module._std_results
    monkeypatch.setattr(calculator_module, "_std_results",
                        lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        results["forces_std"]
    assert "forces_std" in results
    monkeypatch.setattr(calculator_module, "_std_results", original)
    assert results["forces_std"].shape == (len(cell), 3)
    # the protocol: != and reversed compute, clear drops what is pending
    atoms.calc.reset()
    atoms.get_forces()
    assert not (atoms.calc.results != atoms.calc.results)
    atoms.calc.reset()
    atoms.get_forces()
    assert "forces_std" in list(reversed(atoms.calc.results))
    atoms.calc.reset()
    atoms.get_forces()
    atoms.calc.results.clear()
    assert "forces_std" not in atoms.calc.results and not atoms.calc.results
    # read after the model changed: refused
    model = SparseGPPotential(copper_model.descriptor, n_sparse=40, random_state=0,
                              method="sparse", incremental=True, n_restarts=0)
    model.fit(emt_copper_frames(4, seed=3, rattle=0.1))
    atoms.calc = KernelPotCalculator(model)
    atoms.get_forces()
    kept = atoms.calc.results
    model.update(emt_copper_frames(1, seed=4, rattle=0.1))
    with pytest.raises(RuntimeError, match="the model changed"):
        kept["forces_std"]
    atoms.calc.reset()
    assert atoms.get_forces().shape == (len(cell), 3)
    assert atoms.calc.results["forces_std"].shape == (len(cell), 3)


def test_stress_not_implemented_and_unknown_species(fitted_ethanol, ethanol_frames):
    atoms = ethanol_frames[58].copy()
    atoms.calc = KernelPotCalculator(fitted_ethanol)
    with pytest.raises(PropertyNotImplementedError, match="periodic along all three axes"):
        atoms.get_stress()
    atoms.numbers[0] = 7
    with pytest.raises(ValueError, match="not trained on"):
        atoms.get_potential_energy()


def test_relaxation_with_bfgs(copper_model):
    atoms = emt_copper_frames(1, seed=99, rattle=0.1)[0]
    atoms.calc = KernelPotCalculator(copper_model, uncertainty=False)
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    assert np.abs(atoms.get_forces()).max() < 0.01


def test_nve_energy_conservation(copper_model):
    """Short NVE run (Cu, 600 K, 2 fs): total energy drift well below 1 meV/atom/ps."""
    atoms = emt_copper_frames(1, seed=5, rattle=0.0)[0]
    atoms.calc = KernelPotCalculator(copper_model, uncertainty=False)
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=5)
    dyn.run(300)
    energies = np.array(energies) / len(atoms)
    times_ps = np.arange(len(energies)) * 5 * 2e-3
    drift = np.polyfit(times_ps, energies, 1)[0]  # eV/atom/ps
    assert abs(drift) < 1e-3
    assert np.ptp(energies) < 5e-3  # fluctuations of a 2 fs Verlet step stay small


def test_fire_langevin_and_neb(copper_model):
    """The calculator drives FIRE, Langevin MD and a nudged elastic band."""
    from ase import units
    from ase.build import bulk
    from ase.md.langevin import Langevin
    from ase.mep import NEB
    from ase.optimize import FIRE

    atoms = emt_copper_frames(1, seed=98, rattle=0.1)[0]
    atoms.calc = KernelPotCalculator(copper_model, uncertainty=False)
    FIRE(atoms, logfile=None).run(fmax=0.02, steps=300)
    assert np.abs(atoms.get_forces()).max() < 0.02

    atoms.calc = KernelPotCalculator(copper_model)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.01 / units.fs,
                   fixcm=False, rng=np.random.default_rng(0))
    dyn.run(20)
    assert np.all(np.isfinite(atoms.calc.results["forces_std"]))

    # a vacancy hop in the 32-atom cell: endpoints relaxed, three images
    perfect = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
    neighbour = int(np.argsort(perfect.get_distances(0, range(32), mic=True))[1])
    initial = perfect.copy()
    del initial[0]
    final = initial.copy()
    hop = neighbour - 1  # index after deleting atom 0
    final.positions[hop] = perfect.positions[0]
    for end in (initial, final):
        end.calc = KernelPotCalculator(copper_model, uncertainty=False)
        BFGS(end, logfile=None).run(fmax=0.02, steps=200)
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    for image in images[1:-1]:
        image.calc = KernelPotCalculator(copper_model, uncertainty=False)
    band = NEB(images, method="improvedtangent")
    band.interpolate(mic=True)
    converged = FIRE(band, logfile=None).run(fmax=0.05, steps=400)
    energies = [image.get_potential_energy() for image in images]
    assert converged
    assert max(energies[1:-1]) > max(energies[0], energies[-1])  # a barrier


def test_steps_without_force_stds_run_blas_on_one_thread():
    """BLAS's spinning threads would compete with the descriptor's Numba threads."""
    from threadpoolctl import threadpool_info

    from kernelpot.calculator import _blas_limit

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    with _blas_limit(True):
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
    with _blas_limit(False):
        assert blas_threads() == before


def test_a_large_sparse_models_force_stds_run_on_blas_threads(fitted_ethanol):
    """Its design-row GEMM gains more from BLAS threads than the descriptor loses."""
    from types import SimpleNamespace

    from kernelpot.calculator import THREADED_DESIGN_SIZE, _one_blas_thread

    def sparse(m, d):
        return SimpleNamespace(method_="sparse", inducing_=[np.zeros((m, d)), np.zeros((0, d))])

    assert _one_blas_thread(sparse(2560, 952), 32, True) is False  # 7.8e7
    assert _one_blas_thread(sparse(1712, 252), 107, True) is False
    assert _one_blas_thread(sparse(128, 252), 32, True) is True  # 1e6
    assert _one_blas_thread(sparse(900, 855), 9, True) is True
    assert 32 * 952 * 2560 > THREADED_DESIGN_SIZE > 9 * 855 * 900
    for variance in (False, "energy"):  # the mean: the descriptor's Numba threads
        assert _one_blas_thread(sparse(2560, 952), 32, variance) is True
    assert _one_blas_thread(SimpleNamespace(method_="exact"), 9, True) is False
    assert _one_blas_thread(fitted_ethanol, 9, False) is True


def test_the_blas_limit_is_set_from_the_main_thread_only():
    """threadpoolctl's limits are process-wide: a calculator in another thread leaves
    them alone, so two threads cannot leave BLAS limited after both finish."""
    import threading

    from threadpoolctl import threadpool_info

    from kernelpot.calculator import _blas_limit

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before, seen = blas_threads(), {}

    def in_thread():
        with _blas_limit(True):
            seen["inside"] = blas_threads()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen["inside"] == before and blas_threads() == before
