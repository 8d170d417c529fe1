"""Figures (matplotlib, which ASE already requires; imported only when called)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["plot_otf_log"]


def plot_otf_log(log, path, reference_name="reference"):
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
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    log = Path(log)
    if log.is_dir():
        log = log / "otf_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"plot_otf_log: {log} holds no steps")
    time_ps = np.array([r["time_fs"] for r in records]) / 1000.0
    max_std = np.array([r["max_force_std"] for r in records])
    threshold = np.array([r["threshold"] for r in records])
    called = np.array([r["reference_called"] for r in records])
    fig, ax = plt.subplots(figsize=(3.5, 2.6), constrained_layout=True)
    ax.plot(time_ps, max_std, lw=0.8, label="largest force std")
    ax.plot(time_ps, threshold, color="k", lw=0.6, ls="--", label="threshold")
    ax.plot(time_ps[called], max_std[called], "v", ms=4, label=f"{reference_name} call")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("force std (eV/Å)")
    if np.all(max_std > 0):
        ax.set_yscale("log")
    ax.legend(fontsize=7, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=200)
    plt.close(fig)
    return path
