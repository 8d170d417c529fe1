"""Physics baselines (Δ-learning) on a rigid-ion NaCl reference: Coulomb, ZBL, none.

The reference is a rigid-ion model of NaCl whose analytic form is known: point charges
±1 e (Ewald sum, kernelpot's own ``Coulomb`` with a tighter ``r_cut=10, accuracy=1e-7``
than the baseline's defaults) plus the Born–Mayer repulsion of Tosi and Fumi
(J. Phys. Chem. Solids 25, 31 (1964), their NaCl set): ``φ_ij(r) = c_ij b exp((σ_i +
σ_j - r) / ρ)`` with ``b = 0.338e-19 J``, ``ρ = 0.317 Å``, ``σ_Na = 1.170 Å``,
``σ_Cl = 1.585 Å`` and Pauling factors ``c_+- = 1``, ``c_++ = 1.25``, ``c_-- = 0.75``,
i.e. ``A = 1254.9 eV`` (Na–Cl), ``423.6 eV`` (Na–Na), ``3485.1 eV`` (Cl–Cl). Tosi and
Fumi's dispersion terms (``C/r⁶``, ``D/r⁸``) are left out, so the lattice constant
comes out a little above experiment (printed). The repulsion is shifted-force at 6 Å
(energy and force zero there; the shift is below 1e-5 eV per pair). The calculator
(energy, per-atom energies, forces, stress) is checked against finite differences at
start-up.

Data, labelled with energy, forces and stress: Langevin MD with the reference (2 fs,
friction 0.02/fs, 250 steps of equilibration, a frame every 25 steps) at 300, 600, 900,
1200 and 1500 K, at the reference's 0 K lattice constant ``a0``, in rock-salt supercells
of 64 atoms (2×2×2 cubic; unstrained, under a random symmetric strain of up to 2 % per
component, and with one Na removed: 63 atoms, net charge -1, which the Ewald sum of
reference and baseline neutralises with a uniform background) and 216 atoms (3×3×3;
unstrained and with one Na removed). The training pool (400 frames) and the test set
(100 frames) come from separate MD runs (other seeds, other random strains); the
``n = 100`` training set is a seeded random subset of the pool. Generated data are cached
in ``/tmp/bench_baselines/*.xyz`` (extxyz; the name carries a hash of the settings).

Compared (SOAP r_cut 5 Å, n_max 8, l_max 6, σ 0.5, ``random_state=0``, defaults
otherwise: trained on stresses): the plain ``SparseGPPotential`` against the same with
``baseline=Coulomb(charges={"Na": 1, "Cl": -1})``, on the test set (force MAE eV/Å,
energy MAE/RMSE meV/atom, stress RMSE GPa, fit time). Then the tail of an isolated
Na⁺–Cl⁻ pair (open boundaries, trained on bulk cells only) from 2.4 to 15 Å, and close
contacts: models trained on 64-atom cells at 1,000 K (plain, ``ZBL`` with ``r_cut``
below the data's shortest distance, ``Coulomb``) driven by Langevin MD at 3,000 K
(1 fs steps), with the shortest distance seen beside the reference's own run.

The n comparison fits both models with ``n_sparse=1000`` inducing environments per
element at both sizes (``--n-sparse 0`` gives the estimator's default, every environment up
to 2000 per element: at n = 400, 40,650 atoms, its design and fit would need roughly twice
the memory and time of ``n_sparse=1000``, on a machine shared with other jobs). The
1,000 K fits of the close-contact part use the default.

Usage::

    python benchmarks/baselines.py [--quick] [--n-sparse 1000] [--sizes 100,400]
        [--regenerate]

``--quick`` runs a small version (a fifth of the frames, short MD) to check the script.
One thread for BLAS and Numba is the default (set ``OPENBLAS_NUM_THREADS`` etc. to
change it).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import vesin  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.calculator import Calculator, all_changes  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import Stationary, thermalize_momenta  # noqa: E402
from scipy.optimize import minimize_scalar  # noqa: E402

import kernelpot  # noqa: E402
from kernelpot import SOAP, ZBL, Coulomb, KernelPotCalculator, SparseGPPotential  # noqa: E402
from kernelpot.metrics import mae, rmse  # noqa: E402

OUT = Path("/tmp/bench_baselines")
GPA = 160.21766208  # eV/Å³ in GPa
CHARGES = {"Na": 1, "Cl": -1}
MADELUNG_NACL = 1.747564594633  # rock salt, per ion pair, nearest-neighbour distance
# Tosi-Fumi NaCl Born-Mayer repulsion (dispersion left out)
TF_B = 0.338e-19 / 1.602176634e-19  # eV
TF_RHO = 0.317  # Å
TF_SIGMA = {11: 1.170, 17: 1.585}  # Å
TF_PAULING = {(11, 11): 1.25, (11, 17): 1.0, (17, 17): 0.75}
BM_CUT = 6.0  # Å, shifted-force cutoff of the repulsion
REF_EWALD = {"r_cut": 10.0, "accuracy": 1e-7}
# data generation
TEMPERATURES = (300, 600, 900, 1200, 1500)
#: name, supercell repeat, random strain, Na vacancy, frames per run (train pool, test)
CELL_KINDS = (("64-perfect", 2, False, False, 20, 5), ("64-strained", 2, True, False, 20, 5),
              ("63-vacancy", 2, False, True, 20, 5), ("216-perfect", 3, False, False, 10, 3),
              ("215-vacancy", 3, False, True, 10, 2))
TIMESTEP, FRICTION, N_EQUIL, STRIDE = 2.0, 0.02, 250, 25  # fs, 1/fs, steps, steps
MAX_STRAIN = 0.02
WARM_T, WARM_RUNS, WARM_FRAMES = 1000, 5, 20  # close-contact training data (64 atoms)
HOT_T, HOT_STEP, HOT_FRICTION, HOT_EVERY = 3000, 1.0, 0.02, 5  # K, fs, 1/fs, steps
TAIL_R = (2.4, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
TAIL_R_MAX = 15.0
SOAP_ARGS = {"r_cut": 5.0, "n_max": 8, "l_max": 6, "sigma": 0.5}


# -- the reference -------------------------------------------------------------------------

class RigidIonNaCl(Calculator):
    """Rigid-ion NaCl: Ewald ±1 e point charges + Tosi–Fumi Born–Mayer repulsion."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.coulomb = Coulomb(CHARGES, **REF_EWALD)
        self.amplitude = np.zeros((119, 119))
        for (zi, zj), c in TF_PAULING.items():
            value = c * TF_B * np.exp((TF_SIGMA[zi] + TF_SIGMA[zj]) / TF_RHO)
            self.amplitude[zi, zj] = self.amplitude[zj, zi] = value

    def born_mayer(self, atoms: Atoms, stress: bool):
        """Return per-atom energies, forces and (optionally) ASE's stress of the repulsion."""
        periodic = bool(np.all(atoms.pbc))
        box = np.asarray(atoms.cell) if periodic else np.zeros((3, 3))
        i, j, vectors = vesin.NeighborList(cutoff=BM_CUT, full_list=True).compute(
            points=atoms.positions, box=box, periodic=periodic, quantities="ijD")
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
        d = np.linalg.norm(vectors, axis=1)
        amp = self.amplitude[atoms.numbers[i], atoms.numbers[j]]
        e_r, e_c = amp * np.exp(-d / TF_RHO), amp * np.exp(-BM_CUT / TF_RHO)
        phi = e_r - e_c + (d - BM_CUT) * e_c / TF_RHO  # shifted force
        slope = (e_c - e_r) / TF_RHO
        n = len(atoms)
        local = 0.5 * np.bincount(i, phi, n)  # every pair is listed twice
        g = (slope / d)[:, None] * vectors  # F_i = Σ_j φ'(d) (r_j - r_i) / d
        forces = np.stack([np.bincount(i, g[:, c], n) for c in range(3)], axis=1)
        voigt = None
        if stress:
            full = 0.5 * np.einsum("p,pa,pb->ab", slope / d, vectors, vectors)
            full /= atoms.get_volume()
            voigt = full[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return local, forces, voigt

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute energy, per-atom energies, forces and, when asked, stress."""
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        c = self.coulomb.compute(self.atoms, forces=True, stress=want_stress)
        local, forces, stress = self.born_mayer(self.atoms, want_stress)
        local = local + c.local_energies
        self.results = {"energy": float(local.sum()), "free_energy": float(local.sum()),
                        "energies": local, "forces": forces + c.forces}
        if want_stress:
            self.results["stress"] = stress + c.stress


def rock_salt(a: float, repeat: int = 1) -> Atoms:
    """Return the cubic rock-salt cell (8 atoms) of edge ``a``, repeated."""
    return bulk("NaCl", "rocksalt", a, cubic=True).repeat(repeat)


def energy_of(calc: Calculator, atoms: Atoms) -> float:
    """Return the reference energy of a copy of ``atoms``."""
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy()


def lattice_constant(calc: Calculator) -> tuple[float, float]:
    """Return the 0 K lattice constant (Å) and the energy per ion pair there (eV)."""
    result = minimize_scalar(lambda a: energy_of(calc, rock_salt(a)) / 4, bounds=(5.0, 6.5),
                             method="bounded", options={"xatol": 1e-6})
    return float(result.x), float(result.fun)


def finite_difference_check(calc: Calculator, a0: float) -> tuple[float, float, float, float]:
    """Return max |F - F_fd|, max |F|, max |σ - σ_fd| and max |σ| on a strained vacancy cell."""
    atoms = rock_salt(a0, 2)
    del atoms[0]  # charged cell
    atoms.rattle(0.1, seed=3)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.01, 0.02, 0.0], [0.02, -0.01, 0.01],
                                              [0.0, 0.01, 0.015]]), scale_atoms=True)
    work = atoms.copy()
    work.calc = calc
    forces, stress = work.get_forces(), work.get_stress()
    h, errors = 1e-4, []
    for index, axis in ((0, 0), (7, 1), (30, 2), (62, 0)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[index, axis] += h
        minus.positions[index, axis] -= h
        fd = -(energy_of(calc, plus) - energy_of(calc, minus)) / (2 * h)
        errors.append(abs(forces[index, axis] - fd))
    fd_stress = np.zeros(6)
    for k, (a, b) in enumerate(((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h / (1 if a == b else 2)
            strain[b, a] = strain[a, b]
            strained = atoms.copy()
            strained.set_cell(atoms.cell @ strain, scale_atoms=True)
            energies.append(energy_of(calc, strained))
        fd_stress[k] = (energies[0] - energies[1]) / (2 * h * atoms.get_volume())
    return (max(errors), float(np.abs(forces).max()), float(np.abs(stress - fd_stress).max()),
            float(np.abs(stress).max()))


def check_reference(calc: Calculator) -> float:
    """Print the lattice-constant, Madelung and finite-difference checks; return a0."""
    a0, e_pair = lattice_constant(calc)
    cell = rock_salt(a0)
    cell.calc = calc
    pressure = -cell.get_stress()[:3].mean() * GPA
    madelung = -Coulomb(CHARGES).compute(cell, forces=False).energy / 4 * (a0 / 2) \
        / kernelpot.baselines.COULOMB_EV_A
    ok = abs(a0 / 5.6 - 1) <= 0.05
    print(f"reference: lattice constant a0 = {a0:.4f} Å ({100 * (a0 / 5.6 - 1):+.1f} % from "
          f"5.6 Å: {'within' if ok else 'OUTSIDE'} ±5 %; experiment 5.64 Å at 300 K), "
          f"E = {e_pair:.3f} eV per ion pair, pressure there {pressure:+.2e} GPa; "
          f"Madelung constant from Coulomb {madelung:.7f} (exact {MADELUNG_NACL:.7f})",
          flush=True)
    f_err, f_max, s_err, s_max = finite_difference_check(calc, a0)
    print(f"reference: finite differences on a strained, rattled 63-atom charged cell: "
          f"max |F - F_fd| {f_err:.1e} eV/Å (|F| up to {f_max:.2f}), max |σ - σ_fd| "
          f"{s_err * GPA:.1e} GPa (|σ| up to {s_max * GPA:.2f})", flush=True)
    return a0


# -- data ------------------------------------------------------------------------------------

def labelled(atoms: Atoms, calc: Calculator, info: dict) -> Atoms:
    """Return a copy of ``atoms`` (no momenta) with the reference energy, forces and stress."""
    copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    copy.calc = calc
    energy, forces = copy.get_potential_energy(), copy.get_forces()
    stress = copy.get_stress() if np.all(copy.pbc) else None
    copy.calc = SinglePointCalculator(copy, energy=energy, forces=forces, stress=stress)
    copy.info.update(info)
    return copy


def start_md(atoms: Atoms, calc: Calculator, temperature: float, timestep: float,
             friction: float, rng: np.random.Generator) -> Langevin:
    """Return a Langevin integrator of ``atoms`` with Maxwell-Boltzmann start velocities."""
    atoms.calc = calc
    thermalize_momenta(atoms, temperature, rng=rng)
    Stationary(atoms)
    return Langevin(atoms, timestep * units.fs, temperature_K=temperature,
                    friction=friction / units.fs, fixcm=False, rng=rng)


def md_run(calc: Calculator, kind: tuple, temperature: float, n_frames: int, a0: float,
           seed: int) -> list[Atoms]:
    """Return ``n_frames`` labelled frames of one Langevin run of the reference."""
    name, repeat, strained, vacancy = kind[:4]
    rng = np.random.default_rng(seed)
    atoms = rock_salt(a0, repeat)
    if strained:
        e = rng.uniform(-MAX_STRAIN, MAX_STRAIN, (3, 3))
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.5 * (e + e.T)), scale_atoms=True)
    if vacancy:
        del atoms[0]  # one Na: net charge -1
    dyn = start_md(atoms, calc, temperature, TIMESTEP, FRICTION, rng)
    dyn.run(N_EQUIL)
    frames = []
    for k in range(n_frames):
        dyn.run(STRIDE)
        frames.append(labelled(atoms, calc, {"kind": name, "temperature": temperature,
                                             "seed": seed, "frame": k,
                                             "net_charge": -int(vacancy)}))
    return frames


def cached(path: Path, make, regenerate: bool) -> list[Atoms]:
    """Return frames read from ``path``, or made by ``make()`` and written there."""
    if path.exists() and not regenerate:
        return read(path, ":")
    start = time.perf_counter()
    frames = make()
    write(path, frames, format="extxyz")
    print(f"  wrote {path} ({len(frames)} frames, {time.perf_counter() - start:.0f} s)",
          flush=True)
    return read(path, ":")


def settings_tag(a0: float, scale: int) -> str:
    """Return a short hash of every setting the generated data depend on."""
    settings = [round(a0, 6), REF_EWALD, TF_B, TF_RHO, sorted(TF_SIGMA.items()),
                sorted(TF_PAULING.values()), BM_CUT, TEMPERATURES, CELL_KINDS, TIMESTEP,
                FRICTION, N_EQUIL, STRIDE, MAX_STRAIN, WARM_T, WARM_RUNS, WARM_FRAMES, scale]
    return hashlib.sha1(json.dumps(settings, default=str).encode()).hexdigest()[:8]


def make_data(calc: Calculator, a0: float, scale: int, regenerate: bool) -> dict:
    """Return the training pool, the test set and the 1,000 K training set (cached)."""
    tag = settings_tag(a0, scale)

    def runs(column, seed0):
        frames = []
        for t_index, temperature in enumerate(TEMPERATURES):
            for k_index, kind in enumerate(CELL_KINDS):
                n = max(1, kind[column] // scale)
                frames += md_run(calc, kind, temperature, n, a0,
                                 seed0 + 10 * t_index + k_index)
        return frames

    def warm():
        frames = []
        for k in range(WARM_RUNS):
            frames += md_run(calc, CELL_KINDS[0], WARM_T, max(2, WARM_FRAMES // scale), a0,
                             3000 + k)
        return frames

    return {"pool": cached(OUT / f"train_pool_{tag}.xyz", lambda: runs(4, 1000), regenerate),
            "test": cached(OUT / f"test_{tag}.xyz", lambda: runs(5, 2000), regenerate),
            "warm": cached(OUT / f"train_{WARM_T}K_{tag}.xyz", warm, regenerate)}


# -- fits and errors -------------------------------------------------------------------------

def max_rss_gib() -> float:
    """Return the peak resident memory of this process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def new_model(baseline, n_sparse) -> SparseGPPotential:
    """Return the benchmark's model (SOAP 5 Å, n_max 8, l_max 6, σ 0.5) with a baseline."""
    return SparseGPPotential(SOAP(["Na", "Cl"], **SOAP_ARGS), baseline=baseline,
                             n_sparse=n_sparse, random_state=0)


def fit(model: SparseGPPotential, frames: list[Atoms],
        label: str) -> tuple[SparseGPPotential, tuple[float, float]]:
    """Fit and time ``model`` (wall and CPU seconds); print one line."""
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(frames)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"  fit {label}: {seconds:.0f} s wall, {cpu:.0f} s CPU (load average "
          f"{os.getloadavg()[0]:.1f}), {model.method_}, inducing {model.n_inducing_}, "
          f"σ_E {1e3 * model.energy_noise_:.2f} meV/√atom, σ_F {1e3 * model.force_noise_:.1f} "
          f"meV/Å, σ_S {GPA * model.stress_noise_:.3f} GPa; max RSS so far "
          f"{max_rss_gib():.1f} GiB", flush=True)
    return model, (seconds, cpu)


