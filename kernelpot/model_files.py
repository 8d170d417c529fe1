"""Loading a model file into a fitted :class:`~kernelpot.SparseGPPotential`.

:meth:`SparseGPPotential.save` writes the file; :func:`load` reads it back through
:mod:`kernelpot.io` (the container) and the posterior's ``from_arrays``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kernelpot import io
from kernelpot.calibration import QUANTITIES, StdCalibration
from kernelpot.estimator import SparseGPPotential
from kernelpot.exact_posterior import ExactPosterior
from kernelpot.sparse_posterior import SparsePosterior
from kernelpot.two_body import TwoBody

if TYPE_CHECKING:
    import os

__all__ = ["load"]


def load(path: os.PathLike | str) -> SparseGPPotential:
    """Load a model written by :meth:`SparseGPPotential.save`.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.

    Returns
    -------
    SparseGPPotential
        Fitted; predicts bit for bit what the saved model predicted.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a kernelpot model, is truncated or was modified, or was
        written with another format version.
    """
    metadata, arrays = io.read_model_file(path)
    registry = {**io.parameter_classes(), SparseGPPotential.__name__: SparseGPPotential}
    what = str(path)
    if metadata.get("estimator") not in registry:
        raise ValueError(f"load: unknown estimator {metadata.get('estimator')!r}")
    params = io.decode(metadata["params"], registry)
    # a file from before the LOSO calibration keeps what its model did: raw stds
    params.setdefault("calibration", None)
    model = registry[metadata["estimator"]](**params)
    if not isinstance(model, SparseGPPotential):
        raise ValueError(f"load: {path} does not hold a SparseGPPotential")
    fitted = metadata["fitted"]
    method = fitted.get("method")
    if method not in ("sparse", "exact"):
        raise ValueError(f"load: {what} names an unknown fitted method {method!r}")
    descriptor = io.decode(metadata["descriptor"], registry)
    kernel = io.decode(metadata["kernel"], registry)
    species = arrays["species"]
    if method == "exact":
        posterior = ExactPosterior.from_arrays(arrays, fitted, kernel, descriptor, species,
                                               what)
    else:
        posterior = SparsePosterior.from_arrays(
            arrays, fitted, kernel, _checked_two_body(metadata.get("two_body"), registry, what),
            len(species), what)
    std_scale = StdCalibration.check_std_scale(fitted.get("std_scale"), what)
    # files written before LOSO calibration existed hold validation maps only
    kind = fitted.get("interval_kind", "validation" if std_scale else None)
    if kind not in ("loso", "validation", None):
        raise ValueError(f"load: {what} has a malformed interval_kind entry {kind!r}")
    calibration = StdCalibration(std_scale, StdCalibration.check_interval_scores(arrays, what),
                                 kind=kind, jackknife=_jackknife_scores(arrays, what))
    return model.from_posterior(posterior, descriptor=descriptor, species=species,
                                e0=arrays["e0"], calibration=calibration,
                                shortest_pairs=_shortest_pairs(arrays, len(species),
                                                               descriptor, what))


def _shortest_pairs(arrays: dict, n_species: int, descriptor, what: str):
    """Return the stored shortest pair distances (None in files from before), checked."""
    distances = arrays.get("shortest_pairs")
    if distances is None:
        return None
    r_cut = getattr(descriptor, "r_cut", None)
    if distances.shape != (n_species, n_species) or distances.dtype.kind != "f" \
            or not np.all(np.isfinite(distances)) or np.any(distances <= 0) \
            or not np.array_equal(distances, distances.T) \
            or (r_cut is not None and np.any(distances > r_cut)):
        raise ValueError(f"load: {what} has malformed shortest pair distances")
    return distances


def _jackknife_scores(arrays: dict, what: str) -> dict | None:
    """Return the stored jackknife+ scores and structures per quantity, checked."""
    out = {}
    for quantity in QUANTITIES:
        scores = arrays.get(f"jackknife_scores_{quantity}")
        structure = arrays.get(f"jackknife_structure_{quantity}")
        if scores is None and structure is None:
            continue
        if scores is None or structure is None or scores.ndim != 1 \
                or structure.shape != scores.shape or structure.dtype.kind not in "iu" \
                or not np.all(np.isfinite(scores)) or np.any(scores < 0):
            raise ValueError(f"load: {what} has malformed {quantity} jackknife scores")
        out[quantity] = (scores, structure)
    return out or None


def _checked_two_body(encoded, registry: dict, what: str):
    """Decode the fitted two-body term (or None) of a model file, checked."""
    pair = io.decode(encoded, registry) if encoded is not None else None
    if pair is not None and not isinstance(pair, TwoBody):
        raise ValueError(f"load: {what} has a malformed two_body entry")
    if pair is not None:
        try:
            pair.check()
        except ValueError as err:
            raise ValueError(f"load: {what} has an invalid two_body entry: {err}") from None
    return pair
