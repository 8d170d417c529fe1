"""
Learning curve on ethanol
=========================

A learning curve of a SOAP sparse GP on the bundled GFN2-xTB ethanol frames.

Test frames: every fourth bundled frame (index % 4 == 3, the shared split's rule);
training subsets of 10, 20, 50 and 100 frames drawn from the rest, three random
subsets per size. Prints the table and writes learning_curve_ethanol.png (force and
energy MAE with the mean predicted std, log-log). The full 2000-frame set of the
benchmarks lives in ../shared/data/xtb (benchmarks/molecules.py).

Run: ``python examples/learning_curve_ethanol.py``   (about a minute on two cores)
"""

import os

import numpy as np

from kernelpot import SOAP, SparseGPPotential, load_ethanol
from kernelpot.plotting import plot_learning_curve
from kernelpot.studies import learning_curve

# the documentation's build sets KERNELPOT_DOCS_QUICK=1: smaller subsets, one per size
QUICK = os.environ.get("KERNELPOT_DOCS_QUICK") == "1"
sizes, repeats = ([10, 20, 30], 1) if QUICK else ([10, 20, 50, 100], 3)

# %%
# Test frames and the training pool
# ---------------------------------

frames = load_ethanol()
index = np.arange(len(frames))
test = [frames[i] for i in index[index % 4 == 3]]
pool = [frames[i] for i in index[index % 4 != 3]]
model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, n_max=6, l_max=4, sigma=0.4),
                          n_restarts=1, random_state=0)

# %%
# Fit subsets of each size; errors and mean predicted std
# -------------------------------------------------------

curve = learning_curve(model, pool, test, sizes=sizes, repeats=repeats)
print(f"{'n':>5} {'force MAE meV/Å':>16} {'energy MAE meV/atom':>20} {'mean std meV/Å':>15}")
for i, n in enumerate(curve["sizes"]):
    print(f"{n:>5} {1e3 * curve['force_mae'][i].mean():>16.1f} "
          f"{1e3 * curve['energy_mae'][i].mean():>20.2f} "
          f"{1e3 * curve['force_std'][i].mean():>15.1f}")
print("wrote", plot_learning_curve(curve, "learning_curve_ethanol.png"))