def errors(model: SparseGPPotential, test: list[Atoms]) -> dict:
    """Return test force MAE (eV/Å; all, vacancy cells), energy MAE/RMSE, stress RMSE."""
    start = time.perf_counter()
    energies, forces = model.predict_energies_and_forces(test)
    stresses = model.predict_stress(test)
    seconds = time.perf_counter() - start
    n_atoms = np.array([len(a) for a in test])
    e_err = 1e3 * (energies - np.array([a.get_potential_energy() for a in test])) / n_atoms
    ref_forces = [a.get_forces() for a in test]
    vacancy = [k for k, a in enumerate(test) if "vacancy" in str(a.info["kind"])]
    return {"F": mae(forces, ref_forces),
            "F_vac": mae([forces[k] for k in vacancy], [ref_forces[k] for k in vacancy])
            if vacancy else np.nan,
            "E_mae": float(np.mean(np.abs(e_err))), "E_rmse": float(np.sqrt(np.mean(e_err**2))),
            "S": GPA * rmse(stresses, [a.get_stress() for a in test]),
            "predict_ms_atom": 1e3 * seconds / n_atoms.sum()}


def compare(data: dict, sizes: list[int], n_sparse) -> tuple[list, dict]:
    """Fit plain and Coulomb-baseline models at each size; return table rows and models."""
    order = np.random.default_rng(0).permutation(len(data["pool"]))
    rows, models = [], {}
    for n in sizes:
        train = [data["pool"][k] for k in order[:n]]
        print(f"n = {n}: {sum(len(a) for a in train)} atoms in the training cells", flush=True)
        for name, baseline in (("plain", None), ("Coulomb", Coulomb(CHARGES))):
            model, seconds = fit(new_model(baseline, n_sparse), train, f"{name} n={n}")
            rows.append({"n": n, "model": name, "fit_s": seconds[0], "fit_cpu": seconds[1],
                         **errors(model, data["test"])})
            models[name, n] = model
    return rows, models


