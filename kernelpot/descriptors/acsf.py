"""Behler–Parrinello atom-centred symmetry functions with analytic gradients."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from kernelpot._validation import (
    check_atoms,
    check_positive_float,
    check_strain_flag,
    species_to_numbers,
)
from kernelpot.descriptors._acsf_kernels import acsf_compute
from kernelpot.descriptors._scatter_kernels import scatter_add_blocks
from kernelpot.descriptors.base import Descriptor, DescriptorResult
from kernelpot.descriptors.neighbors import neighbor_list, unique_pairs

if TYPE_CHECKING:
    from ase import Atoms

logger = logging.getLogger(__name__)

__all__ = ["ACSF"]

#: Angular exponents of :meth:`ACSF.from_grid` (Imbalzano et al. 2018, Gastegger et al. 2018).
GRID_ZETAS = (1.0, 2.0, 4.0, 16.0)


class ACSF(Descriptor):
    """Atom-centred symmetry functions (Behler–Parrinello), Numba-compiled.

    Values, parameters and feature order are those of
    :class:`dscribe.descriptors.ACSF`; gradients with respect to every atom
    within the cutoff are analytic and returned in neighbour-sparse form.

    Parameters
    ----------
    species : sequence of str or int
        Elements the descriptor knows (symbols or atomic numbers), stored as
        given; features are ordered by atomic number.
    r_cut : float
        Cutoff radius in Å of the cosine cutoff ``fc(r) = (cos(π r / r_cut) + 1) / 2``.
    g2_params : array-like of shape (n_g2, 2), optional
        ``(η [Å⁻²], R_s [Å])`` of the radial functions
        ``G2 = Σ_j exp(-η (r_ij - R_s)²) fc(r_ij)``.
    g3_params : array-like of shape (n_g3,), optional
        ``κ [Å⁻¹]`` of ``G3 = Σ_j cos(κ r_ij) fc(r_ij)``.
    g4_params : array-like of shape (n_g4, 3), optional
        ``(η [Å⁻²], ζ, λ)`` of
        ``G4 = 2^(1-ζ) Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(-η (r_ij² + r_ik² + r_jk²))
        fc(r_ij) fc(r_ik) fc(r_jk)``.
    g5_params : array-like of shape (n_g5, 3), optional
        ``(η, ζ, λ)`` of ``G5``, as ``G4`` without the ``r_jk`` terms.
    periodic : bool or None, default=None
        ``None`` follows ``atoms.pbc``; ``False`` ignores the cell; ``True``
        also follows ``atoms.pbc`` per axis but requires one periodic axis.

    Attributes
    ----------
    n_features : int
        ``(1 + n_g2 + n_g3) n_species + (n_g4 + n_g5) n_species (n_species + 1) / 2``.

    See Also
    --------
    ACSF.from_grid : A standard parameter set that scales with ``r_cut``.
    kernelpot.descriptors.SOAP : The SOAP power spectrum, same interface.

    Notes
    -----
    As in DScribe, every species block starts with ``G1`` (the sum of cutoff
    functions), and G4/G5 sum over unordered neighbour pairs. The Jacobian is
    built from ``∂/∂r_j = (∂G/∂r_ij) (r_j - r_i) / r_ij`` and the chain rule
    through ``cos θ_ijk``; the centre's row is minus the sum of the others.

    References
    ----------
    .. [1] J. Behler, "Atom-centered symmetry functions for constructing
       high-dimensional neural network potentials", J. Chem. Phys. 134,
       074106 (2011). https://doi.org/10.1063/1.3553717

    Examples
    --------
    >>> from ase.build import molecule
    >>> from kernelpot.descriptors import ACSF
    >>> acsf = ACSF(["H", "O"], r_cut=4.0, g2_params=[[1.0, 0.0]], g4_params=[[0.1, 1.0, 1.0]])
    >>> result = acsf.compute(molecule("H2O"))
    >>> result.features.shape, result.gradients.shape
    ((3, 7), (9, 3, 7))
    """

    def __init__(self, species: Sequence[str | int], r_cut: float,
                 g2_params: ArrayLike | None = None, g3_params: ArrayLike | None = None,
                 g4_params: ArrayLike | None = None, g5_params: ArrayLike | None = None,
                 periodic: bool | None = None) -> None:
        self.species = species
        self.r_cut = r_cut
        self.g2_params = g2_params
        self.g3_params = g3_params
        self.g4_params = g4_params
        self.g5_params = g5_params
        self.periodic = periodic

    # -- standard parameter sets ---------------------------------------------------------
    @classmethod
    def from_grid(cls, species: Sequence[str | int], r_cut: float, n_radial: int = 8,
                  n_angular: int = 8, r_min: float = 0.5, periodic: bool | None = None,
                  angular: str = "g4") -> ACSF:
        """Build an ACSF with a standard, cutoff-scaled parameter set.

        Parameters
        ----------
        species : sequence of str or int
            Elements the descriptor knows (symbols or atomic numbers).
        r_cut : float
            Cutoff radius in Å.
        n_radial : int, default=8
            Number of G2 functions: ``n_radial // 2`` centred (``R_s = 0``)
            and the rest shifted.
        n_angular : int, default=8
            Number of angular functions (G4 or G5). Cycles through
            ζ ∈ {1, 2, 4, 16} × λ ∈ {+1, −1}; past 8, further η values are
            added.
        r_min : float, default=0.5
            Shortest distance in Å the radial grid resolves.
        periodic : bool or None, default=None
            As in :class:`ACSF`.
        angular : {"g4", "g5"}, default="g4"
            Whether the angular functions are G4 (with the ``r_jk`` terms) or G5.

        Returns
        -------
        ACSF
            A descriptor with ``g2_params`` and ``g4_params`` (or ``g5_params``)
            filled in; ``None`` where a grid is empty.

        Raises
        ------
        ValueError
            If ``r_cut`` or ``r_min`` is not > 0, ``r_min >= r_cut / 2``, a count
            is not an int >= 0, or ``angular`` is unknown.

        Notes
        -----
        Radial grid (the "centred" and "shifted" sets of Gastegger et al. and
        Imbalzano et al.): ``n_c = n_radial // 2`` centred Gaussians with
        widths ``s_k`` equally spaced in ``[r_min, r_cut / 2]``
        (``η = 1 / (2 s_k²)``, ``R_s = 0``), and ``n_s = n_radial - n_c``
        shifted Gaussians with centres ``R_s`` equally spaced in
        ``[r_min, r_cut - Δ]``, ``Δ = (r_cut - r_min) / n_s``, each of width
        ``Δ`` (``η = 1 / (2 Δ²)``). Angular functions use ``η`` equally
        spaced between ``1 / (2 (r_cut/2)²)`` and ``1 / (2 r_cut²)`` per block
        of eight ``(ζ, λ)`` combinations, so that the whole set scales with
        ``r_cut``.

        References
        ----------
        .. [1] M. Gastegger, L. Schwiedrzik, M. Bittermann, F. Berzsenyi and
           P. Marquetand, "wACSF—Weighted atom-centered symmetry functions as
           descriptors in machine learning potentials", J. Chem. Phys. 148,
           241709 (2018). https://doi.org/10.1063/1.5019667
        .. [2] G. Imbalzano, A. Anelli, D. Giofré, S. Klees, J. Behler and
           M. Ceriotti, "Automatic selection of atomic fingerprints and
           reference configurations for machine-learning potentials",
           J. Chem. Phys. 148, 241730 (2018). https://doi.org/10.1063/1.5024611
        """
        r_cut = check_positive_float(r_cut, "r_cut", "ACSF.from_grid", " (Å)")
        r_min = check_positive_float(r_min, "r_min", "ACSF.from_grid", " (Å)")
        if r_min >= r_cut / 2:
            raise ValueError(
                f"ACSF.from_grid: r_min must be below r_cut / 2 = {r_cut / 2} Å; got {r_min}"
            )
        for name, value in (("n_radial", n_radial), ("n_angular", n_angular)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ACSF.from_grid: {name} must be an int >= 0; got {value!r}")
        if angular not in ("g4", "g5"):
            raise ValueError(f"ACSF.from_grid: angular must be 'g4' or 'g5'; got {angular!r}")
        g2 = []
        n_centred = n_radial // 2
        n_shifted = n_radial - n_centred
        if n_centred:
            for width in np.linspace(r_min, r_cut / 2, n_centred):
                g2.append([1.0 / (2.0 * width**2), 0.0])
        if n_shifted:
            spacing = (r_cut - r_min) / n_shifted
            for centre in np.linspace(r_min, r_cut - spacing, n_shifted):
                g2.append([1.0 / (2.0 * spacing**2), float(centre)])
        combos = [(zeta, lam) for zeta in GRID_ZETAS for lam in (1.0, -1.0)]
        n_eta = -(-n_angular // len(combos)) if n_angular else 0
        etas = np.linspace(1.0 / (2.0 * (r_cut / 2) ** 2), 1.0 / (2.0 * r_cut**2), n_eta) \
            if n_eta > 1 else [1.0 / (2.0 * (r_cut / 2) ** 2)] * n_eta
        angular_params = [[float(eta), zeta, lam] for eta in etas for zeta, lam in combos]
        angular_params = angular_params[:n_angular]
        kwargs = {"g4_params" if angular == "g4" else "g5_params": angular_params or None}
        return cls(species, r_cut, g2_params=g2 or None, periodic=periodic, **kwargs)

    # -- validation ------------------------------------------------------------------
    def _check_params(self):
        """Validate and convert the parameters; cache the result by value."""
        key = (repr(self.species), repr(self.r_cut), repr(self.g2_params),
               repr(self.g3_params), repr(self.g4_params), repr(self.g5_params),
               repr(self.periodic))
        cached = getattr(self, "_checked", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        owner = "ACSF"
        numbers = species_to_numbers(self.species, owner)
        r_cut = check_positive_float(self.r_cut, "r_cut", owner, " (Å)")
        g2 = _as_params(self.g2_params, 2, "g2_params", owner, "(eta, R_s)")
        g3 = _as_params(self.g3_params, None, "g3_params", owner, "kappa")
        g4 = _as_params(self.g4_params, 3, "g4_params", owner, "(eta, zeta, lambda)")
        g5 = _as_params(self.g5_params, 3, "g5_params", owner, "(eta, zeta, lambda)")
        if np.any(g2[:, 0] <= 0):
            raise ValueError(f"{owner}: g2_params eta must be > 0; got {g2[:, 0].tolist()}")
        for name, params in (("g4_params", g4), ("g5_params", g5)):
            if np.any(params[:, 0] <= 0):
                raise ValueError(f"{owner}: {name} eta must be > 0; got {params[:, 0].tolist()}")
            if np.any(params[:, 1] < 1):
                raise ValueError(
                    f"{owner}: {name} zeta must be >= 1 (smooth gradients); "
                    f"got {params[:, 1].tolist()}"
                )
            if np.any(np.abs(params[:, 2]) > 1):
                raise ValueError(
                    f"{owner}: {name} lambda must lie in [-1, 1]; got {params[:, 2].tolist()}"
                )
        if self.periodic is not None and not isinstance(self.periodic, (bool, np.bool_)):
            raise TypeError(f"{owner}: periodic must be None, True or False; "
                            f"got {self.periodic!r}")
        checked = {"numbers": numbers, "r_cut": r_cut, "g2": g2, "g3": g3, "g4": g4, "g5": g5}
        self._checked = (key, checked)
        return checked

    def get_number_of_features(self) -> int:
        """Return the number of features per atom.

        Returns
        -------
        int
            ``(1 + n_g2 + n_g3) n_species + (n_g4 + n_g5) n_species (n_species + 1) / 2``.
        """
        p = self._check_params()
        n_species = len(p["numbers"])
        radial = 1 + len(p["g2"]) + len(p["g3"])
        angular = len(p["g4"]) + len(p["g5"])
        return radial * n_species + angular * n_species * (n_species + 1) // 2

    def get_location(self, species: Sequence[str | int]) -> slice:
        """Return the slice of features belonging to one species or species pair.

        Parameters
        ----------
        species : tuple of str or int
            ``(Z,)`` for the radial block of neighbours of element ``Z``, or
            ``(Z1, Z2)`` for the angular block of that pair (either order).

        Returns
        -------
        slice
            Columns of ``features`` (and of the last axis of ``gradients``).

        Raises
        ------
        ValueError
            If an element is not in ``species`` or more than two are given.
        """
        p = self._check_params()
        numbers = species_to_numbers(list(species), "ACSF.get_location")
        index = [int(np.searchsorted(p["numbers"], z)) for z in numbers]
        if any(i >= len(p["numbers"]) or p["numbers"][i] != z
               for i, z in zip(index, numbers, strict=True)):
            raise ValueError(f"ACSF.get_location: {species!r} not all in species")
        radial = 1 + len(p["g2"]) + len(p["g3"])
        angular = len(p["g4"]) + len(p["g5"])
        if len(species) == 1:
            return slice(index[0] * radial, (index[0] + 1) * radial)
        if len(species) == 2:
            hi, lo = max(index), min(index)
            if len(numbers) == 1:
                hi = lo = index[0]
            start = radial * len(p["numbers"]) + (hi * (hi + 1) // 2 + lo) * angular
            return slice(start, start + angular)
        raise ValueError(f"ACSF.get_location: give one or two species; got {species!r}")

    # -- computation -------------------------------------------------------------------
    def compute(self, atoms: Atoms, strain: bool = False) -> DescriptorResult:
        """Compute ACSF features and their analytic Jacobian for one structure.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified.
        strain : bool, default=False
            Also return ``strain_gradients``, the derivatives with respect to a
            homogeneous strain (the Jacobian is then built per neighbour image,
            contracted with each image's vector and folded onto atoms).

        Returns
        -------
        DescriptorResult
            ``features`` (n_atoms, n_features), ``pairs`` (i, j) for every ``j``
            within ``r_cut`` of ``i`` (``j = i`` included) and ``gradients``
            (n_pairs, 3, n_features), ``∂features[i]/∂r_j`` per Å;
            ``strain_gradients`` (n_atoms, 3, 3, n_features) with ``strain=True``.
        """
        p = self._check_params()
        check_strain_flag(strain, "ACSF.compute")
        positions, numbers, pbc, cell = check_atoms(atoms, p["numbers"], self.periodic, "ACSF")
        n_atoms = len(positions)
        nl = neighbor_list(positions, cell, pbc, p["r_cut"])
        pairs, neighbor_pair, self_pair = unique_pairs(n_atoms, nl.i, nl.j)
        species_index = np.searchsorted(p["numbers"], numbers).astype(np.int64)
        n_features = self.get_number_of_features()
        features = np.zeros((n_atoms, n_features))
        gradients = np.zeros((len(pairs), 3, n_features))
        args = (species_index, nl.starts, nl.j, nl.vectors, nl.distances)
        params = (len(p["numbers"]), p["r_cut"], p["g2"], p["g3"], p["g4"], p["g5"], features)
        if not strain:
            acsf_compute(*args, neighbor_pair, self_pair, *params, gradients)
            return DescriptorResult(features, pairs, gradients)
        # one Jacobian row per neighbour image (rows n_neighbors + i for the centres):
        # contracted with the image vectors for the strain, then folded onto atoms
        n_neighbors = len(nl.j)
        per_image = np.zeros((n_neighbors + n_atoms, 3, n_features))
        acsf_compute(*args, np.arange(n_neighbors, dtype=np.int64),
                     np.arange(n_neighbors, n_neighbors + n_atoms, dtype=np.int64), *params,
                     per_image)
        strain_gradients = np.zeros((n_atoms, 3, 3, n_features))
        for i in range(n_atoms):
            rows = slice(nl.starts[i], nl.starts[i + 1])
            strain_gradients[i] = np.einsum("kad,kb->abd", per_image[rows], nl.vectors[rows])
        scatter_add_blocks(gradients, neighbor_pair, per_image[:n_neighbors])
        scatter_add_blocks(gradients, self_pair, per_image[n_neighbors:])
        return DescriptorResult(features, pairs, gradients, strain_gradients)


def _as_params(value, width, name, owner, what) -> np.ndarray:
    """Return parameters as a C-contiguous float64 array (n,) or (n, width)."""
    shape = (0,) if width is None else (0, width)
    if value is None:
        return np.zeros(shape)
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{owner}: {name} must be numbers {what}; got {value!r}") from err
    if array.size == 0:
        return np.zeros(shape)
    expected = "(n,)" if width is None else f"(n, {width})"
    if (width is None and array.ndim != 1) or (
        width is not None and (array.ndim != 2 or array.shape[1] != width)
    ):
        raise ValueError(
            f"{owner}: {name} must have shape {expected} of {what}; got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{owner}: {name} must be finite; got {array.tolist()}")
    return np.ascontiguousarray(array)
