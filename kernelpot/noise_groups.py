"""Noise per configuration type (GAP's ``config_type_sigma``, fitted by the likelihood).

Training sets mix kinds of structure (bulk, surfaces, vacancies, liquid) whose labels
the model fits unequally well. With ``config_type_noise=True`` the estimator gives each
configuration type ``t`` (``atoms.info["config_type"]``; structures without one form the
type ``"default"``) its own noise scales ``s_t,E``, ``s_t,F``, ``s_t,S``: its
observations have the noise ``(s_t,E σ_E √N, s_t,F σ_F, s_t,S σ_S)``, as GAP's
``config_type_sigma`` gives each type its own energy, force and virial sigmas. For each
kind, the type with the most structures labelled with it keeps its scale at 1, so
``σ_E, σ_F, σ_S`` stay those types' noise (and the noise that predictions add for new
structures, whatever their type).

The scales are fitted after the usual search, with the kernel (and a two-body term)
fixed: the likelihood is maximised over ``log (σ, σ_E, σ_F, σ_S, s...)`` from the
one-noise optimum (a local search). :func:`sparse_log_marginal_likelihood` evaluates
the sparse model's likelihood from per-(kind, type) Gram matrices of the whitened design
(``O(M³)`` per evaluation, ``3 × types`` matrices of ``M × M`` in memory); the exact
model's is :func:`kernelpot.exact.log_marginal_likelihood` with ``obs_group``.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

from kernelpot.gp import _LOG_2PI

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TYPE", "KINDS", "MIN_STRUCTURES", "SCALE_BOUNDS", "GroupedStatistics",
           "checked_scales", "config_types", "fit_scales", "grouped_statistics", "row_scales",
           "scale_groups", "scales_by_type", "sparse_log_marginal_likelihood"]

#: The configuration type of structures without ``atoms.info["config_type"]`` (as in GAP).
DEFAULT_TYPE = "default"
#: Bounds of a noise scale.
SCALE_BOUNDS = (1e-2, 1e2)
#: Structures with a kind of label a type needs before its scale of that kind is fitted.
MIN_STRUCTURES = 5


def config_types(frames: Sequence) -> tuple[list[str], np.ndarray]:
    """Return the configuration types of some structures, and each structure's type.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        ``atoms.info["config_type"]`` names the type; missing, it is ``"default"``.

    Returns
    -------
    names : list of str
        The types, sorted.
    structure_type : ndarray of int of shape (n_frames,)
        Index into ``names`` of each structure.

    Raises
    ------
    TypeError
        If a ``config_type`` is neither a string nor an integer (extended XYZ reads
        ``config_type=7`` as an integer; it becomes the type ``"7"``).
    """
    labels = []
    for k, atoms in enumerate(frames):
        value = atoms.info.get("config_type", DEFAULT_TYPE)
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            value = str(int(value))
        if not isinstance(value, str):
            raise TypeError(f"config_type_noise: structure {k} has a config_type that is "
                            f"neither a string nor an integer: {value!r}")
        labels.append(value)
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[label] for label in labels], dtype=int)


#: The kinds of observation, in the order of their noise in ``theta``.
KINDS = ("energy", "forces", "stress")


def scale_groups(row_type: np.ndarray, row_kind: np.ndarray, row_structure: np.ndarray,
                 n_types: int, kind_free: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Return the noise-scale group of every observation and which scales the fit moves.

    The scale of kind ``k`` and type ``t`` is number ``3 t + k``. For each kind, the
    type with the most structures labelled with it (ties: the first) keeps its scale at
    1, so ``σ_k`` is that type's noise. A scale moves when the kind's noise is fitted
    and its type has at least :data:`MIN_STRUCTURES` structures labelled with the kind
    (fewer say too little about a noise level: measured, four energies sent a scale to
    its bound).

    Parameters
    ----------
    row_type : ndarray of int of shape (n_obs,)
        Configuration type of each observation's structure.
    row_kind : ndarray of int of shape (n_obs,)
        0 energy, 1 force component, 2 stress component.
    row_structure : ndarray of int of shape (n_obs,)
        Structure of each observation.
    n_types : int
    kind_free : sequence of 3 bool
        Whether ``σ_E``, ``σ_F``, ``σ_S`` are fitted.

    Returns
    -------
    row_group : ndarray of int of shape (n_obs,)
    free : ndarray of bool of shape (3 n_types,)
    """
    row_group = 3 * np.asarray(row_type, dtype=int) + np.asarray(row_kind, dtype=int)
    # structures per (type, kind): count each structure once per kind
    pairs = np.unique(np.stack([row_group, np.asarray(row_structure, dtype=int)]), axis=1)
    counts = np.bincount(pairs[0], minlength=3 * n_types).reshape(n_types, 3)
    reference = np.argmax(counts, axis=0)  # per kind
    free = (counts >= MIN_STRUCTURES) & (np.arange(n_types)[:, None] != reference[None, :]) \
        & np.asarray(kind_free, dtype=bool)[None, :]
    return row_group, free.ravel()


