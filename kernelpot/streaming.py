"""The sparse fit without the whole design matrix: design rows folded in block by block.

The in-memory fit holds the whitened design ``K_w`` (``n_obs × M``) for the likelihood
statistics, the posterior's QR solve and the leave-one-structure-out (LOSO) terms. This
module computes the same from blocks of rows, holding one block plus ``O(M²)``:

* the force rows, by far the most, are folded into the triangular factor of the stacked
  system ``[K_w,F | y_F]`` (TSQR: a QR of the running ``(M + 1) × (M + 1)`` factor
  stacked on each block): ``R_F`` with ``R_Fᵀ R_F = K_w,Fᵀ K_w,F``, ``z_F = Q_Fᵀ y_F``
  and the residual ``ρ_F`` with ``|y_F|² = |z_F|² + ρ_F²``;
* the energy and stress rows (one and six per structure) are kept;
* the likelihood statistics follow from ``R_F`` (:func:`kernelpot.gp.statistics_from_force_gram`),
  and the posterior's QR solve runs on ``[R_F; K_w,E; K_w,S]`` with ``[z_F; y_E; y_S]``,
  which has the same normal equations and least-squares minimiser as the full design;
* the LOSO terms take a second pass that recomputes each block's rows.

The kernel's own hyperparameters (on all structures), a two-body term's prior std, the
noise scales per configuration type and an incremental model's training state need the
whole design: the estimator then builds it in memory, with a warning.

Memory: the factor (``(M + 1)²``), a few copies of one block of rows, and what grows
with the number of structures: the energy and stress rows (``7 × structures × M`` with
stresses, and their copy in the likelihood statistics), which ``design_memory_limit``
does not bound yet. (The likelihood's Woodbury matrix over those rows, ``(n_E +
n_S)²``, gives way to ``M × M`` matrices once they outnumber ``M``.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.linalg as sla

from kernelpot import gp
from kernelpot.loso import consecutive_groups

if TYPE_CHECKING:
    from collections.abc import Iterator

    from kernelpot.design import SparseDesign
    from kernelpot.kernels import Kernel

logger = logging.getLogger(__name__)

__all__ = ["StackedQR", "StreamedDesign", "stream_design", "streamed_posterior",
           "streamed_row_groups"]


class StackedQR:
    """The triangular factor of a tall matrix and its right-hand side, folded in by blocks.

    Parameters
    ----------
    n_columns : int
        ``M``.

    Notes
    -----
    Holds the upper-triangular ``(M + 1) × (M + 1)`` factor of ``[A | b]`` for the rows
    added so far: its leading block is ``R`` (``RᵀR = AᵀA``), its last column ``Qᵀb``
    over the first ``M`` rows and ``±ρ`` below, ``ρ² = |b|² - |Qᵀb|²``. Each block
    updates it in place by LAPACK's triangular-pentagonal QR (``tpqrt``): ``2 b M²``
    flops for ``b`` rows, and no copy of the factor. The signs of ``R``'s rows are
    LAPACK's.
    """

    def __init__(self, n_columns: int):
        self.n_columns = int(n_columns)
        self._factor = np.zeros((self.n_columns + 1, self.n_columns + 1), order="F")
        self.n_rows = 0

    def add(self, rows: np.ndarray, rhs: np.ndarray) -> None:
        """Fold in rows ``(b, M)`` and their right-hand side ``(b,)``."""
        if len(rows) == 0:
            return
        block = np.empty((len(rows), self.n_columns + 1), order="F")
        block[:, :-1] = rows
        block[:, -1] = rhs
        n = self.n_columns + 1
        self._factor, _, _, info = sla.lapack.dtpqrt(0, min(n, 64), self._factor, block,
                                                     overwrite_a=1, overwrite_b=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"StackedQR: tpqrt failed (info={info})")
        self.n_rows += len(rows)

    def parts(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Return ``R`` (M, M), ``Qᵀb`` (M,) and ``ρ²``."""
        M = self.n_columns
        full = np.triu(self._factor)
        return full[:M, :M], full[:M, M].copy(), float(full[M, M] ** 2)


