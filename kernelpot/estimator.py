"""Sparse Gaussian-process interatomic potential with a scikit-learn interface."""

from __future__ import annotations

import logging
import numbers
import time
import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from joblib import Parallel, delayed
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from kernelpot import _incremental, conformal, exact, gp
from kernelpot._labels import check_frames, read_labels
from kernelpot._two_body_search import pair_factor, search_prior_std, whitened_pair_scale
from kernelpot._validation import check_verbose
from kernelpot.descriptors import SOAP, Descriptor, DescriptorResult
from kernelpot.kernels import Kernel, NormalizedDotProduct
from kernelpot.sparsify import SPARSE_METHODS, resolve_n_sparse, select_inducing
from kernelpot.two_body import TwoBody

logger = logging.getLogger(__name__)

__all__ = ["SparseGPPotential", "Prediction"]

#: Inducing environments per species when ``n_sparse=None``.
DEFAULT_SPARSE_CAP = 2000
#: Descriptors (with gradients) kept in memory during a kernel-hyperparameter search.
_DESCRIPTOR_CACHE_BYTES = 2 * 2**30
#: Names accepted by ``optimize``, in ``theta`` order (the kernel's own last).
_HYPERPARAMETERS = ("signal_std", "energy_noise", "force_noise", "kernel", "two_body")
#: Validation values below which calibrate fits only the std factor (no shape).
_SHAPE_MIN_VALUES = 50
#: Values of ``method``.
_METHODS = ("sparse", "exact", "auto")
#: Design rows whose variances are solved together in prediction.
_VARIANCE_BATCH_ROWS = 2048
#: Likelihood evaluations allowed to the kernel-hyperparameter search.
_KERNEL_SEARCH_EVALUATIONS = 30


class Prediction(NamedTuple):
    """Everything the model predicts for one structure.

    Attributes
    ----------
    energy : float
        Total energy, eV.
    forces : ndarray of shape (n_atoms, 3) or None
        eV/Å.
    energy_var_posterior, energy_var_projection : float or None
        Epistemic variance terms of the energy (eV²): the posterior over the
        inducing values and the prior variance the inducing set does not span
        (an exact model's whole posterior variance is in the first; the second is 0).
    forces_var_posterior, forces_var_projection : ndarray of shape (n_atoms, 3) or None
        The same two terms for every force component (eV²/Å²).
    local_energies : ndarray of shape (n_atoms,)
        Per-atom energies including the reference energies, eV; they sum to ``energy``.
    stress : ndarray of shape (6,) or None
        Only when asked: ASE's stress of the predicted energy (Voigt
        ``xx yy zz yz xz xy``, eV/Å³, positive under tension).
    """

    energy: float
    forces: np.ndarray | None
    energy_var_posterior: float | None
    energy_var_projection: float | None
    forces_var_posterior: np.ndarray | None
    forces_var_projection: np.ndarray | None
    local_energies: np.ndarray
    stress: np.ndarray | None = None


class _ExactPending(NamedTuple):
    """An exact model's mean prediction waiting for its variances (batched)."""

    energy: float
    forces: np.ndarray | None
    local: np.ndarray
    result: DescriptorResult
    index: np.ndarray
    force_variance: bool
    stress: np.ndarray | None = None


def format_signal_std(sigma) -> str:
    """A fitted signal std for logs and the CLI: ``"2.18"`` or ``"H 1.64, C 2.08"``."""
    if isinstance(sigma, dict):
        return ", ".join(f"{symbol} {value:.3g}" for symbol, value in sigma.items())
    return f"{sigma:.3g}"


def _features_only(features) -> DescriptorResult:
    """A DescriptorResult without Jacobian, for energy-only predictions."""
    return DescriptorResult(features, np.zeros((0, 2), dtype=np.int64),
                            np.zeros((0, 3, features.shape[1])))


def _fit_variance_terms(errors, post, proj, noise, owner) -> dict:
    """Calibration of the predicted variance on validation ``errors``, by maximum likelihood.

    The calibrated total variance is ``c² v_ref (u / v_ref)^p + d² noise`` with
    ``u = post + w² proj`` and ``v_ref`` the geometric mean of the raw epistemic
    variance on the validation set; ``c²``, ``w²``, ``d²`` (in [1e-4, 1e4]) and ``p`` (in [0.2, 5])
    maximise the Gaussian likelihood of the errors. ``p = 1`` is a plain scale; ``p >
    1`` spreads the stds (the errors grow faster than the raw std, the usual cause of
    heavy tails). ``d`` rescales the learned noise in the total: a sparse model's
    learned force noise absorbs its misfit on the training set, and with it the total
    std is too uniform. Without a projection term (an exact model) ``w = 1`` is not
    fitted. With fewer than ``_SHAPE_MIN_VALUES`` validation values only ``c`` is
    fitted (``w = p = d = 1``): four parameters on a handful of energies overfit. If
    ``c`` reaches its lower limit (the noise explains the errors), ``w`` and ``p`` mean
    nothing and are 1.

    Returns
    -------
    dict with keys "scale" (c), "projection" (w), "exponent" (p), "reference" (v_ref),
    "noise" (d)
    """
    from scipy.optimize import minimize

    r2 = np.asarray(errors, dtype=np.float64) ** 2
    noise = np.asarray(noise, dtype=np.float64)
    shape = r2.size >= _SHAPE_MIN_VALUES
    two_terms = shape and bool(np.any(proj > 0))
    fit_noise = shape and bool(np.any(noise > 0))
    raw = post + proj
    if not np.any(raw > 0):
        raise ValueError(f"{owner}: the model's epistemic variance is zero on every "
                         "validation value; nothing to calibrate")
    # the geometric mean centres log(u / v_ref), which decouples c from p
    v_ref = float(np.exp(np.mean(np.log(raw[raw > 0]))))
    # slots of theta: log c², [log w²], [log d²], p
    i_w = 1 if two_terms else None
    i_d = 1 + int(two_terms) if fit_noise else None

    def parts(theta):
        p = theta[-1]
        r = np.exp(theta[i_w]) if i_w is not None else 1.0
        d2 = np.exp(theta[i_d]) if i_d is not None else 1.0
        u = post + r * proj
        t = u / v_ref
        positive = t > 0
        log_t = np.where(positive, np.log(np.where(positive, t, 1.0)), 0.0)
        epistemic = np.where(positive, np.exp(theta[0]) * v_ref * np.exp(p * log_t), 0.0)
        return r, d2, u, log_t, epistemic

    def nll(theta):
        r, d2, u, log_t, epistemic = parts(theta)
        total = epistemic + d2 * noise
        value = 0.5 * np.sum(np.log(total) + r2 / total)
        d_total = 0.5 * (1.0 / total - r2 / total**2)
        grad = [d_total @ epistemic]
        if i_w is not None:
            share = np.where(u > 0, r * proj / np.where(u > 0, u, 1.0), 0.0)
            grad.append(d_total @ (epistemic * theta[-1] * share))
        if i_d is not None:
            grad.append(d2 * (d_total @ noise))
        grad.append(d_total @ (epistemic * log_t))
        return value, np.array(grad)

    bound = np.log(1e12)
    start = [0.0] + [0.0] * ((i_w is not None) + (i_d is not None)) + [1.0]
    bounds = [(-bound, bound)] + [(-bound, bound)] * (i_w is not None) \
        + [(np.log(1e-4), np.log(1e4))] * (i_d is not None) \
        + [(0.2, 5.0) if shape else (1.0, 1.0)]
    result = minimize(nll, np.array(start), jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000})
    # a restart from the result clears L-BFGS-B's stalls on this coupled problem
    result = minimize(nll, result.x, jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000})
    r, d2, *_ = parts(result.x)
    if np.isclose(result.x[0], -bound, atol=1e-3):
        logger.info("%s: the epistemic scale went to its lower limit: the learned noise "
                    "explains the errors", owner)
        return {"scale": float(np.exp(-0.5 * bound)), "projection": 1.0, "exponent": 1.0,
                "reference": v_ref, "noise": float(np.sqrt(d2))}
    return {"scale": float(np.exp(0.5 * result.x[0])), "projection": float(np.sqrt(r)),
            "exponent": float(result.x[-1]), "reference": v_ref, "noise": float(np.sqrt(d2))}


def _calibration_entries(quantity, fitted) -> dict:
    """``std_scale_`` entries of one quantity from :func:`_fit_variance_terms`."""
    return {quantity: fitted["scale"], f"{quantity}_projection": fitted["projection"],
            f"{quantity}_exponent": fitted["exponent"],
            f"{quantity}_reference": fitted["reference"], f"{quantity}_noise": fitted["noise"]}


def _with_two_body(rows: gp.DesignRows, pair, atoms, species_index, n_species,
                   pair_columns) -> gp.DesignRows:
    """Fill the two-body columns (``prior_std² × basis rows``) of full-width design rows.

    Their derivatives in the kernel's hyperparameters stay zero.
    """
    if pair is None:
        return rows
    e_pair, f_pair = pair.rows(atoms, species_index, n_species, energy=rows.energy is not None,
                               forces=rows.forces is not None)
    scale2 = float(pair.prior_std)**2
    if rows.energy is not None:
        rows.energy[pair_columns] = scale2 * e_pair
    if rows.forces is not None:
        rows.forces[:, pair_columns] = scale2 * f_pair
    return rows


def _inducing_factor(inducing, kernel, pair, n_species):
    """Lower factor of ``k_mm`` plus jitter; the jitter relative to the mean diagonal of
    the GP block, and absolute.

    ``k_mm`` is the GP's inducing kernel, then ``prior_std² I`` for the two-body
    coefficients (their prior covariance over ``σ²``). The GP block is factored by
    :func:`kernelpot.gp.cholesky_with_jitter`; the two-body block gets the same absolute
    jitter, so that its prior std does not change the jitter of the GP block.
    """
    K = gp.inducing_kernel(inducing, kernel)
    L, jitter = gp.cholesky_with_jitter(K)
    jitter_abs = jitter * gp.jitter_scale(K)  # as cholesky_with_jitter applied it
    if pair is None:
        return L, jitter, jitter_abs
    n_pair = pair.n_columns(n_species)
    pair_block = pair_factor(float(pair.prior_std), jitter_abs) * np.eye(n_pair)
    return sla.block_diag(L, pair_block), jitter, jitter_abs


def _labelled_copy(atoms, energy, forces):
    """A copy of ``atoms`` that keeps its reference labels (``Atoms.copy`` drops them)."""
    copy = atoms.copy()
    kwargs = {}
    if not np.isnan(energy):
        kwargs["energy"] = float(energy)
    if forces is not None:
        kwargs["forces"] = np.array(forces)
    copy.calc = SinglePointCalculator(copy, **kwargs)
    return copy


