"""The sparse fit without the whole design matrix: design rows folded in block by block.

The in-memory fit holds the whitened design ``K_w`` (``n_obs × M``) for the likelihood
statistics, the posterior's QR solve and the leave-one-structure-out (LOSO) terms. This
module computes the same from blocks of rows, holding one block plus ``O(M²)``:

* the force rows, by far the most, are folded into the triangular factor of the stacked
  system ``[K_w,F | y_F]`` (TSQR: a QR of the running ``(M + 1) × (M + 1)`` factor
  stacked on each block): ``R_F`` with ``R_Fᵀ R_F = K_w,Fᵀ K_w,F``, ``z_F = Q_Fᵀ y_F``
  and the residual ``ρ_F`` with ``|y_F|² = |z_F|² + ρ_F²``;
* the energy and stress rows (one and six per structure), weighted to unit noise
  (energies over ``√N``), are kept as rows while there are at most ``M + 1`` of a kind
  and folded into a factor of their own beyond (:class:`KindRows`);
* the likelihood statistics follow from the factors
  (:func:`kernelpot.gp.statistics_from_force_gram`, :func:`kernelpot.gp.folded_statistics`),
  and the posterior's QR solve runs on ``[R_F; E; S]`` with ``[z_F; y_E'; y_S']``,
  which has the same normal equations and least-squares minimiser as the full design;
* the LOSO terms take a second pass that recomputes each block's rows.

Blocks are pure functions of ``(context, block)`` (:func:`factor_block`,
:func:`merge_factors`, :func:`loso_block`), run in this process, by joblib or on a Dask
cluster (:class:`kernelpot._block_runner.BlockRunner`).

The kernel's own hyperparameters (on all structures), a two-body term's prior std, the
noise scales per configuration type and an incremental model's training state need the
whole design: the estimator then builds it in memory, with a warning.

Memory: a few ``(M + 1)²`` factors, the rows of the blocks in flight (one block's force
rows written straight into the array the QR overwrites), and, growing with the
structures, 8 bytes per observation (labels, the LOSO terms) and the LOSO shift basis
(``M × structures``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.linalg as sla

from kernelpot import gp
from kernelpot._block_runner import BlockRunner
from kernelpot.loso import consecutive_groups, element_factors, loso_group, own_span

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from kernelpot.descriptors.base import Descriptor
    from kernelpot.design import SparseDesign
    from kernelpot.kernels import Kernel
    from kernelpot.two_body import TwoBody

logger = logging.getLogger(__name__)

__all__ = ["BlockContext", "BlockFactor", "StackedQR", "StreamedDesign", "factor_block",
           "loso_block", "merge_factors", "stream_design", "streamed_loso_groups",
           "streamed_posterior"]


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
        self.add_block(block)

    def add_block(self, block: np.ndarray) -> None:
        """Fold in ``[rows | rhs]`` given as one Fortran-ordered ``(b, M + 1)`` array.

        ``block`` is overwritten (no copy of it is made).
        """
        n = self.n_columns + 1
        if block.ndim != 2 or block.shape[1] != n or not block.flags.f_contiguous \
                or block.dtype != np.float64:
            raise ValueError(f"StackedQR: a block must be a Fortran-ordered float64 array "
                             f"with {n} columns")
        if len(block) == 0:
            return
        self._factor, _, _, info = sla.lapack.dtpqrt(0, min(n, 64), self._factor, block,
                                                     overwrite_a=1, overwrite_b=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"StackedQR: tpqrt failed (info={info})")
        self.n_rows += len(block)

    def add_triangle(self, triangle: np.ndarray) -> None:
        """Fold in another factor ``(M + 1, M + 1)`` (upper triangular) of ``[A | b]`` rows.

        The result is the factor of both sets of rows (up to rounding and row signs).
        """
        n = self.n_columns + 1
        if triangle.shape != (n, n):
            raise ValueError(f"StackedQR: a factor of shape {triangle.shape}; expected "
                             f"{(n, n)}")
        block = np.triu(triangle).astype(np.float64, order="F")  # a copy: the input is kept
        self._factor, _, _, info = sla.lapack.dtpqrt(n, min(n, 64), self._factor, block,
                                                     overwrite_a=1, overwrite_b=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"StackedQR: tpqrt failed (info={info})")

    @property
    def triangle(self) -> np.ndarray:
        """Return the ``(M + 1, M + 1)`` upper-triangular factor of ``[A | b]`` (a copy)."""
        return np.triu(self._factor)

    @classmethod
    def from_triangle(cls, triangle: np.ndarray) -> StackedQR:
        """Start from a factor (:attr:`triangle`, copied) rather than from no rows."""
        qr = cls(len(triangle) - 1)
        if triangle.shape != qr._factor.shape:
            raise ValueError(f"StackedQR: a factor of shape {triangle.shape}; expected "
                             f"{qr._factor.shape}")
        qr._factor[:] = np.triu(triangle)
        return qr

    def parts(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Return ``R`` (M, M), ``Qᵀb`` (M,) and ``ρ²``."""
        M = self.n_columns
        full = np.triu(self._factor)
        return full[:M, :M], full[:M, M].copy(), float(full[M, M] ** 2)


