"""Uncertainty-gated molecular dynamics with on-the-fly learning."""

from __future__ import annotations

import io as _io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from sklearn.base import clone

from kernelpot import estimator as estimator_module
from kernelpot._files import atomic_write
from kernelpot._numbers import GPA, significant
from kernelpot._validation import check_int, check_max_inducing, check_verbose, close_contact
from kernelpot.calculator import KernelPotCalculator
from kernelpot.contacts import (
    CONTACT_MARGIN,
    ContactWarning,
    ShortestPairs,
    contact_warnings_handled,
)
from kernelpot.hyperparameters import (
    UNEXPLAINED_NOISE_FRACTION,
    fitted_names,
    forces_unexplained,
)
from kernelpot.sparse_posterior import DEFAULT_SPARSE_CAP

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator
    from ase.md.md import MolecularDynamics

    from kernelpot.estimator import SparseGPPotential

logger = logging.getLogger(__name__)

__all__ = ["OnTheFlyLearner"]

LOG_FILE = "otf_log.jsonl"
FRAMES_FILE = "labelled.extxyz"
MODEL_FILE = "model.npz"
STATE_FILE = "md_state.npz"
SETTINGS_FILE = "learner.json"
#: The automatic threshold of a model too young for a LOSO map, eV/Å: it labels every
#: structure except one it already knows (a raw std below this).
YOUNG_FLOOR = 1e-3

#: RMS z-score of a reference call's force errors (against the calibrated std and the
#: label noise) past which the learner warns that the training labels and the reference
#: may disagree (once a run; see ``OnTheFlyLearner._check_agreement``)
AGREEMENT_RMS_Z = 4.0


def _error_seen(results: dict, std: np.ndarray, reference: np.ndarray,
                noise: float = 0.0) -> dict[str, float]:
    """Return how the model's forces and gated std compared with a new reference label.

    Keys: ``force_error_max`` and ``force_error_rms`` (eV/Å, over components),
    ``within_1std`` / ``within_2std``: the fractions of components whose error is
    inside one / two gated (epistemic) stds, the calibration of the gate on the
    structures it labelled; and ``force_rms_z``: the RMS of the errors over the
    predictive std (the gated one and the label noise ``noise``, eV/Å, combined; NaN
    where that is zero everywhere).
    """
    error = np.abs(np.asarray(results["forces"]) - reference)
    std = np.asarray(std)
    total = np.hypot(std, noise)
    usable = total > 0
    rms_z = float(np.sqrt(np.mean((error[usable] / total[usable])**2))) if usable.any() \
        else float("nan")
    return {"force_error_max": float(error.max()),
            "force_error_rms": float(np.sqrt(np.mean(error**2))),
            "within_1std": float(np.mean(error <= std)),
            "within_2std": float(np.mean(error <= 2 * std)),
            "force_rms_z": rms_z}


def _finite_or_null(record: dict) -> dict:
    """Return the record with non-finite floats as None (strict JSON has no NaN or inf)."""
    return {key: None if isinstance(value, float) and not np.isfinite(value) else value
            for key, value in record.items()}


def _where(record: dict) -> str:
    """Return the step, simulated time and temperature of a log record."""
    return (f"step {record['step']:>7} {record['time_fs']:>9.1f} fs "
            f"{record['temperature_K']:>6.0f} K")


def _call_line(record: dict, seconds: float) -> str:
    """Return the stdout line of a reference call (``verbose=1``; forces in meV/Å)."""
    return (f"{_where(record)} | {_gate_part(record)}: "
            f"reference call {record['n_reference_calls']} | model error rms "
            f"{1e3 * record['force_error_rms']:.3g}, max "
            f"{significant(1e3 * record['force_error_max'])} meV/Å, "
            f"{100 * record['within_1std']:.0f} % / {100 * record['within_2std']:.0f} % "
            f"inside 1 / 2 std{_stress_part(record)} | reference "
            f"{record['reference_s']:.1f} s + update {seconds - record['reference_s']:.1f} s, "
            f"total "
            f"{record['wall_s']:.0f} s")


def _over(value: float, threshold: float) -> str:
    """Return ``"value > threshold"``, with the digits that tell the two apart (up to 7)."""
    for digits in range(3, 8):
        left, right = f"{value:.{digits}g}", f"{threshold:.{digits}g}"
        if left != right:
            break
    return f"{left} > {right}"


def _gate_part(record: dict) -> str:
    """Return what made a call: the force std over the threshold, or a close contact.

    A call the stress gate made alone shows the force std beside its threshold (the
    stress part, :func:`_stress_part`, says why).
    """
    std, threshold = 1e3 * record["max_force_std"], 1e3 * record["threshold"]
    if "critical_std" in record:
        after = 1e3 * record["std_after_call"]
        base, what = (threshold, "the threshold") if threshold >= after \
            else (after, "the std after the last call")
        contact = f"; {record['contact']}" if record.get("called_by_contact") else ""
        return (f"std {_over(std, 1e3 * record['critical_std'])} meV/Å = "
                f"{significant(1e3 * record['critical_std'] / base)} × {what} "
                f"({significant(base)} meV/Å): "
                f"critical, {record['steps_since_call']} step(s) after the last call"
                f"{contact}")
    if std > threshold:
        return f"std {_over(std, threshold)} meV/Å"
    if record.get("called_by_contact"):
        return f"{record['contact']} (std {significant(std)} meV/Å)"
    return f"std {std:.3g} (threshold {threshold:.3g}) meV/Å"


def _stress_part(record: dict) -> str:
    """Return what a call's line says of the stress std when the stress gate made it."""
    if not record.get("called_by_stress"):
        return ""
    return (f" | stress std "
            f"{_over(GPA * record['max_stress_std'], GPA * record['stress_threshold'])} GPa")


def _status_line(record: dict, first_step: int) -> str:
    """Return the periodic stdout status line (``verbose=1``; forces in meV/Å)."""
    per_step = record["wall_s"] / max(record["step"] - first_step, 1)
    # '#': trailing zeros kept, so that a std of 5.00 does not print as "5" beside "4.35"
    return (f"{_where(record)} | std {significant(1e3 * record['max_force_std'])}, threshold "
            f"{significant(1e3 * record['threshold'])} meV/Å |"
            f" {record['n_reference_calls']} calls, {record['n_structures']} structures, "
            f"{record['n_inducing']} "
            f"{'training environments' if record.get('method') == 'exact' else 'inducing'}"
            f" | {per_step:.3f} s/step, total "
            f"{record['wall_s']:.0f} s")


class ReferenceFailed(RuntimeError):
    """The reference calculator failed twice in a row on the same structure."""


class InconsistentReference(ReferenceFailed):
    """The reference's energy is far from anything the model was trained to mean."""


#: Energy stds (epistemic and learned noise) a reference energy must also lie beyond
#: for ``max_energy_gap`` to stop a run.
ENERGY_GAP_STDS = 20.0


#: Interatomic distance (Å) below which the energy-gap message names the closest pair.
_CLOSE_CONTACT = 0.75


