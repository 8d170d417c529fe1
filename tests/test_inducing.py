"""Choice of the inducing environments: counts per species, selectors, read-only output."""

import numpy as np
import pytest

from kernelpot.inducing import (
    SPARSE_METHODS,
    choose_inducing,
    resolve_n_sparse,
    select_inducing,
)

SPECIES = np.array([1, 6, 8])  # H, C, O
COUNTS = np.array([30, 12, 5])


# -- resolve_n_sparse ---------------------------------------------------------------------

def test_resolve_an_int_for_every_species_capped_at_the_available():
    np.testing.assert_array_equal(resolve_n_sparse(10, SPECIES, COUNTS, 100), [10, 10, 5])
    np.testing.assert_array_equal(resolve_n_sparse(np.int64(3), SPECIES, COUNTS, 100),
                                  [3, 3, 3])
    np.testing.assert_array_equal(resolve_n_sparse(1000, SPECIES, COUNTS, 2), COUNTS)


def test_resolve_none_is_the_default_cap():
    np.testing.assert_array_equal(resolve_n_sparse(None, SPECIES, COUNTS, 8), [8, 8, 5])
    np.testing.assert_array_equal(resolve_n_sparse(None, SPECIES, COUNTS, 2000), COUNTS)


def test_resolve_a_dict_by_symbol_and_by_number():
    np.testing.assert_array_equal(resolve_n_sparse({"H": 4, 8: 2}, SPECIES, COUNTS, 7),
                                  [4, 7, 2])
    np.testing.assert_array_equal(resolve_n_sparse({np.int64(6): 11, "O": 9}, SPECIES,
                                                   COUNTS, 3), [3, 11, 5])
    np.testing.assert_array_equal(resolve_n_sparse({}, SPECIES, COUNTS, 6), [6, 6, 5])


@pytest.mark.parametrize(("n_sparse", "message"), [
    (0, "n_sparse must be >= 1; got 0"),
    (-2, "n_sparse must be >= 1"),
    (True, "n_sparse must be >= 1; got True"),
    ({"N": 3}, r"n_sparse names 'N', which is not a training species \['H', 'C', 'O'\]"),
    ({7: 3}, "n_sparse names 7, which is not a training species"),
    ({"Xy": 3}, "n_sparse names 'Xy'"),
    ({6.0: 3}, "n_sparse names 6.0"),
    ({"H": 0}, r"n_sparse\['H'\] must be an int >= 1; got 0"),
    ({"C": 2.5}, r"n_sparse\['C'\] must be an int >= 1; got 2.5"),
    ({"O": True}, r"n_sparse\['O'\] must be an int >= 1; got True"),
])
def test_resolve_rejects_bad_values(n_sparse, message):
    with pytest.raises(ValueError, match=message):
        resolve_n_sparse(n_sparse, SPECIES, COUNTS, 10)


@pytest.mark.parametrize("n_sparse", [2.5, "10", [3, 3, 3]])
def test_resolve_rejects_other_types(n_sparse):
    with pytest.raises(TypeError, match="n_sparse must be an int, a dict per element or None"):
        resolve_n_sparse(n_sparse, SPECIES, COUNTS, 10)


# -- select_inducing ----------------------------------------------------------------------

def _features(n=40, n_features=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, n_features))


@pytest.mark.parametrize("method", ["cur", "fps", "random"])
def test_select_returns_sorted_unique_indices_of_the_right_size(method):
    features = _features()
    for n_select in (1, 5, 17):
        chosen = select_inducing(features, n_select, method, np.random.RandomState(0))
        assert chosen.shape == (n_select,)
        assert chosen.dtype.kind == "i"
        assert np.all(np.diff(chosen) > 0)  # sorted, unique
        assert chosen.min() >= 0 and chosen.max() < len(features)


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_select_everything_when_asked_for_as_many(method):
    features = _features(n=12)
    np.testing.assert_array_equal(
        select_inducing(features, 12, method, np.random.RandomState(0)), np.arange(12))
    np.testing.assert_array_equal(
        select_inducing(features, 50, method, np.random.RandomState(0)), np.arange(12))


