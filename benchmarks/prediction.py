"""Prediction cost per atom: energies + forces, + the energy std, + every force std.

Issue 21's benchmark. For each case the model is fitted once (prediction cost does not
depend on the hyperparameter values, so the mlearn cases keep them fixed to save the
likelihood search), then timed on held-out structures, best of ``--repeats``:

* ``E+F``: ``predict_energies_and_forces(frames)``;
* ``+E std``: ``predict(frames, return_std=True)`` beside the forces;
* ``+every std``: ``predict_energies_and_forces(frames, return_std=True)``.

Each time is taken twice in the same process: with the mean maps of
``kernelpot.mean_maps`` (today's path: a ``D × D`` quadratic form per element) and with
the sum over inducing / training environments (the path before them), so the ratio
column is measured, not quoted. The energies and forces of both paths are compared
(largest relative difference printed).

GAP in the same run (``--gap-model gap.xml``, needs quippy: ``pip install
quippy-ase``): the GAP is timed on the Mo test cells in this process, E+F and E+F+stress,
best of ``--repeats``, and the Mo row's times are printed as ratios to its E+F. Any GAP
XML will do; ``benchmarks/gap_mlearn.py --element Mo --n-train 50 --keep-model DIR``
fits one with the published mlearn Mo settings (2,000 sparse points, SOAP 8/8, ζ = 4) on
50 training cells: its prediction costs what the published model's does (the same
sparse points and descriptor), its accuracy is not the point. Without it the figures
measured earlier on this machine class are quoted and labelled as such.

Cases (``--cases``, comma-separated):

* ``si``, ``mo``: mlearn Si / Mo, SOAP 5 Å, n_max 8, l_max 6, σ 0.5, ``n_sparse``
  (default 2000) inducing environments, noise fixed (σ_E 4 meV/atom, σ_F 0.1 eV/Å);
  test: the mlearn test cells.
* ``ethanol-exact``: exact model, ethanol n = 100 (the estimator's default SOAP, 4 Å,
  n_max 6, l_max 4, σ 0.4, noise fitted); test: 50 frames of the shared test pool.
* ``ethanol-sparse``: the same at n = 200 with the sparse model.
* ``si1000``: the ``si`` model predicting one 1,000-atom diamond Si cell (5 × 5 × 5
  conventional cells, a = 5.43 Å, atoms displaced by 0.05 Å, seed 0): the cost of a
  large structure, where the Jacobian of one structure is ~72,000 pair rows.

Usage::

    python benchmarks/prediction.py --cases ethanol-exact,ethanol-sparse,si,mo
        [--gap-model DIR/gap.xml]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from ase.io import read

import kernelpot
import kernelpot.mean_maps as mean_maps_module
import kernelpot.sparse_posterior as sparse_posterior_module
from kernelpot import SOAP, SparseGPPotential

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: GAP (quippy-ase 0.10.3), measured earlier on this machine class, one thread; quoted
GAP_QUOTED = "GAP quoted: E+F 5.6 ms/atom (192-atom water box), E+F+stress 5.75 ms/atom (Mo)"


def mlearn_case(element: str, n_sparse: int):
    train = read(SHARED / "mlearn" / f"{element}_training.xyz", ":")
    test = read(SHARED / "mlearn" / f"{element}_test.xyz", ":")
    model = SparseGPPotential(SOAP([element], 5.0, n_max=8, l_max=6, sigma=0.5),
                              method="sparse", n_sparse=n_sparse, optimize=False,
                              energy_noise=0.004, force_noise=0.1, calibration=None,
                              random_state=0)
    return model, train, test


def silicon_1000():
    """One 1,000-atom diamond Si cell, slightly displaced (the issue's large cell)."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(5)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def ethanol_case(method: str, n: int):
    frames = read(SHARED / "xtb" / "ethanol_500K.xyz", ":")
    idx = np.arange(len(frames))
    test = [frames[i] for i in idx[idx % 4 == 3]][:50]
    train = [frames[i] for i in np.random.default_rng(0).permutation(idx[idx % 4 != 3])[:n]]
    model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, n_max=6, l_max=4, sigma=0.4),
                              method=method, random_state=0)
    return model, train, test


