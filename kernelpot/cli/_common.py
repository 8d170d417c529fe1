"""Helpers the ``kernelpot`` commands share.

Errors, logging, reading structures, model files and TOML configurations, building the
model a command fits and printing its errors.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import numpy as np

from kernelpot._numbers import GPA  # noqa: F401 (the commands import it from here)

_STARTED = [time.perf_counter()]


def mark_start() -> None:
    """Start the clock of :func:`elapsed` (``main`` calls it first)."""
    _STARTED[0] = time.perf_counter()


def elapsed() -> float:
    """Return the seconds since the command started."""
    return time.perf_counter() - _STARTED[0]


class CLIError(Exception):
    """An error reported as one line on stderr with a non-zero exit code."""


class _CommandFormatter(logging.Formatter):
    """Warnings and errors as the command's own lines (``kernelpot fit: warning: ...``).

    Messages below WARNING (``-v``) keep the level and logger name.
    """

    def __init__(self, command: str | None):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING and self.command:
            return f"kernelpot {self.command}: {record.levelname.lower()}: {record.getMessage()}"
        return super().format(record)


def _configure_logging(args) -> None:
    level = logging.WARNING
    if args.quiet:
        level = logging.ERROR
    elif args.verbose == 1:
        level = logging.INFO
    elif args.verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CommandFormatter(getattr(args, "command", None)))
    root = logging.getLogger("kernelpot")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _progress(args) -> int:
    """Return 1 (tqdm bars) on a terminal only, 0 in CI logs or with --quiet."""
    return int(sys.stderr.isatty() and not args.quiet)


def _read_frames(path: str, lazy: bool = False) -> list:
    """Read the structures of ``path`` (lazy: a FrameFiles, read when used), or say why not."""
    from ase.io import read
    from ase.io.formats import UnknownFileTypeError

    from kernelpot.frame_files import FrameFiles

    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise CLIError(f"{path} is empty: no structures to read")
    try:
        if lazy:
            if not Path(path).exists():
                raise FileNotFoundError(path)
            try:
                return FrameFiles(path)
            except ValueError as err:  # FrameFiles names the file; ase.io's error is the cause
                raise (err.__cause__ or err) from err
        frames = read(path, ":")
    except FileNotFoundError as err:
        raise CLIError(f"no such file: {path}") from err
    except UnknownFileTypeError as err:
        raise CLIError(f"cannot read {path}: ase.io does not know its format from the name "
                       "or the contents; give a structure file ase.io reads (extended XYZ "
                       "'.extxyz'/'.xyz', VASP POSCAR/OUTCAR/vasprun.xml, ASE '.traj', CIF, "
                       "...) with its usual name") from err
    except Exception as err:  # ase.io raises many types for unreadable files
        raise CLIError(f"cannot read {path} as structures with ase.io "
                       f"({type(err).__name__}: {err})") from err
    if not frames:
        raise CLIError(f"{path} holds no structures")
    return frames


def structures_fitted_on(model) -> int | None:
    """Return how many structures ``model`` was fitted on, where its file records it."""
    posterior = model.posterior_
    if posterior.kind == "exact":
        return posterior.n_training_structures
    return posterior.fitted_structures()


def _load_model(path):
    from kernelpot import load

    try:
        return load(path)
    except FileNotFoundError as err:
        raise CLIError(f"no such file: {path}") from err


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
    # (quoted) as one flat key: both set the descriptor's parameter (two_body.* and
    # baseline.* alike; a baseline's charges are the one value that is a table, so they
    # go as baseline.charges = {...}, not as a quoted flat key)
    model_params, nested_params = {}, {"descriptor": {}, "two_body": {}, "baseline": {},
                                       "kernel": {}}
    for key, value in table.items():
        if key in nested_params and isinstance(value, dict):
            nested = [k for k, v in value.items() if isinstance(v, dict)
                      and not (key == "baseline" and k == "charges")]
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
    if nested_params["baseline"]:
        model_params["baseline"] = _baseline_from_config(path, nested_params["baseline"])
    if "kernel" in model_params:  # a flat value (a table went to nested_params)
        raise CLIError(f"{path}: name the kernel with kernel.kind = "
                       f"{' | '.join(repr(k) for k in _KERNEL_KINDS)} and its kernel.* keys "
                       f"({', '.join('kernel.' + k for k in _KERNEL_KEYS)}); got kernel = "
                       f"{model_params['kernel']!r}")
    if nested_params["kernel"]:
        model_params["kernel"] = _KernelConfig(path, nested_params["kernel"])
    return model_params, nested_params["descriptor"], nested_params["two_body"]


#: ``kernel.kind`` values of a config file, and the other ``kernel.*`` keys.
_KERNEL_KINDS = ("NormalizedDotProduct", "SquaredExponential",
                 "NormalizedDotProduct+SquaredExponential")
_KERNEL_KEYS = ("zeta", "length_scale", "se_weight")


class _KernelConfig:
    """A config file's ``kernel.*`` keys, checked; built into a kernel once the data is read.

    ``kernel.kind`` is one of :data:`_KERNEL_KINDS`; ``kernel.zeta`` (default 2),
    ``kernel.length_scale`` (Å-free descriptor units; default twice the median distance
    between training environments, as the README's kernel for solids) and
    ``kernel.se_weight`` (the squared exponential's weight in the sum, default 0.1) are
    fixed, not fitted.
    """

    def __init__(self, path, params: dict):
        params = dict(params)
        self.path = path
        self.kind = params.pop("kind", None)
        if self.kind not in _KERNEL_KINDS:
            raise CLIError(f"{path}: kernel.kind must be one of {list(_KERNEL_KINDS)}; got "
                           f"{self.kind!r}")
        unknown = sorted(set(params) - set(_KERNEL_KEYS))
        if unknown:
            raise CLIError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join('kernel.' + k for k in unknown)}. Valid keys: "
                           f"kernel.kind, {', '.join('kernel.' + k for k in _KERNEL_KEYS)}")
        self.zeta = params.get("zeta", 2)
        self.length_scale = params.get("length_scale")
        self.se_weight = params.get("se_weight", 0.1)

    def build(self, descriptor, frames):
        """Return the kernel, the length scale measured on ``frames`` if not given."""
        from kernelpot.kernels import NormalizedDotProduct, Scaled, SquaredExponential

        try:
            if self.kind == "NormalizedDotProduct":
                return NormalizedDotProduct(self.zeta)
            ell = self.length_scale if self.length_scale is not None \
                else 2.0 * _median_distance(descriptor, frames)
            se = SquaredExponential(float(ell), "fixed")
            if self.kind == "SquaredExponential":
                return se
            return NormalizedDotProduct(self.zeta) + Scaled(se, float(self.se_weight), "fixed")
        except (TypeError, ValueError) as err:
            raise CLIError(f"{self.path}: {err}") from err


def _median_distance(descriptor, frames) -> float:
    """Median distance between the descriptors of 2,000 random pairs of environments."""
    sample = np.concatenate([descriptor.create(a) for a in frames[::max(len(frames) // 20, 1)]])
    pick = np.random.default_rng(0).integers(len(sample), size=(2000, 2))
    return float(np.median(np.linalg.norm(sample[pick[:, 0]] - sample[pick[:, 1]], axis=1)))


def _baseline_from_config(path, params: dict):
    """Build the baseline a config's ``baseline.kind`` and other ``baseline.*`` keys name."""
    from kernelpot.baselines import ZBL, Coulomb, LennardJones, Pair

    kinds = {cls.__name__: cls for cls in (ZBL, LennardJones, Coulomb, Pair)}
    params = dict(params)
    kind = params.pop("kind", None)
    if kind not in kinds:
        raise CLIError(f"{path}: baseline.kind must be one of {sorted(kinds)}; got {kind!r}")
    valid = sorted(kinds[kind]().get_params(deep=False))
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise CLIError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join('baseline.' + k for k in unknown)} for a {kind} "
                       f"baseline. Valid keys: baseline.kind, "
                       f"{', '.join('baseline.' + k for k in valid)}")
    baseline = kinds[kind](**params)
    try:
        baseline.check()
    except (TypeError, ValueError) as err:
        raise CLIError(f"{path}: {err}") from err
    return baseline


