"""Numba kernel assembling force design rows from per-pair products (private)."""

from numba import njit


@njit(cache=True)
def accumulate_force_rows(out, GZ, Gx, alpha, beta, centre_row, moved):
    """``out[3 j + c, m] -= α[i, m] GZ[p, c, m] + β[i, m] Gx[p, c]`` for every pair.

    One pass over ``GZ`` (the pairs' Jacobian blocks times the inducing
    descriptors) instead of NumPy temporaries and a sparse product.

    Parameters
    ----------
    out : float64 (3 n_atoms, m)
    GZ : float64 (n_pairs, 3, m)
    Gx : float64 (n_pairs, 3)
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
