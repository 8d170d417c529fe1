"""Split-conformal intervals from normalised scores on a calibration set.

With validation errors ``e_i`` and the model's predicted std ``s_i`` there, the
normalised scores ``r_i = |e_i| / s_i`` give, for a new prediction with std ``s``,
the interval ``ŷ ± r_(k) s`` with ``k = ⌈(n + 1) p⌉`` (``r_(k)`` the k-th smallest of
``n`` scores). If the calibration points and the new point are exchangeable, the
interval contains the truth with probability at least ``p`` whatever the model
(Vovk et al., *Algorithmic Learning in a Random World*, 2005; Papadopoulos et al.,
normalised nonconformity measures, 2008). Force components of one structure are not
independent: the guarantee is marginal over structures and their components.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["normalised_scores", "interval_quantile", "check_coverage", "jackknife_plus"]


def check_coverage(coverage: float) -> None:
    """Check that ``coverage`` is a number in (0, 1).

    Parameters
    ----------
    coverage : float
        Nominal coverage of an interval.

    Raises
    ------
    ValueError
        If ``coverage`` is not a real number (bools excluded) in (0, 1).
    """
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) \
            or not 0.0 < coverage < 1.0:
        raise ValueError(f"interval coverage must be a number in (0, 1); got {coverage!r}")


def normalised_scores(errors: ArrayLike, std: ArrayLike) -> np.ndarray:
    """Return the sorted normalised scores ``|error| / std``.

    Parameters
    ----------
    errors, std : array-like of the same shape
        Prediction errors and the predicted std (> 0) at the calibration points.

    Returns
    -------
    ndarray of shape (n,)
        The scores, ascending; ``n`` is the number of values.

    Raises
    ------
    ValueError
        If the shapes differ, there are no values, or a value is not finite or a
        std not > 0.
    """
    errors = np.abs(np.asarray(errors, dtype=np.float64)).ravel()
    std = np.asarray(std, dtype=np.float64).ravel()
    if errors.shape != std.shape:
        raise ValueError(f"normalised_scores: {errors.size} errors but {std.size} stds")
    if errors.size == 0:
        raise ValueError("normalised_scores: no calibration values")
    if not np.all(np.isfinite(errors)) or not np.all(np.isfinite(std)) or np.any(std <= 0):
        raise ValueError("normalised_scores: errors must be finite and stds finite and > 0")
    return np.sort(errors / std)


def interval_quantile(scores: np.ndarray, coverage: float, what: str = "values") -> float:
    """Return the multiplier of the std for intervals of nominal ``coverage``.

    Parameters
    ----------
    scores : ndarray of shape (n,)
        Sorted normalised scores (:func:`normalised_scores`).
    coverage : float
        In (0, 1).
    what : str, default="values"
        Names the quantity in error messages.

    Returns
    -------
    float
        ``scores[k - 1]`` with ``k = ⌈(n + 1) coverage⌉``.

    Raises
    ------
    ValueError
        If ``coverage`` is not in (0, 1), or ``n`` is too small for it
        (``k > n``: no finite interval has the guarantee).
    """
    check_coverage(coverage)
    n = len(scores)
    k = math.ceil((n + 1) * coverage - 1e-12)
    if k > n:
        raise ValueError(f"{n} calibration {what} are too few for {coverage:.0%} intervals "
                         f"(need at least {math.ceil(coverage / (1 - coverage))})")
    return float(scores[k - 1])


def jackknife_plus(loo_means: ArrayLike, scores: ArrayLike, std: ArrayLike,
                   coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """Return normalised jackknife+ (CV+) intervals from leave-out predictions.

    For each new point, with ``μ_{-k(i)}`` the prediction of the model fitted without
    the fold (structure) of training point ``i``, ``R_i`` that point's normalised
    leave-out residual and ``s`` the new point's std, the interval runs from the
    ``⌊α (n + 1)⌋``-th smallest of ``μ_{-k(i)} - R_i s`` to the ``⌈(1 - α)(n + 1)⌉``-th
    smallest of ``μ_{-k(i)} + R_i s`` over the ``n`` training points, ``α = 1 -
    coverage`` (Barber, Candès, Ramdas & Tibshirani, *Predictive inference with the
    jackknife+*, Ann. Statist. 49, 486, 2021, doi:10.1214/20-AOS1965; CV+ when folds
    hold several points). For exchangeable data and scores normalised by a std that
    does not depend on the left-out data it covers with probability at least
    ``1 - 2α`` (CV+: a little less with few folds), in practice about ``1 - α``.
    kernelpot normalises by the full model's std at both ends, which bends that
    condition: the bound is then approximate (measured coverage:
    ``benchmarks/RESULTS.md``).

    Parameters
    ----------
    loo_means : array-like of shape (n_new, n)
        ``μ_{-k(i)}`` at each new point, for each training point ``i``.
    scores : array-like of shape (n,)
        ``R_i = |y_i - μ_{-k(i)}(x_i)| / s_i``.
    std : array-like of shape (n_new,)
        Std of each new prediction (the one the scores are normalised by).
    coverage : float
        In (0, 1).

    Returns
    -------
    lower, upper : ndarray of shape (n_new,)
        Interval bounds; infinite where ``n`` is too small for ``coverage``.
    """
    check_coverage(coverage)
    loo_means = np.atleast_2d(np.asarray(loo_means, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64).reshape(-1, 1)
    n = scores.size
    if loo_means.shape[1] != n or std.shape[0] != loo_means.shape[0]:
        raise ValueError(f"jackknife_plus: {loo_means.shape} leave-out means for {n} scores "
                         f"and {std.shape[0]} stds")
    alpha = 1.0 - coverage
    # 1-based ranks; the tolerance keeps 1 - 0.8 = 0.19999... from losing a rank
    k_low = math.floor(alpha * (n + 1) + 1e-12)
    k_high = math.ceil(coverage * (n + 1) - 1e-12)
    lower = np.full(loo_means.shape[0], -np.inf)
    upper = np.full(loo_means.shape[0], np.inf)
    if k_low >= 1:
        candidates = loo_means - scores[None, :] * std
        lower = np.partition(candidates, k_low - 1, axis=1)[:, k_low - 1]
    if k_high <= n:
        candidates = loo_means + scores[None, :] * std
        upper = np.partition(candidates, k_high - 1, axis=1)[:, k_high - 1]
    return lower, upper
