"""The descriptors kernelpot uses when none is given: one choice for the estimator and the CLI.

Periodic cells get SOAP with a 5 Å cutoff, ``n_max = 8``, ``l_max = 6`` and ``σ = 0.5``
(the settings of the mlearn benchmarks, GAP's usual radius for bulk metals and
semiconductors); molecules and clusters a 4 Å cutoff, ``n_max = 6``, ``l_max = 4``, ``σ =
0.4`` (the GFN2-xTB ethanol and aspirin benchmarks). Measured on a new user's EMT Ni₃Al
cells (30 cells at 600 K, tested at 1200 K, n_max 6 and l_max 4 both): with 4 Å and σ
0.4 the 1200 K energy stds were 0.46 meV/atom against errors of 1.24 (5 % inside 2σ),
with 5 Å and σ 0.5 0.54 against 0.78 (90 %) (benchmarks/RESULTS.md, "Energies of small
training sets take the force map's shape").
"""

from __future__ import annotations

from collections.abc import Sequence

from kernelpot.descriptors.acsf import ACSF
from kernelpot.descriptors.soap import SOAP

__all__ = ["default_acsf", "default_r_cut", "default_soap"]


def default_r_cut(periodic: bool) -> float:
    """Return the default cutoff, Å: 5 for periodic cells, 4 for molecules."""
    return 5.0 if periodic else 4.0


def default_soap(species: Sequence, periodic: bool, r_cut: float | None = None) -> SOAP:
    """Return the default SOAP of a training set.

    Parameters
    ----------
    species : sequence of str or int
        The training elements.
    periodic : bool
        Whether any training structure is periodic.
    r_cut : float, optional
        Replaces the default cutoff (:func:`default_r_cut`).

    Returns
    -------
    SOAP
    """
    r_cut = default_r_cut(periodic) if r_cut is None else r_cut
    if periodic:
        return SOAP(list(species), r_cut, n_max=8, l_max=6, sigma=0.5)
    return SOAP(list(species), r_cut, n_max=6, l_max=4, sigma=0.4)


def default_acsf(species: Sequence, periodic: bool, r_cut: float | None = None) -> ACSF:
    """Return the default ACSF of a training set (8 radial and 8 angular functions).

    Parameters
    ----------
    species : sequence of str or int
        The training elements.
    periodic : bool
        Whether any training structure is periodic.
    r_cut : float, optional
        Replaces the default cutoff (:func:`default_r_cut`).

    Returns
    -------
    ACSF
    """
    r_cut = default_r_cut(periodic) if r_cut is None else r_cut
    return ACSF.from_grid(list(species), r_cut, n_radial=8, n_angular=8)
