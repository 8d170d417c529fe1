"""The sparse (DTC) model's fitted posterior: fit, predict, variances, updates, arrays.

:class:`SparsePosterior` is what ``SparseGPPotential(method="sparse")`` fits. It
owns the inducing environments, the two-body term, the factors of the posterior
over the inducing values (:class:`kernelpot.gp.Posterior`), the likelihood's
statistics and, for incremental models, the training state
(:class:`kernelpot._incremental.TrainingState`). Its state is set in one place,
:meth:`SparsePosterior.__init__`, and changed only by :meth:`SparsePosterior.update`
and :meth:`SparsePosterior.restore_training`.

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

They are reported separately (:class:`Prediction`, raw; the calculator's
``forces_std_posterior`` and ``forces_std_projection``, each its share of the calibrated
std) and combined by the calibration map (:mod:`kernelpot.calibration`) on
``v_posterior + w² v_projection``, fitted at fit time on the training structures'
leave-one-structure-out errors (the default) or by :meth:`calibrate` on validation
data; without a map the raw sum. Added raw, the projection term dominates and is
several times too wide. The exact model (``method="exact"``)
has only the first term, its exact posterior variance
``σ² k_** - k_*ᵀ K_y⁻¹ k_*``. The total variance adds the learned noise:
``σ_E² N`` for an ``N``-atom energy, ``σ_F²`` per force component. Every variance
is clipped at zero, with a warning if round-off went beyond 1e-8 relative.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg as sla
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from joblib import effective_n_jobs
from sklearn.base import clone

from kernelpot import _incremental, gp, loso_blocks, noise_groups, streaming
from kernelpot._block_runner import BlockRunner
from kernelpot._labels import TrainingSet
from kernelpot._structures import labels_only
from kernelpot._two_body_search import pair_factor, search_prior_std, whitened_pair_scale
from kernelpot.descriptors import DescriptorResult
from kernelpot.design import (
    AssembledDesign,
    SparseDesign,
    prior_with_two_body,
    rebuilt_inducing_factor,
    with_two_body,
)
from kernelpot.fit_memory import (
    IN_MEMORY_COPIES,
    FitMemory,
    block_rows_for,
    sparse_fit_memory,
)
from kernelpot.hyperparameters import (
    DEFAULT_STRESS_NOISE,
    NoiseSearch,
    fitted_names,
    free_mask,
    kernel_profile_search,
    search_on_subset,
    values_kept_where_fixed,
    warn_if_force_noise_at_bound,
)
from kernelpot.inducing import (
    FarthestPointPool,
    candidate_atoms,
    choose_inducing,
    held_environments,
    resolve_n_sparse,
)
from kernelpot.loso import LosoTerms, own_columns, own_spans, sparse_loso
from kernelpot.loso import timed as _timed_loso
from kernelpot.mean_maps import MeanMap, mean_map
from kernelpot.posterior import Posterior
from kernelpot.prediction import Prediction, PredictionParts

if TYPE_CHECKING:
    from ase import Atoms
    from sklearn.base import BaseEstimator

    from kernelpot._labels import Labels
    from kernelpot.descriptors.base import Descriptor
    from kernelpot.kernels import Kernel
    from kernelpot.two_body import TwoBody

logger = logging.getLogger(__name__)

__all__ = ["SparsePosterior", "features_only"]

#: how close (relative to its largest entry) ``L_mm`` rebuilt from the inducing
#: environments must come to the model's for a model file to leave it out
REBUILD_RTOL = 1e-10

#: Inducing environments per species when ``n_sparse=None``.
DEFAULT_SPARSE_CAP = 2000
#: Descriptors (with gradients) kept in memory during a kernel-hyperparameter search.
_DESCRIPTOR_CACHE_BYTES = 2 * 2**30
#: Fields of the training state a model file stores (``training_state=True``): the labels
#: and row layout only. The whitened design and its factor are rebuilt from the structures
#: by :meth:`SparsePosterior.restore_training` (format 5; format 4 stored them).
_STATE_FIELDS = ("y", "noise_std", "is_energy", "n_atoms_row", "energy_row", "force_row")
#: Fields format-4 files stored besides: the design ``Kw`` and the factors ``L_mm``, ``R``, ``b``.
_STORED_DESIGN_FIELDS = ("Kw", "L_mm", "R", "b")


def features_only(features: np.ndarray) -> DescriptorResult:
    """Wrap features in a DescriptorResult without Jacobian, for energy-only predictions.

    Parameters
    ----------
    features : ndarray of shape (n_atoms, n_features)

    Returns
    -------
    DescriptorResult
    """
    return DescriptorResult(features, np.zeros((0, 2), dtype=np.int64),
                            np.zeros((0, 3, features.shape[1])))


def labelled_copy(atoms: Atoms, energy: float, forces: np.ndarray | None,
                  stress: np.ndarray | None = None) -> Atoms:
    """Copy ``atoms`` with its reference labels (``Atoms.copy`` drops them).

    Parameters
    ----------
    atoms : ase.Atoms
    energy : float
        NaN for none.
    forces : ndarray of shape (n_atoms, 3) or None
    stress : ndarray of shape (6,) or None, default=None

    Returns
    -------
    ase.Atoms
    """
    copy = atoms.copy()
    kwargs = {}
    if not np.isnan(energy):
        kwargs["energy"] = float(energy)
    if forces is not None:
        kwargs["forces"] = np.array(forces)
    if stress is not None:
        kwargs["stress"] = np.array(stress)
    copy.calc = SinglePointCalculator(copy, **kwargs)
    return copy


class SparsePosterior(Posterior):
    """A fitted sparse GP: inducing environments, weights, factors and noise levels.

    Built by :meth:`fit` or :meth:`from_arrays`; the estimator copies its public
    attributes into its own trailing-underscore ones.

    Parameters
    ----------
    kernel : Kernel
    inducing : list of ndarray of shape (m_s, n_features)
    columns : list of ndarray of int
        Design columns of each element's inducing environments.
    two_body : TwoBody or None
    pair_columns : ndarray of int or None
        Design columns of the two-body coefficients.
    factors : gp.Posterior
        Weights and the factors ``L_mm``, ``L_post``.
    stats : gp.WhitenedStatistics
        The likelihood's statistics of the training design.
    signal_std, energy_noise, force_noise, stress_noise : float
        eV, eV/√atom, eV/Å, eV/Å³ (the given value when no stress was trained on).
    log_marginal_likelihood : float
    jitter, jitter_abs : float
        Of ``k_mm`` (relative to its mean diagonal, absolute).
    training : TrainingState or None, default=None
        What updates need (incremental models).
    loso : LosoTerms or None, default=None
        Leave-one-structure-out errors and variance terms of the training data
        (:mod:`kernelpot.loso`), when the estimator's ``calibration="loso"`` asked for
        them; recomputed by :meth:`update` when the training state holds the prior
        variances. Not stored in model files.
    needs_frames : bool, default=False
        The training state was loaded without its structures
        (:meth:`restore_training` gives them back).
    inducing_origin : list of ndarray of int or None, default=None
        Per element, the training structure each inducing environment was chosen from
        (-1: not known). The LOSO projection term of a structure leaves out its own
        inducing environments (:func:`kernelpot.loso.own_span`).
    """

    kind = "sparse"

    def __init__(self, *, kernel: Kernel, inducing: list[np.ndarray],
                 columns: list[np.ndarray], two_body: TwoBody | None,
                 pair_columns: np.ndarray | None, factors: gp.Posterior,
                 stats: gp.WhitenedStatistics, signal_std: float, energy_noise: float,
                 force_noise: float, stress_noise: float, log_marginal_likelihood: float,
                 jitter: float,
                 jitter_abs: float, training: _incremental.TrainingState | None = None,
                 loso: LosoTerms | None = None,
                 needs_frames: bool = False,
                 inducing_origin: list[np.ndarray] | None = None):
        self.kernel = kernel
        self.inducing = inducing
        self.columns = columns
        self.two_body = two_body
        self.pair_columns = pair_columns if two_body is not None else None
        self.factors = factors
        self.stats = stats
        self.signal_std = float(signal_std)
        self.energy_noise = float(energy_noise)
        self.force_noise = float(force_noise)
        self.stress_noise = float(stress_noise)
        self.log_marginal_likelihood_value = float(log_marginal_likelihood)
        self.jitter = float(jitter)
        self.jitter_abs = float(jitter_abs)
        self.training = training
        self.loso = loso
        #: the ``loso_blocks`` setting and the leave-out block of each training structure
        #: (None: one each), set by the fit and recomputed by every LOSO refresh
        self.loso_blocks: tuple = ("auto", None)
        self.loo_shift = loso.shift_basis if loso is not None else None
        #: structures fitted on, as a model file records it (None: not recorded; see
        #: :meth:`fitted_structures`)
        self.recorded_structures: int | None = None
        self.needs_frames = bool(needs_frames)
        self.inducing_origin = inducing_origin

    def fitted_structures(self) -> int | None:
        """Return how many structures the posterior was fitted on, where that is known.

        The training state counts them; without it, the leave-out blocks of the fit
        (one entry per structure), the recorded count of a loaded file, or the LOSO
        shift basis, whose columns are the structures when they were left out one at a
        time (and the blocks otherwise, which the blocks' record then tells apart).
        """
        if self.training is not None:
            return self.n_training_structures
        if self.loso_blocks[1] is not None:
            return len(self.loso_blocks[1])
        if self.recorded_structures is not None:
            return self.recorded_structures
        return None if self.loo_shift is None else int(self.loo_shift.shape[1])

    def own_columns(self, n_structures: int) -> list[np.ndarray] | None:
        """Per training structure, the design columns of the inducing environments chosen from it.

        Parameters
        ----------
        n_structures : int

        Returns
        -------
        list of ndarray of int or None
            ``None`` when no origin is known (:func:`kernelpot.loso.own_columns`).
        """
        return own_columns(self.inducing_origin, self.columns, n_structures)

    # -- what the estimator reads ---------------------------------------------------------
    @property
    def n_stress_observations(self) -> int:
        """Return the stress components trained on (six per cell)."""
        return int(self.stats.n_S)

    @property
    def n_energy_observations(self) -> int:
        """Return the structure energies trained on."""
        return int(self.stats.n_E)

    @property
    def n_force_observations(self) -> int:
        """Return the force components trained on."""
        return int(self.stats.n_F)

    @property
    def weights(self) -> np.ndarray:
        """Return the weights: a design row ``k`` predicts ``k @ weights``."""
        return self.factors.weights

    def prepare_prediction(self) -> None:
        """Build the mean maps before predictions are dispatched to workers."""
        self.mean_maps()

    def mean_maps(self) -> list[MeanMap]:
        """Return each element's mean map (:mod:`kernelpot.mean_maps`), built once per fit.

        Rebuilt when the weights, the inducing set or the kernel's hyperparameters
        are replaced (after :meth:`update`, a re-optimisation, or ``set_params`` of a
        hyperparameter in ``theta``). Arrays edited in place (the weights,
        ``kernel.zeta``) are not noticed: refit instead.

        Returns
        -------
        list of MeanMap
            One per element.
        """
        theta = self.kernel.theta
        cached = self.__dict__.get("_mean_maps_cache")
        if cached is not None and cached[0] is self.factors and cached[1] is self.kernel \
                and len(cached[2]) == len(self.inducing) \
                and all(a is b for a, b in zip(cached[2], self.inducing, strict=True)) \
                and np.array_equal(cached[3], theta):
            return cached[4]
        weights = self.weights
        maps = [mean_map(self.kernel, Z, weights[self.columns[s]])
                for s, Z in enumerate(self.inducing)]
        self._mean_maps_cache = (self.factors, self.kernel, list(self.inducing), theta, maps)
        return maps

    @property
    def n_species(self) -> int:
        """Return the number of elements."""
        return len(self.inducing)

    @property
    def keeps_training_data(self) -> bool:
        """Return whether the posterior can be updated (an incremental fit)."""
        return self.training is not None

    @property
    def n_training_structures(self) -> int:
        """Return the structures trained on so far (incremental models)."""
        return len(self.training.energy_row)

    def training_numbers(self) -> list[np.ndarray] | None:
        """Return each training structure's atomic numbers (None: not kept).

        Returns
        -------
        list of ndarray or None
            None for a model that keeps no training state, or one loaded from a file
            whose structures were not given back.
        """
        state = self.training
        if state is None or len(state.frames) != len(state.energy_row):
            return None
        return [np.asarray(atoms.numbers) for atoms in state.frames]

    @property
    def training_frames(self) -> list:
        """Return the labelled structures trained on so far (incremental models)."""
        return self.training.frames

    def force_labels(self) -> np.ndarray:
        """Return the force components trained on (the GP's labels), flattened, eV/Å."""
        state = self.training
        return state.y[_incremental.force_mask(state)]

    # -- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(cls, estimator: BaseEstimator, training: TrainingSet, descriptor: Descriptor,
            kernel: Kernel, rng: np.random.RandomState,
            imap: Callable[..., Iterator], runner: BlockRunner | None = None,
            inducing: tuple[list, list | None] | None = None) -> SparsePosterior:
        """Fit the sparse model to a training set.

        Parameters
        ----------
        estimator : SparseGPPotential
            Its parameters (read, not changed).
        training : TrainingSet
        descriptor : Descriptor
            Fitted (cloned) descriptor.
        kernel : Kernel
            Cloned kernel, the start of a kernel search.
        rng : numpy.random.RandomState
        imap : callable
            ``imap(fn, items, desc)``, the estimator's ordered parallel map.
        runner : BlockRunner or None, default=None
            Where the blocks of a streamed design run
            (:class:`kernelpot._block_runner.BlockRunner`); one with a Dask client
            streams the design even when it would fit in memory.
        inducing : (list of ndarray, list of ndarray or None) or None, default=None
            The inducing environments per element and the training structure each came
            from, to use instead of choosing them (a refit of the same structures:
            :meth:`SparseGPPotential.update` of a model fitted without a training state).

        Returns
        -------
        SparsePosterior
        """
        owner = type(estimator).__name__
        runner = runner if runner is not None else BlockRunner(owner=owner)
        names = fitted_names(estimator.optimize, owner)
        pair = clone(estimator.two_body) if estimator.two_body is not None else None
        inducing, origin = inducing if inducing is not None else cls._choose_inducing(
            estimator, training, descriptor, kernel, rng, imap, runner)
        search_kernel = "kernel" in names and kernel.n_theta > 0
        extra_starts = []
        if search_kernel and estimator.search_frames is not None \
                and int(estimator.search_frames) < len(training.frames):
            kernel, subset_params = search_on_subset(estimator, training.frames, kernel, rng)
            extra_starts = [subset_params]
            search_kernel = False
        design = SparseDesign(training, descriptor, inducing, pair, imap,
                              _kept_descriptors(estimator, training, descriptor, search_kernel,
                                                imap))
        search = NoiseSearch.of(estimator)
        given = (float(estimator.signal_std), float(estimator.energy_noise),
                 float(estimator.force_noise), float(estimator.stress_noise))
        log_params = np.log(given)
        free = free_mask(names, design.n_energy, design.n_force, n_stress=design.n_stress)
        if search_kernel:
            seed = int(rng.randint(2**31 - 1))

            def likelihood_at(trial):
                assembled = design.assemble(trial, keep_basis=True, owner=owner)
                return assembled.stats, lambda inner: design.kernel_gradient(trial, assembled,
                                                                             inner)

            kernel, log_params = kernel_profile_search(kernel, log_params, free,
                                                       likelihood_at, search, seed, owner)
        search_two_body = pair is not None and "two_body" in names
        loso_wanted = estimator.calibration == "loso"
        block_rows = cls._streamed_block_rows(estimator, training, design.n_obs,
                                              design.n_columns, search_kernel,
                                              search_two_body, owner, runner)
        if block_rows is not None:
            return cls._fit_streamed(estimator, design, kernel, pair, log_params, given, free,
                                     search, rng, extra_starts, block_rows, runner, origin)
        assembled = design.assemble(kernel, keep_gram=search_two_body, owner=owner,
                                    prior=loso_wanted)
        stats, L_mm = assembled.stats, assembled.L_mm
        if search_two_body:
            pair, log_params, stats = cls._search_two_body(design, assembled, pair, log_params,
                                                           free, search, rng, estimator)
        if any(free):
            log_params = search.optimize(stats, log_params, rng, free, extra_starts)
        lml = gp.log_marginal_likelihood(log_params, stats)
        scales = None
        if estimator.config_type_noise:
            log_params, lml, scales = cls._fit_noise_scales(design, assembled.design, log_params,
                                                            lml, free, search, rng, owner)
        sigma, energy_noise, force_noise, stress_noise = values_kept_where_fixed(
            log_params, given, free)
        warn_if_force_noise_at_bound(force_noise, estimator.force_noise_bounds, free[2], owner,
                                     stacklevel=4)
        noise_std = design.noise_std(energy_noise, force_noise, stress_noise)
        if scales is not None:
            noise_std *= noise_groups.row_scales(scales, training.frames,
                                                 training.row_structures(), design.row_kinds())
        y_all = design.y
        state = cls._training_state(design, assembled, noise_std, y_all, sigma, L_mm) \
            if estimator.incremental else None
        columns = gp.inducing_columns(inducing)
        loso, blocks = _in_memory_loso(design, assembled, training, noise_std, sigma,
                                       pair is not None, origin, columns, estimator.loso_blocks,
                                       owner) if loso_wanted else (None, None)
        factors = gp.solve_posterior(assembled.design, design.n_obs, L_mm, noise_std, y_all,
                                     sigma)
        posterior = cls(kernel=kernel, inducing=inducing, columns=columns,
                        two_body=pair, pair_columns=design.pair_columns, factors=factors,
                        stats=stats, signal_std=sigma, energy_noise=energy_noise,
                        force_noise=force_noise, stress_noise=stress_noise,
                        log_marginal_likelihood=lml,
                        jitter=assembled.jitter, jitter_abs=assembled.jitter_abs,
                        training=state, loso=loso, inducing_origin=origin)
        posterior.noise_scales = scales
        posterior.loso_blocks = (estimator.loso_blocks, blocks)
        return posterior

    @staticmethod
    def _streamed_block_rows(estimator, training: TrainingSet, n_obs: int, M: int,
                             search_kernel: bool, search_two_body: bool, owner: str,
                             runner: BlockRunner, warn: bool = True) -> int | None:
        """Rows per block when the design is too large to hold (``design_memory_limit``).

        With a Dask client, always (the blocks run on its workers), in blocks of at most
        half a worker thread's share of its memory limit, less seven ``(M + 1)²``
        factors; without one, a quarter of the limit over joblib's effective ``n_jobs``
        (:func:`kernelpot.fit_memory.block_rows_for`). None: the whole design is built.
        """
        limit = float(estimator.design_memory_limit) * 2**30
        size = n_obs * M * 8
        client = runner.client
        if size <= limit and client is None:
            return None
        several_types = estimator.config_type_noise \
            and len(noise_groups.config_types(training.frames)[0]) > 1
        needs = [name for name, on in (("incremental=True", estimator.incremental),
                                       ("config_type_noise=True", several_types),
                                       ("the kernel search (see search_frames)",
                                        search_kernel),
                                       ("a two-body prior std search", search_two_body)) if on]
        if needs:
            why = (f"the design matrix needs {size / 2**20:.3g} MiB, above "
                   f"design_memory_limit={estimator.design_memory_limit} GiB" if size > limit
                   else "a Dask client was given")
            if warn:
                warnings.warn(f"{owner}: {why}, but {', '.join(needs)} needs the whole "
                              f"design: building it whole, in memory", UserWarning,
                              stacklevel=4)
            return None
        if client is None:  # n_jobs blocks at once (joblib's workers, or its Dask backend)
            return block_rows_for(limit, M, effective_n_jobs(estimator.n_jobs))
        # per worker thread: half its share of the worker's limit, less what it holds
        # besides the block (the shared factors L_mm and R, a merge's five (M + 1)²
        # factors); a block task peaks at about its rows once
        per_thread = min((worker["memory_limit"] or np.inf) / max(1, worker["nthreads"])
                         for worker in _cluster_workers(client))
        if warn and per_thread / 2 - 7 * 8 * (M + 1) ** 2 < 8 * M * 100:
            warnings.warn(f"{owner}: the Dask workers' memory ({per_thread / 2**30:.3g} GiB "
                          f"per thread) leaves little room beside the {M} x {M} factors: "
                          f"blocks of one structure", UserWarning, stacklevel=4)
        return block_rows_for(limit, M, worker_bytes=per_thread)

    @classmethod
    def memory_estimate(cls, estimator, training: TrainingSet, descriptor: Descriptor,
                        kernel: Kernel, runner: BlockRunner) -> FitMemory:
        """Estimate what :meth:`fit` will hold, stage by stage (:mod:`kernelpot.fit_memory`).

        Computes the descriptors of the largest structure, nothing else.
        """
        owner = type(estimator).__name__
        counts = np.asarray(training.counts).sum(axis=0)
        n_select = resolve_n_sparse(estimator.n_sparse, training.species, counts,
                                    DEFAULT_SPARSE_CAP)
        if estimator.sparse_method == "all":
            n_select = counts
        candidates = held_environments(counts, n_select, estimator.inducing_pool,
                                       estimator.sparse_method)
        pair = estimator.two_body
        M = int(n_select.sum()) + (pair.n_columns(len(training.species)) if pair else 0)
        n_atoms = training.n_atoms
        has_stress = training.has_stress
        n_small = int(training.has_energy.sum() + 6 * has_stress.sum())
        n_obs = n_small + int(3 * n_atoms[training.has_forces].sum())
        names = fitted_names(estimator.optimize, owner)
        on_subset = estimator.search_frames is not None \
            and int(estimator.search_frames) < len(training.frames)
        search_kernel = "kernel" in names and kernel.n_theta > 0 and not on_subset
        block_rows = cls._streamed_block_rows(
            estimator, training, n_obs, M, search_kernel,
            pair is not None and "two_body" in names, owner, runner, warn=False)
        largest = int(np.argmax(n_atoms))
        result = descriptor.compute(training.frames[largest], strain=bool(has_stress[largest]))
        structure_bytes = sum(a.nbytes for a in (result.features, result.gradients,
                                                 result.strain_gradients) if a is not None)
        # every structure's descriptors, scaled from the largest's by the atoms
        all_descriptors = structure_bytes * float(n_atoms.sum()) / int(n_atoms[largest])
        structure_bytes += 2 * 8 * (3 * int(n_atoms[largest]) + 7) * M
        jobs = 1 if runner.client is not None else effective_n_jobs(estimator.n_jobs)
        estimate = sparse_fit_memory(n_obs, n_small, M, result.n_features,
                                     [int(c) for c in candidates], estimator.sparse_method,
                                     block_rows, structure_bytes,
                                     estimator.calibration == "loso", jobs,
                                     on_cluster=runner.client is not None)
        # descriptors the fit keeps (_kept_descriptors), and the kernel search's subset fit
        kept = all_descriptors if estimator.incremental or (
            search_kernel and all_descriptors < _DESCRIPTOR_CACHE_BYTES) else 0.0
        stages = dict(estimate.stages)
        if on_subset and "kernel" in names and kernel.n_theta > 0:
            share = int(estimator.search_frames) / len(training.frames)
            stages["kernel search on a subset"] = share * (
                stages["design (whole)"] if block_rows is None
                else IN_MEMORY_COPIES * 8.0 * n_obs * M)
        return replace(estimate, held=estimate.held + kept, stages=stages)

    @classmethod
    def _fit_streamed(cls, estimator, design: SparseDesign, kernel: Kernel, pair,
                      log_params: np.ndarray, given: tuple, free: list, search: NoiseSearch,
                      rng: np.random.RandomState, extra_starts: list,
                      block_rows: int, runner: BlockRunner,
                      origin: list[np.ndarray] | None = None) -> SparsePosterior:
        """Fit as :meth:`fit` does, from a streamed design (:mod:`kernelpot.streaming`)."""
        owner = type(estimator).__name__
        loso_wanted = estimator.calibration == "loso"
        columns = gp.inducing_columns(design.inducing)
        own = own_columns(origin, columns, len(design.training.frames)) if loso_wanted \
            else None
        streamed = streaming.stream_design(design, kernel, block_rows, prior=loso_wanted,
                                           owner=owner, runner=runner, own=own)
        stats = streamed.statistics(design)
        if any(free):
            log_params = search.optimize(stats, log_params, rng, free, extra_starts)
        lml = gp.log_marginal_likelihood(log_params, stats)
        sigma, energy_noise, force_noise, stress_noise = values_kept_where_fixed(
            log_params, given, free)
        warn_if_force_noise_at_bound(force_noise, estimator.force_noise_bounds, free[2], owner,
                                     stacklevel=5)
        factors = streaming.streamed_posterior(streamed, design, sigma,
                                               (energy_noise, force_noise, stress_noise))
        loso = None
        if loso_wanted:
            noise_std = design.noise_std(energy_noise, force_noise, stress_noise)
            R = factors.R_w  # RᵀR = A
            rhs = sigma * streamed.weighted_rhs((energy_noise, force_noise, stress_noise))
            groups = streaming.streamed_loso_groups(design, kernel, streamed.L_mm, block_rows,
                                                    noise_std, sigma, R, runner)
            loso = _timed_loso(owner, lambda: _sparse_loso_terms(
                None, design.y, noise_std, sigma, streamed.prior, design.row_kinds(),
                design.training.row_structures(), streamed.L_mm, None, factor=R,
                streamed=(streamed.spanned, rhs, groups)))
        return cls(kernel=kernel, inducing=design.inducing, columns=columns,
                   two_body=pair, pair_columns=design.pair_columns, factors=factors,
                   stats=stats, signal_std=sigma, energy_noise=energy_noise,
                   force_noise=force_noise, stress_noise=stress_noise,
                   log_marginal_likelihood=lml, jitter=streamed.jitter,
                   jitter_abs=streamed.jitter_abs, training=None, loso=loso,
                   inducing_origin=origin)

    @staticmethod
    def _fit_noise_scales(design: SparseDesign, Kw: np.ndarray, log_params: np.ndarray,
                          lml: float, free: list, search: NoiseSearch,
                          rng: np.random.RandomState, owner: str):
        """Fit the noise scales of each configuration type (:mod:`kernelpot.noise_groups`).

        Returns ``(log_params, lml, scales)``; ``scales`` is None (and the rest as given)
        when the training set holds one type only.
        """
        training = design.training
        names, structure_type = noise_groups.config_types(training.frames)
        if len(names) < 2:
            logger.info("%s: config_type_noise: one configuration type (%s), one noise",
                        owner, names[0])
            return log_params, lml, None
        n_obs = design.n_obs
        kinds = design.row_kinds()
        row_structure = training.row_structures()
        row_group, free_scales = noise_groups.scale_groups(
            structure_type[row_structure], kinds, row_structure, len(names), free[1:4])
        if not free_scales.any():
            return log_params, lml, None
        row_atoms = np.ones(n_obs)
        row_atoms[kinds == 0] = design.n_atoms_energy
        stats = noise_groups.grouped_statistics(Kw[:n_obs], design.y, kinds, row_group,
                                                row_atoms, 3 * len(names))
        log_params, log_scales = noise_groups.fit_scales(
            lambda t: noise_groups.sparse_log_marginal_likelihood(t, stats, True),
            log_params, free, free_scales, search, rng, owner, names)
        if log_scales is None:
            return log_params, lml, None
        lml_groups = noise_groups.sparse_log_marginal_likelihood(
            np.concatenate([log_params, log_scales]), stats)
        scales = noise_groups.scales_by_type(names, log_scales)
        logger.info("%s: noise scales per configuration type %s (log marginal likelihood "
                    "%.1f -> %.1f)", owner, scales, lml, lml_groups)
        return log_params, lml_groups, scales

    @classmethod
    def _choose_inducing(cls, estimator, training, descriptor, kernel, rng, imap,
                         runner) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Choose the inducing environments per element from a features-only pass.

        Returns the inducing descriptors per element and, for each, the training
        structure it was chosen from.

        An element with more environments than ``inducing_pool`` (or ``n_sparse``) never
        has all their descriptors held: farthest-point sampling streams them through a
        :class:`~kernelpot.inducing.FarthestPointPool`; CUR and random selection choose
        among ``inducing_pool`` drawn at random before the pass
        (:func:`~kernelpot.inducing.candidate_atoms`). The fit's memory estimate is
        logged first (INFO).
        """
        owner = type(estimator).__name__
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s: memory estimate (kernelpot.fit_memory), %s", owner,
                        cls.memory_estimate(estimator, training, descriptor, kernel, runner))
        # the features pass runs where the blocks do (on the cluster, given a client)
        imap = runner.imap if runner.client is not None else imap
        counts = np.bincount(np.concatenate(training.species_index),
                             minlength=len(training.species))
        n_select = resolve_n_sparse(estimator.n_sparse, training.species, counts,
                                    DEFAULT_SPARSE_CAP)
        method, pool_size = estimator.sparse_method, estimator.inducing_pool
        symbols = [chemical_symbols[z] for z in training.species]
        oversized = method != "all" and pool_size is not None \
            and bool(np.any(counts > np.maximum(int(pool_size), n_select)))
        if oversized and method == "fps":
            pools = [FarthestPointPool(n, int(pool_size), rng) for n in n_select]
            for k, (features, index) in enumerate(zip(
                    imap(descriptor.create, training.frames, "features"),
                    training.species_index, strict=True)):
                for s, pool in enumerate(pools):
                    pool.add(features[index == s], k)
            inducing = [pool.select() for pool in pools]
            origin = [pool.origin for pool in pools]
            how = (f"; farthest-point sampling streamed, at most "
                   f"{dict(zip(symbols, [p.capacity for p in pools], strict=True))} held, "
                   f"reduced {dict(zip(symbols, [p.n_reductions for p in pools], strict=True))}"
                   f" times; inducing_pool={pool_size}")
        else:
            candidates = candidate_atoms(training.species_index, n_select, pool_size, rng) \
                if oversized else None
            if candidates is None:
                features = list(imap(descriptor.create, training.frames, "features"))
                species_index = training.species_index
            else:
                features = list(imap(partial(_candidate_features, descriptor),
                                     _Candidates(training.frames, candidates), "features"))
                species_index = [index[keep] for index, keep in
                                 zip(training.species_index, candidates, strict=True)]
            inducing, origin = choose_inducing(features, species_index,
                                               len(training.species), estimator.n_sparse,
                                               method, rng, DEFAULT_SPARSE_CAP,
                                               training.species, return_origin=True)
            seen = np.bincount(np.concatenate(species_index), minlength=len(symbols))
            how = "" if candidates is None else (
                f"; chosen among {dict(zip(symbols, seen.tolist(), strict=True))} drawn at "
                f"random, inducing_pool={pool_size}")
        logger.info("%s: %d structures, inducing environments per element %s (of %s%s)",
                    owner, len(training.frames),
                    {symbols[s]: len(z) for s, z in enumerate(inducing)},
                    dict(zip(symbols, counts.tolist(), strict=True)), how)
        return inducing, origin

    @staticmethod
    def _search_two_body(design, assembled, pair, log_params, free, search, rng, estimator):
        """Fit the two-body prior std; rescale the design and ``L_mm`` to it in place."""
        owner = type(estimator).__name__
        n_pair, M, n_obs = design.n_pair, design.n_columns, design.n_obs
        jitter_abs = assembled.jitter_abs
        prior_std, log_params, stats = search_prior_std(
            assembled.design, assembled.gram, design.n_energy, n_pair, pair,
            design.n_atoms_energy, design.y_energy, design.y_force, log_params, free,
            assembled.stats, jitter_abs,
            lambda stats, start: search.optimize(stats, start, rng, free, restarts=0),
            estimator.signal_std_bounds, owner, y_S=design.y_stress)
        logger.info("%s: two-body prior_std %.4g (likelihood)", owner, prior_std)
        # k_mm is block diagonal: only the pair block of its factor and the pair
        # columns of the whitened design change (same absolute jitter)
        old, pair = float(pair.prior_std), clone(pair).set_params(prior_std=prior_std)
        assembled.design[:n_obs, M - n_pair:] *= (whitened_pair_scale(prior_std, jitter_abs)
                                                  / whitened_pair_scale(old, jitter_abs))
        assembled.L_mm[M - n_pair:, M - n_pair:] = pair_factor(prior_std, jitter_abs) \
            * np.eye(n_pair)
        return pair, log_params, stats

    @staticmethod
    def _training_state(design: SparseDesign, assembled: AssembledDesign, noise_std: np.ndarray,
                        y_all: np.ndarray, sigma: float, L_mm: np.ndarray):
        """Build what an incremental model keeps of its training data."""
        n_obs, training = design.n_obs, design.training
        has_energy, has_forces, has_stress = design.has_energy, design.has_forces, \
            design.has_stress
        kinds = design.row_kinds()
        # the structures keep the labels as read (with a baseline the rows hold the GP's)
        kept = training.raw_labels if training.raw_labels is not None else training.labels
        stresses = kept.stresses or [None] * len(training.frames)
        Kw = assembled.design[:n_obs].copy()
        R, b = _incremental.factor(Kw, noise_std, y_all, sigma)
        return _incremental.TrainingState(
            Kw=Kw, y=y_all, noise_std=noise_std, is_energy=kinds == 0,
            n_atoms_row=np.concatenate([design.n_atoms[has_energy],
                                        np.ones(design.n_force + design.n_stress, dtype=int)]),
            L_mm=L_mm.copy(), R=R, b=b,
            frames=[labelled_copy(a, kept.energies[k], kept.forces[k], stresses[k])
                    for k, a in enumerate(training.frames)],
            results=design.results, species_index=training.species_index,
            energy_row=[int(design.energy_row[k]) if has_energy[k] else -1
                        for k in range(len(training.frames))],
            force_row=[int(design.force_start[k]) if has_forces[k] else -1
                       for k in range(len(training.frames))],
            prior=assembled.prior,
            stress_row=[int(design.stress_start[k]) if has_stress[k] else -1
                        for k in range(len(training.frames))],
            is_stress=(kinds == 2) if design.n_stress else None)

    # -- prediction ----------------------------------------------------------------------
    def parts(self, descriptor: Descriptor, atoms: Atoms, index: np.ndarray, e0: np.ndarray,
              forces: bool, variance: bool | str, volume: float | None = None,
              shifts: bool = False) -> PredictionParts:
        """Predict the mean of one structure; keep design rows when variances are asked.

        Parameters
        ----------
        descriptor : Descriptor
        atoms : ase.Atoms
        index : ndarray of int
            Species index of every atom.
        e0 : ndarray of shape (n_species,)
            Reference energies.
        forces : bool
        variance : bool or "energy"
        volume : float or None, default=None
            Cell volume; given, the stress is predicted too.
        shifts : bool, default=False
            With ``variance``, also the leave-one-structure-out shifts of the means
            (``Prediction.loo_shifts``), when the posterior holds their basis.

        Returns
        -------
        PredictionParts
        """
        stress = volume is not None
        force_variance = forces and variance is True
        if forces or force_variance or stress:
            result = descriptor.compute(atoms, strain=stress)
        else:  # energies need no Jacobian
            result = features_only(descriptor.create(atoms))
        local, d_local = gp.local_energies_from_maps(result.features, index, self.mean_maps(),
                                                     gradients=forces or stress)
        local = local + e0[index]
        force_values = gp.forces_from_local_gradients(result, d_local) if forces else None
        strain = gp.strain_derivative_from_local_gradients(result, d_local) if stress else None
        if self.two_body is not None:
            pair_parts = self.two_body.predict(atoms, index, self.n_species,
                                               self.two_body_coefficients(), forces,
                                               strain=stress)
            local = local + pair_parts[0]
            if forces:
                force_values = force_values + pair_parts[1]
            if stress:
                strain = strain + pair_parts[2]
        stress_values = gp.stress_from_strain_derivative(strain, volume) if stress else None
        parts = PredictionParts(float(local.sum()), force_values, local, stress_values)
        if variance:
            parts.variance_input = self._variance_rows(result, atoms, index, force_variance,
                                                       volume) \
                + (bool(shifts and self.loo_shift is not None), 6 * stress)
            parts.variance_rows = len(parts.variance_input[0])
        return parts

    def _variance_rows(self, result, atoms, index, force_variance, volume=None):
        """Design rows (energy, force components, stress) and their prior variances."""
        rows = gp.design_rows(result, index, self.inducing, self.kernel, energy=True,
                              forces=force_variance, columns=self.columns,
                              n_columns=self.weights.size, stress_volume=volume)
        prior_e, prior_f = gp.prior_variances(result, index, self.n_species, self.kernel,
                                              energy=True, forces=force_variance)
        prior_s = None if volume is None else gp.prior_variances(
            gp.stress_jacobian(result, volume), index, self.n_species, self.kernel,
            energy=False)[1].ravel()[:6]
        if self.two_body is not None:
            rows = with_two_body(rows, self.two_body, atoms, index, self.n_species,
                                 self.pair_columns)
            prior_e, prior_f, *rest = prior_with_two_body(
                rows, self.two_body, self.pair_columns, prior_e, prior_f, prior_s,
                jitter_abs=self.jitter_abs)
            prior_s = rest[0] if rest else None
        blocks = [rows.energy[None, :]] + ([rows.forces] if force_variance else []) \
            + ([rows.stress] if volume is not None else [])
        priors = [[prior_e]] + ([prior_f.ravel()] if force_variance else []) \
            + ([prior_s] if volume is not None else [])
        return np.vstack(blocks), np.concatenate(priors)

    def finish(self, parts: list[PredictionParts]) -> list[Prediction]:
        """Turn parts into Predictions, solving every variance row at once.

        One triangular solve over the rows of many structures reads the ``M × M``
        factors once instead of once per structure.

        Parameters
        ----------
        parts : list of PredictionParts
            From :meth:`parts`.

        Returns
        -------
        list of Prediction
        """
        with_rows = [p for p in parts if p.variance_input is not None]
        if with_rows:
            rows = np.vstack([p.variance_input[0] for p in with_rows])
            post, proj = gp.variance_terms(rows, self.factors, self.signal_std)
            prior = self.signal_std**2 * np.concatenate([p.variance_input[1]
                                                         for p in with_rows])
            projection = gp.clip_variance(prior - proj, "variance", prior,
                                          self.signal_std**2)
        out, offset = [], 0
        for part in parts:
            if part.variance_input is None:
                out.append(part.without_variance())
                continue
            n_rows, n_stress = part.variance_rows, part.variance_input[3]
            p_post, p_proj = post[offset:offset + n_rows], projection[offset:offset + n_rows]
            offset += n_rows
            n_force = n_rows - 1 - n_stress
            f_post = p_post[1:1 + n_force].reshape(-1, 3) if n_force else None
            f_proj = p_proj[1:1 + n_force].reshape(-1, 3) if n_force else None
            s_post = p_post[1 + n_force:] if n_stress else None
            s_proj = p_proj[1 + n_force:] if n_stress else None
            shifts = part.variance_input[0][:1 + n_force] @ self.loo_shift \
                if part.variance_input[2] else None
            out.append(Prediction(part.energy, part.forces, float(p_post[0]), float(p_proj[0]),
                                  f_post, f_proj, part.local_energies, part.stress, shifts,
                                  s_post, s_proj))
        return out

    def local_energies(self, descriptor: Descriptor, atoms: Atoms,
                       index: np.ndarray) -> np.ndarray:
        """Return the local energies of one structure, without reference energies.

        Parameters
        ----------
        descriptor : Descriptor
        atoms : ase.Atoms
        index : ndarray of int

        Returns
        -------
        ndarray of shape (n_atoms,)
            eV.
        """
        local, _ = gp.local_energies_from_maps(descriptor.create(atoms), index,
                                               self.mean_maps())
        if self.two_body is not None:
            local = local + self.two_body.predict(atoms, index, self.n_species,
                                                  self.two_body_coefficients(),
                                                  forces=False)[0]
        return local

    def two_body_coefficients(self) -> np.ndarray:
        """Return the coefficients ``w`` of the two-body basis (its pair energies, eV)."""
        return float(self.two_body.prior_std)**2 * self.weights[self.pair_columns]

    def log_marginal_likelihood(self, theta: np.ndarray, eval_gradient: bool = False,
                                ) -> float | tuple[float, np.ndarray]:
        """Return the log marginal likelihood at ``theta = log (σ, σ_E, σ_F, σ_S)``.

        Parameters
        ----------
        theta : ndarray of shape (4,)
        eval_gradient : bool, default=False

        Returns
        -------
        float, or (float, ndarray of shape (4,))
        """
        return gp.log_marginal_likelihood(theta, self.stats, eval_gradient=eval_gradient)

    # -- incremental updates -------------------------------------------------------------
    def update(self, frames: list, labels: Labels, indices: list, descriptor: Descriptor,
               e0: np.ndarray, n_inducing: int | str, optimize: set | None,
               search: NoiseSearch, rng: np.random.RandomState, owner: str,
               loso: bool = False, max_inducing: np.ndarray | None = None,
               raw_labels: Labels | None = None) -> None:
        """Add labelled structures, and optionally inducing environments, by low-rank updates.

        Parameters
        ----------
        frames : list of ase.Atoms
        labels : Labels
            Of ``frames``.
        indices : list of ndarray of int
            Species index of every atom of each structure.
        descriptor : Descriptor
        e0 : ndarray of shape (n_species,)
        n_inducing : int or "all"
            New inducing environments: those of largest local-energy variance.
        optimize : set of str or None
            Hyperparameters to re-fit on all data seen so far (``None``: keep them).
        search : NoiseSearch
        rng : numpy.random.RandomState
        owner : str
        loso : bool, default=False
            Recompute the leave-one-structure-out terms (``loso``) of all the data.
        max_inducing : ndarray of shape (n_species,), optional
            Inducing environments per species after the update, at most (``inf``: no
            cap); of the new environments of a species at its cap, none is added.
        raw_labels : Labels or None, default=None
            The labels as read when ``labels`` are minus a baseline: what the training
            state keeps with the structures (``None``: ``labels``).

        Raises
        ------
        ValueError
            Without a training state, or before :meth:`restore_training` of a loaded one.
        """
        self.check_updatable(owner)
        if self.needs_frames:
            raise ValueError(f"{owner}: this model was loaded with its training state; give "
                             "its training structures back with restore_training(frames) first")
        stresses = labels.stresses or [None] * len(frames)
        raw = raw_labels if raw_labels is not None else labels
        raw_stresses = raw.stresses or [None] * len(frames)
        new = [self._add_structure(atoms, labels.energies[k], labels.forces[k], indices[k],
                                   descriptor, e0, stresses[k],
                                   (raw.energies[k], raw.forces[k], raw_stresses[k]))
               for k, atoms in enumerate(frames)]
        self._refresh()
        first = len(self.training.frames) - len(new)  # the new structures' state index
        chosen, origin = self._choose_new_inducing(new, n_inducing, max_inducing, first)
        if any(len(z) for z in chosen):
            self._add_inducing(chosen, origin)
            self._refresh()
        if optimize is not None:
            self.stats = self._reoptimize(optimize, search, rng)
        else:  # the statistics do not depend on the hyperparameters: once per update
            self.stats = _incremental.statistics(self.training)
        self.log_marginal_likelihood_value = float(gp.log_marginal_likelihood(
            np.log([self.signal_std, self.energy_noise, self.force_noise, self.stress_noise]),
            self.stats))
        self.loso = self.loo_shift = None
        if loso:
            self.refresh_loso(owner)

    def check_updatable(self, owner: str) -> None:
        """Raise unless the posterior keeps a training state (an incremental fit).

        Parameters
        ----------
        owner : str
            Names the caller in the error.
        """
        if self.training is None:
            raise ValueError(f"{owner}: the model keeps no training state (loaded from a "
                             "file, a pickled copy, or a fit that kept no structures: see its "
                             "log); refit it on a list of structures, or with "
                             "incremental=True (a file then needs save(..., "
                             "training_state=True) and restore_training)")

    def refresh_loso(self, owner: str) -> None:
        """Recompute the leave-one-structure-out terms (``loso``) of the training state.

        Parameters
        ----------
        owner : str
            Names the caller in the log line that reports the cost.
        """
        self.check_updatable(owner)
        if self.training.prior is None:  # a state kept without its prior variances
            logger.warning("%s: the training state holds no prior variances (fitted with "
                           "calibration=None, or saved before they were kept): no "
                           "leave-one-structure-out terms", owner)
            self.loso = self.loo_shift = None
            return
        self.loso = _timed_loso(owner, lambda: self._training_loso(owner))
        self.loo_shift = self.loso.shift_basis

    def _training_loso(self, owner: str) -> LosoTerms:
        """Compute the LOSO terms of the training state."""
        state = self.training
        structure = np.full(len(state.y), -1, dtype=np.int64)
        for k, (e_row, f_row, s_row) in enumerate(zip(state.energy_row, state.force_row,
                                                      _stress_rows(state), strict=True)):
            if e_row >= 0:
                structure[e_row] = k
            if f_row >= 0:
                structure[f_row:f_row + 3 * len(state.frames[k])] = k
            if s_row >= 0:
                structure[s_row:s_row + 6] = k
        if np.any(structure < 0):
            raise ValueError("the training state's rows do not match its structures")
        kinds = np.where(state.is_energy, 0, np.where(_incremental.stress_mask(state), 2, 1))
        setting = self.loso_blocks[0]
        blocks = _loso_blocks(state.Kw, kinds, structure, state.frames, setting, owner)
        self.loso_blocks = (setting, blocks)
        return _sparse_loso_terms(state.Kw, state.y, state.noise_std, self.signal_std,
                                  state.prior, kinds, structure, state.L_mm,
                                  self.pair_columns, factor=state.R,
                                  own=self.own_columns(len(state.frames)), blocks=blocks,
                                  species_columns=self.columns)

    def _add_structure(self, atoms, energy: float, forces, index, descriptor, e0,
                       stress=None, raw=None):
        """Append one structure's observations to the training state.

        ``raw``: the structure's labels as read (energy, forces, stress) when the others
        are minus a baseline; kept with the structure.
        """
        state = self.training
        has_e, has_f, has_s = not np.isnan(energy), forces is not None, stress is not None
        result = descriptor.compute(atoms, strain=has_s)
        volume = atoms.get_volume() if has_s else None
        rows = gp.design_rows(result, index, self.inducing, self.kernel, energy=has_e,
                              forces=has_f, columns=self.columns, n_columns=self.weights.size,
                              stress_volume=volume)
        rows = with_two_body(rows, self.two_body, atoms, index, self.n_species,
                             self.pair_columns)
        n = len(atoms)
        blocks, y, std, is_e, n_rows = [], [], [], [], []
        start = len(state.y)
        if len(state.stress_row) < len(state.energy_row):  # a state from before stresses
            state.stress_row = [-1] * len(state.energy_row)
        state.energy_row.append(start if has_e else -1)
        state.force_row.append(start + int(has_e) if has_f else -1)
        state.stress_row.append(start + int(has_e) + 3 * n * has_f if has_s else -1)
        if has_e:
            blocks.append(rows.energy[None, :])
            y.append([energy - e0[index].sum()])
            std.append([self.energy_noise * np.sqrt(n)])
            is_e.append([True])
            n_rows.append([n])
        if has_f:
            blocks.append(rows.forces)
            y.append(forces.ravel())
            std.append(np.full(3 * n, self.force_noise))
            is_e.append(np.zeros(3 * n, dtype=bool))
            n_rows.append(np.ones(3 * n, dtype=int))
        if has_s:
            blocks.append(rows.stress)
            y.append(np.asarray(stress, dtype=np.float64))
            std.append(np.full(6, self.stress_noise))
            is_e.append(np.zeros(6, dtype=bool))
            n_rows.append(np.ones(6, dtype=int))
        is_e = np.concatenate(is_e)
        _incremental.add_rows(state, np.vstack(blocks), np.concatenate(y), np.concatenate(std),
                              is_e, np.concatenate(n_rows), self.signal_std,
                              is_stress=np.arange(len(is_e)) >= len(is_e) - 6 * has_s)
        if state.prior is not None:  # kept for the LOSO projection term
            prior_e, prior_f = gp.prior_variances(result, index, self.n_species, self.kernel,
                                                  energy=has_e, forces=has_f)
            prior_s = [gp.prior_variances(gp.stress_jacobian(result, volume), index,
                                          self.n_species, self.kernel,
                                          energy=False)[1].ravel()[:6]] if has_s else []
            state.prior = np.concatenate([state.prior] + ([[prior_e]] if has_e else [])
                                         + ([prior_f.ravel()] if has_f else []) + prior_s)
        state.frames.append(labelled_copy(atoms, *(raw if raw is not None
                                                   else (energy, forces, stress))))
        state.results.append(result)
        state.species_index.append(index)
        return result, index

    def _refresh(self) -> None:
        """Recompute the weights and factors from the training state."""
        self.factors = _incremental.posterior(self.training, self.signal_std)

    def _choose_new_inducing(self, new, n_inducing, max_inducing,
                             first: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Choose new inducing descriptors per species among the new environments.

        ``n_inducing`` of them in all (or all), those of largest epistemic variance of
        their local energy; then, per species, at most the room ``max_inducing`` leaves
        (again the most uncertain first). Returns them per species and, for each, the
        training state's index of its structure (``first`` is that of ``new[0]``).
        """
        n_species = self.n_species
        features = [r.features for r, _ in new]
        index = [i for _, i in new]
        if not features or n_inducing == 0:
            return [np.zeros((0, 0))] * n_species, [np.zeros(0, dtype=np.int64)] * n_species
        X = np.concatenate(features)
        species = np.concatenate(index)
        source = np.repeat(first + np.arange(len(features)), [len(f) for f in features])
        room = np.full(n_species, np.inf) if max_inducing is None else \
            np.maximum(np.asarray(max_inducing, float)
                       - np.array([len(z) for z in self.inducing]), 0)
        capped = bool(np.any(np.bincount(species, minlength=n_species) > room))
        if (n_inducing == "all" or n_inducing >= len(X)) and not capped:
            return ([X[species == s] for s in range(n_species)],
                    [source[species == s] for s in range(n_species)])
        # only environments of elements with room compete for n_inducing
        open_ = room[species] > 0
        if not np.any(open_):
            return ([np.zeros((0, X.shape[1]))] * n_species,
                    [np.zeros(0, dtype=np.int64)] * n_species)
        X, species, source = X[open_], species[open_], source[open_]
        # epistemic variance of each environment's local energy
        rows = np.zeros((len(X), self.weights.size))
        prior = np.zeros(len(X))
        for s, Z in enumerate(self.inducing):
            mask = species == s
            if mask.any():
                prior[mask] = self.kernel.diag(X[mask])
                if len(Z):
                    rows[np.ix_(mask, self.columns[s])] = self.kernel(X[mask], Z)
        post, proj = gp.variance_terms(rows, self.factors, self.signal_std)
        variance = post + self.signal_std**2 * prior - proj
        order = np.argsort(-variance, kind="stable")
        if n_inducing != "all":
            order = order[:n_inducing]
        chosen, origin = [], []
        for s in range(n_species):
            ranked = order[species[order] == s]
            keep = np.sort(ranked[:int(min(room[s], len(ranked)))])
            chosen.append(X[keep])
            origin.append(source[keep])
        return chosen, origin

    def _add_inducing(self, chosen: list[np.ndarray], origin: list[np.ndarray]) -> None:
        """Extend the inducing set and the training state's factors by new columns.

        ``origin``: per species, the training state's index of the structure each new
        inducing environment comes from.
        """
        state = self.training
        M = self.weights.size
        m = int(sum(len(z) for z in chosen))
        new_columns = gp.inducing_columns(chosen)  # local blocks; global = M + local
        K_extra = np.zeros((len(state.y), m))
        for atoms, result, index, e_row, f_row, s_row in zip(
                state.frames, state.results, state.species_index, state.energy_row,
                state.force_row, _stress_rows(state), strict=True):
            rows = gp.design_rows(result, index, chosen, self.kernel, energy=e_row >= 0,
                                  forces=f_row >= 0, columns=new_columns,
                                  stress_volume=atoms.get_volume() if s_row >= 0 else None)
            if e_row >= 0:
                K_extra[e_row] = rows.energy
            if f_row >= 0:
                K_extra[f_row:f_row + 3 * result.n_atoms] = rows.forces
            if s_row >= 0:
                K_extra[s_row:s_row + 6] = rows.stress
        k_cross = np.zeros((M, m))
        k_new = np.zeros((m, m))
        for s, z in enumerate(chosen):
            if len(z) == 0:
                continue
            if len(self.inducing[s]):
                k_cross[np.ix_(self.columns[s], new_columns[s])] = self.kernel(
                    self.inducing[s], z)
            k_new[np.ix_(new_columns[s], new_columns[s])] = self.kernel(z)
        _incremental.add_columns(state, K_extra, k_cross, k_new, self.signal_std,
                                 self.jitter_abs)
        known = self.inducing_origin if self.inducing_origin is not None \
            else [np.full(len(z), -1, dtype=np.int64) for z in self.inducing]
        self.inducing_origin = [
            np.concatenate([np.asarray(known[s], dtype=np.int64),
                            np.asarray(origin[s], dtype=np.int64)]) if len(z)
            else np.asarray(known[s], dtype=np.int64)
            for s, z in enumerate(chosen)]
        for s, z in enumerate(chosen):
            if len(z) == 0:
                continue
            grown = np.vstack([self.inducing[s], z]) if len(self.inducing[s]) else z.copy()
            grown.setflags(write=False)
            self.inducing[s] = grown
            self.columns[s] = np.concatenate([self.columns[s], M + new_columns[s]])

    def _reoptimize(self, names: set, search: NoiseSearch, rng) -> gp.WhitenedStatistics:
        """Re-fit ``(σ, σ_E, σ_F, σ_S)`` on all data seen so far and refactor.

        Returns the likelihood statistics of the training state (which do not depend
        on the hyperparameters).
        """
        state = self.training
        stats = _incremental.statistics(state)
        free = free_mask(names, int(state.is_energy.sum()),
                         int(_incremental.force_mask(state).sum()),
                         n_stress=int(_incremental.stress_mask(state).sum()))
        current = np.log([self.signal_std, self.energy_noise, self.force_noise,
                          self.stress_noise])
        if any(free):
            log_params = search.optimize(stats, current, rng, free)
            values = (self.signal_std, self.energy_noise, self.force_noise, self.stress_noise)
            self.signal_std, self.energy_noise, self.force_noise, self.stress_noise = (
                float(np.exp(t)) if f else v
                for t, v, f in zip(log_params, values, free, strict=True))
        self.refactor()
        return stats

    def refactor(self) -> None:
        """Refactor the stored design from scratch at the current hyperparameters.

        A full QR of the training state's whitened design (``O(n M²)``), which the
        low-rank updates make unnecessary except after the noise levels change.
        """
        state = self.training
        state.noise_std = np.where(state.is_energy,
                                   self.energy_noise * np.sqrt(state.n_atoms_row),
                                   np.where(_incremental.stress_mask(state), self.stress_noise,
                                            self.force_noise))
        state.R, state.b = _incremental.factor(state.Kw, state.noise_std, state.y,
                                               self.signal_std)
        self._refresh()

    def restore_training(self, frames: list,
                         describe: Callable[[list[Atoms]], tuple[list, list]],
                         owner: str, training: TrainingSet | None = None) -> None:
        """Give a loaded training state its structures and descriptors back.

        Parameters
        ----------
        frames : list of ase.Atoms
            The structures trained on, in training order.
        describe : callable
            ``describe(frames) -> (species indices, descriptor results)``.
        owner : str
            Names the caller in errors.
        training : TrainingSet or None, default=None
            Not used (the exact posterior's input).

        Raises
        ------
        ValueError
            Without a training state, for the wrong number of structures, or for
            structures that do not fill the stored rows (another atom count) or that
            carry force labels other than the trained ones.
        """
        state = self.training
        if state is None:
            raise ValueError(f"{owner}: the model has no stored training state")
        if len(frames) != len(state.energy_row):
            raise ValueError(f"{owner}: the model was trained on {len(state.energy_row)} "
                             f"structures; got {len(frames)}")
        _check_frames_match_rows(state, frames, owner)
        species_index, results = describe(frames)
        if state.Kw is None:  # a format-5 file: rebuild the design and its factor
            self._rebuild_design(frames, species_index, results, owner)
        state.frames = [labels_only(a) for a in frames]  # with their labels (the run's file)
        state.species_index, state.results = species_index, results
        self.needs_frames = False

    def _rebuild_design(self, frames: list, species_index: list, results: list,
                        owner: str) -> None:
        """Recompute the whitened design ``K_w`` of the stored rows and refactor it.

        The rows are those :meth:`update` and the fit build (kernel and two-body columns
        at the stored inducing environments), whitened by the stored ``L_mm``; ``R`` and
        ``b`` come from one QR of the result, as :meth:`refactor` does. The stored
        factors of prediction are kept, so predictions do not change; later updates
        agree with those of a model that was never saved to round-off.
        """
        state = self.training
        n_rows, M = len(state.y), self.weights.size
        K = np.zeros((n_rows, M))
        stress_rows = _stress_rows(state)
        for k, (atoms, result, index) in enumerate(zip(frames, results, species_index,
                                                       strict=True)):
            e_row, f_row, s_row = state.energy_row[k], state.force_row[k], stress_rows[k]
            rows = gp.design_rows(result, index, self.inducing, self.kernel,
                                  energy=e_row >= 0, forces=f_row >= 0, columns=self.columns,
                                  n_columns=M,
                                  stress_volume=atoms.get_volume() if s_row >= 0 else None)
            rows = with_two_body(rows, self.two_body, atoms, index, self.n_species,
                                 self.pair_columns)
            if e_row >= 0:
                K[e_row] = rows.energy
            if f_row >= 0:
                K[f_row:f_row + 3 * len(atoms)] = rows.forces
            if s_row >= 0:
                K[s_row:s_row + 6] = rows.stress
        state.Kw = sla.solve_triangular(self.factors.L_mm, K.T, lower=True,
                                        check_finite=False).T
        state.L_mm = self.factors.L_mm
        state.R, state.b = _incremental.factor(state.Kw, state.noise_std, state.y,
                                               self.signal_std)

    # -- model files ---------------------------------------------------------------------
    def to_arrays(self, training_state: bool = False) -> tuple[dict, dict]:
        """Return the posterior as plain arrays and JSON-ready metadata (a model file's).

        Parameters
        ----------
        training_state : bool, default=False
            Also the training state (updates after loading).

        Returns
        -------
        arrays : dict of ndarray
        fitted : dict
            Entries of the file's ``fitted`` metadata.

        Raises
        ------
        ValueError
            For ``training_state=True`` without a training state.
        """
        stats = self.stats
        # R_w as its triangle, in float32 where that bounds every variance term read back
        # within 1 % (format 12). L_mm is rebuilt from the inducing environments at load
        # (format 11) unless that would not give it back (an update's factor that needed
        # more jitter): then its blocks (format 9)
        packed, bound = gp.packed_whitened_factor(self.factors.R_w)
        logger.debug("save: whitened factor in %s (float32 rounding bound %.2e)",
                     packed.dtype, bound)
        arrays = {"alpha": self.weights, "R_w_tril": packed,
                  "stats_eigenvalues": stats.eigenvalues,
                  "stats_U": stats.U, "stats_beta_E": stats.beta_E,
                  "stats_beta_F": stats.beta_F}
        if not self._inducing_factor_rebuilds():
            arrays["L_mm_envelope"], arrays["L_mm_first"] = gp.pack_envelope(self.factors.L_mm)
        for s, Z in enumerate(self.inducing):
            arrays[f"inducing_{s}"] = Z
            arrays[f"columns_{s}"] = self.columns[s]
        if self.two_body is not None:
            arrays["pair_columns"] = self.pair_columns
        if self.loo_shift is not None:
            arrays["loo_shift"] = self.loo_shift
        if training_state:
            if self.training is None:
                raise ValueError("save: training_state=True needs a model fitted with "
                                 "incremental=True")
            for name in _STATE_FIELDS:  # the design is rebuilt from the structures
                arrays[f"state_{name}"] = np.asarray(getattr(self.training, name))
            if self.training.is_stress is not None:
                arrays["state_is_stress"] = self.training.is_stress
                arrays["state_stress_row"] = np.asarray(_stress_rows(self.training))
            if self.training.prior is not None:
                arrays["state_prior"] = self.training.prior
            if self.inducing_origin is not None:  # the LOSO projection term's own columns
                for s, origin in enumerate(self.inducing_origin):
                    arrays[f"state_inducing_origin_{s}"] = np.asarray(origin, dtype=np.int64)
        fitted = {"method": self.kind, "signal_std": self.signal_std,
                  "energy_noise": self.energy_noise, "force_noise": self.force_noise,
                  "stress_noise": self.stress_noise,
                  "log_marginal_likelihood": self.log_marginal_likelihood_value,
                  "jitter": self.jitter, "jitter_abs": self.jitter_abs,
                  "config_type_noise": self.noise_scales,
                  "n_structures": self.fitted_structures(),
                  "whitened_factor": {"dtype": str(packed.dtype), "float32_bound": bound},
                  "stats": {"c_E": stats.c_E, "c_F": stats.c_F, "n_E": stats.n_E,
                            "n_F": stats.n_F, "logdet_D_E": stats.logdet_D_E,
                            "c_S": stats.c_S, "n_S": stats.n_S,
                            "m_E": stats.n_E if stats.m_E is None else stats.m_E,
                            "m_S": stats.n_S if stats.m_S is None else stats.m_S}}
        if stats.n_S:
            arrays["stats_beta_S"] = stats.beta_S
        return arrays, fitted

    def _rebuilt_inducing_factor(self) -> np.ndarray:
        """``L_mm`` rebuilt from the inducing environments (see :meth:`to_arrays`)."""
        return rebuilt_inducing_factor(
            self.inducing, self.columns, self.kernel,
            None if self.two_body is None else self.two_body.prior_std,
            self.pair_columns if self.two_body is not None else None, self.jitter_abs,
            self.weights.size)

    def _inducing_factor_rebuilds(self) -> bool:
        """Return whether :meth:`_rebuilt_inducing_factor` gives ``L_mm`` back.

        To :data:`REBUILD_RTOL` of its largest entry: exactly for a fresh fit, to
        round-off for a model grown by updates, and not where an update's new block
        needed more than the model's jitter (a new environment nearly repeating one).
        """
        L_mm = self.factors.L_mm
        try:
            rebuilt = self._rebuilt_inducing_factor()
        except np.linalg.LinAlgError:
            return False
        scale = float(np.max(np.abs(L_mm))) if L_mm.size else 1.0
        return bool(np.max(np.abs(rebuilt - L_mm), initial=0.0) <= REBUILD_RTOL * scale)

    @classmethod
    def from_arrays(cls, arrays: dict, fitted: dict, kernel: Kernel, two_body: TwoBody | None,
                    n_species: int, what: str) -> SparsePosterior:
        """Rebuild a posterior from :meth:`to_arrays` output (a model file's).

        Parameters
        ----------
        arrays : dict of ndarray
        fitted : dict
        kernel : Kernel
        two_body : TwoBody or None
            Decoded and checked by the caller.
        n_species : int
        what : str
            Names the file in errors.

        Returns
        -------
        SparsePosterior

        Raises
        ------
        ValueError
            If the arrays do not fit together.
        """
        signal_std = fitted.get("signal_std")
        if isinstance(signal_std, bool) or not isinstance(signal_std, (int, float)) \
                or not signal_std > 0:
            raise ValueError(f"load: {what} has a malformed signal_std entry {signal_std!r}")
        # format 12 holds R_w (maybe float32), earlier files L_post = L_mm R_wᵀ; format 11
        # rebuilds L_mm where it can, 9 and 10 hold its blocks, 4 to 8 its triangle;
        # earlier files hold the squares
        last = "R_w_tril" if "R_w_tril" in arrays else "L_post_tril"
        factor_names = (["L_mm_envelope", "L_mm_first", last] if "L_mm_envelope" in arrays
                        else ["L_mm_tril", last] if "L_mm_tril" in arrays
                        else [last] if last in arrays
                        else ["L_mm", "L_post"])
        needed = ["alpha", *factor_names, "stats_eigenvalues", "stats_U", "stats_beta_E",
                  "stats_beta_F"] + [f"{name}_{s}" for s in range(n_species)
                                     for name in ("inducing", "columns")]
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise ValueError(f"load: {what} is a sparse model without {missing}")
        inducing = [arrays[f"inducing_{s}"] for s in range(n_species)]
        for z in inducing:
            z.setflags(write=False)
        columns = [arrays[f"columns_{s}"] for s in range(n_species)]
        for z, c in zip(inducing, columns, strict=True):
            if z.ndim != 2 or c.ndim != 1 or c.dtype.kind not in "iu" or len(c) != len(z):
                raise ValueError(f"load: {what} has inducing environments of shape "
                                 f"{z.shape} with columns of shape {c.shape}")
        weights = arrays["alpha"]
        n_pair = two_body.n_columns(n_species) if two_body is not None else 0
        if len(weights) != sum(len(z) for z in inducing) + n_pair:
            raise ValueError(f"load: {what} holds {len(weights)} weights, which does not "
                             "match its inducing environments and two-body term")
        M = len(weights)
        pair_columns = _checked_pair_columns(arrays.get("pair_columns"), columns, two_body,
                                             n_species, len(weights), what)
        L_mm, R_w = _factors_from_arrays(
            arrays, factor_names, M, lambda: _loaded_inducing_factor(
                inducing, columns, kernel, two_body, pair_columns, fitted.get("jitter_abs"),
                M, what), what)
        training = None
        if "state_y" in arrays:
            training = _training_state_from_arrays(arrays, L_mm, what)
        stats = _statistics_from_arrays(arrays, fitted["stats"], what)
        scales = noise_groups.checked_scales(fitted.get("config_type_noise"), what)
        posterior = cls(kernel=kernel, inducing=inducing, columns=columns, two_body=two_body,
                   pair_columns=pair_columns,
                   factors=gp.Posterior(weights, L_mm, R_w),
                   stats=stats, signal_std=signal_std, energy_noise=fitted["energy_noise"],
                   force_noise=fitted["force_noise"],
                   stress_noise=fitted.get("stress_noise", DEFAULT_STRESS_NOISE),
                   log_marginal_likelihood=fitted["log_marginal_likelihood"],
                   jitter=fitted["jitter"], jitter_abs=fitted["jitter_abs"], training=training,
                   needs_frames=training is not None)._with_shift_basis(
                       arrays.get("loo_shift"), what)
        posterior.noise_scales = scales
        recorded = fitted.get("n_structures")
        if recorded is not None and (isinstance(recorded, bool) or not isinstance(recorded, int)
                                     or recorded < 1):
            raise ValueError(f"load: {what} has a malformed n_structures entry {recorded!r}")
        posterior.recorded_structures = recorded
        if training is not None:
            posterior.inducing_origin = _inducing_origin_from_arrays(
                arrays, inducing, len(training.energy_row), what)
        return posterior

    def _with_shift_basis(self, basis: np.ndarray | None, what: str) -> SparsePosterior:
        """Set a stored leave-one-structure-out shift basis, checked; return self."""
        if basis is not None and (basis.ndim != 2 or basis.shape[0] != self.weights.size
                                  or not np.all(np.isfinite(basis))):
            raise ValueError(f"load: {what} has a malformed loo_shift array")
        self.loo_shift = basis
        return self


#: how long a fit waits for a worker when the cluster lists none (seconds)
WORKER_WAIT_S = 60.0


def _loaded_inducing_factor(inducing: list[np.ndarray], columns: list[np.ndarray],
                            kernel: Kernel, two_body: TwoBody | None,
                            pair_columns: np.ndarray | None, jitter_abs, M: int,
                            what: str) -> np.ndarray:
    """Rebuild a loaded model's ``L_mm`` (format 11); a clear error if it cannot be."""
    if isinstance(jitter_abs, bool) or not isinstance(jitter_abs, (int, float)) \
            or not np.isfinite(jitter_abs) or jitter_abs < 0:
        raise ValueError(f"load: {what} has a malformed jitter_abs entry {jitter_abs!r}")
    try:
        return rebuilt_inducing_factor(
            inducing, columns, kernel, None if two_body is None else two_body.prior_std,
            pair_columns if two_body is not None else None, float(jitter_abs), M)
    except (np.linalg.LinAlgError, ValueError) as error:
        raise ValueError(f"load: {what}'s inducing environments do not give a positive "
                         f"definite kernel matrix with its jitter ({error}); the file is "
                         "damaged or was altered") from error


def _cluster_workers(client) -> list[dict]:
    """Return every worker's ``memory_limit`` (None: unlimited) and ``nthreads``.

    The client's listing can come back empty for a moment on a cluster that has workers:
    a refresh that failed under load leaves the client's cached, worker-less summary in
    place, and workers the nanny restarts are away for a few seconds (seen once in CI).
    The fit then waits up to ``WORKER_WAIT_S`` for a running worker before it gives up.
    """
    workers = _listed_workers(client)
    if not workers:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError) as error:
            raise RuntimeError(f"the Dask cluster has no workers (none came up within "
                               f"{WORKER_WAIT_S:g} s)") from error
        workers = _listed_workers(client)
        if not workers:
            raise RuntimeError("the Dask cluster has no workers")
    return workers


