"""Low-rank updates of a fitted sparse GP: new observations and new inducing points.

The state keeps the whitened design ``K_w = K L⁻ᵀ`` (rows: observations, columns:
inducing environments in insertion order), the labels, the per-row noise std, the
factor ``L`` of ``k_mm`` and the upper factor ``R`` of ``A_w = I + σ² K_wᵀΛ⁻¹K_w``
with ``b = K_wᵀΛ⁻¹y``. Then (see :mod:`kernelpot.gp`) the whitened weights are
``w = σ² A_w⁻¹ b`` and the posterior factor is ``L Rᵀ``.

* New rows ``k`` (whitened): ``R`` becomes the R factor of ``[R; σ Λ^(-1/2) k]``, an
  ``O(M² n_new)`` QR update; ``b`` gains ``kᵀΛ⁻¹y``.
* New columns (inducing environments): ``L`` and ``R`` grow by block Cholesky steps,
  ``O(n M m_new + M² m_new)``; the old whitened columns do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from kernelpot import gp


@dataclass
class TrainingState:
    """What an incremental model keeps of its training data."""

    Kw: np.ndarray  # (n, M) whitened design
    y: np.ndarray  # (n,) labels minus reference energies
    noise_std: np.ndarray  # (n,) per-row noise std at the current hyperparameters
    is_energy: np.ndarray  # (n,) bool
    n_atoms_row: np.ndarray  # (n,) atoms of the structure (energy rows), 1 for forces
    L_mm: np.ndarray  # (M, M)
    R: np.ndarray  # (M, M) upper, Rᵀ R = A_w
    b: np.ndarray  # (M,)
    frames: list = field(default_factory=list)
    results: list = field(default_factory=list)  # DescriptorResult per frame
    species_index: list = field(default_factory=list)
    energy_row: list = field(default_factory=list)  # row of each frame's energy, or -1
    force_row: list = field(default_factory=list)  # first force row of each frame, or -1
    prior: np.ndarray | None = None  # (n,) prior variance over σ² of each row, for LOSO
    stress_row: list = field(default_factory=list)  # first stress row of each frame, or -1
    is_stress: np.ndarray | None = None  # (n,) bool; None: no stress rows


def stress_mask(state: TrainingState) -> np.ndarray:
    """Return which stored rows are stress components, bool of shape (n,)."""
    if state.is_stress is None:
        return np.zeros(len(state.y), dtype=bool)
    return state.is_stress


def force_mask(state: TrainingState) -> np.ndarray:
    """Return which stored rows are force components, bool of shape (n,)."""
    return ~state.is_energy & ~stress_mask(state)


def factor(Kw: np.ndarray, noise_std: np.ndarray, y: np.ndarray,
           sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``R`` (upper, ``RᵀR = A_w``) and ``b`` from a whitened design, by economic QR."""
    n, M = Kw.shape
    stacked = np.empty((n + M, M))
    stacked[:n] = Kw * (sigma / noise_std)[:, None]
    stacked[n:] = np.eye(M)
    R = sla.qr(stacked, mode="r", overwrite_a=True, check_finite=False)[0][:M]
    b = Kw.T @ (y / noise_std**2)
    return R, b


def posterior(state: TrainingState, sigma: float) -> gp.Posterior:
    """Posterior weights and factors of the current state."""
    w_white = sigma**2 * sla.cho_solve((state.R, False), state.b, check_finite=False)
    weights = sla.solve_triangular(state.L_mm, w_white, lower=True, trans="T",
                                   check_finite=False)
    return gp.Posterior(weights, state.L_mm, state.R)  # updates replace state.R, never write it


