"""Input checks shared by the public API: one place, clear messages."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _ATOMIC_NUMBERS
from ase.data import chemical_symbols as _CHEMICAL_SYMBOLS
from ase.geometry import complete_cell


def check_verbose(verbose: int | bool, owner: str) -> int:
    """Return ``verbose`` as a non-negative int (``True``/``False`` give 1/0).

    Parameters
    ----------
    verbose : int or bool
        Verbosity level, 0 silent.
    owner : str
        Name used in error messages.

    Returns
    -------
    int
        The level.

    Raises
    ------
    TypeError
        If ``verbose`` is not an int or bool.
    ValueError
        If ``verbose < 0``.
    """
    if isinstance(verbose, (bool, np.bool_)):
        return int(verbose)
    if not isinstance(verbose, numbers.Integral):
        raise TypeError(f"{owner}: verbose must be an int (0 is silent); got {verbose!r}")
    if verbose < 0:
        raise ValueError(f"{owner}: verbose must be >= 0; got {verbose}")
    return int(verbose)


def check_strain_flag(strain: bool, owner: str) -> None:
    """Check that ``strain`` is a bool.

    Parameters
    ----------
    strain : bool
        The ``strain`` argument of a descriptor's ``compute``.
    owner : str
        Name used in error messages.

    Raises
    ------
    TypeError
        If ``strain`` is not a bool (NumPy bools accepted).
    """
    if not isinstance(strain, (bool, np.bool_)):
        raise TypeError(f"{owner}: strain must be True or False; got {strain!r}")


def check_positive_float(value: float, name: str, owner: str, unit: str = "") -> float:
    """Return ``value`` as a float after checking it is a finite number > 0.

    Parameters
    ----------
    value : float
        The value to check.
    name : str
        The argument's name, for error messages.
    owner : str
        Name used in error messages.
    unit : str, default=""
        Unit appended to the messages, e.g. ``" (Å)"``.

    Returns
    -------
    float
        ``float(value)``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number (bools excluded).
    ValueError
        If ``value`` is not finite or not > 0.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number{unit}; got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be > 0{unit}; got {value}")
    return value


def check_int(value: int, name: str, owner: str, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``.

    Parameters
    ----------
    value : int
        The value to check.
    name : str
        The argument's name, for error messages.
    owner : str
        Name used in error messages.
    minimum : int
        Smallest allowed value.

    Returns
    -------
    int
        ``int(value)``.

    Raises
    ------
    TypeError
        If ``value`` is not an integer (bools excluded).
    ValueError
        If ``value < minimum``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int; got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}; got {value}")
    return int(value)


def check_max_inducing(value, owner: str) -> int | dict | None:
    """Validate a cap on inducing environments per element.

    Parameters
    ----------
    value : int, dict or None
        One count for every element, ``{element: count}``, or None (no cap).
    owner : str
        Names the caller in the error.

    Returns
    -------
    int, dict or None
        ``value`` with its counts as ints.

    Raises
    ------
    ValueError
        If a count is not an int >= 0 (booleans included).
    """
    def count(v, name):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{owner}: max_inducing{name} must be an int >= 0; got {v!r}")
        return int(v)

    if value is None:
        return None
    if isinstance(value, dict):
        return {k: count(v, f"[{k!r}]") for k, v in value.items()}
    return count(value, "")


