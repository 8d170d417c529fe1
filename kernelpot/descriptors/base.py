"""Descriptor base class and the neighbour-sparse result container.

Every descriptor in kernelpot maps one :class:`ase.Atoms` to a
:class:`DescriptorResult`: per-atom features and their Jacobian with respect
to atomic positions, stored one row per (centre, atom) pair as featomic does,
so that memory grows linearly with the number of atoms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator

from kernelpot._parallel import map_list
from kernelpot._validation import check_verbose

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ase import Atoms

logger = logging.getLogger(__name__)

__all__ = ["Descriptor", "DescriptorResult"]


@dataclass(frozen=True)
class DescriptorResult:
    """Features of one structure and their neighbour-sparse Jacobian.

    Parameters
    ----------
    features : ndarray of shape (n_atoms, n_features)
        Descriptor of every atom (float64).
    pairs : ndarray of shape (n_pairs, 2)
        Integer rows ``(i, j)`` (int64), sorted by ``i`` then ``j``: the position of atom
        ``j`` moves the features of centre ``i``. Every ``(i, i)`` is present.
        Periodic images are folded onto the atom they image.
    gradients : ndarray of shape (n_pairs, 3, n_features)
        ``gradients[p, c, :]`` is the derivative of ``features[i, :]`` with
        respect to ``positions[j, c]`` for ``(i, j) = pairs[p]`` (Å⁻¹ times
        the unit of the features).
    strain_gradients : ndarray of shape (n_atoms, 3, 3, n_features) or None
        With ``compute(atoms, strain=True)``: ``strain_gradients[i, a, b, :]`` is
        the derivative of ``features[i, :]`` with respect to ``ε[a, b]`` of the
        homogeneous deformation ``r → (1 + ε) r`` of every position and cell
        vector (the Jacobian contracted with each neighbour image's vector,
        ``Σ_k ∂features[i]/∂r_k[a] (r_k - r_i)[b]``; unitless times the unit of
        the features). It is what stress needs (:meth:`~kernelpot.
        SparseGPPotential.predict_stress`). ``None`` otherwise.

    Notes
    -----
    Translation invariance gives the sum rule
    ``sum over j of gradients[(i, j)] == 0`` for every centre ``i``; the tests
    check it.
    """

    features: np.ndarray
    pairs: np.ndarray
    gradients: np.ndarray
    strain_gradients: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        """Number of atoms (rows of ``features``)."""
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        """Length of one atom's feature vector."""
        return self.features.shape[1]

    def dense_gradients(self) -> np.ndarray:
        """Return the dense Jacobian, for small systems and tests only.

        Returns
        -------
        ndarray of shape (n_atoms, n_atoms, 3, n_features)
            ``out[i, j, c, :]`` = ∂ features[i, :] / ∂ positions[j, c].
        """
        n_atoms, n_features = self.features.shape
        out = np.zeros((n_atoms, n_atoms, 3, n_features))
        out[self.pairs[:, 0], self.pairs[:, 1]] = self.gradients
        return out


class Descriptor(BaseEstimator):
    """Base class of kernelpot's local descriptors.

    Subclasses store their constructor arguments unchanged (scikit-learn
    convention, so ``clone`` and ``set_params(descriptor__r_cut=...)`` work),
    validate them when first used, and implement :meth:`compute`,
    :meth:`get_number_of_features` and ``_check_params`` (the validation,
    which :meth:`compute_many` runs once before dispatching work).

    Attributes
    ----------
    species : list of str or int
        Chemical elements the descriptor knows, as given.
    r_cut : float
        Cutoff radius in Å.
    """

    # -- public API -----------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """Number of features per atom (validates the parameters first)."""
        return self.get_number_of_features()

    def get_number_of_features(self) -> int:
        """Return the number of features per atom (DScribe's name)."""
        raise NotImplementedError

    def compute(self, atoms: Atoms, strain: bool = False) -> DescriptorResult:
        """Compute features and their analytic Jacobian for one structure.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; it is not modified.
        strain : bool, default=False
            Also return the derivatives with respect to a homogeneous strain
            (``strain_gradients``, for stress).

        Returns
        -------
        DescriptorResult
            Features ``(n_atoms, n_features)``, ``pairs`` and ``gradients``.

        Raises
        ------
        TypeError
            If ``atoms`` is not an :class:`ase.Atoms`.
        ValueError
            For an empty structure, non-finite positions, elements not in
            ``species``, a zero-volume cell under periodic boundaries or
            invalid descriptor parameters.
        """
        raise NotImplementedError

    def create(self, atoms: Atoms) -> np.ndarray:
        """Return only the features of one structure, DScribe style.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure.

        Returns
        -------
        ndarray of shape (n_atoms, n_features)
            The features of every atom.
        """
        return self.compute(atoms).features

    def compute_many(self, frames: Sequence[Atoms], n_jobs: int | None = 1,
                     verbose: int | bool = 0) -> list[DescriptorResult]:
        """Compute :meth:`compute` for a list of structures.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            Structures, in order.
        n_jobs : int or None, default=1
            As joblib's (``None`` is 1, ``-1`` all cores). Results do not
            depend on it. Switch joblib's backend (e.g. to Dask) with
            :func:`joblib.parallel_config` to scale past one machine.
        verbose : int or bool, default=0
            0 is silent; 1 or more shows a tqdm progress bar.

        Returns
        -------
        list of DescriptorResult
            One per frame, in the input order.
        """
        verbose = check_verbose(verbose, owner=type(self).__name__)
        if isinstance(frames, (str, bytes)) or not hasattr(frames, "__len__"):
            raise TypeError(
                f"{type(self).__name__}.compute_many: frames must be a sequence of "
                f"ase.Atoms; got {type(frames).__name__}"
            )
        frames = list(frames)
        self._check_params()  # fail once, before dispatching work
        logger.info("%s: computing %d structures (n_jobs=%s)",
                    type(self).__name__, len(frames), n_jobs)
        return map_list(self.compute, frames, n_jobs=n_jobs, verbose=verbose,
                        desc=type(self).__name__, unit="frame")

    def compute_all(self, frames: Sequence[Atoms], imap,
                    strain: Sequence[bool] | None = None) -> list[DescriptorResult]:
        """Compute every frame through ``imap``, the estimator's ordered parallel map.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            The structures, in order.
        imap : callable
            ``imap(fn, items, desc)`` yielding ``fn(item)`` in order (with the caller's
            jobs and progress bar).
        strain : sequence of bool, optional
            Per frame, also the strain gradients (``compute(atoms, strain=True)``).

        Returns
        -------
        list of DescriptorResult
            One per frame, in order. A descriptor that computes several structures
            at once more cheaply (featomic's) maps over batches instead of frames.
        """
        if strain is not None and any(strain):
            frames = list(frames)
            return list(imap(lambda k: self.compute(frames[k], strain=bool(strain[k])),
                             range(len(frames)), "descriptors"))
        return list(imap(self.compute, frames, "descriptors"))

    # -- to implement -----------------------------------------------------------------
    def _check_params(self):
        """Validate the constructor arguments; raise ``ValueError``/``TypeError``."""
        raise NotImplementedError
