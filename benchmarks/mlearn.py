"""mlearn benchmark (DFT Si, Mo, Ge, Li): fit on *_training.xyz, test on *_test.xyz.

Prints test energy RMSE (meV/atom) and force RMSE (eV/Å), fit time, peak memory
(resident set size of this process, from ``resource``), prediction time per atom for
energies + forces, + the energy std (what GAP's variance gives), and + every force
component's std, the calibration of the force std, and the energy RMSE per kind of
configuration, beside GAP's figures measured earlier on this machine class on the same
files (quoted, from ../shared/data/README.md).

Usage::

    python benchmarks/mlearn.py --elements Si,Mo [--kernel ndp|se|ndp+se] [--fit-kernel]
    python benchmarks/mlearn.py --elements Si,Mo --descriptor featomic [--radial-scaling 2.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
from ase.io import read

import kernelpot
from kernelpot import (
    ACSF,
    SOAP,
    FeatomicSOAP,
    NormalizedDotProduct,
    Scaled,
    SparseGPPotential,
    SquaredExponential,
    TwoBody,
    metrics,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn"
GAP_QUOTED = {"Si": (5.9, 0.117), "Mo": (2.45, 0.167), "Ge": (4.36, 0.086), "Li": (0.77, 0.014)}


VOIGT_SLOT = {(1, 2): 3, (0, 2): 4, (0, 1): 5}  # shear plane -> ASE Voigt slot (yz xz xy)


def shear_slot_check(frames) -> tuple[int, int]:
    """Count cells sheared in yz or xz whose shear stress sits in ASE's Voigt slot, and
    those whose shear stress sits in the other slot of that pair.

    A cell whose only off-diagonal entry is ``cell[r, c]`` is sheared in the plane
    ``(r, c)``, so its largest shear stress belongs in that plane's slot. Measured on
    ../shared/data/mlearn (training + test): Mo 0 right and 20 in the other slot (its
    yz and xz components are swapped); Si 20 and 4, Ge 20 and 0, Li 9 and 0.
    """
    right = swapped = 0
    for atoms in frames:
        cell = np.asarray(atoms.cell)
        off = np.abs(cell - np.diag(np.diag(cell))) > 1e-3 * np.abs(cell).max()
        if off.sum() != 1:
            continue
        r, c = np.argwhere(off)[0]
        slot = VOIGT_SLOT[(min(r, c), max(r, c))]
        if slot == 5:
            continue
        largest = 3 + int(np.argmax(np.abs(atoms.get_stress()[3:])))
        right += largest == slot
        swapped += largest == 7 - slot  # 3 <-> 4
    return right, swapped


def exchange_shear_labels(frames, kinds: set) -> int:
    """Exchange the yz and xz stress labels of the frames whose config_type is in ``kinds``.

    In place (a new SinglePointCalculator with the same energy and forces); returns how
    many frames changed. The evidence that some files hold them exchanged: an energy-
    and-force model, which never sees a stress, predicts the shear stresses of Si's and
    Ge's AIMD-NVT, Vacancy and Surface cells 5-9 times closer to the exchanged labels
    (benchmarks/RESULTS.md, "Stress training").
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    changed = 0
    for atoms in frames:
        if atoms.info.get("config_type") not in kinds:
            continue
        stress = atoms.get_stress()[[0, 1, 2, 4, 3, 5]]
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=stress)
        changed += 1
    return changed