def _listed_workers(client) -> list[dict]:
    """Return the workers the client's scheduler listing names (possibly none)."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer distributed lists 5 by default
    except TypeError:
        info = client.scheduler_info()
    return [{"memory_limit": w.get("memory_limit"), "nthreads": w.get("nthreads", 1)}
            for w in info.get("workers", {}).values()]


def _candidate_features(descriptor: Descriptor, item: tuple) -> np.ndarray:
    """Return the descriptors of one structure's candidate atoms (``item``: atoms, indices)."""
    atoms, keep = item
    return descriptor.create(atoms)[keep]


class _Candidates(Sequence):
    """``(frames[k], candidates[k])`` pairs, each structure read when its pair is."""

    def __init__(self, frames, candidates: list[np.ndarray]):
        self.frames, self.candidates = frames, candidates

    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self.frames[k], self.candidates[k]

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]


def _kept_descriptors(estimator, training: TrainingSet, descriptor: Descriptor,
                      search_kernel: bool, imap) -> list | None:
    """Descriptors the fit keeps (None: each pass over the design computes them anew).

    An incremental model keeps them; the kernel search rebuilds the design several
    times, so it keeps them when they fit in memory.
    """
    strain = training.has_stress
    if estimator.incremental:
        return descriptor.compute_all(training.frames, imap, strain)
    if search_kernel:
        size = descriptor.compute(training.frames[0]).gradients.nbytes
        if size * len(training.frames) < _DESCRIPTOR_CACHE_BYTES:
            return descriptor.compute_all(training.frames, imap, strain)
    return None