def print_comparison(rows: list[dict]) -> None:
    """Print the test-error table and the force-MAE ratios."""
    print(f"\n{'n':>4} {'model':<8} {'F MAE':>8} {'F MAE vac':>10} {'E MAE':>7} {'E RMSE':>7} "
          f"{'S RMSE':>7} {'fit s':>6} {'fit CPU s':>9} {'pred ms/atom':>12}")
    for r in rows:
        print(f"{r['n']:>4} {r['model']:<8} {r['F']:8.4f} {r['F_vac']:10.4f} {r['E_mae']:7.2f} "
              f"{r['E_rmse']:7.2f} {r['S']:7.3f} {r['fit_s']:6.0f} {r['fit_cpu']:9.0f} "
              f"{r['predict_ms_atom']:12.2f}")
    print("force MAE eV/Å (all test cells; 'vac': the charged vacancy cells), energy meV/atom, "
          "stress GPa; fit s: wall time; pred: energies, forces and stress of the test cells "
          "(wall)")
    for n in sorted({r["n"] for r in rows}):
        plain, coulomb = (next(r for r in rows if r["n"] == n and r["model"] == m)
                          for m in ("plain", "Coulomb"))
        ratio = coulomb["F"] / plain["F"]
        print(f"n = {n}: force MAE(Coulomb) / MAE(plain) = {ratio:.3f} (target <= 0.5: "
              f"{'met' if ratio <= 0.5 else 'NOT met'}); energy MAE ratio "
              f"{coulomb['E_mae'] / plain['E_mae']:.3f}, stress RMSE ratio "
              f"{coulomb['S'] / plain['S']:.3f}")


