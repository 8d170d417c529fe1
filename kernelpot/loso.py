"""Leave-one-structure-out (LOSO) predictions of the training data, in closed form.

For a Gaussian model with fixed hyperparameters, leaving out the observations
``B`` of one training structure (its energy and all its force components) changes
the posterior by a rank-``|B|`` downdate, so the LOSO predictions of every training
structure cost about one more factorisation, not ``n_structures`` refits. With
``K_y`` the covariance of the training observations (prior plus noise) and
``α = K_y⁻¹ y`` (Rasmussen & Williams, *Gaussian Processes for Machine Learning*,
2006, §5.4.2, for one observation; the block form is the same algebra):

* the LOSO residual of ``B`` is ``y_B - μ_{-B} = [(K_y⁻¹)_BB]⁻¹ α_B``;
* the LOSO predictive covariance of ``y_B`` (noise included) is ``[(K_y⁻¹)_BB]⁻¹``.

:func:`exact_loso` takes the blocks of ``K_y⁻¹`` from the exact model's Cholesky
factor. :func:`sparse_loso` applies the same identity to the sparse (DTC) model,
whose training marginal is a Bayesian linear model on the whitened design
``Φ = σ K_w`` with ``K_y = Φ Φᵀ + Λ``: by Woodbury, with ``A = I + Φᵀ Λ⁻¹ Φ``
(``M × M``) and ``G_B = Λ_B^(-1/2) Φ_B``, ``H_B = G_B A⁻¹ G_Bᵀ``,

* ``y_B - μ_{-B} = Λ_B^(1/2) (I - H_B)⁻¹ Λ_B^(-1/2) (y_B - μ_B)``;
* ``cov = Λ_B^(1/2) (I - H_B)⁻¹ Λ_B^(1/2)``,

``μ_B`` the full model's prediction: ``O(n M²)`` in all, in blocks of structures.
The inducing environments stay fixed in the mean and the posterior term: a
left-out structure's own environments remain inducing points there (with
``n_sparse=None`` every training environment is one), and the hyperparameters stay
at the values fitted with ``B``. The projection term (``k** - q**``) is the one place
where that would show most: an environment that is itself an inducing point has none,
where a new environment has what the inducing set cannot span. So the projection term
of ``B``'s observations is computed without the inducing environments chosen from
``B`` (:func:`own_span`, when the caller knows where each inducing environment came
from): ``q_{-S} = q - |Q_Sᵀ w|²`` with ``w = L_mm⁻¹ k`` the whitened row and ``Q_S`` an
orthonormal basis of ``L_mm⁻¹ E_S``, the columns ``S`` of ``B``'s own inducing
environments; this is ``k_S`` removed from ``k_mm`` exactly (a Schur complement), at
``O(M² |S|)`` per structure, ``O(M³)`` in all. Measured on ethanol (sparse, every
environment inducing): the training structures' projection terms then have the
distribution of the test structures' (mean 0.054 against 0.054 eV²/Å² at n = 100;
0.051 before).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

__all__ = ["LosoTerms", "consecutive_groups", "element_factors", "exact_loso", "own_columns",
           "own_span", "own_spans", "sparse_loso", "timed"]

logger = logging.getLogger(__name__)

#: Rows of the design handled together by :func:`sparse_loso`.
_BLOCK_ROWS = 4096


class LosoTerms(NamedTuple):
    """LOSO errors and variance terms of every training observation.

    What :class:`kernelpot.calibration.StdCalibration` fits its map on, as it does on
    validation errors.

    Attributes
    ----------
    is_energy : ndarray of bool of shape (n_obs,)
        Energy observations (the rest are force components).
    structure : ndarray of int of shape (n_obs,)
        Training structure of each observation.
    errors : ndarray of shape (n_obs,)
        LOSO prediction minus label.
    posterior : ndarray of shape (n_obs,)
        Epistemic (posterior) variance of the LOSO prediction, without noise.
    projection : ndarray of shape (n_obs,)
        The projection (``k** - q**``) term (zero for an exact model).
    noise : ndarray of shape (n_obs,)
        Learned noise variance (``σ_E² N`` or ``σ_F²``).
    shift_basis : ndarray of shape (n_basis, n_structures) or None
        What turns a new prediction's covariance row into the change of its mean when
        each structure is left out (:func:`exact_loso`, :func:`sparse_loso`): the
        jackknife+ intervals need it.
    is_stress : ndarray of bool of shape (n_obs,) or None
        Stress observations (left out with their structure; calibrated as the
        quantity "stress"); ``None``: none.
    member : ndarray of int of shape (n_obs,) or None
        Training structure of each observation where ``structure`` holds leave-out
        blocks of several (:mod:`kernelpot.loso_blocks`); ``None``: ``structure`` is it.
    """

    is_energy: np.ndarray
    structure: np.ndarray
    errors: np.ndarray
    posterior: np.ndarray
    projection: np.ndarray
    noise: np.ndarray
    shift_basis: np.ndarray | None = None
    is_stress: np.ndarray | None = None
    member: np.ndarray | None = None

    @classmethod
    def from_loso(cls, residual: np.ndarray, variance: np.ndarray, noise: np.ndarray,
                  projection: np.ndarray, is_energy: np.ndarray, structure: np.ndarray,
                  shift_basis: np.ndarray | None = None,
                  is_stress: np.ndarray | None = None,
                  member: np.ndarray | None = None) -> LosoTerms:
        """Build the terms from :func:`exact_loso` or :func:`sparse_loso` output.

        Parameters
        ----------
        residual, variance : ndarray of shape (n_obs,)
            ``y - μ_{-B}`` and its predictive variance, noise included.
        noise : ndarray of shape (n_obs,)
            Noise variance of each observation.
        projection : ndarray of shape (n_obs,)
            Projection term of each observation.
        is_energy : ndarray of bool of shape (n_obs,)
        structure : ndarray of int of shape (n_obs,)
        shift_basis : ndarray or None, default=None
        is_stress : ndarray of bool or None, default=None
        member : ndarray of int or None, default=None
            See the class attributes.

        Returns
        -------
        LosoTerms
            With the epistemic part ``variance - noise``, clipped at zero.
        """
        is_stress = None if is_stress is None or not np.any(is_stress) \
            else np.asarray(is_stress, dtype=bool)
        return cls(np.asarray(is_energy, dtype=bool), np.asarray(structure), -residual,
                   np.maximum(variance - noise, 0.0), projection, noise, shift_basis,
                   is_stress, None if member is None else np.asarray(member))

    @property
    def is_force(self) -> np.ndarray:
        """Return the force-component observations, bool of shape (n_obs,)."""
        forces = ~self.is_energy
        if self.is_stress is not None:
            forces = forces & ~self.is_stress
        return forces

    def _masks(self) -> tuple[tuple[str, np.ndarray], ...]:
        """Return the rows of each calibrated quantity: energies, forces, stresses."""
        stress = self.is_stress if self.is_stress is not None \
            else np.zeros_like(self.is_energy)
        return ("energy", self.is_energy), ("forces", self.is_force), ("stress", stress)

    @property
    def n_structures(self) -> int:
        """Return the number of units left out: training structures, or their blocks."""
        return int(np.unique(self.structure).size)

    def calibration_structures(self) -> dict[str, np.ndarray]:
        """Return the training structure of every value of :meth:`calibration_terms`.

        Returns
        -------
        dict
            Keys "energy", "forces" and "stress" (those with observations).
        """
        return {quantity: self.structure[mask] for quantity, mask in self._masks()
                if mask.any()}

    def force_atoms(self, numbers: list[np.ndarray] | None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the atomic number and the training structure of every force value.

        Parameters
        ----------
        numbers : list of ndarray of int or None
            The atomic numbers of each training structure's atoms, in training order.

        Returns
        -------
        (ndarray, ndarray) or None
            In the order of :meth:`calibration_terms`'s force values (each structure's
            atoms in order, three components each); ``None`` if ``numbers`` is None or
            does not match the force values (then no element has a factor of its own).
        """
        forces = self.is_force
        member = (self.structure if self.member is None else self.member)[forces]
        if numbers is None or not member.size:
            return None
        if np.any(np.diff(member) < 0) or member.max() >= len(numbers):
            logger.info("LOSO force values not in structure order: no element factors")
            return None
        present, counts = np.unique(member, return_counts=True)
        if any(3 * len(numbers[k]) != count
               for k, count in zip(present, counts, strict=True)):
            logger.info("LOSO force values do not match the training structures' atoms: no "
                        "element factors")
            return None
        return (np.concatenate([np.repeat(np.asarray(numbers[k]), 3) for k in present]),
                member)

    def calibration_terms(self) -> dict[str, tuple]:
        """Return ``(errors, posterior, projection, noise)`` per quantity that has values.

        Returns
        -------
        dict
            Keys "energy", "forces" and "stress" (those with observations).
        """
        out = {}
        for quantity, mask in self._masks():
            if mask.any():
                out[quantity] = (self.errors[mask], self.posterior[mask],
                                 self.projection[mask], self.noise[mask])
        return out


