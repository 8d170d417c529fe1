"""Physics baselines for Δ-learning: what a GP with a 4–5 Å cutoff cannot see.

``SparseGPPotential(..., baseline=ZBL())`` fits the GP to the reference minus the
baseline (energies, forces and stresses) and adds the baseline back to every
prediction, so the calculator, MD and the on-the-fly learner use the sum. The
uncertainty stays the GP's: a baseline is a fixed function and adds no variance.

Built-in baselines are pair potentials, stored in model files by class name and
parameters (no pickle):

* :class:`ZBL`: the universal screened-nuclear repulsion of Ziegler, Biersack and
  Littmark for close contacts, switched off smoothly between ``r_inner`` and ``r_cut``;
* :class:`LennardJones`: the 12-6 potential, shifted so that energy and force go to zero
  at ``r_cut`` (shifted force);
* :class:`Pair`: a tabulated pair energy (cubic spline), the same for every pair of
  elements;
* :class:`Coulomb`: fixed point charges per element, by Ewald summation in cells and a
  plain sum in molecules.

Any ASE calculator may serve as a baseline at run time
(:class:`CalculatorBaseline`); a model with one cannot be saved (``save`` refuses and
names the registered baselines), since a calculator is code, not parameters.

Every baseline returns per-atom energies (each pair's energy split equally between its
two atoms), forces and, for cells periodic along all three axes, ASE's stress
(:meth:`Baseline.compute`).
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from sklearn.base import BaseEstimator

from kernelpot import gp
from kernelpot.descriptors.neighbors import neighbor_list, pair_sums

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["Baseline", "BaselineSum", "BaselineTerms", "CalculatorBaseline", "Coulomb",
           "LennardJones", "Pair", "ZBL", "baseline_terms",
           "as_baseline", "residual_labels"]

#: e² / (4π ε0) in eV Å.
COULOMB_EV_A = 14.399645478425668
#: Entries (atoms × k-vectors) of one chunk of the Ewald reciprocal sum: 2²² doubles.
_EWALD_CHUNK_ENTRIES = 2**22
#: ZBL universal screening function: coefficients and exponents.
_ZBL_C = np.array([0.18175, 0.50986, 0.28022, 0.02817])
_ZBL_D = np.array([3.19980, 0.94229, 0.40290, 0.20162])


class BaselineTerms(NamedTuple):
    """A baseline's contribution to one structure.

    Attributes
    ----------
    local_energies : ndarray of shape (n_atoms,)
        eV; they sum to the baseline energy.
    forces : ndarray of shape (n_atoms, 3) or None
        eV/Å.
    stress : ndarray of shape (6,) or None
        ASE's stress (Voigt ``xx yy zz yz xz xy``, eV/Å³), for cells periodic along all
        three axes when asked.
    """

    local_energies: np.ndarray
    forces: np.ndarray | None
    stress: np.ndarray | None

    @property
    def energy(self) -> float:
        """Return the baseline energy of the structure, eV."""
        return float(self.local_energies.sum())


class Baseline(BaseEstimator):
    """Base class of the baselines: :meth:`compute` one structure's terms."""

    def compute(self, atoms: Atoms, forces: bool = True, stress: bool = False) -> BaselineTerms:
        """Return the baseline's per-atom energies, forces and stress of one structure.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified.
        forces : bool, default=True
            Also the forces.
        stress : bool, default=False
            Also the stress (the structure must be periodic along all three axes).

        Returns
        -------
        BaselineTerms
            Per-atom energies, forces and stress.
        """
        raise NotImplementedError

    def check(self) -> None:
        """Validate the parameters; raise ``ValueError``/``TypeError`` naming the problem."""

    def __add__(self, other: object) -> BaselineSum:
        """Return the sum of two baselines (:class:`BaselineSum`, sums flattened)."""
        if not isinstance(other, Baseline):
            return NotImplemented
        return BaselineSum(baseline_terms(self) + baseline_terms(other))


