"""Write the model files and predictions that ``tests/test_io.py`` checks loading against.

Run once, with the code whose file format must stay readable (2026-12-05: main at
5f4f290, before the estimator redesign of issue 18)::

    python tests/data/make_frozen_models.py

It writes ``frozen_models/*.npz`` (models saved by that code), ``copper.xyz`` (the
EMT frames of the two-body model) and
``frozen_models/expected.npz`` (what those models predicted right after fitting,
before saving). Do not regenerate them with newer code: their point is that files
written by older code still load and predict the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

HERE = Path(__file__).parent
OUT = HERE / "frozen_models"


def copper_frames(n_frames, seed):
    """Rattled, slightly strained 8-atom fcc Cu cells labelled by EMT (with stress)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat((2, 1, 1))
        atoms.set_cell(atoms.cell * (1 + rng.normal(0, 0.01)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def predictions(model, frames, stress=False):
    """Every prediction the frozen-model test compares, as a flat dict of arrays."""
    energies, e_std = model.predict(frames, return_std=True)
    forces, f_std = model.predict_forces(frames, return_std=True)
    out = {"energies": energies, "energy_std": e_std,
           "forces": np.concatenate(forces), "forces_std": np.concatenate(f_std)}
    epistemic = model.predict_forces(frames, return_std=True, std_type="epistemic")[1]
    out["forces_std_epistemic"] = np.concatenate(epistemic)
    out["local_energies"] = np.concatenate(model.predict_local_energies(frames))
    if stress:
        out["stress"] = model.predict_stress(frames)
    return out


def main():
    from kernelpot import SOAP, SparseGPPotential, TwoBody

    OUT.mkdir(exist_ok=True)
    ethanol = read(HERE / "ethanol_xtb_500K_60.xyz", ":")
    soap = SOAP(["H", "C", "O"], 3.5, n_max=3, l_max=2, sigma=0.4)
    expected = {}

    # sparse, FPS-chosen inducing points, calibrated (std factors + conformal scores)
    sparse = SparseGPPotential(soap, n_sparse=40, random_state=0).fit(ethanol[:12])
    sparse.calibrate(ethanol[40:60:2])
    sparse.save(OUT / "sparse_calibrated.npz")
    for key, value in predictions(sparse, ethanol[20:23]).items():
        expected[f"sparse_calibrated/{key}"] = value
    _, _, interval = sparse.predict(ethanol[20:23], return_std=True, return_interval=0.9)
    expected["sparse_calibrated/energy_interval"] = interval

    # exact, one signal std per element
    exact = SparseGPPotential(soap, method="exact", signal_per_element=True,
                              random_state=0).fit(ethanol[:4])
    exact.save(OUT / "exact_per_element.npz")
    for key, value in predictions(exact, ethanol[20:23]).items():
        expected[f"exact_per_element/{key}"] = value

    # sparse with a two-body term, incremental, saved with its training state
    write(OUT / "copper.xyz", copper_frames(7, seed=0))
    copper = read(OUT / "copper.xyz", ":")  # as the test reads them (extxyz rounds)
    pair_model = SparseGPPotential(SOAP(["Cu"], 3.5, n_max=3, l_max=2, sigma=0.5),
                                   two_body=TwoBody(r_cut=3.5, n_basis=6), n_sparse=20,
                                   incremental=True, random_state=0).fit(copper[:4])
    pair_model.save(OUT / "two_body_incremental.npz", training_state=True)
    for key, value in predictions(pair_model, copper[5:7], stress=True).items():
        expected[f"two_body_incremental/{key}"] = value
    # the same model after an update with one more structure and two inducing points
    pair_model.update([copper[4]], n_inducing=2)
    for key, value in predictions(pair_model, copper[5:7], stress=True).items():
        expected[f"two_body_incremental_updated/{key}"] = value

    np.savez(OUT / "expected.npz", **expected)
    for name in sorted(OUT.iterdir()):
        print(f"{name.name}: {name.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
