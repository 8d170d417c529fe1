"""``kernelpot eval`` and ``kernelpot predict``: use a saved model on structures."""

from __future__ import annotations

import numpy as np

from kernelpot import __version__
from kernelpot._labels import PREDICTION_KEY
from kernelpot.calibration import StdCalibration
from kernelpot.cli._common import (
    GPA,
    CLIError,
    _check_output,
    _errors,
    _load_model,
    _print_errors,
    _read_frames,
    joblib_on_dask,
)


def _cmd_eval(args) -> int:
    if args.output and not args.recalibrate:
        raise CLIError("--output only goes with --recalibrate")
    if args.intervals is not None and not 0.0 < args.intervals < 1.0:
        raise CLIError(f"--intervals is a nominal coverage between 0 and 1 (e.g. 0.9); got "
                       f"{args.intervals}")
    for path, what in ((args.output, "the model file"), (args.plot, "the plot"),
                       (args.calibration_plot, "the plot"), (args.error_plot, "the plot")):
        _check_output(path, what)
    model = _load_model(args.model)
    with joblib_on_dask(args.scheduler):
        return _evaluate(args, model)


def _evaluate(args, model) -> int:
    n_jobs_saved = model.n_jobs
    _set_n_jobs(model, args)
    frames = _read_frames(args.test)
    plural = "s" if len(frames) != 1 else ""
    print(f"kernelpot {__version__}: {args.model} on {args.test} ({len(frames)} "
          f"structure{plural})")
    if args.recalibrate:
        valid = _read_frames(args.recalibrate)
        _print_errors("test (before recalibration)", _errors(model, frames, args.test))
        model.calibrate(valid)
        scale = model.std_scale_
        model.set_params(n_jobs=n_jobs_saved)  # --n-jobs is this run's, not the file's
        path = model.save(args.output or args.model,
                          training_state=model.posterior_.keeps_training_data)
        _set_n_jobs(model, args)
        calibration = StdCalibration(scale, None)
        fitted = "; ".join(f"{q} {calibration.describe(q)}"
                           for q in calibration.fitted_quantities())
        print(f"std calibration fitted on {args.recalibrate} ({len(valid)} structures): "
              f"{fitted}; conformal intervals from "
              f"{len(model.interval_scores_.get('forces', []))} force components; wrote {path}")
    err = _errors(model, frames, args.test)
    seen = training_structures(model, frames)
    if seen.all():  # errors on the structures fitted: no test of the model or its stds
        print(f"note: every structure in {args.test} is one the model was trained on (each "
              "of its environments is one the model was fitted on): the errors below are "
              "training errors, and the stds, calibrated for new structures, are not checked "
              "on them; give held-out structures to test the model")
        _print_errors("training (fitted on these)", err, calibration=False)
        print_by_config_type(frames, err, calibration=False)
    else:
        if seen.any():
            which = np.flatnonzero(seen)
            listed = ", ".join(map(str, which[:10])) + (", ..." if len(which) > 10 else "")
            print(f"note: {len(which)} of the {len(frames)} structures ({listed}) are ones "
                  "the model was trained on: their errors are training errors, which make "
                  "the figures below look better than the model is on new structures")
        _print_errors("test", err)
        print_by_config_type(frames, err)
        if args.intervals is not None:
            print_interval_coverage(model, frames, err, args.intervals)
    _print_contacts(model, frames, err)
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


