"""Low-rank updates equal fresh fits on the same data and inducing set."""

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import emt_copper_frames

from kernelpot import SOAP, SparseGPPotential

FIXED = {"method": "sparse", "optimize": False, "signal_std": 3.0, "energy_noise": 0.003,
         "force_noise": 0.08,
         "sparse_method": "all", "e0": {"H": -10.0, "C": -40.0, "O": -70.0}}


def _assert_same_predictions(a, b, frames):
    fa, sa = a.predict_forces(frames, return_std=True)
    fb, sb = b.predict_forces(frames, return_std=True)
    np.testing.assert_allclose(a.predict(frames), b.predict(frames), rtol=1e-9)
    for x, y in zip(fa, fb, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_update_with_all_new_environments_equals_fresh_fit(ethanol_frames, small_soap):
    updated = SparseGPPotential(small_soap, incremental=True, **FIXED).fit(ethanol_frames[:4])
    updated.update(ethanol_frames[4:6], n_inducing="all")
    updated.update(ethanol_frames[6:8], n_inducing="all")
    fresh = SparseGPPotential(small_soap, **FIXED).fit(ethanol_frames[:8])
    assert updated.n_inducing_ == fresh.n_inducing_
    _assert_same_predictions(updated, fresh, ethanol_frames[40:43])
    assert updated.log_marginal_likelihood() == pytest.approx(
        fresh.log_marginal_likelihood(), rel=1e-8)


def test_rows_only_update_equals_refactorisation(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, incremental=True, **FIXED).fit(ethanol_frames[:5])
    before = model.n_inducing_.copy()
    model.update(ethanol_frames[5:9])
    assert model.n_inducing_ == before
    low_rank = model.predict(ethanol_frames[40:42])
    model.posterior_.refactor()  # a full QR of the stored design, same values
    np.testing.assert_allclose(model.predict(ethanol_frames[40:42]), low_rank, rtol=1e-10)


def test_update_picks_the_most_uncertain_environments(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, incremental=True, **FIXED).fit(ethanol_frames[:3])
    squeezed = ethanol_frames[20].copy()
    centre = squeezed.positions.mean(axis=0)
    squeezed.positions = centre + 0.85 * (squeezed.positions - centre)
    # the labels need not be right for this check
    squeezed.calc = SinglePointCalculator(squeezed, forces=ethanol_frames[20].get_forces())
    variance_before = model.predict_structure(squeezed, variance=True)
    model.update([squeezed], n_inducing=2)
    assert sum(model.n_inducing_.values()) == 27 + 2
    # two of its nine environments join the inducing set: its energy variance drops
    after = model.predict_structure(squeezed, variance=True)
    assert (after.energy_var_posterior + after.energy_var_projection) < 0.75 * (
        variance_before.energy_var_posterior + variance_before.energy_var_projection)


def test_update_reoptimises_and_improves(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, incremental=True, sparse_method="all",
                              random_state=0, method="sparse").fit(ethanol_frames[:2])
    score_before = model.score(ethanol_frames[40:50])
    model.update(ethanol_frames[2:12], n_inducing="all", optimize=True)
    assert model.score(ethanol_frames[40:50]) > score_before
    assert np.isfinite(model.log_marginal_likelihood())


def test_periodic_update_from_one_frame():
    frames = emt_copper_frames(4, seed=2, rattle=0.15)
    soap = SOAP(["Cu"], 4.0, n_max=3, l_max=2, sigma=0.5)
    fixed = {k: v for k, v in FIXED.items() if k != "e0"}
    model = SparseGPPotential(soap, incremental=True, **fixed).fit(frames[:1])
    model.update(frames[1:3], n_inducing="all")
    fresh = SparseGPPotential(soap, **fixed).fit(frames[:3])
    assert model.n_inducing_ == fresh.n_inducing_ == {"Cu": 96}
    # same inducing set and hyperparameters; only e0 differs (kept from the one-frame fit)
    shift = (fresh.e0_ - model.e0_)[0] * 32
    np.testing.assert_allclose(fresh.predict_forces(frames[3:])[0],
                               model.predict_forces(frames[3:])[0], atol=1e-6 + abs(shift))


def test_update_errors(ethanol_frames, small_soap, tmp_path):
    model = SparseGPPotential(small_soap, incremental=True, **FIXED).fit(ethanol_frames[:2])
    with pytest.raises(ValueError, match="n_inducing must be"):
        model.update(ethanol_frames[2:3], n_inducing=-1)
    from ase import Atoms

    with pytest.raises(ValueError, match="not trained on"):
        model.update([Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]])])
    from kernelpot import load

    loaded = load(model.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(loaded.predict(ethanol_frames[40:41]),
                                  model.predict(ethanol_frames[40:41]))
    with pytest.raises(ValueError, match="incremental=True"):
        loaded.update(ethanol_frames[2:3])


def test_update_drops_a_stale_calibration(ethanol_frames, small_soap):
    model = SparseGPPotential(small_soap, incremental=True, optimize=False, calibration=None,
                              random_state=0, method="sparse").fit(ethanol_frames[:6])
    model.calibrate(ethanol_frames[20:24])
    assert model.std_scale_ is not None
    with pytest.warns(UserWarning, match="calibration no longer applies"):
        model.update(ethanol_frames[6:8], n_inducing=3)
    assert model.std_scale_ is None and model.std_scale("forces") == 1.0


def test_max_inducing_caps_each_element_and_keeps_the_observations(ethanol_frames,
                                                                    small_soap):
    model = SparseGPPotential(small_soap, incremental=True, **FIXED).fit(ethanol_frames[:3])
    assert model.n_inducing_ == {"H": 18, "C": 6, "O": 3}
    # three new frames: 18 H, 6 C and 3 O candidates; H is capped at 20, the rest not
    model.update(ethanol_frames[3:6], n_inducing="all", max_inducing={"H": 20})
    assert model.n_inducing_ == {"H": 20, "C": 12, "O": 6}
    # an element at its cap gains nothing, but its structures are still observations
    before = model.predict(ethanol_frames[40:42])
    model.update(ethanol_frames[6:8], n_inducing="all", max_inducing=12)
    assert model.n_inducing_ == {"H": 20, "C": 12, "O": 8}
    assert model.posterior_.n_training_structures == 8
    assert not np.allclose(model.predict(ethanol_frames[40:42]), before, rtol=1e-6)
    assert model.posterior_.training.Kw.shape == (8 * 28, 40)


def test_max_inducing_keeps_the_most_uncertain_environments():
    """Capped at two more, the update adds the two that n_inducing=2 picks."""
    frames = emt_copper_frames(4, seed=3, rattle=0.15)
    soap = SOAP(["Cu"], 4.0, n_max=3, l_max=2, sigma=0.5)
    fixed = {k: v for k, v in FIXED.items() if k != "e0"}
    capped = SparseGPPotential(soap, incremental=True, **fixed).fit(frames[:1])
    counted = SparseGPPotential(soap, incremental=True, **fixed).fit(frames[:1])
    capped.update(frames[1:3], n_inducing="all", max_inducing=34)
    counted.update(frames[1:3], n_inducing=2)
    assert capped.n_inducing_ == counted.n_inducing_ == {"Cu": 34}
    np.testing.assert_array_equal(capped.posterior_.inducing[0],
                                  counted.posterior_.inducing[0])


@pytest.mark.parametrize("cap, message", [
    (-1, "max_inducing must be an int >= 0; got -1"),
    (2.5, "max_inducing must be an int >= 0; got 2.5"),
    ({"H": True}, r"max_inducing\['H'\] must be an int >= 0; got True"),
    ({"N": 3}, r"max_inducing names \['N'\], which the model does not know; its "
               r"elements are \['H', 'C', 'O'\]"),
])
def test_max_inducing_errors(ethanol_frames, small_soap, cap, message):
    model = SparseGPPotential(small_soap, incremental=True, **FIXED).fit(ethanol_frames[:2])
    with pytest.raises(ValueError, match=message):
        model.update(ethanol_frames[2:3], n_inducing="all", max_inducing=cap)


def test_an_element_at_its_cap_does_not_spend_the_n_inducing_budget(ethanol_frames,
                                                                     small_soap):
    model = SparseGPPotential(small_soap, incremental=True, **FIXED).fit(ethanol_frames[:3])
    model.update(ethanol_frames[3:4], n_inducing=2, max_inducing={"H": 18})
    assert model.n_inducing_["H"] == 18
    assert model.n_inducing_["C"] + model.n_inducing_["O"] == 6 + 3 + 2
    before = dict(model.n_inducing_)
    model.update(ethanol_frames[4:5], n_inducing=3, max_inducing=0)  # every element full
    assert model.n_inducing_ == before and model.posterior_.n_training_structures == 5
