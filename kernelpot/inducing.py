"""Selection of inducing environments, per species, on skmatter's sample selectors."""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import sklearn
from ase.data import atomic_numbers as _ATOMIC_NUMBERS
from ase.data import chemical_symbols as _CHEMICAL_SYMBOLS
from skmatter.sample_selection import CUR, FPS

logger = logging.getLogger(__name__)

__all__ = ["SPARSE_METHODS", "FarthestPointPool", "candidate_atoms", "choose_inducing",
           "held_environments", "resolve_n_sparse", "select_inducing"]

SPARSE_METHODS = ("cur", "fps", "random", "all")
_INTEGER_TYPES = (numbers.Integral, np.integer)


def resolve_n_sparse(n_sparse: int | dict[str | int, int] | None,
                     species_numbers: np.ndarray, counts: np.ndarray,
                     default_cap: int) -> np.ndarray:
    """Resolve the number of inducing environments per species.

    Parameters
    ----------
    n_sparse : int, dict or None
        An int for every species, a dict ``{element: int}`` (symbols or atomic
        numbers; missing elements get ``default_cap``), or ``None`` for
        ``default_cap``. Never more than the environments available.
    species_numbers : ndarray of int
        Atomic numbers of the species, sorted.
    counts : ndarray of int
        Training environments per species.
    default_cap : int

    Returns
    -------
    ndarray of int, one per species
    """
    owner = "SparseGPPotential"
    if n_sparse is None:
        wanted = np.full(len(species_numbers), default_cap)
    elif isinstance(n_sparse, _INTEGER_TYPES):
        if isinstance(n_sparse, bool) or n_sparse < 1:
            raise ValueError(f"{owner}: n_sparse must be >= 1; got {n_sparse!r}")
        wanted = np.full(len(species_numbers), int(n_sparse))
    elif isinstance(n_sparse, dict):
        wanted = np.full(len(species_numbers), default_cap)
        for key, value in n_sparse.items():
            z = _ATOMIC_NUMBERS.get(key, key) if isinstance(key, str) else key
            if not isinstance(z, _INTEGER_TYPES) or z not in species_numbers:
                raise ValueError(f"{owner}: n_sparse names {key!r}, which is not a training "
                                 f"species {[_CHEMICAL_SYMBOLS[n] for n in species_numbers]}")
            if isinstance(value, bool) or not isinstance(value, _INTEGER_TYPES) or value < 1:
                raise ValueError(f"{owner}: n_sparse[{key!r}] must be an int >= 1; "
                                 f"got {value!r}")
            wanted[int(np.searchsorted(species_numbers, z))] = int(value)
    else:
        raise TypeError(f"{owner}: n_sparse must be an int, a dict per element or None; "
                        f"got {type(n_sparse).__name__}")
    return np.minimum(wanted, counts)


