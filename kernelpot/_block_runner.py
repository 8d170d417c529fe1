"""Where the blocks of a streamed fit run: this process, joblib's workers, or a Dask cluster.

A streamed fit (:mod:`kernelpot.streaming`) is a few functions of ``(context, block)``: the
context (descriptor, inducing environments, kernel, factors; the same for every block) and a
block of whole training structures. :class:`BlockRunner` runs them

* in this process, or through :class:`joblib.Parallel` with ``n_jobs`` workers (which
  honours ``joblib.parallel_config(backend="dask")``: joblib's Dask backend scatters the
  context once and runs the blocks on the cluster), results folded here in block order;
* on a ``distributed.Client``: the context scattered to every worker once, the blocks
  submitted as tasks (at most twice the cluster's threads in flight) and their results
  merged on the workers by a binary tree (submitted in post-order, so that a merge runs
  as soon as its two subtrees are done and the cluster holds a few partial results, not
  one per block); only the root comes back. The tree's shape depends on the number of
  blocks only, so the result does not depend on which worker ran what or in which order
  they finished. A map over single items (:meth:`BlockRunner.imap`, the inducing
  selection's features) is bounded the same way: the client holds at most that many
  results its caller has not taken, however slowly it takes them.

A block whose worker died is recomputed by Dask on another worker (its inputs are the
scattered context, held by every worker, and the block's own structures, held by the
task); once Dask gives up on it (``distributed.scheduler.allowed-failures``), the fit
stops with a ``RuntimeError`` naming the failure. It never returns a partial result. On
any error the runner drops its references to what it submitted, and Dask forgets what
is not done (it does not cancel the blocks one by one: a cancelled block whose merges no
client holds trips the scheduler, which then drops the whole client).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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
        """Map ``fn`` over single items, in order.

        Here or through joblib as :func:`kernelpot._parallel.imap` does. On a cluster,
        ``fn`` is scattered once and the items go as :meth:`map`'s blocks: at most
        :meth:`_in_flight` of them submitted and not yet consumed, so a consumer slower
        than the cluster (the inducing selection, which samples on the client) holds the
        workers back instead of queueing every result on the client.
        """
        if self.client is None:
            return _parallel.imap(fn, items, n_jobs=self.n_jobs, verbose=self.verbose,
                                  desc=desc)
        return self.map(_apply, fn, items, desc)

    def reduce(self, fn: Callable, context: Any, blocks: Sequence, merge: Callable,
               desc: str) -> Any:
        """Return ``merge`` folded over ``fn(context, block)`` of every block, in block order.

        ``merge`` must be associative (up to rounding); the blocks keep their order.
        ``blocks`` is a sequence read one item at a time, as the blocks are submitted.
        """
        if not len(blocks):
            raise ValueError(f"{self.owner}: no blocks to run")
        if self.client is None:
            result = None
            for part in self._joblib_map(fn, context, blocks, desc):
                result = part if result is None else merge(result, part)
            return result
        client = self.client
        [shared] = client.scatter([context], broadcast=True, hash=False)
        bar = tqdm(total=len(blocks), desc=desc, disable=self.verbose < 1, leave=False,
                   unit="block")
        leaves = _Leaves(client, fn, shared, self._in_flight(), bar)
        del shared  # the tasks hold it on the cluster while they need it
        try:
            root = _submit_tree(client, merge, blocks, leaves)
            leaves.drain()
            return root.result()
        except BaseException as error:
            # drop every reference to the submitted work, and Dask forgets it (cancelling
            # a block whose merges no client holds trips the scheduler)
            root = None
            leaves.clear()
            self._raise(error)
        finally:
            bar.close()

    def map(self, fn: Callable, context: Any, blocks: Sequence, desc: str) -> Iterator:
        """Yield ``fn(context, block)`` of every block, in block order."""
        if self.client is None:
            yield from self._joblib_map(fn, context, blocks, desc)
            return
        client = self.client
        [shared] = client.scatter([context], broadcast=True, hash=False)
        bar = tqdm(total=len(blocks), desc=desc, disable=self.verbose < 1, leave=False,
                   unit="block")
        ahead = self._in_flight()
        futures = collections.deque()
        try:
            for k in range(len(blocks)):
                while len(futures) < ahead and k + len(futures) < len(blocks):
                    futures.append(client.submit(fn, shared, blocks[k + len(futures)],
                                                 pure=False))
                result = futures.popleft().result()
                bar.update()
                yield result
        except BaseException as error:
            futures.clear()  # released: Dask forgets what is not done
            self._raise(error)
        finally:
            bar.close()

    def _in_flight(self) -> int:
        """Return how many blocks to have submitted and not done: twice the cluster's threads.

        Bounds what the client and the scheduler hold of the blocks' inputs.
        """
        threads = sum(self.client.nthreads().values())
        return max(2, 2 * threads)

    def _joblib_map(self, fn: Callable, context: Any, blocks: Sequence, desc: str) -> Iterator:
        """``fn(context, block)`` of every block in order, here or through joblib."""
        return _parallel.imap(fn, blocks, n_jobs=self.n_jobs, verbose=self.verbose, desc=desc,
                              unit="block", shared=context)

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


def _apply(fn: Callable, item: Any) -> Any:
    """``fn(item)``: :meth:`BlockRunner.imap`'s task, with ``fn`` the scattered context."""
    return fn(item)