def test_select_all_ignores_the_count():
    features = _features(n=15)
    np.testing.assert_array_equal(
        select_inducing(features, 3, "all", np.random.RandomState(0)), np.arange(15))


@pytest.mark.parametrize("method", ["cur", "fps", "random"])
def test_select_is_deterministic_given_the_seed(method):
    features = _features(n=60, seed=1)
    first = select_inducing(features, 9, method, np.random.RandomState(7))
    again = select_inducing(features, 9, method, np.random.RandomState(7))
    np.testing.assert_array_equal(first, again)
    generator = select_inducing(features, 9, method, np.random.default_rng(7))
    np.testing.assert_array_equal(
        generator, select_inducing(features, 9, method, np.random.default_rng(7)))


def test_random_selection_depends_on_the_seed():
    features = _features(n=200, seed=2)
    draws = {tuple(select_inducing(features, 10, "random", np.random.RandomState(seed)))
             for seed in range(5)}
    assert len(draws) == 5


def test_fps_picks_one_environment_per_direction():
    rng = np.random.default_rng(3)
    directions = np.eye(5)  # five clusters, each around one direction
    label = rng.integers(0, 5, 80)
    label[:5] = np.arange(5)  # every cluster present
    scale = rng.uniform(0.5, 3.0, 80)[:, None]  # norms differ; directions matter
    features = scale * (directions[label] + 0.02 * rng.normal(size=(80, 5)))
    for seed in range(3):
        chosen = select_inducing(features, 5, "fps", np.random.RandomState(seed))
        assert sorted(label[chosen]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["cur", "fps"])
def test_selection_runs_on_unit_normalised_features(method):
    features = _features(n=50, seed=4)
    scales = np.random.default_rng(5).uniform(0.1, 10.0, 50)[:, None]
    plain = select_inducing(features, 8, method, np.random.RandomState(0))
    scaled = select_inducing(scales * features, 8, method, np.random.RandomState(0))
    np.testing.assert_array_equal(plain, scaled)


def test_select_copes_with_zero_features():
    features = _features(n=20)
    features[3] = 0.0
    for method in ("cur", "fps", "random"):
        chosen = select_inducing(features, 6, method, np.random.RandomState(0))
        assert len(np.unique(chosen)) == 6


def test_select_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="sparse_method must be one of"):
        select_inducing(_features(), 5, "kmeans", np.random.RandomState(0))


# -- choose_inducing ----------------------------------------------------------------------

def _structures(n_structures=6, seed=6):
    """Features and species indices of small synthetic structures (H, C and O atoms)."""
    rng = np.random.default_rng(seed)
    features, index = [], []
    for _ in range(n_structures):
        idx = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
        rng.shuffle(idx)
        index.append(idx)
        features.append(rng.normal(size=(len(idx), 7)))
    return features, index


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_choose_inducing_per_species(method):
    features, index = _structures()
    n_sparse = {"H": 10, "O": 2}
    inducing = choose_inducing(features, index, 3, n_sparse, method, np.random.RandomState(0),
                               4, SPECIES)
    counts = np.bincount(np.concatenate(index), minlength=3)  # 36, 12, 6
    expected = counts if method == "all" else resolve_n_sparse(n_sparse, SPECIES, counts, 4)
    assert [len(z) for z in inducing] == list(expected)
    pooled = np.concatenate(features)
    species = np.concatenate(index)
    rng = np.random.RandomState(0)
    for s, z in enumerate(inducing):
        assert not z.flags.writeable
        assert z.shape[1] == 7
        pool = pooled[species == s]
        # the rows of the species' pool the same selector picks, in pool order
        chosen = select_inducing(pool, int(expected[s]), method, rng)
        np.testing.assert_array_equal(z, pool[chosen])
        assert not np.shares_memory(z, pooled)


def test_choose_inducing_never_exceeds_the_environments():
    features, index = _structures(n_structures=2)
    inducing = choose_inducing(features, index, 3, 100, "fps", np.random.RandomState(0), 5,
                               SPECIES)
    assert [len(z) for z in inducing] == [12, 4, 2]
    inducing = choose_inducing(features, index, 3, None, "fps", np.random.RandomState(0), 3,
                               SPECIES)
    assert [len(z) for z in inducing] == [3, 3, 2]
