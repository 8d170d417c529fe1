"""Saving and loading fitted models: plain arrays in ``.npz`` plus JSON metadata.

No pickle anywhere: files are read with ``allow_pickle=False``, objects are
rebuilt from their class name and parameters, and a SHA-256 checksum over every
array and the metadata detects truncated or edited files.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from kernelpot import __version__
from kernelpot._files import atomic_write

__all__ = ["save", "load", "FORMAT_VERSION"]

#: Version of the file layout; a file of another version is refused (2: the fitted
#: method and exact models, 2026-11-25).
FORMAT_VERSION = 2
_FORMAT_NAME = "kernelpot-model"
UNITS = {"energy": "eV", "length": "Å", "force": "eV/Å", "energy_noise": "eV/atom"}


def _registry():
    from kernelpot.descriptors import ACSF, SOAP
    from kernelpot.estimator import SparseGPPotential
    from kernelpot.kernels import NormalizedDotProduct, Scaled, SquaredExponential, Sum
    from kernelpot.two_body import TwoBody

    return {cls.__name__: cls for cls in (ACSF, SOAP, NormalizedDotProduct, SquaredExponential,
                                          Scaled, Sum, SparseGPPotential, TwoBody)}


def _encode(value):
    """Turn parameters into JSON: objects become {"class", "params"}."""
    if hasattr(value, "get_params") and type(value).__name__ in _registry():
        return {"__class__": type(value).__name__,
                "params": {k: _encode(v) for k, v in value.get_params(deep=False).items()}}
    if isinstance(value, (list, tuple)):
        return {"__tuple__": [_encode(v) for v in value]} if isinstance(value, tuple) \
            else [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"__tuple__": [_encode(v) for v in value.tolist()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"__unserialisable__": type(value).__name__}


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__class__" in value:
            registry = _registry()
            name = value["__class__"]
            if name not in registry:
                raise ValueError(f"load: unknown class {name!r} in the model file")
            return registry[name](**{k: _decode(v) for k, v in value["params"].items()})
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_decode(k): _decode(v) for k, v in value["__dict__"]}
        if "__unserialisable__" in value:
            return None
        raise ValueError("load: malformed parameter in the model file")
    return value


def _checksum(arrays: dict, metadata: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(key.encode())
        digest.update(str(a.dtype).encode())
        digest.update(repr(a.shape).encode())
        digest.update(a.tobytes())
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()


_STATE_FIELDS = ("Kw", "y", "noise_std", "is_energy", "n_atoms_row", "L_mm", "R", "b",
                 "energy_row", "force_row")


def save(model, path, training_state=False) -> Path:
    """Save a fitted :class:`~kernelpot.SparseGPPotential` to ``path`` (``.npz``).

    Parameters
    ----------
    model : SparseGPPotential
        A fitted model.
    path : str or path-like
        Destination; ``.npz`` is appended if missing.
    training_state : bool, default=False
        Also store the whitened design and factors an ``incremental=True`` model
        keeps, so that a loaded model can :meth:`~SparseGPPotential.update` once
        its training structures are given back (on-the-fly learning checkpoints).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    method = getattr(model, "method_", "sparse")
    arrays = {"species": model.species_, "e0": model.e0_, "alpha": model.alpha_}
    stats = model._stats
    if method == "exact":
        # the Jacobians are recomputed from the structures at load: far smaller files
        arrays["exact_L"] = model._exact.L
        arrays["exact_y"] = model._exact.y
        for name, value in model._exact_structures.items():
            arrays[f"exact_structures_{name}"] = value
    else:
        arrays.update({
            "L_mm": model._posterior.L_mm,
            "L_post": model._posterior.L_post,
            "stats_eigenvalues": stats.eigenvalues,
            "stats_U": stats.U,
            "stats_beta_E": stats.beta_E,
            "stats_beta_F": stats.beta_F,
        })
        for s, Z in enumerate(model.inducing_):
            arrays[f"inducing_{s}"] = Z
            arrays[f"columns_{s}"] = model._columns[s]
        if getattr(model, "two_body_", None) is not None:
            arrays["pair_columns"] = model._pair_columns
    for quantity, scores in (getattr(model, "interval_scores_", None) or {}).items():
        arrays[f"interval_scores_{quantity}"] = scores
    state = getattr(model, "_state", None)
    if training_state:
        if state is None:
            raise ValueError("save: training_state=True needs a model fitted with "
                             "incremental=True")
        for name in _STATE_FIELDS:
            arrays[f"state_{name}"] = np.asarray(getattr(state, name))
    metadata = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kernelpot_version": __version__,
        "estimator": type(model).__name__,
        "params": _encode(model.get_params(deep=False)),
        "descriptor": _encode(model.descriptor_),
        "kernel": _encode(model.kernel_),
        "two_body": _encode(getattr(model, "two_body_", None)),
        "fitted": {
            "method": method,
            "signal_std": model.signal_std_,
            "energy_noise": model.energy_noise_,
            "force_noise": model.force_noise_,
            "log_marginal_likelihood": model.log_marginal_likelihood_value_,
            "jitter": model.jitter_,
            "jitter_abs": model._jitter_abs,
            "n_inducing": model.n_inducing_,
            "std_scale": getattr(model, "std_scale_", None),
            "stats": None if stats is None else {
                "c_E": stats.c_E, "c_F": stats.c_F, "n_E": stats.n_E, "n_F": stats.n_F,
                "logdet_D_E": stats.logdet_D_E},
        },
        "units": UNITS,
    }
    metadata["checksum"] = _checksum(arrays, metadata)
    blob = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    # write then rename: a crash mid-write never leaves a truncated model behind
    return atomic_write(path, lambda handle: np.savez(handle, metadata=blob, **arrays))