def baseline_terms(baseline: Baseline | None) -> tuple:
    """Return a baseline's terms: a sum's own, else the baseline alone (``()`` for None)."""
    if baseline is None:
        return ()
    return tuple(baseline.terms) if isinstance(baseline, BaselineSum) else (baseline,)


class BaselineSum(Baseline):
    """The sum of several baselines: ``Coulomb(...) + ZBL()``, or ``baseline=[...]``.

    Energies, forces and stresses add up; the model file stores each term by its name and
    parameters (every term must be a registered one to save the model).

    Parameters
    ----------
    terms : tuple of Baseline
        At least one; sums inside are flattened.

    Examples
    --------
    >>> from kernelpot import ZBL, Coulomb
    >>> both = Coulomb(charges={"Na": 1, "Cl": -1}) + ZBL(r_inner=0.8, r_cut=1.6)
    >>> [type(term).__name__ for term in both.terms]
    ['Coulomb', 'ZBL']
    """

    def __init__(self, terms: tuple = ()):
        self.terms = terms

    def check(self) -> None:
        """Validate that ``terms`` is a non-empty sequence of baselines, each valid."""
        if not isinstance(self.terms, (list, tuple)) or not self.terms:
            raise TypeError("BaselineSum: terms must be a non-empty list or tuple of "
                            f"baselines; got {self.terms!r}")
        for term in self.terms:
            if not isinstance(term, Baseline):
                raise TypeError("BaselineSum: every term must be a kernelpot baseline (ZBL, "
                                "LennardJones, Pair, Coulomb) or an ASE calculator wrapped "
                                f"in CalculatorBaseline; got {type(term).__name__}")
            term.check()

    def compute(self, atoms: Atoms, forces: bool = True, stress: bool = False) -> BaselineTerms:
        """Return the summed per-atom energies, forces and (optionally) stress.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified.
        forces : bool, default=True
            Also the forces.
        stress : bool, default=False
            Also the stress.

        Returns
        -------
        BaselineTerms
            The terms' sums.
        """
        self.check()
        parts = [term.compute(atoms, forces=forces, stress=stress) for term in self.terms]
        return BaselineTerms(
            np.sum([part.local_energies for part in parts], axis=0),
            np.sum([part.forces for part in parts], axis=0) if forces else None,
            np.sum([part.stress for part in parts], axis=0) if stress else None)