def _statistics_from_arrays(arrays: dict, s: dict, what: str) -> gp.WhitenedStatistics:
    """Rebuild the likelihood statistics of a model file (stress rows since format 6)."""
    n_S = s.get("n_S", 0)
    if isinstance(n_S, bool) or not isinstance(n_S, int) or n_S < 0 \
            or (n_S > 0 and "stats_beta_S" not in arrays):
        raise ValueError(f"load: {what} has malformed stress statistics (n_S = {n_S!r})")
    # columns of U per kind (format 7: energy and stress rows folded into factors)
    m_E, m_S = s.get("m_E", s["n_E"]), s.get("m_S", n_S)
    M = len(arrays["stats_eigenvalues"])
    # one column per observation, or M once a kind's rows (more than M + 1) were folded
    if any(isinstance(m, bool) or not isinstance(m, int) or not (m == n or (m == M and n > M + 1))
           for m, n in ((m_E, s["n_E"]), (m_S, n_S))):
        raise ValueError(f"load: {what} has malformed statistics columns ({m_E!r}, {m_S!r} "
                         f"for {s['n_E']!r} energies and {n_S!r} stresses, M = {M})")
    stats = gp.WhitenedStatistics(
        arrays["stats_eigenvalues"], arrays["stats_U"], arrays["stats_beta_E"],
        arrays["stats_beta_F"], s["c_E"], s["c_F"], s["n_E"], s["n_F"], s["logdet_D_E"],
        beta_S=arrays["stats_beta_S"] if n_S else None, c_S=float(s.get("c_S", 0.0)),
        n_S=n_S, m_E=m_E, m_S=m_S)
    if stats.U.shape != (len(stats.eigenvalues), m_E + m_S):
        raise ValueError(f"load: {what} has statistics of inconsistent shapes")
    if stats.n_E + stats.n_S > len(stats.eigenvalues) or stats.folded:
        stats = stats._replace(grams=stats.small_grams())
    return stats


