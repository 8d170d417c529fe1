"""Fit memory and time as the training set grows: the in-memory against the streamed fit.

Data: EMT (ASE) alloy cells of Cu, Ni and Al (fcc supercells of 32, 48 or 108 atoms with
a random composition, a random strain of up to 3 % and a random rattle of 0.05–0.15 Å,
standing in for temperatures), labelled with energy, forces and stress, written once to
extended XYZ files under ``--data`` and read back with ``ase.io``. Each fit runs in its
own process (``--one``), so its peak resident memory (``ru_maxrss``) is its own.

Each fit's memory estimate (``estimate_fit_memory``, made before it) is printed beside
its measured peak, added to the process's resident peak before the fit.

Both fits use the default SOAP model with ``n_sparse`` inducing environments per
element (``--m``), one BLAS thread and no LOSO calibration (``calibration=None``,
which the streamed fit would compute in a second pass). The in-memory fit holds the
whole design (``design_memory_limit`` above its size); the streamed one gets
``--limit`` GiB (blocks of a quarter of it). Printed per size: force rows, the design's
size, fit time and peak memory of each, and the largest weight difference between the
two models.

``--lazy`` fits from the file's path (``kernelpot.FrameFiles``: the cells read when
used) instead of a list of the cells read first.

``--dask 1,2`` also fits each size on a ``distributed.LocalCluster`` of 1, then 2,
worker processes (one thread and one BLAS thread each, a 3 GiB memory limit each;
``fit(frames, client=client)``, the same model and ``design_memory_limit`` as the
streamed fit, which it needs as its baseline), each cluster from its own process
(``--one-dask``). Printed per size and mode: fit time, the client process's peak
memory (the scheduler runs in it), each worker's peak memory (its ``ru_maxrss``, read
on the worker after the fit), the speed-up over one worker and the largest weight
difference from the streamed fit, with the 1-minute load average before and after
each fit (other jobs on the machine inflate the times). The cluster's log (INFO: a
worker's death and its cause) goes to ``dask_<cells>_<N>.log`` under ``--data``.

Usage::

    python benchmarks/scale.py [--sizes 50,200,800] [--m 300] [--limit 0.05]
    python benchmarks/scale.py --sizes 8000 --m 1333 --limit 1.0 --only streamed
    python benchmarks/scale.py --sizes 400 --m 300 --limit 0.05 --only streamed --dask 1,2
    python benchmarks/scale.py --sizes 1600 --m 300 --limit 0.05 --only streamed --lazy
"""

from __future__ import annotations

import argparse
import json
import logging
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


def make_model(m: int, limit: float):
    """The benchmark's model: default SOAP, ``m`` inducing environments per element."""
    from kernelpot import SOAP, SparseGPPotential

    return SparseGPPotential(SOAP(list(ELEMENTS), 4.0, 6, 4, 0.4), method="sparse",
                             n_sparse=m, calibration=None, random_state=0,
                             design_memory_limit=limit)


