"""On-the-fly learning of ethanol with GFN2-xTB, against random frames of the same count.

Issue 19's setting, that of ``examples/otf_ethanol_xtb.py``: a default model (SOAP
r_cut 4 Å, n_max 6, l_max 4, σ 0.4, incremental, ``method="auto"``: exact while its
limits hold, which they do for this run's 77 structures) fitted on five bundled frames,
Langevin MD at 500 K (0.5 fs, friction 0.01/fs), the learner's automatic threshold on
the calibrated std, ``min_interval=3``, for ``--steps`` steps (10,000 = 5 ps). Then a
model of the same settings is fitted on as many *random* frames of the shared 500 K
training pool (``i % 4 != 3``, ``default_rng(seed).permutation``) as the on-the-fly
model holds, and both are scored on the shared 500 K test pool (``i % 4 == 3``, 500
frames). Prints calls, force MAE of both, the largest temperature, and the gate's
calibration on the frames it labelled: the fraction of force components whose error
(model before the update against the new label) was inside 1 and 2 gated stds.
Target (issue 19): on-the-fly force MAE no worse than random's. Needs tblite.

Usage::

    python benchmarks/otf_ethanol.py [--steps 10000] [--force-tolerance 0.1] [--min-interval 3]
        [--method auto|sparse|exact]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from tblite.ase import TBLite

import kernelpot
from kernelpot import SOAP, OnTheFlyLearner, SparseGPPotential, load_ethanol, metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "xtb"


def model_template(method: str = "auto"):
    """The example's model (``method="auto"``, its default), incremental either way."""
    return SparseGPPotential(SOAP(["H", "C", "O"], 4.0, n_max=6, l_max=4, sigma=0.4),
                             incremental=True, random_state=0, method=method)


def run(directory, steps, force_tolerance, relative_threshold=1.5, min_interval=3,
        method="auto", contact_margin=0.05, critical_factor=None):
    """Run the example's on-the-fly MD; return the final model."""
    bundled = load_ethanol()
    atoms = bundled[0].copy()
    thermalize_momenta(atoms, temperature_K=500, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=500, friction=0.01 / units.fs,
                   fixcm=False, rng=np.random.default_rng(1))
    model = model_template(method).fit(bundled[0:100:20])
    learner = OnTheFlyLearner(model, TBLite(method="GFN2-xTB", verbosity=0),
                              directory=directory, min_interval=min_interval,
                              force_tolerance=force_tolerance,
                              relative_threshold=relative_threshold,
                              contact_margin=contact_margin,
                              critical_factor=critical_factor)
    learner.run(dyn, steps)
    return learner.model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--force-tolerance", type=float, default=0.1)
    parser.add_argument("--relative-threshold", type=float, default=1.5,
                        help="OnTheFlyLearner's relative_threshold (default 1.5, its default)")
    parser.add_argument("--min-interval", type=int, default=3,
                        help="the learner's min_interval (default 3, the example's)")
    parser.add_argument("--seeds", type=int, default=3, help="random-frame models")
    parser.add_argument("--method", choices=("auto", "sparse", "exact"), default="auto",
                        help="the model of both the on-the-fly run and the random frames "
                             "(incremental either way; default: the estimator's default)")
    parser.add_argument("--directory", default=None, help="keep the run here")
    parser.add_argument("--contact-margin", default="0.05",
                        help="OnTheFlyLearner's contact_margin ('none': the contact gate off)")
    parser.add_argument("--evaluate", default=None, metavar="DIRECTORY",
                        help="no MD: score the last checkpoint of a run kept in DIRECTORY "
                             "(one stopped early included) against random frames")
    parser.add_argument("--critical-factor", default="none",
                        help="OnTheFlyLearner's critical_factor ('none', its default: "
                             "min_interval always holds)")
    args = parser.parse_args(argv)
    margin = None if args.contact_margin.lower() == "none" else float(args.contact_margin)
    critical = None if args.critical_factor.lower() == "none" else float(args.critical_factor)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; {args.steps} steps, force_tolerance "
          f"{args.force_tolerance}, relative_threshold {args.relative_threshold}, "
          f"min_interval {args.min_interval}, contact_margin {margin}, critical_factor "
          f"{critical}, {args.method} model",
          flush=True)
    frames = read(SHARED / "ethanol_500K.xyz", ":")
    idx = np.arange(len(frames))
    test = [frames[i] for i in idx[idx % 4 == 3]]
    pool = [frames[i] for i in idx[idx % 4 != 3]]
    reference_test = [a.get_forces() for a in test]

    if args.evaluate:
        directory = args.evaluate
        final = kernelpot.load(Path(directory) / "model.npz")
    else:
        directory = args.directory or tempfile.mkdtemp(prefix="kernelpot-otf-ethanol-")
        final = run(directory, args.steps, args.force_tolerance, args.relative_threshold,
                    args.min_interval, args.method, margin, critical)
    log = [json.loads(line) for line in open(Path(directory) / "otf_log.jsonl")]
    n_frames = final.posterior_.n_training_structures
    # a run stopped early: only the steps its checkpoint has seen
    log = [r for r in log if r["n_structures"] <= n_frames]
    steps = log[-1]["step"]
    calls = [r for r in log if r["reference_called"]]
    print(f"calls by the contact gate: {sum(bool(r.get('called_by_contact')) for r in calls)}",
          flush=True)
    otf_mae = metrics.mae(final.predict_forces(test), reference_test)
    print(f"on-the-fly: {len(calls)} calls in {steps} steps, {n_frames} structures, force "
          f"MAE {1e3 * otf_mae:.1f} meV/Å, max {max(r['temperature_K'] for r in log):.0f} K, "
          f"last threshold {log[-1]['threshold']:.3f} eV/Å, {log[-1]['wall_s']:.0f} s "
          f"({1e3 * log[-1]['wall_s'] / max(steps, 1):.0f} ms/step)", flush=True)
    random_mae = []
    for seed in range(args.seeds):
        chosen = np.random.default_rng(seed).permutation(len(pool))[:n_frames]
        fitted = model_template(args.method).fit([pool[k] for k in chosen])
        random_mae.append(metrics.mae(fitted.predict_forces(test), reference_test))
        print(f"  random seed {seed}: {1e3 * random_mae[-1]:.1f} meV/Å", flush=True)
    within1 = np.mean([r["within_1std"] for r in calls]) if calls else np.nan
    within2 = np.mean([r["within_2std"] for r in calls]) if calls else np.nan
    quarters = np.array_split(np.arange(steps + 1), 4)
    per_quarter = [sum(1 for r in calls if q[0] <= r["step"] <= q[-1]) for q in quarters]
    print(f"\n{'model':<28} {'frames':>6} {'F MAE meV/Å':>11}")
    print(f"{'on-the-fly':<28} {n_frames:>6} {1e3 * otf_mae:11.1f}")
    print(f"{'random 500 K (mean of seeds)':<28} {n_frames:>6} {1e3 * np.mean(random_mae):11.1f}")
    print(f"ratio on-the-fly / random: {otf_mae / np.mean(random_mae):.2f} (target <= 1)")
    print(f"calls per quarter of the run: {per_quarter}")
    print(f"gate calibration on the {len(calls)} labelled frames: {100 * within1:.1f} % / "
          f"{100 * within2:.1f} % of force components inside 1 / 2 gated stds "
          "(error of the model before the update)")


if __name__ == "__main__":
    main()