def scales_by_type(names: Sequence[str], log_scales: np.ndarray) -> dict[str, dict[str, float]]:
    """Return ``{config_type: {"energy": s, "forces": s, "stress": s}}`` from the log scales."""
    values = np.exp(np.asarray(log_scales, dtype=np.float64)).reshape(len(names), 3)
    return {name: dict(zip(KINDS, row.tolist(), strict=True))
            for name, row in zip(names, values, strict=True)}


def row_scales(scales: dict, frames: Sequence, row_structure: np.ndarray,
               row_kind: np.ndarray) -> np.ndarray:
    """Return the noise-std factor of every observation (1 for a type the scales lack)."""
    names, structure_type = config_types(frames)
    table = np.array([[scales.get(name, {}).get(kind, 1.0) for kind in KINDS]
                      for name in names])
    return table[structure_type[row_structure], row_kind]


class GroupedStatistics(NamedTuple):
    """The sparse likelihood's statistics per noise-scale group.

    For the rows of group ``b`` (all of one kind ``k``: 0 energy, 1 force, 2 stress),
    with the whitened design rows ``k_n`` and ``d_n`` the atoms of an energy row (1
    otherwise): ``G_b = Σ_n k_n k_nᵀ / d_n``, ``β_b = Σ_n k_n y_n / d_n``,
    ``c_b = Σ_n y_n² / d_n``, ``n_b`` rows and ``logdet_b = Σ_n log d_n``. Row noise
    of group ``b``: ``s_b σ_k``. A force group keeps ``G_b`` (``M × M``); an energy or
    stress group keeps its scaled rows ``R_b = k_n / √d_n`` (``G_b = R_bᵀ R_b``), far
    fewer numbers than ``M²``.
    """

    kind: np.ndarray  # (n_blocks,) 0, 1, 2
    group: np.ndarray  # (n_blocks,) the scale of each block
    factors: list  # per block: G_b (M, M) for forces, R_b (n_b, M) otherwise
    beta: np.ndarray  # (n_blocks, M)
    c: np.ndarray  # (n_blocks,)
    n: np.ndarray  # (n_blocks,)
    logdet_d: np.ndarray  # (n_blocks,)
    n_groups: int

    def gram_times(self, b: int, w: np.ndarray) -> np.ndarray:
        """Return ``G_b w``."""
        F = self.factors[b]
        return F @ w if self.kind[b] == 1 else F.T @ (F @ w)

    def trace_with(self, b: int, A_inv: np.ndarray) -> float:
        """Return ``tr(A⁻¹ G_b)``."""
        F = self.factors[b]
        if self.kind[b] == 1:
            return float(np.einsum("ij,ij->", A_inv, F))
        return float(np.einsum("ij,ij->", F @ A_inv, F))

    def add_to(self, A: np.ndarray, b: int, weight: float) -> None:
        """Add ``weight × G_b`` to ``A`` in place."""
        F = self.factors[b]
        if self.kind[b] == 1:
            A += weight * F
        else:
            A += weight * (F.T @ F)


