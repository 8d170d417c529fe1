"""The sparse model's design: rows per structure, whitened and stacked, with statistics.

A :class:`SparseDesign` holds what the rows of a training set depend on (the
structures, their descriptors when cached, the inducing environments, the two-body
term) and builds, for a given kernel:

* :meth:`SparseDesign.assemble`: the whitened design ``K_w = K L_mm⁻ᵀ`` of every
  energy and force observation in one preallocated ``(n_obs + M) × M`` matrix (the
  last ``M`` rows are scratch space for the QR solve), the factor ``L_mm`` of
  ``k_mm`` with its jitter, and the likelihood's statistics
  (:class:`kernelpot.gp.WhitenedStatistics`);
* :meth:`SparseDesign.kernel_gradient`: ``∂ log p / ∂ kernel.theta`` from one more
  pass over the structures.

Rows: energies first (one per structure that has one), then every force component
of the structures that have forces, then the six stress components (ASE's Voigt
order, :func:`kernelpot.gp.stress_jacobian`) of the structures that have a stress, in
training order. Columns: the inducing
environments per element (:func:`kernelpot.gp.inducing_columns`), then the two-body
coefficients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.linalg as sla

from kernelpot import gp
from kernelpot._labels import TrainingSet
from kernelpot._two_body_search import pair_factor

if TYPE_CHECKING:
    from ase import Atoms

    from kernelpot.descriptors.base import Descriptor
    from kernelpot.kernels import Kernel
    from kernelpot.two_body import TwoBody

logger = logging.getLogger(__name__)

__all__ = ["AssembledDesign", "SparseDesign", "inducing_factor", "prior_with_two_body",
           "rebuilt_inducing_factor", "with_two_body"]


def with_two_body(rows: gp.DesignRows, pair: TwoBody | None, atoms: Atoms,
                  species_index: np.ndarray,
                  n_species: int, pair_columns: np.ndarray | None) -> gp.DesignRows:
    """Fill the two-body columns (``prior_std² × basis rows``) of full-width design rows.

    Their derivatives in the kernel's hyperparameters stay zero. Stress rows, when
    ``rows`` has them, are filled for the cell's volume.

    Parameters
    ----------
    rows : gp.DesignRows
        Full-width rows of one structure (filled in place).
    pair : TwoBody or None
        The two-body term; ``None`` returns ``rows`` unchanged.
    atoms : ase.Atoms
    species_index : ndarray of int
    n_species : int
    pair_columns : ndarray of int or None
        The columns of the two-body coefficients.

    Returns
    -------
    gp.DesignRows
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
    if rows.stress is not None:
        rows.stress[:, pair_columns] = scale2 * pair.stress_rows(
            atoms, species_index, n_species, atoms.get_volume())
    return rows


def prior_with_two_body(rows: gp.DesignRows, pair: TwoBody | None,
                        pair_columns: np.ndarray | None, prior_energy: float | None,
                        prior_forces: np.ndarray | None, prior_stress: np.ndarray | None = None,
                        *, jitter_abs: float):
    """Add the two-body term's prior variance to a structure's GP prior variances.

    The term's prior variance is spanned exactly by its coefficients: it adds the same
    to the prior and to the projected prior, and nothing to the projection (``k** -
    q**``) term, as in the training rows' LOSO projection term, which leaves the
    two-body columns out. What is added is what the projected prior gets from those
    columns, ``|tail|² / (prior_std² + jitter_abs)`` with ``tail = prior_std² × basis
    row`` (``k_mm``'s two-body block carries the GP block's absolute jitter,
    :func:`inducing_factor`), not the jitter-free ``prior_std² |basis row|²``: their
    difference, a fraction ``jitter_abs / (prior_std² + jitter_abs)`` of a variance
    that grows with the square of the structure's pair count, was left in the
    projection term. Measured: a Li model of 50 mlearn cells (prior_std 0.18, jitter
    1e-8) had 0.4 meV/atom of projection std on every test cell against 0.02–0.2 on the
    training cells left out, and its LOSO map (projection weight about 70), fitted on
    the latter, made energy stds of 45 meV/atom for errors of mostly 0.2–5.5.

    Parameters
    ----------
    rows : gp.DesignRows
        Full-width rows with the two-body columns filled (:func:`with_two_body`).
    pair : TwoBody or None
        The two-body term; ``None`` returns the variances unchanged.
    pair_columns : ndarray of int or None
        Its columns.
    prior_energy : float or None
        Prior variance of the energy (over ``σ²``).
    prior_forces : ndarray of shape (n_atoms, 3) or None
        Prior variances of the force components.
    prior_stress : ndarray of shape (6,) or None, default=None
        Prior variances of the stress components (with ``rows.stress``).
    jitter_abs : float
        The absolute jitter of ``k_mm`` (the posterior's ``jitter_abs``).

    Returns
    -------
    prior_energy : float or None
    prior_forces : ndarray of shape (n_atoms, 3) or None
    prior_stress : ndarray of shape (6,) or None
        Only when ``prior_stress`` was given.
    """
    if pair is None:
        return (prior_energy, prior_forces) if prior_stress is None \
            else (prior_energy, prior_forces, prior_stress)
    factor2 = float(pair_factor(float(pair.prior_std), float(jitter_abs)))**2
    if prior_energy is not None:
        tail = rows.energy[pair_columns]
        prior_energy = prior_energy + float(tail @ tail) / factor2
    if prior_forces is not None:
        tail = rows.forces[:, pair_columns]
        prior_forces = prior_forces + (np.einsum("rk,rk->r", tail, tail)
                                       / factor2).reshape(-1, 3)
    if prior_stress is None:
        return prior_energy, prior_forces
    tail = rows.stress[:, pair_columns]
    return prior_energy, prior_forces, prior_stress + np.einsum("rk,rk->r", tail, tail) / factor2


