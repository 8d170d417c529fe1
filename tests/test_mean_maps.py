"""Mean maps: the closed forms equal the sum over inducing environments, and the sparse
model predicts the same through either."""

import numpy as np
import pytest

import kernelpot.mean_maps as mean_maps_module
import kernelpot.sparse_posterior as sparse_posterior_module
from kernelpot import SparseGPPotential
from kernelpot.kernels import NormalizedDotProduct, Scaled, SquaredExponential
from kernelpot.mean_maps import InducingSum, LinearForm, QuadraticForm, SumMap, mean_map

KERNELS = {
    "dot-2": NormalizedDotProduct(2),
    "dot-1": NormalizedDotProduct(1),
    "dot-3": NormalizedDotProduct(3),
    "se": SquaredExponential(1.5),
    "scaled-dot-2": Scaled(NormalizedDotProduct(2), 0.3),
    "dot-2+se": NormalizedDotProduct(2) + Scaled(SquaredExponential(2.0), 0.1),
}


@pytest.fixture
def environments():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(40, 7))
    w = rng.normal(size=40)
    X = rng.normal(size=(9, 7)) * rng.uniform(0.5, 3.0, size=(9, 1))
    X[4] = 0.0  # an atom without neighbours
    return Z, w, X


@pytest.mark.parametrize("name", list(KERNELS))
def test_closed_form_equals_the_sum_over_inducing_environments(name, environments):
    Z, w, X = environments
    kernel = KERNELS[name]
    energies, gradients = InducingSum(kernel, Z, w)(X, gradients=True)
    mapped = mean_map(kernel, Z, w, closed_form=True)
    e, g = mapped(X, gradients=True)
    np.testing.assert_allclose(e, energies, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g, gradients, rtol=1e-10, atol=1e-12)
    assert mapped(X, gradients=False)[1] is None
    assert e[4] == 0.0 or name in ("se", "dot-2+se")  # the dot product of a zero row is 0


@pytest.mark.parametrize("name", ["dot-2", "dot-1", "dot-2+se"])
def test_closed_form_gradient_matches_finite_differences(name, environments):
    Z, w, X = environments
    mapped = mean_map(KERNELS[name], Z, w, closed_form=True)
    x = X[:1]
    _, g = mapped(x, gradients=True)
    h = 1e-6
    numerical = np.array([(mapped(x + h * e, False)[0] - mapped(x - h * e, False)[0])[0]
                          / (2 * h) for e in np.eye(x.shape[1])])
    np.testing.assert_allclose(g[0], numerical, rtol=1e-6, atol=1e-8)


def test_which_map_each_kernel_gets(environments):
    Z, w, _ = environments
    assert isinstance(mean_map(NormalizedDotProduct(2), Z, w), QuadraticForm)
    assert isinstance(mean_map(NormalizedDotProduct(1), Z, w), LinearForm)
    for kernel in (NormalizedDotProduct(3), SquaredExponential(1.0)):
        assert isinstance(mean_map(kernel, Z, w), InducingSum)
    both = mean_map(KERNELS["dot-2+se"], Z, w)
    assert isinstance(both, SumMap) and isinstance(both.first, QuadraticForm)
    assert both.scales_with_inducing and not mean_map(KERNELS["scaled-dot-2"], Z,
                                                      w).scales_with_inducing
    # "auto": the closed form only where it costs less (D² against 3 M_s D)
    assert isinstance(mean_map(NormalizedDotProduct(2), Z[:2], w[:2]), InducingSum)
    assert isinstance(mean_map(NormalizedDotProduct(2), Z[:2], w[:2], closed_form=True),
                      QuadraticForm)


def _predictions(model, frames, closed_form, monkeypatch):
    original = mean_maps_module.mean_map
    monkeypatch.setattr(sparse_posterior_module, "mean_map",
                        lambda kernel, Z, w: original(kernel, Z, w, closed_form=closed_form))
    model.posterior_.__dict__.pop("_mean_maps_cache", None)
    energies, forces = model.predict_energies_and_forces(frames)
    kinds = {type(m).__name__ for m in model.posterior_.mean_maps()}
    return energies, forces, model.predict_local_energies(frames), kinds


