"""Blocks of consecutive, correlated training structures for the leave-out calibration.

Structures taken from one MD trajectory a few femtoseconds apart are near-duplicates of
their neighbours: left out one at a time (leave-one-structure-out, LOSO), each is
predicted from its neighbours on both sides, and its error is smaller than that of a
structure from another trajectory at the same raw variance. The std map fitted on such
errors is then too narrow (measured: six GFN2-xTB water molecules, 150 frames 5 fs apart,
the default model's LOSO force MAE 13.6 meV/Å against 20.6 on an independent trajectory;
1σ coverage 0.57, RMS z-score 1.33). Leaving out blocks of consecutive structures long
enough that the rest holds no near-duplicate removes that optimism (the same model with
blocks of 10 frames: LOSO MAE 22.3 meV/Å, coverage 0.64, RMS z-score 1.15).

The block length is read off the training set's own order: the median distance between
structures ``ℓ`` apart in the list, relative to the median distance of random pairs, as a
function of the lag ``ℓ`` (each structure's fingerprint is its whitened energy design
row per atom, the structure's summed kernel with the inducing environments; for the
exact model, the kernel distance of the per-atom energy covariances). A list in
random order gives a ratio near 1 at every lag, and blocks of one structure (plain
LOSO); a trajectory gives a small ratio at lag 1 (below :data:`CORRELATED_RATIO`) that
grows towards 1, and the block length is the first lag at which it reaches
:data:`SIMILAR_RATIO`. Any order in which neighbours are alike counts, not only time: a
file sorted by configuration type (the mlearn sets) or a scan sorted by a lattice
constant is left out in blocks of alike structures too, which asks the calibration to
cover structures a little further from the rest than one at a time would.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

#: Lag-distance ratio (to random pairs) at which structures count as no longer correlated
SIMILAR_RATIO = 0.9
#: Largest lag-1 ratio that counts as correlated at all: the median of a few dozen random
#: pairs scatters by about 10 % about 1, which must not read as a trajectory
CORRELATED_RATIO = 0.75
#: Fewest blocks the leave-out keeps (caps the block length at ``n // MIN_BLOCKS``)
MIN_BLOCKS = 10
#: Most observation rows a block holds (caps the block length): the leave-out solves one
#: dense system of a block's rows, whose cost grows as their cube
MAX_BLOCK_ROWS = 2000
#: Random pairs whose median distance is the reference of the lag ratios
_N_PAIRS = 4000


def fingerprint_distance(fingerprints: np.ndarray) -> Callable:
    """Return ``distance(i, j)``: the Euclidean distance of structures' fingerprint vectors."""
    fingerprints = np.asarray(fingerprints, dtype=np.float64)

    def distance(i, j):
        return np.linalg.norm(fingerprints[i] - fingerprints[j], axis=-1)

    distance.n = len(fingerprints)
    return distance


def gram_distance(gram: np.ndarray) -> Callable:
    """Return ``distance(i, j) = sqrt(K_ii + K_jj - 2 K_ij)``: the kernel's distance."""
    gram = np.asarray(gram, dtype=np.float64)
    diagonal = np.diag(gram).copy()

    def distance(i, j):
        return np.sqrt(np.maximum(diagonal[i] + diagonal[j] - 2.0 * gram[i, j], 0.0))

    distance.n = len(gram)
    return distance


def lag_ratios(distance: Callable, max_lag: int) -> np.ndarray:
    """Return the median distance of structures ``ℓ = 1 … max_lag`` apart over random pairs'.

    Parameters
    ----------
    distance : callable
        ``distance(i, j)`` of index arrays, with the number of structures as
        ``distance.n`` (:func:`fingerprint_distance`, :func:`gram_distance`), in the
        training set's order.
    max_lag : int

    Returns
    -------
    ndarray of shape (max_lag,)
        NaN everywhere when every random pair coincides.
    """
    n = distance.n
    rng = np.random.default_rng(0)  # the same ratios for the same training set
    i, j = rng.integers(0, n, _N_PAIRS), rng.integers(0, n, _N_PAIRS)
    keep = i != j
    reference = np.median(distance(i[keep], j[keep]))
    if not reference > 0:
        return np.full(max_lag, np.nan)
    index = np.arange(n)
    return np.array([np.median(distance(index[lag:], index[:-lag])) / reference
                     for lag in range(1, max_lag + 1)])


