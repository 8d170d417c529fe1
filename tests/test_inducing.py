"""Choice of the inducing environments: counts per species, selectors, read-only output."""

import numpy as np
import pytest

from kernelpot.inducing import (
    SPARSE_METHODS,
    FarthestPointPool,
    candidate_atoms,
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


@pytest.mark.parametrize("method", ["cur", "fps", "random"])
def test_select_refuses_descriptors_that_are_not_finite(method):
    features = _features(n=30)
    features[7, 2] = np.nan
    with pytest.raises(ValueError, match="descriptors hold NaN or infinite values"):
        select_inducing(features, 5, method, np.random.RandomState(0))


@pytest.mark.parametrize("method", ["cur", "fps"])
def test_select_chooses_what_skmatter_chooses_with_its_checks_on(method):
    # the selection skips skmatter's per-step finiteness checks: same choice as with them
    import warnings

    from skmatter.sample_selection import CUR, FPS

    features = _features(n=60, seed=9)
    unit = features / np.linalg.norm(features, axis=1)[:, None]
    rng = np.random.RandomState(3)
    chosen = select_inducing(features, 10, method, rng)
    rng = np.random.RandomState(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if method == "fps":
            expected = FPS(n_to_select=10, initialize=int(rng.choice(60))).fit(unit)
        else:
            # k: as many singular vectors as selected, below the rank (6 features)
            expected = CUR(n_to_select=10, recompute_every=0, k=5).fit(unit - unit.mean(0))
    np.testing.assert_array_equal(chosen, np.sort(expected.selected_idx_))


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


# -- candidate_atoms: the bounded pool the selection sees ----------------------------------

def _species_index(n_structures=30, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(3, size=rng.integers(3, 12), p=(0.6, 0.3, 0.1))
            for _ in range(n_structures)]


def test_candidates_are_everyone_when_no_element_has_more_than_its_pool():
    index = _species_index()
    rng = np.random.RandomState(0)
    state = rng.get_state()[1].copy()
    counts = np.bincount(np.concatenate(index), minlength=3)
    assert candidate_atoms(index, np.array([5, 5, 5]), int(counts.max()), rng) is None
    assert candidate_atoms(index, np.array([5, 5, 5]), None, rng) is None
    # n_select above the pool widens it
    assert candidate_atoms(index, counts, 1, rng) is None
    np.testing.assert_array_equal(rng.get_state()[1], state)  # nothing drawn


def test_candidates_sample_only_the_elements_above_their_pool():
    index = _species_index()
    counts = np.bincount(np.concatenate(index), minlength=3)
    pool = int(counts[1]) - 3  # H-like species 0 and species 1 exceed it, species 2 not
    assert counts[0] > pool > counts[2]
    keep = candidate_atoms(index, np.array([2, 2, 2]), pool, np.random.RandomState(1))
    assert len(keep) == len(index)
    for k, atoms in enumerate(keep):
        assert atoms.dtype.kind == "i" and np.all(np.diff(atoms) > 0)
        # every atom of the element under its pool stays
        assert set(np.flatnonzero(index[k] == 2)) <= set(atoms)
    kept = np.concatenate([idx[atoms] for idx, atoms in zip(index, keep, strict=True)])
    np.testing.assert_array_equal(np.bincount(kept, minlength=3), [pool, pool, counts[2]])
    again = candidate_atoms(index, np.array([2, 2, 2]), pool, np.random.RandomState(1))
    for first, second in zip(keep, again, strict=True):
        np.testing.assert_array_equal(first, second)


def test_candidates_are_a_uniform_draw_over_all_environments():
    index = _species_index(n_structures=8, seed=3)
    n_atoms = sum(len(i) for i in index)
    hits = np.zeros(n_atoms)
    counts = np.bincount(np.concatenate(index), minlength=3)
    pool, draws = 10, 3000
    rng = np.random.RandomState(2)
    for _ in range(draws):
        keep = candidate_atoms(index, np.array([1, 1, 1]), pool, rng)
        offsets = np.concatenate([[0], np.cumsum([len(i) for i in index])])
        for k, atoms in enumerate(keep):
            hits[offsets[k] + atoms] += 1
    species = np.concatenate(index)
    for s in range(3):
        p = min(1.0, pool / counts[s])
        rate = hits[species == s] / draws
        # every environment of the species equally likely (binomial error, 5 sigma)
        assert np.all(np.abs(rate - p) <= 5 * np.sqrt(p * (1 - p) / draws) + 1e-12)


def _cu_fit(cells, **options):
    from kernelpot import SOAP, SparseGPPotential

    kwargs = dict(method="sparse", optimize=False, calibration=None, random_state=0,
                  n_sparse=12) | options
    return SparseGPPotential(SOAP(["Cu"], 4.0, 4, 3, 0.5), **kwargs).fit(cells)


def _candidate_rows(cells, pool, n_select=12):
    from kernelpot import SOAP

    index = [np.zeros(len(atoms), dtype=np.int64) for atoms in cells]
    keep = candidate_atoms(index, np.array([n_select]), pool, np.random.RandomState(0))
    soap = SOAP(["Cu"], 4.0, 4, 3, 0.5)
    return np.concatenate([soap.create(a)[k] for a, k in zip(cells, keep, strict=True)])


def test_a_fit_chooses_its_inducing_environments_among_the_drawn_candidates(caplog):
    from helpers import emt_strained_cells

    cells = emt_strained_cells(10, seed=0, rattle=0.1)  # 80 Cu environments
    # a pool as large as n_sparse: the candidates drawn are the inducing environments
    with caplog.at_level("INFO", logger="kernelpot"):
        model = _cu_fit(cells, inducing_pool=12, sparse_method="random")
    np.testing.assert_allclose(model.inducing_[0], _candidate_rows(cells, 12), rtol=1e-12)
    assert "chosen among {'Cu': 12} drawn at random, inducing_pool=12" in caplog.text
    # a larger pool: CUR picks 12 of its 30 candidates
    model = _cu_fit(cells, inducing_pool=30, sparse_method="cur")
    candidates = _candidate_rows(cells, 30)
    distance = np.abs(model.inducing_[0][:, None, :] - candidates[None]).max(axis=2)
    assert model.inducing_[0].shape == (12, candidates.shape[1])
    assert np.all(distance.min(axis=1) < 1e-12)
    # a pool above the environments changes nothing, not even the random stream
    for method in ("fps", "cur"):
        everyone = _cu_fit(cells, inducing_pool=None, sparse_method=method)
        np.testing.assert_array_equal(
            _cu_fit(cells, inducing_pool=80, sparse_method=method).alpha_, everyone.alpha_)
        np.testing.assert_array_equal(_cu_fit(cells, sparse_method=method).alpha_,
                                      everyone.alpha_)


def test_a_fit_streams_farthest_point_sampling_through_a_bounded_pool(caplog):
    from helpers import emt_strained_cells

    from kernelpot import SOAP

    cells = emt_strained_cells(10, seed=0, rattle=0.1)  # 80 Cu environments
    with caplog.at_level("INFO", logger="kernelpot"):
        model = _cu_fit(cells, n_sparse=5, inducing_pool=25)
    assert "farthest-point sampling streamed, at most {'Cu': 25} held, reduced {'Cu': 4} " \
           "times; inducing_pool=25" in caplog.text
    # the same as the pool fed by hand, and every choice a training environment
    soap = SOAP(["Cu"], 4.0, 4, 3, 0.5)
    pool = FarthestPointPool(5, 25, np.random.RandomState(0))
    for atoms in cells:
        pool.add(soap.create(atoms))
    np.testing.assert_array_equal(model.inducing_[0], pool.select())
    everyone = np.concatenate([soap.create(atoms) for atoms in cells])
    distance = np.abs(model.inducing_[0][:, None, :] - everyone[None]).max(axis=2)
    assert np.all(distance.min(axis=1) < 1e-12)


@pytest.mark.parametrize("pool", [0, -3, True, 2.5, "100"])
def test_a_bad_inducing_pool_is_refused(pool):
    from helpers import emt_strained_cells

    with pytest.raises(ValueError, match=f"inducing_pool must be None or an int >= 1; "
                                         f"got {pool!r}"):
        _cu_fit(emt_strained_cells(2, seed=0), inducing_pool=pool)


# -- FarthestPointPool: farthest-point sampling over a stream ------------------------------

def test_the_pool_is_plain_farthest_point_sampling_while_it_holds_everything():
    features = _features(n=120, seed=8)
    pool = FarthestPointPool(7, 500, np.random.RandomState(3))
    for start in range(0, 120, 13):
        pool.add(features[start:start + 13])
    assert pool.n_reductions == 0 and pool.n_seen == 120
    chosen = select_inducing(features, 7, "fps", np.random.RandomState(3))
    np.testing.assert_array_equal(pool.select(), features[chosen])
    assert not pool.select().flags.writeable


def test_the_pool_keeps_a_rare_cluster_that_a_random_pool_misses():
    rng = np.random.default_rng(4)
    directions = np.eye(6)
    # five common clusters, 400 environments each, and a sixth of three, streamed last
    label = np.concatenate([rng.integers(0, 5, 2000), [5, 5, 5]])
    features = directions[label] + 0.02 * rng.normal(size=(len(label), 6))
    pool = FarthestPointPool(6, 60, np.random.RandomState(0))
    held = []
    for start in range(0, len(label), 17):
        pool.add(features[start:start + 17])
        held.append(sum(len(part) for part in pool._parts))
    assert pool.n_reductions > 20 and max(held) <= 60  # never more than its capacity
    chosen = pool.select()
    found = np.argmax(chosen @ directions.T, axis=1)
    assert sorted(found) == [0, 1, 2, 3, 4, 5]
    # a random draw of as many candidates rarely holds one of the three
    index = [np.zeros(len(label), dtype=np.int64)]
    misses = sum(5 not in label[candidate_atoms(index, np.array([6]), 60,
                                                np.random.RandomState(seed))[0]]
                 for seed in range(20))
    assert misses >= 15


def test_an_empty_pool_says_so():
    with pytest.raises(ValueError, match="no environments were added"):
        FarthestPointPool(3, 10, np.random.RandomState(0)).select()


def test_the_pool_capacity_leaves_room_for_twice_the_selection():
    pool = FarthestPointPool(10, 12, np.random.RandomState(0))
    assert pool.capacity == 40
    for start in range(0, 200, 9):
        pool.add(_features(n=200, seed=9)[start:start + 9])
    assert pool.n_reductions > 0 and len(pool.select()) == 10


# -- where each inducing environment comes from (the LOSO projection term) ----------------

@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_choose_inducing_returns_each_environments_structure(method):
    features, index = _structures()
    inducing, origin = choose_inducing(features, index, 3, {"H": 10, "O": 2}, method,
                                       np.random.RandomState(0), 4, SPECIES,
                                       return_origin=True)
    for s, (z, structures) in enumerate(zip(inducing, origin, strict=True)):
        assert structures.shape == (len(z),)
        for row, k in zip(z, structures, strict=True):  # a row of that structure's species
            assert np.any(np.all(features[k][index[k] == s] == row, axis=1))


def test_the_pool_returns_each_environments_structure_through_reductions():
    features = _features(n=300, seed=2)
    pool = FarthestPointPool(5, 25, np.random.RandomState(0))
    for k, start in enumerate(range(0, 300, 10)):
        pool.add(features[start:start + 10], k)
    z = pool.select()
    assert pool.n_reductions > 0
    for row, k in zip(z, pool.origin, strict=True):
        assert np.any(np.all(features[10 * k:10 * k + 10] == row, axis=1))
