"""Fit DFT silicon from the mlearn benchmark and compare with GAP's published settings.

Needs ../shared/data/mlearn (or pass the directory holding Si_training.xyz and
Si_test.xyz as the first argument). Uses the settings that beat GAP on Si in
benchmarks/mlearn.py: SOAP (5 Å, n_max 8, l_max 6, σ 0.5) with a normalised dot
product plus a small squared exponential on the raw features (it keeps the density
information the normalisation removes), noise levels fitted by marginal likelihood.
Prints test RMSEs beside GAP's (quoted, measured on the same files) and writes
mlearn_si_parity.png.

Run: python examples/mlearn_si.py [DATA_DIR]   (about two minutes on two cores)
"""

import sys
import time
from pathlib import Path

import numpy as np
from ase.io import read

from kernelpot import SOAP, NormalizedDotProduct, SparseGPPotential, SquaredExponential, metrics
from kernelpot.plotting import plot_parity

data = Path(sys.argv[1]) if len(sys.argv) > 1 else (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn")
if not (data / "Si_training.xyz").exists():
    sys.exit(f"no Si_training.xyz in {data}: pass the mlearn data directory")
train = read(data / "Si_training.xyz", ":")
test = read(data / "Si_test.xyz", ":")
descriptor = SOAP(["Si"], 5.0, n_max=8, l_max=6, sigma=0.5)

# length scale of the squared exponential: twice the median distance between environments
sample = np.concatenate([descriptor.create(a) for a in train[::10]])
pairs = np.random.default_rng(0).integers(len(sample), size=(2000, 2))
ell = 2.0 * float(np.median(np.linalg.norm(sample[pairs[:, 0]] - sample[pairs[:, 1]], axis=1)))
kernel = NormalizedDotProduct(2) + 0.1 * SquaredExponential(ell, "fixed")
kernel.k2.scale_bounds = "fixed"

model = SparseGPPotential(descriptor, kernel, random_state=0)
start = time.perf_counter()
model.fit(train)
print(f"fitted {len(train)} cells in {time.perf_counter() - start:.0f} s; learned noise "
      f"{1e3 * model.energy_noise_:.1f} meV/√atom, {1e3 * model.force_noise_:.0f} meV/Å")
energies = model.predict(test)
forces, forces_std = model.predict_forces(test, return_std=True)
n_atoms = np.array([len(a) for a in test])
ref_e = np.array([a.get_potential_energy() for a in test])
ref_f = [a.get_forces() for a in test]
e_rmse = 1e3 * np.sqrt(np.mean(((energies - ref_e) / n_atoms) ** 2))
print(f"test energy RMSE {e_rmse:.2f} meV/atom (GAP quoted 5.9), force RMSE "
      f"{metrics.rmse(forces, ref_f):.3f} eV/Å (GAP quoted 0.117)")
print("wrote", plot_parity(forces, ref_f, forces_std, "mlearn_si_parity.png"))