# -- the isolated ion pair ---------------------------------------------------------------------

def dimer(r: float) -> Atoms:
    """Return an isolated Na–Cl pair at distance ``r`` (open boundaries)."""
    return Atoms("NaCl", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]], pbc=False)


def tail(models: dict, calc: Calculator) -> None:
    """Print E(r) - E(r_max) of the reference and both models for the isolated ion pair."""
    n = max(k[1] for k in models)
    reach = SOAP_ARGS["r_cut"] + models["plain", n].descriptor_.get_cutoff_padding()
    grid = sorted(set(TAIL_R) | set(np.arange(5.5, 14.01, 0.5).round(2)) | {TAIL_R_MAX})
    pairs = [dimer(r) for r in grid]
    curves = {"reference": np.array([energy_of(calc, a) for a in pairs])}
    for name in ("Coulomb", "plain"):
        curves[name] = models[name, n].predict(pairs)
    curves = {k: v - v[-1] for k, v in curves.items()}  # relative to r_max (last)
    print(f"\nIsolated Na–Cl pair (open boundaries; models trained on bulk cells only, n = {n}):"
          f" E(r) - E({TAIL_R_MAX:g} Å), eV. SOAP r_cut {SOAP_ARGS['r_cut']:g} Å; its features "
          f"see atoms up to r_cut + DScribe's padding = {reach:.2f} Å")
    print(f"{'r Å':>6} {'reference':>10} {'Coulomb':>10} {'plain':>10} {'14.40 (1/15 - 1/r)':>19}")
    for k, r in enumerate(grid):
        if r in TAIL_R:
            bare = kernelpot.baselines.COULOMB_EV_A * (1 / TAIL_R_MAX - 1 / r)
            print(f"{r:6.1f} {curves['reference'][k]:10.4f} {curves['Coulomb'][k]:10.4f} "
                  f"{curves['plain'][k]:10.4f} {bare:19.4f}")
    for r_min, label in ((6.0, "6-14 Å"), (np.ceil(2 * reach) / 2, "beyond the SOAP reach")):
        beyond = np.array([r_min <= r < TAIL_R_MAX for r in grid])
        reference = curves["reference"][beyond]
        for name in ("Coulomb", "plain"):
            rel = np.abs(curves[name][beyond] - reference) / np.abs(reference)
            verdict = (f" (target <= 1 %: {'met' if rel.max() <= 0.01 else 'NOT met'})"
                       if name == "Coulomb" else
                       f"; its own ΔE spans {np.ptp(curves[name][beyond]):.2e} eV there")
            print(f"{name}: largest |ΔE_model - ΔE_ref| / |ΔE_ref| over r = {r_min:g}-14 Å "
                  f"({label}, every 0.5 Å): {100 * rel.max():.3g} %{verdict}")


