"""MD through ``KernelPotCalculator``: stds at every step against stds when read.

The calculator's default (``lazy=True``) computes the stds when ``results`` is first asked
for them; ``lazy=False`` computes them with the mean at every step, as the on-the-fly
learner needs. This script fits the default model (``method="auto"``) and the sparse
model on ``--n`` shared GFN2-xTB ethanol frames (the benchmarks' split), runs Langevin MD
(500 K, 0.5 fs) with each calculator mode in the same process, and prints ms per step and
their ratio, and the largest force std of the last step read from each (equal: the lazy
stds are the eager ones, computed later).

Usage::

    python benchmarks/calculator_md.py --n 100 --steps 30
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read
from ase.md.langevin import Langevin

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernelpot  # noqa: E402
from kernelpot import SOAP, KernelPotCalculator, SparseGPPotential  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xtb" / "ethanol_500K.xyz"


def _run(model, start, lazy: bool, steps: int) -> tuple[float, float]:
    """Return ms per Langevin step and the last step's largest force std (eV/Å)."""
    atoms = start.copy()
    atoms.calc = KernelPotCalculator(model, lazy=lazy)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=500, friction=0.01 / units.fs,
                   fixcm=False, rng=np.random.default_rng(0))
    dyn.run(2)  # compiled, cached
    begin = time.perf_counter()
    dyn.run(steps)
    per_step = 1e3 * (time.perf_counter() - begin) / steps
    return per_step, float(atoms.calc.results["forces_std"].max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="training frames (default 100)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus")
    frames = read(args.data, ":")
    index = np.arange(len(frames))
    test, rest = index[index % 4 == 3], index[index % 4 != 3]
    train = [frames[i] for i in np.random.default_rng(0).permutation(rest)[:args.n]]
    descriptor = SOAP(["H", "C", "O"], 4.0, n_max=6, l_max=4, sigma=0.4)
    rows = []
    for method in ("auto", "sparse"):
        model = SparseGPPotential(descriptor, method=method, random_state=0).fit(train)
        eager, std_eager = _run(model, frames[test[0]], False, args.steps)
        lazy, std_lazy = _run(model, frames[test[0]], True, args.steps)
        rows.append((f"{method} ({model.method_})", eager, lazy, std_eager, std_lazy))
    print(f"\nLangevin MD, ethanol, {args.steps} steps, model of {args.n} frames; ms/step")
    print(f"{'model':<16} {'stds every step':>16} {'stds when read':>15} {'ratio':>7} "
          f"{'last max std eager / lazy, meV/Å':>34}")
    for name, eager, lazy, std_eager, std_lazy in rows:
        print(f"{name:<16} {eager:16.1f} {lazy:15.1f} {eager / lazy:7.1f} "
              f"{1e3 * std_eager:17.3f} / {1e3 * std_lazy:.3f}")


if __name__ == "__main__":
    main()