def stress_labels(frames, swap: bool) -> np.ndarray:
    """Reference stresses (n, 6), ASE's Voigt order, yz and xz swapped back if ``swap``."""
    out = np.array([a.get_stress() for a in frames])
    if swap:
        out[:, [3, 4]] = out[:, [4, 3]]
    return out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", default="Si,Mo")
    parser.add_argument("--descriptor", choices=["soap", "acsf", "featomic"], default="soap",
                        help="soap: DScribe-based SOAP (the default); featomic: FeatomicSOAP "
                             "with --smoothing and --radial-scaling")
    parser.add_argument("--smoothing", type=float, default=2.0,
                        help="FeatomicSOAP's switching width, Å (default 2.0)")
    parser.add_argument("--radial-scaling", type=float, default=2.5,
                        help="FeatomicSOAP's density scaling r_0, Å (default 2.5; 0: none)")
    parser.add_argument("--r-cut", type=float, default=5.0)
    parser.add_argument("--n-sparse", type=int, default=None)
    parser.add_argument("--n-max", type=int, default=8)
    parser.add_argument("--l-max", type=int, default=6)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--kernel", choices=["ndp", "se", "ndp+se"], default="ndp",
                        help="normalised dot product (zeta 2, the default model), a squared "
                             "exponential on the raw features (length scale "
                             "--length-scale-factor x the median distance between training "
                             "environments), or their sum with weight --se-weight on the "
                             "squared exponential")
    parser.add_argument("--length-scale-factor", type=float, default=2.0)
    parser.add_argument("--se-weight", type=float, default=0.1)
    parser.add_argument("--zeta", type=int, default=2)
    parser.add_argument("--fit-kernel", action="store_true",
                        help="fit the kernel's hyperparameters (length scale, weight) by "
                             "marginal likelihood from the values above; fixed otherwise")
    parser.add_argument("--search-frames", type=int, default=None,
                        help="with --fit-kernel: fit the kernel on this many random training "
                             "cells, then the noise levels on all")
    parser.add_argument("--energy-noise", type=float, default=None,
                        help="fix the energy noise (eV/atom) instead of fitting it; the "
                             "signal and force noise are still fitted")
    parser.add_argument("--two-body", type=float, default=None, metavar="R_CUT",
                        help="add a two-body term (kernelpot.TwoBody) with this cutoff, Å, "
                             "fitted jointly with the GP")
    parser.add_argument("--two-body-basis", type=int, default=16)
    parser.add_argument("--two-body-r-min", type=float, default=1.0)
    parser.add_argument("--two-body-prior-std", type=float, default=0.1,
                        help="prior std of the two-body coefficients relative to σ "
                             "(the start of its likelihood fit)")
    parser.add_argument("--no-stress", action="store_true",
                        help="train on energies and forces only (use_stress=False)")
    parser.add_argument("--exchange-shear-types", default="", metavar="TYPES",
                        help="comma-separated config types whose yz and xz stress labels "
                             "are exchanged in the training and test files before the fit "
                             "(e.g. AIMD-NVT,Vacancy,Surface for Si and Ge)")
    parser.add_argument("--design-memory-limit", type=float, default=4.0, metavar="GIB",
                        help="the estimator's design_memory_limit: a smaller value streams "
                             "the design in blocks (kernelpot.streaming)")
    return parser


def build_model(args, element, train) -> SparseGPPotential:
    """The (unfitted) model these options describe for one element."""
    if args.descriptor == "soap":
        descriptor = SOAP([element], args.r_cut, n_max=args.n_max, l_max=args.l_max,
                          sigma=args.sigma)
    elif args.descriptor == "featomic":
        descriptor = FeatomicSOAP([element], args.r_cut, n_max=args.n_max, l_max=args.l_max,
                                  sigma=args.sigma, smoothing=args.smoothing,
                                  radial_scaling=args.radial_scaling or None)
    else:
        descriptor = ACSF.from_grid([element], args.r_cut, n_radial=8, n_angular=8)
    kernel = NormalizedDotProduct(args.zeta)
    if args.kernel != "ndp":
        sample = np.concatenate([descriptor.create(a) for a in train[::10]])
        pick = np.random.default_rng(0).integers(len(sample), size=(2000, 2))
        median = float(np.median(np.linalg.norm(sample[pick[:, 0]] - sample[pick[:, 1]],
                                                axis=1)))
        ell = args.length_scale_factor * median
        bounds = (ell / 20, ell * 20) if args.fit_kernel else "fixed"
        se = SquaredExponential(ell, bounds)
        kernel = se if args.kernel == "se" else kernel + Scaled(
            se, args.se_weight, (1e-3, 1e2) if args.fit_kernel else "fixed")
    fixed = {} if args.energy_noise is None else {
        "energy_noise": args.energy_noise,
        "optimize": ["signal_std", "force_noise"] + (["kernel"] if args.fit_kernel else [])}
    if args.search_frames:
        fixed["search_frames"] = args.search_frames
    if args.two_body is not None:
        fixed["two_body"] = TwoBody(args.two_body, args.two_body_basis, args.two_body_r_min,
                                    args.two_body_prior_std)
    return SparseGPPotential(descriptor, kernel, n_sparse=args.n_sparse, random_state=0,
                             method="sparse", n_jobs=args.n_jobs,
                             use_stress=not args.no_stress,
                             design_memory_limit=args.design_memory_limit, **fixed)


