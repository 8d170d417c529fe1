"""The exact model's force covariances: per-column sums against the direct contraction.

Issue 21 (the exact model's prediction with every std). The exact model's force–force
covariance adds ``aᵀ H(x_i, y_j) b`` over every pair of Jacobian rows ``a`` (the
structure predicted, or a training chunk) and ``b`` (the training set). The direct
contraction forms ``A Bᵀ`` (``P Q D``) and loops over its ``P Q`` entries; the
per-column sums of :class:`kernelpot.kernels.NormalizedDotProduct` sum ``B``'s rows of
each output column first (``n_x Q D + P n_columns D``). Both run here in one process on
the same fitted model (``kernelpot.kernels._column_sums_pay`` switched), and the
stds of both are compared.

Cases (``--cases``, comma-separated):

* ``ethanol``: exact model, ethanol n = 100 from the shared 500 K frames (the
  estimator's default SOAP, 4 Å, n_max 6, l_max 4, σ 0.4; hyperparameters fixed, so
  the fit time is the covariance, its factor and the LOSO step); 50 test frames in one
  batch and 10 one at a time (as in MD).
* ``cu-soap``, ``cu-acsf``: a new user's metal on the fly: the exact model of ``--cells``
  EMT Cu cells of 32 atoms (``method="auto"`` picks the exact model for so few), with
  the command line's periodic SOAP (5 Å, n_max 8, l_max 6, σ 0.5) or an ACSF grid
  (4 Å); one new cell at a time, as the on-the-fly gate predicts it at every step.

Usage::

    python benchmarks/exact_variance.py --cases ethanol,cu-soap,cu-acsf
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from ase.io import read

import kernelpot
import kernelpot.kernels as kernels_module
from kernelpot import ACSF, SOAP, SparseGPPotential

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXED = {"optimize": False, "signal_std": 1.0, "energy_noise": 0.01, "force_noise": 0.05}


def ethanol_case():
    frames = read(SHARED / "xtb" / "ethanol_500K.xyz", ":")
    index = np.arange(len(frames))
    train = [frames[i] for i in index[index % 4 != 3][:100]]
    test = [frames[i] for i in index[index % 4 == 3][:50]]
    descriptor = SOAP(["H", "C", "O"], 4.0, n_max=6, l_max=4, sigma=0.4)
    return descriptor, train, test


def copper_case(kind: str, n_cells: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import emt_copper_frames

    frames = emt_copper_frames(n_cells + 10, seed=21, rattle=0.08)
    descriptor = SOAP(["Cu"], 5.0, n_max=8, l_max=6, sigma=0.5) if kind == "soap" \
        else ACSF.from_grid(["Cu"], 4.0)
    return descriptor, frames[:n_cells], frames[n_cells:]


def best_of(repeats: int, call) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def run(descriptor, train, test, repeats: int, batch: bool) -> dict:
    """Fit and time the prediction with every std, one structure at a time (and batched)."""
    start = time.perf_counter()
    model = SparseGPPotential(descriptor, method="exact", random_state=0, **FIXED).fit(train)
    fit_s = time.perf_counter() - start
    one = test[:10]
    model.predict_forces(one[:1], return_std=True)  # compiled, caches filled
    n_one = sum(len(a) for a in one)
    single = best_of(repeats, lambda: [model.predict_forces([a], return_std=True)
                                       for a in one])
    out = {"fit s": fit_s, "one at a time": 1e3 * single / n_one}
    if batch:
        n_all = sum(len(a) for a in test)
        out["batch"] = 1e3 * best_of(repeats, lambda: model.predict_forces(
            test, return_std=True)) / n_all
    out["stds"] = np.concatenate([s.ravel() for s in model.predict_forces(
        one, return_std=True, std_type="epistemic")[1]])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="ethanol,cu-soap,cu-acsf")
    parser.add_argument("--cells", type=int, default=10,
                        help="training cells of the Cu cases (default 10)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    rule = kernels_module._column_sums_pay
    rows = []
    for case in args.cases.split(","):
        descriptor, train, test = ethanol_case() if case == "ethanol" \
            else copper_case(case.split("-")[1], args.cells)
        results = {}
        for path, choose in (("direct", lambda *a: False), ("column sums", rule)):
            kernels_module._column_sums_pay = choose
            results[path] = run(descriptor, train, test, args.repeats, case == "ethanol")
            print(f"{case}, {path}: {results[path]}"[:300], flush=True)
        kernels_module._column_sums_pay = rule
        a, b = results["direct"]["stds"], results["column sums"]["stds"]
        rows.append((case, len(train), results, float(np.max(np.abs(a - b) / np.abs(a)))))
    print()
    print("| case | n | fit s direct / sums | ms/atom one at a time direct / sums | ratio "
          "| batch ms/atom direct / sums | max rel diff of the stds |")
    print("|---|---|---|---|---|---|---|")
    for case, n, r, diff in rows:
        d, c = r["direct"], r["column sums"]
        batch = f"{d['batch']:.2f} / {c['batch']:.2f}" if "batch" in d else "-"
        print(f"| {case} | {n} | {d['fit s']:.2f} / {c['fit s']:.2f} | "
              f"{d['one at a time']:.2f} / {c['one at a time']:.2f} | "
              f"{d['one at a time'] / c['one at a time']:.2f} | {batch} | {diff:.1e} |")


if __name__ == "__main__":
    main()