def _check_frames_match_rows(state: _incremental.TrainingState, frames: list,
                             owner: str) -> None:
    """Check that ``frames`` fill the stored training rows, in training order.

    Every row belongs to exactly one structure (an energy row of its atom count, three
    force rows per atom); a structure carrying force labels must carry the trained ones
    (to the 8 decimals extxyz keeps). Structures without labels cannot be checked
    further.
    """
    n_rows = len(state.y)
    owner_of = np.full(n_rows, -1, dtype=np.int64)
    stress_rows = _stress_rows(state)
    for k, atoms in enumerate(frames):
        e_row, f_row, n = state.energy_row[k], state.force_row[k], len(atoms)
        s_row = stress_rows[k]
        blocks = ([(e_row, e_row + 1)] if e_row >= 0 else []) \
            + ([(f_row, f_row + 3 * n)] if f_row >= 0 else []) \
            + ([(s_row, s_row + 6)] if s_row >= 0 else [])
        for start, stop in blocks:
            if stop > n_rows or np.any(owner_of[start:stop] >= 0):
                raise ValueError(f"{owner}: structure {k} ({n} atoms) does not fit the "
                                 "stored training rows: give the training structures in "
                                 "training order")
            owner_of[start:stop] = k
        if e_row >= 0 and state.n_atoms_row[e_row] != n:
            raise ValueError(f"{owner}: structure {k} has {n} atoms; the model was trained "
                             f"on one of {int(state.n_atoms_row[e_row])} there: give the "
                             "training structures in training order")
        labels = getattr(atoms.calc, "results", {}).get("forces")
        if f_row >= 0 and labels is not None and not np.allclose(
                np.ravel(labels), state.y[f_row:f_row + 3 * n], rtol=0, atol=1e-6):
            raise ValueError(f"{owner}: structure {k}'s forces are not the ones the model "
                             "was trained on: give the training structures in training "
                             "order")
    if np.any(owner_of < 0):
        raise ValueError(f"{owner}: the structures leave {int(np.sum(owner_of < 0))} stored "
                         "training rows unfilled: give the training structures in training "
                         "order")