class OnTheFlyLearner:
    """Run ASE molecular dynamics that calls a reference method when the model is unsure.

    After every MD step the learner compares the largest epistemic force std of the
    current structure (calibrated, see Notes) with a threshold. Above it (and within
    the call budget and spacing), it labels the structure with the reference
    calculator, adds it to the model (:meth:`SparseGPPotential.update`: a refit of an
    exact model, a low-rank update of a sparse one; with the default ``method="auto"``
    the model starts exact and turns sparse once the exact model passes its limits),
    re-optimises the hyperparameters every ``reoptimize_every`` additions, recomputes
    the forces and continues.

    Parameters
    ----------
    model : SparseGPPotential
        Fitted (a sparse model fitted without ``incremental=True`` is refitted as one
        at the start of the run, once), or unfitted: the first structure is then
        labelled by the reference and the model fitted on it (``incremental`` set).
    reference : ase.calculators.calculator.Calculator
        The reference method (DFT, xTB, EMT, ...).
    threshold : float, optional
        Absolute threshold on the largest calibrated force std component, eV/Å.
    relative_threshold : float, default=1.5
        Used when ``threshold`` is None (see Notes): the automatic threshold is this
        multiple of the largest calibrated force std any training structure had when
        it was left out of the model. 1 calls the reference whenever the current
        structure looks less certain than every training structure did; the default
        1.5 asks for a clear margin, because the largest LOSO std of a few structures
        is itself noisy (Cu/EMT from a fitted start: 11 calls with 1, most of them with
        the std equal to the threshold to three digits; 5 with 1.5, measured). A model
        without LOSO calibration (``calibration=None``, or a file from before it
        existed) falls back to this multiple of its learned ``σ_F``, with a warning.
    directory : str or path-like, default="."
        Where the step log (``otf_log.jsonl``), the labelled frames
        (``labelled.extxyz``) and the checkpoint (``model.npz``, ``md_state.npz``,
        ``learner.json``) go.
    n_inducing : int or "all", default="all"
        Environments of each labelled structure added as inducing points (an int:
        the most uncertain ones). All by default: on Cu/EMT a model of three frames
        with every environment inducing predicted 800 K forces to 2.7 meV/Å (SOAP),
        while adding four per frame left on-the-fly runs at 50–80 meV/Å.
    max_inducing : int, dict or None, default=2000
        Inducing environments per element, at most (``{element: count}`` for one cap
        per element; None: no cap), as the estimator's default fit caps them. Once an
        element reaches it, its new environments enter the model as observations
        only, so the cost of an MD step (and of each later update) stops growing
        with the run (see :meth:`SparseGPPotential.update`). An exact model has no
        inducing points: the cap applies from the update that turns it sparse.
    max_calls : int, optional
        Cap on reference calls.
    min_interval : int, default=10
        Minimum number of MD steps between two reference calls (VASP's ML_NMDINT
        default is also 10): a structure one step after a call is nearly the one just
        learned. Lower it for a young model of a molecule with sub-femtosecond
        steps: ethanol (xTB, 0.5 fs, model of five frames) heated to thousands of
        kelvin between calls 10 steps apart, and ran stably with 3. With
        ``critical_factor``, a std far past the threshold does not wait.
    critical_factor : float or None, default=None
        A step whose largest force std exceeds ``critical_factor`` times the threshold,
        and as many times the largest std of the first step after the last call, calls
        the reference without waiting ``min_interval`` steps (VASP's ML_CDOUB, whose
        default is 2): a structure that far from the labelled ones is not a
        near-duplicate of the last. The second condition keeps a model whose std stays
        far past a small given threshold, even next to a structure it just learned,
        from calling at every step. Applies to a given threshold, and to the automatic
        one once the model has a LOSO map; a young model's calls (no map yet) and those
        of a model that reads its forces as noise stay ``min_interval`` apart, as their
        thresholds do not come from the std. ``None`` (the default): every call waits
        ``min_interval`` steps; the measurements in Notes did not show a gain that
        would make 2 the default. Must be at least 1.
    reoptimize_every : int, default=1
        Re-optimise the hyperparameters after this many additions (0: never). Every
        addition by default: on Cu/EMT (ACSF, 2000 steps) re-optimising every fifth
        addition left the model at 2 calls and 120 meV/Å, every addition reached
        10.5 meV/Å (with 40 calls). Raise it when the model grows large.
    checkpoint_every : int, default=1
        Write the checkpoint after this many additions.
    force_tolerance : float, default=0.1
        Cap of the automatic threshold, as a fraction of the root mean square of the
        labelled force components (see Notes).
    max_energy_gap : float or None, default=1.0
        In eV per atom. A reference energy further than this from the model's prediction,
        and more than :data:`ENERGY_GAP_STDS` of the model's energy stds away, stops the
        run before the frame is learned (``stopped`` says why; a ``RuntimeWarning``):
        such a label comes from another method than the model was trained on (another
        code, functional or setting: absolute energies differ by eV per atom between
        them) or from a structure nothing like the training set. Measured: a model of
        GFN2-xTB acetamide given EMT as its reference (a typing slip the command line
        accepts) learned a label 42 eV/atom off and its MD went to 245,000 K in five
        steps, and the run ended as if it had worked. Checked only where the model was
        trained on energies. None turns the check off.
    contact_margin : float or None, default=0.05
        The contact gate: the reference is also called (within the call budget and
        spacing) when two atoms come closer than ``1 - contact_margin`` times the shortest
        distance of their two elements in the labelled structures (pairs within the
        descriptor's cutoff; a pair of elements no labelled structure holds within it
        counts from the cutoff). The posterior std barely sees a compressed pair (see
        :mod:`kernelpot.contacts`); the energy's repulsive wall does. Each call lowers
        that shortest distance, so calls stop once the run's closest contacts are
        labelled. None turns it off. Either way the model's own warning of such contacts
        (:class:`~kernelpot.contacts.ContactWarning`) is not given during the run; the
        learner gives one at its end if any step had a pair more than 5 % closer that it
        did not label. See Notes for what it measured.
    label_stress : bool, default=False
        Also ask the reference for the stress of structures periodic along all three
        axes and train on it (with the model's ``use_stress``): six more observations
        per call, what NPT runs need; off by default, as some references compute the
        stress at extra cost. Then the learner also gates on the calibrated epistemic
        stress std at the steps where the cell changed (NPT, a barostat): it calls the
        reference when that std passes ``relative_threshold`` times the largest one any
        labelled cell had when it was left out (1 times, with a given ``threshold``). A
        change of volume or shape can leave a symmetric cell's forces, and their std, at
        zero; the stress std sees it.
    verbose : int, default=0
        1 prints a line on stdout for every reference call (step, time, temperature,
        largest std against the threshold, calls so far, the model's error on the new
        label, wall time) and a status line every ``status_every`` steps, as FLARE
        and VASP do.
    status_every : int, default=100
        MD steps between two status lines (``verbose=1``).
    state_every : int, default=100
        MD steps between two saves of the MD state alone (positions, momenta, step and
        the run's settings: a few kB) between model checkpoints, so that an interrupted
        run resumes near where it stopped rather than at its last checkpoint; the state
        is also saved after every reference call. :meth:`resume` adds the frames
        labelled since the model's last checkpoint.

    Attributes
    ----------
    model : SparseGPPotential
        The current model.
    n_reference_calls : int
        Reference calls the gate made. An unfitted model's first frame, which the learner
        labels before the first step to fit on, is not counted (as the frames a fitted
        model was trained on are not): from an unfitted start the reference ran
        ``n_reference_calls + 1`` times.
    stopped : str or None
        Why the run stopped early (a failing reference), else None.
    stopped_by : ReferenceFailed or None
        The error that stopped it (:class:`InconsistentReference` for the energy gap),
        else None.
    largest_gated_std : tuple of (float, int) or None
        The largest gated force std of the last :meth:`run`'s steps (eV/Å, before any
        call at that step) and its step; None before a step.
    largest_gated_threshold : float or None
        The threshold at that step (eV/Å; the automatic one moves with the calls).
    shortest_pairs : kernelpot.contacts.ShortestPairs or None
        The shortest distance of each pair of elements in the labelled structures (the
        model's ``shortest_pairs_``, the contact gate's reference; None before a run, or
        for a descriptor without a cutoff).

    Notes
    -----
    The gated std is the model's own calibrated epistemic force std, the same the
    calculator reports (``forces_std``) and ``predict_forces(...,
    std_type="epistemic")`` returns: with the estimator's default
    ``calibration="loso"``, the variance map fitted on the training structures'
    leave-one-structure-out (LOSO) predictions, refitted by every update. A model of
    fewer than three structures has no LOSO map yet; its std is the raw one.

    The automatic threshold (``threshold=None``) means the same for every start,
    fitted or not, noisy or noise-free labels: ``relative_threshold`` times the
    largest calibrated force std any training structure had when it was left out,
    recomputed after every update, but at most ``force_tolerance`` (0.1) times the
    root mean square of the labelled force components. The cap matters for a young
    model of a molecule, uncertain everywhere: without it the threshold followed the
    model's own (large) stds, calls were rare, and the MD heated up, labelled ever
    wilder structures and raised the threshold further (ethanol with GFN2-xTB from
    five frames: 17 calls, the molecule at 17,000 K, 1.7 eV/Å). If the current
    structure is exchangeable with the ``n`` training structures, its largest std
    exceeds the largest of theirs with probability at most about ``1 / (n + 1)``, and
    ``relative_threshold`` times it less often still; a structure unlike them (new
    temperature, new chemistry) exceeds it more often, so calls thin out as the model
    covers the run. Before the model has three structures it has no LOSO map and its
    raw std says little: the reference is called every ``min_interval`` steps, except
    on a structure the model already knows (raw std below :data:`YOUNG_FLOOR`, 1 meV/Å;
    e.g. the perfect lattice it was just fitted on); a fitted model that starts on such
    a structure counts it as labelled at the first step, as an unfitted start's is, so
    its first call is not a near-duplicate of it (on-the-fly Cu from a model fitted on
    the first frame: young calls at steps 4–6 and 14–16, then 5–6 calls in all with
    ACSF; now at 10 and 20, 2–3 in all, as from an unfitted model). Gating a young
    model's raw std on the tolerance instead let a Cu/EMT model fitted on one zero-force
    lattice drive two atoms 0.18 Å apart before its second call (measured, with a
    10 meV/Å floor). (The threshold was ``relative_threshold × σ_F`` fixed at the
    start: with noise-free labels the learned ``σ_F`` falls to its lower bound, and the
    reference was called at every ``min_interval`` for the whole run.)

    A model whose fitted force noise ``σ_F`` exceeds half the RMS of its labelled force
    components (:func:`~kernelpot.hyperparameters.forces_unexplained`) reads much of the
    forces as noise, and its epistemic std says nothing about its error: its automatic
    threshold is 0, so the reference is called every ``min_interval`` steps until a
    re-optimised ``σ_F`` falls below that. (Measured: a model of three acetic-acid
    frames 10 fs apart, GFN2-xTB, had ``σ_F`` equal to the labels' RMS, 0.83 eV/Å, and an
    epistemic std of 3e-5 eV/Å; it made no call in 400 steps at 400 K, with a force error
    of 0.87 eV/Å and a C–O distance of 0.50 Å reached. With the rule: 38 calls, 94 meV/Å
    on held-out frames.)

    ``critical_factor=2`` against ``None`` (measured, one seed each, GFN2-xTB from one
    frame, 1,000 Langevin steps at 500 K, 0.5 fs, ``min_interval=10``): methylamine 21
    calls (9 critical, 3–8 steps after the one before, in the first 70 steps) against
    24, final force MAE on held-out 400 K / 800 K frames 33.6 / 63.7 against 35.4 / 66.5
    meV/Å, mean temperature 698 against 732 K (plain GFN2-xTB with the same seeds: 579
    K); methanethiol 20 calls (4 critical) against 23, 19.6 / 34.0 against 16.2 / 25.9
    meV/Å (the critical calls, 4 steps apart, label near-duplicates), mean temperature
    827 against 830 K. Cu/EMT (``benchmarks/otf.py``, both starts) and ethanol
    (``benchmarks/otf_ethanol.py``, ``min_interval=3``) made no critical call. It saves
    a few calls and changes neither the heating nor, consistently, the error.

    The contact gate (``contact_margin``) calls the reference on a pair of atoms
    closer than any labelled pair of their elements, whatever the std says. Measured
    (``benchmarks/otf_contact.py``): a new user's model of fifteen 600 K EMT Ni–Al cells
    (``kernelpot fit``'s SOAP), on the fly at 900 K, three seeds of 500 steps. Without
    the gate, recorded frames with a pair more than 5 % closer than the labelled ones
    had a median largest force error of 303 meV/Å (71 where no pair was closer) at the
    same gated stds (median 42 against 46 meV/Å); the contact ratio ranked the frames'
    errors (Spearman −0.57), the std hardly (0.24). With the gate (5 %): 11, 8 and 7
    calls (2, 1 and 0 by contact) against 6, 6 and 7; the largest force error after the
    start 231, 238 and 240 meV/Å against 505, 304 and 240; the final model's force MAE on
    1200 K cells 22.3, 28.7 and 28.2 meV/Å against 30.5, 26.9 and 28.2. Cu/EMT
    (``benchmarks/otf.py``, unfitted and fitted starts) kept its 3 calls and 1.5 meV/Å.
    A margin of 0.03 gave 13, 7 and 7 calls and 21.7, 26.0 and 28.2 meV/Å at 1200 K,
    but Cu/EMT then made 4 calls (1.2 meV/Å). On ethanol with GFN2-xTB (the example's
    setting, 10,000 steps) it called twice of 75 calls, once where the std did not: an
    O–H bond 5 % shorter than any labelled, the model's error there 550 meV/Å.

    A temperature ramp is a callback the user attaches to the dynamics, e.g.
    ``dyn.attach(lambda: dyn.set_temperature(temperature_K=300 + dyn.nsteps), 1)``.
    The step log (``otf_log.jsonl``, one JSON record per MD step) holds the step, time,
    temperature, largest gated std, threshold, whether the reference was called and
    the model's size and ``wall_s``, the seconds since the current :meth:`run` started
    (a resumed run starts again at 0); a step with a pair closer than any labelled pair
    of its elements records ``contact_ratio`` (its distance over theirs) and
    ``called_by_contact`` (and, when the gate called, ``contact``: which pair); a call
    made within ``min_interval`` by ``critical_factor`` records ``critical_std`` (the
    level its std passed), ``std_after_call`` and ``steps_since_call``; a step
    that called the reference also records how the
    model's forces and std compared with the new label (``force_error_max``,
    ``force_error_rms``, ``within_1std``, ``within_2std``): the gate's calibration on
    what it labelled.
    Every labelled frame is appended to ``labelled.extxyz`` (``info["step"]``: the MD
    step it was labelled at) and flushed to disk before the model is updated, so a crash
    loses no reference calculation; :meth:`resume` restarts from the last checkpoint of
    the model and the last saved MD state (every ``state_every`` steps), adds the frames
    labelled after the model's checkpoint and runs the remaining steps.
    """

    def __init__(self, model: SparseGPPotential, reference: Calculator, *,
                 threshold: float | None = None, relative_threshold: float = 1.5,
                 directory: str | os.PathLike = ".", n_inducing: int | str = "all",
                 max_inducing: int | dict[str, int] | None = DEFAULT_SPARSE_CAP,
                 max_calls: int | None = None, min_interval: int = 10,
                 critical_factor: float | None = None,
                 reoptimize_every: int = 1, checkpoint_every: int = 1,
                 force_tolerance: float = 0.1, max_energy_gap: float | None = 1.0,
                 contact_margin: float | None = 0.05, label_stress: bool = False,
                 verbose: int = 0, status_every: int = 100,
                 state_every: int = 100) -> None:
        if isinstance(reference, type) or not hasattr(reference, "get_potential_energy"):
            got = f"the class {reference.__name__} (pass an instance, {reference.__name__}())" \
                if isinstance(reference, type) else type(reference).__name__
            raise TypeError("OnTheFlyLearner: reference must be an ASE calculator (the "
                            f"method the learner labels with); got {got}")
        if model._noise_per_type() or (hasattr(model, "alpha_")
                                       and not model.posterior_.can_update):
            raise ValueError(_not_updatable(model))  # before any MD step or call is spent
        if threshold is not None and not threshold > 0:
            raise ValueError(f"OnTheFlyLearner: threshold must be > 0 eV/Å; got {threshold}")
        if not relative_threshold > 0:
            raise ValueError("OnTheFlyLearner: relative_threshold must be > 0; "
                             f"got {relative_threshold}")
        if max_calls is not None and max_calls < 0:
            raise ValueError(f"OnTheFlyLearner: max_calls must be >= 0; got {max_calls}")
        verbose = check_verbose(verbose, "OnTheFlyLearner")
        status_every = check_int(status_every, "status_every", "OnTheFlyLearner", 1)
        state_every = check_int(state_every, "state_every", "OnTheFlyLearner", 1)
        if not isinstance(label_stress, (bool, np.bool_)):
            raise TypeError(f"OnTheFlyLearner: label_stress must be True or False; got "
                            f"{label_stress!r}")
        if max_energy_gap is not None and not (
                isinstance(max_energy_gap, (int, float, np.integer, np.floating))
                and not isinstance(max_energy_gap, bool) and max_energy_gap > 0):
            raise ValueError("OnTheFlyLearner: max_energy_gap must be > 0 eV per atom or "
                             f"None; got {max_energy_gap!r}")
        self.max_energy_gap = None if max_energy_gap is None else float(max_energy_gap)
        if contact_margin is not None and not (
                isinstance(contact_margin, (int, float, np.integer, np.floating))
                and not isinstance(contact_margin, bool) and 0 <= contact_margin < 1):
            raise ValueError("OnTheFlyLearner: contact_margin must be in [0, 1) or None; got "
                             f"{contact_margin!r}")
        self.contact_margin = None if contact_margin is None else float(contact_margin)
        self.shortest_pairs = None
        self._unlabelled_contacts: list[int] = []  # steps of this run (see run)
        self.label_stress = bool(label_stress)
        self.model = model
        self.reference = reference
        self.threshold = threshold
        self.relative_threshold = relative_threshold
        self.directory = Path(directory)
        self.n_inducing = n_inducing
        # checked before any reference call is spent; JSON keys (checkpoints) are text
        max_inducing = check_max_inducing(max_inducing, "OnTheFlyLearner")
        self.max_inducing = {str(k): v for k, v in max_inducing.items()} \
            if isinstance(max_inducing, dict) else max_inducing
        self.max_calls = max_calls
        self.min_interval = check_int(min_interval, "min_interval", "OnTheFlyLearner", 1)
        self.critical_factor = _checked_critical_factor(critical_factor)
        self._critical = None  # eV/Å; None: min_interval always holds
        self._std_after_call = None  # eV/Å: the largest std at the first step after a call
        self.reoptimize_every = int(reoptimize_every)
        self.checkpoint_every = int(checkpoint_every)
        self.force_tolerance = float(force_tolerance)
        self.verbose = verbose
        self.status_every = int(status_every)
        self.state_every = int(state_every)
        self.n_reference_calls = 0
        self.stopped = None
        self.stopped_by = None
        self._announced = False  # the run's first reference call is announced
        self.largest_gated_std = None
        self.largest_gated_threshold = None
        self._last_call_step = None
        self._updates_since_checkpoint = 0
        self._state_step = None  # the step of the last MD state saved
        self._target_steps = None
        self._warned_agreement = False
        self._start_step = None  # the step the learner's first run started at
        self._start_wall = None
        self._initial_frames = None
        self._continuing = False
        self._auto_threshold = None
        self._stress_gate = None  # eV/Å³; None: no stress gate
        self._gate_cell = None  # the cell at the last step (the stress gate's reference)
        self._warned_threshold = False

    # -- public ----------------------------------------------------------------------
    @property
    def target_steps(self) -> int | None:
        """Return the MD step the run goes to (set by :meth:`run`, restored by :meth:`resume`)."""
        return self._target_steps

    @property
    def start_step(self) -> int | None:
        """Return the MD step the learner's first run started at.

        None before the first run, and after a resume from a checkpoint that did not
        record it.
        """
        return None if self._start_step in (None, _UNKNOWN_START) else self._start_step

    @property
    def current_threshold(self) -> float:
        """Return the threshold on the largest force std component, eV/Å.

        The given ``threshold``, or the automatic one (see Notes).
        """
        if self.threshold is not None:
            return float(self.threshold)
        if self._auto_threshold is None:
            raise ValueError("OnTheFlyLearner: the threshold is set when the run starts")
        return self._auto_threshold

    def run(self, dynamics: MolecularDynamics, steps: int) -> OnTheFlyLearner:
        """Run ``steps`` MD steps of ``dynamics`` (an ASE dynamics object) with learning.

        Parameters
        ----------
        dynamics : ase.md.md.MolecularDynamics
            Owns the atoms; their calculator is replaced by the model's.
        steps : int
            MD steps to run (the calculator is the model; reference calls as gated).

        Returns
        -------
        self : OnTheFlyLearner
            After the run, or after the reference failed twice on one structure: the run
            then stops with a ``RuntimeWarning``, its reason in ``stopped``.
        """
        if isinstance(dynamics, Atoms):
            raise TypeError("OnTheFlyLearner.run(dynamics, steps): the dynamics owns its "
                            "atoms; pass the dynamics object")
        self._unlabelled_contacts = []
        with contact_warnings_handled():  # this learner reports them (labels, or the below)
            self._run(dynamics, steps)
        if self._unlabelled_contacts:
            first = self._unlabelled_contacts[0]
            warnings.warn(
                f"OnTheFlyLearner: at {len(self._unlabelled_contacts)} step(s) (the first at "
                f"step "
                f"{first}) a pair of atoms was more than {100 * CONTACT_MARGIN:g} % closer "
                "than any labelled pair of its elements and the reference was not called "
                "there (the contact gate off or with a wider margin, or the call budget or "
                "min_interval held the call back): the model's forces there are "
                f"extrapolated. In the step log ({self.directory / LOG_FILE}) each step with a "
                "pair closer than any labelled one has its contact_ratio", ContactWarning,
                stacklevel=2)
        return self

    def _run(self, dynamics: MolecularDynamics, steps: int) -> None:
        """:meth:`run` without the contact handling around it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atoms = dynamics.atoms
        frames_file = self.directory / FRAMES_FILE
        if not self._continuing and frames_file.exists() and frames_file.stat().st_size:
            raise ValueError(f"OnTheFlyLearner: {frames_file} holds a previous run; resume it "
                             "with OnTheFlyLearner.resume or choose another directory")
        # every run goes to its own end: a second run(dynamics, steps) on the same learner
        # kept the first run's end in the checkpoint, and a resume said it was complete
        self._target_steps = int(dynamics.nsteps) + int(steps)
        if self._start_step is None:
            self._start_step = int(dynamics.nsteps)
        self._start_wall = time.perf_counter()
        self._first_step = int(dynamics.nsteps)
        self._announced = False
        self.largest_gated_std = self.largest_gated_threshold = None
        if not hasattr(self.model, "alpha_"):
            self._fit_first(atoms, int(dynamics.nsteps))
            self._last_call_step = int(dynamics.nsteps)  # labelled already: no call here
        elif self.model._noise_per_type() or not self.model.posterior_.can_update:
            raise ValueError(_not_updatable(self.model))
        else:
            # a sparse model fitted without incremental=True: refitted as one, once
            self.model._make_updatable("OnTheFlyLearner")
            if not self._continuing:
                for frame in self.model.posterior_.training_frames:  # the starting data,
                    self._append_frame(frame)  # for resume
        self._one_at_a_time()
        if self._initial_frames is None:
            self._initial_frames = self.model.posterior_.n_training_structures
        self._auto_threshold = self._loso_threshold()
        self._critical = self._critical_level()
        self._stress_gate = self._stress_threshold()
        self.shortest_pairs = self._shortest_pairs()
        self._continuing = True
        if self.verbose:
            print(f"on-the-fly MD: steps {self._first_step} to {self._target_steps}, model of "
                  f"{self.model.posterior_.n_training_structures} structures, "
                  f"{self._threshold_text()}; log in {self.directory / LOG_FILE}",
                  flush=True)
        if not _gating_calculator(atoms.calc, self.model):
            atoms.calc = KernelPotCalculator(self.model, lazy=False)
        if self._last_call_step is None and self.threshold is None and self._is_young() \
                and self._largest_std(atoms) <= YOUNG_FLOOR:
            # a fitted start on a structure the model knows (the frame it was fitted on):
            # spaced as if labelled here, so that its first call is not a near-duplicate
            self._last_call_step = int(dynamics.nsteps)
        self._dynamics = dynamics
        self._checkpoint()
        dynamics.attach(self._after_step, interval=1)
        try:
            dynamics.run(int(steps))
        except ReferenceFailed as err:
            self.stopped, self.stopped_by = str(err), err
            logger.error("on-the-fly run stopped: %s", err)
            self._checkpoint()
            warnings.warn(f"OnTheFlyLearner: the run stopped at step {dynamics.nsteps} of "
                          f"{self._target_steps}: {err}. The checkpoint in {self.directory} "
                          "holds every frame labelled so far; OnTheFlyLearner.resume goes on "
                          "from it" + ("; if the reference is right and the structure new, resume "
                                       "with a larger max_energy_gap (or None)"
                                       if isinstance(err, InconsistentReference) else ""),
                          RuntimeWarning, stacklevel=3)
        else:  # the end state too: resume then knows the run is done
            self._checkpoint()
        finally:
            dynamics.observers = [o for o in dynamics.observers
                                  if getattr(o[0], "__self__", None) is not self]

    @classmethod
    def resume(cls, directory: str | os.PathLike, reference: Calculator,
               dynamics: Callable[[Atoms], MolecularDynamics] | None = None,
               run: bool = True,
               max_energy_gap: float | None | str = "saved",
               critical_factor: float | None | str = "saved",
               steps: int | None = None) -> OnTheFlyLearner:
        """Restart an interrupted run from its directory and run the remaining steps.

        Parameters
        ----------
        directory : str or path-like
            The run's directory (its checkpoint, labelled frames and settings); the
            resumed run writes there, also when it was copied or moved since.
        reference : ase.calculators.calculator.Calculator
            The reference method, as given to the interrupted run.
        dynamics : callable, optional
            ``dynamics(atoms)`` returning the ASE dynamics to continue with; by default
            VelocityVerlet and Langevin runs are rebuilt from the saved settings.
        run : bool, default=True
            Run the remaining steps before returning.
        max_energy_gap : float, None or "saved", default="saved"
            The interrupted run's value, or one that replaces it (eV per atom; None turns
            the check off): a run stopped by :class:`InconsistentReference` on a right
            reference and a new structure goes on with a larger one.
        critical_factor : float, None or "saved", default="saved"
            The interrupted run's value, or one that replaces it (None: every call waits
            ``min_interval`` steps).
        steps : int, optional
            The run's length in MD steps, counted from the step its first ``run`` started
            at (as ``run(dynamics, steps)`` counted them). Default: the interrupted run's.
            A larger value extends the run, also one that had finished; one that ends
            before the step already reached raises ``ValueError``.

        Returns
        -------
        OnTheFlyLearner
        """
        from kernelpot.model_files import load

        directory = Path(directory)
        settings = json.loads((directory / SETTINGS_FILE).read_text())
        if steps is not None:  # checked before the model is rebuilt
            settings = dict(settings, target_steps=_extended_target(
                settings, steps, int(np.load(directory / STATE_FILE)["step"]), directory))
        model = load(directory / MODEL_FILE)
        frames = read_complete_frames(directory / FRAMES_FILE, repair=True)
        n_trained = model.posterior_.n_training_structures
        if len(frames) < n_trained:
            raise ValueError(f"resume: {directory / FRAMES_FILE} holds {len(frames)} frames; "
                             f"the checkpoint was trained on {n_trained}")
        model.restore_training(frames[:n_trained])
        if len(frames) > n_trained:  # labelled after the last checkpoint
            # a checkpoint from before max_inducing ran uncapped
            model.update(frames[n_trained:], n_inducing=settings["n_inducing"],
                         max_inducing=settings["init"].get("max_inducing"))
            logger.info("resume: %d frame(s) labelled after the model's last checkpoint "
                        "(%d structures) added to it", len(frames) - n_trained, n_trained)
        md = np.load(directory / STATE_FILE, allow_pickle=False)
        init = {k: v for k, v in settings["init"].items()
                if k != "calibration_window"}  # checkpoints before the LOSO gate had one
        init.setdefault("max_inducing", None)  # checkpoints before it ran uncapped
        init.setdefault("contact_margin", None)  # checkpoints before it ran without
        init.setdefault("critical_factor", None)  # checkpoints before it held min_interval
        if not (isinstance(max_energy_gap, str) and max_energy_gap == "saved"):
            init["max_energy_gap"] = max_energy_gap  # checked by the constructor
        if not (isinstance(critical_factor, str) and critical_factor == "saved"):
            init["critical_factor"] = critical_factor  # checked by the constructor
        # the directory resumed from, not the one saved (a relative path, or a run
        # copied or moved since: resuming a copy wrote into the original run)
        init["directory"] = str(directory)
        self = cls(model, reference, **init)
        called = frames[int(settings["initial_frames"]):]
        return self._continue_from(settings, md, len(frames), dynamics, run,
                                   tuple(f.info.get("step") for f in called[-1:]))

    def _continue_from(self, settings: dict, md, n_frames: int, dynamics, run: bool,
                       last_steps: tuple = ()):
        """Restore this learner's run state from a checkpoint, then run what remains."""
        self._initial_frames = int(settings["initial_frames"])
        self._auto_threshold = settings["auto_threshold"]
        self._continuing = True
        self.n_reference_calls = n_frames - self._initial_frames
        self._target_steps = int(settings["target_steps"])
        start = settings.get("start_step")  # None in checkpoints from before it was saved
        self._start_step = _UNKNOWN_START if start is None else int(start)
        # min_interval counts from the last call (a frame labelled after the saved state,
        # in the instant before it was saved, counts too); None in older checkpoints
        steps = [settings.get("last_call_step"), *last_steps]
        steps = [int(k) for k in steps if k is not None]
        self._last_call_step = max(steps) if steps else None
        step = int(md["step"])
        _drop_log_after(self.directory / LOG_FILE, first_redone_step(step) - 1)
        atoms = Atoms(numbers=md["numbers"], positions=md["positions"], cell=md["cell"],
                      pbc=md["pbc"], momenta=md["momenta"])
        atoms.calc = KernelPotCalculator(self.model, lazy=False)
        dyn = dynamics(atoms) if dynamics is not None else _rebuild_dynamics(
            settings["dynamics"], atoms)
        dyn.nsteps = step
        _restore_rng(dyn, md)
        logger.info("resumed at step %d with %d labelled frames", step, n_frames)
        if run and step < self._target_steps:
            self.run(dyn, self._target_steps - step)
        else:
            if run:
                warnings.warn(f"OnTheFlyLearner.resume: the run in {self.directory} already "
                              f"reached its {self._target_steps} steps: nothing was run (to "
                              "go further, resume with a larger steps=, or call run(dynamics, "
                              "steps) on the returned learner)",
                              UserWarning, stacklevel=3)
            self._dynamics = dyn
        return self

    # -- internals ---------------------------------------------------------------------
    def _one_at_a_time(self) -> None:
        """Leave the labelled structures out one at a time (``loso_blocks=1``).

        The automatic threshold (``relative_threshold`` times the largest LOSO std) was
        measured so; frames labelled a few steps apart would otherwise be left out in
        blocks (:mod:`kernelpot.loso_blocks`), with larger stds and fewer calls. A model
        fitted with blocks has its LOSO map refitted here.
        """
        model = self.model
        if getattr(model, "loso_blocks", 1) == 1:
            return
        model.set_params(loso_blocks=1)
        if model.posterior_.loso_blocks[1] is not None:
            message = ("the std map refitted on the labelled structures left out one at a "
                       "time (the fit left out blocks of consecutive ones; the learner's "
                       f"automatic threshold, {self.relative_threshold:g} × the largest std "
                       "of a structure left out, was tuned one at a time): the stds may "
                       "differ a little from the fitted model's")
            logger.info("OnTheFlyLearner: %s", message)
            if self.verbose:
                print(message, flush=True)
            model._refit_loso_map("OnTheFlyLearner")

    def _fit_first(self, atoms, step: int):
        labelled = self._label(atoms, step)
        self._append_frame(labelled)
        # one structure says little about the hyperparameters (a perfect lattice has no
        # forces at all): keep the given ones until the first re-optimisation
        optimize = self.model.optimize
        model = clone(self.model).set_params(incremental=True, optimize=False)
        with warnings.catch_warnings():  # one structure is where on-the-fly runs start
            warnings.filterwarnings("ignore", message=".*too few", category=UserWarning)
            model.fit([labelled])
        self.model = model.set_params(optimize=optimize)

    def _label(self, atoms, step: int) -> Atoms:
        """Return ``atoms`` labelled by the reference, ``info["step"]`` the MD step.

        The run's first call is announced before it starts (``verbose``): a slow or
        failing reference is then not a silent wait.
        """
        if self.verbose and not self._announced:
            print(f"step {step}: calling the reference ({type(self.reference).__name__}) on "
                  f"{len(atoms)} atoms, the first call of this run (from step "
                  f"{self._first_step})", flush=True)
            self._announced = True
        for attempt in (1, 2):
            work = atoms.copy()
            work.calc = self.reference
            try:
                energy = work.get_potential_energy()
                forces = work.get_forces()
                stress = work.get_stress() if self.label_stress and np.all(work.pbc) \
                    else None
                if not (np.isfinite(energy) and np.all(np.isfinite(forces))
                        and (stress is None or np.all(np.isfinite(stress)))):
                    raise ValueError("the reference returned a non-finite energy, forces or "
                                     "stress")
            except Exception as err:  # any failure of the reference method
                logger.warning("reference call failed (attempt %d): %s", attempt, err)
                if attempt == 2:
                    raise ReferenceFailed(f"the reference calculator failed twice: {err}") \
                        from err
                continue
            labelled = atoms.copy()
            labelled.info["step"] = int(step)  # not a step the atoms carried in
            labels = {"energy": energy, "forces": forces}
            if stress is not None:
                labels["stress"] = stress
            labelled.calc = SinglePointCalculator(labelled, **labels)
            return labelled
        raise AssertionError("unreachable")

    def _check_energy_gap(self, atoms: Atoms, labelled: Atoms, step: int) -> None:
        """Stop the run if the new label's energy is far from any the model could mean.

        Raises :class:`InconsistentReference` where the gap per atom passes
        ``max_energy_gap`` and :data:`ENERGY_GAP_STDS` total energy stds (a model that
        says it does not know is not stopped).
        """
        if self.max_energy_gap is None or not self.model.posterior_.n_energy_observations:
            return
        results = atoms.calc.results
        predicted, reference = float(results["energy"]), float(labelled.get_potential_energy())
        std = float(np.hypot(results.get("energy_std", 0.0), results.get("energy_noise", 0.0)))
        gap = abs(reference - predicted)
        if gap / len(atoms) <= self.max_energy_gap or gap <= ENERGY_GAP_STDS * std:
            return
        contact = close_contact(atoms, None, _CLOSE_CONTACT)
        raise InconsistentReference(
            f"at step {step} the reference's energy, {reference:.6g} eV, differs from the "
            f"model's, {predicted:.6g} ± {std:.2g} eV, by {gap / len(atoms):.3g} eV per atom "
            f"(max_energy_gap={self.max_energy_gap:g}): the reference is not the method "
            f"the model was trained on (another code, functional or setting; "
            f"{type(self.reference).__name__} here), or the structure is unlike any "
            f"trained on{f' ({contact})' if contact else ''}. The frame was not learned")

    def _check_agreement(self, rms_z: float, step: int) -> None:
        """Warn (once a run) where a label's force errors are far past the calibrated stds.

        On new structures a LOSO-calibrated model's force errors are within about twice
        its stds (RMS z-score); :data:`AGREEMENT_RMS_Z` times them says the labels the
        model was trained on and the reference's disagree (a new user's Ni frames
        labelled with copper's EMT parameters: 18 % of components inside 1 std at the
        first call, an energy gap of 0.02 eV/atom that ``max_energy_gap`` cannot see).
        Not checked for a model too young for a LOSO map, one that reads its forces as
        noise, or a structure with a pair closer than any labelled one (its atoms err
        past their stds on the repulsive wall whatever the labels); the run goes on.
        """
        if (self._warned_agreement or not np.isfinite(rms_z) or rms_z <= AGREEMENT_RMS_Z
                or self._is_young() or self.model.interval_kind_ != "loso"
                or self._forces_unexplained()):
            return
        self._warned_agreement = True
        message = (f"OnTheFlyLearner: at step {step} the model's force errors against the "
                   f"reference were {rms_z:.3g} times its calibrated stds (RMS z-score; "
                   "about 1 for right stds, within about 2 on new structures). The labels "
                   "it was trained on and the reference's may disagree: the same method, code "
                   "and settings? (max_energy_gap sees only energy gaps over "
                   f"{self.max_energy_gap} eV/atom.) The run goes on and learns the "
                   "reference's labels")
        warnings.warn(message, UserWarning, stacklevel=4)

    def _append_frame(self, labelled: Atoms) -> None:
        buffer = _io.StringIO()
        write(buffer, labelled, format="extxyz")
        with open(self.directory / FRAMES_FILE, "a") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())

    def gated_std(self, results: dict) -> np.ndarray:
        """Return the calibrated epistemic force std the learner gates on.

        Parameters
        ----------
        results : dict
            ``KernelPotCalculator.results`` of the current structure.

        Returns
        -------
        ndarray of shape (n_atoms, 3)
            The calculator's ``forces_std``: the model's calibrated epistemic std of
            every force component (what ``predict_forces(..., std_type="epistemic")``
            gives), eV/Å.
        """
        return np.asarray(results["forces_std"])

    def _loso_threshold(self) -> float:
        """Return the automatic threshold (see the class Notes).

        ``relative_threshold`` times the largest calibrated epistemic force std any
        training structure had when it was left out.
        """
        model = self.model
        if self._forces_unexplained():
            # the likelihood read much of the labelled forces as noise: the epistemic std says
            # nothing about the error; label every min_interval until the model explains them
            logger.info("OnTheFlyLearner: σ_F = %.3g eV/Å is over %.0f %% of the labelled "
                        "forces' RMS: the reference is called every min_interval steps",
                        model.force_noise_, 100 * UNEXPLAINED_NOISE_FRACTION)
            return 0.0
        loso = getattr(model.posterior_, "loso", None)
        if loso is None or model.interval_kind_ != "loso":
            if self._is_young():
                # too young for a LOSO map: label every structure it does not know
                # already (raw std above YOUNG_FLOOR), at most every min_interval
                return YOUNG_FLOOR
            if not self._warned_threshold:
                warnings.warn("OnTheFlyLearner: the model has no LOSO calibration "
                              "(calibration=None, or a model file from before it existed): "
                              "the automatic threshold falls back to relative_threshold × "
                              "σ_F, which noise-free labels drive towards 0; refit with "
                              "calibration='loso' or give threshold=", UserWarning,
                              stacklevel=3)
                self._warned_threshold = True
            return float(self.relative_threshold * model.force_noise_)
        forces = loso.is_force
        atoms = loso.force_atoms(model.posterior_.training_numbers())
        std = np.sqrt(model.epistemic_variance("forces", loso.posterior[forces],
                                               loso.projection[forces],
                                               None if atoms is None else atoms[0]))
        largest = np.zeros(int(loso.structure.max()) + 1)
        np.maximum.at(largest, loso.structure[forces], std)
        return float(min(self.relative_threshold * largest.max(), self._tolerance()))

    def _threshold_text(self) -> str:
        """Return what the run's first line says of the threshold (forces in meV/Å)."""
        value = f"{significant(1e3 * self.current_threshold)} meV/Å"
        if self.threshold is not None:
            return f"given threshold {value}" + self._stress_gate_text()
        if self.current_threshold == YOUNG_FLOOR and self._is_young():
            return (f"automatic threshold {value} until the model has a LOSO map (three "
                    "structures): every structure it does not know is labelled, "
                    "min_interval steps apart")
        return f"automatic threshold {value}{self._cap_text()}" + self._stress_gate_text()

    def _cap_text(self) -> str:
        """Say when ``force_tolerance`` caps the automatic threshold ("" otherwise).

        The cap follows the labelled forces' RMS, so it rises as hotter structures are
        labelled: a new user's 900 K run read its threshold going from 104 to 123 meV/Å
        without knowing why.
        """
        rms = self._label_rms()
        if rms is None or self.current_threshold < self.force_tolerance * rms * (1 - 1e-12):
            return ""
        return (f" (the cap force_tolerance × the labelled forces' RMS, "
                f"{self.force_tolerance:g} × {significant(1e3 * rms)} meV/Å: it follows the "
                "labels)")

    def _stress_gate_text(self) -> str:
        """Return what the run's first line says of the stress gate ("" without one asked)."""
        if not self.label_stress:
            return ""
        if self._stress_gate is not None:
            return f"; stress std threshold {GPA * self._stress_gate:.3g} GPa"
        # said, not silently off (a new user's NPT run on cells without stress labels)
        return ("; no stress std threshold yet (the labelled cells' stresses, left out, "
                "set it: the model has none, or is too young for a LOSO map); the "
                "reference's stresses are labelled from the first call")

    def _critical_std(self, max_std: float, step: int, previous_call: int | None
                      ) -> float | None:
        """Return the std past which this step calls within ``min_interval`` (None: none).

        ``critical_factor`` times the larger of the threshold and the largest std of the
        first step after the last call, read at that step (a call there is never
        critical): a model whose std stays far past a given threshold even next to a
        structure it just learned would otherwise call at every step; it calls once its
        std has grown that much again.
        """
        if self._critical is None or previous_call is None or step <= previous_call:
            return None
        if self._std_after_call is None:
            self._std_after_call = float(max_std)
            return None
        return max(self._critical, self.critical_factor * self._std_after_call)

    def _critical_level(self) -> float | None:
        """Return the std past which a call need not wait ``min_interval`` (None: it waits).

        ``critical_factor`` times a given threshold, or times the automatic one once it
        comes from a LOSO map; a young model's threshold (no map yet) or one whose forces
        read as noise gates on something else than its std: those calls wait.
        """
        if self.critical_factor is None:
            return None
        if self.threshold is not None:
            return self.critical_factor * float(self.threshold)
        loso = getattr(self.model.posterior_, "loso", None)
        if loso is None or self.model.interval_kind_ != "loso" or self._forces_unexplained():
            return None
        return self.critical_factor * self._auto_threshold

    def _shortest_pairs(self) -> ShortestPairs | None:
        """Return the shortest pair distances of the labelled structures (the contact gate).

        The model's ``shortest_pairs_``, which :meth:`SparseGPPotential.update` lowers
        (None for a descriptor without a cutoff: no contact gate then).
        """
        shortest = getattr(self.model, "shortest_pairs_", None)
        if shortest is None and self.contact_margin is not None:
            logger.info("OnTheFlyLearner: the model keeps no shortest pair distances (a "
                        "descriptor without r_cut): no contact gate")
        return shortest

    def _stress_threshold(self) -> float | None:
        """Return the automatic threshold of the stress std, eV/Å³ (None: no stress gate).

        With ``label_stress`` and a model that trained on stresses and holds their
        leave-one-structure-out terms: ``relative_threshold`` (or, with a given force
        ``threshold``, 1) times the largest calibrated epistemic stress std any labelled
        cell had when it was left out.
        """
        loso = getattr(self.model.posterior_, "loso", None)
        if not self.label_stress or loso is None or loso.is_stress is None \
                or self.model.interval_kind_ != "loso":
            return None
        rows = loso.is_stress
        std = np.sqrt(self.model.epistemic_variance("stress", loso.posterior[rows],
                                                    loso.projection[rows]))
        factor = self.relative_threshold if self.threshold is None else 1.0
        return float(factor * std.max()) if std.size and std.max() > 0 else None

    def _is_young(self) -> bool:
        """Return whether the model is too young for a LOSO map (fewer than three structures)."""
        model = self.model
        return (model.calibration == "loso"
                and model.posterior_.keeps_training_data
                and model.posterior_.n_training_structures
                < estimator_module._LOSO_MIN_STRUCTURES)

    def _forces_unexplained(self) -> bool:
        """Return whether the model reads much of its fitted labelled forces as noise.

        :func:`~kernelpot.hyperparameters.forces_unexplained` of the fitted ``σ_F`` and
        the labelled force components' RMS; False when ``σ_F`` is given, not fitted.
        """
        if "force_noise" not in fitted_names(self.model.optimize, "OnTheFlyLearner"):
            return False  # a given σ_F is the user's statement about the labels
        rms = self._label_rms()
        return rms is not None and forces_unexplained(self.model.force_noise_, rms)

    def _largest_std(self, atoms: Atoms) -> float:
        """Return the largest gated std of the current structure (the learner's calculator)."""
        atoms.get_forces()
        return float(np.max(self.gated_std(atoms.calc.results)))

    def _largest_stress_std(self, atoms: Atoms) -> float | None:
        """Return the largest calibrated stress std where the cell moved since the last step.

        None where it did not (fixed-cell dynamics: the force std gates it) or the cell is
        not periodic along all three axes. The stress of the current structure is what a
        barostat asks for at its next step, so in NPT this costs no extra prediction.
        """
        cell = atoms.cell.array.copy()
        moved = self._gate_cell is not None and not np.allclose(cell, self._gate_cell,
                                                                 rtol=0.0, atol=1e-12)
        self._gate_cell = cell
        if not moved or not np.all(atoms.pbc):
            return None
        atoms.get_stress()
        std = atoms.calc.results.get("stress_std")
        return None if std is None else float(np.max(std))

    def _tolerance(self) -> float:
        """Return ``force_tolerance`` times the RMS labelled force component (inf: none)."""
        rms = self._label_rms()
        return float(self.force_tolerance * rms) if rms is not None else np.inf

    def _label_rms(self) -> float | None:
        """Return the RMS of the labelled force components, eV/Å (None: no force labels)."""
        labels = self.model.posterior_.force_labels()
        return float(np.sqrt(np.mean(labels**2))) if labels.size else None

    def _after_step(self):
        dyn = self._dynamics
        atoms = dyn.atoms
        max_std = self._largest_std(atoms)
        threshold = self.current_threshold
        step = int(dyn.nsteps)
        if self.largest_gated_std is None or max_std > self.largest_gated_std[0]:
            self.largest_gated_std = (float(max_std), step)
            self.largest_gated_threshold = float(threshold)
        previous_call = self._last_call_step
        spaced = previous_call is None or step - previous_call >= self.min_interval
        budget = self.max_calls is None or self.n_reference_calls < self.max_calls
        # the stress std, when the dynamics asked for the stress (NPT): a change of volume
        # or shape can leave the forces of a symmetric cell at zero, and their std too
        stress_gate = self._stress_gate
        max_stress_std = self._largest_stress_std(atoms) if stress_gate is not None else None
        by_stress = max_stress_std is not None and max_stress_std > stress_gate
        contact = self.shortest_pairs.closest(atoms) if self.shortest_pairs is not None \
            else None
        by_contact = contact is not None and self.contact_margin is not None \
            and contact.ratio < 1.0 - self.contact_margin
        # far past the threshold the reference is called within min_interval too
        critical_std = self._critical_std(max_std, step, previous_call)
        std_after_call = self._std_after_call  # before a call resets it
        critical = critical_std is not None and max_std > critical_std
        called = bool((max_std > threshold or by_stress or by_contact)
                      and (spaced or critical) and budget)
        within_interval = called and not spaced
        call_start = time.perf_counter()
        # a pair closer than any labelled one errs past its std by itself (the repulsive
        # wall): not a sign of labels that disagree
        seen = self._call_reference(atoms, step, check_agreement=contact is None) \
            if called else {}
        record = {
            "step": step, "time_fs": float(dyn.get_time() / units.fs),
            "temperature_K": float(atoms.get_temperature()),
            "max_force_std": max_std, "threshold": threshold, "reference_called": called,
            "n_reference_calls": self.n_reference_calls,
            "n_structures": self.model.posterior_.n_training_structures,
            "n_inducing": int(sum(self.model.n_inducing_.values())),
            "method": self.model.method_,  # exact: n_inducing counts training environments
            "calibration": self.model.interval_kind_,
            "wall_s": time.perf_counter() - self._start_wall,
            **seen,
        }
        if within_interval:  # called by a std past critical_factor × the threshold
            record.update(critical_std=critical_std, std_after_call=std_after_call,
                          steps_since_call=step - previous_call)
        if contact is not None:  # a pair closer than any labelled one of its elements
            record.update(contact_ratio=contact.ratio,
                          called_by_contact=bool(called and by_contact))
            if called and by_contact:
                record["contact"] = contact.describe()
            elif not called and contact.ratio < 1.0 - CONTACT_MARGIN:
                self._unlabelled_contacts.append(step)
        if max_stress_std is not None:  # eV/Å³
            record.update(max_stress_std=max_stress_std, stress_threshold=stress_gate,
                          called_by_stress=bool(called and by_stress))
        with open(self.directory / LOG_FILE, "a") as handle:
            handle.write(json.dumps(_finite_or_null(record), allow_nan=False) + "\n")
        # after the record, which a resume then keeps; the state after every call too, so
        # that a resume never steps back behind a labelled frame
        if called and self._updates_since_checkpoint >= self.checkpoint_every:
            self._checkpoint()
        elif called or step - self._state_step >= self.state_every:
            self._save_state()
        if self.verbose and called:
            print(_call_line(record, time.perf_counter() - call_start), flush=True)
        elif self.verbose and step % self.status_every == 0 and step > self._first_step:
            # at multiples of status_every, also when a resumed run starts between them
            print(_status_line(record, self._first_step), flush=True)

    def _call_reference(self, atoms: Atoms, step: int, check_agreement: bool = True) -> dict:
        """Label ``atoms`` with the reference, learn it; return what the step log records.

        The reference's time and how the model's forces and std compared with the label
        (before the update), after which the gate's thresholds follow the updated model.
        """
        call_start = time.perf_counter()
        labelled = self._label(atoms, step)
        seen = {"reference_s": time.perf_counter() - call_start}
        self._check_energy_gap(atoms, labelled, step)
        seen.update(_error_seen(atoms.calc.results, self.gated_std(atoms.calc.results),
                                labelled.get_forces(), float(self.model.force_noise_)))
        if check_agreement:
            self._check_agreement(seen["force_rms_z"], step)
        self._append_frame(labelled)
        self.n_reference_calls += 1
        self._last_call_step = step
        self._std_after_call = None  # read again at the next step
        reoptimize = (self.reoptimize_every > 0
                      and self.n_reference_calls % self.reoptimize_every == 0)
        self.model.update([labelled], n_inducing=self.n_inducing, optimize=reoptimize,
                          max_inducing=self.max_inducing)
        self._auto_threshold = self._loso_threshold()
        self._critical = self._critical_level()
        self._stress_gate = self._stress_threshold()
        self.shortest_pairs = self._shortest_pairs()
        atoms.calc.reset()  # the next force evaluation uses the updated model
        self._updates_since_checkpoint += 1
        return seen

    def _write_settings(self):
        settings = {
            "auto_threshold": self._auto_threshold,
            "init": {"threshold": self.threshold, "relative_threshold": self.relative_threshold,
                     "directory": str(self.directory), "n_inducing": self.n_inducing,
                     "max_inducing": self.max_inducing, "max_calls": self.max_calls,
                     "min_interval": self.min_interval,
                     "critical_factor": self.critical_factor,
                     "reoptimize_every": self.reoptimize_every,
                     "checkpoint_every": self.checkpoint_every,
                     "force_tolerance": self.force_tolerance, "verbose": self.verbose,
                     "status_every": self.status_every, "label_stress": self.label_stress,
                     "state_every": self.state_every, "max_energy_gap": self.max_energy_gap,
                     "contact_margin": self.contact_margin},
            "n_inducing": self.n_inducing,
            "initial_frames": self._initial_frames,
            "last_call_step": self._last_call_step,
            "target_steps": self._target_steps,
            "start_step": None if self._start_step == _UNKNOWN_START else self._start_step,
            "dynamics": _dynamics_spec(self._dynamics),
        }
        text = json.dumps(settings, indent=1)
        atomic_write(self.directory / SETTINGS_FILE, lambda handle: handle.write(text),
                     binary=False)

    def _checkpoint(self):
        self.model.save(self.directory / MODEL_FILE, training_state=True)
        self._save_state()
        self._updates_since_checkpoint = 0

    def _save_state(self):
        """Write the MD state and the run's settings (not the model): cheap, any step.

        The state of the dynamics' random generator (Langevin's, a NumPy ``Generator``)
        goes with it, as JSON bytes: a resumed run draws the noise the uninterrupted
        one would have.
        """
        atoms = self._dynamics.atoms
        rng = getattr(self._dynamics, "rng", None)
        extra = {}
        if isinstance(rng, np.random.Generator):
            extra["rng_state"] = np.frombuffer(
                json.dumps(rng.bit_generator.state).encode("utf-8"), dtype=np.uint8)
        atomic_write(self.directory / STATE_FILE, lambda handle: np.savez(
            handle, numbers=atoms.numbers, positions=atoms.positions,
            momenta=atoms.get_momenta(), cell=atoms.cell.array, pbc=atoms.pbc,
            step=int(self._dynamics.nsteps), **extra))
        self._write_settings()
        self._state_step = int(self._dynamics.nsteps)


