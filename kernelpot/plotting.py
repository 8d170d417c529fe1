"""Figures (matplotlib, which ASE already requires; imported only when called)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["plot_otf_log", "plot_parity", "plot_learning_curve", "plot_calibration",
           "plot_error_vs_std"]


def _pyplot():
    """Return matplotlib.pyplot, on the Agg backend unless one was chosen."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(*axes) -> None:
    """Label log axes with plain numbers at 1, 2, 5 × 10^k, and no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in axes:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())


def _save(fig, path) -> Path:
    """Write ``fig`` to ``path`` at 200 dpi, close it and return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=200)
    plt.close(fig)
    return path


def plot_otf_log(log: str | os.PathLike, path: str | os.PathLike,
                 reference_name: str = "reference") -> Path:
    """Plot an on-the-fly run: largest force std, threshold and reference calls over time.

    Parameters
    ----------
    log : str or path-like
        The run's ``otf_log.jsonl`` (or its directory).
    path : str or path-like
        Output image (PNG, PDF, ... by extension).
    reference_name : str, default="reference"
        Label of the reference method in the legend.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If the log holds no steps.
    """
    plt = _pyplot()

    log = Path(log)
    if log.is_dir():
        log = log / "otf_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"plot_otf_log: {log} holds no steps")
    time_ps = np.array([r["time_fs"] for r in records]) / 1000.0
    max_std = 1e3 * np.array([r["max_force_std"] for r in records])
    threshold = 1e3 * np.array([r["threshold"] for r in records])
    called = np.array([r["reference_called"] for r in records])
    fig, ax = plt.subplots(figsize=(3.5, 2.6), constrained_layout=True)
    ax.plot(time_ps, max_std, lw=0.8, label="largest force std")
    ax.plot(time_ps, threshold, color="k", lw=0.6, ls="--", label="threshold")
    ax.plot(time_ps[called], max_std[called], "v", ms=4, label=f"{reference_name} call")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("force std (meV/Å)")
    if np.all(max_std > 0):
        ax.set_yscale("log")
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


