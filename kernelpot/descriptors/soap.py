"""SOAP power spectrum on DScribe, with analytic gradients for periodic cells too."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from ase import Atoms
from dscribe.descriptors import SOAP as _DScribeSOAP

from kernelpot._validation import (
    check_atoms,
    check_int,
    check_positive_float,
    check_strain_flag,
    species_to_numbers,
)
from kernelpot.descriptors._scatter_kernels import scatter_add_blocks
from kernelpot.descriptors.base import Descriptor, DescriptorResult
from kernelpot.descriptors.neighbors import neighbor_list, unique_pairs

logger = logging.getLogger(__name__)

__all__ = ["SOAP"]

_COMPRESSION_WITH_GRADIENTS = ("off", "crossover")


class SOAP(Descriptor):
    """Smooth overlap of atomic positions (DScribe), with analytic gradients.

    Features equal :meth:`dscribe.descriptors.SOAP.create` with the same
    settings. Gradients are analytic for open **and** periodic structures:
    DScribe's analytic derivatives, which it offers only for open systems,
    are evaluated centre by centre on a padded open cluster holding the
    centre's neighbours (periodic images included), and each image's
    derivative is added onto the atom it images.

    Parameters
    ----------
    species : sequence of str or int
        Elements the descriptor knows, stored as given.
    r_cut : float
        Cutoff radius in Å.
    n_max : int
        Number of radial basis functions.
    l_max : int
        Maximum degree of the spherical harmonics.
    sigma : float, default=1.0
        Width in Å of the atomic Gaussians.
    rbf : {"gto"}, default="gto"
        Radial basis. DScribe's "polynomial" basis has no analytic gradients
        and is rejected.
    periodic : bool or None, default=None
        ``None`` follows ``atoms.pbc``; ``False`` ignores the cell; ``True``
        also follows ``atoms.pbc`` per axis but requires one periodic axis.
    compression : {"off", "crossover"} or None, default=None
        DScribe's compression mode (``None`` is "off"); modes without
        analytic gradients are rejected.
    weighting : None
        Present to reject DScribe's ``weighting`` with a clear error: it has
        no analytic gradients.
    average : {"off"}, default="off"
        Only per-atom output has gradients.

    See Also
    --------
    kernelpot.descriptors.ACSF : Atom-centred symmetry functions, same interface.

    Notes
    -----
    Features of a centre depend on every atom within
    ``r_cut + get_cutoff_padding()`` (DScribe pads the cutoff by
    ``σ √(-2 ln 0.001)``, 1.86 Å at σ = 0.5), so the Jacobian's ``pairs``
    reach that far. Memory is ``O(n_pairs × n_features)``: linear in the
    number of atoms at fixed density.

    DScribe's GTO SOAP is not smooth where an atom crosses
    ``r_cut + padding``: features step there by about 1e-4 of their size.

    References
    ----------
    .. [1] A. P. Bartók, R. Kondor and G. Csányi, "On representing chemical
       environments", Phys. Rev. B 87, 184115 (2013).
       https://doi.org/10.1103/PhysRevB.87.184115
    .. [2] L. Himanen et al., "DScribe: Library of descriptors for machine
       learning in materials science", Comput. Phys. Commun. 247, 106949
       (2020). https://doi.org/10.1016/j.cpc.2019.106949

    Examples
    --------
    >>> from ase.build import molecule
    >>> from kernelpot.descriptors import SOAP
    >>> soap = SOAP(["H", "O"], r_cut=4.0, n_max=2, l_max=2, sigma=0.5)
    >>> result = soap.compute(molecule("H2O"))
    >>> result.features.shape, result.gradients.shape
    ((3, 30), (9, 3, 30))
    """

    def __init__(self, species: Sequence[str | int], r_cut: float, n_max: int, l_max: int,
                 sigma: float = 1.0, rbf: str = "gto", periodic: bool | None = None, *,
                 compression: str | None = None, weighting: None = None,
                 average: str = "off") -> None:
        self.species = species
        self.r_cut = r_cut
        self.n_max = n_max
        self.l_max = l_max
        self.sigma = sigma
        self.rbf = rbf
        self.periodic = periodic
        self.compression = compression
        self.weighting = weighting
        self.average = average

    # -- validation ------------------------------------------------------------------
    def _check_params(self):
        """Validate the parameters and build the DScribe object (cached by value)."""
        key = repr((self.species, self.r_cut, self.n_max, self.l_max, self.sigma, self.rbf,
                    self.periodic, self.compression, self.weighting, self.average))
        cached = getattr(self, "_checked", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        owner = "SOAP"
        numbers_ = species_to_numbers(self.species, owner)
        r_cut = check_positive_float(self.r_cut, "r_cut", owner, " (Å)")
        if r_cut < 1.0:
            raise ValueError(f"{owner}: r_cut must be >= 1 Å (DScribe's GTO basis); got {r_cut}")
        n_max = check_int(self.n_max, "n_max", owner, 1)
        l_max = check_int(self.l_max, "l_max", owner, 0)
        if l_max > 20:
            raise ValueError(f"{owner}: l_max must be <= 20 (DScribe's GTO basis); got {l_max}")
        sigma = check_positive_float(self.sigma, "sigma", owner, " (Å)")
        if self.rbf != "gto":
            raise ValueError(
                f"{owner}: rbf must be 'gto' (the only basis with analytic gradients); "
                f"got {self.rbf!r}"
            )
        if self.weighting is not None:
            raise ValueError(
                f"{owner}: weighting has no analytic gradients in DScribe and is not "
                f"supported; got weighting={self.weighting!r}"
            )
        if self.average != "off":
            raise ValueError(
                f"{owner}: average must be 'off' (averaged SOAP has no per-atom gradients); "
                f"got {self.average!r}"
            )
        mode = "off" if self.compression is None else self.compression
        if not isinstance(mode, str) or mode not in _COMPRESSION_WITH_GRADIENTS:
            raise ValueError(
                f"{owner}: compression must be None, 'off' or 'crossover' (modes with analytic "
                f"gradients); got {self.compression!r}"
            )
        if self.periodic is not None and not isinstance(self.periodic, (bool, np.bool_)):
            raise TypeError(f"{owner}: periodic must be None, True or False; "
                            f"got {self.periodic!r}")
        dscribe_soap = _DScribeSOAP(
            species=numbers_.tolist(), r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma,
            rbf="gto", compression={"mode": mode, "species_weighting": None}, periodic=False,
        )
        dscribe_periodic = _DScribeSOAP(
            species=numbers_.tolist(), r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma,
            rbf="gto", compression={"mode": mode, "species_weighting": None}, periodic=True,
        )
        checked = {
            "numbers": numbers_,
            "dscribe": dscribe_soap,
            "dscribe_periodic": dscribe_periodic,
            "r_reach": r_cut + dscribe_soap.get_cutoff_padding(),
            "n_features": int(dscribe_soap.get_number_of_features()),
        }
        self._checked = (key, checked)
        return checked

    def get_number_of_features(self) -> int:
        """Return the number of features per atom.

        Returns
        -------
        int
            DScribe's ``get_number_of_features()`` for these settings.
        """
        return self._check_params()["n_features"]

    def get_cutoff_padding(self) -> float:
        """Return DScribe's padding of the cutoff (atoms this far past ``r_cut`` count).

        Returns
        -------
        float
            ``σ √(-2 ln 0.001)`` in Å: features see atoms within ``r_cut`` plus this.
        """
        return float(self._check_params()["dscribe"].get_cutoff_padding())

    def get_location(self, species: Sequence[str | int]) -> slice:
        """Return the slice of features of one species pair (DScribe's ``get_location``).

        Parameters
        ----------
        species : tuple of (str or int, str or int)
            The two elements of the block, in either order; may be the same element.

        Returns
        -------
        slice
            Columns of ``features`` (and of the last axis of ``gradients``).

        Raises
        ------
        ValueError
            If an element is unknown or not exactly two are given.
        """
        p = self._check_params()
        pair = tuple(int(z) for z in species_to_numbers(list(species), "SOAP.get_location"))
        if len(species) != 2:
            raise ValueError(f"SOAP.get_location: give two species; got {species!r}")
        if len(pair) == 1:
            pair = pair * 2
        return p["dscribe"].get_location(pair)

    # -- computation -------------------------------------------------------------------
    def create(self, atoms: Atoms) -> np.ndarray:
        """Return only the features of one structure (DScribe's ``create``, no gradients).

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified.

        Returns
        -------
        ndarray of shape (n_atoms, n_features)
            One row of SOAP features per atom.
        """
        p = self._check_params()
        positions, numbers_, pbc, cell = check_atoms(atoms, p["numbers"], self.periodic, "SOAP")
        system = Atoms(numbers=numbers_, positions=positions, cell=cell, pbc=pbc)
        soap = p["dscribe_periodic"] if pbc.any() else p["dscribe"]
        return np.asarray(soap.create(system), dtype=np.float64)

    def compute(self, atoms: Atoms, strain: bool = False) -> DescriptorResult:
        """Compute SOAP features and their analytic Jacobian for one structure.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified.
        strain : bool, default=False
            Also return ``strain_gradients``, the derivatives with respect to a
            homogeneous strain, from the same per-image Jacobian.

        Returns
        -------
        DescriptorResult
            Pairs ``(i, j)`` for every ``j`` within ``r_cut + padding`` of ``i``.
        """
        p = self._check_params()
        check_strain_flag(strain, "SOAP.compute")
        positions, numbers_, pbc, cell = check_atoms(atoms, p["numbers"], self.periodic, "SOAP")
        n_atoms = len(positions)
        nl = neighbor_list(positions, cell, pbc, p["r_reach"])
        pairs, _, _ = unique_pairs(n_atoms, nl.i, nl.j)
        pair_starts = np.searchsorted(pairs[:, 0], np.arange(n_atoms + 1))
        n_features = p["n_features"]
        features = np.empty((n_atoms, n_features))
        gradients = np.zeros((len(pairs), 3, n_features))
        strain_gradients = np.zeros((n_atoms, 3, 3, n_features)) if strain else None
        dscribe_soap = p["dscribe"]
        for i in range(n_atoms):
            # padded open cluster: the centre and every neighbour (periodic images
            # included) within r_cut + padding, the only atoms its features see
            neighbours = slice(nl.starts[i], nl.starts[i + 1])
            cluster_positions = positions[i] + np.vstack([np.zeros(3), nl.vectors[neighbours]])
            cluster_atoms = np.concatenate([[i], nl.j[neighbours]])  # atom each one images
            cluster = Atoms(numbers=numbers_[cluster_atoms], positions=cluster_positions)
            jacobian, value = dscribe_soap.derivatives(
                cluster, centers=[0], attach=True, method="analytical",
                return_descriptor=True,
            )
            features[i] = value[0]
            rows = slice(pair_starts[i], pair_starts[i + 1])
            slot = np.searchsorted(pairs[rows, 1], cluster_atoms)
            scatter_add_blocks(gradients[rows], slot, jacobian[0])
            if strain:  # Σ_k ∂D_i/∂r_k[a] (r_k - r_i)[b]; the centre's own vector is 0
                strain_gradients[i] = np.einsum("kad,kb->abd", jacobian[0, 1:],
                                                nl.vectors[neighbours])
        return DescriptorResult(features, pairs, gradients, strain_gradients)

