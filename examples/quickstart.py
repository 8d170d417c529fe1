"""
Quick start
===========

Fit a sparse GP potential on the bundled ethanol data, predict with uncertainty, save and
reload it, and run a short MD with the ASE calculator.

Run: ``python examples/quickstart.py``   (about a minute on two cores)
"""

import os

import numpy as np
from ase import units
from ase.md.langevin import Langevin

from kernelpot import SOAP, KernelPotCalculator, SparseGPPotential, load, load_ethanol, metrics

# the documentation's build sets KERNELPOT_DOCS_QUICK=1: fewer training frames and MD
# steps, no progress bars (the gallery would print every update of them)
QUICK = os.environ.get("KERNELPOT_DOCS_QUICK") == "1"

# %%
# Fit on bundled frames, keep others for testing
# ----------------------------------------------

frames = load_ethanol()  # 200 GFN2-xTB frames, energies in eV, forces in eV/Å
train, test = frames[:150:2], frames[1::4]
if QUICK:
    train = frames[:150:6]

model = SparseGPPotential(SOAP(["H", "C", "O"], r_cut=4.0, n_max=6, l_max=4, sigma=0.4),
                          random_state=0, verbose=0 if QUICK else 1)  # 1: progress bars
model.fit(train)
print(f"learned noise: {1e3 * model.energy_noise_:.2f} meV/√atom, "
      f"{1e3 * model.force_noise_:.3g} meV/Å")

# %%
# Forces with their (calibrated) std
# ----------------------------------

forces, forces_std = model.predict_forces(test, return_std=True)
reference = [atoms.get_forces() for atoms in test]
print(f"test force MAE {1e3 * metrics.mae(forces, reference):.1f} meV/Å; "
      f"{100 * metrics.coverage(forces, reference, forces_std, 1):.0f}% within one std")
if QUICK:  # the gallery shows the parity plot of the test forces
    from kernelpot.plotting import plot_parity

    plot_parity(forces, reference, forces_std, "quickstart_parity.png")

# %%
# Save, reload, and run MD with the model as ASE calculator
# ---------------------------------------------------------

model.save("ethanol_model.npz")
model = load("ethanol_model.npz")

atoms = test[0].copy()
atoms.calc = KernelPotCalculator(model)
dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=500, friction=0.01 / units.fs,
               rng=np.random.default_rng(0))
n_blocks, block = (2, 10) if QUICK else (5, 20)
for step in range(n_blocks):
    dyn.run(block)
    print(f"step {block * (step + 1):4d}: E = {atoms.get_potential_energy():.3f} eV, "
          f"max force std {atoms.calc.results['forces_std'].max():.3f} eV/Å")