def first_redone_step(step: int) -> int:
    """Return the first step a run resumed from a checkpoint at ``step`` records again.

    ASE's dynamics observe (log, write, call attached functions on) their starting state
    only when it is step 0: a run resumed from a checkpoint at step 0 records step 0
    again, one resumed later starts recording at the step after the checkpoint.
    """
    return step if step == 0 else step + 1


def _checked_critical_factor(value) -> float | None:
    """Return ``critical_factor`` as a float (None stays None), or say why it cannot be."""
    if value is not None and not (isinstance(value, (int, float, np.integer, np.floating))
                                  and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"OnTheFlyLearner: critical_factor must be >= 1 or None; got "
                         f"{value!r}")
    return None if value is None else float(value)


#: ``start_step`` of a learner resumed from a checkpoint that did not record it
_UNKNOWN_START = -1


def _extended_target(settings: dict, steps, step: int, directory: Path) -> int:
    """Return the step a resumed run goes to when ``resume(steps=...)`` gives its length.

    ``steps`` counts from the run's first step, as the first ``run(dynamics, steps)``
    did, so that the interrupted run's own command gives its own end.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"resume: steps must be a positive integer (the run's length in MD "
                         f"steps); got {steps!r}")
    start = settings.get("start_step")
    if start is None:
        raise ValueError(f"resume: the checkpoint in {directory} is from before runs recorded "
                         "their first step, so steps cannot be counted from it: resume with "
                         "run=False and call run(dynamics, more_steps) on the learner")
    target = int(start) + int(steps)
    if target < step:
        raise ValueError(f"resume: the run in {directory} started at step {int(start)} and has "
                         f"reached step {step}; steps={int(steps)} would end it at step "
                         f"{target}, before that (give at least {step - int(start)})")
    return target


def _drop_log_after(path: Path, step: int) -> None:
    """Drop the step log's records after ``step`` (the checkpoint): resumed, they run again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] > step:
                continue
        except (ValueError, KeyError, TypeError):  # a line cut short by the interruption
            continue
        kept.append(line + "\n")
    atomic_write(path, lambda handle: handle.writelines(kept), binary=False)


