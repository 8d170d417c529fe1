"""Numba kernel assembling force design rows from per-pair products (private)."""

import numpy as np
from numba import njit


@njit(cache=True)
def accumulate_force_rows(out: np.ndarray, GZ: np.ndarray, Gx: np.ndarray, alpha: np.ndarray,
                          beta: np.ndarray, centre_row: np.ndarray, moved: np.ndarray) -> None:
    """Subtract ``α[i, m] GZ[p, c, m] + β[i, m] Gx[p, c]`` from ``out[3 j + c, m]``.

    For every pair ``p`` with centre ``i = centre_row[p]`` and moved atom
    ``j = moved[p]``.

    One pass over ``GZ`` (the pairs' Jacobian blocks times the inducing
    descriptors) instead of NumPy temporaries and a sparse product.

    Parameters
    ----------
    out : float64 (3 n_atoms, m)
        Force design rows (one per force component, one column per inducing
        environment), accumulated into in place.
    GZ : float64 (n_pairs, 3, m)
        Each pair's Jacobian block contracted with the inducing descriptors.
    Gx : float64 (n_pairs, 3)
        Each pair's Jacobian block contracted with its centre's descriptor.
    alpha, beta : float64 (n_centres, m)
        Gradient coefficients of the pairs' centres.
    centre_row : int64 (n_pairs,)
        Row of each pair's centre in ``alpha``/``beta``.
    moved : int64 (n_pairs,)
        The atom each pair's Jacobian block moves.
    """
    m = GZ.shape[2]
    for p in range(GZ.shape[0]):
        i = centre_row[p]
        j = moved[p]
        for c in range(3):
            row = 3 * j + c
            g = Gx[p, c]
            for k in range(m):
                out[row, k] -= alpha[i, k] * GZ[p, c, k] + beta[i, k] * g
