"""Mean local energies of a fitted GP without a sum over the inducing environments.

A sparse model predicts the local energy of an environment ``x`` of one element as
``ε(x) = Σ_m w_m k(x, z_m)`` over that element's ``M_s`` inducing environments: ``O(M_s D)``
per atom, and as much again for the gradient ``∂ε/∂x`` that the forces need. For the
normalised dot-product kernel with ``ζ = 2`` (SOAP-GAP's, the default) the sum collapses
into one ``D × D`` matrix: with ``u = x / |x|`` and unit inducing rows ``ẑ_m``,

    ``ε(x) = Σ_m w_m (u · ẑ_m)² = uᵀ A u``,   ``A = Σ_m w_m ẑ_m ẑ_mᵀ``,

    ``∂ε/∂x = 2 (A u − ε u) / |x|``,

so an atom costs ``O(D²)`` whatever ``M_s``. With ``ζ = 1`` it is a vector,
``ε = b · u`` with ``b = Σ_m w_m ẑ_m``. :func:`mean_map` builds the map of any kernel:
scaled kernels scale it, sums add their terms' maps, and a kernel without a closed
form (the squared exponential, ``ζ ≥ 3``) keeps the sum over its inducing environments
(:class:`InducingSum`), so ``NormalizedDotProduct(2) + c * SquaredExponential(ℓ)`` pays
``O(D²)`` for its first term and ``O(M_s D)`` for its second.

The exact model's mean adds, for every training environment ``z_j``, a term in the
kernel's derivative: ``ε(x) = Σ_j c_j k(x, z_j) − Σ_j b_j · ∂k(z_j, x)/∂z_j``
(:func:`kernelpot.exact.predict_mean`). For the normalised dot product with ``ζ = 2``,
``b · ∂k(z, x)/∂z = 2 (u · ẑ)(v · u)`` with ``v = (b − (b · ẑ) ẑ) / |z|``, so the mean is
again a quadratic form, ``A = Σ_j c_j ẑ_j ẑ_jᵀ − Σ_j (ẑ_j v_jᵀ + v_j ẑ_jᵀ)``
(:func:`exact_mean_map`), and its gradient replaces the contraction of every Jacobian row
with the kernel's mixed second derivative.

A map is built once per fitted weight vector (:class:`SparsePosterior` caches it and
rebuilds it after :meth:`update`); the ``D × D`` product costs ``O(M_s D²)``.
"""

from __future__ import annotations

import numpy as np

from kernelpot.kernels import inverse_norms, unit_rows

__all__ = ["MeanMap", "InducingSum", "QuadraticForm", "LinearForm", "ScaledMap", "SumMap",
           "mean_map", "exact_mean_map"]

