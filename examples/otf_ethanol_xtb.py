"""On-the-fly learning of ethanol with GFN2-xTB (tblite) as the reference.

Langevin MD at 500 K, 0.5 fs steps, 5 ps, starting from one labelled frame of the
bundled data. Needs the xtb extra: pip install -e ".[xtb]". Prints a summary and
writes otf_ethanol_xtb.png.

Run: python examples/otf_ethanol_xtb.py
"""

import json
import shutil

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from tblite.ase import TBLite

from kernelpot import SOAP, OnTheFlyLearner, SparseGPPotential, load_ethanol

STEPS, DIRECTORY = 10_000, "otf_ethanol_xtb"
shutil.rmtree(DIRECTORY, ignore_errors=True)
atoms = load_ethanol()[0].copy()
thermalize_momenta(atoms, temperature_K=500, rng=np.random.default_rng(0))
dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=500, friction=0.01 / units.fs,
               fixcm=False, rng=np.random.default_rng(1))
model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, n_max=6, l_max=4, sigma=0.4),
                          random_state=0)
reference = TBLite(method="GFN2-xTB", verbosity=0)
learner = OnTheFlyLearner(model, reference, directory=DIRECTORY, threshold=0.1)
learner.run(dyn, STEPS)
print(f"{learner.n_reference_calls} xTB calls in {STEPS} steps; model: "
      f"{learner.model.n_inducing_}")

log = [json.loads(line) for line in open(f"{DIRECTORY}/otf_log.jsonl")]
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    time_ps = np.array([r["time_fs"] for r in log]) / 1000
    fig, ax = plt.subplots(figsize=(3.5, 2.6), constrained_layout=True)
    ax.plot(time_ps, [r["max_force_std"] for r in log], lw=0.8, label="max force std")
    ax.axhline(log[0]["threshold"], color="k", lw=0.6, ls="--", label="threshold")
    calls = [t for t, r in zip(time_ps, log, strict=True) if r["reference_called"]]
    ax.plot(calls, [log[0]["threshold"]] * len(calls), "v", ms=4, label="xTB call")
    ax.set(xlabel="time (ps)", ylabel="max force std (eV/Å)", yscale="log")
    ax.legend(fontsize=7)
    fig.savefig("otf_ethanol_xtb.png", dpi=200)
    print("wrote otf_ethanol_xtb.png")
except ImportError:
    pass