def inducing_factor(inducing: list[np.ndarray], kernel: Kernel, pair: TwoBody | None,
                    n_species: int) -> tuple[np.ndarray, float, float]:
    """Lower factor of ``k_mm`` plus jitter, and the jitter (relative, absolute).

    ``k_mm`` is the GP's inducing kernel, then ``prior_std² I`` for the two-body
    coefficients (their prior covariance over ``σ²``). The GP block is factored by
    :func:`kernelpot.gp.cholesky_with_jitter`; the two-body block gets the same absolute
    jitter, so that its prior std does not change the jitter of the GP block.

    Parameters
    ----------
    inducing : list of ndarray of shape (m_s, n_features)
    kernel : Kernel
    pair : TwoBody or None
    n_species : int

    Returns
    -------
    L_mm : ndarray of shape (M, M)
    jitter : float
        Relative to the mean diagonal of the GP block.
    jitter_abs : float
        As added to the diagonal.
    """
    K = gp.inducing_kernel(inducing, kernel)
    L, jitter = gp.cholesky_with_jitter(K)
    jitter_abs = jitter * gp.jitter_scale(K)  # as cholesky_with_jitter applied it
    if pair is None:
        return L, jitter, jitter_abs
    n_pair = pair.n_columns(n_species)
    pair_block = pair_factor(float(pair.prior_std), jitter_abs) * np.eye(n_pair)
    return sla.block_diag(L, pair_block), jitter, jitter_abs


def rebuilt_inducing_factor(inducing: list[np.ndarray], columns: list[np.ndarray],
                            kernel: Kernel, pair_prior_std: float | None,
                            pair_columns: np.ndarray | None, jitter_abs: float,
                            n_columns: int) -> np.ndarray:
    """Rebuild ``L_mm`` from the inducing environments, as a fresh fit factors it.

    ``k_mm`` of the environments in their model columns plus ``jitter_abs`` on its
    diagonal, factored in one Cholesky (the GP columns in ascending order, as
    :func:`inducing_factor` does for a fresh fit, whose factor this equals exactly);
    the two-body columns get :func:`pair_factor` on the diagonal. A model grown by
    updates appended its factor's rows one block at a time, which this equals to
    round-off unless an update needed more jitter (see
    :meth:`kernelpot.sparse_posterior.SparsePosterior.to_arrays`).

    Parameters
    ----------
    inducing : list of ndarray of shape (m_s, n_features)
    columns : list of ndarray of shape (m_s,)
        Each species' model columns.
    kernel : Kernel
    pair_prior_std : float or None
        The two-body term's prior std; None without one.
    pair_columns : ndarray of shape (n_pair,) or None
    jitter_abs : float
    n_columns : int
        ``M``, every weight's column.

    Returns
    -------
    L_mm : ndarray of shape (M, M)

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``k_mm`` plus the jitter is not positive definite.
    """
    gp_columns = np.sort(np.concatenate([np.asarray(c, dtype=np.int64) for c in columns]))
    local = np.full(n_columns, -1, dtype=np.int64)
    local[gp_columns] = np.arange(gp_columns.size)
    K = np.zeros((gp_columns.size, gp_columns.size))
    for Z, c in zip(inducing, columns, strict=True):
        if len(Z):
            K[np.ix_(local[c], local[c])] = kernel(Z)
    L = np.zeros((n_columns, n_columns))
    L[np.ix_(gp_columns, gp_columns)] = sla.cholesky(
        K + jitter_abs * np.eye(len(K)), lower=True)
    if pair_columns is not None and len(pair_columns):
        L[pair_columns, pair_columns] = pair_factor(float(pair_prior_std), jitter_abs)
    return L


