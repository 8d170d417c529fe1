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
    for q in (p,):
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
