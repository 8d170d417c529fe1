"""Learning curves on the shared GFN2-xTB sets (ethanol, aspirin): accuracy, cost, calibration.

For each molecule, descriptor and training size n it fits a SparseGPPotential on the
split of ../shared/data/README.md (``test = i % 4 == 3``; ``train =
default_rng(0).permutation(rest)[:n]``), and prints force MAE (meV/Å), energy MAE
(meV), fit time, prediction time per atom (energy + forces + std), and calibration on
the test pool: coverage of force components at 1 and 2 predicted total std, Spearman
between per-atom std and per-atom error, and for ethanol the ratio of the mean
predicted force std on 1000 K frames to that on the 500 K test frames. Metrics are
those of :mod:`kernelpot.metrics`. Quoted figures (sGDML, GAP, FLARE) were measured
earlier on this machine class on the same files and split and are printed beside
ours, labelled "quoted".

Usage::

    python benchmarks/molecules.py --molecule ethanol --sizes 25,50,100,200,400
    python benchmarks/molecules.py --molecule aspirin --descriptors soap --test-frames 200
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
from kernelpot import ACSF, SOAP, SparseGPPotential, TwoBody, metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "xtb"
QUOTED = {  # force MAE meV/Å (energy MAE meV), measured earlier, same split
    "ethanol": {
        "sGDML": {25: (91, 28), 50: (71, 19), 100: (53, 13), 200: (38, 7.2), 400: (27, 4.2)},
        "GAP": {50: (98, 21), 200: (48, 9.9), 400: (41, 8.7)},
        "FLARE": {25: (296, 70), 50: (181, 38), 100: (100, 20), 200: (48, 8.4)},
    },
    "aspirin": {
        "sGDML": {25: (378, 232), 50: (131, 51), 100: (80, 29), 200: (63, 20), 400: (48, 14)},
        "FLARE": {50: (266, 137)},
    },
}


def descriptor_for(name: str, species):
    if name == "soap":
        return SOAP(species, 4.0, n_max=6, l_max=4, sigma=0.4)
    if name == "acsf":
        return ACSF.from_grid(species, 4.0, n_radial=8, n_angular=8)
    raise ValueError(name)


def add_model_options(parser) -> None:
    """The SOAP and noise options shared by the small-data and calibration studies."""
    parser.add_argument("--sigma", type=float, default=0.4,
                        help="SOAP Gaussian width, Å (default 0.4)")
    parser.add_argument("--n-max", type=int, default=6, help="SOAP n_max (default 6)")
    parser.add_argument("--l-max", type=int, default=4, help="SOAP l_max (default 4)")
    parser.add_argument("--force-noise", type=float, default=None,
                        help="fix the force noise at this value, eV/Å (default: fitted)")
    parser.add_argument("--signal-per-element", action="store_true",
                        help="one signal std per element (exact model)")
    parser.add_argument("--two-body", type=float, default=None, metavar="R_CUT",
                        help="a two-body term with this cutoff, Å, prior std fitted "
                             "(sparse model)")


def study_model(species, args, method, signal_per_element=None) -> SparseGPPotential:
    """The model of those studies from :func:`add_model_options`' options: SOAP r_cut 4 Å,
    every environment inducing, no optimiser restarts; a fixed ``--force-noise`` leaves
    the signal and energy noise to the likelihood. ``signal_per_element`` overrides
    ``--signal-per-element`` (which the estimator refuses for a sparse model)."""
    noise = {} if args.force_noise is None else {
        "force_noise": args.force_noise,
        "optimize": ["signal_std", "energy_noise", "two_body"]}
    return SparseGPPotential(
        SOAP(species, 4.0, n_max=args.n_max, l_max=args.l_max, sigma=args.sigma),
        method=method, sparse_method="all", n_restarts=0, random_state=0,
        signal_per_element=args.signal_per_element if signal_per_element is None
        else signal_per_element, two_body=two_body_for(args), **noise)


def two_body_for(args):
    """``TwoBody(--two-body, 16 functions from 0.8 Å)``, or None without the option."""
    return None if args.two_body is None else TwoBody(args.two_body, 16, 0.8)


def split(n_frames: int, n: int):
    idx = np.arange(n_frames)
    test = idx[idx % 4 == 3]
    rest = idx[idx % 4 != 3]
    return np.random.default_rng(0).permutation(rest)[:n], test


def test_pool(molecule: str, test_frames=None):
    """All frames of a molecule, its elements, the test pool (its first ``test_frames``)
    and the pool's reference forces and energies."""
    frames = read(SHARED / f"{molecule}_500K.xyz", ":")
    species = sorted(set(frames[0].get_chemical_symbols()))
    _, test_idx = split(len(frames), 0)
    test = [frames[i] for i in test_idx[:test_frames]]
    ref_f = [a.get_forces() for a in test]
    ref_e = np.array([a.get_potential_energy() for a in test])
    return frames, species, test, ref_f, ref_e


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", choices=["ethanol", "aspirin"], default="ethanol")
    parser.add_argument("--sizes", default="25,50,100,200,400")
    parser.add_argument("--descriptors", default="soap,acsf")
    parser.add_argument("--test-frames", type=int, default=None,
                        help="use the first N frames of the test pool (default: all)")
    parser.add_argument("--std-frames", type=int, default=None,
                        help="frames of the test pool used for the std (default: all used)")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--two-body", type=float, default=None, metavar="R_CUT",
                        help="add a two-body term (kernelpot.TwoBody, 16 basis functions "
                             "from 0.8 Å, prior std fitted) with this cutoff, Å")
    args = parser.parse_args(argv)

    frames, species, test, ref_f, ref_e = test_pool(args.molecule, args.test_frames)
    hot = read(SHARED / "ethanol_1000K.xyz", ":") if args.molecule == "ethanol" else None
    std_test = test[: args.std_frames] if args.std_frames else test
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; {args.molecule}: {len(frames)} frames, test pool "
          f"{len(test)} (std on {len(std_test)})", flush=True)

    rows = []
    for desc_name in args.descriptors.split(","):
        for n in [int(s) for s in args.sizes.split(",")]:
            train_idx, _ = split(len(frames), n)
            two_body = two_body_for(args)
            model = SparseGPPotential(descriptor_for(desc_name, species), random_state=0,
                                      n_jobs=args.n_jobs, two_body=two_body, method="sparse")
            start = time.perf_counter()
            model.fit([frames[i] for i in train_idx])
            fit_s = time.perf_counter() - start
            pred_f = model.predict_forces(test)
            pred_e = model.predict(test)
            start = time.perf_counter()
            f_std_pred, f_std = model.predict_forces(std_test, return_std=True)
            model.predict(std_test, return_std=True)
            n_atoms = sum(len(a) for a in std_test)
            pred_ms = 1e3 * (time.perf_counter() - start) / n_atoms
            ref_std = ref_f[: len(std_test)]
            row = {
                "descriptor": desc_name + ("+2b" if two_body is not None else ""), "n": n,
                "M": sum(model.n_inducing_.values()),
                "f_mae": 1e3 * metrics.mae(pred_f, ref_f),
                "e_mae": 1e3 * float(np.mean(np.abs(pred_e - ref_e))),
                "fit_s": fit_s, "pred_ms": pred_ms,
                "cov1": metrics.coverage(f_std_pred, ref_std, f_std, 1.0),
                "cov2": metrics.coverage(f_std_pred, ref_std, f_std, 2.0),
                "spearman": metrics.spearman_std_error(f_std_pred, ref_std, f_std),
                "sigma_F": 1e3 * model.force_noise_, "sigma_E": 1e3 * model.energy_noise_,
                "ood": None,
            }
            if hot is not None:
                _, hot_std = model.predict_forces(hot, return_std=True)
                row["ood"] = np.mean(np.concatenate(hot_std)) / np.mean(np.concatenate(f_std))
                hot_pred = model.predict_forces(hot)
                row["ood_mae"] = 1e3 * metrics.mae(hot_pred, [a.get_forces() for a in hot])
            rows.append(row)
            print(f"  {desc_name} n={n}: force MAE {row['f_mae']:.1f} meV/Å, energy MAE "
                  f"{row['e_mae']:.1f} meV, fit {fit_s:.1f} s", flush=True)

    quoted = QUOTED[args.molecule]
    print(f"\n{args.molecule} 500 K, test pool of {len(test)} frames; force MAE meV/Å "
          "(energy MAE meV)")
    header = (f"{'model':<12} {'n':>4} {'M':>5} {'F MAE':>7} {'E MAE':>7} {'fit s':>7} "
              f"{'ms/atom':>8} {'cov1σ':>6} {'cov2σ':>6} {'Spear':>6} {'σ_F':>6} "
              f"{'σ_E':>6} {'OOD std×':>8} {'OOD MAE':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ood = f"{r['ood']:8.2f}" if r["ood"] is not None else f"{'-':>8}"
        ood_mae = f"{r['ood_mae']:8.1f}" if r["ood"] is not None else f"{'-':>8}"
        print(f"{r['descriptor']:<12} {r['n']:>4} {r['M']:>5} {r['f_mae']:7.1f} "
              f"{r['e_mae']:7.1f} {r['fit_s']:7.1f} {r['pred_ms']:8.2f} {r['cov1']:6.3f} "
              f"{r['cov2']:6.3f} {r['spearman']:6.3f} {r['sigma_F']:6.1f} {r['sigma_E']:6.2f} "
              f"{ood} {ood_mae}")
    for name, table in quoted.items():
        for n in sorted(table):
            f, e = table[n]
            print(f"{name + ' (quoted)':<12} {n:>4} {'':>5} {f:7.0f} {e:7.1f}")
    print("σ_F in meV/Å and σ_E in meV/atom are the learned noise. cov1σ/cov2σ: fraction "
          "of force components within 1/2 predicted total std (targets 0.68 / 0.95); Spear: "
          "Spearman(per-atom std, per-atom error) (target >= 0.65); OOD std×: mean force std "
          "on ethanol 1000 K / on the 500 K test frames (target >= 1.5). Prediction time is "
          "energy + forces + std, one process.")


if __name__ == "__main__":
    main()