def species_to_numbers(species: Iterable[str | int], owner: str) -> np.ndarray:
    """Turn symbols or atomic numbers into sorted unique atomic numbers.

    Parameters
    ----------
    species : iterable of str or int
        Chemical symbols or atomic numbers, in any order, repeats allowed.
    owner : str
        Name used in error messages.

    Returns
    -------
    ndarray of int64 of shape (n_species,)
        Sorted unique atomic numbers.

    Raises
    ------
    ValueError
        If ``species`` is empty or names an unknown element.
    TypeError
        If ``species`` is not a sequence of str or int.
    """
    if species is None or isinstance(species, (str, bytes)) or not hasattr(species, "__iter__"):
        raise TypeError(
            f"{owner}: species must be a list of chemical symbols or atomic numbers; "
            f"got {species!r}"
        )
    out = []
    for s in species:
        if isinstance(s, str):
            if s not in _ATOMIC_NUMBERS or s == "X":
                raise ValueError(f"{owner}: unknown chemical symbol {s!r} in species")
            out.append(_ATOMIC_NUMBERS[s])
        elif isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)):
            if not 1 <= int(s) < len(_CHEMICAL_SYMBOLS):
                raise ValueError(f"{owner}: invalid atomic number {s} in species")
            out.append(int(s))
        else:
            raise TypeError(f"{owner}: species entries must be str or int; got {s!r}")
    if not out:
        raise ValueError(f"{owner}: species must name at least one element; got {species!r}")
    return np.unique(np.asarray(out, dtype=np.int64))


def resolve_pbc(atoms: Atoms, periodic: bool | None, owner: str) -> np.ndarray:
    """Return the effective periodicity: ``None`` follows ``atoms.pbc``, ``False`` is open.

    ``True`` also follows ``atoms.pbc`` (per axis, as DScribe does) but
    requires at least one periodic axis.

    Parameters
    ----------
    atoms : ase.Atoms
        The structure.
    periodic : bool or None
        A descriptor's ``periodic`` setting.
    owner : str
        Name used in error messages.

    Returns
    -------
    ndarray of bool of shape (3,)
        Periodicity per cell vector.

    Raises
    ------
    TypeError
        If ``periodic`` is not None or a bool.
    ValueError
        If ``periodic=True`` and no axis of ``atoms`` is periodic.
    """
    if periodic is None:
        return np.array(atoms.pbc, dtype=bool)
    if not isinstance(periodic, (bool, np.bool_)):
        raise TypeError(f"{owner}: periodic must be None, True or False; got {periodic!r}")
    if not periodic:
        return np.zeros(3, dtype=bool)
    pbc = np.array(atoms.pbc, dtype=bool)
    if not pbc.any():
        raise ValueError(
            f"{owner}: periodic=True but the structure has pbc={atoms.pbc.tolist()}; "
            "set atoms.pbc or use periodic=None"
        )
    return pbc


def check_finite_positions(positions: np.ndarray, owner: str) -> None:
    """Raise a ``ValueError`` naming the atoms whose positions are NaN or inf.

    Parameters
    ----------
    positions : ndarray of shape (n_atoms, 3)
    owner : str
        Name used in the message (the caller, and the structure where it knows it).
    """
    finite = np.all(np.isfinite(positions), axis=1)
    if not finite.all():
        raise ValueError(f"{owner}: positions must be finite; atoms "
                         f"{np.flatnonzero(~finite)[:10].tolist()} have NaN or inf")


