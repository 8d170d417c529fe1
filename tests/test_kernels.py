"""Kernels: values, first and mixed second derivatives against finite differences."""

import numpy as np
import pytest
from sklearn.base import clone

from kernelpot.kernels import NormalizedDotProduct, SquaredExponential

KERNELS = [
    NormalizedDotProduct(zeta=1),
    NormalizedDotProduct(zeta=2),
    NormalizedDotProduct(zeta=4),
    SquaredExponential(length_scale=1.7),
]
IDS = ["ndp1", "ndp2", "ndp4", "se"]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 6)) + 0.5
    Y = rng.normal(size=(3, 6)) + 0.5
    return X, Y


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_gradient_equals_finite_differences(kernel, data):
    X, Y = data
    analytic = kernel.gradient(X, Y)
    h = 1e-6
    fd = np.zeros_like(analytic)
    for d in range(X.shape[1]):
        step = np.zeros(X.shape[1])
        step[d] = h
        fd[:, :, d] = (kernel(X + step, Y) - kernel(X - step, Y)) / (2 * h)
    np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_mixed_second_derivative_equals_finite_differences(kernel, data):
    X, Y = data
    analytic = kernel.mixed_second_derivative(X, Y)
    h = 1e-6
    fd = np.zeros_like(analytic)
    for e in range(Y.shape[1]):
        step = np.zeros(Y.shape[1])
        step[e] = h
        fd[:, :, :, e] = (kernel.gradient(X, Y + step) - kernel.gradient(X, Y - step)) / (2 * h)
    np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_contracted_hessian_matches_dense(kernel, data):
    X, _ = data
    A = np.random.default_rng(1).normal(size=X.shape)
    dense = kernel.mixed_second_derivative(X, X)
    expected = np.einsum("ad,abde,be->ab", A, dense, A)
    np.testing.assert_allclose(kernel.contracted_hessian(X, A), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_theta_gradient_equals_finite_differences(kernel, data):
    X, Y = data
    K, dK = kernel(X, Y, eval_gradient=True)
    assert dK.shape == K.shape + (kernel.n_theta,)
    alpha, beta, dalpha, dbeta = kernel.gradient_coefficients(X, Y, eval_gradient=True)
    h = 1e-6
    for t in range(kernel.n_theta):
        step = np.zeros(kernel.n_theta)
        step[t] = h
        plus, minus = kernel.clone_with_theta(kernel.theta + step), \
            kernel.clone_with_theta(kernel.theta - step)
        np.testing.assert_allclose(dK[:, :, t], (plus(X, Y) - minus(X, Y)) / (2 * h), rtol=1e-6)
        a_p, b_p = plus.gradient_coefficients(X, Y)
        a_m, b_m = minus.gradient_coefficients(X, Y)
        np.testing.assert_allclose(dalpha[:, :, t], (a_p - a_m) / (2 * h), rtol=1e-6)
        np.testing.assert_allclose(dbeta[:, :, t], (b_p - b_m) / (2 * h), rtol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_symmetry_diag_clone(kernel, data):
    X, _ = data
    K = kernel(X)
    np.testing.assert_allclose(K, K.T, atol=1e-14)
    np.testing.assert_allclose(np.diag(K), kernel.diag(X))
    twin = clone(kernel)
    assert twin.get_params() == kernel.get_params()
    np.testing.assert_array_equal(twin(X), K)


def test_normalized_dot_product_is_scale_invariant(data):
    X, Y = data
    kernel = NormalizedDotProduct(zeta=2)
    np.testing.assert_allclose(kernel(3.0 * X, Y), kernel(X, Y))
    # gradient along x itself vanishes: k does not depend on |x|
    np.testing.assert_allclose(np.einsum("nmd,nd->nm", kernel.gradient(X, Y), X), 0, atol=1e-12)


def test_zero_descriptor_is_safe():
    kernel = NormalizedDotProduct(zeta=2)
    X = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.5]])
    assert np.all(np.isfinite(kernel(X))) and kernel(X)[0, 0] == 0
    alpha, beta = kernel.gradient_coefficients(X, X)
    assert np.all(np.isfinite(alpha)) and np.all(alpha[0] == 0) and np.all(beta[0] == 0)
    assert np.all(np.isfinite(kernel.contracted_hessian(X, X + 1)))


def test_theta_and_bounds():
    kernel = SquaredExponential(length_scale=2.0, length_scale_bounds=(0.1, 10.0))
    np.testing.assert_allclose(kernel.theta, [np.log(2.0)])
    np.testing.assert_allclose(kernel.bounds, [[np.log(0.1), np.log(10.0)]])
    assert kernel.theta_names == ["length_scale"]
    fixed = SquaredExponential(length_scale=2.0, length_scale_bounds="fixed")
    assert fixed.n_theta == 0 and fixed.theta.shape == (0,)
    assert NormalizedDotProduct().n_theta == 0
    assert kernel.clone_with_theta([0.0]).length_scale == pytest.approx(1.0)
    with pytest.raises(ValueError, match="theta must have shape"):
        kernel.clone_with_theta([0.0, 1.0])


@pytest.mark.parametrize("kernel, match", [
    (NormalizedDotProduct(zeta=0), "zeta must be an int >= 1"),
    (NormalizedDotProduct(zeta=1.5), "zeta must be an int >= 1"),
    (SquaredExponential(length_scale=-1.0), "length_scale must be a number > 0"),
    (SquaredExponential(length_scale_bounds=(2.0, 1.0)), "length_scale_bounds must be"),
])
def test_bad_hyperparameters(kernel, match):
    with pytest.raises(ValueError, match=match):
        kernel.check()
