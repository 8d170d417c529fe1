"""Kernels between local-environment descriptors, with the derivatives forces need.

Each kernel is a small scikit-learn style object (constructor stores, ``get_params``,
``clone``) with:

* ``k(X, Y)`` via ``__call__(X, Y=None, eval_gradient=False)`` → ``(n_X, n_Y)`` and,
  if asked, ``dK/dθ`` ``(n_X, n_Y, n_theta)`` with respect to the log
  hyperparameters ``theta`` (scikit-learn's protocol);
* the gradient in the first argument in the compact form every kernel here has,
  ``∂k(x, y)/∂x = α(x, y) y + β(x, y) x`` (:meth:`gradient_coefficients`), which
  lets force design rows contract the descriptor Jacobian with ``Y`` and ``X`` once
  instead of forming ``(n_X, n_Y, D)`` arrays; :meth:`gradient` gives the dense form;
* the mixed second derivative ``H(x, y) = ∂²k/∂x∂y`` (:meth:`mixed_second_derivative`,
  dense, for tests) and its contraction ``a_aᵀ H(x_a, x_b) a_b`` with Jacobian rows
  (:meth:`contracted_hessian`), used by the prior variance of forces, and between
  two sets of environments (:meth:`contracted_cross_hessian`), used by the exact GP's
  force–force covariance.

The signal variance is not part of these kernels: the estimator multiplies them by
``σ_s²`` (its ``signal_variance``), so that it is optimised with the noise levels.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, clone

from kernelpot import _hessian_kernels

__all__ = ["Kernel", "NormalizedDotProduct", "Scaled", "SquaredExponential", "Sum"]

#: Norms below this count as zero descriptors (an isolated atom in ACSF).
_TINY = 1e-300


def unit_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the unit rows of ``X`` (zero rows stay zero) and the row norms."""
    norms = np.sqrt(np.einsum("nd,nd->n", X, X))
    safe = np.where(norms > _TINY, norms, 1.0)
    return X / safe[:, None] * (norms > _TINY)[:, None], norms


def inverse_norms(norms: np.ndarray) -> np.ndarray:
    """Return ``1 / norms``, 0 where a norm is 0 (a descriptor without neighbours)."""
    return np.where(norms > _TINY, 1.0 / np.where(norms > _TINY, norms, 1.0), 0.0)


