"""Can the predicted std be believed? Calibration of exact and sparse models on xTB data.

On the shared split (test = the ``i % 4 == 3`` pool, or its first ``--test-frames``; train =
``default_rng(0).permutation(rest)[:n]``; validation = ``--valid-frames`` further frames
of that permutation, never trained on), it fits a model, calibrates it on the
validation frames (:meth:`SparseGPPotential.calibrate`: the fitted variance map and
the conformal scores), and prints on the test frames, raw (``calibration=None``), with
the default calibration fitted at fit time on the training structures' own
leave-one-structure-out predictions ("loso", no validation frames), and calibrated on
the validation frames:
fraction of force components within 1 and 2 predicted total std (targets 68 ± 3 % and
95 ± 2 %), empirical coverage of the 90 % conformal intervals, Spearman(per-atom std,
per-atom error) next to the Spearman the same stds would reach if they were exactly
right (:func:`kernelpot.metrics.expected_spearman`; target >= 0.97 × it), the mean
Gaussian negative log-likelihood of the test force components (NLL, nats), and for ethanol
the growth of the mean std and of the force MAE on the 1000 K frames (target: std
growth >= 0.8 × error growth), and the RMS z-score of each element's force components
with the default map's factor per element. With ``--plot`` it writes the calibration plot of
:mod:`kernelpot.plotting`.

Usage::

    python benchmarks/calibration.py --molecule ethanol --n 200 --method exact
    python benchmarks/calibration.py --molecule ethanol --n 200 --method exact \
        --sigma 0.25 --n-max 5 --l-max 3 --force-noise 0.01 --signal-per-element
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
from ase.io import read

sys.path.insert(0, str(Path(__file__).resolve().parent))
from molecules import SHARED, add_model_options, study_model  # noqa: E402

import kernelpot  # noqa: E402
from kernelpot import conformal, metrics  # noqa: E402


def summary(forces, reference, stds):
    return {
        "cov1": metrics.coverage(forces, reference, stds, 1.0),
        "cov2": metrics.coverage(forces, reference, stds, 2.0),
        "spearman": metrics.spearman_std_error(forces, reference, stds),
        "expected": metrics.expected_spearman(stds, n_draws=100, random_state=0),
        "mean_std": float(np.mean(np.concatenate([s.ravel() for s in stds]))),
        "mae": metrics.mae(forces, reference),
        "nll": metrics.negative_log_likelihood(forces, reference, stds),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", choices=["ethanol", "aspirin"], default="ethanol")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--method", choices=["exact", "sparse", "auto"], default="exact")
    parser.add_argument("--test-frames", type=int, default=None,
                        help="first N frames of the test pool (default: all of it, as the "
                        "quoted reference figures; earlier RESULTS.md runs used 200 and say so)")
    parser.add_argument("--valid-frames", type=int, default=200)
    parser.add_argument("--hot-frames", type=int, default=200,
                        help="ethanol 1000 K frames (every 10th of the file)")
    add_model_options(parser)
    parser.add_argument("--plot", default=None, help="write the calibration plot here")
    parser.add_argument("--jackknife", action="store_true",
                        help="also the coverage of the default model's 90 %% jackknife+ "
                             "intervals (return_interval=0.9; one more prediction pass)")
    args = parser.parse_args(argv)
    print(f"kernelpot {kernelpot.__version__}; python {platform.python_version()}; "
          f"{os.cpu_count()} cpus", flush=True)
    frames = read(SHARED / f"{args.molecule}_500K.xyz", ":")
    species = sorted(set(frames[0].get_chemical_symbols()))
    idx = np.arange(len(frames))
    test = [frames[i] for i in idx[idx % 4 == 3][: args.test_frames]]
    order = np.random.default_rng(0).permutation(idx[idx % 4 != 3])
    train = [frames[i] for i in order[: args.n]]
    valid = [frames[i] for i in order[args.n: args.n + args.valid_frames]]
    model = study_model(species, args, args.method)
    loso_log = _LosoTime()
    logging.getLogger("kernelpot").addHandler(loso_log)
    logging.getLogger("kernelpot").setLevel(logging.INFO)
    start = time.perf_counter()
    model.fit(train)
    fit_time = time.perf_counter() - start
    logging.getLogger("kernelpot").removeHandler(loso_log)
    print(f"fit ({model.method_}) in {fit_time:.0f} s, of which the leave-one-structure-out "
          f"step {loso_log.seconds:.1f} s ({100 * loso_log.seconds / fit_time:.0f} %); σ_F = "
          f"{1e3 * model.force_noise_:.2f} meV/Å, σ_E = {1e3 * model.energy_noise_:.2f} "
          f"meV/atom; LOSO map {model.std_scale_}", flush=True)
    ref = [a.get_forces() for a in test]
    hot = read(SHARED / "ethanol_1000K.xyz", "::10")[: args.hot_frames] \
        if args.molecule == "ethanol" else None
    # the raw variance terms once per frame; the calibration is applied to them after
    test_terms = [model.predict_structure(a, variance=True) for a in test]
    hot_terms = [model.predict_structure(a, variance=True) for a in hot] if hot else None
    noise = model.force_noise_**2
    rows = {}
    rows["loso"] = _rows(model, test_terms, ref, hot_terms, hot, True, noise, args,
                         test)  # the default
    if args.jackknife:
        start = time.perf_counter()
        _, intervals = model.predict_forces(test, return_interval=0.9)
        inside = np.concatenate([((iv[..., 0] <= r) & (r <= iv[..., 1])).ravel()
                                 for iv, r in zip(intervals, ref, strict=True)])
        rows["loso"]["jackknife90"] = float(inside.mean())
        print(f"jackknife+ 90 % intervals of {len(test)} frames in "
              f"{time.perf_counter() - start:.0f} s: coverage {inside.mean():.3f}", flush=True)
    from ase.data import chemical_symbols

    model_factors = ", ".join(f"{chemical_symbols[z]} {s:.3f}"
                              for z, s in model.element_scales().items()) or "none"
    # the same LOSO map without its factor per element (no intervals: their scores are
    # normalised by the stds with the factors)
    saved = model.std_scale_, model.interval_scores_
    model.std_scale_ = {k: v for k, v in saved[0].items() if not k.startswith("forces_element")}
    model.interval_scores_ = None
    rows["loso-1"] = _rows(model, test_terms, ref, hot_terms, hot, True, noise, args, test)
    model.std_scale_, model.interval_scores_ = saved
    start = time.perf_counter()
    model.calibrate(valid)
    print(f"calibrated on {len(valid)} frames in {time.perf_counter() - start:.0f} s: "
          f"{model.std_scale_}", flush=True)
    rows["raw"] = _rows(model, test_terms, ref, hot_terms, hot, False, noise, args, test)
    rows["validation"] = _rows(model, test_terms, ref, hot_terms, hot, True, noise, args,
                               test)
    rows = {k: rows[k] for k in ("raw", "loso-1", "loso", "validation")}
    print(f"\n{args.molecule} 500 K, {model.method_} model, SOAP σ {args.sigma} Å, "
          f"n_max {args.n_max}, l_max {args.l_max}, force noise "
          f"{'fitted' if args.force_noise is None else args.force_noise}, "
          f"n = {args.n}; test {len(test)} frames, validation {len(valid)} frames"
          + (f", 1000 K {len(hot)} frames" if hot else ""))
    header = (f"{'std':<11} {'F MAE':>6} {'cov1σ':>6} {'cov2σ':>6} {'conf90':>7} "
              f"{'Spearman':>8} {'expected':>8} {'std×1000K':>9} {'MAE×1000K':>9} {'ratio':>6} "
              f"{'E cov1σ':>7} {'E cov2σ':>7} {'NLL':>7}")
    print(header)
    print("-" * len(header))
    for label, r in rows.items():
        conf = f"{r['conformal90']:7.3f}" if "conformal90" in r else f"{'-':>7}"
        if "jackknife90" in r:
            conf = f"{r['jackknife90']:6.3f}+"
        if "std_growth" in r:
            ood = (f"{r['std_growth']:9.2f} {r['error_growth']:9.2f} "
                   f"{r['std_growth'] / r['error_growth']:6.2f}")
        else:
            ood = f"{'-':>9} {'-':>9} {'-':>6}"
        print(f"{label:<11} {1e3 * r['mae']:6.1f} {r['cov1']:6.3f} {r['cov2']:6.3f} {conf} "
              f"{r['spearman']:8.3f} {r['expected']:8.3f} {ood} {r['energy_cov'][0]:7.3f} "
              f"{r['energy_cov'][1]:7.3f} {r['nll']:7.3f}")
    print("RMS z-score of the test force components per element: "
          + "; ".join(f"{label} " + ", ".join(f"{e} {z:.2f}" for e, z in r["element_z"].items())
                      for label, r in rows.items()))
    print(f"the default map's factor per element: {model_factors}")
    print("targets: cov1σ 0.68 ± 0.03, cov2σ 0.95 ± 0.02, conformal 90 % interval 0.90, "
          "Spearman >= 0.97 × expected, ratio (std growth / error growth at 1000 K) >= 0.8, "
          "NLL (mean Gaussian negative log-likelihood of the test force components, nats) "
          "of loso within 5 % of validation's. "
          "expected: the Spearman of errors drawn from N(0, std²) with these stds (mean of "
          "100 draws). raw: calibration=None; loso: the default (no validation frames); "
          "loso-1: the same map without its factor per element; "
          "validation: calibrate() on the validation frames. conf90 of the loso row: the "
          "normalised-score interval of the LOSO scores, or with --jackknife (marked +) "
          "the coverage of the jackknife+ intervals the model returns.")


class _LosoTime(logging.Handler):
    """Read the leave-one-structure-out step's time off the fit's log."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seconds = 0.0

    def emit(self, record):
        match = re.search(r"leave-one-structure-out predictions .* in ([0-9.]+) s",
                          record.getMessage())
        if match:
            self.seconds += float(match.group(1))


