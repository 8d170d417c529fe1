"""The ``kernelpot`` command line.

Only this module prints or configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tracemalloc

import numpy as np

from kernelpot import __version__

logger = logging.getLogger("kernelpot")

_DEMO_EXAMPLE = """\
examples:
  kernelpot demo                  # fit on 100 bundled ethanol frames, test on 50, report
  kernelpot demo --n-train 150 --descriptor acsf
"""

_DESCRIPTORS_EXAMPLE = """\
examples:
  kernelpot descriptors                      # bundled ethanol (xTB) and Si (DFT) frames
  kernelpot descriptors --descriptor soap frames.xyz --r-cut 4.5 --n-jobs 2
"""


class CLIError(Exception):
    """An error reported as one line on stderr with a non-zero exit code."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelpot",
        description="Gaussian-process interatomic potentials with analytic derivatives "
                    "and uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"kernelpot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "demo",
        help="fit a sparse GP on bundled ethanol data, evaluate it on held-out frames",
        description="Fit a sparse GP potential on bundled GFN2-xTB ethanol frames, evaluate "
                    "it on held-out frames and print the learned noise, errors and "
                    "calibration of the predicted uncertainty.",
        epilog=_DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--n-train", type=int, default=100,
                   help="training frames (of the 150 non-test bundled frames; default 100)")
    d.add_argument("--descriptor", choices=["soap", "acsf"], default="soap")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "descriptors",
        help="compute ACSF and SOAP features with analytic gradients and print a summary",
        description="Compute ACSF and SOAP features with analytic position gradients for "
                    "structures (the bundled ethanol and silicon frames by default) and print "
                    "shapes, timing and peak memory.",
        epilog=_DESCRIPTORS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", help="structure files readable by ase.io "
                   "(default: the bundled data sets)")
    p.add_argument("--descriptor", choices=["acsf", "soap", "both"], default="both")
    p.add_argument("--r-cut", type=float, default=None,
                   help="cutoff in Å (default: 4.0 for molecules, 5.0 for periodic cells)")
    p.add_argument("--n-jobs", type=int, default=1, help="joblib workers (default 1)")
    p.add_argument("--frames", type=int, default=None,
                   help="use at most this many frames per data set")
    for q in (d, p):
        q.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log output (-vv for debug)")
        q.add_argument("--quiet", action="store_true", help="only errors")
        q.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=_cmd_descriptors)
    return parser


def _configure_logging(args) -> None:
    level = logging.WARNING
    if args.quiet:
        level = logging.ERROR
    elif args.verbose == 1:
        level = logging.INFO
    elif args.verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("kernelpot")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _read_frames(path: str) -> list:
    from ase.io import read

    try:
        frames = read(path, ":")
    except FileNotFoundError as err:
        raise CLIError(f"no such file: {path}") from err
    except Exception as err:  # ase.io raises many types for unreadable files
        raise CLIError(f"cannot read {path} with ase.io: {err}") from err
    if not frames:
        raise CLIError(f"{path} holds no structures")
    return frames


def _default_descriptors(frames, which: str, r_cut):
    from kernelpot.descriptors import ACSF, SOAP

    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    periodic = any(atoms.pbc.any() for atoms in frames)
    if r_cut is None:
        r_cut = 5.0 if periodic else 4.0
    out = []
    if which in ("acsf", "both"):
        out.append(("ACSF", ACSF.from_grid(species, r_cut, n_radial=8, n_angular=8)))
    if which in ("soap", "both"):
        if periodic:
            soap = SOAP(species, r_cut, n_max=8, l_max=6, sigma=0.5)
        else:
            soap = SOAP(species, r_cut, n_max=6, l_max=4, sigma=0.4)
        out.append(("SOAP", soap))
    return out


