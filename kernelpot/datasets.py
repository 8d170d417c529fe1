"""Small reference data sets shipped inside the package.

* ``ethanol_xtb_500K.xyz``: 200 frames of GFN2-xTB Langevin MD of ethanol at
  500 K (every 10th frame of the project's 2000-frame set, one frame every
  100 fs), energies in eV and forces in eV/Å.
* ``si_mlearn.xyz``: four DFT (PBE) silicon cells from the public mlearn
  benchmark (Zuo et al., J. Phys. Chem. A 124, 731 (2020), BSD-3-Clause): one
  vacancy, one surface, one AIMD and one elastic configuration, with energies,
  forces and stresses.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from ase.io import read

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["load_ethanol", "load_silicon", "data_path"]


def data_path(name: str) -> str:
    """Return the file-system path of a bundled data file.

    Parameters
    ----------
    name : str
        File name inside ``kernelpot/data``.

    Returns
    -------
    str
        Absolute path of the file.

    Raises
    ------
    ValueError
        If no bundled file has that name (the message lists those there are).
    """
    path = resources.files("kernelpot") / "data" / name
    if not path.is_file():
        available = sorted(p.name for p in (resources.files("kernelpot") / "data").iterdir()
                           if p.name.endswith(".xyz"))
        raise ValueError(f"data_path: no bundled file {name!r}; available: {available}")
    return str(path)


def load_ethanol() -> list[Atoms]:
    """Return the 200 bundled ethanol frames (GFN2-xTB, 500 K) as ase.Atoms.

    Returns
    -------
    list of ase.Atoms
        Each with energy (eV) and forces (eV/Å) attached.
    """
    return read(data_path("ethanol_xtb_500K.xyz"), ":")


def load_silicon() -> list[Atoms]:
    """Return the four bundled DFT silicon cells (mlearn) as ase.Atoms.

    Returns
    -------
    list of ase.Atoms
        Periodic cells with energy, forces and stress attached.
    """
    return read(data_path("si_mlearn.xyz"), ":")