def select_inducing(features: np.ndarray, n_select: int, method: str,
                    rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    """Select the inducing environments among ``features`` of one species (indices).

    Parameters
    ----------
    features : ndarray of shape (n_environments, n_features)
    n_select : int
    method : {"cur", "fps", "random", "all"}
        "all" keeps every environment (``n_select`` is then ignored); "cur" ranks
        by CUR leverage scores (skmatter ``CUR``); "fps" is farthest-point
        sampling (skmatter ``FPS``) from a random start; "random" draws without
        replacement. Selection runs on unit-normalised features, the geometry
        of the dot-product kernels.
    rng : numpy.random.RandomState or Generator
        Source of randomness; results are deterministic given it.

    Returns
    -------
    ndarray of int, sorted
    """
    if method not in SPARSE_METHODS:
        raise ValueError(f"sparse_method must be one of {SPARSE_METHODS}; got {method!r}")
    n_env = len(features)
    if method == "all" or n_select >= n_env:
        return np.arange(n_env)
    norms = np.linalg.norm(features, axis=1)
    if not np.all(np.isfinite(norms)):
        raise ValueError("select_inducing: the descriptors hold NaN or infinite values")
    unit = features / np.where(norms > 0, norms, 1.0)[:, None]
    if method == "random":
        chosen = rng.choice(n_env, size=n_select, replace=False)
    elif method == "fps":
        selector = FPS(n_to_select=n_select, initialize=int(rng.choice(n_env)))
        with _quiet_selection():
            selector.fit(unit)
        chosen = selector.selected_idx_
    elif method == "cur":
        selector = CUR(n_to_select=n_select, recompute_every=0, k=_cur_rank(unit, n_select))
        with _quiet_selection():
            selector.fit(unit - unit.mean(axis=0))
        chosen = selector.selected_idx_
    else:
        raise ValueError(f"sparse_method must be one of {SPARSE_METHODS}; got {method!r}")
    return np.sort(np.asarray(chosen, dtype=np.int64))


@contextmanager
def _quiet_selection() -> Iterator[None]:
    """Run a skmatter selector without its warnings and its per-step finiteness checks.

    skmatter's greedy selectors validate the whole feature matrix (scikit-learn's
    ``check_array``, a pass over every value) at each step; :func:`select_inducing`
    checks it once. Measured (one BLAS thread, 20,000 × 855 unit features, 400 chosen by
    FPS): 20.8 s with the checks, 6.9 s without, the same choice.
    """
    with warnings.catch_warnings(), sklearn.config_context(assume_finite=True):
        warnings.simplefilter("ignore", UserWarning)
        yield


def _cur_rank(features: np.ndarray, n_select: int) -> int:
    """Singular vectors behind the CUR leverage scores.

    skmatter's default (one) ranks environments by their weight on the first
    principal direction only, which picks outliers (measured: the force std then
    ranks errors with Spearman 0.18 instead of 0.46 on ethanol); scores over as
    many directions as are selected (below the rank, as svds needs) cover more of
    the space.
    """
    return int(max(1, min(n_select, min(features.shape) - 1)))


class FarthestPointPool:
    """One element's inducing environments by farthest-point sampling, chosen as they stream.

    Environments are added a structure at a time. While they number at most
    ``capacity`` they are all kept, and :meth:`select` is farthest-point sampling over
    all of them (:func:`select_inducing`, exactly). When more arrive, the pool is reduced
    by farthest-point sampling to ``2 n_select`` of them each time it fills, and the
    final selection runs on what is kept: a merge-and-reduce scheme (farthest-point
    sampling of farthest-point samples), which keeps the environments far from the
    rest, as the k-centre problem that farthest-point sampling approximates asks. It
    holds at most ``capacity`` descriptors plus those of the structure being added
    (twice that for a moment while a reduction joins them).

    Parameters
    ----------
    n_select : int
        Inducing environments wanted.
    capacity : int
        Environments held at most (raised to :attr:`HELD_PER_SELECTED` ``× n_select``
        if below).
    rng : numpy.random.RandomState or Generator
        The start of each farthest-point sampling.

    Attributes
    ----------
    origin : ndarray of int
        After :meth:`select`, the ``structure`` each chosen environment was added with.
    """

    #: The least capacity per environment selected: a reduction keeps twice the
    #: selection, so each one makes room for at least as many new environments.
    HELD_PER_SELECTED = 4

    def __init__(self, n_select: int, capacity: int,
                 rng: np.random.RandomState | np.random.Generator):
        self.n_select = int(n_select)
        self.capacity = max(int(capacity), self.HELD_PER_SELECTED * self.n_select)
        self.rng = rng
        self.n_seen = 0
        self.n_reductions = 0
        self._parts: list[np.ndarray] = []
        self._origins: list[np.ndarray] = []
        self._held = 0
        self.origin = np.zeros(0, dtype=np.int64)

    def add(self, features: np.ndarray, structure: int = -1) -> None:
        """Add environments (rows) of one ``structure``; reduce the pool if it is then full.

        Parameters
        ----------
        features : ndarray of shape (n, n_features)
        structure : int, default=-1
            Where they come from (a training structure's index), kept with each chosen
            environment (:attr:`origin`); -1 for not known.
        """
        if not len(features):
            return
        # a copy unless it is one already (not a view that keeps a larger array alive)
        self._parts.append(features if features.base is None else np.array(features))
        self._origins.append(np.full(len(features), int(structure), dtype=np.int64))
        self._held += len(features)
        self.n_seen += len(features)
        if self._held > self.capacity:
            pool, origin = self._joined()
            keep = select_inducing(pool, 2 * self.n_select, "fps", self.rng)
            self._parts, self._origins, self._held = [pool[keep]], [origin[keep]], len(keep)
            self.n_reductions += 1

    def select(self) -> np.ndarray:
        """Return the chosen inducing descriptors, shape (n_select, n_features), read-only.

        Raises
        ------
        ValueError
            If no environment was added.
        """
        if not self._parts:
            raise ValueError("FarthestPointPool.select: no environments were added")
        pool, origin = self._joined()
        chosen = select_inducing(pool, self.n_select, "fps", self.rng)
        z = np.array(pool[chosen])
        z.setflags(write=False)
        self.origin = origin[chosen]
        return z

    def _joined(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
            self._origins = [np.concatenate(self._origins)]
        return self._parts[0], self._origins[0]


def held_environments(counts: np.ndarray, n_select: np.ndarray, pool_size: int | None,
                      method: str) -> np.ndarray:
    """Return the environments per element whose descriptors the selection holds at most.

    What :class:`FarthestPointPool` (``"fps"``) and :func:`candidate_atoms` (``"cur"``,
    ``"random"``) hold for ``inducing_pool=pool_size``; every environment for ``"all"``
    or ``pool_size=None``.

    Parameters
    ----------
    counts : ndarray of int
        Training environments per element.
    n_select : ndarray of int
        Inducing environments wanted per element.
    pool_size : int or None
    method : {"cur", "fps", "random", "all"}

    Returns
    -------
    ndarray of int
    """
    counts = np.asarray(counts)
    if method == "all" or pool_size is None:
        return counts
    least = FarthestPointPool.HELD_PER_SELECTED * np.asarray(n_select) if method == "fps" \
        else np.asarray(n_select)
    return np.minimum(counts, np.maximum(int(pool_size), least))


def candidate_atoms(species_index: list[np.ndarray], n_select: np.ndarray,
                    pool_size: int | None,
                    rng: np.random.RandomState | np.random.Generator) -> list[np.ndarray] | None:
    """Atoms of each structure that the selection sees: all, or a uniform sample.

    An element with more than ``max(pool_size, n_select[s])`` environments in the
    training set is represented by that many of them, drawn uniformly without
    replacement over all its environments; the others keep every environment. Only
    the candidates' descriptors need to be held while the inducing environments are
    chosen, so that memory no longer grows with the training set.

    Parameters
    ----------
    species_index : list of ndarray of int
        Per structure, the species index of every atom.
    n_select : ndarray of int
        Inducing environments wanted per species.
    pool_size : int or None
        Candidates per species; ``None`` keeps every environment.
    rng : numpy.random.RandomState or Generator
        Drawn from only when some species has more environments than its pool.

    Returns
    -------
    list of ndarray of int or None
        Per structure, the sorted indices of its candidate atoms; ``None`` when every
        environment is a candidate (and ``rng`` was not used).
    """
    if pool_size is None:
        return None
    n_species = len(n_select)
    per_structure = np.stack([np.bincount(index, minlength=n_species)
                              for index in species_index])
    totals = per_structure.sum(axis=0)
    pools = np.maximum(int(pool_size), np.asarray(n_select))
    sampled = np.flatnonzero(totals > pools)
    if not len(sampled):
        return None
    keep = [np.ones(len(index), dtype=bool) for index in species_index]
    for s in sampled:
        chosen = np.zeros(totals[s], dtype=bool)
        chosen[rng.choice(totals[s], size=int(pools[s]), replace=False)] = True
        # species s's environments are numbered structure by structure, atom by atom
        starts = np.concatenate([[0], np.cumsum(per_structure[:, s])])
        for k, index in enumerate(species_index):
            keep[k][index == s] = chosen[starts[k]:starts[k + 1]]
    return [np.flatnonzero(mask) for mask in keep]


def choose_inducing(features: list[np.ndarray], species_index: list[np.ndarray],
                    n_species: int, n_sparse: int | dict[str | int, int] | None,
                    method: str, rng: np.random.RandomState | np.random.Generator,
                    default_cap: int, species_numbers: np.ndarray,
                    return_origin: bool = False) -> list[np.ndarray] | tuple[list, list]:
    """Inducing descriptors per species from the training structures' environments.

    Parameters
    ----------
    features : list of ndarray of shape (n_atoms_k, n_features)
        Descriptors of every training structure.
    species_index : list of ndarray of int
        Species index (into ``species_numbers``) of every atom of each structure.
    n_species : int
    n_sparse : int, dict or None
        See :func:`resolve_n_sparse`.
    method : {"cur", "fps", "random", "all"}
    rng : numpy.random.RandomState or Generator
    default_cap : int
        Environments per species when ``n_sparse`` does not say.
    species_numbers : ndarray of int
        Atomic numbers of the species, sorted.
    return_origin : bool, default=False
        Also return where each inducing environment comes from.

    Returns
    -------
    inducing : list of ndarray of shape (m_s, n_features)
        Read-only (kernels may cache data derived from them).
    origin : list of ndarray of int of shape (m_s,)
        With ``return_origin``: the position in ``features`` of the structure each
        inducing environment was chosen from.
    """
    counts = np.bincount(np.concatenate(species_index), minlength=n_species)
    n_select = resolve_n_sparse(n_sparse, species_numbers, counts, default_cap)
    inducing, origins = [], []
    for s in range(n_species):
        # one element's environments at a time (not all of them joined first, a copy)
        pool = np.concatenate([f[index == s] for f, index in zip(features, species_index,
                                                                  strict=True)])
        chosen = select_inducing(pool, int(n_select[s]), method, rng)
        z = np.array(pool[chosen])
        z.setflags(write=False)  # fixed from here on; kernels may cache derived data
        inducing.append(z)
        if return_origin:
            structure = np.repeat(np.arange(len(species_index)),
                                  [int(np.sum(index == s)) for index in species_index])
            origins.append(structure[chosen])
    return (inducing, origins) if return_origin else inducing