def _stds(model, terms, calibrated, noise):
    if calibrated:
        return [np.sqrt(model.epistemic_variance("forces", t.forces_var_posterior,
                                                 t.forces_var_projection, t.numbers)
                        + model.noise_variance("forces", noise)) for t in terms]
    return [np.sqrt(t.forces_var_posterior + t.forces_var_projection + noise) for t in terms]


def _energy_coverage(model, terms, frames, calibrated):
    """Fractions of test energies within 1 and 2 total stds (raw or calibrated)."""
    post = np.array([t.energy_var_posterior for t in terms])
    proj = np.array([t.energy_var_projection for t in terms])
    noise = model.energy_noise_**2 * np.array([len(a) for a in frames])
    var = (model.epistemic_variance("energy", post, proj)
           + model.noise_variance("energy", noise)) if calibrated else post + proj + noise
    error = np.abs(np.array([t.energy for t in terms])
                   - np.array([a.get_potential_energy() for a in frames]))
    return float(np.mean(error <= np.sqrt(var))), float(np.mean(error <= 2 * np.sqrt(var)))


def _element_z(forces, ref, stds, frames):
    """RMS z-score of the test force components of each element's atoms."""
    from ase.data import chemical_symbols

    factors = metrics.element_recalibration_factors(forces, ref, stds,
                                                    [a.numbers for a in frames])
    return {chemical_symbols[n]: value for n, value in factors.items()}