class MeanMap:
    """Mean local energies ``ε(x)`` of one element and their descriptor gradients."""

    def __call__(self, X: np.ndarray, gradients: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ``ε`` of every row of ``X`` and, with ``gradients``, ``∂ε/∂x``.

        Parameters
        ----------
        X : ndarray of shape (n, D)
        gradients : bool

        Returns
        -------
        energies : ndarray of shape (n,)
        d_energies : ndarray of shape (n, D) or None
        """
        raise NotImplementedError

    @property
    def scales_with_inducing(self) -> bool:
        """Whether evaluating it still costs a sum over the inducing environments."""
        return False


class InducingSum(MeanMap):
    """``ε(x) = Σ_m w_m k(x, z_m)``, summed over the inducing environments.

    Parameters
    ----------
    kernel : kernelpot.kernels.Kernel
    Z : ndarray of shape (M_s, D)
        Inducing environments.
    w : ndarray of shape (M_s,)
        Their weights.
    """

    def __init__(self, kernel, Z: np.ndarray, w: np.ndarray) -> None:
        self.kernel, self.Z, self.w = kernel, Z, w

    def __call__(self, X, gradients):
        """Return ``ε`` of every row of ``X`` and, with ``gradients``, ``∂ε/∂x``."""
        energies = self.kernel(X, self.Z) @ self.w
        if not gradients:
            return energies, None
        alpha, beta = self.kernel.gradient_coefficients(X, self.Z)
        return energies, (alpha * self.w[None, :]) @ self.Z + (beta @ self.w)[:, None] * X

    @property
    def scales_with_inducing(self) -> bool:
        """True: this map sums over the inducing environments."""
        return True


class QuadraticForm(MeanMap):
    """``ε(x) = uᵀ A u`` with ``u = x / |x|`` (normalised dot product, ``ζ = 2``).

    Parameters
    ----------
    A : ndarray of shape (D, D)
        Symmetric: ``Σ_m w_m ẑ_m ẑ_mᵀ``.
    """

    def __init__(self, A: np.ndarray) -> None:
        self.A = A

    def __call__(self, X, gradients):
        """Return ``ε`` of every row of ``X`` and, with ``gradients``, ``∂ε/∂x``."""
        U, norms = unit_rows(X)
        AU = U @ self.A
        energies = np.einsum("nd,nd->n", AU, U)
        if not gradients:
            return energies, None
        inverse = inverse_norms(norms)
        return energies, 2.0 * inverse[:, None] * (AU - energies[:, None] * U)


class LinearForm(MeanMap):
    """``ε(x) = b · u`` with ``u = x / |x|`` (normalised dot product, ``ζ = 1``).

    Parameters
    ----------
    b : ndarray of shape (D,)
        ``Σ_m w_m ẑ_m``.
    """

    def __init__(self, b: np.ndarray) -> None:
        self.b = b

    def __call__(self, X, gradients):
        """Return ``ε`` of every row of ``X`` and, with ``gradients``, ``∂ε/∂x``."""
        U, norms = unit_rows(X)
        energies = U @ self.b
        if not gradients:
            return energies, None
        inverse = inverse_norms(norms)
        return energies, inverse[:, None] * (self.b[None, :] - energies[:, None] * U)


class ScaledMap(MeanMap):
    """``c · ε_0(x)``.

    Parameters
    ----------
    scale : float
    inner : MeanMap
    """

    def __init__(self, scale: float, inner: MeanMap) -> None:
        self.scale, self.inner = float(scale), inner

    def __call__(self, X, gradients):
        """Return ``ε`` of every row of ``X`` and, with ``gradients``, ``∂ε/∂x``."""
        energies, d_energies = self.inner(X, gradients)
        return self.scale * energies, None if d_energies is None else self.scale * d_energies

    @property
    def scales_with_inducing(self) -> bool:
        """Whether the inner map does."""
        return self.inner.scales_with_inducing


class SumMap(MeanMap):
    """``ε_1(x) + ε_2(x)``.

    Parameters
    ----------
    first, second : MeanMap
    """

    def __init__(self, first: MeanMap, second: MeanMap) -> None:
        self.first, self.second = first, second

    def __call__(self, X, gradients):
        """Return ``ε`` of every row of ``X`` and, with ``gradients``, ``∂ε/∂x``."""
        e1, d1 = self.first(X, gradients)
        e2, d2 = self.second(X, gradients)
        return e1 + e2, None if d1 is None else d1 + d2

    @property
    def scales_with_inducing(self) -> bool:
        """Whether either term does."""
        return self.first.scales_with_inducing or self.second.scales_with_inducing


def mean_map(kernel, Z: np.ndarray, w: np.ndarray, closed_form: bool | str = "auto"
             ) -> MeanMap:
    """Return the map of ``ε(x) = Σ_m w_m k(x, z_m)`` for one element.

    Parameters
    ----------
    kernel : kernelpot.kernels.Kernel
    Z : ndarray of shape (M_s, D)
        The element's inducing environments.
    w : ndarray of shape (M_s,)
        Their weights.
    closed_form : bool or "auto", default="auto"
        Use the closed form where the kernel has one: always (True), never (False),
        or where it costs less per atom ("auto": ``D² < 3 M_s D``, the sum's kernel
        values, gradient coefficients and product).

    Returns
    -------
    MeanMap
        A closed form where the kernel has one (normalised dot product with
        ``ζ ≤ 2``, also scaled or in sums), the sum over ``Z`` otherwise.
    """
    from kernelpot.kernels import NormalizedDotProduct, Scaled, Sum

    Z = np.asarray(Z, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if isinstance(kernel, Sum):
        return SumMap(mean_map(kernel.k1, Z, w, closed_form),
                      mean_map(kernel.k2, Z, w, closed_form))
    if isinstance(kernel, Scaled):
        return ScaledMap(kernel.scale, mean_map(kernel.kernel, Z, w, closed_form))
    cheaper = Z.shape[1] < 3 * len(Z) if closed_form == "auto" else bool(closed_form)
    if type(kernel) is NormalizedDotProduct and kernel.zeta in (1, 2) and cheaper:
        unit, _ = unit_rows(Z)
        if kernel.zeta == 1:
            return LinearForm(w @ unit)
        A = (unit * w[:, None]).T @ unit
        return QuadraticForm(0.5 * (A + A.T))
    return InducingSum(kernel, Z, w)


def exact_mean_map(kernel, Z: np.ndarray, c: np.ndarray, b: np.ndarray) -> MeanMap | None:
    """Return the closed-form map of the exact model's mean for one element, or None.

    Parameters
    ----------
    kernel : kernelpot.kernels.Kernel
    Z : ndarray of shape (n_j, D)
        The element's training environments.
    c : ndarray of shape (n_j,)
        Weights of their kernel values (from the energy observations).
    b : ndarray of shape (n_j, D)
        Weights of their kernel gradients (from the force observations).

    Returns
    -------
    MeanMap or None
        ``ε(x) = Σ_j c_j k(x, z_j) − Σ_j b_j · ∂k(z_j, x)/∂z_j`` as a quadratic (``ζ = 2``)
        or linear (``ζ = 1``) form of ``x / |x|``, scaled or summed like the kernel;
        None when a term of the kernel has no closed form (the caller then sums over
        the training environments).
    """
    from kernelpot.kernels import NormalizedDotProduct, Scaled, Sum

    if isinstance(kernel, Sum):
        first = exact_mean_map(kernel.k1, Z, c, b)
        second = exact_mean_map(kernel.k2, Z, c, b)
        return None if first is None or second is None else SumMap(first, second)
    if isinstance(kernel, Scaled):
        inner = exact_mean_map(kernel.kernel, Z, c, b)
        return None if inner is None else ScaledMap(kernel.scale, inner)
    if type(kernel) is not NormalizedDotProduct or kernel.zeta not in (1, 2):
        return None
    Z = np.asarray(Z, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    unit, norms = unit_rows(Z)
    inverse = inverse_norms(norms)
    # v_j = P_z b_j / |z_j|: the part of b_j across ẑ_j (zero environments: k = 0)
    V = (b - np.einsum("jd,jd->j", b, unit)[:, None] * unit) * inverse[:, None]
    if kernel.zeta == 1:
        return LinearForm(c @ unit - V.sum(axis=0))
    cross = unit.T @ V
    A = (unit * c[:, None]).T @ unit - (cross + cross.T)
    return QuadraticForm(0.5 * (A + A.T))
