"""The shared parallel map (kernelpot._parallel): order, n_jobs, progress bar, laziness."""

import time

import numpy as np
import pytest

import kernelpot._parallel
from kernelpot import ACSF
from kernelpot._parallel import imap, map_list


def _slow_square(x):
    """Later items finish first in workers, so ordering is really tested."""
    time.sleep(0.005 * (5 - x % 5))
    return x * x


def _rows(seed):
    return np.random.default_rng(seed).normal(size=(3, 4)).cumsum(axis=0)


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


class _RecordingBar:
    """Stands in for tqdm: records its arguments, updates and closing."""

    def __init__(self, instances, **kwargs):
        self.kwargs, self.n, self.closed = kwargs, 0, False
        instances.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    instances = []
    monkeypatch.setattr(kernelpot._parallel, "tqdm",
                        lambda **kwargs: _RecordingBar(instances, **kwargs))
    return instances


@pytest.mark.parametrize("n_jobs", [None, 1, 2, -1])
def test_results_in_input_order(n_jobs):
    assert map_list(_slow_square, range(10), n_jobs=n_jobs) == [x * x for x in range(10)]
    assert list(imap(_slow_square, iter(range(10)), n_jobs=n_jobs)) == [
        x * x for x in range(10)]


def test_two_jobs_equal_one():
    serial = map_list(_rows, range(6), n_jobs=1)
    parallel = map_list(_rows, range(6), n_jobs=2)
    assert len(parallel) == len(serial)
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(b, a)  # same arithmetic: bit for bit


def test_empty_input():
    assert map_list(abs, [], n_jobs=1) == []
    assert map_list(abs, [], n_jobs=2) == []


def test_n_jobs_validated_by_joblib():
    with pytest.raises(ValueError, match="n_jobs == 0"):
        map_list(abs, [1, 2], n_jobs=0)


def test_verbose_0_is_silent_and_1_shows_the_bar(capsys):
    map_list(abs, range(3), verbose=0, desc="quiet")
    map_list(abs, range(3), n_jobs=2, verbose=0, desc="quiet")
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""
    map_list(abs, range(3), verbose=1, desc="loud")
    assert "loud" in capsys.readouterr().err


def test_bar_counts_items_and_closes(bars):
    assert map_list(abs, [-1, -2, -3], n_jobs=1, verbose=2, desc="work", unit="frame") == [
        1, 2, 3]
    (bar,) = bars
    assert bar.kwargs == {"total": 3, "desc": "work", "disable": False, "leave": False,
                          "unit": "frame"}
    assert bar.n == 3
    assert bar.closed


def test_serial_imap_is_lazy(bars):
    calls = []

    def record(x):
        calls.append(x)
        return x

    results = imap(record, [10, 20, 30])
    assert calls == [] and bars == []  # nothing runs before the first next()
    assert next(results) == 10
    assert calls == [10]
    assert next(results) == 20
    assert calls == [10, 20]
    results.close()
    assert calls == [10, 20]


@pytest.mark.filterwarnings("ignore:.*tasks have been successfully executed:UserWarning")
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_bar_closed_when_consumer_stops_early(bars, n_jobs):
    results = imap(_slow_square, range(8), n_jobs=n_jobs)
    assert next(results) == 0
    assert not bars[0].closed
    results.close()
    (bar,) = bars
    assert bar.closed
    assert bar.n == 1


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_bar_closed_when_fn_raises(bars, n_jobs):
    with pytest.raises(ValueError, match="three"):
        map_list(_fail_on_three, range(6), n_jobs=n_jobs)
    (bar,) = bars
    assert bar.closed
    # serially the three results before the failure were yielded; workers may report the
    # failure before some of them
    assert bar.n == 3 if n_jobs == 1 else bar.n <= 3


def test_compute_many_uses_the_shared_map(bars, ethanol):
    descriptor = ACSF.from_grid(["H", "C", "O"], 4.0, n_radial=3, n_angular=2)
    results = descriptor.compute_many([ethanol, ethanol], verbose=1)
    np.testing.assert_array_equal(results[1].features, descriptor.compute(ethanol).features)
    (bar,) = bars
    assert bar.kwargs["desc"] == "ACSF"
    assert bar.kwargs["unit"] == "frame"
    assert bar.n == 2 and bar.closed
