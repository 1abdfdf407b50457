"""The item channel's chunk math (learner.covisit) and the score contract math (lfm_stream.scoring)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.covisit import chunk_update
from lfm_stream.scoring import ScoreContract, blend, covisit_scores, pair_weights, popularity_prior, recent_weights


def pairs_of(update) -> dict[tuple[int, int], int]:
    return {(int(a), int(b)): int(n) for a, b, n in zip(update.pair_a, update.pair_b, update.pair_n)}


def test_pairs_within_the_window_both_directions():
    # user 1 rates 10, 20, 30; user 2 rates 10, 40 (interleaved); window 3 = each movie with the 2 before it
    users = [1, 2, 1, 1, 2]
    movies = [10, 10, 20, 30, 40]
    labels = [1, 0, 1, 0, 1]
    u = chunk_update(users, movies, labels, {}, 0, pair_window=3, keep=5, bucket_events=2)
    assert pairs_of(u) == {(10, 20): 1, (20, 10): 1, (10, 30): 1, (30, 10): 1, (20, 30): 1, (30, 20): 1,
                           (10, 40): 1, (40, 10): 1}
    assert dict(zip(u.degree_movies.tolist(), u.degree_n.tolist())) == {10: 3, 20: 2, 30: 2, 40: 1}
    # positives per bucket: events 0,1 -> bucket 0, 2,3 -> 1, 4 -> 2
    assert sorted(zip(u.pop_buckets.tolist(), u.pop_movies.tolist(), u.pop_n.tolist())) == [
        (0, 10, 1), (1, 20, 1), (2, 40, 1)]
    assert u.users.tolist() == [1, 2]
    assert [r.tolist() for r in u.recent] == [[10, 20, 30], [10, 40]]
    assert u.last_bucket.tolist() == [1, 2]
    assert u.events == 5


def test_window_limits_the_distance_and_kept_movies_pair_with_new_ones():
    # window 2: only consecutive ratings pair; user 7 already rated 5 then 6 (kept), now rates 8 and 9
    u = chunk_update([7, 7], [8, 9], [0, 0], {7: np.array([5, 6])}, 10, pair_window=2, keep=3, bucket_events=4)
    assert pairs_of(u) == {(6, 8): 1, (8, 6): 1, (8, 9): 1, (9, 8): 1}
    assert [r.tolist() for r in u.recent] == [[6, 8, 9]]  # keep = 3 newest
    assert u.last_bucket.tolist() == [2]  # event 11 // 4
    assert len(u.pop_movies) == 0  # no positives


@pytest.mark.parametrize("weights", [None, np.array([100, 75, 50])], ids=["unit", "weighted"])
def test_chunks_add_up_to_one_pass(weights):
    rng = np.random.default_rng(3)
    n = 600
    users = rng.integers(0, 15, n)
    movies = rng.integers(0, 40, n)
    labels = rng.integers(0, 2, n)
    whole = chunk_update(users, movies, labels, {}, 0, pair_window=4, keep=5, bucket_events=50, pair_weights=weights)
    kept: dict[int, np.ndarray] = {}
    total: dict[tuple[int, int], int] = {}
    pop: dict[tuple[int, int], int] = {}
    done = 0
    for lo in range(0, n, 97):
        hi = min(n, lo + 97)
        part = chunk_update(users[lo:hi], movies[lo:hi], labels[lo:hi], kept, done, pair_window=4, keep=5,
                            bucket_events=50, pair_weights=weights)
        for key, c in pairs_of(part).items():
            total[key] = total.get(key, 0) + c
        for b, m, c in zip(part.pop_buckets.tolist(), part.pop_movies.tolist(), part.pop_n.tolist()):
            pop[(b, m)] = pop.get((b, m), 0) + c
        kept.update(zip(part.users.tolist(), part.recent))
        done += part.events
    assert total == pairs_of(whole)
    assert pop == {(b, m): c for b, m, c in zip(whole.pop_buckets.tolist(), whole.pop_movies.tolist(),
                                                 whole.pop_n.tolist())}
    assert {u: r.tolist() for u, r in kept.items()} == {u: r.tolist() for u, r in zip(whole.users.tolist(),
                                                                                       whole.recent)}


def test_pair_weights_fall_linearly_from_the_nearest_pair():
    assert pair_weights(4, 0.5).tolist() == [100, 75, 50]  # d = 1, 2, 3: 100 · (1 − 0.5 · (d − 1) / 2)
    assert pair_weights(10, 0.0).tolist() == [1] * 9  # no decay: every pair counts 1
    assert pair_weights(2, 0.3).tolist() == [100]  # one distance only
    assert pair_weights(5, 0.9).tolist() == [100, 70, 40, 10]


def test_weighted_pairs_count_their_distance_weight():
    # user 1 rates 10, 20, 30 (10–20 and 20–30 one apart, 10–30 two apart); user 2 rates 10, 40
    u = chunk_update([1, 2, 1, 1, 2], [10, 10, 20, 30, 40], [1, 0, 1, 0, 1], {}, 0, pair_window=3, keep=5,
                     bucket_events=2, pair_weights=np.array([100, 50]))
    assert pairs_of(u) == {(10, 20): 100, (20, 10): 100, (20, 30): 100, (30, 20): 100, (10, 30): 50, (30, 10): 50,
                           (10, 40): 100, (40, 10): 100}
    assert dict(zip(u.degree_movies.tolist(), u.degree_n.tolist())) == {10: 250, 20: 200, 30: 150, 40: 100}
    with pytest.raises(ValueError, match="pair_weights"):
        chunk_update([1], [10], [1], {}, 0, pair_window=3, keep=5, bucket_events=2, pair_weights=np.array([1]))


def test_recent_weights_rise_linearly():
    assert recent_weights(3, 0.5).tolist() == [0.5, 0.75, 1.0]
    assert recent_weights(1, 0.5).tolist() == [1.0]
    assert recent_weights(0, 0.5).size == 0


def test_covisit_scores_normalize_by_both_degrees():
    # query movie j (degree 3) with neighbours at columns 0 (count 2) and 2 (count 1); column degrees 1, 0, 8
    s = covisit_scores([(np.array([0, 2]), np.array([2.0, 1.0]))], np.array([3]), np.array([0.5]),
                       np.array([1, 0, 8]))
    assert s == pytest.approx([0.5 * 2 / 2 / np.sqrt(2), 0.0, 0.5 * 1 / 2 / 3])


def test_popularity_prior_and_blend():
    prior = popularity_prior(np.array([0.0, 4.0]), np.array([100.0, 10.0]), 0.1, 0.001)
    assert prior == pytest.approx(np.log([0.2, 4.11]))
    c = ScoreContract(lfm_weight=0.5, covisit_weight=1.0, covisit_eps=0.01, popularity_weight=0.2)
    got = blend(c, np.array([1.0, 2.0]), np.array([0.0, 0.99]), prior)
    assert got == pytest.approx([0.5 + np.log(0.01) + 0.2 * np.log(0.2), 1.0 + np.log(1.0) + 0.2 * np.log(4.11)])
    off = c.replace(lfm_weight=0.0)
    assert blend(off, np.array([100.0, -100.0]), None, prior) == pytest.approx(0.2 * prior)


def test_contract_round_trips_and_rejects_bad_values():
    c = ScoreContract(dim=16, lfm_weight=0.25)
    assert ScoreContract.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="unknown field"):
        ScoreContract.from_json('{"dim": 8, "colour": 1}')
    with pytest.raises(ValueError, match="version"):
        ScoreContract.from_json(c.to_json().replace('"version": 1', '"version": 99'))
    with pytest.raises(ValueError, match="covisit_eps"):
        ScoreContract(covisit_eps=0)
    with pytest.raises(ValueError, match="pair_decay"):
        ScoreContract(pair_decay=1.0)  # the farthest pair would count nothing


def test_item_channels_score_a_user_by_hand():
    from lfm_stream.scoring import ItemChannels

    # 3 columns; column 0 has neighbours 1 (count 2) and 2 (count 1); degrees 3, 2, 1
    ch = ItemChannels.build(3, [0, 1, 2], [3, 2, 1], [0, 0, 1, 2], [1, 2, 0, 0], [2, 1, 2, 1],
                            pop_buckets=[5, 6, 9, 5], pop_cols=[1, 1, 2, 7], pop_counts=[4, 1, 3, 9], latest_bucket=9)
    c = ScoreContract(covisit_weight=1.0, covisit_eps=0.01, popularity_weight=0.5, popularity_window=1,
                      popularity_smooth=0.1, popularity_total_weight=0.001)
    cols, sums = ch.covisit(c, np.array([0]))
    assert cols.tolist() == [1, 2]
    assert sums == pytest.approx([2 / 2 / np.sqrt(3), 1 / 2 / np.sqrt(2)])
    # bucket 6: window [5, 7] -> column 1 gets 4 + 1; column 7 is outside the table and dropped
    assert ch.popularity(c, 6) == pytest.approx(np.log([0.1, 0.1 + 5 + 0.005, 0.1 + 0.003]))
    assert ch.popularity(c, None) == pytest.approx(np.log([0.1, 0.1 + 0.005, 0.1 + 3 + 0.003]))  # latest: 9
    got = ch.scores(c, None, np.array([0]), 6)
    want = np.log(0.01 + np.r_[0.0, sums]) + 0.5 * np.log([0.1, 5.105, 0.103])
    assert got == pytest.approx(want)
    lfm = np.array([0.3, -1.0, 2.0])
    with_lfm = c.replace(lfm_weight=0.7)
    assert ch.scores(with_lfm, lfm, np.array([0]), 6) == pytest.approx(
        blend(with_lfm, lfm, np.r_[0.0, sums], ch.popularity(c, 6)))


def test_neighbour_lists_merge_sort_and_trim():
    from learner.covisit import encode_neighbours, merge_neighbours

    ids, counts = merge_neighbours(np.array([5, 7]), np.array([3, 1]), np.array([7, 9, 7]), np.array([1, 4, 2]), cap=2,
                                   hold=4)
    assert ids.tolist() == [7, 9, 5] and counts.tolist() == [4, 4, 3]  # ties: smaller id first; 3 <= hold kept
    ids, counts = merge_neighbours(ids, counts, np.array([1, 2]), np.array([1, 1]), cap=2, hold=4)
    assert ids.tolist() == [7, 9] and counts.tolist() == [4, 4]  # 5 > hold: the cap = 2 most counted stay
    assert encode_neighbours(ids, counts) == "7 4 9 4"


def test_held_lists_merge_like_one_list_at_a_time():
    from learner.covisit import NeighbourLists, encode_many, encode_neighbours, merge_neighbours

    rng = np.random.default_rng(7)
    lists = NeighbourLists(cap=3, hold=6)
    one_by_one: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    kept: dict[int, np.ndarray] = {}
    done = 0
    for _ in range(6):
        users, movies = rng.integers(0, 6, 80), rng.integers(0, 25, 80)
        update = chunk_update(users, movies, np.zeros(80), kept, done, pair_window=4, keep=3, bucket_events=10)
        kept.update(zip(update.users.tolist(), update.recent))
        done += update.events
        got = lists.merged(update)
        for a in np.unique(update.pair_a).tolist():
            at = update.pair_a == a
            old = one_by_one.get(a, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            one_by_one[a] = merge_neighbours(*old, update.pair_b[at], update.pair_n[at], cap=3, hold=6)
            assert got[a][0].tolist() == one_by_one[a][0].tolist() and got[a][1].tolist() == one_by_one[a][1].tolist()
        lists.keep(got)
        text = encode_many(got)
        assert all(text[m] == encode_neighbours(*got[m]) for m in got)
    assert encode_many({5: (np.array([10, 7]), np.array([120, 3])), 6: (np.zeros(0), np.zeros(0))}) == {
        5: "10 120 7 3", 6: ""}
