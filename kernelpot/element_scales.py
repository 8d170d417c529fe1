"""One factor per element on the calibrated epistemic force variance.

The variance map of :mod:`kernelpot.calibration` is one function of the raw variance for
every atom. Its errors are not spread alike over the elements: measured on the default
exact model of aspirin (n = 50, LOSO map, first 300 test frames), the test forces of H
had a root-mean-square z-score of 0.75 and those of C 1.19 (O 1.02): H's stds too wide,
C's too narrow, with the whole set at 0.71 inside 1σ. A factor per element, fitted on
the same LOSO (or validation) errors after the map, brought them to 0.99, 0.99 and 1.12
and the mean negative log-likelihood of the test force components from −1.037 to −1.074
nats (benchmarks/RESULTS.md, "A force factor per element").

Each element's factor ``s`` multiplies the calibrated epistemic variance of its atoms'
force components (``s²``); the learned noise's share is not scaled. ``s`` maximises the
Gaussian likelihood of the element's errors with a normal prior of std
:data:`PRIOR_STD` on ``log s²``, each structure's values of the element weighted as one
atom's three (atoms of one structure share their errors' causes, so their count
overstates what they tell). Elements with fewer than :data:`MIN_ATOMS` fitting atoms keep
``s = 1``; so do elements a map never saw, and energies and stresses (sums over atoms of
several elements). Errors of a single element get no factor: the map's own scale,
fitted on the same errors, is that element's.
"""

from __future__ import annotations

import re

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = ["MIN_ATOMS", "PRIOR_STD", "describe", "element_key", "fit_element_scales",
           "is_element_key", "per_value_scales", "scales_of"]

#: Fewest atoms of an element (over all fitting structures) for a factor of its own.
MIN_ATOMS = 10
#: Std of the normal prior on ``log s²``: 0.5 keeps ``s`` within a factor 1.65 of 1 at two
#: prior stds unless the errors say more.
PRIOR_STD = 0.5
#: Largest factor (and the inverse of the smallest) a fit may reach.
_LIMIT = 10.0
_KEY = re.compile(r"^forces_element_([1-9][0-9]*)$")


def element_key(number: int) -> str:
    """Return the ``std_scale`` key of element ``number``'s force factor.

    Parameters
    ----------
    number : int
        Atomic number.

    Returns
    -------
    str
        ``"forces_element_<number>"``.
    """
    return f"forces_element_{int(number)}"


def is_element_key(key: str) -> bool:
    """Return whether ``key`` names an element's force factor (atomic number 1–118).

    Parameters
    ----------
    key : str

    Returns
    -------
    bool
    """
    match = _KEY.match(key)
    return bool(match) and 1 <= int(match.group(1)) <= 118


def scales_of(std_scale: dict | None) -> dict[int, float]:
    """Return the element factors a ``std_scale`` holds, by atomic number.

    Parameters
    ----------
    std_scale : dict or None

    Returns
    -------
    dict
        Empty for a map without them.
    """
    return {int(_KEY.match(key).group(1)): float(value)
            for key, value in (std_scale or {}).items() if is_element_key(key)}


def describe(scales: dict[int, float]) -> str:
    """Return the factors in words, ``"H ×0.94, C ×1.05"`` (by atomic number).

    Parameters
    ----------
    scales : dict
        Atomic number to factor (:func:`scales_of`).

    Returns
    -------
    str
        Empty for no factors.
    """
    from ase.data import chemical_symbols

    return ", ".join(f"{chemical_symbols[z]} ×{s:.3g}" for z, s in sorted(scales.items()))


def per_value_scales(scales: dict[int, float], numbers: np.ndarray, size: int,
                     owner: str) -> np.ndarray:
    """Return each force value's factor ``s`` (1 for elements without one).

    Parameters
    ----------
    scales : dict
        Atomic number to factor (:func:`scales_of`).
    numbers : array_like of int
        Atomic numbers of the atoms (one per atom: each gives its three components), or
        of every value (``size`` of them).
    size : int
        Number of force values.
    owner : str
        Names the caller in errors.

    Returns
    -------
    ndarray of shape (size,)

    Raises
    ------
    ValueError
        If ``numbers`` matches neither the atoms nor the values.
    """
    numbers = np.asarray(numbers).ravel()
    if numbers.size * 3 == size:
        numbers = np.repeat(numbers, 3)
    elif numbers.size != size:
        raise ValueError(f"{owner}: {numbers.size} atomic numbers do not match {size} force "
                         "values (one per atom or one per value)")
    table = np.ones(int(max(numbers.max(initial=0), max(scales, default=0))) + 1)
    for number, scale in scales.items():
        table[number] = scale
    return table[numbers]


def fit_element_scales(errors: np.ndarray, epistemic: np.ndarray, noise: np.ndarray,
                       numbers: np.ndarray, structures: np.ndarray) -> dict[int, float]:
    """Fit each element's factor on force errors (see the module notes).

    Parameters
    ----------
    errors : ndarray of shape (n,)
        Prediction minus reference of force components.
    epistemic, noise : ndarray of shape (n,)
        Their calibrated epistemic variance and the learned noise's share of the total.
    numbers : ndarray of int of shape (n,)
        The atomic number of each value's atom.
    structures : ndarray of int of shape (n,)
        The structure of each value.

    Returns
    -------
    dict
        Atomic number to factor, for every element with at least :data:`MIN_ATOMS` atoms;
        empty where the errors are of one element.
    """
    errors, epistemic, noise, numbers, structures = (
        np.asarray(a).ravel() for a in (errors, epistemic, noise, numbers, structures))
    scales = {}
    if np.unique(numbers).size < 2:
        return scales
    for number in np.unique(numbers):
        chosen = numbers == number
        if chosen.sum() < 3 * MIN_ATOMS or not np.any(epistemic[chosen] > 0):
            continue
        _, where, count = np.unique(structures[chosen], return_inverse=True,
                                    return_counts=True)
        weight = 3.0 / count[where]
        scales[int(number)] = _fit_one(errors[chosen] ** 2, epistemic[chosen],
                                       noise[chosen], weight)
    return scales


def _fit_one(r2: np.ndarray, epistemic: np.ndarray, noise: np.ndarray,
             weight: np.ndarray) -> float:
    """Return the factor of one element: the prior-penalised likelihood's maximum."""
    floor = np.finfo(np.float64).tiny

    def penalised(t: float) -> float:
        total = np.maximum(np.exp(t) * epistemic + noise, floor)
        return float(weight @ (0.5 * np.log(total) + 0.5 * r2 / total)
                     + 0.5 * (t / PRIOR_STD) ** 2)

    bound = 2.0 * np.log(_LIMIT)
    result = minimize_scalar(penalised, bounds=(-bound, bound), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(0.5 * result.x))
