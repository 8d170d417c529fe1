"""Error and calibration metrics, defined once (CLARIFICATIONS.md) and used everywhere.

Conventions:

* force MAE/RMSE are over force components;
* the per-atom force error is the norm of the error vector, and the per-atom
  predicted std the norm of the three component stds;
* Spearman correlation is between per-atom predicted std and per-atom error, over
  all atoms;
* coverage at ``k`` is the fraction of components whose absolute error is at most
  ``k`` predicted stds; ``exclude_fixed=True`` leaves out the components that are zero
  in both the reference and the prediction (:func:`fixed_components`: in a crystal, those
  its symmetry fixes), which every std covers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import spearmanr

__all__ = ["mae", "rmse", "max_error", "force_errors", "coverage", "fixed_components",
           "spearman_std_error",
           "per_atom_norms", "negative_log_likelihood", "coverage_curve",
           "recalibration_factor", "element_recalibration_factors", "expected_spearman",
           "neg_force_mae", "neg_energy_mae"]


def _flat(values) -> np.ndarray:
    if isinstance(values, (list, tuple)):
        return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
    return np.asarray(values, dtype=np.float64).ravel()


def _pair(predicted, reference):
    p, r = _flat(predicted), _flat(reference)
    if p.shape != r.shape:
        raise ValueError(f"predicted and reference have different sizes: {p.size} vs {r.size}")
    if p.size == 0:
        raise ValueError("no values to compare")
    return p, r


def mae(predicted: ArrayLike, reference: ArrayLike) -> float:
    """Return the mean absolute error over all components.

    Parameters
    ----------
    predicted : array-like or list of array-like
        Predicted values: an array, or one array per structure (forces of shape
        (n_atoms, 3)).
    reference : array-like or list of array-like
        Reference values, as many components as ``predicted``.

    Returns
    -------
    float
        ``mean(|predicted - reference|)``, in the unit of the inputs.

    Raises
    ------
    ValueError
        If ``predicted`` and ``reference`` differ in size or hold no values.
    """
    p, r = _pair(predicted, reference)
    return float(np.mean(np.abs(p - r)))


def rmse(predicted: ArrayLike, reference: ArrayLike) -> float:
    """Return the root-mean-square error over all components.

    Parameters
    ----------
    predicted : array-like or list of array-like
        Predicted values: an array, or one array per structure (forces of shape
        (n_atoms, 3)).
    reference : array-like or list of array-like
        Reference values, as many components as ``predicted``.

    Returns
    -------
    float
        ``sqrt(mean((predicted - reference)²))``, in the unit of the inputs.

    Raises
    ------
    ValueError
        If ``predicted`` and ``reference`` differ in size or hold no values.
    """
    p, r = _pair(predicted, reference)
    return float(np.sqrt(np.mean((p - r) ** 2)))


def max_error(predicted: ArrayLike, reference: ArrayLike) -> float:
    """Return the largest absolute error over all components.

    Parameters
    ----------
    predicted : array-like or list of array-like
        Predicted values: an array, or one array per structure (forces of shape
        (n_atoms, 3)).
    reference : array-like or list of array-like
        Reference values, as many components as ``predicted``.

    Returns
    -------
    float
        ``max(|predicted - reference|)``, in the unit of the inputs.

    Raises
    ------
    ValueError
        If ``predicted`` and ``reference`` differ in size or hold no values.
    """
    p, r = _pair(predicted, reference)
    return float(np.max(np.abs(p - r)))


def per_atom_norms(vectors: ArrayLike) -> np.ndarray:
    """Return the norm of every atom's 3-vector, concatenated over structures.

    Parameters
    ----------
    vectors : array-like of shape (n_atoms, 3) or list of them
        Per-atom vectors (force errors, component stds), one array per structure.

    Returns
    -------
    ndarray of shape (n_atoms_total,)
        Euclidean norms, structures one after the other.
    """
    return np.concatenate([np.linalg.norm(np.asarray(v).reshape(-1, 3), axis=1)
                           for v in (vectors if isinstance(vectors, (list, tuple))
                                     else [vectors])])


def force_errors(predicted: ArrayLike, reference: ArrayLike) -> dict[str, float]:
    """Return the MAE, RMSE and max error of force components, in the input unit.

    Parameters
    ----------
    predicted, reference : list of ndarray of shape (n_atoms, 3)
        Predicted and reference forces, one array per structure.

    Returns
    -------
    dict of str to float
        Keys ``mae``, ``rmse`` and ``max`` (:func:`mae`, :func:`rmse`,
        :func:`max_error`).
    """
    return {"mae": mae(predicted, reference), "rmse": rmse(predicted, reference),
            "max": max_error(predicted, reference)}


def fixed_components(predicted: ArrayLike, reference: ArrayLike,
                     atol: float = 1e-6) -> np.ndarray:
    """Return the components that are zero in both the reference and the prediction.

    In a crystal, symmetry fixes some force components at zero (every atom of a perfect
    or homogeneously strained diamond cell, for instance): the reference computes them
    as zero, and a model whose descriptor and kernel are invariant predicts zero with a
    variance that vanishes as well. Their errors are round-off, so they say nothing about
    whether a std is right, and any std covers them: counted, they pull a coverage
    towards 1 (measured on the mlearn Si test pool: 960 of 4,575 force components, the
    1σ coverage 0.714 without them and 0.774 with them).

    Parameters
    ----------
    predicted, reference : array-like or list of array-like
        Predicted and reference values, same layout (as for :func:`coverage`).
    atol : float, default=1e-6
        Below this absolute value (the values' unit, eV/Å for forces) both count as zero.

    Returns
    -------
    ndarray of bool
        One per component, flattened as :func:`coverage` flattens them.

    Raises
    ------
    ValueError
        If the inputs differ in size or hold no values, or ``atol`` is negative.
    """
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0; got {atol!r}")
    p, r = _pair(predicted, reference)
    return (np.abs(p) <= atol) & (np.abs(r) <= atol)


def coverage(predicted: ArrayLike, reference: ArrayLike, std: ArrayLike,
             k: float = 1.0, exclude_fixed: bool = False) -> float:
    """Return the fraction of components with ``|error| <= k std``.

    For Gaussian errors with the right std: 0.683 at k = 1, 0.954 at k = 2.

    Parameters
    ----------
    predicted : array-like or list of array-like
        Predicted values: an array, or one array per structure (forces of shape
        (n_atoms, 3)).
    reference : array-like or list of array-like
        Reference values, as many components as ``predicted``.
    std : array-like or list of array-like
        Predicted std of every component, same layout.
    k : float, default=1.0
        Half-width of the interval in stds.
    exclude_fixed : bool, default=False
        Leave out the components that are zero in both ``reference`` and ``predicted``
        (:func:`fixed_components`), e.g. force components a crystal's symmetry fixes.

    Returns
    -------
    float
        The fraction, in [0, 1]; NaN with ``exclude_fixed=True`` when every component is
        fixed.

    Raises
    ------
    ValueError
        If the inputs differ in size or hold no values.
    """
    p, r = _pair(predicted, reference)
    s = _flat(std)
    if s.shape != p.shape:
        raise ValueError(f"std has {s.size} values for {p.size} predictions")
    inside = np.abs(p - r) <= k * s
    if exclude_fixed:
        inside = inside[~fixed_components(p, r)]
        if not inside.size:
            return float("nan")
    return float(np.mean(inside))


def spearman_std_error(predicted_forces: ArrayLike, reference_forces: ArrayLike,
                       forces_std: ArrayLike) -> float:
    """Return the Spearman rank correlation of per-atom predicted std and force error.

    Parameters
    ----------
    predicted_forces, reference_forces : list of ndarray of shape (n_atoms, 3)
        Predicted and reference forces, one array per structure.
    forces_std : list of ndarray of shape (n_atoms, 3)
        Predicted per-component stds; an atom's std is the norm of its three.

    Returns
    -------
    float
        Spearman's rho over all atoms, in [-1, 1] (NaN if undefined).
    """
    predicted, reference, stds = (v if isinstance(v, (list, tuple)) else [v]
                                  for v in (predicted_forces, reference_forces, forces_std))
    shapes = [[np.shape(x) for x in v] for v in (predicted, reference, stds)]
    if not shapes[0] == shapes[1] == shapes[2]:  # a raw zip() error otherwise
        raise ValueError("spearman_std_error: predicted forces, reference forces and stds "
                         "have different sizes (structures of atoms × 3): "
                         f"{shapes[0][:5]}, {shapes[1][:5]}, {shapes[2][:5]}")
    errors = per_atom_norms([np.asarray(p) - np.asarray(r) for p, r in
                             zip(predicted, reference, strict=True)])
    stds = per_atom_norms(stds)
    return float(spearmanr(stds, errors).statistic)


def expected_spearman(forces_std: ArrayLike, n_draws: int = 100,
                      random_state: int | np.random.Generator | None = None) -> float:
    """Return the Spearman(per-atom std, per-atom error) that exactly right stds give.

    Draws each force component's error from ``N(0, std²)`` with the given component
    stds, and averages :func:`spearman_std_error` over ``n_draws`` draws. Even a model
    whose stds are exactly right has per-atom errors scattered around its std (a chi
    distribution for three components), so its Spearman is below 1, and how far below
    depends on how widely the stds spread. Compute it on the stds whose Spearman you
    measured (the calibrated ones, if calibrated). A measured value near it is what
    correct stds of that spread give. It is not a bound: where the errors grow faster
    than the stds (stds too narrow where the errors are large), the measured value can
    be above it.

    Parameters
    ----------
    forces_std : list of ndarray of shape (n_atoms, 3)
        Predicted per-component stds (> 0).
    n_draws : int, default=100
        Number of simulated error draws averaged.
    random_state : int, numpy.random.Generator or None
        Seed of the draws (``numpy.random.default_rng``).

    Returns
    -------
    float
        The mean Spearman correlation over the draws; NaN (with scipy's warning)
        when every atom has the same std, where a rank correlation is undefined.

    Raises
    ------
    ValueError
        If there are fewer than 2 atoms, a std is not finite and > 0, or
        ``n_draws < 1``.
    """
    stds = [np.asarray(s, dtype=np.float64).reshape(-1, 3) for s in
            (forces_std if isinstance(forces_std, (list, tuple)) else [forces_std])]
    flat = np.concatenate(stds) if stds else np.zeros((0, 3))
    if len(flat) < 2:
        raise ValueError(f"expected_spearman needs at least 2 atoms; got {len(flat)}")
    if np.any(flat <= 0) or not np.all(np.isfinite(flat)):
        raise ValueError("forces_std must be finite and > 0")
    if int(n_draws) < 1:
        raise ValueError(f"n_draws must be >= 1; got {n_draws}")
    rng = np.random.default_rng(random_state)
    atom_std = per_atom_norms(flat)
    draws = [spearmanr(atom_std, per_atom_norms(rng.standard_normal(flat.shape) * flat)
                       ).statistic for _ in range(int(n_draws))]
    return float(np.mean(draws))


def _errors_and_stds(predicted, reference, std):
    p, r = _pair(predicted, reference)
    s = _flat(std)
    if s.shape != p.shape:
        raise ValueError(f"std has {s.size} values for {p.size} predictions")
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError("std must be finite and > 0")
    return p - r, s


def negative_log_likelihood(predicted: ArrayLike, reference: ArrayLike, std: ArrayLike) -> float:
    """Return the mean Gaussian negative log-likelihood of the errors under the std.

    ``mean(½ log(2π σ²) + e² / (2 σ²))`` over components; lower is better, and for
    a given error distribution it is lowest when the std is calibrated.

    Parameters
    ----------
    predicted : array-like or list of array-like
        Predicted values: an array, or one array per structure (forces of shape
        (n_atoms, 3)).
    reference : array-like or list of array-like
        Reference values, as many components as ``predicted``.
    std : array-like or list of array-like
        Predicted std ``σ`` of every component (finite, > 0), same layout.

    Returns
    -------
    float
        The mean over components, in nats.

    Raises
    ------
    ValueError
        If the inputs differ in size or hold no values, or a std is not finite and > 0.
    """
    err, s = _errors_and_stds(predicted, reference, std)
    return float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (err / s) ** 2))


def coverage_curve(predicted: ArrayLike, reference: ArrayLike, std: ArrayLike,
                   levels: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return observed against nominal coverage of central Gaussian intervals.

    Parameters
    ----------
    predicted, reference, std : array-like or list of arrays
        Predictions, reference values and predicted stds (finite, > 0), same layout.
    levels : array-like of float in (0, 1), optional
        Nominal coverages; 19 levels from 0.05 to 0.95 by default.

    Returns
    -------
    nominal : ndarray of shape (n_levels,)
        The nominal coverages, ``levels`` as floats.
    observed : ndarray of shape (n_levels,)
        ``observed[i]`` is the fraction of components with ``|error| <= z_i std``,
        ``z_i`` the two-sided Gaussian quantile of ``nominal[i]``. A calibrated
        std gives ``observed ≈ nominal``; above the diagonal means too wide.

    Raises
    ------
    ValueError
        If the inputs differ in size or hold no values, a std is not finite and > 0,
        or a level is outside (0, 1).
    """
    from scipy.stats import norm

    err, s = _errors_and_stds(predicted, reference, std)
    nominal = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels, float)
    if np.any((nominal <= 0) | (nominal >= 1)):
        raise ValueError("levels must lie in (0, 1)")
    z = norm.ppf(0.5 + nominal / 2)
    observed = np.array([np.mean(np.abs(err) <= zi * s) for zi in z])
    return nominal, observed


def recalibration_factor(predicted: ArrayLike, reference: ArrayLike, std: ArrayLike) -> float:
    """Return the scalar ``c`` that makes the z-scores ``error / (c std)`` unit variance.

    ``c = sqrt(mean((error / std)²))``: multiply the predicted std by it. Fitted on
    a validation set, not on the training data.

    Parameters
    ----------
    predicted : array-like or list of array-like
        Predicted values: an array, or one array per structure (forces of shape
        (n_atoms, 3)).
    reference : array-like or list of array-like
        Reference values, as many components as ``predicted``.
    std : array-like or list of array-like
        Predicted std of every component (finite, > 0), same layout.

    Returns
    -------
    float
        The factor ``c`` (> 1 when the stds are too small).

    Raises
    ------
    ValueError
        If the inputs differ in size or hold no values, or a std is not finite and > 0.
    """
    err, s = _errors_and_stds(predicted, reference, std)
    return float(np.sqrt(np.mean((err / s) ** 2)))


def element_recalibration_factors(predicted_forces: ArrayLike, reference_forces: ArrayLike,
                                  forces_std: ArrayLike, numbers: ArrayLike) -> dict[int, float]:
    """Return :func:`recalibration_factor` of each element's force components.

    One std map for every atom can leave one element's stds too wide and another's too
    narrow (:mod:`kernelpot.element_scales`); the overall factor hides that. Components
    zero in both the reference and the prediction (:func:`fixed_components`: fixed by a
    crystal's symmetry, with a vanishing std) are left out.

    Parameters
    ----------
    predicted_forces, reference_forces : list of array-like of shape (n_atoms, 3)
        One array per structure (or one array for one structure).
    forces_std : list of array-like of shape (n_atoms, 3)
        Predicted std of every component, same layout.
    numbers : list of array-like of int of shape (n_atoms,)
        Atomic numbers of each structure's atoms (``atoms.numbers``).

    Returns
    -------
    dict
        ``{atomic number: RMS z-score}`` for every element with a counted component.

    Raises
    ------
    ValueError
        If the layouts differ, a structure's numbers do not match its atoms, a counted
        std is not finite and > 0, or every component is fixed.

    Examples
    --------
    >>> import numpy as np
    >>> from kernelpot.metrics import element_recalibration_factors
    >>> f, ref = np.zeros((2, 3)), np.array([[0.1, 0.1, 0.1], [0.4, 0.4, 0.4]])
    >>> element_recalibration_factors([f], [ref], [np.full((2, 3), 0.2)], [[1, 8]])
    {1: 0.5, 8: 2.0}
    """
    predicted, reference, stds, numbers = (
        list(v) if isinstance(v, (list, tuple)) else [v]
        for v in (predicted_forces, reference_forces, forces_std, numbers))
    if len(numbers) != len(predicted):
        raise ValueError(f"element_recalibration_factors: numbers for {len(numbers)} "
                         f"structures, forces for {len(predicted)}")
    for k, (f, z) in enumerate(zip(predicted, numbers, strict=True)):
        if np.shape(f) != (np.size(z), 3):
            raise ValueError(f"element_recalibration_factors: structure {k} has forces of "
                             f"shape {np.shape(f)} for {np.size(z)} atomic numbers")
    counted = ~fixed_components(predicted, reference)
    if not counted.any():
        raise ValueError("element_recalibration_factors: every component is zero in both "
                         "the reference and the prediction")
    elements = np.concatenate([np.repeat(np.asarray(z, dtype=np.int64), 3)
                               for z in numbers])[counted]
    err, s = _errors_and_stds(_flat(predicted)[counted], _flat(reference)[counted],
                              _flat(stds)[counted])
    z2 = (err / s) ** 2
    return {int(e): float(np.sqrt(np.mean(z2[elements == e]))) for e in np.unique(elements)}


# -- scikit-learn scorers -----------------------------------------------------------------

def neg_force_mae(estimator, X, y: None = None) -> float:
    """Return minus the force MAE (eV/Å) of ``estimator`` on ``X``: a scikit-learn scorer.

    ``cross_val_score(model, frames, scoring=metrics.neg_force_mae)`` and
    ``GridSearchCV(..., scoring=metrics.neg_force_mae)``. String scorers such as
    ``"neg_mean_absolute_error"`` need targets ``y``, which a list of structures carries
    inside; ``scoring=None`` uses the estimator's ``score`` (the R² of force components).

    Parameters
    ----------
    estimator : SparseGPPotential
        A fitted model.
    X : list of ase.Atoms
        Structures with reference forces (those without are left out).
    y : None
        Unused: the references come from ``X``.

    Returns
    -------
    float
        ``-mae`` over the force components, eV/Å (greater is better).

    Raises
    ------
    ValueError
        If no structure carries reference forces.
    TypeError
        If ``y`` is given.
    """
    frames, labels = _scored(X, y, "neg_force_mae")
    return -mae(*_labelled_forces(estimator, frames, labels, "neg_force_mae"))


def neg_energy_mae(estimator, X, y: None = None) -> float:
    """Return minus the energy MAE per atom (eV/atom) of ``estimator`` on ``X``: a scorer.

    As :func:`neg_force_mae`, for the structures' energies, each error divided by the
    structure's number of atoms.

    Parameters
    ----------
    estimator : SparseGPPotential
        A fitted model.
    X : list of ase.Atoms
        Structures with reference energies (those without are left out).
    y : None
        Unused: the references come from ``X``.

    Returns
    -------
    float
        ``-mean |E_pred - E_ref| / N``, eV/atom (greater is better).

    Raises
    ------
    ValueError
        If no structure carries a reference energy.
    TypeError
        If ``y`` is given.
    """
    frames, labels = _scored(X, y, "neg_energy_mae")
    chosen = np.flatnonzero(np.isfinite(labels.energies))
    if not chosen.size:
        raise ValueError("neg_energy_mae: none of the structures carries a reference energy")
    subset = [frames[k] for k in chosen]
    n_atoms = np.array([len(atoms) for atoms in subset])
    return -mae(estimator.predict(subset) / n_atoms, labels.energies[chosen] / n_atoms)


def _scored(X, y, owner: str):
    """Return the structures of ``X`` as a list and their labels, or say why not."""
    from kernelpot._labels import check_frames, read_labels

    if y is not None:
        raise TypeError(f"{owner}: the references come from the structures; y must be None")
    frames = check_frames(X, owner)
    # a structure without any label is a slip (fit refuses it too); one that lacks only
    # the scored quantity is left out, as documented
    return frames, read_labels(frames, owner, every=True)


def _labelled_forces(estimator, frames, labels, owner: str) -> tuple[list, list]:
    """Return the predicted and reference forces of the structures that carry forces.

    For :func:`neg_force_mae` and ``SparseGPPotential.score``.
    """
    keep = [k for k, forces in enumerate(labels.forces) if forces is not None]
    if not keep:
        raise ValueError(f"{owner}: none of the structures carries reference forces")
    return (estimator.predict_forces([frames[k] for k in keep]),
            [labels.forces[k] for k in keep])