def read_complete_frames(path: str | os.PathLike, repair: bool = False) -> list:
    """Return the complete frames of an extxyz file written frame by frame.

    A last frame cut short by an interruption is left out.

    Parameters
    ----------
    path : str or path-like
        The file (``labelled.extxyz``, or ``kernelpot md``'s trajectory); a missing or
        empty file holds no frames.
    repair : bool, default=False
        Also cut the file back to its complete frames, so that frames appended later do
        not land behind the cut-short one (which would make the file unreadable).

    Returns
    -------
    list of ase.Atoms
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    try:
        return read(_io.StringIO(text), ":", format="extxyz") if text.strip() else []
    except Exception:  # a truncated last frame: keep the complete ones
        pass
    lines = text.splitlines(keepends=True)
    frames, start = [], 0
    while start < len(lines):
        try:
            n = int(lines[start].strip())
            if len(lines) < start + n + 2:
                break
            frames.append(read(_io.StringIO("".join(lines[start:start + n + 2])),
                               format="extxyz"))
        except Exception:  # the cut-short frame
            break
        start += n + 2
    if repair:
        kept = "".join(lines[:start])
        atomic_write(path, lambda handle: handle.write(kept), binary=False)
        logger.warning("%s: a last frame cut short by an interruption was dropped", path)
    return frames


def _dynamics_spec(dyn) -> dict:
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    if isinstance(dyn, Langevin):
        return {"class": "Langevin", "timestep": float(dyn.dt),
                "temperature_K": float(dyn.temp / units.kB), "friction": float(dyn.fr)}
    if isinstance(dyn, VelocityVerlet):
        return {"class": "VelocityVerlet", "timestep": float(dyn.dt)}
    return {"class": type(dyn).__name__}


def _restore_rng(dyn, md) -> None:
    """Give the dynamics' random generator the saved state (same kind of generator)."""
    rng = getattr(dyn, "rng", None)
    if "rng_state" not in md or not isinstance(rng, np.random.Generator):
        return
    state = json.loads(np.asarray(md["rng_state"]).tobytes().decode("utf-8"))
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        logger.warning("resume: the saved random state is of a %s, the dynamics draw from a "
                       "%s: new noise from here", state.get("bit_generator"),
                       type(rng.bit_generator).__name__)
        return
    rng.bit_generator.state = state


