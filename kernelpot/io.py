"""The model file format: plain arrays in ``.npz`` plus JSON metadata, with a checksum.

No pickle anywhere: files are read with ``allow_pickle=False``, objects are
rebuilt from their class name and parameters (:func:`encode`, :func:`decode`), and a
SHA-256 checksum over every array and the metadata detects truncated or edited files.
This module knows the container only; what a model writes into it comes from the
estimator and its posterior (``to_arrays``/``from_arrays``).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kernelpot._files import atomic_write
from kernelpot._version import __version__

if TYPE_CHECKING:
    import os

__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "UNITS", "decode", "encode", "parameter_classes",
           "read_model_file", "write_model_file"]

#: Version of the file layout written (2: the fitted method and exact models,
#: 2026-11-25; 3: the LOSO calibration, its jackknife+ scores and shift basis, and the
#: per-atom force exponent, 2026-12-05; 4: a sparse model's two triangular factors as
#: their lower triangles, the energy noise's unit as eV/√atom, 2026-12-05; 5: a stored
#: training state holds the labels and row layout only, not the design and its factors,
#: which ``restore_training`` rebuilds from the structures, 2026-12-05; 6: the stress
#: noise and the likelihood statistics of stress rows, 2026-12-05; 7: the statistics'
#: columns per kind, ``m_E`` and ``m_S``, which a streamed fit's folded energy and
#: stress rows make fewer than the observations, 2026-12-05; 8: the range of raw
#: variance each std map was fitted on, ``quantity_lower`` and ``quantity_upper`` in
#: ``std_scale``, 2026-12-06; 9: the exact model's factor as its lower triangle,
#: ``exact_L_tril``, half the size of the square, and a sparse model's ``L_mm`` as its
#: rows from their first nonzero entry on (``L_mm_envelope``, ``L_mm_first``): its
#: blocks by element, 2026-12-07; 10: the std map's force factor per element,
#: ``forces_element_<Z>`` entries of ``std_scale``, 2026-12-07; 11: a sparse model's
#: ``L_mm`` left out and rebuilt from the inducing environments at load, stored only
#: where that would not give it back, 2026-12-07; 12: a sparse model's whitened factor
#: ``R_w_tril`` instead of ``L_post_tril``, in float32 where that bounds every variance
#: term within 1 %, 2026-12-08).
FORMAT_VERSION = 12
#: Versions this code reads (a version 2 file has none of version 3's additions,
#: versions 2 and 3 hold the factors as full squares, and versions 2 to 4 store a
#: training state with its design; versions 2 to 5 have no stress noise, read as
#: :data:`kernelpot.hyperparameters.DEFAULT_STRESS_NOISE`; versions 2 to 6 have one
#: statistics column per observation; versions 2 to 7 have no fitted range of the std
#: maps, whose exponent then holds everywhere; versions 2 to 8 hold the exact model's
#: factor as a full square; versions 2 to 9 have no element factors: every element's
#: is 1; versions 2 to 10 store every sparse model's ``L_mm``; versions 2 to 11 store
#: ``L_post = L_mm R_wᵀ``, from which ``R_w`` is solved at load); any other is refused.
READABLE_VERSIONS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
_FORMAT_NAME = "kernelpot-model"
#: Units of the stored values.
UNITS = {"energy": "eV", "length": "Å", "force": "eV/Å", "energy_noise": "eV/√atom",
         "stress_noise": "eV/Å³"}


def parameter_classes() -> dict:
    """Return the classes whose objects a model file stores by their parameters.

    Returns
    -------
    dict
        ``{class name: class}``: descriptors, kernels, the two-body term and the
        registered baselines (the estimator class is added by the loader).
    """
    from kernelpot.baselines import ZBL, BaselineSum, Coulomb, LennardJones, Pair
    from kernelpot.descriptors import ACSF, SOAP, FeatomicSOAP
    from kernelpot.kernels import NormalizedDotProduct, Scaled, SquaredExponential, Sum
    from kernelpot.two_body import TwoBody

    return {cls.__name__: cls for cls in (ACSF, SOAP, FeatomicSOAP, NormalizedDotProduct,
                                          SquaredExponential, Scaled, Sum, TwoBody, ZBL,
                                          LennardJones, Coulomb, Pair, BaselineSum)}


def encode(value: object, registry: dict) -> object:
    """Turn parameters into JSON: objects of registered classes become {"class", "params"}.

    Parameters
    ----------
    value : object
        A parameter value: an estimator, descriptor or kernel of ``registry``, a
        container, a NumPy scalar or array, or a JSON scalar.
    registry : dict
        ``{class name: class}`` of the objects stored by their parameters.

    Returns
    -------
    object
        JSON-ready; values of other types become ``{"__unserialisable__": name}``.
    """
    if hasattr(value, "get_params") and type(value).__name__ in registry:
        return {"__class__": type(value).__name__,
                "params": {k: encode(v, registry)
                           for k, v in value.get_params(deep=False).items()}}
    if isinstance(value, (list, tuple)):
        return {"__tuple__": [encode(v, registry) for v in value]} \
            if isinstance(value, tuple) else [encode(v, registry) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, registry), encode(v, registry)]
                             for k, v in value.items()]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"__tuple__": [encode(v, registry) for v in value.tolist()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"__unserialisable__": type(value).__name__}


def decode(value: object, registry: dict) -> object:
    """Rebuild what :func:`encode` wrote.

    Parameters
    ----------
    value : object
        JSON value.
    registry : dict
        ``{class name: class}``.

    Returns
    -------
    object

    Raises
    ------
    ValueError
        For an unknown class or a malformed entry.
    """
    if isinstance(value, list):
        return [decode(v, registry) for v in value]
    if isinstance(value, dict):
        if "__class__" in value:
            name = value["__class__"]
            if name not in registry:
                raise ValueError(f"load: unknown class {name!r} in the model file")
            return registry[name](**{k: decode(v, registry)
                                     for k, v in value["params"].items()})
        if "__tuple__" in value:
            return tuple(decode(v, registry) for v in value["__tuple__"])
        if "__dict__" in value:
            return {decode(k, registry): decode(v, registry) for k, v in value["__dict__"]}
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


def write_model_file(path: os.PathLike | str, metadata: dict, arrays: dict) -> Path:
    """Write a model file: ``arrays`` and ``metadata`` with the format's header and checksum.

    Parameters
    ----------
    path : str or path-like
        Destination; ``.npz`` is appended if missing.
    metadata : dict
        JSON-ready entries (the estimator's parameters and fitted values).
    arrays : dict of ndarray
        Plain numeric arrays.

    Returns
    -------
    pathlib.Path
        The file written (atomically: a crash mid-write leaves no truncated file).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    metadata = {"format": _FORMAT_NAME, "format_version": FORMAT_VERSION,
                "kernelpot_version": __version__, **metadata, "units": UNITS}
    metadata["checksum"] = _checksum(arrays, metadata)
    blob = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda handle: np.savez(handle, metadata=blob, **arrays))


