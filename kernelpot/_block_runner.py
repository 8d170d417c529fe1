"""Where the blocks of a streamed fit run: this process, joblib's workers, or a Dask cluster.

A streamed fit (:mod:`kernelpot.streaming`) is a few functions of ``(context, block)``: the
context (descriptor, inducing environments, kernel, factors; the same for every block) and a
block of whole training structures. :class:`BlockRunner` runs them

* in this process, or through :class:`joblib.Parallel` with ``n_jobs`` workers (which
  honours ``joblib.parallel_config(backend="dask")``: joblib's Dask backend scatters the
  context once and runs the blocks on the cluster), results folded here in block order;
* on a ``distributed.Client``: the context scattered to every worker once, the blocks
  submitted as tasks and their results merged on the workers by a binary tree (blocks
  submitted in the tree's post-order, so that a merge runs as soon as its two halves are
  done and a worker holds a few partial results, not one per block); only the root comes
  back. The tree's shape depends on the number of blocks only, so the result does not
  depend on which worker ran what or in which order they finished.

A block whose worker died is recomputed by Dask on another worker (its inputs are the
scattered context, held by every worker, and the block's own structures, held by the
task); once Dask gives up on it (``distributed.scheduler.allowed-failures``), the fit
stops with a ``RuntimeError`` naming the failure. It never returns a partial result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from kernelpot import _parallel

logger = logging.getLogger(__name__)

__all__ = ["BlockRunner", "check_client"]


def check_client(client: Any, owner: str) -> Any:
    """Return ``client`` if it is a ``distributed.Client`` (or None), else raise ``TypeError``."""
    if client is None:
        return None
    try:
        from distributed import Client
    except ImportError as error:
        raise TypeError(f"{owner}: client= needs dask.distributed (pip install "
                        f"'kernelpot[dask]')") from error
    if not isinstance(client, Client):
        raise TypeError(f"{owner}: client must be a distributed.Client (or None), got "
                        f"{type(client).__name__}")
    if client.status != "running":
        raise ValueError(f"{owner}: the Dask client is {client.status!r}, not running")
    return client


class BlockRunner:
    """Run block tasks in this process, through joblib, or on a Dask cluster.

    Parameters
    ----------
    n_jobs : int or None, default=1
        joblib's workers when ``client`` is None (``None`` and 1: this process).
    client : distributed.Client or None, default=None
        Run the blocks on this cluster instead.
    verbose : int, default=0
        1 or more shows a progress bar of the blocks done.
    owner : str, default="SparseGPPotential"
        Names the estimator in errors and logs.
    """

    def __init__(self, n_jobs: int | None = 1, client: Any = None, verbose: int = 0,
                 owner: str = "SparseGPPotential"):
        self.n_jobs = n_jobs
        self.client = client
        self.verbose = verbose
        self.owner = owner

    @property
    def where(self) -> str:
        """Return where the blocks run, for logs."""
        if self.client is not None:
            return f"on the Dask cluster at {self.client.scheduler.address}"
        if self.n_jobs in (None, 1):
            return "in this process"
        return f"in joblib workers (n_jobs={self.n_jobs})"

    def imap(self, fn: Callable, items: Sequence, desc: str) -> Iterator:
        """Map ``fn`` over single items, in order (:func:`kernelpot._parallel.imap`)."""
        return _parallel.imap(fn, items, n_jobs=self.n_jobs, verbose=self.verbose, desc=desc,
                              client=self.client)

    def reduce(self, fn: Callable, context: Any, blocks: Sequence, merge: Callable,
               desc: str) -> Any:
        """Return ``merge`` folded over ``fn(context, block)`` of every block, in block order.

        ``merge`` must be associative (up to rounding); the blocks keep their order.
        """
        if not blocks:
            raise ValueError(f"{self.owner}: no blocks to run")
        if self.client is None:
            result = None
            for part in self._joblib_map(fn, context, blocks, desc):
                result = part if result is None else merge(result, part)
            return result
        client = self.client
        [shared] = client.scatter([context], broadcast=True, hash=False)
        submitted = []
        root = _submit_tree(client, fn, merge, shared, blocks, 0, len(blocks), submitted)
        del shared  # the tasks hold it on the cluster while they need it
        try:
            self._wait(submitted, desc)
            return root.result()
        except BaseException as error:
            root.cancel()  # and so what only it needed
            self._raise(error)

    def map(self, fn: Callable, context: Any, blocks: Sequence, desc: str) -> Iterator:
        """Yield ``fn(context, block)`` of every block, in block order."""
        if self.client is None:
            yield from self._joblib_map(fn, context, blocks, desc)
            return
        client = self.client
        [shared] = client.scatter([context], broadcast=True, hash=False)
        futures = [client.submit(fn, shared, block, pure=False) for block in blocks]
        del shared  # the tasks hold it on the cluster while they need it
        bar = tqdm(total=len(futures), desc=desc, disable=self.verbose < 1, leave=False,
                   unit="block")
        try:
            for k in range(len(futures)):
                result = futures[k].result()
                futures[k] = None  # release the result on the cluster
                bar.update()
                yield result
        except BaseException as error:
            for future in futures:
                if future is not None:
                    future.cancel()
            self._raise(error)
        finally:
            bar.close()

    def _joblib_map(self, fn: Callable, context: Any, blocks: Sequence, desc: str) -> Iterator:
        bar = tqdm(total=len(blocks), desc=desc, disable=self.verbose < 1, leave=False,
                   unit="block")
        try:
            if self.n_jobs in (None, 1):
                results = (fn(context, block) for block in blocks)
            else:
                results = Parallel(n_jobs=self.n_jobs, return_as="generator")(
                    delayed(fn)(context, block) for block in blocks)
            for result in results:
                bar.update()
                yield result
        finally:
            bar.close()

    def _wait(self, futures: list, desc: str) -> None:
        """Wait for the block tasks with a progress bar, keeping no reference to them."""
        from distributed import as_completed

        bar = tqdm(total=len(futures), desc=desc, disable=self.verbose < 1, leave=False,
                   unit="block")
        pending = as_completed(futures)
        futures.clear()
        try:
            for future in pending:
                if future.status == "error":
                    future.result()  # raises the block's error
                bar.update()
                del future
        except BaseException:
            for future in list(pending.futures):  # the blocks not yet done
                future.cancel()
            pending.clear()
            raise
        finally:
            bar.close()

    def _raise(self, error: BaseException) -> None:
        """Re-raise ``error``, naming a failure of the cluster (workers lost for good)."""
        from concurrent.futures import CancelledError

        from distributed.scheduler import KilledWorker

        if isinstance(error, KilledWorker):
            raise RuntimeError(f"{self.owner}: the fit on the Dask cluster failed: a block's "
                               f"worker died more often than Dask retries it ({error}); no "
                               f"model was fitted") from error
        if isinstance(error, CancelledError):
            raise RuntimeError(f"{self.owner}: the fit on the Dask cluster failed: a task was "
                               f"cancelled ({error}), e.g. every worker holding the shared "
                               f"inputs died or the client was closed; no model was "
                               f"fitted") from error
        raise error


def _submit_tree(client, fn: Callable, merge: Callable, shared, blocks: Sequence, lo: int,
                 hi: int, submitted: list):
    """Submit ``fn`` of blocks ``lo:hi`` and their merges, in post-order; return the root.

    Block tasks are also appended to ``submitted``.
    """
    if hi - lo == 1:
        future = client.submit(fn, shared, blocks[lo], pure=False)
        submitted.append(future)
        return future
    mid = (lo + hi) // 2
    left = _submit_tree(client, fn, merge, shared, blocks, lo, mid, submitted)
    right = _submit_tree(client, fn, merge, shared, blocks, mid, hi, submitted)
    return client.submit(merge, left, right, pure=False)
