"""What an on-the-fly run costs per step and per reference call once the model is large.

Issue 21 (part 4 and 5) asks that a grown model keep MD steps and reference calls cheap:
a model file of at most 20 MB, a checkpoint of at most 100 MB, a reference call
(update, occasional re-optimisation, checkpoint) of seconds, and an MD step with every
force std of at most 60 ms on the issue's case. That case is the default sparse model of
``--n`` EMT Cu₃Au cells of 32 atoms (benchmarks/defaults.py's frames, the CLI's periodic
SOAP: 5 Å, n_max 8, l_max 6, σ 0.5), fitted with ``incremental=True`` as an on-the-fly
run keeps it.

The script fits that model, then measures in one process:

* the model file (``save``) and the checkpoint (``save(training_state=True)``): size
  and write time;
* a resume: ``load`` plus ``restore_training`` of the checkpoint, and whether the
  resumed model predicts what the saved one did;
* one reference call's model work: ``update`` with one new labelled cell (every
  environment inducing, as the learner's default), without and with re-optimisation
  of the hyperparameters;
* one MD step through ``KernelPotCalculator``: without stds, with the energy std, with
  every force std (best of ``--repeats``).

Usage::

    python benchmarks/otf_cost.py --n 80
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import cu3au_frames  # noqa: E402

import kernelpot  # noqa: E402
from kernelpot import SOAP, KernelPotCalculator, SparseGPPotential, load  # noqa: E402


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _step_ms(model, atoms, uncertainty, repeats: int) -> float:
    """Best wall time of one energy + forces evaluation of a displaced copy, ms."""
    best = np.inf
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        work = atoms.copy()
        work.positions += rng.normal(0, 0.01, work.positions.shape)
        work.calc = KernelPotCalculator(model, uncertainty=uncertainty, lazy=False)
        start = time.perf_counter()
        work.get_forces()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=80, help="training cells (default 80)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus")
    frames = cu3au_frames(args.n + 2, seed=0)
    train, new = frames[:args.n], frames[args.n:]
    descriptor = SOAP(["Au", "Cu"], 5.0, n_max=8, l_max=6, sigma=0.5, periodic=True)
    model = SparseGPPotential(descriptor, method="sparse", incremental=True, verbose=False)
    _, fit_s = _timed(lambda: model.fit(train))
    M = int(sum(model.n_inducing_.values()))
    print(f"fit: {args.n} cells, M = {M} {model.n_inducing_}, {fit_s:.1f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, save_s = _timed(lambda: model.save(Path(tmp) / "model.npz"))
        rows.append(("model file", os.path.getsize(path) / 2**20, save_s))
        path, save_s = _timed(lambda: model.save(Path(tmp) / "checkpoint.npz",
                                                 training_state=True))
        rows.append(("checkpoint", os.path.getsize(path) / 2**20, save_s))
        for name, size, seconds in rows:
            print(f"{name:<11} {size:8.1f} MiB, written in {seconds:.2f} s")
        resumed, load_s = _timed(lambda: load(path))
        _, restore_s = _timed(lambda: resumed.restore_training(train))
    test = new[:1]
    same_f = np.max(np.abs(resumed.predict_forces(test)[0] - model.predict_forces(test)[0]))
    same_s = np.max(np.abs(resumed.predict_forces(test, return_std=True)[1][0]
                           - model.predict_forces(test, return_std=True)[1][0]))
    print(f"resume: load {load_s:.2f} s + restore_training {restore_s:.2f} s; largest "
          f"difference to the saved model: forces {same_f:.1e} eV/Å, force std "
          f"{same_s:.1e} eV/Å")
    _, update_s = _timed(lambda: model.update([new[0]], n_inducing="all"))
    _, reopt_s = _timed(lambda: model.update([new[1]], n_inducing="all", optimize=True))
    print(f"reference call, model work: update {update_s:.2f} s; update with "
          f"re-optimisation {reopt_s:.2f} s (M = {sum(model.n_inducing_.values())})")
    atoms = new[1]
    steps = {label: _step_ms(model, atoms, uncertainty, args.repeats)
             for label, uncertainty in (("no std", False), ("energy std", "energy"),
                                        ("every force std", True))}
    n_atoms = len(atoms)
    print("\nMD step (one energy + forces evaluation), best of", args.repeats)
    for label, ms in steps.items():
        print(f"  {label:<16} {ms:8.1f} ms/step  {ms / n_atoms:6.2f} ms/atom")
    print("\nTargets (issue 21): model file <= 20 MB; checkpoint <= 100 MB; a reference "
          "call in seconds; <= 60 ms/step with every force std; <= 1 ms/atom without.")


if __name__ == "__main__":
    main()
