"""``kernelpot md``: Langevin, NVE or NPT dynamics with a model, optionally on the fly."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from ase import units

from kernelpot import __version__
from kernelpot._numbers import significant
from kernelpot.active import (
    FRAMES_FILE,
    LOG_FILE,
    MODEL_FILE,
    SETTINGS_FILE,
    STATE_FILE,
    InconsistentReference,
    _dynamics_spec,
    first_redone_step,
    read_complete_frames,
)
from kernelpot.cli._common import (
    CLIError,
    _check_output,
    _load_model,
    _read_frames,
    _reference_calculator,
    structures_fitted_on,
)
from kernelpot.contacts import CONTACT_MARGIN

#: Plain MD warns where an atom's epistemic force std passes this many times the largest
#: of the structures the std map was fitted on (the on-the-fly gate's default factor)
BEYOND_TRAINING = 1.5


class _StdsWhenShown:
    """The model's stds of the current structure, computed at the steps that show them.

    Plain MD (no on-the-fly learning) uses the stds only in the frames it records (every
    --interval steps) and its status lines; the dynamics' own calculator then predicts
    energies and forces alone, a few times cheaper per step than with every force std.
    At those steps it also watches for structures beyond the training data: an atom's
    epistemic force std (root mean square of its three components) over
    :data:`BEYOND_TRAINING` times :meth:`SparseGPPotential.largest_fitted_std`. The first
    such step is reported on stderr at once, the count in the summary.
    """

    def __init__(self, model, dyn):
        self.model, self.dyn = model, dyn
        self._step, self._results = None, None
        self.edge = model.largest_fitted_std("forces")
        self.beyond: list[int] = []  # the shown steps beyond the training data
        self.shown = 0

    def results(self) -> dict:
        """Return the calculator results with ``energy_std`` and ``forces_std``, this step's."""
        from kernelpot import KernelPotCalculator

        if self._results is None or self._step != self.dyn.nsteps:
            probe = self.dyn.atoms.copy()
            probe.calc = KernelPotCalculator(self.model, uncertainty=True, lazy=False)
            probe.get_forces()
            self._step, self._results = self.dyn.nsteps, probe.calc.results
            self._watch(self._results["forces_std"])
        return self._results

    def _watch(self, forces_std: np.ndarray) -> None:
        """Count a structure beyond the training data; say the first one at once."""
        self.shown += 1
        if self.edge is None or not len(forces_std):
            return
        per_atom = np.sqrt(np.mean(forces_std**2, axis=1))
        # each atom against its own element's edge (the map's factor per element)
        edges = self.model.largest_fitted_std("forces", numbers=self.dyn.atoms.numbers)
        atom = int(np.argmax(per_atom / edges))
        if not per_atom[atom] > BEYOND_TRAINING * edges[atom]:
            return
        self.beyond.append(int(self.dyn.nsteps))
        if len(self.beyond) == 1:
            print(f"warning: at step {self.dyn.nsteps} atom {atom}'s epistemic force std, "
                  f"{significant(1e3 * per_atom[atom])} meV/Å, is "
                  f"{per_atom[atom] / edges[atom]:.1f} "
                  f"times the largest of the structures the std was calibrated on "
                  f"({significant(1e3 * edges[atom])} meV/Å): the structure is unlike the "
                  "training data and its forces may be far off (the trajectory after it "
                  "too); "
                  "on-the-fly learning (--reference, --train) labels such structures",
                  file=sys.stderr, flush=True)

    def summary(self) -> str:
        """Return the summary's clause on structures beyond the training data.

        Also when none was: a new user could not tell that the check had run.
        """
        if self.edge is None or not self.shown:
            return ""
        if not self.beyond:
            return (f"; none of {self.shown} shown steps beyond the training data (no atom's "
                    f"force std, the RMS of its components, over {BEYOND_TRAINING:g} times "
                    f"the calibrated {self._edge_text()})")
        return (f"; {len(self.beyond)} of {self.shown} shown steps beyond the training data "
                f"(an atom's force std, the RMS of its components, over "
                f"{BEYOND_TRAINING:g} times the calibrated "
                f"{self._edge_text()}; first at step {self.beyond[0]})")

    def _edge_text(self) -> str:
        """``45.2 meV/Å``, or per element where the map has a factor per element."""
        if not self.model.element_scales():
            return f"{significant(1e3 * self.edge)} meV/Å"
        from ase.data import chemical_symbols

        species = np.asarray(self.model.species_)
        edges = self.model.largest_fitted_std("forces", numbers=species)
        return ", ".join(f"{chemical_symbols[z]} {significant(1e3 * e)}"
                         for z, e in zip(species, edges, strict=True)) + " meV/Å"


