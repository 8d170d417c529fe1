"""Uncertainty-driven choice of structures to label next.

:func:`select_frames` ranks unlabelled structures by the model's predicted
uncertainty and picks them greedily: after each pick the uncertainty of the rest is
recomputed as if the picked structure had been labelled, so that near-duplicates of a
pick lose their score. A GP's posterior variance does not depend on the labels, so
this needs no reference calculation.

The uncertainty used is the prior variance of the local energies that the
environments the model already knows do not explain, summed over the structure's
atoms: ``Σ_i [k(x_i, x_i) - k_iᵀ K⁻¹ k_i]``, ``K`` the kernel matrix of the model's
training (exact model) or inducing (sparse model) environments of the element plus
those of the picks so far. It is the ``k** - q**`` term of the model's own energy
variance per atom, computed for many structures at once by a pivoted Cholesky
factorisation over environments, and it is what force observations of a new
structure mostly remove (they pin down the local energy around each environment).

"variance" scores each structure with the model's calibrated std map (the one its
``predict_forces(..., return_std=True)`` applies): each environment's residual enters as
``r^p``, ``p`` the exponent of the force map (``p = 1`` for raw stds). The map's other
factors scale every environment alike and leave the ranking unchanged, but for the
factor per element (:mod:`kernelpot.element_scales`), by whose square an element's
residuals are weighted. With ``p > 1``
(the model's errors grow faster than its raw std) a structure with a few very uncertain
atoms outranks one with many moderately uncertain ones, as its calibrated force
variance does. The posterior term of a sparse model's variance is not in the score.
"""

from __future__ import annotations

import logging
import numbers
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg as sla
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from kernelpot._labels import check_frames
from kernelpot._validation import check_verbose

if TYPE_CHECKING:
    from ase import Atoms

    from kernelpot.estimator import SparseGPPotential
    from kernelpot.kernels import Kernel

logger = logging.getLogger(__name__)

__all__ = ["select_frames", "STRATEGIES"]

STRATEGIES = ("variance", "reduction", "random")
#: Reference environments per element over which "reduction" sums the variance.
_REFERENCE_ENVIRONMENTS = 6000
#: Relative jitter of the conditioning kernel matrix.
_JITTER = 1e-8