def _rows(model, test_terms, ref, hot_terms, hot, calibrated, noise, args, test=None):
    """The table row of the model's current calibration (or the raw stds)."""
    forces = [t.forces for t in test_terms]
    test_std = _stds(model, test_terms, calibrated, noise)
    row = summary(forces, ref, test_std)
    if test is not None:
        row["energy_cov"] = _energy_coverage(model, test_terms, test, calibrated)
        row["element_z"] = _element_z(forces, ref, test_std, test)
    if calibrated and model.interval_scores_:
        half = conformal.interval_quantile(model.interval_scores_["forces"], 0.9)
        inside = np.concatenate([(np.abs(f - r) <= half * s).ravel()
                                 for f, r, s in zip(forces, ref, test_std, strict=True)])
        row["conformal90"] = float(inside.mean())
        if args.plot and model.interval_kind_ == "validation":
            from kernelpot.plotting import plot_calibration

            print(f"wrote {plot_calibration(forces, ref, test_std, args.plot)}")
    if hot is not None:
        hot_row = summary([t.forces for t in hot_terms], [a.get_forces() for a in hot],
                          _stds(model, hot_terms, calibrated, noise))
        row["std_growth"] = hot_row["mean_std"] / row["mean_std"]
        row["error_growth"] = hot_row["mae"] / row["mae"]
    return row


if __name__ == "__main__":
    main()