class _Temperatures:
    """Every step's temperature, for the summary's mean over the second half of the run.

    A run from a cold or ideal start spends its first hundreds of steps equilibrating; the
    final temperature of a small cell fluctuates by tens of per cent (a new user's 31-atom
    Ni cell at 1200 K: ±15 %). Neither says whether the run held its temperature.
    """

    def __init__(self, dyn):
        self.dyn = dyn
        self.steps: list[int] = []
        self.values: list[float] = []

    def __call__(self) -> None:
        self.steps.append(int(self.dyn.nsteps))
        self.values.append(float(self.dyn.atoms.get_temperature()))

    def summary(self) -> str:
        """Return ``, mean X K over steps a–b (the second half)``, or "" (too few steps)."""
        if len(self.values) < 4:
            return ""
        half = len(self.values) // 2
        return (f", mean {np.mean(self.values[half:]):.0f} K over steps "
                f"{self.steps[half]}–{self.steps[-1]} (the run's second half)")


class _ContactWatch:
    """Plain MD's steps with a pair closer than any training pair of its elements.

    Every step (a neighbour list within the shortest training distances: a fraction of a
    millisecond for a few hundred atoms): a pair more than
    :data:`~kernelpot.contacts.CONTACT_MARGIN` closer than the model's
    ``shortest_pairs_`` for its elements is extrapolated, whatever the std says. The model
    warns of the first such prediction itself; the count goes into the summary and each
    recorded frame holds its step's ``contact_ratio`` (the smallest pair distance over its
    elements' shortest training one; 1 when none is closer).
    """

    def __init__(self, model, dyn):
        self.shortest = getattr(model, "shortest_pairs_", None)  # None: an older model file
        self.dyn = dyn
        self.steps: list[int] = []
        self.closest = None  # (contact, step) of the smallest ratio
        self.ratio = 1.0  # the current step's
        self.n_steps = 0

    def __call__(self) -> None:
        if self.shortest is None:
            return
        self.n_steps += 1
        contact = self.shortest.closest(self.dyn.atoms)
        self.ratio = 1.0 if contact is None else contact.ratio
        if contact is None or not contact.ratio < 1.0 - CONTACT_MARGIN:
            return
        self.steps.append(int(self.dyn.nsteps))
        if self.closest is None or contact.ratio < self.closest[0].ratio:
            self.closest = (contact, int(self.dyn.nsteps))

    def summary(self) -> str:
        """Return the summary's clause on extrapolated contacts ("" if none)."""
        if not self.steps:
            return ""
        contact, step = self.closest
        return (f"; {len(self.steps)} of {self.n_steps} structures (the start and each "
                f"step) with a pair more than {100 * CONTACT_MARGIN:g} % closer than any "
                f"training pair of its elements (first at step "
                f"{self.steps[0]}; closest {contact.elements} "
                f"{100 * (1 - contact.ratio):.1f} % closer, at step {step}): forces there "
                "are extrapolated")


def _write_stds(snapshot, model, results: dict) -> None:
    """Store a frame's stds: total and epistemic.

    Total (the calibrated epistemic std and the learned noise) as ``energy_std`` and
    ``forces_std``, as ``kernelpot predict`` writes them; the epistemic part (what the
    calculator reports and on-the-fly learning gates on) as ``*_epistemic``.
    """
    energy_noise = model.noise_variance("energy", model.energy_noise_**2 * len(snapshot))
    force_noise = model.noise_variance("forces", model.force_noise_**2)
    epistemic_e, epistemic_f = float(results["energy_std"]), results["forces_std"]
    snapshot.info["energy_std"] = float(np.sqrt(epistemic_e**2 + energy_noise))
    snapshot.info["energy_std_epistemic"] = epistemic_e
    snapshot.arrays["forces_std"] = np.sqrt(epistemic_f**2 + force_noise)
    snapshot.arrays["forces_std_epistemic"] = epistemic_f.copy()