def timed(owner: str, compute: Callable[[], LosoTerms]) -> LosoTerms:
    """Run ``compute()`` and log what the leave-one-structure-out step cost.

    Parameters
    ----------
    owner : str
        Names the caller in the log.
    compute : callable
        Returns the :class:`LosoTerms` (of the sparse or the exact model).

    Returns
    -------
    LosoTerms
        What ``compute`` returned.
    """
    tic = time.perf_counter()
    terms = compute()
    logger.info("%s: leave-one-structure-out predictions of %d %s (closed form) in %.2f s",
                owner, terms.n_structures,
                "structures" if terms.member is None else "blocks of consecutive structures",
                time.perf_counter() - tic)
    return terms


def own_columns(origins: list[np.ndarray] | None, columns: list[np.ndarray],
                n_structures: int) -> list[np.ndarray] | None:
    """Return, per training structure, the columns of the inducing environments chosen from it.

    Parameters
    ----------
    origins : list of ndarray of int or None
        Per element, the training structure each inducing environment was chosen from
        (``-1``: not known, e.g. a model saved before origins were kept); ``None``:
        none known.
    columns : list of ndarray of int
        Per element, the design column of each inducing environment.
    n_structures : int

    Returns
    -------
    list of ndarray of int or None
        ``None`` when no inducing environment has a known origin.
    """
    if origins is None:
        return None
    origin = np.concatenate([np.asarray(o, dtype=np.int64) for o in origins])
    column = np.concatenate([np.asarray(c, dtype=np.int64) for c in columns])
    if origin.shape != column.shape:
        raise ValueError(f"own_columns: {origin.size} origins for {column.size} inducing "
                         "columns")
    known = (origin >= 0) & (origin < n_structures)
    if not np.any(known):
        return None
    order = np.argsort(origin[known], kind="stable")
    counts = np.bincount(origin[known], minlength=n_structures)
    return np.split(column[known][order], np.cumsum(counts)[:-1])


