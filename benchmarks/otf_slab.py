"""A new user's slab: the default model's std out of its training range, and on-the-fly MD.

Data (EMT, generated here, seeded): a Pt(111) slab of 36 atoms (3 × 3 × 4, 6 Å vacuum),
30 training frames rattled by 0.08 Å, 30 test frames the same way, 20 frames rattled by
0.2 Å (out of the training range), and 20 frames of an independent 1000 K Langevin run.
The model is what a user writes first: ``SparseGPPotential(SOAP(["Pt"], 5.0, 6, 4, 0.4))``
with every default (``incremental=True`` for the learner), fitted on the 30 frames.

Printed:

* force MAE, mean total force std and the fraction of force components within 1σ on
  the 0.08 Å test frames and on the 0.2 Å frames: does the std grow with the error?
* the learner (``OnTheFlyLearner`` with its defaults, EMT as the reference) run for
  ``--steps`` Langevin steps at 1000 K from the slab: reference calls, the gate's std
  and threshold at each call, and the force MAE of the initial and the final model on
  the 1000 K frames.

Usage::

    python benchmarks/otf_slab.py [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings

import numpy as np
from ase import units
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

import kernelpot
from kernelpot import SOAP, OnTheFlyLearner, SparseGPPotential, metrics


def slab():
    return fcc111("Pt", size=(3, 3, 4), vacuum=6.0)


def labelled(atoms):
    """A copy with its EMT energy and forces stored."""
    copy = atoms.copy()
    copy.calc = EMT()
    copy.calc = SinglePointCalculator(copy, energy=copy.get_potential_energy(),
                                      forces=copy.get_forces())
    return copy


def rattled(n, stdev, rng):
    frames = []
    for _ in range(n):
        atoms = slab()
        atoms.rattle(stdev=stdev, seed=int(rng.integers(2**31)))
        frames.append(labelled(atoms))
    return frames


def hot_frames(n, seed):
    """``n`` frames 20 steps apart of a 1000 K Langevin run under EMT."""
    atoms = slab()
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=1000, rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=1000, friction=0.01 / units.fs,
                   rng=np.random.default_rng(seed + 1))
    frames = []
    for _ in range(n):
        dyn.run(20)
        frames.append(labelled(atoms))
    return frames


def make_model():
    return SparseGPPotential(SOAP(["Pt"], 5.0, n_max=6, l_max=4, sigma=0.4), incremental=True)


def std_row(model, frames, name):
    forces, stds = model.predict_forces(frames, return_std=True)
    reference = [a.get_forces() for a in frames]
    print(f"  {name:<22} force MAE {1e3 * metrics.mae(forces, reference):7.2f} meV/Å, mean std "
          f"{1e3 * np.mean(np.concatenate([s.ravel() for s in stds])):7.2f} meV/Å, within 1σ "
          f"{metrics.coverage(forces, reference, stds, 1.0):.3f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus", flush=True)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")  # the few-structure warnings of the learner's start
    rng = np.random.default_rng(3)
    train, test, wide = rattled(30, 0.08, rng), rattled(30, 0.08, rng), rattled(20, 0.2, rng)
    hot = hot_frames(20, seed=5)
    model = make_model().fit(train)
    print(f"default model on 30 frames: σ = {model.signal_std_:.3g} eV, σ_F = "
          f"{1e3 * model.force_noise_:.3g} meV/Å, force map c = "
          f"{model.std_scale('forces'):.3g}", flush=True)
    std_row(model, test, "0.08 Å (training range)")
    std_row(model, wide, "0.2 Å")
    reference = [a.get_forces() for a in hot]
    initial = 1e3 * metrics.mae(model.predict_forces(hot), reference)
    atoms = slab()
    MaxwellBoltzmannDistribution(atoms, temperature_K=1000, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=1000, friction=0.01 / units.fs,
                   rng=np.random.default_rng(1))
    directory = tempfile.mkdtemp(prefix="kernelpot-otf-slab-")
    learner = OnTheFlyLearner(model, EMT(), directory=directory)
    start = time.perf_counter()
    learner.run(dyn, args.steps)
    wall = time.perf_counter() - start
    with open(f"{directory}/otf_log.jsonl") as handle:
        log = [json.loads(line) for line in handle]
    calls = [(r["step"], round(1e3 * r["max_force_std"], 1), round(1e3 * r["threshold"], 1))
             for r in log if r["reference_called"]]
    final = 1e3 * metrics.mae(learner.model.predict_forces(hot), reference)
    print(f"on-the-fly, {args.steps} steps at 1000 K: {learner.n_reference_calls} calls in "
          f"{wall:.0f} s; calls (step, largest std, threshold, meV/Å): {calls}")
    print(f"force MAE on 20 independent 1000 K frames: initial model {initial:.1f}, final "
          f"model {final:.1f} meV/Å")


if __name__ == "__main__":
    main()
