"""``kernelpot info``: what a model file holds, without predicting anything."""

from __future__ import annotations

from pathlib import Path

from kernelpot import gp
from kernelpot.calibration import StdCalibration
from kernelpot.cli._common import GPA, _load_model, noise_scales_line, structures_fitted_on


def _cmd_info(args) -> int:
    from ase.data import chemical_symbols

    from kernelpot import io
    from kernelpot.estimator import format_signal_std

    model = _load_model(args.model)  # checks the file: format, version, checksum
    metadata, _ = io.read_model_file(args.model)
    size = Path(args.model).stat().st_size / 2**20
    print(f"{args.model}: kernelpot model file, format version {metadata['format_version']}, "
          f"written by kernelpot {metadata.get('kernelpot_version', '?')}; {size:.1f} MiB")
    symbols = " ".join(chemical_symbols[int(z)] for z in model.species_)
    print(f"model: {type(model).__name__}, {model.method_} GP; species {symbols}")
    print(f"descriptor: {model.descriptor_!r}")
    print(f"kernel: {model.kernel_!r}")
    if model.two_body_ is not None:
        print(f"two-body term: {model.two_body_!r}")
    if model.baseline_ is not None:
        print(f"baseline: {model.baseline_!r} (added to every prediction)")
    n_stress = model.posterior_.n_stress_observations
    stress = (f"stress noise σ_S {GPA * model.stress_noise_:.3g} GPa (trained on "
              f"{n_stress // 6} cells' stresses); " if n_stress else "")
    print(f"hyperparameters: signal std {format_signal_std(model.signal_std_)} eV; energy "
          f"noise σ_E {1e3 * model.energy_noise_:.3g} meV/√atom (an N-atom structure's "
          f"energy noise is σ_E √N); force noise σ_F {1e3 * model.force_noise_:.3g} meV/Å; "
          f"{stress}log marginal likelihood {model.log_marginal_likelihood_value_:.2f}")
    scales = noise_scales_line(model)
    if scales:
        print(scales)
    kind = "inducing" if model.method_ == "sparse" else "training"
    print(f"training data: {_training_size(model)}; {kind} environments "
          f"{sum(model.n_inducing_.values())} {model.n_inducing_}")
    print(f"uncertainty: {_calibration_state(model)}")
    factor = _whitened_factor_line(metadata.get("fitted", {}).get("whitened_factor"))
    if factor:
        print(factor)
    defaults = type(model)().get_params(deep=False)
    changed = {k: v for k, v in model.get_params(deep=False).items()
               if k not in ("descriptor", "kernel", "two_body") and v != defaults[k]}
    print("parameters other than the defaults: "
          + (", ".join(f"{k}={v!r}" for k, v in sorted(changed.items())) or "none"))
    return 0


def _whitened_factor_line(entry) -> str:
    """How a sparse model's posterior factor is stored (format 12 on), or ``""``."""
    if not isinstance(entry, dict) or entry.get("dtype") not in ("float32", "float64"):
        return ""
    bound = entry.get("float32_bound")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 <= bound < 1:
        return ""
    if entry["dtype"] == "float64":
        return (f"posterior factor: float64, as its float32 rounding bound ε = {bound:.1e} "
                f"is past {gp.FLOAT32_FACTOR_TOLERANCE}; the stds read back to round-off")
    return (f"posterior factor: float32, rounding bound ε = {bound:.1e}: every raw std "
            f"reads back within {100 * (1 / (1 - bound) - 1):.2g} % of the saved model's "
            "(a calibrated std, whose map raises the variance to the power p, within about "
            "p times that)")


def _training_size(model) -> str:
    """Describe the training set as far as the file records it."""
    posterior = model.posterior_
    count = structures_fitted_on(model)
    if posterior.kind == "exact":  # an exact model's file holds its training structures
        kept = (" (training state kept: update and on-the-fly learning can continue)"
                if posterior.keeps_training_data else
                " (kernelpot md --reference takes them with --train; in Python, "
                "restore_training before update)")
        return f"{count} structures{kept}"
    if getattr(posterior, "training", None) is not None:
        return (f"{count} structures (training state kept: update and on-the-fly learning "
                "can continue)")
    if count is not None:
        return (f"{count} structures (training state not kept: kernelpot md --reference takes "
                "them with --train; in Python, restore_training before update)")
    return "structure count not recorded (training state not kept)"


def _auto_blocks(model) -> str:
    """Say how ``loso_blocks="auto"`` left the training structures out.

    The LOSO shift basis has one column per leave-out unit: fewer units than training
    structures means blocks.
    """
    shift = getattr(model.posterior_, "loo_shift", None)
    count = structures_fitted_on(model)
    if shift is None or count is None:
        return "in blocks of consecutive structures where they look correlated, " \
            "loso_blocks='auto'"
    n_units = int(shift.shape[1])
    if n_units < count:
        return (f"{n_units} blocks of consecutive structures, as they looked correlated, "
                "loso_blocks='auto'")
    return "one at a time: consecutive structures did not look correlated, loso_blocks='auto'"


def _calibration_state(model) -> str:
    """Describe the std calibration and interval kind of a fitted model."""
    kind = model.interval_kind_
    if not model.std_scale_:
        return ("raw stds (calibration=None, or too few structures for a LOSO map); "
                "intervals are Gaussian and carry no guarantee")
    scale = model.std_scale_
    blocks = getattr(model, "loso_blocks", "auto")
    how = (_auto_blocks(model) if blocks == "auto" else
           "one at a time, loso_blocks=1" if blocks == 1 else
           f"in blocks of {blocks} consecutive structures, loso_blocks={blocks}")
    where = {"loso": f"the training structures' leave-one-structure-out errors (default; "
                     f"{how})",
             "validation": "validation structures (calibrate)"}.get(kind, str(kind))
    calibration = StdCalibration(scale, None)
    terms = "; ".join(f"{q}: {calibration.describe(q)}"
                      for q in calibration.fitted_quantities())
    intervals = "jackknife+" if kind == "loso" else "split conformal"
    applied = "" if model.apply_calibration else " (not applied: apply_calibration=False)"
    return f"std map fitted on {where}{applied}: {terms}; {intervals} intervals"
