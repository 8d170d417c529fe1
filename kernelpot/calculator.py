"""ASE calculator for kernelpot models."""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from sklearn.utils.validation import check_is_fitted

if TYPE_CHECKING:
    from ase import Atoms

    from kernelpot.estimator import SparseGPPotential

__all__ = ["KernelPotCalculator"]


class KernelPotCalculator(Calculator):
    """ASE calculator driven by a fitted kernelpot model.

    Energies and forces come from one descriptor pass per structure; forces are the
    exact negative gradient of the energy. Works with every ASE driver (MD,
    optimisers, NEB); results are cached by ASE until the atoms change.

    Parameters
    ----------
    model : SparseGPPotential
        A fitted model.
    uncertainty : bool or "energy", default=True
        Also give ``energy_std`` and ``forces_std`` (the force stds cost several
        times the mean prediction); ``"energy"`` gives ``energy_std`` (and
        ``stress_std`` where the stress is asked for) but no force stds, at little more
        than the cost of the mean.
    lazy : bool, default=True
        Compute the stds when ``results`` is first asked for one of them (or for
        all its entries), not at every calculation: dynamics that never read them run
        at the cost of the mean. Reading them then costs one more pass of the mean
        (the descriptor again). ``False`` computes them with the mean at every
        calculation, for loops that read them at every step (the on-the-fly learner
        does). ASE's extxyz writer reads every entry of ``results`` (and so computes
        the stds, though it writes none of them): a trajectory written at every step
        wants ``uncertainty=False`` or ASE's ``Trajectory``, which reads the
        properties alone.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Notes
    -----
    ``results`` after a calculation:

    * ``energy``, ``free_energy``: total energy, eV;
    * ``energies``: per-atom energies (reference energies included), eV;
    * ``forces``: (n_atoms, 3), eV/Å;
    * ``stress``: when asked (``atoms.get_stress()``, cell filters, NPT), for cells
      periodic along all three axes: the analytic stress of the predicted energy,
      ASE's Voigt order, eV/Å³ (:meth:`SparseGPPotential.predict_stress`); computed
      from the same descriptor pass as the energy and forces;
    * ``energy_std``: epistemic std of the total energy, eV;
    * ``forces_std``: (n_atoms, 3) epistemic std per component, eV/Å (not with
      ``uncertainty="energy"``), and its two terms ``forces_std_posterior`` (the
      posterior over the inducing values) and ``forces_std_projection`` (the prior
      variance the inducing set does not span), calibrated as ``forces_std`` is:
      ``forces_std² = forces_std_posterior² + forces_std_projection²``, each term its
      share of the raw ``v_post + w² v_proj`` the model's map
      (:meth:`SparseGPPotential.epistemic_variance`) scales (the raw terms:
      :meth:`SparseGPPotential.predict_structure`);
    * ``stress_std``: with the stress and ``uncertainty``, the epistemic std of each
      stress component, eV/Å³, through the model's "stress" calibration when it has
      one (fitted on the LOSO stresses of its training cells), raw otherwise;
    * ``energy_noise``: learned aleatoric noise of the energy, ``σ_E √N``, eV;
    * ``force_noise``: learned aleatoric noise per force component, eV/Å;
    * ``stress_noise``: for cells periodic along all three axes, the learned aleatoric
      noise per stress component, ``σ_S``, eV/Å³ (the estimator's start value when the
      model trained on no stress).

    The stds are epistemic (what uncertainty-gated MD needs); the total std of the
    estimator's ``predict(..., return_std=True)`` is ``sqrt(std² + noise²)``.

    With ``lazy=True`` (the default) the std entries are in ``results`` from the start
    (``"forces_std" in results`` is true) but are computed, of the positions of that
    calculation, when first read: MD that never reads them runs at the cost of the mean
    (measured: Langevin with an exact ethanol model, n = 100, 5.1 ms per step against
    229 ms with every force std). Reading them after the model changed (``fit``,
    ``update``, ``calibrate``) raises a ``RuntimeError``: they would be the changed
    model's, not those of the energy and forces beside them.

    Examples
    --------
    >>> from kernelpot import KernelPotCalculator, SparseGPPotential, SOAP, load_ethanol
    >>> frames = load_ethanol()
    >>> model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, 3, 2, 0.4)).fit(frames[:10])
    >>> atoms = frames[50].copy()
    >>> atoms.calc = KernelPotCalculator(model)
    >>> atoms.get_forces().shape, atoms.calc.results["forces_std"].shape
    ((9, 3), (9, 3))
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters = {"uncertainty": True, "lazy": True}
    nolabel = True

    def __init__(self, model: SparseGPPotential, uncertainty: bool | str = True,
                 lazy: bool = True, **kwargs: Any) -> None:
        check_is_fitted(model)
        if isinstance(uncertainty, (bool, np.bool_)):
            uncertainty = bool(uncertainty)
        elif uncertainty != "energy":
            raise ValueError("KernelPotCalculator: uncertainty must be True, False or "
                             f"'energy'; got {uncertainty!r}")
        if not isinstance(lazy, (bool, np.bool_)):
            raise TypeError(f"KernelPotCalculator: lazy must be True or False; got {lazy!r}")
        super().__init__(uncertainty=uncertainty, lazy=bool(lazy), **kwargs)
        self.model = model

    def calculate(self, atoms: Atoms | None = None, properties: list[str] | None = None,
                  system_changes: list[str] = all_changes) -> None:
        """Compute energy, per-atom energies, forces, (optionally) their stds and stress.

        Results go to ``self.results`` (see the class Notes); ASE's ``get_*``
        methods call this only when the atoms changed.

        Parameters
        ----------
        atoms : ase.Atoms, optional
            The structure; ``None`` uses the attached one.
        properties : list of str, optional
            Properties asked for; ``None`` means all but ``"stress"``. The stress is
            computed only when asked for.
        system_changes : list of str, default=ase.calculators.calculator.all_changes
            What changed since the last calculation (ASE's bookkeeping).

        Raises
        ------
        ase.calculators.calculator.PropertyNotImplementedError
            If the stress is asked for a structure not periodic along all three axes
            (ASE's convention).
        """
        if properties is None:
            properties = [p for p in self.implemented_properties if p != "stress"]
        super().calculate(atoms, properties, system_changes)
        uncertainty = self.parameters.uncertainty
        if uncertainty != "energy":
            uncertainty = bool(uncertainty)
        stress = "stress" in properties
        if stress and not np.all(self.atoms.pbc):
            raise PropertyNotImplementedError(
                "KernelPotCalculator: stress needs a structure periodic along all three "
                f"axes; got pbc={self.atoms.pbc.tolist()}")
        lazy = bool(uncertainty) and self.parameters.get("lazy", True)
        model = self.model
        prediction = _predict(model, self.atoms, False if lazy else uncertainty, stress)
        results = {
            "energy": prediction.energy,
            "free_energy": prediction.energy,
            "energies": np.asarray(prediction.local_energies, dtype=np.float64),
            "forces": np.asarray(prediction.forces, dtype=np.float64),
            "energy_noise": float(model.energy_noise_ * np.sqrt(len(self.atoms))),
            "force_noise": float(model.force_noise_),
        }
        if np.all(self.atoms.pbc):  # a stress (and its noise) is defined for a cell only
            results["stress_noise"] = float(model.stress_noise_)
        if prediction.stress is not None:
            results["stress"] = np.asarray(prediction.stress, dtype=np.float64)
        if not uncertainty:
            self.results = results
        elif not lazy:
            self.results = {**results, **_std_results(model, prediction)}
        else:
            # the calculation's copy of the atoms: the stds are of these positions; the
            # closure holds no reference to the calculator (no cycle through its results)
            atoms, state = self.atoms, _ModelState(model)

            def compute() -> dict:
                state.check(model)
                return _std_results(model, _predict(model, atoms, uncertainty, stress))

            self.results = _LazyResults(results, compute, _std_keys(uncertainty, stress))


def _predict(model: SparseGPPotential, atoms: Atoms, variance: bool | str, stress: bool):
    """Return ``model``'s :class:`~kernelpot.prediction.Prediction` of ``atoms``."""
    with _blas_limit(_one_blas_thread(model, len(atoms), variance)):
        return model.predict_structure(atoms, forces=True, variance=variance, stress=stress)


def _std_keys(uncertainty: bool | str, stress: bool) -> list[str]:
    """Return the entries :func:`_std_results` gives for ``uncertainty`` and ``stress``."""
    keys = ["energy_std"] + ["stress_std"] * stress
    if uncertainty is True:
        keys += ["forces_std", "forces_std_posterior", "forces_std_projection"]
    return keys


def _std_results(model: SparseGPPotential, prediction) -> dict:
    """Return the calibrated epistemic std entries of ``results`` (the class Notes)."""
    results = {"energy_std": float(np.sqrt(model.epistemic_variance(
        "energy", prediction.energy_var_posterior, prediction.energy_var_projection)))}
    if prediction.forces_var_posterior is not None:
        posterior = prediction.forces_var_posterior
        # the projection term as the map weighs it, before the map's factor
        projection = model.projection_weight("forces")**2 * prediction.forces_var_projection
        epistemic = model.epistemic_variance("forces", posterior,
                                             prediction.forces_var_projection,
                                             prediction.numbers)
        raw = posterior + projection
        share = np.divide(posterior, raw, out=np.zeros_like(raw), where=raw > 0)
        results["forces_std"] = np.sqrt(epistemic)
        results["forces_std_posterior"] = np.sqrt(share * epistemic)
        results["forces_std_projection"] = np.sqrt((1.0 - share) * epistemic)
    if prediction.stress_var_posterior is not None:
        results["stress_std"] = np.sqrt(model.epistemic_variance(
            "stress", prediction.stress_var_posterior, prediction.stress_var_projection))
    return results


class _ModelState:
    """What a model's predictions were made with, to tell when it has changed since.

    ``update``, ``fit``, ``calibrate`` and loading replace the posterior, the weights or
    the std map; weak references (the arrays can be large) and the map's identity
    notice it.
    """

    def __init__(self, model: SparseGPPotential) -> None:
        self.posterior = weakref.ref(model.posterior_)
        self.weights = weakref.ref(model.alpha_)
        self.std_scale = model.std_scale_

    def check(self, model: SparseGPPotential) -> None:
        """Raise ``RuntimeError`` if ``model`` changed since this state was taken."""
        if (self.posterior() is not model.posterior_ or self.weights() is not model.alpha_
                or self.std_scale is not model.std_scale_):
            raise RuntimeError(
                "KernelPotCalculator: the model changed (fit, update or calibrate) after "
                "these results were calculated, so its stds would not be those of their "
                "energy and forces: call atoms.calc.reset() and calculate again (or use "
                "lazy=False, which computes the stds with the mean)")


class _LazyResults(dict):
    """Calculator results whose std entries are computed when first read.

    Reading a pending key (``[]``, ``get``, ``pop``, ``setdefault``) or the whole mapping
    (iteration, ``keys``, ``items``, ``values``, ``len``, ``copy``, comparison, printing,
    ``dict(results)``) computes them once; ``key in results`` answers without computing.
    Writing a pending key replaces what would be computed; ``clear`` and ``popitem``
    drop what is pending. A computation that fails leaves the entries pending (the next
    read tries again); one thread computes while the others wait.
    """

    def __init__(self, values: dict, compute, pending: list[str]) -> None:
        super().__init__(values)
        self._compute = compute
        self._pending = frozenset(pending)
        self._lock = threading.RLock()
        self._computing = False

    def _materialise(self) -> None:
        if not self._pending:
            return
        with self._lock:
            if not self._pending or self._computing:  # done meanwhile, or a read within
                return
            self._computing = True
            try:
                computed = self._compute()
            finally:
                self._computing = False
            pending = self._pending
            self._pending, self._compute = frozenset(), None
            missing = sorted(pending - set(computed))
            if missing:  # `in` said they were there
                warnings.warn(f"KernelPotCalculator: {missing} were announced in the "
                              "results but not computed", RuntimeWarning, stacklevel=3)
            for key, value in computed.items():
                if key in pending:  # a value written meanwhile wins
                    super().__setitem__(key, value)

    def __missing__(self, key):
        if key in self._pending:
            self._materialise()
            return super().__getitem__(key)
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        return key in self._pending or super().__contains__(key)

    def get(self, key, default=None):
        if key in self._pending:
            self._materialise()
        return super().get(key, default)

    def pop(self, key, *default):
        if key in self._pending:
            self._materialise()
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        if key in self._pending:
            self._materialise()
        return super().setdefault(key, default)

    def __setitem__(self, key, value) -> None:
        self._pending = self._pending - {key}
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        if key in self._pending:
            self._materialise()
        super().__delitem__(key)

    def clear(self) -> None:
        self._pending, self._compute = frozenset(), None
        super().clear()

    def popitem(self):
        self._materialise()
        return super().popitem()

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __iter__(self):
        self._materialise()
        return super().__iter__()

    def __reversed__(self):
        self._materialise()
        return super().__reversed__()

    def __len__(self) -> int:
        self._materialise()
        return super().__len__()

    def keys(self):
        self._materialise()
        return super().keys()

    def items(self):
        self._materialise()
        return super().items()

    def values(self):
        self._materialise()
        return super().values()

    def copy(self) -> dict:
        self._materialise()
        return dict(super().items())

    def __eq__(self, other) -> bool:
        self._materialise()
        if isinstance(other, _LazyResults):
            other._materialise()
        return super().__eq__(other)

    def __ne__(self, other) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self) -> str:
        self._materialise()
        return super().__repr__()

    def __reduce__(self):  # pickles and deep copies as a plain dict of every entry
        self._materialise()
        return dict, (dict(super().items()),)


_CONTROLLER = None
#: Size of a sparse model's force design-row product per step (atoms × features ×
#: inducing environments) from which BLAS's threads gain more than they take from the
#: descriptor's (see :func:`_blas_limit`).
THREADED_DESIGN_SIZE = 20_000_000


def _one_blas_thread(model: SparseGPPotential, n_atoms: int, variance: bool | str) -> bool:
    """Return whether a step of ``model`` on ``n_atoms`` atoms runs BLAS on one thread."""
    if variance is not True:
        return True
    if model.method_ != "sparse":
        return False
    inducing = [np.asarray(z) for z in model.inducing_ if len(z)]
    if not inducing:
        return True
    size = n_atoms * inducing[0].shape[1] * sum(len(z) for z in inducing)
    return size < THREADED_DESIGN_SIZE


def _blas_limit(single_thread: bool):
    """Return a context that runs BLAS on one thread (``single_thread``) or as it is.

    One MD step without force stds is mostly the descriptor, whose Numba kernels use
    every core, and small BLAS products. OpenBLAS's worker threads keep spinning for a
    while after each multi-threaded call and then compete with Numba's: a 32-atom Cu₃Au
    step without stds took 58.9 ms with both libraries on two threads and 30.7 ms with
    BLAS on one (measured). With every force std, a sparse model's design-row GEMM
    (atoms × features × inducing environments, times the pairs per atom) decides: on
    two cores (measured 2026-12-07, best of 5, one and two BLAS threads) a 32-atom Cu
    cell with M = 128 took 33 against 60–70 ms, ethanol with M = 900 11.8 against 14.6
    ms, while a 107-atom Al cell with M = 1,712 took 645 against 495 ms and a 32-atom
    Cu₃Au cell with M = 2,560 (D = 952) 314–324 against 249–273 ms. So a sparse model
    runs BLAS on one thread below :data:`THREADED_DESIGN_SIZE` (32 × 252 × 128 ≈ 1e6;
    9 × 855 × 900 ≈ 7e6; 107 × 252 × 1712 ≈ 4.6e7; 32 × 952 × 2560 ≈ 7.8e7) and on
    BLAS's own threads above it. An exact model's force stds (test against training
    Jacobian products) keep the default (250 against 258 ms on one ethanol frame,
    n = 100).
    """
    global _CONTROLLER
    # threadpoolctl's limits are process-wide: only the main thread sets them, so two
    # calculators in two threads cannot leave BLAS limited after both have finished
    if not single_thread or threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