def peak_gib() -> float:
    """This process's peak resident memory (``ru_maxrss``), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def fit_one(path: Path, m: int, limit: float, weights_out: Path, lazy: bool = False) -> dict:
    """Fit one model (in this process) and return its time and peak memory.

    ``lazy`` fits from the file's path (``kernelpot.FrameFiles``: structures read when
    used) instead of a list of the structures read first.
    """
    from ase.io import read

    from kernelpot import FrameFiles

    frames = FrameFiles(path) if lazy else read(path, ":")
    model = make_model(m, limit)
    estimate = model.estimate_fit_memory(frames)
    before = peak_gib()  # the interpreter, libraries and structures read, before the fit
    start = time.perf_counter()
    model.fit(frames)
    seconds = time.perf_counter() - start
    np.save(weights_out, model.alpha_)
    n_atoms = frames.n_atoms if lazy else np.array([len(a) for a in frames])
    n_force = int(3 * n_atoms.sum())
    return {"seconds": seconds, "peak_gib": peak_gib(), "force_rows": n_force,
            "M": len(model.alpha_), "rows": n_force + 7 * len(frames),
            "estimate_gib": estimate.peak_gib, "before_gib": before}


def fit_dask(path: Path, m: int, limit: float, weights_out: Path, n_workers: int,
             lazy: bool = False) -> dict:
    """Fit one model on a fresh ``LocalCluster`` of ``n_workers`` processes.

    Parameters
    ----------
    path : Path
        The extended XYZ file of the training cells.
    m : int
        Inducing environments per element.
    limit : float
        ``design_memory_limit``, GiB (a block is also at most half a worker thread's
        share of its 3 GiB, less the ``M × M`` factors).
    weights_out : Path
        Where the fitted weights ``alpha_`` are saved (``.npy``).
    n_workers : int
        Worker processes, one thread each.
    lazy : bool, default=False
        Fit from a :class:`kernelpot.FrameFiles` over ``path`` (the client reads each
        structure when it is used) instead of a list of the structures read first.

    Returns
    -------
    dict
        ``seconds`` (of ``fit``), ``peak_gib`` (this process's, the client's and the
        scheduler's), ``worker_peak_gib`` (each worker's ``ru_maxrss``, in address
        order; the workers are fresh processes, so this is their peak during the fit),
        ``force_rows`` and ``M``.
    """
    for name in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS"):
        os.environ[name] = "1"  # before the cluster starts: its workers inherit them
    from ase.io import read
    from distributed import Client, LocalCluster

    from kernelpot import FrameFiles

    frames = FrameFiles(path) if lazy else read(path, ":")
    model = make_model(m, limit)
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      memory_limit="3GiB", dashboard_address=":0",
                      silence_logs=logging.INFO) as cluster, \
            Client(cluster) as client:
        start = time.perf_counter()
        model.fit(frames, client=client)
        seconds = time.perf_counter() - start
        workers = client.run(peak_gib)
    np.save(weights_out, model.alpha_)
    return {"seconds": seconds, "peak_gib": peak_gib(),
            "worker_peak_gib": [workers[w] for w in sorted(workers)],
            "force_rows": int(3 * (frames.n_atoms.sum() if lazy
                                   else sum(len(a) for a in frames))),
            "M": len(model.alpha_)}


def run_fit(args: list[str], log: Path | None = None) -> dict:
    """Run ``scale.py`` with ``args`` in a subprocess; return its result and load averages.

    ``log``, if given, receives the subprocess's standard error.
    """
    load_before = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    load_after = os.getloadavg()[0]
    if log is not None:
        log.write_text(out.stderr)
    if out.returncode:
        sys.stderr.write(out.stderr)
        out.check_returncode()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = (load_before, load_after)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,800", help="training cells per run")
    parser.add_argument("--m", type=int, default=300, help="inducing environments per element")
    parser.add_argument("--limit", type=float, default=0.05,
                        help="design_memory_limit of the streamed fit, GiB")
    parser.add_argument("--only", choices=("memory", "streamed"), default=None)
    parser.add_argument("--data", default="/tmp/kernelpot_scale")
    parser.add_argument("--dask", default=None, metavar="N[,N...]",
                        help="also fit on a LocalCluster of N worker processes (3 GiB each), "
                             "against the streamed fit")
    parser.add_argument("--lazy", action="store_true",
                        help="the fits read the cells from the file when used "
                             "(FrameFiles), not from a list read first")
    parser.add_argument("--one", nargs=5, metavar=("PATH", "M", "LIMIT", "WEIGHTS", "LAZY"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--one-dask", nargs=5,
                        metavar=("PATH", "M", "LIMIT", "WEIGHTS", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        path, m, limit, weights, lazy = args.one
        print(json.dumps(fit_one(Path(path), int(m), float(limit), Path(weights),
                                 lazy == "1")))
        return
    if args.one_dask:
        path, m, limit, weights, n_workers = args.one_dask
        print(json.dumps(fit_dask(Path(path), int(m), float(limit), Path(weights),
                                  int(n_workers), args.lazy)))
        return
    dask_workers = [int(s) for s in args.dask.split(",")] if args.dask else []
    if dask_workers and args.only == "memory":
        parser.error("--dask compares with the streamed fit: drop --only memory")
    import kernelpot

    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus; one BLAS thread; SOAP 4 Å 6/4 σ 0.4, {args.m} inducing "
          f"per element, streamed limit {args.limit} GiB"
          + ("; cells read from the file when used" if args.lazy else ""), flush=True)
    modes = {"memory": 1e6, "streamed": args.limit}
    if args.only:
        modes = {args.only: modes[args.only]}
    header = (f"{'cells':>6} {'force rows':>10} {'M':>5} {'design GiB':>10} "
              + " ".join(f"{m + ' s':>11} {m + ' GiB':>12} {'estimated':>9}" for m in modes)
              + ("  |Δα|/|α|" if len(modes) == 2 else ""))
    lines, dask_lines = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        path = data_file(Path(args.data), n)
        results = {}
        for mode, limit in modes.items():
            weights = Path(args.data) / f"alpha_{n}_{mode}.npy"
            results[mode] = run_fit(["--one", str(path), str(args.m), str(limit),
                                     str(weights), "1" if args.lazy else "0"])
            results[mode]["alpha"] = np.load(weights)
            print(f"  {n} cells, {mode}: {results[mode]['seconds']:.1f} s, "
                  f"{results[mode]['peak_gib']:.2f} GiB peak (estimated "
                  f"{results[mode]['estimate_gib']:.2f} GiB beside "
                  f"{results[mode]['before_gib']:.2f} GiB before the fit), load "
                  "{:.2f} -> {:.2f}".format(*results[mode]["load"]), flush=True)
        if dask_workers:
            dask_lines += dask_rows(args, n, path, dask_workers, results["streamed"])
        first = next(iter(results.values()))
        design = first["rows"] * first["M"] * 8 / 2**30
        row = (f"{n:>6} {first['force_rows']:>10} {first['M']:>5} {design:>10.3f} "
               + " ".join(f"{r['seconds']:>11.1f} {r['peak_gib']:>12.2f} "
                          f"{r['before_gib'] + r['estimate_gib']:>9.2f}"
                          for r in results.values()))
        if len(results) == 2:
            a, b = results["memory"]["alpha"], results["streamed"]["alpha"]
            row += f"  {np.max(np.abs(a - b)) / np.max(np.abs(a)):.1e}"
        lines.append(row)
    print("\n" + header)
    print("\n".join(lines))
    print("Peak GiB: the fitting process's maximum resident memory (ru_maxrss), Python "
          "and the descriptors included. Estimated: the process's resident peak before "
          "the fit plus the fit's estimate (SparseGPPotential.estimate_fit_memory).")
    if dask_lines:
        print(f"\n{'cells':>6} {'force rows':>10} {'M':>5} {'mode':>9} {'fit s':>7} "
              f"{'client GiB':>10} {'worker peaks GiB':>17} {'speed-up':>8} "
              f"{'|Δα|/|α|':>8}  load 1 min before -> after")
        print("\n".join(dask_lines))
        print("Client GiB: the client process's peak (the scheduler included); worker "
              "peaks: each worker process's (3 GiB limit each); speed-up: the dask 1 fit's "
              "time over this one's; |Δα|/|α|: largest weight difference from the "
              "streamed fit over its largest weight.")


def dask_rows(args, n: int, path: Path, dask_workers: list[int], streamed: dict) -> list[str]:
    """Fit ``n`` cells on clusters of ``dask_workers`` workers; the table's rows.

    Parameters
    ----------
    args : argparse.Namespace
        The command line (``m``, ``limit``, ``data``).
    n : int
        Training cells.
    path : Path
        Their extended XYZ file.
    dask_workers : list of int
        Workers per cluster, one fit each.
    streamed : dict
        The streamed fit's result (``seconds``, ``peak_gib``, ``load``, ``alpha``), the
        baseline.

    Returns
    -------
    list of str
        One row for the streamed fit, then one per cluster.
    """
    results = {}
    for workers in dask_workers:
        weights = Path(args.data) / f"alpha_{n}_dask{workers}.npy"
        log = Path(args.data) / f"dask_{n}_{workers}.log"
        results[workers] = run_fit(["--one-dask", str(path), str(args.m), str(args.limit),
                                    str(weights), str(workers)]
                                   + (["--lazy"] if args.lazy else []), log)
        results[workers]["alpha"] = np.load(weights)
        warned = sum(any(flag in line for flag in (" - WARNING - ", " - ERROR - ", "Warning:"))
                     for line in log.read_text().splitlines())
        print(f"  {n} cells, dask {workers}: {results[workers]['seconds']:.1f} s, client "
              f"{results[workers]['peak_gib']:.2f} GiB, workers "
              + " ".join(f"{g:.2f}" for g in results[workers]["worker_peak_gib"])
              + " GiB, load {:.2f} -> {:.2f}".format(*results[workers]["load"])
              + f"; {warned} warning or error lines in {log}", flush=True)
    one = results.get(1, {}).get("seconds")
    reference = streamed["alpha"]
    first = next(iter(results.values()))
    rows = []
    for mode, r in [("streamed", streamed)] + [(f"dask {w}", results[w]) for w in results]:
        speedup = f"{one / r['seconds']:.2f}" if one else "-"
        if mode == "streamed":
            workers, delta = "-", "-"
        else:
            workers = " ".join(f"{g:.2f}" for g in r["worker_peak_gib"])
            delta = f"{np.max(np.abs(r['alpha'] - reference)) / np.max(np.abs(reference)):.1e}"
        rows.append(f"{n:>6} {first['force_rows']:>10} {first['M']:>5} {mode:>9} "
                    f"{r['seconds']:>7.1f} {r['peak_gib']:>10.2f} {workers:>17} "
                    f"{speedup:>8} {delta:>8}  " + "{:.2f} -> {:.2f}".format(*r["load"]))
    return rows


if __name__ == "__main__":
    main()
