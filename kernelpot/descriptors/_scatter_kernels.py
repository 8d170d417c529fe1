"""Numba kernel folding per-image Jacobian blocks onto atoms (private)."""

import numpy as np
from numba import njit


@njit(cache=True)
def scatter_add_blocks(out: np.ndarray, rows: np.ndarray, blocks: np.ndarray) -> None:
    """Add ``blocks[k]`` to ``out[rows[k]]`` for every ``k``, repeated rows accumulating.

    Parameters
    ----------
    out : float64 (n_rows, 3, n_features)
        Jacobian rows, accumulated into in place.
    rows : int64 (n_blocks,)
        Row of ``out`` each block adds to.
    blocks : float64 (n_blocks, 3, n_features)
        Per-image Jacobian blocks.
    """
    n_features = blocks.shape[2]
    for k in range(rows.shape[0]):
        r = rows[k]
        for c in range(3):
            for f in range(n_features):
                out[r, c, f] += blocks[k, c, f]
