"""Hyperparameters by the marginal likelihood: which are free, and the searches.

Three searches serve the estimator's fit:

* :class:`NoiseSearch` maximises the likelihood over ``log (σ, σ_E, σ_F, σ_S)``
  (``σ`` one value or one per element) by L-BFGS-B with analytic gradients, from the given
  values, extra starts and log-uniform restarts within the bounds;
* :func:`kernel_profile_search` maximises over the kernel's own ``theta`` the
  likelihood profiled over the first four (each evaluation rebuilds the design);
* :func:`search_on_subset` fits the kernel's ``theta`` on a random subset of the
  training structures, for large fits.

The order of ``theta`` is documented once: ``signal_std`` (one, or one per
element), ``energy_noise``, ``force_noise``, ``stress_noise``, then the kernel's own.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from kernelpot import gp
from kernelpot._numbers import GPA
from kernelpot._validation import check_verbose

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

    from kernelpot.kernels import Kernel

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_STRESS_NOISE", "HYPERPARAMETERS", "NOISE_NAMES", "UNEXPLAINED_NOISE_FRACTION",
           "NoiseSearch", "check_hyperparameter_values", "fitted_names", "forces_unexplained",
           "free_mask", "kernel_profile_search", "search_on_subset", "values_kept_where_fixed",
           "warn_if_force_noise_at_bound", "warn_if_forces_unexplained",
           "warn_if_signal_std_at_bound", "warn_if_stresses_unexplained"]

#: Names accepted by the estimator's ``optimize``, in ``theta`` order (the kernel's own last).
HYPERPARAMETERS = ("signal_std", "energy_noise", "force_noise", "stress_noise", "kernel",
                   "two_body")
#: The default start of ``stress_noise`` (eV/Å³, 0.16 GPa), and its value in model files
#: written before stresses were trained on.
DEFAULT_STRESS_NOISE = 1e-3
#: The noise levels, in ``theta`` order after the signal std(s).
NOISE_NAMES = ("energy_noise", "force_noise", "stress_noise")
#: Likelihood evaluations allowed to the kernel-hyperparameter search.
KERNEL_SEARCH_EVALUATIONS = 30
#: What the optimiser sees where the likelihood cannot be evaluated (L-BFGS-B stalls on inf).
_FAILED = 1e25
#: L-BFGS-B's relative tolerance on the log likelihood's decrease per iteration (SciPy's
#: default is 2.2e-9). Near an optimum with a noise level at its lower bound the
#: likelihood of a nearly singular covariance carries round-off of about 2e-5 nats
#: (its gradient off central differences by up to 0.86 nats per unit of log parameter:
#: ethanol, exact, n = 100, log L = 8,486), the size of the default tolerance there
#: (1.9e-5 nats), and L-BFGS-B's line searches chased it: 44–50 evaluations per start,
#: two of three ending "ABNORMAL". At 1e-7 (8e-4 nats there) the same three starts took
#: 12–21 evaluations each, reached the same optimum to 3e-4 nats (log hyperparameters
#: to 4e-3), and the fit 53.6 → 23.8 s.
LIKELIHOOD_FTOL = 1e-7


def fitted_names(optimize: bool | Iterable[str], owner: str) -> set[str]:
    """Names of the hyperparameters the likelihood fits, from the ``optimize`` parameter.

    Parameters
    ----------
    optimize : bool or iterable of str
        ``True`` (all of :data:`HYPERPARAMETERS`), ``False`` (none) or names.
    owner : str
        Names the estimator in error messages.

    Returns
    -------
    set of str

    Raises
    ------
    TypeError
        If ``optimize`` is neither a bool nor an iterable of names.
    ValueError
        If it names an unknown hyperparameter.
    """
    if isinstance(optimize, (bool, np.bool_)):
        return set(HYPERPARAMETERS) if optimize else set()
    if isinstance(optimize, str) or not hasattr(optimize, "__iter__"):
        raise TypeError(f"{owner}: optimize must be True, False or a list of names from "
                        f"{HYPERPARAMETERS}; got {optimize!r}")
    names = set(optimize)
    unknown = names - set(HYPERPARAMETERS)
    if unknown:
        raise ValueError(f"{owner}: optimize names unknown hyperparameters {sorted(unknown)}; "
                         f"choose from {HYPERPARAMETERS}")
    return names


def check_hyperparameter_values(estimator: BaseEstimator, names: set[str],
                                owner: str) -> None:
    """Validate the start values and bounds of ``σ``, ``σ_E``, ``σ_F`` and ``σ_S``.

    Parameters
    ----------
    estimator : SparseGPPotential
        Its ``signal_std``, ``energy_noise``, ``force_noise``, ``stress_noise`` and
        their ``*_bounds``.
    names : set of str
        The fitted hyperparameters: their start values must lie within the bounds.
    owner : str
        Names the estimator in errors.

    Raises
    ------
    ValueError
        For a value that is not a number > 0, malformed bounds, or a fitted start
        value outside its bounds.
    """
    for name in ("signal_std", *NOISE_NAMES):
        value = getattr(estimator, name)
        low_high = getattr(estimator, f"{name}_bounds")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
                or not np.isfinite(value):
            raise ValueError(f"{owner}: {name} must be a finite number > 0; got {value!r}")
        try:
            low, high = (float(b) for b in low_high)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{owner}: {name}_bounds must be a pair (low, high); "
                             f"got {low_high!r}") from err
        if not 0 < low <= high:
            raise ValueError(f"{owner}: {name}_bounds must satisfy 0 < low <= high; "
                             f"got {low_high!r}")
        if name in names and not low <= value <= high:
            raise ValueError(f"{owner}: {name}={value} lies outside {name}_bounds "
                             f"{low_high!r}")


def free_mask(names: set[str], n_energy: int, n_force: int, n_signal: int = 1,
              n_stress: int = 0) -> list[bool]:
    """Which of ``log (σ..., σ_E, σ_F, σ_S)`` the likelihood moves.

    A hyperparameter is free when it is fitted and informed: a noise level without
    observations of its kind has no information and stays where it is.

    Parameters
    ----------
    names : set of str
        From :func:`fitted_names`.
    n_energy, n_force : int
        Energy and force observations.
    n_signal : int, default=1
        Signal stds (one per element with ``signal_per_element``).
    n_stress : int, default=0
        Stress observations.

    Returns
    -------
    list of bool of length ``n_signal + 3``
    """
    counts = (n_energy, n_force, n_stress)
    return ([("signal_std" in names)] * n_signal
            + [name in names and n > 0 for name, n in zip(NOISE_NAMES, counts, strict=True)])


def values_kept_where_fixed(log_params: np.ndarray, given: Sequence[float],
                            free: Sequence[bool]) -> list[float]:
    """Natural values of fitted ``log_params``, the given values exactly where fixed.

    ``exp(log(x))`` differs from ``x`` in floating point: a fixed value is returned as
    given, so that a model with ``optimize=False`` holds exactly its parameters.

    Parameters
    ----------
    log_params : ndarray of shape (n,)
    given : sequence of float of length n
    free : sequence of bool of length n

    Returns
    -------
    list of float
    """
    return [float(np.exp(t)) if is_free else float(g)
            for t, g, is_free in zip(log_params, given, free, strict=True)]


def warn_if_force_noise_at_bound(force_noise: float, bounds: Sequence[float], free: bool,
                                 owner: str, stacklevel: int = 3) -> None:
    """Warn when a fitted force noise sits at its upper bound: the forces are ignored.

    Parameters
    ----------
    force_noise : float
        The fitted ``σ_F``, eV/Å.
    bounds : pair of float
        ``force_noise_bounds``.
    free : bool
        Whether ``σ_F`` was fitted (a fixed value never warns).
    owner : str
    stacklevel : int, default=3
        Of the warning, so that it points at the user's ``fit`` call.
    """
    if free and np.isclose(force_noise, bounds[1]):
        warnings.warn(f"{owner}: the fitted force noise sits at its upper bound "
                      f"{force_noise:.3g} eV/Å: the model is ignoring the forces (too few "
                      "inducing points, or wrong labels?)", ConvergenceWarning,
                      stacklevel=stacklevel)


#: Fitted force noise, as a fraction of the force labels' root mean square, above which
#: the model is said to leave its forces largely unexplained (the noise then holds over a
#: quarter of their variance; in the failures measured it held most of it).
UNEXPLAINED_NOISE_FRACTION = 0.5
#: Force labels' RMS (eV/Å) below which they are taken as zero (a perfect lattice's), with
#: nothing to explain.
_ZERO_FORCES_RMS = 1e-3


def forces_unexplained(force_noise: float, label_rms: float) -> bool:
    """Return whether a fitted force noise leaves the forces mostly unexplained.

    Parameters
    ----------
    force_noise : float
        The fitted ``σ_F``, eV/Å.
    label_rms : float
        Root mean square of the force labels' components, eV/Å (0 or NaN: no forces).

    Returns
    -------
    bool
        ``σ_F > UNEXPLAINED_NOISE_FRACTION × label_rms``: the likelihood preferred
        reading a large part of the forces as noise. False for labels of RMS under 1 meV/Å
        (a perfect lattice's zero forces: nothing to explain).

    Notes
    -----
    Measured (acetic acid, GFN2-xTB, three frames 10 fs apart, sparse model with every
    environment inducing): σ_F equal to the labels' RMS (0.83 eV/Å), σ at its lower
    bound, the epistemic std 3e-5 eV/Å and a force error of 0.83 eV/Å on a new frame,
    where the exact model of the same frames fitted σ_F = 1e-4 eV/Å.
    """
    return bool(label_rms > _ZERO_FORCES_RMS
                and force_noise > UNEXPLAINED_NOISE_FRACTION * label_rms)


def warn_if_forces_unexplained(force_noise: float, label_rms: float, owner: str,
                               stacklevel: int = 3) -> None:
    """Warn when the fitted force noise leaves the forces mostly unexplained.

    Parameters
    ----------
    force_noise : float
        The fitted ``σ_F``, eV/Å.
    label_rms : float
        Root mean square of the force labels' components, eV/Å.
    owner : str
        Names the estimator in the warning.
    stacklevel : int, default=3
        Of the warning, so that it points at the user's ``fit`` call.

    See Also
    --------
    forces_unexplained : The test.
    """
    if forces_unexplained(force_noise, label_rms):
        warnings.warn(f"{owner}: the fitted force noise σ_F = {force_noise:.3g} eV/Å is "
                      f"{force_noise / label_rms:.0%} of the force labels' RMS "
                      f"({label_rms:.3g} eV/Å): the model reads much of the forces as "
                      "noise and predicts them poorly (its epistemic std need not show it). Usual "
                      "causes: a few nearly identical structures (label more, and more "
                      "varied, ones), too few inducing environments for the forces (the "
                      "exact model, method='exact', fits a handful of structures better), "
                      "or inconsistent labels", ConvergenceWarning, stacklevel=stacklevel)


def warn_if_stresses_unexplained(stress_noise: float, label_rms: float,
                                 bounds: Sequence[float], owner: str,
                                 stacklevel: int = 3) -> None:
    """Warn when the fitted stress noise says the stresses do not fit the energies and forces.

    At the upper bound of ``stress_noise_bounds``, or over half the stress labels' RMS
    (as for forces), the likelihood reads the stresses as noise: in a new user's walk,
    stresses written in kbar with the pressure's sign fitted σ_S to its bound (1 eV/Å³)
    without a word, and their leave-one-out error was 1,872 GPa.

    Parameters
    ----------
    stress_noise : float
        The fitted ``σ_S``, eV/Å³.
    label_rms : float
        Root mean square of the stress labels' components, eV/Å³.
    bounds : pair of float
        ``stress_noise_bounds``.
    owner : str
    stacklevel : int, default=3
    """
    at_bound = bool(np.isclose(stress_noise, bounds[1]))
    if not (at_bound or (label_rms > 0 and stress_noise > UNEXPLAINED_NOISE_FRACTION
                         * label_rms)):
        return
    where = f"at its upper bound {bounds[1]:.3g} eV/Å³" if at_bound else \
        f"{stress_noise / label_rms:.0%} of the stress labels' RMS ({label_rms:.3g} eV/Å³)"
    warnings.warn(f"{owner}: the fitted stress noise σ_S = {stress_noise:.3g} eV/Å³ "
                  f"({GPA * stress_noise:.3g} GPa) is {where}: the energies and forces "
                  "do not explain the stress labels. Check their units (eV/Å³, as ASE's "
                  "get_stress gives; 1 GPa = 0.00624 eV/Å³) and sign (ASE's: the negative "
                  "of the pressure), that they are the same calculation's, or fit with "
                  "use_stress=False", ConvergenceWarning, stacklevel=stacklevel)


def warn_if_signal_std_at_bound(signal_std: float | dict[str, float],
                                bounds: Sequence[float], owner: str,
                                descriptor: str | None = None) -> None:
    """Warn when a fitted signal std sits at a bound.

    At the upper bound, a logged warning (shown on stderr when logging is not
    configured), not a ``warnings`` one: it is common with raw ACSF features, and
    on-the-fly learning or a loop of fits would repeat it. At the lower bound (every
    element's, with one per element), a ``ConvergenceWarning``: the model learned
    nothing from the labels (measured: five Ni cells with energies and no forces,
    σ at 0.01 eV and a training energy error of 391 meV).

    Parameters
    ----------
    signal_std : float or dict
        The fitted ``σ`` (one per element with ``signal_per_element``), eV.
    bounds : pair of float
        ``signal_std_bounds``.
    owner : str
    descriptor : str or None, default=None
        The descriptor's class name: the upper-bound advice names what helps with it
        (ACSF's normalised features barely see a uniform strain; SOAP's ``sigma``).
    """
    values = signal_std.values() if isinstance(signal_std, dict) else [signal_std]
    if all(np.isclose(value, bounds[0]) for value in values):
        warnings.warn(f"{owner}: the fitted signal std sits at its lower bound {bounds[0]:.3g} "
                      "eV: the likelihood reads the labels as noise, and the model predicts "
                      "little beyond the reference energies (too few or too similar "
                      "structures for what they label, energies without forces, or "
                      "inconsistent labels)", ConvergenceWarning, stacklevel=3)
    if any(np.isclose(value, bounds[1]) for value in values):
        if descriptor is not None and "ACSF" in descriptor:
            advice = ("ACSF's normalised features barely see a uniform strain: use SOAP, or "
                      "add a squared exponential to the kernel")
        elif descriptor is not None and "SOAP" in descriptor:
            advice = "a smaller SOAP sigma or a larger zeta give the kernel more contrast"
        else:
            advice = "a kernel with more contrast between environments (with the dot " \
                "product, a larger zeta) helps"
        logger.warning("%s: the fitted signal std sits at its upper bound %.3g eV: the "
                       "kernel varies too little between the training environments for the "
                       "spread of the labels, so the raw variances are inflated (the "
                       "default calibration rescales them; %s; or raise "
                       "signal_std_bounds)", owner, bounds[1], advice)


class NoiseSearch:
    """L-BFGS-B over ``log (σ..., σ_E, σ_F, σ_S)`` within log bounds, with restarts.

    Parameters
    ----------
    signal_std_bounds, energy_noise_bounds, force_noise_bounds : pair of float
        Bounds in natural units (eV, eV/√atom, eV/Å).
    n_restarts : int
        Extra starts drawn log-uniformly within the bounds.
    owner : str
        Names the estimator in warnings.
    verbose : int, default=0
        1 shows a progress bar of the likelihood evaluations with the best log
        marginal likelihood so far.
    stress_noise_bounds : pair of float, default=(1e-6, 1.0)
        Bounds of ``σ_S``, eV/Å³.
    """

    def __init__(self, signal_std_bounds: Sequence[float], energy_noise_bounds: Sequence[float],
                 force_noise_bounds: Sequence[float], n_restarts: int, owner: str,
                 verbose: int = 0, stress_noise_bounds: Sequence[float] = (1e-6, 1.0)):
        self.signal_std_bounds = signal_std_bounds
        self.energy_noise_bounds = energy_noise_bounds
        self.force_noise_bounds = force_noise_bounds
        self.stress_noise_bounds = stress_noise_bounds
        self.n_restarts = n_restarts
        self.owner = owner
        self.verbose = verbose

    @classmethod
    def of(cls, estimator: BaseEstimator) -> NoiseSearch:
        """Build the search an estimator's parameters describe.

        Parameters
        ----------
        estimator : SparseGPPotential

        Returns
        -------
        NoiseSearch
        """
        return cls(estimator.signal_std_bounds, estimator.energy_noise_bounds,
                   estimator.force_noise_bounds, estimator.n_restarts,
                   type(estimator).__name__,
                   check_verbose(estimator.verbose, type(estimator).__name__),
                   estimator.stress_noise_bounds)

    def optimize(self,
                 likelihood: gp.WhitenedStatistics
                 | Callable[[np.ndarray], tuple[float, np.ndarray]],
                 log_params: np.ndarray, rng: np.random.RandomState,
                 free: Sequence[bool], extra_starts: Sequence[np.ndarray] = (),
                 restarts: int | None = None, progress: bool = True,
                 extra_bounds: Sequence[tuple[float, float]] = ()) -> np.ndarray:
        """Maximise the likelihood over the ``free`` entries of ``log_params``.

        Parameters
        ----------
        likelihood : gp.WhitenedStatistics or callable
            The sparse model's statistics, or ``theta -> (log p, gradient)``.
        log_params : ndarray of shape (n_signal + 3,)
            Start, and the values of the fixed entries.
        rng : numpy.random.RandomState
            Draws the restarts.
        free : sequence of bool
            From :func:`free_mask`.
        extra_starts : sequence of ndarray, default=()
            More starts (clipped to the bounds).
        restarts : int or None, default=None
            Random restarts; ``None`` uses ``n_restarts``.
        progress : bool, default=True
            Show the progress bar when ``verbose`` asks for it (an inner search of
            :func:`kernel_profile_search` does not).
        extra_bounds : sequence of (float, float), default=()
            Natural-unit bounds of more entries at the end of ``log_params`` (the noise
            scales of :mod:`kernelpot.noise_groups`).

        Returns
        -------
        ndarray of shape (n_signal + 3 + len(extra_bounds),)
            The best ``log_params`` found; the start, with a ``ConvergenceWarning``, when
            the likelihood could not be evaluated at any start.
        """
        if not callable(likelihood):
            stats = likelihood

            def likelihood(theta):
                return gp.log_marginal_likelihood(theta, stats, eval_gradient=True)
        n_signal = len(log_params) - 3 - len(extra_bounds)
        bounds = np.log(np.array([self.signal_std_bounds] * n_signal
                                 + [self.energy_noise_bounds, self.force_noise_bounds,
                                    self.stress_noise_bounds] + list(extra_bounds),
                                 dtype=float))
        for k, is_free in enumerate(free):
            if not is_free:
                bounds[k] = log_params[k]

        bar = tqdm(desc="likelihood", unit=" evaluations",
                   disable=not (progress and self.verbose >= 1))
        best_seen = [-np.inf]

        def objective(theta):
            value, grad = likelihood(theta)
            if np.isfinite(value) and value > best_seen[0]:
                best_seen[0] = value
                bar.set_postfix_str(f"log L {value:.2f}", refresh=False)
            bar.update()
            if not np.isfinite(value):
                return _FAILED, np.zeros_like(theta)
            return -value, -grad

        starts = [np.clip(start, bounds[:, 0], bounds[:, 1])
                  for start in (log_params, *extra_starts)]
        for _ in range(int(self.n_restarts if restarts is None else restarts)):
            starts.append(rng.uniform(bounds[:, 0], bounds[:, 1]))
        best, best_value = starts[0], np.inf
        for start in starts:
            result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                              options={"ftol": LIKELIHOOD_FTOL})
            if not result.success:
                logger.debug("L-BFGS-B from %s: %s", start, result.message)
            if result.fun < best_value:
                best, best_value = result.x, result.fun
        bar.close()
        if not np.isfinite(best_value) or best_value >= _FAILED:
            warnings.warn(f"{self.owner}: the marginal likelihood could not be evaluated at "
                          "any start; keeping the given hyperparameters", ConvergenceWarning,
                          stacklevel=4)
            return log_params
        return best


def kernel_profile_search(kernel: Kernel, log_params: np.ndarray, inner_free: Sequence[bool],
                          likelihood_at: Callable, search: NoiseSearch, seed: int,
                          owner: str) -> tuple[Kernel, np.ndarray]:
    """Fit the kernel's own ``theta`` on the likelihood profiled over ``(σ, σ_E, σ_F, σ_S)``.

    Parameters
    ----------
    kernel : Kernel
        Start, with its bounds.
    log_params : ndarray of shape (4,)
        Start of the inner search.
    inner_free : sequence of bool
        Which of ``(σ, σ_E, σ_F, σ_S)`` the inner search moves.
    likelihood_at : callable
        ``likelihood_at(kernel) -> (stats, gradient)``: the whitened statistics of the
        design built with ``kernel`` and a callable ``gradient(inner)`` returning
        ``∂ log p / ∂ kernel.theta`` at the noise levels ``inner`` (one more pass).
    search : NoiseSearch
        The inner optimiser.
    seed : int
        Seeds the inner restarts, the same at every evaluation.
    owner : str

    Returns
    -------
    kernel : Kernel
        At the best ``theta`` found.
    log_params : ndarray of shape (4,)
        The inner optimum there.

    Notes
    -----
    By the envelope theorem the gradient of the profile is the partial derivative
    at the inner optimum, so each step costs two passes over the data. L-BFGS-B is
    allowed :data:`KERNEL_SEARCH_EVALUATIONS` evaluations.
    """
    best = {"value": np.inf, "theta": kernel.theta, "inner": log_params}

    def negative_profile(theta):
        trial = kernel.clone_with_theta(theta)
        stats, gradient = likelihood_at(trial)
        inner = log_params
        if any(inner_free):
            inner = search.optimize(stats, best["inner"], np.random.RandomState(seed),
                                    inner_free, progress=False)
        value = gp.log_marginal_likelihood(inner, stats)
        logger.info("%s: kernel %s = %s: log marginal likelihood %.2f", owner,
                    kernel.theta_names, np.exp(theta), value)
        bar.update()
        if np.isfinite(value):
            bar.set_postfix_str(f"log L {value:.2f}", refresh=False)
        if not np.isfinite(value):
            return _FAILED, np.zeros_like(theta)
        if -value < best["value"]:
            best.update(value=-value, theta=np.array(theta), inner=inner)
        return -value, -gradient(inner)

    bar = tqdm(desc=f"kernel search (at most {KERNEL_SEARCH_EVALUATIONS})",
               unit=" evaluations", disable=search.verbose < 1)
    result = minimize(negative_profile, kernel.theta, jac=True, method="L-BFGS-B",
                      bounds=kernel.bounds,
                      options={"maxfun": KERNEL_SEARCH_EVALUATIONS, "ftol": LIKELIHOOD_FTOL})
    bar.close()
    logger.info("%s: kernel search: %s after %d evaluations", owner, result.message,
                result.nfev)
    return kernel.clone_with_theta(best["theta"]), best["inner"]


def search_on_subset(estimator: BaseEstimator, frames: list, kernel: Kernel,
                     rng: np.random.RandomState) -> tuple[Kernel, np.ndarray]:
    """Kernel hyperparameters from a fit on ``estimator.search_frames`` random structures.

    Parameters
    ----------
    estimator : SparseGPPotential
        Its parameters; it is cloned, not changed.
    frames : list of ase.Atoms
        The training structures.
    kernel : Kernel
        The kernel to start from.
    rng : numpy.random.RandomState

    Returns
    -------
    kernel : Kernel
        Fitted on the subset (bounds kept; the full fit does not search it again).
    start : ndarray of shape (4,)
        The subset's fitted ``log (σ, σ_E, σ_F, σ_S)`` (given values where not fitted): one
        more start for the full fit's noise search.
    """
    chosen = np.sort(rng.choice(len(frames), size=int(estimator.search_frames),
                                replace=False))
    logger.info("%s: fitting the kernel's hyperparameters on %d of %d structures",
                type(estimator).__name__, len(chosen), len(frames))
    # the subset fit only gives the kernel and a start: no std calibration (LOSO) for it
    sub = clone(estimator).set_params(kernel=kernel, search_frames=None, incremental=False,
                                      config_type_noise=False, design_memory_limit=np.inf,
                                      calibration=None, random_state=rng.randint(2**31 - 1))
    sub.fit([frames[k] for k in chosen])
    start = np.log([sub.signal_std_, sub.energy_noise_, sub.force_noise_, sub.stress_noise_])
    given = np.log([estimator.signal_std, estimator.energy_noise, estimator.force_noise,
                    estimator.stress_noise])
    names = fitted_names(estimator.optimize, type(estimator).__name__)
    start = np.where([n in names for n in HYPERPARAMETERS[:4]], start, given)
    return sub.kernel_, start
