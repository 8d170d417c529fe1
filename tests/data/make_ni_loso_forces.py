"""Regenerate ``ni_loso_forces.npz``: LOSO force terms whose variance map has two optima.

25 EMT Ni cells (32 atoms, random strains up to 2 %, 80 fs of Langevin MD at 700 K
each from the perfect lattice), fitted by ``kernelpot fit``'s defaults; the file holds
the training structures' leave-one-structure-out force errors and raw variance terms
(``posterior_.loso.calibration_terms()["forces"]``). From the default start
(c = w = d = p = 1) L-BFGS-B stops at a map that reads most of the error as learned
noise; the likelihood's maximum folds the noise into the epistemic part.

Usage: ``python tests/data/make_ni_loso_forces.py`` (about a minute).
"""

import tempfile
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from sklearn.base import clone

import kernelpot
from kernelpot.cli import main


def cells(n=25, temperature=700, seed=0, steps=40, strain=0.02):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2))
        eps = rng.uniform(-strain, strain, 6)
        deformation = np.eye(3) + np.array([[eps[0], eps[5] / 2, eps[4] / 2],
                                            [eps[5] / 2, eps[1], eps[3] / 2],
                                            [eps[4] / 2, eps[3] / 2, eps[2]]])
        atoms.set_cell(atoms.cell @ deformation, scale_atoms=True)
        atoms.calc = EMT()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02,
                 rng=rng).run(steps)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
        out.append(frame)
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.xyz"
        write(train, cells())
        main(["fit", str(train), "-o", str(Path(tmp) / "ni.npz"), "--no-train-eval"])
        model = clone(kernelpot.load(Path(tmp) / "ni.npz")).set_params(verbose=0)
        model.fit(read(train, ":"))
    errors, post, proj, noise = model.posterior_.loso.calibration_terms()["forces"]
    np.savez_compressed(Path(__file__).with_name("ni_loso_forces.npz"), errors=errors,
                        posterior=post, projection=proj, noise=noise)
