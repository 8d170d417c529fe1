"""
On-the-fly learning of copper with EMT
======================================

On-the-fly learning of fcc Cu with EMT as the reference (issue 5's setting).

32-atom cell, Langevin 5 fs, friction 0.01/fs, temperature ramped 300 -> 800 K in
steps every 100 MD steps over 2000 steps, starting from one labelled frame. Prints a
summary with the final model's force error on 20 independent 800 K EMT frames and
writes otf_cu_emt.png (max force std and reference calls against time).

Run: ``python examples/otf_cu_emt.py``   (a few minutes on two cores)
"""

import os
import shutil

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from kernelpot import SOAP, OnTheFlyLearner, SparseGPPotential, metrics
from kernelpot.plotting import plot_otf_log

# the documentation's build sets KERNELPOT_DOCS_QUICK=1: 200 steps, 5 test frames
QUICK = os.environ.get("KERNELPOT_DOCS_QUICK") == "1"
STEPS, DIRECTORY = (200 if QUICK else 2000), "otf_cu_emt"
N_TEST = 5 if QUICK else 20
shutil.rmtree(DIRECTORY, ignore_errors=True)

# %%
# Langevin MD with a temperature ramp
# -----------------------------------

atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
dyn = Langevin(atoms, 5 * units.fs, temperature_K=300, friction=0.01 / units.fs,
               fixcm=False, rng=np.random.default_rng(1))


def ramp():
    level = min(dyn.nsteps // 100, STEPS // 100 - 1) / (STEPS // 100 - 1)
    dyn.set_temperature(temperature_K=300 + 500 * level)


dyn.attach(ramp, interval=1)

# %%
# Learn on the fly from an unfitted model
# ---------------------------------------
#
# The learner calls EMT when the calibrated force std passes its threshold, adds the
# labelled cell to the model and goes on.

# sparse: EMT costs nothing, so cheap MD steps matter more than fewer calls (the default
# method="auto" learns a few cells of a metal with the exact model: a third of the
# error, but MD steps about 20 times dearer)
model = SparseGPPotential(SOAP(["Cu"], 4.5, n_max=6, l_max=4, sigma=0.5), random_state=0,
                          n_restarts=0, method="sparse")
# automatic threshold: 1.5 x the largest calibrated force std of a left-out training
# structure, at most 0.1 x the rms labelled force (see OnTheFlyLearner)
learner = OnTheFlyLearner(model, EMT(), directory=DIRECTORY, verbose=1)  # a line per call
learner.run(dyn, STEPS)

# %%
# Test on independent frames
# --------------------------

# independent test frames: EMT Langevin MD at 800 K, every 20th step after 500
test = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
test.calc = EMT()
thermalize_momenta(test, temperature_K=800, rng=np.random.default_rng(123))
md = Langevin(test, 5 * units.fs, temperature_K=800, friction=0.01 / units.fs,
              fixcm=False, rng=np.random.default_rng(123))
md.run(500)
frames = []
for _ in range(N_TEST):
    md.run(20)
    frames.append(test.copy())
    frames[-1].calc = EMT()
    frames[-1].get_forces()
mae = metrics.mae(learner.model.predict_forces(frames), [a.get_forces() for a in frames])
print(f"{learner.n_reference_calls} EMT calls in {STEPS} steps; model: "
      f"{learner.model.n_inducing_} inducing environments, learned force noise "
      f"{1e3 * learner.model.force_noise_:.3g} meV/Å; force MAE on {N_TEST} independent "
      f"800 K frames {1e3 * mae:.1f} meV/Å")

# %%
# The run: largest force std, threshold and reference calls
# ---------------------------------------------------------

plot_otf_log(DIRECTORY, "otf_cu_emt.png", reference_name="EMT")
print("wrote otf_cu_emt.png")