def _status_line(dyn, start: float, first_step: int, stds: _StdsWhenShown | None) -> str:
    """Return the periodic stdout line of plain MD: step, time, temperature, energy, std, speed.

    The energy is the total (the model's potential energy plus the kinetic) per atom,
    what NVE conserves: a new user had to read it back from the trajectory.
    """
    atoms = dyn.atoms
    std = "" if stds is None else (
        " | largest epistemic force-component std "
        f"{significant(1e3 * float(stds.results()['forces_std'].max()))} meV/Å")
    elapsed = time.perf_counter() - start
    per_step = elapsed / max(dyn.nsteps - first_step, 1)
    total = (atoms.get_potential_energy() + atoms.get_kinetic_energy()) / max(len(atoms), 1)
    return (f"step {dyn.nsteps:>7} {dyn.get_time() / units.fs:>9.1f} fs "
            f"{atoms.get_temperature():>6.0f} K | E {total:.5f} eV/atom{std} | "
            f"{per_step:.3f} s/step, total {elapsed:.0f} s")


#: --max-energy-gap of a new on-the-fly run when none is given, eV per atom
DEFAULT_MAX_ENERGY_GAP = 1.0


def _check_md_args(args) -> None:
    """Refuse option values and combinations that cannot work, before any work.

    Also records whether --max-energy-gap and --critical-factor were given
    (``args.max_energy_gap_given``, ``args.critical_factor_given``: a resumed run keeps
    its saved values otherwise) and sets their defaults.
    """
    args.max_energy_gap_given = hasattr(args, "max_energy_gap")
    if not args.max_energy_gap_given:
        args.max_energy_gap = DEFAULT_MAX_ENERGY_GAP
    args.critical_factor_given = hasattr(args, "critical_factor")
    if args.critical_factor_given and args.reference is None:
        raise CLIError("--critical-factor goes with --reference (it spaces reference calls)")
    if not args.critical_factor_given:
        args.critical_factor = None
    if args.label_stress is not None and (args.reference is None or args.resume):
        raise CLIError("--label-stress goes with a new --reference run (--resume keeps the "
                       "run's setting)")
    if args.label_stress is None:
        args.label_stress = args.ensemble == "npt"
    if hasattr(args, "contact_margin") and (args.reference is None or args.resume):
        raise CLIError("--contact-margin goes with a new --reference run (plain MD counts "
                       "contacts at 5 %; --resume keeps the run's margin)")
    if not hasattr(args, "contact_margin"):
        args.contact_margin = CONTACT_MARGIN
    wrong = [f"--{name} {value:g}" for name, value, ok in (
        ("steps", args.steps, args.steps >= 1), ("interval", args.interval, args.interval >= 1),
        ("temperature", args.temperature, args.temperature > 0),
        ("timestep", args.timestep, args.timestep > 0)) if not ok]
    if wrong:
        raise CLIError(f"{', '.join(wrong)}: --steps and --interval must be >= 1, "
                       "--temperature and --timestep > 0")
    if args.reference is None and (args.train or args.threshold is not None):
        raise CLIError("--train and --threshold only go with --reference")
    if args.reference is not None and args.no_std:
        raise CLIError("--no-std does not go with --reference: on-the-fly learning gates on "
                       "the force std")
    if args.status_every < 1 or args.min_interval < 1:
        raise CLIError("--status-every and --min-interval must be >= 1")
    if args.resume and (args.reference is None or args.restart):
        raise CLIError("--resume continues an on-the-fly run: it needs --reference and does "
                       "not go with --restart")
    if args.friction <= 0 or args.tdamp <= 0 or args.pdamp <= 0:
        raise CLIError("--friction, --tdamp and --pdamp must be > 0")