def _default_descriptors(frames, which: str, r_cut):
    from kernelpot.descriptors.defaults import default_acsf, default_soap

    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    periodic = any(atoms.pbc.any() for atoms in frames)
    out = []
    if which in ("acsf", "both"):
        out.append(("ACSF", default_acsf(species, periodic, r_cut)))
    if which in ("soap", "both"):
        out.append(("SOAP", default_soap(species, periodic, r_cut)))
    return out


def _build_model(args, frames):
    from kernelpot import SparseGPPotential, TwoBody

    model_params, descriptor_params, two_body_params = (
        _read_config(args.config) if args.config else ({}, {}, {}))
    (_, descriptor), = _default_descriptors(frames, args.descriptor, args.r_cut)
    _check_config_keys(args.config, SparseGPPotential(), descriptor, model_params,
                       descriptor_params, two_body_params)
    try:
        descriptor.set_params(**descriptor_params)
    except ValueError as err:
        raise CLIError(f"{args.config}: {err}") from err
    if args.r_cut is not None:
        descriptor.set_params(r_cut=args.r_cut)
    model = SparseGPPotential(descriptor, random_state=0, n_jobs=1, verbose=_progress(args))
    kernel = model_params.pop("kernel", None)  # a _KernelConfig: checked by _read_config
    if kernel is not None:
        model.set_params(kernel=kernel.build(descriptor, frames))
    try:
        model.set_params(**model_params)
        if two_body_params:
            model.set_params(two_body=TwoBody().set_params(**two_body_params))
    except ValueError as err:
        raise CLIError(f"{args.config}: {err}") from err
    # command-line options win over the file
    for option, name in (("n_sparse", "n_sparse"), ("seed", "random_state"),
                         ("n_jobs", "n_jobs"), ("method", "method"),
                         ("min_distance", "min_distance")):
        value = getattr(args, option, None)
        if value is not None:
            if option == "min_distance" and value == 0:
                value = None  # 0: accept any distance
            model.set_params(**{name: value})
    if getattr(args, "no_stress", False):
        model.set_params(use_stress=False)
    if getattr(args, "config_type_noise", False):
        model.set_params(config_type_noise=True)
    return model


