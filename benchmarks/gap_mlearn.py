"""GAP (QUIP's gap_fit) on an mlearn element, measured on this machine: the reference
the mlearn tables quote, re-measured with the mlearn benchmark's own GAP settings.

Needs quippy (``pip install quippy-ase``: the ``gap_fit`` executable and
``quippy.potential.Potential``); not a kernelpot dependency. Fits on
``<element>_training.xyz`` (energies, forces and, with ``--virials``, the stresses as
virials ``-σ V``), predicts ``<element>_test.xyz`` and prints energy RMSE (meV/atom),
force RMSE (eV/Å) and stress RMSE (GPa), fit wall time and the fit's peak memory, beside
kernelpot's default model fitted in the same run (``--with-kernelpot``).

The stress labels' yz/xz components are swapped back where the files hold them swapped
(``mlearn.shear_slot_check``: the Mo files), for the virials and for the errors alike.

Usage::

    python benchmarks/gap_mlearn.py --element Mo [--virials] [--two-body] [--with-kernelpot]
        [--n-train 50] [--keep-model DIR]

``--n-train N`` fits on N training cells drawn at random (seed 0) instead of all of them;
``--keep-model DIR`` copies the fitted GAP (``gap.xml`` and the sparse-point files it
names) into DIR. A model fitted on 50 cells has the published model's 2,000 sparse points
and descriptor, so it predicts at the same cost: ``benchmarks/prediction.py --gap-model
DIR/gap.xml`` times it beside kernelpot in one process (issue 21).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write
from ase.stress import voigt_6_to_full_3x3_stress

sys.path.insert(0, str(Path(__file__).parent))
from mlearn import GAP_QUOTED, SHARED, shear_slot_check, stress_labels  # noqa: E402

EV_PER_A3_TO_GPA = 160.21766

# mlearn's published Mo GAP (the command line stored in materialsvirtuallab/maml's
# mvl_models/pes/Mo/gap/gap.xml): SOAP only, n_max 8, l_max 8, cutoff 5.2 Å (0.5 Å
# transition), atom_sigma 0.5, zeta 4, 2000 CUR sparse points; default_sigma energy 0.01 eV
# (per structure), force 0.05 eV/Å, virial 0.01 eV; e0 -4.04 eV. It was fitted without
# virials; --virials uses its virial sigma. --two-body adds a distance_2b term (our choice
# of its settings: ard_se, delta 1, theta 1 Å, 20 uniform sparse points, cutoff 5.2 Å).
TWO_BODY = ("distance_2b cutoff=5.2 covariance_type=ard_se delta=1.0 theta_uniform=1.0 "
            "sparse_method=uniform n_sparse=20")
SOAP = ("soap l_max=8 n_max=8 atom_sigma=0.5 zeta=4 cutoff=5.2 cutoff_transition_width=0.5 "
        "delta=1.0 f0=0.0 n_sparse=2000 covariance_type=dot_product sparse_method=cur_points")
SETTINGS = {"Mo": dict(gap=SOAP, e0=-4.04, sigma=(0.01, 0.05, 0.01, 1.0))}


def gap_training_file(frames, path, swap, virials):
    """Write frames with info['dft_energy'], arrays['dft_force'] (and info['dft_virial'])."""
    stresses = stress_labels(frames, swap)
    out = []
    for atoms, stress in zip(frames, stresses, strict=True):
        clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                      pbc=atoms.pbc)
        clean.info["dft_energy"] = atoms.get_potential_energy()
        clean.arrays["dft_force"] = atoms.get_forces()
        if virials:
            clean.info["dft_virial"] = (-voigt_6_to_full_3x3_stress(stress)
                                        * atoms.get_volume()).ravel()
        out.append(clean)
    write(path, out, format="extxyz")


def run_gap_fit(gap_fit, train_file, model_file, settings, virials, threads, two_body):
    sigma = " ".join(str(s) for s in settings["sigma"])
    gap = f"{TWO_BODY} : {settings['gap']}" if two_body else settings["gap"]
    command = [gap_fit, f"at_file={train_file}", f"gap={{{gap}}}",
               "sparse_jitter=1e-08", f"e0={settings['e0']}", "e0_offset=0.0",
               f"default_sigma={{{sigma}}}", "energy_parameter_name=dft_energy",
               "force_parameter_name=dft_force",
               f"virial_parameter_name={'dft_virial' if virials else 'NO_SUCH_KEY'}",
               "rnd_seed=1", f"gp_file={model_file}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          cwd=Path(model_file).parent)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"gap_fit failed ({done.returncode}): {done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return command, seconds, peak_gib


def keep_model(model_file: Path, directory: Path) -> None:
    """Copy a GAP XML and the sparse-point files it names (``gap.xml.sparseX...``).

    The names are kept: the XML refers to the other files by name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for path in [model_file, *model_file.parent.glob(model_file.name + ".*")]:
        shutil.copy(path, directory / path.name)


