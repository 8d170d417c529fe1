"""Sparse Gaussian-process interatomic potential with a scikit-learn interface.

:class:`SparseGPPotential` keeps the parameters, checks them, and chooses and fits
a posterior (:class:`~kernelpot.sparse_posterior.SparsePosterior` or
:class:`~kernelpot.exact_posterior.ExactPosterior`), whose public state it copies
into its trailing-underscore attributes. Prediction asks the posterior for each
structure's mean and variance terms; calibration is :mod:`kernelpot.calibration`;
the likelihood searches are :mod:`kernelpot.hyperparameters`; the file format is
:mod:`kernelpot.io`.
"""

from __future__ import annotations

import logging
import numbers
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from kernelpot import _parallel, exact, io, loso_blocks, metrics, noise_groups
from kernelpot._block_runner import BlockRunner, check_client
from kernelpot._labels import TrainingSet, check_frames, composition_counts, read_labels
from kernelpot._structures import labels_only
from kernelpot._validation import (
    check_geometry,
    check_max_inducing,
    check_verbose,
    species_to_numbers,
)
from kernelpot.baselines import ZBL, as_baseline, baseline_terms, residual_labels
from kernelpot.calibration import StdCalibration
from kernelpot.contacts import ShortestPairs, contact_warnings_handled
from kernelpot.descriptors import Descriptor
from kernelpot.descriptors.defaults import default_soap
from kernelpot.exact_posterior import ExactPosterior
from kernelpot.fit_memory import FitMemory
from kernelpot.frame_files import FrameFiles, is_paths, spooled
from kernelpot.hyperparameters import (
    DEFAULT_STRESS_NOISE,
    NoiseSearch,
    check_hyperparameter_values,
    fitted_names,
    warn_if_forces_unexplained,
    warn_if_signal_std_at_bound,
    warn_if_stresses_unexplained,
)
from kernelpot.inducing import SPARSE_METHODS
from kernelpot.kernels import Kernel, NormalizedDotProduct
from kernelpot.prediction import Prediction, PredictionMixin
from kernelpot.sparse_posterior import DEFAULT_SPARSE_CAP, SparsePosterior, labelled_copy
from kernelpot.two_body import TwoBody

if TYPE_CHECKING:
    import os

    from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "SparseGPPotential", "format_signal_std"]

#: Values of ``method``.
_METHODS = ("sparse", "exact", "auto")
#: Atoms in memory up to which a sparse model fitted without ``incremental=True`` keeps
#: copies of its training structures, for its first :meth:`SparseGPPotential.update`
#: (about 40 MB of copies); larger fits keep none.
KEPT_ATOMS = 500_000
#: Why a model with ``config_type_noise=True`` cannot be updated.
CONFIG_TYPE_NOT_UPDATABLE = ("a model fitted with config_type_noise=True cannot be updated "
                             "(updates and on-the-fly learning keep one noise per kind of "
                             "observation): refit it on all the structures")
#: Training structures a LOSO calibration needs (fewer: raw stds).
_LOSO_MIN_STRUCTURES = 3
#: Validation structures below which :meth:`SparseGPPotential.calibrate` warns that it
#: replaces the LOSO map with one fitted on few values
CALIBRATE_FEW = 10
#: Posterior classes by ``method``.
_POSTERIORS = {"sparse": SparsePosterior, "exact": ExactPosterior}


def _warn_if_too_few(labels, where: str, learns_noise: bool, calibrates: bool) -> None:
    """Warn when the training set is too small to learn the noise or calibrate the std.

    ``where`` names the estimator's method (``"SparseGPPotential.fit"``).
    """
    n_structures = len(labels.forces)
    if n_structures >= _LOSO_MIN_STRUCTURES or not (learns_noise or calibrates):
        return
    missing = []
    if learns_noise:
        missing.append("to learn the noise levels (the likelihood of so few hardly "
                       "constrains σ_E and σ_F)")
    if calibrates:
        missing.append(f"to calibrate the std by leave-one-structure-out (at least "
                       f"{_LOSO_MIN_STRUCTURES} structures; the stds stay raw)")
    warnings.warn(
        f"{where}: {n_structures} training structure(s) are too few "
        + " or ".join(missing) + "; errors on new structures are usually large. Label "
        "more structures, or use this model only to start on-the-fly learning.",
        UserWarning, stacklevel=4)


def _warn_if_labels_leave_things_undetermined(labels, where: str, names: set,
                                               force_noise: float) -> None:
    """Warn when a kind of label is missing from every structure and something needs it.

    No energy: the forces fix each element's local energy up to a constant, and (for
    cells without stress labels) not its change with volume, so energies and stresses
    are then guesses. No forces: ``σ_F`` cannot be learned and keeps its given value,
    which the force std adds. ``where`` names the estimator's method.
    """
    if not np.any(labels.has_energy):
        what = "energies are" if np.any(labels.has_stress) else "energies and stresses are"
        volume = "" if np.any(labels.has_stress) else (
            ", and leave the energy's change with the volume (the stress) unconstrained")
        warnings.warn(f"{where}: no training structure has an energy: the forces fix "
                      f"each element's local energy only up to a constant{volume}; "
                      f"predicted {what} not meaningful. Label some energies.",
                      UserWarning, stacklevel=4)
    if "force_noise" in names and all(f is None for f in labels.forces):
        warnings.warn(f"{where}: no training structure has forces, so the force noise "
                      f"cannot be learned: force_noise_ keeps its given value "
                      f"{force_noise:g} eV/Å, which the total force std includes. Set "
                      "force_noise to the reference method's force error.", UserWarning,
                      stacklevel=4)


def format_signal_std(sigma: float | dict[str, float]) -> str:
    """Format a fitted signal std for logs and the CLI: ``"2.18"`` or ``"H 1.64, C 2.08"``.

    Parameters
    ----------
    sigma : float or dict
        ``signal_std_``.

    Returns
    -------
    str
    """
    if isinstance(sigma, dict):
        return ", ".join(f"{symbol} {value:.3g}" for symbol, value in sigma.items())
    return f"{sigma:.3g}"