def own_span(whitened: np.ndarray, L_mm: np.ndarray, columns: np.ndarray,
             factors: list[tuple] | None = None) -> np.ndarray:
    """Return the part of each row's spanned prior variance that ``columns`` alone add.

    ``|L_mm⁻¹ k|² - k_{-S}ᵀ k_{mm,-S}⁻¹ k_{-S}`` for each row: the Schur-complement
    identity gives it as ``|Q_Sᵀ w|²``, ``w = L_mm⁻¹ k`` the whitened row and ``Q_S`` an
    orthonormal basis of ``L_mm⁻¹ E_S``. Subtracted from the squared whitened norm it
    gives the spanned variance with the inducing environments ``S`` removed.

    Parameters
    ----------
    whitened : ndarray of shape (n_rows, M)
        Whitened design rows ``w = L_mm⁻¹ k``.
    L_mm : ndarray of shape (M, M)
        Lower factor of ``k_mm``.
    columns : ndarray of int
        The removed inducing columns ``S``.
    factors : list of tuple, optional
        :func:`element_factors` of ``L_mm``: one solve per element instead of one over
        every column (see :func:`own_spans`).

    Returns
    -------
    ndarray of shape (n_rows,)
        Between 0 and the row's squared norm.

    Raises
    ------
    ValueError
        With ``factors``, if a column in ``columns`` is no element's.
    """
    columns = np.asarray(columns, dtype=np.int64)
    if not len(columns):
        return np.zeros(len(whitened))
    if factors is not None:
        return _own_span_by_element(whitened, factors, columns)
    M = len(L_mm)
    first = int(columns.min())  # L_mm⁻¹ E_S is zero above the first removed column
    unit = np.zeros((M - first, len(columns)))
    unit[columns - first, np.arange(len(columns))] = 1.0
    X = sla.solve_triangular(L_mm[first:, first:], unit, lower=True, check_finite=False)
    Q, _ = np.linalg.qr(X)
    along = whitened[:, first:] @ Q
    return np.einsum("nk,nk->n", along, along)


