"""How a bounded candidate pool for the inducing selection changes the model.

``SparseGPPotential(inducing_pool=P)`` bounds the descriptors the inducing selection
holds per element: farthest-point sampling (the default) streams the environments
through a pool of ``max(P, 4 n_sparse)``, reduced to ``2 n_sparse`` by farthest-point
sampling whenever it fills (``kernelpot.inducing.FarthestPointPool``); CUR and random
selection choose among ``max(P, n_sparse)`` drawn at random. The default, 50,000 per
element, bounds that memory at about 50,000 × 3 elements × 855 features × 8 bytes =
1.0 GB for the SOAP below; sets with fewer environments per element are unchanged.
This benchmark shrinks the pool on a set that exceeds it and measures what that costs.

Data: ``benchmarks/scale.py``'s EMT Cu/Ni/Al alloy cells (``--train`` cells, written to
and read from ``--data``), tested on ``--test`` other cells of the same kind. Model:
SOAP 4 Å 6/4 σ 0.4, ``--m`` inducing environments per element chosen by the default
farthest-point sampling, every other parameter at its default (likelihood search,
LOSO calibration). Each pool is fitted with ``--seeds`` random states (the draw and the
selection's start); printed per pool: the candidates per element, the force MAE (eV/Å),
the energy MAE (meV/atom), the share of force components within 1σ/2σ of the default
(calibrated) std, and the fit time, as mean ± spread over seeds. One BLAS thread.

Usage::

    python benchmarks/inducing_pool.py [--train 400] [--test 60] [--m 300]
        [--pools none,6000,1500] [--seeds 0,1] [--method fps]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import scale  # noqa: E402


def fit_and_score(train, test, m: int, pool: int | None, seed: int, method: str) -> dict:
    """Fit one model and score it on ``test``."""
    from kernelpot import SOAP, SparseGPPotential, metrics

    model = SparseGPPotential(SOAP(list(scale.ELEMENTS), 4.0, 6, 4, 0.4), method="sparse",
                              n_sparse=m, sparse_method=method, inducing_pool=pool,
                              random_state=seed)
    start = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - start
    forces, std = model.predict_forces(test, return_std=True)
    reference = [a.get_forces() for a in test]
    energies = model.predict(test)
    n_atoms = np.array([len(a) for a in test])
    e_ref = np.array([a.get_potential_energy() for a in test])
    return {"force_mae": metrics.mae(np.concatenate(forces), np.concatenate(reference)),
            "energy_mae": 1e3 * float(np.mean(np.abs(energies - e_ref) / n_atoms)),
            "within_1": metrics.coverage(np.concatenate(forces), np.concatenate(reference),
                                         np.concatenate(std), 1.0),
            "within_2": metrics.coverage(np.concatenate(forces), np.concatenate(reference),
                                         np.concatenate(std), 2.0),
            "seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--m", type=int, default=300, help="inducing environments per element")
    parser.add_argument("--pools", default="none,6000,1500")
    parser.add_argument("--method", default="fps", help="sparse_method")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--data", default="/tmp/kernelpot_scale")
    args = parser.parse_args(argv)
    from ase.io import read

    import kernelpot

    train = read(scale.data_file(Path(args.data), args.train), ":")
    test = scale.make_frames(args.test, seed=987654)
    counts = {z: sum(int((a.symbols == z).sum()) for a in train) for z in scale.ELEMENTS}
    print(f"kernelpot {kernelpot.__version__}; {args.train} training cells, environments "
          f"{counts}; {args.test} test cells; {args.m} inducing per element by "
          f"{args.method}; one BLAS thread", flush=True)
    rows = []
    for text in args.pools.split(","):
        pool = None if text == "none" else int(text)
        scores = [fit_and_score(train, test, args.m, pool, int(seed), args.method)
                  for seed in args.seeds.split(",")]
        table = {key: np.array([s[key] for s in scores]) for key in scores[0]}
        least = 4 * args.m if args.method == "fps" else args.m
        candidates = {z: c if pool is None else min(c, max(pool, least))
                      for z, c in counts.items()}
        rows.append((text, candidates, table))
        print(f"  pool {text}: " + ", ".join(f"{k} {v.mean():.4g}" for k, v in table.items()),
              flush=True)

    def cell(values, digits):
        return f"{values.mean():.{digits}f} ± {np.ptp(values) / 2:.{digits}f}"

    print(f"\n{'pool':>6} {'held per element':>28} {'force MAE eV/Å':>18} "
          f"{'energy meV/atom':>17} {'within 1σ':>15} {'within 2σ':>15} {'fit s':>13}")
    for text, candidates, t in rows:
        print(f"{text:>6} {str(list(candidates.values())):>28} {cell(t['force_mae'], 4):>18} "
              f"{cell(t['energy_mae'], 2):>17} {cell(t['within_1'], 3):>15} "
              f"{cell(t['within_2'], 3):>15} {cell(t['seconds'], 0):>13}")
    print("mean ± half the range over seeds " + args.seeds)


if __name__ == "__main__":
    main()