class SparseGPPotential(RegressorMixin, BaseEstimator):
    """Sparse GP potential on local environments, trained on energies and forces.

    The energy of a structure is a sum of local energies, one Gaussian process
    per element over the atom's descriptor, plus a reference energy per element.
    Training uses total energies and forces through analytic derivative kernels
    in the DTC (projected-process) approximation; the signal and the two noise
    levels are fitted by maximising the marginal likelihood.

    Parameters
    ----------
    descriptor : kernelpot.descriptors.Descriptor, default=None
        Cloned at fit. ``None`` is ``SOAP(species, r_cut=4.0, n_max=6, l_max=4,
        sigma=0.4)`` over the training elements.
    kernel : kernelpot.kernels.Kernel, default=None
        Cloned at fit. ``None`` is ``NormalizedDotProduct(zeta=2)``.
    n_sparse : int, dict or None, default=None
        Inducing environments per element (an int for all, a dict per element);
        ``None`` keeps all training environments up to 2000 per element.
    sparse_method : {"fps", "cur", "random", "all"}, default="fps"
        How to choose them when there are more than ``n_sparse``: farthest-point
        sampling by default (measured on ethanol, n = 200, 300 per element: the same
        force error as CUR and random, and the force std ranks errors best, Spearman
        0.62 against 0.46 for CUR).
    two_body : kernelpot.TwoBody or None, default=None
        A pair-potential term fitted jointly with the GP, as GAP adds a two-body
        term to SOAP (``method="sparse"`` only; :meth:`update` keeps its ``prior_std``). Its
        coefficients are extra design columns whose prior std is
        ``prior_std × σ``, ``prior_std`` fitted by the likelihood unless ``optimize``
        leaves out "two_body" (the fitted term is ``two_body_``); see
        :mod:`kernelpot.two_body`.
    signal_std : float, default=1.0
        Signal std ``σ`` of the local energies, eV (initial value when optimising).
    signal_per_element : bool, default=False
        One signal std ``σ_s`` per element instead of one for all (``method="exact"``
        only), fitted by the likelihood with the noise levels, as GAP gives each
        species-centred descriptor its own ``δ``. The local energies of different
        elements vary by different amounts (measured on ethanol, n = 25: σ_H 2.1,
        σ_C 1.6, σ_O 3.7 eV; a shared σ 2.2 eV): on 150 validation frames it lowered
        the force MAE of the exact model by 4 % on ethanol at n = 25 and aspirin at
        n = 50, 1.5 % on ethanol at n = 50. The fit holds one prior covariance per
        element and the whole inverse of ``K_y`` for the likelihood gradient: about
        ``n_species`` more matrices of the size of ``K_y`` at its peak.
    energy_noise : float, default=0.002
        Energy noise ``σ_E`` per atom, eV/atom (initial value when optimising).
    force_noise : float, default=0.05
        Force noise ``σ_F`` per component, eV/Å (initial value when optimising).
    signal_std_bounds, energy_noise_bounds, force_noise_bounds : pair of float
        Bounds of the likelihood optimisation.
    e0 : "lstsq" or dict, default="lstsq"
        Reference energy per element: least squares of the training energies on
        the compositions (minimum norm), or a dict ``{element: eV}``.
    optimize : bool or list of str, default=True
        Fit ``σ``, ``σ_E``, ``σ_F`` by maximising the log marginal likelihood
        (L-BFGS-B with analytic gradients in log space), and the kernel's own
        hyperparameters (``kernel.theta``: the length scale of
        :class:`SquaredExponential`, the weight of a :class:`Scaled` term) by L-BFGS-B
        on the likelihood maximised over the first three, with its analytic gradient
        (:class:`kernelpot.gp.KernelThetaGradient`; each step rebuilds the design and
        its derivatives: two passes over the data), and with a ``two_body`` term its
        ``prior_std`` (coordinate ascent with the first three; see
        :class:`~kernelpot.TwoBody`); ``False`` keeps the given values; a list such as
        ``["signal_std", "force_noise"]`` fits only those (names: "signal_std",
        "energy_noise", "force_noise", "kernel", "two_body") and keeps the rest,
        e.g. an energy noise set to the known precision of the reference method.
    n_restarts : int, default=2
        Extra optimiser starts, log-uniform within the bounds.
    search_frames : int or None, default=None
        Fit the kernel's own hyperparameters on a random subset of this many
        training structures (inducing environments chosen within it), then fix
        them and fit ``σ``, ``σ_E``, ``σ_F`` and the posterior on all structures:
        each step of the kernel search costs two passes over its data, so a subset
        of a few tens of structures keeps large fits affordable. ``None`` searches
        on all of them.
    incremental : bool, default=False
        Keep the whitened design, labels and descriptors of the training set so
        that :meth:`update` can add structures and inducing environments by
        low-rank updates instead of a refit (memory grows with the training set:
        meant for on-the-fly learning, not for large fits).
    method : {"sparse", "exact", "auto"}, default="sparse"
        "sparse": the DTC approximation on inducing environments (memory linear in
        the data). "exact": every energy and force component is an observation of
        one GP (:mod:`kernelpot.exact`); most accurate for small data (about half
        the force error of "sparse" with every environment inducing on the shared
        ethanol set at n = 25 to 100), but memory grows as the square of the
        number of force components and fitting as its cube. "auto": exact while
        its estimated peak memory fits ``exact_memory_limit``, logged.
    exact_memory_limit : float, default=4.0
        GiB, for ``method="auto"``.
    apply_calibration : bool, default=True
        Multiply every std the model reports (``predict``, ``predict_forces``, the
        calculator's) by the factors :meth:`calibrate` fitted, once it has been
        called; ``False`` reports the model's raw stds.
    random_state : int, numpy Generator or None, default=None
        Seeds inducing-point selection and optimiser restarts.
    n_jobs : int or None, default=1
        joblib workers over structures; results do not depend on it.
    verbose : int, default=0
        0 silent; 1 progress bars; more logs more.

    Attributes
    ----------
    descriptor_ : Descriptor
    kernel_ : Kernel
    species_ : ndarray of int
        Atomic numbers the model knows, sorted.
    e0_ : ndarray of shape (n_species,)
        Reference energy per element, eV.
    inducing_ : list of ndarray of shape (m_s, n_features)
        Inducing descriptors per element.
    alpha_ : ndarray of shape (n_inducing,)
        Weights: a design row ``k`` predicts ``k @ alpha_``.
    signal_std_ : float or dict
        Fitted ``σ`` (eV); with ``signal_per_element=True`` a dict ``{element: σ_s}``.
    energy_noise_, force_noise_ : float
        Fitted ``σ_E`` (eV/atom), ``σ_F`` (eV/Å): the learned aleatoric noise.
    log_marginal_likelihood_value_ : float
    n_inducing_ : dict
        Inducing environments per element symbol (the exact model: training
        environments per element).
    method_ : {"sparse", "exact"}
        The method fitted (what ``method="auto"`` chose).
    std_scale_ : dict or None
        Calibration factors :meth:`calibrate` fitted.
    interval_scores_ : dict or None
        Sorted conformal scores :meth:`calibrate` stored, per quantity.

    Notes
    -----
    Predicted variances of the sparse model (see :mod:`kernelpot.gp`): the epistemic
    variance of a prediction with design row ``k`` has two terms,

    * ``v_posterior = σ² |L_post⁻¹ k|²``, the posterior over the inducing values;
    * ``v_projection = σ² (k_** - |L_mm⁻¹ k|²)``, the prior variance the inducing set
      does not span. For a force component ``k_**`` is the prior variance of that
      component, ``Σ_ii' J_iᵀ H(x_i, x_i') J_i'`` with ``H`` the kernel's mixed second
      derivative and ``J`` the descriptor Jacobian rows of the atoms' centres, and
      ``k`` its covariance with the inducing values. So the term grows where the
      inducing set does not cover the force directions of a new environment, not
      only where the environment itself is new.

    They are reported separately (:class:`Prediction`, the calculator's
    ``forces_std_posterior`` and ``forces_std_projection``) and combined as
    ``c² (v_posterior + w² v_projection)``, with ``c = w = 1`` until
    :meth:`calibrate` fits both on validation data. Added raw, the projection term
    dominates and is several times too wide. The exact model (``method="exact"``)
    has only the first term, its exact posterior variance
    ``σ² k_** - k_*ᵀ K_y⁻¹ k_*``. The total variance adds the learned noise:
    ``σ_E² N`` for an ``N``-atom energy, ``σ_F²`` per force component. Every variance
    is clipped at zero, with a warning if round-off went beyond 1e-8 relative.

    Examples
    --------
    >>> from kernelpot import SparseGPPotential, SOAP, load_ethanol
    >>> frames = load_ethanol()
    >>> model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, 4, 3, 0.4), random_state=0)
    >>> model = model.fit(frames[:20])
    >>> energies, std = model.predict(frames[20:22], return_std=True)
    >>> energies.shape, std.shape
    ((2,), (2,))
    """

    def __init__(self, descriptor=None, kernel=None, *, n_sparse=None, sparse_method="fps",
                 two_body=None, signal_std=1.0, signal_per_element=False, energy_noise=0.002,
                 force_noise=0.05,
                 signal_std_bounds=(1e-2, 1e2), energy_noise_bounds=(1e-4, 1.0),
                 force_noise_bounds=(1e-4, 10.0), e0="lstsq", optimize=True, n_restarts=2,
                 search_frames=None, incremental=False, apply_calibration=True,
                 method="sparse", exact_memory_limit=4.0, random_state=None, n_jobs=1,
                 verbose=0):
        self.descriptor = descriptor
        self.kernel = kernel
        self.n_sparse = n_sparse
        self.sparse_method = sparse_method
        self.two_body = two_body
        self.signal_std = signal_std
        self.signal_per_element = signal_per_element
        self.energy_noise = energy_noise
        self.force_noise = force_noise
        self.signal_std_bounds = signal_std_bounds
        self.energy_noise_bounds = energy_noise_bounds
        self.force_noise_bounds = force_noise_bounds
        self.e0 = e0
        self.optimize = optimize
        self.n_restarts = n_restarts
        self.search_frames = search_frames
        self.incremental = incremental
        self.apply_calibration = apply_calibration
        self.method = method
        self.exact_memory_limit = exact_memory_limit
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

    # -- validation ------------------------------------------------------------------
    def _check_params(self):
        owner = type(self).__name__
        if self.descriptor is not None and not isinstance(self.descriptor, Descriptor):
            raise TypeError(f"{owner}: descriptor must be a kernelpot Descriptor or None; "
                            f"got {type(self.descriptor).__name__}")
        if self.kernel is not None and not isinstance(self.kernel, Kernel):
            raise TypeError(f"{owner}: kernel must be a kernelpot Kernel or None; "
                            f"got {type(self.kernel).__name__}")
        if self.sparse_method not in SPARSE_METHODS:
            raise ValueError(f"{owner}: sparse_method must be one of {SPARSE_METHODS}; "
                             f"got {self.sparse_method!r}")
        fitted_names = self._fitted_names()  # validates optimize
        for name in ("signal_std", "energy_noise", "force_noise"):
            value = getattr(self, name)
            low_high = getattr(self, f"{name}_bounds")
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{owner}: {name} must be a number > 0; got {value!r}")
            try:
                low, high = (float(b) for b in low_high)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{owner}: {name}_bounds must be a pair (low, high); "
                                 f"got {low_high!r}") from err
            if not 0 < low <= high:
                raise ValueError(f"{owner}: {name}_bounds must satisfy 0 < low <= high; "
                                 f"got {low_high!r}")
            if name in fitted_names and not low <= value <= high:
                raise ValueError(f"{owner}: {name}={value} lies outside {name}_bounds "
                                 f"{low_high!r}")
        if not (self.e0 == "lstsq" or isinstance(self.e0, dict)):
            raise ValueError(f"{owner}: e0 must be 'lstsq' or a dict {{element: eV}}; "
                             f"got {self.e0!r}")
        if isinstance(self.n_restarts, bool) or not isinstance(self.n_restarts, numbers.Integral) \
                or self.n_restarts < 0:
            raise ValueError(f"{owner}: n_restarts must be an int >= 0; got {self.n_restarts!r}")
        if self.search_frames is not None and (
                isinstance(self.search_frames, bool)
                or not isinstance(self.search_frames, numbers.Integral) or self.search_frames < 2):
            raise ValueError(f"{owner}: search_frames must be None or an int >= 2; "
                             f"got {self.search_frames!r}")
        if self.n_jobs == 0:
            raise ValueError(f"{owner}: n_jobs must not be 0 (None, -1 or a positive int)")
        if self.method not in _METHODS:
            raise ValueError(f"{owner}: method must be one of {_METHODS}; got {self.method!r}")
        if isinstance(self.exact_memory_limit, bool) \
                or not isinstance(self.exact_memory_limit, numbers.Real) \
                or not self.exact_memory_limit > 0:
            raise ValueError(f"{owner}: exact_memory_limit must be a number of GiB > 0; "
                             f"got {self.exact_memory_limit!r}")
        if not isinstance(self.signal_per_element, (bool, np.bool_)):
            raise TypeError(f"{owner}: signal_per_element must be True or False; "
                            f"got {self.signal_per_element!r}")
        if self.signal_per_element and self.method != "exact":
            raise ValueError(f"{owner}: signal_per_element=True needs method='exact' (the "
                             f"sparse model has one signal std); got method={self.method!r}")
        if self.two_body is not None:
            if not isinstance(self.two_body, TwoBody):
                raise TypeError(f"{owner}: two_body must be a kernelpot.TwoBody or None; "
                                f"got {type(self.two_body).__name__}")
            self.two_body.check()
            low, high = self.two_body.prior_std_bounds
            if "two_body" in fitted_names and not low <= self.two_body.prior_std <= high:
                raise ValueError(f"{owner}: two_body.prior_std={self.two_body.prior_std} lies "
                                 f"outside two_body.prior_std_bounds {(low, high)}")
            if self.method != "sparse":
                raise ValueError(f"{owner}: two_body needs method='sparse' (the exact model "
                                 f"has no two-body term); got method={self.method!r}")
        if self.method == "exact" and self.incremental:
            raise ValueError(f"{owner}: incremental=True needs method='sparse' (the exact "
                             "model is refitted, not updated)")
        return check_verbose(self.verbose, owner)

    def _fitted_names(self) -> set:
        """Hyperparameters the likelihood fits, from ``optimize``."""
        if isinstance(self.optimize, (bool, np.bool_)):
            return set(_HYPERPARAMETERS) if self.optimize else set()
        if isinstance(self.optimize, str) or not hasattr(self.optimize, "__iter__"):
            raise TypeError(f"{type(self).__name__}: optimize must be True, False or a list of "
                            f"names from {_HYPERPARAMETERS}; got {self.optimize!r}")
        names = set(self.optimize)
        unknown = names - set(_HYPERPARAMETERS)
        if unknown:
            raise ValueError(f"{type(self).__name__}: optimize names unknown hyperparameters "
                             f"{sorted(unknown)}; choose from {_HYPERPARAMETERS}")
        return names

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit the model to structures with reference energies and/or forces.

        Parameters
        ----------
        X : list of ase.Atoms
            Training structures with labels from ``get_potential_energy()`` and
            ``get_forces()`` (a SinglePointCalculator, as ``ase.io.read`` gives).
            A structure lacking one of them trains on the other.
        y : None
            Present for scikit-learn; labels come from the structures.

        Returns
        -------
        self : SparseGPPotential
        """
        owner = type(self).__name__
        if y is not None:
            raise TypeError(f"{owner}.fit: labels come from the structures; y must be None "
                            f"(got {type(y).__name__})")
        verbose = self._check_params()
        start_time = time.perf_counter()
        frames = check_frames(X, f"{owner}.fit")
        labels = read_labels(frames, f"{owner}.fit")
        rng = check_random_state(self.random_state)
        species = np.unique(np.concatenate([a.numbers for a in frames])).astype(np.int64)
        symbols = [chemical_symbols[z] for z in species]
        descriptor = clone(self.descriptor) if self.descriptor is not None else SOAP(
            symbols, r_cut=4.0, n_max=6, l_max=4, sigma=0.4)
        kernel = clone(self.kernel) if self.kernel is not None else NormalizedDotProduct(2)
        kernel.check()
        species_index = [np.searchsorted(species, a.numbers) for a in frames]
        counts_per_frame = np.stack([np.bincount(idx, minlength=len(species))
                                     for idx in species_index])
        e0 = self._reference_energies(counts_per_frame, labels.energies, species)
        method = self._resolve_method(frames, labels, descriptor)
        if method == "exact":
            return self._fit_exact(frames, labels, descriptor, kernel, species, species_index,
                                   counts_per_frame, e0, rng, verbose, start_time)
        self.method_ = "sparse"
        self._exact = None
        pair = clone(self.two_body) if self.two_body is not None else None

        # pass 1: features only, for the choice of inducing environments
        features = self._map(descriptor.create, frames, verbose, "features")
        all_features = np.concatenate(features)
        all_index = np.concatenate(species_index)
        counts = np.bincount(all_index, minlength=len(species))
        n_select = resolve_n_sparse(self.n_sparse, species, counts, DEFAULT_SPARSE_CAP)
        inducing = []
        for s in range(len(species)):
            pool = all_features[all_index == s]
            chosen = select_inducing(pool, int(n_select[s]), self.sparse_method, rng)
            z = np.array(pool[chosen])
            z.setflags(write=False)  # fixed from here on; kernels may cache derived data
            inducing.append(z)
        del features, all_features
        n_inducing = {symbols[s]: len(z) for s, z in enumerate(inducing)}
        logger.info("%s: %d structures, inducing environments per element %s (of %s)", owner,
                    len(frames), n_inducing, dict(zip(symbols, counts.tolist(), strict=True)))

        # pass 2: design rows, structure by structure, into one preallocated matrix
        has_energy = labels.has_energy
        has_forces = np.array([f is not None for f in labels.forces])
        n_atoms = np.array([len(a) for a in frames])
        n_E = int(has_energy.sum())
        n_F = int(3 * n_atoms[has_forces].sum())
        n_obs = n_E + n_F
        n_pair = pair.n_columns(len(species)) if pair is not None else 0
        M = int(sum(len(z) for z in inducing)) + n_pair
        pair_columns = np.arange(M - n_pair, M)  # after the inducing environments
        energy_row = np.cumsum(has_energy) - 1
        force_start = n_E + 3 * np.concatenate([[0], np.cumsum(n_atoms * has_forces)])
        y_E = labels.energies[has_energy] - counts_per_frame[has_energy] @ e0
        y_F = np.concatenate([f.ravel() for f in labels.forces if f is not None]) if n_F \
            else np.zeros(0)
        fitted_names = self._fitted_names()
        search_kernel = "kernel" in fitted_names and kernel.n_theta > 0
        if search_kernel and self.search_frames is not None \
                and int(self.search_frames) < len(frames):
            kernel, subset_params = self._search_on_subset(frames, kernel, rng)
            extra_starts = [subset_params]
            search_kernel = False
        else:
            extra_starts = []
        cached = None
        if self.incremental:
            cached = self._map(descriptor.compute, frames, verbose, "descriptors")
        elif search_kernel:
            # the kernel search rebuilds the design several times: keep the descriptors
            # when they fit in memory, recompute them otherwise
            sizes = [descriptor.compute(frames[0]).gradients.nbytes]
            if sizes[0] * len(frames) < _DESCRIPTOR_CACHE_BYTES:
                cached = self._map(descriptor.compute, frames, verbose, "descriptors")

        def rows_of(k, kernel, theta_gradient=False):
            result = cached[k] if cached is not None else descriptor.compute(frames[k])
            rows = gp.design_rows(result, species_index[k], inducing, kernel,
                                  energy=bool(has_energy[k]), forces=bool(has_forces[k]),
                                  theta_gradient=theta_gradient, n_columns=M)
            return k, _with_two_body(rows, pair, frames[k], species_index[k], len(species),
                                     pair_columns)

        def assemble(kernel, keep_basis=False, keep_gram=False):
            """The whitened design, the factor of k_mm, its jitter (relative, absolute),
            the likelihood's statistics and, with ``keep_gram``, the force rows' Gram
            matrix."""
            design = np.empty((n_obs + M, M))
            logger.info("%s: design matrix %d x %d (%.0f MiB)", owner, n_obs, M,
                        design.nbytes / 2**20)
            for k, rows in self._imap(lambda k: rows_of(k, kernel), range(len(frames)),
                                      verbose, "design rows"):
                if has_energy[k]:
                    design[energy_row[k]] = rows.energy
                if has_forces[k]:
                    design[force_start[k]:force_start[k] + 3 * n_atoms[k]] = rows.forces
            # whiten the design: K_w = K L⁻ᵀ
            L_mm, jitter, jitter_abs = _inducing_factor(inducing, kernel, pair, len(species))
            block = design[:n_obs].T  # F-contiguous view: LAPACK solves in place
            solved = sla.solve_triangular(L_mm, block, lower=True, overwrite_b=True,
                                          check_finite=False)
            if not np.shares_memory(solved, design):
                design[:n_obs] = solved.T
            Kw_F = design[n_E:n_obs]
            gram = Kw_F.T @ Kw_F
            stats = gp.statistics_from_force_gram(
                gram.copy() if keep_gram else gram, Kw_F.T @ y_F, float(y_F @ y_F), n_F,
                design[:n_E], n_atoms[has_energy].astype(float), y_E, keep_basis=keep_basis)
            return design, L_mm, (jitter, jitter_abs), stats, gram if keep_gram else None

        def kernel_gradient(kernel, design, L_mm, jitter, stats, inner):
            """∂ log p / ∂ kernel.theta at the noise levels ``inner``, one more pass."""
            gradient = gp.KernelThetaGradient(inner, stats, L_mm, kernel.n_theta)
            var_E, var_F = np.exp(2 * inner[1]), np.exp(2 * inner[2])
            for k, rows in self._imap(lambda k: rows_of(k, kernel, True), range(len(frames)),
                                      verbose, "design derivatives"):
                if has_energy[k]:
                    r = energy_row[k]
                    gradient.add_rows(rows.d_energy[None], design[r:r + 1], y_E[r:r + 1],
                                      np.array([var_E * n_atoms[k]]))
                if has_forces[k]:
                    start = force_start[k]
                    stop = start + 3 * n_atoms[k]
                    gradient.add_rows(rows.d_forces, design[start:stop],
                                      y_F[start - n_E:stop - n_E], np.full(stop - start, var_F))
            d_kmm = np.zeros((M, M, kernel.n_theta))
            d_kmm[:M - n_pair, :M - n_pair] = gp.inducing_kernel_gradient(inducing, kernel)
            # the jitter is relative to the mean diagonal of k_mm's GP block, which θ may
            # change (and the two-body block has the same absolute jitter)
            diagonal = np.einsum("iit->t", d_kmm) / (M - n_pair)
            d_kmm[np.arange(M), np.arange(M)] += jitter * diagonal
            return gradient.gradient(d_kmm)

        log_params = np.log([self.signal_std, self.energy_noise, self.force_noise])
        if search_kernel:
            seed = int(rng.randint(2**31 - 1))
            inner_free = [name in fitted_names and informed for name, informed in
                          zip(_HYPERPARAMETERS[:3], (True, n_E > 0, n_F > 0), strict=True)]
            best = {"value": np.inf, "theta": kernel.theta, "inner": log_params}

            def negative_profile(theta):
                # the profile likelihood max over (σ, σ_E, σ_F); by the envelope theorem
                # its gradient is the partial derivative at the inner optimum
                trial = kernel.clone_with_theta(theta)
                design, L_mm, (jitter, _), stats, _ = assemble(trial, keep_basis=True)
                inner = log_params
                if any(inner_free):
                    inner = self._optimize(stats, best["inner"], np.random.RandomState(seed),
                                           inner_free)
                value = gp.log_marginal_likelihood(inner, stats)
                logger.info("%s: kernel %s = %s: log marginal likelihood %.2f", owner,
                            kernel.theta_names, np.exp(theta), value)
                if not np.isfinite(value):
                    return 1e25, np.zeros_like(theta)
                if -value < best["value"]:
                    best.update(value=-value, theta=np.array(theta), inner=inner)
                gradient = kernel_gradient(trial, design, L_mm, jitter, stats, inner)
                return -value, -gradient

            search = minimize(negative_profile, kernel.theta, jac=True, method="L-BFGS-B",
                              bounds=kernel.bounds,
                              options={"maxfun": _KERNEL_SEARCH_EVALUATIONS, "ftol": 1e-7})
            logger.info("%s: kernel search: %s after %d evaluations", owner, search.message,
                        search.nfev)
            kernel = kernel.clone_with_theta(best["theta"])
            log_params = best["inner"]
        search_two_body = pair is not None and "two_body" in fitted_names
        design, L_mm, (jitter, jitter_abs), stats, gram = assemble(kernel,
                                                                   keep_gram=search_two_body)
        # a noise without observations has no information: keep it where it is
        free = [name in fitted_names and informed for name, informed in
                zip(_HYPERPARAMETERS[:3], (True, n_E > 0, n_F > 0), strict=True)]

        if search_two_body:
            prior_std, log_params, stats = search_prior_std(
                design, gram, n_E, n_pair, pair, n_atoms[has_energy].astype(float), y_E, y_F,
                log_params, free, stats, jitter_abs,
                lambda stats, start: self._optimize(stats, start, rng, free, restarts=0),
                self.signal_std_bounds, owner)
            del gram
            logger.info("%s: two-body prior_std %.4g (likelihood)", owner, prior_std)
            # k_mm is block diagonal: only the pair block of its factor and the pair
            # columns of the whitened design change (same absolute jitter)
            old, pair = float(pair.prior_std), clone(pair).set_params(prior_std=prior_std)
            design[:n_obs, M - n_pair:] *= (whitened_pair_scale(prior_std, jitter_abs)
                                            / whitened_pair_scale(old, jitter_abs))
            L_mm[M - n_pair:, M - n_pair:] = pair_factor(prior_std, jitter_abs) * np.eye(n_pair)
        results_cache, cached = cached, None
        if any(free):
            log_params = self._optimize(stats, log_params, rng, free, extra_starts)
        lml = gp.log_marginal_likelihood(log_params, stats)
        given = (float(self.signal_std), float(self.energy_noise), float(self.force_noise))
        # keep given values exactly where nothing was fitted (exp(log(x)) != x in floats)
        sigma, energy_noise, force_noise = (float(np.exp(t)) if is_free else g for t, g, is_free
                                            in zip(log_params, given, free, strict=True))
        if free[2] and np.isclose(force_noise, self.force_noise_bounds[1]):
            warnings.warn(f"{owner}: the fitted force noise sits at its upper bound "
                          f"{force_noise:.3g} eV/Å: the model is ignoring the forces (too few "
                          "inducing points, or wrong labels?)", ConvergenceWarning, stacklevel=2)
        noise_std = np.concatenate([energy_noise * np.sqrt(n_atoms[has_energy]),
                                    np.full(n_F, force_noise)])
        y_all = np.concatenate([y_E, y_F])
        state = None
        if self.incremental:
            Kw = design[:n_obs].copy()
            R, b = _incremental.factor(Kw, noise_std, y_all, sigma)
            state = _incremental.TrainingState(
                Kw=Kw, y=y_all, noise_std=noise_std,
                is_energy=np.arange(n_obs) < n_E,
                n_atoms_row=np.concatenate([n_atoms[has_energy], np.ones(n_F, dtype=int)]),
                L_mm=L_mm.copy(), R=R, b=b,
                frames=[_labelled_copy(a, labels.energies[k], labels.forces[k])
                        for k, a in enumerate(frames)],
                results=results_cache, species_index=species_index,
                energy_row=[int(energy_row[k]) if has_energy[k] else -1
                            for k in range(len(frames))],
                force_row=[int(force_start[k]) if has_forces[k] else -1
                           for k in range(len(frames))])
        posterior = gp.solve_posterior(design, n_obs, L_mm, noise_std, y_all, sigma)
        del design

        self.descriptor_ = descriptor
        self.kernel_ = kernel
        self.two_body_ = pair
        self._pair_columns = pair_columns if pair is not None else None
        self.species_ = species
        self.e0_ = e0
        self.inducing_ = inducing
        self.n_inducing_ = n_inducing
        self.alpha_ = posterior.weights
        self.signal_std_ = float(sigma)
        self.energy_noise_ = float(energy_noise)
        self.force_noise_ = float(force_noise)
        self.log_marginal_likelihood_value_ = float(lml)
        self.std_scale_ = None  # a refit needs a new calibrate()
        self.interval_scores_ = None
        self.jitter_ = float(jitter)
        self._columns = gp.inducing_columns(inducing)
        self._jitter_abs = float(jitter_abs)
        self._state = state
        self._posterior = posterior
        self._stats = stats
        logger.info("%s: fitted in %.1f s; σ = %.3g eV, σ_E = %.3g eV/atom, σ_F = %.3g eV/Å, "
                    "log marginal likelihood %.1f", owner, time.perf_counter() - start_time,
                    sigma, energy_noise, force_noise, lml)
        return self

    def _resolve_method(self, frames, labels, descriptor) -> str:
        """"sparse" or "exact"; "auto" is exact while its peak memory fits the limit."""
        owner = type(self).__name__
        if self.method != "auto":
            return self.method
        n_atoms = np.array([len(a) for a in frames])
        has_forces = np.array([f is not None for f in labels.forces])
        n_obs = int(labels.has_energy.sum() + 3 * n_atoms[has_forces].sum())
        # Jacobian rows: estimated from the first structure's pairs per atom
        first = descriptor.compute(frames[0])
        rows = 3 * len(first.pairs) / len(frames[0]) * n_atoms[has_forces].sum()
        need = exact.memory_estimate(n_obs, int(rows), first.n_features) / 2**30
        method = "exact" if need <= float(self.exact_memory_limit) else "sparse"
        logger.info("%s: method='auto' chose %r: the exact model needs ~%.2f GiB for %d "
                    "observations (limit %.2f GiB)", owner, method, need, n_obs,
                    float(self.exact_memory_limit))
        return method

    def _fit_exact(self, frames, labels, descriptor, kernel, species, species_index,
                   counts_per_frame, e0, rng, verbose, start_time):
        """Fit the exact energy-and-force GP (``method="exact"``)."""
        owner = type(self).__name__
        fitted_names = self._fitted_names()
        if "kernel" in fitted_names and kernel.n_theta and self.optimize is not True:
            raise ValueError(f"{owner}: method='exact' keeps the kernel's hyperparameters as "
                             "given; remove 'kernel' from optimize")
        if kernel.n_theta:
            logger.info("%s: method='exact' keeps the kernel's own hyperparameters %s as given",
                        owner, dict(zip(kernel.theta_names, np.exp(kernel.theta).tolist(),
                                        strict=True)))
        has_energy = labels.has_energy
        has_forces = np.array([f is not None for f in labels.forces])
        results = self._map(descriptor.compute, frames, verbose, "descriptors")
        obs = exact.build_observations(results, species_index, len(species), has_energy,
                                       has_forces)
        del results
        n_signal = len(species) if self.signal_per_element else 1
        logger.info("%s: exact GP on %d energies and %d force components (%d × %.0f MiB of "
                    "covariance)", owner, obs.n_energy, obs.n_force, n_signal,
                    obs.n_obs**2 * 8 / 2**20)
        tic = time.perf_counter()
        K0 = exact.prior_covariance(obs, kernel, per_element=self.signal_per_element)
        logger.info("%s: covariance assembled in %.1f s", owner, time.perf_counter() - tic)
        y = np.concatenate(
            [labels.energies[has_energy] - counts_per_frame[has_energy] @ e0]
            + [f.ravel() for f in labels.forces if f is not None])
        given = [float(self.signal_std)] * n_signal + [float(self.energy_noise),
                                                       float(self.force_noise)]
        log_params = np.log(given)
        free = [name in fitted_names and informed for name, informed in
                zip(["signal_std"] * n_signal + list(_HYPERPARAMETERS[1:3]),
                    [True] * n_signal + [obs.n_energy > 0, obs.n_force > 0], strict=True)]
        if any(free):
            log_params = self._optimize(
                lambda t: exact.log_marginal_likelihood(t, K0, y, obs, eval_gradient=True),
                log_params, rng, free)
        values = [float(np.exp(t)) if is_free else g
                  for t, g, is_free in zip(log_params, given, free, strict=True)]
        log_params = np.log(values)
        energy_noise, force_noise = values[-2:]
        symbols = [chemical_symbols[z] for z in species]
        sigma = dict(zip(symbols, values[:-2], strict=True)) if self.signal_per_element \
            else values[0]
        if free[-1] and np.isclose(force_noise, self.force_noise_bounds[1]):
            warnings.warn(f"{owner}: the fitted force noise sits at its upper bound "
                          f"{force_noise:.3g} eV/Å: the model is ignoring the forces",
                          ConvergenceWarning, stacklevel=3)
        # σ² as _signal_variances gives it after loading: bit-for-bit the same model
        self._set_exact_posterior(obs, K0, y, log_params, np.array(values[:-2])**2)
        self._exact_structures = exact.structure_arrays(frames, has_energy, has_forces)
        self.descriptor_ = descriptor
        self.kernel_ = kernel
        self.species_ = species
        self.e0_ = e0
        self.method_ = "exact"
        self.signal_std_, self.energy_noise_, self.force_noise_ = sigma, energy_noise, force_noise
        self.inducing_ = self._exact.mean.features
        self.n_inducing_ = {symbols[s]: len(x) for s, x in enumerate(self.inducing_)}
        self.std_scale_ = None
        self.interval_scores_ = None
        self.jitter_ = 0.0
        self._jitter_abs = 0.0
        self.two_body_ = None
        self._pair_columns = None
        self._state = None
        self._posterior = None
        self._stats = None
        logger.info("%s: exact GP fitted in %.1f s; σ = %s eV, σ_E = %.3g eV/atom, "
                    "σ_F = %.3g eV/Å, log marginal likelihood %.1f", owner,
                    time.perf_counter() - start_time, format_signal_std(sigma), energy_noise,
                    force_noise,
                    self.log_marginal_likelihood_value_)
        return self

    def _set_exact_posterior(self, obs, K0, y, log_params, signal_var):
        """Factor ``K_y``, solve for the weights and fold them per environment.

        ``K0`` is the prior covariance or its per-element parts; ``signal_var`` is
        ``σ²``, one value or one per element.
        """
        L = exact.factor(K0, log_params, obs)
        weights = sla.cho_solve((L, True), y, check_finite=False)
        self._exact = exact.ExactPosterior(obs, L, weights, y,
                                           exact.mean_weights(obs, weights, signal_var))
        self._exact_K0 = K0
        self.alpha_ = weights
        self.log_marginal_likelihood_value_ = exact.log_density(L, y, weights)

    def _reference_energies(self, counts, energies, species) -> np.ndarray:
        """e0 per element; ``counts`` (n_structures, n_species) are the compositions."""
        owner = type(self).__name__
        if isinstance(self.e0, dict):
            from kernelpot._validation import species_to_numbers

            given = {}
            for key, value in self.e0.items():
                z = int(species_to_numbers([key], f"{owner}: e0")[0])
                given[z] = float(value)
            missing = [chemical_symbols[z] for z in species if z not in given]
            if missing:
                raise ValueError(f"{owner}: e0 has no reference energy for {missing}")
            return np.array([given[z] for z in species])
        mask = ~np.isnan(energies)
        if not mask.any():
            return np.zeros(len(species))
        solution, *_ = np.linalg.lstsq(counts[mask].astype(float), energies[mask], rcond=None)
        return solution

    def _search_on_subset(self, frames, kernel, rng):
        """Kernel hyperparameters from a fit on ``search_frames`` random structures.

        Returns the fitted kernel (bounds kept; the full fit does not search it
        again) and the subset's fitted ``(log σ, log σ_E, log σ_F)``, one more start
        for the full fit's optimisation.
        """
        chosen = np.sort(rng.choice(len(frames), size=int(self.search_frames), replace=False))
        logger.info("%s: fitting the kernel's hyperparameters on %d of %d structures",
                    type(self).__name__, len(chosen), len(frames))
        sub = clone(self).set_params(kernel=kernel, search_frames=None, incremental=False,
                                     random_state=rng.randint(2**31 - 1))
        sub.fit([frames[k] for k in chosen])
        start = np.log([sub.signal_std_, sub.energy_noise_, sub.force_noise_])
        given = np.log([self.signal_std, self.energy_noise, self.force_noise])
        names = self._fitted_names()
        start = np.where([n in names for n in _HYPERPARAMETERS[:3]], start, given)
        return sub.kernel_, start

    def _optimize(self, stats, log_params, rng, free, extra_starts=(), restarts=None) \
            -> np.ndarray:
        """Maximise the likelihood over the ``free`` of ``log (σ, σ_E, σ_F)``.

        ``σ`` may be several values, one per element (exact model).

        ``stats`` is a :class:`kernelpot.gp.WhitenedStatistics` (sparse model) or a
        callable ``theta -> (log p, gradient)`` (exact model).
        """
        likelihood = stats if callable(stats) else (
            lambda theta: gp.log_marginal_likelihood(theta, stats, eval_gradient=True))
        n_signal = len(log_params) - 2  # one signal std, or one per element
        bounds = np.log(np.array([self.signal_std_bounds] * n_signal
                                 + [self.energy_noise_bounds, self.force_noise_bounds],
                                 dtype=float))
        for k, is_free in enumerate(free):
            if not is_free:
                bounds[k] = log_params[k]

        def objective(theta):
            value, grad = likelihood(theta)
            if not np.isfinite(value):
                return 1e25, np.zeros_like(theta)
            return -value, -grad

        starts = [np.clip(start, bounds[:, 0], bounds[:, 1])
                  for start in (log_params, *extra_starts)]
        for _ in range(int(self.n_restarts if restarts is None else restarts)):
            starts.append(rng.uniform(bounds[:, 0], bounds[:, 1]))
        best, best_value = starts[0], np.inf
        for start in starts:
            result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
            if not result.success:
                logger.debug("L-BFGS-B from %s: %s", start, result.message)
            if result.fun < best_value:
                best, best_value = result.x, result.fun
        if not np.isfinite(best_value) or best_value >= 1e25:
            warnings.warn("SparseGPPotential: the marginal likelihood could not be evaluated "
                          "at any start; keeping the given hyperparameters", ConvergenceWarning,
                          stacklevel=3)
            return log_params
        return best

    # -- parallel helpers --------------------------------------------------------------
    def _map(self, fn, items, verbose, desc):
        return [result for result in self._imap(fn, items, verbose, desc)]

    def _imap(self, fn, items, verbose, desc):
        items = list(items)
        bar = tqdm(total=len(items), desc=desc, disable=verbose < 1, leave=False)
        try:
            if self.n_jobs in (None, 1):
                for item in items:
                    yield fn(item)
                    bar.update()
            else:
                for result in Parallel(n_jobs=self.n_jobs, return_as="generator")(
                        delayed(fn)(item) for item in items):
                    yield result
                    bar.update()
        finally:
            bar.close()

    # -- prediction ----------------------------------------------------------------------
    def _species_index(self, atoms, owner):
        unknown = np.setdiff1d(atoms.numbers, self.species_)
        if unknown.size:
            raise ValueError(
                f"{owner}: the structure contains elements the model was not trained on: "
                f"{[chemical_symbols[z] for z in unknown]} (model: "
                f"{[chemical_symbols[z] for z in self.species_]})")
        return np.searchsorted(self.species_, atoms.numbers)

    def predict_structure(self, atoms, forces=True, variance=False, stress=False) \
            -> Prediction:
        """Predict one structure's energy, forces and their variance terms.

        Parameters
        ----------
        atoms : ase.Atoms
        forces : bool, default=True
        variance : bool or "energy", default=False
            Also compute the epistemic variance terms: ``True`` of the energy and
            (with ``forces``) of every force component; ``"energy"`` of the energy
            only, which needs no force design rows and costs little more than the
            mean (the force variances cost ``O(n_pairs M D)``, several times the mean).
        stress : bool, default=False
            Also compute the stress of the predicted energy (see
            :meth:`predict_stress`), from the same descriptor pass.

        Returns
        -------
        Prediction
        """
        check_is_fitted(self)
        self._check_variance(variance)
        if not isinstance(stress, (bool, np.bool_)):
            raise TypeError(f"stress must be True or False; got {stress!r}")
        return self._finish_variances(
            [self._predict_parts(atoms, forces, variance, bool(stress))])[0]

    def _two_body_coefficients(self) -> np.ndarray:
        """Coefficients ``w`` of the two-body term's basis (its pair energies in eV)."""
        return float(self.two_body_.prior_std)**2 * self.alpha_[self._pair_columns]

    def _signal_variances(self) -> np.ndarray:
        """``σ_s²`` per element, in ``species_`` order (all equal with one ``σ``)."""
        if isinstance(self.signal_std_, dict):
            return np.array([self.signal_std_[chemical_symbols[z]] for z in self.species_])**2
        return np.full(len(self.species_), float(self.signal_std_)**2)

    @staticmethod
    def _check_variance(variance):
        if variance is not True and variance is not False and variance != "energy":
            raise ValueError(f"variance must be True, False or 'energy'; got {variance!r}")

    def _check_stress_cell(self, atoms, owner):
        """Stress needs a cell periodic along all three axes, seen as such."""
        if not np.all(atoms.pbc) or self.descriptor_.periodic is False:
            raise ValueError(
                f"{owner}: stress needs a structure periodic along all three axes "
                f"(pbc={atoms.pbc.tolist()}, descriptor periodic="
                f"{self.descriptor_.periodic!r})")
        volume = abs(float(np.linalg.det(np.asarray(atoms.cell))))
        if not volume > 0:
            raise ValueError(f"{owner}: stress needs a cell of non-zero volume")
        return volume

    def _predict_parts(self, atoms, forces, variance, stress=False):
        """Mean prediction, plus design rows and prior variances when variance is asked.

        The exact model returns a finished :class:`Prediction` instead.
        """
        owner = f"{type(self).__name__}.predict"
        index = self._species_index(atoms, owner)
        volume = self._check_stress_cell(atoms, owner) if stress else None
        if getattr(self, "_exact", None) is not None:
            return self._predict_exact(atoms, index, forces, variance, volume)
        force_variance = forces and variance is True
        if forces or force_variance or stress:
            result = self.descriptor_.compute(atoms, strain=bool(stress))
        else:  # energies need no Jacobian
            result = _features_only(self.descriptor_.create(atoms))
        local, d_local = gp.local_energies(result.features, index, self.inducing_,
                                           self.kernel_, self.alpha_,
                                           gradients=forces or stress, columns=self._columns)
        local = local + self.e0_[index]
        force_values = gp.forces_from_local_gradients(result, d_local) if forces else None
        strain = gp.strain_derivative_from_local_gradients(result, d_local) if stress else None
        pair = getattr(self, "two_body_", None)
        if pair is not None:
            pair_parts = pair.predict(atoms, index, len(self.species_),
                                      self._two_body_coefficients(), forces, strain=stress)
            local = local + pair_parts[0]
            if forces:
                force_values = force_values + pair_parts[1]
            if stress:
                strain = strain + pair_parts[2]
        energy = float(local.sum())
        stress_values = gp.stress_from_strain_derivative(strain, volume) if stress else None
        if not variance:
            return energy, force_values, None, None, local, stress_values
        rows = gp.design_rows(result, index, self.inducing_, self.kernel_, energy=True,
                              forces=force_variance, columns=self._columns,
                              n_columns=self.alpha_.size)
        prior_e, prior_f = gp.prior_variances(result, index, len(self.species_), self.kernel_,
                                              energy=True, forces=force_variance)
        if pair is not None:
            columns = self._pair_columns
            rows = _with_two_body(rows, pair, atoms, index, len(self.species_), columns)
            # the two-body term's prior variance, σ² prior_std² |basis row|², is spanned
            # exactly by its coefficients: it adds the same to prior and projection
            scale2 = float(pair.prior_std)**2
            prior_e += float(rows.energy[columns] @ rows.energy[columns]) / scale2
            if force_variance:
                tail = rows.forces[:, columns]
                prior_f = prior_f + (np.einsum("rk,rk->r", tail, tail) / scale2).reshape(-1, 3)
        if not force_variance:
            return (energy, force_values, rows.energy[None, :], np.array([prior_e]), local,
                    stress_values)
        stacked = np.vstack([rows.energy, rows.forces])
        prior = np.concatenate([[prior_e], prior_f.ravel()])
        return energy, force_values, stacked, prior, local, stress_values

    def _predict_exact(self, atoms, index, forces, variance, volume=None):
        """The exact model's mean; with ``variance``, an :class:`_ExactPending` whose
        variances :meth:`_finish_variances` computes for many structures at once.
        ``volume`` (of a periodic cell) asks for the stress too."""
        force_variance = forces and variance is True
        stress = volume is not None
        result = self.descriptor_.compute(atoms, strain=stress) if forces or stress \
            else _features_only(self.descriptor_.create(atoms))
        mean = exact.predict_mean(result, index, self._exact.mean, self.kernel_,
                                  forces=forces, strain=stress)
        local, force_values = mean[0] + self.e0_[index], mean[1] if forces else None
        stress_values = gp.stress_from_strain_derivative(mean[2], volume) if stress else None
        energy = float(local.sum())
        if not variance:
            return Prediction(energy, force_values, None, None, None, None, local,
                              stress_values)
        return _ExactPending(energy, force_values, local, result, index, force_variance,
                             stress_values)

    def _finish_exact(self, pending) -> list[Prediction]:
        """Exact posterior variances of the pending structures, in one solve."""
        if not pending:
            return []
        post = self._exact
        force_variance = pending[0].force_variance
        variances = exact.predict_variances(
            [p.result for p in pending], [p.index for p in pending], post.observations,
            post.L, self._signal_variances(), self.kernel_, forces=force_variance)
        out = []
        for p, (var_e, var_f) in zip(pending, variances, strict=True):
            # an exact posterior has no projection term: it is all in the first
            zeros = np.zeros_like(var_f) if var_f is not None else None
            out.append(Prediction(p.energy, p.forces, var_e, 0.0, var_f, zeros, p.local,
                                  p.stress))
        return out

    def _finish_variances(self, parts) -> list[Prediction]:
        """Turn per-structure parts into Predictions, solving all variance rows at once.

        One triangular solve over the rows of many structures reads the ``M × M``
        factors once instead of once per structure.
        """
        pending = [p for p in parts if isinstance(p, _ExactPending)]
        finished = iter(self._finish_exact(pending))
        with_rows = [p for p in parts if not isinstance(p, (Prediction, _ExactPending))
                     and p[2] is not None]
        if with_rows:
            rows = np.vstack([p[2] for p in with_rows])
            post, proj = gp.variance_terms(rows, self._posterior, self.signal_std_)
            sigma2 = self.signal_std_**2
            projection = gp.clip_variance(
                sigma2 * np.concatenate([p[3] for p in with_rows]) - proj, "variance")
        out, offset = [], 0
        for part in parts:
            if isinstance(part, Prediction):  # no variance asked of the exact model
                out.append(part)
                continue
            if isinstance(part, _ExactPending):
                out.append(next(finished))
                continue
            energy, force_values, stacked, _, local, stress = part
            if stacked is None:
                out.append(Prediction(energy, force_values, None, None, None, None, local,
                                      stress))
                continue
            n_rows = len(stacked)
            p_post, p_proj = post[offset:offset + n_rows], projection[offset:offset + n_rows]
            offset += n_rows
            f_post = p_post[1:].reshape(-1, 3) if n_rows > 1 else None
            f_proj = p_proj[1:].reshape(-1, 3) if n_rows > 1 else None
            out.append(Prediction(energy, force_values, float(p_post[0]), float(p_proj[0]),
                                  f_post, f_proj, local, stress))
        return out

    def _predict_many(self, X, forces, variance, stress=False):
        frames = check_frames(X, f"{type(self).__name__}.predict")
        check_is_fitted(self)
        verbose = check_verbose(self.verbose, type(self).__name__)
        out, batch, batch_rows = [], [], 0
        for parts in self._imap(
                lambda atoms: self._predict_parts(atoms, forces, variance, stress),
                frames, verbose, "predict"):
            batch.append(parts)
            if isinstance(parts, _ExactPending):
                batch_rows += 1 + 3 * len(parts.local) * parts.force_variance
            elif not isinstance(parts, Prediction):
                batch_rows += 0 if parts[2] is None else len(parts[2])
            if batch_rows >= _VARIANCE_BATCH_ROWS:
                out.extend(self._finish_variances(batch))
                batch, batch_rows = [], 0
        out.extend(self._finish_variances(batch))
        return frames, out

    @staticmethod
    def _check_std_type(std_type):
        if std_type not in ("total", "epistemic"):
            raise ValueError(f"std_type must be 'total' or 'epistemic'; got {std_type!r}")

    def predict(self, X, return_std=False, std_type="total", return_interval=None):
        """Predict total energies.

        Parameters
        ----------
        X : list of ase.Atoms
        return_std : bool, default=False
        std_type : {"total", "epistemic"}, default="total"
            "total" adds the learned energy noise (``σ_E² N``) to the epistemic
            variance, as scikit-learn's GPR does with a WhiteKernel; "epistemic"
            is the model's own uncertainty alone.
        return_interval : float in (0, 1) or None, default=None
            Also return intervals of this nominal coverage: split-conformal ones
            (guaranteed coverage on structures exchangeable with the validation
            set) once :meth:`calibrate` has run, otherwise Gaussian ones from the
            total std, with a warning.

        Returns
        -------
        energies : ndarray of shape (n_structures,)
            eV.
        std : ndarray of shape (n_structures,)
            Only with ``return_std=True``; eV.
        interval : ndarray of shape (n_structures, 2)
            Only with ``return_interval``: lower and upper bounds, eV.
        """
        self._check_std_type(std_type)
        want_var = return_std or return_interval is not None
        if return_interval is not None:
            multiplier = self._interval_multiplier("energy", return_interval)
        frames, out = self._predict_many(X, forces=False, variance="energy" if want_var
                                         else False)
        energies = np.array([p.energy for p in out])
        if not want_var:
            return energies
        epistemic, total = self._energy_variances(frames, out)
        result = [energies]
        if return_std:
            result.append(np.sqrt(total if std_type == "total" else epistemic))
        if return_interval is not None:
            half = multiplier * np.sqrt(total)
            result.append(np.column_stack([energies - half, energies + half]))
        return tuple(result)

    def _energy_variances(self, frames, out):
        """Calibrated epistemic and total variances of the energies of Predictions."""
        epistemic = np.array([self.epistemic_variance("energy", p.energy_var_posterior,
                                                      p.energy_var_projection) for p in out])
        total = epistemic + self.noise_variance(
            "energy", self.energy_noise_**2 * np.array([len(a) for a in frames]))
        return epistemic, total

    def _force_variances(self, out):
        """Calibrated epistemic variances of the forces of Predictions, and the noise."""
        epistemic = [self.epistemic_variance("forces", p.forces_var_posterior,
                                             p.forces_var_projection) for p in out]
        return epistemic, self.noise_variance("forces", self.force_noise_**2)

    def predict_forces(self, X, return_std=False, std_type="total", return_interval=None):
        """Predict forces.

        Parameters
        ----------
        X : list of ase.Atoms
        return_std : bool, default=False
        std_type : {"total", "epistemic"}, default="total"
            "total" adds the learned force noise ``σ_F²`` (times ``d²`` after
            :meth:`calibrate`) to the epistemic variance.
        return_interval : float in (0, 1) or None, default=None
            Also return per-component intervals of this nominal coverage
            (split-conformal after :meth:`calibrate`, as in :meth:`predict`).

        Returns
        -------
        forces : list of ndarray of shape (n_atoms, 3)
            eV/Å.
        std : list of ndarray of shape (n_atoms, 3)
            Only with ``return_std=True``; eV/Å per component.
        interval : list of ndarray of shape (n_atoms, 3, 2)
            Only with ``return_interval``: lower and upper bound of every component.
        """
        self._check_std_type(std_type)
        want_var = return_std or return_interval is not None
        if return_interval is not None:
            multiplier = self._interval_multiplier("forces", return_interval)
        _, out = self._predict_many(X, forces=True, variance=want_var)
        forces = [p.forces for p in out]
        if not want_var:
            return forces
        epistemic, noise = self._force_variances(out)
        result = [forces]
        if return_std:
            result.append([np.sqrt(v + (noise if std_type == "total" else 0.0))
                           for v in epistemic])
        if return_interval is not None:
            halves = [multiplier * np.sqrt(v + noise) for v in epistemic]
            result.append([np.stack([f - h, f + h], axis=-1)
                           for f, h in zip(forces, halves, strict=True)])
        return tuple(result)

    def predict_stress(self, X):
        """Predict the stress of periodic structures.

        The analytic derivative of the predicted energy with respect to a homogeneous
        strain of the cell and positions (descriptor strain gradients, plus the
        two-body term when fitted): ``σ = (1/V) ∂E/∂ε``, symmetrised.

        Parameters
        ----------
        X : list of ase.Atoms
            Each periodic along all three axes.

        Returns
        -------
        ndarray of shape (n_structures, 6)
            ASE's convention: Voigt ``xx yy zz yz xz xy``, eV/Å³, positive under
            tension (``atoms.get_stress()``).

        Raises
        ------
        ValueError
            For a structure that is not periodic along all three axes (or a
            descriptor with ``periodic=False``), or a cell of zero volume.

        Notes
        -----
        The model is trained on energies and forces only, so the stress is what
        those determine: on mlearn Mo its error is several times that of a model
        trained on stresses (``benchmarks/RESULTS.md``). No stress uncertainty yet.
        """
        _, out = self._predict_many(X, forces=False, variance=False, stress=True)
        return np.array([p.stress for p in out]).reshape(-1, 6)

    def predict_energies_and_forces(self, X, return_std=False, std_type="total"):
        """Predict energies and forces (and their stds) in one pass over the structures.

        The same values as :meth:`predict` and :meth:`predict_forces` together, at
        the cost of one of them: descriptors, their Jacobians and the variance rows
        are computed once per structure.

        Parameters
        ----------
        X : list of ase.Atoms
        return_std : bool, default=False
        std_type : {"total", "epistemic"}, default="total"
            As in :meth:`predict` and :meth:`predict_forces`.

        Returns
        -------
        energies : ndarray of shape (n_structures,)
            eV.
        forces : list of ndarray of shape (n_atoms, 3)
            eV/Å.
        energy_std : ndarray of shape (n_structures,)
            Only with ``return_std=True``; eV.
        forces_std : list of ndarray of shape (n_atoms, 3)
            Only with ``return_std=True``; eV/Å per component.

        Examples
        --------
        >>> from kernelpot import SparseGPPotential, SOAP, load_ethanol
        >>> frames = load_ethanol()
        >>> model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, 4, 3, 0.4)).fit(frames[:5])
        >>> energies, forces, e_std, f_std = model.predict_energies_and_forces(
        ...     frames[5:7], return_std=True)
        >>> forces[0].shape, e_std.shape
        ((9, 3), (2,))
        """
        self._check_std_type(std_type)
        frames, out = self._predict_many(X, forces=True, variance=bool(return_std))
        energies = np.array([p.energy for p in out])
        forces = [p.forces for p in out]
        if not return_std:
            return energies, forces
        total = std_type == "total"
        e_epistemic, e_total = self._energy_variances(frames, out)
        f_epistemic, noise = self._force_variances(out)
        return (energies, forces, np.sqrt(e_total if total else e_epistemic),
                [np.sqrt(v + (noise if total else 0.0)) for v in f_epistemic])

    def std_scale(self, quantity) -> float:
        """The factor ``c`` of the calibrated epistemic std (:meth:`epistemic_variance`).

        1 unless :meth:`calibrate` was called and ``apply_calibration`` is True.
        """
        return self._calibration_factors(quantity)[0]

    def projection_weight(self, quantity) -> float:
        """The relative weight ``w`` of the projection term (see :meth:`epistemic_variance`)."""
        return self._calibration_factors(quantity)[1]

    def _calibration_factors(self, quantity):
        """``(c, w, p, v_ref)`` of ``quantity``; ``(1, 1, 1, 1)`` when not calibrated."""
        if quantity not in ("energy", "forces"):
            raise ValueError(f"quantity must be 'energy' or 'forces'; got {quantity!r}")
        factors = getattr(self, "std_scale_", None)
        if not self.apply_calibration or not factors:
            return 1.0, 1.0, 1.0, 1.0
        return (float(factors[quantity]), float(factors.get(f"{quantity}_projection", 1.0)),
                float(factors.get(f"{quantity}_exponent", 1.0)),
                float(factors.get(f"{quantity}_reference", 1.0)))

    def epistemic_variance(self, quantity, posterior, projection):
        """Calibrated epistemic variance ``c² v_ref (u / v_ref)^p``, ``u = v_post + w² v_proj``.

        Parameters
        ----------
        quantity : {"energy", "forces"}
        posterior, projection : float or ndarray
            The two variance terms of a :class:`Prediction` (eV², eV²/Å²).

        Returns
        -------
        float or ndarray
            ``c``, ``w``, ``p`` and ``v_ref`` are those :meth:`calibrate` fitted; before
            (or with ``apply_calibration=False``) ``c = w = p = 1``: the raw
            ``v_post + v_proj``.
        """
        c, w, p, v_ref = self._calibration_factors(quantity)
        u = posterior + w**2 * projection
        if p == 1.0:
            return c**2 * u
        return c**2 * v_ref * (np.maximum(u, 0.0) / v_ref) ** p

    def noise_variance(self, quantity, noise_var):
        """The learned noise's share of the calibrated total variance, ``d² noise_var``.

        ``d`` is the noise factor :meth:`calibrate` fitted (1 before, or with
        ``apply_calibration=False``); ``noise_var`` is ``σ_E² N`` or ``σ_F²``.
        """
        factors = getattr(self, "std_scale_", None)
        if not self.apply_calibration or not factors:
            return noise_var
        return float(factors.get(f"{quantity}_noise", 1.0)) ** 2 * noise_var

    def calibrate(self, X):
        """Calibrate the stds on validation structures: a scale, and conformal intervals.

        Parameters
        ----------
        X : list of ase.Atoms
            Labelled validation structures, not the training set.

        Returns
        -------
        self : SparseGPPotential
            With ``std_scale_``: per quantity (``"energy"``, ``"forces"``) a factor
            ``c`` (key ``quantity``), a projection weight ``w`` (``quantity_projection``),
            an exponent ``p`` (``quantity_exponent``), a reference variance ``v_ref``
            (``quantity_reference``) and a noise factor ``d`` (``quantity_noise``). The
            calibrated epistemic variance is ``c² v_ref (u / v_ref)^p`` with
            ``u = v_posterior + w² v_projection`` (:meth:`epistemic_variance`), and the
            total adds ``d²`` times the learned noise variance (:meth:`noise_variance`;
            ``force_noise_``/``energy_noise_`` themselves are unchanged). ``c``, ``w``,
            ``p`` and ``d`` maximise the Gaussian likelihood of the validation errors,
            structure by structure (energies) or component by component (forces);
            ``v_ref`` is the geometric mean of the raw ``v_posterior + v_projection``
            there. ``w = 1`` for an exact model (no projection term). Saved with the
            model and applied while ``apply_calibration`` is True to every std the
            model reports (``std_type="epistemic"`` and ``"total"``, the calculator's
            ``energy_std``/``forces_std``). Also
            ``interval_scores_ = {"energy": ..., "forces": ...}``: the sorted
            normalised scores ``|error| / total calibrated std`` that
            ``return_interval=`` of :meth:`predict` and :meth:`predict_forces`
            turns into split-conformal intervals.

        Notes
        -----
        The two variance terms get their own scale because, added raw, the projection
        term dominates and is several times too wide. The exponent ``p`` is a fitted
        map of the std: with ``p > 1`` large stds grow faster than small ones, which
        is what heavy tails of the z-scores usually mean (errors grow faster than the
        raw std), and it keeps the ranking of the stds. A Gaussian band of the
        calibrated std can still miss its nominal coverage in the tails. The
        intervals do not have that problem: the half-width for nominal coverage
        ``p`` is ``r_(k) × std``, with ``r_(k)`` the ``k = ⌈(n + 1) p⌉``-th smallest
        score. If ``X`` and new structures are exchangeable (for MD, frames far
        enough apart to be nearly independent), the interval holds the reference with
        probability at least ``p`` (:mod:`kernelpot.conformal`).
        Where the noise alone already explains the errors, ``c`` goes to its lower
        limit 1e-6 (logged).
        """
        owner = f"{type(self).__name__}.calibrate"
        check_is_fitted(self)
        frames = check_frames(X, owner)
        labels = read_labels(frames, owner)
        previous = getattr(self, "std_scale_", None)
        self.std_scale_ = None  # raw stds while fitting
        scores = {}
        try:
            factors = {"energy": 1.0, "forces": 1.0}
            with_forces = [k for k, f in enumerate(labels.forces) if f is not None]
            # one prediction pass: the force pass also gives the energy variance terms
            _, predicted = self._predict_many(frames, forces=bool(with_forces),
                                              variance=True if with_forces else "energy")
            if labels.has_energy.any():
                mask = labels.has_energy
                chosen = [frames[k] for k in np.flatnonzero(mask)]
                parts = [predicted[k] for k in np.flatnonzero(mask)]
                post = np.array([p.energy_var_posterior for p in parts])
                proj = np.array([p.energy_var_projection for p in parts])
                n_atoms = np.array([len(a) for a in chosen])
                errors = np.array([p.energy for p in parts]) - labels.energies[mask]
                noise = self.energy_noise_**2 * n_atoms
                fitted = _fit_variance_terms(errors, post, proj, noise, owner)
                factors.update(_calibration_entries("energy", fitted))
                scores["energy"] = (errors, post, proj, noise)
            if with_forces:
                parts = [predicted[k] for k in with_forces]
                errors = np.concatenate([(p.forces - labels.forces[k]).ravel()
                                         for p, k in zip(parts, with_forces, strict=True)])
                post = np.concatenate([p.forces_var_posterior.ravel() for p in parts])
                proj = np.concatenate([p.forces_var_projection.ravel() for p in parts])
                noise = np.full(post.size, self.force_noise_**2)
                fitted = _fit_variance_terms(errors, post, proj, noise, owner)
                factors.update(_calibration_entries("forces", fitted))
                scores["forces"] = (errors, post, proj, noise)
        except Exception:
            self.std_scale_ = previous
            raise
        self.std_scale_ = factors
        # normalised conformal scores against the calibrated total std
        self.interval_scores_ = {
            quantity: conformal.normalised_scores(
                errors, np.sqrt(self.epistemic_variance(quantity, post, proj)
                                + self.noise_variance(quantity, noise)))
            for quantity, (errors, post, proj, noise) in scores.items()}
        logger.info("%s: calibration %s; conformal scores from %s", owner, factors,
                    {k: len(v) for k, v in self.interval_scores_.items()})
        return self

    def _interval_multiplier(self, quantity, coverage) -> float:
        """Half-width of ``coverage`` intervals in units of the total std."""
        scores = (getattr(self, "interval_scores_", None) or {}).get(quantity)
        if scores is None:
            from scipy.stats import norm

            conformal.check_coverage(coverage)
            warnings.warn(f"{type(self).__name__}: no calibration scores for {quantity}; "
                          "the interval is the Gaussian one of the predicted std, without a "
                          "coverage guarantee (call calibrate() on validation structures)",
                          UserWarning, stacklevel=3)
            return float(norm.ppf(0.5 + coverage / 2))
        if not self.apply_calibration:
            raise ValueError("return_interval needs apply_calibration=True: the calibration "
                             "scores are relative to the calibrated std")
        return conformal.interval_quantile(scores, coverage, f"{quantity} values")

    def predict_local_energies(self, X):
        """Predict per-atom energies (reference energy included).

        Parameters
        ----------
        X : list of ase.Atoms

        Returns
        -------
        list of ndarray of shape (n_atoms,)
            eV; each sums to the structure's predicted energy.
        """
        check_is_fitted(self)
        frames = check_frames(X, f"{type(self).__name__}.predict_local_energies")
        out = []
        for atoms in frames:
            index = self._species_index(atoms, "predict_local_energies")
            if getattr(self, "_exact", None) is not None:
                local, _ = exact.predict_mean(_features_only(self.descriptor_.create(atoms)),
                                              index, self._exact.mean, self.kernel_,
                                              forces=False)
                out.append(local + self.e0_[index])
                continue
            local, _ = gp.local_energies(self.descriptor_.create(atoms), index, self.inducing_,
                                         self.kernel_, self.alpha_, columns=self._columns)
            if getattr(self, "two_body_", None) is not None:
                local = local + self.two_body_.predict(
                    atoms, index, len(self.species_), self._two_body_coefficients(),
                    forces=False)[0]
            out.append(local + self.e0_[index])
        return out

    def update(self, X, n_inducing=0, optimize=False):
        """Add labelled structures, and optionally inducing environments, without a refit.

        Parameters
        ----------
        X : list of ase.Atoms
            New structures with energies and/or forces.
        n_inducing : int or "all", default=0
            How many of the new structures' environments become inducing
            environments: those with the largest epistemic variance of their local
            energy, or all of them.
        optimize : bool, default=False
            Re-optimise the hyperparameters named by ``optimize`` on all data seen so
            far (an ``O(n M²)`` refactorisation); otherwise they stay fixed.

        Returns
        -------
        self : SparseGPPotential

        Raises
        ------
        ValueError
            If the model was not fitted with ``incremental=True``, or a structure holds
            an element the model does not know.

        Notes
        -----
        New observations update the factor of the posterior by a QR update of
        ``O(M² n_new)``; new inducing environments extend the factors by block
        Cholesky steps of ``O(n M m_new)`` (see :mod:`kernelpot._incremental`).
        Descriptors of earlier structures are kept, never recomputed. The reference
        energies ``e0_`` stay as fitted. The log marginal likelihood is recomputed
        for ``log_marginal_likelihood_value_``.
        """
        check_is_fitted(self)
        owner = f"{type(self).__name__}.update"
        if getattr(self, "method_", "sparse") == "exact":
            raise ValueError(f"{owner}: an exact model (method='exact') is not updated "
                             "in place; refit it on all structures")
        if getattr(self, "std_scale_", None):
            warnings.warn(f"{owner}: the std calibration no longer applies to the updated "
                          "model and is dropped; call calibrate() again", UserWarning,
                          stacklevel=2)
            self.std_scale_ = None
            self.interval_scores_ = None
        state = getattr(self, "_state", None)
        if state is None:
            raise ValueError(f"{owner}: the model keeps no training state; fit it with "
                             "incremental=True (models loaded from file cannot be updated)")
        if not (n_inducing == "all" or (isinstance(n_inducing, numbers.Integral)
                                        and not isinstance(n_inducing, bool)
                                        and n_inducing >= 0)):
            raise ValueError(f"{owner}: n_inducing must be an int >= 0 or 'all'; "
                             f"got {n_inducing!r}")
        if getattr(self, "_state_needs_frames", False):
            raise ValueError(f"{owner}: this model was loaded with its training state; give "
                             "its training structures back with restore_training(frames) first")
        frames = check_frames(X, owner)
        indices = [self._species_index(atoms, owner) for atoms in frames]
        labels = read_labels(frames, owner)
        new = []
        for k, atoms in enumerate(frames):
            has_e = not np.isnan(labels.energies[k])
            has_f = labels.forces[k] is not None
            result = self.descriptor_.compute(atoms)
            rows = gp.design_rows(result, indices[k], self.inducing_, self.kernel_,
                                  energy=has_e, forces=has_f, columns=self._columns,
                                  n_columns=self.alpha_.size)
            rows = _with_two_body(rows, getattr(self, "two_body_", None), atoms, indices[k],
                                  len(self.species_), getattr(self, "_pair_columns", None))
            n = len(atoms)
            blocks, y, std, is_e, n_rows = [], [], [], [], []
            start = len(state.y)
            state.energy_row.append(start if has_e else -1)
            state.force_row.append(start + int(has_e) if has_f else -1)
            if has_e:
                blocks.append(rows.energy[None, :])
                y.append([labels.energies[k] - self.e0_[indices[k]].sum()])
                std.append([self.energy_noise_ * np.sqrt(n)])
                is_e.append([True])
                n_rows.append([n])
            if has_f:
                blocks.append(rows.forces)
                y.append(labels.forces[k].ravel())
                std.append(np.full(3 * n, self.force_noise_))
                is_e.append(np.zeros(3 * n, dtype=bool))
                n_rows.append(np.ones(3 * n, dtype=int))
            _incremental.add_rows(state, np.vstack(blocks), np.concatenate(y),
                                  np.concatenate(std), np.concatenate(is_e),
                                  np.concatenate(n_rows), self.signal_std_)
            state.frames.append(_labelled_copy(atoms, labels.energies[k], labels.forces[k]))
            state.results.append(result)
            state.species_index.append(indices[k])
            new.append((result, indices[k]))
        self._refresh_posterior()
        chosen = self._choose_inducing(new, n_inducing)
        if any(len(z) for z in chosen):
            self._add_inducing(chosen)
            self._refresh_posterior()
        if optimize:
            self._reoptimize()
        self._stats = _incremental.statistics(state)
        self.log_marginal_likelihood_value_ = float(gp.log_marginal_likelihood(
            np.log([self.signal_std_, self.energy_noise_, self.force_noise_]), self._stats))
        logger.info("%s: %d structures added; inducing environments %s", owner, len(frames),
                    self.n_inducing_)
        return self

    def restore_training(self, frames):
        """Give a model loaded with ``training_state=True`` its training structures back.

        Parameters
        ----------
        frames : list of ase.Atoms
            The structures the model was trained on, in training order (for an
            on-the-fly run, the first frames of its labelled-frames file).

        Returns
        -------
        self : SparseGPPotential
        """
        owner = f"{type(self).__name__}.restore_training"
        state = getattr(self, "_state", None)
        if state is None:
            raise ValueError(f"{owner}: the model has no stored training state")
        frames = check_frames(frames, owner)
        if len(frames) != len(state.energy_row):
            raise ValueError(f"{owner}: the model was trained on {len(state.energy_row)} "
                             f"structures; got {len(frames)}")
        state.frames = [a.copy() for a in frames]
        state.species_index = [self._species_index(a, owner) for a in frames]
        verbose = check_verbose(self.verbose, type(self).__name__)
        state.results = self._map(self.descriptor_.compute, frames, verbose, "descriptors")
        self._state_needs_frames = False
        return self

    def _refresh_posterior(self):
        self._posterior = _incremental.posterior(self._state, self.signal_std_)
        self.alpha_ = self._posterior.weights

    def _choose_inducing(self, new, n_inducing) -> list[np.ndarray]:
        """New inducing descriptors per species from the new structures' environments."""
        n_species = len(self.species_)
        features = [r.features for r, _ in new]
        index = [i for _, i in new]
        if not features or n_inducing == 0:
            return [np.zeros((0, 0))] * n_species
        X = np.concatenate(features)
        species = np.concatenate(index)
        if n_inducing == "all" or n_inducing >= len(X):
            keep = np.arange(len(X))
        else:
            # epistemic variance of each environment's local energy
            rows = np.zeros((len(X), self.alpha_.size))
            prior = np.zeros(len(X))
            for s, Z in enumerate(self.inducing_):
                mask = species == s
                if mask.any():
                    prior[mask] = self.kernel_.diag(X[mask])
                    if len(Z):
                        rows[np.ix_(mask, self._columns[s])] = self.kernel_(X[mask], Z)
            post, proj = gp.variance_terms(rows, self._posterior, self.signal_std_)
            variance = post + self.signal_std_**2 * prior - proj
            keep = np.sort(np.argsort(-variance, kind="stable")[:n_inducing])
        return [X[keep[species[keep] == s]] for s in range(n_species)]

    def _add_inducing(self, chosen: list[np.ndarray]) -> None:
        state = self._state
        M = self.alpha_.size
        m = int(sum(len(z) for z in chosen))
        new_columns = gp.inducing_columns(chosen)  # local blocks; global = M + local
        K_extra = np.zeros((len(state.y), m))
        for result, index, e_row, f_row in zip(state.results, state.species_index,
                                               state.energy_row, state.force_row, strict=True):
            rows = gp.design_rows(result, index, chosen, self.kernel_, energy=e_row >= 0,
                                  forces=f_row >= 0, columns=new_columns)
            if e_row >= 0:
                K_extra[e_row] = rows.energy
            if f_row >= 0:
                K_extra[f_row:f_row + 3 * result.n_atoms] = rows.forces
        k_cross = np.zeros((M, m))
        k_new = np.zeros((m, m))
        for s, z in enumerate(chosen):
            if len(z) == 0:
                continue
            if len(self.inducing_[s]):
                k_cross[np.ix_(self._columns[s], new_columns[s])] = self.kernel_(
                    self.inducing_[s], z)
            k_new[np.ix_(new_columns[s], new_columns[s])] = self.kernel_(z)
        _incremental.add_columns(state, K_extra, k_cross, k_new, self.signal_std_,
                                 self._jitter_abs)
        for s, z in enumerate(chosen):
            if len(z) == 0:
                continue
            grown = np.vstack([self.inducing_[s], z]) if len(self.inducing_[s]) else z.copy()
            grown.setflags(write=False)
            self.inducing_[s] = grown
            self._columns[s] = np.concatenate([self._columns[s], M + new_columns[s]])
        symbols = [chemical_symbols[z] for z in self.species_]
        self.n_inducing_ = {symbols[s]: len(z) for s, z in enumerate(self.inducing_)}

    def _reoptimize(self) -> None:
        state = self._state
        stats = _incremental.statistics(state)
        n_E = int(state.is_energy.sum())
        n_F = int((~state.is_energy).sum())
        names = self._fitted_names()
        free = [name in names and informed for name, informed in
                zip(_HYPERPARAMETERS[:3], (True, n_E > 0, n_F > 0), strict=True)]
        current = np.log([self.signal_std_, self.energy_noise_, self.force_noise_])
        if any(free):
            log_params = self._optimize(stats, current, check_random_state(self.random_state),
                                        free)
            values = (self.signal_std_, self.energy_noise_, self.force_noise_)
            self.signal_std_, self.energy_noise_, self.force_noise_ = (
                float(np.exp(t)) if f else v
                for t, v, f in zip(log_params, values, free, strict=True))
        state.noise_std = np.where(state.is_energy,
                                   self.energy_noise_ * np.sqrt(state.n_atoms_row),
                                   self.force_noise_)
        state.R, state.b = _incremental.factor(state.Kw, state.noise_std, state.y,
                                               self.signal_std_)
        self._refresh_posterior()

    def score(self, X, y=None, sample_weight=None):
        """R² of the predicted force components against the reference forces.

        Parameters
        ----------
        X : list of ase.Atoms
            Structures with reference forces.
        y : None
        sample_weight : None

        Returns
        -------
        float
            ``1 - Σ (F - F_ref)² / Σ (F_ref - mean(F_ref))²`` over all components
            of the structures that carry forces.
        """
        if y is not None or sample_weight is not None:
            raise TypeError("score: labels come from the structures; y and sample_weight "
                            "must be None")
        frames = check_frames(X, f"{type(self).__name__}.score")
        labels = read_labels(frames, f"{type(self).__name__}.score")
        keep = [k for k, f in enumerate(labels.forces) if f is not None]
        if not keep:
            raise ValueError("score: none of the structures carries reference forces")
        predicted = self.predict_forces([frames[k] for k in keep])
        ref = np.concatenate([labels.forces[k].ravel() for k in keep])
        pred = np.concatenate([f.ravel() for f in predicted])
        return float(1.0 - np.sum((pred - ref) ** 2) / np.sum((ref - ref.mean()) ** 2))

    def log_marginal_likelihood(self, theta=None, eval_gradient=False):
        """Log marginal likelihood of the training data.

        Parameters
        ----------
        theta : array-like of shape (3,), optional
            ``log`` of (signal std eV, energy noise eV/atom, force noise eV/Å);
            with ``signal_per_element=True``, shape ``(n_species + 2,)``: one signal
            std per element of ``species_`` first. ``None`` returns the value at the
            fitted hyperparameters.
        eval_gradient : bool, default=False

        Returns
        -------
        float, or (float, ndarray of the shape of theta)
        """
        check_is_fitted(self)
        per_element = isinstance(self.signal_std_, dict)
        if theta is None:
            if not eval_gradient:
                return self.log_marginal_likelihood_value_
            sigmas = np.sqrt(self._signal_variances()) if per_element else [self.signal_std_]
            theta = np.log(np.concatenate([sigmas, [self.energy_noise_, self.force_noise_]]))
        theta = np.asarray(theta, dtype=np.float64)
        n_theta = len(self.species_) + 2 if per_element else 3
        if theta.shape != (n_theta,):
            raise ValueError(f"theta must have shape ({n_theta},); got {theta.shape}")
        if getattr(self, "_exact", None) is not None:
            return exact.log_marginal_likelihood(theta, self._exact_covariance(),
                                                 self._exact.y, self._exact.observations,
                                                 eval_gradient=eval_gradient)
        return gp.log_marginal_likelihood(theta, self._stats, eval_gradient=eval_gradient)

    def _exact_covariance(self):
        """The exact model's prior covariance (per-element parts with
        ``signal_per_element``), rebuilt after loading from file."""
        if getattr(self, "_exact_K0", None) is None:
            self._exact_K0 = exact.prior_covariance(
                self._exact.observations, self.kernel_,
                per_element=isinstance(self.signal_std_, dict))
        return self._exact_K0

    def save(self, path, training_state=False):
        """Save the fitted model as ``.npz`` arrays plus JSON metadata (no pickle).

        Parameters
        ----------
        path : str or path-like
        training_state : bool, default=False
            Also store what an ``incremental=True`` model needs to keep updating
            (see :func:`kernelpot.io.save`).

        Returns
        -------
        pathlib.Path

        See Also
        --------
        kernelpot.load
        """
        from kernelpot.io import save

        return save(self, path, training_state=training_state)

    def __sklearn_is_fitted__(self):
        return hasattr(self, "alpha_")