def time_gap(path: str, test, repeats: int) -> dict:
    """Time a GAP (quippy) on ``test``: E+F and E+F+stress ms/atom, best of ``repeats``."""
    try:
        from quippy.potential import Potential
    except ImportError as err:
        raise SystemExit(f"--gap-model needs quippy (pip install quippy-ase): {err}") from err
    potential = Potential(param_filename=str(path))
    frames = [atoms.copy() for atoms in test]
    n_atoms = sum(len(a) for a in frames)

    def run(properties):
        out = []
        for atoms in frames:
            potential.calculate(atoms, properties=properties,
                                system_changes=["positions", "numbers", "cell", "pbc"])
            out.append((potential.results["energy"], potential.results["forces"].copy()))
        return out

    run(["energy", "forces"])  # first call: descriptor set-up
    e_f = best_of(repeats, lambda: run(["energy", "forces"]))
    e_f_s = best_of(repeats, lambda: run(["energy", "forces", "stress"]))
    predicted = run(["energy", "forces"])
    e_err = np.array([(e - a.get_potential_energy()) / len(a)
                      for (e, _), a in zip(predicted, test, strict=True)])
    f_err = np.concatenate([(f - a.get_forces()).ravel()
                            for (_, f), a in zip(predicted, test, strict=True)])
    return {"E+F": 1e3 * e_f / n_atoms, "E+F+S": 1e3 * e_f_s / n_atoms,
            "E RMSE": 1e3 * float(np.sqrt(np.mean(e_err**2))),
            "F RMSE": float(np.sqrt(np.mean(f_err**2))), "atoms": n_atoms}


def print_gap_ratios(gap: dict, rows) -> None:
    """GAP's times and each Mo row's speed-up over GAP's E+F (same cells, same process)."""
    print("\n" f"GAP (quippy) on the {gap['atoms']} atoms of the Mo test cells, this run: "
          f"E+F {gap['E+F']:.3f} ms/atom, E+F+stress {gap['E+F+S']:.3f} ms/atom "
          f"(its errors there, a timing model: E {gap['E RMSE']:.2f} meV/atom, "
          f"F {gap['F RMSE']:.3f} eV/Å)")
    for case, *_, after, _, _, _ in rows:
        if case != "mo":
            continue
        print(f"  kernelpot mo: GAP E+F / kernelpot E+F = {gap['E+F'] / after['E+F']:.2f}x; "
              f"/ kernelpot +E std = {gap['E+F'] / after['+E std']:.2f}x; "
              f"/ kernelpot +every std = {gap['E+F'] / after['+every std']:.2f}x "
              "(target: >= 4x for E+F and +every std)")