def _training_state_from_arrays(arrays: dict, L_mm: np.ndarray,
                                what: str) -> _incremental.TrainingState:
    """Return the stored training state of a model file, checked.

    Format 5 stores the labels and row layout only (``Kw``, ``R`` and ``b`` stay
    ``None`` until :meth:`SparsePosterior.restore_training` rebuilds them); format 4
    also stored the design and its factors, which are used as they are.
    """
    stored_design = "state_Kw" in arrays
    names = _STATE_FIELDS + (_STORED_DESIGN_FIELDS if stored_design else ())
    missing = [f"state_{name}" for name in names if f"state_{name}" not in arrays]
    if missing:
        raise ValueError(f"load: {what} has an incomplete training state without {missing}")
    values = {name: arrays[f"state_{name}"] for name in names}
    n_rows = len(values["y"])
    for name in ("noise_std", "is_energy", "n_atoms_row"):
        if values[name].shape != (n_rows,):
            raise ValueError(f"load: {what} has a training state whose {name} does not "
                             f"match its {n_rows} labels")
    rows = np.concatenate([values["energy_row"], values["force_row"]])
    if len(values["energy_row"]) != len(values["force_row"]) or np.any(rows >= n_rows) \
            or np.any(rows < -1) or not np.all(np.isfinite(values["y"])):
        raise ValueError(f"load: {what} has a malformed training state")
    values["energy_row"] = values["energy_row"].tolist()
    values["force_row"] = values["force_row"].tolist()
    values["prior"] = arrays.get("state_prior")  # absent in older files
    if "state_is_stress" in arrays:  # format 6, with stress rows
        is_stress, stress_row = arrays["state_is_stress"], arrays.get("state_stress_row")
        if stress_row is None or is_stress.shape != (n_rows,) or is_stress.dtype != bool \
                or stress_row.shape != (len(values["energy_row"]),) \
                or np.any(stress_row >= n_rows) or np.any(stress_row < -1):
            raise ValueError(f"load: {what} has a malformed training state (stress rows)")
        values["is_stress"], values["stress_row"] = is_stress, stress_row.tolist()
    if not stored_design:
        values.update(Kw=None, L_mm=L_mm, R=None, b=None)
    return _incremental.TrainingState(**values)


