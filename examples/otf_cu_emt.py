"""On-the-fly learning of fcc Cu with EMT as the reference (issue 5's setting).

32-atom cell, Langevin 5 fs, friction 0.01/fs, temperature ramped 300 -> 800 K in
steps every 100 MD steps over 2000 steps, starting from one labelled frame. Prints a
summary and writes otf_cu_emt.png (max force std and reference calls against time).

Run: python examples/otf_cu_emt.py   (a few minutes on two cores)
"""

import json
import shutil

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from kernelpot import ACSF, OnTheFlyLearner, SparseGPPotential

STEPS, DIRECTORY = 2000, "otf_cu_emt"
shutil.rmtree(DIRECTORY, ignore_errors=True)

atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
dyn = Langevin(atoms, 5 * units.fs, temperature_K=300, friction=0.01 / units.fs,
               fixcm=False, rng=np.random.default_rng(1))


def ramp():
    level = min(dyn.nsteps // 100, STEPS // 100 - 1) / (STEPS // 100 - 1)
    dyn.set_temperature(temperature_K=300 + 500 * level)


dyn.attach(ramp, interval=1)
model = SparseGPPotential(ACSF.from_grid(["Cu"], 4.5, n_radial=8, n_angular=8),
                          random_state=0)
learner = OnTheFlyLearner(model, EMT(), directory=DIRECTORY, reoptimize_every=1)
learner.run(dyn, STEPS)
print(f"{learner.n_reference_calls} EMT calls in {STEPS} steps; model: "
      f"{learner.model.n_inducing_} inducing environments, learned force noise "
      f"{1e3 * learner.model.force_noise_:.1f} meV/Å")

log = [json.loads(line) for line in open(f"{DIRECTORY}/otf_log.jsonl")]
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    time_ps = np.array([r["time_fs"] for r in log]) / 1000
    fig, ax = plt.subplots(figsize=(3.5, 2.6), constrained_layout=True)
    ax.plot(time_ps, [r["max_force_std"] for r in log], lw=0.8, label="max force std")
    calls = [t for t, r in zip(time_ps, log, strict=True) if r["reference_called"]]
    ax.plot(calls, [log[0]["threshold"]] * len(calls), "v", ms=4, label="EMT call")
    ax.axhline(log[0]["threshold"], color="k", lw=0.6, ls="--", label="threshold")
    ax.set(xlabel="time (ps)", ylabel="max force std (eV/Å)", yscale="log")
    ax.legend(fontsize=7)
    fig.savefig("otf_cu_emt.png", dpi=200)
    print("wrote otf_cu_emt.png")
except ImportError:
    pass