def own_spans(Kw: np.ndarray, L_mm: np.ndarray, structure: np.ndarray,
              own: list[np.ndarray],
              species_columns: list[np.ndarray] | None = None) -> np.ndarray:
    """Return :func:`own_span` of every row of a whitened design, with its structure's columns.

    Parameters
    ----------
    Kw : ndarray of shape (n_obs, M)
        Whitened design rows.
    L_mm : ndarray of shape (M, M)
    structure : ndarray of int of shape (n_obs,)
        Training structure of each row.
    own : list of ndarray of int
        Per structure, the columns of the inducing environments chosen from it
        (:func:`own_columns`).
    species_columns : list of ndarray of int, optional
        Each element's inducing columns. ``k_mm`` has no kernel between elements, so
        ``L_mm`` restricted to one element's columns (in ascending order) is that
        element's own factor and ``L_mm⁻¹ E_S`` splits into one independent solve per
        element: ``Σ_s m_s³`` work over all structures instead of ``M³`` (a seventh of
        it for aspirin's three elements). Without it, one solve over every column.

    Returns
    -------
    ndarray of shape (n_obs,)
    """
    structure = np.asarray(structure)
    spans = np.zeros(len(structure))
    factors = None if species_columns is None else element_factors(L_mm, species_columns)
    for rows in _blocks(structure):
        b = int(structure[rows[0]])
        if b < len(own) and len(own[b]):
            spans[rows] = own_span(Kw[rows], L_mm, own[b], factors)
    return spans


def element_factors(L_mm: np.ndarray, species_columns: list[np.ndarray]) -> list[tuple]:
    """Return ``(columns, L_mm[columns, columns])`` per element, columns ascending.

    With no kernel between elements, each is that element's own Cholesky factor of
    ``k_mm`` (for :func:`own_span`).

    Parameters
    ----------
    L_mm : ndarray of shape (M, M)
    species_columns : list of ndarray of int
        Each element's inducing columns.

    Returns
    -------
    list of tuple
        ``(columns, factor)`` for every element with a column.
    """
    blocks = []
    for columns in species_columns:
        columns = np.sort(np.asarray(columns, dtype=np.int64))
        if len(columns):
            blocks.append((columns, np.asfortranarray(L_mm[np.ix_(columns, columns)])))
    return blocks