def print_by_config_type(frames, err: dict, calibration: bool = True) -> list[str]:
    """Print the errors of each configuration type, when the structures carry two or more.

    Energies (RMSE per atom), force components and, for cells with a stress label, the
    stress components (GPa).

    The type is ``atoms.info["config_type"]`` (as in GAP's and mlearn's files: AIMD,
    surfaces, vacancies, elastic cells); structures without one form a group of their
    own. The overall errors hide a type the model fits badly (mlearn Mo's test surfaces
    err several times more than its bulk cells).

    Parameters
    ----------
    frames : list of ase.Atoms
        The structures evaluated, in the order ``err`` refers to.
    err : dict
        :func:`kernelpot.cli._common._errors` of ``frames``.
    calibration : bool, default=True
        Also the fraction of energies and force components within 1 std.

    Returns
    -------
    list of str
        The lines printed (none for fewer than two types).
    """
    from kernelpot import metrics

    types = [a.info.get("config_type") for a in frames]
    names = sorted({str(t) for t in types if t is not None})
    if len(names) + (None in types) < 2:
        return []
    lines = []
    for name in names + (["(none)"] if None in types else []):
        wanted = None if name == "(none)" else name
        member = np.array([(t is None if wanted is None else str(t) == wanted) for t in types])
        parts = [f"{int(member.sum())} structures"]
        e_rows = np.flatnonzero(member[err["energy_structures"]])
        if e_rows.size:
            e = (err["energies"][e_rows] - err["ref_energies"][e_rows])
            text = f"energy RMSE {1e3 * np.sqrt(np.mean((e / err['n_atoms'][e_rows])**2)):.2f} " \
                   "meV/atom"
            if calibration:
                inside = np.mean(np.abs(e) <= err["energy_std"][e_rows])
                text += f" ({100 * inside:.0f}% within 1 std)"
            parts.append(text)
        f_rows = [i for i, k in enumerate(err["force_structures"]) if member[k]]
        if f_rows:
            f, ref = [err["forces"][i] for i in f_rows], [err["ref_forces"][i] for i in f_rows]
            text = f"force RMSE {1e3 * metrics.rmse(f, ref):.1f} meV/Å"
            if calibration:
                inside = metrics.coverage(f, ref, [err["forces_std"][i] for i in f_rows], 1,
                                          exclude_fixed=True)
                if not np.isnan(inside):  # (every component fixed: nothing to check)
                    text += f" ({100 * inside:.0f}% within 1 std)"
            parts.append(text)
        s_rows = np.flatnonzero(member[err["stress_structures"]])
        if s_rows.size:
            s = GPA * (err["stress"][s_rows] - err["ref_stress"][s_rows])
            parts.append(f"stress RMSE {np.sqrt(np.mean(s**2)):.3f} GPa")
        lines.append(f"  {name}: {', '.join(parts)}")
    print("per configuration type (atoms.info['config_type']):")
    for line in lines:
        print(line)
    return lines


#: What each kind of interval (``model.interval_kind_``) is, for ``--intervals``.
_INTERVAL_KINDS = {
    "loso": "jackknife+ from the training structures' leave-one-structure-out errors: at "
            "least {low:.0f}% guaranteed for structures like the training ones, about "
            "{level:.0f}% in practice",
    "validation": "split-conformal from the validation structures of calibrate (or "
                  "--recalibrate): at least {level:.0f}% for structures like them",
    None: "Gaussian, from the total std: the model holds no interval scores",
}


def print_interval_coverage(model, frames, err: dict, level: float) -> dict:
    """Print (and return) how often labelled values fall inside the model's intervals.

    Energies and force components, of the structures that carry them; force components
    zero in both the reference and the prediction (fixed by a crystal's symmetry) are
    left out, as in the std calibration's coverage.

    Parameters
    ----------
    model : SparseGPPotential
    frames : list of ase.Atoms
        Labelled structures.
    err : dict
        :func:`kernelpot.cli._common._errors` of ``frames``: their reference labels.
    level : float in (0, 1)
        Nominal coverage (``return_interval``).

    Returns
    -------
    dict
        ``{"energy": fraction or None, "forces": fraction or None}``.
    """
    from kernelpot import metrics

    inside = {"energy": None, "forces": None}
    widths = {}
    if len(err["energy_structures"]):
        _, bounds = model.predict([frames[k] for k in err["energy_structures"]],
                                  return_interval=level)
        ref = err["ref_energies"]
        inside["energy"] = float(np.mean((bounds[:, 0] <= ref) & (ref <= bounds[:, 1])))
        widths["energy"] = 1e3 * float(np.mean(np.diff(bounds, axis=1)[:, 0] / err["n_atoms"]))
    if err["force_structures"]:
        forces, bounds = model.predict_forces([frames[k] for k in err["force_structures"]],
                                              return_interval=level)
        ref = err["ref_forces"]
        counted = ~metrics.fixed_components(forces, ref)
        low, high, value = (np.concatenate([np.ravel(x) for x in v])[counted]
                            for v in ([b[..., 0] for b in bounds], [b[..., 1] for b in bounds],
                                      ref))
        inside["forces"] = float(np.mean((low <= value) & (value <= high)))
        widths["forces"] = 1e3 * float(np.mean(high - low))
    parts = []
    if inside["energy"] is not None:
        parts.append(f"{100 * inside['energy']:.1f}% of energies (mean width "
                     f"{widths['energy']:.2f} meV/atom)")
    if inside["forces"] is not None:
        parts.append(f"{100 * inside['forces']:.1f}% of force components (mean width "
                     f"{widths['forces']:.1f} meV/Å)")
    kind = _INTERVAL_KINDS.get(model.interval_kind_, _INTERVAL_KINDS[None]).format(
        level=100 * level, low=100 * max(0.0, 2 * level - 1))
    print(f"test {100 * level:g}% intervals ({kind}): "
          + ("; ".join(parts) if parts else "no energy or force labels to check them on"))
    return inside


