"""Training frames from one MD trajectory: leave one out, or leave blocks out?

A new user's case (issue 19): six water molecules (open cluster, 18 atoms), GFN2-xTB
through tblite, Langevin MD at 300 K with a 0.5 fs step. Training: 150 frames 5 fs
apart from one trajectory; tests: 60 frames of another 300 K trajectory and 40 of a 600 K
one. It fits the default model (``kernelpot fit``'s defaults: the CLI's SOAP, method
"auto") with ``loso_blocks=1`` (leave one structure out) and with the default
``loso_blocks="auto"`` (blocks of consecutive frames where neighbours look correlated,
:mod:`kernelpot.loso_blocks`), and prints per test set the force MAE, the fraction of
force components inside 1 and 2 total stds (Gaussian: 0.683 / 0.954), the RMS z-score of
the forces and of the energies (1 for stds the size of the errors), and the block length.

The data are generated once into ``--data`` (about 15 s of xTB) and reused.

Usage::

    python benchmarks/correlated_frames.py [--data /tmp/kernelpot_water]

Needs ``tblite`` (``pip install 'kernelpot[tblite]'``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.optimize import BFGS

import kernelpot
from kernelpot.cli._common import _build_model
from kernelpot.cli._parser import _build_parser


def _xtb():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def _cluster(seed: int = 0) -> Atoms:
    """Six water molecules on a ring of 2.75 Å radius, relaxed with GFN2-xTB."""
    rng = np.random.default_rng(seed)
    atoms = Atoms()
    for k in range(6):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), "z")
        water.rotate(rng.uniform(0, 360), "x")
        angle = 2 * np.pi * k / 6
        water.translate([2.75 * np.cos(angle), 2.75 * np.sin(angle), 0.4 * (-1) ** k])
        atoms += water
    atoms.center(vacuum=5.0)
    atoms.calc = _xtb()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=150)
    return atoms


def _trajectory(start: Atoms, temperature: float, seed: int, n_frames: int,
                every: int = 10, equilibration: int = 200) -> list[Atoms]:
    """Every ``every``-th frame of Langevin MD at 0.5 fs after ``equilibration`` steps."""
    atoms = start.copy()
    atoms.calc = _xtb()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature,
                                 rng=np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   rng=np.random.default_rng(seed + 1))
    dyn.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dyn.run(every)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(frame)
    return frames


def _data(directory: Path) -> dict[str, list[Atoms]]:
    names = {"train": (300, 11, 150), "test300": (300, 22, 60), "test600": (600, 33, 40)}
    if not all((directory / f"{name}.xyz").exists() for name in names):
        directory.mkdir(parents=True, exist_ok=True)
        start = _cluster()
        for name, (temperature, seed, n) in names.items():
            write(directory / f"{name}.xyz", _trajectory(start, temperature, seed, n))
    return {name: read(directory / f"{name}.xyz", ":") for name in names}


def _row(model, frames) -> dict:
    forces, force_std = model.predict_forces(frames, return_std=True)
    energies, energy_std = model.predict(frames, return_std=True)
    error = np.concatenate([(f - a.get_forces()).ravel() for f, a in zip(forces, frames,
                                                                         strict=True)])
    std = np.concatenate([s.ravel() for s in force_std])
    energy_error = energies - np.array([a.get_potential_energy() for a in frames])
    return {"mae": 1e3 * np.mean(np.abs(error)), "cov1": np.mean(np.abs(error) <= std),
            "cov2": np.mean(np.abs(error) <= 2 * std),
            "z": np.sqrt(np.mean((error / std) ** 2)),
            "z_energy": np.sqrt(np.mean((energy_error / energy_std) ** 2))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/kernelpot_water",
                        help="where the generated frames are kept (default %(default)s)")
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus", flush=True)
    data = _data(Path(args.data))
    train = data["train"]
    print(f"{len(train)} training frames 5 fs apart (GFN2-xTB water hexamer, 300 K); tests: "
          f"{len(data['test300'])} frames at 300 K and {len(data['test600'])} at 600 K, "
          "each from its own trajectory", flush=True)
    logging.getLogger("kernelpot").setLevel(logging.WARNING)
    header = (f"{'loso_blocks':<12} {'block':>5} {'fit s':>6} {'LOSO MAE':>8} {'test':<8} "
              f"{'F MAE':>6} {'cov1σ':>6} {'cov2σ':>6} {'F RMS z':>7} {'E RMS z':>7}")
    print(header)
    print("-" * len(header))
    for setting in (1, "auto"):
        cli = _build_parser().parse_args(["fit", "train.xyz", "--quiet"])
        model = _build_model(cli, train).set_params(loso_blocks=setting, verbose=0)
        tic = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - tic
        blocks = model.posterior_.loso_blocks[1]
        length = 1 if blocks is None else int(np.bincount(blocks).max())
        loso = model.posterior_.loso
        loso_mae = 1e3 * np.mean(np.abs(loso.errors[loso.is_force]))
        for name in ("test300", "test600"):
            r = _row(model, data[name])
            print(f"{setting!s:<12} {length:>5} {seconds:>6.1f} {loso_mae:>8.1f} {name:<8} "
                  f"{r['mae']:>6.1f} {r['cov1']:>6.3f} {r['cov2']:>6.3f} {r['z']:>7.2f} "
                  f"{r['z_energy']:>7.2f}", flush=True)
    print("MAE meV/Å; cov1σ/2σ: force components inside 1/2 total stds (Gaussian 0.683 / "
          "0.954); RMS z: root mean square of error/std (1 for stds the size of the errors)")


if __name__ == "__main__":
    main()
