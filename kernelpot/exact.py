"""Exact Gaussian process over local environments, in the energy and force domain.

The model is the one of :mod:`kernelpot.gp` (a structure's energy is the sum of
local energies ``ε(x_i)`` drawn from a GP with covariance ``σ² k(x, x')`` between
environments of the same element), without the inducing-point approximation:
every labelled energy and force component is an observation, and their joint
covariance is assembled from the kernel and its derivatives. With ``g_p`` a row of
a descriptor Jacobian (``∂x_i/∂r_jc``, environment ``i = i_p``, force component
``jc = f_p``):

* ``cov(E_A, E_B) = σ² Σ_{i∈A} Σ_{j∈B} k(x_i, x_j)``;
* ``cov(E_A, F_q) = -σ² Σ_{i∈A} ∂k(x_i, x_{j_q})/∂y · g_q``;
* ``cov(F_p, F_q) = σ² g_pᵀ H(x_{i_p}, x_{j_q}) g_q`` summed over the rows of each
  component, ``H = ∂²k/∂x∂y`` (:meth:`kernelpot.kernels.Kernel.accumulate_cross_hessian`,
  which never forms ``D × D`` matrices).

A cell's stress enters as six more "force" components whose Jacobian rows are its
symmetrised strain gradients over the volume (:func:`kernelpot.gp.stress_jacobian`):
every formula above holds for them as written, with their own noise ``σ_S²``.

The posterior mean is a local-energy function again,
``ε̄(x) = σ² Σ_j [c_j k(x, x_j) - ∂k(x, x_j)/∂y · b_j]`` over the training
environments, with ``c_j`` the weight of the energy of ``j``'s structure and
``b_j = Σ_{q: j_q = j} w_q g_q`` (``w = K_y⁻¹ y``), so predicted forces are exactly
``-∂E/∂r`` of predicted energies. Variances come from the Cholesky factor of
``K_y = σ² K + diag(σ_E² N, σ_F²)``.

Memory grows as the square of the number of observations (energies plus
``3 N`` force components per structure): meant for the small data sets where it
is the most accurate model (see :class:`kernelpot.SparseGPPotential`'s
``method``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from numpy.typing import ArrayLike

from kernelpot import gp
from kernelpot.descriptors.base import DescriptorResult
from kernelpot.kernels import row_dots

if TYPE_CHECKING:
    from ase import Atoms

    from kernelpot.kernels import Kernel

logger = logging.getLogger(__name__)

__all__ = ["Observations", "MeanWeights", "build_observations", "covariance",
           "prior_covariance",
           "log_density", "log_marginal_likelihood", "mean_weights", "predict_mean",
           "mean_maps", "predict_variances", "memory_estimate", "fit_time_estimate",
           "prediction_time_estimate", "structure_arrays",
           "structures_from_arrays"]

#: Entries of one chunk of a force–force block (rows × columns): 2²⁴ doubles, 128 MiB.
_CHUNK_ENTRIES = 2**24


class Observations(NamedTuple):
    """Labelled structures as linear functionals of the local-energy GP, per element.

    Attributes
    ----------
    features : list of ndarray of shape (n_s, D)
        Environments of element ``s`` over all structures, in structure order.
    env_energy : list of ndarray of shape (n_s,)
        Energy observation of each environment's structure (-1 if it has none).
    rows : list of ndarray of shape (P_s, D)
        Jacobian rows ``∂x_i/∂r_jc`` of the structures with force labels, centre ``i``
        of element ``s``.
    row_env : list of ndarray of shape (P_s,)
        Environment (index into ``features[s]``) of each row.
    row_force : list of ndarray of shape (P_s,)
        Force observation (``j c`` of its structure) each row contributes to;
        non-decreasing.
    energy_atoms : ndarray of shape (n_energy,)
        Atoms in the structure of each energy observation.
    force_structure : ndarray of shape (n_force,)
        Structure of each force observation (non-decreasing).
    is_stress : ndarray of bool of shape (n_force,) or None
        Which "force" observations are stress components (each structure's six
        follow its force components); ``None``: none.
    """

    features: list
    env_energy: list
    rows: list
    row_env: list
    row_force: list
    energy_atoms: np.ndarray
    force_structure: np.ndarray
    is_stress: np.ndarray | None = None

    @property
    def n_energy(self) -> int:
        """Number of energy observations."""
        return len(self.energy_atoms)

    @property
    def n_force(self) -> int:
        """Number of force-like observations (three per atom, six per stressed cell)."""
        return len(self.force_structure)

    @property
    def n_stress(self) -> int:
        """Number of stress observations (six per cell with a stress)."""
        return 0 if self.is_stress is None else int(self.is_stress.sum())

    @property
    def n_obs(self) -> int:
        """Number of observations: energies then force components."""
        return self.n_energy + self.n_force


def build_observations(results: list[DescriptorResult], species_indices: list[np.ndarray],
                       n_species: int, has_energy: ArrayLike,
                       has_forces: ArrayLike,
                       stress_volumes: ArrayLike | None = None) -> Observations:
    """Group descriptors and Jacobian rows of labelled structures by element.

    Parameters
    ----------
    results : list of DescriptorResult
    species_indices : list of ndarray of int
        Element index of every atom.
    n_species : int
    has_energy, has_forces : array-like of bool, shape (n_structures,)
        Which labels each structure contributes (energies first, then forces, in
        structure order).
    stress_volumes : array-like of shape (n_structures,), optional
        The cell volume (Å³) of each structure with a stress label, NaN for the others
        (their results computed with ``strain=True``): its six stress components follow
        its force components.

    Returns
    -------
    Observations
    """
    has_energy = np.asarray(has_energy, dtype=bool)
    has_forces = np.asarray(has_forces, dtype=bool)
    volumes = np.full(len(results), np.nan) if stress_volumes is None \
        else np.asarray(stress_volumes, dtype=np.float64)
    has_stress = ~np.isnan(volumes)
    n_features = results[0].n_features if results else 0
    energy_index = np.where(has_energy, np.cumsum(has_energy) - 1, -1)
    n_atoms = np.array([r.n_atoms for r in results], dtype=np.int64)
    n_components = 3 * n_atoms * has_forces + 6 * has_stress
    force_start = np.concatenate([[0], np.cumsum(n_components)])
    parts = {name: [[] for _ in range(n_species)]
             for name in ("features", "env_energy", "rows", "row_env", "row_force")}
    offset = np.zeros(n_species, dtype=np.int64)
    for k, (result, index) in enumerate(zip(results, species_indices, strict=True)):
        local = np.empty(result.n_atoms, dtype=np.int64)
        for s in range(n_species):
            atoms_s = np.flatnonzero(index == s)
            if atoms_s.size == 0:
                continue
            local[atoms_s] = offset[s] + np.arange(atoms_s.size)
            parts["features"][s].append(result.features[atoms_s])
            parts["env_energy"][s].append(np.full(atoms_s.size, energy_index[k]))
            offset[s] += atoms_s.size
        jacobians = ([(result, force_start[k])] if has_forces[k] else []) + (
            [(gp.stress_jacobian(result, volumes[k]),
              force_start[k] + 3 * result.n_atoms * has_forces[k])] if has_stress[k] else [])
        for jacobian, first in jacobians:
            centre, moved = jacobian.pairs[:, 0], jacobian.pairs[:, 1]
            for s in range(n_species):
                sel = np.flatnonzero(index[centre] == s)
                if sel.size == 0:
                    continue
                parts["rows"][s].append(jacobian.gradients[sel].reshape(-1, n_features))
                parts["row_env"][s].append(np.repeat(local[centre[sel]], 3))
                parts["row_force"][s].append(
                    (first + 3 * moved[sel][:, None] + np.arange(3)).ravel())

    def joined(name, s, shape, dtype, order=None):
        chunks = parts[name][s]
        if not chunks:
            return np.zeros(shape, dtype=dtype)
        values = np.concatenate(chunks)
        return np.ascontiguousarray(values if order is None else values[order[s]])

    # rows sorted by force component: the rows of one component are contiguous, which the
    # accumulation of force–force blocks runs over (and structure order is kept)
    order = [np.argsort(np.concatenate(parts["row_force"][s]), kind="stable")
             if parts["row_force"][s] else None for s in range(n_species)]
    return Observations(
        features=[joined("features", s, (0, n_features), np.float64) for s in range(n_species)],
        env_energy=[joined("env_energy", s, (0,), np.int64) for s in range(n_species)],
        rows=[joined("rows", s, (0, n_features), np.float64, order) for s in range(n_species)],
        row_env=[joined("row_env", s, (0,), np.int64, order) for s in range(n_species)],
        row_force=[joined("row_force", s, (0,), np.int64, order) for s in range(n_species)],
        energy_atoms=n_atoms[has_energy],
        force_structure=np.repeat(np.arange(len(results)), n_components),
        is_stress=np.concatenate([np.r_[np.zeros(3 * n * f, bool), np.ones(6 * s, bool)]
                                  for n, f, s in zip(n_atoms, has_forces, has_stress,
                                                     strict=True)])
        if has_stress.any() else None)


def _one_hot(index: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """``S[index[c], c] = 1`` (columns with index -1 stay empty), shape (n_rows, len(index))."""
    keep = np.flatnonzero(index >= 0)
    return sp.csr_matrix((np.ones(keep.size), (index[keep], keep)),
                         shape=(n_rows, len(index)))


def _reduce_rows(values: np.ndarray, index: np.ndarray):
    """Sum the rows of ``values`` with equal ``index``; return (unique index, sums)."""
    unique, inverse = np.unique(index, return_inverse=True)
    reducer = sp.csr_matrix((np.ones(len(index)), (inverse, np.arange(len(index)))),
                            shape=(len(unique), len(index)))
    return unique, np.asarray(reducer @ values)


def covariance(A: Observations, B: Observations, kernel: Kernel, symmetric: bool = False,
               weights: ArrayLike | None = None) -> np.ndarray:
    """Prior covariance (without ``σ²``) between the observations of ``A`` and ``B``.

    Parameters
    ----------
    A, B : Observations
    kernel : kernelpot.kernels.Kernel
    symmetric : bool, default=False
        ``A`` is ``B``: compute each force–force block of a pair of structures once
        and mirror it.
    weights : array-like of shape (n_species,), optional
        Factor of each element's part of the covariance (its signal variance, for a
        model with one per element); an element with weight 0 is skipped. Default:
        1 for every element.

    Returns
    -------
    ndarray of shape (A.n_obs, B.n_obs)
        Rows: A's energies then A's force components; columns likewise for B.
    """
    nE_A, nE_B = A.n_energy, B.n_energy
    out = np.zeros((A.n_obs, B.n_obs))
    EE, EF = out[:nE_A, :nE_B], out[:nE_A, nE_B:]
    FE, FF = out[nE_A:, :nE_B], out[nE_A:, nE_B:]
    n_species = len(A.features)
    weights = np.ones(n_species) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_species,):
        raise ValueError(f"covariance: weights must have shape ({n_species},); got "
                         f"{weights.shape}")
    for s in range(n_species):
        XA, XB = A.features[s], B.features[s]
        w = float(weights[s])
        if len(XA) == 0 or len(XB) == 0 or w == 0.0:
            continue
        SA, SB = _one_hot(A.env_energy[s], nE_A), _one_hot(B.env_energy[s], nE_B)
        GA, GB = A.rows[s], B.rows[s]
        envA, envB = A.row_env[s], B.row_env[s]
        if nE_A and nE_B:
            EE += w * (SB @ (SA @ kernel(XA, XB)).T).T
        if nE_A and len(GB):
            # ∂k(x_i, y)/∂y at y = x_j is α(x_j, x_i) x_i + β(x_j, x_i) x_j
            alpha, beta = kernel.gradient_coefficients(XB, XA)  # (n_B, n_A)
            yg = row_dots(GB, XB, envB)  # cached for a fitted model's training rows
            step = max(1, _CHUNK_ENTRIES // max(len(XA), 1))
            for start in range(0, len(GB), step):
                ch = slice(start, start + step)
                per_env = -w * (alpha[envB[ch]].T * (XA @ GB[ch].T)
                                + beta[envB[ch]].T * yg[ch])
                cols, summed = _reduce_rows((SA @ per_env).T, B.row_force[s][ch])
                EF[:, cols] += summed.T
        if nE_B and len(GA) and not symmetric:
            alpha, beta = kernel.gradient_coefficients(XA, XB)  # (n_A, n_B)
            gx = np.einsum("pd,pd->p", GA, XA[envA])
            step = max(1, _CHUNK_ENTRIES // max(len(XB), 1))
            for start in range(0, len(GA), step):
                ch = slice(start, start + step)
                per_env = -w * (alpha[envA[ch]] * (GA[ch] @ XB.T)
                                + beta[envA[ch]] * gx[ch, None])
                rows, summed = _reduce_rows(np.asarray((SB @ per_env.T).T), A.row_force[s][ch])
                FE[rows] += summed
        if len(GA) and len(GB):
            struct_B = B.force_structure[B.row_force[s]]
            step = max(1, _CHUNK_ENTRIES // len(GB))
            # chunks of rows in environment order, so that a chunk holds few environments
            # (one may straddle two chunks): the kernels' work per chunk grows with the
            # environments in it (NormalizedDotProduct sums B's rows per environment)
            by_env = np.argsort(envA, kind="stable")
            for start in range(0, len(GA), step):
                ch = by_env[start:start + step]
                first = 0
                if symmetric:  # blocks of earlier structures come from their mirror
                    first = int(np.searchsorted(
                        struct_B, A.force_structure[A.row_force[s][ch]].min()))
                # only the environments of this chunk's rows: the kernels form products
                # of X with all of B's rows
                used, env_in_chunk = np.unique(envA[ch], return_inverse=True)
                kernel.accumulate_cross_hessian(FF, XA[used], w * GA[ch] if w != 1.0
                                                else GA[ch], env_in_chunk,
                                                A.row_force[s][ch], XB, GB[first:],
                                                envB[first:], B.row_force[s][first:])
    if symmetric:
        FE[:] = EF.T
        struct = A.force_structure
        upper = struct[:, None] <= struct[None, :]
        FF[:] = np.where(upper, FF, FF.T)
    return out


def prior_covariance(obs: Observations, kernel: Kernel,
                     per_element: bool = False) -> np.ndarray | list[np.ndarray]:
    """Return the training covariance ``K0`` of :func:`factor`.

    One matrix, or with ``per_element`` one part per element (its environments
    only), for one signal std each.
    """
    if not per_element:
        return covariance(obs, obs, kernel, symmetric=True)
    n_species = len(obs.features)
    return [covariance(obs, obs, kernel, symmetric=True, weights=np.eye(n_species)[s])
            for s in range(n_species)]


def noise_variances(log_params: np.ndarray, obs: Observations,
                    noise_scale: np.ndarray | None = None) -> np.ndarray:
    """Diagonal noise: ``σ_E² N`` per energy, ``σ_F²`` per force and ``σ_S²`` per stress.

    ``log_params`` ends with ``log σ_E, log σ_F, log σ_S`` (after one or more signal
    stds). ``noise_scale`` (one per observation) multiplies the variances: the squared
    scale of each observation's configuration type (:mod:`kernelpot.noise_groups`).
    """
    force = np.full(obs.n_force, np.exp(2 * log_params[-2]))
    if obs.is_stress is not None:
        force[obs.is_stress] = np.exp(2 * log_params[-1])
    noise = np.concatenate([np.exp(2 * log_params[-3]) * obs.energy_atoms, force])
    return noise if noise_scale is None else noise * noise_scale


def observation_structures(obs: Observations, has_energy: np.ndarray) -> np.ndarray:
    """Return the structure of every observation (energies, then per structure the rest)."""
    return np.concatenate([np.flatnonzero(has_energy), obs.force_structure]).astype(int)


def _parts(K0) -> list:
    """``K0`` as a list of prior covariance parts, one per signal std."""
    return [K0] if isinstance(K0, np.ndarray) else list(K0)


def signal_covariance(K0: np.ndarray | Sequence[np.ndarray],
                      log_params: np.ndarray) -> np.ndarray:
    """``Σ_s σ_s² K0_s`` (a new array) for the signal stds leading ``log_params``."""
    parts = _parts(K0)
    if len(log_params) != len(parts) + 3:
        raise ValueError(f"expected {len(parts) + 3} log hyperparameters (signal std per "
                         f"covariance part, σ_E, σ_F, σ_S); got {len(log_params)}")
    out = np.exp(2 * log_params[0]) * parts[0]
    for t, part in zip(log_params[1:len(parts)], parts[1:], strict=True):
        out += np.exp(2 * t) * part
    return out


def _cholesky(K_y: np.ndarray) -> np.ndarray:
    try:
        return sla.cholesky(K_y, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        L, jitter = gp.cholesky_with_jitter(K_y)
        logger.debug("exact GP: K_y needed jitter %.1e × mean diagonal", jitter)
        return L


def factor(K0: np.ndarray | Sequence[np.ndarray], log_params: np.ndarray,
           obs: Observations, noise_scale: np.ndarray | None = None) -> np.ndarray:
    """Lower Cholesky factor of ``K_y = σ² K0 + noise``.

    ``K0`` is one matrix (one signal std) or a list of per-element parts
    ``K0_s`` with ``K_y = Σ_s σ_s² K0_s + noise`` (``log_params = log (σ_1, …, σ_n,
    σ_E, σ_F, σ_S)``); ``noise_scale`` as in :func:`noise_variances`.
    """
    K_y = signal_covariance(K0, log_params)
    K_y[np.diag_indices_from(K_y)] += noise_variances(log_params, obs, noise_scale)
    return _cholesky(K_y)


def log_density(L: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """``log N(y; 0, K_y)`` from the Cholesky factor ``L`` of ``K_y`` and ``K_y⁻¹ y``."""
    return float(-0.5 * y @ weights - np.log(np.diag(L)).sum()
                 - 0.5 * len(y) * np.log(2 * np.pi))


def log_marginal_likelihood(log_params: np.ndarray, K0: np.ndarray | Sequence[np.ndarray],
                            y: np.ndarray, obs: Observations,
                            eval_gradient: bool = False,
                            obs_group: np.ndarray | None = None
                            ) -> float | tuple[float, np.ndarray]:
    """Log marginal likelihood of ``y`` and its gradient in ``log (σ, σ_E, σ_F, σ_S)``.

    ``K0`` is one prior covariance, or a list of per-element parts with one signal
    std each (``log_params = log (σ_1, …, σ_n, σ_E, σ_F, σ_S)``, see :func:`factor`).
    The gradient in ``σ_S`` is zero without stress observations.

    With ``obs_group`` (a noise-scale group ``0 … G-1`` for every observation),
    ``log_params`` ends with ``G`` more entries, ``log s_b``: the noise variances of
    group ``b`` are multiplied by ``s_b²`` (:mod:`kernelpot.noise_groups`), and the
    gradient ends with theirs.

    Notes
    -----
    With ``a = K_y⁻¹ y`` and ``Λ`` the noise diagonal,
    ``∂ log p/∂ log σ = aᵀy - aᵀΛa - n + Σ_i Λ_ii (K_y⁻¹)_ii`` and, for each noise,
    ``∂ log p/∂ log σ_X = Σ_{i∈X} Λ_ii (a_i² - (K_y⁻¹)_ii)``; only the diagonal of
    ``K_y⁻¹`` is needed (from the inverse Cholesky factor). With several parts,
    ``∂ log p/∂ log σ_s = σ_s² (aᵀ K0_s a - Σ_ij (K_y⁻¹)_ij (K0_s)_ij)``, which needs
    the whole of ``K_y⁻¹``.
    """
    log_params = np.asarray(log_params, dtype=np.float64)
    parts = _parts(K0)
    n_all = len(log_params)
    noise_scale, group_gradient = None, []
    n_groups = n_all - len(parts) - 3
    if obs_group is not None:
        if n_groups < 1 or len(obs_group) != len(y) or np.max(obs_group) >= n_groups \
                or np.min(obs_group) < 0:
            raise ValueError("log_marginal_likelihood: obs_group needs one type per "
                             "observation and one log scale per type at the end of log_params")
        noise_scale = np.exp(2 * log_params[len(parts) + 3:])[obs_group]
        log_params = log_params[:len(parts) + 3]
    try:
        L = factor(parts, log_params, obs, noise_scale)
    except np.linalg.LinAlgError:
        return (-np.inf, np.zeros(n_all)) if eval_gradient else -np.inf
    a = sla.cho_solve((L, True), y, check_finite=False)
    n = len(y)
    value = log_density(L, y, a)
    if not eval_gradient:
        return value
    noise = noise_variances(log_params, obs, noise_scale)
    if len(parts) == 1:
        L_inv, info = sla.lapack.dtrtri(L, lower=1, overwrite_c=1)  # L is not needed again
        if info != 0:
            return (-np.inf, np.zeros(n_all))
        k_inv_diag = np.einsum("ij,ij->j", L_inv, L_inv)  # the upper half of L (and L⁻¹) is 0
        del L_inv
        per_obs = noise * (a**2 - k_inv_diag)
        if obs_group is not None:
            group_gradient = np.bincount(obs_group, per_obs, n_groups).tolist()
        return value, np.array([float(a @ y - n - per_obs.sum()),
                                *_noise_gradient(per_obs, obs), *group_gradient])
    # the whole K_y⁻¹, lower triangle (the upper one keeps L's zeros): Σ_ij (K_y⁻¹)_ij
    # (K0_s)_ij = 2 Σ_(i≥j) - Σ_(i=j) for the symmetric parts
    K_inv, info = sla.lapack.dpotri(L, lower=1, overwrite_c=1)
    if info != 0:
        return (-np.inf, np.zeros(n_all))
    k_inv_diag = np.diagonal(K_inv).copy()
    per_obs = noise * (a**2 - k_inv_diag)
    noise_gradient = _noise_gradient(per_obs, obs)
    if obs_group is not None:
        noise_gradient += np.bincount(obs_group, per_obs, n_groups).tolist()
    signal_gradient = []
    for t, part in zip(log_params[:len(parts)], parts, strict=True):
        trace = 2.0 * np.einsum("ij,ij->", K_inv, part) - k_inv_diag @ np.diagonal(part)
        signal_gradient.append(float(np.exp(2 * t) * (a @ (part @ a) - trace)))
    del K_inv
    return value, np.array(signal_gradient + noise_gradient)


def _noise_gradient(per_obs: np.ndarray, obs: Observations) -> list[float]:
    """Sum the per-observation terms into ``∂ log p / ∂ log (σ_E, σ_F, σ_S)``."""
    nE = obs.n_energy
    force = per_obs[nE:]
    if obs.is_stress is None:
        return [float(per_obs[:nE].sum()), float(force.sum()), 0.0]
    return [float(per_obs[:nE].sum()), float(force[~obs.is_stress].sum()),
            float(force[obs.is_stress].sum())]


class MeanWeights(NamedTuple):
    """Per-element weights of the posterior-mean local energy (``σ²`` included).

    ``ε̄(x) = Σ_j c_j k(x, x_j) - Σ_j ∂k(x, x_j)/∂y · b_j`` over the training
    environments ``x_j`` of the element.
    """

    features: list  # (n_s, D) training environments
    energy: list  # (n_s,) c_j
    force: list  # (n_s, D) b_j


def mean_weights(obs: Observations, weights: np.ndarray,
                 signal_var: ArrayLike) -> MeanWeights:
    """Fold the observation weights ``w = K_y⁻¹ y`` into per-environment weights.

    ``signal_var`` is ``σ²``, one value or one per element.
    """
    w_E, w_F = weights[:obs.n_energy], weights[obs.n_energy:]
    energy, force = [], []
    signal_vars = np.broadcast_to(np.asarray(signal_var, dtype=np.float64),
                                  (len(obs.features),))
    for s, X in enumerate(obs.features):
        env_energy = obs.env_energy[s]
        c = np.where(env_energy >= 0, w_E[np.maximum(env_energy, 0)] if w_E.size else 0.0, 0.0)
        energy.append(signal_vars[s] * c)
        scaled = obs.rows[s] * w_F[obs.row_force[s]][:, None]
        force.append(signal_vars[s] * np.asarray(_one_hot(obs.row_env[s], len(X)) @ scaled)
                     if len(scaled) else np.zeros_like(X))
    return MeanWeights(obs.features, energy, force)


def mean_maps(mean: MeanWeights, kernel: Kernel) -> list:
    """Each element's closed-form mean map (:func:`kernelpot.mean_maps.exact_mean_map`).

    Always built where the kernel has one: the sum it replaces contracts every Jacobian
    row of a predicted structure with every training environment, far more than the
    map's ``D²`` per atom.

    Parameters
    ----------
    mean : MeanWeights
        From :func:`mean_weights`.
    kernel : kernelpot.kernels.Kernel

    Returns
    -------
    list of MeanMap or None
        One per element; None where the kernel has no closed form.
    """
    from kernelpot.mean_maps import exact_mean_map

    return [exact_mean_map(kernel, Z, c, b) if len(Z) else None
            for Z, c, b in zip(mean.features, mean.energy, mean.force, strict=True)]


def predict_mean(result: DescriptorResult, species_index: np.ndarray, mean: MeanWeights,
                 kernel: Kernel, forces: bool = True,
                 strain: bool = False, maps: list | None = None) -> tuple[np.ndarray | None, ...]:
    """Posterior-mean local energies (without reference energies) and forces.

    ``maps`` (:func:`mean_maps`): an element with a map costs ``O(D²)`` per atom;
    the others sum over the training environments and contract every Jacobian row
    with the kernel's mixed second derivative.

    Returns
    -------
    local : ndarray of shape (n_atoms,)
    forces : ndarray of shape (n_atoms, 3) or None
        ``-∂E/∂r`` of the predicted energy.
    strain_derivative : ndarray of shape (3, 3), only with ``strain=True``
        ``∂E/∂ε`` of the predicted energy (``result`` computed with ``strain=True``).
    """
    X = result.features
    local = np.zeros(len(X))
    if strain and result.strain_gradients is None:
        raise ValueError("predict_mean: strain=True needs a result computed with strain=True")
    forces = forces or strain
    d_local = np.zeros_like(X) if forces else None
    hessian_part = np.zeros(3 * len(X)) if forces else None
    hessian_strain = np.zeros(9) if strain else None
    for s, Z in enumerate(mean.features):
        atoms_s = np.flatnonzero(species_index == s)
        if atoms_s.size == 0 or len(Z) == 0:
            continue
        Xs = X[atoms_s]
        if maps is not None and maps[s] is not None:
            local[atoms_s], d = maps[s](Xs, forces)
            if forces:
                d_local[atoms_s] = d
            continue
        c, b = mean.energy[s], mean.force[s]
        a_zx, b_zx = kernel.gradient_coefficients(Z, Xs)  # ∂k(z, x)/∂z coefficients
        zb = np.einsum("md,md->m", Z, b)
        local[atoms_s] = kernel(Xs, Z) @ c - np.einsum("mn,nm->n", a_zx, Xs @ b.T) - zb @ b_zx
        if not forces:
            continue
        alpha, beta = kernel.gradient_coefficients(Xs, Z)
        d_local[atoms_s] = (alpha * c[None, :]) @ Z + (beta @ c)[:, None] * Xs
        # the b-term of ∇ε̄ is -Σ_j H(x, z_j) b_j: contracted with each Jacobian row
        position = np.full(len(X), -1, dtype=np.int64)
        position[atoms_s] = np.arange(atoms_s.size)
        sel = np.flatnonzero(position[result.pairs[:, 0]] >= 0)
        if sel.size == 0:
            continue
        G = result.gradients[sel].reshape(-1, X.shape[1])
        env = np.repeat(position[result.pairs[sel, 0]], 3)
        component = (3 * result.pairs[sel, 1][:, None] + np.arange(3)).ravel()
        kernel.accumulate_cross_hessian(hessian_part[:, None], Xs, G, env, component, Z, b,
                                        np.arange(len(Z)), np.zeros(len(Z), dtype=np.int64))
        if strain:  # the same b-term contracted with each atom's nine strain rows
            S = result.strain_gradients[atoms_s].reshape(-1, X.shape[1])
            kernel.accumulate_cross_hessian(
                hessian_strain[:, None], Xs, S, np.repeat(np.arange(atoms_s.size), 9),
                np.tile(np.arange(9), atoms_s.size), Z, b, np.arange(len(Z)),
                np.zeros(len(Z), dtype=np.int64))
    if not forces:
        return local, None
    force_values = gp.forces_from_local_gradients(result, d_local) + hessian_part.reshape(-1, 3)
    if not strain:
        return local, force_values
    derivative = gp.strain_derivative_from_local_gradients(result, d_local) \
        - hessian_strain.reshape(3, 3)
    return local, force_values, derivative


def predict_variances(results: list[DescriptorResult], species_indices: list[np.ndarray],
                      train: Observations, L: np.ndarray, signal_var: ArrayLike,
                      kernel: Kernel, forces: bool = True,
                      shift_basis: np.ndarray | None = None,
                      stress_volumes: ArrayLike | None = None) -> list[tuple]:
    """Epistemic variances of the energies (force and stress components) of structures.

    ``σ² k_** - k_*ᵀ K_y⁻¹ k_*`` for each structure's energy and force components,
    with one triangular solve for all of them; ``signal_var`` is ``σ²``, one value
    or one per element. With ``shift_basis`` (:func:`kernelpot.loso.exact_loso`),
    also ``k_*ᵀ U``: how much each prediction's mean moves when each training
    structure is left out.

    ``stress_volumes`` (one per structure, NaN for none) also gives the variances of
    the stress of the structures with a volume (their results computed with
    ``strain=True``).

    Returns
    -------
    list of (float, ndarray of shape (n_atoms, 3) or None, ndarray or None, ndarray or None)
        Per structure: the energy variance, the force variances, with
        ``shift_basis`` the shifts of shape ``(1 + 3 n_atoms, n_structures)`` (energy
        row first; ``1`` row without forces), and the variances of the six stress
        components (``None`` without a volume).
    """
    n_species = len(train.features)
    n = len(results)
    signal_vars = np.broadcast_to(np.asarray(signal_var, dtype=np.float64), (n_species,))
    volumes = np.full(n, np.nan) if stress_volumes is None \
        else np.asarray(stress_volumes, dtype=np.float64)
    test = build_observations(results, species_indices, n_species, np.ones(n, bool),
                              np.full(n, bool(forces)), volumes)
    K_star = covariance(test, train, kernel, weights=signal_vars)
    V = sla.solve_triangular(L, K_star.T, lower=True, check_finite=False)
    reduction = np.einsum("ij,ij->j", V, V)
    shifts = K_star @ shift_basis if shift_basis is not None else None
    out = []
    force_start = n
    largest = float(np.max(signal_vars))  # the scale of a prior that cancels by symmetry
    for k, (result, index) in enumerate(zip(results, species_indices, strict=True)):
        prior_e, prior_f = gp.prior_variances(result, index, n_species, kernel, energy=True,
                                              forces=forces, weights=signal_vars)
        var_e = float(gp.clip_variance(prior_e - reduction[k], "energy variance", prior_e,
                                       largest))
        var_f = None
        stop = force_start
        if forces:
            stop = force_start + 3 * result.n_atoms
            var_f = gp.clip_variance(prior_f.ravel() - reduction[force_start:stop],
                                     "force variance", prior_f.ravel(), largest).reshape(-1, 3)
        shift = None if shifts is None else np.vstack([shifts[k:k + 1],
                                                       shifts[force_start:stop]])
        var_s = None
        if not np.isnan(volumes[k]):
            prior_s = gp.prior_variances(gp.stress_jacobian(result, volumes[k]), index,
                                         n_species, kernel, energy=False,
                                         weights=signal_vars)[1].ravel()[:6]
            var_s = gp.clip_variance(prior_s - reduction[stop:stop + 6], "stress variance",
                                     prior_s, largest)
            stop += 6
        force_start = stop
        out.append((var_e, var_f, shift, var_s))
    return out


def structure_arrays(frames: Sequence[Atoms], has_energy: ArrayLike,
                     has_forces: ArrayLike, has_stress: ArrayLike | None = None) -> dict:
    """Return the training structures as plain arrays (what a saved exact model stores).

    ``has_stress`` is stored only when some structure has a stress label.
    """
    extra = {} if has_stress is None or not np.any(has_stress) \
        else {"has_stress": np.asarray(has_stress, dtype=bool)}
    return extra | {
        "n_atoms": np.array([len(a) for a in frames], dtype=np.int64),
        "numbers": np.concatenate([a.numbers for a in frames]).astype(np.int64),
        "positions": np.concatenate([a.positions for a in frames]),
        "cells": np.array([a.cell.array for a in frames]),
        "pbc": np.array([a.pbc for a in frames], dtype=bool),
        "has_energy": np.asarray(has_energy, dtype=bool),
        "has_forces": np.asarray(has_forces, dtype=bool),
    }


def structures_from_arrays(arrays: dict) -> list[Atoms]:
    """Inverse of :func:`structure_arrays` (structures without labels)."""
    from ase import Atoms

    bounds = np.concatenate([[0], np.cumsum(arrays["n_atoms"])])
    return [Atoms(numbers=arrays["numbers"][a:b], positions=arrays["positions"][a:b],
                  cell=arrays["cells"][k], pbc=arrays["pbc"][k])
            for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]


def memory_estimate(n_obs: int, n_rows: int, n_features: int, n_species: int = 0) -> float:
    """Bytes an exact fit holds at its peak.

    Three ``n_obs²`` matrices, the Jacobian rows, and one ``D × D`` mean map per element
    (:func:`mean_maps`).
    """
    return 8.0 * (3.0 * n_obs**2 + n_rows * n_features + n_species * n_features**2)


#: Seconds per multiply–add of the force–force covariance (``Σ_s R_s² D``, Jacobian rows
#: ``R_s`` of element ``s``) and per ``n_obs³`` of the likelihood search, measured on the
#: project's 2-core machine (2026-12-05): ethanol n = 50, 100, 200 and EMT Cu₃Au cells of
#: 32 atoms, 5 to 20 frames, default SOAP.
_SECONDS_PER_COVARIANCE_TERM = 2e-11
_SECONDS_PER_CUBED_OBSERVATION = 1.2e-9


def fit_time_estimate(n_obs: int, rows_per_element: Sequence[float], n_features: int) -> float:
    """Seconds an exact fit with the default likelihood search takes, roughly.

    Parameters
    ----------
    n_obs : int
        Energies plus force components.
    rows_per_element : sequence of float
        Jacobian rows (3 × neighbour pairs, the centre included) of each element's
        environments.
    n_features : int
        Descriptor length ``D``.

    Returns
    -------
    float
        ``a Σ_s R_s² D + b n_obs³``: the force–force covariance and the Cholesky
        factorisations of the likelihood search, with ``a`` and ``b`` measured on the
        project's 2-core machine with the default search (``n_restarts=2``, noise and
        signal std only). Within a factor of about 2 there (over-estimating large
        sets); a machine with more cores is faster than this says. Not counted: a
        search of the kernel's own hyperparameters, more restarts, one signal std per
        element (more likelihood parameters).
    """
    rows = np.asarray(rows_per_element, dtype=np.float64)
    return float(_SECONDS_PER_COVARIANCE_TERM * np.sum(rows**2) * n_features
                 + _SECONDS_PER_CUBED_OBSERVATION * float(n_obs) ** 3)


#: Seconds per predicted environment, training Jacobian row and feature (the column sums
#: of :meth:`kernelpot.kernels.NormalizedDotProduct.accumulate_cross_hessian`), per
#: predicted Jacobian row, training force column and feature (their contraction), and
#: per predicted atom (the descriptor, the energy rows and the solves): fitted to the
#: prediction times, in batches, of ethanol (n = 20, 50, 100), EMT Cu cells of 32 atoms
#: (n = 3, 10; SOAP and ACSF) and Cu₃Au cells (n = 5, 10) on a 2-core machine of the
#: project (2026-12-07): within 0.87–1.08 of each (benchmarks/RESULTS.md,
#: exact_variance.py).
_SECONDS_PER_COLUMN_SUM_TERM = 1.17e-9
_SECONDS_PER_CONTRACTION_TERM = 4.4e-12
_SECONDS_PER_PREDICTED_ATOM = 1.1e-3


def prediction_time_estimate(rows_per_atom: Sequence[float], rows_per_element: Sequence[float],
                             n_features: int, share: Sequence[float] | None = None,
                             n_columns: float | None = None) -> float:
    """Seconds per atom to predict energies, forces and every force component's std.

    Parameters
    ----------
    rows_per_atom : sequence of float
        Jacobian rows of each element's environments per predicted atom (3 × that
        element's neighbour pairs, the centre included, over all atoms).
    rows_per_element : sequence of float
        Jacobian rows of each element's training environments.
    n_features : int
        Descriptor length ``D``.
    share : sequence of float or None, default=None
        Each element's share of the predicted atoms; default: ``rows_per_atom``'s
        shares.
    n_columns : float or None, default=None
        Training observations the force components' covariance has columns for (the
        force and stress components); default: a third of the training rows.

    Returns
    -------
    float
        ``a D Σ_s w_s R_s + b D n_F Σ_s r_s + c``: the covariance of the predicted force
        components with every training observation dominates, its per-column sums of
        the training rows ``R_s`` (``w_s`` the element's share) and their contraction
        with the predicted rows ``r_s``, beside a per-atom part. ``a``, ``b`` and
        ``c`` were measured on the project's 2-core machine, up to about 3,000
        training observations; the triangular solve per predicted row (growing as
        their square) is in ``c``, so beyond that range the estimate is low.
    """
    r = np.asarray(rows_per_atom, dtype=np.float64)
    R = np.asarray(rows_per_element, dtype=np.float64)
    if share is not None:
        w = np.asarray(share, dtype=np.float64)
    else:
        w = r / r.sum() if r.sum() > 0 else np.zeros_like(r)
    n_F = R.sum() / 3.0 if n_columns is None else float(n_columns)
    return float(_SECONDS_PER_COLUMN_SUM_TERM * n_features * np.dot(w, R)
                 + _SECONDS_PER_CONTRACTION_TERM * n_features * n_F * r.sum()
                 + _SECONDS_PER_PREDICTED_ATOM)
