"""The two-body term on the shared xTB sets: the sparse model with and without it, one process.

For each training size n (split of ../shared/data/README.md) it fits the estimator's
default sparse SOAP model (``SOAP(r_cut 4, n_max 6, l_max 4, sigma 0.4)``, every
environment inducing, hyperparameters fitted) with and without ``TwoBody(r_cut)``
(its prior std fitted by the likelihood), and prints force and energy MAE on the test
pool, fit time and their ratios, the fitted prior std, and sGDML's quoted figure.

Usage::

    python benchmarks/two_body.py --molecule ethanol --sizes 25,50,100,200
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import kernelpot
from kernelpot import SparseGPPotential, TwoBody, metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from molecules import QUOTED, descriptor_for, split, test_pool  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", choices=["ethanol", "aspirin"], default="ethanol")
    parser.add_argument("--sizes", default="25,50,100,200")
    parser.add_argument("--r-cut", type=float, default=4.0, help="two-body cutoff, Å")
    parser.add_argument("--test-frames", type=int, default=None,
                        help="use the first N frames of the test pool (default: all)")
    args = parser.parse_args(argv)
    frames, species, test, ref_f, ref_e = test_pool(args.molecule, args.test_frames)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; {args.molecule}, test pool {len(test)} frames", flush=True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        train_idx, _ = split(len(frames), n)
        train = [frames[i] for i in train_idx]
        row = {"n": n}
        for name, pair in (("gp", None), ("gp+2b", TwoBody(args.r_cut, 16, 0.8))):
            model = SparseGPPotential(descriptor_for("soap", species), random_state=0,
                                      two_body=pair, method="sparse")
            start = time.perf_counter()
            model.fit(train)
            row[f"{name} fit"] = time.perf_counter() - start
            row[f"{name} F"] = 1e3 * metrics.mae(model.predict_forces(test), ref_f)
            row[f"{name} E"] = 1e3 * float(np.mean(np.abs(model.predict(test) - ref_e)))
            if pair is not None:
                row["prior_std"] = model.two_body_.prior_std
        rows.append(row)
        print(f"  n={n}: force MAE {row['gp F']:.1f} -> {row['gp+2b F']:.1f} meV/Å", flush=True)

    sgdml = QUOTED[args.molecule]["sGDML"]
    print(f"\n{args.molecule} 500 K, sparse SOAP model without / with a two-body term "
          f"(r_cut {args.r_cut} Å), same process; MAE on {len(test)} test frames")
    header = (f"{'n':>4} {'F MAE':>7} {'F +2b':>7} {'ratio':>6} {'E MAE':>7} {'E +2b':>7} "
              f"{'fit s':>7} {'fit +2b':>8} {'ratio':>6} {'prior std':>9} "
              f"{'sGDML F (quoted)':>17}")
    print(header)
    print("-" * len(header))
    for r in rows:
        quoted = f"{sgdml[r['n']][0]:17.0f}" if r["n"] in sgdml else f"{'-':>17}"
        print(f"{r['n']:>4} {r['gp F']:7.1f} {r['gp+2b F']:7.1f} "
              f"{r['gp+2b F'] / r['gp F']:6.2f} {r['gp E']:7.1f} {r['gp+2b E']:7.1f} "
              f"{r['gp fit']:7.1f} {r['gp+2b fit']:8.1f} {r['gp+2b fit'] / r['gp fit']:6.2f} "
              f"{r['prior_std']:9.3g} {quoted}")
    print("Force MAE meV/Å, energy MAE meV; prior std: the fitted two-body prior std "
          "relative to σ.")


if __name__ == "__main__":
    main()