def test_sparse_model_predicts_the_same_through_the_closed_form(fitted_ethanol, ethanol_frames,
                                                                 monkeypatch):
    frames = ethanol_frames[40:45]
    e0, f0, l0, kinds0 = _predictions(fitted_ethanol, frames, False, monkeypatch)
    e1, f1, l1, kinds1 = _predictions(fitted_ethanol, frames, True, monkeypatch)
    assert kinds0 == {"InducingSum"} and kinds1 == {"QuadraticForm"}
    np.testing.assert_allclose(e1, e0, rtol=1e-10)
    for a, b in zip(f1, f0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
    for a, b in zip(l1, l0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_map_follows_an_update(ethanol_frames, small_soap, monkeypatch):
    original = mean_maps_module.mean_map
    monkeypatch.setattr(sparse_posterior_module, "mean_map",
                        lambda kernel, Z, w: original(kernel, Z, w, closed_form=True))
    model = SparseGPPotential(small_soap, method="sparse", incremental=True, n_restarts=0,
                              random_state=0).fit(ethanol_frames[:5])
    frames = ethanol_frames[40:42]
    before = model.predict(frames)
    maps = model.posterior_.mean_maps()
    assert model.posterior_.mean_maps() is maps  # built once
    model.update(ethanol_frames[5:8], n_inducing="all")
    after = model.predict(frames)  # through the rebuilt closed form
    assert model.posterior_.mean_maps() is not maps and not np.allclose(after, before)
    direct, _, _, kinds = _predictions(model, frames, False, monkeypatch)
    assert kinds == {"InducingSum"}
    np.testing.assert_allclose(after, direct, rtol=1e-10)


@pytest.mark.parametrize("zeta", [1, 2])
def test_exact_mean_map_equals_the_sum_over_training_environments(zeta, ethanol_frames,
                                                                  small_soap):
    """Energies, forces, local energies: closed form against the Hessian-contraction path."""
    from kernelpot.kernels import Scaled

    kernel = Scaled(NormalizedDotProduct(zeta), 2.0, scale_bounds="fixed")
    model = SparseGPPotential(small_soap, kernel, method="exact", n_restarts=0,
                              calibration=None, random_state=0).fit(ethanol_frames[:8])
    posterior = model.posterior_
    assert all(m is not None for m in posterior.mean_maps)
    frames = ethanol_frames[40:43]
    e1, f1 = model.predict_energies_and_forces(frames)
    l1 = model.predict_local_energies(frames)
    maps, posterior.mean_maps = posterior.mean_maps, [None] * len(posterior.mean_maps)
    e0, f0 = model.predict_energies_and_forces(frames)
    l0 = model.predict_local_energies(frames)
    posterior.mean_maps = maps
    np.testing.assert_allclose(e1, e0, rtol=1e-10)
    for a, b in zip(f1, f0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
    for a, b in zip(l1, l0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_exact_mean_map_stress_of_a_periodic_cell():
    from helpers import emt_copper_frames

    from kernelpot import SOAP

    frames = emt_copper_frames(4, seed=1)
    model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), method="exact", n_restarts=0,
                              random_state=0).fit(frames[1:])
    posterior = model.posterior_
    assert isinstance(posterior.mean_maps[0], QuadraticForm)
    s1 = model.predict_stress(frames[:1])
    maps, posterior.mean_maps = posterior.mean_maps, [None]
    s0 = model.predict_stress(frames[:1])
    posterior.mean_maps = maps
    # the stress is a small sum of large per-atom strain terms, added in another order
    # by each path: equal to 1e-7 of its largest component (measured 1.0e-8 with
    # OpenBLAS's default threads, 2.6e-8 with one thread: the order of BLAS's sums moves
    # it)
    np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-7 * np.abs(s0).max())


def test_exact_mean_map_falls_back_without_a_closed_form(environments):
    from kernelpot.mean_maps import exact_mean_map

    Z, w, _ = environments
    b = np.ones_like(Z)
    assert exact_mean_map(KERNELS["dot-2+se"], Z, w, b) is None
    assert exact_mean_map(NormalizedDotProduct(3), Z, w, b) is None
    assert isinstance(exact_mean_map(KERNELS["dot-2"], Z, w, b), QuadraticForm)


def test_maps_are_built_once_before_predictions_go_to_workers(ethanol_frames, small_soap):
    """predict with n_jobs=2: the parent builds the maps (the workers get them pickled)."""
    model = SparseGPPotential(small_soap, method="sparse", n_restarts=0, random_state=0,
                              n_jobs=2).fit(ethanol_frames[:6])
    posterior = model.posterior_
    posterior.__dict__.pop("_mean_maps_cache", None)
    energies = model.predict(ethanol_frames[40:44])
    assert "_mean_maps_cache" in posterior.__dict__
    np.testing.assert_allclose(energies, model.set_params(n_jobs=1).predict(
        ethanol_frames[40:44]), rtol=1e-12)
