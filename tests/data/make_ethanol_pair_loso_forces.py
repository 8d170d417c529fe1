"""Regenerate ``ethanol_pair_loso_forces.npz``: LOSO force terms where the map's search stalled.

A sparse model of 6 bundled ethanol frames (SOAP 3.5 Å, 3/2, σ 0.4, a two-body term of
4 basis functions to 3 Å, 6 / 3 / 2 inducing H / C / O environments, random_state 0),
updated with 2 more frames (2 new inducing environments); the file holds the
leave-one-structure-out force errors and raw variance terms of its 8 structures
(``posterior_.loso.calibration_terms()["forces"]``, 216 values). The fitted projection
weight is about 0.005, so ``u = post + w² proj`` sits far below the raw terms' centre:
from there L-BFGS-B stopped at different points of the valley where ``c`` and ``p`` trade
off for inputs 1e-9 apart (one or two BLAS threads gave stds 16 % apart).

Usage: ``python tests/data/make_ethanol_pair_loso_forces.py`` (a few seconds).
"""

from pathlib import Path

import numpy as np
from ase.io import read

from kernelpot import SOAP, SparseGPPotential, TwoBody

HERE = Path(__file__).resolve().parent


def main() -> None:
    frames = read(HERE / "ethanol_xtb_500K_60.xyz", ":")
    model = SparseGPPotential(SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4),
                              two_body=TwoBody(r_cut=3.0, n_basis=4),
                              n_sparse={"H": 6, "C": 3, "O": 2}, random_state=0,
                              n_restarts=0, method="sparse", incremental=True)
    model.fit(frames[:6]).update(frames[6:8], n_inducing=2)
    errors, posterior, projection, noise = model.posterior_.loso.calibration_terms()["forces"]
    np.savez(HERE / "ethanol_pair_loso_forces.npz", errors=errors, posterior=posterior,
             projection=projection, noise=noise)


if __name__ == "__main__":
    main()