class _PairBaseline(Baseline):
    """A pair potential ``E = Σ_(i<j) φ(r_ij)``, summed over a vesin neighbour list."""

    def _pair(self, r: np.ndarray, z_i: np.ndarray,
              z_j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``φ(r)`` and ``φ'(r)`` (eV, eV/Å) of each pair."""
        raise NotImplementedError

    def compute(self, atoms: Atoms, forces: bool = True, stress: bool = False) -> BaselineTerms:
        """Return the pair energy per atom, the forces and (optionally) the stress.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified.
        forces : bool, default=True
            Also the forces.
        stress : bool, default=False
            Also ASE's stress, ``(1 / 2V) Σ_(i,j) φ'(d) D_a D_b / d`` over the ordered
            pairs (the strain derivative of the energy over the volume).

        Returns
        -------
        BaselineTerms
            Per-atom energies (each pair's energy split between its atoms), forces and
            stress.
        """
        self.check()
        if stress and not np.all(atoms.pbc):
            raise ValueError(f"{type(self).__name__}: stress needs a structure periodic along "
                             f"all three axes; got pbc={atoms.pbc.tolist()}")
        n_atoms = len(atoms)
        nl = neighbor_list(atoms.positions, np.asarray(atoms.cell), atoms.pbc,
                           float(self.r_cut))
        numbers = atoms.numbers
        phi, slope = self._pair(nl.distances, numbers[nl.i], numbers[nl.j])
        local, force_values, derivative = pair_sums(nl, phi, slope, n_atoms, forces, stress)
        stress_values = gp.stress_from_strain_derivative(derivative, atoms.get_volume()) \
            if stress else None
        return BaselineTerms(local, force_values, stress_values)


def _check_positive(owner: str, **values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not np.isfinite(value) or value <= 0:
            raise ValueError(f"{owner}: {name} must be a finite number > 0; got {value!r}")


class ZBL(_PairBaseline):
    """The universal screened-nuclear (ZBL) repulsion, for atoms closer than any data.

    ``φ(r) = (Z_i Z_j e² / 4πε0 r) Σ_k c_k exp(-d_k r / a) S(r)`` with the universal
    screening length ``a = 0.46850 / (Z_i^0.23 + Z_j^0.23)`` Å (Ziegler, Biersack and
    Littmark, *The Stopping and Range of Ions in Solids*, 1985) and the switch
    ``S(r) = 1`` below ``r_inner``, ``½ (1 + cos(π (r - r_inner) / (r_cut - r_inner)))``
    up to ``r_cut`` and 0 beyond, so energy and force go smoothly to zero at ``r_cut``.

    Parameters
    ----------
    r_inner : float, default=1.0
        Full repulsion below this distance, Å.
    r_cut : float, default=2.0
        No repulsion beyond this distance, Å (greater than ``r_inner``).

    Notes
    -----
    It prevents the collapse of atoms onto each other where a GP trained on
    equilibrium-like data predicts nothing (the GP's prior mean is zero): choose
    ``r_cut`` below the shortest distance of the training data so the GP learns the
    rest, e.g. 2.0 Å for Si or metals; use a smaller one for bonds to hydrogen
    (``r_cut`` 0.7 Å is below an O–H bond).
    """

    def __init__(self, r_inner: float = 1.0, r_cut: float = 2.0):
        self.r_inner = r_inner
        self.r_cut = r_cut

    def check(self) -> None:
        """Validate ``r_inner`` < ``r_cut``, both > 0."""
        _check_positive("ZBL", r_inner=self.r_inner, r_cut=self.r_cut)
        if not self.r_inner < self.r_cut:
            raise ValueError(f"ZBL: r_inner must be below r_cut; got r_inner={self.r_inner}, "
                             f"r_cut={self.r_cut}")

    def _pair(self, r, z_i, z_j):
        a = 0.46850 / (z_i**0.23 + z_j**0.23)
        x = r[:, None] / a[:, None]
        screening = np.exp(-_ZBL_D[None, :] * x)
        f = screening @ _ZBL_C
        df = -(screening * _ZBL_D[None, :]) @ _ZBL_C / a
        prefactor = COULOMB_EV_A * z_i * z_j
        phi = prefactor * f / r
        dphi = prefactor * (df / r - f / r**2)
        width = float(self.r_cut) - float(self.r_inner)
        t = np.clip((r - float(self.r_inner)) / width, 0.0, 1.0)
        switch = 0.5 * (1.0 + np.cos(np.pi * t))
        d_switch = np.where((t > 0) & (t < 1), -0.5 * np.pi / width * np.sin(np.pi * t), 0.0)
        return phi * switch, dphi * switch + phi * d_switch


class LennardJones(_PairBaseline):
    """A 12-6 Lennard-Jones pair term with shifted force, one for every pair of elements.

    ``φ(r) = V(r) - V(r_c) - (r - r_c) V'(r_c)`` with ``V(r) = 4ε ((σ/r)¹² - (σ/r)⁶)``:
    energy and force are continuous and zero at ``r_c``.

    Parameters
    ----------
    epsilon : float, default=0.01
        Well depth, eV.
    sigma : float, default=3.0
        Distance of zero energy, Å.
    r_cut : float or None, default=None
        Cutoff, Å; ``None`` is ``3 sigma``.
    """

    def __init__(self, epsilon: float = 0.01, sigma: float = 3.0, r_cut: float | None = None):
        self.epsilon = epsilon
        self.sigma = sigma
        self.r_cut = r_cut

    def check(self) -> None:
        """Validate ``epsilon``, ``sigma`` and ``r_cut`` (> 0)."""
        _check_positive("LennardJones", epsilon=self.epsilon, sigma=self.sigma)
        if self.r_cut is not None:
            _check_positive("LennardJones", r_cut=self.r_cut)

    def compute(self, atoms: Atoms, forces: bool = True, stress: bool = False) -> BaselineTerms:
        """Return the per-atom energies, forces and (optionally) the stress.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified.
        forces : bool, default=True
            Also the forces.
        stress : bool, default=False
            Also ASE's stress (the structure periodic along all three axes).

        Returns
        -------
        BaselineTerms
            Per-atom energies (eV), forces (eV/Å) and stress (eV/Å³) of the pair term.
        """
        if self.r_cut is None:  # the neighbour search needs the number
            return LennardJones(self.epsilon, self.sigma, 3.0 * float(self.sigma)).compute(
                atoms, forces, stress)
        return super().compute(atoms, forces, stress)

    def _pair(self, r, z_i, z_j):
        eps, sig, rc = float(self.epsilon), float(self.sigma), float(self.r_cut)

        def v(x):
            s6 = (sig / x) ** 6
            return 4 * eps * (s6 * s6 - s6), 4 * eps * (-12 * s6 * s6 + 6 * s6) / x

        v_r, dv_r = v(r)
        v_c, dv_c = v(rc)
        return v_r - v_c - (r - rc) * dv_c, dv_r - dv_c


class Pair(_PairBaseline):
    """A tabulated pair energy ``φ(r)``, a cubic spline through the given points.

    The spline takes zero slope at the last distance, which is the cutoff, and is
    shifted to zero there: energy and force go continuously to zero at ``r_cut =
    distances[-1]``. Below the first distance it extrapolates the first cubic piece:
    tabulate down to the shortest distance the simulation may reach.

    Parameters
    ----------
    distances : sequence of float, default=None
        Increasing distances, Å (at least 4); the last is the cutoff.
    energies : sequence of float, default=None
        ``φ`` at those distances, eV (shifted so that the last is zero).
    """

    def __init__(self, distances=None, energies=None):
        self.distances = distances
        self.energies = energies

    def check(self) -> None:
        """Validate the table: increasing positive distances, finite energies, same length."""
        try:
            r = np.asarray(self.distances, dtype=np.float64)
            e = np.asarray(self.energies, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"Pair: distances and energies must be sequences of numbers; got "
                            f"{self.distances!r}, {self.energies!r}") from err
        if r.ndim != 1 or r.shape != e.shape or r.size < 4:
            raise ValueError("Pair: distances and energies must be 1-D of the same length, at "
                             f"least 4; got shapes {r.shape} and {e.shape}")
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(e)) and r[0] > 0
                and np.all(np.diff(r) > 0)):
            raise ValueError("Pair: distances must be positive and increasing and energies "
                             "finite")

    @property
    def r_cut(self) -> float:
        """Return the cutoff: the last tabulated distance, Å."""
        return float(np.asarray(self.distances, dtype=np.float64)[-1])

    def _pair(self, r, z_i, z_j):
        from scipy.interpolate import CubicSpline

        table_r = np.asarray(self.distances, dtype=np.float64)
        table_e = np.asarray(self.energies, dtype=np.float64)
        spline = CubicSpline(table_r, table_e - table_e[-1], bc_type=("natural", (1, 0.0)))
        inside = r < table_r[-1]
        phi = np.where(inside, spline(r), 0.0)
        dphi = np.where(inside, spline(r, 1), 0.0)
        return phi, dphi