class AssembledDesign(NamedTuple):
    """The whitened design of a training set at one kernel, and what came with it.

    Attributes
    ----------
    design : ndarray of shape (n_obs + M, M)
        Rows ``[:n_obs]``: the whitened design; the rest is scratch space.
    L_mm : ndarray of shape (M, M)
    jitter, jitter_abs : float
        Of ``k_mm`` (relative, absolute).
    stats : gp.WhitenedStatistics
    gram : ndarray of shape (M, M) or None
        The force rows' Gram matrix, when asked for.
    prior : ndarray of shape (n_obs,) or None
        Prior variance (over ``σ²``) of every observation, when asked for.
    """

    design: np.ndarray
    L_mm: np.ndarray
    jitter: float
    jitter_abs: float
    stats: gp.WhitenedStatistics
    gram: np.ndarray | None
    prior: np.ndarray | None = None


class SparseDesign:
    """Design rows of a training set on fixed inducing environments.

    Parameters
    ----------
    training : TrainingSet
    descriptor : Descriptor
    inducing : list of ndarray of shape (m_s, n_features)
    pair : TwoBody or None
    imap : callable
        ``imap(fn, items, desc)``: the estimator's ordered parallel map (a generator).
    results : list of DescriptorResult or None, default=None
        Cached descriptors of the structures; ``None`` computes them on every pass.
    """

    def __init__(self, training: TrainingSet, descriptor: Descriptor,
                 inducing: list[np.ndarray], pair: TwoBody | None,
                 imap: Callable[..., Iterator], results: list | None = None):
        self.training = training
        self.descriptor = descriptor
        self.inducing = inducing
        self.pair = pair
        self.imap = imap
        self.results = results
        self.n_species = len(training.species)
        self.has_energy = training.has_energy
        self.has_forces = training.has_forces
        self.has_stress = training.has_stress
        self.n_atoms = training.n_atoms
        self.n_energy = int(self.has_energy.sum())
        self.n_force = int(3 * self.n_atoms[self.has_forces].sum())
        self.n_stress = int(6 * self.has_stress.sum())
        self.n_obs = self.n_energy + self.n_force + self.n_stress
        self.n_pair = pair.n_columns(self.n_species) if pair is not None else 0
        self.n_columns = int(sum(len(z) for z in inducing)) + self.n_pair
        # after the inducing environments
        self.pair_columns = np.arange(self.n_columns - self.n_pair, self.n_columns)
        self.energy_row = np.cumsum(self.has_energy) - 1
        self.force_start = self.n_energy + 3 * np.concatenate(
            [[0], np.cumsum(self.n_atoms * self.has_forces)])
        self.stress_start = self.n_energy + self.n_force + 6 * (np.cumsum(self.has_stress) - 1)
        self.y_energy = training.energy_targets()
        self.y_force = training.force_targets()
        self.y_stress = training.stress_targets()

    @property
    def y(self) -> np.ndarray:
        """Return every label in row order: energies, force components, stresses."""
        return np.concatenate([self.y_energy, self.y_force, self.y_stress])

    def noise_std(self, energy_noise: float, force_noise: float,
                  stress_noise: float) -> np.ndarray:
        """Return the noise std of every row: ``σ_E √N``, ``σ_F``, ``σ_S``."""
        return np.concatenate([energy_noise * np.sqrt(self.n_atoms_energy),
                               np.full(self.n_force, force_noise),
                               np.full(self.n_stress, stress_noise)])

    def row_kinds(self) -> np.ndarray:
        """Return the kind of every row: 0 energy, 1 force component, 2 stress component."""
        return np.repeat([0, 1, 2], [self.n_energy, self.n_force, self.n_stress])

    @property
    def n_atoms_energy(self) -> np.ndarray:
        """Return the atoms of the structures with an energy, as floats."""
        return self.n_atoms[self.has_energy].astype(float)

    def rows(self, k: int, kernel: Kernel,
             theta_gradient: bool = False) -> tuple[int, gp.DesignRows]:
        """Return the full-width design rows of training structure ``k``.

        Parameters
        ----------
        k : int
            The structure.
        kernel : Kernel
            The kernel.
        theta_gradient : bool, default=False
            Also their derivatives in ``kernel.theta``.

        Returns
        -------
        k : int
            The structure.
        rows : gp.DesignRows
            Its energy and force rows.
        """
        return k, self._rows(k, kernel, self._result(k), theta_gradient)

    def rows_and_prior(self, k: int, kernel: Kernel) -> tuple[int, gp.DesignRows, np.ndarray]:
        """Return the design rows of structure ``k`` and the prior variances of its rows.

        Parameters
        ----------
        k : int
            The structure.
        kernel : Kernel
            The kernel.

        Returns
        -------
        k : int
            The structure.
        rows : gp.DesignRows
            Its energy, force and stress rows.
        prior : ndarray of shape (n_rows_k,)
            Prior variance (over ``σ²``) of the GP part of its energy, then of each
            force component, then of each stress component (the two-body term,
            exactly spanned by its coefficients, adds nothing to the projection term
            these are for).
        """
        result = self._result(k)
        rows = self._rows(k, kernel, result, False)
        has_e, has_f = bool(self.has_energy[k]), bool(self.has_forces[k])
        index = self.training.species_index[k]
        prior_e, prior_f = gp.prior_variances(result, index, self.n_species, kernel,
                                              energy=has_e, forces=has_f)
        parts = ([[prior_e]] if has_e else []) + ([prior_f.ravel()] if has_f else [])
        if self.has_stress[k]:
            virtual = gp.stress_jacobian(result, self.training.frames[k].get_volume())
            parts.append(gp.prior_variances(virtual, index, self.n_species, kernel,
                                            energy=False)[1].ravel()[:6])
        return k, rows, np.concatenate(parts)

    def _result(self, k: int):
        """Return the descriptors of structure ``k`` (cached, or computed now)."""
        if self.results is not None:
            return self.results[k]
        return self.descriptor.compute(self.training.frames[k],
                                       strain=bool(self.has_stress[k]))

    def _rows(self, k: int, kernel: Kernel, result, theta_gradient: bool) -> gp.DesignRows:
        """Build the full-width rows of structure ``k`` from its descriptors."""
        training = self.training
        volume = training.frames[k].get_volume() if self.has_stress[k] else None
        rows = gp.design_rows(result, training.species_index[k], self.inducing, kernel,
                              energy=bool(self.has_energy[k]), forces=bool(self.has_forces[k]),
                              theta_gradient=theta_gradient, n_columns=self.n_columns,
                              stress_volume=volume)
        return with_two_body(rows, self.pair, training.frames[k], training.species_index[k],
                             self.n_species, self.pair_columns)

    def assemble(self, kernel: Kernel, keep_basis: bool = False, keep_gram: bool = False,
                 owner: str = "SparseGPPotential", prior: bool = False) -> AssembledDesign:
        """Build the whitened design, the factor of ``k_mm`` and the statistics.

        Parameters
        ----------
        kernel : Kernel
        keep_basis : bool, default=False
            Keep the statistics' basis for :class:`kernelpot.gp.KernelThetaGradient`.
        keep_gram : bool, default=False
            Also return the force rows' Gram matrix (the two-body search needs it).
        owner : str, default="SparseGPPotential"
            Names the estimator in logs.
        prior : bool, default=False
            Also the prior variance (over ``σ²``) of every observation, for the
            projection term of leave-one-structure-out predictions.

        Returns
        -------
        AssembledDesign
        """
        n_E, n_obs, M = self.n_energy, self.n_obs, self.n_columns
        design = np.empty((n_obs + M, M))
        prior_rows = np.empty(n_obs) if prior else None
        logger.info("%s: design matrix %d x %d (%.0f MiB)", owner, n_obs, M,
                    design.nbytes / 2**20)
        fn = (lambda k: self.rows_and_prior(k, kernel)) if prior \
            else (lambda k: self.rows(k, kernel))
        for k, rows, *row_prior in self.imap(fn, range(len(self.n_atoms)), "design rows"):
            has_e = bool(self.has_energy[k])
            if has_e:
                design[self.energy_row[k]] = rows.energy
                if prior:
                    prior_rows[self.energy_row[k]] = row_prior[0][0]
            if self.has_forces[k]:
                start = self.force_start[k]
                design[start:start + 3 * self.n_atoms[k]] = rows.forces
                if prior:
                    prior_rows[start:start + 3 * self.n_atoms[k]] = \
                        row_prior[0][int(has_e):int(has_e) + 3 * self.n_atoms[k]]
            if self.has_stress[k]:
                start = self.stress_start[k]
                design[start:start + 6] = rows.stress
                if prior:
                    prior_rows[start:start + 6] = row_prior[0][-6:]
        # whiten the design: K_w = K L⁻ᵀ
        L_mm, jitter, jitter_abs = inducing_factor(self.inducing, kernel, self.pair,
                                                   self.n_species)
        block = design[:n_obs].T  # F-contiguous view: LAPACK solves in place
        solved = sla.solve_triangular(L_mm, block, lower=True, overwrite_b=True,
                                      check_finite=False)
        if not np.shares_memory(solved, design):
            design[:n_obs] = solved.T
        n_EF = n_E + self.n_force
        Kw_F = design[n_E:n_EF]
        gram = Kw_F.T @ Kw_F
        y_F = self.y_force
        stats = gp.statistics_from_force_gram(
            gram.copy() if keep_gram else gram, Kw_F.T @ y_F, float(y_F @ y_F), self.n_force,
            design[:n_E], self.n_atoms_energy, self.y_energy, keep_basis=keep_basis,
            Kw_S=design[n_EF:n_obs], y_S=self.y_stress)
        return AssembledDesign(design, L_mm, jitter, jitter_abs, stats,
                               gram if keep_gram else None, prior_rows)

    def kernel_gradient(self, kernel: Kernel, assembled: AssembledDesign,
                        inner: np.ndarray) -> np.ndarray:
        """Return ``∂ log p / ∂ kernel.theta`` at the noise levels ``inner``, one more pass.

        Parameters
        ----------
        kernel : Kernel
            The kernel ``assembled`` was built with.
        assembled : AssembledDesign
            Built with ``keep_basis=True``.
        inner : ndarray of shape (3,) or (4,)
            ``log (σ, σ_E, σ_F[, σ_S])``.

        Returns
        -------
        ndarray of shape (kernel.n_theta,)
        """
        design, n_E, M, n_pair = assembled.design, self.n_energy, self.n_columns, self.n_pair
        gradient = gp.KernelThetaGradient(inner, assembled.stats, assembled.L_mm,
                                          kernel.n_theta)
        var_E, var_F = np.exp(2 * inner[1]), np.exp(2 * inner[2])
        var_S = np.exp(2 * gp.noise_log_params(inner)[3])
        for k, rows in self.imap(lambda k: self.rows(k, kernel, True),
                                 range(len(self.n_atoms)), "design derivatives"):
            if self.has_energy[k]:
                r = self.energy_row[k]
                gradient.add_rows(rows.d_energy[None], design[r:r + 1],
                                  self.y_energy[r:r + 1],
                                  np.array([var_E * self.n_atoms[k]]))
            if self.has_forces[k]:
                start = self.force_start[k]
                stop = start + 3 * self.n_atoms[k]
                gradient.add_rows(rows.d_forces, design[start:stop],
                                  self.y_force[start - n_E:stop - n_E],
                                  np.full(stop - start, var_F))
            if self.has_stress[k]:
                start = self.stress_start[k]
                offset = start - n_E - self.n_force
                gradient.add_rows(rows.d_stress, design[start:start + 6],
                                  self.y_stress[offset:offset + 6], np.full(6, var_S))
        d_kmm = np.zeros((M, M, kernel.n_theta))
        d_kmm[:M - n_pair, :M - n_pair] = gp.inducing_kernel_gradient(self.inducing, kernel)
        # the jitter is relative to the mean diagonal of k_mm's GP block, which θ may
        # change (and the two-body block has the same absolute jitter)
        diagonal = np.einsum("iit->t", d_kmm) / (M - n_pair)
        d_kmm[np.arange(M), np.arange(M)] += assembled.jitter * diagonal
        return gradient.gradient(d_kmm)
