"""The fit's memory estimate (estimate_fit_memory, the fit's log, kernelpot fit --dry-run)."""

import tracemalloc

import pytest
from helpers import emt_strained_cells

from kernelpot import SOAP, SparseGPPotential
from kernelpot.cli import main
from kernelpot.fit_memory import FitMemory, block_rows_for, sparse_fit_memory


@pytest.fixture(scope="module")
def cells():
    return emt_strained_cells(30, seed=0, n_repeat=(2, 2, 2), rattle=0.1)  # 32 atoms each


def _model(**options):
    kwargs = dict(method="sparse", n_sparse=500, random_state=0, calibration=None) | options
    return SparseGPPotential(SOAP(["Cu"], 4.0, 6, 4, 0.4), **kwargs)


@pytest.mark.parametrize(("limit", "calibration", "options"), [
    (4.0, None, {}), (2e-3, None, {}), (2e-3, "loso", {}),
    (4.0, None, {"incremental": True}),  # every structure's descriptors kept
])
def test_the_estimate_is_the_fits_traced_peak_within_a_third(cells, limit, calibration,
                                                              options, caplog):
    model = _model(design_memory_limit=limit, calibration=calibration, **options)
    estimate = model.estimate_fit_memory(cells)
    assert estimate.n_observations == 30 * (1 + 3 * 32 + 6)
    assert (estimate.block_rows is None) == (limit == 4.0)
    tracemalloc.start()
    try:
        with caplog.at_level("INFO", logger="kernelpot"):
            model.fit(cells)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert estimate.n_columns == len(model.alpha_) == 500
    assert ("streamed design" in caplog.text) == (estimate.block_rows is not None)
    # the fit logs the same estimate before its first descriptor
    assert str(estimate) in caplog.text
    # numpy's arrays (what tracemalloc sees) against the estimate: measured 0.80-1.07
    assert 0.67 * estimate.peak < peak < 1.33 * estimate.peak


@pytest.mark.parametrize(("method", "copies", "options", "seen"), [
    ("cur", 4.1, {"inducing_pool": 600}, 600),  # 600 of 960 drawn at random
    ("fps", 2.0, {"inducing_pool": 300, "n_sparse": 100}, 400),  # a pool of 4 n_sparse
])
def test_a_smaller_inducing_pool_shrinks_the_selection_stage(cells, method, copies, options,
                                                             seen):
    n_sparse = options.get("n_sparse", 500)
    full = _model(sparse_method=method, n_sparse=n_sparse).estimate_fit_memory(cells)
    pooled = _model(sparse_method=method, **options).estimate_fit_memory(cells)
    D = SOAP(["Cu"], 4.0, 6, 4, 0.4).get_number_of_features()
    structure = full.stages["inducing selection"] - 8 * D * (960 + copies * 960)
    assert pooled.stages["inducing selection"] == pytest.approx(
        structure + 8 * D * (seen + copies * seen), rel=1e-12)


def test_the_exact_model_estimates_its_kernel_matrix(cells):
    estimate = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5),
                                 method="exact").estimate_fit_memory(cells[:4])
    assert estimate.method == "exact"
    assert list(estimate.stages) == ["kernel matrix and factor"]
    assert estimate.n_observations == 4 * (1 + 3 * 32 + 6)
    # at least the kernel matrix of the observations, float64
    assert estimate.peak >= 8 * estimate.n_observations ** 2
    assert "exact model" in str(estimate)


def test_the_stages_and_the_peak_add_up():
    estimate = sparse_fit_memory(10_000, 100, 200, 50, [3000, 1000], "fps", 500, 1e6,
                                 loso=True)
    M = 200
    assert estimate.peak == estimate.held + max(estimate.stages.values())
    assert estimate.stages["inducing selection"] == 8 * 50 * (4000 + 2 * 3000) + 1e6
    # the likelihood search beside the streamed factors; the solve factors them in place
    assert estimate.stages["likelihood search"] == 8 * 8 * M * M + 3 * 8 * (M + 1) ** 2
    assert estimate.stages["posterior solve"] == pytest.approx(
        3 * 8 * (M + 1) ** 2 + 8 * (M + 1 + 100 + M) * M * 1.28 + 2 * 8 * M * M)
    assert "leave-one-structure-out pass" in estimate.stages
    assert estimate.peak_gib == estimate.peak / 2**30
    whole = sparse_fit_memory(10_000, 100, 200, 50, [3000, 1000], "fps", None, 1e6, True)
    assert "design (whole)" in whole.stages and whole.block_rows is None
    assert "posterior solve" not in whole.stages  # the in-memory design's copies hold it
    assert "leave-one-structure-out pass" not in whole.stages
    assert isinstance(whole, FitMemory) and "the whole design in memory" in str(whole)


def test_block_rows_share_the_limit_between_jobs_and_leave_room_on_workers():
    M = 1000
    assert block_rows_for(2**30, M) == int(2**30 / 4 / (8 * M))
    assert block_rows_for(2**30, M, n_jobs=2) == int(2**30 / 8 / (8 * M))
    # a worker thread with 1 GiB: half of it less seven (M + 1)² factors
    room = 2**30 / 2 - 7 * 8 * (M + 1) ** 2
    assert block_rows_for(2**40, M, worker_bytes=2**30) == int(room / (8 * M))
    assert block_rows_for(1.0, M) == 1


def test_kernelpot_fit_dry_run_prints_the_estimate_and_fits_nothing(cells, tmp_path, capsys):
    from ase.io import write

    path = tmp_path / "train.xyz"
    write(path, cells[:6])
    assert main(["fit", str(path), "--dry-run", "--method", "sparse", "--n-sparse", "50",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 structures; memory estimate of the fit (nothing fitted)" in out
    assert f"{6 * (1 + 3 * 32 + 6)} observations; sparse model, M = 50" in out
    assert "estimated peak:" in out
    assert list(tmp_path.iterdir()) == [path]
    # without --dry-run the model file is required
    assert main(["fit", str(path), "--quiet"]) == 1
    assert "give the model file to write (-o model.npz), or --dry-run" in capsys.readouterr().err
