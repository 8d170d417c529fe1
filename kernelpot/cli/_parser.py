"""The ``kernelpot`` argument parser: subcommands, options and help texts."""

from __future__ import annotations

import argparse

from kernelpot import __version__
from kernelpot.cli.curves import _cmd_learning_curve
from kernelpot.cli.demo import _cmd_demo
from kernelpot.cli.descriptors import _cmd_descriptors
from kernelpot.cli.evaluate import _cmd_eval, _cmd_predict
from kernelpot.cli.fit import _cmd_fit
from kernelpot.cli.info import _cmd_info
from kernelpot.cli.md import _cmd_md

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
  kernelpot fit train.xyz -o model.npz --scheduler tcp://scheduler:8786   # on Dask
  kernelpot fit train.xyz --dry-run                     # the memory it would need

cfg.toml is a flat table of estimator and descriptor parameters (for ACSF a
descriptor.r_cut key changes the cutoff only; --r-cut also rescales the default
symmetry-function grid), e.g.
  n_sparse = 1000
  energy_noise = 0.001
  optimize = ["signal_std", "force_noise"]
  descriptor.r_cut = 4.5
  descriptor.n_max = 8
  two_body.r_cut = 5.0
  baseline.kind = "Coulomb"
  baseline.charges = {Na = 1, Cl = -1}
  kernel.kind = "NormalizedDotProduct+SquaredExponential"
(descriptor.* keys set the descriptor's parameters; any two_body.* key adds a
two-body term, kernelpot.TwoBody, with those parameters; baseline.kind ("ZBL",
"LennardJones", "Pair" or "Coulomb") and the other baseline.* keys add that baseline, fitted
around (Δ-learning); kernel.kind ("NormalizedDotProduct", the default, "SquaredExponential"
or "NormalizedDotProduct+SquaredExponential", the README's kernel for periodic solids) with
kernel.zeta (2), kernel.length_scale (twice the median distance between training
environments) and kernel.se_weight (0.1), all fixed, sets the kernel; command-line options
win)
"""


_INFO_EXAMPLE = """\
examples:
  kernelpot info model.npz
  kernelpot info otf_run/model.npz        # the on-the-fly learner's last checkpoint
"""

_EVAL_EXAMPLE = """\
examples:
  kernelpot eval model.npz test.xyz
  kernelpot eval model.npz test.xyz --plot parity.png --calibration-plot cal.png \\
      --error-plot err.png
  kernelpot eval model.npz test.xyz --recalibrate valid.xyz   # refit the std map, save it
  kernelpot eval model.npz test.xyz --intervals 0.9   # and how often the 90 % intervals hold

A model's stds are calibrated at fit time on its training structures' leave-one-
structure-out errors. --recalibrate replaces that map with one fitted on VALID
(labelled structures not trained on) by maximum likelihood: per quantity (energy,
forces) a scale, a weight of the projection term, an exponent and a factor of the
learned noise (four parameters each; below 50 values only the scale, the energies
taking the forces' weight and exponent), plus the
conformal scores behind return_interval. It stores them in the model file (or in
--output) and reports the test metrics with them; the model applies them to every std
it reports (SparseGPPotential(apply_calibration=False) switches them off).

Units: energies in meV per structure and per atom, forces and their stds in meV/Å.
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
  kernelpot md model.npz start.xyz --steps 2000 --temperature 800 --reference emt \\
      --train train.xyz --directory otf_run
  kernelpot md model.npz start.xyz --steps 2000 --temperature 800 --reference emt \\
      --directory otf_run --resume
  kernelpot md model.npz traj.extxyz --restart --steps 2000 --temperature 600 -o more.extxyz
  kernelpot md model.npz cell.xyz --ensemble npt --pressure 1.0 --steps 5000 --temperature 300

The trajectory holds the model's predictions as info["model_energy"], info["energy_std"],
arrays["model_forces"] and arrays["forces_std"] (total stds, as kernelpot predict writes
them), info["energy_std_epistemic"] and arrays["forces_std_epistemic"] (their epistemic
part, which the summary's largest force std reads), and, learning on the fly,
arrays["gated_forces_std"], the calibrated std compared with the threshold; with
--ensemble npt also info["model_stress"] (eV/Å³, Voigt order); without --reference also
info["contact_ratio"] (the closest pair's distance over the shortest training pair of
its elements; the on-the-fly step log has it). They are not stored as
reference labels, so the file is not mistaken for training data; the starting
structure's info["config_type"] is not carried into the MD frames.

Langevin dynamics by default (--ensemble nve and npt: see above) with the model as ASE
calculator; the trajectory keeps the velocities, so --restart continues it. With --reference
(emt, or xtb for GFN2-xTB from tblite) the run is uncertainty-gated: the model is refitted
on --train (its own training structures, as an incremental model of the same method;
"auto" turns sparse once the exact model passes its limits) and
learns on the fly whenever the calibrated force std exceeds --threshold; the log, labelled
frames and checkpoints go to --directory (otf_run by default; its labelled.extxyz starts
with the --train structures), and --resume continues an interrupted run from them. The
trajectory (-o) is written as the run goes.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelpot",
        description="Gaussian-process interatomic potentials with analytic derivatives "
                    "and uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"kernelpot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_demo, _add_descriptors, _add_fit, _add_info, _add_eval, _add_predict,
                _add_learning_curve, _add_md):
        _add_logging_options(add(sub))
    return parser


def _add_demo(sub) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "demo",
        help="fit a GP potential on bundled ethanol data, evaluate it on held-out frames",
        description="Fit a GP potential on bundled GFN2-xTB ethanol frames, evaluate "
                    "it on held-out frames and print the learned noise, errors and "
                    "calibration of the predicted uncertainty.",
        epilog=_DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n-train", type=int, default=100,
                        help="training frames (of the 150 non-test bundled frames; default 100)")
    parser.add_argument("--descriptor", type=str.lower, choices=["soap", "acsf"], default="soap")
    parser.add_argument("--method", type=str.lower, choices=["auto", "sparse", "exact"],
                        default="auto",
                        help="auto (default: exact while its fit takes under 4 GiB and "
                             "about a minute, and prediction with stds 20 ms/atom), "
                             "the sparse GP or the exact force-domain GP")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--plot", default="demo_parity.png",
                        help="force parity plot coloured by the predicted std "
                             "(default demo_parity.png; 'none' to skip)")
    parser.set_defaults(func=_cmd_demo)
    return parser


