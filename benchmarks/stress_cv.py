"""Does training on stresses cost energy or force accuracy? K-fold CV on an mlearn set.

The training file of one element is split into ``--folds`` folds (structure ``k`` in
fold ``k % folds``); each fold is predicted by the default model fitted on the others,
once with the stresses (``use_stress=True``, the default) and once without; with
``--config-type-noise`` also with stresses and noise scales per configuration type
(``config_type_noise=True``, GAP's ``config_type_sigma`` fitted by the likelihood).
Printed: energy (meV/atom), force (eV/Å) and stress (GPa) RMSE over all held-out
structures, and the energy, force and stress RMSE per configuration type, for each
model. The test file is not used, so its few cells of a kind (two surfaces for Mo) do
not decide.

Usage::

    python benchmarks/stress_cv.py --element Mo [--folds 4] [--two-body 5.0]
        [--config-type-noise] [--no-ef] [--zeta 4]
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
from kernelpot import SOAP, NormalizedDotProduct, SparseGPPotential, TwoBody

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn"
GPA = 160.21766208


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--element", default="Mo")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--two-body", type=float, default=None, metavar="R_CUT")
    parser.add_argument("--config-type-noise", action="store_true",
                        help="also the model with noise scales per configuration type")
    parser.add_argument("--no-ef", action="store_true", help="leave out the E+F model")
    parser.add_argument("--zeta", type=int, default=2,
                        help="exponent of the normalised dot-product kernel (default 2, "
                             "the package's)")
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; {args.element}, {args.folds} folds"
          + (f", two-body {args.two_body} Å" if args.two_body else "")
          + f", zeta {args.zeta}", flush=True)
    frames = read(SHARED / f"{args.element}_training.xyz", ":")
    kinds = np.array([a.info.get("config_type", "?") for a in frames])
    n_atoms = np.array([len(a) for a in frames])
    ref_e = np.array([a.get_potential_energy() for a in frames])
    ref_s = np.array([a.get_stress() for a in frames])
    fold = np.arange(len(frames)) % args.folds
    variants = {"E+F+S": {"use_stress": True}}
    if not args.no_ef:
        variants["E+F"] = {"use_stress": False}
    if args.config_type_noise:
        variants["E+F+S typed"] = {"use_stress": True, "config_type_noise": True}
    results = {}
    for name, options in variants.items():
        energy, stress = np.zeros(len(frames)), np.zeros((len(frames), 6))
        force_sq, force_n = np.zeros(len(frames)), np.zeros(len(frames))
        fit_s = 0.0
        for k in range(args.folds):
            train = [frames[i] for i in np.flatnonzero(fold != k)]
            held = np.flatnonzero(fold == k)
            model = SparseGPPotential(
                SOAP([args.element], 5.0, n_max=8, l_max=6, sigma=0.5),
                kernel=NormalizedDotProduct(zeta=args.zeta), method="sparse",
                random_state=0, **options,
                two_body=TwoBody(args.two_body, 16, 1.8) if args.two_body else None)
            start = time.perf_counter()
            model.fit(train)
            fit_s += time.perf_counter() - start
            e, f = model.predict_energies_and_forces([frames[i] for i in held])
            energy[held] = e
            stress[held] = model.predict_stress([frames[i] for i in held])
            for i, pred in zip(held, f, strict=True):
                force_sq[i] = float(np.sum((pred - frames[i].get_forces())**2))
                force_n[i] = pred.size
            scales = f", scales {model.config_type_noise_}" if model.config_type_noise_ else ""
            print(f"  {name} fold {k}: σ_S {GPA * model.stress_noise_:.3f} GPa, "
                  f"σ_E {1e3 * model.energy_noise_:.2f} meV/√atom, "
                  f"σ_F {model.force_noise_:.3f} eV/Å{scales}", flush=True)
        e_err = 1e3 * (energy - ref_e) / n_atoms
        s_err = GPA * (stress - ref_s)
        results[name] = {
            "E": float(np.sqrt(np.mean(e_err**2))),
            "F": float(np.sqrt(force_sq.sum() / force_n.sum())),
            "S": float(np.sqrt(np.mean(s_err**2))), "fit": fit_s,
            "kinds": {t: (float(np.sqrt(np.mean(e_err[kinds == t]**2))),
                          float(np.sqrt(force_sq[kinds == t].sum()
                                        / force_n[kinds == t].sum())),
                          float(np.sqrt(np.mean(s_err[kinds == t]**2))))
                      for t in sorted(set(kinds))}}
    print(f"\n{'model':<12} {'E RMSE':>7} {'F RMSE':>7} {'S RMSE':>7} {'fit s':>7}")
    for name, r in results.items():
        print(f"{name:<12} {r['E']:7.2f} {r['F']:7.3f} {r['S']:7.3f} {r['fit']:7.0f}")
    print("\nper configuration type (structures): E / F / S RMSE")
    for t in sorted(set(kinds)):
        row = "   ".join(f"{name} {r['kinds'][t][0]:.2f} / {r['kinds'][t][1]:.3f} / "
                         f"{r['kinds'][t][2]:.3f}" for name, r in results.items())
        print(f"  {t} ({int(np.sum(kinds == t))}): {row}")
    base = results["E+F+S"]
    for name, r in results.items():
        if name != "E+F+S":
            print(f"E+F+S against {name}: energy {100 * (base['E'] / r['E'] - 1):+.1f} %, "
                  f"force {100 * (base['F'] / r['F'] - 1):+.1f} %, stress "
                  f"{100 * (base['S'] / r['S'] - 1):+.1f} %")
    print("Energy meV/atom, force eV/Å, stress GPa; held-out structures of the training "
          "file.")

if __name__ == "__main__":
    main()
