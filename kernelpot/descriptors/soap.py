"""DScribe's GTO SOAP power spectrum with analytic gradients, computed by Numba kernels."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import numba
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
from kernelpot.descriptors._soap_kernels import (
    soap_features,
    soap_features_and_gradients,
    soap_features_and_gradients_parallel,
)
from kernelpot.descriptors.base import Descriptor, DescriptorResult
from kernelpot.descriptors.neighbors import neighbor_list, unique_pairs

logger = logging.getLogger(__name__)

__all__ = ["SOAP"]

_COMPRESSION_WITH_GRADIENTS = ("off", "crossover")


class SOAP(Descriptor):
    """Smooth overlap of atomic positions (DScribe's GTO SOAP), with analytic gradients.

    Features equal :meth:`dscribe.descriptors.SOAP.create` with the same
    settings (same basis, normalisation and column order; tested to 1e-10).
    They and their gradients, for open **and** periodic structures, are
    computed by this package's Numba kernels in closed form from DScribe's
    radial basis (``get_basis_gto``); see
    :mod:`kernelpot.descriptors._soap_kernels` for the derivation. Periodic
    images of a neighbour add onto the atom they image.

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
        Radial basis. DScribe's "polynomial" basis is not implemented here and
        is rejected.
    periodic : bool or None, default=None
        ``None`` follows ``atoms.pbc``; ``False`` ignores the cell; ``True``
        also follows ``atoms.pbc`` per axis but requires one periodic axis.
    compression : {"off", "crossover"} or None, default=None
        DScribe's compression mode (``None`` is "off"); the other modes are
        not implemented here and are rejected.
    weighting : None
        Present to reject DScribe's ``weighting`` with a clear error: it is
        not implemented here.
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
                f"{owner}: weighting has no analytic gradients here (DScribe's smooth "
                f"weighting is not implemented); got weighting={self.weighting!r}"
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
        checked = {
            "numbers": numbers_,
            "sorted_numbers": np.sort(numbers_),  # DScribe's element order
            "dscribe": dscribe_soap,
            "r_reach": r_cut + dscribe_soap.get_cutoff_padding(),
            "n_features": int(dscribe_soap.get_number_of_features()),
            **_kernel_tables(dscribe_soap, len(numbers_), r_cut, n_max, l_max, sigma,
                             same_species_only=mode == "crossover"),
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
    def _neighbours(self, atoms: Atoms, p: dict):
        """Return the neighbour list (to ``r_cut + padding``) and species indices.

        ``atoms`` is checked first; species indices follow DScribe's (sorted) element
        order.
        """
        positions, numbers_, pbc, cell = check_atoms(atoms, p["numbers"], self.periodic, "SOAP")
        nl = neighbor_list(positions, cell, pbc, p["r_reach"])
        return nl, np.searchsorted(p["sorted_numbers"], numbers_).astype(np.int64)

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
        nl, species = self._neighbours(atoms, p)
        features = np.empty((len(species), p["n_features"]))
        soap_features(nl.vectors, species[nl.j], nl.starts.astype(np.int64), species,
                      p["radial_weights"], p["radial_exponents"], p["l_prefactor"],
                      p["feature_table"], features)
        return features

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
        nl, species = self._neighbours(atoms, p)
        n_atoms = len(species)
        pairs, neighbor_pair, self_pair = unique_pairs(n_atoms, nl.i, nl.j)
        n_features = p["n_features"]
        features = np.empty((n_atoms, n_features))
        gradients = np.zeros((len(pairs), 3, n_features))
        strain_gradients = np.zeros((n_atoms, 3, 3, n_features)) if strain else None
        args = (nl.vectors, species[nl.j], nl.starts.astype(np.int64), species, neighbor_pair,
                self_pair, p["radial_weights"], p["radial_exponents"], p["l_prefactor"],
                p["feature_table"], p["species_features"], p["species_feature_count"],
                features, gradients,
                strain_gradients if strain else np.zeros((0, 3, 3, n_features)), bool(strain))
        n_chunks = _parallel_chunks(n_atoms)
        if n_chunks > 1:
            soap_features_and_gradients_parallel(*args, n_chunks)
        else:
            soap_features_and_gradients(*args)
        return DescriptorResult(features, pairs, gradients, strain_gradients)



def _kernel_tables(dscribe_soap, n_species: int, r_cut: float, n_max: int, l_max: int,
                   sigma: float, same_species_only: bool) -> dict:
    """Return the radial weights, exponents and column layout the Numba kernels take.

    See :mod:`kernelpot.descriptors._soap_kernels` for the formulas. Columns follow
    DScribe's layout: element blocks ``(Z₁, Z₂)``, ``Z₁ ≤ Z₂`` (only ``Z₁ = Z₂`` with
    compression "crossover"), then degree ``l``, then ``(n₁, n₂)`` (``n₁ ≤ n₂`` within
    one element).
    """
    alphas, betas = dscribe_soap.get_basis_gto(r_cut, n_max, l_max)
    two_sigma2 = 2.0 * sigma**2
    exponents = alphas / (1.0 + two_sigma2 * alphas)
    weights = np.empty((l_max + 1, n_max, n_max))
    for ell in range(l_max + 1):
        weights[ell] = betas[ell] * (np.pi**1.5 * two_sigma2**1.5
                                 * (1.0 + two_sigma2 * alphas[ell]) ** (-(ell + 1.5)))[None, :]
    rows = [(z1, z2, n1, n2, ell)
            for z1 in range(n_species) for z2 in range(z1, n_species)
            if not same_species_only or z1 == z2
            for ell in range(l_max + 1)
            for n1 in range(n_max) for n2 in range(n1 if z1 == z2 else 0, n_max)]
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    if len(table) != dscribe_soap.get_number_of_features():
        raise AssertionError("SOAP: the kernel's column layout does not match DScribe's")
    involved = [np.flatnonzero((table[:, 0] == s) | (table[:, 1] == s))
                for s in range(n_species)]
    species_features = np.zeros((n_species, len(table)), dtype=np.int64)
    for s, columns in enumerate(involved):
        species_features[s, :len(columns)] = columns
    return {
        "radial_weights": weights,
        "radial_exponents": np.ascontiguousarray(exponents),
        "l_prefactor": np.pi * np.sqrt(8.0 / (2.0 * np.arange(l_max + 1) + 1.0)),
        "feature_table": table,
        "species_features": species_features,
        "species_feature_count": np.array([len(c) for c in involved], dtype=np.int64),
    }


#: Centres per thread below which one thread computes the whole structure.
_CENTRES_PER_THREAD = 8


#: The process that first ran the parallel kernel (GNU OpenMP, numba's threading layer
#: here, aborts a forked child that uses it after its parent did).
_PARALLEL_PID = None


def _parallel_chunks(n_atoms: int) -> int:
    """Return how many ranges of centres to compute in parallel (1: serially).

    Parallel only from the main thread (numba's threading layers may refuse concurrent
    launches, e.g. from Dask's or joblib's threads), only in the process that first
    ran in parallel (a child forked after that runs serially) and with enough centres
    per thread; joblib's process workers see ``NUMBA_NUM_THREADS`` limited by joblib.
    """
    global _PARALLEL_PID
    if threading.current_thread() is not threading.main_thread():
        return 1
    if _PARALLEL_PID is not None and _PARALLEL_PID != os.getpid():
        return 1
    chunks = max(1, min(numba.get_num_threads(), n_atoms // _CENTRES_PER_THREAD))
    if chunks > 1:
        _PARALLEL_PID = os.getpid()
    return chunks