def training_structures(model, frames, rtol: float = 1e-10) -> np.ndarray:
    """Return whether each structure is one the model was trained on, as far as it can tell.

    True where every environment of the structure is one the model stores: an exact
    model's training environments, or a sparse model's inducing ones (all of a small
    training set's, by default), matched to ``rtol`` of the squared feature norm (a
    structure written to extxyz and read back still matches). A sparse model that keeps
    a subset of its environments does not recognise every training structure; a new
    structure is never taken for one.

    Parameters
    ----------
    model : SparseGPPotential
        Fitted.
    frames : list of ase.Atoms
        Structures of the model's elements.
    rtol : float, default=1e-10

    Returns
    -------
    ndarray of bool, shape (len(frames),)
    """
    stored = model.posterior_.inducing
    norms = [np.einsum("md,md->m", z, z) for z in stored]
    seen = np.zeros(len(frames), dtype=bool)
    for k, atoms in enumerate(frames):
        if not len(atoms):
            continue
        index = np.searchsorted(model.species_, atoms.numbers)
        X = np.asarray(model.descriptor_.create(atoms), dtype=np.float64)
        found = True
        for s in np.unique(index):
            x, z = X[index == s], stored[s]
            if not len(z):
                found = False
                break
            xx = np.einsum("nd,nd->n", x, x)
            gap = xx[:, None] + norms[s][None, :] - 2.0 * (x @ z.T)
            if np.any(gap.min(axis=1) > rtol * np.maximum(xx, 1e-300)):
                found = False
                break
        seen[k] = found
    return seen


def _contact_z_text(contacts: list, err) -> str:
    """``; the atoms of the N pairs ...: RMS z-score a, b elsewhere``, or "" (no stds).

    A pair a little closer than any training pair passes the contact check, yet its
    atoms sit on the repulsive wall the model has no labels of, where the stds barely
    grow: a new user's Ni cells at 1200 K, 1.5 % closer, erred by 4–5 stds there.
    ``contacts``: each structure's closest pair (:meth:`ShortestPairs.closest`, None
    where no pair is closer than a training pair).
    """
    if err.get("forces_std") is None or not err["forces"]:
        return ""
    on_pairs, elsewhere, n_pairs = [], [], 0
    for n, k in enumerate(err["force_structures"]):
        z = np.abs(err["forces"][n] - err["ref_forces"][n]) / np.maximum(
            err["forces_std"][n], 1e-300)
        contact = contacts[k]
        mask = np.zeros(len(z), dtype=bool)
        if contact is not None:
            mask[[contact.i, contact.j]] = True
            n_pairs += 1
        on_pairs.append(z[mask].ravel())
        elsewhere.append(z[~mask].ravel())
    on_pairs, elsewhere = np.concatenate(on_pairs), np.concatenate(elsewhere)
    if not on_pairs.size or not elsewhere.size:
        return ""
    rms = [float(np.sqrt(np.mean(v**2))) for v in (on_pairs, elsewhere)]
    text = (f"; the atoms of the {n_pairs} pair(s) closer than any training pair: RMS "
            f"z-score {rms[0]:.2f} of their force errors over the stds, {rms[1]:.2f} for "
            "the other atoms")
    if rms[0] > 2 * rms[1]:
        text += (": the stds miss much of the error at close contacts (no labels that close:"
                 " label a few such structures)")
    return text


