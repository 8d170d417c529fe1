"""Numba kernels contracting a kernel's mixed second derivative with Jacobian rows (private).

Both functions add ``a_pᵀ H(x_{i_p}, y_{j_q}) b_q`` to ``out[r_p, s_q]`` for every row
``a_p`` of a set of environments ``X`` and every row ``b_q`` of a set ``Y``, reading
products the caller formed with BLAS (``AB = A Bᵀ`` and friends). The rows of ``A``
come in segments of equal output row ``r``, as ``kernels._segments`` orders them. With
``r_p = p`` and ``s_q = q`` the output is the full ``(P, Q)`` matrix.

The loops are serial (no ``parallel=True``, no ``prange``): the package parallelises over
structures with joblib, and Numba threads inside joblib workers oversubscribe the cores
(STYLE.md).
"""

from numba import njit


@njit(cache=True)
def ndp_cross_hessian(out, AB, AV, UB, C, au, bv, inv_x, inv_y, a_env, b_env, seg_start,
                      seg_row, b_out, zeta, factor):
    """Normalised dot product ``(u·v)^ζ``.

    ``aᵀHb = ζ/(|x||y|) [(ζ-1) c^(ζ-2) (a·v - c a·u)(u·b - c v·b)
    + c^(ζ-1) (a·b - (a·u)(u·b) - (a·v)(v·b) + c (a·u)(v·b))]``.

    Parameters
    ----------
    out : float64 (n_out, m_out)
        Accumulated into.
    AB : float64 (P, Q)
        ``a_p · b_q``.
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
    seg_start : int64 (n_seg + 1,)
        Rows ``seg_start[s]:seg_start[s + 1]`` of A all go to output row ``seg_row[s]``.
    seg_row : int64 (n_seg,)
    b_out : int64 (Q,)
        Output column of each row of B.
    zeta : int
    factor : float
        Multiplies every term added.
    """
    Q = AB.shape[1]
    for s in range(seg_row.shape[0]):
        r = seg_row[s]
        for p in range(seg_start[s], seg_start[s + 1]):
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
                out[r, b_out[q]] += factor * zeta * inv_x[i] * inv_y[j] * value


@njit(cache=True)
def se_cross_hessian(out, AB, AY, XB, K, ax, by, a_env, b_env, seg_start, seg_row, b_out,
                     inv_ell2, factor):
    """Squared exponential: ``aᵀHb = k/ℓ² [a·b - (a·(x-y)) ((x-y)·b) / ℓ²]``.

    Parameters
    ----------
    out : float64 (n_out, m_out)
        Accumulated into.
    AB : float64 (P, Q)
        ``a_p · b_q``.
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
    a_env, b_env, seg_start, seg_row, b_out
        As in :func:`ndp_cross_hessian`.
    inv_ell2 : float
        ``1 / ℓ²``.
    factor : float
    """
    Q = AB.shape[1]
    for s in range(seg_row.shape[0]):
        r = seg_row[s]
        for p in range(seg_start[s], seg_start[s + 1]):
            i = a_env[p]
            a_x = ax[p]
            for q in range(Q):
                j = b_env[q]
                a_delta = a_x - AY[p, j]
                b_delta = XB[i, q] - by[q]
                out[r, b_out[q]] += factor * K[i, j] * inv_ell2 * (
                    AB[p, q] - a_delta * b_delta * inv_ell2)



