"""NVE energy conservation of kernelpot models in ASE (issue 5's setting).

A 32-atom fcc Cu cell (a = 3.6 Å, cubic 2×2×2); models trained on EMT-labelled rattled
cells; velocity Verlet at 600 K with a 2 fs step for 5000 steps (10 ps). Prints the
total-energy drift (slope of a linear fit, meV/atom/ps), the largest excursion, and the
time per MD step, for ACSF (cosine cutoff: smooth), SOAP (DScribe's GTO SOAP, which
steps where an atom crosses r_cut + padding) and, with ``featomic`` in
``--descriptors``, FeatomicSOAP (featomic's SOAP, smooth shifted-cosine cutoff of width
``smoothing``, 0.5 Å by default) models, all at r_cut 4.5 Å (SOAP and FeatomicSOAP
with n_max 6, l_max 4, σ 0.5).

Usage::

    python benchmarks/nve.py [--steps 5000] [--descriptors acsf,soap,featomic]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

import kernelpot
from kernelpot import ACSF, SOAP, KernelPotCalculator, SparseGPPotential


def training_frames(n_frames: int, seed: int = 0):
    """Rattled and slightly strained Cu cells labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
        atoms.set_cell(atoms.cell * (1 + rng.normal(0, 0.01)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.12, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--descriptors", default="acsf,soap")
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args(argv)
    frames = training_frames(args.frames)
    print(f"kernelpot {kernelpot.__version__}: NVE, Cu 32 atoms, 600 K, 2 fs, {args.steps} "
          f"steps; models trained on {len(frames)} EMT frames", flush=True)
    rows = []
    for name in args.descriptors.split(","):
        if name == "acsf":
            descriptor = ACSF.from_grid(["Cu"], 4.5, n_radial=8, n_angular=8)
        elif name == "featomic":
            from kernelpot import FeatomicSOAP

            descriptor = FeatomicSOAP(["Cu"], 4.5, n_max=6, l_max=4, sigma=0.5)
        else:
            descriptor = SOAP(["Cu"], 4.5, n_max=6, l_max=4, sigma=0.5)
        model = SparseGPPotential(descriptor, n_sparse=300, random_state=0).fit(frames)
        atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
        atoms.calc = KernelPotCalculator(model, uncertainty=False)
        thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(1))
        Stationary(atoms)
        dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
        energies = []
        dyn.attach(lambda atoms=atoms: energies.append(atoms.get_total_energy()), interval=10)
        start = time.perf_counter()
        dyn.run(args.steps)
        elapsed = time.perf_counter() - start
        e = np.array(energies) / len(atoms)
        t_ps = np.arange(len(e)) * 10 * 2e-3
        drift = np.polyfit(t_ps, e, 1)[0] * 1e3
        rows.append((name, drift, 1e3 * np.ptp(e), 1e3 * elapsed / args.steps,
                     atoms.get_temperature()))
        print(f"  {name}: drift {drift:+.4f} meV/atom/ps", flush=True)
    print(f"\n{'model':<6} {'drift meV/atom/ps':>18} {'max-min meV/atom':>17} "
          f"{'ms/step':>8} {'final T K':>9}")
    for name, drift, spread, ms, temp in rows:
        print(f"{name:<6} {drift:>+18.4f} {spread:>17.3f} {ms:>8.2f} {temp:>9.0f}")
    print("Target (issue 5): |drift| < 1 meV/atom/ps for ACSF (and SOAP if it makes it).")


if __name__ == "__main__":
    main()
