"""The ``kernelpot`` command line.

Only this module prints or configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tracemalloc
from collections.abc import Sequence

import numpy as np

from kernelpot import __version__

logger = logging.getLogger("kernelpot")

_DEMO_EXAMPLE = """\
examples:
  kernelpot demo                  # fit on 100 bundled ethanol frames, test on 50, report,
                                  # write demo_parity.png
  kernelpot demo --n-train 150 --descriptor acsf
"""

_DESCRIPTORS_EXAMPLE = """\
examples:
  kernelpot descriptors                      # bundled ethanol (xTB) and Si (DFT) frames
  kernelpot descriptors --descriptor soap frames.xyz --r-cut 4.5 --n-jobs 2
"""


_FIT_EXAMPLE = """\
examples:
  kernelpot fit train.xyz -o model.npz                  # SOAP, all environments inducing
  kernelpot fit train.xyz --descriptor acsf --n-sparse 500 -o model.npz
  kernelpot fit train.xyz --config cfg.toml -o model.npz

cfg.toml is a flat table of estimator and descriptor parameters (for ACSF a
descriptor.r_cut key changes the cutoff only; --r-cut also rescales the default
symmetry-function grid), e.g.
  n_sparse = 1000
  energy_noise = 0.001
  optimize = ["signal_std", "force_noise"]
  descriptor.r_cut = 4.5
  descriptor.n_max = 8
  two_body.r_cut = 5.0
(descriptor.* keys set the descriptor's parameters; any two_body.* key adds a
two-body term, kernelpot.TwoBody, with those parameters; command-line options win)
"""

_EVAL_EXAMPLE = """\
examples:
  kernelpot eval model.npz test.xyz
  kernelpot eval model.npz test.xyz --plot parity.png --calibration-plot cal.png \\
      --error-plot err.png
  kernelpot eval model.npz test.xyz --recalibrate valid.xyz   # fit std factors, save them

--recalibrate fits one factor for energy stds and one for force stds that give the
validation errors' z-scores unit variance, stores them in the model file (or in
--output) and reports the test metrics with them; the model applies them to every std
it reports (SparseGPPotential(apply_calibration=False) switches them off).
"""

_PREDICT_EXAMPLE = """\
examples:
  kernelpot predict model.npz structures.xyz -o predicted.xyz

The output holds the predicted energy and forces as the frames' results (ase.io reads
them back with get_potential_energy()/get_forces()), the total energy std in
info["energy_std"] (eV) and the per-component force std in arrays["forces_std"] (eV/Å);
frames periodic along all three axes also get the predicted stress (get_stress(), eV/Å³).
"""


_LC_EXAMPLE = """\
examples:
  kernelpot learning-curve train.xyz test.xyz --sizes 25,50,100,200
  kernelpot learning-curve train.xyz test.xyz --sizes 10,20,40 --repeats 3 --plot lc.png
  kernelpot learning-curve train.xyz test.xyz --sizes 20,50 --strategy variance --method exact

