"""Small-data studies: learning curves of error and predicted std against training size."""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import clone

from kernelpot import metrics
from kernelpot._labels import check_frames, read_labels
from kernelpot._validation import check_verbose
from kernelpot.contacts import contact_warnings_handled
from kernelpot.selection import STRATEGIES, select_frames

if TYPE_CHECKING:
    from ase import Atoms

    from kernelpot.estimator import SparseGPPotential

logger = logging.getLogger(__name__)

__all__ = ["learning_curve"]


def learning_curve(model: SparseGPPotential, train: list[Atoms], test: list[Atoms],
                   sizes: Sequence[int], repeats: int = 1, random_state: int = 0,
                   verbose: int = 0, strategy: str = "random",
                   initial: int = 10) -> dict[str, np.ndarray]:
    """Fit clones of ``model`` on growing subsets of ``train``; score on ``test``.

    Parameters
    ----------
    model : SparseGPPotential
        Unfitted template (cloned for every fit).
    train, test : list of ase.Atoms
        Labelled structures; every training subset is drawn from ``train``.
    sizes : sequence of int
        Training-set sizes, each at most ``len(train)``.
    repeats : int, default=1
        Random subsets per size (seeds ``random_state + r``).
    random_state : int, default=0
        Seed of the random subsets; repeat ``r`` uses ``random_state + r``.
    verbose : int, default=0
        1 shows a progress bar over the fits.
    strategy : {"random", "variance", "reduction"}, default="random"
        How a training set grows. "random": the first ``n`` of a random permutation
        of ``train`` (nested across sizes). "variance" and "reduction": the same first
        ``initial`` structures, then the structures :func:`kernelpot.select_frames`
        picks with that strategy from the rest of ``train`` with a model fitted on
        those ``initial`` (uncertainty selection; labels unused while picking).
    initial : int, default=10
        Random starting structures of the "variance" strategy; every size must be at
        least this.

    Returns
    -------
    dict of ndarray, each of shape (len(sizes), repeats)
        ``force_mae`` and ``force_rmse`` (eV/Å, over components), ``energy_mae``
        (eV/atom), ``force_std`` (mean predicted total force std, eV/Å),
        ``fit_seconds``, ``method`` (the fitted model's ``method_``: a
        ``method="auto"`` template may fit "exact" at small sizes and "sparse" at
        large ones); and ``sizes`` (len(sizes),).

    Raises
    ------
    ValueError
        If ``train`` or ``test`` is empty or ``test`` unlabelled, a size is out of
        range, ``repeats < 1``, ``strategy`` is unknown, or ``initial`` exceeds the
        smallest size.
    """
    from tqdm.auto import tqdm

    train = check_frames(train, "learning_curve: train")
    test = check_frames(test, "learning_curve: test")
    verbose = check_verbose(verbose, "learning_curve")
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.size == 0 or not all(
            isinstance(n, numbers.Integral) and 1 <= n <= len(train) for n in sizes.tolist()):
        raise ValueError(f"learning_curve: sizes must be ints between 1 and {len(train)} "
                         f"(the training structures); got {sizes.tolist()}")
    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
        raise ValueError(f"learning_curve: repeats must be an int >= 1; got {repeats!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"learning_curve: strategy must be one of {STRATEGIES}; "
                         f"got {strategy!r}")
    if strategy != "random" and (
            isinstance(initial, bool) or not isinstance(initial, numbers.Integral)
            or not 1 <= initial <= sizes.min()):
        raise ValueError(f"learning_curve: initial must be an int between 1 and the "
                         f"smallest size {sizes.min()}; got {initial!r}")
    labels = read_labels(test, "learning_curve: test")
    ref_f = [f for f in labels.forces if f is not None]
    has_f = [k for k, f in enumerate(labels.forces) if f is not None]
    has_e = labels.has_energy
    n_atoms = np.array([len(a) for a in test])
    shape = (len(sizes), int(repeats))
    out = {key: np.full(shape, np.nan) for key in
           ("force_mae", "force_rmse", "energy_mae", "force_std", "fit_seconds")}
    out["method"] = np.full(shape, "", dtype="<U6")
    orders = [np.random.default_rng(random_state + r).permutation(len(train))
              for r in range(int(repeats))]
    # small models meet pairs closer than their few structures held: not each a warning
    with contact_warnings_handled():
        if strategy != "random":
            for r, order in enumerate(orders):
                start, rest = order[:initial], order[initial:]
                seed_model = clone(model).fit([train[k] for k in start])
                picked = select_frames(seed_model, [train[k] for k in rest],
                                       int(sizes.max()) - int(initial), strategy=strategy,
                                       random_state=random_state + r, verbose=verbose)
                orders[r] = np.concatenate([start, rest[picked]])
        jobs = [(i, r) for i in range(len(sizes)) for r in range(int(repeats))]
        for i, r in tqdm(jobs, desc="learning curve", disable=verbose < 1):
            chosen = orders[r][:sizes[i]]
            fitted = clone(model)
            start = time.perf_counter()
            fitted.fit([train[k] for k in chosen])
            out["fit_seconds"][i, r] = time.perf_counter() - start
            out["method"][i, r] = fitted.method_
            if has_f:
                forces, stds = fitted.predict_forces([test[k] for k in has_f], return_std=True)
                out["force_mae"][i, r] = metrics.mae(forces, ref_f)
                out["force_rmse"][i, r] = metrics.rmse(forces, ref_f)
                out["force_std"][i, r] = float(np.mean(np.concatenate([s.ravel() for s in stds])))
            if has_e.any():
                energies = fitted.predict([test[k] for k in np.flatnonzero(has_e)])
                out["energy_mae"][i, r] = float(np.mean(
                    np.abs(energies - labels.energies[has_e]) / n_atoms[has_e]))
            logger.info("learning curve: n = %d, repeat %d: force MAE %.4g eV/Å", sizes[i], r,
                        out["force_mae"][i, r])
    out["sizes"] = sizes.astype(int)
    return out