def best_of(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def use_closed_form(model, closed_form: bool) -> None:
    """Switch the fitted model's mean between the maps and the environment sums."""
    posterior = model.posterior_
    if posterior.kind == "sparse":
        original = mean_maps_module.mean_map
        sparse_posterior_module.mean_map = (
            lambda kernel, Z, w: original(kernel, Z, w, closed_form="auto" if closed_form
                                          else False))
        posterior.__dict__.pop("_mean_maps_cache", None)
    else:
        if not hasattr(posterior, "_closed_form_maps"):
            posterior._closed_form_maps = posterior.mean_maps
        posterior.mean_maps = posterior._closed_form_maps if closed_form \
            else [None] * len(posterior._closed_form_maps)


def time_case(model, test, repeats: int) -> dict:
    n_atoms = sum(len(a) for a in test)
    out = {}
    for closed_form in (False, True):
        use_closed_form(model, closed_form)
        model.predict_energies_and_forces(test[:1], return_std=True)  # warm caches
        e_f = best_of(repeats, lambda: model.predict_energies_and_forces(test))
        e_std = best_of(repeats, lambda: (model.predict(test, return_std=True),
                                          model.predict_forces(test)))
        every = best_of(repeats, lambda: model.predict_energies_and_forces(test,
                                                                          return_std=True))
        energies, forces = model.predict_energies_and_forces(test)
        out[closed_form] = {"E+F": 1e3 * e_f / n_atoms, "+E std": 1e3 * e_std / n_atoms,
                            "+every std": 1e3 * every / n_atoms,
                            "energies": energies, "forces": np.concatenate(forces),
                            "maps": sorted({type(m).__name__ for m in (
                                model.posterior_.mean_maps() if model.posterior_.kind
                                == "sparse" else model.posterior_.mean_maps) if m})}
    use_closed_form(model, True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="ethanol-exact,ethanol-sparse,si,mo")
    parser.add_argument("--n-sparse", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gap-model", default=None, metavar="XML",
                        help="a GAP model (quippy) to time on the Mo test cells in this run")
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus", flush=True)
    rows = []
    for case in args.cases.split(","):
        if case in ("si", "mo"):
            model, train, test = mlearn_case(case.capitalize(), args.n_sparse)
        elif case == "si1000":
            model, train, _ = mlearn_case("Si", args.n_sparse)
            test = [silicon_1000()]
        elif case == "ethanol-exact":
            model, train, test = ethanol_case("exact", 100)
        elif case == "ethanol-sparse":
            model, train, test = ethanol_case("sparse", 200)
        else:
            raise SystemExit(f"unknown case {case!r}")
        start = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - start
        timed = time_case(model, test, args.repeats)
        before, after = timed[False], timed[True]
        diff_e = float(np.max(np.abs(after["energies"] - before["energies"]))
                       / np.max(np.abs(before["energies"])))
        diff_f = float(np.max(np.abs(after["forces"] - before["forces"]))
                       / np.max(np.abs(before["forces"])))
        rows.append((case, model, fit_s, before, after, diff_e, diff_f,
                     sum(len(a) for a in test)))
        print(f"  {case}: fitted in {fit_s:.1f} s; before {before['E+F']:.3f} / "
              f"{before['+every std']:.3f}, after {after['E+F']:.3f} / "
              f"{after['+every std']:.3f} ms/atom; maps {after['maps']}", flush=True)
    print("\nms per atom, best of", args.repeats, "; before: the sum over inducing/training "
          "environments, after: the mean maps (today's default path), same process")
    header = (f"{'case':<15} {'method':<7} {'M':>6} {'D':>5} {'atoms':>6} "
              f"{'E+F before':>10} {'E+F after':>9} {'ratio':>6} {'+E std':>7} "
              f"{'+every std':>10} {'max rel diff E / F':>19}")
    print(header)
    print("-" * len(header))
    for case, model, _, before, after, diff_e, diff_f, n_atoms in rows:
        M = sum(model.n_inducing_.values())
        D = model.posterior_.inducing[0].shape[1] if model.method_ == "sparse" \
            else model.posterior_.mean.features[0].shape[1]
        print(f"{case:<15} {model.method_:<7} {M:>6} {D:>5} {n_atoms:>6} "
              f"{before['E+F']:>10.3f} {after['E+F']:>9.3f} "
              f"{before['E+F'] / after['E+F']:>6.2f} {after['+E std']:>7.3f} "
              f"{after['+every std']:>10.3f} {diff_e:>9.1e} / {diff_f:.1e}")
    if args.gap_model:
        mo_test = read(SHARED / "mlearn" / "Mo_test.xyz", ":")
        print_gap_ratios(time_gap(args.gap_model, mo_test, args.repeats), rows)
    else:
        print(GAP_QUOTED)
    print("Targets (issue 21): E+F <= 1.0 ms/atom; + every force std <= 1.5 ms/atom.")


if __name__ == "__main__":
    main()