class SparseGPPotential(PredictionMixin, RegressorMixin, BaseEstimator):
    """Sparse GP potential on local environments, trained on energies, forces and stresses.

    The energy of a structure is a sum of local energies, one Gaussian process
    per element over the atom's descriptor, plus a reference energy per element.
    Training uses total energies, forces and (for periodic cells) stresses through
    analytic derivative kernels in the DTC (projected-process) approximation; the
    signal and the noise levels are fitted by maximising the marginal likelihood.

    Parameters
    ----------
    descriptor : kernelpot.descriptors.Descriptor, default=None
        Cloned at fit. ``None`` is the SOAP ``kernelpot fit`` uses
        (:func:`kernelpot.descriptors.defaults.default_soap`) over the training elements:
        ``SOAP(species, r_cut=5.0, n_max=8, l_max=6, sigma=0.5)`` if any training
        structure is periodic, else ``SOAP(species, r_cut=4.0, n_max=6, l_max=4,
        sigma=0.4)``.
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
    inducing_pool : int or None, default=50000
        Environments per element whose descriptors the selection holds at once. For
        an element with more training environments than ``max(inducing_pool, its
        n_sparse)``, farthest-point sampling streams them through a pool of
        ``max(inducing_pool, 4 n_sparse)`` (all of them, if no more), reduced to
        ``2 n_sparse`` by farthest-point sampling whenever it fills
        (:class:`~kernelpot.inducing.FarthestPointPool`, which keeps rare, distant
        environments); CUR and random selection choose among ``max(inducing_pool,
        n_sparse)`` drawn uniformly at random. Smaller sets are unaffected. ``None``
        holds every environment's descriptors. Measured on 400 EMT alloy cells, 300
        inducing per element (``benchmarks/inducing_pool.py``): pools of 6,000 and
        1,500 give the force error of the whole set within the seeds' spread.
    baseline : kernelpot.ZBL, LennardJones, Coulomb, ASE calculator or None, default=None
        A fixed physics term (Δ-learning, :mod:`kernelpot.baselines`): the GP is
        fitted to the labels minus the baseline's energies, forces and stresses, and
        every prediction (energies, forces, stress, local energies; the calculator, MD
        and :meth:`update` with it) adds the baseline back. It adds no variance: the
        stds are the GP's. Registered baselines are saved by name and parameters; a
        model with an ASE calculator as its baseline cannot be saved.
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
        Energy noise ``σ_E``, eV/√atom: an N-atom structure's energy noise is
        ``σ_E √N`` (initial value when optimising).
    force_noise : float, default=0.05
        Force noise ``σ_F`` per component, eV/Å (initial value when optimising).
    stress_noise : float, default=0.001
        Stress noise ``σ_S`` per Voigt component, eV/Å³ (0.001 eV/Å³ = 0.16 GPa;
        initial value when optimising).
    signal_std_bounds, energy_noise_bounds, force_noise_bounds, stress_noise_bounds : \
pair of float
        Bounds of the likelihood optimisation. ``σ`` stops at 100 eV by default. The
        normalised dot product of a one-element metal's environments near one lattice
        varies little (median 1 − cos of rattled Cu cells: 1.4 × 10⁻⁴ with raw ACSF,
        9.6 × 10⁻⁴ with SOAP), and such kernels want a larger ``σ`` (fitted with the
        bound at 10⁴ eV: 162 eV on mlearn Mo, 223 eV on a rattled Pt slab; raw ACSF
        features have no finite optimum). Raising the bound to 10⁴ eV was measured and
        not adopted: it helped on-the-fly Cu with ACSF (2–3 calls instead of 5–6 from a
        fitted start) and the Pt slab (force MAE 0.83 → 0.78 meV/Å), cost mlearn Mo 3 %
        in force RMSE, and an ACSF model of four Cu cells then drove a 20 GPa NPT run to
        NaN positions: without the ridge that the bound keeps, a flat kernel's weights
        extrapolate wildly. A fit that ends at the bound logs a warning; raise it for a
        kernel whose optimum lies above it when extrapolation is not needed.
    use_stress : bool, default=True
        Train on the stresses of the training cells that carry one (periodic along all
        three axes, ``atoms.get_stress()`` available; ASE's convention and Voigt
        order, eV/Å³): six more observations per cell, the strain derivatives of the
        summed local energies over the volume, with their own noise ``σ_S`` learned by
        the likelihood. Both methods train on them, ``incremental=True`` models too
        (:meth:`update` adds the stresses of new cells). ``False`` trains on energies
        and forces only.
    config_type_noise : bool, default=False
        Learn noise scales per configuration type (``atoms.info["config_type"]``, as in
        extended XYZ files; an integer label reads as its digits; structures without
        one form the type ``"default"``), as GAP's ``config_type_sigma`` sets an
        energy, force and virial sigma per type but fitted by the likelihood: the
        energy, force and stress noise of a structure of type ``t`` are
        ``(s_t,E σ_E, s_t,F σ_F, s_t,S σ_S)``, for labels whose noise differs by type
        (several codes or convergence settings). The scales are fitted after the usual
        search, from its optimum, with the kernel fixed, within ``(0.01, 100)`` (a
        warning names a scale that ends at a bound). For each kind, the type with the
        most structures labelled with it keeps the scale 1, so ``energy_noise_``,
        ``force_noise_`` and ``stress_noise_`` are the noise of those types, and the
        noise that predictions, intervals and ``calibrate`` add for every new structure.
        A type with fewer than 5 structures of a kind, or a kind whose noise is not
        fitted (``optimize``), keeps the scale 1. Not with ``incremental=True``; a model
        fitted with it cannot be updated (:meth:`update`, on-the-fly learning).
        Fitted scales: ``config_type_noise_``. See :mod:`kernelpot.noise_groups`. The
        likelihood may also read the model's misfit of a rare type as noise and stop
        fitting it (mlearn Mo, 4-fold CV: the surfaces' energy noise grew 8–80×,
        held-out energies 3.75 → 70.5 meV/atom): off by default.
    e0 : "lstsq" or dict, default="lstsq"
        Reference energy per element: least squares of the training energies on
        the compositions (minimum norm), or a dict ``{element: eV}``.
    optimize : bool or list of str, default=True
        Fit ``σ``, ``σ_E``, ``σ_F`` by maximising the log marginal likelihood
        (L-BFGS-B with analytic gradients in log space), ``σ_S`` with stress
        observations, and the kernel's own
        hyperparameters (``kernel.theta``: the length scale of
        :class:`SquaredExponential`, the weight of a :class:`Scaled` term) by L-BFGS-B
        on the likelihood maximised over the noise levels and ``σ``, with its analytic
        gradient
        (:class:`kernelpot.gp.KernelThetaGradient`; each step rebuilds the design and
        its derivatives: two passes over the data), and with a ``two_body`` term its
        ``prior_std`` (coordinate ascent with ``σ`` and the noise levels; see
        :class:`~kernelpot.TwoBody`); ``False`` keeps the given values; a list such as
        ``["signal_std", "force_noise"]`` fits only those (names: "signal_std",
        "energy_noise", "force_noise", "stress_noise", "kernel", "two_body") and keeps
        the rest,
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
        meant for on-the-fly learning, not for large fits). Without it, a sparse
        model fitted on files keeps their paths, and one fitted on a list of up to
        ``kernelpot.estimator.KEPT_ATOMS`` (500,000) atoms keeps copies of the
        structures with their labels; its first :meth:`update` (or an
        :class:`~kernelpot.OnTheFlyLearner` handed it) refits it once with
        ``incremental=True`` at the fitted hyperparameters:
        a default fit can go on to on-the-fly learning (not one on an iterator, with
        ``config_type_noise``, on a Dask cluster, or whose refit's design would pass
        ``design_memory_limit``; logged). An exact model
        always keeps its training structures (copies, small beside its
        descriptors), and each update refits it on all of them (``O(n_obs³)``: a
        few structures of a molecule, where the exact model is the accurate one).
        With ``method="auto"`` each :meth:`update` of an exact model checks the three
        ``exact_*`` limits again: once the grown training set passes one, that update
        fits the sparse model (with ``incremental=True``) on every structure, and the
        model stays sparse (on-the-fly learning starts exact and becomes sparse as it
        grows). A fit on an iterator of structures (spooled to a temporary file)
        keeps none of them unless ``incremental=True``.
    apply_calibration : bool, default=True
        Apply the fitted std calibration (``calibration="loso"`` at fit time, or
        :meth:`calibrate`) to every std the model reports (``predict``,
        ``predict_forces``, the calculator's); ``False`` reports the model's raw stds.
    calibration : {"loso"} or None, default="loso"
        Calibrate the stds at fit time from the training data itself: the
        leave-one-structure-out (LOSO) prediction of every training structure,
        in closed form (:mod:`kernelpot.loso`; about one more factorisation, logged
        with its cost), gives errors and variance terms on which the same variance
        map :meth:`calibrate` fits on validation data is fitted
        (:mod:`kernelpot.calibration`), and the conformal scores of the intervals
        (``interval_kind_ = "loso"``). Needs at least 3 training structures
        (fewer: raw stds, logged). ``None``: raw stds until :meth:`calibrate`.
        :meth:`calibrate` replaces a LOSO map; :meth:`update` refits it on all
        the data.
    loso_blocks : "auto" or int, default="auto"
        Structures the LOSO calibration leaves out together: blocks of that many
        consecutive training structures (1: one at a time). "auto" reads the length
        off the training set's order (:mod:`kernelpot.loso_blocks`): 1 for structures
        in random order, longer for frames of one MD trajectory a few femtoseconds
        apart, whose near-duplicate neighbours make one-at-a-time errors optimistic
        (measured: GFN2-xTB water, 150 frames 5 fs apart, test force RMS z-score 1.33
        one at a time, 1.15 in blocks of 10). "auto" needs energy labels on every
        structure and at least 20 structures (else one at a time). A block holds at
        most :data:`kernelpot.loso_blocks.MAX_BLOCK_ROWS` observation rows. The streamed
        fit and :class:`OnTheFlyLearner` (which sets 1) leave one structure out at a
        time.
    method : {"auto", "sparse", "exact"}, default="auto"
        "sparse": the DTC approximation on inducing environments (memory linear in
        the data). "exact": every energy and force component is an observation of
        one GP (:mod:`kernelpot.exact`); most accurate for small data (about half
        the force error of "sparse" with every environment inducing on the shared
        ethanol set at n = 50 to 200), but memory grows as the square of the
        number of force components, fitting as its cube, and prediction with the
        number of training environments. "auto": exact while its estimated peak
        memory fits ``exact_memory_limit``, its estimated fit time
        ``exact_time_limit`` (:func:`kernelpot.exact.fit_time_estimate`) and its
        estimated prediction time ``exact_prediction_limit``
        (:func:`kernelpot.exact.prediction_time_estimate`), sparse
        otherwise or when ``two_body`` or ``n_sparse`` is given
        (they are the sparse model's; ``signal_per_element=True`` is the exact
        model's and chooses it whatever its cost); the choice and the estimates are
        logged, the
        result is ``method_``. Each :meth:`fit` chooses again, so a learning curve may
        change method along its sizes; so does an :meth:`update` of an exact model
        (see ``incremental``).
    exact_memory_limit : float, default=4.0
        GiB, for ``method="auto"``.
    exact_time_limit : float, default=60.0
        Seconds of estimated fit time, for ``method="auto"``. On the project's 2-core
        machine 60 s is about 125 frames of a 9-atom molecule.
    exact_prediction_limit : float, default=20.0
        Milliseconds per atom of estimated prediction time with every force std (what
        MD with uncertainty pays at each step), for
        ``method="auto"``; about 10 times the sparse model's. The exact model's cost
        grows with the neighbour pairs of the training set: 20 ms/atom is about 180
        frames of a 9-atom molecule, but only about 7 cells of 32 atoms of a dense
        metal with a 5 Å cutoff.
    design_memory_limit : float, default=4.0
        GiB. A sparse fit whose design matrix (observations × inducing environments,
        float64) is larger does not hold it: the design rows are built in blocks of
        about a quarter of this, the force rows folded into the triangular factor of
        the stacked system (TSQR) and the energy and stress rows kept
        (:mod:`kernelpot.streaming`); the leave-one-structure-out terms take a second
        pass. Same model as the in-memory fit (to rounding at given hyperparameters;
        with the likelihood search, to its stopping tolerance, about 1e-5). Memory: a
        few blocks, the ``(M + 1)²`` factor, and the energy and stress rows (seven per
        cell with stresses), which grow with the number of structures and which this
        limit does not bound yet; the sizes are logged before the first block. A kernel
        search on all structures (use ``search_frames``), a two-body prior std search,
        ``config_type_noise`` and ``incremental=True`` need the whole design: it is then
        built in memory, with a warning.
    min_distance : float or None, default=0.5
        Training structures of :meth:`fit` with two atoms closer than this (Å,
        periodic images included) are refused with a ``ValueError`` naming them: atoms
        on top of each other are a corrupt file or a unit mistake far more often than
        physics. None accepts any distance. :meth:`update` does not check it: it takes
        labelled frames as they come, and a close contact an on-the-fly run labelled is
        what the model needs to learn. Predictions (the calculator's too) on such a
        structure warn once per model, naming the pair, and log every case (INFO): they
        extrapolate past the training pairs.
    random_state : int, numpy RandomState or None, default=None
        Seeds inducing-point selection and optimiser restarts.
    n_jobs : int or None, default=1
        Workers of joblib over structures; results do not depend on it.
    verbose : int, default=0
        0 silent; 1 progress bars; more logs more.

    Attributes
    ----------
    posterior_ : SparsePosterior or ExactPosterior
        The fitted posterior, which the other fitted attributes mirror.
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
        Fitted ``σ_E`` (eV/√atom), ``σ_F`` (eV/Å): the learned aleatoric noise.
    stress_noise_ : float
        Fitted ``σ_S`` (eV/Å³); the given ``stress_noise`` when no stress was trained on.
    config_type_noise_ : dict or None
        With ``config_type_noise=True`` and a scale fitted, the scales
        ``{config_type: {"energy": s, "forces": s, "stress": s}}`` (1 where a scale
        was not fitted); otherwise None.
    log_marginal_likelihood_value_ : float
    n_inducing_ : dict
        Inducing environments per element symbol (the exact model: training
        environments per element).
    method_ : {"sparse", "exact"}
        The method fitted (what ``method="auto"`` chose).
    std_scale_ : dict or None
        Calibration factors fitted at fit time (``calibration="loso"``) or by
        :meth:`calibrate`.
    interval_scores_ : dict or None
        Sorted conformal scores behind ``return_interval``, per quantity.
    jackknife_scores_ : dict or None
        With ``interval_kind_ == "loso"``: per quantity, the normalised LOSO scores of
        the training values and the structure of each, for jackknife+ intervals.
    interval_kind_ : {"loso", "validation"} or None
        What ``std_scale_`` and ``interval_scores_`` were fitted on: the training
        structures' LOSO predictions, or validation structures (:meth:`calibrate`).
    shortest_pairs_ : kernelpot.contacts.ShortestPairs or None
        The shortest distance of each pair of elements within the descriptor's cutoff in
        the training structures (lowered by :meth:`update`). A structure to predict with
        a pair more than ``kernelpot.contacts.CONTACT_MARGIN`` (5 %) closer gets a
        :class:`~kernelpot.contacts.ContactWarning` (once per model; logged each time):
        the model extrapolates there and its std may not show it. None for a descriptor
        without a cutoff (``r_cut``), a model file from before it was kept (until
        :meth:`restore_training` rebuilds it) or :meth:`from_posterior` without it.

    Notes
    -----
    The epistemic variance of the sparse model has two terms, the posterior over the
    inducing values and the prior variance the inducing set does not span
    (:mod:`kernelpot.sparse_posterior`); the exact model has only the first. They are
    reported separately (:class:`Prediction`, raw; the calculator's
    ``forces_std_posterior`` and ``forces_std_projection``, calibrated shares) and
    combined by the calibration (:mod:`kernelpot.calibration`: fitted at fit time on
    LOSO errors by default, or by :meth:`calibrate`; the raw sum without a map). The
    total variance adds the learned noise: ``σ_E² N`` for an ``N``-atom energy,
    ``σ_F²`` per force component. Every variance is clipped at zero, with a warning
    if round-off went beyond 1e-8 relative.

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

    def __init__(self, descriptor: Descriptor | None = None, kernel: Kernel | None = None, *,
                 n_sparse: int | dict[str | int, int] | None = None,
                 sparse_method: str = "fps", inducing_pool: int | None = 50_000,
                 baseline: object = None,
                 two_body: TwoBody | None = None,
                 signal_std: float = 1.0, signal_per_element: bool = False,
                 energy_noise: float = 0.002, force_noise: float = 0.05,
                 stress_noise: float = DEFAULT_STRESS_NOISE,
                 signal_std_bounds: tuple[float, float] = (1e-2, 1e2),
                 energy_noise_bounds: tuple[float, float] = (1e-4, 1.0),
                 force_noise_bounds: tuple[float, float] = (1e-4, 10.0),
                 stress_noise_bounds: tuple[float, float] = (1e-6, 1.0),
                 use_stress: bool = True, config_type_noise: bool = False,
                 e0: str | dict[str | int, float] = "lstsq",
                 optimize: bool | Iterable[str] = True, n_restarts: int = 2,
                 search_frames: int | None = None, incremental: bool = False,
                 apply_calibration: bool = True, calibration: str | None = "loso",
                 loso_blocks: str | int = "auto", method: str = "auto",
                 exact_memory_limit: float = 4.0, exact_time_limit: float = 60.0,
                 exact_prediction_limit: float = 20.0,
                 design_memory_limit: float = 4.0,
                 min_distance: float | None = 0.5,
                 random_state: int | np.random.RandomState | None = None,
                 n_jobs: int | None = 1, verbose: int = 0):
        self.descriptor = descriptor
        self.kernel = kernel
        self.n_sparse = n_sparse
        self.sparse_method = sparse_method
        self.inducing_pool = inducing_pool
        self.baseline = baseline
        self.two_body = two_body
        self.signal_std = signal_std
        self.signal_per_element = signal_per_element
        self.energy_noise = energy_noise
        self.force_noise = force_noise
        self.signal_std_bounds = signal_std_bounds
        self.energy_noise_bounds = energy_noise_bounds
        self.force_noise_bounds = force_noise_bounds
        self.stress_noise = stress_noise
        self.stress_noise_bounds = stress_noise_bounds
        self.use_stress = use_stress
        self.config_type_noise = config_type_noise
        self.e0 = e0
        self.optimize = optimize
        self.n_restarts = n_restarts
        self.search_frames = search_frames
        self.incremental = incremental
        self.apply_calibration = apply_calibration
        self.calibration = calibration
        self.loso_blocks = loso_blocks
        self.method = method
        self.exact_memory_limit = exact_memory_limit
        self.exact_time_limit = exact_time_limit
        self.exact_prediction_limit = exact_prediction_limit
        self.min_distance = min_distance
        self.design_memory_limit = design_memory_limit
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

    # -- validation ------------------------------------------------------------------
    def _check_params(self) -> int:
        """Validate the parameters; return the checked ``verbose``."""
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
        if self.inducing_pool is not None and (
                isinstance(self.inducing_pool, bool)
                or not isinstance(self.inducing_pool, numbers.Integral)
                or self.inducing_pool < 1):
            raise ValueError(f"{owner}: inducing_pool must be None or an int >= 1; "
                             f"got {self.inducing_pool!r}")
        names = fitted_names(self.optimize, owner)  # validates optimize
        check_hyperparameter_values(self, names, owner)
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
        as_baseline(self.baseline, owner)  # validates it
        if not isinstance(self.use_stress, (bool, np.bool_)):
            raise TypeError(f"{owner}: use_stress must be True or False; "
                            f"got {self.use_stress!r}")
        if not isinstance(self.config_type_noise, (bool, np.bool_)):
            raise TypeError(f"{owner}: config_type_noise must be True or False; "
                            f"got {self.config_type_noise!r}")
        if self.config_type_noise and self.incremental:
            raise ValueError(f"{owner}: config_type_noise=True does not work with "
                             "incremental=True (updates and on-the-fly learning keep one "
                             "noise per kind of observation)")
        if not (self.calibration is None
                or (isinstance(self.calibration, str) and self.calibration == "loso")):
            raise ValueError(f"{owner}: calibration must be 'loso' or None; "
                             f"got {self.calibration!r}")
        loso_blocks.check_setting(self.loso_blocks, owner)
        if self.min_distance is not None and (
                isinstance(self.min_distance, bool)
                or not isinstance(self.min_distance, numbers.Real)
                or not np.isfinite(self.min_distance) or self.min_distance < 0):
            raise ValueError(f"{owner}: min_distance must be None or a distance >= 0 Å; "
                             f"got {self.min_distance!r}")
        self._check_method(names, owner)
        return check_verbose(self.verbose, owner)

    def _check_method(self, names: set, owner: str) -> None:
        """Validate ``method`` and the parameters that only some methods take."""
        if self.method not in _METHODS:
            raise ValueError(f"{owner}: method must be one of {_METHODS}; got {self.method!r}")
        for name, unit in (("exact_memory_limit", "GiB"), ("exact_time_limit", "seconds"),
                           ("design_memory_limit", "GiB"),
                           ("exact_prediction_limit", "milliseconds per atom")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not value > 0:
                raise ValueError(f"{owner}: {name} must be a number of {unit} > 0; "
                                 f"got {value!r}")
        if not isinstance(self.signal_per_element, (bool, np.bool_)):
            raise TypeError(f"{owner}: signal_per_element must be True or False; "
                            f"got {self.signal_per_element!r}")
        if self.signal_per_element and self.method == "sparse":
            raise ValueError(f"{owner}: signal_per_element=True needs method='exact' or "
                             "'auto' (the sparse model has one signal std); got "
                             f"method={self.method!r}")
        if self.two_body is not None:
            if not isinstance(self.two_body, TwoBody):
                raise TypeError(f"{owner}: two_body must be a kernelpot.TwoBody or None; "
                                f"got {type(self.two_body).__name__}")
            self.two_body.check()
            low, high = self.two_body.prior_std_bounds
            if "two_body" in names and not low <= self.two_body.prior_std <= high:
                raise ValueError(f"{owner}: two_body.prior_std={self.two_body.prior_std} lies "
                                 f"outside two_body.prior_std_bounds {(low, high)}")
            if self.method == "exact":
                raise ValueError(f"{owner}: two_body needs method='sparse' (the exact model "
                                 f"has no two-body term); got method={self.method!r}")

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X: Sequence[Atoms], y: None = None, *,
            client: Any = None) -> SparseGPPotential:
        """Fit the model to structures with reference energies and/or forces.

        Parameters
        ----------
        X : list of ase.Atoms, FrameFiles, or path(s)
            Training structures with labels from ``get_potential_energy()`` and
            ``get_forces()`` (a SinglePointCalculator, as ``ase.io.read`` gives).
            A structure lacking one of them trains on the other. A file's path, a list
            of paths or a :class:`~kernelpot.FrameFiles` are read when used, a few
            passes front to back, without holding the structures. So is an iterator
            (``ase.io.iread(...)``, a generator), written once to a temporary ASE
            trajectory that the fit reads and then removes
            (:func:`kernelpot.frame_files.spooled`); an ``incremental=True`` model,
            which keeps its training structures, reads it into a list.
        y : None
            Present for scikit-learn; labels come from the structures.
        client : distributed.Client or None, default=None
            Fit on this Dask cluster (the ``[dask]`` extra). The descriptors of the
            inducing-point selection run on its workers, and the sparse model's design
            is streamed (:mod:`kernelpot.streaming`) whatever its size: blocks of whole
            structures (at most half a worker thread's share of its memory limit, less
            the ``M × M`` factors; twice the cluster's threads in flight) are built and
            factored on the workers and their factors merged there by a tree;
            the likelihood search and the ``M × M`` solve run here. The fitted model is
            an ordinary one (same file, same predictions; the same as without a client
            to rounding, about 1e-12 at given hyperparameters). A fit that needs the
            whole design (see ``design_memory_limit``) builds it here, with a warning, as
            does the exact model (``method="exact"``, or ``"auto"`` choosing it), with
            ``n_jobs``. Without a client, ``n_jobs`` under
            ``joblib.parallel_config(backend="dask")`` also runs the per-structure and
            per-block work on a cluster, with the blocks' factors merged here.

        Returns
        -------
        self : SparseGPPotential
            Fitted.

        Raises
        ------
        ValueError
            For bad structures or labels (named), or a Dask client that is not running.
        TypeError
            If ``X`` is not a list of structures or paths, or ``client`` is not a
            ``distributed.Client``.
        RuntimeError
            If the fit on a Dask cluster failed there (a worker lost more often than Dask
            retries it, or the cluster lost the shared inputs); no model is fitted.
        """
        owner = type(self).__name__
        if y is not None:
            raise TypeError(f"{owner}.fit: labels come from the structures; y must be None "
                            f"(got {type(y).__name__})")
        verbose = self._check_params()
        client = check_client(client, f"{owner}.fit")
        start_time = time.perf_counter()
        # an iterator: written to disk and read back (an incremental model keeps its
        # structures in memory anyway, beyond the fit); the model then keeps no
        # structures to refit on (the file goes with the fit)
        spooled_away = isinstance(X, Iterator) and not self.incremental
        with spooled(X, f"{owner}.fit", in_memory=bool(self.incremental)) as X:
            prepared = self._prepare_fit(X, owner)
            training, descriptor = prepared.training, prepared.descriptor
            method = prepared.method
            if client is not None and method == "exact":
                warnings.warn(f"{owner}: the exact model is fitted in this process; the Dask "
                              f"client is not used (method='sparse' fits on the cluster)",
                              UserWarning, stacklevel=2)
            self.baseline_ = prepared.baseline
            posterior = _POSTERIORS[method].fit(
                self, training, descriptor, prepared.kernel, prepared.rng,
                lambda fn, items, desc: self._imap(fn, items, verbose, desc),
                runner=BlockRunner(self.n_jobs, client, verbose, owner))
            if posterior.kind == "exact" or not posterior.keeps_training_data:
                self._keep_training(posterior, training, spooled_away, client, owner)
            self._adopt(posterior, descriptor, training.species, training.e0,
                        self._loso_calibration(posterior, training.numbers()))
            self.shortest_pairs_ = prepared.shortest
        _warn_if_zbl_reaches_the_data(self.baseline_, self.shortest_pairs_, owner)
        names = fitted_names(self.optimize, owner)
        if "signal_std" in names:
            warn_if_signal_std_at_bound(self.signal_std_, self.signal_std_bounds, owner,
                                        type(descriptor).__name__)
        if "force_noise" in names:
            warn_if_forces_unexplained(self.force_noise_, training.force_label_rms(), owner)
        if "stress_noise" in names and self.posterior_.n_stress_observations:
            warn_if_stresses_unexplained(self.stress_noise_, training.stress_label_rms(),
                                         self.stress_noise_bounds, owner)
        stress = f", σ_S = {self.stress_noise_:.3g} eV/Å³" \
            if training.has_stress.any() else ""
        logger.info("%s: %s model fitted in %.1f s; σ = %s eV, σ_E = %.3g eV/√atom, "
                    "σ_F = %.3g eV/Å%s, log marginal likelihood %.1f", owner, method,
                    time.perf_counter() - start_time, format_signal_std(self.signal_std_),
                    self.energy_noise_, self.force_noise_, stress,
                    self.log_marginal_likelihood_value_)
        return self

    def _keep_training(self, posterior, training: TrainingSet, spooled_away: bool,
                       client, owner: str) -> None:
        """Give a fitted posterior the training set :meth:`update` refits on, or none.

        An exact model keeps it (``training``); a sparse one without a training state as
        ``fitted_on`` (its first update refits it with ``incremental=True``). Structures
        in memory are kept as copies with their labels (``labels_only``): the caller's
        own objects may move after the fit (MD started from a training frame), and a
        refit would pair their new positions with the old labels. Nothing is kept (the
        model cannot be updated; logged) for ``config_type_noise=True`` (updates keep
        one noise per kind of observation), structures from an iterator (spooled to a
        removed file), a sparse fit on a Dask cluster (a refit here would hold its whole
        design, as one whose refit's design would pass ``design_memory_limit`` would) or
        of more than ``KEPT_ATOMS`` atoms in memory.
        """
        frames, sparse = training.frames, posterior.kind == "sparse"
        n_atoms = sum(len(index) for index in training.species_index)
        # the rows a refit's design holds (energies, force components, stress components)
        design_bytes = 8 * posterior.weights.size * (7 * len(training.species_index)
                                                     + 3 * n_atoms)
        why = ("config_type_noise=True" if self.config_type_noise else
               "its structures came from an iterator" if spooled_away else
               "it was fitted on a Dask cluster" if sparse and client is not None else
               f"its refit's design ({design_bytes / 2**30:.2g} GiB) would pass "
               "design_memory_limit" if sparse
               and design_bytes > float(self.design_memory_limit) * 2**30 else
               f"its {n_atoms} atoms are more than KEPT_ATOMS = {KEPT_ATOMS} to keep copies "
               "of" if sparse and isinstance(frames, list) and n_atoms > KEPT_ATOMS else None)
        if why is not None:
            logger.info("%s: the model keeps no training structures, so update() and "
                        "on-the-fly learning cannot continue from it: %s%s", owner, why,
                        "" if self.config_type_noise else " (fit with incremental=True for "
                        "that)")
            if not sparse:
                posterior.training = None
            return
        if isinstance(frames, list):
            training = replace(training, frames=[labels_only(a) for a in frames])
        if sparse:
            posterior.fitted_on = training
        else:
            posterior.training = training

    def _prepare_fit(self, X, owner: str, method: str = "fit") -> _PreparedFit:
        """Check the training structures and labels; choose the descriptor and the method.

        ``method`` names the public method in error messages.
        """
        where = f"{owner}.{method}"  # names the caller in errors
        frames = check_frames(FrameFiles(X) if is_paths(X) else X, where)
        labels = read_labels(frames, where, stress=bool(self.use_stress), every=True)
        if self.config_type_noise:
            noise_groups.config_types(frames)  # names a bad config_type before any work
        baseline = as_baseline(self.baseline, owner)
        raw_labels, labels = labels, residual_labels(frames, labels, baseline)
        names = fitted_names(self.optimize, owner)
        _warn_if_too_few(labels, where, bool(names & {"energy_noise", "force_noise"}),
                         self.calibration == "loso")
        _warn_if_labels_leave_things_undetermined(labels, where, names,
                                                  float(self.force_noise))
        rng = check_random_state(self.random_state)
        atomic_numbers, periodic = [], False  # one pass: frames may be files
        for atoms in frames:
            atomic_numbers.append(atoms.numbers)
            periodic = periodic or bool(np.any(atoms.pbc))
        species = np.unique(np.concatenate(atomic_numbers)).astype(np.int64)
        symbols = [chemical_symbols[z] for z in species]
        descriptor = clone(self.descriptor) if self.descriptor is not None else default_soap(
            symbols, periodic)
        kernel = clone(self.kernel) if self.kernel is not None else NormalizedDotProduct(2)
        kernel.check()
        if getattr(descriptor, "periodic", None) is False and labels.has_stress.any():
            warnings.warn(f"{owner}: the descriptor ignores periodicity (periodic=False), so "
                          f"its strain derivatives are an open cluster's: the stresses of "
                          f"{int(labels.has_stress.sum())} cells are not trained on",
                          UserWarning, stacklevel=3)
            labels, raw_labels = (labels._replace(stresses=None),
                                  raw_labels._replace(stresses=None))
        shortest = ShortestPairs.of_descriptor(species, descriptor)
        check_geometry(frames, species_to_numbers(descriptor.species, where),
                       getattr(descriptor, "periodic", None), getattr(descriptor, "r_cut", None),
                       self.min_distance, where, shortest)
        species_index = [np.searchsorted(species, a.numbers) for a in frames]
        counts = composition_counts(species_index, len(species))
        e0 = self._reference_energies(counts, labels.energies, species)
        training = TrainingSet(frames, labels, species, species_index, counts, e0,
                               raw_labels if baseline is not None else None)
        method = self._resolve_method(training, descriptor)
        return _PreparedFit(training, descriptor, kernel, baseline, rng, method, shortest)

    def estimate_fit_memory(self, X: Sequence[Atoms], *, client: Any = None) -> FitMemory:
        """Estimate the memory :meth:`fit` would need on ``X``, stage by stage, without fitting.

        Parameters
        ----------
        X : list of ase.Atoms, FrameFiles, path(s) or an iterator of ase.Atoms
            The training structures, as :meth:`fit` takes them (read once, for their
            compositions and labels; an iterator as :meth:`fit` reads it).
        client : distributed.Client or None, default=None
            The Dask client the fit would run on: the blocks' memory is then the
            workers' (:attr:`~kernelpot.fit_memory.FitMemory.workers`).

        Returns
        -------
        kernelpot.fit_memory.FitMemory
            Stages (inducing selection, design, likelihood search, LOSO pass), what is
            held throughout, and the estimated peak (``peak_gib``); ``str()`` prints
            them. The exact model's is its kernel matrix and factor.

        Notes
        -----
        The sparse estimate counts the fit's arrays from the sizes involved (see
        :mod:`kernelpot.fit_memory`) and the descriptors of the largest structure, which
        it computes; not the interpreter (about 0.3 GiB) nor structures held by the
        caller. Every sparse fit logs the same estimate (INFO) before its first
        descriptor; ``kernelpot fit --dry-run`` prints it.

        Examples
        --------
        >>> from kernelpot import SparseGPPotential, load_ethanol
        >>> estimate = SparseGPPotential(method="sparse").estimate_fit_memory(
        ...     load_ethanol()[:50])
        >>> estimate.n_observations, estimate.block_rows is None
        (1400, True)
        """
        owner = type(self).__name__
        self._check_params()
        client = check_client(client, f"{owner}.estimate_fit_memory")
        with spooled(X, f"{owner}.estimate_fit_memory") as X:
            return self._estimate_fit_memory(X, client, owner)

    def _estimate_fit_memory(self, X, client, owner: str) -> FitMemory:
        prepared = self._prepare_fit(X, owner, "estimate_fit_memory")
        training = prepared.training
        if prepared.method == "exact":
            cost = _exact_costs(training.frames, training.species_index, training.has_energy,
                                training.has_forces, len(training.species),
                                prepared.descriptor, training.has_stress)
            return FitMemory("exact", {"kernel matrix and factor": cost["memory_gib"] * 2**30},
                             0.0, int(cost["n_observations"]))
        return SparsePosterior.memory_estimate(self, training, prepared.descriptor,
                                               prepared.kernel,
                                               BlockRunner(self.n_jobs, client, 0, owner))

    def from_posterior(self, posterior: SparsePosterior | ExactPosterior, *,
                       descriptor: Descriptor, species: np.ndarray, e0: np.ndarray,
                       calibration: StdCalibration | None = None,
                       shortest_pairs: np.ndarray | None = None) -> SparseGPPotential:
        """Make this estimator the fitted model of an existing posterior.

        What :func:`kernelpot.load` does with a posterior rebuilt from a file; also how
        a posterior fitted elsewhere (another process, a cluster) becomes an ordinary
        fitted estimator.

        Parameters
        ----------
        posterior : SparsePosterior or ExactPosterior
            A fitted posterior.
        descriptor : Descriptor
            The descriptor it was fitted with.
        species : ndarray of int
            Atomic numbers of the training elements, sorted.
        e0 : ndarray of shape (n_species,)
            Reference energies, eV.
        calibration : StdCalibration or None, default=None
            A fitted std calibration; ``None`` reports raw stds.
        shortest_pairs : ndarray of shape (n_species, n_species), optional
            The shortest distance of each pair of elements in the training structures
            (``shortest_pairs_``, see :mod:`kernelpot.contacts`); None: unknown (no
            warning of pairs closer than the training ones).

        Returns
        -------
        self : SparseGPPotential
            Fitted.
        """
        self.baseline_ = as_baseline(self.baseline, type(self).__name__)
        self.shortest_pairs_ = None
        if shortest_pairs is not None:
            self.shortest_pairs_ = ShortestPairs.of_descriptor(species, descriptor)
        if self.shortest_pairs_ is not None:
            self.shortest_pairs_.distances = np.array(shortest_pairs, dtype=np.float64)
        self._adopt(posterior, descriptor, species, e0,
                    calibration if calibration is not None else StdCalibration(None, None))
        return self

    def _adopt(self, posterior, descriptor, species, e0, calibration: StdCalibration) -> None:
        """Set every fitted attribute: the one place the estimator's fitted state is written.

        The posterior's own state is its own; these attributes mirror it. Except
        ``shortest_pairs_``, of the training structures rather than the posterior: set by
        :meth:`fit` and :meth:`from_posterior`, lowered by :meth:`update`, rebuilt by
        :meth:`restore_training`.
        """
        self.posterior_ = posterior
        self.method_ = posterior.kind
        self.descriptor_ = descriptor
        self.kernel_ = posterior.kernel
        self.two_body_ = posterior.two_body
        self.species_ = species
        self.e0_ = e0
        self.inducing_ = posterior.inducing
        self.n_inducing_ = posterior.n_inducing(species)
        self.alpha_ = posterior.weights
        self.signal_std_ = posterior.signal_std
        self.energy_noise_ = posterior.energy_noise
        self.force_noise_ = posterior.force_noise
        self.stress_noise_ = posterior.stress_noise
        self.config_type_noise_ = posterior.noise_scales
        self.log_marginal_likelihood_value_ = posterior.log_marginal_likelihood_value
        self.jitter_ = posterior.jitter
        self.std_scale_ = calibration.std_scale
        self.interval_scores_ = calibration.interval_scores
        self.interval_kind_ = calibration.kind
        self.jackknife_scores_ = calibration.jackknife

    def _loso_calibration(self, posterior: SparsePosterior | ExactPosterior,
                          numbers: list[np.ndarray] | None = None) -> StdCalibration:
        """Fit the std calibration on the posterior's LOSO terms (``calibration="loso"``).

        ``numbers``: each training structure's atomic numbers, for the element factors;
        None: the posterior's (:meth:`training_numbers`, if it keeps them).
        """
        owner = type(self).__name__
        terms = posterior.loso
        if self.calibration != "loso" or terms is None:
            return StdCalibration(None, None)
        if terms.n_structures < _LOSO_MIN_STRUCTURES:
            logger.info("%s: %d training structures are too few for a LOSO calibration (at "
                        "least %d): raw stds", owner, terms.n_structures, _LOSO_MIN_STRUCTURES)
            return StdCalibration(None, None)
        try:
            calibration = StdCalibration.fit(
                terms.calibration_terms(), owner, kind="loso",
                structures=terms.calibration_structures(),
                force_atoms=terms.force_atoms(numbers if numbers is not None
                                              else posterior.training_numbers()))
        except ValueError as err:  # no epistemic variance anywhere: nothing to scale
            logger.warning("%s: no LOSO calibration: %s", owner, err)
            return StdCalibration(None, None)
        logger.info("%s: std calibration from the LOSO predictions of %d structures: %s",
                    owner, terms.n_structures, calibration.std_scale)
        return calibration

    def _resolve_method(self, training: TrainingSet, descriptor) -> str:
        """Return "sparse" or "exact"; "auto" is exact while its cost fits the limits."""
        owner = type(self).__name__
        self._method_note = None  # why "auto" chose, for kernelpot fit
        if self.method == "exact":
            if self.n_sparse is not None:
                warnings.warn(f"{owner}: n_sparse={self.n_sparse!r} is ignored: method='exact' "
                              "uses every training environment", UserWarning, stacklevel=3)
            within, cost, _ = self._exact_cost(training, descriptor)
            if not within:
                logger.warning("%s: method='exact': %s (method='auto' would fit the sparse "
                               "model)", owner, cost)
        if self.method != "auto":
            return self.method
        needs_sparse = [reason for reason, given in (
            ("a two-body term", self.two_body), ("n_sparse", self.n_sparse is not None))
            if given]
        if needs_sparse and self.signal_per_element:
            raise ValueError(f"{owner}: signal_per_element=True needs the exact model and "
                             f"{' and '.join(needs_sparse)} the sparse one; set method")
        if needs_sparse:
            self._note_method(f"method='auto' chose 'sparse': {' and '.join(needs_sparse)} "
                              "needs it")
            return "sparse"
        if self.signal_per_element:
            cost = _exact_costs(training.frames, training.species_index,
                                training.has_energy, training.has_forces,
                                len(training.species), descriptor, training.has_stress)
            if cost["memory_gib"] > float(self.exact_memory_limit) \
                    or cost["fit_seconds"] > float(self.exact_time_limit):
                logger.warning("%s: signal_per_element=True needs the exact model, which "
                               "here needs ~%.2f GiB and ~%.0f s to fit (limits %.2f GiB, "
                               "%.0f s)", owner, cost["memory_gib"], cost["fit_seconds"],
                               float(self.exact_memory_limit), float(self.exact_time_limit))
            self._note_method("method='auto' chose 'exact': signal_per_element=True needs it")
            return "exact"
        method = "exact" if self._exact_within_limits(training, descriptor,
                                                      ("chose", "chose")) else "sparse"
        return method

    def _exact_within_limits(self, training: TrainingSet, descriptor,
                             verbs: tuple[str, str]) -> bool:
        """Whether the exact model of ``training`` fits the three ``exact_*`` limits.

        Logged with ``verbs[0]`` when it does ("... keeps 'exact'") and ``verbs[1]`` when
        it does not ("... turns 'sparse'").
        """
        within, cost, passed = self._exact_cost(training, descriptor)
        trade = "" if within else (
            f". The exact model is usually the more accurate from the same structures "
            f"(about half the force error on ethanol at 100-200 frames); to fit it anyway, "
            f"set method='exact' or raise {' and '.join(passed)}")
        self._note_method(f"method='auto' {verbs[0] if within else verbs[1]} "
                          f"{'exact' if within else 'sparse'!r}: {cost}{trade}")
        return within

    def _exact_cost(self, training: TrainingSet, descriptor) -> tuple[bool, str, list[str]]:
        """Return whether the exact model fits the ``exact_*`` limits, its cost, what it passes.

        The cost is a sentence; what it passes, the names of those limits.
        """
        cost = _exact_costs(training.frames, training.species_index, training.has_energy,
                            training.has_forces, len(training.species), descriptor,
                            training.has_stress)
        passed = [name for name, key in (("exact_memory_limit", "memory_gib"),
                                         ("exact_time_limit", "fit_seconds"),
                                         ("exact_prediction_limit", "prediction_ms_per_atom"))
                  if cost[key] > float(getattr(self, name))]
        within = not passed
        text = (
            f"the exact model of {cost['n_observations']} observations needs "
            f"~{cost['memory_gib']:.3g} GiB (limit {float(self.exact_memory_limit):.3g}), "
            f"~{cost['fit_seconds']:.3g} s to fit (limit {float(self.exact_time_limit):.3g}) "
            f"and ~{cost['prediction_ms_per_atom']:.3g} ms per atom to predict with every "
            f"std (limit {float(self.exact_prediction_limit):.3g})")
        return within, text, passed

    def _note_method(self, note: str) -> None:
        """Log why ``method="auto"`` chose what it did, and keep it for ``kernelpot fit``."""
        self._method_note = note
        logger.info("%s: %s", type(self).__name__, note)

    def exact_cost_estimate(self, X: Sequence[Atoms]) -> dict[str, float]:
        """Estimate what the exact model would cost on these training structures.

        The figures ``method="auto"`` compares with ``exact_memory_limit``,
        ``exact_time_limit`` and ``exact_prediction_limit``.

        Parameters
        ----------
        X : list of ase.Atoms
            Labelled training structures, as for :meth:`fit`.

        Returns
        -------
        dict
            ``n_observations`` (energies + force components), ``memory_gib`` (peak of
            the fit), ``fit_seconds`` and ``prediction_ms_per_atom`` (energies, forces
            and every force std, for an atom of the training set's composition):
            estimates from cost models measured on the project's 2-core machine
            (:func:`kernelpot.exact.fit_time_estimate`,
            :func:`kernelpot.exact.prediction_time_estimate`).
        """
        owner = f"{type(self).__name__}.exact_cost_estimate"
        self._check_params()
        frames = check_frames(X, owner)
        labels = read_labels(frames, owner, stress=bool(self.use_stress), every=True)
        species = np.unique(np.concatenate([a.numbers for a in frames])).astype(np.int64)
        descriptor = clone(self.descriptor) if self.descriptor is not None else default_soap(
            [chemical_symbols[z] for z in species], any(bool(np.any(a.pbc)) for a in frames))
        species_index = [np.searchsorted(species, a.numbers) for a in frames]
        has_forces = np.array([f is not None for f in labels.forces])
        return _exact_costs(frames, species_index, labels.has_energy, has_forces,
                            len(species), descriptor, labels.has_stress)

    def _reference_energies(self, counts, energies, species) -> np.ndarray:
        """Return e0 per element; ``counts`` (n_structures, n_species) are the compositions."""
        owner = type(self).__name__
        if isinstance(self.e0, dict):
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

    def _imap(self, fn, items, verbose: int, desc: str) -> Iterator:
        """Map ``fn`` over ``items`` with the estimator's ``n_jobs``, in order, with a bar."""
        return _parallel.imap(fn, items, n_jobs=self.n_jobs, verbose=verbose, desc=desc)


    # -- uncertainty calibration -----------------------------------------------------------
    def std_scale(self, quantity: str) -> float:
        """Return the factor ``c`` of the calibrated epistemic std.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}

        Returns
        -------
        float
            1 without a fitted map (LOSO or :meth:`calibrate`) or with ``apply_calibration=False``
            (see :meth:`epistemic_variance`).
        """
        return self._calibration().factors(quantity)[0]

    def largest_fitted_std(self, quantity: str = "forces",
                           numbers: np.ndarray | None = None) -> float | np.ndarray | None:
        """Return the largest calibrated epistemic std of the structures the map was fitted on.

        With the default ``calibration="loso"``, the largest std (eV/Å per force
        component; eV per structure; eV/Å³ per stress component) any training structure
        had when it was left out; after :meth:`calibrate`, of the validation structures.
        An atom whose force stds pass it (their root mean square over its three
        components) lies beyond every structure the std was calibrated on: the map is
        extrapolated there (linearly in the raw variance), and the structure is unlike the
        training data. ``kernelpot md`` warns at such structures. With a force factor
        per element (:meth:`element_scales`), each atom's edge is its element's.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}, default="forces"
        numbers : array_like of int or None, default=None
            Forces only: the atoms' atomic numbers, for one edge per atom; without them
            the largest element's.

        Returns
        -------
        float, ndarray of shape (n_atoms,) or None
            None with raw stds (no map, or ``apply_calibration=False``) or a map stored
            without its fitted range (model files of format 7 and before).
        """
        return self._calibration().largest_fitted_std(quantity, numbers)

    def projection_weight(self, quantity: str) -> float:
        """Return the relative weight ``w`` of the projection term.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}

        Returns
        -------
        float
            See :meth:`epistemic_variance`.
        """
        return self._calibration().factors(quantity)[1]

    def epistemic_variance(self, quantity: str, posterior: float | np.ndarray,
                           projection: float | np.ndarray,
                           numbers: np.ndarray | None = None) -> float | np.ndarray:
        """Return the calibrated epistemic variance.

        ``c² v_ref (u / v_ref)^p`` for energies and ``c² u (ū / v_ref)^(p - 1)`` for
        force components, ``u = v_post + w² v_proj`` and ``ū`` the mean of ``u`` over
        the atom's three components (one rotation-invariant factor per atom).

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}
            Which calibration applies.
        posterior, projection : float or ndarray
            The two variance terms of a :class:`Prediction` (eV², eV²/Å²); force terms
            of shape ``(n_atoms, 3)``, or flat with each atom's components together.
        numbers : array_like of int or None, default=None
            The atomic numbers of the force terms' atoms (``atoms.numbers``): needed for
            forces when the map has a factor per element (:meth:`element_scales`).

        Returns
        -------
        float or ndarray
            ``c``, ``w``, ``p`` and ``v_ref`` are those fitted at fit time
            (``calibration="loso"``) or by :meth:`calibrate`; without a map (or with
            ``apply_calibration=False``) ``c = w = p = 1``: the raw ``v_post + v_proj``.
            Force variances are then scaled by the square of their element's factor.

        Raises
        ------
        ValueError
            For forces of a map with element factors, without ``numbers``.
        """
        return self._calibration().epistemic_variance(quantity, posterior, projection,
                                                      numbers)

    def element_scales(self) -> dict[int, float]:
        """Return the std map's factor of each element's epistemic force std.

        Fitted with the rest of the map (at fit time on the LOSO errors, or by
        :meth:`calibrate`) for every element with at least
        :data:`kernelpot.element_scales.MIN_ATOMS` atoms among the fitting structures
        (:mod:`kernelpot.element_scales`).

        Returns
        -------
        dict
            Atomic number to factor; empty without a map, with
            ``apply_calibration=False``, or for a map stored before element factors
            existed (model files of format 9 and before).
        """
        return self._calibration().element_scales()

    def noise_variance(self, quantity: str,
                       noise_var: float | np.ndarray) -> float | np.ndarray:
        """Return the learned noise's share of the calibrated total variance, ``d² noise_var``.

        Parameters
        ----------
        quantity : {"energy", "forces", "stress"}
            Which calibration applies.
        noise_var : float or ndarray
            ``σ_E² N`` or ``σ_F²``.

        Returns
        -------
        float or ndarray
            ``d`` is the noise factor :meth:`calibrate` fitted (1 before, or with
            ``apply_calibration=False``).
        """
        return self._calibration().noise_variance(quantity, noise_var)

    def set_params(self, **params) -> SparseGPPotential:
        """Set parameters, scikit-learn style (``descriptor__r_cut=4.5`` sets a nested one).

        Parameters
        ----------
        **params
            Parameter names and values, as :meth:`get_params` lists them.

        Returns
        -------
        self : SparseGPPotential
            With the parameters set.

        Raises
        ------
        ValueError
            If a nested parameter names a component left at its default ``None``
            (``descriptor``, ``kernel``): there is no object yet to set it on.
        """
        for key in params:
            component, _, nested = key.partition("__")
            if nested and component in ("descriptor", "kernel") \
                    and params.get(component, getattr(self, component, None)) is None:
                example = ("descriptor=SOAP(species, r_cut, n_max, l_max)"
                           if component == "descriptor" else "kernel=NormalizedDotProduct()")
                raise ValueError(
                    f"{type(self).__name__}.set_params: {key} sets a parameter of the "
                    f"{component}, which is None (the default, chosen at fit): give one "
                    f"({example}) to set its parameters, e.g. in GridSearchCV's estimator")
        return super().set_params(**params)

    def calibrate(self, X: Sequence[Atoms]) -> SparseGPPotential:
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
            ``v_ref`` is the geometric mean of ``u`` there (at the first search's ``w``;
            only a reparametrisation of ``c``). ``w = 1`` for an exact model (no
            projection term). Fewer than 50
            energies take ``w`` and ``p`` from the force map and fix ``d`` at 0.01 (the
            learned noise folded into the epistemic part; see
            :meth:`kernelpot.calibration.StdCalibration.fit`). Saved with the
            model and applied while ``apply_calibration`` is True to every std the
            model reports (``std_type="epistemic"`` and ``"total"``, the calculator's
            ``energy_std``/``forces_std``). Also
            ``interval_scores_ = {"energy": ..., "forces": ...}``: the sorted
            normalised scores ``|error| / total calibrated std`` that
            ``return_interval=`` of :meth:`predict` and :meth:`predict_forces`
            turns into split-conformal intervals.

        Notes
        -----
        The map, why it has two terms and an exponent, and what the intervals
        guarantee: :mod:`kernelpot.calibration`. Where the noise alone already
        explains the errors, which then do not determine ``c``, ``c`` is the largest
        value they do not reject (a 95 % profile-likelihood bound; logged).
        """
        owner = f"{type(self).__name__}.calibrate"
        check_is_fitted(self)
        frames = check_frames(X, owner)
        labels = read_labels(frames, owner, every=True)
        if len(frames) < CALIBRATE_FEW and self.interval_kind_ == "loso":
            # said: a new user's calibrate on 3 frames replaced the map of the training
            # structures' LOSO errors in silence (energy coverage 64 % -> 90 % at 1 std)
            warnings.warn(f"{owner}: {len(frames)} validation structure(s) replace the std "
                          "map fitted at fit time on the training structures' "
                          "leave-one-structure-out errors; so few fit it loosely (50 "
                          "structures calibrate its scale to a few per cent): keep the "
                          "default map unless these are more like the structures to come",
                          UserWarning, stacklevel=2)
        with_forces = [k for k, f in enumerate(labels.forces) if f is not None]
        # raw variance terms, in one prediction pass: the force pass also gives the
        # energy variance terms
        with contact_warnings_handled():  # validation pairs closer than the training ones
            # are what a calibration learns from; the warning stays for later predictions
            _, predicted = self._predict_many(frames, forces=bool(with_forces),
                                              variance=True if with_forces else "energy")
        terms = {}
        if labels.has_energy.any():
            chosen = np.flatnonzero(labels.has_energy)
            terms["energy"] = (
                np.array([predicted[k].energy for k in chosen]) - labels.energies[chosen],
                np.array([predicted[k].energy_var_posterior for k in chosen]),
                np.array([predicted[k].energy_var_projection for k in chosen]),
                self.energy_noise_**2 * np.array([len(frames[k]) for k in chosen]))
        if with_forces:
            chosen = [predicted[k] for k in with_forces]
            post = np.concatenate([p.forces_var_posterior.ravel() for p in chosen])
            terms["forces"] = (
                np.concatenate([(p.forces - labels.forces[k]).ravel()
                                for p, k in zip(chosen, with_forces, strict=True)]),
                post, np.concatenate([p.forces_var_projection.ravel() for p in chosen]),
                np.full(post.size, self.force_noise_**2))
        force_atoms = (np.concatenate([np.repeat(frames[k].numbers, 3) for k in with_forces]),
                       np.concatenate([np.full(3 * len(frames[k]), k) for k in with_forces])
                       ) if with_forces else None
        calibration = StdCalibration.fit(terms, owner, kind="validation",
                                         force_atoms=force_atoms)
        # no validation stresses here: the stress map fitted before (LOSO) stays
        for key, value in (self.std_scale_ or {}).items():
            if key.startswith("stress"):
                calibration.std_scale[key] = value
        self._adopt(self.posterior_, self.descriptor_, self.species_, self.e0_, calibration)
        logger.info("%s: calibration %s; conformal scores from %s", owner, self.std_scale_,
                    {k: len(v) for k, v in self.interval_scores_.items()})
        return self

    # -- incremental learning --------------------------------------------------------------
    def update(self, X: Sequence[Atoms], n_inducing: int | str = 0,
               optimize: bool = False,
               max_inducing: int | dict[str, int] | None = None) -> SparseGPPotential:
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
        max_inducing : int or dict, optional
            Inducing environments per element after the update, at most (one int for
            every element, or ``{element: count}``; elements not named are not
            capped). An element at its cap gains no inducing environment; its new
            structures still enter the posterior and the likelihood as observations.
            This bounds the cost of prediction as on-the-fly learning adds data.

        Returns
        -------
        self : SparseGPPotential
            Updated.

        Raises
        ------
        ValueError
            If the model keeps no training structures (loaded from a file without them,
            or a fit that kept none: see ``incremental``), was fitted with
            ``config_type_noise=True``, or a structure holds an element the model does
            not know.

        Notes
        -----
        A sparse model fitted without ``incremental=True`` is first refitted as one on
        the structures it was fitted on (once; see ``incremental``).
        An exact model (``method="exact"``) is refitted on all its structures and ``X``
        (``O(n_obs³)``), at the fitted hyperparameters unless ``optimize``;
        ``n_inducing`` and ``max_inducing`` do not apply to it. One that
        ``method="auto"`` chose becomes the sparse model once its structures and ``X``
        pass one of the ``exact_*`` limits (logged; see ``incremental``), with
        ``max_inducing`` as its cap. For the sparse model: new observations update
        the factor of the posterior by a QR update of ``O(M² n_new)``; new inducing
        environments extend the factors by block
        Cholesky steps of ``O(n M m_new)`` (see :mod:`kernelpot._incremental`).
        Descriptors of earlier structures are kept, never recomputed. The reference
        energies ``e0_`` stay as fitted. The log marginal likelihood is recomputed
        for ``log_marginal_likelihood_value_``.
        """
        check_is_fitted(self)
        owner = f"{type(self).__name__}.update"
        if self._noise_per_type():
            raise ValueError(f"{owner}: {CONFIG_TYPE_NOT_UPDATABLE}")
        posterior = self.posterior_
        if not posterior.can_update:
            posterior.check_updatable(owner)  # raises, saying why
        exact = posterior.kind == "exact"  # refitted: no inducing environments to add
        if not exact and not (n_inducing == "all" or (
                isinstance(n_inducing, numbers.Integral) and not isinstance(n_inducing, bool)
                and n_inducing >= 0)):
            raise ValueError(f"{owner}: n_inducing must be an int >= 0 or 'all'; "
                             f"got {n_inducing!r}")
        # no min_distance here: update takes labelled frames as they come (on-the-fly MD
        # that a young model drove into a close contact: the reference's label of it is
        # what the model needs; refusing it stopped a run, measured)
        cap = self._inducing_cap(max_inducing, owner)  # the exact model's, if it turns sparse
        frames = check_frames(X, owner)
        indices = self._species_indices(frames, owner)
        raw_labels, labels = self._new_labels(frames, owner)
        shortest = getattr(self, "shortest_pairs_", None)
        shortest = shortest.copy().add(frames) if shortest is not None else None
        self._make_updatable(owner)  # a sparse fit without a training state: refitted once
        posterior = self.posterior_
        if exact:
            training = posterior.training.extended(
                frames, labels, indices, raw_labels if self.baseline_ is not None else None)
            if self.method == "auto" and not self.signal_per_element \
                    and not self._exact_within_limits(training, self.descriptor_,
                                                      ("keeps", "turns")):
                self._refit_sparse(training, len(frames), optimize, owner, cap,
                                   "the exact model passed the limits of method='auto', so "
                                   "the sparse model was fitted")
            else:
                self._refit_exact(training, len(frames), optimize, owner)
            self.shortest_pairs_ = shortest
            return self
        names = fitted_names(self.optimize, type(self).__name__) if optimize else None
        loso = self.calibration == "loso"
        posterior.loso_blocks = (self.loso_blocks, None)  # recomputed with the LOSO terms
        posterior.update(frames, labels, indices, self.descriptor_, self.e0_, n_inducing,
                         names, NoiseSearch.of(self), check_random_state(self.random_state),
                         owner, loso=loso, max_inducing=cap, raw_labels=raw_labels)
        self._adopt_updated(posterior, owner)
        self.shortest_pairs_ = shortest
        logger.info("%s: %d structures added; inducing environments %s", owner, len(frames),
                    self.n_inducing_)
        return self

    def _noise_per_type(self) -> bool:
        """Return whether the model has a noise per configuration type, as set or as fitted.

        Such a model cannot be updated (:data:`CONFIG_TYPE_NOT_UPDATABLE`): a refit keeps
        one noise per kind of observation and would drop the fitted scales, also after
        ``set_params(config_type_noise=False)``.
        """
        return bool(self.config_type_noise or getattr(self, "config_type_noise_", None))

    def _make_updatable(self, owner: str) -> None:
        """Refit a sparse model fitted without ``incremental=True`` as one, on its structures.

        A sparse fit keeps no training state unless ``incremental=True``, but keeps its
        structures (:meth:`_keep_training`); its first :meth:`update` (or an
        :class:`~kernelpot.OnTheFlyLearner` handed it) refits it with
        ``incremental=True`` at the fitted hyperparameters and on the fitted inducing
        environments, once: the same model (tested), whatever ``random_state``. A
        :meth:`calibrate` map stays. Nothing for a model
        that can be updated already, or that keeps no structures (``update`` then says
        why).
        """
        posterior = self.posterior_
        fitted_on = getattr(posterior, "fitted_on", None)
        if posterior.keeps_training_data or fitted_on is None:
            return
        self._refit_sparse(fitted_on, 0, False, owner, None,
                           "the model was fitted without incremental=True, so it was "
                           "refitted as an incremental one (once)", keep_map=True,
                           inducing=(list(posterior.inducing),
                                     None if posterior.inducing_origin is None
                                     else list(posterior.inducing_origin)))

    def _inducing_cap(self, max_inducing, owner: str) -> np.ndarray | None:
        """Return ``update``'s ``max_inducing`` as a cap per element (inf: none)."""
        max_inducing = check_max_inducing(max_inducing, owner)
        if max_inducing is None:
            return None
        symbols = [chemical_symbols[z] for z in self.species_]
        if isinstance(max_inducing, dict):
            unknown = sorted(set(max_inducing) - set(symbols), key=str)
            if unknown:
                raise ValueError(f"{owner}: max_inducing names {unknown}, which the model "
                                 f"does not know; its elements are {symbols}")
            return np.array([max_inducing.get(s, np.inf) for s in symbols], dtype=float)
        return np.full(len(symbols), float(max_inducing))

    def _refit_exact(self, training: TrainingSet, n_new: int, optimize: bool,
                     owner: str) -> SparseGPPotential:
        """Update an ``incremental=True`` exact model: refit it on ``training``.

        ``training`` is its structures with the ``n_new`` new ones. The hyperparameters
        start from the fitted ones and stay there unless ``optimize``; the reference
        energies ``e0_`` stay as fitted.
        """
        posterior = self.posterior_
        settings = clone(self).set_params(optimize=self.optimize if optimize else False)
        verbose = check_verbose(self.verbose, type(self).__name__)
        refitted = ExactPosterior.fit(
            settings, training, self.descriptor_, self.kernel_,
            check_random_state(self.random_state),
            lambda fn, items, desc: self._imap(fn, items, verbose, desc),
            start=posterior.log_params())
        self._adopt_updated(refitted, owner)
        logger.info("%s: %d structures added; exact model refitted on %d", owner, n_new,
                    refitted.n_training_structures)
        return self

    def _refit_sparse(self, training: TrainingSet, n_new: int, optimize: bool,
                      owner: str, cap: np.ndarray | None, why: str,
                      keep_map: bool = False,
                      inducing: tuple | None = None) -> SparseGPPotential:
        """Fit the sparse model with a training state on ``training``, for later updates.

        Two callers: an exact model ``method="auto"`` chose, once the grown training set
        passes the ``exact_*`` limits, and a sparse model fitted without
        ``incremental=True`` at its first update. The sparse model (``incremental=True``;
        the model's ``n_sparse``, the default inducing environments for an exact one,
        at most ``cap`` per element, the update's ``max_inducing``) on every structure,
        at the model's hyperparameters (a two-body term's fitted prior std among them)
        unless ``optimize`` (then they are its start), with the reference energies
        ``e0_`` as fitted. Later updates are the sparse model's. ``why`` starts the log
        line. ``keep_map``: the refit of the same structures keeps a :meth:`calibrate` map
        (the LOSO one is refitted either way); ``inducing``: its inducing environments
        and their origins, kept instead of chosen again.
        """
        start = time.perf_counter()
        fitted = {"signal_std": float(np.max(self.signal_std_)),
                  "energy_noise": float(self.energy_noise_),
                  "force_noise": float(self.force_noise_)}
        if self.stress_noise_ is not None and np.isfinite(self.stress_noise_):
            fitted["stress_noise"] = float(self.stress_noise_)
        # a value fitted at a bound comes back from log space a rounding past it
        fitted = {name: float(np.clip(value, *getattr(self, f"{name}_bounds")))
                  for name, value in fitted.items()}
        settings = clone(self).set_params(method="sparse", incremental=True,
                                          optimize=self.optimize if optimize else False,
                                          **fitted)
        if getattr(self, "two_body_", None) is not None:
            settings.set_params(two_body=clone(self.two_body_))
        if cap is not None and np.isfinite(cap).any():
            symbols = [chemical_symbols[z] for z in self.species_]
            settings.set_params(n_sparse={
                symbol: int(min(limit, DEFAULT_SPARSE_CAP))
                for symbol, limit in zip(symbols, cap, strict=True) if np.isfinite(limit)})
        settings._check_params()
        verbose = check_verbose(self.verbose, type(self).__name__)
        sparse = SparsePosterior.fit(
            settings, training, self.descriptor_, clone(self.kernel_),
            check_random_state(self.random_state),
            lambda fn, items, desc: self._imap(fn, items, verbose, desc),
            runner=BlockRunner(self.n_jobs, None, verbose, owner), inducing=inducing)
        if keep_map and self.interval_kind_ == "validation":  # the same data: still holds
            self._adopt(sparse, self.descriptor_, self.species_, self.e0_,
                        StdCalibration(self.std_scale_, self.interval_scores_,
                                       kind="validation"))
        else:
            self._adopt_updated(sparse, owner)
        logger.info("%s: %s on all %d structures (%d of them new) in %.1f s (inducing "
                    "environments %s); later updates are incremental", owner, why,
                    len(training.frames), n_new, time.perf_counter() - start,
                    self.n_inducing_)
        return self

    def _new_labels(self, frames: list, owner: str):
        """Return the labels of new structures as read and as the GP fits them."""
        stress = bool(self.use_stress) and getattr(self.descriptor_, "periodic", None) is not False
        raw_labels = read_labels(frames, owner, stress=stress, every=True)
        return raw_labels, residual_labels(frames, raw_labels, self.baseline_)

    def _adopt_updated(self, posterior, owner: str) -> None:
        """Adopt an updated posterior and its LOSO map; a validation map is dropped."""
        if self.interval_kind_ == "validation":
            loso = self.calibration == "loso"
            warnings.warn(f"{owner}: the std calibration no longer applies to the updated "
                          "model: the map calibrate() fitted is dropped"
                          + (" for the LOSO one of all the data" if loso else
                             "; call calibrate() again"), UserWarning, stacklevel=3)
        self._adopt(posterior, self.descriptor_, self.species_, self.e0_,
                    self._loso_calibration(posterior))

    def restore_training(self, frames: Sequence[Atoms]) -> SparseGPPotential:
        """Give a loaded model its training structures back, so that it can be updated.

        A sparse model saved with ``training_state=True``, or an exact model (its file
        keeps the structures and labels ``frames`` are checked against).

        Parameters
        ----------
        frames : list of ase.Atoms
            The structures the model was trained on, in training order (for an
            on-the-fly run, the first frames of its labelled-frames file).

        Returns
        -------
        self : SparseGPPotential
            Ready for :meth:`update`; a model file from before models kept
            ``shortest_pairs_`` gets them from ``frames``.
        """
        owner = f"{type(self).__name__}.restore_training"
        check_is_fitted(self)
        frames = check_frames(frames, owner)
        verbose = check_verbose(self.verbose, type(self).__name__)

        state = getattr(self.posterior_, "training", None) \
            if self.posterior_.kind == "sparse" else None
        strain = [row >= 0 for row in state.stress_row] \
            if state is not None and len(state.stress_row) == len(frames) else None

        def describe(frames):
            indices = self._species_indices(frames, owner)
            return indices, self.descriptor_.compute_all(
                frames, lambda fn, items, desc: self._imap(fn, items, verbose, desc), strain)

        posterior = self.posterior_
        training = self._training_set(frames, owner) if posterior.kind == "exact" else None
        posterior.loso_blocks = (self.loso_blocks, None)  # recomputed with the LOSO terms
        # the stored labels are the GP's (reference minus baseline): so are the checked ones
        posterior.restore_training(self._residual_frames(frames), describe, owner, training)
        if self.calibration == "loso":  # the LOSO terms are not stored in files
            self._refit_loso_map(owner)
        if getattr(self, "shortest_pairs_", None) is None:
            # a file from before models kept them: rebuilt from the training structures
            self.shortest_pairs_ = ShortestPairs.of_descriptor(self.species_, self.descriptor_)
            if self.shortest_pairs_ is not None:
                self.shortest_pairs_.add(frames)
        return self

    def _refit_loso_map(self, owner: str) -> None:
        """Recompute the LOSO terms (with ``loso_blocks`` as set) and the map fitted on them.

        A :meth:`calibrate` map stays as it was.
        """
        posterior = self.posterior_
        posterior.loso_blocks = (self.loso_blocks, None)
        posterior.refresh_loso(owner)
        if self.interval_kind_ != "validation":
            self._adopt(posterior, self.descriptor_, self.species_, self.e0_,
                        self._loso_calibration(posterior))

    def _training_set(self, frames: list, owner: str) -> TrainingSet:
        """Return ``frames`` as a training set of this model's species and ``e0_``."""
        raw_labels, labels = self._new_labels(frames, owner)
        indices = self._species_indices(frames, owner)
        counts = composition_counts(indices, len(self.species_))
        # copies with their labels: the caller's objects may move later (see _keep_training)
        return TrainingSet([labels_only(a) for a in frames], labels, self.species_, indices,
                           counts, self.e0_, raw_labels if self.baseline_ is not None else None)

    def _residual_frames(self, frames: list) -> list:
        """Return copies of ``frames`` labelled minus the baseline (the GP's labels)."""
        if self.baseline_ is None:
            return frames
        try:
            labels = read_labels(frames, type(self).__name__, stress=True)
        except ValueError:  # unlabelled structures: nothing to subtract from
            return frames
        labels = residual_labels(frames, labels, self.baseline_)
        stresses = labels.stresses or [None] * len(frames)
        return [labelled_copy(atoms, energy, forces, stress) for atoms, energy, forces, stress
                in zip(frames, labels.energies, labels.forces, stresses, strict=True)]

    # -- scores, likelihood, files ---------------------------------------------------------
    def score(self, X: Sequence[Atoms], y: None = None, sample_weight: None = None) -> float:
        """Return the R² of the predicted force components against the reference forces.

        Parameters
        ----------
        X : list of ase.Atoms
            Structures with reference forces.
        y : None
            Present for scikit-learn; labels come from the structures.
        sample_weight : None
            Present for scikit-learn.

        Returns
        -------
        float
            ``1 - Σ (F - F_ref)² / Σ (F_ref - mean(F_ref))²`` over all components
            of the structures that carry forces.
        """
        if y is not None or sample_weight is not None:
            raise TypeError("score: labels come from the structures; y and sample_weight "
                            "must be None")
        # the scorers' reading of the structures and their labels (metrics._scored)
        frames, labels = metrics._scored(X, None, f"{type(self).__name__}.score")
        predicted, reference = metrics._labelled_forces(self, frames, labels, "score")
        ref = np.concatenate([f.ravel() for f in reference])
        pred = np.concatenate([f.ravel() for f in predicted])
        return float(1.0 - np.sum((pred - ref) ** 2) / np.sum((ref - ref.mean()) ** 2))

    def log_marginal_likelihood(self, theta: ArrayLike | None = None,
                                eval_gradient: bool = False,
                                ) -> float | tuple[float, np.ndarray]:
        """Return the log marginal likelihood of the training data.

        Parameters
        ----------
        theta : array-like of shape (4,), optional
            ``log`` of (signal std eV, energy noise eV/√atom, force noise eV/Å, stress
            noise eV/Å³); with ``signal_per_element=True``, shape
            ``(n_species + 3,)``: one signal std per element of ``species_`` first.
            ``None`` returns the value at the fitted hyperparameters.
        eval_gradient : bool, default=False
            Also return the gradient in ``theta``.

        Returns
        -------
        float, or (float, ndarray of the shape of theta)
            The log marginal likelihood, and its gradient with ``eval_gradient``.

        Raises
        ------
        ValueError
            For ``theta`` or ``eval_gradient`` on a model with a noise scale per
            configuration type (``config_type_noise_``): only its fitted value is kept.
        """
        check_is_fitted(self)
        per_element = isinstance(self.signal_std_, dict)
        if theta is None and not eval_gradient:
            return self.log_marginal_likelihood_value_
        if self.config_type_noise_ is not None:
            raise ValueError("log_marginal_likelihood: this model learned a noise scale per "
                             "configuration type (config_type_noise_); theta and its gradient "
                             "cover one noise per kind, so only the fitted value (theta=None, "
                             "eval_gradient=False) is available")
        if theta is None:
            sigmas = np.sqrt(self.posterior_.signal_variances()) if per_element \
                else [self.signal_std_]
            theta = np.log(np.concatenate([sigmas, [self.energy_noise_, self.force_noise_,
                                                    self.stress_noise_]]))
        theta = np.asarray(theta, dtype=np.float64)
        n_theta = len(self.species_) + 3 if per_element else 4
        if theta.shape != (n_theta,):
            raise ValueError(f"theta must have shape ({n_theta},); got {theta.shape}")
        return self.posterior_.log_marginal_likelihood(theta, eval_gradient=eval_gradient)

    def save(self, path: os.PathLike | str, training_state: bool = False) -> Path:
        """Save the fitted model as ``.npz`` arrays plus JSON metadata (no pickle).

        Parameters
        ----------
        path : str or path-like
            Destination; ``.npz`` is appended if missing.
        training_state : bool, default=False
            Also store the labels and row layout an ``incremental=True`` model keeps,
            so that a loaded model can :meth:`update` once its training structures are
            given back (:meth:`restore_training` rebuilds the design from them;
            on-the-fly checkpoints).

        Returns
        -------
        pathlib.Path
            The file written.

        See Also
        --------
        kernelpot.load : Read the file back into a fitted model.

        Notes
        -----
        A loaded model predicts the same energies, forces and stresses. A sparse
        model's whitened posterior factor ``R_w`` is stored in float32 where the
        rounding ``E`` keeps ``‖E R_w⁻¹‖_F`` within
        :data:`kernelpot.gp.FLOAT32_FACTOR_TOLERANCE` (0.005): then every raw
        epistemic variance reads back within 1 % of the saved model's, its std within
        0.5 %, and a calibrated std whose map has exponent ``p`` within ``p / 2`` %
        (usually far closer: 8e-6 relative at most on 80 Cu₃Au cells); otherwise in
        float64, and the stds read back to round-off. The factor of the inducing
        kernel is rebuilt from the inducing environments rather than stored.
        """
        check_is_fitted(self)
        unsaved = _unsaved_baseline(self.baseline_)
        if unsaved is not None:
            raise ValueError(f"save: the model's baseline is {unsaved} "
                             "(an ASE calculator), which a model file cannot hold; use a "
                             "registered baseline (ZBL, LennardJones, Pair, Coulomb) to save the "
                             "model")
        arrays, fitted = self.posterior_.to_arrays(training_state=training_state)
        arrays = {"species": self.species_, "e0": self.e0_, **arrays}
        if getattr(self, "shortest_pairs_", None) is not None:
            arrays["shortest_pairs"] = self.shortest_pairs_.distances
        for quantity, scores in (self.interval_scores_ or {}).items():
            arrays[f"interval_scores_{quantity}"] = scores
        for quantity, (scores, structure) in (self.jackknife_scores_ or {}).items():
            arrays[f"jackknife_scores_{quantity}"] = scores
            arrays[f"jackknife_structure_{quantity}"] = structure
        registry = io.parameter_classes()
        metadata = {
            "estimator": type(self).__name__,
            "params": io.encode(self.get_params(deep=False), registry),
            "descriptor": io.encode(self.descriptor_, registry),
            "kernel": io.encode(self.kernel_, registry),
            "two_body": io.encode(self.two_body_, registry),
            "fitted": {**fitted, "n_inducing": self.n_inducing_, "std_scale": self.std_scale_,
                       "interval_kind": self.interval_kind_},
        }
        return io.write_model_file(path, metadata, arrays)

    def __sklearn_is_fitted__(self) -> bool:
        """Return whether the model is fitted (for ``check_is_fitted``)."""
        return hasattr(self, "alpha_")


class _PreparedFit(NamedTuple):
    """What :meth:`SparseGPPotential.fit` has checked and chosen before it fits."""

    training: TrainingSet
    descriptor: Descriptor
    kernel: Kernel
    baseline: object
    rng: np.random.RandomState
    method: str
    shortest: ShortestPairs | None


def _exact_costs(frames, species_index, has_energy, has_forces, n_species: int,
                 descriptor, has_stress=None) -> dict[str, float]:
    """Estimated memory, fit time and prediction time of an exact model on ``frames``.

    A cell's six stress components are six more observations with two Jacobian rows
    per atom and component triple (:func:`kernelpot.gp.stress_jacobian`).
    """
    n_atoms = np.array([len(a) for a in frames])
    has_energy, has_forces = np.asarray(has_energy, bool), np.asarray(has_forces, bool)
    has_stress = np.zeros(len(frames), bool) if has_stress is None \
        else np.asarray(has_stress, bool)
    n_obs = int(has_energy.sum() + 3 * n_atoms[has_forces].sum() + 6 * has_stress.sum())
    # Jacobian rows per element, from the neighbour pairs per atom of a few structures
    sample = np.unique(np.linspace(0, len(frames) - 1, 5).astype(int))
    pairs, centres = np.zeros(n_species), np.zeros(n_species)
    n_features = 0
    for k in sample:
        result = descriptor.compute(frames[k])
        index = species_index[k]
        pairs += np.bincount(index[result.pairs[:, 0]], minlength=n_species)
        centres += np.bincount(index, minlength=n_species)
        n_features = result.n_features
    per_atom = np.where(centres > 0, pairs / np.maximum(centres, 1),
                        pairs.sum() / max(centres.sum(), 1))
    atoms_with_forces = np.zeros(n_species)
    for k in np.flatnonzero(has_forces):
        atoms_with_forces += np.bincount(species_index[k], minlength=n_species)
    atoms_with_stress = np.zeros(n_species)
    for k in np.flatnonzero(has_stress):
        atoms_with_stress += np.bincount(species_index[k], minlength=n_species)
    rows = 3 * per_atom * atoms_with_forces + 6 * atoms_with_stress
    # a predicted atom of the training set's composition
    share = atoms_with_forces / max(atoms_with_forces.sum(), 1)
    return {"n_observations": n_obs,
            "memory_gib": exact.memory_estimate(n_obs, int(rows.sum()), n_features,
                                                n_species) / 2**30,
            "fit_seconds": exact.fit_time_estimate(n_obs, rows, n_features),
            "prediction_ms_per_atom": 1e3 * exact.prediction_time_estimate(
                3 * per_atom * share, rows, n_features, share,
                3 * atoms_with_forces.sum() + 6 * has_stress.sum())}


def _unsaved_baseline(baseline) -> str | None:
    """Return the class name of a baseline (or a sum's term) a model file cannot hold."""
    for term in baseline_terms(baseline):
        if type(term).__name__ not in io.parameter_classes():
            return type(term).__name__
    return None


def _warn_if_zbl_reaches_the_data(baseline, shortest, owner: str) -> None:
    """Warn when a ZBL baseline acts at distances the training structures hold.

    It is meant for contacts closer than any trained on; within the data it changes the
    energies the GP learns from (measured: a new user's NaCl cells, shortest pair
    2.53 Å, ``r_cut`` 3 Å: test force MAE 2.13 → 2.73 meV/Å).
    """
    reach = max((term.r_cut for term in baseline_terms(baseline) if isinstance(term, ZBL)),
                default=None)
    if reach is None or shortest is None:
        return
    closest = float(np.min(shortest.distances))
    if closest < reach:
        warnings.warn(f"{owner}: the ZBL baseline acts up to r_cut={reach:g} Å, "
                      f"beyond the shortest pair of the training structures ({closest:.3g} "
                      "Å): it changes the energies the GP learns from, where it is meant "
                      f"for closer contacts only (give r_cut below {closest:.3g} Å)",
                      UserWarning, stacklevel=3)