class StreamedDesign(NamedTuple):
    """What a streamed pass over the design keeps: the force rows' factor, the small rows.

    Attributes
    ----------
    R_F : ndarray of shape (M, M)
        Upper triangular, ``R_Fᵀ R_F = K_w,Fᵀ K_w,F``.
    z_F : ndarray of shape (M,)
        ``Q_Fᵀ y_F``.
    residual_F : float
        ``ρ_F² = |y_F|² - |z_F|²``.
    Kw_E, Kw_S : ndarray of shape (n_E, M), (n_S, M)
        The whitened energy and stress rows.
    spanned : ndarray of shape (n_obs,)
        Each row's squared whitened norm without the two-body columns (the LOSO
        projection term).
    prior : ndarray of shape (n_obs,) or None
        Prior variance (over ``σ²``) of every observation, when asked for.
    L_mm : ndarray of shape (M, M)
    jitter, jitter_abs : float
    """

    R_F: np.ndarray
    z_F: np.ndarray
    residual_F: float
    Kw_E: np.ndarray
    Kw_S: np.ndarray
    spanned: np.ndarray
    prior: np.ndarray | None
    L_mm: np.ndarray
    jitter: float
    jitter_abs: float

    def statistics(self, design: SparseDesign) -> gp.WhitenedStatistics:
        """Return the likelihood's statistics (those of the whole design)."""
        return gp.statistics_from_force_gram(
            self.R_F.T @ self.R_F, self.R_F.T @ self.z_F,
            float(self.z_F @ self.z_F) + self.residual_F, design.n_force, self.Kw_E,
            design.n_atoms_energy, design.y_energy, Kw_S=self.Kw_S, y_S=design.y_stress)


def _structure_blocks(design: SparseDesign, block_rows: int) -> list[np.ndarray]:
    """Consecutive structures in groups of about ``block_rows`` observations."""
    n_rows = (design.has_energy.astype(int) + 3 * design.n_atoms * design.has_forces
              + 6 * design.has_stress)
    return consecutive_groups(n_rows, block_rows)


def _block_rows(design: SparseDesign, kernel: Kernel, structures: np.ndarray,
                L_mm: np.ndarray, prior: bool) -> Iterator:
    """Yield ``(k, whitened rows, prior)`` of each structure of a block, whitened together."""
    fn = (lambda k: design.rows_and_prior(k, kernel)) if prior \
        else (lambda k: (*design.rows(k, kernel), None))
    for k, rows, row_prior in design.imap(fn, structures, "design rows"):
        parts = [part for part in (rows.energy[None] if rows.energy is not None else None,
                                   rows.forces, rows.stress) if part is not None]
        stacked = np.concatenate(parts)
        whitened = sla.solve_triangular(L_mm, stacked.T, lower=True, check_finite=False).T
        yield k, whitened, row_prior


def _row_indices(design: SparseDesign, k: int) -> np.ndarray:
    """Global design rows of structure ``k``: its energy, force components, stresses."""
    parts = []
    if design.has_energy[k]:
        parts.append([design.energy_row[k]])
    if design.has_forces[k]:
        start = design.force_start[k]
        parts.append(np.arange(start, start + 3 * design.n_atoms[k]))
    if design.has_stress[k]:
        start = design.stress_start[k]
        parts.append(np.arange(start, start + 6))
    return np.concatenate(parts).astype(int)


