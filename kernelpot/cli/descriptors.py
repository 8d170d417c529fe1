"""``kernelpot descriptors``: features with analytic gradients, timing and memory."""

from __future__ import annotations

import logging
import sys
import time
import tracemalloc

import numpy as np

from kernelpot import __version__
from kernelpot.cli._common import CLIError, _default_descriptors, _read_frames

logger = logging.getLogger("kernelpot")


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
