"""Search the two-body term's prior std (with the signal std) by likelihood.

The search serves the sparse model's fit. The fit builds its whitened design once,
with the pair columns at the given ``prior_std``; :func:`search_prior_std` finds the
prior std (and signal std) that maximise the marginal likelihood without another pass
over the structures.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg as sla
from scipy.optimize import minimize, minimize_scalar
from sklearn.exceptions import ConvergenceWarning

from kernelpot import gp

if TYPE_CHECKING:
    from kernelpot.two_body import TwoBody

logger = logging.getLogger(__name__)

#: Rounds of the coordinate ascent over the noise levels and (σ, prior_std).
ROUNDS = 12


def pair_factor(prior_std: float | np.ndarray, jitter_abs: float) -> float | np.ndarray:
    """Return the diagonal of the two-body block of ``k_mm``'s Cholesky factor.

    ``k_mm`` holds ``prior_std² I`` there, plus the absolute jitter ``jitter_abs`` of
    the GP block.
    """
    return np.sqrt(np.square(prior_std) + jitter_abs)


def whitened_pair_scale(prior_std: float | np.ndarray,
                        jitter_abs: float) -> float | np.ndarray:
    """Return the factor between the whitened design's pair columns and the basis rows.

    The design holds ``prior_std² × basis rows`` there, divided by :func:`pair_factor`.
    """
    return np.square(prior_std) / pair_factor(prior_std, jitter_abs)


class _Profile:
    """Profile of the log likelihood over ``(σ, prior_std)`` at one round's noise levels.

    Holds the terms of :func:`search_prior_std`'s Schur complement that depend on
    neither ``σ`` nor the prior std: the eigenvalues ``λ`` of the GP block ``G_gg``
    (clipped at zero), ``C = Vᵀ G_gb``, ``q = Vᵀ b_g``, ``G_bb`` and ``b_b``.
    ``column_scale`` maps a log prior std to the pair columns' scale ``c``.
    """

    def __init__(self, G, b, gp_block, pair_block, column_scale):
        lam, V = sla.eigh(G[gp_block, gp_block])
        self.lam = np.maximum(lam, 0.0)
        self.C = V.T @ G[gp_block, pair_block]
        self.q = V.T @ b[gp_block]
        self.G_bb, self.b_b = G[pair_block, pair_block], b[pair_block]
        self.column_scale = column_scale

    def at_sigma(self, log_sigma):
        """Return what the profile needs at one σ.

        That is the GP block's terms, and H and ρ in the eigenbasis of H (``t``,
        ``(Uᵀρ)²``), which do not depend on the prior std.
        """
        C, q, lam, G_bb, b_b = self.C, self.q, self.lam, self.G_bb, self.b_b
        a = np.exp(2 * log_sigma)
        h = 1.0 / (1.0 + a * lam)
        H = G_bb - a * (C.T * h[None, :]) @ C
        rho = b_b - a * (C.T @ (h * q))
        t, U = sla.eigh(0.5 * (H + H.T))
        gp_part = 0.5 * a * float(h @ q**2) - 0.5 * float(np.sum(np.log1p(a * lam)))
        return a, gp_part, np.maximum(t, 0.0), (U.T @ rho) ** 2

    def negative(self, log_c, parts):
        """Return minus the log likelihood (up to noise-only terms) at prior stds ``exp(log_c)``.

        Vectorised over ``log_c``; ``parts`` is :meth:`at_sigma` at the σ wanted.
        """
        a, gp_part, t, rho2 = parts
        p = (a * self.column_scale(np.atleast_1d(log_c)) ** 2)[:, None]
        value = gp_part + 0.5 * np.sum(p * rho2 / (1.0 + p * t) - np.log1p(p * t), axis=1)
        return -value if np.ndim(log_c) else -float(value[0])


def _maximise_profile(profile, log_sigma, fit_sigma, sigma_bounds, low, high):
    """Return the log ``(σ, prior_std)`` that maximise ``profile``'s likelihood.

    The log prior std is searched on a grid of 401 points over ``[low, high]`` at
    ``log_sigma``, then refined with the log σ by Nelder–Mead within ``sigma_bounds``
    when ``fit_sigma``, else alone by Brent's method between the grid's neighbours of
    its best point. A refinement that does no better than the grid is dropped.
    """
    here = profile.at_sigma(log_sigma)
    grid = np.linspace(low, high, 401)
    values = profile.negative(grid, here)
    k = int(np.argmin(values))
    if fit_sigma:
        x0 = np.array([log_sigma, grid[k]])
        upper = np.array([sigma_bounds[1], high])
        # a simplex of steps of 0.5 in log, pointing into the bounds
        simplex = np.vstack([x0, x0 + np.diag(np.where(x0 + 0.5 <= upper, 0.5, -0.5))])
        refined = minimize(lambda x: profile.negative(x[1], profile.at_sigma(x[0])), x0,
                           method="Nelder-Mead",
                           bounds=[sigma_bounds, (low, high)],
                           options={"xatol": 1e-3, "fatol": 1e-6,
                                    "initial_simplex": simplex})
        new_sigma, new = (refined.x if refined.fun <= values[k]
                          else (log_sigma, grid[k]))
        return new_sigma, new
    refined = minimize_scalar(
        lambda g: profile.negative(g, here),
        bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 400)]), method="bounded",
        options={"xatol": 1e-3})
    return log_sigma, (float(refined.x) if refined.fun <= values[k] else grid[k])


def search_prior_std(design: np.ndarray, W_F: np.ndarray, n_E: int, n_pair: int,
                     pair: TwoBody, n_atoms_E: np.ndarray, y_E: np.ndarray, y_F: np.ndarray,
                     log_params: np.ndarray, free: Sequence[bool],
                     stats: gp.WhitenedStatistics, jitter_abs: float,
                     optimize: Callable[[gp.WhitenedStatistics, np.ndarray], np.ndarray],
                     signal_std_bounds: tuple[float, float],
                     owner: str, y_S: np.ndarray | None = None,
                     ) -> tuple[float, np.ndarray, gp.WhitenedStatistics]:
    """Maximise the likelihood over the two-body term's ``prior_std`` and the noise levels.

    Coordinate ascent in two blocks: ``(σ, σ_E, σ_F, σ_S)`` by ``optimize(stats, start)``
    (the estimator's optimiser over the ``free`` ones) at the current ``prior_std``;
    then ``(σ, prior_std)`` together at those noise levels, until neither moves by more
    than 2 % (at most ``ROUNDS`` rounds, with a ``ConvergenceWarning`` if that is not
    enough). The second block moves ``σ`` with
    ``prior_std`` because the pair coefficients' prior std is their product: one at
    a time, the two can only creep along that ridge.

    At fixed noise levels, with ``G = W_E / σ_E² + W_F / σ_F² + W_S / σ_S²`` (``W_g``
    the Gram matrices of the whitened design's rows; the stress rows ``y_S`` follow
    the force rows) and ``b`` its right-hand side, the
    design's columns scaled by ``D = diag(√a, √p)`` (``a = σ²`` on the GP block,
    ``p = σ² c²`` on the pair block, ``c`` the pair columns' scale against the
    design's) give ``A_w = I + D G D``. In the eigenbasis ``G_gg = V diag(λ) Vᵀ``
    of the GP block (one ``eigh`` per round), with ``h = 1 / (1 + a λ)``,
    ``C = Vᵀ G_gb`` and ``q = Vᵀ b_g``, the Schur complement on the pair block gives
    ``log|A_w| = Σ log(1 + a λ) + log|I + p H|`` and
    ``(Db)ᵀ A_w⁻¹ (Db) = a Σ h q² + p ρᵀ (I + p H)⁻¹ ρ``, ``H = G_bb - a Cᵀ diag(h) C``,
    ``ρ = b_b - a Cᵀ (h q)``: ``O(M n_pair²)`` per value of ``σ`` (then, in the
    eigenbasis of ``H``, ``O(n_pair)`` per value of ``prior_std``). ``prior_std`` is searched
    on a log grid within ``prior_std_bounds`` at the current ``σ``, then refined with
    ``σ`` by Nelder–Mead (or Brent's method when ``σ`` is fixed). ``stats`` are the
    design's statistics; with the jitter ``j`` of ``k_mm`` a prior std ``p`` makes
    the whitened pair columns ``p² / √(p² + j)`` times the basis rows, and the
    caller rescales the design and the factor of ``k_mm`` to the result. ``W_F`` is
    the Gram matrix of the design's force rows. ``free`` says which of ``(σ, σ_E, σ_F, σ_S)``
    are fitted (σ is moved with the prior std only when it is); ``owner`` names the
    estimator in logs and warnings.

    Returns
    -------
    prior_std : float
    log_params : ndarray of shape (4,)
        ``log (σ, σ_E, σ_F, σ_S)`` at it (a start for the final fit).
    stats : WhitenedStatistics
        Of the design with its pair columns rescaled to ``prior_std``.
    """
    M = design.shape[1]
    gp_block, pair_block = slice(0, M - n_pair), slice(M - n_pair, M)
    y_S = np.zeros(0) if y_S is None else np.asarray(y_S, dtype=np.float64)
    n_EF = n_E + len(y_F)
    Kw_E, Kw_F, Kw_S = design[:n_E], design[n_E:n_EF], design[n_EF:n_EF + len(y_S)]
    inv_d = 1.0 / n_atoms_E
    W_E = (Kw_E.T * inv_d[None, :]) @ Kw_E
    W_S = Kw_S.T @ Kw_S
    beta_E, beta_F, beta_S = Kw_E.T @ (inv_d * y_E), Kw_F.T @ y_F, Kw_S.T @ y_S
    reference = float(pair.prior_std)  # the scale the design was built with

    def column_scale(log_std):
        return (whitened_pair_scale(np.exp(log_std), jitter_abs)
                / whitened_pair_scale(reference, jitter_abs))

    def statistics_at(log_std):
        scale = np.ones(M)
        scale[pair_block] = column_scale(log_std)
        return gp.statistics_from_force_gram(
            W_F * scale[:, None] * scale[None, :], beta_F * scale, float(y_F @ y_F),
            len(y_F), Kw_E * scale[None, :], n_atoms_E, y_E, Kw_S=Kw_S * scale[None, :],
            y_S=y_S)

    low, high = np.log(np.asarray(pair.prior_std_bounds, dtype=float))
    sigma_bounds = tuple(np.log(np.asarray(signal_std_bounds, dtype=float)))
    log_std = np.log(reference)
    inner = np.array(log_params)
    for round_ in range(ROUNDS):
        if round_:  # the first round has the design's own statistics
            stats = statistics_at(log_std)
        inner = optimize(stats, inner)
        var_E, var_F, var_S = np.exp(2 * inner[1:4])
        G = W_E / var_E + W_F / var_F + W_S / var_S
        b = beta_E / var_E + beta_F / var_F + beta_S / var_S
        profile = _Profile(G, b, gp_block, pair_block, column_scale)
        new_sigma, new = _maximise_profile(profile, inner[0], free[0], sigma_bounds,
                                           low, high)
        logger.info("%s: two-body prior_std %.4g -> %.4g (σ %.4g -> %.4g)",
                    owner, np.exp(log_std), np.exp(new), np.exp(inner[0]),
                    np.exp(new_sigma))
        if abs(new - log_std) < 0.02 and abs(new_sigma - inner[0]) < 0.02:
            break  # converged: keep the value the stats are at
        log_std, inner[0] = float(new), float(new_sigma)
    else:
        warnings.warn(f"{owner}: the two-body prior_std search did not "
                      f"converge in {ROUNDS} rounds; keeping prior_std = "
                      f"{np.exp(log_std):.4g}", ConvergenceWarning, stacklevel=4)
        stats = statistics_at(log_std)
    return float(np.exp(log_std)), inner, stats