def noise_scales_line(model) -> str | None:
    """Describe a model's noise scales per configuration type in one line (None: none)."""
    scales = getattr(model, "config_type_noise_", None)
    if not scales:
        return None
    parts = [f"{name} E×{row['energy']:.3g} F×{row['forces']:.3g} S×{row['stress']:.3g}"
             for name, row in scales.items()]
    return "noise scales per configuration type: " + "; ".join(parts)


def _check_config_keys(path, model, descriptor, model_params, descriptor_params,
                       two_body_params) -> None:
    """Raise a CLIError naming every unknown key of a config file, with the valid ones."""
    from kernelpot import TwoBody

    unknown, valid = [], []
    for prefix, params, target in (("", model_params, model),
                                   ("descriptor.", descriptor_params, descriptor),
                                   ("two_body.", two_body_params, TwoBody())):
        names = sorted(target.get_params(deep=False))
        bad = [f"{prefix}{key}" for key in params if key not in names]
        unknown += bad
        if bad or not prefix:
            valid.append(("estimator" if not prefix else prefix.rstrip("."),
                          [f"{prefix}{name}" for name in names]))
    if unknown:
        lists = "; ".join(f"{what}: {', '.join(names)}" for what, names in valid)
        raise CLIError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(unknown)}. Valid keys, {lists}")