def _starting_structure(args):
    """Return the starting structure with velocities.

    The first frame of START with thermal velocities, or with --restart its last frame
    with the velocities it carries.
    """
    from ase.io import read
    from ase.md.velocitydistribution import thermalize_momenta

    if not args.restart:
        atoms = _read_frames(args.start)[0].copy()
        atoms.calc = None
        _drop_earlier_output(atoms)
        thermalize_momenta(atoms, temperature_K=args.temperature,
                           rng=np.random.default_rng(args.seed))
        return atoms
    _read_frames(args.start)  # the same checks and messages for a bad file
    atoms = read(args.start, index=-1)
    if "momenta" not in atoms.arrays:
        raise CLIError(f"--restart: the last frame of {args.start} carries no velocities "
                       "(momenta); restart from a trajectory written by kernelpot md -o, or "
                       "drop --restart to draw thermal velocities")
    momenta = atoms.get_momenta()
    atoms.calc = None
    atoms.set_momenta(momenta)
    _drop_earlier_output(atoms, keep_step=True)
    return atoms


#: ``info`` entries of the starting structure the MD frames keep: what stays true of the
#: system as it moves (a reference calculator may read its charge or spin there).
KEPT_INFO = ("charge", "spin", "multiplicity", "total_charge", "total_spin")
#: Per-atom arrays the MD frames keep (ASE's own; the integrator sets the momenta).
KEPT_ARRAYS = ("numbers", "positions", "momenta", "masses", "tags", "initial_magmoms",
               "initial_charges")
#: What an earlier kernelpot md run wrote into its frames: dropped without a note.
_OWN_OUTPUT = ("model_energy", "model_stress", "energy_std", "energy_std_epistemic", "step",
               "contact_ratio", "model_forces", "forces_std", "forces_std_epistemic",
               "gated_forces_std")


def _drop_earlier_output(atoms, keep_step: bool = False) -> None:
    """Remove what the new frames must not carry over from the starting structure.

    Everything but :data:`KEPT_INFO` and :data:`KEPT_ARRAYS` (and the step of a
    ``--restart``, which seeds its noise): an earlier run's predictions (a frame recorded
    without some of them would show the old ones), the configuration type (labelled,
    MD frames would join the start's noise group, config_type_noise) and whatever else
    described the starting frame alone. A new user's start carried ``temperature_K``
    (651 K) into every frame of a run between 205 and 1,321 K, and into the frames the
    reference labelled. A note names what was dropped, but for kernelpot md's own output.
    """
    kept = KEPT_INFO + (("step",) if keep_step else ())
    info = [key for key in atoms.info if key not in kept]
    arrays = [key for key in atoms.arrays if key not in KEPT_ARRAYS]
    for key in info:
        del atoms.info[key]
    for key in arrays:
        del atoms.arrays[key]
    foreign = [key for key in info + arrays if key not in _OWN_OUTPUT]
    if foreign:
        print(f"note: the starting structure's {', '.join(foreign)} describe that frame, not "
              "the MD frames: they are not carried into the trajectory or the labelled "
              "frames")


def _dynamics(atoms, args):
    """Return the ASE integrator of --ensemble with the run's time step and thermostat."""
    dt = args.timestep * units.fs
    if args.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if args.ensemble == "langevin":
        from ase.md.langevin import Langevin

        # a restarted segment draws new noise (seeded by its first step)
        rng = np.random.default_rng([args.seed, 1, int(atoms.info.get("step", 0))])
        return Langevin(atoms, dt, temperature_K=args.temperature,
                        friction=args.friction / units.fs, fixcm=False, rng=rng)
    try:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT
    except ImportError as err:
        raise CLIError("--ensemble npt needs an ASE with ase.md.nose_hoover_chain."
                       "IsotropicMTKNPT (3.25 or later)") from err
    if not np.all(atoms.pbc):
        raise CLIError("--ensemble npt needs a cell periodic in all three directions")
    return IsotropicMTKNPT(atoms, dt, temperature_K=args.temperature,
                           pressure_au=args.pressure * units.GPa,
                           tdamp=args.tdamp * units.fs, pdamp=args.pdamp * units.fs)


