"""What a fit will hold in memory, estimated before it starts.

A sparse fit passes through stages that do not overlap in time: the descriptors of the
inducing-point candidates and the selector's work on them; the design (whole, or a
block at a time folded into ``(M + 1)²`` factors); the likelihood search on ``M × M``
statistics; and, with LOSO calibration, a second pass over the blocks. Its peak is the
largest stage plus what is held throughout (per-observation labels and arrays, the
inducing descriptors, ``L_mm``). :class:`FitMemory` holds the stages;
:meth:`kernelpot.SparseGPPotential.estimate_fit_memory` and ``kernelpot fit --dry-run``
print it, and every sparse fit logs it (INFO) before its first descriptor.

The constants below are counts of arrays read off the code and checked with
``tracemalloc`` (see ``tests/test_fit_memory.py``) and against the resident peaks of
``benchmarks/scale.py``. Not counted: the Python interpreter and its libraries (about
0.3 GiB resident), structures held by the caller, and joblib or Dask workers (separate
processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FitMemory", "block_rows_for", "sparse_fit_memory"]

# The selector's temporaries over one element's candidates, in units of their
# descriptors (tracemalloc, 20,000 x 855 features: FPS 2.0x, CUR 4.1x).
SELECTOR_COPIES = {"fps": 2.0, "cur": 4.1, "random": 1.0, "all": 0.0}
# The in-memory design's peak over the design matrix itself: kernel rows, their whitened
# copy and the QR's (resident peaks of benchmarks/scale.py at 400 and 1,600 cells: 3.4-3.5).
IN_MEMORY_COPIES = 3.5
# (M + 1)² arrays alive in a streamed pass: the running factor, the energy and stress
# factors, a finished block's factor, the merge's result and LAPACK's workspace, and the
# energy or stress rows being folded.
STREAMED_FACTORS = 9
# M × M arrays of the likelihood search on the statistics (the statistics per noise kind,
# the Cholesky factor of the evaluation and its solves).
LIKELIHOOD_MATRICES = 8
# LAPACK's QR of a Fortran-ordered system, in place: its workspace and SciPy's
# temporaries over the system's size (tracemalloc, 4,000 x 1,000: 0.28).
QR_WORKSPACE = 0.28
# Per-observation float64 arrays held throughout (labels, noise, the prior and spanned
# variances, row order and kinds, the LOSO terms).
PER_OBSERVATION = 10


@dataclass(frozen=True)
class FitMemory:
    """Estimated memory of a fit, in bytes, stage by stage.

    Attributes
    ----------
    method : {"sparse", "exact"}
        The model the fit builds.
    stages : dict of str to float
        The peak of each stage's own arrays; stages do not overlap in time.
    held : float
        Arrays held through every stage.
    n_observations : int
        Energies, force components and stress components trained on.
    n_columns : int
        Design columns (inducing environments and two-body columns); 0 for the exact
        model.
    block_rows : int or None
        Observations per block of a streamed design; None when the design is held whole.
    workers : float or None
        With a Dask client, the peak of one block task on a worker.

    See Also
    --------
    kernelpot.SparseGPPotential.estimate_fit_memory
    """

    method: str
    stages: dict = field(default_factory=dict)
    held: float = 0.0
    n_observations: int = 0
    n_columns: int = 0
    block_rows: int | None = None
    workers: float | None = None

    @property
    def peak(self) -> float:
        """Return the estimated peak, bytes: the largest stage plus what is held."""
        return self.held + max(self.stages.values(), default=0.0)

    @property
    def peak_gib(self) -> float:
        """Return :attr:`peak` in GiB."""
        return self.peak / 2**30

    def __str__(self) -> str:
        """Return one line per stage, then the peak."""
        if self.method == "exact":
            how = "exact model"
        elif self.block_rows is None:
            how = f"sparse model, M = {self.n_columns}, the whole design in memory"
        else:
            how = (f"sparse model, M = {self.n_columns}, the design streamed in blocks of "
                   f"about {self.block_rows} rows")
        lines = [f"{self.n_observations} observations; {how}"]
        lines += [f"  {name}: {_gib(size)}" for name, size in self.stages.items()]
        lines.append(f"  held throughout: {_gib(self.held)}")
        if self.workers is not None:
            lines.append(f"  each Dask worker thread, per block: {_gib(self.workers)}")
        lines.append(f"estimated peak: {_gib(self.peak)} (beside the interpreter, about "
                     f"0.3 GiB, and structures the caller holds)")
        return "\n".join(lines)


def _gib(size: float) -> str:
    return f"{size / 2**30:.3g} GiB"


def block_rows_for(limit_bytes: float, n_columns: int, n_jobs: int = 1,
                   worker_bytes: float | None = None) -> int:
    """Rows per block of a streamed design.

    Parameters
    ----------
    limit_bytes : float
        ``design_memory_limit`` in bytes.
    n_columns : int
        Design columns ``M``.
    n_jobs : int, default=1
        Blocks built at once in this process's joblib workers.
    worker_bytes : float or None, default=None
        With a Dask cluster, the smallest worker thread's share of its worker's memory
        limit: a block then takes at most half of it, less seven ``(M + 1)²`` factors.

    Returns
    -------
    int
        At least one; a block holds whole structures, so about this many rows.
    """
    M = n_columns
    if worker_bytes is None:
        return max(1, int(limit_bytes / 4 / max(1, n_jobs) / (M * 8)))
    room = worker_bytes / 2 - 7 * 8 * (M + 1) ** 2
    return max(1, int(min(limit_bytes / 4, room) / (M * 8)))


def sparse_fit_memory(n_observations: int, n_small: int, n_columns: int, n_features: int,
                      candidates: list[int], sparse_method: str, block_rows: int | None,
                      structure_bytes: float, loso: bool, n_jobs: int = 1,
                      on_cluster: bool = False) -> FitMemory:
    """Estimate the memory of a sparse fit, stage by stage.

    Parameters
    ----------
    n_observations : int
        Energies, force components and stress components.
    n_small : int
        Energy and stress observations (kept as rows up to ``M + 1`` per kind).
    n_columns : int
        Design columns ``M``.
    n_features : int
        Descriptor length.
    candidates : list of int
        Environments per element the inducing selection sees.
    sparse_method : str
        The selector (:data:`SELECTOR_COPIES`).
    block_rows : int or None
        Rows per block of a streamed design; None for the whole design in memory.
    structure_bytes : float
        One structure's descriptors with their gradients and its design rows (the
        largest structure's).
    loso : bool
        Whether the LOSO terms are computed.
    n_jobs : int, default=1
        Blocks or structures in flight at once.
    on_cluster : bool, default=False
        The blocks run on Dask workers: this process holds only the merged factors.

    Returns
    -------
    FitMemory
    """
    M, D = int(n_columns), int(n_features)
    factor = 8.0 * (M + 1) ** 2
    features = 8.0 * D * sum(candidates)
    stages = {"inducing selection": features + SELECTOR_COPIES[sparse_method] * 8.0 * D
              * max(candidates, default=0) + n_jobs * structure_bytes}
    workers = None
    if block_rows is None:
        design = IN_MEMORY_COPIES * 8.0 * n_observations * M + structure_bytes
        stages["design (whole)"] = design
    else:
        block = 8.0 * block_rows * (M + 1) + structure_bytes + 2 * factor
        if on_cluster:
            workers = block + 7 * factor
            stages["design (streamed, merged here)"] = STREAMED_FACTORS * factor
        else:
            stages["design (streamed)"] = n_jobs * block + STREAMED_FACTORS * factor
            small = 8.0 * min(n_small, 2 * (M + 1)) * (M + 1)
            stages["design (streamed)"] += small
    stages["likelihood search"] = LIKELIHOOD_MATRICES * 8.0 * M * M
    if block_rows is not None:
        # the streamed design's factors (forces, folded energies and stresses) stay
        # while the likelihood is searched and the posterior solved; the solve stacks
        # them with M scratch rows and factors the stack in place (QR_WORKSPACE)
        kept_rows = M + 1 + min(n_small, 2 * (M + 1))
        stages["likelihood search"] += 3 * factor
        stages["posterior solve"] = (3 * factor + 8.0 * (kept_rows + M) * M
                                     * (1.0 + QR_WORKSPACE) + 2 * 8.0 * M * M)
    if loso and block_rows is not None:
        # the second pass: the blocks again (here or on the workers), beside R and L_mm
        blocks = 0.0 if on_cluster else n_jobs * (8.0 * block_rows * (M + 1) + structure_bytes)
        stages["leave-one-structure-out pass"] = blocks + 3 * 8.0 * M * M
    held = PER_OBSERVATION * 8.0 * n_observations + 8.0 * M * (M + D)
    return FitMemory("sparse", stages, held, int(n_observations), M, block_rows, workers)