class _Leaves:
    """Submit block tasks with at most ``limit`` of them not done; count the done ones.

    Every reference to submitted work lives here (``pending``, ``stack``), so that
    :meth:`clear` drops them all, whichever frame an error left.
    """

    def __init__(self, client, fn: Callable, shared, limit: int, bar):
        self.client, self.fn, self.shared, self.limit, self.bar = client, fn, shared, limit, bar
        self.pending = []
        self.stack = []  # (blocks, future) of the subtrees not merged yet

    def submit(self, block):
        """Submit ``fn(shared, block)`` once fewer than ``limit`` blocks are running."""
        while len(self.pending) >= self.limit:
            self._wait_one()
        future = self.client.submit(self.fn, self.shared, block, pure=False)
        self.pending.append(future)
        return future

    def drain(self) -> None:
        """Wait until every block is done (raising a block's error)."""
        while self.pending:
            self._wait_one()

    def clear(self) -> None:
        """Drop the references to the submitted work and to the shared inputs."""
        self.pending.clear()
        self.stack.clear()
        self.shared = None

    def _wait_one(self) -> None:
        from distributed import wait

        done, not_done = wait(self.pending, return_when="FIRST_COMPLETED")
        self.pending = [future for future in self.pending if future in not_done]
        del not_done
        failed = [future for future in done if future.status == "error"]
        self.bar.update(len(done))
        del done
        if failed:
            failed[0].result()  # raises the block's error


def _submit_tree(client, merge: Callable, blocks: Sequence, leaves: _Leaves):
    """Submit every block (through ``leaves``) and the merges of a binary tree; return the root.

    Post-order: a merge is submitted as soon as its two subtrees are, so it runs when
    they are done. Two subtrees of the same number of blocks are merged at once (a
    binary counter); what is left at the end is merged right to left. The tree's shape
    depends on the number of blocks only.
    """
    stack = leaves.stack
    for block in range(len(blocks)):
        stack.append((1, leaves.submit(blocks[block])))
        while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
            _merge_top(client, merge, stack)
    while len(stack) > 1:
        _merge_top(client, merge, stack)
    return stack.pop()[1]


def _merge_top(client, merge: Callable, stack: list) -> None:
    """Replace the two subtrees on top of ``stack`` by the future of their merge."""
    (n_right, right), (n_left, left) = stack.pop(), stack.pop()
    stack.append((n_left + n_right, client.submit(merge, left, right, pure=False)))
