"""Numba kernel folding per-image Jacobian blocks onto atoms (private)."""

from numba import njit


@njit(cache=True)
def scatter_add_blocks(out, rows, blocks):
    """``out[rows[k]] += blocks[k]`` for every ``k``, repeated rows accumulating.

    Parameters
    ----------
    out : float64 (n_rows, 3, n_features)
    rows : int64 (n_blocks,)
    blocks : float64 (n_blocks, 3, n_features)
    """
    n_features = blocks.shape[2]
    for k in range(rows.shape[0]):
        r = rows[k]
        for c in range(3):
            for f in range(n_features):
                out[r, c, f] += blocks[k, c, f]