class KindRows(NamedTuple):
    """One kind's rows and labels, weighted to unit noise: as rows while few, then folded.

    Energy rows are divided by ``√N`` (their noise is ``σ_E √N``), stress rows kept.
    Once there are more than ``M + 1`` of them they are folded into the triangular
    factor of ``[rows | labels]`` (:class:`StackedQR`), which has the same normal
    equations: the memory they take stops growing with the structures.

    Attributes
    ----------
    parts : list of ndarray of shape (b, M + 1)
        ``[rows | labels]`` blocks in training order, or the one ``(M + 1, M + 1)``
        factor when folded.
    n_rows : int
        Observations they stand for.
    folded : bool
    """

    parts: list
    n_rows: int
    folded: bool

    @classmethod
    def of(cls, rows: np.ndarray, labels: np.ndarray) -> KindRows:
        """Return unfolded rows (``(b, M)``) with their labels."""
        return cls([np.concatenate([rows, labels[:, None]], axis=1)], len(rows), False)

    def merged(self, other: KindRows) -> KindRows:
        """Return these rows followed by ``other``'s, folded once they exceed ``M + 1``."""
        n_columns = (self.parts or other.parts)[0].shape[1] if (self.parts or other.parts) \
            else 0
        n_rows = self.n_rows + other.n_rows
        if not self.folded and not other.folded and n_rows <= n_columns:
            return KindRows(self.parts + other.parts, n_rows, False)
        qr = StackedQR(n_columns - 1)
        for kind in (self, other):
            for part in kind.parts:
                if kind.folded:
                    qr.add_triangle(part)
                elif len(part):
                    qr.add(part[:, :-1], part[:, -1])
        return KindRows([qr.triangle], n_rows, True)

    def system(self, n_columns: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Return ``(rows, labels, rest)``: the rows or ``R``, the labels or ``Qᵀb``, ``ρ²``."""
        if self.folded:
            return StackedQR.from_triangle(self.parts[0]).parts()
        joined = np.concatenate(self.parts) if self.parts else np.zeros((0, n_columns + 1))
        return joined[:, :-1], joined[:, -1].copy(), 0.0


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
    energy, stress : tuple of (ndarray, ndarray, float)
        ``(rows, labels, rest)`` of the energies and stresses weighted to unit noise
        (:meth:`KindRows.system`): the whitened rows over ``√N`` (stress rows as they
        are) and their labels, or, once they outnumber ``M + 1``, their triangular
        factor ``R_g`` (``R_gᵀ R_g = K_w,gᵀ D_g⁻¹ K_w,g``), ``Q_gᵀ y`` and the rest
        ``ρ_g²``.
    spanned : ndarray of shape (n_obs,)
        Each row's squared whitened norm without the two-body columns, less the part
        its structure's own inducing environments span, when given (the LOSO
        projection term).
    prior : ndarray of shape (n_obs,) or None
        Prior variance (over ``σ²``) of every observation, when asked for.
    L_mm : ndarray of shape (M, M)
    jitter, jitter_abs : float
    """

    R_F: np.ndarray
    z_F: np.ndarray
    residual_F: float
    energy: tuple
    stress: tuple
    spanned: np.ndarray
    prior: np.ndarray | None
    L_mm: np.ndarray
    jitter: float
    jitter_abs: float

    def statistics(self, design: SparseDesign) -> gp.WhitenedStatistics:
        """Return the likelihood's statistics (those of the whole design)."""
        (rows_E, labels_E, rest_E), (rows_S, labels_S, rest_S) = self.energy, self.stress
        stats = gp.statistics_from_force_gram(
            self.R_F.T @ self.R_F, self.R_F.T @ self.z_F,
            float(self.z_F @ self.z_F) + self.residual_F, design.n_force, rows_E,
            np.ones(len(rows_E)), labels_E, Kw_S=rows_S, y_S=labels_S)
        return gp.folded_statistics(stats, design.n_energy,
                                    float(np.sum(np.log(design.n_atoms_energy))), rest_E,
                                    design.n_stress, rest_S)

    def weighted_rhs(self, noise: tuple[float, float, float]) -> np.ndarray:
        """Return ``K_wᵀ Λ⁻¹ y`` of the whole design at noise ``(σ_E, σ_F, σ_S)``."""
        energy_noise, force_noise, stress_noise = noise
        (rows_E, labels_E, _), (rows_S, labels_S, _) = self.energy, self.stress
        return (self.R_F.T @ self.z_F / force_noise**2 + rows_E.T @ labels_E / energy_noise**2
                + rows_S.T @ labels_S / stress_noise**2)


class BlockContext(NamedTuple):
    """What every block of a streamed pass needs; the same for all (shipped once per worker).

    Attributes
    ----------
    descriptor : Descriptor
        Fitted.
    inducing : list of ndarray of shape (m_s, n_features)
    pair : TwoBody or None
    kernel : Kernel
    L_mm : ndarray of shape (M, M)
        Lower factor of ``k_mm`` (:func:`kernelpot.design.inducing_factor`).
    prior : bool
        Also the prior variance of every observation.
    """

    descriptor: Descriptor
    inducing: list
    pair: TwoBody | None
    kernel: Kernel
    L_mm: np.ndarray
    prior: bool


class BlockFactor(NamedTuple):
    """One block's (or several consecutive blocks') part of a streamed design.

    Attributes
    ----------
    factor : ndarray of shape (M + 1, M + 1)
        Upper-triangular factor of the force rows and labels ``[K_w,F | y_F]``
        (:class:`StackedQR`).
    energy, stress : KindRows
        The energy and stress rows weighted to unit noise, in training order.
    spanned : list of ndarray
        Each row's squared whitened norm without the two-body columns, structure by
        structure (its energy, force components, stresses).
    prior : list of ndarray or None
        The rows' prior variances (over ``σ²``), in the same order, when asked for.
    """

    factor: np.ndarray
    energy: KindRows
    stress: KindRows
    spanned: list
    prior: list | None


def _serial_imap(fn, items, desc):
    """Map in this process (a block's structures run where the block runs)."""
    return map(fn, items)


def _block_design(context: BlockContext, block: tuple) -> SparseDesign:
    """Return the design of a block's structures on the whole set's inducing environments."""
    from kernelpot.design import SparseDesign

    training, results = block[:2]
    return SparseDesign(training, context.descriptor, context.inducing, context.pair,
                        _serial_imap, results)


def _whitened_structures(design: SparseDesign, kernel: Kernel, L_mm: np.ndarray,
                         prior: bool) -> Iterator:
    """Yield ``(k, whitened rows, prior)`` of each structure: energy, force components, stress."""
    for k in range(len(design.n_atoms)):
        if prior:
            _, rows, row_prior = design.rows_and_prior(k, kernel)
        else:
            (_, rows), row_prior = design.rows(k, kernel), None
        parts = [part for part in (rows.energy[None] if rows.energy is not None else None,
                                   rows.forces, rows.stress) if part is not None]
        stacked = np.concatenate(parts)
        whitened = sla.solve_triangular(L_mm, stacked.T, lower=True, check_finite=False).T
        yield k, whitened, row_prior


def factor_block(context: BlockContext, block: tuple) -> BlockFactor:
    """Build a block's whitened rows and fold its force rows into a triangular factor.

    Parameters
    ----------
    context : BlockContext
    block : tuple
        ``(training, results)``: a :class:`~kernelpot._labels.TrainingSet` of consecutive
        training structures (:meth:`~kernelpot._labels.TrainingSet.subset`) and their
        cached descriptors (or None); optionally a third entry, per structure the
        inducing columns chosen from it, which its ``spanned`` leaves out
        (:func:`kernelpot.loso.own_span`).

    Returns
    -------
    BlockFactor

    Notes
    -----
    Memory: the block's force rows once (written straight into the array the QR
    overwrites), plus one structure's rows at a time.
    """
    design = _block_design(context, block)
    own = block[2] if len(block) > 2 else None
    M, n_E = design.n_columns, design.n_energy
    gp_columns = np.setdiff1d(np.arange(M), design.pair_columns)
    y = design.y
    forces = np.empty((design.n_force, M + 1), order="F")
    energy, stress, spanned, prior = [], [], [], []
    factors = None
    for k, whitened, row_prior in _whitened_structures(design, context.kernel, context.L_mm,
                                                       context.prior):
        rows = _row_indices(design, k)
        is_energy, is_stress = rows < n_E, rows >= n_E + design.n_force
        is_force = ~is_energy & ~is_stress
        energy.append(whitened[is_energy] / np.sqrt(design.n_atoms[k]))
        stress.append(whitened[is_stress])
        force_rows = rows[is_force] - n_E  # this block's force rows are contiguous
        if len(force_rows):
            forces[force_rows[0]:force_rows[-1] + 1, :M] = whitened[is_force]
            forces[force_rows[0]:force_rows[-1] + 1, M] = y[rows[is_force]]
        norms = np.einsum("nm,nm->n", whitened[:, gp_columns], whitened[:, gp_columns])
        if own is not None and len(own[k]):
            if factors is None:  # once per block: each element's factor (loso.own_spans)
                factors = element_factors(context.L_mm, gp.inducing_columns(context.inducing))
            norms -= own_span(whitened, context.L_mm, own[k], factors)
        spanned.append(norms)
        prior.append(row_prior)
    qr = StackedQR(M)
    qr.add_block(forces)
    del forces
    n_S = design.n_stress
    empty = KindRows([], 0, False)
    return BlockFactor(
        qr.triangle,
        empty.merged(KindRows.of(np.concatenate(energy),
                                 design.y_energy / np.sqrt(design.n_atoms_energy))),
        empty.merged(KindRows.of(np.concatenate(stress), design.y_stress)) if n_S else empty,
        [np.concatenate(spanned)], [np.concatenate(prior)] if context.prior else None)


def merge_factors(first: BlockFactor, second: BlockFactor) -> BlockFactor:
    """Return the part of two consecutive blocks (``first`` before ``second``), inputs kept."""
    qr = StackedQR.from_triangle(first.factor)
    qr.add_triangle(second.factor)
    return BlockFactor(qr.triangle, first.energy.merged(second.energy),
                       first.stress.merged(second.stress), first.spanned + second.spanned,
                       None if first.prior is None else first.prior + second.prior)


class _BlockItems(Sequence):
    """The blocks' inputs, each made when asked for (the structures are read then)."""

    def __init__(self, design: SparseDesign, blocks: list[np.ndarray], extra=None):
        self.design, self.blocks, self.extra = design, blocks, extra

    def __len__(self) -> int:
        """Return the number of blocks."""
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple:
        """Return ``(training subset, cached descriptors or None, *extra(i))`` of block i."""
        structures = self.blocks[i]
        results = self.design.results
        item = (self.design.training.subset(structures),
                None if results is None else [results[k] for k in structures])
        return item if self.extra is None else (*item, *self.extra(i))


def _structure_blocks(design: SparseDesign, block_rows: int) -> list[np.ndarray]:
    """Consecutive structures in groups of about ``block_rows`` observations."""
    n_rows = (design.has_energy.astype(int) + 3 * design.n_atoms * design.has_forces
              + 6 * design.has_stress)
    return consecutive_groups(n_rows, block_rows)


def _row_indices(design: SparseDesign, k: int) -> np.ndarray:
    """Design rows of structure ``k``: its energy, force components, stresses."""
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


def _block_row_indices(design: SparseDesign, blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Design rows of each block, structure by structure: the order its rows come back in."""
    return [np.concatenate([_row_indices(design, k) for k in structures])
            for structures in blocks]


def stream_design(design: SparseDesign, kernel: Kernel, block_rows: int,
                  prior: bool = False, owner: str = "SparseGPPotential",
                  runner: BlockRunner | None = None,
                  own: list[np.ndarray] | None = None) -> StreamedDesign:
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
    runner : BlockRunner or None, default=None
        Where the blocks run (None: in this process).
    own : list of ndarray of int or None, default=None
        Per training structure, the columns of the inducing environments chosen from it:
        its rows' ``spanned`` leaves them out (the LOSO projection term,
        :func:`kernelpot.loso.own_span`).

    Returns
    -------
    StreamedDesign
    """
    from kernelpot.design import inducing_factor

    runner = runner if runner is not None else BlockRunner(owner=owner)
    M, n_E, n_obs = design.n_columns, design.n_energy, design.n_obs
    L_mm, jitter, jitter_abs = inducing_factor(design.inducing, kernel, design.pair,
                                               design.n_species)
    blocks = _structure_blocks(design, block_rows)
    kept = sum(min(n, M + 1) for n in (n_E, design.n_stress))  # folded beyond M + 1
    logger.info("%s: streamed design, %d observations in %d blocks of about %d rows %s; "
                "a block holds %.0f MiB of rows and factors, the energy and stress rows "
                "%.0f MiB (the whole design: %.0f MiB)", owner, n_obs, len(blocks),
                block_rows, runner.where, (block_rows + 2 * M) * M * 8 / 2**20,
                kept * (M + 1) * 8 / 2**20, n_obs * M * 8 / 2**20)
    context = BlockContext(design.descriptor, design.inducing, design.pair, kernel, L_mm,
                           prior)
    extra = None if own is None else (lambda i: ([own[k] for k in blocks[i]],))
    merged = runner.reduce(factor_block, context, _BlockItems(design, blocks, extra),
                           merge_factors, "design blocks")
    R_F, z_F, residual_F = StackedQR.from_triangle(merged.factor).parts()
    order = np.concatenate(_block_row_indices(design, blocks))
    merged_spanned = np.concatenate(merged.spanned)
    if merged.energy.n_rows != n_E or merged.stress.n_rows != design.n_stress \
            or merged_spanned.shape != (n_obs,):
        raise RuntimeError(f"{owner}: the streamed blocks returned {merged.energy.n_rows} "
                           f"energy rows, {merged.stress.n_rows} stress rows and "
                           f"{len(merged_spanned)} rows in all; expected {n_E}, "
                           f"{design.n_stress} and {n_obs}")
    spanned = np.empty(n_obs)
    spanned[order] = merged_spanned
    prior_rows = None
    if prior:
        prior_rows = np.empty(n_obs)
        prior_rows[order] = np.concatenate(merged.prior)
    return StreamedDesign(R_F, z_F, residual_F, merged.energy.system(M),
                          merged.stress.system(M), spanned, prior_rows, L_mm, jitter,
                          jitter_abs)


def streamed_posterior(streamed: StreamedDesign, design: SparseDesign, sigma: float,
                       noise: tuple[float, float, float]) -> gp.Posterior:
    """Solve the posterior from the streamed factor (:func:`kernelpot.gp.solve_posterior`).

    ``[R_F; E; S]`` with ``[z_F; y_E'; y_S']`` (the energy and stress rows weighted to
    unit noise, or their factors) has the normal equations and the least-squares
    minimiser of the whole design, so the weights and the factor ``R`` (up to the signs
    of its rows) are those of the in-memory solve.
    """
    energy_noise, force_noise, stress_noise = noise
    M = design.n_columns
    (rows_E, labels_E, _), (rows_S, labels_S, _) = streamed.energy, streamed.stress
    n_E, n_S = len(rows_E), len(rows_S)
    n_small = M + n_E + n_S
    system = np.empty((n_small + M, M), order="F")  # LAPACK's order: QR in place
    system[:M] = streamed.R_F
    system[M:M + n_E] = rows_E
    system[M + n_E:n_small] = rows_S
    noise_std = np.concatenate([np.full(M, force_noise), np.full(n_E, energy_noise),
                                np.full(n_S, stress_noise)])
    y = np.concatenate([streamed.z_F, labels_E, labels_S])
    return gp.solve_posterior(system, n_small, streamed.L_mm, noise_std, y, sigma)


class LosoContext(NamedTuple):
    """What every block of the LOSO pass needs (:func:`loso_block`).

    Attributes
    ----------
    block : BlockContext
    R : ndarray of shape (M, M)
        Upper triangular, ``RᵀR = A``.
    z : ndarray of shape (M,)
        ``A⁻¹ σ Kwᵀ Λ⁻¹ y``.
    sigma : float
    """

    block: BlockContext
    R: np.ndarray
    z: np.ndarray
    sigma: float


def loso_block(context: LosoContext, block: tuple) -> tuple:
    """Recompute a block's whitened rows and return their LOSO terms.

    Parameters
    ----------
    context : LosoContext
    block : tuple
        ``(training, results, y, noise_std, structure)``: the block's structures and
        cached descriptors (as for :func:`factor_block`), then its rows' labels, noise
        std and (whole-set) structure numbers, structure by structure.

    Returns
    -------
    tuple
        :func:`kernelpot.loso.loso_group` of the block's rows.
    """
    design = _block_design(context.block, block)
    _, _, y, noise_std, structure = block
    rows = [whitened for _, whitened, _ in _whitened_structures(
        design, context.block.kernel, context.block.L_mm, False)]
    return loso_group(np.concatenate(rows), y, noise_std, structure, context.sigma,
                      context.z, context.R, shifts=True)


def streamed_loso_groups(design: SparseDesign, kernel: Kernel, L_mm: np.ndarray,
                         block_rows: int, noise_std: np.ndarray, sigma: float,
                         R: np.ndarray, runner: BlockRunner | None = None) -> Callable:
    """Return ``group_terms`` for :func:`kernelpot.loso.sparse_loso`: blocks run by ``runner``.

    Each block's rows are recomputed (a second pass over the structures) and their LOSO
    terms computed where the block runs; only the terms come back.
    """
    runner = runner if runner is not None else BlockRunner()
    blocks = _structure_blocks(design, block_rows)
    y, structure = design.y, design.training.row_structures()
    indices = _block_row_indices(design, blocks)
    items = _BlockItems(design, blocks, lambda i: (y[indices[i]], noise_std[indices[i]],
                                                   structure[indices[i]]))
    context = BlockContext(design.descriptor, design.inducing, design.pair, kernel, L_mm, False)

    def group_terms(z: np.ndarray) -> Iterator:
        results = runner.map(loso_block, LosoContext(context, R, z, sigma), items,
                             "leave-one-structure-out blocks")
        return zip(indices, results, strict=True)

    return group_terms