def _stress_rows(state: _incremental.TrainingState) -> list:
    """Return the first stress row of each stored structure (-1: none)."""
    if len(state.stress_row) == len(state.energy_row):
        return state.stress_row
    return [-1] * len(state.energy_row)


def _in_memory_loso(design: SparseDesign, assembled: AssembledDesign, training: TrainingSet,
                    noise_std: np.ndarray, sigma: float, two_body: bool, origin, columns,
                    setting: str | int, owner: str) -> tuple[LosoTerms, np.ndarray | None]:
    """Return the LOSO terms of a design held whole, and the leave-out blocks (None: one each)."""
    Kw = assembled.design[:design.n_obs]
    structure = training.row_structures()
    blocks = _loso_blocks(Kw, design.row_kinds(), structure, training.frames, setting, owner)
    loso = _timed_loso(owner, lambda: _sparse_loso_terms(
        Kw, design.y, noise_std, sigma, assembled.prior, design.row_kinds(), structure,
        assembled.L_mm, design.pair_columns if two_body else None,
        own=own_columns(origin, columns, len(training.frames)), blocks=blocks,
        species_columns=columns))
    return loso, blocks


def _loso_blocks(Kw: np.ndarray, kinds: np.ndarray, structure: np.ndarray, frames,
                 setting: str | int, owner: str) -> np.ndarray | None:
    """Return the leave-out block of each training structure (None: one each).

    The fingerprints are the whitened energy rows per atom
    (:func:`kernelpot.loso_blocks.energy_fingerprints`).
    """
    kinds = np.asarray(kinds)
    energy = kinds if kinds.dtype == bool else kinds == 0
    n_atoms = np.array([len(atoms) for atoms in frames])
    structure = np.asarray(structure)
    fingerprints = loso_blocks.energy_fingerprints(Kw[energy], structure[energy], n_atoms,
                                                   len(frames))
    return loso_blocks.structure_blocks(fingerprints, len(frames), setting, owner,
                                        int(np.bincount(structure).max()))