class _Trajectory:
    """The -o trajectory, written frame by frame (an interrupted run keeps its frames).

    ``after``: continue an existing file from that step, dropping its later frames (a
    resumed run steps through them again).
    """

    def __init__(self, path: str | None, after: int | None = None):
        from ase.io import write

        self.path = path
        if path and after is not None and Path(path).exists():
            # without a last frame cut short by the interruption (or an empty file)
            kept = [f for f in read_complete_frames(path)
                    if int(f.info.get("step", 0)) <= after]
            write(path, kept, format="extxyz")
        append = after is not None
        self.handle = open(path, "a" if append else "w") if path else None  # noqa: SIM115
        self.n_frames = 0

    def write(self, snapshot) -> None:
        """Append one frame and flush it to disk."""
        from ase.io import write

        if self.handle is not None:
            write(self.handle, snapshot, format="extxyz")
            self.handle.flush()
        self.n_frames += 1

    def close(self) -> None:
        """Close the file."""
        if self.handle is not None:
            self.handle.close()


def _new_learner(args, model):
    """Refit ``model`` on --train as an incremental model of its method; return the learner."""
    from sklearn.base import clone

    from kernelpot import OnTheFlyLearner

    if args.train is None:
        raise CLIError("--reference needs --train (the model's training structures)")
    previous = Path(args.directory) / FRAMES_FILE
    if previous.exists() and previous.stat().st_size:
        resumable = (Path(args.directory) / SETTINGS_FILE).exists()
        raise CLIError(f"{previous} holds a previous on-the-fly run: "
                       + ("continue it with --resume, or choose another --directory"
                          if resumable else "it stopped before its first checkpoint; "
                          "remove the directory or choose another --directory"))
    train = _read_frames(args.train)
    fitted_on = structures_fitted_on(model)
    if fitted_on is not None and fitted_on != len(train):
        print(f"note: {args.model} was fitted on {fitted_on} structures, {args.train} holds "
              f"{len(train)}: the learner starts from a model of {args.train}'s")
    # the model's own method: "auto" chooses again on --train, and its updates become
    # sparse once the exact model passes its limits; a given one is kept
    method = model.method if model.method == "auto" else model.method_
    print(f"refitting {args.model} on {args.train} as an incremental model, method="
          f"{method!r} (the learner updates it in place)")
    settings = {"signal_per_element": False} if model.method_ == "sparse" else {}
    tic = time.perf_counter()
    model = clone(model).set_params(incremental=True, method=method, verbose=0,
                                    **settings).fit(train)
    if model.method_ == "exact":
        print(f"each reference call refits the exact model on every labelled structure: "
              f"{time.perf_counter() - tic:.1f} s now, growing with the structures"
              + (" (it becomes the sparse model once past the exact_* limits)"
                 if method == "auto" and not model.signal_per_element else ""))
    return OnTheFlyLearner(model, _reference_calculator(args.reference),
                           threshold=args.threshold, directory=args.directory,
                           min_interval=args.min_interval, verbose=int(not args.quiet),
                           status_every=args.status_every, max_energy_gap=args.max_energy_gap,
                           contact_margin=args.contact_margin,
                           critical_factor=args.critical_factor,
                           label_stress=args.label_stress)


def _check_same_dynamics(saved: dict | None, dynamics, directory: str) -> None:
    """Refuse a resume whose dynamics options differ from the interrupted run's.

    The run's settings keep its dynamics (class, time step, temperature, friction); a
    resume given other options would go on as another run in the same files (measured:
    ``time_fs`` jumped from 124 to 250 fs in one step of a new user's resume).
    """
    if not saved:
        return  # checkpoints from before the settings kept the dynamics
    now = _dynamics_spec(dynamics)
    if saved.get("class") != now.get("class"):
        raise CLIError(f"--resume: the run in {directory} ran {saved.get('class')}, this "
                       f"command asks for {now.get('class')}: give the interrupted run's "
                       "--ensemble")
    shown = {"timestep": ("--timestep", units.fs, "fs"),
             "temperature_K": ("--temperature", 1.0, "K"),
             "friction": ("--friction", 1.0 / units.fs, "/fs")}
    differ = [f"{option} {saved[key] / scale:g} {unit} (asked: {now[key] / scale:g})"
              for key, (option, scale, unit) in shown.items()
              if key in saved and key in now
              and not np.isclose(saved[key], now[key], rtol=1e-9, atol=0.0)]
    if differ:
        raise CLIError(f"--resume: the run in {directory} ran with {', '.join(differ)}: give "
                       "the interrupted run's options (a run at other settings is a new run: "
                       f"--train {Path(directory) / FRAMES_FILE} and another --directory)")