def _errors(model, frames, source: str = "kernelpot", stds: bool = True):
    """Predictions and reference labels of labelled frames, as a dict of arrays.

    ``stds=False`` predicts the means only (the std entries are None): the training
    set's errors, whose coverage is not printed, at a fraction of the cost (the std of
    every force component costs several times the mean).
    """
    from kernelpot._labels import read_labels

    labels = read_labels(frames, source, stress=True)
    has_s = np.flatnonzero(labels.has_stress)
    stress = stress_std = np.zeros((0, 6))
    energy_std = forces_std = None
    one_pass = not stds and has_s.size == len(frames)  # every structure a cell with a stress
    if stds:
        energies, forces, energy_std, forces_std = model.predict_energies_and_forces(
            frames, return_std=True)
    elif one_pass:
        _, predicted = model._predict_many(frames, forces=True, variance=False, stress=True,
                                           method="predict_stress")
        energies = np.array([p.energy for p in predicted])
        forces = [p.forces for p in predicted]
        stress = np.array([p.stress for p in predicted]).reshape(-1, 6)
    else:
        energies, forces = model.predict_energies_and_forces(frames)
    if has_s.size and not one_pass:
        cells = [frames[k] for k in has_s]
        stress, stress_std = model.predict_stress(cells, return_std=True) if stds \
            else (model.predict_stress(cells), None)
    n_atoms = np.array([len(a) for a in frames])
    has_e = labels.has_energy
    has_f = [k for k, f in enumerate(labels.forces) if f is not None]
    return {
        "energies": energies[has_e], "ref_energies": labels.energies[has_e],
        "energy_std": energy_std[has_e] if stds else None, "n_atoms": n_atoms[has_e],
        "energy_structures": np.flatnonzero(has_e),
        "forces": [forces[k] for k in has_f], "ref_forces": [labels.forces[k] for k in has_f],
        "forces_std": [forces_std[k] for k in has_f] if stds else None,
        "force_structures": has_f,
        "force_numbers": [np.asarray(frames[k].numbers) for k in has_f],
        "stress": stress, "ref_stress": np.array([labels.stresses[k] for k in has_s]),
        "stress_structures": has_s,
        "stress_std": stress_std if stds else None,
    }