class Kernel(BaseEstimator):
    """Base class: log-space hyperparameters ``theta`` with ``bounds``.

    Subclasses list their continuous hyperparameters in ``_hyperparameters`` as
    names; each has a ``<name>_bounds`` constructor argument, a pair of
    positive numbers or ``"fixed"``. They implement ``__call__``, :meth:`diag`,
    :meth:`gradient_coefficients`, :meth:`mixed_second_derivative` and
    :meth:`contracted_hessian`, and usually override the batched
    :meth:`contracted_hessian_sums` and :meth:`accumulate_cross_hessian`.
    """

    _hyperparameters: tuple[str, ...] = ()

    def _free(self) -> list[str]:
        return [h for h in self._hyperparameters if getattr(self, f"{h}_bounds") != "fixed"]

    @property
    def n_theta(self) -> int:
        """Number of free hyperparameters."""
        return len(self._free())

    @property
    def theta(self) -> np.ndarray:
        """Log of the free hyperparameters, shape (n_theta,)."""
        return np.log([float(getattr(self, h)) for h in self._free()])

    @property
    def bounds(self) -> np.ndarray:
        """Log-space bounds of ``theta``, shape (n_theta, 2)."""
        rows = []
        for h in self._free():
            low, high = getattr(self, f"{h}_bounds")
            rows.append([np.log(low), np.log(high)])
        return np.array(rows, dtype=np.float64).reshape(-1, 2)

    @property
    def theta_names(self) -> list[str]:
        """Names of the free hyperparameters, in ``theta`` order."""
        return self._free()

    def clone_with_theta(self, theta: ArrayLike) -> Kernel:
        """Return a copy with the free hyperparameters set to ``exp(theta)``.

        Parameters
        ----------
        theta : array-like of shape (n_theta,)
            Log of the free hyperparameters, in :attr:`theta_names` order.

        Returns
        -------
        Kernel
            An unfitted clone of this kernel with the new values; fixed
            hyperparameters are copied unchanged.

        Raises
        ------
        ValueError
            If ``theta`` does not have shape ``(n_theta,)``.
        """
        twin = clone(self)
        theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
        names = self._free()
        if theta.shape != (len(names),):
            raise ValueError(f"{type(self).__name__}: theta must have shape ({len(names)},); "
                             f"got {theta.shape}")
        twin.set_params(**{h: float(np.exp(t)) for h, t in zip(names, theta, strict=True)})
        return twin

    def check(self) -> None:
        """Validate the hyperparameters.

        Raises
        ------
        ValueError
            If a hyperparameter is not a number > 0, or its bounds are neither
            ``"fixed"`` nor a pair ``0 < low < high``.
        """
        for h in self._hyperparameters:
            value = getattr(self, h)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{type(self).__name__}: {h} must be a number > 0; "
                                 f"got {value!r}")
            b = getattr(self, f"{h}_bounds")
            if isinstance(b, str):
                if b != "fixed":
                    raise ValueError(f"{type(self).__name__}: {h}_bounds must be a pair or "
                                     f"'fixed'; got {b!r}")
                continue
            if len(b) != 2 or not 0 < b[0] < b[1]:
                raise ValueError(f"{type(self).__name__}: {h}_bounds must be (low, high) with "
                                 f"0 < low < high; got {b!r}")

    # -- composition: ``k1 + k2`` and ``c * k`` --------------------------------------
    def __add__(self, other: object) -> Sum:
        """Return ``Sum(self, other)`` for another kernel."""
        if not isinstance(other, Kernel):
            return NotImplemented
        return Sum(self, other)

    def __mul__(self, other: object) -> Scaled:
        """Return ``Scaled(self, other)`` for a real number ``other``."""
        if isinstance(other, bool) or not isinstance(other, numbers.Real):
            return NotImplemented
        return Scaled(self, float(other))

    __rmul__ = __mul__

    # -- to implement ----------------------------------------------------------------
    def __call__(self, X: ArrayLike, Y: ArrayLike | None = None,
                 eval_gradient: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return the kernel matrix ``K[a, b] = k(X[a], Y[b])``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors, one row per environment.
        Y : array-like of shape (n_Y, D), optional
            Second set of descriptors; ``None`` means ``X``.
        eval_gradient : bool, default=False
            Also return the derivative with respect to ``theta``.

        Returns
        -------
        K : ndarray of shape (n_X, n_Y)
            Kernel values.
        K_gradient : ndarray of shape (n_X, n_Y, n_theta)
            ``∂K/∂theta`` (log hyperparameters); only with ``eval_gradient=True``.
        """
        raise NotImplementedError

    def diag(self, X: ArrayLike) -> np.ndarray:
        """Return ``k(x, x)`` for every row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors.

        Returns
        -------
        ndarray of shape (n_X,)
            The diagonal of ``k(X, X)``, without forming the matrix.
        """
        raise NotImplementedError

    def gradient_coefficients(self, X: ArrayLike, Y: ArrayLike,
                              eval_gradient: bool = False) -> tuple[np.ndarray, ...]:
        """Return ``(α, β)`` with ``∂k(x, y)/∂x = α y + β x``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors the derivative is taken in.
        Y : array-like of shape (n_Y, D)
            Second set of descriptors.
        eval_gradient : bool, default=False
            Also return the derivatives of ``α`` and ``β`` with respect to ``theta``.

        Returns
        -------
        alpha, beta : ndarray of shape (n_X, n_Y)
            Coefficients of ``y`` and of ``x`` in the gradient.
        alpha_gradient, beta_gradient : ndarray of shape (n_X, n_Y, n_theta)
            ``dα/dθ`` and ``dβ/dθ``; only with ``eval_gradient=True``.
        """
        raise NotImplementedError

    def gradient(self, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
        """Return the dense gradient ``∂k(x, y)/∂x``, for small inputs and tests.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors the derivative is taken in.
        Y : array-like of shape (n_Y, D)
            Second set of descriptors.

        Returns
        -------
        ndarray of shape (n_X, n_Y, D)
            ``G[a, b] = α[a, b] Y[b] + β[a, b] X[a]``
            (:meth:`gradient_coefficients`).
        """
        X, Y = _as_2d(X), _as_2d(Y)
        alpha, beta = self.gradient_coefficients(X, Y)
        return alpha[:, :, None] * Y[None, :, :] + beta[:, :, None] * X[:, None, :]

    def mixed_second_derivative(self, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
        """Return the dense ``∂²k(x, y)/∂x∂y``, for small inputs and tests.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors of the first argument.
        Y : array-like of shape (n_Y, D)
            Descriptors of the second argument.

        Returns
        -------
        ndarray of shape (n_X, n_Y, D, D)
            ``H[a, b, d, e] = ∂²k(X[a], Y[b]) / ∂x_d ∂y_e``.
        """
        raise NotImplementedError

    def contracted_hessian(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return ``M[a, b] = A[a]ᵀ H(X[a], X[b]) A[b]`` with ``H = ∂²k/∂x∂y``.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, D)
            One vector per descriptor (a row of a descriptor Jacobian).

        Returns
        -------
        ndarray of shape (n, n)
            The contracted mixed second derivatives.
        """
        raise NotImplementedError

    def contracted_cross_hessian(self, X: ArrayLike, A: ArrayLike, a_env: ArrayLike,
                                 Y: ArrayLike, B: ArrayLike, b_env: ArrayLike) -> np.ndarray:
        """Return ``M[p, q] = A[p]ᵀ H(X[a_env[p]], Y[b_env[q]]) B[q]``, ``H = ∂²k/∂x∂y``.

        The force–force covariance of the exact GP is a sum of these over the
        Jacobian rows of two structures. This default forms ``H`` densely (small
        inputs only); the kernels here override it with ``O(P Q + (P + Q) D n)`` work
        after the BLAS products ``A Bᵀ``, ``A Yᵀ``, ``X Bᵀ``.

        Parameters
        ----------
        X : array-like of shape (n_x, D)
            Descriptors of the first set of environments.
        A : array-like of shape (P, D)
            Rows of descriptor Jacobians, row ``p`` belonging to environment ``a_env[p]``.
        a_env : array-like of int of shape (P,)
            Row of ``X`` each row of ``A`` belongs to.
        Y : array-like of shape (n_y, D)
            Descriptors of the second set of environments.
        B : array-like of shape (Q, D)
            Rows of descriptor Jacobians, row ``q`` belonging to environment ``b_env[q]``.
        b_env : array-like of int of shape (Q,)
            Row of ``Y`` each row of ``B`` belongs to.

        Returns
        -------
        ndarray of shape (P, Q)
            The contracted mixed second derivatives.

        Raises
        ------
        ValueError
            If feature lengths differ or an index in ``a_env``/``b_env`` is out of range.
        """
        out = np.zeros((len(A), len(B)))
        self.accumulate_cross_hessian(out, X, A, a_env, np.arange(len(A)), Y, B, b_env,
                                      np.arange(len(B)))
        return out

    def accumulate_cross_hessian(self, out: np.ndarray, X: ArrayLike, A: ArrayLike,
                                 a_env: ArrayLike, a_out: ArrayLike, Y: ArrayLike,
                                 B: ArrayLike, b_env: ArrayLike, b_out: ArrayLike,
                                 factor: float = 1.0) -> None:
        """Add ``A[p]ᵀ H(X[a_env[p]], Y[b_env[q]]) B[q]`` to ``out[a_out[p], b_out[q]]``.

        :meth:`contracted_cross_hessian` summed into the rows and columns of ``out``
        (force components: the rows of one component are the centres its atom
        moves) without the ``(P, Q)`` intermediate. This default forms ``H`` densely.

        Parameters
        ----------
        out : ndarray of shape (n_out, m_out)
            Accumulated into, in place.
        X : array-like of shape (n_x, D)
            Descriptors of the first set of environments.
        A : array-like of shape (P, D)
            Jacobian rows, row ``p`` belonging to environment ``a_env[p]``.
        a_env : array-like of int of shape (P,)
            Row of ``X`` each row of ``A`` belongs to.
        a_out : array-like of int of shape (P,)
            Row of ``out`` each row of ``A`` adds into.
        Y : array-like of shape (n_y, D)
            Descriptors of the second set of environments.
        B : array-like of shape (Q, D)
            Jacobian rows, row ``q`` belonging to environment ``b_env[q]``.
        b_env : array-like of int of shape (Q,)
            Row of ``Y`` each row of ``B`` belongs to.
        b_out : array-like of int of shape (Q,)
            Column of ``out`` each row of ``B`` adds into.
        factor : float, default=1.0
            Multiplies what is added (the weight of a term of a composite kernel).

        Raises
        ------
        ValueError
            If feature lengths differ or an index in ``a_env``/``b_env`` is out of range.
        """
        X, A, Y, B, a_env, b_env = _cross_inputs(X, A, a_env, Y, B, b_env)
        H = self.mixed_second_derivative(X, Y)
        M = np.einsum("pd,pqde,qe->pq", A, H[a_env][:, b_env], B)
        np.add.at(out, (np.asarray(a_out)[:, None], np.asarray(b_out)[None, :]), factor * M)

    def contracted_hessian_sums(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return ``s[c] = Σ_ab A[a, c]ᵀ H(X[a], X[b]) A[b, c]`` for every ``c``.

        The prior variance of a force component is such a sum over the centres whose
        descriptors the atom moves; kernels override this with one batched
        evaluation for the three components.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, k, D)
            ``k`` Jacobian rows per descriptor (``k = 3``: one per force component).

        Returns
        -------
        ndarray of shape (k,)
            The sums over ``a`` and ``b``.
        """
        return np.array([self.contracted_hessian(X, A[:, c, :]).sum()
                         for c in range(A.shape[1])])


def _cross_inputs(X, A, a_env, Y, B, b_env):
    """Return validated float64 C-contiguous inputs of :meth:`Kernel.contracted_cross_hessian`."""
    X, A, Y, B = (np.ascontiguousarray(_as_2d(M)) for M in (X, A, Y, B))
    a_env = np.ascontiguousarray(a_env, dtype=np.int64)
    b_env = np.ascontiguousarray(b_env, dtype=np.int64)
    if A.shape[1] != X.shape[1] or B.shape[1] != Y.shape[1] or X.shape[1] != Y.shape[1]:
        raise ValueError(f"contracted_cross_hessian: feature lengths differ: X {X.shape}, "
                         f"A {A.shape}, Y {Y.shape}, B {B.shape}")
    if a_env.shape != (len(A),) or b_env.shape != (len(B),):
        raise ValueError("contracted_cross_hessian: a_env and b_env need one index per row "
                         f"of A and B; got {a_env.shape} for {len(A)} rows and {b_env.shape} "
                         f"for {len(B)} rows")
    for env, n, name in ((a_env, len(X), "a_env"), (b_env, len(Y), "b_env")):
        if env.size and (env.min() < 0 or env.max() >= n):
            raise ValueError(f"contracted_cross_hessian: {name} indexes outside 0..{n - 1}")
    return X, A, Y, B, a_env, b_env


def _segments(a_out):
    """Return the order of the rows of A by output row, segment starts and segment rows."""
    a_out = np.asarray(a_out, dtype=np.int64)
    order = np.argsort(a_out, kind="stable")
    ordered = a_out[order]
    starts = np.flatnonzero(np.diff(ordered)) + 1
    seg_start = np.concatenate([[0], starts, [len(a_out)]]).astype(np.int64)
    seg_row = ordered[seg_start[:-1]] if len(a_out) else np.zeros(0, dtype=np.int64)
    return order, seg_start, np.ascontiguousarray(seg_row)


#: Most values held at once by the per-column sums of
#: :meth:`NormalizedDotProduct.accumulate_cross_hessian` (128 MB): each chunk of
#: environments reads all of B's rows once, so few chunks (measured: an ethanol frame
#: against 100 training frames, 2,700 columns of 855 features per environment).
_COLUMN_SUM_ENTRIES = 16_000_000


def _column_sums_pay(n_envs: int, P: int, Q: int, n_columns: int, D: int) -> bool:
    """Return whether summing B's rows per output column first costs less.

    The direct contraction forms ``A Bᵀ`` (``P Q D`` in a GEMM) and a loop of about 25
    operations over each of its ``P Q`` entries; the column sums cost ``2 n_envs Q D``
    in a Numba loop (about four times a GEMM's time per operation) and ``P n_columns D``
    in GEMMs.
    """
    direct = P * Q * (D + 25.0)
    by_columns = 8.0 * n_envs * Q * D + P * n_columns * D
    return by_columns < direct


def _as_2d(X) -> np.ndarray:
    """Return ``X`` as a 2-D float64 array; raise ``ValueError`` otherwise."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"kernel input must be 2-D (n_samples, n_features); got shape {X.shape}")
    return X


class NormalizedDotProduct(Kernel):
    """``k(x, y) = (x̂ · ŷ)^ζ`` with ``x̂ = x / |x|`` (SOAP-GAP's kernel).

    Parameters
    ----------
    zeta : int, default=2
        Exponent (a positive integer; fixed, not optimised).

    Notes
    -----
    With ``u = x̂``, ``v = ŷ``, ``c = u · v`` and ``P_x = I - u uᵀ``:

    * ``∂k/∂x = ζ c^(ζ-1) P_x v / |x|``, i.e. ``α = ζ c^(ζ-1) / (|x||y|)`` and
      ``β = -ζ c^ζ / |x|²``;
    * ``∂²k/∂x∂y = ζ / (|x||y|) [(ζ-1) c^(ζ-2) P_x v (P_y u)ᵀ + c^(ζ-1) P_x P_y]``,
      ``P_x P_y = I - u uᵀ - v vᵀ + c u vᵀ``: a scaled identity plus rank-three
      terms, so contractions with Jacobians never form D × D matrices.

    A zero descriptor (an atom without neighbours) has ``k = 0`` and zero gradient.

    References
    ----------
    .. [1] A. P. Bartók, R. Kondor and G. Csányi, Phys. Rev. B 87, 184115 (2013).
       https://doi.org/10.1103/PhysRevB.87.184115
    """

    def __init__(self, zeta: int = 2) -> None:
        self.zeta = zeta

    def check(self) -> None:
        """Validate ``zeta``.

        Raises
        ------
        ValueError
            If ``zeta`` is not an int >= 1.
        """
        if isinstance(self.zeta, bool) or not isinstance(self.zeta, numbers.Integral) \
                or self.zeta < 1:
            raise ValueError(f"NormalizedDotProduct: zeta must be an int >= 1; got {self.zeta!r}")

    @staticmethod
    def _normalise(X):
        """Return the unit rows of ``X`` (zero rows stay zero) and the row norms."""
        return unit_rows(X)

    def _unit(self, X):
        """Return unit rows and norms, cached for read-only arrays (fitted inducing sets)."""
        if X.flags.writeable:
            return self._normalise(X)
        key = (id(X), X.__array_interface__["data"][0], X.shape)
        cache = self.__dict__.setdefault("_unit_cache", {})
        if key not in cache:
            if len(cache) > 32:
                cache.clear()
            cache[key] = (X, *self._normalise(X))  # holding X keeps its id unique
        return cache[key][1], cache[key][2]

    def __call__(self, X: ArrayLike, Y: ArrayLike | None = None,
                 eval_gradient: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return ``K[a, b] = (x̂_a · ŷ_b)^ζ``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors, one row per environment.
        Y : array-like of shape (n_Y, D), optional
            Second set of descriptors; ``None`` means ``X``.
        eval_gradient : bool, default=False
            Also return the derivative with respect to ``theta``.

        Returns
        -------
        K : ndarray of shape (n_X, n_Y)
            Kernel values.
        K_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            empty, ``zeta`` is not optimised.
        """
        X = _as_2d(X)
        Y = X if Y is None else _as_2d(Y)
        U, _ = self._unit(X)
        V, _ = self._unit(Y)
        K = (U @ V.T) ** self.zeta
        if eval_gradient:
            return K, np.zeros(K.shape + (0,))
        return K

    def diag(self, X: ArrayLike) -> np.ndarray:
        """Return ``k(x, x)``: 1, or 0 for a zero descriptor.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors.

        Returns
        -------
        ndarray of shape (n_X,)
            Ones, zero where a row of ``X`` is zero.
        """
        _, norms = self._unit(_as_2d(X))
        return (norms > _TINY).astype(np.float64)

    def gradient_coefficients(self, X: ArrayLike, Y: ArrayLike,
                              eval_gradient: bool = False) -> tuple[np.ndarray, ...]:
        """Return ``α = ζ c^(ζ-1) / (|x||y|)`` and ``β = -ζ c^ζ / |x|²``, ``c = x̂ · ŷ``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors the derivative is taken in.
        Y : array-like of shape (n_Y, D)
            Second set of descriptors.
        eval_gradient : bool, default=False
            Also return the derivatives of ``α`` and ``β`` with respect to ``theta``.

        Returns
        -------
        alpha, beta : ndarray of shape (n_X, n_Y)
            Coefficients of ``y`` and of ``x`` in ``∂k(x, y)/∂x = α y + β x``.
        alpha_gradient, beta_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            empty, ``zeta`` is not optimised.
        """
        X, Y = _as_2d(X), _as_2d(Y)
        U, nx = self._unit(X)
        V, ny = self._unit(Y)
        C = U @ V.T
        z = self.zeta
        inv_x = inverse_norms(nx)
        inv_y = inverse_norms(ny)
        c_zm1 = C ** (z - 1)
        alpha = z * c_zm1 * inv_x[:, None] * inv_y[None, :]
        beta = -z * c_zm1 * C * (inv_x**2)[:, None]
        if eval_gradient:
            empty = np.zeros(alpha.shape + (0,))
            return alpha, beta, empty, empty
        return alpha, beta

    def mixed_second_derivative(self, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
        """Return the dense ``∂²k/∂x∂y`` (class Notes), for small inputs and tests.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors of the first argument.
        Y : array-like of shape (n_Y, D)
            Descriptors of the second argument.

        Returns
        -------
        ndarray of shape (n_X, n_Y, D, D)
            ``H[a, b, d, e] = ∂²k(X[a], Y[b]) / ∂x_d ∂y_e``.
        """
        X, Y = _as_2d(X), _as_2d(Y)
        U, nx = self._unit(X)
        V, ny = self._unit(Y)
        z = self.zeta
        n_features = X.shape[1]
        eye = np.eye(n_features)
        out = np.zeros((len(X), len(Y), n_features, n_features))
        for a in range(len(X)):
            for b in range(len(Y)):
                if nx[a] <= _TINY or ny[b] <= _TINY:
                    continue
                u, v = U[a], V[b]
                c = u @ v
                pxv = v - c * u
                pyu = u - c * v
                pxpy = eye - np.outer(u, u) - np.outer(v, v) + c * np.outer(u, v)
                first = (z - 1) * c ** (z - 2) * np.outer(pxv, pyu) if z > 1 else 0.0
                out[a, b] = z / (nx[a] * ny[b]) * (first + c ** (z - 1) * pxpy)
        return out

    def contracted_hessian(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return ``A[a]ᵀ H(X[a], X[b]) A[b]`` from inner products, without ``D × D`` matrices.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, D)
            One vector per descriptor (a row of a descriptor Jacobian).

        Returns
        -------
        ndarray of shape (n, n)
            ``M[a, b] = A[a]ᵀ H(X[a], X[b]) A[b]``, ``H = ∂²k/∂x∂y``.
        """
        X, A = _as_2d(X), _as_2d(A)
        U, nx = self._unit(X)
        z = self.zeta
        C = U @ U.T  # c[a, b] = u_a · u_b
        AU = A @ U.T  # AU[a, b] = A_a · u_b
        AA = A @ A.T
        au = np.diag(AU)  # A_a · u_a
        t1 = AU - au[:, None] * C  # A_aᵀ P_a u_b
        t2 = AU.T - au[None, :] * C  # A_bᵀ P_b u_a
        pxpy = AA - au[:, None] * AU.T - AU * au[None, :] + C * au[:, None] * au[None, :]
        inv = inverse_norms(nx)
        scale = z * inv[:, None] * inv[None, :]
        M = C ** (z - 1) * pxpy
        if z > 1:
            M = M + (z - 1) * C ** (z - 2) * t1 * t2
        return scale * M

    def contracted_hessian_sums(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return the sums of :meth:`contracted_hessian` for all ``k`` Jacobian rows at once.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, k, D)
            ``k`` Jacobian rows per descriptor (``k = 3``: one per force component).

        Returns
        -------
        ndarray of shape (k,)
            ``s[c] = Σ_ab A[a, c]ᵀ H(X[a], X[b]) A[b, c]``.
        """
        X = _as_2d(X)
        A = np.asarray(A, dtype=np.float64)
        U, nx = self._unit(X)
        z = self.zeta
        At = A.transpose(1, 0, 2)  # (k, n, D)
        C = U @ U.T
        AU = At @ U.T  # (k, n, n): AU[c, a, b] = A_ac · u_b
        AA = At @ At.transpose(0, 2, 1)
        au = np.einsum("caa->ca", AU)  # (k, n)
        AUt = AU.transpose(0, 2, 1)
        t1 = AU - au[:, :, None] * C
        t2 = AUt - au[:, None, :] * C
        pxpy = AA - au[:, :, None] * AUt - AU * au[:, None, :] \
            + C * au[:, :, None] * au[:, None, :]
        inv = inverse_norms(nx)
        scale = z * inv[:, None] * inv[None, :]
        M = C ** (z - 1) * pxpy
        if z > 1:
            M = M + (z - 1) * C ** (z - 2) * t1 * t2
        return np.einsum("ab,cab->c", scale, M)

    def accumulate_cross_hessian(self, out: np.ndarray, X: ArrayLike, A: ArrayLike,
                                 a_env: ArrayLike, a_out: ArrayLike, Y: ArrayLike,
                                 B: ArrayLike, b_env: ArrayLike, b_out: ArrayLike,
                                 factor: float = 1.0) -> None:
        """Add ``A[p]ᵀ H(X[a_env[p]], Y[b_env[q]]) B[q]`` into ``out`` (Numba kernel).

        Parameters
        ----------
        out : ndarray of shape (n_out, m_out)
            Accumulated into, in place.
        X, A, a_env, a_out, Y, B, b_env, b_out : array-like
            Environments, Jacobian rows and their output rows and columns, as in
            :meth:`Kernel.accumulate_cross_hessian`.
        factor : float, default=1.0
            Multiplies what is added.
        """
        X, A, Y, B, a_env, b_env = _cross_inputs(X, A, a_env, Y, B, b_env)
        U, nx = self._unit(X)
        V, ny = self._unit(Y)
        inv_x = inverse_norms(nx)
        inv_y = inverse_norms(ny)
        # B · v at B's own environment: B · y / |y|, cached for a fitted model's rows
        b_dot = row_dots(B, Y, b_env) * inv_y[b_env]
        b_out = np.asarray(b_out, dtype=np.int64)
        columns, b_col = np.unique(b_out, return_inverse=True)
        envs = np.unique(a_env)
        if _column_sums_pay(len(envs), len(A), len(B), len(columns), X.shape[1]):
            self._accumulate_by_columns(out, U, inv_x, A, a_env,
                                        np.asarray(a_out, dtype=np.int64), envs, V, inv_y, B,
                                        b_env, b_dot, columns, b_col, factor)
            return
        order, seg_start, seg_row = _segments(a_out)
        A, a_env = A[order], a_env[order]
        _hessian_kernels.ndp_cross_hessian(
            out, A @ B.T, A @ V.T, U @ B.T, U @ V.T, np.einsum("pd,pd->p", A, U[a_env]),
            b_dot, inv_x, inv_y, a_env, b_env, seg_start,
            seg_row, np.ascontiguousarray(b_out, dtype=np.int64), int(self.zeta),
            float(factor))

    def _accumulate_by_columns(self, out, U, inv_x, A, a_env, a_out, envs, V, inv_y, B,
                               b_env, b_dot, columns, b_col, factor):
        """:meth:`accumulate_cross_hessian` summed over B's rows of each column first.

        ``Σ_q aᵀH(x_i, y_j)b_q`` over the rows ``q`` of one output column is ``a · Bt[i,
        column]`` (:func:`kernelpot._hessian_kernels.ndp_column_sums`): one GEMM per
        environment of X contracts its rows of A with it. The environments are taken in
        chunks whose sums hold at most :data:`_COLUMN_SUM_ENTRIES` values (one
        environment at least, whatever its sums hold).
        """
        if not len(A) or not len(B):
            return
        z = int(self.zeta)
        C = U @ V.T
        S = float(factor) * z * inv_x[:, None] * inv_y[None, :]
        CZ1 = C ** (z - 1)
        CZ2 = (z - 1) * C ** (z - 2) if z > 1 else np.zeros_like(C)
        UB = U @ B.T
        b_env = np.ascontiguousarray(b_env, dtype=np.int64)
        b_col = np.ascontiguousarray(b_col, dtype=np.int64)

        def fill(chunk, Bt, Yc):
            _hessian_kernels.ndp_column_sums(Bt, Yc, B, V, UB, b_dot, C, S, CZ1, CZ2, z,
                                             b_env, b_col, chunk)

        _contract_column_sums(out, A, a_env, a_out, envs, columns, fill, U)


def _contract_column_sums(out: np.ndarray, A: np.ndarray, a_env: np.ndarray,
                          a_out: np.ndarray, envs: np.ndarray, columns: np.ndarray,
                          fill: Callable, U: np.ndarray | None = None) -> None:
    """Add ``A`` contracted with per-column sums into ``out`` (the kernels' column path).

    For each chunk of ``envs``, ``fill(chunk, Bt, Yc)`` adds into zeroed ``Bt`` (chunk
    × columns × D) and ``Yc`` (chunk × columns) the sums over B's rows of each output
    column; the rows ``p`` of A of environment ``i`` then add ``A_p · Bt[i, c]`` (and,
    with ``U``, ``(A_p · U[i]) Yc[i, c]``) into ``out[a_out[p], columns[c]]``. The
    environments are taken in chunks whose sums hold at most
    :data:`_COLUMN_SUM_ENTRIES` values (one environment at least, whatever its sums hold).
    """
    order = np.argsort(a_env, kind="stable")
    bounds = np.searchsorted(a_env[order], np.r_[envs, np.inf])
    D = A.shape[1]
    step = min(len(envs), max(1, _COLUMN_SUM_ENTRIES // max(1, len(columns) * D)))
    # B's columns are usually a block of out's: a slice, not an index array
    span = slice(columns[0], columns[-1] + 1) \
        if columns[-1] - columns[0] + 1 == len(columns) else columns
    sums, scalars = np.empty((step, len(columns), D)), np.empty((step, len(columns)))
    for start in range(0, len(envs), step):
        chunk = np.ascontiguousarray(envs[start:start + step], dtype=np.int64)
        Bt, Yc = sums[:len(chunk)], scalars[:len(chunk)]
        Bt.fill(0.0)
        Yc.fill(0.0)
        fill(chunk, Bt, Yc)
        for k, i in enumerate(chunk):
            rows = order[bounds[start + k]:bounds[start + k + 1]]
            A_i = A[rows]
            R = A_i @ Bt[k].T
            if U is not None:
                R += np.outer(A_i @ U[i], Yc[k])
            r_out = a_out[rows]
            if len(np.unique(r_out)) < len(r_out):  # rows sharing an output row
                np.add.at(out, (r_out[:, None], columns[None, :]), R)
            elif isinstance(span, slice):
                out[r_out, span] += R
            else:
                out[np.ix_(r_out, columns)] += R


_ROW_DOT_CACHE: dict = {}


def _root(a: np.ndarray) -> np.ndarray:
    """Return the array that owns ``a``'s memory (``a`` itself if it owns it)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def row_dots(A: np.ndarray, X: np.ndarray, env: np.ndarray) -> np.ndarray:
    """Return ``Σ_d A[p, d] X[env[p], d]`` for every row ``p`` of ``A``.

    Cached when all three arrays (and the arrays owning their memory) are read-only,
    as a fitted exact model's training Jacobian rows, descriptors and row-to-environment
    map are: one prediction per MD step would otherwise gather every training row
    again (ethanol n = 100: 16,000 rows of 855 features per element and call). The
    cache holds weak references only: it keeps no model's arrays alive.

    Parameters
    ----------
    A : ndarray of shape (P, D)
    X : ndarray of shape (n, D)
    env : ndarray of int of shape (P,)

    Returns
    -------
    ndarray of shape (P,)
    """
    roots = [_root(a) for a in (A, X, env)]
    if any(a.flags.writeable for a in (A, X, env, *roots)):
        return np.einsum("pd,pd->p", A, X[env])
    key = tuple((id(root), a.__array_interface__["data"][0], a.shape, a.strides)
                for a, root in zip((A, X, env), roots, strict=True))
    hit = _ROW_DOT_CACHE.get(key)
    if hit is not None and all(ref() is root for ref, root in zip(hit[0], roots,
                                                                  strict=True)):
        return hit[1]
    value = np.einsum("pd,pd->p", A, X[env])
    value.setflags(write=False)
    if len(_ROW_DOT_CACHE) > 32:
        _ROW_DOT_CACHE.clear()
    _ROW_DOT_CACHE[key] = (tuple(weakref.ref(root) for root in roots), value)
    return value


class SquaredExponential(Kernel):
    """``k(x, y) = exp(-|x - y|² / (2 ℓ²))``.

    Parameters
    ----------
    length_scale : float, default=1.0
        ``ℓ``, in the units of the descriptor.
    length_scale_bounds : pair of float or "fixed", default=(1e-2, 1e3)
        Bounds of ``ℓ`` for the likelihood optimisation.

    Notes
    -----
    With ``δ = x - y``: ``∂k/∂x = -k δ / ℓ²`` (``α = k / ℓ²``, ``β = -k / ℓ²``),
    ``∂²k/∂x∂y = k / ℓ² (I - δ δᵀ / ℓ²)``, ``∂k/∂ log ℓ = k |δ|² / ℓ²``.
    """

    _hyperparameters = ("length_scale",)

    def __init__(self, length_scale: float = 1.0,
                 length_scale_bounds: tuple[float, float] | str = (1e-2, 1e3)) -> None:
        self.length_scale = length_scale
        self.length_scale_bounds = length_scale_bounds

    @staticmethod
    def _sq_dist(X, Y):
        """Return the squared distances ``|x_a - y_b|²``, clipped at 0, shape (n_X, n_Y)."""
        d2 = (np.einsum("nd,nd->n", X, X)[:, None] + np.einsum("nd,nd->n", Y, Y)[None, :]
              - 2.0 * X @ Y.T)
        return np.maximum(d2, 0.0)

    def __call__(self, X: ArrayLike, Y: ArrayLike | None = None,
                 eval_gradient: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return ``K[a, b] = exp(-|x_a - y_b|² / (2 ℓ²))``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors, one row per environment.
        Y : array-like of shape (n_Y, D), optional
            Second set of descriptors; ``None`` means ``X``.
        eval_gradient : bool, default=False
            Also return the derivative with respect to ``theta``.

        Returns
        -------
        K : ndarray of shape (n_X, n_Y)
            Kernel values.
        K_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            ``∂K/∂ log ℓ = K |δ|² / ℓ²`` (empty if ``ℓ`` is fixed).
        """
        X = _as_2d(X)
        Y = X if Y is None else _as_2d(Y)
        ell2 = float(self.length_scale) ** 2
        d2 = self._sq_dist(X, Y)
        K = np.exp(-0.5 * d2 / ell2)
        if eval_gradient:
            if self.n_theta == 0:
                return K, np.zeros(K.shape + (0,))
            return K, (K * d2 / ell2)[:, :, None]
        return K

    def diag(self, X: ArrayLike) -> np.ndarray:
        """Return ``k(x, x) = 1`` for every row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors.

        Returns
        -------
        ndarray of shape (n_X,)
            Ones.
        """
        return np.ones(len(_as_2d(X)))

    def gradient_coefficients(self, X: ArrayLike, Y: ArrayLike,
                              eval_gradient: bool = False) -> tuple[np.ndarray, ...]:
        """Return ``α = k / ℓ²`` and ``β = -α``: ``∂k/∂x = -k (x - y) / ℓ²``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors the derivative is taken in.
        Y : array-like of shape (n_Y, D)
            Second set of descriptors.
        eval_gradient : bool, default=False
            Also return the derivatives of ``α`` and ``β`` with respect to ``theta``.

        Returns
        -------
        alpha, beta : ndarray of shape (n_X, n_Y)
            Coefficients of ``y`` and of ``x`` in ``∂k(x, y)/∂x = α y + β x``.
        alpha_gradient, beta_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            ``dα/d log ℓ = α (|δ|² / ℓ² - 2)`` and its negative (empty if ``ℓ`` is fixed).
        """
        X, Y = _as_2d(X), _as_2d(Y)
        ell2 = float(self.length_scale) ** 2
        d2 = self._sq_dist(X, Y)
        K = np.exp(-0.5 * d2 / ell2)
        alpha = K / ell2
        if eval_gradient:
            if self.n_theta == 0:
                empty = np.zeros(alpha.shape + (0,))
                return alpha, -alpha, empty, empty
            dalpha = (alpha * (d2 / ell2 - 2.0))[:, :, None]
            return alpha, -alpha, dalpha, -dalpha
        return alpha, -alpha

    def mixed_second_derivative(self, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
        """Return the dense ``∂²k/∂x∂y = k / ℓ² (I - δ δᵀ / ℓ²)``, for small inputs and tests.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors of the first argument.
        Y : array-like of shape (n_Y, D)
            Descriptors of the second argument.

        Returns
        -------
        ndarray of shape (n_X, n_Y, D, D)
            ``H[a, b, d, e] = ∂²k(X[a], Y[b]) / ∂x_d ∂y_e``.
        """
        X, Y = _as_2d(X), _as_2d(Y)
        ell2 = float(self.length_scale) ** 2
        K = self(X, Y)
        delta = X[:, None, :] - Y[None, :, :]
        eye = np.eye(X.shape[1])
        return (K / ell2)[:, :, None, None] * (
            eye - delta[:, :, :, None] * delta[:, :, None, :] / ell2)

    def contracted_hessian(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return ``A[a]ᵀ H(X[a], X[b]) A[b]`` from inner products, without ``D × D`` matrices.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, D)
            One vector per descriptor (a row of a descriptor Jacobian).

        Returns
        -------
        ndarray of shape (n, n)
            ``M[a, b] = A[a]ᵀ H(X[a], X[b]) A[b]``, ``H = ∂²k/∂x∂y``.
        """
        X, A = _as_2d(X), _as_2d(A)
        ell2 = float(self.length_scale) ** 2
        K = self(X, X)
        AX = A @ X.T  # AX[a, b] = A_a · x_b
        ax = np.diag(AX)
        a_delta = ax[:, None] - AX  # A_a · (x_a - x_b)
        b_delta = AX.T - ax[None, :]  # A_b · (x_a - x_b)
        return K / ell2 * (A @ A.T - a_delta * b_delta / ell2)

    def contracted_hessian_sums(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return the sums of :meth:`contracted_hessian` for all ``k`` Jacobian rows at once.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, k, D)
            ``k`` Jacobian rows per descriptor (``k = 3``: one per force component).

        Returns
        -------
        ndarray of shape (k,)
            ``s[c] = Σ_ab A[a, c]ᵀ H(X[a], X[b]) A[b, c]``.
        """
        X = _as_2d(X)
        At = np.asarray(A, dtype=np.float64).transpose(1, 0, 2)  # (k, n, D)
        ell2 = float(self.length_scale) ** 2
        K = self(X, X)
        AX = At @ X.T  # (k, n, n)
        ax = np.einsum("caa->ca", AX)
        a_delta = ax[:, :, None] - AX
        b_delta = AX.transpose(0, 2, 1) - ax[:, None, :]
        AA = At @ At.transpose(0, 2, 1)
        return np.einsum("ab,cab->c", K / ell2, AA - a_delta * b_delta / ell2)

    def accumulate_cross_hessian(self, out: np.ndarray, X: ArrayLike, A: ArrayLike,
                                 a_env: ArrayLike, a_out: ArrayLike, Y: ArrayLike,
                                 B: ArrayLike, b_env: ArrayLike, b_out: ArrayLike,
                                 factor: float = 1.0) -> None:
        """Add ``A[p]ᵀ H(X[a_env[p]], Y[b_env[q]]) B[q]`` into ``out`` (Numba kernel).

        Parameters
        ----------
        out : ndarray of shape (n_out, m_out)
            Accumulated into, in place.
        X, A, a_env, a_out, Y, B, b_env, b_out : array-like
            Environments, Jacobian rows and their output rows and columns, as in
            :meth:`Kernel.accumulate_cross_hessian`.
        factor : float, default=1.0
            Multiplies what is added.
        """
        X, A, Y, B, a_env, b_env = _cross_inputs(X, A, a_env, Y, B, b_env)
        inv_ell2 = 1.0 / float(self.length_scale) ** 2
        b_out = np.asarray(b_out, dtype=np.int64)
        columns, b_col = np.unique(b_out, return_inverse=True)
        envs = np.unique(a_env)
        if len(A) and len(B) and _column_sums_pay(len(envs), len(A), len(B), len(columns),
                                                  X.shape[1]):
            K, XB = self(X, Y), X @ B.T
            by = row_dots(B, Y, b_env)
            b_col = np.ascontiguousarray(b_col, dtype=np.int64)

            def fill(chunk, Bt, Yc):
                _hessian_kernels.se_column_sums(Bt, B, X, Y, XB, by, K, inv_ell2,
                                                float(factor), b_env, b_col, chunk)

            _contract_column_sums(out, A, a_env, np.asarray(a_out, dtype=np.int64), envs,
                                  columns, fill)
            return
        order, seg_start, seg_row = _segments(a_out)
        A, a_env = A[order], a_env[order]
        _hessian_kernels.se_cross_hessian(
            out, A @ B.T, A @ Y.T, X @ B.T, self(X, Y), np.einsum("pd,pd->p", A, X[a_env]),
            row_dots(B, Y, b_env), a_env, b_env, seg_start, seg_row,
            np.ascontiguousarray(b_out, dtype=np.int64), inv_ell2, float(factor))


class Scaled(Kernel):
    """``k(x, y) = c · k_0(x, y)``: a kernel times a positive constant.

    Used for the relative weight of the terms of a :class:`Sum` (the overall signal
    variance stays with the estimator). ``c * kernel`` builds one.

    Parameters
    ----------
    kernel : Kernel
        ``k_0``.
    scale : float, default=1.0
        ``c``.
    scale_bounds : pair of float or "fixed", default=(1e-4, 1e4)
        Bounds of ``c`` for the likelihood optimisation.

    Notes
    -----
    ``theta`` is ``[log c, *k_0.theta]``; ``∂k/∂ log c = k``. ``c * kernel`` leaves
    ``c`` free (bounds ``(1e-4, 1e4)``), so a fit with ``optimize=True`` refits it;
    pass ``scale_bounds="fixed"`` (or set ``k.scale_bounds``) to keep a chosen weight.
    Alone, a free ``c`` duplicates the estimator's signal variance.
    """

    _hyperparameters = ("scale",)

    def __init__(self, kernel: Kernel | None = None, scale: float = 1.0,
                 scale_bounds: tuple[float, float] | str = (1e-4, 1e4)) -> None:
        self.kernel = kernel
        self.scale = scale
        self.scale_bounds = scale_bounds

    def check(self) -> None:
        """Validate ``scale``, its bounds and the inner kernel.

        Raises
        ------
        TypeError
            If ``kernel`` is not a kernelpot :class:`Kernel`.
        ValueError
            If ``scale`` or its bounds are invalid, or the inner kernel is.
        """
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"Scaled: kernel must be a kernelpot Kernel; "
                            f"got {type(self.kernel).__name__}")
        super().check()
        self.kernel.check()

    @property
    def theta(self) -> np.ndarray:
        """Log hyperparameters ``[log c (if free), *kernel.theta]``, shape (n_theta,)."""
        return np.concatenate([super().theta, self.kernel.theta])

    @property
    def bounds(self) -> np.ndarray:
        """Log-space bounds of ``theta``, shape (n_theta, 2)."""
        return np.vstack([super().bounds, self.kernel.bounds]).reshape(-1, 2)

    @property
    def theta_names(self) -> list[str]:
        """Names of ``theta``: ``scale`` (if free), then ``kernel__<name>``."""
        return self._free() + [f"kernel__{h}" for h in self.kernel.theta_names]

    @property
    def n_theta(self) -> int:
        """Number of free hyperparameters, the inner kernel's included."""
        return len(self._free()) + self.kernel.n_theta

    def clone_with_theta(self, theta: ArrayLike) -> Kernel:
        """Return a copy with ``c`` and the inner kernel's hyperparameters set from ``theta``.

        Parameters
        ----------
        theta : array-like of shape (n_theta,)
            Log of the free hyperparameters: ``[log c (if free), *kernel.theta]``.

        Returns
        -------
        Kernel
            An unfitted clone with the new values.

        Raises
        ------
        ValueError
            If ``theta`` does not have shape ``(n_theta,)``.
        """
        theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
        if theta.shape != (self.n_theta,):
            raise ValueError(f"Scaled: theta must have shape ({self.n_theta},); "
                             f"got {theta.shape}")
        own = len(self._free())
        twin = clone(self)
        if own:
            twin.scale = float(np.exp(theta[0]))
        twin.kernel = self.kernel.clone_with_theta(theta[own:])
        return twin

    def _scale_gradient(self, value, inner_gradient):
        """Stack ``∂/∂ log c`` (if free) before the inner kernel's gradient."""
        c = float(self.scale)
        parts = [c * value[..., None]] if self._free() else []
        parts.append(c * inner_gradient)
        return np.concatenate(parts, axis=-1)

    def __call__(self, X: ArrayLike, Y: ArrayLike | None = None,
                 eval_gradient: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return ``K = c k_0(X, Y)``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors, one row per environment.
        Y : array-like of shape (n_Y, D), optional
            Second set of descriptors; ``None`` means ``X``.
        eval_gradient : bool, default=False
            Also return the derivative with respect to ``theta``.

        Returns
        -------
        K : ndarray of shape (n_X, n_Y)
            Kernel values.
        K_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            ``[c K_0 (if c is free), c ∂K_0/∂theta_0]`` stacked on the last axis.
        """
        c = float(self.scale)
        if not eval_gradient:
            return c * self.kernel(X, Y)
        K, dK = self.kernel(X, Y, eval_gradient=True)
        return c * K, self._scale_gradient(K, dK)

    def diag(self, X: ArrayLike) -> np.ndarray:
        """Return ``c k_0(x, x)`` for every row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors.

        Returns
        -------
        ndarray of shape (n_X,)
            The scaled inner diagonal.
        """
        return float(self.scale) * self.kernel.diag(X)

    def gradient_coefficients(self, X: ArrayLike, Y: ArrayLike,
                              eval_gradient: bool = False) -> tuple[np.ndarray, ...]:
        """Return the inner kernel's ``(α, β)`` times ``c``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors the derivative is taken in.
        Y : array-like of shape (n_Y, D)
            Second set of descriptors.
        eval_gradient : bool, default=False
            Also return the derivatives of ``α`` and ``β`` with respect to ``theta``.

        Returns
        -------
        alpha, beta : ndarray of shape (n_X, n_Y)
            Coefficients of ``y`` and of ``x`` in ``∂k(x, y)/∂x = α y + β x``.
        alpha_gradient, beta_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            ``∂/∂ log c`` first if ``c`` is free, then ``c`` times the inner ones.
        """
        c = float(self.scale)
        if not eval_gradient:
            alpha, beta = self.kernel.gradient_coefficients(X, Y)
            return c * alpha, c * beta
        alpha, beta, d_alpha, d_beta = self.kernel.gradient_coefficients(X, Y, True)
        return (c * alpha, c * beta, self._scale_gradient(alpha, d_alpha),
                self._scale_gradient(beta, d_beta))

    def mixed_second_derivative(self, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
        """Return ``c`` times the inner kernel's dense ``∂²k/∂x∂y``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors of the first argument.
        Y : array-like of shape (n_Y, D)
            Descriptors of the second argument.

        Returns
        -------
        ndarray of shape (n_X, n_Y, D, D)
            ``H[a, b, d, e] = ∂²k(X[a], Y[b]) / ∂x_d ∂y_e``.
        """
        return float(self.scale) * self.kernel.mixed_second_derivative(X, Y)

    def contracted_hessian(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return ``c`` times the inner kernel's :meth:`contracted_hessian`.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, D)
            One vector per descriptor (a row of a descriptor Jacobian).

        Returns
        -------
        ndarray of shape (n, n)
            ``M[a, b] = A[a]ᵀ H(X[a], X[b]) A[b]``, ``H = ∂²k/∂x∂y``.
        """
        return float(self.scale) * self.kernel.contracted_hessian(X, A)

    def contracted_hessian_sums(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return ``c`` times the inner kernel's :meth:`contracted_hessian_sums`.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, k, D)
            ``k`` Jacobian rows per descriptor (``k = 3``: one per force component).

        Returns
        -------
        ndarray of shape (k,)
            ``s[c] = Σ_ab A[a, c]ᵀ H(X[a], X[b]) A[b, c]``.
        """
        return float(self.scale) * self.kernel.contracted_hessian_sums(X, A)

    def accumulate_cross_hessian(self, out: np.ndarray, X: ArrayLike, A: ArrayLike,
                                 a_env: ArrayLike, a_out: ArrayLike, Y: ArrayLike,
                                 B: ArrayLike, b_env: ArrayLike, b_out: ArrayLike,
                                 factor: float = 1.0) -> None:
        """Add ``c`` times the inner kernel's contracted cross Hessian into ``out``.

        Parameters
        ----------
        out : ndarray of shape (n_out, m_out)
            Accumulated into, in place.
        X, A, a_env, a_out, Y, B, b_env, b_out : array-like
            Environments, Jacobian rows and their output rows and columns, as in
            :meth:`Kernel.accumulate_cross_hessian`.
        factor : float, default=1.0
            Multiplies what is added, on top of ``c``.
        """
        self.kernel.accumulate_cross_hessian(out, X, A, a_env, a_out, Y, B, b_env, b_out,
                                             factor * float(self.scale))


class Sum(Kernel):
    """``k(x, y) = k_1(x, y) + k_2(x, y)``; ``kernel_1 + kernel_2`` builds one.

    For instance ``NormalizedDotProduct(2) + Scaled(SquaredExponential(ℓ), c)``: the
    first term compares the shapes of environments, the second also their size
    (the norm of the descriptor, which follows the density of neighbours).

    Parameters
    ----------
    k1, k2 : Kernel
        The two terms.

    Notes
    -----
    ``theta`` is ``[*k1.theta, *k2.theta]``; value, gradient coefficients and
    second derivatives add.
    """

    def __init__(self, k1: Kernel | None = None, k2: Kernel | None = None) -> None:
        self.k1 = k1
        self.k2 = k2

    def check(self) -> None:
        """Validate both terms.

        Raises
        ------
        TypeError
            If ``k1`` or ``k2`` is not a kernelpot :class:`Kernel`.
        ValueError
            If a term's hyperparameters are invalid.
        """
        for name in ("k1", "k2"):
            part = getattr(self, name)
            if not isinstance(part, Kernel):
                raise TypeError(f"Sum: {name} must be a kernelpot Kernel; "
                                f"got {type(part).__name__}")
            part.check()

    @property
    def theta(self) -> np.ndarray:
        """Log hyperparameters ``[*k1.theta, *k2.theta]``, shape (n_theta,)."""
        return np.concatenate([self.k1.theta, self.k2.theta])

    @property
    def bounds(self) -> np.ndarray:
        """Log-space bounds of ``theta``, shape (n_theta, 2)."""
        return np.vstack([self.k1.bounds, self.k2.bounds]).reshape(-1, 2)

    @property
    def theta_names(self) -> list[str]:
        """Names of ``theta``: ``k1__<name>``, then ``k2__<name>``."""
        return ([f"k1__{h}" for h in self.k1.theta_names]
                + [f"k2__{h}" for h in self.k2.theta_names])

    @property
    def n_theta(self) -> int:
        """Number of free hyperparameters of both terms."""
        return self.k1.n_theta + self.k2.n_theta

    def clone_with_theta(self, theta: ArrayLike) -> Kernel:
        """Return a copy with both terms' hyperparameters set from ``theta``.

        Parameters
        ----------
        theta : array-like of shape (n_theta,)
            Log of the free hyperparameters: ``[*k1.theta, *k2.theta]``.

        Returns
        -------
        Kernel
            An unfitted clone with the new values.

        Raises
        ------
        ValueError
            If ``theta`` does not have shape ``(n_theta,)``.
        """
        theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
        if theta.shape != (self.n_theta,):
            raise ValueError(f"Sum: theta must have shape ({self.n_theta},); got {theta.shape}")
        n1 = self.k1.n_theta
        twin = clone(self)
        twin.k1 = self.k1.clone_with_theta(theta[:n1])
        twin.k2 = self.k2.clone_with_theta(theta[n1:])
        return twin

    def __call__(self, X: ArrayLike, Y: ArrayLike | None = None,
                 eval_gradient: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return ``K = k_1(X, Y) + k_2(X, Y)``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors, one row per environment.
        Y : array-like of shape (n_Y, D), optional
            Second set of descriptors; ``None`` means ``X``.
        eval_gradient : bool, default=False
            Also return the derivative with respect to ``theta``.

        Returns
        -------
        K : ndarray of shape (n_X, n_Y)
            Kernel values.
        K_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            ``[∂K_1/∂theta_1, ∂K_2/∂theta_2]`` stacked on the last axis.
        """
        if not eval_gradient:
            return self.k1(X, Y) + self.k2(X, Y)
        K1, dK1 = self.k1(X, Y, eval_gradient=True)
        K2, dK2 = self.k2(X, Y, eval_gradient=True)
        return K1 + K2, np.concatenate([dK1, dK2], axis=-1)

    def diag(self, X: ArrayLike) -> np.ndarray:
        """Return ``k_1(x, x) + k_2(x, x)`` for every row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors.

        Returns
        -------
        ndarray of shape (n_X,)
            The sum of the terms' diagonals.
        """
        return self.k1.diag(X) + self.k2.diag(X)

    def gradient_coefficients(self, X: ArrayLike, Y: ArrayLike,
                              eval_gradient: bool = False) -> tuple[np.ndarray, ...]:
        """Return the sums of the two terms' ``(α, β)``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors the derivative is taken in.
        Y : array-like of shape (n_Y, D)
            Second set of descriptors.
        eval_gradient : bool, default=False
            Also return the derivatives of ``α`` and ``β`` with respect to ``theta``.

        Returns
        -------
        alpha, beta : ndarray of shape (n_X, n_Y)
            Coefficients of ``y`` and of ``x`` in ``∂k(x, y)/∂x = α y + β x``.
        alpha_gradient, beta_gradient : ndarray of shape (n_X, n_Y, n_theta)
            Only with ``eval_gradient=True``:
            the terms' derivatives, stacked on the last axis.
        """
        if not eval_gradient:
            a1, b1 = self.k1.gradient_coefficients(X, Y)
            a2, b2 = self.k2.gradient_coefficients(X, Y)
            return a1 + a2, b1 + b2
        a1, b1, da1, db1 = self.k1.gradient_coefficients(X, Y, True)
        a2, b2, da2, db2 = self.k2.gradient_coefficients(X, Y, True)
        return (a1 + a2, b1 + b2, np.concatenate([da1, da2], axis=-1),
                np.concatenate([db1, db2], axis=-1))

    def mixed_second_derivative(self, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
        """Return the sum of the two terms' dense ``∂²k/∂x∂y``.

        Parameters
        ----------
        X : array-like of shape (n_X, D)
            Descriptors of the first argument.
        Y : array-like of shape (n_Y, D)
            Descriptors of the second argument.

        Returns
        -------
        ndarray of shape (n_X, n_Y, D, D)
            ``H[a, b, d, e] = ∂²k(X[a], Y[b]) / ∂x_d ∂y_e``.
        """
        return self.k1.mixed_second_derivative(X, Y) + self.k2.mixed_second_derivative(X, Y)

    def contracted_hessian(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return the sum of the two terms' :meth:`contracted_hessian`.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, D)
            One vector per descriptor (a row of a descriptor Jacobian).

        Returns
        -------
        ndarray of shape (n, n)
            ``M[a, b] = A[a]ᵀ H(X[a], X[b]) A[b]``, ``H = ∂²k/∂x∂y``.
        """
        return self.k1.contracted_hessian(X, A) + self.k2.contracted_hessian(X, A)

    def contracted_hessian_sums(self, X: ArrayLike, A: ArrayLike) -> np.ndarray:
        """Return the sum of the two terms' :meth:`contracted_hessian_sums`.

        Parameters
        ----------
        X : array-like of shape (n, D)
            Descriptors.
        A : array-like of shape (n, k, D)
            ``k`` Jacobian rows per descriptor (``k = 3``: one per force component).

        Returns
        -------
        ndarray of shape (k,)
            ``s[c] = Σ_ab A[a, c]ᵀ H(X[a], X[b]) A[b, c]``.
        """
        return self.k1.contracted_hessian_sums(X, A) + self.k2.contracted_hessian_sums(X, A)

    def accumulate_cross_hessian(self, out: np.ndarray, X: ArrayLike, A: ArrayLike,
                                 a_env: ArrayLike, a_out: ArrayLike, Y: ArrayLike,
                                 B: ArrayLike, b_env: ArrayLike, b_out: ArrayLike,
                                 factor: float = 1.0) -> None:
        """Add both terms' contracted cross Hessians into ``out``.

        Parameters
        ----------
        out : ndarray of shape (n_out, m_out)
            Accumulated into, in place.
        X, A, a_env, a_out, Y, B, b_env, b_out : array-like
            Environments, Jacobian rows and their output rows and columns, as in
            :meth:`Kernel.accumulate_cross_hessian`.
        factor : float, default=1.0
            Multiplies what each term adds.
        """
        self.k1.accumulate_cross_hessian(out, X, A, a_env, a_out, Y, B, b_env, b_out, factor)
        self.k2.accumulate_cross_hessian(out, X, A, a_env, a_out, Y, B, b_env, b_out, factor)

