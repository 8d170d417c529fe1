"""On-the-fly NPT: the stress gate of ``label_stress=True`` against the force gate alone.

EMT Cu, 32 atoms: a model of eight 300 K NVT frames (``incremental=True``, trained on
their stresses), then 600 steps of Berendsen NPT at temperature T and pressure P from
the last frame. ``MODE``: ``stress`` (``label_stress=True``: the reference's stress is
labelled and the stress std gates too) or ``nostress`` (forces only). Prints the volume
change, the calls (and which of them the stress std made) and the model's force and
stress error on the final cell.

Usage::

    python benchmarks/otf_npt.py MODE T_K P_GPa      # e.g. stress 30 -5
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from kernelpot import SOAP, OnTheFlyLearner, SparseGPPotential

GPA = 160.21766208  # eV/Å³ in GPa


def training_frames(atoms, n_frames: int = 8) -> list:
    """EMT-labelled frames (energy, forces, stress) of a 300 K Langevin run of ``atoms``."""
    rng = np.random.default_rng(0)
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=rng)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02, rng=rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(20)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
        frames.append(frame)
    return frames


def main(argv=None):
    mode, temperature, pressure = (argv or sys.argv[1:])[:3]
    temperature, pressure = float(temperature), float(pressure)
    atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
    frames = training_frames(atoms)
    model = SparseGPPotential(SOAP(["Cu"], 4.5, 6, 4, 0.5), method="sparse",
                              incremental=True).fit(frames)
    start = frames[-1].copy()
    start.set_momenta(atoms.get_momenta())
    npt = NPTBerendsen(start, 2 * units.fs, temperature_K=temperature,
                       pressure_au=pressure * units.GPa, taut=100 * units.fs,
                       taup=500 * units.fs, compressibility_au=1 / (140 * units.GPa))
    directory = Path(f"otf_npt_{mode}_{temperature:g}K")
    learner = OnTheFlyLearner(model, EMT(), directory=directory,
                              label_stress=mode == "stress")
    tic = time.perf_counter()
    learner.run(npt, 600)
    log = [json.loads(line) for line in (directory / "otf_log.jsonl").read_text().splitlines()]
    calls = [r["step"] for r in log if r["reference_called"]]
    by_stress = [r["step"] for r in log if r.get("called_by_stress")]
    check = start.copy()
    check.calc = EMT()
    force_mae = float(np.mean(np.abs(learner.model.predict_forces([start])[0]
                                     - check.get_forces())))
    stress_mae = float(np.mean(np.abs(learner.model.predict_stress([start])[0]
                                      - check.get_stress())))
    print(f"{mode} T {temperature:g} K P {pressure:g} GPa: volume "
          f"{frames[-1].get_volume():.1f} -> {start.get_volume():.1f} Å³, {len(calls)} calls "
          f"at {calls}, by the stress std {by_stress}; final cell: force MAE "
          f"{1e3 * force_mae:.1f} meV/Å, stress MAE {GPA * stress_mae:.3f} GPa; "
          f"{time.perf_counter() - tic:.0f} s", flush=True)


if __name__ == "__main__":
    main()