def check_atoms(atoms: Atoms, known_numbers: np.ndarray, periodic: bool | None,
                owner: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate one structure for a descriptor.

    Parameters
    ----------
    atoms : ase.Atoms
        The structure; not modified.
    known_numbers : ndarray of int
        Atomic numbers the descriptor was built for.
    periodic : bool or None
        The descriptor's ``periodic`` setting.
    owner : str
        Name used in error messages.

    Returns
    -------
    positions : ndarray of shape (n_atoms, 3)
        Cartesian positions in Å, float64, C-contiguous.
    numbers : ndarray of shape (n_atoms,)
        Atomic numbers, int64.
    pbc : ndarray of shape (3,) of bool
        Effective periodicity (:func:`resolve_pbc`).
    cell : ndarray of shape (3, 3)
        Completed cell (non-periodic zero vectors filled in), valid under pbc.

    Raises
    ------
    TypeError
        If ``atoms`` is not an ase.Atoms, or ``periodic`` is not None or a bool.
    ValueError
        If the structure is empty, has non-finite positions, holds unknown
        elements, or its cell is not finite or has zero volume along its periodic
        directions.
    """
    if not isinstance(atoms, Atoms):
        raise TypeError(f"{owner}: expected an ase.Atoms; got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError(f"{owner}: the structure is empty (0 atoms)")
    positions = np.ascontiguousarray(atoms.get_positions(), dtype=np.float64)
    check_finite_positions(positions, owner)
    numbers_ = np.asarray(atoms.numbers, dtype=np.int64)
    unknown = np.setdiff1d(numbers_, known_numbers)
    if unknown.size:
        raise ValueError(
            f"{owner}: the structure contains elements not in species: "
            f"{[_CHEMICAL_SYMBOLS[z] for z in unknown]} (species: "
            f"{[_CHEMICAL_SYMBOLS[z] for z in known_numbers]})"
        )
    pbc = resolve_pbc(atoms, periodic, owner)
    cell = np.array(atoms.cell.array, dtype=np.float64)
    if pbc.any():
        if not np.all(np.isfinite(cell)):
            raise ValueError(f"{owner}: the cell must be finite under periodic boundaries")
        periodic_vectors = cell[pbc]
        singular = np.linalg.svd(periodic_vectors, compute_uv=False)
        scale = max(np.abs(cell).max(), 1.0)
        if singular.min() <= 1e-10 * scale:
            raise ValueError(
                f"{owner}: the cell has zero volume along its periodic directions "
                f"(pbc={pbc.tolist()}, cell={cell.tolist()})"
            )
        cell = _complete_cell(cell, pbc)
    return positions, numbers_, pbc, cell


def _complete_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Make the cell invertible without touching its periodic vectors.

    Non-periodic vectors do not matter for the neighbour list, but a singular
    cell does: if the cell is singular they are dropped and filled in by
    :func:`ase.geometry.complete_cell`.
    """
    if abs(np.linalg.det(cell)) > 1e-10 * max(np.abs(cell).max(), 1.0) ** 3:
        return cell
    cell = cell.copy()
    cell[~pbc] = 0.0
    return np.array(complete_cell(cell), dtype=np.float64)



def closest_contact(pairs, limit: float) -> str | None:
    """Describe the closest pair of a neighbour list if it is closer than ``limit`` Å.

    Parameters
    ----------
    pairs : NeighborList
        From :func:`kernelpot.descriptors.neighbors.neighbor_list`, or any pairs with
        ``i``, ``j`` and ``distances``.
    limit : float
        Distance, Å; 0 or less: never.

    Returns
    -------
    str or None
        "atoms i and j are d Å apart" (or an atom and its own periodic image), or None.
    """
    if limit <= 0 or not np.any(pairs.distances < limit):
        return None
    n = int(np.argmin(pairs.distances))
    i, j, d = int(pairs.i[n]), int(pairs.j[n]), float(pairs.distances[n])
    return (f"atom {i} is {d:.3f} Å from its own periodic image (a cell too small)"
            if i == j else f"atoms {i} and {j} are {d:.3f} Å apart")


def close_contact(atoms: Atoms, periodic: bool | None, min_distance: float | None) -> str | None:
    """Describe the closest pair of a structure if it is closer than ``min_distance``.

    For structures to predict (:func:`check_geometry` refuses such training structures):
    the atoms have passed the prediction's own checks. The neighbour list bins at 2 Å
    at least: vesin's cell list with a 0.5 Å cutoff costs 6-10 times more (0.39 against
    0.07 ms for 32 atoms, 12.1 against 1.1 ms for 2,048, measured).

    Parameters
    ----------
    atoms : ase.Atoms
    periodic : bool or None
        The descriptor's ``periodic`` setting.
    min_distance : float or None
        None or not above 0: no check.

    Returns
    -------
    str or None
    """
    if min_distance is None or not min_distance > 0:
        return None
    import vesin

    pbc = resolve_pbc(atoms, periodic, "close_contact")
    cell = _complete_cell(np.array(atoms.cell.array, dtype=np.float64), pbc) if pbc.any() \
        else np.zeros((3, 3))
    search = vesin.NeighborList(cutoff=max(float(min_distance), 2.0), full_list=False)
    i, j, d = search.compute(points=np.asarray(atoms.positions, dtype=np.float64), box=cell,
                             periodic=pbc.tolist(), quantities="ijd")
    return closest_contact(_Pairs(np.asarray(i), np.asarray(j), np.asarray(d)),
                           float(min_distance))


class _Pairs(NamedTuple):
    """Neighbour pairs as :func:`closest_contact` reads them."""

    i: np.ndarray
    j: np.ndarray
    distances: np.ndarray


def check_geometry(frames: list[Atoms], species: np.ndarray, periodic: bool | None,
                   r_cut: float | None, min_distance: float | None, owner: str,
                   shortest=None) -> None:
    """Check training structures as the descriptor will see them, before the work.

    Each structure goes through :func:`check_atoms` (finite positions, known elements,
    a valid cell, the periodicity the descriptor uses); then one neighbour list at
    ``max(r_cut, min_distance)`` refuses atoms closer than ``min_distance`` and warns
    once about atoms with no neighbour within ``r_cut``. Such an atom's environment
    is the same as any other isolated atom of its element: it only informs that
    element's reference energy, and its forces carry nothing. A one-atom open
    structure (a free-atom reference) is what it is meant to be and is not counted.

    Parameters
    ----------
    frames : list of ase.Atoms
        Training structures.
    species : ndarray of int
        Atomic numbers the descriptor knows.
    periodic : bool or None
        The descriptor's ``periodic`` setting.
    r_cut : float or None
        The descriptor's cutoff, Å (None: no isolated-atom warning).
    min_distance : float or None
        Shortest accepted interatomic distance, Å (None or 0: any).
    owner : str
        Name used in messages.
    shortest : kernelpot.contacts.ShortestPairs, optional
        Lowered to the shortest pair distances of ``frames`` from the same neighbour
        lists (the training structures are read once).

    Raises
    ------
    ValueError
        From :func:`check_atoms`, or naming the first structure and atom pair closer
        than ``min_distance`` (an atom and its own periodic image: a cell too small).
    """
    import warnings

    from kernelpot.descriptors.neighbors import neighbor_list

    min_distance = float(min_distance or 0.0)
    r_cut = float(r_cut or 0.0)
    lonely_frames = []
    for k, atoms in enumerate(frames):
        where = f"{owner}: structure {k}"
        positions, _, pbc, cell = check_atoms(atoms, species, periodic, where)
        cutoff = max(r_cut, min_distance)
        if cutoff <= 0:
            continue
        pairs = neighbor_list(positions, cell, pbc, cutoff)
        what = closest_contact(pairs, min_distance)
        if what is not None:
            raise ValueError(f"{where}: {what}, closer than min_distance={min_distance} Å "
                             "(duplicated atoms, or positions in the wrong unit?); pass "
                             "min_distance=None (kernelpot fit: --min-distance 0) to accept "
                             "such structures")
        if shortest is not None:
            shortest.add_pairs(atoms, pairs.i, pairs.j, pairs.distances)
        if r_cut > 0 and (len(atoms) > 1 or pbc.any()):
            near = pairs.distances < r_cut
            lonely = int(np.sum(np.bincount(pairs.i[near], minlength=len(atoms)) == 0))
            if lonely:
                lonely_frames.append((k, lonely))
    if lonely_frames:
        k, lonely = lonely_frames[0]
        warnings.warn(
            f"{owner}: {len(lonely_frames)} training structure(s) hold atoms with no "
            f"neighbour within r_cut = {r_cut} Å (structure {k}: {lonely} atom(s)); such an "
            "atom only informs its element's reference energy and its forces carry "
            "nothing. Check the cell, the units and r_cut (a one-atom open structure, a "
            "free-atom reference, is not counted)", UserWarning, stacklevel=4)