def read_model_file(path: os.PathLike | str) -> tuple[dict, dict]:
    """Read a model file written by :func:`write_model_file`, checking it whole.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    metadata : dict
        Without the checksum.
    arrays : dict of ndarray

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a kernelpot model, is truncated or was modified, or was
        written with another format version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load: no such file: {path}")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle, and say so
        with open(path, "rb") as handle:
            starts_as_zip = handle.read(4) == b"PK\x03\x04"
        if starts_as_zip:  # a zip's directory is at its end: a cut-short file has none
            raise ValueError(f"load: {path} is damaged: it begins as a model file (a zip "
                             "archive) but its end is missing, as in a truncated file (a "
                             "copy or a write cut short); save the model again or copy it "
                             "whole")
        raise ValueError(f"load: {path} is not a kernelpot model file: a model file is an "
                         ".npz (zip) archive written by SparseGPPotential.save or `kernelpot "
                         "fit`; this one is not a zip archive (a structure file, or a "
                         "truncated model?)")
    arrays, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                arrays[key] = data[key]
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as err:
        if "CRC" in str(err):  # the zip's own checksum of one member: bytes changed
            raise ValueError(f"load: {path} is damaged: the checksum of its array "
                             f"{key!r} does not match its bytes (changed on disk or in a "
                             "copy); save the model again or copy it whole") from err
        raise ValueError(f"load: {path} is not a readable kernelpot model file (truncated or "
                         f"not an .npz archive): {err}") from err
    except ValueError as err:
        if "allow_pickle" in str(err):  # object arrays: not written by kernelpot
            raise ValueError(f"load: {path} is not a kernelpot model file: its array "
                             f"{key!r} holds Python objects, which kernelpot never "
                             "writes") from err
        raise ValueError(f"load: {path} is damaged: its array {key!r} cannot be read (cut "
                         f"short or overwritten): {err}") from err
    if "metadata" not in arrays:
        raise ValueError(f"load: {path} is not a kernelpot model file (no metadata)")
    try:
        metadata = json.loads(arrays.pop("metadata").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"load: {path} has corrupt metadata: {err}") from err
    if not isinstance(metadata, dict) or metadata.get("format") != _FORMAT_NAME:
        raise ValueError(f"load: {path} is not a kernelpot model file")
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"load: {path} uses model format version {version} (written by kernelpot "
            f"{metadata.get('kernelpot_version')}); this kernelpot {__version__} reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    stored = metadata.pop("checksum", None)
    if stored != _checksum(arrays, metadata):
        raise ValueError(f"load: {path} failed its checksum: the file was modified or damaged")
    return metadata, arrays