def add_rows(state: TrainingState, K_new: np.ndarray, y_new: np.ndarray,
             noise_std_new: np.ndarray, is_energy: np.ndarray, n_atoms_row: np.ndarray,
             sigma: float, is_stress: np.ndarray | None = None) -> None:
    """Append observations (unwhitened design rows ``K_new``, shape (k, M)).

    ``is_stress`` marks the new stress rows (``None``: none).
    """
    new_stress = np.zeros(len(y_new), dtype=bool) if is_stress is None \
        else np.asarray(is_stress, dtype=bool)
    if state.is_stress is not None or new_stress.any():
        state.is_stress = np.concatenate([stress_mask(state), new_stress])
    Kw_new = sla.solve_triangular(state.L_mm, K_new.T, lower=True, check_finite=False).T
    stacked = np.vstack([state.R, Kw_new * (sigma / noise_std_new)[:, None]])
    state.R = sla.qr(stacked, mode="r", check_finite=False)[0][: state.R.shape[0]]
    state.b = state.b + Kw_new.T @ (y_new / noise_std_new**2)
    state.Kw = np.vstack([state.Kw, Kw_new])
    state.y = np.concatenate([state.y, y_new])
    state.noise_std = np.concatenate([state.noise_std, noise_std_new])
    state.is_energy = np.concatenate([state.is_energy, is_energy])
    state.n_atoms_row = np.concatenate([state.n_atoms_row, n_atoms_row])


def add_columns(state: TrainingState, K_extra: np.ndarray, k_cross: np.ndarray,
                k_new: np.ndarray, sigma: float, jitter_abs: float) -> None:
    """Append inducing environments.

    Parameters
    ----------
    K_extra : ndarray of shape (n, m)
        Design columns of every stored observation for the new environments.
    k_cross : ndarray of shape (M, m)
        Kernel between the old and the new inducing environments.
    k_new : ndarray of shape (m, m)
        Kernel among the new ones.
    sigma : float
    jitter_abs : float
        The absolute jitter on the diagonal of the model's ``k_mm``.
    """
    M = state.L_mm.shape[0]
    m = k_new.shape[0]
    B = sla.solve_triangular(state.L_mm, k_cross, lower=True, check_finite=False)  # (M, m)
    schur = k_new + jitter_abs * np.eye(m) - B.T @ B  # as in k_mm + jitter of a fresh fit
    try:
        L22 = sla.cholesky(schur, lower=True, check_finite=False)
    except np.linalg.LinAlgError:  # a new environment (nearly) repeats an old one
        L22, _ = gp.cholesky_with_jitter(schur)
    L_mm = np.zeros((M + m, M + m))
    L_mm[:M, :M] = state.L_mm
    L_mm[M:, :M] = B.T
    L_mm[M:, M:] = L22
    C = sla.solve_triangular(L22, (K_extra - state.Kw @ B).T, lower=True,
                             check_finite=False).T  # (n, m) new whitened columns
    inv_var = 1.0 / state.noise_std**2
    A12 = sigma**2 * state.Kw.T @ (C * inv_var[:, None])  # (M, m)
    A22 = np.eye(m) + sigma**2 * C.T @ (C * inv_var[:, None])
    R12 = sla.solve_triangular(state.R, A12, lower=False, trans="T", check_finite=False)
    R22 = sla.cholesky(A22 - R12.T @ R12, lower=False, check_finite=False)
    R = np.zeros((M + m, M + m))
    R[:M, :M] = state.R
    R[:M, M:] = R12
    R[M:, M:] = R22
    state.R = R
    state.L_mm = L_mm
    state.b = np.concatenate([state.b, C.T @ (state.y * inv_var)])
    state.Kw = np.hstack([state.Kw, C])


def statistics(state: TrainingState) -> gp.WhitenedStatistics:
    """Likelihood statistics of the stored design (for re-optimising the noise)."""
    energy, stress, force = state.is_energy, stress_mask(state), force_mask(state)
    return gp.whitened_statistics(state.Kw[energy], state.n_atoms_row[energy].astype(float),
                                  state.y[energy], state.Kw[force], state.y[force],
                                  Kw_S=state.Kw[stress], y_S=state.y[stress])
