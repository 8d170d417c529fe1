"""The interface every fitted posterior of :class:`~kernelpot.SparseGPPotential` offers.

:class:`~kernelpot.sparse_posterior.SparsePosterior` (the DTC model) and
:class:`~kernelpot.exact_posterior.ExactPosterior` (the exact GP) derive from
:class:`Posterior`; the estimator talks to them only through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
from ase.data import chemical_symbols

if TYPE_CHECKING:
    from ase import Atoms

    from kernelpot._labels import TrainingSet
    from kernelpot.descriptors.base import Descriptor
    from kernelpot.prediction import Prediction, PredictionParts

__all__ = ["Posterior"]


class Posterior(ABC):
    """A fitted posterior: what it predicts, its state as arrays, and its training data.

    Subclasses set ``kind`` ("sparse" or "exact"), ``kernel``, ``inducing``,
    ``two_body``, ``weights``, ``signal_std``, ``energy_noise``, ``force_noise``,
    ``stress_noise``, ``log_marginal_likelihood_value``, ``jitter``, ``loso`` and
    ``loo_shift``, and the properties ``n_stress_observations`` and
    ``n_force_observations``.
    """

    kind: str
    #: ``{config_type: {"energy": s, "forces": s, "stress": s}}``, the noise scales of each
    #: configuration type (:mod:`kernelpot.noise_groups`), or None (one noise per kind).
    noise_scales: dict[str, dict[str, float]] | None = None
    #: The training set of a sparse fit without a training state (``incremental=False``)
    #: on structures in memory: :meth:`SparseGPPotential.update` refits on it once as an
    #: incremental model. None otherwise (and never stored in model files).
    fitted_on: TrainingSet | None = None

    def __getstate__(self) -> dict:
        """Pickle without ``fitted_on``: models sent to workers (joblib, Dask) predict.

        A sparse fit's kept structures would travel with every copy; an unpickled sparse
        model is then one loaded, which cannot update without a training state (an
        exact model's ``training`` is small beside its factors and travels with it).
        ``copy.deepcopy`` keeps everything (:meth:`__deepcopy__`).
        """
        state = dict(self.__dict__)
        state.pop("fitted_on", None)
        return state

    def __deepcopy__(self, memo: dict) -> Posterior:
        """Return a full copy, ``fitted_on`` included (a copy to branch updates from)."""
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    @property
    def can_update(self) -> bool:
        """Return whether :meth:`SparseGPPotential.update` can add structures to the model.

        The posterior keeps its training data (``keeps_training_data``), or a sparse
        one keeps the structures it was fitted on and its first update refits it.
        """
        return bool(self.keeps_training_data) or self.fitted_on is not None

    def n_inducing(self, species: np.ndarray) -> dict[str, int]:
        """Return the inducing (for the exact model: training) environments per element.

        Parameters
        ----------
        species : ndarray of int
            Atomic numbers, in the model's order.

        Returns
        -------
        dict
            ``{symbol: count}``.
        """
        return {chemical_symbols[z]: len(x) for z, x in zip(species, self.inducing,
                                                             strict=True)}

    def prepare_prediction(self) -> None:  # noqa: B027 - optional hook, nothing by default
        """Build what every prediction shares before predictions go to workers."""

    @abstractmethod
    def parts(self, descriptor: Descriptor, atoms: Atoms, index: np.ndarray, e0: np.ndarray,
              forces: bool, variance: bool | str, volume: float | None = None,
              shifts: bool = False) -> PredictionParts:
        """Predict the mean of one structure and keep what its variances need."""

    @abstractmethod
    def finish(self, parts: list[PredictionParts]) -> list[Prediction]:
        """Turn parts into Predictions, with all their variances in one solve."""

    @abstractmethod
    def local_energies(self, descriptor: Descriptor, atoms: Atoms,
                       index: np.ndarray) -> np.ndarray:
        """Return the local energies of one structure, without reference energies."""

    @abstractmethod
    def log_marginal_likelihood(self, theta: np.ndarray, eval_gradient: bool = False):
        """Return the log marginal likelihood at ``theta`` (and its gradient)."""

    @abstractmethod
    def check_updatable(self, owner: str) -> None:
        """Raise unless the posterior can take low-rank updates."""

    @abstractmethod
    def restore_training(self, frames: list, describe, owner: str,
                         training: TrainingSet | None = None) -> None:
        """Give a loaded training state its structures back (or raise).

        The sparse posterior describes ``frames`` itself (``describe``); the exact one
        takes them as the checked ``training`` set.
        """

    @abstractmethod
    def training_numbers(self) -> list[np.ndarray] | None:
        """Return each training structure's atomic numbers (None: not kept)."""

    @abstractmethod
    def to_arrays(self, training_state: bool = False) -> tuple[dict, dict]:
        """Return the posterior as plain arrays and JSON-ready metadata."""