Each size fits a fresh model (the fit command's options and --config apply) on random
subsets of TRAIN (seeds --seed, --seed + 1, ...) and scores it on TEST. With --strategy
variance the subsets start from --initial random structures and grow by the structures of
TRAIN a model fitted on those finds most uncertain (kernelpot.select_frames; greedy, so
near-duplicates are not picked twice; the labels are not used to pick).
"""


_MD_EXAMPLE = """\
examples:
  kernelpot md model.npz start.xyz --steps 2000 --temperature 600 -o traj.extxyz

The trajectory holds the model's predictions as info["model_energy"], info["energy_std"],
arrays["model_forces"] and arrays["forces_std"] (and, learning on the fly,
arrays["gated_forces_std"], the calibrated std compared with the threshold); they are not
stored as reference labels, so the file is not mistaken for training data.
  kernelpot md model.npz start.xyz --steps 2000 --temperature 800 --reference emt \\
      --train train.xyz --directory otf_run

Langevin dynamics (friction 0.01/fs) with the model as ASE calculator. With --reference
(emt, or xtb for GFN2-xTB from tblite) the run is uncertainty-gated: the model is refitted
on --train (its own training structures, as an incremental model) and learns on the fly
whenever the calibrated force std exceeds --threshold (default: the largest calibrated
force std of a training structure left out of the model, recomputed after every call);
the log, labelled frames and checkpoints go to --directory.
"""


class CLIError(Exception):
    """An error reported as one line on stderr with a non-zero exit code."""


# long: one argparse declaration per subcommand, read top to bottom like the --help output
def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelpot",
        description="Gaussian-process interatomic potentials with analytic derivatives "
                    "and uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"kernelpot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "demo",
        help="fit a sparse GP on bundled ethanol data, evaluate it on held-out frames",
        description="Fit a sparse GP potential on bundled GFN2-xTB ethanol frames, evaluate "
                    "it on held-out frames and print the learned noise, errors and "
                    "calibration of the predicted uncertainty.",
        epilog=_DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--n-train", type=int, default=100,
                   help="training frames (of the 150 non-test bundled frames; default 100)")
    d.add_argument("--descriptor", choices=["soap", "acsf"], default="soap")
    d.add_argument("--method", choices=["sparse", "exact", "auto"], default="sparse",
                   help="sparse GP (default) or the exact force-domain GP")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--plot", default="demo_parity.png",
                   help="force parity plot coloured by the predicted std "
                        "(default demo_parity.png; 'none' to skip)")
    d.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "descriptors",
        help="compute ACSF and SOAP features with analytic gradients and print a summary",
        description="Compute ACSF and SOAP features with analytic position gradients for "
                    "structures (the bundled ethanol and silicon frames by default) and print "
                    "shapes, timing and peak memory.",
        epilog=_DESCRIPTORS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", help="structure files readable by ase.io "
                   "(default: the bundled data sets)")
    p.add_argument("--descriptor", choices=["acsf", "soap", "both"], default="both")
    p.add_argument("--r-cut", type=float, default=None,
                   help="cutoff in Å (default: 4.0 for molecules, 5.0 for periodic cells)")
    p.add_argument("--n-jobs", type=int, default=1, help="joblib workers (default 1)")
    p.add_argument("--frames", type=int, default=None,
                   help="use at most this many frames per data set")
    f = sub.add_parser(
        "fit", help="fit a sparse GP potential to labelled structures and save it",
        description="Fit a sparse GP potential to structures with reference energies and "
                    "forces (any file ase.io reads), print the learned noise, training "
                    "errors and time, and save the model (.npz).",
        epilog=_FIT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("train", help="training structures with energies and/or forces")
    f.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    _add_model_options(f)
    f.set_defaults(func=_cmd_fit)

    e = sub.add_parser(
        "eval", help="errors and uncertainty calibration of a model on labelled structures",
        description="Evaluate a saved model on labelled structures: energy and force MAE and "
                    "RMSE, and the calibration of the predicted std (coverage at 1 and 2 std, "
                    "Spearman rank correlation of per-atom std and error).",
        epilog=_EVAL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", help="a model file written by kernelpot (.npz)")
    e.add_argument("test", help="labelled structures")
    e.add_argument("--plot", default=None,
                   help="write a force parity plot coloured by the predicted std")
    e.add_argument("--calibration-plot", default=None,
                   help="write the force calibration curve (observed vs nominal coverage)")
    e.add_argument("--error-plot", default=None,
                   help="write per-atom force error against predicted std")
    e.add_argument("--recalibrate", default=None, metavar="VALID",
                   help="fit std calibration factors on these labelled structures first")
    e.add_argument("-o", "--output", default=None,
                   help="with --recalibrate: write the calibrated model here instead of "
                        "updating MODEL")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser(
        "predict", help="predict energies, forces and their stds into an extxyz file",
        description="Predict energies, forces and their (total) stds for structures and "
                    "write them to an extended XYZ file.",
        epilog=_PREDICT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("model", help="a model file written by kernelpot (.npz)")
    r.add_argument("structures", help="structures (any file ase.io reads)")
    r.add_argument("-o", "--output", required=True, help="extended XYZ file to write")
    r.set_defaults(func=_cmd_predict)

    c = sub.add_parser(
        "learning-curve", help="errors and predicted std against training-set size",
        description="Fit models on random subsets of growing size and print (and plot) "
                    "force and energy errors on a test set with the mean predicted std.",
        epilog=_LC_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("train", help="labelled structures to draw training subsets from")
    c.add_argument("test", help="labelled test structures")
    c.add_argument("--sizes", required=True, help="comma-separated training-set sizes")
    c.add_argument("--repeats", type=int, default=1, help="subsets per size (default 1)")
    c.add_argument("--strategy", choices=["random", "variance", "reduction"], default="random",
                   help="grow training sets at random (default) or by uncertainty "
                        "selection from --initial random structures: the most uncertain "
                        "structures (variance) or those that most reduce the uncertainty "
                        "over the pool (reduction); see kernelpot.select_frames")
    c.add_argument("--initial", type=int, default=10,
                   help="random starting structures of --strategy variance (default 10)")
    c.add_argument("--plot", default=None, help="write a log-log plot of the curve")
    _add_model_options(c)
    c.set_defaults(func=_cmd_learning_curve)

    m = sub.add_parser(
        "md", help="molecular dynamics with a model, optionally learning on the fly",
        description="Run Langevin molecular dynamics with a saved model as ASE calculator; "
                    "with --reference, uncertainty-gated MD that calls the reference and "
                    "learns when the model is unsure.",
        epilog=_MD_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("model", help="a model file written by kernelpot (.npz)")
    m.add_argument("start", help="starting structure (the first frame of the file)")
    m.add_argument("--steps", type=int, required=True)
    m.add_argument("--temperature", type=float, required=True, help="kelvin")
    m.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    m.add_argument("-o", "--output", default=None,
                   help="trajectory file (extxyz) with energies, forces and their stds")
    m.add_argument("--interval", type=int, default=10,
                   help="steps between trajectory frames (default 10)")
    m.add_argument("--reference", choices=["emt", "xtb"], default=None)
    m.add_argument("--threshold", type=float, default=None,
                   help="absolute force-std threshold, eV/Å (with --reference)")
    m.add_argument("--train", default=None,
                   help="the model's training structures (with --reference)")
    m.add_argument("--directory", default="otf_run",
                   help="on-the-fly log, labelled frames and checkpoints (with --reference)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_cmd_md)

    for q in (d, p, f, e, r, c, m):
        q.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log output (-vv for debug)")
        q.add_argument("--quiet", action="store_true", help="only errors")
        q.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=_cmd_descriptors)
    return parser


def _add_model_options(parser) -> None:
    """Add the options of the model a command fits (fit, learning-curve; _build_model)."""
    parser.add_argument("--descriptor", choices=["soap", "acsf"], default="soap")
    parser.add_argument("--r-cut", type=float, default=None,
                        help="cutoff in Å (default: 4.0 for molecules, 5.0 for periodic cells)")
    parser.add_argument("--n-sparse", type=int, default=None,
                        help="inducing environments per element (default: all, up to 2000)")
    parser.add_argument("--method", choices=["sparse", "exact", "auto"], default=None,
                        help="sparse GP (default), exact force-domain GP (small data: "
                             "memory grows as the square of the force components), or auto "
                             "(exact while it fits 4 GiB)")
    parser.add_argument("--config", default=None,
                        help="TOML file of parameters (see kernelpot fit --help)")
    parser.add_argument("--n-jobs", type=int, default=None, help="joblib workers (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")


def _configure_logging(args) -> None:
    level = logging.WARNING
    if args.quiet:
        level = logging.ERROR
    elif args.verbose == 1:
        level = logging.INFO
    elif args.verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("kernelpot")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _read_frames(path: str) -> list:
    from ase.io import read

    try:
        frames = read(path, ":")
    except FileNotFoundError as err:
        raise CLIError(f"no such file: {path}") from err
    except Exception as err:  # ase.io raises many types for unreadable files
        raise CLIError(f"cannot read {path} with ase.io: {err}") from err
    if not frames:
        raise CLIError(f"{path} holds no structures")
    return frames


def _default_descriptors(frames, which: str, r_cut):
    from kernelpot.descriptors import ACSF, SOAP

    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    periodic = any(atoms.pbc.any() for atoms in frames)
    if r_cut is None:
        r_cut = 5.0 if periodic else 4.0
    out = []
    if which in ("acsf", "both"):
        out.append(("ACSF", ACSF.from_grid(species, r_cut, n_radial=8, n_angular=8)))
    if which in ("soap", "both"):
        if periodic:
            soap = SOAP(species, r_cut, n_max=8, l_max=6, sigma=0.5)
        else:
            soap = SOAP(species, r_cut, n_max=6, l_max=4, sigma=0.4)
        out.append(("SOAP", soap))
    return out


def _cmd_descriptors(args) -> int:
    from kernelpot.datasets import load_ethanol, load_silicon

    if args.files:
        sets = [(path, _read_frames(path)) for path in args.files]
    else:
        sets = [("bundled ethanol (GFN2-xTB, 500 K)", load_ethanol()),
                ("bundled Si (DFT, mlearn)", load_silicon())]
    if args.frames is not None:
        if args.frames < 1:
            raise CLIError(f"--frames must be >= 1; got {args.frames}")
        sets = [(name, frames[: args.frames]) for name, frames in sets]
    if args.n_jobs == 0:
        raise CLIError("--n-jobs must not be 0 (use 1, a positive count or -1)")
    header = (f"{'data':<36} {'descriptor':<10} {'frames':>6} {'atoms':>7} {'features':>8} "
              f"{'pairs':>8} {'gradients MiB':>13} {'time s':>8} {'ms/atom':>8} "
              f"{'peak MiB':>9}")
    print(f"kernelpot {__version__}: descriptors with analytic gradients")
    print(header)
    print("-" * len(header))
    for name, frames in sets:
        for label, descriptor in _default_descriptors(frames, args.descriptor, args.r_cut):
            descriptor.compute(frames[0])  # compile / warm up outside the timing
            tracemalloc.start()
            start = time.perf_counter()
            results = descriptor.compute_many(frames, n_jobs=args.n_jobs,
                                              verbose=int(sys.stderr.isatty() and not args.quiet))
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            n_atoms = sum(r.n_atoms for r in results)
            n_pairs = sum(len(r.pairs) for r in results)
            grad_mib = sum(r.gradients.nbytes for r in results) / 2**20
            print(f"{name[:36]:<36} {label:<10} {len(frames):>6} {n_atoms:>7} "
                  f"{results[0].n_features:>8} {n_pairs:>8} {grad_mib:>13.1f} "
                  f"{elapsed:>8.3f} {1e3 * elapsed / n_atoms:>8.3f} {peak / 2**20:>9.1f}")
            sum_rule = max(float(np.abs(np.add.reduceat(r.gradients, np.searchsorted(
                r.pairs[:, 0], np.arange(r.n_atoms)), axis=0)).max()) for r in results)
            logger.info("%s on %s: max |sum_j dX_i/dr_j| = %.1e (translation sum rule)",
                        label, name, sum_rule)
    print("time excludes the first (compiling) call; peak MiB is traced Python/NumPy memory "
          "while computing, results included.")
    return 0


def _cmd_demo(args) -> int:
    from kernelpot import ACSF, SOAP, SparseGPPotential, metrics
    from kernelpot.datasets import load_ethanol
    from kernelpot.estimator import format_signal_std

    frames = load_ethanol()
    index = np.arange(len(frames))
    test = [frames[i] for i in index[index % 4 == 3]]
    pool = index[index % 4 != 3]
    if not 1 <= args.n_train <= len(pool):
        raise CLIError(f"--n-train must be between 1 and {len(pool)}; got {args.n_train}")
    order = np.random.default_rng(args.seed).permutation(pool)
    train = [frames[i] for i in order[: args.n_train]]
    valid = [frames[i] for i in order[args.n_train:]]  # never trained on: for calibrate
    species = ["H", "C", "O"]
    descriptor = (SOAP(species, 4.0, n_max=6, l_max=4, sigma=0.4) if args.descriptor == "soap"
                  else ACSF.from_grid(species, 4.0, n_radial=8, n_angular=8))
    verbose = int(sys.stderr.isatty() and not args.quiet)
    print(f"kernelpot {__version__} demo: {args.method} GP on GFN2-xTB ethanol (500 K), "
          f"{len(train)} training and {len(test)} test frames, {args.descriptor.upper()}")
    model = SparseGPPotential(descriptor, method=args.method, random_state=args.seed,
                              verbose=verbose)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    print(f"fitted in {fit_s:.1f} s with {sum(model.n_inducing_.values())} inducing "
          f"environments {model.n_inducing_}")
    print(f"learned noise: energy {1e3 * model.energy_noise_:.2f} meV/atom, forces "
          f"{1e3 * model.force_noise_:.1f} meV/Å; signal "
          f"{format_signal_std(model.signal_std_)} eV")
    start = time.perf_counter()
    energies, forces, energy_std, forces_std = model.predict_energies_and_forces(
        test, return_std=True)
    pred_ms = 1e3 * (time.perf_counter() - start) / sum(len(a) for a in test)
    ref_e = np.array([a.get_potential_energy() for a in test])
    ref_f = [a.get_forces() for a in test]
    e_err = energies - ref_e
    print(f"test energies: MAE {1e3 * np.mean(np.abs(e_err)):.1f} meV, RMSE "
          f"{1e3 * np.sqrt(np.mean(e_err**2)):.1f} meV per molecule")
    print(f"test forces:   MAE {1e3 * metrics.mae(forces, ref_f):.1f} meV/Å, RMSE "
          f"{1e3 * metrics.rmse(forces, ref_f):.1f} meV/Å")
    print(f"uncertainty:   {100 * metrics.coverage(forces, ref_f, forces_std, 1):.0f}% of force "
          f"components within 1 std (Gaussian: 68%), "
          f"{100 * metrics.coverage(forces, ref_f, forces_std, 2):.0f}% within 2 (95%); "
          f"Spearman(std, error) per atom "
          f"{metrics.spearman_std_error(forces, ref_f, forces_std):.2f}; energies "
          f"{100 * metrics.coverage(energies, ref_e, energy_std, 1):.0f}% within 1 std")
    print(f"prediction with std: {pred_ms:.2f} ms per atom")
    if len(valid) >= 10:
        model.calibrate(valid)
        forces, forces_std, intervals = model.predict_forces(test, return_std=True,
                                                             return_interval=0.9)
        inside = np.mean(np.concatenate([((r >= iv[..., 0]) & (r <= iv[..., 1])).ravel()
                                         for r, iv in zip(ref_f, intervals, strict=True)]))
        one, two = (100 * metrics.coverage(forces, ref_f, forces_std, k) for k in (1, 2))
        print(f"calibrated on the {len(valid)} other frames: {one:.0f}% of test force "
              f"components within 1 std, {two:.0f}% within 2; conformal 90% intervals "
              f"hold {100 * inside:.0f}%")
    if args.plot and args.plot.lower() != "none":
        from kernelpot.plotting import plot_parity

        print(f"wrote {plot_parity(forces, ref_f, forces_std, args.plot)}")
    return 0


def _progress(args) -> int:
    """Return 1 (tqdm bars) on a terminal only, 0 in CI logs or with --quiet."""
    return int(sys.stderr.isatty() and not args.quiet)


def _read_config(path) -> dict:
    import tomllib

    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError as err:
        raise CLIError(f"no such file: {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise CLIError(f"{path} is not valid TOML: {err}") from err
    # descriptor.r_cut = 4.0 parses as {"descriptor": {"r_cut": 4.0}}; "descriptor.r_cut"
    # (quoted) as one flat key: both set the descriptor's parameter (two_body.* alike)
    model_params, nested_params = {}, {"descriptor": {}, "two_body": {}}
    for key, value in table.items():
        if key in nested_params and isinstance(value, dict):
            nested = [k for k, v in value.items() if isinstance(v, dict)]
            if nested:
                raise CLIError(f"{path}: use a flat table; got {key}.{nested[0]} as a "
                               "sub-table")
            nested_params[key].update(value)
        elif isinstance(value, dict):
            raise CLIError(f"{path}: use a flat table (estimator parameters and "
                           f"'descriptor.r_cut = 4.0' style keys); got a sub-table [{key}]")
        elif key.split(".", 1)[0] in nested_params and "." in key:
            owner, name = key.split(".", 1)
            nested_params[owner][name] = value
        else:
            model_params[key] = value
    return model_params, nested_params["descriptor"], nested_params["two_body"]


def _build_model(args, frames):
    from kernelpot import SparseGPPotential, TwoBody

    model_params, descriptor_params, two_body_params = (
        _read_config(args.config) if args.config else ({}, {}, {}))
    (_, descriptor), = _default_descriptors(frames, args.descriptor, args.r_cut)
    try:
        descriptor.set_params(**descriptor_params)
    except ValueError as err:
        raise CLIError(f"{args.config}: {err}") from err
    if args.r_cut is not None:
        descriptor.set_params(r_cut=args.r_cut)
    model = SparseGPPotential(descriptor, random_state=0, n_jobs=1, verbose=_progress(args))
    try:
        model.set_params(**model_params)
        if two_body_params:
            model.set_params(two_body=TwoBody().set_params(**two_body_params))
    except ValueError as err:
        raise CLIError(f"{args.config}: {err}") from err
    # command-line options win over the file
    for option, name in (("n_sparse", "n_sparse"), ("seed", "random_state"),
                         ("n_jobs", "n_jobs"), ("method", "method")):
        if getattr(args, option) is not None:
            model.set_params(**{name: getattr(args, option)})
    return model


def _errors(model, frames):
    """Predictions and reference labels of labelled frames, as a dict of arrays."""
    from kernelpot._labels import read_labels

    labels = read_labels(frames, "kernelpot")
    energies, forces, energy_std, forces_std = model.predict_energies_and_forces(
        frames, return_std=True)
    n_atoms = np.array([len(a) for a in frames])
    has_e = labels.has_energy
    has_f = [k for k, f in enumerate(labels.forces) if f is not None]
    return {
        "energies": energies[has_e], "ref_energies": labels.energies[has_e],
        "energy_std": energy_std[has_e], "n_atoms": n_atoms[has_e],
        "forces": [forces[k] for k in has_f], "ref_forces": [labels.forces[k] for k in has_f],
        "forces_std": [forces_std[k] for k in has_f],
    }


def _print_errors(title, err) -> None:
    from kernelpot import metrics

    if len(err["energies"]):
        e = err["energies"] - err["ref_energies"]
        per_atom = e / err["n_atoms"]
        print(f"{title} energies ({len(e)} structures): MAE {1e3 * np.mean(np.abs(e)):.2f} "
              f"meV, RMSE {1e3 * np.sqrt(np.mean(e**2)):.2f} meV, max "
              f"{1e3 * np.max(np.abs(e)):.2f} meV; per atom MAE "
              f"{1e3 * np.mean(np.abs(per_atom)):.2f}, RMSE "
              f"{1e3 * np.sqrt(np.mean(per_atom**2)):.2f}, max "
              f"{1e3 * np.max(np.abs(per_atom)):.2f} meV/atom")
    if err["forces"]:
        f, ref, std = err["forces"], err["ref_forces"], err["forces_std"]
        print(f"{title} forces ({sum(len(x) for x in f)} atoms): MAE "
              f"{1e3 * metrics.mae(f, ref):.1f} meV/Å, RMSE {1e3 * metrics.rmse(f, ref):.1f} "
              f"meV/Å, max {1e3 * metrics.max_error(f, ref):.0f} meV/Å")
        print(f"{title} calibration: {100 * metrics.coverage(f, ref, std, 1):.1f}% of force "
              f"components within 1 std (Gaussian 68.3%), "
              f"{100 * metrics.coverage(f, ref, std, 2):.1f}% within 2 (95.4%); Spearman "
              f"(per-atom std, error) {metrics.spearman_std_error(f, ref, std):.2f}; "
              f"negative log-likelihood {metrics.negative_log_likelihood(f, ref, std):.3f} "
              "per component")


def _cmd_fit(args) -> int:
    from kernelpot.estimator import format_signal_std

    frames = _read_frames(args.train)
    model = _build_model(args, frames)
    start = time.perf_counter()
    model.fit(frames)
    fit_s = time.perf_counter() - start
    print(f"kernelpot {__version__}: fitted {len(frames)} structures in {fit_s:.1f} s, "
          f"{sum(model.n_inducing_.values())} inducing environments {model.n_inducing_}")
    print(f"learned noise: energy {1e3 * model.energy_noise_:.3g} meV per √atom, forces "
          f"{1e3 * model.force_noise_:.3g} meV/Å; signal std "
          f"{format_signal_std(model.signal_std_)} eV")
    if model.two_body_ is not None:
        print(f"two-body term: r_cut {model.two_body_.r_cut} Å, {model.two_body_.n_basis} "
              f"basis functions, prior std {model.two_body_.prior_std:.3g} × signal std")
    _print_errors("training", _errors(model, frames))
    path = model.save(args.output)
    print(f"wrote {path}")
    return 0


def _cmd_eval(args) -> int:
    model = _load_model(args.model)
    frames = _read_frames(args.test)
    if args.output and not args.recalibrate:
        raise CLIError("--output only goes with --recalibrate")
    print(f"kernelpot {__version__}: {args.model} on {args.test} ({len(frames)} structures)")
    if args.recalibrate:
        valid = _read_frames(args.recalibrate)
        _print_errors("test (before recalibration)", _errors(model, frames))
        model.calibrate(valid)
        scale = model.std_scale_
        path = model.save(args.output or args.model,
                          training_state=model.posterior_.keeps_training_data)
        fitted = ", ".join(
            f"{q} factor {scale[q]:.3g}, projection weight {scale.get(q + '_projection', 1):.3g}, "
            f"exponent {scale.get(q + '_atom_exponent', scale.get(q + '_exponent', 1)):.3g}"
            for q in ("energy", "forces"))
        print(f"std calibration fitted on {args.recalibrate} ({len(valid)} structures): "
              f"{fitted}; conformal intervals from "
              f"{len(model.interval_scores_.get('forces', []))} force components; wrote {path}")
    err = _errors(model, frames)
    _print_errors("test", err)
    if args.plot:
        if not err["forces"]:
            raise CLIError(f"{args.test} has no forces to plot")
        from kernelpot.plotting import plot_parity

        path = plot_parity(err["forces"], err["ref_forces"], err["forces_std"], args.plot)
        print(f"wrote {path}")
    if args.calibration_plot or args.error_plot:
        if not err["forces"]:
            raise CLIError(f"{args.test} has no forces to plot")
        from kernelpot.plotting import plot_calibration, plot_error_vs_std

        if args.calibration_plot:
            print("wrote " + str(plot_calibration(err["forces"], err["ref_forces"],
                                                  err["forces_std"], args.calibration_plot)))
        if args.error_plot:
            print("wrote " + str(plot_error_vs_std(err["forces"], err["ref_forces"],
                                                   err["forces_std"], args.error_plot)))
    return 0


def _load_model(path):
    from kernelpot import load

    try:
        return load(path)
    except FileNotFoundError as err:
        raise CLIError(f"no such file: {path}") from err


def _cmd_predict(args) -> int:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    model = _load_model(args.model)
    frames = _read_frames(args.structures)
    energies, forces, energy_std, forces_std = model.predict_energies_and_forces(
        frames, return_std=True)
    periodic = [k for k, atoms in enumerate(frames) if np.all(atoms.pbc)]
    stresses = dict(zip(periodic, model.predict_stress([frames[k] for k in periodic])
                        if periodic else [], strict=True))
    out = []
    for k, (atoms, energy, e_std, force, f_std) in enumerate(
            zip(frames, energies, energy_std, forces, forces_std, strict=True)):
        result = atoms.copy()
        result.calc = None
        result.info["energy_std"] = float(e_std)
        result.arrays["forces_std"] = np.asarray(f_std, dtype=np.float64)
        extra = {"stress": stresses[k]} if k in stresses else {}
        result.calc = SinglePointCalculator(result, energy=float(energy), forces=force,
                                            **extra)
        out.append(result)
    try:
        write(args.output, out, format="extxyz")
    except OSError as err:
        raise CLIError(f"cannot write {args.output}: {err}") from err
    print(f"kernelpot {__version__}: wrote {len(out)} structures with predicted energies, "
          f"forces and their stds to {args.output}")
    return 0


def _cmd_learning_curve(args) -> int:
    from kernelpot.studies import learning_curve

    try:
        sizes = [int(token) for token in args.sizes.split(",")]
    except ValueError as err:
        raise CLIError(f"--sizes must be comma-separated integers; got {args.sizes!r}") from err
    train = _read_frames(args.train)
    test = _read_frames(args.test)
    model = _build_model(args, train)
    model.set_params(verbose=0)
    curve = learning_curve(model, train, test, sizes, repeats=args.repeats,
                           random_state=0 if args.seed is None else args.seed,
                           verbose=_progress(args), strategy=args.strategy,
                           initial=args.initial)
    grown = "at random" if args.strategy == "random" else \
        f"by uncertainty selection ({args.strategy}) from {args.initial} random structures"
    print(f"kernelpot {__version__}: learning curve on {args.test} ({len(test)} structures), "
          f"training sets grown {grown}, {args.repeats} subset(s) per size; mean (min-max) "
          "over subsets")
    header = (f"{'n':>6} {'force MAE meV/Å':>22} {'force RMSE':>11} {'energy MAE meV/atom':>22} "
              f"{'mean std meV/Å':>15} {'fit s':>7}")
    print(header)
    print("-" * len(header))
    for i, n in enumerate(curve["sizes"]):
        f = 1e3 * curve["force_mae"][i]
        e = 1e3 * curve["energy_mae"][i]
        print(f"{n:>6} {np.nanmean(f):>9.2f} ({np.nanmin(f):.1f}-{np.nanmax(f):.1f})"
              f"{'':>1} {1e3 * np.nanmean(curve['force_rmse'][i]):>11.2f} "
              f"{np.nanmean(e):>9.3f} ({np.nanmin(e):.2f}-{np.nanmax(e):.2f}) "
              f"{1e3 * np.nanmean(curve['force_std'][i]):>15.2f} "
              f"{np.mean(curve['fit_seconds'][i]):>7.1f}")
    if args.plot:
        from kernelpot.plotting import plot_learning_curve

        print(f"wrote {plot_learning_curve(curve, args.plot)}")
    return 0


def _reference_calculator(name):
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise CLIError("--reference xtb needs tblite: pip install -e '.[xtb]'") from err
    return TBLite(method="GFN2-xTB", verbosity=0)


def _cmd_md(args) -> int:
    from ase import units
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from sklearn.base import clone

    from kernelpot import KernelPotCalculator, OnTheFlyLearner

    if args.steps < 1 or args.temperature <= 0 or args.timestep <= 0 or args.interval < 1:
        raise CLIError("--steps and --interval must be >= 1, --temperature and --timestep > 0")
    if args.reference is None and (args.train or args.threshold is not None):
        raise CLIError("--train and --threshold only go with --reference")
    model = _load_model(args.model)
    atoms = _read_frames(args.start)[0].copy()
    atoms.calc = None
    thermalize_momenta(atoms, temperature_K=args.temperature,
                       rng=np.random.default_rng(args.seed))
    dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                   friction=0.01 / units.fs, fixcm=False,
                   rng=np.random.default_rng(args.seed + 1))
    learner = None
    if args.reference is not None:
        if args.train is None:
            raise CLIError("--reference needs --train (the model's training structures)")
        train = _read_frames(args.train)
        model = clone(model).set_params(incremental=True, verbose=0).fit(train)
        learner = OnTheFlyLearner(model, _reference_calculator(args.reference),
                                  threshold=args.threshold, directory=args.directory)
    else:
        atoms.calc = KernelPotCalculator(model)
    frames = []

    def record():
        # model predictions under names ase.io does not take for reference labels
        calc = atoms.calc
        snapshot = atoms.copy()
        snapshot.info["model_energy"] = float(calc.results["energy"])
        snapshot.info["energy_std"] = float(calc.results["energy_std"])
        snapshot.info["step"] = int(dyn.nsteps)
        snapshot.arrays["model_forces"] = calc.results["forces"].copy()
        snapshot.arrays["forces_std"] = calc.results["forces_std"].copy()
        if learner is not None:  # the calibrated std the learner compares with its threshold
            snapshot.arrays["gated_forces_std"] = learner.gated_std(calc.results)
        frames.append(snapshot)

    start = time.perf_counter()
    if learner is not None:
        dyn.attach(lambda: atoms.calc is not None and record(), interval=args.interval)
        learner.run(dyn, args.steps)
        if learner.stopped:
            raise CLIError(f"the on-the-fly run stopped: {learner.stopped}")
    else:
        atoms.get_forces()
        dyn.attach(record, interval=args.interval)
        dyn.run(args.steps)
    wall = time.perf_counter() - start
    key = "forces_std" if learner is None else "gated_forces_std"
    stds = [float(f.arrays[key].max()) for f in frames]
    what = "largest force std" if learner is None else (
        f"largest gated force std (threshold {learner.current_threshold:.3g} eV/Å)")
    print(f"kernelpot {__version__}: {args.steps} Langevin steps of {args.timestep} fs at "
          f"{args.temperature} K in {wall:.1f} s ({1e3 * wall / args.steps:.1f} ms/step); "
          f"final temperature {atoms.get_temperature():.0f} K; {what} "
          f"{max(stds) if stds else float('nan'):.3g} eV/Å")
    if learner is not None:
        print(f"{learner.n_reference_calls} {args.reference} calls; log, labelled frames and "
              f"model in {args.directory}/")
    if args.output:
        write(args.output, frames, format="extxyz")
        print(f"wrote {len(frames)} frames to {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kernelpot`` command line.

    Errors in the input (``CLIError``, ``ValueError``, ``TypeError``, ``OSError``)
    are printed as one line on stderr, with the traceback only under ``--debug``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        Exit code: 0 on success, 1 on an error, 130 when interrupted.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        print(f"kernelpot {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kernelpot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