def stream_design(design: SparseDesign, kernel: Kernel, block_rows: int,
                  prior: bool = False, owner: str = "SparseGPPotential") -> StreamedDesign:
    """One pass over the training structures in blocks: the factor and the small rows.

    Parameters
    ----------
    design : kernelpot.design.SparseDesign
    kernel : Kernel
    block_rows : int
        About this many observations per block (whole structures).
    prior : bool, default=False
        Also the prior variance of every observation (for the LOSO terms).
    owner : str, default="SparseGPPotential"
        Names the estimator in logs.

    Returns
    -------
    StreamedDesign
    """
    from kernelpot.design import inducing_factor

    M, n_E, n_obs = design.n_columns, design.n_energy, design.n_obs
    L_mm, jitter, jitter_abs = inducing_factor(design.inducing, kernel, design.pair,
                                               design.n_species)
    blocks = _structure_blocks(design, block_rows)
    logger.info("%s: streamed design, %d observations in %d blocks of about %d rows; holds "
                "%.0f MiB of rows and factors (the whole design: %.0f MiB)", owner, n_obs,
                len(blocks), block_rows,
                (block_rows + 2 * M + n_E + design.n_stress) * M * 8 / 2**20,
                n_obs * M * 8 / 2**20)
    qr = StackedQR(M)
    Kw_E = np.empty((n_E, M))
    Kw_S = np.empty((design.n_stress, M))
    spanned = np.empty(n_obs)
    prior_rows = np.empty(n_obs) if prior else None
    gp_columns = np.setdiff1d(np.arange(M), design.pair_columns)
    y = design.y
    for structures in blocks:
        force_rows, force_y = [], []
        for k, whitened, row_prior in _block_rows(design, kernel, structures, L_mm, prior):
            rows = _row_indices(design, k)
            spanned[rows] = np.einsum("nm,nm->n", whitened[:, gp_columns],
                                      whitened[:, gp_columns])
            if prior:
                prior_rows[rows] = row_prior
            is_energy, is_stress = rows < n_E, rows >= n_E + design.n_force
            Kw_E[rows[is_energy]] = whitened[is_energy]
            Kw_S[rows[is_stress] - n_E - design.n_force] = whitened[is_stress]
            is_force = ~is_energy & ~is_stress
            force_rows.append(whitened[is_force])
            force_y.append(y[rows[is_force]])
        if force_rows:
            qr.add(np.concatenate(force_rows), np.concatenate(force_y))
    R_F, z_F, residual_F = qr.parts()
    return StreamedDesign(R_F, z_F, residual_F, Kw_E, Kw_S, spanned, prior_rows, L_mm,
                          jitter, jitter_abs)


def streamed_posterior(streamed: StreamedDesign, design: SparseDesign, sigma: float,
                       noise: tuple[float, float, float]) -> gp.Posterior:
    """Solve the posterior from the streamed factor (:func:`kernelpot.gp.solve_posterior`).

    ``[R_F; K_w,E; K_w,S]`` with ``[z_F; y_E; y_S]`` has the normal equations and the
    least-squares minimiser of the whole design, so the weights and the factor
    ``R`` (up to the signs of its rows) are those of the in-memory solve.
    """
    energy_noise, force_noise, stress_noise = noise
    M = design.n_columns
    n_small = M + design.n_energy + design.n_stress
    system = np.empty((n_small + M, M))
    system[:M] = streamed.R_F
    system[M:M + design.n_energy] = streamed.Kw_E
    system[M + design.n_energy:n_small] = streamed.Kw_S
    noise_std = np.concatenate([np.full(M, force_noise),
                                energy_noise * np.sqrt(design.n_atoms_energy),
                                np.full(design.n_stress, stress_noise)])
    y = np.concatenate([streamed.z_F, design.y_energy, design.y_stress])
    return gp.solve_posterior(system, n_small, streamed.L_mm, noise_std, y, sigma)


def streamed_row_groups(design: SparseDesign, kernel: Kernel, L_mm: np.ndarray,
                        block_rows: int) -> Iterator:
    """Yield ``(row indices, whitened rows)`` of blocks of whole structures (a new pass)."""
    for structures in _structure_blocks(design, block_rows):
        indices, rows = [], []
        for k, whitened, _ in _block_rows(design, kernel, structures, L_mm, False):
            indices.append(_row_indices(design, k))
            rows.append(whitened)
        yield np.concatenate(indices), np.concatenate(rows)
