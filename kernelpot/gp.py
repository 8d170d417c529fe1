"""Sparse GP maths on arrays: design rows, factorisation, likelihood, variances.

Pure functions; the estimator gathers inputs, calls them and stores the results.

Model (DESIGN.md). Local energies ``ε(x) ~ GP(0, σ² k(x, x'))`` per species
(independent across species); a structure's energy is ``E = Σ_i ε(x_i)`` (plus
per-element reference energies handled by the estimator) and its forces
``F_j = -∂E/∂r_j``. With inducing descriptors ``z_m`` (block per species), the
design rows are

* energy: ``k_E[m] = Σ_i k(x_i, z_m)``;
* force component ``(j, c)``: ``k_F[m] = -Σ_i ∂k(x_i, z_m)/∂x_i · ∂x_i/∂r_jc``.

Observations carry Gaussian noise: ``σ_E² N`` for the energy of an ``N``-atom
structure (``σ_E`` per atom) and ``σ_F²`` per force component. The DTC
(projected process) approximation with ``k_mm = L Lᵀ`` works in the whitened
basis ``K_w = K_nm L⁻ᵀ``:

* ``A_w = I + σ² K_wᵀ Λ⁻¹ K_w``, predictive mean ``k_* L⁻ᵀ w_w`` with
  ``w_w = σ² A_w⁻¹ K_wᵀ Λ⁻¹ y``, computed from an economic QR of the stacked
  matrix ``[σ Λ^(-1/2) K_w ; I] = Q R`` (``A_w = Rᵀ R``), never from normal
  equations;
* epistemic variance ``σ² |R⁻ᵀ L⁻¹ k_*|²`` (posterior over the inducing values)
  plus ``σ² (k_** - |L⁻¹ k_*|²)`` (the part of the prior the inducing set does not
  span, which grows away from it);
* log marginal likelihood of ``y ~ N(0, σ² K_w K_wᵀ + Λ)`` and its analytic gradient
  in ``(log σ, log σ_E, log σ_F)``, from whitened statistics of the design
  (:class:`WhitenedStatistics`) so that each optimiser step costs
  ``O(M n_E²)``, not ``O(n M²)``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.linalg as sla
from numpy.typing import ArrayLike

from kernelpot._gp_kernels import accumulate_force_rows
from kernelpot.descriptors.base import DescriptorResult

if TYPE_CHECKING:
    from kernelpot.kernels import Kernel

#: Jitter added to the diagonal of k_mm, relative to its mean diagonal.
JITTER = 1e-8
#: Elements of one temporary (pairs × 3 × m) block in :func:`design_rows`.
BLOCK_ELEMENTS = 2**23

_LOG_2PI = np.log(2.0 * np.pi)


class DesignRows(NamedTuple):
    """Design rows of one structure (``None`` where not requested).

    Attributes
    ----------
    energy : ndarray of shape (n_inducing,)
    forces : ndarray of shape (3 n_atoms, n_inducing)
        Row ``3 j + c`` is force component ``c`` of atom ``j``.
    """

    energy: np.ndarray | None
    forces: np.ndarray | None
    #: ``∂ energy / ∂θ`` (n_inducing, n_theta), with ``theta_gradient=True`` only
    d_energy: np.ndarray | None = None
    #: ``∂ forces / ∂θ`` (3 n_atoms, n_inducing, n_theta), with ``theta_gradient=True`` only
    d_forces: np.ndarray | None = None
    #: stress rows (6, n_inducing), ASE's Voigt order, with ``stress_volume`` only
    stress: np.ndarray | None = None
    #: ``∂ stress / ∂θ`` (6, n_inducing, n_theta)
    d_stress: np.ndarray | None = None


def _n_moved(result: DescriptorResult) -> int:
    """Atoms whose force rows a result has (two pseudo-atoms for :func:`stress_jacobian`)."""
    if len(result.pairs) == 0:
        return result.n_atoms
    return max(result.n_atoms, int(result.pairs[:, 1].max()) + 1)


def stress_jacobian(result: DescriptorResult, volume: float) -> DescriptorResult:
    """Write the stress of a structure as the "forces" of two pseudo-atoms.

    ASE's stress of a sum of local energies is ``σ_v = Σ_i ∇ε(x_i) · s_iv`` with
    ``s_iv = (∂x_i/∂ε_ab + ∂x_i/∂ε_ba) / (2V)`` for Voigt component ``v = (a, b)``
    (:func:`stress_from_strain_derivative`), and a force is
    ``F_jc = -Σ_i ∇ε(x_i) · ∂x_i/∂r_jc``. So the result returned here, whose Jacobian
    rows are ``-s_iv`` for the pairs ``(i, 0)`` (Voigt ``xx yy zz``) and ``(i, 1)``
    (``yz xz xy``), makes every force formula give the stress: its force components
    ``0..5`` are the six stress components. The design rows, their derivatives in the
    kernel's hyperparameters, the prior variances and the exact model's covariances
    of stresses are those of forces, built on this Jacobian.

    Parameters
    ----------
    result : DescriptorResult
        Computed with ``strain=True``.
    volume : float
        Cell volume, Å³.

    Returns
    -------
    DescriptorResult
        Same features; ``pairs`` ``(i, 0), (i, 1)`` for every centre; no strain
        gradients.
    """
    if result.strain_gradients is None:
        raise ValueError("stress_jacobian: the descriptor result has no strain gradients; "
                         "compute it with strain=True")
    S = result.strain_gradients  # (n, 3, 3, D)
    sym = -0.5 * (S + S.transpose(0, 2, 1, 3)) / float(volume)
    voigt = sym[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # (n, 6, D)
    n_atoms = result.n_atoms
    pairs = np.stack([np.repeat(np.arange(n_atoms), 2), np.tile([0, 1], n_atoms)], axis=1)
    return DescriptorResult(result.features, pairs.astype(np.int64),
                            np.ascontiguousarray(voigt.reshape(2 * n_atoms, 3, -1)))


def inducing_columns(inducing: list[np.ndarray],
                     columns: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Global design columns of each species' inducing environments.

    ``None`` gives contiguous blocks in species order (as after a fit); models
    updated with new inducing environments append their columns at the end.
    """
    if columns is not None:
        return columns
    offsets = np.concatenate([[0], np.cumsum([len(z) for z in inducing])]).astype(np.int64)
    return [np.arange(offsets[s], offsets[s + 1]) for s in range(len(inducing))]