def _rebuild_dynamics(spec: dict, atoms):
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    if spec["class"] == "Langevin":  # its generator's state is restored by _restore_rng
        return Langevin(atoms, spec["timestep"], temperature_K=spec["temperature_K"],
                        friction=spec["friction"], fixcm=False, rng=np.random.default_rng())
    if spec["class"] == "VelocityVerlet":
        return VelocityVerlet(atoms, spec["timestep"])
    raise ValueError(f"resume: cannot rebuild a {spec['class']} dynamics; pass dynamics="
                     "a callable(atoms) returning it")


def _not_updatable(model) -> str:
    """Return the refusal of a fitted model that keeps no training data, with what to do."""
    if model._noise_per_type():
        return f"OnTheFlyLearner: {estimator_module.CONFIG_TYPE_NOT_UPDATABLE}"
    if model.incremental:  # loaded from a file saved without its training state
        return ("OnTheFlyLearner: the model was fitted with incremental=True but holds no "
                "training state (a model file saved without training_state=True): save it "
                "with save(path, training_state=True), call restore_training(frames) with "
                "its labelled frames, or continue a run with OnTheFlyLearner.resume")
    fix = ("give it its structures back with restore_training(frames)"
           if model.method_ == "exact" else
           "refit it on a list of structures (or with incremental=True, and save it with "
           "training_state=True)")
    return (f"OnTheFlyLearner: the {model.method_} model keeps no training data to update "
            "(it was loaded from a file, or its fit kept no structures: an iterator, a Dask "
            f"cluster or more than {estimator_module.KEPT_ATOMS} atoms): {fix}, or hand the "
            "learner an unfitted model (it fits the first frame itself)")


def _gating_calculator(calc, model) -> bool:
    """Return whether ``calc`` gives ``model``'s force stds with the mean at every step."""
    return (isinstance(calc, KernelPotCalculator) and calc.model is model
            and calc.parameters.get("uncertainty") is True
            and not calc.parameters.get("lazy", True))