def _cmd_descriptors(args) -> int:
    from kernelpot.datasets import load_ethanol, load_silicon

    if args.files:
        sets = [(path, _read_frames(path)) for path in args.files]
    else:
        sets = [("bundled ethanol (GFN2-xTB, 500 K)", load_ethanol()),
                ("bundled Si (DFT, mlearn)", load_silicon())]
    if args.frames is not None:
        if args.frames < 1:
            raise CLIError(f"--frames must be >= 1; got {args.frames}")
        sets = [(name, frames[: args.frames]) for name, frames in sets]
    if args.n_jobs == 0:
        raise CLIError("--n-jobs must not be 0 (use 1, a positive count or -1)")
    header = (f"{'data':<36} {'descriptor':<10} {'frames':>6} {'atoms':>7} {'features':>8} "
              f"{'pairs':>8} {'gradients MiB':>13} {'time s':>8} {'ms/atom':>8} "
              f"{'peak MiB':>9}")
    print(f"kernelpot {__version__}: descriptors with analytic gradients")
    print(header)
    print("-" * len(header))
    for name, frames in sets:
        for label, descriptor in _default_descriptors(frames, args.descriptor, args.r_cut):
            descriptor.compute(frames[0])  # compile / warm up outside the timing
            tracemalloc.start()
            start = time.perf_counter()
            results = descriptor.compute_many(frames, n_jobs=args.n_jobs,
                                              verbose=int(sys.stderr.isatty() and not args.quiet))
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            n_atoms = sum(r.n_atoms for r in results)
            n_pairs = sum(len(r.pairs) for r in results)
            grad_mib = sum(r.gradients.nbytes for r in results) / 2**20
            print(f"{name[:36]:<36} {label:<10} {len(frames):>6} {n_atoms:>7} "
                  f"{results[0].n_features:>8} {n_pairs:>8} {grad_mib:>13.1f} "
                  f"{elapsed:>8.3f} {1e3 * elapsed / n_atoms:>8.3f} {peak / 2**20:>9.1f}")
            sum_rule = max(float(np.abs(np.add.reduceat(r.gradients, np.searchsorted(
                r.pairs[:, 0], np.arange(r.n_atoms)), axis=0)).max()) for r in results)
            logger.info("%s on %s: max |sum_j dX_i/dr_j| = %.1e (translation sum rule)",
                        label, name, sum_rule)
    print("time excludes the first (compiling) call; peak MiB is traced Python/NumPy memory "
          "while computing, results included.")
    return 0


def _cmd_demo(args) -> int:
    from kernelpot import ACSF, SOAP, SparseGPPotential, metrics
    from kernelpot.datasets import load_ethanol

    frames = load_ethanol()
    index = np.arange(len(frames))
    test = [frames[i] for i in index[index % 4 == 3]]
    pool = index[index % 4 != 3]
    if not 1 <= args.n_train <= len(pool):
        raise CLIError(f"--n-train must be between 1 and {len(pool)}; got {args.n_train}")
    train_idx = np.random.default_rng(args.seed).permutation(pool)[: args.n_train]
    train = [frames[i] for i in train_idx]
    species = ["H", "C", "O"]
    descriptor = (SOAP(species, 4.0, n_max=6, l_max=4, sigma=0.4) if args.descriptor == "soap"
                  else ACSF.from_grid(species, 4.0, n_radial=8, n_angular=8))
    verbose = int(sys.stderr.isatty() and not args.quiet)
    print(f"kernelpot {__version__} demo: sparse GP on GFN2-xTB ethanol (500 K), "
          f"{len(train)} training and {len(test)} test frames, {args.descriptor.upper()}")
    model = SparseGPPotential(descriptor, random_state=args.seed, verbose=verbose)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    print(f"fitted in {fit_s:.1f} s with {sum(model.n_inducing_.values())} inducing "
          f"environments {model.n_inducing_}")
    print(f"learned noise: energy {1e3 * model.energy_noise_:.2f} meV/atom, forces "
          f"{1e3 * model.force_noise_:.1f} meV/Å; signal {model.signal_std_:.2f} eV")
    start = time.perf_counter()
    energies, energy_std = model.predict(test, return_std=True)
    forces, forces_std = model.predict_forces(test, return_std=True)
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
    return 0


def main(argv=None) -> int:
    """Run the ``kernelpot`` command line; return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        print(f"kernelpot {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kernelpot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
