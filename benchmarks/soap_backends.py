"""SOAP from DScribe (``SOAP``) against SOAP from featomic (``FeatomicSOAP``) in one process.

Issue 21 asks whether featomic's SOAP is faster and at least as accurate before it can be
the default. For each data set and training size this script fits the default
``SparseGPPotential`` (``method`` as given) on each backend with the same settings
(r_cut, n_max, l_max, σ; featomic adds its 0.5 Å smooth cutoff) and prints: descriptor
time per atom with gradients, fit time, prediction time per atom (energies + forces, and
with every force std), force and energy MAE on held-out frames, and the force coverage
at 1 σ of the default (LOSO-calibrated) std. The two radial bases and normalisations
differ, so equal errors are not expected; the question is which is better.

Data sets:

* ``ethanol``: the shared GFN2-xTB ethanol at 500 K, the shared split, the estimator's
  default SOAP (4 Å, n_max 6, l_max 4, σ 0.4), 100 test frames;
* ``cu3au``: EMT Cu₃Au cells of 32 atoms (benchmarks/defaults.py), the CLI's periodic
  SOAP (5 Å, n_max 8, l_max 6, σ 0.5), 20 test cells.

Usage::

    python benchmarks/soap_backends.py --data ethanol --sizes 50,100,200 --method sparse
    python benchmarks/soap_backends.py --data cu3au --sizes 20,80 --method sparse
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
from kernelpot import SparseGPPotential, metrics
from kernelpot.descriptors import SOAP, FeatomicSOAP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import cu3au_frames, data  # noqa: E402


def descriptors(name: str, species):
    if name == "cu3au":
        settings = dict(r_cut=5.0, n_max=8, l_max=6, sigma=0.5)
    else:
        settings = dict(r_cut=4.0, n_max=6, l_max=4, sigma=0.4)
    return {"dscribe": SOAP(species, **settings), "featomic": FeatomicSOAP(species, **settings)}


def per_atom(seconds: float, frames) -> float:
    return 1e3 * seconds / sum(len(a) for a in frames)


def run(descriptor, method: str, train, test) -> dict:
    descriptor.compute(test[0])  # first call: imports, caches
    start = time.perf_counter()
    for atoms in test:
        descriptor.compute(atoms)
    desc_ms = per_atom(time.perf_counter() - start, test)
    model = SparseGPPotential(descriptor, method=method, random_state=0)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    model.predict_energies_and_forces(test)
    plain_ms = per_atom(time.perf_counter() - start, test)
    start = time.perf_counter()
    energies, forces, _, stds = model.predict_energies_and_forces(test, return_std=True)
    std_ms = per_atom(time.perf_counter() - start, test)
    ref_f = [a.get_forces() for a in test]
    ref_e = np.array([a.get_potential_energy() for a in test])
    return {"D": descriptor.n_features, "desc": desc_ms, "fit": fit_s, "plain": plain_ms,
            "std": std_ms, "f_mae": 1e3 * metrics.mae(forces, ref_f),
            "e_mae": 1e3 * float(np.mean(np.abs(energies - ref_e) / [len(a) for a in test])),
            "cov1": metrics.coverage(forces, ref_f, stds, 1.0), "method": model.method_}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["ethanol", "cu3au"], default="ethanol")
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--method", choices=["sparse", "exact", "auto"], default="sparse")
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus", flush=True)
    sizes = [int(n) for n in args.sizes.split(",")]
    if args.data == "cu3au":
        pool, test, species = cu3au_frames(max(sizes), seed=0), cu3au_frames(20, seed=100), \
            ["Au", "Cu"]
    else:
        pool, test, species = data("ethanol", max(sizes))
        test = test[:100]
    rows = []
    for n in sizes:
        for backend, descriptor in descriptors(args.data, species).items():
            result = run(descriptor, args.method, pool[:n], test)
            rows.append((n, backend, result))
            print(f"  n={n} {backend}: {result}", flush=True)
    print(f"\n{args.data}, method {args.method}, {len(test)} test frames of {len(test[0])} "
          "atoms; times per atom in ms (descriptor with gradients; prediction of energies and "
          "forces, and with every force std)")
    header = (f"{'n':>5} {'backend':<9} {'D':>5} {'desc ms':>8} {'fit s':>7} {'E+F ms':>7} "
              f"{'+std ms':>8} {'F MAE':>7} {'E MAE':>7} {'cov1σ':>6} {'method':>7}")
    print(header)
    print("-" * len(header))
    for n, backend, r in rows:
        print(f"{n:>5} {backend:<9} {r['D']:>5} {r['desc']:>8.2f} {r['fit']:>7.1f} "
              f"{r['plain']:>7.2f} {r['std']:>8.2f} {r['f_mae']:>7.1f} {r['e_mae']:>7.2f} "
              f"{r['cov1']:>6.3f} {r['method']:>7}")
    print("F MAE meV/Å, E MAE meV/atom; cov1σ: force components within 1 default std.")


if __name__ == "__main__":
    main()