def errors(predict, test, swap):
    """Energy RMSE meV/atom, force RMSE eV/Å, stress RMSE GPa, prediction ms/atom."""
    start = time.perf_counter()
    predicted = [predict(atoms) for atoms in test]
    ms_per_atom = 1e3 * (time.perf_counter() - start) / sum(len(a) for a in test)
    n = np.array([len(a) for a in test])
    de = (np.array([p[0] for p in predicted])
          - np.array([a.get_potential_energy() for a in test])) / n
    df = np.concatenate([(p[1] - a.get_forces()).ravel()
                         for p, a in zip(predicted, test, strict=True)])
    ds = np.array([p[2] for p in predicted]) - stress_labels(test, swap)
    return (1e3 * np.sqrt(np.mean(de**2)), np.sqrt(np.mean(df**2)),
            EV_PER_A3_TO_GPA * np.sqrt(np.mean(ds**2)), ms_per_atom)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--element", default="Mo", choices=sorted(SETTINGS))
    parser.add_argument("--virials", action="store_true")
    parser.add_argument("--two-body", action="store_true",
                        help="add a distance_2b term to the published SOAP GAP")
    parser.add_argument("--gap-fit", default=shutil.which("gap_fit"),
                        help="path of the gap_fit executable (default: on PATH)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=None, metavar="N",
                        help="fit on N training cells drawn at random (seed 0); default all")
    parser.add_argument("--keep-model", default=None, metavar="DIR",
                        help="copy the fitted GAP model (gap.xml and its sparse-point "
                             "files) into DIR")
    parser.add_argument("--with-kernelpot", action="store_true",
                        help="also fit kernelpot's mlearn model (benchmarks/mlearn.py "
                             "--kernel ndp+se) in this run")
    args = parser.parse_args(argv)
    try:
        from quippy.potential import Potential
    except ImportError as err:
        raise SystemExit(f"gap_mlearn.py needs quippy (pip install quippy-ase): {err}") from err
    if args.gap_fit is None:
        raise SystemExit("gap_fit not found: pass --gap-fit PATH")
    train = read(SHARED / f"{args.element}_training.xyz", ":")
    test = read(SHARED / f"{args.element}_test.xyz", ":")
    if args.n_train is not None:
        keep = np.random.default_rng(0).permutation(len(train))[:args.n_train]
        train = [train[i] for i in sorted(keep)]
    right, swapped = shear_slot_check(train + test)
    swap = swapped > right
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.xyz"
        gap_training_file(train, train_file, swap, args.virials)
        command, fit_s, peak = run_gap_fit(args.gap_fit, train_file, Path(tmp) / "gap.xml",
                                           SETTINGS[args.element], args.virials, args.threads,
                                           args.two_body)
        potential = Potential(param_filename=str(Path(tmp) / "gap.xml"))
        if args.keep_model:
            keep_model(Path(tmp) / "gap.xml", Path(args.keep_model))

        def gap_predict(atoms):
            atoms = atoms.copy()
            atoms.calc = potential
            return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

        label = ("GAP+2b" if args.two_body else "GAP") + (
            " (E+F+virial)" if args.virials else " (E+F)")
        rows.append((label, *errors(gap_predict, test, swap), fit_s, peak))
    print(f"gap_fit command: {' '.join(command)} (OMP_NUM_THREADS={args.threads})")
    if args.with_kernelpot:
        from mlearn import build_model, build_parser

        options = build_parser().parse_args(["--kernel", "ndp+se"])
        model = build_model(options, args.element, train)
        start = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

        def kernelpot_predict(atoms):
            p = model.predict_structure(atoms, forces=True, stress=True)
            return p.energy, p.forces, p.stress

        kinds = "E+F+S" if model.use_stress else "E+F"  # mlearn.py's default trains on stresses
        rows.append((f"kernelpot ({kinds})", *errors(kernelpot_predict, test, swap), fit_s,
                     peak))
    quoted_e, quoted_f = GAP_QUOTED[args.element]
    print(f"\nmlearn {args.element}: fit on training, {len(test)} test cells; yz/xz stress "
          f"labels swapped back: {swap} ({swapped} of {right + swapped} yz/xz-sheared cells "
          f"hold their shear stress in the other slot)")
    header = (f"{'model':<18} {'E RMSE':>7} {'F RMSE':>7} {'S GPa':>6} {'ms/atom':>8} "
              f"{'fit s':>7} {'peak GiB':>8}")
    print(header)
    print("-" * len(header))
    for name, e, f, s, ms, fit_s, peak in rows:
        print(f"{name:<18} {e:7.2f} {f:7.3f} {s:6.2f} {ms:8.2f} {fit_s:7.0f} {peak:8.2f}")
    print(f"{'GAP (quoted)':<18} {quoted_e:7.2f} {quoted_f:7.3f}")
    print("E RMSE meV/atom, F RMSE eV/Å, S GPa: stress RMSE over six components; ms/atom: "
          "energy + forces + stress, one process; peak GiB: gap_fit's (child process) or "
          "this process's peak resident memory.")


if __name__ == "__main__":
    main()