class CalculatorBaseline(Baseline):
    """Any ASE calculator as a baseline, at run time only (a model with it is not saved).

    Parameters
    ----------
    calculator : ase.calculators.calculator.Calculator
        Gives ``energies`` (per atom) or ``energy``, ``forces`` and, when asked,
        ``stress``. Without per-atom energies the energy is split equally over the
        atoms.
    """

    def __init__(self, calculator=None):
        self.calculator = calculator

    def check(self) -> None:
        """Validate that ``calculator`` looks like an ASE calculator."""
        if not hasattr(self.calculator, "get_property"):
            raise TypeError("CalculatorBaseline: calculator must be an ASE calculator; got "
                            f"{type(self.calculator).__name__}")

    def compute(self, atoms: Atoms, forces: bool = True, stress: bool = False) -> BaselineTerms:
        """Return the calculator's per-atom energies, forces and (optionally) stress.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified (the calculator works on a copy).
        forces : bool, default=True
            Also the forces.
        stress : bool, default=False
            Also the stress.

        Returns
        -------
        BaselineTerms
            What the calculator gives, in ASE's units.
        """
        self.check()
        work = atoms.copy()
        work.calc = self.calculator
        try:
            local = np.asarray(work.get_potential_energies(), dtype=np.float64)
        except Exception:  # calculators without per-atom energies
            local = np.full(len(work), work.get_potential_energy() / len(work))
        return BaselineTerms(local, np.asarray(work.get_forces()) if forces else None,
                             np.asarray(work.get_stress()) if stress else None)