@njit(cache=True)
def se_column_sums(Bt, B, X, Y, XB, by, K, inv_ell2, factor, b_env, b_col, envs):
    """Squared exponential: each output column's sum, before the contraction with A.

    ``aᵀH(x_i, y_j)b_q = a · Φ(i, q)`` with ``Φ = g b_q - g (δ·b_q) δ / ℓ²``, ``δ = x_i
    - y_j`` and ``g = factor k(x_i, y_j) / ℓ²`` (:func:`se_cross_hessian` regrouped:
    ``(a·δ)(δ·b)`` is ``a · δ (δ·b)``). This adds ``Φ(i, q)`` into ``Bt[k, b_col[q]]``
    for every row ``q`` of B and each environment ``i = envs[k]`` of X; the caller
    contracts ``Bt`` with the rows of A. That costs ``n_x Q D + P n_cols D`` where
    :func:`se_cross_hessian` needs ``A Bᵀ``, ``P Q D``.

    Parameters
    ----------
    Bt : float64 (n_envs, n_cols, D)
        Accumulated into.
    B : float64 (Q, D)
        Jacobian rows of Y's environments.
    X : float64 (n_x, D)
    Y : float64 (n_y, D)
    XB : float64 (n_x, Q)
        ``x_i · b_q``.
    by : float64 (Q,)
        ``b_q · y_{j_q}``.
    K : float64 (n_x, n_y)
        Kernel values.
    inv_ell2 : float
        ``1 / ℓ²``.
    factor : float
    b_env : int64 (Q,)
        Environment of each row of B.
    b_col : int64 (Q,)
        Column of Bt of each row of B.
    envs : int64 (n_envs,)
        The environments of X to sum for.
    """
    Q, D = B.shape
    for q in range(Q):
        j = b_env[q]
        col = b_col[q]
        for k in range(envs.shape[0]):
            i = envs[k]
            g = factor * K[i, j] * inv_ell2
            if g == 0.0:
                continue
            h = g * (XB[i, q] - by[q]) * inv_ell2
            for d in range(D):
                Bt[k, col, d] += g * B[q, d] - h * (X[i, d] - Y[j, d])


@njit(cache=True)
def ndp_column_sums(Bt, Y, B, V, UB, bv, C, S, CZ1, CZ2, zeta, b_env, b_col, envs):
    """Normalised dot product: each output column's sum, before the contraction with A.

    ``aᵀH(x_i, y_j)b_q`` is linear in ``a``: ``a · Φ(i, q)`` with
    ``Φ = g b_q + α v_j + β u_i``, ``g = S c^(ζ-1)``,
    ``α = S [(ζ-1) c^(ζ-2) (u_i·b_q - c b_q·v_j) - c^(ζ-1) b_q·v_j]`` and
    ``β = -S ζ c^(ζ-1) (u_i·b_q - c b_q·v_j)``, ``S = factor ζ / (|x_i||y_j|)``
    (the terms of :func:`ndp_cross_hessian` regrouped). This adds ``g b_q + α v_j`` into
    ``Bt[k, b_col[q]]`` and ``β`` into ``Y[k, b_col[q]]`` for every row ``q`` of B and
    each environment ``i = envs[k]`` of X; the caller contracts ``Bt`` with the rows of
    A (one GEMM per environment) and adds ``(a·u_i) Y``. That costs ``n_x Q D + P n_cols
    D`` where :func:`ndp_cross_hessian` needs ``A Bᵀ``, ``P Q D``.

    Parameters
    ----------
    Bt : float64 (n_envs, n_cols, D)
        Accumulated into.
    Y : float64 (n_envs, n_cols)
        Accumulated into.
    B : float64 (Q, D)
        Jacobian rows of Y's environments.
    V : float64 (n_y, D)
        Unit rows of Y.
    UB : float64 (n_x, Q)
        ``u_i · b_q``.
    bv : float64 (Q,)
        ``b_q · v_{j_q}``.
    C : float64 (n_x, n_y)
        ``c = u_i · v_j``.
    S, CZ1, CZ2 : float64 (n_x, n_y)
        ``factor ζ / (|x_i||y_j|)``, ``c^(ζ-1)`` and ``(ζ-1) c^(ζ-2)`` (0 for ζ = 1).
    zeta : int
    b_env : int64 (Q,)
        Environment of each row of B.
    b_col : int64 (Q,)
        Column of Bt (and Y) of each row of B.
    envs : int64 (n_envs,)
        The environments of X to sum for.
    """
    Q, D = B.shape
    for q in range(Q):
        j = b_env[q]
        col = b_col[q]
        b_v = bv[q]
        for k in range(envs.shape[0]):
            i = envs[k]
            s = S[i, j]
            if s == 0.0:
                continue
            cz1 = CZ1[i, j]
            diff = UB[i, q] - C[i, j] * b_v
            g = s * cz1
            alpha = s * (CZ2[i, j] * diff - cz1 * b_v)
            Y[k, col] -= s * zeta * cz1 * diff
            for d in range(D):
                Bt[k, col, d] += g * B[q, d] + alpha * V[j, d]
