"""Prediction: what is predicted, how posteriors pass it on, the ``predict*`` methods.

* :class:`Prediction`: everything predicted for one structure;
* :class:`PredictionParts`: a structure's mean prediction and its posterior's input for
  the variances, so that the variances of many structures cost one solve;
* :class:`PredictionMixin`: ``predict``, ``predict_forces``, ``predict_stress``,
  ``predict_energies_and_forces``, ``predict_local_energies`` and
  ``predict_structure`` of :class:`~kernelpot.SparseGPPotential`, which ask its
  fitted posterior (``posterior_``) for the parts and apply the std calibration
  (:mod:`kernelpot.calibration`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from sklearn.utils.validation import check_is_fitted

from kernelpot import _parallel, conformal
from kernelpot._labels import atom_counts, check_frames
from kernelpot._validation import _Pairs, check_finite_positions, check_verbose, closest_contact
from kernelpot.calibration import StdCalibration
from kernelpot.contacts import CONTACT_MARGIN, ContactWarning, contacts_handled, pair_list
from kernelpot.frame_files import FrameFiles, is_paths

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "PredictionMixin", "PredictionParts"]

#: Variance rows of many structures solved together in prediction.
_VARIANCE_BATCH_ROWS = 2048
#: Force components whose jackknife+ candidates are ranked together.
_JACKKNIFE_CHUNK = 64


class Prediction(NamedTuple):
    """Everything the model predicts for one structure.

    Attributes
    ----------
    energy : float
        Total energy, eV.
    forces : ndarray of shape (n_atoms, 3) or None
        eV/Å.
    energy_var_posterior, energy_var_projection : float or None
        Epistemic variance terms of the energy (eV²): the posterior over the
        inducing values and the prior variance the inducing set does not span
        (an exact model's whole posterior variance is in the first; the second is 0).
    forces_var_posterior, forces_var_projection : ndarray of shape (n_atoms, 3) or None
        The same two terms for every force component (eV²/Å²).
    local_energies : ndarray of shape (n_atoms,)
        Per-atom energies including the reference energies, eV; they sum to ``energy``.
    stress : ndarray of shape (6,) or None
        Only when asked: ASE's stress of the predicted energy (Voigt
        ``xx yy zz yz xz xy``, eV/Å³, positive under tension).
    loo_shifts : ndarray of shape (n_rows, n_training_structures) or None
        Only when asked (jackknife+ intervals): how much the mean of the energy (row
        0) and of each force component (rows 1...) drops when each training
        structure is left out, ``μ - μ_{-B}``.
    stress_var_posterior, stress_var_projection : ndarray of shape (6,) or None
        Only when the stress and variances were asked: the two epistemic variance terms
        of each stress component (eV²/Å⁶).
    numbers : ndarray of int of shape (n_atoms,) or None
        The structure's atomic numbers (what the std map's element factors need).
    """

    energy: float
    forces: np.ndarray | None
    energy_var_posterior: float | None
    energy_var_projection: float | None
    forces_var_posterior: np.ndarray | None
    forces_var_projection: np.ndarray | None
    local_energies: np.ndarray
    stress: np.ndarray | None = None
    loo_shifts: np.ndarray | None = None
    stress_var_posterior: np.ndarray | None = None
    stress_var_projection: np.ndarray | None = None
    numbers: np.ndarray | None = None


@dataclass
class PredictionParts:
    """A structure's mean prediction, and what its posterior needs for the variances.

    Posteriors return these from their ``parts`` method and turn a batch of them into
    :class:`Prediction` objects with ``finish``: the variances of many structures
    then cost one solve against the posterior's factors instead of one each.

    Attributes
    ----------
    energy : float
        eV.
    forces : ndarray of shape (n_atoms, 3) or None
        eV/Å.
    local_energies : ndarray of shape (n_atoms,)
        eV, reference energies included.
    stress : ndarray of shape (6,) or None
        eV/Å³.
    variance_rows : int
        Variances still to compute (0 when none were asked).
    variance_input : object
        The posterior's own input for them (``None`` when none were asked).
    close_contact : tuple of (str, str) or None
        ``("min_distance", text)``: the structure's closest pair is closer than the
        model's ``min_distance``; ``("training", text)``: a pair is more than
        :data:`kernelpot.contacts.CONTACT_MARGIN` closer than any pair of its elements
        in the training structures; None: neither.
    numbers : ndarray of int of shape (n_atoms,) or None
        The structure's atomic numbers, passed on to its :class:`Prediction`.
    """

    energy: float
    forces: np.ndarray | None
    local_energies: np.ndarray
    stress: np.ndarray | None
    variance_rows: int = 0
    variance_input: Any = None
    close_contact: tuple[str, str] | None = None
    numbers: np.ndarray | None = None

    def without_variance(self) -> Prediction:
        """Return the mean prediction, with no variance terms.

        Returns
        -------
        Prediction
        """
        return Prediction(self.energy, self.forces, None, None, None, None,
                          self.local_energies, self.stress)


class PredictionMixin:
    """The estimator's prediction methods, on its fitted posterior.

    The host class provides ``posterior_``, ``descriptor_``, ``species_``, ``e0_``,
    ``energy_noise_``, ``force_noise_``, ``stress_noise_``, ``std_scale_``,
    ``interval_scores_`` (fitted),
    the parameters ``apply_calibration``, ``verbose`` and ``n_jobs``, and
    ``_imap(fn, items, verbose, desc)``, an ordered parallel map.
    """

    def _species_index(self, atoms: Atoms, owner: str, which: str = "the structure"
                       ) -> np.ndarray:
        check_finite_positions(atoms.positions, owner)
        unknown = np.setdiff1d(atoms.numbers, self.species_)
        if unknown.size:
            raise ValueError(
                f"{owner}: {which} contains elements the model was not trained on: "
                f"{[chemical_symbols[z] for z in unknown]} (model: "
                f"{[chemical_symbols[z] for z in self.species_]})")
        return np.searchsorted(self.species_, atoms.numbers)

    def _species_indices(self, frames, owner: str) -> list[np.ndarray]:
        """Return :meth:`_species_index` of every structure, naming the first unknown one."""
        return [self._species_index(atoms, owner, f"structure {k}")
                for k, atoms in enumerate(frames)]

    def _check_elements(self, frames, owner: str) -> None:
        """Name the first structure of a list with an element the model does not know."""
        if isinstance(frames, (list, tuple)):  # files are read once, by the map itself
            self._species_indices(frames, owner)

    def _close_contact(self, atoms: Atoms) -> tuple[str, str] | None:
        """Describe a pair of a structure to predict closer than the model has seen.

        Closer than ``min_distance`` (``("min_distance", text)``), else more than
        :data:`~kernelpot.contacts.CONTACT_MARGIN` closer than the shortest training pair
        of its elements (``("training", text)``; models that keep ``shortest_pairs_``).
        """
        min_distance = getattr(self, "min_distance", None)
        limit = float(min_distance) if min_distance is not None and min_distance > 0 else 0.0
        shortest = getattr(self, "shortest_pairs_", None)
        reach = max(limit, shortest.reach if shortest is not None else 0.0)
        if reach <= 0:
            return None
        # one neighbour list for both checks
        i, j, d = pair_list(atoms, getattr(self.descriptor_, "periodic", None), reach)
        text = closest_contact(_Pairs(i, j, d), limit)
        if text is not None:
            return "min_distance", text
        contact = shortest.closest(atoms, (i, j, d)) if shortest is not None else None
        if contact is not None and contact.ratio < 1.0 - CONTACT_MARGIN:
            return "training", contact.describe("training")
        return None

    def _warn_close_contact(self, contact: tuple[str, str] | None, owner: str) -> None:
        """Warn, once per model and kind, of a pair closer than the model has seen.

        Every such structure is logged (INFO); the warning comes once, with the first: in
        MD every step would repeat it with another distance. A pair closer than the
        training pairs is a :class:`~kernelpot.contacts.ContactWarning`, not given (nor
        counted as given) within :func:`~kernelpot.contacts.contact_warnings_handled`.
        """
        if contact is None:
            return
        kind, text = contact
        flag = f"_warned_close_contact_{kind}"
        if kind == "min_distance":
            logger.info("%s: %s, closer than min_distance=%s Å", owner, text,
                        self.min_distance)
        else:
            logger.info("%s: %s", owner, text)
            if contacts_handled():  # the caller reports them (the on-the-fly learner)
                return
        if getattr(self, flag, False):
            return
        setattr(self, flag, True)
        if kind == "min_distance":
            advice = "" if getattr(self, "baseline_", None) is not None else \
                " (a ZBL baseline keeps atoms apart)"
            warnings.warn(f"{owner}: {text}, closer than min_distance={self.min_distance} Å, "
                          "which fit refuses in training structures: the prediction "
                          "extrapolates past the training pairs, and its std does not bound "
                          f"its error{advice}. Warned once per model; later cases are logged "
                          "(INFO).", UserWarning, stacklevel=3)
            return
        warnings.warn(f"{owner}: {text}: the model extrapolates there, and its std may not "
                      "show it (a compressed pair changes a normalised descriptor little; "
                      "measured on EMT Ni–Al cells, such frames had 4 times the force error "
                      "of the others at the same std). Label such structures (on-the-fly "
                      "learning does: kernelpot md --reference). Warned once per model; "
                      "later cases are logged (INFO).", ContactWarning, stacklevel=3)

    def predict_structure(self, atoms: Atoms, forces: bool = True, variance: bool | str = False,
                          stress: bool = False) -> Prediction:
        """Predict one structure's energy, forces and their variance terms.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure.
        forces : bool, default=True
            Also predict the forces.
        variance : bool or "energy", default=False
            Also compute the epistemic variance terms: ``True`` of the energy and
            (with ``forces``) of every force component; ``"energy"`` of the energy
            only, which needs no force design rows and costs little more than the
            mean (the force variances cost ``O(n_pairs M D)``, several times the mean).
        stress : bool, default=False
            Also compute the stress of the predicted energy (see
            :meth:`predict_stress`), from the same descriptor pass.

        Returns
        -------
        Prediction
            Raw (uncalibrated) variance terms; :meth:`epistemic_variance` combines them.
        """
        check_is_fitted(self)
        self._check_variance(variance)
        if not isinstance(stress, (bool, np.bool_)):
            raise TypeError(f"stress must be True or False; got {stress!r}")
        parts = self._predict_parts(atoms, forces, variance, bool(stress),
                                    method="predict_structure")
        self._warn_close_contact(parts.close_contact,
                                 f"{type(self).__name__}.predict_structure")
        return self._finish([parts])[0]

    @staticmethod
    def _check_variance(variance) -> None:
        if variance is not True and variance is not False and variance != "energy":
            raise ValueError(f"variance must be True, False or 'energy'; got {variance!r}")

    def _check_stress_cell(self, atoms: Atoms, owner: str) -> float:
        """Return the cell volume; stress needs a cell periodic along all three axes."""
        if not np.all(atoms.pbc) or self.descriptor_.periodic is False:
            raise ValueError(
                f"{owner}: stress needs a structure periodic along all three axes "
                f"(pbc={atoms.pbc.tolist()}, descriptor periodic="
                f"{self.descriptor_.periodic!r})")
        volume = abs(float(np.linalg.det(np.asarray(atoms.cell))))
        if not volume > 0:
            raise ValueError(f"{owner}: stress needs a cell of non-zero volume")
        return volume

    def _predict_parts(self, atoms: Atoms, forces: bool, variance,
                       stress: bool = False, shifts: bool = False,
                       method: str = "predict") -> PredictionParts:
        """Return the mean prediction of one structure and its posterior's variance input.

        ``method`` names the public method in errors.
        """
        owner = f"{type(self).__name__}.{method}"
        index = self._species_index(atoms, owner)
        volume = self._check_stress_cell(atoms, owner) if stress else None
        parts = self.posterior_.parts(self.descriptor_, atoms, index, self.e0_, forces,
                                      variance, volume, shifts=shifts)
        parts.close_contact = self._close_contact(atoms)
        parts.numbers = np.asarray(atoms.numbers)
        baseline = getattr(self, "baseline_", None)
        if baseline is not None:  # Δ-learning: the fixed term adds to the mean only
            terms = baseline.compute(atoms, forces=forces, stress=bool(stress))
            parts.energy += terms.energy
            parts.local_energies = parts.local_energies + terms.local_energies
            if forces:
                parts.forces = parts.forces + terms.forces
            if stress:
                parts.stress = parts.stress + terms.stress
        return parts

    def _predict_many(self, X, forces: bool, variance, stress: bool = False,
                      shifts: bool = False, method: str = "predict"):
        """Predict many structures, solving their variances in batches.

        The model goes to joblib's workers as one shared argument: joblib's Dask backend
        scatters it to the cluster once, not with every batch of structures. ``method``
        names the public method in errors.
        """
        frames = check_frames(FrameFiles(X) if is_paths(X) else X,
                              f"{type(self).__name__}.{method}")
        check_is_fitted(self)
        self._check_elements(frames, f"{type(self).__name__}.{method}")
        verbose = check_verbose(self.verbose, type(self).__name__)
        self.posterior_.prepare_prediction()  # shared by every worker, built once here
        out, batch, batch_rows = [], [], 0
        for parts in _parallel.imap(_predict_structure, frames, n_jobs=self.n_jobs,
                                    verbose=verbose, desc="predict",
                                    shared=(self, forces, variance, stress, shifts,
                                            method)):
            self._warn_close_contact(parts.close_contact, f"{type(self).__name__}.{method}")
            batch.append(parts)
            batch_rows += parts.variance_rows
            if batch_rows >= _VARIANCE_BATCH_ROWS:
                out.extend(self._finish(batch))
                batch, batch_rows = [], 0
        out.extend(self._finish(batch))
        return frames, out

    def _finish(self, batch: list[PredictionParts]) -> list[Prediction]:
        """Return the posterior's Predictions of ``batch``, with their atomic numbers."""
        return [prediction._replace(numbers=parts.numbers) for prediction, parts
                in zip(self.posterior_.finish(batch), batch, strict=True)]

    @staticmethod
    def _check_std_type(std_type: str) -> None:
        if std_type not in ("total", "epistemic"):
            raise ValueError(f"std_type must be 'total' or 'epistemic'; got {std_type!r}")

    def predict(self, X: Sequence[Atoms], return_std: bool = False, std_type: str = "total",
                return_interval: float | None = None) -> np.ndarray | tuple[np.ndarray, ...]:
        """Predict total energies.

        Parameters
        ----------
        X : list of ase.Atoms, FrameFiles, or path(s)
            Structures; a file's path, a list of paths or a
            :class:`~kernelpot.FrameFiles` are read as the predictions go.
        return_std : bool, default=False
            Also return the std.
        std_type : {"total", "epistemic"}, default="total"
            "total" adds the learned energy noise (``σ_E² N``) to the epistemic
            variance, as scikit-learn's GPR does with a WhiteKernel; "epistemic"
            is the model's own uncertainty alone.
        return_interval : float in (0, 1) or None, default=None
            Also return intervals of this nominal coverage: with the default LOSO
            calibration (``interval_kind_ == "loso"``), normalised jackknife+ ones
            over the training structures (:func:`kernelpot.conformal.jackknife_plus`:
            coverage at least ``1 - 2α`` for exchangeable structures, about ``1 - α``
            in practice); after :meth:`calibrate`, split-conformal ones (guaranteed
            coverage on structures exchangeable with the validation set); without
            either, Gaussian ones from the total std, with a warning.

        Returns
        -------
        energies : ndarray of shape (n_structures,)
            Energies, eV.
        std : ndarray of shape (n_structures,)
            Only with ``return_std=True``; eV.
        interval : ndarray of shape (n_structures, 2)
            Only with ``return_interval``: lower and upper bounds, eV.
        """
        self._check_std_type(std_type)
        want_var = return_std or return_interval is not None
        jackknife = return_interval is not None and self._jackknife_ready("energy")
        if return_interval is not None and not jackknife:
            multiplier = self._calibration().interval_multiplier(
                "energy", return_interval, type(self).__name__)
        frames, out = self._predict_many(X, forces=False, variance="energy" if want_var
                                         else False, shifts=jackknife)
        energies = np.array([p.energy for p in out])
        if not want_var:
            return energies
        epistemic, total = self._energy_variances(frames, out)
        result = [energies]
        if return_std:
            result.append(np.sqrt(total if std_type == "total" else epistemic))
        if jackknife:
            scores, structure = self.jackknife_scores_["energy"]
            loo_means = energies[:, None] - np.array([p.loo_shifts[0] for p in out])[
                :, structure]
            result.append(np.column_stack(conformal.jackknife_plus(
                loo_means, scores, np.sqrt(total), return_interval)))
        elif return_interval is not None:
            half = multiplier * np.sqrt(total)
            result.append(np.column_stack([energies - half, energies + half]))
        return tuple(result)

    def _jackknife_ready(self, quantity: str) -> bool:
        """Return whether jackknife+ intervals are available for ``quantity``."""
        check_is_fitted(self)
        basis = getattr(self.posterior_, "loo_shift", None)
        return (self.interval_kind_ == "loso" and bool(self.apply_calibration)
                and quantity in (self.jackknife_scores_ or {}) and basis is not None
                and basis.shape[1] > int(self.jackknife_scores_[quantity][1].max()))

    def _jackknife_force_intervals(self, forces: list, out: list, totals: list,
                                   coverage: float) -> list:
        """Return jackknife+ intervals of every force component, shape (n_atoms, 3, 2)."""
        scores, structure = self.jackknife_scores_["forces"]
        intervals = []
        for f, p, total in zip(forces, out, totals, strict=True):
            mean, std = f.ravel(), np.sqrt(total).ravel()
            bounds = np.empty((mean.size, 2))
            for start in range(0, mean.size, _JACKKNIFE_CHUNK):  # memory: chunk × n scores
                rows = slice(start, start + _JACKKNIFE_CHUNK)
                loo_means = mean[rows, None] - p.loo_shifts[1:][rows][:, structure]
                bounds[rows, 0], bounds[rows, 1] = conformal.jackknife_plus(
                    loo_means, scores, std[rows], coverage)
            intervals.append(bounds.reshape(-1, 3, 2))
        return intervals

    def _calibration(self) -> StdCalibration:
        """Return the fitted std calibration (raw stds when none, or not applied)."""
        check_is_fitted(self)
        return StdCalibration(self.std_scale_, self.interval_scores_,
                              applied=bool(self.apply_calibration))

    def _energy_variances(self, frames, out):
        """Return calibrated epistemic and total variances of the energies of Predictions."""
        calibration = self._calibration()
        epistemic = np.array([calibration.epistemic_variance(
            "energy", p.energy_var_posterior, p.energy_var_projection) for p in out])
        total = epistemic + calibration.noise_variance(
            "energy", self.energy_noise_**2 * atom_counts(frames))
        return epistemic, total

    def _force_variances(self, out):
        """Return calibrated epistemic variances of the forces of Predictions, and the noise."""
        calibration = self._calibration()
        epistemic = [calibration.epistemic_variance("forces", p.forces_var_posterior,
                                                    p.forces_var_projection, p.numbers)
                     for p in out]
        return epistemic, calibration.noise_variance("forces", self.force_noise_**2)

    def predict_forces(self, X: Sequence[Atoms], return_std: bool = False,
                       std_type: str = "total", return_interval: float | None = None,
                       ) -> list[np.ndarray] | tuple[list[np.ndarray], ...]:
        """Predict forces.

        Parameters
        ----------
        X : list of ase.Atoms, FrameFiles, or path(s)
            Structures; a file's path, a list of paths or a
            :class:`~kernelpot.FrameFiles` are read as the predictions go.
        return_std : bool, default=False
            Also return the std of every component.
        std_type : {"total", "epistemic"}, default="total"
            "total" adds the learned force noise ``σ_F²`` (times ``d²`` after
            :meth:`calibrate`) to the epistemic variance.
        return_interval : float in (0, 1) or None, default=None
            Also return per-component intervals of this nominal coverage (jackknife+
            with the LOSO calibration, split-conformal after :meth:`calibrate`, as in
            :meth:`predict`).

        Returns
        -------
        forces : list of ndarray of shape (n_atoms, 3)
            Forces, eV/Å.
        std : list of ndarray of shape (n_atoms, 3)
            Only with ``return_std=True``; eV/Å per component.
        interval : list of ndarray of shape (n_atoms, 3, 2)
            Only with ``return_interval``: lower and upper bound of every component.
        """
        self._check_std_type(std_type)
        want_var = return_std or return_interval is not None
        jackknife = return_interval is not None and self._jackknife_ready("forces")
        if return_interval is not None and not jackknife:
            multiplier = self._calibration().interval_multiplier(
                "forces", return_interval, type(self).__name__)
        _, out = self._predict_many(X, forces=True, variance=want_var, shifts=jackknife,
                                    method="predict_forces")
        forces = [p.forces for p in out]
        if not want_var:
            return forces
        epistemic, noise = self._force_variances(out)
        result = [forces]
        if return_std:
            result.append([np.sqrt(v + (noise if std_type == "total" else 0.0))
                           for v in epistemic])
        if jackknife:
            result.append(self._jackknife_force_intervals(
                forces, out, [v + noise for v in epistemic], return_interval))
        elif return_interval is not None:
            halves = [multiplier * np.sqrt(v + noise) for v in epistemic]
            result.append([np.stack([f - h, f + h], axis=-1)
                           for f, h in zip(forces, halves, strict=True)])
        return tuple(result)

    def predict_stress(self, X: Sequence[Atoms], return_std: bool = False,
                       std_type: str = "total") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predict the stress of periodic structures.

        The analytic derivative of the predicted energy with respect to a homogeneous
        strain of the cell and positions (descriptor strain gradients, plus the
        two-body term when fitted): ``σ = (1/V) ∂E/∂ε``, symmetrised.

        Parameters
        ----------
        X : list of ase.Atoms, FrameFiles, or path(s)
            Each periodic along all three axes (paths are read as for :meth:`predict`).
        return_std : bool, default=False
            Also return the std of every stress component: the model's epistemic
            variance of the stress (the same linear functional of the local-energy GP
            as the mean), through the "stress" map of the std calibration when the model
            has one (fitted at fit time on the LOSO stresses of the training cells, as
            for energies and forces; raw otherwise), plus with ``std_type="total"`` the
            map's share of the learned stress noise, ``d² σ_S²``
            (:meth:`noise_variance`; ``d`` is fitted with the map, and is small where
            the LOSO errors read the noise as the model's own misfit). A model that
            trained on no stress has learned no ``σ_S``: its total std is the epistemic
            one, with a warning (the start value ``stress_noise`` set stds 17–80 times
            the errors of a new user's Pt cells).
        std_type : {"total", "epistemic"}, default="total"

        Returns
        -------
        stress : ndarray of shape (n_structures, 6)
            ASE's convention: Voigt ``xx yy zz yz xz xy``, eV/Å³, positive under
            tension (``atoms.get_stress()``).
        std : ndarray of shape (n_structures, 6)
            Only with ``return_std=True``; eV/Å³.

        Raises
        ------
        ValueError
            For a structure that is not periodic along all three axes (or a
            descriptor with ``periodic=False``), or a cell of zero volume.

        Notes
        -----
        The model trains on the stresses of the training cells that carry one
        (``use_stress``); otherwise (``use_stress=False``, or no stress labels) the
        stress is what the energies and forces determine: on mlearn Mo its error was
        several times that of a model trained on stresses (``benchmarks/RESULTS.md``).
        """
        self._check_std_type(std_type)
        _, out = self._predict_many(X, forces=False, variance="energy" if return_std else False,
                                    stress=True, method="predict_stress")
        stress = np.array([p.stress for p in out]).reshape(-1, 6)
        if not return_std:
            return stress
        calibration = self._calibration()
        variance = np.array([calibration.epistemic_variance(
            "stress", p.stress_var_posterior, p.stress_var_projection)
            for p in out]).reshape(-1, 6)
        if std_type == "total":
            if self.posterior_.n_stress_observations:
                variance = variance + calibration.noise_variance("stress",
                                                                 self.stress_noise_**2)
            else:  # an unlearned start value would set the std (0.16 GPa by default)
                warnings.warn(f"{type(self).__name__}.predict_stress: the model trained on no "
                              "stresses, so it has learned no stress noise: the total std "
                              "is the epistemic one (uncalibrated; train on stresses for a "
                              "total std)", UserWarning, stacklevel=2)
        return stress, np.sqrt(variance)

    def predict_energies_and_forces(self, X: Sequence[Atoms], return_std: bool = False,
                                    std_type: str = "total",
                                    ) -> (tuple[np.ndarray, list[np.ndarray]]
                                          | tuple[np.ndarray, list[np.ndarray], np.ndarray,
                                                  list[np.ndarray]]):
        """Predict energies and forces (and their stds) in one pass over the structures.

        The same values as :meth:`predict` and :meth:`predict_forces` together, at
        the cost of one of them: descriptors, their Jacobians and the variance rows
        are computed once per structure.

        Parameters
        ----------
        X : list of ase.Atoms, FrameFiles, or path(s)
            Structures; a file's path, a list of paths or a
            :class:`~kernelpot.FrameFiles` are read as the predictions go.
        return_std : bool, default=False
            Also return the stds.
        std_type : {"total", "epistemic"}, default="total"
            As in :meth:`predict` and :meth:`predict_forces`.

        Returns
        -------
        energies : ndarray of shape (n_structures,)
            Energies, eV.
        forces : list of ndarray of shape (n_atoms, 3)
            Forces, eV/Å.
        energy_std : ndarray of shape (n_structures,)
            Only with ``return_std=True``; eV.
        forces_std : list of ndarray of shape (n_atoms, 3)
            Only with ``return_std=True``; eV/Å per component.

        Examples
        --------
        >>> from kernelpot import SparseGPPotential, SOAP, load_ethanol
        >>> frames = load_ethanol()
        >>> model = SparseGPPotential(SOAP(["H", "C", "O"], 4.0, 4, 3, 0.4)).fit(frames[:5])
        >>> energies, forces, e_std, f_std = model.predict_energies_and_forces(
        ...     frames[5:7], return_std=True)
        >>> forces[0].shape, e_std.shape
        ((9, 3), (2,))
        """
        self._check_std_type(std_type)
        frames, out = self._predict_many(X, forces=True, variance=bool(return_std),
                                         method="predict_energies_and_forces")
        energies = np.array([p.energy for p in out])
        forces = [p.forces for p in out]
        if not return_std:
            return energies, forces
        total = std_type == "total"
        e_epistemic, e_total = self._energy_variances(frames, out)
        f_epistemic, noise = self._force_variances(out)
        return (energies, forces, np.sqrt(e_total if total else e_epistemic),
                [np.sqrt(v + (noise if total else 0.0)) for v in f_epistemic])

    def predict_local_energies(self, X: Sequence[Atoms]) -> list[np.ndarray]:
        """Predict per-atom energies (reference energy included).

        Parameters
        ----------
        X : list of ase.Atoms, FrameFiles, or path(s)
            Structures, read as for :meth:`predict`.

        Returns
        -------
        list of ndarray of shape (n_atoms,)
            Local energies, eV; each sums to the structure's predicted energy.
        """
        check_is_fitted(self)
        frames = check_frames(FrameFiles(X) if is_paths(X) else X,
                              f"{type(self).__name__}.predict_local_energies")
        out = []
        for atoms in frames:
            index = self._species_index(atoms, "predict_local_energies")
            local = self.posterior_.local_energies(self.descriptor_, atoms, index)
            # after the descriptor's own checks, whose messages name the method
            self._warn_close_contact(self._close_contact(atoms),
                                     f"{type(self).__name__}.predict_local_energies")
            baseline = getattr(self, "baseline_", None)
            if baseline is not None:
                local = local + baseline.compute(atoms, forces=False).local_energies
            out.append(local + self.e0_[index])
        return out


def _predict_structure(shared: tuple, atoms: Atoms) -> PredictionParts:
    """One structure's prediction parts (``shared``: the model and what to predict)."""
    model, forces, variance, stress, shifts, method = shared
    return model._predict_parts(atoms, forces, variance, stress, shifts, method)
