"""``kernelpot fit``: fit a potential to labelled structures and save it."""

from __future__ import annotations

import re
import time

import numpy as np

from kernelpot import __version__
from kernelpot._numbers import GPA
from kernelpot.cli._common import (
    CLIError,
    _build_model,
    _check_output,
    _errors,
    _print_errors,
    _print_loso,
    _read_frames,
    dask_client,
    elapsed,
    noise_scales_line,
)
from kernelpot.hyperparameters import fitted_names


def _cmd_fit(args) -> int:
    from kernelpot.estimator import format_signal_std

    if args.output is None and not args.dry_run:
        raise CLIError("give the model file to write (-o model.npz), or "
                       "--dry-run for the memory estimate only")
    _check_output(args.output, "the model file")
    frames = _read_frames(args.train, lazy=True)  # read when used: a few passes
    model = _build_model(args, frames)
    with dask_client(args.scheduler) as client:
        if args.dry_run:
            estimate = model.estimate_fit_memory(frames, client=client)
            print(f"kernelpot {__version__}: {len(frames)} structures; memory estimate of "
                  f"the fit (nothing fitted):\n{estimate}")
            return 0
        fit_start = time.perf_counter()
        model.fit(frames, client=client)
        fit_s = time.perf_counter() - fit_start
    # saved before anything is printed: a fit piped into `head` (closed stdout) or stopped
    # during the training-set evaluation has its model written (a new user's was not)
    # an incremental model keeps what update and on-the-fly learning continue from
    path = model.save(args.output, training_state=model.posterior_.keeps_training_data)
    kind = "inducing" if model.method_ == "sparse" else "training"
    print(f"kernelpot {__version__}: fitted {len(frames)} structures in {fit_s:.1f} s "
          f"({model.method_} model), {sum(model.n_inducing_.values())} {kind} environments "
          f"{model.n_inducing_}")
    if getattr(model, "_method_note", None):  # why method='auto' chose it, in CLI terms
        print(re.sub(r"set method='exact' or raise (.+)$",
                     r"pass --method exact, or raise \1 in a --config file",
                     model._method_note))
    fitted = fitted_names(model.optimize, "kernelpot fit")
    notes = {name: _bound_note(getattr(model, f"{name}_"), getattr(model, f"{name}_bounds"),
                               name in fitted)
             for name in ("energy_noise", "force_noise")}
    forces = f"forces {1e3 * model.force_noise_:.3g} meV/Å{notes['force_noise']}" \
        if model.posterior_.n_force_observations else "no force labels"
    # one parenthesis: the bound note and the σ_E √N reminder side by side read as two
    # asides in a row (a new user's three-frame fit)
    energy_note = notes["energy_noise"].strip()[1:-1]
    energy_note = f"{energy_note}; " if energy_note else ""
    print(f"learned noise: energy {1e3 * model.energy_noise_:.3g} meV/√atom "
          f"({energy_note}the noise of an N-atom structure's energy is σ_E √N), "
          f"{forces}; signal std {format_signal_std(model.signal_std_)} eV")
    n_stress = model.posterior_.n_stress_observations
    if n_stress:
        print(f"trained on the stresses of {n_stress // 6} cells: learned stress noise "
              f"{GPA * model.stress_noise_:.3g} GPa ({model.stress_noise_:.3g} eV/Å³; "
              "--no-stress trains without them)")
    scales = noise_scales_line(model)
    if scales:
        print(scales)
    if model.baseline_ is not None:
        print(f"baseline: {model.baseline_!r} (the GP fits the reference minus it; every "
              "prediction adds it back)")
    if model.two_body_ is not None:
        print(f"two-body term: r_cut {model.two_body_.r_cut} Å, {model.two_body_.n_basis} "
              f"basis functions, prior std {model.two_body_.prior_std:.3g} × signal std")
    _print_loso(model, frames)
    if not args.no_train_eval:
        evaluation = time.perf_counter()
        _print_errors("training (fitted on these)",
                      _errors(model, frames, args.train, stds=False), calibration=False)
        print(f"training-set evaluation in {time.perf_counter() - evaluation:.1f} s "
              "(--no-train-eval skips it)")
    print(f"wrote {path}; kernelpot fit took {elapsed():.1f} s in all")
    return 0


def _bound_note(value: float, bounds, learned: bool = True) -> str:
    """Say when a learned noise level sits at a bound of its search (empty otherwise)."""
    if not learned:  # given, not fitted (optimize)
        return " (given)"
    low, high = (float(b) for b in bounds)
    if np.isclose(value, low):  # "at a bound" as the fit's warnings judge it
        return " (its lower bound: the labels look noise-free)"
    if np.isclose(value, high):
        return " (its upper bound: the labels look like noise to the model)"
    return ""