def _add_descriptors(sub) -> argparse.ArgumentParser:
    """Add the ``descriptors`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "descriptors",
        help="compute ACSF and SOAP features with analytic gradients and print a summary",
        description="Compute ACSF and SOAP features with analytic position gradients for "
                    "structures (the bundled ethanol and silicon frames by default) and print "
                    "shapes, timing and peak memory.",
        epilog=_DESCRIPTORS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="*", help="structure files readable by ase.io "
                        "(default: the bundled data sets)")
    parser.add_argument("--descriptor", type=str.lower, choices=["acsf", "soap", "both"],
                        default="both")
    parser.add_argument("--r-cut", type=float, default=None,
                        help="cutoff in Å (default: 4.0 for molecules, 5.0 for periodic cells)")
    parser.add_argument("--n-jobs", type=int, default=1, help="joblib workers (default 1)")
    parser.add_argument("--frames", type=int, default=None,
                        help="use at most this many frames per data set")
    parser.set_defaults(func=_cmd_descriptors)
    return parser


def _add_fit(sub) -> argparse.ArgumentParser:
    """Add the ``fit`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "fit", help="fit a GP potential (exact or sparse) to labelled structures and save it",
        description="Fit a GP potential (exact or sparse: --method) to structures with "
                    "reference energies and "
                    "forces, and the stresses of periodic cells that carry one (any file "
                    "ase.io reads), print the learned noise, training errors and time, "
                    "and save the model (.npz).",
        epilog=_FIT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", help="training structures with energies and/or forces")
    parser.add_argument("-o", "--output", default=None,
                        help="model file to write (.npz; required unless --dry-run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the fit's estimated memory, stage by stage (inducing "
                             "selection, design, likelihood search, LOSO pass), and exit "
                             "without fitting; the structures are read once and the "
                             "descriptors of the largest computed")
    parser.add_argument("--no-train-eval", action="store_true",
                        help="skip predicting the training set after the fit (its errors "
                             "are printed otherwise; on a large set this takes a while)")
    parser.add_argument("--no-stress", action="store_true",
                        help="train on energies and forces only, not on the stresses the "
                             "cells carry (use_stress=False)")
    parser.add_argument("--config-type-noise", action="store_true",
                        help="learn energy, force and stress noise scales per configuration "
                             "type (atoms.info['config_type'], as GAP's config_type_sigma "
                             "but fitted by the likelihood; config_type_noise=True)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="fit on the Dask cluster whose scheduler is at ADDRESS "
                             "(tcp://host:8786; the design streamed in blocks on the "
                             "workers; needs the [dask] extra)")
    _add_model_options(parser)
    parser.set_defaults(func=_cmd_fit)
    return parser


def _add_info(sub) -> argparse.ArgumentParser:
    """Add the ``info`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "info", help="what a model file holds: species, descriptor, kernel, noise, calibration",
        description="Print what a saved model holds without predicting: file format and the "
                    "kernelpot version that wrote it, species, descriptor, kernel and "
                    "hyperparameters, learned noise levels, training-set size, inducing "
                    "environments, the std calibration and the interval kind.",
        epilog=_INFO_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model file written by kernelpot (.npz)")
    parser.set_defaults(func=_cmd_info)
    return parser