def design_rows(result: DescriptorResult, species_index: np.ndarray,
                inducing: list[np.ndarray], kernel: Kernel, energy: bool = True,
                forces: bool = True, columns: list[np.ndarray] | None = None,
                theta_gradient: bool = False,
                n_columns: int | None = None,
                stress_volume: float | None = None) -> DesignRows:
    """Energy, force and stress design rows of one structure.

    Parameters
    ----------
    result : DescriptorResult
        Features and Jacobian of the structure.
    species_index : ndarray of shape (n_atoms,)
        Index of each atom's element in the model's species list.
    inducing : list of ndarray of shape (m_s, n_features)
        Inducing descriptors per species.
    kernel : kernelpot.kernels.Kernel
    energy, forces : bool
        Which rows to build.
    columns : list of ndarray of int, optional
        Design column of each inducing environment (see :func:`inducing_columns`).
    theta_gradient : bool, default=False
        Also return the derivatives of the rows with respect to the kernel's log
        hyperparameters ``kernel.theta`` (for the likelihood gradient).
    n_columns : int, optional
        Width of the rows when the model has design columns besides the inducing
        environments (a two-body term); those stay zero. Default: the number of
        inducing environments.
    stress_volume : float, optional
        Given, also the six stress rows (``result`` computed with ``strain=True``; the
        cell volume in Å³): the force rows of :func:`stress_jacobian`.

    Returns
    -------
    DesignRows
        Kernel values in units of the kernel (without ``σ²``).

    Notes
    -----
    With ``∂k(x, z)/∂x = α z + β x`` the force rows need only ``G_p z_m`` and
    ``G_p x_i`` for each Jacobian block ``G_p``; they are built in blocks of
    pairs so that temporaries stay below ``BLOCK_ELEMENTS`` elements.
    """
    X = result.features
    n_features = X.shape[1]
    n_atoms = _n_moved(result)
    columns = inducing_columns(inducing, columns)
    n_inducing = int(sum(len(z) for z in inducing)) if n_columns is None else int(n_columns)
    n_theta = kernel.n_theta if theta_gradient else 0
    energy_row = np.zeros(n_inducing) if energy else None
    force_rows = np.zeros((3 * n_atoms, n_inducing)) if forces else None
    d_energy = np.zeros((n_inducing, n_theta)) if energy and theta_gradient else None
    d_forces = np.zeros((3 * n_atoms, n_inducing, n_theta)) if forces and theta_gradient \
        else None
    centre = result.pairs[:, 0]
    moved = result.pairs[:, 1]
    pair_species = species_index[centre]
    for s, Z in enumerate(inducing):
        atoms_s = np.flatnonzero(species_index == s)
        m_s = len(Z)
        if atoms_s.size == 0 or m_s == 0:
            continue
        cols = columns[s]
        if energy:
            if theta_gradient:
                K, dK = kernel(X[atoms_s], Z, eval_gradient=True)
                energy_row[cols] = K.sum(axis=0)
                d_energy[cols] = dK.sum(axis=0)
            else:
                energy_row[cols] = kernel(X[atoms_s], Z).sum(axis=0)
        if not forces:
            continue
        if theta_gradient:
            alpha, beta, d_alpha, d_beta = kernel.gradient_coefficients(X[atoms_s], Z, True)
            coefficients = [(alpha, beta)] + [
                (np.ascontiguousarray(d_alpha[..., t]), np.ascontiguousarray(d_beta[..., t]))
                for t in range(n_theta)]
        else:
            coefficients = [kernel.gradient_coefficients(X[atoms_s], Z)]  # (n_s, m_s) each
        targets = [np.zeros((3 * n_atoms, m_s)) for _ in coefficients]
        local = np.full(n_atoms, -1, dtype=np.int64)
        local[atoms_s] = np.arange(atoms_s.size)
        pairs_s = np.flatnonzero(pair_species == s)
        block = max(1, BLOCK_ELEMENTS // (3 * m_s))
        for start in range(0, pairs_s.size, block):
            p = pairs_s[start:start + block]
            G = result.gradients[p]  # (b, 3, D)
            GZ = (G.reshape(-1, n_features) @ Z.T).reshape(len(p), 3, m_s)
            Gx = np.einsum("pcd,pd->pc", G, X[centre[p]])
            rows_i = local[centre[p]]
            moved_p = np.ascontiguousarray(moved[p])
            for (a, b), target in zip(coefficients, targets, strict=True):
                accumulate_force_rows(target, GZ, Gx, np.ascontiguousarray(a),
                                      np.ascontiguousarray(b), rows_i, moved_p)
        force_rows[:, cols] = targets[0]
        for t in range(n_theta):
            d_forces[:, cols, t] = targets[t + 1]
    if stress_volume is None:
        return DesignRows(energy_row, force_rows, d_energy, d_forces)
    virtual = design_rows(stress_jacobian(result, stress_volume), species_index, inducing,
                          kernel, energy=False, forces=True, columns=columns,
                          theta_gradient=theta_gradient, n_columns=n_columns)
    return DesignRows(energy_row, force_rows, d_energy, d_forces, virtual.forces[:6],
                      virtual.d_forces[:6] if theta_gradient else None)


def local_energies_from_maps(X: np.ndarray, species_index: np.ndarray, maps: list,
                             gradients: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted local energies and their descriptor gradients, through mean maps.

    ``ε_i`` of each atom comes from its element's map (:mod:`kernelpot.mean_maps`): a
    closed form for the normalised dot product, else the sum ``Σ_m k(x_i, z_m) w_m``
    over the inducing environments (:class:`~kernelpot.mean_maps.InducingSum`). Mean
    forces need only these gradients (:func:`forces_from_local_gradients`).

    Parameters
    ----------
    X : ndarray of shape (n_atoms, n_features)
        Descriptors of the atoms.
    species_index : ndarray of shape (n_atoms,)
        Element index of every atom (the position of its map in ``maps``).
    maps : list of MeanMap
        One per element.
    gradients : bool, default=False
        Also return ``∂ε_i/∂x_i``.

    Returns
    -------
    energies : ndarray of shape (n_atoms,)
        ``ε_i`` (without reference energies).
    d_energies : ndarray of shape (n_atoms, n_features) or None
        ``∂ε_i/∂x_i`` with ``gradients``.
    """
    energies = np.zeros(len(X))
    d_energies = np.zeros_like(X) if gradients else None
    for s, mean in enumerate(maps):
        atoms_s = np.flatnonzero(species_index == s)
        if atoms_s.size == 0:
            continue
        e, d = mean(X[atoms_s], gradients)
        energies[atoms_s] = e
        if gradients:
            d_energies[atoms_s] = d
    return energies, d_energies


def forces_from_local_gradients(result: DescriptorResult, d_energies: np.ndarray) -> np.ndarray:
    """Compute forces ``F_j = -Σ_i (∂x_i/∂r_j)ᵀ ∂ε_i/∂x_i`` from the descriptor Jacobian.

    Parameters
    ----------
    result : DescriptorResult
    d_energies : ndarray of shape (n_atoms, n_features)

    Returns
    -------
    ndarray of shape (n_atoms, 3)
    """
    centre, moved = result.pairs[:, 0], result.pairs[:, 1]
    per_pair = np.einsum("pcd,pd->pc", result.gradients, d_energies[centre])  # (P, 3)
    forces = np.zeros((result.n_atoms, 3))
    np.add.at(forces, moved, -per_pair)
    return forces


def strain_derivative_from_local_gradients(result: DescriptorResult,
                                           d_energies: np.ndarray) -> np.ndarray:
    """``∂E/∂ε = Σ_i Σ_d ∂ε_i/∂x_id ∂x_id/∂ε`` from the descriptor strain gradients.

    Parameters
    ----------
    result : DescriptorResult
        Computed with ``strain=True``.
    d_energies : ndarray of shape (n_atoms, n_features)

    Returns
    -------
    ndarray of shape (3, 3)
        eV; not symmetrised (see :func:`stress_from_strain_derivative`).
    """
    if result.strain_gradients is None:
        raise ValueError("strain_derivative_from_local_gradients: the descriptor result "
                         "has no strain gradients; compute it with strain=True")
    return np.einsum("iabd,id->ab", result.strain_gradients, d_energies)


def stress_from_strain_derivative(derivative: np.ndarray, volume: float) -> np.ndarray:
    """ASE's stress (Voigt ``xx yy zz yz xz xy``, eV/Å³) from ``∂E/∂ε``.

    ``σ = (∂E/∂ε + ∂E/∂εᵀ) / (2V)``: positive under tension, as
    :func:`ase.calculators.calculator.Calculator.calculate_numerical_stress`.
    """
    sym = 0.5 * (derivative + derivative.T) / volume
    return sym[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def inducing_kernel(inducing: list[np.ndarray], kernel: Kernel,
                    columns: list[np.ndarray] | None = None) -> np.ndarray:
    """``k_mm`` (zero between species), shape (n_inducing, n_inducing)."""
    columns = inducing_columns(inducing, columns)
    n_inducing = int(sum(len(z) for z in inducing))
    K = np.zeros((n_inducing, n_inducing))
    for s, Z in enumerate(inducing):
        if len(Z):
            K[np.ix_(columns[s], columns[s])] = kernel(Z)
    return K


def jitter_scale(K: np.ndarray) -> float:
    """Return what :func:`cholesky_with_jitter`'s relative jitter multiplies.

    That is the mean diagonal of ``K`` (1 for an empty or non-positive one).
    """
    scale = float(np.mean(np.diag(K))) if len(K) else 1.0
    return scale if scale > 0 else 1.0


def cholesky_with_jitter(K: np.ndarray, jitter: float = JITTER,
                         max_tries: int = 6) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of ``K + ε I``, growing ``ε`` tenfold on failure.

    Returns
    -------
    L : ndarray of shape (n, n)
    used : float
        The jitter that worked, relative to the mean diagonal.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``K`` is not positive definite even with ``jitter * 10**(max_tries - 1)``.
    """
    scale = jitter_scale(K)
    eps = jitter
    for _ in range(max_tries):
        try:
            L = sla.cholesky(K + eps * scale * np.eye(len(K)), lower=True)
            return L, eps
        except np.linalg.LinAlgError:
            eps *= 10.0
    raise np.linalg.LinAlgError(
        f"k_mm is not positive definite even with jitter {eps / 10:.1e} × mean diagonal; "
        "the inducing set may hold duplicate environments"
    )


class WhitenedStatistics(NamedTuple):
    """Everything the likelihood needs, in the eigenbasis of ``W_F``.

    ``W_g = K_w,gᵀ D_g⁻¹ K_w,g`` and ``β_g = K_w,gᵀ D_g⁻¹ y_g`` for the energy
    (``g = E``, ``D_E = diag(N_atoms)``), force (``g = F``, ``D_F = I``) and stress
    (``g = S``, ``D_S = I``) observations. ``W_F = V diag(λ) Vᵀ``;
    ``U = Vᵀ [K_w,Eᵀ D_E^(-1/2), K_w,Sᵀ]``: the energy columns, then the stress
    columns (the few "small" rows that the likelihood handles by Woodbury steps).
    """

    eigenvalues: np.ndarray  # (M,) λ of W_F
    U: np.ndarray  # (M, n_E + n_S)
    beta_E: np.ndarray  # (M,) Vᵀ β_E
    beta_F: np.ndarray  # (M,) Vᵀ β_F
    c_E: float  # y_Eᵀ D_E⁻¹ y_E
    c_F: float  # y_Fᵀ y_F
    n_E: int
    n_F: int
    logdet_D_E: float  # Σ log N_atoms
    V: np.ndarray | None = None  # (M, M) eigenvectors of W_F, kept only when asked
    beta_S: np.ndarray | None = None  # (M,) Vᵀ β_S; None without stress rows
    c_S: float = 0.0  # y_Sᵀ y_S
    n_S: int = 0
    #: ``(U_E U_Eᵀ, U_S U_Sᵀ)`` when the energy and stress rows outnumber ``M`` (the
    #: likelihood then works with ``M × M`` matrices), else None
    grams: tuple | None = None
    #: Columns of ``U`` per kind when they are not one per observation: rows folded
    #: into a triangular factor (:mod:`kernelpot.streaming`), ``R_gᵀ R_g = K_w,gᵀ
    #: D_g⁻¹ K_w,g``; None: ``n_E`` and ``n_S``
    m_E: int | None = None
    m_S: int | None = None

    @property
    def folded(self) -> bool:
        """Return whether ``U``'s columns are folded rows rather than one per observation."""
        return (self.m_E is not None and self.m_E != self.n_E) \
            or (self.m_S is not None and self.m_S != self.n_S)

    def small_grams(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``U_E U_Eᵀ`` and ``U_S U_Sᵀ`` (M × M): the energy and stress Gram matrices."""
        m_E = self.n_E if self.m_E is None else self.m_E
        U_E, U_S = self.U[:, :m_E], self.U[:, m_E:]
        return U_E @ U_E.T, U_S @ U_S.T


def whitened_statistics(Kw_E: np.ndarray, n_atoms_E: np.ndarray, y_E: np.ndarray,
                        Kw_F: np.ndarray, y_F: np.ndarray, keep_basis: bool = False,
                        Kw_S: np.ndarray | None = None,
                        y_S: np.ndarray | None = None) -> WhitenedStatistics:
    """Reduce the whitened design to the likelihood's statistics.

    Parameters
    ----------
    Kw_E : ndarray of shape (n_E, M)
        Whitened energy design rows ``K_E L⁻ᵀ``.
    n_atoms_E : ndarray of shape (n_E,)
        Atoms per structure (the energy noise is ``σ_E² N``).
    y_E : ndarray of shape (n_E,)
        Energies minus the reference energies, eV.
    Kw_F : ndarray of shape (n_F, M)
        Whitened force design rows.
    y_F : ndarray of shape (n_F,)
        Force components, eV/Å.
    keep_basis : bool, default=False
        Keep the eigenvectors ``V`` (needed by :class:`KernelThetaGradient`).
    Kw_S : ndarray of shape (n_S, M), optional
        Whitened stress design rows (six per cell, ASE's Voigt order).
    y_S : ndarray of shape (n_S,), optional
        Stress components, eV/Å³.

    Returns
    -------
    WhitenedStatistics
    """
    return statistics_from_force_gram(Kw_F.T @ Kw_F, Kw_F.T @ y_F, float(y_F @ y_F), len(y_F),
                                      Kw_E, n_atoms_E, y_E, keep_basis, Kw_S, y_S)


def statistics_from_force_gram(W_F: np.ndarray, Kw_F_y: np.ndarray, c_F: float, n_F: int,
                               Kw_E: np.ndarray, n_atoms_E: np.ndarray, y_E: np.ndarray,
                               keep_basis: bool = False, Kw_S: np.ndarray | None = None,
                               y_S: np.ndarray | None = None) -> WhitenedStatistics:
    """Compute :func:`whitened_statistics` from the force rows' Gram matrix.

    The inputs are ``W_F = K_w,Fᵀ K_w,F``, ``K_w,Fᵀ y_F``, ``y_Fᵀ y_F`` and their
    number: a design whose columns are rescaled needs only these rescaled
    (``O(M²)``), not another pass over its rows.

    ``W_F`` is overwritten.
    """
    inv_d = 1.0 / n_atoms_E
    eigenvalues, V = sla.eigh(W_F, overwrite_a=True)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    small = Kw_E.T * np.sqrt(inv_d)[None, :]
    beta_S, c_S, n_S = None, 0.0, 0
    if Kw_S is not None and len(Kw_S):
        y_S = np.asarray(y_S, dtype=np.float64)
        small = np.concatenate([small, Kw_S.T], axis=1)
        beta_S, c_S, n_S = V.T @ (Kw_S.T @ y_S), float(y_S @ y_S), len(y_S)
    U = V.T @ small  # (M, n_E + n_S)
    stats = WhitenedStatistics(
        eigenvalues=eigenvalues,
        U=U,
        beta_E=V.T @ (Kw_E.T @ (inv_d * y_E)),
        beta_F=V.T @ Kw_F_y,
        c_E=float(np.sum(inv_d * y_E**2)),
        c_F=float(c_F),
        n_E=len(y_E),
        n_F=int(n_F),
        logdet_D_E=float(np.sum(np.log(n_atoms_E))),
        V=V if keep_basis else None,
        beta_S=beta_S, c_S=c_S, n_S=n_S,
    )
    if U.shape[1] > U.shape[0]:
        stats = stats._replace(grams=stats.small_grams())
    return stats


def folded_statistics(stats: WhitenedStatistics, n_E: int, logdet_D_E: float, c_E_rest: float,
                      n_S: int, c_S_rest: float) -> WhitenedStatistics:
    """Return statistics built from folded energy and stress rows, with the true counts.

    ``stats`` comes from :func:`statistics_from_force_gram` given rows ``R_g`` with unit
    atom counts and labels ``z_g`` such that ``R_gᵀ R_g = K_w,gᵀ D_g⁻¹ K_w,g`` and
    ``R_gᵀ z_g = K_w,gᵀ D_g⁻¹ y_g`` (the triangular factors of
    :class:`kernelpot.streaming.StackedQR`, or the scaled rows themselves);
    ``c_g_rest = y_gᵀ D_g⁻¹ y_g - |z_g|²`` and the counts are the observations'.
    """
    m_E, m_S = stats.n_E, stats.n_S
    stats = stats._replace(n_E=int(n_E), logdet_D_E=float(logdet_D_E),
                           c_E=stats.c_E + float(c_E_rest), n_S=int(n_S),
                           c_S=stats.c_S + float(c_S_rest), m_E=m_E, m_S=m_S)
    if stats.grams is None and stats.n_E + stats.n_S > len(stats.eigenvalues):
        stats = stats._replace(grams=stats.small_grams())
    return stats


def noise_log_params(log_params: np.ndarray) -> tuple[float, float, float, float]:
    """Split ``log (σ, σ_E, σ_F[, σ_S])``; a missing ``σ_S`` reads as 1 (no stress rows)."""
    log_params = np.asarray(log_params, dtype=np.float64)
    if log_params.shape not in ((3,), (4,)):
        raise ValueError("log_params must be log (σ, σ_E, σ_F) or log (σ, σ_E, σ_F, σ_S); "
                         f"got shape {log_params.shape}")
    log_ss = float(log_params[3]) if len(log_params) == 4 else 0.0
    return float(log_params[0]), float(log_params[1]), float(log_params[2]), log_ss


def log_marginal_likelihood(log_params: np.ndarray, stats: WhitenedStatistics,
                            eval_gradient: bool = False) -> float | tuple[float, np.ndarray]:
    """DTC log marginal likelihood and its gradient.

    Parameters
    ----------
    log_params : ndarray of shape (3,) or (4,)
        ``(log σ, log σ_E, log σ_F, log σ_S)``: signal std (eV), energy noise per
        atom (eV), force noise (eV/Å) and stress noise (eV/Å³). ``σ_S`` may be left
        out when the statistics hold no stress rows.
    stats : WhitenedStatistics
    eval_gradient : bool, default=False

    Returns
    -------
    lml : float
    gradient : ndarray of the shape of ``log_params``
        Only with ``eval_gradient=True``; zero for a noise with no observations.

    Notes
    -----
    ``log p(y) = -½ yᵀ(Q + Λ)⁻¹y - ½ log|Q + Λ| - (n/2) log 2π`` with
    ``Q = σ² K_w K_wᵀ``. By the Woodbury identity ``yᵀ(Q + Λ)⁻¹y = min_w
    |Λ^(-1/2)(y - K_w w)|² + |w|²/σ²``, attained at ``w = σ² A_w⁻¹ K_wᵀΛ⁻¹y``: it is
    evaluated as that sum of non-negative terms (the textbook difference
    ``yᵀΛ⁻¹y - σ² bᵀA_w⁻¹b`` cancels catastrophically when ``σ/σ_g`` is large) and
    differentiated by the envelope theorem. By Sylvester's identity
    ``log|Q + Λ| = log|Λ| + log|A_w|``. In the eigenbasis of ``W_F``,
    ``A_w = diag(d) + U diag(a) Uᵀ`` with ``d = 1 + a_F λ``, ``a_g = σ²/σ_g²`` (``a``
    is ``a_E`` on the energy columns of ``U`` and ``a_S`` on the stress columns); a
    second Woodbury step reduces every solve to the small matrix
    ``S = I + Ū_aᵀ Ū_a``, ``Ū_a = diag(d)^(-1/2) U diag(a)^(1/2)``. Its traces
    give the gradient: ``tr(A_w⁻¹ W_g) = Σ_(j ∈ g) (1 - S⁻¹_jj) / a_j`` for the
    small groups.
    """
    n_params = len(np.asarray(log_params))
    log_sigma, log_se, log_sf, log_ss = noise_log_params(log_params)
    if stats.n_S and n_params == 3:
        raise ValueError("log_marginal_likelihood: the statistics hold stress rows; give "
                         "log (σ, σ_E, σ_F, σ_S)")
    if stats.n_E + stats.n_S > len(stats.eigenvalues) or stats.folded:
        return _log_marginal_likelihood_square(log_params, stats, eval_gradient)
    sigma2 = np.exp(2 * log_sigma)
    se2, sf2, ss2 = np.exp(2 * log_se), np.exp(2 * log_sf), np.exp(2 * log_ss)
    a_E, a_F, a_S = sigma2 / se2, sigma2 / sf2, sigma2 / ss2
    lam = stats.eigenvalues
    d = 1.0 + a_F * lam  # (M,)
    inv_sqrt_d = 1.0 / np.sqrt(d)
    n_E, n_S = stats.n_E, stats.n_S
    a = np.concatenate([np.full(n_E, a_E), np.full(n_S, a_S)])
    U_a = stats.U * inv_sqrt_d[:, None] * np.sqrt(a)[None, :]  # (M, n_E + n_S)
    n_small = n_E + n_S
    S = np.eye(n_small) + U_a.T @ U_a
    failed = (-np.inf, np.zeros(n_params)) if eval_gradient else -np.inf
    try:
        L_S = sla.cholesky(S, lower=True)
    except np.linalg.LinAlgError:
        return failed
    beta_S = stats.beta_S if stats.beta_S is not None else np.zeros_like(stats.beta_E)
    b = stats.beta_E / se2 + stats.beta_F / sf2 + beta_S / ss2  # (M,)
    z = b * inv_sqrt_d
    # A_w⁻¹ b = D^(-1/2) (I - Ū_a S⁻¹ Ū_aᵀ) D^(-1/2) b
    v = (z - U_a @ sla.cho_solve((L_S, True), U_a.T @ z)) * inv_sqrt_d
    w = sigma2 * v  # whitened weights, the minimiser of J below
    # quad = min_w J(w), J = Σ_g |D_g^(-1/2)(y_g - K_w,g w)|² / σ_g² + |w|² / σ²: evaluated
    # from its non-negative parts rather than as yᵀΛ⁻¹y - σ² bᵀA⁻¹b, which cancels
    # catastrophically when σ/σ_g is large
    Uw = stats.U.T @ w
    res_E = max(stats.c_E - 2.0 * float(w @ stats.beta_E) + float(Uw[:n_E] @ Uw[:n_E]), 0.0)
    res_F = max(stats.c_F - 2.0 * float(w @ stats.beta_F) + float(lam @ (w * w)), 0.0)
    res_S = max(stats.c_S - 2.0 * float(w @ beta_S) + float(Uw[n_E:] @ Uw[n_E:]), 0.0) \
        if n_S else 0.0
    ww = float(w @ w)
    quad = res_E / se2 + res_F / sf2 + res_S / ss2 + ww / sigma2
    logdet_A = float(np.sum(np.log(d)) + 2.0 * np.sum(np.log(np.diag(L_S))))
    logdet = (n_E * np.log(se2) + stats.logdet_D_E + stats.n_F * np.log(sf2)
              + n_S * np.log(ss2) + logdet_A)
    n_obs = n_E + stats.n_F + n_S
    lml = -0.5 * quad - 0.5 * logdet - 0.5 * n_obs * _LOG_2PI
    if not np.isfinite(lml):
        return failed
    if not eval_gradient:
        return lml
    # quad: envelope theorem, ∂ min_w J / ∂θ = ∂J/∂θ at the minimiser
    d_quad = np.array([-2.0 * ww / sigma2, -2.0 * res_E / se2, -2.0 * res_F / sf2,
                       -2.0 * res_S / ss2])
    # log|A_w|: traces of A_w⁻¹ W_g (W_F = diag(λ) in this basis)
    S_inv = sla.cho_solve((L_S, True), np.eye(n_small))  # small, explicit on purpose
    per_column = (1.0 - np.diag(S_inv)) / a if n_small else np.zeros(0)
    tr_E, tr_S = float(per_column[:n_E].sum()), float(per_column[n_E:].sum())
    lam_d = lam / d
    tr_F = float(np.sum(lam_d) - np.sum(S_inv * (U_a.T @ (U_a * lam_d[:, None]))))
    # dA/dlog σ = 2 Σ_g a_g W_g; dA/dlog σ_g = -2 a_g W_g
    d_logdet = np.array([2.0 * (a_E * tr_E + a_F * tr_F + a_S * tr_S),
                         2.0 * n_E - 2.0 * a_E * tr_E,
                         2.0 * stats.n_F - 2.0 * a_F * tr_F,
                         2.0 * n_S - 2.0 * a_S * tr_S])
    return lml, (-0.5 * (d_quad + d_logdet))[:n_params]


def _log_marginal_likelihood_square(log_params: np.ndarray, stats: WhitenedStatistics,
                                    eval_gradient: bool) -> float | tuple[float, np.ndarray]:
    """:func:`log_marginal_likelihood` when the energy and stress rows outnumber ``M``.

    The Woodbury step over those rows would hold ``(n_E + n_S)²`` numbers (157 GB for
    20,000 cells with stresses); this form factors ``A_w = diag(1 + a_F λ) + a_E G_E +
    a_S G_S`` (``M × M``, in the eigenbasis of ``W_F``) with the rows' Gram matrices
    ``G_g = U_g U_gᵀ``, and takes the traces of the gradient from ``A_w⁻¹``.
    """
    n_params = len(np.asarray(log_params))
    log_sigma, log_se, log_sf, log_ss = noise_log_params(log_params)
    G_E, G_S = stats.grams if stats.grams is not None else stats.small_grams()
    sigma2 = np.exp(2 * log_sigma)
    se2, sf2, ss2 = np.exp(2 * log_se), np.exp(2 * log_sf), np.exp(2 * log_ss)
    a_E, a_F, a_S = sigma2 / se2, sigma2 / sf2, sigma2 / ss2
    lam = stats.eigenvalues
    A = a_E * G_E + a_S * G_S
    A[np.diag_indices_from(A)] += 1.0 + a_F * lam
    failed = (-np.inf, np.zeros(n_params)) if eval_gradient else -np.inf
    try:
        L = sla.cholesky(A, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return failed
    beta_S = stats.beta_S if stats.beta_S is not None else np.zeros_like(stats.beta_E)
    b = stats.beta_E / se2 + stats.beta_F / sf2 + beta_S / ss2
    w = sigma2 * sla.cho_solve((L, True), b, check_finite=False)
    res_E = max(stats.c_E - 2.0 * float(w @ stats.beta_E) + float(w @ (G_E @ w)), 0.0)
    res_F = max(stats.c_F - 2.0 * float(w @ stats.beta_F) + float(lam @ (w * w)), 0.0)
    res_S = max(stats.c_S - 2.0 * float(w @ beta_S) + float(w @ (G_S @ w)), 0.0) \
        if stats.n_S else 0.0
    ww = float(w @ w)
    quad = res_E / se2 + res_F / sf2 + res_S / ss2 + ww / sigma2
    logdet = (stats.n_E * np.log(se2) + stats.logdet_D_E + stats.n_F * np.log(sf2)
              + stats.n_S * np.log(ss2) + 2.0 * float(np.sum(np.log(np.diag(L)))))
    lml = -0.5 * quad - 0.5 * logdet - 0.5 * (stats.n_E + stats.n_F + stats.n_S) * _LOG_2PI
    if not np.isfinite(lml):
        return failed
    if not eval_gradient:
        return lml
    A_inv = sla.cho_solve((L, True), np.eye(len(lam)), check_finite=False)
    tr_E = float(np.einsum("ij,ij->", A_inv, G_E))
    tr_S = float(np.einsum("ij,ij->", A_inv, G_S))
    tr_F = float(np.diag(A_inv) @ lam)
    d_quad = np.array([-2.0 * ww / sigma2, -2.0 * res_E / se2, -2.0 * res_F / sf2,
                       -2.0 * res_S / ss2])
    d_logdet = np.array([2.0 * (a_E * tr_E + a_F * tr_F + a_S * tr_S),
                         2.0 * stats.n_E - 2.0 * a_E * tr_E,
                         2.0 * stats.n_F - 2.0 * a_F * tr_F,
                         2.0 * stats.n_S - 2.0 * a_S * tr_S])
    return lml, (-0.5 * (d_quad + d_logdet))[:n_params]


class KernelThetaGradient:
    """Gradient of the log marginal likelihood with respect to the kernel's ``theta``.

    The design depends on the kernel's hyperparameters through ``K_nm`` and
    ``k_mm``; with ``Q = σ² K_nm k_mm⁻¹ K_mn``, ``C = Q + Λ``, ``a = C⁻¹ y`` and
    ``B = k_mm⁻¹ K_mn``,

    ``∂ log p / ∂θ = ½ σ² [2 tr(T ∂K_nm/∂θ) - tr(T Bᵀ ∂k_mm/∂θ)]``,
    ``T = B (a aᵀ - C⁻¹) = L⁻ᵀ [w aᵀ / σ² - A_w⁻¹ K_wᵀ Λ⁻¹]``,
    ``T Bᵀ = L⁻ᵀ [w wᵀ / σ⁴ - (I - A_w⁻¹) / σ²] L⁻¹``,

    with the whitened weights ``w = σ² A_w⁻¹ K_wᵀ Λ⁻¹ y``, ``a = Λ⁻¹ (y - K_w w)``
    and ``A_w = R_cᵀ R_c``. ``T`` is never formed: :meth:`add_rows` contracts it
    with the derivative rows of one structure at a time, as
    ``Σ_n a_n k̇_n · L⁻ᵀ w / σ² - Σ_n (L_p⁻¹ k̇_n) · (R_c⁻ᵀ k_w,n) / Λ_n`` with
    ``L_p = L R_cᵀ`` (``O(rows M²)``; memory stays at one design matrix). Both
    factors of the second sum are triangular solves with relative accuracy, which
    keeps the gradient accurate when ``σ / σ_E`` is large (a Woodbury form of
    ``A_w⁻¹`` lost it there: measured sign errors at ``σ/σ_E = 10⁵``).

    Parameters
    ----------
    log_params : ndarray of shape (3,) or (4,)
        ``(log σ, log σ_E, log σ_F[, log σ_S])`` at which to differentiate.
    stats : WhitenedStatistics
        With the eigenvectors (``keep_basis=True``).
    L_mm : ndarray of shape (M, M)
        Lower Cholesky factor of ``k_mm`` used to whiten the design.
    n_theta : int
    """

    def __init__(self, log_params: np.ndarray, stats: WhitenedStatistics, L_mm: np.ndarray,
                 n_theta: int) -> None:
        if stats.V is None:
            raise ValueError("KernelThetaGradient needs statistics with keep_basis=True")
        if stats.folded:
            raise ValueError("KernelThetaGradient needs one column of U per observation "
                             "(statistics of a design held whole)")
        log_sigma, log_se, log_sf, log_ss = noise_log_params(log_params)
        sigma2 = np.exp(2 * log_sigma)
        a_F = sigma2 / np.exp(2 * log_sf)
        a = np.concatenate([np.full(stats.n_E, sigma2 / np.exp(2 * log_se)),
                            np.full(stats.n_S, sigma2 / np.exp(2 * log_ss))])
        V = stats.V
        VU = V @ stats.U  # [K_w,Eᵀ D_E^(-1/2), K_w,Sᵀ]
        A_w = (V * (1.0 + a_F * stats.eigenvalues)[None, :]) @ V.T + (VU * a[None, :]) @ VU.T
        A_w = 0.5 * (A_w + A_w.T)
        R_c = sla.cholesky(A_w, lower=False)  # A_w = R_cᵀ R_c
        b = stats.beta_E / np.exp(2 * log_se) + stats.beta_F / np.exp(2 * log_sf)
        if stats.n_S:
            b = b + stats.beta_S / np.exp(2 * log_ss)
        b = V @ b
        self.w = sigma2 * sla.cho_solve((R_c, False), b)  # whitened weights
        self.sigma2 = float(sigma2)
        self._R_c = R_c
        self._L_p = L_mm @ R_c.T  # lower triangular
        self._v = sla.solve_triangular(L_mm, self.w / sigma2, lower=True, trans="T")
        eye = np.eye(len(b))
        A_inv = sla.cho_solve((R_c, False), eye)
        middle = np.outer(self.w, self.w) / sigma2**2 - (eye - A_inv) / sigma2
        half = sla.solve_triangular(L_mm, middle, lower=True, trans="T")
        self._mm = sla.solve_triangular(L_mm, half.T, lower=True, trans="T").T  # L⁻ᵀ · L⁻¹
        self._rows_term = np.zeros(n_theta)

    def add_rows(self, d_rows: np.ndarray, Kw_rows: np.ndarray, y_rows: np.ndarray,
                 noise_var: np.ndarray) -> None:
        """Accumulate ``tr(T ∂K_nm/∂θ)`` over some observations.

        Parameters
        ----------
        d_rows : ndarray of shape (r, M, n_theta)
            ``∂K_nm/∂θ`` of these observations (unwhitened, kernel units).
        Kw_rows : ndarray of shape (r, M)
            Their whitened design rows.
        y_rows : ndarray of shape (r,)
        noise_var : ndarray of shape (r,)
            Their noise variances ``Λ``.
        """
        r, M, n_theta = d_rows.shape
        a = (y_rows - Kw_rows @ self.w) / noise_var
        self._rows_term += np.einsum("rmt,m,r->t", d_rows, self._v, a)
        # R_c⁻ᵀ k_w,n for every row, one solve
        kw = sla.solve_triangular(self._R_c, Kw_rows.T, lower=False, trans="T",
                                  check_finite=False)  # (M, r)
        kw /= noise_var[None, :]
        for t in range(n_theta):
            kd = sla.solve_triangular(self._L_p, d_rows[:, :, t].T, lower=True,
                                      check_finite=False)  # (M, r)
            self._rows_term[t] -= float(np.einsum("mr,mr->", kd, kw))

    def gradient(self, d_kmm: np.ndarray) -> np.ndarray:
        """Finish: the gradient, shape (n_theta,), given ``∂k_mm/∂θ`` (M, M, n_theta)."""
        mm_term = np.einsum("ij,ijt->t", self._mm, d_kmm)
        return 0.5 * self.sigma2 * (2.0 * self._rows_term - mm_term)


def inducing_kernel_gradient(inducing: list[np.ndarray], kernel: Kernel,
                             columns: list[np.ndarray] | None = None) -> np.ndarray:
    """``∂k_mm/∂θ`` (zero between species), shape (n_inducing, n_inducing, n_theta)."""
    columns = inducing_columns(inducing, columns)
    n_inducing = int(sum(len(z) for z in inducing))
    dK = np.zeros((n_inducing, n_inducing, kernel.n_theta))
    for s, Z in enumerate(inducing):
        if len(Z):
            dK[np.ix_(columns[s], columns[s])] = kernel(Z, eval_gradient=True)[1]
    return dK

class Posterior(NamedTuple):
    """Fitted posterior over the inducing values.

    Attributes
    ----------
    weights : ndarray of shape (M,)
        Predictive mean of a design row ``k`` is ``k @ weights``.
    L_mm : ndarray of shape (M, M)
        Lower Cholesky factor of ``k_mm`` (with jitter).
    R_w : ndarray of shape (M, M)
        Upper triangular factor of the whitened precision, ``R_wᵀ R_w = I + σ² K_wᵀ
        Λ⁻¹ K_w`` with ``K_w = K_nm L_mm⁻ᵀ``: the posterior variance of a design row
        ``k`` is ``σ² |R_w⁻ᵀ L_mm⁻¹ k|²``. Its singular values are at least 1.
    """

    weights: np.ndarray
    L_mm: np.ndarray
    R_w: np.ndarray


def solve_posterior(design: np.ndarray, n_rows: int, L_mm: np.ndarray, noise_std: np.ndarray,
                    y: np.ndarray, sigma: float) -> Posterior:
    """Solve the DTC system by an economic QR of the stacked whitened design.

    Parameters
    ----------
    design : ndarray of shape (n_rows + M, M)
        Rows ``[:n_rows]`` hold the whitened design ``K_w``; the last ``M`` rows
        are scratch space. Overwritten.
    n_rows : int
    L_mm : ndarray of shape (M, M)
    noise_std : ndarray of shape (n_rows,)
        Noise std of each observation (``σ_E √N`` or ``σ_F``).
    y : ndarray of shape (n_rows,)
    sigma : float
        Signal std ``σ``.

    Returns
    -------
    Posterior
    """
    n_inducing = design.shape[1]
    design[:n_rows] *= (sigma / noise_std)[:, None]
    design[n_rows:] = np.eye(n_inducing)
    rhs = np.zeros((1, n_rows + n_inducing))
    rhs[0, :n_rows] = y / noise_std
    qty, R = sla.qr_multiply(design, rhs, mode="right", overwrite_a=True)
    qty = qty.ravel()[:n_inducing]
    # A_w = Rᵀ R; w_w = σ² A_w⁻¹ K_wᵀ Λ⁻¹ y = σ R⁻¹ Qᵀ [Λ^(-1/2) y; 0]
    w_white = sigma * sla.solve_triangular(R, qty, lower=False)
    weights = sla.solve_triangular(L_mm, w_white, lower=True, trans="T")
    return Posterior(weights, L_mm, np.triu(R))


def variance_terms(rows: np.ndarray, posterior: Posterior,
                   sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior and projection terms of the epistemic variance of design rows.

    Parameters
    ----------
    rows : ndarray of shape (n, M)
        Design rows (energy or force) of the quantities to predict.
    posterior : Posterior
    sigma : float

    Returns
    -------
    posterior_var : ndarray of shape (n,)
        ``σ² |R_w⁻ᵀ L_mm⁻¹ k|²``: the uncertainty of the inducing values.
    projected_prior : ndarray of shape (n,)
        ``σ² |L_mm⁻¹ k|²``: the part of the prior variance the inducing set
        spans; ``prior - projected_prior`` is the DTC ``k_** - q_**`` term.
    """
    if rows.size == 0:
        return np.zeros(len(rows)), np.zeros(len(rows))
    proj = sla.solve_triangular(posterior.L_mm, rows.T, lower=True, check_finite=False)
    post = sla.solve_triangular(posterior.R_w, proj, lower=False, trans="T",
                                check_finite=False)
    sigma2 = sigma**2
    return sigma2 * np.einsum("mn,mn->n", post, post), sigma2 * np.einsum("mn,mn->n", proj, proj)


def prior_variances(result: DescriptorResult, species_index: np.ndarray, n_species: int,
                    kernel: Kernel, energy: bool = True, forces: bool = True,
                    weights: ArrayLike | None = None
                    ) -> tuple[float | None, np.ndarray | None]:
    """Prior variances (in kernel units, without ``σ²``) of a structure's energy and forces.

    ``weights`` (one per element, default 1) multiply each element's part: with the
    per-element signal variances they give the prior variances with ``σ_s²``.

    Returns
    -------
    energy : float or None
        ``Σ_i Σ_i' k(x_i, x_i')`` over same-species pairs of atoms.
    forces : ndarray of shape (n_atoms, 3) or None
        ``Σ_i Σ_i' (∂x_i/∂r_jc)ᵀ H(x_i, x_i') (∂x_i'/∂r_jc)`` over same-species
        centres ``i, i'`` whose features atom ``j`` moves.
    """
    X = result.features
    weights = np.ones(n_species) if weights is None else np.asarray(weights, dtype=np.float64)
    energy_var = None
    if energy:
        energy_var = 0.0
        for s in range(n_species):
            atoms_s = np.flatnonzero(species_index == s)
            if atoms_s.size:
                energy_var += weights[s] * float(kernel(X[atoms_s]).sum())
    force_var = None
    if forces:
        n_atoms = _n_moved(result)
        force_var = np.zeros((n_atoms, 3))
        order = np.argsort(result.pairs[:, 1], kind="stable")
        starts = np.searchsorted(result.pairs[order, 1], np.arange(n_atoms + 1))
        for j in range(n_atoms):
            p = order[starts[j]:starts[j + 1]]
            centres = result.pairs[p, 0]
            for s in range(n_species):
                sel = species_index[centres] == s
                if not np.any(sel):
                    continue
                force_var[j] += weights[s] * kernel.contracted_hessian_sums(
                    X[centres[sel]], result.gradients[p[sel]])
    return energy_var, force_var


def clip_variance(var: np.ndarray, what: str, prior: np.ndarray | None = None,
                  signal_var: float | None = None) -> np.ndarray:
    """Clip round-off negative variances to zero, warning when they are not tiny.

    Tiny means above ``-1e-8`` times the largest variance, or the value's own prior
    variance when ``prior`` (the variance before the data, from which ``var`` was
    subtracted; same shape) is given: a model that is sure everywhere has posterior
    variances at the round-off of their priors, and their sign is noise. A prior that
    vanishes by symmetry (the forces of a perfect lattice) leaves no scale to compare
    with, so every value is also tiny above a floor: ``-1e-14`` times the signal variance
    ``signal_var`` (the prior's terms are of its order before they cancel), or ``-1e-16``
    (a std of 1e-8 in eV-based units) without one. The floor decides for priors below
    about 1e-6 of the signal variance.
    """
    var = np.asarray(var, dtype=np.float64)
    negative = var < 0
    if np.any(negative):
        worst = float(var[negative].min())
        if prior is not None:  # each value against its own prior (energy rows dwarf forces)
            scale = np.broadcast_to(np.abs(np.asarray(prior, dtype=np.float64)), var.shape)
        else:
            scale = float(np.max(np.abs(var))) if var.size else 0.0
        floor = 1e-16 if signal_var is None else max(1e-16, 1e-14 * float(signal_var))
        if np.any(var < -np.maximum(1e-8 * scale, floor)):
            warnings.warn(f"{what}: {int(negative.sum())} negative variances clipped to 0 "
                          f"(most negative {worst:.2e})", RuntimeWarning, stacklevel=3)
        var = np.where(negative, 0.0, var)
    return var


#: Largest ``ε = ‖E R_w⁻¹‖_F`` (``E``: the float32 rounding of ``R_w``) for which a model
#: file holds ``R_w`` in float32. Every posterior variance term read back is then within
#: a factor ``(1 ± ε)⁻²`` of the saved one, so the raw epistemic variance within 1 % and
#: its std within 0.5 %; a calibrated std with the map's exponent ``p`` within ``p / 2``
#: % (the map allows ``p ≤ 5``). The issue-21 case (80 Cu₃Au cells, M = 2,560, noise-free
#: labels) measured ``ε`` = 3.8e-4 to 3.8e-3 over fits, and its stds on 20 test cells
#: moved by at most 8e-6 relative.
FLOAT32_FACTOR_TOLERANCE = 5e-3


def packed_whitened_factor(R_w: np.ndarray) -> tuple[np.ndarray, float]:
    """Return ``R_w``'s upper triangle, packed, in float32 where that keeps every variance.

    Read back, a rounded factor ``R_w + E`` gives ``|(R_w + E)⁻ᵀ v| = |(I + R_w⁻ᵀ Eᵀ)⁻¹
    R_w⁻ᵀ v|``, within ``1 ± ε`` times ``|R_w⁻ᵀ v|`` for every ``v`` when ``ε = ‖E
    R_w⁻¹‖₂ < 1``. The Frobenius norm bounds ``ε`` from above at the cost of one
    triangular solve; float32 is kept when it is at most
    :data:`FLOAT32_FACTOR_TOLERANCE`, float64 otherwise.

    Parameters
    ----------
    R_w : ndarray of shape (M, M)
        Upper triangular (:class:`Posterior`).

    Returns
    -------
    packed : ndarray of shape (M (M + 1) / 2,)
        The triangle column by column (:func:`pack_lower` of ``R_wᵀ``), float32 or
        float64.
    bound : float
        The bound ``‖E R_w⁻¹‖_F`` of the float32 rounding (0 for ``M = 0``).
    """
    packed = pack_lower(R_w.T)
    squares = 0.0
    for start in range(0, len(R_w), 512):  # E's rows in blocks: no M × M temporaries
        rows = R_w[start:start + 512]
        rounding = rows.astype(np.float32).astype(np.float64) - rows
        squares += float(np.sum(sla.solve_triangular(R_w, rounding.T, lower=False, trans="T",
                                                     check_finite=False) ** 2))
    bound = float(np.sqrt(squares))
    if bound <= FLOAT32_FACTOR_TOLERANCE:
        return packed.astype(np.float32), bound
    return packed, bound


def unpacked_whitened_factor(values: np.ndarray, M: int, what: str) -> np.ndarray:
    """Inverse of :func:`packed_whitened_factor` (in float64); check it.

    Raises
    ------
    ValueError
        If the values are not floats, not finite, of the wrong length, or have a
        diagonal entry below 1/2 in magnitude (the factor's singular values are at
        least 1, so every diagonal entry is too).
    """
    if values.dtype not in (np.float32, np.float64):
        raise ValueError(f"load: {what} holds a whitened factor of dtype {values.dtype}")
    R_w = np.ascontiguousarray(unpack_lower(values, M, what).T)
    diagonal = np.abs(np.diag(R_w))
    if not np.all(np.isfinite(values)) or np.any(diagonal < 0.5):
        raise ValueError(f"load: {what} holds a malformed whitened factor (entries not "
                         "finite, or a diagonal entry below 1/2)")
    return R_w


def pack_lower(L: np.ndarray) -> np.ndarray:
    """Return the lower triangle of a lower-triangular matrix, row by row.

    Row by row, so that no index arrays or copies of the square are made (an exact
    model's factor holds every observation's row).
    """
    return _pack_rows(L, np.zeros(len(L), dtype=np.int64))


def unpack_lower(values: np.ndarray, M: int, what: str) -> np.ndarray:
    """Inverse of :func:`pack_lower` for an ``M × M`` matrix; check the length."""
    if values.ndim != 1 or len(values) != M * (M + 1) // 2:
        raise ValueError(f"load: {what} holds a packed factor of shape {values.shape}; "
                         f"{M} weights need {M * (M + 1) // 2} values")
    return _unpack_rows(values, np.zeros(M, dtype=np.int64))


def pack_envelope(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return each row of a lower-triangular matrix from its first nonzero entry on.

    A block-diagonal factor (a sparse model's ``L_mm``: no kernel between inducing
    environments of different elements) keeps its blocks only; nothing nonzero is
    dropped. Returns ``(values, first)``: the rows' entries ``first[i] … i`` one after the
    other, and each row's first column (``i`` for a row of zeros).
    """
    first = np.empty(len(L), dtype=np.int64)
    for i, row in enumerate(L):
        nonzero = np.flatnonzero(row[:i + 1])
        first[i] = nonzero[0] if nonzero.size else i
    return _pack_rows(L, first), first


def unpack_envelope(values: np.ndarray, first: np.ndarray, M: int, what: str) -> np.ndarray:
    """Inverse of :func:`pack_envelope` for an ``M × M`` matrix; check the arrays."""
    first = np.asarray(first)
    if first.shape != (M,) or first.dtype.kind not in "iu" or np.any(first < 0) \
            or np.any(first > np.arange(M)):
        raise ValueError(f"load: {what} holds a factor's row starts of shape {first.shape} "
                         f"that do not fit {M} weights")
    needed = int(np.sum(np.arange(1, M + 1) - first))
    if values.ndim != 1 or len(values) != needed:
        raise ValueError(f"load: {what} holds a factor of shape {values.shape}; its row "
                         f"starts need {needed} values")
    return _unpack_rows(values, first)


def _pack_rows(L: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Return the entries ``first[i] … i`` of each row of ``L``, one row after the other."""
    n = len(L)
    packed = np.empty(int(np.sum(np.arange(1, n + 1) - first)))
    start = 0
    for i in range(n):
        if L[i, i + 1:].any():  # the factors are lower triangular by construction
            raise ValueError("pack: the matrix has entries above its diagonal")
        width = i + 1 - first[i]
        packed[start:start + width] = L[i, first[i]:i + 1]
        start += width
    return packed


def _unpack_rows(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_rows` (lengths checked by the caller)."""
    M = len(first)
    L = np.zeros((M, M))
    start = 0
    for i in range(M):
        width = i + 1 - first[i]
        L[i, first[i]:i + 1] = values[start:start + width]
        start += width
    return L