def load(path):
    """Load a model written by :func:`save`.

    Parameters
    ----------
    path : str or path-like

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
    from kernelpot import gp

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as err:
        raise ValueError(f"load: {path} is not a readable kernelpot model file (truncated or "
                         f"not an .npz archive): {err}") from err
    except ValueError as err:  # object arrays need pickle: not ours
        raise ValueError(f"load: {path} is not a kernelpot model file: {err}") from err
    if "metadata" not in arrays:
        raise ValueError(f"load: {path} is not a kernelpot model file (no metadata)")
    try:
        metadata = json.loads(arrays.pop("metadata").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"load: {path} has corrupt metadata: {err}") from err
    if not isinstance(metadata, dict) or metadata.get("format") != _FORMAT_NAME:
        raise ValueError(f"load: {path} is not a kernelpot model file")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"load: {path} uses model format version {version} (written by kernelpot "
            f"{metadata.get('kernelpot_version')}); this kernelpot {__version__} reads "
            f"version {FORMAT_VERSION}")
    stored = metadata.pop("checksum", None)
    if stored != _checksum(arrays, metadata):
        raise ValueError(f"load: {path} failed its checksum: the file was modified or damaged")
    registry = _registry()
    if metadata.get("estimator") not in registry:
        raise ValueError(f"load: unknown estimator {metadata.get('estimator')!r}")
    model = registry[metadata["estimator"]](**_decode(metadata["params"]))
    fitted = metadata["fitted"]
    n_species = len(arrays["species"])
    model.descriptor_ = _decode(metadata["descriptor"])
    model.kernel_ = _decode(metadata["kernel"])
    model.species_ = arrays["species"]
    model.e0_ = arrays["e0"]
    method = fitted.get("method")
    if method not in ("sparse", "exact"):
        raise ValueError(f"load: {path} names an unknown fitted method {method!r}")
    model.method_ = method
    model.n_inducing_ = fitted["n_inducing"]
    model.alpha_ = arrays["alpha"]
    model.signal_std_ = _signal_std(fitted.get("signal_std"), model.species_, method, path)
    model.energy_noise_ = fitted["energy_noise"]
    model.force_noise_ = fitted["force_noise"]
    model.std_scale_ = _std_scale(fitted.get("std_scale"), path)
    model.interval_scores_ = _interval_scores(arrays, path)
    model.log_marginal_likelihood_value_ = fitted["log_marginal_likelihood"]
    model.jitter_ = fitted["jitter"]
    model._jitter_abs = fitted["jitter_abs"]
    model._state = None  # without a stored training state a loaded model cannot update
    if method == "exact":
        _restore_exact(model, arrays, path)
        return model
    model._exact = None
    model.inducing_ = [arrays[f"inducing_{s}"] for s in range(n_species)]
    for z in model.inducing_:
        z.setflags(write=False)
    model.two_body_ = _two_body(metadata.get("two_body"), model, n_species, path)
    model._columns = [arrays[f"columns_{s}"] for s in range(n_species)]
    model._pair_columns = _pair_columns(arrays, model, n_species, path)
    if "state_Kw" in arrays:
        from kernelpot._incremental import TrainingState

        values = {name: arrays[f"state_{name}"] for name in _STATE_FIELDS}
        values["energy_row"] = values["energy_row"].tolist()
        values["force_row"] = values["force_row"].tolist()
        model._state = TrainingState(**values)  # frames are given back with restore_training
        model._state_needs_frames = True
    model._posterior = gp.Posterior(arrays["alpha"], arrays["L_mm"], arrays["L_post"])
    s = fitted["stats"]
    model._stats = gp.WhitenedStatistics(
        arrays["stats_eigenvalues"], arrays["stats_U"], arrays["stats_beta_E"],
        arrays["stats_beta_F"], s["c_E"], s["c_F"], s["n_E"], s["n_F"], s["logdet_D_E"])
    return model


def _two_body(encoded, model, n_species, path):
    """The fitted two-body term (or None), checked against the number of weights."""
    from kernelpot.two_body import TwoBody

    pair = _decode(encoded) if encoded is not None else None
    if pair is not None and not isinstance(pair, TwoBody):
        raise ValueError(f"load: {path} has a malformed two_body entry")
    if pair is not None:
        try:
            pair.check()
        except ValueError as err:
            raise ValueError(f"load: {path} has an invalid two_body entry: {err}") from None
    n_pair = pair.n_columns(n_species) if pair is not None else 0
    if len(model.alpha_) != sum(len(z) for z in model.inducing_) + n_pair:
        raise ValueError(f"load: {path} holds {len(model.alpha_)} weights, which does not "
                         "match its inducing environments and two-body term")
    return pair


def _pair_columns(arrays, model, n_species, path):
    """Design columns of the two-body coefficients: every column exactly once overall."""
    if model.two_body_ is None:
        return None
    columns = arrays.get("pair_columns")
    every = np.concatenate(list(model._columns) + ([columns] if columns is not None else []))
    if columns is None or columns.dtype.kind not in "iu" \
            or columns.shape != (model.two_body_.n_columns(n_species),) \
            or not np.array_equal(np.sort(every), np.arange(len(model.alpha_))):
        raise ValueError(f"load: {path} has malformed two-body columns")
    return columns


def _signal_std(sigma, species, method, path):
    """Validated fitted signal std: a number, or ``{element: σ}`` (exact model)."""
    def positive(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if isinstance(sigma, dict):
        symbols = {chemical_symbols[z] for z in species}
        if method == "exact" and set(sigma) == symbols and all(map(positive, sigma.values())):
            return {k: float(v) for k, v in sigma.items()}
    elif positive(sigma):
        return float(sigma)
    raise ValueError(f"load: {path} has a malformed signal_std entry {sigma!r}")


def _std_scale(scale, path):
    """Validated ``std_scale`` metadata entry."""
    if scale is None:
        return None
    known = {f"{q}{suffix}" for q in ("energy", "forces")
             for suffix in ("", "_projection", "_exponent", "_reference", "_noise")}
    if not isinstance(scale, dict) or not {"energy", "forces"} <= set(scale) \
            or not set(scale) <= known \
            or not all(isinstance(v, (int, float)) and v > 0 for v in scale.values()):
        raise ValueError(f"load: {path} has a malformed std_scale entry")
    return {k: float(v) for k, v in scale.items()}


def _restore_exact(model, arrays, path):
    """Rebuild an exact model's observations from its stored training structures."""
    from kernelpot import exact

    names = ("n_atoms", "numbers", "positions", "cells", "pbc", "has_energy", "has_forces")
    missing = [n for n in names if f"exact_structures_{n}" not in arrays]
    missing += [n for n in ("exact_L", "exact_y") if n not in arrays]
    if missing:
        raise ValueError(f"load: {path} is an exact model without {missing}")
    structures = {n: arrays[f"exact_structures_{n}"] for n in names}
    frames = exact.structures_from_arrays(structures)
    species_index = [np.searchsorted(model.species_, a.numbers) for a in frames]
    results = [model.descriptor_.compute(a) for a in frames]
    obs = exact.build_observations(results, species_index, len(model.species_),
                                   structures["has_energy"], structures["has_forces"])
    L, y, weights = arrays["exact_L"], arrays["exact_y"], arrays["alpha"]
    if L.shape != (obs.n_obs, obs.n_obs) or y.shape != (obs.n_obs,) \
            or weights.shape != (obs.n_obs,):
        raise ValueError(f"load: {path} holds exact-model arrays that do not match its "
                         f"{obs.n_obs} training observations")
    model._exact = exact.ExactPosterior(obs, L, weights, y, exact.mean_weights(
        obs, weights, model._signal_variances()))
    model._exact_K0 = None
    model._exact_structures = structures
    model.inducing_ = obs.features
    model._posterior = None
    model._stats = None


def _interval_scores(arrays, path):
    """The conformal scores :meth:`calibrate` stored, checked (sorted, finite, >= 0)."""
    scores = {}
    for quantity in ("energy", "forces"):
        values = arrays.get(f"interval_scores_{quantity}")
        if values is None:
            continue
        if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)) \
                or np.any(values < 0) or np.any(np.diff(values) < 0):
            raise ValueError(f"load: {path} has malformed {quantity} interval scores")
        scores[quantity] = values
    return scores or None
