"""The streamed sparse fit (design_memory_limit): the same model without the whole design."""

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import emt_strained_cells

from kernelpot import SOAP, SparseGPPotential, TwoBody
from kernelpot.streaming import StackedQR


@pytest.mark.parametrize("n_rows", [3, 40])
def test_stacked_qr_gives_the_factor_and_projection_of_the_whole_matrix(n_rows):
    rng = np.random.default_rng(0)
    A, b = rng.normal(size=(n_rows, 8)), rng.normal(size=n_rows)
    qr = StackedQR(8)
    for start in range(0, n_rows, 7):
        qr.add(A[start:start + 7], b[start:start + 7])
    R, z, rho2 = qr.parts()
    np.testing.assert_allclose(R.T @ R, A.T @ A, atol=1e-10)
    np.testing.assert_allclose(R.T @ z, A.T @ b, atol=1e-10)
    assert z @ z + rho2 == pytest.approx(b @ b, rel=1e-12)
    assert np.allclose(R, np.triu(R)) and qr.n_rows == n_rows


@pytest.fixture(scope="module")
def cells():
    frames = emt_strained_cells(12, seed=0, rattle=0.1)
    # one cell without forces, one without an energy: rows of every kind, not in every cell
    for k, kept in ((4, {"energy"}), (7, {"forces"})):
        atoms = frames[k]
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, stress=atoms.get_stress(),
                                           **{n: v for n, v in labels.items() if n in kept})
    return frames


def _pair(cells, **options):
    kwargs = dict(method="sparse", random_state=0, n_sparse=50) | options
    whole = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(cells)
    # about 0.04 MiB of design allowed at M = 50: blocks of a structure or two
    limit = 4e-5 * kwargs["n_sparse"] / 50
    streamed = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), design_memory_limit=limit,
                                 **kwargs).fit(cells)
    return whole, streamed


@pytest.mark.parametrize("n_sparse", [50, 6])  # 6: energy and stress rows folded too
def test_the_streamed_fit_is_the_in_memory_fit(cells, caplog, n_sparse):
    test = emt_strained_cells(3, seed=9)
    fixed = {"optimize": False, "signal_std": 3.0, "energy_noise": 0.003,
             "force_noise": 0.02, "stress_noise": 5e-4, "n_sparse": n_sparse}
    with caplog.at_level("INFO", logger="kernelpot.streaming"):
        whole, streamed = _pair(cells, **fixed)
    # 11 energies and 72 stresses: kept as rows up to M + 1, folded into M rows beyond
    M = len(whole.alpha_)
    stats = streamed.posterior_.stats
    assert (stats.m_E, stats.m_S) == tuple(n if n <= M + 1 else M for n in (11, 72))
    assert stats.folded and (stats.n_E, stats.n_S) == (11, 72)
    assert "streamed design" in caplog.text and "blocks" in caplog.text
    np.testing.assert_allclose(streamed.alpha_, whole.alpha_, rtol=0,
                               atol=1e-8 * np.max(np.abs(whole.alpha_)))
    assert streamed.log_marginal_likelihood_value_ == pytest.approx(
        whole.log_marginal_likelihood_value_, rel=1e-10)
    for quantity in ("forces", "stress"):
        for model in (whole, streamed):  # raw stds: the posterior's
            model.set_params(apply_calibration=False)
        mean_w, std_w = getattr(whole, f"predict_{quantity}")(test, return_std=True)
        mean_s, std_s = getattr(streamed, f"predict_{quantity}")(test, return_std=True)
        np.testing.assert_allclose(np.concatenate(mean_s), np.concatenate(mean_w), rtol=1e-8,
                                   atol=1e-10)
        np.testing.assert_allclose(np.concatenate(std_s), np.concatenate(std_w), rtol=1e-8)
        for model in (whole, streamed):
            model.set_params(apply_calibration=True)
    # the LOSO terms (a second pass; each a difference of nearly equal numbers, so
    # compared to their largest value) and the calibration fitted on them
    for name in ("errors", "posterior", "projection", "noise", "shift_basis"):
        expected = getattr(whole.posterior_.loso, name)
        np.testing.assert_allclose(getattr(streamed.posterior_.loso, name), expected, rtol=0,
                                   atol=1e-6 * np.max(np.abs(expected)))
    # (a weakly determined calibration parameter may move more than the stds do)
    _, std_w = whole.predict_forces(test, return_std=True)
    _, std_s = streamed.predict_forces(test, return_std=True)
    np.testing.assert_allclose(np.concatenate(std_s), np.concatenate(std_w), rtol=1e-4)