def main(argv=None):
    args = build_parser().parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; descriptor {args.descriptor}, r_cut {args.r_cut} Å"
          + (f", n_max {args.n_max}, l_max {args.l_max}, sigma {args.sigma} Å"
             if args.descriptor == "soap" else ""),
          flush=True)
    rows = []
    for element in args.elements.split(","):
        train = read(SHARED / f"{element}_training.xyz", ":")
        test = read(SHARED / f"{element}_test.xyz", ":")
        if args.exchange_shear_types:
            kinds = set(args.exchange_shear_types.split(","))
            print(f"  {element}: yz/xz stress labels exchanged in "
                  f"{exchange_shear_labels(train, kinds)} training and "
                  f"{exchange_shear_labels(test, kinds)} test cells ({sorted(kinds)})",
                  flush=True)
        model = build_model(args, element, train)
        start = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - start
        fit_peak = peak_rss_gib()
        n_atoms = np.array([len(a) for a in test])
        timing = {}
        for level in (False, "energy", True):
            start = time.perf_counter()
            predictions = [model.predict_structure(a, forces=True, variance=level)
                           for a in test]
            timing[level] = 1e3 * (time.perf_counter() - start) / n_atoms.sum()
        energies = np.array([p.energy for p in predictions])
        forces = [p.forces for p in predictions]
        forces_std_pred, forces_std = model.predict_forces(test, return_std=True)
        kinds = [a.info.get("config_type", "?") for a in test]
        per_kind = {}
        for kind in sorted(set(kinds)):
            sel = np.array([k == kind for k in kinds])
            err = (energies[sel] - np.array([a.get_potential_energy() for a, s in
                                             zip(test, sel, strict=True) if s])) / n_atoms[sel]
            per_kind[kind] = (int(sel.sum()), 1e3 * float(np.sqrt(np.mean(err**2))))
        ref_e = np.array([a.get_potential_energy() for a in test])
        ref_f = [a.get_forces() for a in test]
        right, swapped = shear_slot_check(train + test)
        swap = swapped > right
        stress_ref = stress_labels(test, swap)
        stress_pred, stress_std = model.predict_stress(test, return_std=True)
        stress_err = stress_pred - stress_ref
        ev_per_a3_to_gpa = 160.21766
        rows.append({
            "element": element, "M": sum(model.n_inducing_.values()), "fit_s": fit_s,
            "peak": fit_peak,
            "e_rmse": 1e3 * float(np.sqrt(np.mean(((energies - ref_e) / n_atoms) ** 2))),
            "f_rmse": metrics.rmse(forces, ref_f), "mean_ms": timing[False],
            "e_std_ms": timing["energy"], "std_ms": timing[True], "per_kind": per_kind,
            "kernel": model.kernel_, "sigma": model.signal_std_,
            "spearman": metrics.spearman_std_error(forces_std_pred, ref_f, forces_std),
            "cov1": metrics.coverage(forces_std_pred, ref_f, forces_std, 1.0),
            "cov2": metrics.coverage(forces_std_pred, ref_f, forces_std, 2.0),
            "n_fixed": int(metrics.fixed_components(forces_std_pred, ref_f).sum()),
            "free_cov1": metrics.coverage(forces_std_pred, ref_f, forces_std, 1.0,
                                          exclude_fixed=True),
            "free_cov2": metrics.coverage(forces_std_pred, ref_f, forces_std, 2.0,
                                          exclude_fixed=True),
            "sigma_F": model.force_noise_, "sigma_E": 1e3 * model.energy_noise_,
            "s_rmse": ev_per_a3_to_gpa * float(np.sqrt(np.mean(stress_err**2))),
            "sigma_S": ev_per_a3_to_gpa * model.stress_noise_,
            "s_cov1": float(np.mean(np.abs(stress_err) <= stress_std)),
            "s_cov2": float(np.mean(np.abs(stress_err) <= 2 * stress_std)),
            "n_stress": model.posterior_.stats.n_S // 6,
            "s_swapped": f"{swapped}/{right + swapped}",
        })
        print(f"  {element}: E RMSE {rows[-1]['e_rmse']:.2f} meV/atom, F RMSE "
              f"{rows[-1]['f_rmse']:.3f} eV/Å, fit {fit_s:.0f} s; energy RMSE by kind: "
              + ", ".join(f"{k} ({n}) {v:.2f}" for k, (n, v) in per_kind.items())
              + f"; stress RMSE {rows[-1]['s_rmse']:.2f} GPa (yz/xz labels swapped back: "
              f"{swap}; {swapped} of {right + swapped} cells sheared in yz or xz hold their "
              f"shear stress in the other slot)"
              + f"; fitted kernel {model.kernel_!r}, σ {model.signal_std_:.3g} eV".replace(
                  "\n", " ")
              + ("" if model.two_body_ is None
                 else f"; two-body prior std {model.two_body_.prior_std:.3g} σ"), flush=True)
    noise = "fitted" if args.energy_noise is None else f"fixed at {args.energy_noise} eV/atom"
    kernel_text = {
        "ndp": f"normalised dot product, zeta {args.zeta}",
        "se": f"squared exponential, length scale {args.length_scale_factor} x median distance",
        "ndp+se": f"normalised dot product (zeta {args.zeta}) + {args.se_weight} x squared "
                  f"exponential ({args.length_scale_factor} x median distance)",
    }[args.kernel] + (" (start values; kernel hyperparameters fitted)" if args.fit_kernel
                      else "")
    two_body = "" if args.two_body is None else (
        f"; two-body term r_cut {args.two_body} Å, {args.two_body_basis} basis functions from "
        f"{args.two_body_r_min} Å, prior std fitted from {args.two_body_prior_std} σ")
    print(f"\nmlearn, {args.descriptor}, {kernel_text}{two_body}: fit on *_training.xyz, test "
          f"on *_test.xyz; energy noise {noise}")
    header = (f"{'element':<8} {'M':>5} {'E RMSE':>7} {'F RMSE':>7} {'GAP E':>6} {'GAP F':>6} "
              f"{'fit s':>7} {'peak GiB':>8} {'E+F ms':>7} {'+σ_E ms':>7} {'+σ_F ms':>7} "
              f"{'cov1σ':>6} {'cov2σ':>6} {'fixed':>6} {'free1σ':>6} {'free2σ':>6} "
              f"{'Spear':>6} {'σ_F':>6} {'σ_E':>6} {'S GPa':>6} {'σ_S':>6} "
              f"{'S cells':>7} {'S cov1σ':>7} {'S cov2σ':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        gap_e, gap_f = GAP_QUOTED[r["element"]]
        print(f"{r['element']:<8} {r['M']:>5} {r['e_rmse']:7.2f} {r['f_rmse']:7.3f} "
              f"{gap_e:6.2f} {gap_f:6.3f} {r['fit_s']:7.0f} {r['peak']:8.2f} "
              f"{r['mean_ms']:7.2f} {r['e_std_ms']:7.2f} {r['std_ms']:7.2f} "
              f"{r['cov1']:6.3f} {r['cov2']:6.3f} {r['n_fixed']:6d} "
              f"{r['free_cov1']:6.3f} {r['free_cov2']:6.3f} "
              f"{r['spearman']:6.3f} {r['sigma_F']:6.3f} {r['sigma_E']:6.2f} "
              f"{r['s_rmse']:6.2f} {r['sigma_S']:6.3f} {r['n_stress']:7d} "
              f"{r['s_cov1']:7.3f} {r['s_cov2']:7.3f}")
    print("E RMSE meV/atom, F RMSE eV/Å; GAP columns quoted (gap_fit, SOAP + 2-body, same "
          "files). peak GiB: the process's peak resident memory after fitting. Prediction "
          "time per atom, one process: E+F energies and forces; +σ_E also the energy std "
          "(like GAP's variance; GAP quoted 2.5 ms/atom for energies and forces); +σ_F also "
          "the std of every force component. cov1σ/2σ: test force components within 1/2 "
          "total stds; fixed: how many of them are zero in both the label and the "
          "prediction (the components a crystal's symmetry fixes, which any std covers); "
          "free1σ/2σ: the coverage without them. σ_F eV/Å, σ_E meV/atom (per √atom). S GPa: "
          "stress RMSE over the six components of the analytic stress (no GAP figure quoted), "
          "against the labels with their yz/xz components swapped back where the files hold "
          "them swapped; σ_S GPa: the learned stress noise; S cells: training cells whose "
          "stress the model trained on (0: energies and forces only); S cov1σ/2σ: the "
          "fraction of test stress components within 1/2 total stress stds.")


if __name__ == "__main__":
    main()
