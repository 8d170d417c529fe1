"""Kernels: values, first and mixed second derivatives against finite differences."""

import numpy as np
import pytest
from sklearn.base import clone

from kernelpot.kernels import Kernel, NormalizedDotProduct, Scaled, SquaredExponential, Sum

KERNELS = [
    NormalizedDotProduct(zeta=1),
    NormalizedDotProduct(zeta=2),
    NormalizedDotProduct(zeta=4),
    SquaredExponential(length_scale=1.7),
    Scaled(SquaredExponential(length_scale=1.3), scale=0.7),
    NormalizedDotProduct(zeta=2) + 0.4 * SquaredExponential(length_scale=2.1),
]
IDS = ["ndp1", "ndp2", "ndp4", "se", "scaled-se", "ndp+se"]


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
def test_contracted_cross_hessian_matches_dense(kernel, data):
    X, Y = data
    rng = np.random.default_rng(3)
    a_env = np.array([0, 0, 2, 3, 1, 2, 2])
    b_env = np.array([1, 0, 2, 2, 1])
    A = rng.normal(size=(len(a_env), X.shape[1]))
    B = rng.normal(size=(len(b_env), X.shape[1]))
    dense = kernel.mixed_second_derivative(X, Y)  # FD-tested above
    expected = np.einsum("pd,pqde,qe->pq", A, dense[a_env][:, b_env], B)
    got = kernel.contracted_cross_hessian(X, A, a_env, Y, B, b_env)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # the base-class (dense) form agrees with the fused one
    generic = np.zeros_like(expected)
    Kernel.accumulate_cross_hessian(kernel, generic, X, A, a_env, np.arange(len(A)), Y, B,
                                    b_env, np.arange(len(B)))
    np.testing.assert_allclose(generic, expected, rtol=1e-10, atol=1e-12)
    # summed into output rows and columns (unsorted rows), with a factor, accumulating
    a_out, b_out = np.array([2, 0, 2, 1, 0, 0, 1]), np.array([1, 1, 0, 2, 0])
    reduced = np.ones((3, 3))
    kernel.accumulate_cross_hessian(reduced, X, A, a_env, a_out, Y, B, b_env, b_out, 0.5)
    want = np.ones((3, 3))
    np.add.at(want, (a_out[:, None], b_out[None, :]), 0.5 * expected)
    np.testing.assert_allclose(reduced, want, rtol=1e-10, atol=1e-12)



@pytest.mark.parametrize("kernel", [NormalizedDotProduct(1), NormalizedDotProduct(2),
                                    NormalizedDotProduct(4), SquaredExponential(2.5),
                                    NormalizedDotProduct(2) + 0.3 * SquaredExponential(3.0)],
                         ids=["ndp1", "ndp2", "ndp4", "se", "ndp+se"])
@pytest.mark.parametrize("by_columns", [False, True], ids=["direct", "column-sums"])
def test_both_contractions_match_dense(kernel, by_columns, monkeypatch):
    """The per-column sums (chosen by cost) and the direct ``A Bᵀ`` give the same sums."""
    from kernelpot import kernels

    rng = np.random.default_rng(len(repr(kernel)))
    X, Y = rng.normal(size=(5, 7)) + 0.3, rng.normal(size=(6, 7)) + 0.3
    X[3] = 0.0  # an environment without neighbours
    a_env, b_env = rng.integers(0, 5, 40), rng.integers(0, 6, 50)
    A, B = rng.normal(size=(40, 7)), rng.normal(size=(50, 7))
    expected = np.einsum("pd,pqde,qe->pq", A, kernel.mixed_second_derivative(X, Y)[a_env]
                         [:, b_env], B)
    monkeypatch.setattr(kernels, "_column_sums_pay", lambda *args: by_columns)
    # output rows of one environment distinct (the usual case) or shared; columns a
    # block of out's, or scattered
    for a_out in (rng.permutation(40), rng.integers(0, 8, 40)):
        for b_out in (rng.integers(2, 9, 50), 3 * rng.integers(0, 6, 50)):
            got = np.ones((40, 20))
            kernel.accumulate_cross_hessian(got, X, A, a_env, a_out, Y, B, b_env, b_out, 0.7)
            want = np.ones((40, 20))
            np.add.at(want, (a_out[:, None], b_out[None, :]), 0.7 * expected)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_column_sums_are_chosen_where_they_cost_less():
    from kernelpot.kernels import _column_sums_pay

    # an ethanol frame against 100 training frames: 27 rows per environment, 9 per column
    assert _column_sums_pay(n_envs=9, P=243, Q=24_300, n_columns=2_700, D=855)
    # one row per environment and per column: A Bᵀ is all there is to compute
    assert not _column_sums_pay(n_envs=50, P=50, Q=40, n_columns=40, D=855)