def as_baseline(value, owner: str) -> Baseline | None:
    """Return the checked baseline a parameter describes (an ASE calculator is wrapped).

    Parameters
    ----------
    value : Baseline, ase calculator or None
    owner : str
        Names the estimator in errors.

    Returns
    -------
    Baseline or None

    Raises
    ------
    TypeError
        For anything else.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):  # several: their sum
        if not value:
            raise TypeError(f"{owner}: baseline given as an empty list; give None for none")
        value = BaselineSum(tuple(term if isinstance(term, Baseline)
                                  else as_baseline(term, owner) for term in value))
    if isinstance(value, Baseline):
        value.check()
        return value
    if hasattr(value, "get_property") and hasattr(value, "calculate"):
        return CalculatorBaseline(value)
    raise TypeError(f"{owner}: baseline must be a kernelpot baseline (ZBL, LennardJones, Pair, "
                    "Coulomb, or a list of them), an "
                    f"ASE calculator or None; got {type(value).__name__}")


def residual_labels(frames: list, labels, baseline: Baseline | None):
    """Return the labels minus the baseline's energy, forces and stress, per structure.

    Parameters
    ----------
    frames : list of ase.Atoms
    labels : kernelpot._labels.Labels
    baseline : Baseline or None
        ``None`` returns ``labels`` unchanged.

    Returns
    -------
    kernelpot._labels.Labels
        Missing labels stay missing.
    """
    if baseline is None:
        return labels
    energies = labels.energies.copy()
    forces, stresses = list(labels.forces), list(labels.stresses) if labels.stresses else None
    for k, atoms in enumerate(frames):
        has_stress = stresses is not None and stresses[k] is not None
        terms = baseline.compute(atoms, forces=forces[k] is not None, stress=has_stress)
        energies[k] -= terms.energy  # NaN (no energy) stays NaN
        if forces[k] is not None:
            forces[k] = forces[k] - terms.forces
        if has_stress:
            stresses[k] = stresses[k] - terms.stress
    return labels._replace(energies=energies, forces=forces, stresses=stresses)


class Coulomb(Baseline):
    """Point-charge electrostatics: Ewald summation for cells, a plain sum for molecules.

    ``E = (e²/4πε0) Σ_(i<j) q_i q_j / r_ij`` over every pair (and, in a cell periodic
    along all three axes, every periodic image), with fixed charges per element.

    Parameters
    ----------
    charges : dict, default=None
        ``{element: charge}`` in units of the elementary charge, e.g.
        ``{"Na": 1, "Cl": -1}``; every element of a structure must have one.
    r_cut : float, default=8.0
        Real-space cutoff of the Ewald sum, Å.
    accuracy : float, default=1e-6
        Ewald accuracy: the splitting parameter ``α = √(-ln accuracy) / r_cut`` and the
        reciprocal cutoff ``k_cut = 2 α √(-ln accuracy)`` make the terms left out of
        both sums of order ``accuracy`` relative to the energy (measured against the
        Madelung constants of NaCl and CsCl in the tests).

    Notes
    -----
    Periodic cells: ``E = E_real + E_reciprocal + E_self (+ E_background)`` with
    ``E_real = ½ Σ_ij' q_i q_j erfc(α r)/r`` within ``r_cut``,
    ``E_reciprocal = (2π/V) Σ_(k≠0) exp(-k²/4α²)/k² |Σ_j q_j e^(ik·r_j)|²``,
    ``E_self = -(α/√π) Σ q_i²`` and, for a cell of net charge ``Q``, the neutralising
    background ``-π Q² / (2 V α²)``. Forces and stress are their analytic derivatives.
    Cells periodic along only some axes are refused. A structure of open boundary
    conditions sums every pair directly (``O(N²)``).
    """

    def __init__(self, charges: dict | None = None, r_cut: float = 8.0,
                 accuracy: float = 1e-6):
        self.charges = charges
        self.r_cut = r_cut
        self.accuracy = accuracy

    def check(self) -> None:
        """Validate the charges (a non-empty dict of numbers), ``r_cut`` and ``accuracy``."""
        if not isinstance(self.charges, dict) or not self.charges:
            raise TypeError("Coulomb: charges must be a dict {element: charge}, e.g. "
                            f"{{'Na': 1, 'Cl': -1}}; got {self.charges!r}")
        from ase.data import atomic_numbers

        for element, charge in self.charges.items():
            if not (element in atomic_numbers or (isinstance(element, numbers.Integral)
                                                  and 0 < element < 119)):
                raise ValueError(f"Coulomb: {element!r} is not a chemical element (charges "
                                 f"{self.charges})")
            if isinstance(charge, bool) or not isinstance(charge, numbers.Real) \
                    or not np.isfinite(charge):
                raise ValueError(f"Coulomb: the charge of {element!r} must be a finite number; "
                                 f"got {charge!r}")
        _check_positive("Coulomb", r_cut=self.r_cut, accuracy=self.accuracy)
        if not self.accuracy < 1:
            raise ValueError(f"Coulomb: accuracy must lie in (0, 1); got {self.accuracy!r}")

    def _charges_of(self, atoms: Atoms) -> np.ndarray:
        """Return the charge of every atom, naming the elements without one."""
        from ase.data import atomic_numbers, chemical_symbols

        by_number = {}
        for element, charge in self.charges.items():
            z = atomic_numbers.get(element, element) if isinstance(element, str) else element
            by_number[int(z)] = float(charge)
        missing = sorted(set(atoms.numbers.tolist()) - set(by_number))
        if missing:
            symbols = [chemical_symbols[z] for z in missing]
            raise ValueError(f"Coulomb: no charge given for {symbols} (charges: "
                             f"{self.charges})")
        return np.array([by_number[z] for z in atoms.numbers])

    def compute(self, atoms: Atoms, forces: bool = True, stress: bool = False) -> BaselineTerms:
        """Return the per-atom electrostatic energies, forces and (optionally) stress.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure; not modified. Periodic along all three axes or along none.
        forces : bool, default=True
            Also the forces.
        stress : bool, default=False
            Also ASE's stress (a cell periodic along all three axes).

        Returns
        -------
        BaselineTerms
            Per-atom energies (pair terms split equally; the reciprocal, self and
            background terms attributed by charge), forces and stress.
        """
        self.check()
        q = self._charges_of(atoms)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any() and not pbc.all():
            raise ValueError("Coulomb: the structure must be periodic along all three axes or "
                             f"none (Ewald in 3D, or a plain sum); got pbc={pbc.tolist()}")
        if stress and not pbc.all():
            raise ValueError("Coulomb: stress needs a structure periodic along all three axes")
        if not pbc.any():
            return self._open(atoms.positions, q, forces)
        return self._ewald(atoms, q, forces, stress)

    @staticmethod
    def _open(positions: np.ndarray, q: np.ndarray, forces: bool) -> BaselineTerms:
        """Sum every pair of an open structure directly."""
        d = positions[None, :, :] - positions[:, None, :]  # d[i, j] = r_j - r_i
        r = np.linalg.norm(d, axis=-1)
        np.fill_diagonal(r, np.inf)
        pair = COULOMB_EV_A * q[:, None] * q[None, :] / r
        local = 0.5 * pair.sum(axis=1)
        force_values = None
        if forces:  # F_i = -∂E/∂r_i = -Σ_j q_i q_j (r_j - r_i) / r³
            force_values = -np.einsum("ij,ijc->ic", pair / r**2, d)
        return BaselineTerms(local, force_values, None)

    def _ewald(self, atoms: Atoms, q: np.ndarray, forces: bool, stress: bool) -> BaselineTerms:
        """Return the Ewald sum of a cell periodic along all three axes."""
        from scipy.special import erfc

        n_atoms = len(atoms)
        log_acc = -np.log(float(self.accuracy))
        r_cut = float(self.r_cut)
        alpha = np.sqrt(log_acc) / r_cut
        cell = np.asarray(atoms.cell)
        volume = abs(np.linalg.det(cell))
        positions = atoms.positions
        # real space: a pair potential of the charges
        nl = neighbor_list(positions, cell, atoms.pbc, r_cut)
        r = nl.distances
        qq = COULOMB_EV_A * q[nl.i] * q[nl.j]
        phi = qq * erfc(alpha * r) / r
        slope = -qq * (erfc(alpha * r) / r**2
                       + 2 * alpha / np.sqrt(np.pi) * np.exp(-(alpha * r) ** 2) / r)
        local, force_values, derivative = pair_sums(nl, phi, slope, n_atoms, forces, stress)
        # reciprocal space
        k_cut = 2 * alpha * np.sqrt(log_acc)
        reciprocal = 2 * np.pi * np.linalg.inv(cell).T  # rows b_i, a_i · b_j = 2π δ_ij
        n_max = np.ceil(k_cut * np.linalg.norm(cell, axis=1) / (2 * np.pi)).astype(int)
        grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in n_max], indexing="ij"),
                        axis=-1).reshape(-1, 3)
        k = grid @ reciprocal
        k2 = np.einsum("kc,kc->k", k, k)
        keep = (k2 > 0) & (k2 <= k_cut**2)
        k, k2 = k[keep], k2[keep]
        weight = np.exp(-k2 / (4 * alpha**2)) / k2  # A(k)
        prefactor = 2 * np.pi / volume * COULOMB_EV_A
        # k-vectors in chunks: the phases are n_atoms × chunk (memory linear in N)
        chunk = max(1, _EWALD_CHUNK_ENTRIES // max(n_atoms, 1))
        for start in range(0, len(k), chunk):
            kc, wc, k2c = k[start:start + chunk], weight[start:start + chunk], \
                k2[start:start + chunk]
            phase = positions @ kc.T  # (n, chunk)
            cos, sin = np.cos(phase), np.sin(phase)
            s_re, s_im = q @ cos, q @ sin  # S(k) = Σ q_j e^(ik·r_j)
            # each atom's share: q_i Re(e^(-ik·r_i) S(k)), which sums to |S|²
            share = q[:, None] * (cos * s_re[None, :] + sin * s_im[None, :])
            local += prefactor * share @ wc
            if forces:  # F_i = (4π/V) q_i Σ_k A k Im(conj(S) e^(ik·r_i))
                im = q[:, None] * (s_re[None, :] * sin - s_im[None, :] * cos)
                force_values += 2 * prefactor * (im * wc[None, :]) @ kc
            if stress:
                factor = wc * (s_re**2 + s_im**2)
                derivative += prefactor * (
                    -np.eye(3) * factor.sum()
                    + np.einsum("k,ka,kb->ab", factor * (2 / k2c + 1 / (2 * alpha**2)), kc,
                                kc))
        # self energy and, for a charged cell, the neutralising background
        local += -COULOMB_EV_A * alpha / np.sqrt(np.pi) * q**2
        total = q.sum()
        if abs(total) > 1e-12:
            background = -np.pi * total**2 / (2 * volume * alpha**2) * COULOMB_EV_A
            local += background * q / total
            if stress:
                derivative -= background * np.eye(3)
        stress_values = gp.stress_from_strain_derivative(derivative, volume) if stress else None
        return BaselineTerms(local, force_values, stress_values)