def plot_parity(predicted_forces: ArrayLike, reference_forces: ArrayLike, forces_std: ArrayLike,
                path: str | os.PathLike) -> Path:
    """Plot predicted against reference forces, each component coloured by its std.

    Parameters
    ----------
    predicted_forces, reference_forces, forces_std : list of ndarray of shape (n_atoms, 3)
        Predicted and reference forces and the predicted std, eV/Å.
    path : str or path-like
        Output image (PNG, PDF, ... by extension).

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If the three inputs hold different numbers of components, or none.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    from kernelpot import metrics

    pred, ref, std = (metrics._flat(list(v)) for v in
                      (predicted_forces, reference_forces, forces_std))
    if not (pred.shape == ref.shape == std.shape) or pred.size == 0:
        raise ValueError("plot_parity: predicted, reference and std must hold the same "
                         f"number of components (> 0); got {pred.size}, {ref.size}, {std.size}")
    order = np.argsort(std)  # the most uncertain on top
    fig, ax = plt.subplots(figsize=(3.5, 3.0), constrained_layout=True)
    std = 1e3 * std  # stds and errors in meV/Å, forces in eV/Å (README: units)
    positive = std[std > 0]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size > 1 else None
    points = ax.scatter(ref[order], pred[order], c=np.maximum(std[order], 1e-9), s=3,
                        cmap="viridis", norm=norm, linewidths=0, rasterized=True)
    low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([low, high], [low, high], color="k", lw=0.6, ls="--")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel("reference force (eV/Å)")
    ax.set_ylabel("predicted force (eV/Å)")
    ax.text(0.04, 0.96, f"MAE {1e3 * metrics.mae(pred, ref):.1f} meV/Å\n"
            f"RMSE {1e3 * metrics.rmse(pred, ref):.1f} meV/Å", transform=ax.transAxes,
            va="top", fontsize=7)
    bar = fig.colorbar(points, ax=ax, label="predicted std (meV/Å)", shrink=0.8)
    if norm is not None:
        _plain_log_ticks(bar.ax.yaxis)
    return _save(fig, path)


def plot_learning_curve(curve: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Plot a log-log learning curve: force and energy errors, mean predicted force std.

    Parameters
    ----------
    curve : dict
        What :func:`kernelpot.studies.learning_curve` returns.
    path : str or path-like
        Output image (PNG, PDF, ... by extension).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    sizes = np.asarray(curve["sizes"])
    fig, (ax_f, ax_e) = plt.subplots(1, 2, figsize=(7.0, 2.8), constrained_layout=True)

    def band(ax, values, label, style, scale):
        # mean over repeats as a line, min-max as a band when there are several
        values = np.asarray(values) * scale
        mean = np.nanmean(values, axis=1)
        ax.plot(sizes, mean, style, label=label, ms=4)
        if values.shape[1] > 1:
            ax.fill_between(sizes, np.nanmin(values, axis=1), np.nanmax(values, axis=1),
                            alpha=0.2)

    band(ax_f, curve["force_mae"], "force MAE", "o-", 1e3)
    band(ax_f, curve["force_std"], "mean predicted std", "s--", 1e3)
    band(ax_e, curve["energy_mae"], "energy MAE", "o-", 1e3)
    for ax, unit in ((ax_f, "force (meV/Å)"), (ax_e, "energy (meV/atom)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("training structures")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


def plot_calibration(predicted: ArrayLike, reference: ArrayLike, std: ArrayLike,
                     path: str | os.PathLike, label: str = "forces") -> Path:
    """Plot observed against nominal coverage of Gaussian intervals (calibration).

    Parameters
    ----------
    predicted, reference, std : array-like or list of arrays
        Predictions, reference values and predicted stds (same layout).
    path : str or path-like
        Output image (PNG, PDF, ... by extension).
    label : str, default="forces"
        Legend label of the curve.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If the inputs differ in size or hold no values, or a std is not finite and > 0.
    """
    plt = _pyplot()

    from kernelpot import metrics

    nominal, observed = metrics.coverage_curve(predicted, reference, std)
    fig, ax = plt.subplots(figsize=(3.2, 3.0), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="k", lw=0.6, ls="--", label="ideal (observed = nominal)")
    ax.plot(nominal, observed, "o-", ms=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage of ±z·std")
    ax.set_ylabel("observed fraction of errors inside")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return _save(fig, path)


def plot_error_vs_std(predicted_forces: ArrayLike, reference_forces: ArrayLike,
                      forces_std: ArrayLike, path: str | os.PathLike) -> Path:
    """Plot per-atom force error against per-atom predicted std (log-log), with y = x.

    The legend gives the Spearman rank correlation of the two
    (:func:`kernelpot.metrics.spearman_std_error`).

    Parameters
    ----------
    predicted_forces, reference_forces, forces_std : list of ndarray of shape (n_atoms, 3)
        Predicted and reference forces and the predicted std, eV/Å.
    path : str or path-like
        Output image (PNG, PDF, ... by extension).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    plt = _pyplot()

    from kernelpot import metrics

    errors = metrics.per_atom_norms([np.asarray(p) - np.asarray(r) for p, r in
                                     zip(predicted_forces, reference_forces, strict=True)])
    stds = metrics.per_atom_norms(forces_std)
    rho = metrics.spearman_std_error(predicted_forces, reference_forces, forces_std)
    fig, ax = plt.subplots(figsize=(3.6, 3.2), constrained_layout=True)
    ax.scatter(1e3 * stds, 1e3 * np.maximum(errors, 1e-12), s=3, linewidths=0,
               rasterized=True)
    low = 1e3 * max(min(stds.min(), errors[errors > 0].min() if np.any(errors > 0) else 1),
                    1e-9)
    high = 1e3 * max(stds.max(), errors.max())
    ax.plot([low, high], [low, high], color="k", lw=0.6, ls="--", label="error = std")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax.xaxis, ax.yaxis)
    ax.set_xlabel("predicted std per atom (meV/Å)")
    ax.set_ylabel("force error per atom (meV/Å)")
    ax.legend(fontsize=7, title=f"Spearman {rho:.2f}", title_fontsize=7, frameon=False,
              loc="upper left")
    return _save(fig, path)
