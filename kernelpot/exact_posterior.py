"""The exact model's fitted posterior: fit, predict, variances, arrays.

:class:`ExactPosterior` is what ``SparseGPPotential(method="exact")`` fits: every
energy and force component is an observation of one GP (the maths is in
:mod:`kernelpot.exact`). Its state is set in one place, :meth:`ExactPosterior.__init__`;
an exact model is refitted, not updated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.linalg as sla
from ase.data import chemical_symbols

from kernelpot import exact, gp, loso_blocks, noise_groups
from kernelpot._labels import TrainingSet
from kernelpot.hyperparameters import (
    DEFAULT_STRESS_NOISE,
    NoiseSearch,
    fitted_names,
    free_mask,
    values_kept_where_fixed,
    warn_if_force_noise_at_bound,
)
from kernelpot.loso import LosoTerms, exact_loso
from kernelpot.loso import timed as _timed_loso
from kernelpot.posterior import Posterior
from kernelpot.prediction import Prediction, PredictionParts
from kernelpot.sparse_posterior import features_only

if TYPE_CHECKING:
    from ase import Atoms
    from sklearn.base import BaseEstimator

    from kernelpot.descriptors.base import Descriptor
    from kernelpot.kernels import Kernel

logger = logging.getLogger(__name__)

__all__ = ["ExactPosterior"]

#: Arrays of the training structures a model file stores (the Jacobians are recomputed).
_STRUCTURE_FIELDS = ("n_atoms", "numbers", "positions", "cells", "pbc", "has_energy",
                     "has_forces")
#: Stored only when some training structure has a stress label (format 6).
_OPTIONAL_STRUCTURE_FIELDS = ("has_stress",)


class ExactPosterior(Posterior):
    """A fitted exact GP: observations, the factor of ``K_y``, weights and noise levels.

    Parameters
    ----------
    kernel : Kernel
    observations : exact.Observations
        The training environments and Jacobian rows.
    L : ndarray of shape (n_obs, n_obs)
        Lower Cholesky factor of ``K_y``.
    weights : ndarray of shape (n_obs,)
        ``K_y⁻¹ y``.
    y : ndarray of shape (n_obs,)
        Labels: energies minus reference energies, then each structure's force
        components followed by its stress (when it has one).
    signal_std : float or dict
        ``σ`` (eV), or ``{element: σ_s}``.
    energy_noise, force_noise : float
        eV/√atom, eV/Å.
    stress_noise : float
        eV/Å³ (the given value when no stress was trained on).
    structures : dict of ndarray
        The training structures as arrays (:func:`kernelpot.exact.structure_arrays`).
    species : ndarray of int
        Atomic numbers, in the model's order.
    prior_covariance : ndarray or list of ndarray or None, default=None
        The prior covariance (per element with per-element signal stds), when
        already built; rebuilt on demand otherwise.
    loso : LosoTerms or None, default=None
        Leave-one-structure-out errors and variance terms of the training data
        (:func:`kernelpot.loso.exact_loso`), when the estimator's
        ``calibration="loso"`` asked for them. Not stored in model files.
    """

    kind = "exact"
    two_body = None
    jitter = 0.0
    jitter_abs = 0.0

    def __init__(self, *, kernel: Kernel, observations: exact.Observations, L: np.ndarray,
                 weights: np.ndarray, y: np.ndarray, signal_std: float | dict[str, float],
                 energy_noise: float, force_noise: float, stress_noise: float,
                 structures: dict[str, np.ndarray], species: np.ndarray,
                 prior_covariance: np.ndarray | list[np.ndarray] | None = None,
                 loso: LosoTerms | None = None):
        self.kernel = kernel
        self.observations = observations
        for arrays in (observations.features, observations.rows, observations.row_env):
            for values in arrays:  # fixed from here on: kernels may cache derived data
                values.setflags(write=False)
        self.L = L
        self.weights = weights
        self.y = y
        self.signal_std = signal_std
        self.energy_noise = float(energy_noise)
        self.force_noise = float(force_noise)
        self.stress_noise = float(stress_noise)
        self.structures = structures
        self.species = species
        self.mean = exact.mean_weights(observations, weights, self.signal_variances())
        self.mean_maps = exact.mean_maps(self.mean, kernel)
        self.log_marginal_likelihood_value = exact.log_density(L, y, weights)
        self._prior_covariance = prior_covariance
        self.loso = loso
        #: the ``loso_blocks`` setting and the leave-out block of each training structure
        #: (None: one each)
        self.loso_blocks: tuple = ("auto", None)
        self.loo_shift = loso.shift_basis if loso is not None else None
        #: The training structures and labels (references to the fitted frames, small
        #: beside the descriptors the model holds), kept by every fit so that
        #: :meth:`SparseGPPotential.update` can refit on them and new ones; None for a
        #: model loaded from a file until :meth:`SparseGPPotential.restore_training`.
        self.training: TrainingSet | None = None

    # -- what the estimator reads ---------------------------------------------------------
    @property
    def n_stress_observations(self) -> int:
        """Return the stress components trained on (six per cell)."""
        return self.observations.n_stress

    @property
    def n_energy_observations(self) -> int:
        """Return the structure energies trained on."""
        return int(self.observations.n_energy)

    @property
    def n_force_observations(self) -> int:
        """Return the force components trained on."""
        return self.observations.n_force - self.observations.n_stress

    @property
    def inducing(self) -> list[np.ndarray]:
        """Return the training environments per element (every one is 'inducing')."""
        return self.observations.features

    @property
    def keeps_training_data(self) -> bool:
        """Return whether the posterior can be updated (fitted, or loaded and restored)."""
        return self.training is not None

    def training_numbers(self) -> list[np.ndarray]:
        """Return each training structure's atomic numbers.

        Returns
        -------
        list of ndarray
        """
        bounds = np.cumsum(self.structures["n_atoms"])[:-1]
        return np.split(np.asarray(self.structures["numbers"]), bounds)

    @property
    def n_training_structures(self) -> int:
        """Return the structures trained on."""
        return len(self.structures["n_atoms"])

    @property
    def training_frames(self) -> list:
        """Return the labelled structures trained on (models that keep them)."""
        return self.training.frames

    def force_labels(self) -> np.ndarray:
        """Return the force components trained on (the GP's labels), flattened, eV/Å."""
        return self.training.force_targets()

    def signal_variances(self) -> np.ndarray:
        """Return ``σ_s²`` per element, in ``species`` order (all equal with one ``σ``)."""
        sigma = self.signal_std
        if isinstance(sigma, dict):
            return np.array([sigma[chemical_symbols[z]] for z in self.species])**2
        return np.full(len(self.species), float(sigma)**2)

    def prior_covariance(self) -> np.ndarray | list[np.ndarray]:
        """Return the prior covariance (per-element parts with per-element signal stds).

        Returns
        -------
        ndarray of shape (n_obs, n_obs) or list of them
        """
        if self._prior_covariance is None:
            self._prior_covariance = exact.prior_covariance(
                self.observations, self.kernel, per_element=isinstance(self.signal_std, dict))
        return self._prior_covariance

    # -- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(cls, estimator: BaseEstimator, training: TrainingSet, descriptor: Descriptor,
            kernel: Kernel, rng: np.random.RandomState,
            imap: Callable[..., Iterator], runner: Any = None,
            start: np.ndarray | None = None) -> ExactPosterior:
        """Fit the exact energy-and-force GP.

        Parameters
        ----------
        estimator : SparseGPPotential
            Its parameters (read, not changed).
        training : TrainingSet
        descriptor : Descriptor
        kernel : Kernel
            Kept as given (its own hyperparameters are not searched).
        rng : numpy.random.RandomState
        imap : callable
            ``imap(fn, items, desc)``, the estimator's ordered parallel map.
        runner : BlockRunner or None, default=None
            Not used: the exact model holds its whole covariance and is fitted in this
            process; it is here so that both posteriors fit with one signature.
        start : ndarray or None, default=None
            ``log (σ..., σ_E, σ_F, σ_S)`` to start from (and keep where not fitted)
            instead of the estimator's given values: an update's refit starts from the
            fitted ones.

        Returns
        -------
        ExactPosterior

        Raises
        ------
        ValueError
            If ``optimize`` names "kernel" for a kernel with hyperparameters.
        """
        owner = type(estimator).__name__
        names = fitted_names(estimator.optimize, owner)
        if "kernel" in names and kernel.n_theta and estimator.optimize is not True:
            raise ValueError(f"{owner}: method='exact' keeps the kernel's hyperparameters as "
                             "given; remove 'kernel' from optimize")
        if kernel.n_theta:
            logger.info("%s: method='exact' keeps the kernel's own hyperparameters %s as given",
                        owner, dict(zip(kernel.theta_names, np.exp(kernel.theta).tolist(),
                                        strict=True)))
        has_energy, has_forces = training.has_energy, training.has_forces
        has_stress = training.has_stress
        results = descriptor.compute_all(training.frames, imap, has_stress)
        obs = exact.build_observations(results, training.species_index, len(training.species),
                                       has_energy, has_forces, _stress_volumes(training.frames,
                                                                               has_stress))
        del results
        per_element = bool(estimator.signal_per_element)
        n_signal = len(training.species) if per_element else 1
        logger.info("%s: exact GP on %d energies, %d force and %d stress components (%d × "
                    "%.0f MiB of covariance)", owner, obs.n_energy, obs.n_force - obs.n_stress,
                    obs.n_stress, n_signal, obs.n_obs**2 * 8 / 2**20)
        tic = time.perf_counter()
        K0 = exact.prior_covariance(obs, kernel, per_element=per_element)
        logger.info("%s: covariance assembled in %.1f s", owner, time.perf_counter() - tic)
        y = _targets(training)
        given = [float(estimator.signal_std)] * n_signal + [
            float(estimator.energy_noise), float(estimator.force_noise),
            float(estimator.stress_noise)] if start is None else np.exp(start).tolist()
        log_params = np.log(given)
        free = free_mask(names, obs.n_energy, obs.n_force - obs.n_stress, n_signal,
                         n_stress=obs.n_stress)
        search = NoiseSearch.of(estimator)
        if any(free):
            log_params = search.optimize(
                lambda t: exact.log_marginal_likelihood(t, K0, y, obs, eval_gradient=True),
                log_params, rng, free)
        scales, noise_scale = None, None
        if estimator.config_type_noise:
            log_params, scales, noise_scale = _fit_noise_scales(
                training, obs, K0, y, log_params, free, n_signal, search, rng, owner)
        values = values_kept_where_fixed(log_params, given, free)
        energy_noise, force_noise = values[-3:-1]
        symbols = [chemical_symbols[z] for z in training.species]
        sigma = dict(zip(symbols, values[:-3], strict=True)) if per_element else values[0]
        warn_if_force_noise_at_bound(force_noise, estimator.force_noise_bounds, free[-2], owner,
                                     stacklevel=4)
        L = exact.factor(K0, np.log(values), obs, noise_scale)
        weights = sla.cho_solve((L, True), y, check_finite=False)
        blocks = _exact_blocks(K0, obs, has_energy, training.frames, estimator.loso_blocks,
                               owner) if estimator.calibration == "loso" else None
        loso = _exact_loso_terms(L, weights,
                                 exact.noise_variances(np.log(values), obs, noise_scale),
                                 obs, np.flatnonzero(has_energy), owner, blocks) \
            if estimator.calibration == "loso" else None
        posterior = cls(kernel=kernel, observations=obs, L=L, weights=weights, y=y,
                        signal_std=sigma, energy_noise=energy_noise, force_noise=force_noise,
                        stress_noise=values[-1],
                        structures=exact.structure_arrays(training.frames, has_energy,
                                                          has_forces, has_stress),
                        species=training.species, prior_covariance=K0, loso=loso)
        posterior.noise_scales = scales
        posterior.loso_blocks = (estimator.loso_blocks, blocks)
        posterior.training = training  # whatever ``incremental``: update refits on it
        return posterior

    def refresh_loso(self, owner: str) -> None:
        """Recompute the leave-one-structure-out terms (not stored in model files).

        Parameters
        ----------
        owner : str
            Names the caller in logs.
        """
        noise = exact.noise_variances(self.log_params(), self.observations)
        has_energy = self.structures["has_energy"]
        frames = getattr(self.training, "frames", None)
        blocks = _exact_blocks(self.prior_covariance(), self.observations, has_energy, frames,
                               self.loso_blocks[0], owner) if frames is not None else None
        self.loso_blocks = (self.loso_blocks[0], blocks)
        self.loso = _exact_loso_terms(self.L, self.weights, noise, self.observations,
                                      np.flatnonzero(has_energy), owner, blocks)
        self.loo_shift = self.loso.shift_basis

    def log_params(self) -> np.ndarray:
        """Return ``log (σ..., σ_E, σ_F, σ_S)`` as fitted (one ``σ`` per element if so)."""
        sigma = self.signal_std
        sigmas = [sigma[chemical_symbols[z]] for z in self.species] \
            if isinstance(sigma, dict) else [sigma]
        return np.log([*sigmas, self.energy_noise, self.force_noise, self.stress_noise])

    # -- prediction ----------------------------------------------------------------------
    def parts(self, descriptor: Descriptor, atoms: Atoms, index: np.ndarray, e0: np.ndarray,
              forces: bool, variance: bool | str, volume: float | None = None,
              shifts: bool = False) -> PredictionParts:
        """Predict the mean of one structure; keep its descriptors when variances are asked.

        Parameters
        ----------
        descriptor : Descriptor
        atoms : ase.Atoms
        index : ndarray of int
        e0 : ndarray of shape (n_species,)
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
        force_variance = forces and variance is True
        stress = volume is not None
        result = descriptor.compute(atoms, strain=stress) if forces or stress \
            else features_only(descriptor.create(atoms))
        mean = exact.predict_mean(result, index, self.mean, self.kernel, forces=forces,
                                  strain=stress, maps=getattr(self, "mean_maps", None))
        local, force_values = mean[0] + e0[index], mean[1] if forces else None
        stress_values = gp.stress_from_strain_derivative(mean[2], volume) if stress else None
        parts = PredictionParts(float(local.sum()), force_values, local, stress_values)
        if variance:
            parts.variance_input = (result, index, volume, force_variance,
                                    bool(shifts and self.loo_shift is not None))
            parts.variance_rows = 1 + 3 * len(local) * force_variance + 6 * stress
        return parts

    def finish(self, parts: list[PredictionParts]) -> list[Prediction]:
        """Turn parts into Predictions, with the exact posterior variances in one solve.

        Parameters
        ----------
        parts : list of PredictionParts

        Returns
        -------
        list of Prediction
        """
        variances = {}
        for request in {p.variance_input[3:] for p in parts if p.variance_input is not None}:
            # one solve per kind of request: (force variances?, shifts?)
            pending = [k for k, p in enumerate(parts)
                       if p.variance_input is not None and p.variance_input[3:] == request]
            volumes = [parts[k].variance_input[2] for k in pending]
            variances.update(zip(pending, exact.predict_variances(
                [parts[k].variance_input[0] for k in pending],
                [parts[k].variance_input[1] for k in pending], self.observations, self.L,
                self.signal_variances(), self.kernel, forces=request[0],
                shift_basis=self.loo_shift if request[1] else None,
                stress_volumes=[np.nan if v is None else v for v in volumes]), strict=True))
        out = []
        for k, part in enumerate(parts):
            if part.variance_input is None:
                out.append(part.without_variance())
                continue
            var_e, var_f, shifts, var_s = variances[k]
            # an exact posterior has no projection term: it is all in the first
            zeros = np.zeros_like(var_f) if var_f is not None else None
            out.append(Prediction(part.energy, part.forces, var_e, 0.0, var_f, zeros,
                                  part.local_energies, part.stress, shifts, var_s,
                                  None if var_s is None else np.zeros(6)))
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
        """
        local, _ = exact.predict_mean(features_only(descriptor.create(atoms)), index,
                                      self.mean, self.kernel, forces=False,
                                      maps=getattr(self, "mean_maps", None))
        return local

    def log_marginal_likelihood(self, theta: np.ndarray, eval_gradient: bool = False,
                                ) -> float | tuple[float, np.ndarray]:
        """Return the log marginal likelihood at ``theta = log (σ..., σ_E, σ_F, σ_S)``.

        Parameters
        ----------
        theta : ndarray of shape (n_signal + 3,)
        eval_gradient : bool, default=False

        Returns
        -------
        float, or (float, ndarray)
        """
        return exact.log_marginal_likelihood(theta, self.prior_covariance(), self.y,
                                             self.observations, eval_gradient=eval_gradient)

    def check_updatable(self, owner: str) -> None:
        """Raise unless the model keeps its training structures (not loaded from a file).

        Parameters
        ----------
        owner : str
        """
        if self.training is None:
            raise ValueError(f"{owner}: this exact model keeps no training structures to "
                             "refit on (loaded from a file, or fitted on an iterator): give "
                             "them back with restore_training(frames), the structures it "
                             "was fitted on")

    def restore_training(self, frames: list, describe: Callable | None, owner: str,
                         training: TrainingSet | None = None) -> None:
        """Keep ``training`` as the structures this model was fitted on, after checking them.

        Parameters
        ----------
        frames : list of ase.Atoms
            Not used (``training`` holds them).
        describe : callable or None
            Not used (the exact model keeps no descriptors beyond its observations).
        owner : str
        training : TrainingSet
            The structures and labels, in training order (the GP's labels).

        Raises
        ------
        ValueError
            If the structures or their labels are not the ones the model was fitted on.
        """
        if training is None:
            raise ValueError(f"{owner}: an exact model restores a checked training set")
        stored = self.structures
        n_atoms = np.array([len(a) for a in training.frames])
        same = (np.array_equal(n_atoms, stored["n_atoms"])
                and np.array_equal(np.concatenate([a.numbers for a in training.frames]),
                                   stored["numbers"])
                and np.allclose(np.concatenate([a.positions for a in training.frames]),
                                stored["positions"], rtol=0, atol=1e-8))
        if not same:
            raise ValueError(f"{owner}: these {len(training.frames)} structures are not the "
                             f"{len(stored['n_atoms'])} the model was fitted on (atoms, "
                             "elements or positions differ)")
        # to 1e-6 (eV, eV/Å): the precision extended XYZ files keep labels at
        if not np.allclose(_targets(training), self.y, rtol=0, atol=1e-6):
            raise ValueError(f"{owner}: the structures' labels are not the ones the model "
                             "was fitted on")
        self.training = training

    # -- model files ---------------------------------------------------------------------
    def to_arrays(self, training_state: bool = False) -> tuple[dict, dict]:
        """Return the posterior as plain arrays and JSON-ready metadata.

        The Jacobians are recomputed from the stored structures at load: far
        smaller files.

        Parameters
        ----------
        training_state : bool, default=False
            Allowed for a model that keeps its training structures (every fitted one;
            a loaded one after :meth:`SparseGPPotential.restore_training`): the file
            holds the training structures and their labels (``exact_y``) either way,
            and :meth:`SparseGPPotential.restore_training` gives a loaded model its
            labelled structures back.

        Returns
        -------
        arrays : dict of ndarray
        fitted : dict

        Raises
        ------
        ValueError
            For ``training_state=True`` on a loaded model not given its structures back.
        """
        if training_state and self.training is None:
            raise ValueError("save: training_state=True needs the model's training "
                             "structures, which this one does not keep (loaded from a file: "
                             "call restore_training(frames) first; or its fit kept none, as "
                             "with config_type_noise=True)")
        # the factor is lower triangular: its triangle alone (format 9)
        arrays = {"alpha": self.weights, "exact_L_tril": gp.pack_lower(self.L),
                  "exact_y": self.y}
        if self.loo_shift is not None:
            arrays["loo_shift"] = self.loo_shift
        for name, value in self.structures.items():
            arrays[f"exact_structures_{name}"] = value
        fitted = {"method": self.kind, "signal_std": self.signal_std,
                  "energy_noise": self.energy_noise, "force_noise": self.force_noise,
                  "stress_noise": self.stress_noise,
                  "log_marginal_likelihood": self.log_marginal_likelihood_value,
                  "jitter": self.jitter, "jitter_abs": self.jitter_abs, "stats": None,
                  "config_type_noise": self.noise_scales}
        return arrays, fitted

    @classmethod
    def from_arrays(cls, arrays: dict, fitted: dict, kernel: Kernel, descriptor: Descriptor,
                    species: np.ndarray, what: str) -> ExactPosterior:
        """Rebuild the posterior from a model file: observations from its structures.

        Parameters
        ----------
        arrays : dict of ndarray
        fitted : dict
        kernel : Kernel
        descriptor : Descriptor
            Recomputes the training Jacobians.
        species : ndarray of int
        what : str
            Names the file in errors.

        Returns
        -------
        ExactPosterior

        Raises
        ------
        ValueError
            If arrays are missing or do not match the structures.
        """
        missing = [n for n in _STRUCTURE_FIELDS if f"exact_structures_{n}" not in arrays]
        factor = "exact_L" if "exact_L" in arrays else "exact_L_tril"  # before 9: the square
        missing += [n for n in (factor, "exact_y") if n not in arrays]
        if missing:
            raise ValueError(f"load: {what} is an exact model without {missing}")
        signal_std = _checked_signal_std(fitted.get("signal_std"), species, what)
        structures = {n: arrays[f"exact_structures_{n}"] for n in
                      _STRUCTURE_FIELDS + _OPTIONAL_STRUCTURE_FIELDS
                      if f"exact_structures_{n}" in arrays}
        frames = exact.structures_from_arrays(structures)
        has_stress = structures.get("has_stress", np.zeros(len(frames), dtype=bool))
        if has_stress.shape != (len(frames),) or has_stress.dtype != bool \
                or any(s and not np.all(a.pbc) for s, a in zip(has_stress, frames, strict=True)):
            raise ValueError(f"load: {what} has a malformed exact_structures_has_stress array")
        species_index = [np.searchsorted(species, a.numbers) for a in frames]
        results = [descriptor.compute(a, strain=bool(s)) for a, s in zip(frames, has_stress,
                                                                       strict=True)]
        obs = exact.build_observations(results, species_index, len(species),
                                       structures["has_energy"], structures["has_forces"],
                                       _stress_volumes(frames, has_stress))
        n = obs.n_obs
        L, y, weights = arrays[factor], arrays["exact_y"], arrays["alpha"]
        if factor == "exact_L_tril" and L.shape == (n * (n + 1) // 2,):
            L = gp.unpack_lower(L, n, what)
        if L.shape != (n, n) or y.shape != (obs.n_obs,) \
                or weights.shape != (obs.n_obs,):
            raise ValueError(f"load: {what} holds exact-model arrays that do not match its "
                             f"{obs.n_obs} training observations")
        posterior = cls(kernel=kernel, observations=obs, L=L, weights=weights, y=y,
                        signal_std=signal_std, energy_noise=fitted["energy_noise"],
                        force_noise=fitted["force_noise"],
                        stress_noise=fitted.get("stress_noise", DEFAULT_STRESS_NOISE),
                        structures=structures,
                        species=species)
        # the file's value, as the fit computed it (bit for bit the same model)
        posterior.log_marginal_likelihood_value = fitted["log_marginal_likelihood"]
        posterior.loo_shift = _checked_shift_basis(arrays.get("loo_shift"), obs.n_obs, what)
        posterior.noise_scales = noise_groups.checked_scales(fitted.get("config_type_noise"),
                                                             what)
        return posterior


def _fit_noise_scales(training: TrainingSet, obs, K0, y: np.ndarray, log_params: np.ndarray,
                      free: list, n_signal: int, search: NoiseSearch,
                      rng: np.random.RandomState, owner: str):
    """Fit the noise scales of each configuration type (:mod:`kernelpot.noise_groups`).

    Returns ``(log_params, scales, noise_scale)``: the scales by type and the variance
    factor of every observation, both None when no scale is fitted.
    """
    types, structure_type = noise_groups.config_types(training.frames)
    if len(types) < 2:
        logger.info("%s: config_type_noise: one configuration type (%s), one noise", owner,
                    types[0])
        return log_params, None, None
    kinds = np.concatenate([np.zeros(obs.n_energy, dtype=int),
                            np.ones(obs.n_force, dtype=int)])
    if obs.is_stress is not None:
        kinds[obs.n_energy:][obs.is_stress] = 2
    row_structure = exact.observation_structures(obs, training.has_energy)
    obs_group, free_scales = noise_groups.scale_groups(
        structure_type[row_structure], kinds, row_structure, len(types), free[n_signal:])
    log_params, log_scales = noise_groups.fit_scales(
        lambda t: exact.log_marginal_likelihood(t, K0, y, obs, eval_gradient=True,
                                                obs_group=obs_group),
        log_params, free, free_scales, search, rng, owner, types)
    if log_scales is None:
        return log_params, None, None
    scales = noise_groups.scales_by_type(types, log_scales)
    logger.info("%s: noise scales per configuration type %s", owner, scales)
    return log_params, scales, np.exp(2 * log_scales)[obs_group]


def _stress_volumes(frames: list, has_stress: np.ndarray) -> np.ndarray:
    """Return the cell volume of each structure with a stress label, NaN for the others."""
    return np.array([a.get_volume() if s else np.nan
                     for a, s in zip(frames, has_stress, strict=True)])


def _targets(training: TrainingSet) -> np.ndarray:
    """Return the exact model's labels: energies, then per structure forces and stress."""
    labels = training.labels
    stresses = labels.stresses or [None] * len(training.frames)
    parts = [training.energy_targets()]
    for forces, stress in zip(labels.forces, stresses, strict=True):
        if forces is not None:
            parts.append(forces.ravel())
        if stress is not None:
            parts.append(stress)
    return np.concatenate(parts)


def _exact_blocks(K0: np.ndarray | None, obs: exact.Observations, has_energy: np.ndarray,
                  frames, setting: str | int, owner: str) -> np.ndarray | None:
    """Return the leave-out block of each training structure (None: one each).

    Each structure's fingerprint is its row of the prior energy covariance, per atom of
    both structures (:mod:`kernelpot.loso_blocks`); every structure needs an energy.
    """
    has_energy = np.asarray(has_energy, dtype=bool)
    if frames is None:
        return None
    distance = None  # without every energy: no fingerprints ("auto" leaves one out)
    if K0 is not None and np.all(has_energy):
        if isinstance(K0, list):  # per-element parts at unit signal
            K0 = sum(part[:obs.n_energy, :obs.n_energy] for part in K0)
        n_atoms = np.array([len(atoms) for atoms in frames], dtype=np.float64)
        distance = loso_blocks.gram_distance(K0[:obs.n_energy, :obs.n_energy]
                                             / np.outer(n_atoms, n_atoms))
    rows = np.bincount(np.concatenate([np.flatnonzero(has_energy), obs.force_structure]))
    return loso_blocks.structure_blocks(distance, len(frames), setting, owner,
                                        int(rows.max()))


def _exact_loso_terms(L: np.ndarray, weights: np.ndarray, noise: np.ndarray,
                      obs: exact.Observations, energy_structure: np.ndarray,
                      owner: str, blocks: np.ndarray | None = None) -> LosoTerms:
    """Compute and time the LOSO terms of the exact model (no projection term).

    ``energy_structure``: the training structure of each energy observation;
    ``blocks``: the leave-out block of each structure (None: one each).
    """
    member = np.concatenate([energy_structure, obs.force_structure])
    structure = loso_blocks.by_block(member, blocks)
    is_stress = None if obs.is_stress is None else np.r_[np.zeros(obs.n_energy, bool),
                                                         obs.is_stress]

    def compute() -> LosoTerms:
        residual, variance, basis = exact_loso(L, weights, structure, shifts=True)
        return LosoTerms.from_loso(residual, variance, noise, np.zeros(len(weights)),
                                   np.arange(len(weights)) < obs.n_energy, structure, basis,
                                   is_stress=is_stress,
                                   member=None if blocks is None else member)

    return _timed_loso(owner, compute)


def _checked_shift_basis(basis: np.ndarray | None, n_rows: int, what: str):
    """Return a stored leave-one-structure-out shift basis, checked (None if absent)."""
    if basis is None:
        return None
    if basis.ndim != 2 or basis.shape[0] != n_rows or not np.all(np.isfinite(basis)):
        raise ValueError(f"load: {what} has a malformed loo_shift array")
    return basis


def _checked_signal_std(sigma, species, what):
    """Return the stored signal std, validated: a number, or ``{element: σ}``."""
    def positive(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if isinstance(sigma, dict):
        symbols = {chemical_symbols[z] for z in species}
        if set(sigma) == symbols and all(map(positive, sigma.values())):
            return {k: float(v) for k, v in sigma.items()}
    elif positive(sigma):
        return float(sigma)
    raise ValueError(f"load: {what} has a malformed signal_std entry {sigma!r}")