def test_the_streamed_likelihood_is_the_in_memory_one(cells, caplog):
    with caplog.at_level("INFO", logger="kernelpot.streaming"):
        whole, streamed = _pair(cells)
    assert caplog.text.count("streamed design") == 1  # the second fit only
    theta = np.log([2.0, 0.004, 0.03, 1e-3])
    value_w, grad_w = whole.log_marginal_likelihood(theta, eval_gradient=True)
    value_s, grad_s = streamed.log_marginal_likelihood(theta, eval_gradient=True)
    assert value_s == pytest.approx(value_w, rel=1e-10)
    np.testing.assert_allclose(grad_s, grad_w, rtol=1e-6, atol=1e-6)
    assert streamed.force_noise_ == pytest.approx(whole.force_noise_, rel=1e-3)


def test_a_fixed_two_body_term_without_stresses_and_a_file_round_trip(cells, tmp_path,
        float64_factor_files):
    from kernelpot import load

    test = emt_strained_cells(2, seed=5)
    fixed = {"two_body": TwoBody(4.0, 6, 1.5), "use_stress": False, "optimize": False,
             "signal_std": 2.0, "force_noise": 0.02}  # the pair prior std stays fixed
    whole, streamed = _pair(cells, **fixed)
    assert streamed.posterior_.n_stress_observations == 0
    np.testing.assert_allclose(np.concatenate(streamed.predict_forces(test)),
                               np.concatenate(whole.predict_forces(test)), rtol=1e-8,
                               atol=1e-10)
    # the projection term leaves the two-body columns out in both
    np.testing.assert_allclose(streamed.posterior_.loso.projection,
                               whole.posterior_.loso.projection, rtol=1e-6, atol=1e-14)
    loaded = load(streamed.save(tmp_path / "streamed"))
    for model in (loaded, streamed):
        model.set_params(apply_calibration=False)
    np.testing.assert_array_equal(loaded.predict_forces(test, return_std=True)[1][0],
                                  streamed.predict_forces(test, return_std=True)[1][0])


def test_what_needs_the_whole_design_builds_it_with_a_warning(cells):
    for options in ({"incremental": True}, {"two_body": TwoBody(4.0, 6, 1.5)}):
        with pytest.warns(UserWarning, match="needs the whole design: building it whole"):
            SparseGPPotential(SOAP(["Cu"], 4.0, 3, 2, 0.5), method="sparse", n_sparse=30,
                              design_memory_limit=1e-6, n_restarts=0, **options).fit(cells)
    with pytest.raises(ValueError, match="design_memory_limit must be a number of GiB > 0"):
        SparseGPPotential(SOAP(["Cu"], 4.0, 3, 2, 0.5), design_memory_limit=0).fit(cells)


def test_a_folded_model_file_round_trips_and_tampered_columns_are_refused(cells, tmp_path):
    import copy

    from kernelpot import io, load

    fixed = {"optimize": False, "signal_std": 3.0, "energy_noise": 0.003,
             "force_noise": 0.02, "stress_noise": 5e-4, "n_sparse": 6}
    _, streamed = _pair(cells, **fixed)
    stats = streamed.posterior_.stats
    assert stats.folded and (stats.m_E, stats.m_S) == (6, 6)
    theta = np.log([2.0, 0.004, 0.03, 1e-3])
    path = streamed.save(tmp_path / "folded")
    assert load(path).log_marginal_likelihood(theta) == pytest.approx(
        streamed.log_marginal_likelihood(theta), rel=1e-12)
    metadata, arrays = io.read_model_file(path)
    for name, columns in (("swapped", (5, 7)), ("too many", (12, 0))):
        changed = copy.deepcopy(metadata)
        for key in ("format", "format_version", "kernelpot_version", "units"):
            changed.pop(key)
        changed["fitted"]["stats"].update(m_E=columns[0], m_S=columns[1])
        written = io.write_model_file(tmp_path / name, changed, arrays)  # a valid checksum
        with pytest.raises(ValueError, match="malformed statistics columns"):
            load(written)


def test_blocks_of_several_structures_leave_each_its_own_inducing_columns(cells, monkeypatch):
    """The LOSO projection term of each structure leaves out the inducing environments
    chosen from it also where a block holds several structures (a block's structures are
    numbered from 0 inside it)."""
    import kernelpot.streaming as streaming

    seen = []
    split = streaming._structure_blocks

    def recorded(design, block_rows):
        blocks = split(design, block_rows)
        seen.append([len(b) for b in blocks])
        return blocks

    monkeypatch.setattr(streaming, "_structure_blocks", recorded)
    fixed = {"optimize": False, "signal_std": 3.0, "energy_noise": 0.003, "force_noise": 0.02,
             "stress_noise": 5e-4, "method": "sparse", "random_state": 0, "n_sparse": 50}
    whole = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **fixed).fit(cells)
    streamed = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), design_memory_limit=6e-5,
                                 **fixed).fit(cells)
    assert max(max(sizes) for sizes in seen) >= 3  # blocks of several structures
    own = whole.posterior_.own_columns(len(cells))
    assert sum(len(c) > 0 for c in own) >= 6
    expected = whole.posterior_.loso.projection
    np.testing.assert_allclose(streamed.posterior_.loso.projection, expected, rtol=0,
                               atol=1e-8 * expected.max())