def _add_eval(sub) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "eval", help="errors and uncertainty calibration of a model on labelled structures",
        description="Evaluate a saved model on labelled structures: energy and force MAE and "
                    "RMSE, and the calibration of the predicted std (coverage at 1 and 2 std, "
                    "Spearman rank correlation of per-atom std and error), also per "
                    "configuration type (atoms.info['config_type']) where there are two or "
                    "more; and how many "
                    "structures hold a pair more than 5 % closer than any training pair of "
                    "its elements (the model extrapolates there), with their force MAE "
                    "(or that none does).",
        epilog=_EVAL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model file written by kernelpot (.npz)")
    parser.add_argument("test", help="labelled structures")
    parser.add_argument("--plot", default=None,
                        help="write a force parity plot coloured by the predicted std")
    parser.add_argument("--calibration-plot", default=None,
                        help="write the force calibration curve (observed vs nominal coverage)")
    parser.add_argument("--error-plot", default=None,
                        help="write per-atom force error against predicted std")
    parser.add_argument("--recalibrate", default=None, metavar="VALID",
                        help="refit the std calibration map (four parameters per quantity) "
                             "and the interval scores on these labelled validation structures "
                             "first")
    parser.add_argument("-o", "--output", default=None,
                        help="with --recalibrate: write the calibrated model here instead of "
                             "updating MODEL")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="joblib workers over the structures (default 1; -1: all cores)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="predict on the Dask cluster whose scheduler is at ADDRESS "
                             "(tcp://host:8786; in place of --n-jobs; needs the [dask] "
                             "extra)")
    parser.add_argument("--intervals", type=float, default=None, metavar="LEVEL",
                        help="also how many energies and force components fall inside the "
                             "model's intervals of nominal coverage LEVEL (e.g. 0.9; "
                             "return_interval=: jackknife+ from the training structures, or "
                             "split-conformal after --recalibrate); one more prediction pass")
    parser.set_defaults(func=_cmd_eval)
    return parser


