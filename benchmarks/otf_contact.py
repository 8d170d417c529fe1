"""On-the-fly learning into close contacts: the contact gate against the std gate alone.

A new user's setting: fifteen 600 K EMT Ni₃Al-like cells (32 atoms, 8 Al at random
sites, strained ±2 %, Langevin MD, every 30th step), the default model of
``kernelpot fit`` for periodic cells (SOAP 5 Å, n_max 8, l_max 6, σ 0.5, method
"auto"), then ``OnTheFlyLearner`` with EMT as the reference at 900 K (Langevin 1 fs,
friction 0.01/fs, 500 steps), as ``kernelpot md --reference emt`` runs it. Every
``--every`` steps the benchmark records the model's force error against EMT on the
current structure, its largest gated std and its closest contact relative to the
labelled structures of that moment. Runs per seed and ``contact_margin`` ('none': the
std gate alone). The final models are also tested on independent 600 and 1200 K cells.

Usage::

    python benchmarks/otf_contact.py [--seeds 0,1,2] [--margins none,0.05,0.03]
        [--steps 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from scipy.stats import spearmanr

import kernelpot
from kernelpot import SOAP, OnTheFlyLearner, SparseGPPotential


def alloy(seed):
    rng = np.random.default_rng(seed)
    atoms = bulk("Ni", "fcc", 3.6, cubic=True).repeat(2)
    symbols = np.array(["Ni"] * 32)
    symbols[rng.choice(32, 8, replace=False)] = "Al"
    atoms.set_chemical_symbols(symbols.tolist())
    return atoms, rng


def emt_frames(seed, temperature, n_frames, every=30):
    """Strained, rattled cells, each equilibrated 40 steps, then 5 frames ``every`` apart."""
    base, rng = alloy(seed)
    frames = []
    while len(frames) < n_frames:
        atoms = base.copy()
        strain = rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.rattle(0.02, seed=int(rng.integers(1e9)))
        atoms.calc = EMT()
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        dyn = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02,
                       fixcm=False, rng=rng)
        dyn.run(40)
        for _ in range(5):
            dyn.run(every)
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                               forces=atoms.get_forces(),
                                               stress=atoms.get_stress())
            frames.append(frame)
            if len(frames) == n_frames:
                break
    return frames


def default_model():
    """``kernelpot fit``'s default for periodic Ni–Al cells, incremental (as md refits it)."""
    return SparseGPPotential(SOAP(["Al", "Ni"], 5.0, n_max=8, l_max=6, sigma=0.5),
                             random_state=0, n_jobs=1, incremental=True)


class Recorder:
    """Every ``every`` steps: the model's force error, its gated std, the contact ratio."""

    def __init__(self, learner, dyn, every):
        self.learner, self.dyn, self.every = learner, dyn, every
        self.rows = []

    def __call__(self):
        if self.dyn.nsteps % self.every:
            return
        atoms = self.dyn.atoms
        model_forces = atoms.get_forces()
        std = float(np.max(atoms.calc.results["forces_std"]))
        reference = atoms.copy()
        reference.calc = EMT()
        error = float(np.abs(model_forces - reference.get_forces()).max())
        # the labelled structures' shortest pairs (kept by the model, gate on or off)
        contact = self.learner.model.shortest_pairs_.closest(atoms)
        self.rows.append((1.0 if contact is None else contact.ratio, error, std))


def run(train, tests, seed, margin, steps, every):
    model = default_model().fit(train)
    atoms = alloy(4)[0]
    thermalize_momenta(atoms, temperature_K=900, rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 1 * units.fs, temperature_K=900, friction=0.01 / units.fs,
                   fixcm=False, rng=np.random.default_rng([seed, 1, 0]))
    learner = OnTheFlyLearner(model, EMT(), directory=tempfile.mkdtemp(prefix="kp-contact-"),
                              contact_margin=margin)
    recorder = Recorder(learner, dyn, every)
    dyn.attach(recorder, interval=1)  # before the learner's: the model before a call
    start = time.perf_counter()
    learner.run(dyn, steps)
    wall = time.perf_counter() - start
    by_contact = sum(1 for line in open(learner.directory / "otf_log.jsonl")
                     if '"called_by_contact": true' in line)
    final = [1e3 * np.mean([np.abs(p - a.get_forces()).mean() for p, a in
                            zip(learner.model.predict_forces(test), test, strict=True)])
             for test in tests]
    return learner.n_reference_calls, by_contact, np.array(recorder.rows), final, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--margins", default="none,0.05,0.03")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args(argv)
    train = emt_frames(1, 600, 15)
    tests = [emt_frames(2, 600, 20), emt_frames(3, 1200, 20)]
    print(f"kernelpot {kernelpot.__version__}: on-the-fly Ni–Al/EMT at 900 K from 15 cells "
          f"at 600 K, {args.steps} steps, every {args.every}th step recorded", flush=True)
    rows, pooled = [], {}
    for margin_text in args.margins.split(","):
        margin = None if margin_text == "none" else float(margin_text)
        for seed in map(int, args.seeds.split(",")):
            calls, by_contact, rec, final, wall = run(train, tests, seed, margin, args.steps,
                                                      args.every)
            pooled.setdefault(margin_text, []).append(rec)
            rows.append((margin_text, seed, calls, by_contact, 1e3 * np.median(rec[:, 1]),
                         1e3 * rec[:, 1].max(), int(np.sum(rec[:, 1] > 0.2)),
                         *final, wall))
            print(f"  margin {margin_text}, seed {seed}: {calls} calls ({by_contact} by "
                  f"contact), {wall:.0f} s", flush=True)
    print(f"\n{'margin':>6} {'seed':>4} {'calls':>5} {'contact':>7} "
          f"{'median max err':>14} {'worst':>6} {'>200':>4} {'F600':>6} {'F1200':>6}"
          f" {'wall s':>6}")
    for margin, seed, calls, contact, med, worst, over, f600, f1200, wall in rows:
        print(f"{margin:>6} {seed:>4} {calls:>5} {contact:>7} {med:>14.0f} {worst:>6.0f} "
              f"{over:>4} {f600:>6.1f} {f1200:>6.1f} {wall:>6.0f}")
    print("(errors meV/Å: largest force-component error of the recorded frames, its "
          "median, the worst, frames over 200; F600/F1200: final model's force MAE on "
          "20 independent cells)")
    if "none" in pooled:  # the std gate alone: which signal ranks the errors
        rec = np.concatenate(pooled["none"])
        print(f"\nstd gate alone, {len(rec)} recorded frames: Spearman(error, std) "
              f"{spearmanr(rec[:, 2], rec[:, 1])[0]:.2f}, Spearman(error, contact ratio) "
              f"{spearmanr(rec[:, 0], rec[:, 1])[0]:.2f}")
        for low, high in ((0.0, 0.95), (0.95, 0.97), (0.97, 1.0), (1.0, 9.0)):
            inside = (rec[:, 0] >= low) & (rec[:, 0] < high)
            if inside.any():
                print(f"  contact ratio [{low}, {high}): {inside.sum():>3} frames, largest "
                      f"error median {1e3 * np.median(rec[inside, 1]):.0f} meV/Å, largest "
                      f"std median {1e3 * np.median(rec[inside, 2]):.0f} meV/Å")


if __name__ == "__main__":
    main()
