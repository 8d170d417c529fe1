"""``kernelpot demo``: fit and evaluate on the bundled ethanol frames."""

from __future__ import annotations

import sys
import time

import numpy as np

from kernelpot import __version__
from kernelpot.cli._common import CLIError, _check_output


def _cmd_demo(args) -> int:
    from kernelpot import SparseGPPotential, metrics
    from kernelpot.datasets import load_ethanol
    from kernelpot.descriptors.defaults import default_acsf, default_soap
    from kernelpot.estimator import format_signal_std

    if args.plot and args.plot.lower() != "none":
        _check_output(args.plot, "the plot")
    frames = load_ethanol()
    index = np.arange(len(frames))
    test = [frames[i] for i in index[index % 4 == 3]]
    pool = index[index % 4 != 3]
    if not 1 <= args.n_train <= len(pool):
        raise CLIError(f"--n-train must be between 1 and {len(pool)}; got {args.n_train}")
    order = np.random.default_rng(args.seed).permutation(pool)
    train = [frames[i] for i in order[: args.n_train]]
    valid = [frames[i] for i in order[args.n_train:]]  # never trained on: for calibrate
    species = ["H", "C", "O"]
    descriptor = (default_soap(species, periodic=False) if args.descriptor == "soap"
                  else default_acsf(species, periodic=False))
    verbose = int(sys.stderr.isatty() and not args.quiet)
    print(f"kernelpot {__version__} demo: method {args.method}, GFN2-xTB ethanol (500 K), "
          f"{len(train)} training and {len(test)} test frames, {args.descriptor.upper()}")
    model = SparseGPPotential(descriptor, method=args.method, random_state=args.seed,
                              verbose=verbose)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    kind = "inducing" if model.method_ == "sparse" else "training"
    print(f"fitted the {model.method_} GP in {fit_s:.1f} s with "
          f"{sum(model.n_inducing_.values())} {kind} environments {model.n_inducing_}")
    print(f"learned noise: energy {1e3 * model.energy_noise_:.2f} meV/√atom, forces "
          f"{1e3 * model.force_noise_:.3g} meV/Å; signal "
          f"{format_signal_std(model.signal_std_)} eV")
    start = time.perf_counter()
    energies, forces, energy_std, forces_std = model.predict_energies_and_forces(
        test, return_std=True)
    pred_ms = 1e3 * (time.perf_counter() - start) / sum(len(a) for a in test)
    ref_e = np.array([a.get_potential_energy() for a in test])
    ref_f = [a.get_forces() for a in test]
    e_err = energies - ref_e
    print(f"test energies: MAE {1e3 * np.mean(np.abs(e_err)):.1f} meV, RMSE "
          f"{1e3 * np.sqrt(np.mean(e_err**2)):.1f} meV per molecule")
    print(f"test forces:   MAE {1e3 * metrics.mae(forces, ref_f):.1f} meV/Å, RMSE "
          f"{1e3 * metrics.rmse(forces, ref_f):.1f} meV/Å")
    print(f"uncertainty:   {100 * metrics.coverage(forces, ref_f, forces_std, 1):.0f}% of force "
          f"components within 1 std (Gaussian: 68%), "
          f"{100 * metrics.coverage(forces, ref_f, forces_std, 2):.0f}% within 2 (95%); "
          f"Spearman(std, error) per atom "
          f"{metrics.spearman_std_error(forces, ref_f, forces_std):.2f}; energies "
          f"{100 * metrics.coverage(energies, ref_e, energy_std, 1):.0f}% within 1 std")
    print(f"prediction with std: {pred_ms:.2f} ms per atom")
    if len(valid) >= 10:
        model.calibrate(valid)
        forces, forces_std, intervals = model.predict_forces(test, return_std=True,
                                                             return_interval=0.9)
        inside = np.mean(np.concatenate([((r >= iv[..., 0]) & (r <= iv[..., 1])).ravel()
                                         for r, iv in zip(ref_f, intervals, strict=True)]))
        one, two = (100 * metrics.coverage(forces, ref_f, forces_std, k) for k in (1, 2))
        print(f"calibrated on the {len(valid)} other frames: {one:.0f}% of test force "
              f"components within 1 std, {two:.0f}% within 2; conformal 90% intervals "
              f"hold {100 * inside:.0f}%")
    if args.plot and args.plot.lower() != "none":
        from kernelpot.plotting import plot_parity

        print(f"wrote {plot_parity(forces, ref_f, forces_std, args.plot)}")
    return 0
