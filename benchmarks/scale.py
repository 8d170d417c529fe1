"""Fit memory and time as the training set grows: the in-memory against the streamed fit.

Data: EMT (ASE) alloy cells of Cu, Ni and Al (fcc supercells of 32, 48 or 108 atoms with
a random composition, a random strain of up to 3 % and a random rattle of 0.05–0.15 Å,
standing in for temperatures), labelled with energy, forces and stress, written once to
extended XYZ files under ``--data`` and read back with ``ase.io``. Each fit runs in its
own process (``--one``), so its peak resident memory (``ru_maxrss``) is its own.

Both fits use the default SOAP model with ``n_sparse`` inducing environments per
element (``--m``), one BLAS thread and no LOSO calibration (``calibration=None``,
which the streamed fit would compute in a second pass). The in-memory fit holds the
whole design (``design_memory_limit`` above its size); the streamed one gets
``--limit`` GiB (blocks of a quarter of it). Printed per size: force rows, the design's
size, fit time and peak memory of each, and the largest weight difference between the
two models.

Usage::

    python benchmarks/scale.py [--sizes 50,200,800] [--m 300] [--limit 0.05]
    python benchmarks/scale.py --sizes 8000 --m 1333 --limit 1.0 --only streamed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ELEMENTS = ("Cu", "Ni", "Al")
REPEATS = ((2, 2, 2), (3, 2, 2), (3, 3, 3))  # 32, 48, 108 atoms of the cubic fcc cell


def make_frames(n: int, seed: int) -> list:
    """``n`` EMT-labelled alloy cells (energy, forces, stress)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(REPEATS[rng.integers(3)])
        atoms.symbols = rng.choice(ELEMENTS, size=len(atoms), p=(0.5, 0.3, 0.2))
        strain = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell @ (0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rng.uniform(0.05, 0.15), atoms.positions.shape)
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                  "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


def data_file(directory: Path, n: int) -> Path:
    """The extended XYZ file of the first ``n`` cells, written when missing."""
    from ase.io import write

    path = directory / f"emt_alloy_{n}.xyz"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        write(path, make_frames(n, seed=n))
    return path


def fit_one(path: Path, m: int, limit: float, weights_out: Path) -> dict:
    """Fit one model (in this process) and return its time and peak memory."""
    from ase.io import read

    from kernelpot import SOAP, SparseGPPotential

    frames = read(path, ":")
    model = SparseGPPotential(SOAP(list(ELEMENTS), 4.0, 6, 4, 0.4), method="sparse",
                              n_sparse=m, calibration=None, random_state=0,
                              design_memory_limit=limit)
    start = time.perf_counter()
    model.fit(frames)
    seconds = time.perf_counter() - start
    np.save(weights_out, model.alpha_)
    n_force = sum(3 * len(a) for a in frames)
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 2**20, "force_rows": n_force, "M": len(model.alpha_),
            "rows": n_force + 7 * len(frames)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,800", help="training cells per run")
    parser.add_argument("--m", type=int, default=300, help="inducing environments per element")
    parser.add_argument("--limit", type=float, default=0.05,
                        help="design_memory_limit of the streamed fit, GiB")
    parser.add_argument("--only", choices=("memory", "streamed"), default=None)
    parser.add_argument("--data", default="/tmp/kernelpot_scale")
    parser.add_argument("--one", nargs=4, metavar=("PATH", "M", "LIMIT", "WEIGHTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        path, m, limit, weights = args.one
        print(json.dumps(fit_one(Path(path), int(m), float(limit), Path(weights))))
        return
    import kernelpot

    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; one BLAS thread; SOAP 4 Å 6/4 σ 0.4, {args.m} inducing "
          f"per element, streamed limit {args.limit} GiB", flush=True)
    modes = {"memory": 1e6, "streamed": args.limit}
    if args.only:
        modes = {args.only: modes[args.only]}
    header = (f"{'cells':>6} {'force rows':>10} {'M':>5} {'design GiB':>10} "
              + " ".join(f"{m + ' s':>11} {m + ' GiB':>12}" for m in modes)
              + ("  |Δα|/|α|" if len(modes) == 2 else ""))
    lines = []
    for n in (int(s) for s in args.sizes.split(",")):
        path = data_file(Path(args.data), n)
        results = {}
        for mode, limit in modes.items():
            weights = Path(args.data) / f"alpha_{n}_{mode}.npy"
            out = subprocess.run([sys.executable, __file__, "--one", str(path), str(args.m),
                                  str(limit), str(weights)], capture_output=True, text=True,
                                 check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode]["alpha"] = np.load(weights)
            print(f"  {n} cells, {mode}: {results[mode]['seconds']:.1f} s, "
                  f"{results[mode]['peak_gib']:.2f} GiB peak", flush=True)
        first = next(iter(results.values()))
        design = first["rows"] * first["M"] * 8 / 2**30
        row = (f"{n:>6} {first['force_rows']:>10} {first['M']:>5} {design:>10.3f} "
               + " ".join(f"{r['seconds']:>11.1f} {r['peak_gib']:>12.2f}"
                          for r in results.values()))
        if len(results) == 2:
            a, b = results["memory"]["alpha"], results["streamed"]["alpha"]
            row += f"  {np.max(np.abs(a - b)) / np.max(np.abs(a)):.1e}"
        lines.append(row)
    print("\n" + header)
    print("\n".join(lines))
    print("Peak GiB: the fitting process's maximum resident memory (ru_maxrss), Python "
          "and the descriptors included.")


if __name__ == "__main__":
    main()
