"""Calibration of the predicted stds, in one place.

* :class:`StdCalibration` is the variance map :meth:`SparseGPPotential.calibrate`
  fits on validation errors (the estimator's ``std_scale_``), applied to every std
  the model reports, and the conformal scores behind ``return_interval``
  (``interval_scores_``).
* the map is fitted on validation errors or, by default at fit time, on the training
  structures' leave-one-structure-out errors (:mod:`kernelpot.loso`); the on-the-fly
  learner gates on the std it gives.

The calibrated epistemic variance is ``c² v_ref (u / v_ref)^p`` with
``u = v_posterior + w² v_projection``; the total adds ``d²`` times the learned noise
variance. Uncalibrated, ``c = w = p = d = 1``: the raw ``v_posterior + v_projection``.

The two variance terms get their own scale because, added raw, the projection
term dominates and is several times too wide. The exponent ``p`` is a fitted
map of the std: with ``p > 1`` large stds grow faster than small ones, which
is what heavy tails of the z-scores usually mean (errors grow faster than the
raw std), and it keeps the ranking of the stds. The exponent holds over the range
of raw variance ``u`` the map was fitted on; past either end the calibrated
variance follows the raw one linearly from the end's value: a power law fitted
over a factor of a few is not extrapolated over orders of magnitude (measured:
a new Cu–Ni arrangement, ``p = 3.5``, force std 12× its error and energy std
11.8 eV/atom against 0.6 meV/atom; with the linear tails 3× and 45×, while the
test sets inside the range do not change). A Gaussian band of the
calibrated std can still miss its nominal coverage in the tails. The
intervals do not have that problem: the half-width for nominal coverage
``p`` is ``r_(k) × std``, with ``r_(k)`` the ``k = ⌈(n + 1) p⌉``-th smallest
score. If the validation structures and new ones are exchangeable (for MD, frames far
enough apart to be nearly independent), the interval holds the reference with
probability at least ``p`` (:mod:`kernelpot.conformal`).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy.optimize import brentq, minimize

from kernelpot import conformal, element_scales
from kernelpot._numbers import GPA

logger = logging.getLogger(__name__)

__all__ = ["PROFILE_BOUND", "QUANTITIES", "StdCalibration", "fit_variance_terms",
           "group_mean", "raw_variance_range"]

#: Quantities with a calibrated std (a map for the stress needs training or validation
#: stresses; without one the stress std is raw).
QUANTITIES = ("energy", "forces", "stress")
#: Quantities every stored map holds (files from before stress training have no stress).
_REQUIRED = ("energy", "forces")
#: Validation values below which only the std factor is fitted (no shape).
SHAPE_MIN_VALUES = 50
#: Smallest noise factor ``d`` of a map (``d²`` in ``[1e-4, 1e4]``): the learned noise then
#: adds ``1e-4`` of its variance to the total.
NOISE_FACTOR_MIN = 1e-2
#: Below this fitted scale ``c`` (with as small an epistemic share) the errors do not
#: determine ``c``: the noise explains them.
_SCALE_FLOOR = 1e-4
#: Rise of the negative log-likelihood over its minimum in ``c`` that bounds an undetermined
#: ``c`` from above: half the 95 % quantile of χ² with one degree of freedom (the upper
#: end of the 95 % likelihood-ratio interval for ``c``).
PROFILE_BOUND = 0.5 * 3.841458820694124
#: Points per decade of ``c²`` on which that interval's upper end is bracketed.
_GRID_PER_DECADE = 20
#: Keys of a quantity's entries in ``std_scale_``, after the quantity's name.
_SUFFIXES = ("", "_projection", "_exponent", "_reference", "_noise", "_lower", "_upper")
#: The same for force maps whose exponent acts on each atom's mean variance.
_ATOM_SUFFIXES = ("", "_projection", "_atom_exponent", "_reference", "_noise", "_lower",
                  "_upper")
#: Unit and factor from eV units of the stds :meth:`StdCalibration.describe` prints.
_UNITS = {"energy": ("meV", 1e3), "forces": ("meV/Å", 1e3), "stress": ("GPa", GPA)}
#: Keys of :func:`fit_variance_terms`'s result, in the order of the suffixes.
_KEYS = ("scale", "projection", "exponent", "reference", "noise", "lower", "upper")


def fit_variance_terms(errors: np.ndarray, post: np.ndarray, proj: np.ndarray,
                       noise: np.ndarray, owner: str, group: int = 1,
                       shape: tuple[float, float] | None = None) -> dict[str, float]:
    """Fit the variance map on validation ``errors`` by maximum likelihood.

    Parameters
    ----------
    errors : ndarray of shape (n,)
        Prediction minus reference.
    post, proj : ndarray of shape (n,)
        The raw posterior and projection variance terms of those predictions.
    noise : ndarray of shape (n,)
        The learned noise variance of each value.
    owner : str
        Names the caller in errors and logs.
    group : int, default=1
        Consecutive values that share the exponent's argument: 3 for the force
        components of one atom (:func:`group_mean`), so that the map scales the
        atom's 3 × 3 force covariance by one rotation-invariant factor.
    shape : pair of float or None, default=None
        ``(w, p)`` to use where too few values fit their own (fewer than
        :data:`SHAPE_MIN_VALUES`): the force map's, for the energies of a small
        training set (:meth:`StdCalibration.fit`). Ignored with enough values.

    Returns
    -------
    dict
        Keys "scale" (``c``), "projection" (``w``), "exponent" (``p``), "reference"
        (``v_ref``) and "noise" (``d``).

    Raises
    ------
    ValueError
        If the epistemic variance is zero on every value.

    Notes
    -----
    The calibrated total variance is ``c² v_ref (u / v_ref)^p + d² noise`` with
    ``u = post + w² proj`` and ``v_ref`` the geometric mean of ``u`` on the validation
    set at the first search's ``w`` (of the raw epistemic variance where only ``c`` is
    fitted, or where the search from there did not improve); ``c²``,
    ``w²``, ``d²`` (in [1e-4, 1e4]) and ``p`` (in [0.2, 5]) maximise the Gaussian
    likelihood of the errors. ``p = 1`` is a plain
    scale; ``p > 1`` spreads the stds (the errors grow faster than the raw std, the
    usual cause of heavy tails). ``d`` rescales the learned noise in the total: a
    sparse model's learned force noise absorbs its misfit on the training set, and
    with it the total std is too uniform. The likelihood can have two optima, one
    reading the errors mostly as learned noise and one folding that noise into the
    epistemic part; L-BFGS-B runs from ``c = w = d = p = 1`` and again from ``d`` at its
    lower limit, and the second wins only where its negative log-likelihood is lower by
    more than :data:`PROFILE_BOUND` (measured: EMT Ni's LOSO forces, 2,400 values, 86
    nats lower; the 1400 K cells' force stds then grew with their errors, RMS z-score
    1.96 → 1.22, test NLL −3.72 → −4.47 nats). Without a projection term (an exact model)
    ``w = 1`` is not fitted. With fewer than :data:`SHAPE_MIN_VALUES` values only
    ``c`` is fitted (``w = p = d = 1``): four parameters on a handful of energies
    overfit; given a ``shape``, ``w`` and ``p`` are taken from it and ``c`` is fitted
    with them. If ``c`` goes towards its lower limit (below 1e-4) and the fitted
    epistemic part holds less than 1e-4 of the summed variance, the noise explains the
    errors and they do not determine ``c``: any small one fits them. Taking the
    smallest would switch the epistemic std off, also where a new structure's raw
    variance is many times the training structures' (measured: a Pt slab's force std
    stayed at 1.07 meV/Å on frames rattled out of the training range, whose errors
    were 115 meV/Å). So ``w`` and ``p``, which then mean nothing, are set to 1, and
    ``c`` to the largest value the errors do not reject: the upper end of the 95 %
    likelihood-ratio interval for ``c`` with ``w = p = 1`` and ``d`` kept at its fit,
    where the negative log-likelihood has risen by :data:`PROFILE_BOUND` over its
    minimum in ``c`` (found on a grid over ``c``'s whole range, which also catches an
    optimiser that stalled short of a better ``c``, and a likelihood that rises and falls
    again). Where it never rises that far (the raw variances too small to matter
    anywhere in the range), ``c = 1``, the model's own variance (or the minimum, if
    that lies above 1). A small ``c`` alone is
    not that case: with ``p > 1`` it can still give the values of large raw variance
    most of theirs.
    """
    r2 = np.asarray(errors, dtype=np.float64) ** 2
    noise = np.asarray(noise, dtype=np.float64)
    shape_fitted = r2.size >= SHAPE_MIN_VALUES
    two_terms = shape_fitted and bool(np.any(proj > 0))
    fit_noise = shape_fitted and bool(np.any(noise > 0))
    # the shape of the map where the values are too few to fit their own
    w2_given, p_given = (1.0, 1.0) if shape_fitted or shape is None \
        else (float(shape[0]) ** 2, float(shape[1]))
    raw = group_mean(post + proj, group)
    if not np.any(raw > 0):
        raise ValueError(f"{owner}: the model's epistemic variance is zero on every "
                         "validation value; nothing to calibrate")
    # the geometric mean centres log(u / v_ref), which decouples c from p (re-centred on
    # the fitted u below, once w is known)
    centre = [float(np.exp(np.mean(np.log(raw[raw > 0]))))]
    proj_mean = group_mean(proj, group)
    # slots of theta: log c², [log w²], [log d²], p
    i_w = 1 if two_terms else None
    i_d = 1 + int(two_terms) if fit_noise else None

    def parts(theta):
        v_ref = centre[0]
        p = theta[-1]
        r = np.exp(theta[i_w]) if i_w is not None else w2_given
        d2 = np.exp(theta[i_d]) if i_d is not None else 1.0
        u = post + r * proj
        t = (u if group == 1 else group_mean(u, group)) / v_ref
        positive = t > 0
        log_t = np.where(positive, np.log(np.where(positive, t, 1.0)), 0.0)
        if group == 1:
            epistemic = np.where(positive, np.exp(theta[0]) * v_ref * np.exp(p * log_t), 0.0)
        else:  # c² u t^(p-1): the group's variances scaled by one factor
            epistemic = np.where(positive, np.exp(theta[0]) * u * np.exp((p - 1) * log_t), 0.0)
        return r, d2, u, t, log_t, epistemic

    def nll(theta):
        r, d2, u, t, log_t, epistemic = parts(theta)
        total = epistemic + d2 * noise
        value = 0.5 * np.sum(np.log(total) + r2 / total)
        d_total = 0.5 * (1.0 / total - r2 / total**2)
        grad = [d_total @ epistemic]
        if i_w is not None:
            share = np.where(u > 0, r * proj / np.where(u > 0, u, 1.0), 0.0)
            if group == 1:
                grad.append(d_total @ (epistemic * theta[-1] * share))
            else:
                mean_share = np.where(t > 0, r * proj_mean
                                      / np.where(t > 0, t * centre[0], 1.0), 0.0)
                grad.append(d_total @ (epistemic * (share + (theta[-1] - 1) * mean_share)))
        if i_d is not None:
            grad.append(d2 * (d_total @ noise))
        grad.append(d_total @ (epistemic * log_t))
        return value, np.array(grad)

    start, bounds = _search_space(i_w is not None, i_d is not None, shape_fitted, p_given)
    bound, result = bounds[0][1], _minimize_from_both(nll, start, bounds, i_d)
    if shape_fitted:
        result = _recentred(result, nll, parts, bounds, centre, post, proj, group)
    v_ref, (r, d2, _, _, _, epistemic) = centre[0], parts(result.x)
    # the gradient in log c² vanishes with c², so L-BFGS-B stops well above the bound:
    # c below 1e-4 is the noise explaining the errors, unless the epistemic part still
    # holds a share of the variance: with p > 1 a tiny c still gives the values of large
    # raw variance most of theirs (measured: c = 1.7e-6, p = 4.1 carried 72 % of the
    # variance of 77,520 LOSO force errors; judging by c alone dropped it, and the 1σ
    # coverage of those errors fell from 0.70 to 0.53)
    share = float(np.sum(epistemic) / np.sum(epistemic + d2 * noise))
    if result.x[0] < np.log(_SCALE_FLOOR**2) and share < _SCALE_FLOOR:
        # the errors do not determine c: keep the largest they do not reject (w = p = 1)
        w2_given = 1.0  # read by parts() from here on
        plain = np.array([-bound] + [0.0] * (i_w is not None)
                         + [np.log(d2)] * (i_d is not None) + [1.0])
        log_c2 = _largest_unrejected(lambda t: nll(np.r_[t, plain[1:]])[0], -bound, bound)
        logger.info("%s: the learned noise explains the errors; the epistemic scale is the "
                    "largest they do not reject, c = %.3g (likelihood ratio, 95 %%)", owner,
                    np.exp(0.5 * log_c2))
        return {"scale": float(np.exp(0.5 * log_c2)), "projection": 1.0, "exponent": 1.0,
                "reference": v_ref, "noise": float(np.sqrt(d2))}
    return {"scale": float(np.exp(0.5 * result.x[0])), "projection": float(np.sqrt(r)),
            "exponent": float(result.x[-1]), "reference": v_ref, "noise": float(np.sqrt(d2))}


def _search_space(fit_w: bool, fit_d: bool, shape_fitted: bool,
                  p_given: float) -> tuple[list, list]:
    """Return the start and bounds of ``(log c², [log w²], [log d²], p)``."""
    bound = np.log(1e12)
    start = [0.0] + [0.0] * (fit_w + fit_d) + [p_given]
    bounds = [(-bound, bound)] + [(-bound, bound)] * fit_w \
        + [(2 * np.log(NOISE_FACTOR_MIN), -2 * np.log(NOISE_FACTOR_MIN))] * fit_d \
        + [(0.2, 5.0) if shape_fitted else (p_given, p_given)]
    return start, bounds


def _recentred(result, nll, parts, bounds: list, centre: list, post: np.ndarray,
               proj: np.ndarray, group: int):
    """Re-centre ``v_ref`` on the fitted ``u`` and polish the optimum from there.

    ``v_ref`` starts at the geometric mean of the raw ``post + proj``; a fitted ``w ≪ 1``
    moves ``u = post + w² proj`` far from it, and ``c`` and ``p`` are then strongly
    coupled: L-BFGS-B stopped at different points of that valley for inputs that differed
    by 1e-9 (measured: 216 LOSO force values, ``c`` 5.3, 10.9 or 24.2, ``p`` 1.16–1.58,
    the negative log-likelihood up to 1.4 nats above the best). The map is the same
    function of ``u`` with ``v_ref`` moved to the geometric mean of the fitted ``u`` and
    ``c² → c² (v_ref' / v_ref)^(p - 1)``; a second search from there, with ``c`` and ``p``
    decoupled, is kept where its negative log-likelihood is not higher. ``centre[0]`` is
    ``v_ref`` (updated in place). After it the same inputs reached the best to 0.2 nats
    in every draw; what is left is a second optimum with ``w → 0`` about 0.1 nats below
    it, reached in 1 of 12 draws (stds up to 9 % apart): with so few values the
    likelihood hardly tells the two apart.
    """
    r = parts(result.x)[0]
    u = group_mean(post + r * proj, group)
    positive = u > 0
    if not np.any(positive):
        return result
    old, new = centre[0], float(np.exp(np.mean(np.log(u[positive]))))
    x = np.array(result.x, dtype=np.float64)
    x[0] = np.clip(x[0] + (x[-1] - 1.0) * np.log(new / old), *bounds[0])
    centre[0] = new
    polished = _minimize_twice(nll, x, bounds)
    if polished.fun <= result.fun + 1e-9 * max(1.0, abs(result.fun)):  # round-off: kept
        return polished
    centre[0] = old  # the first search's optimum stands, in its own centre
    return result


def raw_variance_range(post: np.ndarray, proj: np.ndarray, w: float, group: int = 1) -> dict:
    """Return the smallest and largest positive ``u`` (group means) a map was fitted on.

    The exponent holds within that range; :meth:`StdCalibration.epistemic_variance`
    scales the raw variance linearly beyond it.

    Parameters
    ----------
    post, proj : ndarray of shape (n,)
        The raw variance terms of the fitting values (:func:`fit_variance_terms`).
    w : float
        The fitted projection weight.
    group : int, default=1
        As in :func:`fit_variance_terms`.

    Returns
    -------
    dict
        Keys "lower" and "upper"; empty where no ``u`` is positive (the exponent then
        holds everywhere).
    """
    u = group_mean(post + w**2 * proj, group)
    u = u[u > 0]
    return {"lower": float(u.min()), "upper": float(u.max())} if u.size else {}


def _minimize_twice(nll, start: list, bounds: list):
    """Return L-BFGS-B's minimum of ``nll`` (value and gradient), restarted once.

    The restart from the first result clears L-BFGS-B's stalls on this coupled problem.
    """
    options = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000}
    result = minimize(nll, np.array(start), jac=True, method="L-BFGS-B", bounds=bounds,
                      options=options)
    return minimize(nll, result.x, jac=True, method="L-BFGS-B", bounds=bounds,
                    options=options)


def _minimize_from_both(nll, start: list, bounds: list, i_d: int | None):
    """Return :func:`_minimize_twice` from ``start`` or, if clearly better, from the noise folded.

    The second start has ``log d²`` (slot ``i_d``; None: no noise term, one start) at its
    lower limit; its optimum wins only by more than :data:`PROFILE_BOUND` nats.
    """
    result = _minimize_twice(nll, start, bounds)
    if i_d is None:
        return result
    folded = _minimize_twice(nll, [*start[:i_d], bounds[i_d][0], *start[i_d + 1:]], bounds)
    return folded if folded.fun < result.fun - PROFILE_BOUND else result


def _largest_unrejected(nll, lower: float, upper: float) -> float:
    """Return the largest ``t = log c²`` in ``[lower, upper]`` with ``nll(t) <= min nll + bound``.

    The minimum and the last grid point within :data:`PROFILE_BOUND` of it are found on a
    grid of :data:`_GRID_PER_DECADE` points per decade of ``c²``; the crossing after that
    point is refined by Brent's method. When nothing above the minimum rises that far,
    ``c = 1`` (the model's own variance), or the minimum where it lies above that.
    """
    grid = np.linspace(lower, upper, int(_GRID_PER_DECADE * (upper - lower) / np.log(10)) + 1)
    values = np.array([nll(t) for t in grid])
    limit = float(values.min()) + PROFILE_BOUND
    inside = np.flatnonzero(values <= limit)
    last = int(inside[-1])
    if last == len(grid) - 1:
        return max(0.0, float(grid[np.argmin(values)]))
    return brentq(lambda t: nll(t) - limit, grid[last], grid[last + 1], xtol=1e-6)


def group_mean(values: np.ndarray, group: int) -> np.ndarray:
    """Return each value's group mean: consecutive ``group`` values share it.

    Parameters
    ----------
    values : ndarray
        Flat (``group`` consecutive values per group) or of shape ``(..., group)``.
    group : int
        1 returns ``values`` itself.

    Returns
    -------
    ndarray of the shape of ``values``
    """
    if group == 1:
        return values
    values = np.asarray(values, dtype=np.float64)
    means = values.reshape(-1, group).mean(axis=1)
    return np.repeat(means, group).reshape(values.shape)


class StdCalibration:
    """The fitted variance map and conformal scores of a model, or none (raw stds).

    Parameters
    ----------
    std_scale : dict or None
        Per quantity: ``quantity`` (``c``), ``quantity_projection`` (``w``),
        ``quantity_exponent`` (``p``), ``quantity_reference`` (``v_ref``) and
        ``quantity_noise`` (``d``), and ``forces_element_<Z>`` (``s``, the force factor
        of element ``Z``, :mod:`kernelpot.element_scales`); ``None`` for none.
    interval_scores : dict or None
        Sorted conformal scores per quantity.
    applied : bool, default=True
        ``False`` reports raw stds even where a map was fitted
        (``apply_calibration=False``).
    kind : {"loso", "validation"} or None, default=None
        What the map and the scores were fitted on: the training structures'
        leave-one-structure-out predictions (:mod:`kernelpot.loso`), or validation
        structures (:meth:`SparseGPPotential.calibrate`); ``None`` for no map.
    jackknife : dict or None, default=None
        With ``kind="loso"``: per quantity, the unsorted normalised LOSO scores and
        the training structure of each, for jackknife+ intervals.
    """

    def __init__(self, std_scale: dict | None, interval_scores: dict | None,
                 applied: bool = True, kind: str | None = None,
                 jackknife: dict | None = None):
        self.std_scale = std_scale
        self.interval_scores = interval_scores
        self.applied = applied
        self.kind = kind if std_scale else None
        self.jackknife = jackknife if self.kind == "loso" else None

    @staticmethod
    def check_quantity(quantity: str) -> None:
        """Raise unless ``quantity`` is "energy", "forces" or "stress".

        Parameters
        ----------
        quantity : str
        """
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be 'energy', 'forces' or 'stress'; "
                             f"got {quantity!r}")

    def factors(self, quantity: str) -> tuple[float, float, float, float]:
        """Return ``(c, w, p, v_ref)`` of ``quantity``; ``(1, 1, 1, 1)`` when not calibrated.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}
            The quantity.

        Returns
        -------
        tuple of float
            The scale, projection weight, exponent and reference variance.
        """
        self.check_quantity(quantity)
        factors = self.std_scale
        # maps stored before stress training hold no "stress" entry: raw stress stds
        if not self.applied or not factors or quantity not in factors:
            return 1.0, 1.0, 1.0, 1.0
        exponent = factors.get(f"{quantity}_atom_exponent",
                               factors.get(f"{quantity}_exponent", 1.0))
        return (float(factors[quantity]), float(factors.get(f"{quantity}_projection", 1.0)),
                float(exponent), float(factors.get(f"{quantity}_reference", 1.0)))

    def epistemic_variance(self, quantity: str, posterior: float | np.ndarray,
                           projection: float | np.ndarray,
                           numbers: np.ndarray | None = None) -> float | np.ndarray:
        """Return the calibrated epistemic variance.

        ``c² u (ū / v_ref)^(p - 1)`` with ``u = v_post + w² v_proj``; ``ū = u`` for
        energies (``c² v_ref (u / v_ref)^p``), and for force components the mean of
        ``u`` over the atom's three components, so that every atom's force covariance
        is scaled by one rotation-invariant factor (maps fitted before this existed,
        with a ``forces_exponent`` entry, keep the per-component form). ``ū`` is
        clipped to the range the map was fitted on (:meth:`fitted_range`): beyond
        it the variance is the raw one times the factor at the range's end.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}
            The quantity.
        posterior, projection : float or ndarray
            The two raw variance terms (eV², eV²/Å²); force terms of shape
            ``(n_atoms, 3)``, or flat with each atom's three components together.
        numbers : array_like of int or None, default=None
            The atomic numbers of the force terms' atoms (one per atom, or one per
            value): needed for forces where the map holds a factor per element
            (:mod:`kernelpot.element_scales`), which then scales each atom's variance.

        Returns
        -------
        float or ndarray
            Of the shape of ``posterior``.

        Raises
        ------
        ValueError
            For forces of a map with element factors without ``numbers``, or with
            ``numbers`` that match neither the atoms nor the values.
        """
        variance = self._map_variance(quantity, posterior, projection)
        scales = self.element_scales() if quantity == "forces" else {}
        if not scales:
            return variance
        if numbers is None:
            raise ValueError("the force stds of this model have one factor per element: "
                             "pass the atomic numbers of the atoms (numbers=)")
        factor = element_scales.per_value_scales(scales, numbers, np.size(variance),
                                                 "epistemic_variance")
        return (variance * factor.reshape(np.shape(variance)) ** 2)[()]

    def element_scales(self) -> dict[int, float]:
        """Return the map's force factor per element (empty: none, or not applied).

        Returns
        -------
        dict
            Atomic number to the factor ``s`` of the element's epistemic force std
            (:mod:`kernelpot.element_scales`).
        """
        return element_scales.scales_of(self.std_scale) if self.applied else {}

    def _map_variance(self, quantity: str, posterior: float | np.ndarray,
                      projection: float | np.ndarray) -> float | np.ndarray:
        """Return the variance map's value, before any element factor."""
        c, w, p, v_ref = self.factors(quantity)
        u = posterior + w**2 * projection
        if p == 1.0:
            return c**2 * u
        u = np.maximum(u, 0.0)
        if quantity == "forces" and f"{quantity}_atom_exponent" in self.std_scale:
            # one value alone (not an atom's three) is its own mean
            mean = group_mean(u, 3) if np.size(u) % 3 == 0 and np.ndim(u) else u
        else:
            mean = u
        lower, upper = self.fitted_range(quantity)
        positive = mean > 0  # an atom without variance (no neighbours) keeps none
        # the exponent where the map was fitted; beyond, the raw variance scaled linearly
        inside = np.clip(np.where(positive, mean, 1.0), lower, upper)
        factor = (inside / v_ref) ** (p - 1)
        return (c**2 * u * np.where(positive, factor, 0.0))[()]  # a scalar for a scalar

    def fitted_range(self, quantity: str) -> tuple[float, float]:
        """Return the range of raw epistemic variance ``u`` the map was fitted on.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}

        Returns
        -------
        (float, float)
            The smallest and largest ``u`` (per atom, the mean of its three force
            components) of the fitting values; ``(0, inf)`` for maps stored without it
            (files of format version 7 and before), which apply the exponent everywhere.
        """
        factors = self.std_scale if self.applied and self.std_scale else {}
        return (float(factors.get(f"{quantity}_lower", 0.0)),
                float(factors.get(f"{quantity}_upper", np.inf)))

    def largest_fitted_std(self, quantity: str,
                           numbers: np.ndarray | None = None) -> float | np.ndarray | None:
        """Return the calibrated epistemic std at the top of the map's fitted range.

        The std the map gives a raw variance ``u`` equal to the largest it was fitted
        on: for forces, per component of an atom whose three components have that
        ``u`` (compare it with the root mean square of an atom's three component
        stds); for energies and stresses, per structure and per component. With the
        default LOSO map, the largest std any training structure had when it was left
        out; a larger one marks a structure unlike every one the map was fitted on.
        With a force factor per element, each atom's edge is its element's factor times
        the map's (pass ``numbers``); without them, the largest factor's (1 counted for
        the elements without one).

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}
        numbers : array_like of int or None, default=None
            Forces only: the atomic numbers of the atoms to compare.

        Returns
        -------
        float, ndarray of shape (n_atoms,) or None
            One edge per atom with ``numbers`` (forces); None without a fitted range (raw
            stds, a map not applied, or one stored before ranges were kept).
        """
        self.check_quantity(quantity)
        upper = self.fitted_range(quantity)[1]
        if not (np.isfinite(upper) and upper > 0):
            return None
        edge = float(np.sqrt(self._map_variance(quantity, upper, 0.0)))
        scales = self.element_scales() if quantity == "forces" else {}
        if numbers is not None and quantity == "forces":
            numbers = np.asarray(numbers).ravel()
            return edge * element_scales.per_value_scales(scales, numbers, numbers.size,
                                                          "largest_fitted_std")
        return max([1.0, *scales.values()]) * edge

    def fitted_quantities(self) -> tuple[str, ...]:
        """Return the quantities whose map was fitted (stress only where cells had one).

        Returns
        -------
        tuple of str
        """
        scale = self.std_scale or {}
        return tuple(q for q in QUANTITIES
                     if q in scale and (q != "stress" or "stress_reference" in scale))

    def describe(self, quantity: str) -> str:
        """Return the map of ``quantity`` in words, for the command line.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}

        Returns
        -------
        str
            Its factor, projection weight, exponent with the raw stds it holds over,
            and noise factor; for forces, the factor of each element that has one.
        """
        c, w, p, _ = self.factors(quantity)
        noise = float((self.std_scale or {}).get(f"{quantity}_noise", 1.0))
        lower, upper = self.fitted_range(quantity)
        unit, factor = _UNITS[quantity]
        where = (f" (over raw stds {factor * np.sqrt(lower):.3g}–{factor * np.sqrt(upper):.3g}"
                 f" {unit}, linear beyond)" if p != 1.0 and np.isfinite(upper) else "")
        scales = self.element_scales() if quantity == "forces" else {}
        per_element = element_scales.describe(scales)
        return (f"factor {c:.3g}, projection weight {w:.3g}, exponent {p:.3g}{where}, "
                f"noise factor {noise:.3g}"
                + (f"; per element {per_element}" if per_element else ""))

    def noise_variance(self, quantity: str,
                       noise_var: float | np.ndarray) -> float | np.ndarray:
        """Return the learned noise's share of the calibrated total variance, ``d² noise_var``.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}
        noise_var : float or ndarray
            ``σ_E² N`` or ``σ_F²``.

        Returns
        -------
        float or ndarray
        """
        factors = self.std_scale
        if not self.applied or not factors:
            return noise_var
        return float(factors.get(f"{quantity}_noise", 1.0)) ** 2 * noise_var

    def interval_multiplier(self, quantity: str, coverage: float, owner: str) -> float:
        """Half-width of ``coverage`` intervals in units of the total std.

        Split-conformal from the stored scores; without scores (or with the
        calibration switched off: the scores are relative to the calibrated std), the
        Gaussian quantile with a ``UserWarning`` (no coverage guarantee).

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}
        coverage : float in (0, 1)
        owner : str

        Returns
        -------
        float
        """
        scores = (self.interval_scores or {}).get(quantity) if self.applied else None
        if scores is None:
            from scipy.stats import norm

            conformal.check_coverage(coverage)
            warnings.warn(f"{owner}: no calibration scores for {quantity}; the interval is "
                          "the Gaussian one of the predicted std, without a coverage "
                          "guarantee (call calibrate() on validation structures)",
                          UserWarning, stacklevel=3)
            return float(norm.ppf(0.5 + coverage / 2))
        return conformal.interval_quantile(scores, coverage, f"{quantity} values")

    @classmethod
    def fit(cls, terms: dict[str, tuple], owner: str, kind: str = "validation",
            structures: dict[str, np.ndarray] | None = None,
            force_atoms: tuple[np.ndarray, np.ndarray] | None = None) -> StdCalibration:
        """Fit the variance map and the conformal scores on validation errors.

        Parameters
        ----------
        terms : dict
            Per quantity, ``(errors, posterior, projection, noise)`` arrays of the
            validation values (see :func:`fit_variance_terms`).
        owner : str
            Names the caller in errors and logs.
        kind : {"validation", "loso"}, default="validation"
            What the errors are.
        structures : dict or None, default=None
            Per quantity, the training structure of each value (LOSO errors): kept
            with the unsorted scores for jackknife+ intervals.
        force_atoms : (ndarray, ndarray) or None, default=None
            The atomic number and the structure of each force value: with them the map
            gets a force factor per element (:mod:`kernelpot.element_scales`), fitted
            after the rest of the map; ``None``: none.

        Returns
        -------
        StdCalibration
            Applied; its ``std_scale`` holds every quantity (``c = 1`` and nothing
            else for a quantity without validation values).

        Notes
        -----
        The forces are fitted first: energies too few to fit a shape of their own (one
        per structure, fewer than :data:`SHAPE_MIN_VALUES`) take the force map's
        ``w`` and ``p`` and fit their scale ``c`` with them. Measured on ethanol's
        LOSO energies (sparse, n = 20 and 40; exact, n = 20), against the scale alone:
        test energy NLL −1.428 → −1.459, −2.308 → −2.332 and −2.535 → −2.555 nats, at
        1000 K −0.607 → −0.639, 0.167 → −0.383 and −0.796 → −1.073; aspirin n = 30
        −0.678 → −0.682, with 1σ coverage 0.680 → 0.595 there.

        So few energies cannot tell the learned energy noise from the epistemic part
        either, and with noise-free labels that noise is the model's misfit, which grows
        where the model is unsure. Their map folds it in: the noise factor ``d`` is
        :data:`NOISE_FACTOR_MIN`, and ``c`` is fitted with it.
        Measured (default models, LOSO maps refitted both ways on the same fit; test
        energy NLL, nats): a new user's Al cells with a vacancy (EMT, 40 cells), 600 K
        −2.81 → −2.84, 1000 K 3.03 → −1.80 (1σ 0.35 → 0.45, 2σ 0.35 → 0.90), the perfect
        cell 6.26 → −0.60; ethanol sparse n = 40 at 1000 K −0.20 → −0.41, exact n = 40
        −1.35 → −1.48; in range within 0.03 (ethanol n = 20 and 40, aspirin n = 30, Ni₃Al
        30 cells); worse on Cu₃Au (30 cells) at 800 K −5.07 → −4.83 and 1600 K −4.03 →
        −3.49, whose stds were already twice its errors there. With truly noisy energy
        labels the fold leaves structures the model knows well (a small epistemic
        variance) with stds below the labels' noise: 50 or more training structures, or
        ``calibrate`` on 50 or more validation structures, fit ``d`` instead.
        """
        factors = {quantity: 1.0 for quantity in QUANTITIES}
        shape = None  # the force map's (w, p), for energies too few to fit their own
        for quantity in sorted(terms, key=lambda q: q != "forces"):  # forces first
            errors, post, proj, noise = terms[quantity]
            group = 3 if quantity == "forces" else 1  # one factor per atom's covariance
            # energies too few to split noise from epistemic: the noise is folded in
            fold = quantity == "energy" and shape is not None \
                and np.size(errors) < SHAPE_MIN_VALUES
            fitted = fit_variance_terms(errors, post, proj,
                                        NOISE_FACTOR_MIN**2 * noise if fold else noise,
                                        owner, group=group,
                                        shape=shape if quantity == "energy" else None)
            if fold:
                fitted["noise"] = NOISE_FACTOR_MIN
            fitted.update(raw_variance_range(post, proj, fitted["projection"], group))
            if quantity == "forces":
                shape = (fitted["projection"], fitted["exponent"])
            suffixes = _SUFFIXES if group == 1 else _ATOM_SUFFIXES
            factors.update({f"{quantity}{suffix}": fitted[key]
                            for suffix, key in zip(suffixes, _KEYS, strict=True)
                            if key in fitted})
        calibration = cls(factors, None, kind=kind)
        numbers = None
        if force_atoms is not None and "forces" in terms:
            numbers = np.asarray(force_atoms[0])
            errors, post, proj, noise = terms["forces"]
            scales = element_scales.fit_element_scales(
                errors, calibration.epistemic_variance("forces", post, proj),
                calibration.noise_variance("forces", noise), numbers, force_atoms[1])
            factors.update({element_scales.element_key(number): scale
                            for number, scale in scales.items()})
        # normalised conformal scores against the calibrated total std
        stds = {quantity: np.sqrt(calibration.epistemic_variance(
                    quantity, post, proj, numbers if quantity == "forces" else None)
                    + calibration.noise_variance(quantity, noise))
                for quantity, (_, post, proj, noise) in terms.items()}
        calibration.interval_scores = {
            quantity: conformal.normalised_scores(terms[quantity][0], std)
            for quantity, std in stds.items()}
        if structures is not None and kind == "loso":  # unsorted, beside their structures
            calibration.jackknife = {
                quantity: (np.abs(terms[quantity][0]).ravel() / std.ravel(),
                           np.asarray(structures[quantity]))
                for quantity, std in stds.items()}
        return calibration

    @staticmethod
    def check_std_scale(scale: object, what: str) -> dict | None:
        """Validate a stored ``std_scale`` entry (from a model file).

        Parameters
        ----------
        scale : object
            What the file holds.
        what : str
            Names the file in the error.

        Returns
        -------
        dict or None

        Raises
        ------
        ValueError
            If the entry is malformed.
        """
        if scale is None:
            return None
        known = {f"{q}{suffix}" for q in QUANTITIES for suffix in _SUFFIXES + _ATOM_SUFFIXES}
        if not isinstance(scale, dict) or not set(_REQUIRED) <= set(scale) \
                or not all(isinstance(key, str)
                           and (key in known or element_scales.is_element_key(key))
                           for key in scale) \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and np.isfinite(v) and v > 0 for v in scale.values()) \
                or any(scale.get(f"{q}_lower", 0.0) > scale.get(f"{q}_upper", np.inf)
                       for q in QUANTITIES):
            raise ValueError(f"load: {what} has a malformed std_scale entry")
        return {k: float(v) for k, v in scale.items()}

    @staticmethod
    def check_interval_scores(arrays: dict, what: str) -> dict | None:
        """Read the stored conformal scores, checked (sorted, finite, >= 0).

        Parameters
        ----------
        arrays : dict
            The model file's arrays (``interval_scores_<quantity>``).
        what : str
            Names the file in the error.

        Returns
        -------
        dict or None
        """
        scores = {}
        for quantity in QUANTITIES:
            values = arrays.get(f"interval_scores_{quantity}")
            if values is None:
                continue
            if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)) \
                    or np.any(values < 0) or np.any(np.diff(values) < 0):
                raise ValueError(f"load: {what} has malformed {quantity} interval scores")
            scores[quantity] = values
        return scores or None