def _sparse_loso_terms(Kw: np.ndarray | None, y: np.ndarray, noise_std: np.ndarray,
                       sigma: float, prior: np.ndarray, kinds: np.ndarray,
                       structure: np.ndarray, L_mm: np.ndarray,
                       pair_columns: np.ndarray | None, factor: np.ndarray | None = None,
                       streamed: tuple | None = None,
                       own: list[np.ndarray] | None = None,
                       blocks: np.ndarray | None = None,
                       species_columns: list[np.ndarray] | None = None) -> LosoTerms:
    """Compute the LOSO terms of a whitened design (:func:`kernelpot.loso.sparse_loso`).

    ``factor``: the upper factor of ``A``, when the caller keeps it (the incremental
    state's ``R``). ``kinds``: per row 0 energy, 1 force component, 2 stress component
    (or a bool mask of the energy rows). ``streamed``: with ``Kw=None`` and ``factor``,
    ``(spanned, rhs, group_terms)`` of a design never held whole
    (:mod:`kernelpot.streaming`): each row's squared whitened norm without two-body
    columns, ``σ Kwᵀ Λ⁻¹ y`` and the LOSO terms of groups of whole structures
    (:func:`kernelpot.streaming.streamed_loso_groups`).

    The projection term of a training row is ``σ² (prior - q)``, ``prior`` the GP prior
    variance and ``q`` the part of it the inducing set spans: the whitened row's
    squared norm without its two-body columns (``k_mm`` is block diagonal between the
    GP and the two-body coefficients, in whatever order updates appended columns, so
    those columns hold exactly the two-body part, which adds nothing to the
    projection). ``own``: per structure, the columns of the inducing environments
    chosen from it, which its projection term leaves out (:func:`kernelpot.loso.own_span`;
    a streamed design's ``spanned`` leaves them out already). ``blocks``: the leave-out
    block of each structure (:func:`kernelpot.loso_blocks.structure_blocks`; None: one
    structure each), which then stands for the structure everywhere above.
    ``species_columns``: each element's inducing columns, so that the left-out columns
    are solved for element by element (:func:`kernelpot.loso.own_spans`).
    """
    member = None if blocks is None else np.asarray(structure)
    structure = loso_blocks.by_block(structure, blocks)
    own = loso_blocks.block_columns(own, blocks)
    if streamed is not None:
        spanned, rhs, group_terms = streamed
        residual, variance, whitened = sparse_loso(None, y, noise_std, sigma, structure,
                                                   shifts=True, factor=factor, rhs=rhs,
                                                   group_terms=group_terms)
    else:
        residual, variance, whitened = sparse_loso(Kw, y, noise_std, sigma, structure,
                                                   shifts=True, factor=factor)
        spanned = np.einsum("nm,nm->n", Kw, Kw)
        if pair_columns is not None:
            pair = Kw[:, pair_columns]
            spanned = spanned - np.einsum("nm,nm->n", pair, pair)
        if own is not None:
            spanned = spanned - own_spans(Kw, L_mm, structure, own, species_columns)
    projection = np.maximum(sigma**2 * (prior - spanned), 0.0)
    # a design row k has whitened features φ = σ L_mm⁻¹ k: the shift is k @ σ L_mm⁻ᵀ (A⁻¹G)
    basis = sigma * sla.solve_triangular(L_mm, whitened, lower=True, trans="T",
                                         check_finite=False)
    kinds = np.asarray(kinds)
    if kinds.dtype == bool:
        kinds = np.where(kinds, 0, 1)
    return LosoTerms.from_loso(residual, variance, noise_std**2, projection, kinds == 0,
                               structure, basis, is_stress=kinds == 2, member=member)