# -- close contacts -----------------------------------------------------------------------------

def shortest(atoms: Atoms) -> float:
    """Return the shortest interatomic distance (minimum image), Å."""
    d = atoms.get_all_distances(mic=True)
    d[np.diag_indices_from(d)] = np.inf
    return float(d.min())


def shortest_by_pair(frames: list[Atoms]) -> dict:
    """Return the shortest Na–Cl, Na–Na and Cl–Cl distance over ``frames``."""
    result = {"Na-Cl": np.inf, "Na-Na": np.inf, "Cl-Cl": np.inf}
    for atoms in frames:
        d = atoms.get_all_distances(mic=True)
        d[np.diag_indices_from(d)] = np.inf
        na = atoms.numbers == 11
        for key, (a, b) in (("Na-Cl", (na, ~na)), ("Na-Na", (na, na)), ("Cl-Cl", (~na, ~na))):
            result[key] = min(result[key], float(d[np.ix_(a, b)].min()))
    return result


def hot_md(calc: Calculator, a0: float, n_steps: int, seed: int = 7) -> dict:
    """Run Langevin MD at 3,000 K from the 64-atom lattice; track the shortest distance."""
    atoms = rock_salt(a0, 2)
    dyn = start_md(atoms, calc, HOT_T, HOT_STEP, HOT_FRICTION, np.random.default_rng(seed))
    e0 = atoms.get_potential_energy() / len(atoms)
    out = {"d_min": shortest(atoms), "step_min": 0, "failure": None, "frames": [],
           "temperatures": []}
    start, step = time.perf_counter(), 0
    try:
        while step < n_steps:
            dyn.run(HOT_EVERY)
            step += HOT_EVERY
            d, e = shortest(atoms), atoms.get_potential_energy() / len(atoms)
            out["temperatures"].append(atoms.get_temperature())
            if d < out["d_min"]:
                out["d_min"], out["step_min"] = d, step
            if not (np.isfinite(e) and np.all(np.isfinite(atoms.get_forces()))):
                out["failure"] = f"non-finite energy or forces at step {step}"
            elif d < 0.5 or abs(e - e0) > 5.0:
                out["failure"] = (f"blew up at step {step}: shortest {d:.2f} Å, "
                                  f"E {e - e0:+.1f} eV/atom from the start")
            if out["failure"]:
                break
            if step % 100 == 0:
                out["frames"].append(Atoms(atoms.numbers, atoms.positions, cell=atoms.cell,
                                           pbc=True))
    except Exception as err:  # noqa: BLE001 - a model driven far from its data may fail anyhow
        out["failure"] = f"{type(err).__name__} at step {step}: {str(err)[:100]}"
    out["steps"], out["seconds"] = step, time.perf_counter() - start
    return out