def select_frames(model: SparseGPPotential, pool: list[Atoms], n: int,
                  strategy: str = "variance",
                  random_state: int | np.random.RandomState | None = None,
                  verbose: int = 0) -> np.ndarray:
    """Pick ``n`` structures of ``pool`` to label next.

    Parameters
    ----------
    model : SparseGPPotential
        A fitted model (sparse or exact); its descriptor, kernel and known
        environments define the uncertainty.
    pool : list of ase.Atoms
        Candidate structures (labels, if any, are ignored).
    n : int
        How many to pick, at most ``len(pool)``.
    strategy : {"variance", "reduction", "random"}, default="variance"
        "variance": greedy largest remaining local-energy variance of the structure
        itself, each environment's through the model's calibrated map (see the module
        notes). "reduction": greedy largest reduction of the
        remaining variance summed over the whole pool (up to 6000 random
        environments per element): it prefers uncertain structures that are
        representative of the pool over outliers. "random": uniformly at random,
        as a baseline.
    random_state : int, numpy.random.RandomState or None, default=None
        Seeds "random" (and breaks exact ties of "variance"); read with
        :func:`sklearn.utils.check_random_state`, which takes no ``Generator``.
    verbose : int, default=0
        1 shows progress bars.

    Returns
    -------
    ndarray of int of shape (n,)
        Indices into ``pool`` in the order picked: the first ``k`` are the choice
        for any ``k <= n``.

    Raises
    ------
    ValueError
        If ``n`` is not an int in ``[1, len(pool)]``, ``strategy`` is unknown, or a
        pool structure holds an element the model was not trained on.
    sklearn.exceptions.NotFittedError
        If ``model`` is not fitted.

    Examples
    --------
    >>> from kernelpot import SparseGPPotential, SOAP, load_ethanol, select_frames
    >>> frames = load_ethanol()
    >>> model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, 4, 3, 0.4)).fit(frames[:5])
    >>> picked = select_frames(model, frames[5:], 3)
    >>> len(picked)
    3
    """
    owner = "select_frames"
    check_is_fitted(model)
    pool = check_frames(pool, f"{owner}: pool")
    verbose = check_verbose(verbose, owner)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= len(pool):
        raise ValueError(f"{owner}: n must be an int between 1 and {len(pool)} (the pool "
                         f"size); got {n!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"{owner}: strategy must be one of {STRATEGIES}; got {strategy!r}")
    rng = check_random_state(random_state)
    if strategy == "random":
        return rng.permutation(len(pool))[:n].astype(np.int64)

    species = model.species_
    features, frame_of, index_of = [], [], []
    for k, atoms in enumerate(tqdm(pool, desc="pool descriptors", disable=verbose < 1)):
        unknown = np.setdiff1d(atoms.numbers, species)
        if unknown.size:
            raise ValueError(f"{owner}: pool structure {k} holds elements the model was not "
                             f"trained on (atomic numbers {unknown.tolist()})")
        features.append(model.descriptor_.create(atoms))
        frame_of.append(np.full(len(atoms), k))
        index_of.append(np.searchsorted(species, atoms.numbers))
    features = np.concatenate(features)
    frame_of = np.concatenate(frame_of)
    index_of = np.concatenate(index_of)
    kernel = model.kernel_
    block_type = _ReductionBlock if strategy == "reduction" else _SpeciesBlock
    blocks = [block_type(kernel, features[index_of == s], frame_of[index_of == s],
                         np.asarray(model.inducing_[s]), rng)
              for s in range(len(species))]
    # the exponent of the model's calibrated force-std map (1 when raw)
    exponent = model._calibration().factors("forces")[2] if strategy == "variance" else 1.0
    # and its factor per element (1 where none)
    scales = model.element_scales() if strategy == "variance" else {}
    weights = [scales.get(int(number), 1.0) ** 2 for number in species]
    picked = []
    available = np.ones(len(pool), dtype=bool)
    # a tiny random tie-break keeps the choice reproducible under random_state
    tie_break = 1e-12 * rng.random(len(pool))
    for _ in tqdm(range(n), desc="select", disable=verbose < 1):
        score = sum(weight * b.frame_scores(len(pool), exponent)
                    for weight, b in zip(weights, blocks, strict=True)) + tie_break
        score[~available] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        for b in blocks:
            b.condition_on_frame(best)
        logger.debug("%s: picked structure %d (score %.4g)", owner, best, score[best])
    logger.info("%s: picked %d of %d structures (strategy %r)", owner, n, len(pool), strategy)
    return np.array(picked, dtype=np.int64)


class _SpeciesBlock:
    """Residual variances of one element's pool environments, updated pick by pick."""

    def __init__(self, kernel: Kernel, X: np.ndarray, frame_of: np.ndarray, Z: np.ndarray,
                 rng: np.random.RandomState | None = None) -> None:
        self.kernel = kernel
        self.X = X
        self.frame_of = frame_of
        self.residual = kernel.diag(X) if len(X) else np.zeros(0)
        # rows of the Cholesky factor over picked environments, grown as needed
        self.C = np.zeros((0, len(X)))
        self.n_columns = 0
        self.V = None
        if len(X) and len(Z):
            K_zz = kernel(Z)
            scale = float(np.mean(np.diag(K_zz))) or 1.0
            L = sla.cholesky(K_zz + _JITTER * scale * np.eye(len(Z)), lower=True)
            self.V = sla.solve_triangular(L, kernel(Z, X), lower=True)  # (m, n_pool)
            self.residual = self.residual - np.einsum("ij,ij->j", self.V, self.V)
        self.residual = np.maximum(self.residual, 0.0)

    def frame_scores(self, n_frames: int, exponent: float = 1.0) -> np.ndarray:
        """Return ``Σ residual^exponent`` per structure, shape (n_frames,)."""
        weights = self.residual if exponent == 1.0 else self.residual**exponent
        return np.bincount(self.frame_of, weights=weights, minlength=n_frames)

    def condition_on_frame(self, frame: int) -> None:
        """Condition on the local energies of the frame's environments (pivoted Cholesky)."""
        for j in np.flatnonzero(self.frame_of == frame):
            pivot = self.residual[j]
            if pivot <= _JITTER:  # already spanned
                continue
            cov = self.kernel(self.X, self.X[j:j + 1])[:, 0]
            if self.V is not None:
                cov -= self.V.T @ self.V[:, j]
            t = self.n_columns
            if t:
                cov -= self.C[:t].T @ self.C[:t, j]
            if t == len(self.C):
                self.C = np.vstack([self.C, np.zeros((max(16, t), len(self.X)))])
            self.C[t] = cov / np.sqrt(pivot)
            self.n_columns = t + 1
            self.residual = np.maximum(self.residual - self.C[t] ** 2, 0.0)
            self._after_column(self.C[t])

    def _after_column(self, column):
        """Update subclass state with a new factor column over the pool environments."""


class _ReductionBlock(_SpeciesBlock):
    """Also keeps the residual covariance with reference environments of the pool.

    The score of an environment ``c`` is ``Σ_r R[c, r]² / (R[c, c] + τ)``: how much
    observing its local energy would reduce the variance summed over the reference
    environments ``r`` (``τ`` a tiny regulariser).
    """

    def __init__(self, kernel: Kernel, X: np.ndarray, frame_of: np.ndarray, Z: np.ndarray,
                 rng: np.random.RandomState | None = None) -> None:
        super().__init__(kernel, X, frame_of, Z, rng)
        rng = check_random_state(rng)
        n = len(X)
        self.reference = np.sort(rng.choice(n, size=min(n, _REFERENCE_ENVIRONMENTS),
                                            replace=False)) if n else np.zeros(0, dtype=int)
        self.R = kernel(X, X[self.reference]) if n else np.zeros((0, 0))
        if self.V is not None:
            self.R -= self.V.T @ self.V[:, self.reference]
        self.tau = _JITTER * (float(np.mean(kernel.diag(X))) if n else 1.0)

    def frame_scores(self, n_frames: int, exponent: float = 1.0) -> np.ndarray:
        """Return the variance reduction summed per structure, shape (n_frames,)."""
        gain = np.einsum("cr,cr->c", self.R, self.R) / (self.residual + self.tau)
        return np.bincount(self.frame_of, weights=gain, minlength=n_frames)

    def _after_column(self, column):
        self.R -= np.outer(column, column[self.reference])
