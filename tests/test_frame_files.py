"""FrameFiles: training structures read from files when used, not held."""

import gc
import pickle
import tracemalloc

import numpy as np
import pytest
from ase import Atoms
from ase.io import iread, read, write
from helpers import emt_strained_cells

from kernelpot import SOAP, FrameFiles, SparseGPPotential

FIXED = {"optimize": False, "signal_std": 3.0, "energy_noise": 0.003, "force_noise": 0.02,
         "stress_noise": 5e-4}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Twelve EMT cells in two extxyz files (5 + 7) and an ASE trajectory of three."""
    root = tmp_path_factory.mktemp("frames")
    cells = emt_strained_cells(12, seed=0, rattle=0.1)
    write(root / "a.xyz", cells[:5])
    write(root / "b.xyz", cells[5:])
    write(root / "c.traj", cells[:3])
    return root


def _same(a, b):
    return (np.array_equal(a.numbers, b.numbers) and np.array_equal(a.positions, b.positions)
            and a.get_potential_energy() == b.get_potential_energy()
            and np.array_equal(a.get_forces(), b.get_forces()))


def test_frames_in_order_forward_back_and_sliced(files):
    frames = FrameFiles([files / "a.xyz", str(files / "b.xyz")])
    expected = read(files / "a.xyz", ":") + read(files / "b.xyz", ":")
    assert len(frames) == 12 and frames.n_atoms.tolist() == [len(a) for a in expected]
    for k in (0, 1, 2, 7, 3, 11, 5, 4, 0, -1, -12):  # across files, forward and back
        assert _same(frames[k], expected[k])
    assert all(_same(a, b) for a, b in zip(frames, expected, strict=True))
    assert all(_same(a, b) for a, b in zip(frames[3:9:2], expected[3:9:2], strict=True))
    for k in (12, -13):
        with pytest.raises(IndexError, match="of 12"):
            frames[k]
    assert "a.xyz, b.xyz" in repr(frames) and "12 frames" in repr(frames)


def test_any_format_ase_iterates_and_a_pickled_copy_reads_on_its_own(files):
    frames = FrameFiles(files / "c.traj")
    expected = read(files / "c.traj", ":")
    frames[2]  # an open file and kept frames, which a pickle leaves behind
    copy = pickle.loads(pickle.dumps(frames))
    assert copy._cursor is None and not copy._kept
    assert all(_same(copy[k], expected[k]) for k in (2, 0, 1))


def test_missing_empty_and_changed_files_are_named(files, tmp_path):
    with pytest.raises(ValueError, match="missing.xyz does not exist"):
        FrameFiles([files / "a.xyz", tmp_path / "missing.xyz"])
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(ValueError, match="cannot read .*empty.xyz: Empty file"):
        FrameFiles(tmp_path / "empty.xyz")  # ase.io's format guess refuses it
    with pytest.raises(ValueError, match="empty.xyz holds no structures"):
        FrameFiles(tmp_path / "empty.xyz", format="extxyz")
    (tmp_path / "bad.xyz").write_text("3\nnot a frame\nH 0 0\n")
    with pytest.raises(ValueError, match="cannot read .*bad.xyz"):
        FrameFiles(tmp_path / "bad.xyz")
    with pytest.raises(ValueError, match="no files"):
        FrameFiles([])
    write(tmp_path / "short.xyz", read(files / "b.xyz", ":"))
    frames = FrameFiles(tmp_path / "short.xyz")
    write(tmp_path / "short.xyz", read(files / "b.xyz", ":2"))
    with pytest.raises(ValueError, match="fewer frames than when it was scanned"):
        frames[5]
    cells = read(files / "b.xyz", ":")
    write(tmp_path / "changed.xyz", cells)
    frames = FrameFiles(tmp_path / "changed.xyz")
    write(tmp_path / "changed.xyz", [atoms[:4] for atoms in cells])  # as many frames
    with pytest.raises(ValueError, match="has 4 atoms, 8 when it was scanned"):
        frames[1]
    with pytest.raises(TypeError):
        frames[1.5]


def test_directory_formats_and_relative_paths(files, tmp_path, monkeypatch):
    cells = read(files / "a.xyz", ":")
    write(tmp_path / "cells.bundle", cells, format="bundletrajectory")
    monkeypatch.chdir(tmp_path)
    frames = FrameFiles("cells.bundle")  # a directory, named relative to here
    monkeypatch.chdir(files)
    assert len(frames) == 5 and all(_same(frames[k], cells[k]) for k in (4, 0))


@pytest.mark.parametrize("limit", [4.0, 4e-5])  # in memory, and streamed in blocks
def test_a_fit_from_paths_is_the_fit_from_the_frames_read(files, limit):
    paths = [files / "a.xyz", str(files / "b.xyz")]
    expected = read(paths[0], ":") + read(paths[1], ":")
    kwargs = dict(method="sparse", random_state=0, n_sparse=30, design_memory_limit=limit,
                  **FIXED)
    reference = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(expected)
    for X in (paths, FrameFiles(paths)):
        model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(X)
        np.testing.assert_array_equal(model.alpha_, reference.alpha_)
        np.testing.assert_array_equal(model.posterior_.loso.errors,
                                      reference.posterior_.loso.errors)
    single = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(files / "a.xyz")
    assert single.posterior_.loso.n_structures == 5


@pytest.mark.parametrize("method", ["sparse", "exact"])
def test_a_fit_from_an_iterator_is_the_fit_from_the_list(files, method, tmp_path, monkeypatch):
    expected = read(files / "b.xyz", ":")
    for k, atoms in enumerate(expected):
        atoms.info["config_type"] = "bulk" if k % 2 else "strained"
    kwargs = dict(method=method, random_state=0, n_sparse=30, config_type_noise=True,
                  **FIXED) if method == "sparse" else dict(method="exact", **FIXED)
    reference = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(expected)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the spool goes
    for X in ((a for a in expected), iread(files / "b.xyz"), iter(expected)):
        model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(X)
        assert list(tmp_path.iterdir()) == []  # the temporary trajectory is gone
        np.testing.assert_array_equal(model.alpha_, reference.alpha_)
        np.testing.assert_array_equal(model.posterior_.loso.errors,
                                      reference.posterior_.loso.errors)
        for got, want in zip(model.predict_forces(expected[:2], return_std=True),
                             reference.predict_forces(expected[:2], return_std=True),
                             strict=True):
            np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    estimate = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs) \
        .estimate_fit_memory(a for a in expected)
    assert estimate.n_observations == reference.estimate_fit_memory(expected).n_observations


@pytest.mark.parametrize("method", ["sparse", "auto"])  # auto: the exact model here
def test_an_incremental_fit_from_an_iterator_keeps_its_structures(method):
    # more structures than FrameFiles keeps read (8): they must not come from the file
    cells = emt_strained_cells(13, seed=3, rattle=0.1)
    kwargs = dict(method=method, random_state=0, incremental=True, **FIXED)
    model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(
        a for a in cells[:12])
    assert model.method_ == ("exact" if method == "auto" else "sparse")
    assert len(list(model.posterior_.training_frames)) == 12
    model.update([cells[12]])  # the spool (if any) is gone; the structures are not
    assert model.posterior_.n_training_structures == 13
    reference = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(cells[:12])
    reference.update([cells[12]])
    np.testing.assert_allclose(model.alpha_, reference.alpha_, rtol=0, atol=1e-12)


def test_an_iterator_trains_on_the_labels_of_any_calculator(files, tmp_path, monkeypatch):
    from ase.calculators.emt import EMT

    class Unwritable(EMT):  # parameters a trajectory cannot write as JSON
        def todict(self):
            return {"handle": object()}

    cells = read(files / "a.xyz", ":")
    live = []
    for atoms in cells:
        atoms = atoms.copy()
        atoms.calc = Unwritable()
        atoms.get_forces()  # computed: the labels a list would train on
        live.append(atoms)
    kwargs = dict(method="sparse", random_state=0, n_sparse=30, **FIXED)
    reference = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(live)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(iter(live))
    np.testing.assert_array_equal(model.alpha_, reference.alpha_)
    with pytest.raises(TypeError, match=r"structure 0 is a PosixPath, not an ase.Atoms "
                                        r"\(give paths as a list"):
        model.fit(iter([files / "a.xyz"]))


def test_a_bad_iterator_is_named(files, tmp_path, monkeypatch):
    cells = read(files / "a.xyz", ":")
    model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), method="sparse", **FIXED)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(TypeError, match="fit: structure 2 is a str, not an ase.Atoms"):
        model.fit(iter([cells[0], cells[1], "c.xyz"]))
    with pytest.raises(ValueError, match="fit: structure 1 is empty"):
        model.fit(iter([cells[0], cells[0][:0]]))
    with pytest.raises(ValueError, match="iterator of no structures"):
        model.fit(a for a in [])
    with pytest.raises(ValueError, match=r"structure\(s\) \[1\] carry no energy"):
        model.fit(iter([cells[0], Atoms("Cu", positions=[[0, 0, 0]])]))
    assert list(tmp_path.iterdir()) == []  # removed after every failure too


def test_predictions_from_paths_are_those_of_the_frames_read(files):
    paths = [files / "a.xyz", str(files / "b.xyz")]
    frames = read(paths[0], ":") + read(paths[1], ":")
    model = SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), method="sparse", random_state=0,
                              n_sparse=30, **FIXED).fit(frames[:6])
    energies, e_std = model.predict(frames, return_std=True)
    forces, f_std = model.predict_forces(frames, return_std=True)
    stress = model.predict_stress(frames)
    for X in (paths, FrameFiles(paths), files / "a.xyz"):
        n = 12 if isinstance(X, (list, FrameFiles)) else 5
        e, s = model.predict(X, return_std=True)
        # the same frames, in batches of another size: equal up to BLAS's rounding (the
        # stds, a difference of near-equal terms, to ~1e-9 relative)
        np.testing.assert_allclose(e, energies[:n], rtol=1e-12)
        np.testing.assert_allclose(s, e_std[:n], rtol=1e-8)
        f, fs = model.predict_forces(X, return_std=True)
        for k in range(n):
            np.testing.assert_allclose(f[k], forces[k], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(fs[k], f_std[k], rtol=1e-8)
        np.testing.assert_allclose(model.predict_stress(X), stress[:n], rtol=1e-10,
                                   atol=1e-10 * np.abs(stress).max())
        local = model.predict_local_energies(X)
        assert np.allclose([e.sum() for e in local], energies[:n], rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="missing.xyz"):
        model.predict(files / "missing.xyz")


def _traced_peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class _CountingSOAP(SOAP):
    """SOAP that counts, every tenth structure it describes, the ase.Atoms held."""

    most_alive = [0]
    calls = [0]

    def create(self, atoms, *args, **kwargs):
        self._count()
        return super().create(atoms, *args, **kwargs)

    def compute(self, atoms, *args, **kwargs):
        self._count()
        return super().compute(atoms, *args, **kwargs)

    def _count(self):
        self.calls[0] += 1
        if self.calls[0] % 10 == 0:
            gc.collect()  # an Atoms and its calculator are a cycle: count what is held
            alive = sum(isinstance(o, Atoms) for o in gc.get_objects())
            self.most_alive[0] = max(self.most_alive[0], alive)


def test_the_fit_does_not_hold_the_structures(tmp_path):
    cells = emt_strained_cells(100, seed=1, rattle=0.1)
    write(tmp_path / "cells.xyz", cells)
    del cells
    gc.collect()
    gc.freeze()  # other tests' objects: out of the counts, and of every collection's work
    try:
        _check_the_structures_held(tmp_path)
    finally:
        gc.unfreeze()


def _check_the_structures_held(tmp_path):

    def model(descriptor=_CountingSOAP):
        return SparseGPPotential(descriptor(["Cu"], 4.0, 3, 2, 0.5), method="sparse",
                                 random_state=0, n_sparse=20, calibration=None,
                                 design_memory_limit=2e-4, **FIXED)

    alive = {}
    for name, source in (("in memory", lambda: read(tmp_path / "cells.xyz", ":")),
                         ("from the file", lambda: tmp_path / "cells.xyz"),
                         ("from an iterator", lambda: iread(tmp_path / "cells.xyz"))):
        gc.collect()
        before = sum(isinstance(o, Atoms) for o in gc.get_objects())
        _CountingSOAP.most_alive[0] = 0
        model().fit(source())
        alive[name] = _CountingSOAP.most_alive[0] - before
    # every structure alive in memory, a few blocks' worth from the file, in the features
    # pass (create) and the design pass (compute)
    assert alive["in memory"] >= 100 and alive["from the file"] < 40, alive
    assert alive["from an iterator"] < 40, alive  # spooled to disk, not listed
    # and the traced peak (plain SOAP, no collections forced, Numba compiled by the fits
    # above): reading them all costs their size; read when used, part of it is saved (a
    # block's structures and the last few read are held, and ase's extxyz structures,
    # each a cycle with its calculator, wait for the collector)
    tracemalloc.start()
    frames = read(tmp_path / "cells.xyz", ":")
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del frames
    in_memory = _traced_peak(lambda: model(SOAP).fit(read(tmp_path / "cells.xyz", ":")))
    lazy = _traced_peak(lambda: model(SOAP).fit(tmp_path / "cells.xyz"))
    assert in_memory - lazy > 0.4 * held, (in_memory, lazy, held)