def _add_predict(sub) -> argparse.ArgumentParser:
    """Add the ``predict`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "predict", help="predict energies, forces and their stds into an extxyz file",
        description="Predict energies, forces and their (total) stds for structures and "
                    "write them to an extended XYZ file.",
        epilog=_PREDICT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model file written by kernelpot (.npz)")
    parser.add_argument("structures", help="structures (any file ase.io reads)")
    parser.add_argument("-o", "--output", required=True, help="extended XYZ file to write")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="joblib workers over the structures (default 1; -1: all cores)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="predict on the Dask cluster whose scheduler is at ADDRESS "
                             "(tcp://host:8786; in place of --n-jobs; needs the [dask] "
                             "extra)")
    parser.set_defaults(func=_cmd_predict)
    return parser


def _add_learning_curve(sub) -> argparse.ArgumentParser:
    """Add the ``learning-curve`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "learning-curve", help="errors and predicted std against training-set size",
        description="Fit models on random subsets of growing size and print (and plot) "
                    "force and energy errors on a test set with the mean predicted std.",
        epilog=_LC_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", help="labelled structures to draw training subsets from")
    parser.add_argument("test", help="labelled test structures")
    parser.add_argument("--sizes", required=True, help="comma-separated training-set sizes")
    parser.add_argument("--repeats", type=int, default=1, help="subsets per size (default 1)")
    parser.add_argument("--strategy", choices=["random", "variance", "reduction"],
                        default="random",
                        help="grow training sets at random (default) or by uncertainty "
                             "selection from --initial random structures: the most uncertain "
                             "structures (variance) or those that most reduce the uncertainty "
                             "over the pool (reduction); see kernelpot.select_frames")
    parser.add_argument("--initial", type=int, default=10,
                        help="random starting structures of --strategy variance (default 10)")
    parser.add_argument("--plot", default=None, help="write a log-log plot of the curve")
    _add_model_options(parser)
    parser.set_defaults(func=_cmd_learning_curve)
    return parser


def _add_md(sub) -> argparse.ArgumentParser:
    """Add the ``md`` subcommand to ``sub`` and return its parser."""
    parser = sub.add_parser(
        "md", help="molecular dynamics with a model, optionally learning on the fly",
        description="Run molecular dynamics (Langevin, NVE or NPT) with a saved model as ASE "
                    "calculator; with --reference, uncertainty-gated MD that calls the "
                    "reference and learns when the model is unsure.",
        epilog=_MD_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model file written by kernelpot (.npz)")
    parser.add_argument("start", help="starting structure (the first frame of the file)")
    parser.add_argument("--steps", type=int, required=True, help="MD steps to run")
    parser.add_argument("--temperature", type=float, required=True, help="kelvin")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    parser.add_argument("-o", "--output", default=None,
                        help="trajectory file (extxyz); the model's values as entries "
                             "named below, not as labels")
    parser.add_argument("--interval", type=int, default=10,
                        help="steps between trajectory frames (default 10)")
    _add_learning_options(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial velocities and the Langevin noise (default 0)")
    parser.add_argument("--ensemble", type=str.lower, choices=["langevin", "nve", "npt"],
                        default="langevin",
                        help="langevin (default; --friction), nve (velocity Verlet: "
                             "--temperature only sets the initial velocities) or npt "
                             "(isotropic Martyna-Tobias-Klein barostat with Nosé-Hoover "
                             "chains, ASE's IsotropicMTKNPT; periodic cells; --pressure, "
                             "--tdamp, --pdamp)")
    parser.add_argument("--friction", type=float, default=0.01,
                        help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--pressure", type=float, default=0.0,
                        help="npt: external pressure, GPa (default 0)")
    parser.add_argument("--tdamp", type=float, default=100.0,
                        help="npt: thermostat time constant, fs (default 100)")
    parser.add_argument("--pdamp", type=float, default=1000.0,
                        help="npt: barostat time constant, fs (default 1000)")
    parser.add_argument("--restart", action="store_true",
                        help="start from the last frame of START with the velocities it "
                             "carries (a trajectory written by -o) instead of its first frame "
                             "with thermal ones; step numbers continue")
    parser.add_argument("--no-std", action="store_true",
                        help="compute energies and forces only, not their stds (faster; not "
                             "with --reference)")
    parser.add_argument("--status-every", type=int, default=100, metavar="STEPS",
                        help="print a status line every STEPS steps (default 100; --quiet "
                             "prints none)")
    parser.set_defaults(func=_cmd_md)
    return parser



def _add_learning_options(parser: argparse.ArgumentParser) -> None:
    """Add ``kernelpot md``'s on-the-fly options (``--reference`` and what goes with it)."""
    parser.add_argument("--reference", type=str.lower, choices=["emt", "xtb"], default=None)
    parser.add_argument("--threshold", type=float, default=None,
                        help="absolute force-std threshold, eV/Å (with --reference; default: "
                             "1.5 times the largest calibrated force std of a training "
                             "structure left out of the model, at most 0.1 times the RMS of "
                             "the labelled force components, recomputed after every call)")
    parser.add_argument("--min-interval", type=int, default=10, metavar="STEPS",
                        help="with --reference: MD steps between two reference calls, at "
                             "least (default 10; 3 for a young model of a molecule with "
                             "sub-femtosecond steps, whose wrong forces heat it in between)")
    # no default here: --resume keeps the run's saved value unless this is given
    parser.add_argument("--critical-factor", type=_critical, default=argparse.SUPPRESS,
                        metavar="FACTOR",
                        help="with --reference: a force std past this many thresholds (and "
                             "this many times the std just after the last call) calls the "
                             "reference without waiting --min-interval steps (as VASP's "
                             "ML_CDOUB, whose default is 2; default here 'none': every call "
                             "waits; with --resume, replaces the interrupted run's value)")
    parser.add_argument("--contact-margin", type=_margin, default=argparse.SUPPRESS,
                        metavar="FRACTION",
                        help="with --reference: also call it when two atoms come this fraction "
                             "closer than the shortest pair of their elements in the labelled "
                             "structures (default 0.05; 'none' turns the contact gate off; not "
                             "with --resume, which keeps the run's value)")
    # no default here: --resume keeps the run's saved value unless this is given
    parser.add_argument("--max-energy-gap", type=_gap, default=argparse.SUPPRESS,
                        metavar="EV_PER_ATOM",
                        help="with --reference: stop at a reference energy further than this "
                             "from the model's (and 20 energy stds): another method than the "
                             "model was trained on, or a structure unlike any trained on "
                             "(default 1 eV per atom; 'none' turns the check off; with "
                             "--resume, replaces the interrupted run's value)")
    parser.add_argument("--resume", action="store_true",
                        help="with --reference: continue the interrupted on-the-fly run in "
                             "--directory from its last checkpoint (model, labelled frames, "
                             "MD state, and the learner's threshold and --min-interval) to "
                             "its --steps, counted from the run's start as in the command "
                             "that began it (a larger value extends a finished run); START, "
                             "--train, --threshold and --min-interval are not used; "
                             "give the interrupted run's --ensemble, --timestep, --temperature "
                             "and thermostat options; -o continues its file from the "
                             "checkpoint's step")
    parser.add_argument("--train", default=None,
                        help="the model's training structures (with --reference)")
    parser.add_argument("--directory", default="otf_run",
                        help="on-the-fly files (with --reference; default otf_run)")
    parser.add_argument("--label-stress", action=argparse.BooleanOptionalAction, default=None,
                        help="with --reference: also label the reference's stress of each "
                             "called cell and gate on the stress std where the cell changed "
                             "(default: on with --ensemble npt, whose volume changes can "
                             "leave the forces' std unmoved; off otherwise; not with "
                             "--resume, which keeps the run's setting)")

def _add_logging_options(parser) -> None:
    """Add the options every subcommand takes: log level and tracebacks."""
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    parser.add_argument("--quiet", action="store_true",
                        help="log errors only (no warnings, progress bars or status lines; "
                             "the results still print)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _add_model_options(parser) -> None:
    """Add the options of the model a command fits (fit, learning-curve; _build_model)."""
    parser.add_argument("--descriptor", type=str.lower, choices=["soap", "acsf"], default="soap")
    parser.add_argument("--r-cut", type=float, default=None,
                        help="cutoff in Å (default: 4.0 for molecules, 5.0 for periodic cells)")
    parser.add_argument("--n-sparse", type=int, default=None,
                        help="inducing environments per element of the sparse GP (default: all, "
                             "up to 2000; given, method auto fits the sparse GP)")
    parser.add_argument("--method", type=str.lower, choices=["auto", "sparse", "exact"],
                        default=None,
                        help="auto (default: the exact force-domain GP while its estimated "
                             "fit takes under a minute and 4 GiB and its prediction with "
                             "stds 20 ms/atom, the sparse GP otherwise), "
                             "sparse, or exact (memory grows as the square of the force "
                             "components, fit time as the cube)")
    parser.add_argument("--min-distance", type=float, default=None, metavar="Å",
                        help="refuse training structures with atoms closer than this "
                             "(default 0.5 Å; 0 accepts any distance)")
    parser.add_argument("--config", default=None,
                        help="TOML file of estimator and descriptor parameters (format: "
                             "the examples at the end of kernelpot fit --help)")
    parser.add_argument("--n-jobs", type=int, default=None, help="joblib workers (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")


def _number_or_none(text: str, accepted, what: str) -> float | None:
    """Parse an option that takes a number ``accepted(value)`` allows, or "none"."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not accepted(value):
        raise argparse.ArgumentTypeError(f"must be {what} or 'none'; got {text!r}")
    return value


def _margin(text: str) -> float | None:
    """Parse --contact-margin: a fraction in [0, 1), or "none"."""
    return _number_or_none(text, lambda value: 0 <= value < 1, "a fraction in [0, 1)")


def _critical(text: str) -> float | None:
    """Parse --critical-factor: a factor of at least 1, or "none"."""
    return _number_or_none(text, lambda value: value >= 1, "a factor of at least 1")


def _gap(text: str) -> float | None:
    """Parse --max-energy-gap: a number of eV per atom above 0, or "none"."""
    return _number_or_none(text, lambda value: value > 0, "a number of eV per atom above 0")