def _own_span_by_element(whitened: np.ndarray, factors: list[tuple],
                         columns: np.ndarray) -> np.ndarray:
    """:func:`own_span` with one solve per element's factor (see :func:`own_spans`)."""
    total = np.zeros(len(whitened))
    found = 0
    for block_columns, L in factors:
        local = np.flatnonzero(np.isin(block_columns, columns))
        if not local.size:
            continue
        found += local.size
        first = int(local[0])
        unit = np.zeros((len(block_columns) - first, local.size))
        unit[local - first, np.arange(local.size)] = 1.0
        X = sla.solve_triangular(L[first:, first:], unit, lower=True, check_finite=False)
        Q, _ = np.linalg.qr(X)
        along = whitened[:, block_columns[first:]] @ Q
        total += np.einsum("nk,nk->n", along, along)
    if found != len(np.unique(columns)):
        raise ValueError("own_span: a structure's own columns are not all inducing columns "
                         "of an element")
    return total


def _blocks(structure: np.ndarray) -> list[np.ndarray]:
    """Return the row indices of each structure (rows of a structure need not be adjacent)."""
    order = np.argsort(structure, kind="stable")
    bounds = np.flatnonzero(np.diff(structure[order])) + 1
    return np.split(order, bounds)


def _solve_block(C: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``C⁻¹ rhs`` and ``diag(C⁻¹)`` for a symmetric positive definite block."""
    try:
        factor = sla.cho_factor(C, lower=True, check_finite=False)
        return (sla.cho_solve(factor, rhs, check_finite=False),
                np.diag(sla.cho_solve(factor, np.eye(len(C)), check_finite=False)))
    except np.linalg.LinAlgError:  # one structure alone determines a direction
        inverse = np.linalg.pinv(C, hermitian=True)
        return inverse @ rhs, np.diag(inverse).copy()


def exact_loso(L: np.ndarray, weights: np.ndarray, structure: np.ndarray,
               shifts: bool = False) -> tuple[np.ndarray, ...]:
    """Return the LOSO residuals and predictive variances of an exact GP's observations.

    Parameters
    ----------
    L : ndarray of shape (n_obs, n_obs)
        Lower Cholesky factor of ``K_y``.
    weights : ndarray of shape (n_obs,)
        ``K_y⁻¹ y``.
    structure : ndarray of int of shape (n_obs,)
        Training structure of each observation, numbered from 0.
    shifts : bool, default=False
        Also return the shift basis ``U``, whose column ``B`` is ``K_y⁻¹[:, B] r_B``:
        a new prediction with covariance row ``k`` to the training observations has
        mean ``μ - k @ U[:, B]`` without structure ``B``.

    Returns
    -------
    residual : ndarray of shape (n_obs,)
        ``y - μ_{-B}``, each observation predicted without its structure.
    variance : ndarray of shape (n_obs,)
        Predictive variance of that prediction, noise included.
    shift_basis : ndarray of shape (n_obs, n_structures)
        Only with ``shifts=True``.

    Notes
    -----
    Costs one inversion of ``K_y`` from its factor (LAPACK ``potri``, about a third
    of the flops of the factorisation itself) and one small factorisation per
    structure.
    """
    inverse, info = sla.lapack.dpotri(L, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"exact_loso: potri failed (info={info})")
    residual = np.empty_like(weights)
    variance = np.empty_like(weights)
    blocks = _blocks(np.asarray(structure))
    for rows in blocks:
        block = np.tril(inverse[np.ix_(rows, rows)])
        C = block + np.tril(block, -1).T  # potri fills the lower triangle
        residual[rows], variance[rows] = _solve_block(C, weights[rows])
    del inverse
    if not shifts:
        return residual, variance
    R = np.zeros((len(weights), int(np.max(structure)) + 1))  # r_B in the rows of B
    for rows in blocks:
        R[rows, structure[rows[0]]] = residual[rows]
    return residual, variance, sla.cho_solve((L, True), R, check_finite=False)


def sparse_loso(Kw: np.ndarray | None, y: np.ndarray, noise_std: np.ndarray, sigma: float,
                structure: np.ndarray, shifts: bool = False,
                factor: np.ndarray | None = None, rhs: np.ndarray | None = None,
                group_terms: Callable[[np.ndarray], Iterable[tuple]] | None = None
                ) -> tuple[np.ndarray, ...]:
    """Return the LOSO residuals and predictive variances of a sparse (DTC) model's observations.

    Parameters
    ----------
    Kw : ndarray of shape (n_obs, M) or None
        The whitened design ``K L_mm⁻ᵀ`` (not modified); None with ``factor``, ``rhs``
        and ``group_terms`` (a design never held whole).
    y : ndarray of shape (n_obs,)
        Labels (energies minus reference energies, then forces).
    noise_std : ndarray of shape (n_obs,)
        Noise std of each observation (``σ_E √N`` or ``σ_F``).
    sigma : float
        Signal std ``σ``.
    structure : ndarray of int of shape (n_obs,)
        Training structure of each observation, numbered from 0.
    shifts : bool, default=False
        Also return ``A⁻¹ G`` with ``G[:, B] = Φ_Bᵀ Λ_B⁻¹ r_B``: a new prediction with
        whitened feature row ``φ = σ L_mm⁻¹ k`` has mean ``μ - φ @ (A⁻¹ G)[:, B]``
        without structure ``B``.
    factor : ndarray of shape (M, M), optional
        An upper-triangular ``R`` with ``RᵀR = A = I + Σ_rows σ² Kwᵀ Λ⁻¹ Kw`` at these
        ``noise_std`` and ``sigma`` (the incremental state's; any row signs), which
        saves assembling and factoring ``A`` (``O(n M²)``).
    rhs : ndarray of shape (M,), optional
        ``σ Kwᵀ Λ⁻¹ y``, with ``factor``: saves a pass over the rows.
    group_terms : callable, optional
        ``group_terms(z)`` with ``z = A⁻¹ rhs``: an iterable of ``(indices,
        loso_group(...))`` over groups of whole structures, every observation once, in
        place of the groups of ``Kw`` (a design never held whole: its rows are recomputed,
        possibly on other processes, and :func:`loso_group` applied to them).

    Returns
    -------
    residual : ndarray of shape (n_obs,)
        ``y - μ_{-B}`` with the inducing environments and hyperparameters fixed.
    variance : ndarray of shape (n_obs,)
        Predictive variance of that prediction under the DTC model, noise included
        (without the projection term, which the caller adds).
    shift_basis : ndarray of shape (M, n_structures)
        ``A⁻¹ G``, only with ``shifts=True``.
    """
    n_obs = len(y)
    scale = sigma / noise_std  # rows of G = Λ^(-1/2) Φ are σ Kw / noise_std
    if (Kw is None and (factor is None or rhs is None or group_terms is None)) \
            or (rhs is not None and factor is None):
        raise ValueError("sparse_loso: give rhs with factor, and both with group_terms "
                         "when Kw is None")
    M = Kw.shape[1] if Kw is not None else len(factor)
    if rhs is None or factor is None:
        A = np.eye(M) if factor is None else None
        rhs = np.zeros(M)
        for start in range(0, n_obs, _BLOCK_ROWS):
            G = Kw[start:start + _BLOCK_ROWS] * scale[start:start + _BLOCK_ROWS, None]
            if A is not None:
                A += G.T @ G
            rhs += G.T @ (y[start:start + _BLOCK_ROWS] / noise_std[start:start + _BLOCK_ROWS])
    if factor is None:
        R = sla.cholesky(A, lower=False, check_finite=False)  # A = Rᵀ R
    else:
        if factor.shape != (M, M):
            raise ValueError(f"sparse_loso: factor has shape {factor.shape}; the design "
                             f"has {M} columns")
        R = factor
    z = sla.cho_solve((R, False), rhs, check_finite=False)
    residual = np.empty(n_obs)
    variance = np.empty(n_obs)
    G_shift = np.zeros((M, int(np.max(structure)) + 1)) if shifts else None
    if group_terms is None:
        terms = ((rows, loso_group(Kw[rows], y[rows], noise_std[rows], structure[rows], sigma,
                                   z, R, shifts))
                 for rows in _group(_blocks(np.asarray(structure))))
    else:
        terms = group_terms(z)
    seen, n_seen = set(), 0
    for rows, (res, var, present, columns) in terms:
        # whole structures only: a structure split over two groups would be left out in
        # parts (and its shift column overwritten)
        present_set = set(present.tolist())
        if present_set & seen:
            raise ValueError(f"sparse_loso: structures {sorted(present_set & seen)[:5]} arrive "
                             "in more than one group of rows")
        seen |= present_set
        n_seen += len(rows)
        residual[rows] = res
        variance[rows] = var
        if shifts:
            G_shift[:, present] = columns
    if n_seen != n_obs:
        raise ValueError(f"sparse_loso: the groups hold {n_seen} rows of {n_obs}")
    if not shifts:
        return residual, variance
    return residual, variance, sla.cho_solve((R, False), G_shift, check_finite=False)


def loso_group(Kw_rows: np.ndarray, y: np.ndarray, noise_std: np.ndarray,
               structure: np.ndarray, sigma: float, z: np.ndarray, R: np.ndarray,
               shifts: bool = False) -> tuple:
    """Return the LOSO terms of a group of whole structures' rows (:func:`sparse_loso`).

    Parameters
    ----------
    Kw_rows : ndarray of shape (b, M)
        The whitened design rows of the group.
    y, noise_std, structure : ndarray of shape (b,)
        Their labels, noise std and training structure.
    sigma : float
    z : ndarray of shape (M,)
        ``A⁻¹ σ Kwᵀ Λ⁻¹ y`` of the whole training set.
    R : ndarray of shape (M, M)
        Upper triangular, ``RᵀR = A``.
    shifts : bool, default=False
        Also each structure's column of ``G``.

    Returns
    -------
    residual, variance : ndarray of shape (b,)
    structures : ndarray of int
        The structures of the group, sorted.
    columns : ndarray of shape (M, n_structures) or None
        ``Φ_Bᵀ Λ_B⁻¹ r_B`` of each of them (with ``shifts``).
    """
    structure = np.asarray(structure)
    G = Kw_rows * (sigma / noise_std)[:, None]  # Λ^(-1/2) Φ
    fitted = G @ z  # Λ^(-1/2) μ_B
    V = sla.solve_triangular(R, G.T, lower=False, trans="T", check_finite=False)
    residual = np.empty(len(y))
    variance = np.empty(len(y))
    blocks = _blocks(structure)
    structures = np.array([structure[local[0]] for local in blocks], dtype=int)
    columns = np.empty((len(z), len(blocks))) if shifts else None
    for j, local in enumerate(blocks):
        H = V[:, local].T @ V[:, local]
        whitened, diag = _solve_block(np.eye(len(local)) - H,
                                      y[local] / noise_std[local] - fitted[local])
        residual[local] = noise_std[local] * whitened
        variance[local] = noise_std[local] ** 2 * diag
        if shifts:
            columns[:, j] = G[local].T @ whitened
    return residual, variance, structures, columns


def consecutive_groups(sizes, limit: int) -> list[np.ndarray]:
    """Split ``range(len(sizes))`` into consecutive groups whose sizes sum to about ``limit``.

    A group closes once its sum reaches ``limit``; the last may be smaller.
    """
    groups, current, size = [], [], 0
    for k, n in enumerate(sizes):
        current.append(k)
        size += int(n)
        if size >= limit:
            groups.append(np.array(current))
            current, size = [], 0
    if current:
        groups.append(np.array(current))
    return groups


def _group(blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Join consecutive structures' rows into groups of about ``_BLOCK_ROWS`` rows."""
    return [np.concatenate([blocks[k] for k in group])
            for group in consecutive_groups([len(rows) for rows in blocks], _BLOCK_ROWS)]