def close_contacts(data: dict, calc: Calculator, a0: float, n_steps: int) -> None:
    """Train plain, ZBL and Coulomb models at 1,000 K; run each at 3,000 K; print a table."""
    warm = data["warm"]
    by_pair = shortest_by_pair(warm)
    d_min = min(by_pair.values())
    r_cut = np.floor(10 * (d_min - 0.1)) / 10
    zbl = ZBL(r_inner=round(r_cut - 1.0, 2), r_cut=float(r_cut))
    print(f"\nClose contacts: {len(warm)} frames of 64-atom cells at {WARM_T} K; shortest "
          "distances in them: " + ", ".join(f"{k} {v:.3f} Å" for k, v in by_pair.items())
          + f"; ZBL r_inner {zbl.r_inner} Å, r_cut {zbl.r_cut} Å", flush=True)
    print(f"  reference MD at {HOT_T} K ({n_steps} steps of {HOT_STEP:g} fs) ...", flush=True)
    runs = {"reference": hot_md(calc, a0, n_steps)}
    hot_frames = [labelled(a, calc, {"kind": "64-perfect", "temperature": HOT_T})
                  for a in runs["reference"]["frames"]]
    for name, baseline in (("plain", None), ("ZBL", zbl), ("Coulomb", Coulomb(CHARGES))):
        model, _ = fit(new_model(baseline, None), warm, f"{name} {WARM_T} K")
        f_hot = errors(model, hot_frames)["F"] if hot_frames else np.nan
        runs[name] = hot_md(KernelPotCalculator(model, uncertainty=False), a0, n_steps)
        runs[name]["F_hot"] = f_hot
        print(f"  {name}: {runs[name]['steps']} steps in {runs[name]['seconds']:.0f} s, "
              f"shortest {runs[name]['d_min']:.3f} Å, {runs[name]['failure'] or 'no failure'}",
              flush=True)
    print(f"\n{'run':<10} {'shortest Å':>10} {'at step':>8} {'steps':>6} {'<train min':>10} "
          f"{'mean T K':>8} {'F MAE 3000K':>11}  failure")
    for name, r in runs.items():
        below = sum(1 for a in r["frames"] if shortest(a) < d_min)
        temps = r["temperatures"][len(r["temperatures"]) // 2:]
        f_hot = f"{r['F_hot']:11.3f}" if "F_hot" in r else f"{'-':>11}"
        print(f"{name:<10} {r['d_min']:10.3f} {r['step_min']:8d} {r['steps']:6d} "
              f"{below:10d} {np.mean(temps) if temps else np.nan:8.0f} {f_hot}  "
              f"{r['failure'] or '-'}")
    print(f"shortest distance sampled every {HOT_EVERY} steps; '<train min': frames (every 100 "
          f"steps) with a distance below the {WARM_T} K data's shortest ({d_min:.3f} Å); "
          f"F MAE 3000K: force MAE (eV/Å) on {len(hot_frames)} frames of the reference's "
          f"{HOT_T} K run; mean T over the second half")


# -- main ------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a fifth of the frames, n = 20/80, 300 MD steps")
    parser.add_argument("--sizes", default=None, help="training sizes (default 100,400)")
    parser.add_argument("--n-sparse", type=int, default=1000,
                        help="inducing environments per element of the n-comparison fits "
                             "(0: the estimator's default, all up to 2000 per element)")
    parser.add_argument("--hot-steps", type=int, default=None, help="default 2000")
    parser.add_argument("--regenerate", action="store_true", help="ignore cached data")
    args = parser.parse_args(argv)
    scale = 5 if args.quick else 1
    sizes = [int(s) for s in (args.sizes or ("20,80" if args.quick else "100,400")).split(",")]
    hot_steps = args.hot_steps or (300 if args.quick else 2000)
    n_sparse = args.n_sparse or None
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; "
          f"NaCl rigid-ion reference; sizes {sizes}; n-comparison fits with n_sparse="
          f"{n_sparse or 'default (all up to 2000 per element)'} per element (both models, "
          "both sizes; the estimator's default is all environments up to 2000 per element); "
          f"{WARM_T} K fits default; {hot_steps} MD steps at {HOT_T} K; load average "
          f"{os.getloadavg()[0]:.1f} at start" + ("; QUICK" if args.quick else ""), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    calc = RigidIonNaCl()
    a0 = check_reference(calc)
    data = make_data(calc, a0, scale, args.regenerate)
    print("data: " + ", ".join(f"{k} {len(v)} frames ({sum(len(a) for a in v)} atoms)"
                               for k, v in data.items()), flush=True)
    rows, models = compare(data, sizes, n_sparse)
    print_comparison(rows)
    tail(models, calc)
    close_contacts(data, calc, a0, hot_steps)
    print(f"\ntotal {time.perf_counter() - start:.0f} s wall, {time.process_time():.0f} s CPU, "
          f"max RSS {max_rss_gib():.1f} GiB, load average {os.getloadavg()[0]:.1f} (other "
          "processes on the machine count in the wall times)")


if __name__ == "__main__":
    main()
