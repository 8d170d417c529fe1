"""On-the-fly learning benchmark: issue 5's Cu/EMT setting, beside FLARE's quoted run.

Cu fcc 32-atom cell (a = 3.6 Å, cubic 2×2×2), EMT reference, Langevin 5 fs, friction
0.01/fs, target temperature ramped 300 → 800 K in steps every 100 MD steps over the
run, starting from one labelled frame (the model is fitted on it). Afterwards the
final model is tested on 50 independent 800 K EMT frames (EMT Langevin MD, every 20th
step after 500 steps of equilibration). Prints reference calls, force and energy MAE,
wall time and time per MD step (uncertainty on), beside FLARE's figures measured
earlier on this machine class (quoted): tight threshold 3 calls, 25 meV/Å,
0.43 meV/atom; tutorial threshold 1 call, 48 meV/Å; 550 s for 2000 steps.

Usage::

    python benchmarks/otf.py [--steps 2000] [--thresholds 0.05,0.1] [--descriptor acsf]
        [--seeds 0,1,2]

``--seeds``: one run per seed and threshold; seed s draws the initial velocities with
s and the Langevin noise with s + 1 (seed 0 is the single run of earlier versions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

import kernelpot
from kernelpot import ACSF, SOAP, OnTheFlyLearner, SparseGPPotential, metrics


def cell():
    return bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)


def test_frames(n_frames=50, seed=123):
    atoms = cell()
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=800, rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=800, friction=0.01 / units.fs,
                   fixcm=False, rng=np.random.default_rng(seed))
    dyn.run(500)
    frames = []
    for _ in range(n_frames):
        dyn.run(20)
        frame = atoms.copy()
        frame.calc = EMT()
        frame.get_forces()
        frames.append(frame)
    return frames


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--thresholds", default="0.05,0.1",
                        help="absolute force-std thresholds, eV/Å ('auto': the default)")
    parser.add_argument("--descriptor", choices=["acsf", "soap"], default="acsf")
    parser.add_argument("--n-inducing", default="4",
                        help="environments of each labelled frame added as inducing points "
                             "(an int or 'all')")
    parser.add_argument("--max-calls", type=int, default=None)
    parser.add_argument("--relative-threshold", type=float, default=1.5,
                        help="OnTheFlyLearner's relative_threshold (default: its default, 1.5)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated MD seeds, one run each (default 0)")
    parser.add_argument("--start", choices=["unfitted", "fitted"], default="unfitted",
                        help="hand the learner an unfitted model, or one fitted by the "
                             "default fit (as fit leaves it) on the labelled first frame")
    parser.add_argument("--method", choices=["auto", "sparse", "exact"], default="auto",
                        help="the model's method (default: the estimator's default)")
    parser.add_argument("--contact-margin", default="0.05",
                        help="OnTheFlyLearner's contact_margin ('none': the contact gate off; "
                             "default: its default, 0.05)")
    parser.add_argument("--critical-factor", default="none",
                        help="OnTheFlyLearner's critical_factor ('none', its default: "
                             "min_interval always holds)")
    args = parser.parse_args(argv)
    margin = None if args.contact_margin.lower() == "none" else float(args.contact_margin)
    critical = None if args.critical_factor.lower() == "none" else float(args.critical_factor)
    test = test_frames()
    ref_f = [a.get_forces() for a in test]
    ref_e = np.array([a.get_potential_energy() for a in test])
    print(f"kernelpot {kernelpot.__version__}: on-the-fly Cu/EMT, {args.steps} steps, "
          f"{args.descriptor}, n_inducing {args.n_inducing}, max_calls {args.max_calls}, "
          f"relative threshold {args.relative_threshold}, contact margin {margin}, critical "
          f"factor {critical}, start "
          f"{args.start}, method {args.method}", flush=True)
    rows = []
    runs = [(seed, token) for seed in map(int, args.seeds.split(","))
            for token in args.thresholds.split(",")]
    for seed, token in runs:
        threshold = None if token == "auto" else float(token)
        descriptor = (ACSF.from_grid(["Cu"], 4.5, n_radial=8, n_angular=8)
                      if args.descriptor == "acsf" else SOAP(["Cu"], 4.5, 6, 4, 0.5))
        model = SparseGPPotential(descriptor, random_state=0, n_restarts=0,
                                  method=args.method)
        atoms = cell()
        thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(seed))
        if args.start == "fitted":  # issue 19's case: noise-free labels, default fit
            first = atoms.copy()
            first.calc = EMT()
            first.calc = SinglePointCalculator(first, energy=first.get_potential_energy(),
                                               forces=first.get_forces())
            model = SparseGPPotential(descriptor, random_state=0, n_restarts=0,
                                      method=args.method).fit([first])
            print(f"  start: fitted on one frame, σ_F = {model.force_noise_:.2e} eV/Å",
                  flush=True)
        dyn = Langevin(atoms, 5 * units.fs, temperature_K=300, friction=0.01 / units.fs,
                       fixcm=False, rng=np.random.default_rng(seed + 1))
        ramp_steps = max(1, args.steps // 100)

        def ramp(dyn=dyn):
            level = min(dyn.nsteps // 100, ramp_steps - 1) / max(ramp_steps - 1, 1)
            dyn.set_temperature(temperature_K=300 + 500 * level)

        dyn.attach(ramp, interval=1)
        directory = tempfile.mkdtemp(prefix="kernelpot-otf-")
        n_inducing = args.n_inducing if args.n_inducing == "all" else int(args.n_inducing)
        learner = OnTheFlyLearner(model, EMT(), threshold=threshold, directory=directory,
                                  n_inducing=n_inducing, max_calls=args.max_calls,
                                  relative_threshold=args.relative_threshold,
                                  contact_margin=margin, critical_factor=critical)
        start = time.perf_counter()
        learner.run(dyn, args.steps)
        wall = time.perf_counter() - start
        final = learner.model
        pred_f = final.predict_forces(test)
        pred_e = final.predict(test)
        rows.append((seed, token, learner.n_reference_calls, 1e3 * metrics.mae(pred_f, ref_f),
                     1e3 * float(np.mean(np.abs(pred_e - ref_e))) / 32, wall,
                     1e3 * wall / args.steps, sum(final.n_inducing_.values())))
        log = [json.loads(line) for line in open(f"{directory}/otf_log.jsonl")]
        calls = [(r["step"], r["max_force_std"], r["threshold"],
                  "c" if r.get("called_by_contact") else "") for r in log
                 if r["reference_called"]]
        print(f"  seed {seed}, threshold {token}: {learner.n_reference_calls} calls, "
              f"force MAE {rows[-1][3]:.1f} meV/Å, {wall:.0f} s; calls (step, largest std, "
              "threshold eV/Å; c: by the contact gate): "
              + ", ".join(f"({s}, {m:.3f}, {t:.3f}{c and ', ' + c})" for s, m, t, c in calls),
              flush=True)
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n{'seed':>4} {'threshold eV/Å':<15} {'calls':>5} {'F MAE meV/Å':>11} "
          f"{'E MAE meV/atom':>14} {'wall s':>7} {'ms/step':>8} {'M':>5}")
    for seed, token, calls, f_mae, e_mae, wall, ms, m in rows:
        print(f"{seed:>4} {token:<15} {calls:>5} {f_mae:>11.1f} {e_mae:>14.2f} {wall:>7.0f} "
              f"{ms:>8.1f} {m:>5}")
    print(f"{'':>4} {'FLARE tight (quoted)':<15} {3:>5} {25.0:>11.1f} {0.43:>14.2f} {550:>7.0f}")
    print(f"{'':>4} {'FLARE tutorial (quoted)':<15} {1:>5} {48.0:>11.1f}")
    print("Target (issue 5): calls <= 3 and force MAE <= 25 meV/Å on 50 independent 800 K "
          "frames.")


if __name__ == "__main__":
    main()