def grouped_statistics(Kw: np.ndarray, y: np.ndarray, row_kind: np.ndarray,
                       row_group: np.ndarray, row_atoms: np.ndarray,
                       n_groups: int) -> GroupedStatistics:
    """Reduce a whitened design to :class:`GroupedStatistics`.

    Memory: an ``M × M`` Gram matrix per force group (logged before they are built)
    and the energy and stress rows themselves.

    Parameters
    ----------
    Kw : ndarray of shape (n_obs, M)
        Whitened design rows (not scaled by the noise).
    y : ndarray of shape (n_obs,)
    row_kind : ndarray of int of shape (n_obs,)
        0 energy, 1 force component, 2 stress component.
    row_group : ndarray of int of shape (n_obs,)
        Noise-scale group of each row (:func:`scale_groups`); one kind per group.
    row_atoms : ndarray of shape (n_obs,)
        Atoms of an energy row's structure (its noise is ``σ_E² N``); 1 for the others.
    n_groups : int
        Number of scales.

    Returns
    -------
    GroupedStatistics
    """
    M = Kw.shape[1]
    blocks = [(kind, group, np.flatnonzero((row_kind == kind) & (row_group == group)))
              for kind in (0, 1, 2) for group in range(n_groups)]
    blocks = [b for b in blocks if b[2].size]
    n_force = sum(kind == 1 for kind, _, _ in blocks)
    logger.info("config_type_noise: %d force Gram matrices of %d × %d (%.0f MiB)", n_force, M,
                M, n_force * M * M * 8 / 2**20)
    kinds, groups, factors, betas, cs, ns, logdets = [], [], [], [], [], [], []
    for kind, group, rows in blocks:
        d = np.asarray(row_atoms[rows], dtype=np.float64)
        block = Kw[rows]
        kinds.append(kind)
        groups.append(group)
        factors.append(block.T @ block if kind == 1 else block / np.sqrt(d)[:, None])
        betas.append(block.T @ (y[rows] / d))
        cs.append(float(np.sum(y[rows] ** 2 / d)))
        ns.append(len(rows))
        logdets.append(float(np.sum(np.log(d))))
    return GroupedStatistics(np.array(kinds, dtype=int), np.array(groups, dtype=int), factors,
                             np.array(betas).reshape(-1, M), np.array(cs),
                             np.array(ns, dtype=int), np.array(logdets), n_groups)