def _resumed_steps(steps: int, settings: dict, step: int, directory: str) -> int:
    """Return --steps of a resumed run; refuse (naming why) one ending before ``step``."""
    start = int(settings["start_step"])
    if start + steps < step:
        raise CLIError(f"--resume: the run in {directory} started at step {start} and has "
                       f"reached step {step}: --steps {steps} would end it before that (--steps "
                       f"counts from the run's start, as in the command that began it: give "
                       f"at least {step - start})")
    return steps


def _resumed_learner(args):
    """Return the learner and dynamics of the interrupted run in --directory."""
    from kernelpot import OnTheFlyLearner

    directory = Path(args.directory)
    if not (directory / SETTINGS_FILE).exists():
        raise CLIError(f"--resume: {args.directory} holds no on-the-fly checkpoint")
    step = int(np.load(directory / STATE_FILE)["step"])
    settings = json.loads((directory / SETTINGS_FILE).read_text())
    # --steps counts from the run's first step, as in the command that started it: the
    # same command resumes to the same end, a larger --steps extends the run (a new
    # user's finished run could not be taken further from the command line)
    counted = settings.get("start_step") is not None
    built = []

    def dynamics(atoms):
        atoms.info["step"] = step  # seeds the Langevin noise of the resumed segment
        built.append(_dynamics(atoms, args))
        return built[-1]

    learner = OnTheFlyLearner.resume(
        args.directory, _reference_calculator(args.reference), dynamics=dynamics, run=False,
        max_energy_gap=args.max_energy_gap if args.max_energy_gap_given else "saved",
        critical_factor=args.critical_factor if args.critical_factor_given else "saved",
        steps=_resumed_steps(args.steps, settings, step, args.directory) if counted else None)
    _check_same_dynamics(settings.get("dynamics"), built[-1], args.directory)
    n_frames = learner.model.posterior_.n_training_structures
    print(f"resuming the on-the-fly run in {args.directory} at step {step} of "
          f"{learner.target_steps}: a model of {n_frames} labelled structures "
          f"({learner.n_reference_calls} reference calls so far)", flush=True)
    return learner, built[-1]