def contact_ratios(model, frames) -> np.ndarray | None:
    """Return each structure's closest pair over its elements' shortest training pair.

    1 where no pair is closer; None for a model that keeps no shortest distances.
    """
    shortest = getattr(model, "shortest_pairs_", None)
    if shortest is None:
        return None
    return np.array([getattr(shortest.closest(atoms), "ratio", 1.0) for atoms in frames])


def _print_contacts(model, frames, err) -> None:
    """Say which test structures hold a pair closer than any training pair, and their error."""
    from kernelpot.contacts import CONTACT_MARGIN

    shortest = getattr(model, "shortest_pairs_", None)
    if shortest is None:
        return
    contacts = [shortest.closest(atoms) for atoms in frames]  # each searched once
    ratios = np.array([getattr(contact, "ratio", 1.0) for contact in contacts])
    close = ratios < 1.0 - CONTACT_MARGIN
    if not close.any():
        closest = 100 * (1 - float(ratios.min()))
        print(f"no test structure holds a pair more than {100 * CONTACT_MARGIN:g} % closer "
              f"than any training pair of its elements (the closest: {closest:.2g} % "
              f"closer{_contact_z_text(contacts, err)})" if closest >= 0.005 else
              "no test structure holds a pair closer than any training pair of its elements")
        return
    worst = int(np.argmin(ratios))
    contact = contacts[worst]
    line = (f"{int(close.sum())} of {len(frames)} test structures hold a pair more than "
            f"{100 * CONTACT_MARGIN:g} % closer than any training pair of its elements (the "
            f"closest: structure {worst}, {contact.elements} {100 * (1 - contact.ratio):.1f} % "
            "closer): the model extrapolates there")
    chosen = err["force_structures"]
    if chosen:
        inside = np.array([close[k] for k in chosen])
        mae = [float(np.mean(np.concatenate([np.abs(err["forces"][n] - err["ref_forces"][n])
                                             .ravel() for n in np.flatnonzero(which)])))
               if which.any() else None for which in (inside, ~inside)]
        if mae[0] is not None and mae[1] is not None:
            line += (f"; force MAE there {1e3 * mae[0]:.3g} meV/Å, on the others "
                     f"{1e3 * mae[1]:.3g}")
    print(line)


def _cmd_predict(args) -> int:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    _check_output(args.output, "the output file")
    model = _load_model(args.model)
    _set_n_jobs(model, args)
    frames = _read_frames(args.structures)
    with joblib_on_dask(args.scheduler):
        energies, forces, energy_std, forces_std = model.predict_energies_and_forces(
            frames, return_std=True)
        periodic = [k for k, atoms in enumerate(frames) if np.all(atoms.pbc)]
        stress, stress_std = model.predict_stress([frames[k] for k in periodic],
                                                  return_std=True) if periodic else ([], [])
        stresses = dict(zip(periodic, zip(stress, stress_std, strict=True), strict=True))
    ratios = contact_ratios(model, frames)
    out = []
    for k, (atoms, energy, e_std, force, f_std) in enumerate(
            zip(frames, energies, energy_std, forces, forces_std, strict=True)):
        result = atoms.copy()
        result.calc = None
        result.info["energy_std"] = float(e_std)
        result.info[PREDICTION_KEY] = f"kernelpot {__version__}, {args.model}"
        result.arrays["forces_std"] = np.asarray(f_std, dtype=np.float64)
        if ratios is not None:  # its closest pair over the shortest training pair
            result.info["contact_ratio"] = float(ratios[k])
        extra = {}
        if k in stresses:  # the total std, as for energies and forces
            extra["stress"] = stresses[k][0]
            result.info["stress_std"] = np.asarray(stresses[k][1], dtype=np.float64)
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


def _set_n_jobs(model, args) -> None:
    """Use ``--n-jobs`` joblib workers over the structures to predict (all: ``--scheduler``)."""
    if args.n_jobs == 0:
        raise CLIError("--n-jobs must not be 0 (a positive int, or -1 for all cores)")
    model.set_params(n_jobs=-1 if args.scheduler else args.n_jobs)
