"""One parallel map over structures for the whole package.

joblib workers when asked for, a plain loop otherwise; results always come back in input
order, so ``n_jobs`` never changes them (STYLE.md). An optional tqdm progress bar counts the
items done. Callers validate ``verbose`` (``_validation.check_verbose``) before calling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
from joblib import Parallel, delayed
from tqdm.auto import tqdm

__all__ = ["imap", "map_list"]

Item = TypeVar("Item")
Result = TypeVar("Result")


_NOTHING = object()


def imap(fn: Callable[[Item], Result], items: Iterable[Item], n_jobs: int | None = 1,
         verbose: int = 0, desc: str | None = None, *, unit: str = "it",
         shared: Any = _NOTHING) -> Iterator[Result]:
    """Apply ``fn`` to every item, lazily, yielding the results in input order.

    Parameters
    ----------
    fn : callable
        Function of one item. With ``n_jobs`` other than 1 it runs in joblib workers, so it
        and the items must be picklable by joblib's backend (loky uses cloudpickle).
    items : iterable
        The inputs. A sequence (anything with a length, such as a
        :class:`~kernelpot.frame_files.FrameFiles`) is read item by item as the map goes;
        any other iterable is read into a list when iteration starts (the bar needs
        their number).
    n_jobs : int or None, default=1
        joblib's meaning: ``None`` and 1 run a plain loop in this process, ``-1`` uses all
        cores; anything else is handed to :class:`joblib.Parallel`, which validates it
        (``0`` raises ``ValueError``) when iteration starts. Results do not depend on it.
    verbose : int, default=0
        0 is silent; 1 or more shows a tqdm progress bar (on stderr, removed when done).
    desc : str or None, default=None
        Label of the progress bar.
    unit : str, default="it"
        What the bar counts (``"frame"``, ...).
    shared : object, optional
        Call ``fn(shared, item)`` instead: an argument the same for every item, which
        joblib's Dask backend scatters to the workers once.

    Yields
    ------
    object
        ``fn(item)`` for each item, in the order of ``items``.

    See Also
    --------
    map_list : The same, returning a list.

    Notes
    -----
    Nothing runs before the first ``next()``. The serial loop calls ``fn`` only as results
    are consumed; joblib's generator (``return_as="generator"``) runs ahead in its workers
    and cancels what is left when the consumer stops. The bar is closed however iteration
    ends: exhausted, stopped early (``close()``, ``break``, garbage collection) or by an
    exception raised in ``fn``.

    Examples
    --------
    >>> from kernelpot._parallel import imap
    >>> list(imap(abs, [-1, 2, -3]))
    [1, 2, 3]
    """
    if not hasattr(items, "__len__"):
        items = list(items)  # the bar needs their number; a sequence is read as it goes
    bar = tqdm(total=len(items), desc=desc, disable=verbose < 1, leave=False, unit=unit)
    if shared is _NOTHING:
        call, args = fn, (lambda item: (item,))
    else:  # one object for every task, which the Dask backend then scatters once
        held = _Shared(shared)
        call, args = _call_shared, (lambda item: (fn, held, item))
    try:
        if n_jobs in (None, 1):
            results = (call(*args(item)) for item in items)
        else:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(call)(*args(item)) for item in items)
        for result in results:
            bar.update()
            yield result
    finally:
        bar.close()


class _Shared:
    """The argument every task of a map shares, sized by the arrays it reaches.

    joblib's Dask backend scatters an argument to the cluster once, instead of sending
    it with every batch of tasks, when it can be weakly referenced and Dask's ``sizeof``
    finds it over a kilobyte; ``sizeof`` of a plain object is ``sys.getsizeof``, a few
    bytes whatever arrays it holds. Measured on a LocalCluster of 2 workers, 400 items:
    a 8 MB object unpickled 92 times without this, twice (once per worker) with it.
    """

    def __init__(self, value: Any):
        self.value = value
        self._bytes = _array_bytes(value)

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + self._bytes


def _call_shared(fn: Callable, shared: _Shared, item: Any) -> Any:
    return fn(shared.value, item)


def _array_bytes(value: Any, depth: int = 4, seen: set | None = None) -> int:
    """Bytes of the numpy arrays reachable from ``value`` (attributes, containers)."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth < 0:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, (list, tuple)):
        children = value
    elif hasattr(value, "__dict__"):
        children = vars(value).values()
    else:
        return 0
    return sum(_array_bytes(child, depth - 1, seen) for child in children)


def map_list(fn: Callable[[Item], Result], items: Iterable[Item], n_jobs: int | None = 1,
             verbose: int = 0, desc: str | None = None, *, unit: str = "it") -> list[Result]:
    """Return ``[fn(item) for item in items]``, computed as :func:`imap` does.

    Parameters
    ----------
    fn : callable
        Function of one item (picklable when ``n_jobs`` is not 1).
    items : iterable
        The inputs.
    n_jobs : int or None, default=1
        joblib's meaning (``None`` is 1, ``-1`` all cores); results do not depend on it.
    verbose : int, default=0
        0 is silent; 1 or more shows a tqdm progress bar.
    desc : str or None, default=None
        Label of the progress bar.
    unit : str, default="it"
        What the bar counts.

    Returns
    -------
    list
        One result per item, in input order.

    See Also
    --------
    imap : The lazy version.

    Examples
    --------
    >>> from kernelpot._parallel import map_list
    >>> map_list(len, ["a", "bb"], n_jobs=None)
    [1, 2]
    """
    return list(imap(fn, items, n_jobs=n_jobs, verbose=verbose, desc=desc, unit=unit))
