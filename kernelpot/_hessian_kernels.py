"""Numba kernels contracting a kernel's mixed second derivative with Jacobian rows (private).

Both functions overwrite ``AB`` (``A @ Bᵀ``, one row per Jacobian row ``a_p`` of a
set of environments ``X`` and one column per row ``b_q`` of a set ``Y``) with
``a_pᵀ H(x_{i_p}, y_{j_q}) b_q`` in one pass, from products the caller formed with
BLAS, so that no further ``(P, Q)`` temporaries are needed.
"""

from numba import njit, prange


@njit(cache=True, parallel=True)
def ndp_cross_hessian(AB, AV, UB, C, au, bv, inv_x, inv_y, a_env, b_env, zeta):
    """Normalised dot product ``(u·v)^ζ``.

    ``aᵀHb = ζ/(|x||y|) [(ζ-1) c^(ζ-2) (a·v - c a·u)(u·b - c v·b)
    + c^(ζ-1) (a·b - (a·u)(u·b) - (a·v)(v·b) + c (a·u)(v·b))]``.

    Parameters
    ----------
    AB : float64 (P, Q)
        ``a_p · b_q``; overwritten with the result.
    AV : float64 (P, n_y)
        ``a_p · v_j`` (unit rows of Y).
    UB : float64 (n_x, Q)
        ``u_i · b_q``.
    C : float64 (n_x, n_y)
        ``u_i · v_j``.
    au : float64 (P,)
        ``a_p · u_{i_p}``.
    bv : float64 (Q,)
        ``b_q · v_{j_q}``.
    inv_x, inv_y : float64 (n_x,), (n_y,)
        Inverse norms (0 for zero descriptors).
    a_env, b_env : int64 (P,), (Q,)
        Environment of each row.
    zeta : int
    """
    P, Q = AB.shape
    for p in prange(P):
        i = a_env[p]
        ap_u = au[p]
        for q in range(Q):
            j = b_env[q]
            c = C[i, j]
            a_v = AV[p, j]
            u_b = UB[i, q]
            b_v = bv[q]
            pxpy = AB[p, q] - ap_u * u_b - a_v * b_v + c * ap_u * b_v
            value = c ** (zeta - 1) * pxpy
            if zeta > 1:
                value += (zeta - 1) * c ** (zeta - 2) * (a_v - c * ap_u) * (u_b - c * b_v)
            AB[p, q] = zeta * inv_x[i] * inv_y[j] * value


@njit(cache=True, parallel=True)
def se_cross_hessian(AB, AY, XB, K, ax, by, a_env, b_env, inv_ell2):
    """Squared exponential: ``aᵀHb = k/ℓ² [a·b - (a·(x-y)) ((x-y)·b) / ℓ²]``.

    Parameters
    ----------
    AB : float64 (P, Q)
        ``a_p · b_q``; overwritten with the result.
    AY : float64 (P, n_y)
        ``a_p · y_j``.
    XB : float64 (n_x, Q)
        ``x_i · b_q``.
    K : float64 (n_x, n_y)
        Kernel values.
    ax : float64 (P,)
        ``a_p · x_{i_p}``.
    by : float64 (Q,)
        ``b_q · y_{j_q}``.
    a_env, b_env : int64 (P,), (Q,)
    inv_ell2 : float
        ``1 / ℓ²``.
    """
    P, Q = AB.shape
    for p in prange(P):
        i = a_env[p]
        a_x = ax[p]
        for q in range(Q):
            j = b_env[q]
            a_delta = a_x - AY[p, j]
            b_delta = XB[i, q] - by[q]
            AB[p, q] = K[i, j] * inv_ell2 * (AB[p, q] - a_delta * b_delta * inv_ell2)