def _cmd_md(args) -> int:
    from kernelpot import KernelPotCalculator

    _check_md_args(args)
    _check_output(args.output, "the trajectory")
    if args.reference is not None:
        _check_output(args.directory, "the run directory", directory=True)
    learner, shown_stds, contacts = None, None, None
    if args.resume:
        learner, dyn = _resumed_learner(args)
        atoms, steps = dyn.atoms, max(learner.target_steps - dyn.nsteps, 0)
        if steps == 0:
            start = learner.start_step
            further = (f"; a larger --steps (counted from its start at step {start}) runs it "
                       "further" if start is not None else "")
            print(f"the run in {args.directory} is complete (step {dyn.nsteps} of "
                  f"{learner.target_steps}): nothing to resume; its model is "
                  f"{Path(args.directory) / MODEL_FILE}{further}")
            return 0
    else:
        model = _load_model(args.model)
        atoms, steps = _starting_structure(args), args.steps
        # before any refit on --train or run directory (a new user's Cu start for a Ni
        # model failed only after the refit, leaving a directory a re-run then refused)
        try:
            model._species_index(atoms, "kernelpot md", f"the starting structure {args.start}")
        except ValueError as err:
            raise CLIError(str(err)) from None
        dyn = _dynamics(atoms, args)
        if args.restart:
            dyn.nsteps = int(atoms.info.get("step", 0))
        if args.reference is not None:
            learner = _new_learner(args, model)
        else:  # the stds where they are shown only
            atoms.calc = KernelPotCalculator(model, uncertainty=False)
            shown_stds = None if args.no_std else _StdsWhenShown(model, dyn)
            contacts = _ContactWatch(model, dyn)
    trajectory = _Trajectory(args.output, after=first_redone_step(dyn.nsteps) - 1
                             if args.resume else None)
    stds = []

    def record():
        # model predictions under names ase.io does not take for reference labels
        calc = atoms.calc
        snapshot = atoms.copy()
        snapshot.info["model_energy"] = float(calc.results["energy"])
        snapshot.info["step"] = int(dyn.nsteps)
        snapshot.arrays["model_forces"] = calc.results["forces"].copy()
        if "stress" in calc.results:  # computed by the dynamics (NPT): eV/Å³, Voigt order
            snapshot.info["model_stress"] = np.asarray(calc.results["stress"]).copy()
        if contacts is not None and contacts.shortest is not None:
            snapshot.info["contact_ratio"] = contacts.ratio
        if not args.no_std:
            with_std = calc.results if learner is not None else shown_stds.results()
            current = learner.model if learner is not None else shown_stds.model
            _write_stds(snapshot, current, with_std)
        if learner is not None:  # the calibrated std the learner compares with its threshold
            snapshot.arrays["gated_forces_std"] = learner.gated_std(calc.results)
        shown = "gated_forces_std" if learner is not None else "forces_std_epistemic"
        if shown in snapshot.arrays:
            stds.append((float(snapshot.arrays[shown].max()), int(dyn.nsteps)))
        trajectory.write(snapshot)

    start, start_volume = time.perf_counter(), atoms.get_volume() if atoms.pbc.all() else None
    temperatures = _Temperatures(dyn)
    dyn.attach(temperatures, interval=1)
    try:
        _run(args, dyn, learner, record, start, steps, shown_stds, contacts)
    finally:
        trajectory.close()
    _report(args, learner, atoms, time.perf_counter() - start, steps, stds, trajectory,
            shown_stds, contacts, start_volume, temperatures)
    return 0