def sparse_log_marginal_likelihood(log_params: np.ndarray, stats: GroupedStatistics,
                                   eval_gradient: bool = False
                                   ) -> float | tuple[float, np.ndarray]:
    """DTC log marginal likelihood with noise scales per group of observations.

    Parameters
    ----------
    log_params : ndarray of shape (4 + n_groups,)
        ``log (σ, σ_E, σ_F, σ_S, s_1, …, s_n)``: the row noise of kind ``k`` in group
        ``b`` is ``s_b σ_k`` (times ``√N`` for an energy).
    stats : GroupedStatistics
    eval_gradient : bool, default=False

    Returns
    -------
    lml : float
    gradient : ndarray of shape (4 + n_groups,)
        Only with ``eval_gradient=True``.

    Notes
    -----
    As :func:`kernelpot.gp.log_marginal_likelihood`, with ``A_w = I + Σ_b a_b G_b``,
    ``a_b = σ² / (s_b σ_k)²``: the quadratic form is ``min_w Σ_b r_b / (s_b σ_k)² +
    |w|²/σ²`` with the non-negative block residuals ``r_b``, differentiated by the
    envelope theorem, and ``log|C| = Σ_b n_b log (s_b σ_k)² + Σ log d + log|A_w|``, whose
    derivatives need ``tr(A_w⁻¹ G_b)``. Each evaluation factors ``A_w`` (``O(M³)``).
    With every scale 1 it equals :func:`kernelpot.gp.log_marginal_likelihood`.
    """
    log_params = np.asarray(log_params, dtype=np.float64)
    if log_params.shape != (4 + stats.n_groups,):
        raise ValueError(f"log_params must have shape ({4 + stats.n_groups},): log (σ, σ_E, "
                         f"σ_F, σ_S) and one scale per group; got {log_params.shape}")
    n_params = len(log_params)
    failed = (-np.inf, np.zeros(n_params)) if eval_gradient else -np.inf
    sigma2 = np.exp(2 * log_params[0])
    noise_var = np.exp(2 * (log_params[1 + stats.kind] + log_params[4 + stats.group]))
    a = sigma2 / noise_var  # (n_blocks,)
    M = stats.beta.shape[1]
    A = np.eye(M)
    for b in range(len(a)):
        stats.add_to(A, b, a[b])
    rhs = (1.0 / noise_var) @ stats.beta
    try:
        L = sla.cholesky(A, lower=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return failed
    w = sigma2 * sla.cho_solve((L, True), rhs, check_finite=False)
    wGw = np.array([w @ stats.gram_times(b, w) for b in range(len(a))])
    residual = np.maximum(stats.c - 2.0 * stats.beta @ w + wGw, 0.0)  # (n_blocks,)
    ww = float(w @ w)
    quad = float(np.sum(residual / noise_var)) + ww / sigma2
    logdet = float(np.sum(stats.n * np.log(noise_var)) + np.sum(stats.logdet_d)
                   + 2.0 * np.sum(np.log(np.diag(L))))
    lml = -0.5 * quad - 0.5 * logdet - 0.5 * int(stats.n.sum()) * _LOG_2PI
    if not np.isfinite(lml):
        return failed
    if not eval_gradient:
        return lml
    A_inv = sla.cho_solve((L, True), np.eye(M), check_finite=False)
    trace = a * np.array([stats.trace_with(b, A_inv) for b in range(len(a))])
    # ∂/∂ log(noise of block b): r_b / Λ_b - n_b + a_b tr(A⁻¹ G_b)
    per_block = residual / noise_var - stats.n + trace
    gradient = np.zeros(n_params)
    gradient[0] = ww / sigma2 - float(trace.sum())
    np.add.at(gradient, 1 + stats.kind, per_block)
    np.add.at(gradient, 4 + stats.group, per_block)
    return lml, gradient


def fit_scales(likelihood, log_params: np.ndarray, free: Sequence[bool],
               free_scales: np.ndarray, search, rng: np.random.RandomState, owner: str,
               names: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Maximise the likelihood over the noise scales and the free ``log_params``.

    Parameters
    ----------
    likelihood : callable
        ``theta -> (log p, gradient)`` for ``theta = (log_params, log s_1, …, log s_n)``.
    log_params : ndarray
        ``log (σ..., σ_E, σ_F, σ_S)`` at the one-noise optimum: the start.
    free : sequence of bool
        Which of ``log_params`` move (:func:`kernelpot.hyperparameters.free_mask`).
    free_scales : ndarray of bool
        Which scales move (:func:`scale_groups`); the others stay 1.
    search : kernelpot.hyperparameters.NoiseSearch
        Its bounds; a local search from the start (no restarts).
    rng : numpy.random.RandomState
    owner : str
        Names the estimator in warnings.
    names : sequence of str
        The configuration types (for the warnings).

    Returns
    -------
    log_params : ndarray
    log_scales : ndarray of the shape of ``free_scales``, or None
        None (and ``log_params`` as given) when no scale is free.

    Warns
    -----
    UserWarning
        For each scale that ends at a bound of :data:`SCALE_BOUNDS`.
    """
    if not np.any(free_scales):
        logger.info("%s: config_type_noise: no type has enough structures of a kind whose "
                    "noise is fitted; one noise per kind", owner)
        return log_params, None
    n = len(free_scales)
    start = np.concatenate([log_params, np.zeros(n)])
    best = search.optimize(likelihood, start, rng, list(free) + list(free_scales), restarts=0,
                           extra_bounds=[SCALE_BOUNDS] * n)
    log_scales = best[len(log_params):]
    at_bound = free_scales & (np.abs(np.abs(log_scales) - np.log(SCALE_BOUNDS[1])) < 1e-6)
    for j in np.flatnonzero(at_bound):
        warnings.warn(f"{owner}: the {KINDS[j % 3]} noise scale of config_type "
                      f"{names[j // 3]!r} ended at its bound ({np.exp(log_scales[j]):.3g}; "
                      f"bounds {SCALE_BOUNDS}): the likelihood would drop that type's "
                      f"{KINDS[j % 3]} labels or fit them exactly", UserWarning, stacklevel=4)
    return best[:len(log_params)], log_scales


def checked_scales(value, what: str) -> dict[str, dict[str, float]] | None:
    """Return a model file's ``config_type_noise`` entry, checked.

    Raises
    ------
    ValueError
        If it is not None or ``{type: {"energy": s, "forces": s, "stress": s}}`` with
        positive finite scales.
    """
    if value is None:
        return None

    def is_scale(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) \
            and v > 0

    if not isinstance(value, dict) or not value or not all(
            isinstance(name, str) and isinstance(row, dict) and set(row) == set(KINDS)
            and all(is_scale(v) for v in row.values()) for name, row in value.items()):
        raise ValueError(f"load: {what} has a malformed config_type_noise entry {value!r}")
    return {name: {kind: float(row[kind]) for kind in KINDS} for name, row in value.items()}