def _check_output(path, what: str, directory: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work is done.

    ``directory``: the path is a directory to create or reuse, not a file.
    """
    import os
    from pathlib import Path

    if path is None:
        return
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir() and not directory:
        raise CLIError(f"{what} {path} is a directory; give a file name")
    if not parent.is_dir():
        raise CLIError(f"cannot write {what} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write {what} {path}: the directory {parent} is not writable")


def _print_errors(title, err, calibration: bool = True) -> None:
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
        if calibration:
            std = err["energy_std"]
            print(f"{title} energy calibration: {100 * np.mean(np.abs(e) <= std):.1f}% of "
                  f"energies within 1 std (Gaussian 68.3%), "
                  f"{100 * np.mean(np.abs(e) <= 2 * std):.1f}% within 2 (95.4%); "
                  f"{_size_note(err['energies'], err['ref_energies'], std, 'energy')}")
    if err["forces"]:
        f, ref, std = err["forces"], err["ref_forces"], err["forces_std"]
        print(f"{title} forces ({sum(len(x) for x in f)} atoms): MAE "
              f"{1e3 * metrics.mae(f, ref):.1f} meV/Å, RMSE {1e3 * metrics.rmse(f, ref):.1f} "
              f"meV/Å, max {1e3 * metrics.max_error(f, ref):.0f} meV/Å")
        if calibration:
            _print_force_calibration(title, f, ref, std, err.get("force_numbers"))
    missing = [what for what, present in (("energies", len(err["energies"])),
                                          ("forces", err["forces"])) if not present]
    if missing:  # said, not silently left out
        print(f"{title}: no reference {' or '.join(missing)} in these structures: their "
              "errors are not computed")
    _print_stress_errors(title, err, calibration)


def _print_force_calibration(title, f, ref, std, numbers=None) -> None:
    """Print the force stds' coverage, Spearman and NLL.

    The coverage and NLL without the components that are zero in both the reference and
    the prediction (a crystal's symmetry fixes them), which every std covers; the
    Spearman over all atoms (CLARIFICATIONS.md). With the atoms' ``numbers`` (one array
    per structure) of two or more elements, also each element's RMS z-score.
    """
    from kernelpot import metrics

    fixed = metrics.fixed_components(f, ref)
    if fixed.all():
        print(f"{title} calibration: every force component is zero in both the reference "
              "and the prediction (as a crystal's symmetry fixes them): nothing to check the "
              "stds on")
        return
    # Spearman over all atoms, as CLARIFICATIONS.md defines it
    spearman = (f"{metrics.spearman_std_error(f, ref, std):.2f}{_expected_spearman(std)}"
                if fixed.size >= 9 else "n/a (fewer than 3 atoms)")
    counted = ~fixed
    flat_f, flat_ref, flat_std = (np.concatenate([np.ravel(x) for x in v])[counted]
                                  for v in (f, ref, std))
    left_out = (f" ({int(fixed.sum())} of {fixed.size} components, zero in both the "
                "reference and the prediction as a crystal's symmetry fixes them, left out "
                "of the coverage and the NLL)" if fixed.any() else "")
    print(f"{title} calibration: "
          f"{100 * metrics.coverage(flat_f, flat_ref, flat_std, 1):.1f}% of force components "
          f"within 1 std (Gaussian 68.3%), "
          f"{100 * metrics.coverage(flat_f, flat_ref, flat_std, 2):.1f}% within 2 "
          f"(95.4%){left_out}; Spearman (per-atom std, error) {spearman}; negative "
          f"log-likelihood {metrics.negative_log_likelihood(flat_f, flat_ref, flat_std):.3f} "
          f"nats per component; {_size_note(flat_f, flat_ref, flat_std, 'force')}"
          f"{_element_z_scores(f, ref, std, numbers)}")


def _element_z_scores(f, ref, std, numbers) -> str:
    """``; per element RMS z-score H 0.85, C 0.97``, or "" (one element, or no numbers).

    One map for every atom can leave one element's stds too wide and another's too
    narrow (:mod:`kernelpot.element_scales`); the overall RMS z-score hides that.
    """
    from ase.data import chemical_symbols

    from kernelpot import metrics

    if numbers is None:
        return ""
    factors = metrics.element_recalibration_factors(f, ref, std, numbers)
    if len(factors) < 2:
        return ""
    parts = [f"{chemical_symbols[n]} {value:.2f}" for n, value in factors.items()]
    return f"; per element RMS z-score {', '.join(parts)}"


def _expected_spearman(std) -> str:
    """`` (expected X for exactly right stds)``: what the Spearman printed beside it means.

    A Spearman of 0.3 reads as "the stds do not rank the errors" unless one knows that
    exactly right stds of a narrow spread give about as little (a new user's Ni vacancy
    cells: 0.29 measured, 0.33 expected). Empty where an atom's stds are all zero (a
    perfect crystal's), which :func:`kernelpot.metrics.expected_spearman` cannot draw from.
    """
    from kernelpot import metrics

    per_atom = np.concatenate([np.reshape(s, (-1, 3)) for s in std])
    if np.any(per_atom <= 0) or not np.all(np.isfinite(per_atom)):
        return ""
    expected = metrics.expected_spearman([per_atom], n_draws=20, random_state=0)
    return (f" (exactly right stds of this spread would give about {expected:.2f}; "
            "metrics.expected_spearman)")


#: RMS z-scores that :func:`_size_note` lets pass without a remark: about two standard
#: deviations of a calibrated RMS z-score over some 20 independent values
SIZE_NOTE_BAND = (0.75, 1.3)


def _size_note(predicted, reference, stds, what: str) -> str:
    """Say how large the stds are against the errors: the RMS z-score, and a hint if far off.

    The coverage alone says "100 %" whether the stds are 1.5× or 100× the errors. The RMS
    z-score is :func:`kernelpot.metrics.recalibration_factor`.
    """
    from kernelpot import metrics

    rms = metrics.recalibration_factor(predicted, reference, stds)
    text = f"RMS z-score {rms:.2f} (1 for stds the size of the errors)"
    if SIZE_NOTE_BAND[0] <= rms <= SIZE_NOTE_BAND[1] or rms == 0.0:
        return text  # (zero errors: nothing to size the stds by)
    side, factor = ("wider", 1 / rms) if rms < 1.0 else ("narrower", rms)
    if rms > 1.0:  # a new user's Ni–Al stresses on other arrangements: 1.43
        cause = ("structures unlike the training set's (another arrangement, temperature "
                 "or stretch of time) do that")
    else:  # a new user's acetamide energies at n = 25 (0.73) were told the line above
        cause = ("they err on the safe side: a std map fitted on few training structures "
                 "(below 50 values only its scale is fitted), or test structures closer to "
                 "the training ones than each training structure is to the rest, do that")
    if 0.5 <= rms <= 2.0:
        return (f"{text}: the {what} stds are somewhat {side} than the errors on these "
                f"structures ({factor:.3g}×); {cause}: --recalibrate FRAMES on a few "
                "labelled ones like them")
    return (f"{text}: the {what} stds are about {factor:.3g}× {side} than the errors on these "
            f"structures; {cause}: --recalibrate FRAMES refits the std map on labelled "
            "structures like them")




def _print_stress_errors(title, err, calibration: bool) -> None:
    """Print the stress errors (GPa) of the frames with stress labels, and their coverage."""
    if not len(err.get("stress", ())):
        return
    e = GPA * (err["stress"] - err["ref_stress"])
    text = (f"{title} stress ({len(e)} cells): MAE {np.mean(np.abs(e)):.3f} GPa, RMSE "
            f"{np.sqrt(np.mean(e**2)):.3f} GPa, max {np.max(np.abs(e)):.3f} GPa")
    if calibration:
        from kernelpot import metrics

        std = GPA * err["stress_std"]
        # components a cubic cell's symmetry fixes at zero (1e-8 eV/Å³: 1.6 kPa)
        fixed = metrics.fixed_components(err["stress"], err["ref_stress"], atol=1e-8)
        if fixed.all():
            text += "; every component is zero in both the reference and the prediction"
        else:
            counted = ~fixed.reshape(e.shape)
            inside = [100 * np.mean((np.abs(e) <= k * std)[counted]) for k in (1, 2)]
            text += (f"; {inside[0]:.1f}% of components within 1 std, {inside[1]:.1f}% "
                     "within 2" + (f" ({int(fixed.sum())} of {fixed.size} components, zero "
                                   "in both the reference and the prediction, left out)"
                                   if fixed.any() else "")
                     + "; " + _size_note(err["stress"][counted], err["ref_stress"][counted],
                                         err["stress_std"][counted], "stress"))
    print(text)
    order = shear_order_note(err["stress"], err["ref_stress"])
    if order:
        print(order)


#: Names of the shear components in ASE's Voigt slots 3, 4, 5.
_SHEAR_NAMES = ("yz", "xz", "xy")
#: Fewest cells with a shear stress label (over :data:`_SHEAR_FLOOR`) for the order check.
SHEAR_MIN_CELLS = 3
#: A shear label smaller than this (eV/Å³, 0.016 GPa) says nothing of its slot.
_SHEAR_FLOOR = 1e-4


def shear_order_note(predicted: np.ndarray, reference: np.ndarray) -> str:
    """Say when the labels' shear stresses fit the predictions far better in another order.

    ASE's Voigt order is ``xx yy zz yz xz xy``; files converted from other codes hold
    their shear components in other slots (VASP's OUTCAR: ``xy yz zx``), and mlearn's Si
    and Ge files hold ``yz`` and ``xz`` exchanged in their AIMD, vacancy and surface cells
    but not in their elastic ones (benchmarks/RESULTS.md). A model predicts the shear
    stress from the energies and forces too, so each cell with a shear label votes: the
    order of its three shear slots that fits the prediction at least twice as well as
    the file's. Where one other order wins more than half of those cells (and at least
    :data:`SHEAR_MIN_CELLS`), the file's order is probably not ASE's there. Measured on
    mlearn Ge's test file (a new user's model, also trained on those labels): 14 of 22
    cells read ``yz`` and ``xz`` exchanged, 2 (elastic) as they are.

    Parameters
    ----------
    predicted, reference : ndarray of shape (n_cells, 6)
        Stresses in ASE's Voigt order, eV/Å³.

    Returns
    -------
    str
        The note, or "" (no other order wins most cells, or too few carry a shear).
    """
    from itertools import permutations

    predicted, reference = np.asarray(predicted)[:, 3:], np.asarray(reference)[:, 3:]
    sheared = np.abs(reference).max(axis=1) > _SHEAR_FLOOR
    if int(sheared.sum()) < SHEAR_MIN_CELLS:
        return ""
    predicted, reference = predicted[sheared], reference[sheared]
    as_is = np.mean(np.abs(predicted - reference), axis=1)
    votes = {p: np.mean(np.abs(predicted - reference[:, list(p)]), axis=1) < 0.5 * as_is
             for p in permutations(range(3)) if p != (0, 1, 2)}
    order, won = max(votes.items(), key=lambda item: int(item[1].sum()))
    n_won, n_cells = int(won.sum()), len(as_is)
    if n_won < SHEAR_MIN_CELLS or not 2 * n_won > n_cells:
        return ""
    # the file's slot order[k] holds component k: the file reads, slot by slot
    held = [_SHEAR_NAMES[order.index(slot)] for slot in range(3)]
    return (f"note: in {n_won} of {n_cells} cells with a shear stress label the shear "
            f"components fit the predictions at least twice as well read as "
            f"{' '.join(held)} as in ASE's Voigt order (xx yy zz yz xz xy: slots 4–6 yz xz "
            "xy); check how the file's stresses were written (VASP's order is xy yz zx) "
            "before training on them")


def _element_factor_text(model) -> str:
    """`` (force stds per element: H ×0.94, C ×1.05)``, or "" for a map without factors."""
    from kernelpot import element_scales

    scales = model.element_scales()
    if not scales:
        return ""
    return f" (its force stds scaled per element: {element_scales.describe(scales)})"


def _print_loso(model, frames) -> None:
    """Print the leave-one-structure-out errors the fit computed (its std calibration)."""
    terms = getattr(model.posterior_, "loso", None)
    if terms is None:
        return
    if terms.n_structures < 2:  # its "errors" are the prior's, from no data at all
        print("leave-one-structure-out: one training structure leaves nothing to predict it "
              "from (no errors to show; the stds are the raw ones)")
        return
    forces = terms.is_force
    parts = []
    if forces.any():
        f = terms.errors[forces]
        parts.append(f"force MAE {1e3 * np.mean(np.abs(f)):.1f} meV/Å, RMSE "
                     f"{1e3 * np.sqrt(np.mean(f**2)):.1f} meV/Å")
    if terms.is_stress is not None:
        s = GPA * terms.errors[terms.is_stress]
        parts.append(f"stress RMSE {np.sqrt(np.mean(s**2)):.3f} GPa")
    if terms.is_energy.any():
        member = terms.structure if terms.member is None else terms.member  # not blocks
        n_atoms = np.array([len(frames[k]) for k in member[terms.is_energy]])
        e = terms.errors[terms.is_energy] / n_atoms
        parts.append(f"energy MAE {1e3 * np.mean(np.abs(e)):.2f} meV/atom")
    used = ("the std calibration was fitted on these errors" + _element_factor_text(model)
            if model.interval_kind_ == "loso"
            else "no std calibration from them (too few structures, or no epistemic "
                 "variance; see the log): raw stds")
    setting, blocks = getattr(model.posterior_, "loso_blocks", (None, None))
    if blocks is None:
        checked = ("; consecutive structures do not look correlated (loso_blocks)"
                   if setting == "auto" and terms.n_structures >= 20
                   and terms.is_energy.sum() == terms.n_structures else "")
        what = f"leave-one-structure-out ({terms.n_structures} structures{checked}; each"
    else:  # correlated consecutive structures (kernelpot.loso_blocks)
        why = ("they look correlated; --config loso_blocks = 1 leaves one out at a time"
               if setting == "auto" else f"loso_blocks = {setting}")
        what = (f"leave-one-block-out ({terms.n_structures} blocks of up to "
                f"{np.bincount(blocks).max()} consecutive structures, as {why}; each block")
    kept = "hyperparameters kept" if model.method_ == "exact" \
        else "hyperparameters and inducing points kept"
    print(f"{what} predicted without its labels; {kept}): "
          f"{'; '.join(parts)}; {used}")


@contextlib.contextmanager
def dask_client(address: str | None):
    """Yield a ``distributed.Client`` connected to ``address`` (None: yield None), closed after."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError as err:
        raise CLIError("--scheduler needs dask.distributed: pip install 'kernelpot[dask]'") \
            from err
    try:
        client = Client(address)  # waits distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError, ValueError) as err:
        raise CLIError(f"cannot reach the Dask scheduler at {address}: {err}") from err
    with client:
        workers = client.scheduler_info()["workers"]
        print(f"Dask scheduler {address}: {len(workers)} workers, "
              f"{sum(info.get('nthreads', 0) for info in workers.values())} threads")
        yield client


@contextlib.contextmanager
def joblib_on_dask(address: str | None):
    """Run joblib's parallel loops (``n_jobs``) on the Dask cluster at ``address`` (if any)."""
    if address is None:
        yield
        return
    from joblib import parallel_config

    with dask_client(address) as client, parallel_config(backend="dask", client=client):
        yield


def _reference_calculator(name):
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise CLIError("--reference xtb needs tblite: pip install -e '.[xtb]'") from err
    return TBLite(method="GFN2-xTB", verbosity=0)