def test_contracted_cross_hessian_checks_indices(data):
    X, Y = data
    A = np.ones((2, X.shape[1]))
    with pytest.raises(ValueError, match="a_env"):
        NormalizedDotProduct(2).contracted_cross_hessian(X, A, [0, 9], Y, A, [0, 1])
    with pytest.raises(ValueError, match="one index per row"):
        NormalizedDotProduct(2).contracted_cross_hessian(X, A, [0], Y, A, [0, 1])


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_batched_contracted_hessian_sums(kernel, data):
    X, _ = data
    A = np.random.default_rng(2).normal(size=(X.shape[0], 3, X.shape[1]))
    expected = [kernel.contracted_hessian(X, A[:, c, :]).sum() for c in range(3)]
    np.testing.assert_allclose(kernel.contracted_hessian_sums(X, A), expected, rtol=1e-10)


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
    assert repr(twin) == repr(kernel)
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
    cross = kernel.contracted_cross_hessian(X, X + 1, [0, 1], X, X - 1, [1, 0])
    assert np.all(np.isfinite(cross)) and np.all(cross[0] == 0) and np.all(cross[:, 1] == 0)


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
    (Scaled(SquaredExponential(), scale=0.0), "scale must be a number > 0"),
    (NormalizedDotProduct(zeta=0) + SquaredExponential(), "zeta must be an int >= 1"),
])
def test_bad_hyperparameters(kernel, match):
    with pytest.raises(ValueError, match=match):
        kernel.check()


@pytest.mark.parametrize("kernel, match", [
    (Scaled("rbf"), "kernel must be a kernelpot Kernel"),
    (Sum(NormalizedDotProduct(), None), "k2 must be a kernelpot Kernel"),
])
def test_composite_of_non_kernels_is_refused(kernel, match):
    with pytest.raises(TypeError, match=match):
        kernel.check()


def test_composition_builds_sum_and_scaled(data):
    X, Y = data
    ndp, se = NormalizedDotProduct(2), SquaredExponential(1.5)
    kernel = ndp + 0.5 * se
    assert isinstance(kernel, Sum) and isinstance(kernel.k2, Scaled)
    np.testing.assert_allclose(kernel(X, Y), ndp(X, Y) + 0.5 * se(X, Y), rtol=1e-14)
    np.testing.assert_allclose(kernel.diag(X), ndp.diag(X) + 0.5)
    np.testing.assert_allclose(kernel.gradient(X, Y), ndp.gradient(X, Y) + 0.5 * se.gradient(X, Y),
                               rtol=1e-12)
    assert kernel.theta_names == ["k2__scale", "k2__kernel__length_scale"]
    np.testing.assert_allclose(kernel.theta, np.log([0.5, 1.5]))
    twin = kernel.clone_with_theta(np.log([2.0, 3.0]))
    assert twin.k2.scale == pytest.approx(2.0)
    assert twin.k2.kernel.length_scale == pytest.approx(3.0)
    assert kernel.k2.scale == 0.5  # the original is untouched
    assert clone(kernel).get_params()["k2__kernel__length_scale"] == 1.5
    fixed = Scaled(SquaredExponential(1.0, "fixed"), 2.0, "fixed")
    assert fixed.n_theta == 0 and fixed.theta.shape == (0,)
    with pytest.raises(ValueError, match="theta must have shape"):
        kernel.clone_with_theta([0.0])
    with pytest.raises(TypeError):
        ndp + 1.0


def test_row_dots_are_cached_only_for_read_only_arrays():
    from kernelpot.kernels import row_dots

    rng = np.random.default_rng(0)
    A, X = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    env = np.array([0, 0, 1, 2, 2, 1])
    expected = np.einsum("pd,pd->p", A, X[env])
    first = row_dots(A, X, env)
    np.testing.assert_allclose(first, expected, rtol=1e-15)
    assert row_dots(A, X, env) is not first  # writeable: recomputed every call
    A[0, 0] += 1.0
    np.testing.assert_allclose(row_dots(A, X, env)[0], A[0] @ X[0], rtol=1e-15)
    for values in (A, X, env):
        values.setflags(write=False)
    cached = row_dots(A, X, env)
    assert row_dots(A, X, env) is cached and not cached.flags.writeable
    np.testing.assert_allclose(cached, np.einsum("pd,pd->p", A, X[env]), rtol=1e-15)
    # views (the exact model passes rows[first:]) hit the cache on their own key
    tail = row_dots(A[2:], X, env[2:])
    assert row_dots(A[2:], X, env[2:]) is tail
    np.testing.assert_allclose(tail, cached[2:], rtol=1e-15)
    # a read-only view of a writeable array is not cached: its values may change
    B = rng.normal(size=(6, 4))
    view = B[:]
    view.setflags(write=False)
    first = row_dots(view, X, env)
    B[0, 0] += 1.0
    np.testing.assert_allclose(row_dots(view, X, env)[0], B[0] @ X[0], rtol=1e-15)
    assert not np.allclose(first[0], B[0] @ X[0])
