"""Does training on stresses cost energy or force accuracy? K-fold CV on an mlearn set.

The training file of one element is split into ``--folds`` folds (structure ``k`` in
fold ``k % folds``); each fold is predicted by the default model fitted on the others,
once with the stresses (``use_stress=True``, the default) and once without. Printed:
energy (meV/atom), force (eV/Å) and stress (GPa) RMSE over all held-out structures, and
the energy and stress RMSE per configuration type, for both models. The test file is
not used, so its few cells of a kind (two surfaces for Mo) do not decide.

Usage::

    python benchmarks/stress_cv.py --element Mo [--folds 4] [--two-body 5.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from ase.io import read

import kernelpot
from kernelpot import SOAP, SparseGPPotential, TwoBody

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn"
GPA = 160.21766208


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--element", default="Mo")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--two-body", type=float, default=None, metavar="R_CUT")
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; {args.element}, {args.folds} folds"
          + (f", two-body {args.two_body} Å" if args.two_body else ""), flush=True)
    frames = read(SHARED / f"{args.element}_training.xyz", ":")
    kinds = np.array([a.info.get("config_type", "?") for a in frames])
    n_atoms = np.array([len(a) for a in frames])
    ref_e = np.array([a.get_potential_energy() for a in frames])
    ref_s = np.array([a.get_stress() for a in frames])
    fold = np.arange(len(frames)) % args.folds
    results = {}
    for use_stress in (True, False):
        energy, stress = np.zeros(len(frames)), np.zeros((len(frames), 6))
        force_sq, force_n, fit_s = 0.0, 0, 0.0
        for k in range(args.folds):
            train = [frames[i] for i in np.flatnonzero(fold != k)]
            held = [frames[i] for i in np.flatnonzero(fold == k)]
            model = SparseGPPotential(
                SOAP([args.element], 5.0, n_max=8, l_max=6, sigma=0.5), method="sparse",
                random_state=0, use_stress=use_stress,
                two_body=TwoBody(args.two_body, 16, 1.8) if args.two_body else None)
            start = time.perf_counter()
            model.fit(train)
            fit_s += time.perf_counter() - start
            e, f = model.predict_energies_and_forces(held)
            energy[fold == k] = e
            stress[fold == k] = model.predict_stress(held)
            for pred, atoms in zip(f, held, strict=True):
                force_sq += float(np.sum((pred - atoms.get_forces())**2))
                force_n += pred.size
            print(f"  use_stress={use_stress} fold {k}: σ_S {GPA * model.stress_noise_:.3f} GPa, "
                  f"σ_E {1e3 * model.energy_noise_:.2f} meV/√atom", flush=True)
        e_err = 1e3 * (energy - ref_e) / n_atoms
        s_err = GPA * (stress - ref_s)
        results[use_stress] = {
            "E": float(np.sqrt(np.mean(e_err**2))), "F": float(np.sqrt(force_sq / force_n)),
            "S": float(np.sqrt(np.mean(s_err**2))), "fit": fit_s,
            "kinds": {t: (float(np.sqrt(np.mean(e_err[kinds == t]**2))),
                          float(np.sqrt(np.mean(s_err[kinds == t]**2))))
                      for t in sorted(set(kinds))}}
    print(f"\n{'model':<8} {'E RMSE':>7} {'F RMSE':>7} {'S RMSE':>7} {'fit s':>7}  "
          "E / S RMSE per configuration type")
    for use_stress, r in results.items():
        per_kind = ", ".join(f"{t} {e:.2f} / {s:.3f}" for t, (e, s) in r["kinds"].items())
        print(f"{'E+F+S' if use_stress else 'E+F':<8} {r['E']:7.2f} {r['F']:7.3f} "
              f"{r['S']:7.3f} {r['fit']:7.0f}  {per_kind}")
    with_s, without = results[True], results[False]
    print(f"E+F+S against E+F: energy {100 * (with_s['E'] / without['E'] - 1):+.1f} %, force "
          f"{100 * (with_s['F'] / without['F'] - 1):+.1f} %, stress "
          f"{100 * (with_s['S'] / without['S'] - 1):+.1f} %. Energy meV/atom, force eV/Å, "
          "stress GPa; held-out structures of the training file.")


if __name__ == "__main__":
    main()