def check_setting(setting: object, owner: str) -> None:
    """Raise unless ``setting`` is "auto" or an int >= 1 (``loso_blocks``)."""
    if not ((isinstance(setting, str) and setting == "auto")
            or (isinstance(setting, numbers.Integral) and not isinstance(setting, bool)
                and setting >= 1)):
        raise ValueError(f"{owner}: loso_blocks must be 'auto' or an int >= 1; "
                         f"got {setting!r}")


def block_length(distance: Callable | None, setting: str | int = "auto",
                 n_structures: int | None = None, rows_per_structure: int = 1) -> int:
    """Return the number of consecutive structures each leave-out block holds.

    Parameters
    ----------
    distance : callable or None
        See :func:`lag_ratios`; None: no fingerprints (an int ``setting`` still holds).
    setting : "auto" or int, default="auto"
        An int is the length itself (1: leave one structure out); "auto" reads it off
        the lag ratios (module docstring). Either is capped so that at least
        :data:`MIN_BLOCKS` blocks remain and a block holds at most
        :data:`MAX_BLOCK_ROWS` rows.
    n_structures : int, optional
        Needed without ``distance``.
    rows_per_structure : int, default=1
        The most observation rows a structure has (``1 + 3 N`` with forces, 6 more
        with a stress).

    Returns
    -------
    int
        At least 1.
    """
    n = distance.n if distance is not None else int(n_structures)
    cap = max(min(n // MIN_BLOCKS, MAX_BLOCK_ROWS // max(int(rows_per_structure), 1)), 1)
    if not isinstance(setting, str):
        return int(min(max(int(setting), 1), cap))
    if cap == 1 or distance is None:
        return 1
    ratios = lag_ratios(distance, cap)
    if not np.all(np.isfinite(ratios)) or ratios[0] >= CORRELATED_RATIO:
        return 1
    reached = np.flatnonzero(ratios >= SIMILAR_RATIO)
    return int(reached[0] + 1) if reached.size else cap


def structure_blocks(distance: Callable | None, n_structures: int,
                     setting: str | int = "auto", owner: str = "",
                     rows_per_structure: int = 1) -> np.ndarray | None:
    """Return the leave-out block of each training structure, or None for one each.

    Parameters
    ----------
    distance : callable or None
        See :func:`lag_ratios`; None (e.g. structures without an energy label): "auto"
        leaves one out at a time, an int still gives its blocks.
    n_structures : int
    setting : "auto" or int, default="auto"
        See :func:`block_length`.
    owner : str, default=""
        Names the caller in the log line.
    rows_per_structure : int, default=1
        See :func:`block_length`.

    Returns
    -------
    ndarray of int of shape (n_structures,) or None
        Structure ``k`` in block ``k // length``; None where the length is 1.
    """
    check_setting(setting, owner or "loso_blocks")
    if distance is not None and distance.n != n_structures:
        distance = None
    length = block_length(distance, setting, n_structures, rows_per_structure)
    if length == 1:
        return None
    logger.info("%s: the leave-out calibration leaves out blocks of %d consecutive training "
                "structures (loso_blocks=%r)", owner, length, setting)
    return np.arange(n_structures) // length


def energy_fingerprints(Kw_energy: np.ndarray, energy_structure: np.ndarray,
                        n_atoms: np.ndarray, n_structures: int) -> Callable | None:
    """Return the distance of structures' whitened energy design rows per atom.

    None if a structure has no energy row.

    Parameters
    ----------
    Kw_energy : ndarray of shape (n_energy, M)
        The whitened energy rows.
    energy_structure : ndarray of int of shape (n_energy,)
        The structure of each row.
    n_atoms : ndarray of shape (n_structures,)
    n_structures : int

    Returns
    -------
    callable or None
        :func:`fingerprint_distance` of those rows.
    """
    if len(energy_structure) != n_structures:
        return None
    fingerprints = np.empty((n_structures, Kw_energy.shape[1]))
    fingerprints[energy_structure] = Kw_energy / np.asarray(n_atoms)[energy_structure, None]
    return fingerprint_distance(fingerprints)


def by_block(structure: np.ndarray, blocks: np.ndarray | None) -> np.ndarray:
    """Return the block of each row's structure (the structures themselves without blocks)."""
    structure = np.asarray(structure)
    return structure if blocks is None else blocks[structure]


def block_columns(own: list[np.ndarray] | None,
                  blocks: np.ndarray | None) -> list[np.ndarray] | None:
    """Return the inducing columns chosen from each block's structures (per structure without)."""
    if own is None or blocks is None:
        return own
    merged = [[] for _ in range(int(blocks.max()) + 1)]
    for structure, columns in enumerate(own):
        merged[blocks[structure]].append(np.asarray(columns, dtype=np.int64))
    return [np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            for parts in merged]
