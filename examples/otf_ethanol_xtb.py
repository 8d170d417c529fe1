"""
On-the-fly learning of ethanol with GFN2-xTB
============================================

On-the-fly learning of ethanol with GFN2-xTB (tblite) as the reference.

Langevin MD at 500 K, 0.5 fs steps, 5 ps, starting from a model of five labelled
frames of the bundled data (one frame is enough for a crystal, see otf_cu_emt.py; a
molecule's fast vibrations need a model that does not drive the first few
femtoseconds off), with the learner's default (calibrated) threshold. Needs the xtb
extra: ``pip install -e ".[xtb]"``. Prints a summary, the final model's force error on
100 bundled xTB frames it never saw, and writes otf_ethanol_xtb.png.

Run: ``python examples/otf_ethanol_xtb.py``
"""

import os
import shutil

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from tblite.ase import TBLite

from kernelpot import SOAP, OnTheFlyLearner, SparseGPPotential, load_ethanol, metrics
from kernelpot.plotting import plot_otf_log

# the documentation's build sets KERNELPOT_DOCS_QUICK=1: 30 steps (15 fs)
QUICK = os.environ.get("KERNELPOT_DOCS_QUICK") == "1"
STEPS, DIRECTORY = (30 if QUICK else 10_000), "otf_ethanol_xtb"
shutil.rmtree(DIRECTORY, ignore_errors=True)

# %%
# Langevin MD from a model of five bundled frames
# -----------------------------------------------

bundled = load_ethanol()
atoms = bundled[0].copy()
thermalize_momenta(atoms, temperature_K=500, rng=np.random.default_rng(0))
dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=500, friction=0.01 / units.fs,
               fixcm=False, rng=np.random.default_rng(1))
# method="auto" (the default): the exact model while it is cheap (here the whole run),
# then the sparse one; the fitted model goes to the learner as fit left it
model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, n_max=6, l_max=4, sigma=0.4),
                          random_state=0).fit(bundled[0:100:20])

# %%
# Learn on the fly with GFN2-xTB as the reference
# -----------------------------------------------

reference = TBLite(method="GFN2-xTB", verbosity=0)
# calls may come every 3 steps (1.5 fs): with the default 10 the young model drove the
# molecule to thousands of kelvin between calls (measured)
learner = OnTheFlyLearner(model, reference, directory=DIRECTORY, min_interval=3,
                          verbose=1, status_every=500)  # a line per call, status lines
learner.run(dyn, STEPS)

# %%
# Test on bundled frames the model never saw
# ------------------------------------------

held_out = bundled[100:]
mae = metrics.mae(learner.model.predict_forces(held_out), [a.get_forces() for a in held_out])
print(f"{learner.n_reference_calls} xTB calls in {STEPS} steps "
      f"(threshold {learner.current_threshold:.3f} eV/Å); model: {learner.model.method_}, "
      f"{learner.model.posterior_.n_training_structures} structures; force MAE on 100 "
      f"held-out 500 K xTB frames {1e3 * mae:.1f} meV/Å")

# %%
# The run: largest force std, threshold and reference calls
# ---------------------------------------------------------

plot_otf_log(DIRECTORY, "otf_ethanol_xtb.png", reference_name="xTB")
print("wrote otf_ethanol_xtb.png")