class _SaidByTheError(logging.Filter):
    """Drop the learner's log line of a stopped run: the command's error line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("on-the-fly run stopped")


def _run(args, dyn, learner, record, start: float, steps: int,
         stds: _StdsWhenShown | None = None, contacts: _ContactWatch | None = None) -> None:
    """Run ``steps`` steps of ``dyn``, recording every --interval steps."""
    atoms = dyn.atoms
    if learner is not None:
        dyn.attach(lambda: atoms.calc is not None and record(), interval=args.interval)
        said_below = _SaidByTheError()
        logging.getLogger("kernelpot.active").addFilter(said_below)
        try:
            with warnings.catch_warnings():  # said once, by the error below
                warnings.filterwarnings("ignore", message="OnTheFlyLearner: the run stopped",
                                        category=RuntimeWarning)
                learner.run(dyn, steps)
        except KeyboardInterrupt:
            state = Path(args.directory) / STATE_FILE
            where = (f"its last checkpoint (step {int(np.load(state)['step'])}) is in "
                     f"{args.directory}/: the same command with --resume continues it"
                     if state.exists() else "it stopped before its first checkpoint")
            print(f"kernelpot md: the on-the-fly run was interrupted at step {dyn.nsteps}; "
                  f"{where}", file=sys.stderr)
            raise
        finally:
            logging.getLogger("kernelpot.active").removeFilter(said_below)
        if learner.stopped:
            gap = (" (or, if the reference is right and the structure new, with a larger "
                   "--max-energy-gap, or none)"
                   if isinstance(learner.stopped_by, InconsistentReference) else "")
            moments = atoms.get_initial_magnetic_moments()
            spin = (f" (the structure carries initial magnetic moments, {moments.sum():.3g} "
                    "in all, which tblite takes as unpaired electrons; ase.build.bulk sets "
                    "them for Fe, Co and Ni: zero them in the start file)"
                    if args.reference == "xtb" and np.any(moments) else "")
            raise CLIError(f"the on-the-fly run stopped: {learner.stopped}{spin}. Every frame "
                           f"labelled before it is in {args.directory}/: the same command "
                           f"with --resume goes on from there (with the reference "
                           f"fixed{gap})")
        return
    atoms.get_forces()
    if contacts is not None:  # before record: a recorded frame holds its step's ratio
        dyn.attach(contacts, interval=1)
    dyn.attach(record, interval=args.interval)
    if not args.quiet:
        first = dyn.nsteps
        dyn.attach(lambda: dyn.nsteps > first and print(
            _status_line(dyn, start, first, stds), flush=True),
            interval=args.status_every)
    dyn.run(steps)


def _cheap_reference_note(log: Path, reference: str) -> str:
    """Say when the reference took less per call than the model's steps took ("" if not).

    On-the-fly learning pays when the reference costs many model steps. A new user's
    acetamide with GFN2-xTB took about 0.01 s per call and 0.18–0.49 s per learner step
    (every force std at every step, an exact model): running xTB itself would have
    been tens of times faster. From the run's step log: a step's time is the wall clock
    between its record and the one before (pairs across a resume, whose clock starts
    again, are skipped).
    """
    try:
        records = [json.loads(line) for line in log.read_text().splitlines() if line]
    except (OSError, ValueError):
        return ""
    calls = [r["reference_s"] for r in records if r.get("reference_called")
             and r.get("reference_s") is not None]
    quiet = [after["wall_s"] - before["wall_s"]
             for before, after in zip(records, records[1:], strict=False)
             if not after.get("reference_called") and before.get("wall_s") is not None
             and after.get("wall_s") is not None and after["wall_s"] >= before["wall_s"]]
    if not calls or len(quiet) < 10:
        return ""
    per_call, per_step = float(np.mean(calls)), float(np.median(quiet))
    if not per_call < per_step:
        return ""
    return (f"note: {reference} took {per_call:.3g} s per call and the model "
            f"{per_step:.3g} s per step with the gate's std: a reference this cheap is "
            f"faster to run itself (ASE's MD with it as the calculator) than to learn on "
            f"the fly; a model pays where the reference costs many of its steps")


def _report(args, learner, atoms, wall: float, steps: int, stds: list[tuple[float, int]],
            trajectory: _Trajectory, shown: _StdsWhenShown | None = None,
            contacts: _ContactWatch | None = None, start_volume: float | None = None,
            temperatures: _Temperatures | None = None) -> None:
    """Print the run's summary line(s)."""
    what, there = "largest epistemic force-component std", ""
    if learner is not None:  # every step's, not only the recorded frames'
        stds = [learner.largest_gated_std] if learner.largest_gated_std else []
        what = "largest gated force-component std"
        if learner.largest_gated_threshold is not None:
            there = (" (threshold there "
                     f"{significant(1e3 * learner.largest_gated_threshold)} meV/Å)")
    value, step = max(stds) if stds else (0.0, 0)
    largest = f"; {what} {significant(1e3 * value)} meV/Å at step {step}{there}" if stds else ""
    ensemble = {"nve": f"NVE (velocity Verlet, initial velocities at {args.temperature} K)",
                "langevin": f"Langevin ({args.temperature} K)",
                "npt": f"NPT (MTK, {args.temperature} K, {args.pressure} GPa)"}[args.ensemble]
    cell = ""
    if args.ensemble == "npt" and start_volume:  # how far the barostat took the cell
        volume = atoms.get_volume()
        cell = f", volume {volume:.1f} Å³ ({volume / start_volume:.3f} × the start's)"
    print(f"kernelpot {__version__}: {steps} {ensemble} "
          f"steps of {args.timestep} fs in {wall:.1f} s "
          f"({1e3 * wall / max(steps, 1):.1f} ms/step); "
          f"final temperature {atoms.get_temperature():.0f} K"
          f"{temperatures.summary() if temperatures is not None else ''}{cell}{largest}"
          f"{shown.summary() if shown is not None else ''}"
          f"{contacts.summary() if contacts is not None else ''}")
    if learner is not None:
        print(f"{learner.n_reference_calls} {args.reference} calls; log, labelled frames and "
              f"model in {args.directory}/")
        cheap = _cheap_reference_note(Path(args.directory) / LOG_FILE, args.reference)
        if cheap:
            print(cheap)
    if args.output:
        print(f"wrote {trajectory.n_frames} frames to {args.output}")