def _factors_from_arrays(arrays: dict, factor_names: list, M: int, rebuild: Callable,
                         what: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(L_mm, R_w)`` of a file, ``L_mm`` by ``rebuild()`` where it is not stored.

    Format 12 holds ``R_w`` (maybe float32); earlier files hold ``L_post = L_mm R_wᵀ``,
    from which ``R_w`` is solved.
    """
    if factor_names[0] == "L_mm_envelope":
        L_mm = gp.unpack_envelope(arrays["L_mm_envelope"], arrays["L_mm_first"], M, what)
    elif factor_names[0] == "L_mm_tril":
        L_mm = gp.unpack_lower(arrays["L_mm_tril"], M, what)
    elif factor_names[0] == "L_mm":
        L_mm = arrays["L_mm"]
    else:
        L_mm = rebuild()
    if L_mm.shape != (M, M):
        raise ValueError(f"load: {what} holds a factor of shape {L_mm.shape} for {M} weights")
    if factor_names[-1] == "R_w_tril":
        return L_mm, gp.unpacked_whitened_factor(arrays["R_w_tril"], M, what)
    L_post = gp.unpack_lower(arrays["L_post_tril"], M, what) \
        if factor_names[-1] == "L_post_tril" else arrays["L_post"]
    if L_post.shape != (M, M):
        raise ValueError(f"load: {what} holds a posterior factor of shape {L_post.shape} "
                         f"for {M} weights")
    return L_mm, np.triu(sla.solve_triangular(L_mm, L_post, lower=True,
                                              check_finite=False).T)


def _inducing_origin_from_arrays(arrays: dict, inducing: list[np.ndarray], n_structures: int,
                                 what: str) -> list[np.ndarray] | None:
    """Return the stored origins of the inducing environments, checked; None if not stored."""
    names = [f"state_inducing_origin_{s}" for s in range(len(inducing))]
    present = [name in arrays for name in names]
    if not any(present):
        return None  # saved before origins were kept: the LOSO projection keeps them all
    origins = [arrays[name] if here else None for name, here in zip(names, present,
                                                                      strict=True)]
    for origin, z in zip(origins, inducing, strict=True):
        if origin is None or origin.dtype.kind not in "iu" or origin.shape != (len(z),) \
                or (len(origin) and (origin.min() < -1 or origin.max() >= n_structures)):
            raise ValueError(f"load: {what} has malformed state_inducing_origin arrays")
    return [np.asarray(origin, dtype=np.int64) for origin in origins]


def _checked_pair_columns(pair_columns, columns, two_body, n_species, n_weights, what):
    """Return the two-body columns, checked: every design column exactly once overall."""
    if two_body is None:
        if not np.array_equal(np.sort(np.concatenate(list(columns))), np.arange(n_weights)):
            raise ValueError(f"load: {what} has malformed inducing columns")
        return None
    every = np.concatenate(list(columns) + ([pair_columns] if pair_columns is not None
                                            else []))
    if pair_columns is None or pair_columns.dtype.kind not in "iu" \
            or pair_columns.shape != (two_body.n_columns(n_species),) \
            or not np.array_equal(np.sort(every), np.arange(n_weights)):
        raise ValueError(f"load: {what} has malformed two-body columns")
    return pair_columns
