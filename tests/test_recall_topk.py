"""Pure parts of the recall service: top-k selection, the item matrix, the catalog, the Faiss wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lfm_stream.hashing import hash_movie_ids
from lfm_stream.schema import encode_examples
from recall_api.catalog import Catalog, decode_varint, read_movies, scan_raw_user_ids
from recall_api.index import FaissIndex
from recall_api.matrix import ItemMatrix
from recall_api.topk import cosine_scores, lookup_rows, normalize_rows, popularity_top_k, top_k


def reference_top_k(scores: np.ndarray, k: int, exclude=()) -> list[int]:
    s = scores.astype(np.float64).copy()
    s[list(exclude)] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    return [int(i) for i in order if np.isfinite(s[i])][:k]


def test_top_k_hand_computed():
    s = np.array([1.0, 5.0, 3.0, 5.0, 2.0], np.float32)
    pos, sc = top_k(s.copy(), 3)
    assert pos.tolist() == [1, 3, 2] and sc.tolist() == [5.0, 5.0, 3.0]  # tie broken by position
    pos, sc = top_k(s.copy(), 10, exclude=np.array([1, 3, 99, -1]))
    assert pos.tolist() == [2, 4, 0]  # fewer than k left; out-of-range exclusions ignored
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(s.copy(), 0)
    assert top_k(np.zeros(0, np.float32), 5)[0].tolist() == []


@pytest.mark.parametrize("seed", range(6))
def test_top_k_equals_full_sort(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n, k = int(rng.integers(1, 6000)), int(rng.integers(1, 300))
        s = rng.normal(size=n).astype(np.float32)
        if seed % 2:
            s = np.round(np.sort(s), 1)  # adversarial: sorted, many ties
        ex = rng.choice(n, size=min(n, int(rng.integers(0, 80))), replace=False)
        assert top_k(s.copy(), k, ex)[0].tolist() == reference_top_k(s, k, ex)


def test_top_k_drops_nan():
    s = np.array([np.nan, 1.0, 2.0, np.nan], np.float32)
    assert top_k(s, 4)[0].tolist() == [2, 1]


def test_scores():
    vec = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], np.float32)
    unit = normalize_rows(np.vstack([vec, np.zeros((1, 2), np.float32)]))
    np.testing.assert_allclose(cosine_scores(unit, unit[2]), [0.6, 0.8, 1.0, 0.0], rtol=1e-6)


def test_lookup_and_popularity():
    assert lookup_rows({10: 0, 20: 1}, {20, 30}).tolist() in ([1, -1], [-1, 1])
    assert lookup_rows({10: 0}, []).tolist() == []
    pop = [(5, 9.0), (7, 8.0), (9, 3.0), (11, 1.0)]
    assert popularity_top_k(pop, 2, {5}) == [(7, 8.0), (9, 3.0)]
    assert popularity_top_k(pop, 10, {5, 7, 9, 11}) == []


def test_item_matrix_upsert_remove_and_snapshots():
    m = ItemMatrix(2, capacity=1)
    rows_u, rows_a = m.upsert(np.array([100, 200]), np.array([1, 2]), np.eye(2, dtype=np.float32),
                              np.array([0.1, 0.2], np.float32))
    assert rows_u.tolist() == [] and rows_a.tolist() == [0, 1]
    old = m.snapshot()
    m.upsert(np.array([200, 300]), np.array([2, 3]), np.array([[0, 2], [3, 4]], np.float32),
             np.array([0.5, 0.3], np.float32))
    new = m.snapshot()
    assert old.n == 2 and new.n == 3 and len(m) == 3
    assert new.vec[1].tolist() == [0, 2] and new.unit[1].tolist() == [0, 1]
    np.testing.assert_allclose(new.unit[2], [0.6, 0.8])
    assert m.row_of_raw(3) == 2 and m.row_of_raw(4) is None
    assert m.remove(np.array([100, 999])).tolist() == [0]
    assert m.row_of_raw(1) is None and len(m) == 2 and m.snapshot().invalid.tolist() == [0]
    m.upsert(np.array([100]), np.array([1]), np.ones((1, 2), np.float32), np.zeros(1, np.float32))
    assert m.row_of_raw(1) == 0 and len(m) == 3 and m.snapshot().invalid is None
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        m.upsert(np.array([5]), np.array([5]), np.ones((1, 3), np.float32), np.zeros(1, np.float32))


def test_catalog_movies_users_and_hashes(tmp_path):
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story (1995)",Animation|Comedy\n'
                                         '2,"Heat, The (1995)",(no genres listed)\n')
    cols = dict(user_id=np.array([5, 6, 7]), movie_id=np.array([7, 8, 9]), raw_user_id=np.array([3, 123456, 3]),
                raw_movie_id=np.array([1, 2, 1]), rating=np.array([1, 2, 3], np.float32),
                label=np.array([0, 1, 1], np.float32), timestamp=np.array([10, 20, 30]))
    buf, _ = encode_examples(cols)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "part-00000.tfrecord").write_bytes(b"framing" + buf.tobytes())
    (tmp_path / "manifest.json").write_text(json.dumps({"train_shards": [{"file": "train/part-00000.tfrecord"}],
                                                        "test_shards": []}))
    cat = Catalog.load(tmp_path)
    assert cat.movie(1).title == "Toy Story (1995)" and cat.movie(1).genres == ("Animation", "Comedy")
    assert cat.movie(2).title == "Heat, The (1995)" and cat.movie(2).genres == ()
    assert cat.movie(3).title is None
    assert cat.users == {3, 123456} and cat.knows_user(3) and not cat.knows_user(4)
    assert cat.raw_of_hash[int(hash_movie_ids(np.array([2]))[0])] == 2
    assert scan_raw_user_ids(tmp_path / "train" / "part-00000.tfrecord") == {3, 123456}
    assert decode_varint(bytes([0xAC, 0x02])) == 300
    assert Catalog.load(None).knows_user(3) is False


def test_catalog_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "movies.csv"
    bad.write_text("movieId,title,genres\n1,A,Drama\nx,B,Drama\n")
    with pytest.raises(ValueError, match=r"movies.csv:3: movieId is not an integer \(got 'x'\)"):
        read_movies(bad)
    bad.write_text("id,name\n")
    with pytest.raises(ValueError, match="movies.csv:1: expected header"):
        read_movies(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Catalog.load(tmp_path / "nope")


def test_faiss_exact_when_probing_every_list():
    rng = np.random.default_rng(1)
    vec = rng.normal(size=(2000, 8)).astype(np.float32)
    bias = rng.normal(size=2000).astype(np.float32)
    index = FaissIndex(8, nprobe=64, nlist=16)
    index.build(vec, bias)
    q = rng.normal(size=8).astype(np.float32)
    ex = np.array([int(np.argmax(vec @ q + bias)), 5])
    pos, sc = index.search_u2i(q, 20, ex)
    assert pos.tolist() == reference_top_k(vec @ q + bias, 20, ex)
    unit = normalize_rows(vec)
    pos, _ = index.search_i2i(unit[3], 10, np.array([3]))
    assert pos.tolist() == reference_top_k(cosine_scores(unit, unit[3]), 10, [3])
    # replace a row: it must now be found with its new vector
    index.upsert(np.array([7]), (q * 10)[None, :], np.zeros(1, np.float32))
    assert index.search_u2i(q, 1)[0].tolist() == [7]
    index.remove(np.array([7]))
    assert 7 not in index.search_u2i(q, 50)[0].tolist()


def test_render_is_orjson_of_the_whole_answer():
    """The pre-encoded render (cached item prefixes, scores from one orjson call) gives exactly the bytes of
    serializing the answer as one dict."""
    import orjson

    from recall_api.app import render
    from recall_api.catalog import Movie
    from recall_api.types import Answer

    def whole(query: str, id_: int, k: int, ans: Answer, cat: Catalog) -> bytes:
        items = [{"movie_id": m, "title": cat.movies[m].title if m in cat.movies else None,
                  "genres": cat.movies[m].genres if m in cat.movies else (), "score": s}
                 for m, s in zip(ans.movies, ans.scores)]
        return orjson.dumps({"query": query, "id": id_, "k": k, "source": ans.source, "items": items})

    rng = np.random.default_rng(3)
    catalog = Catalog.from_movies({1: Movie(1, 'Toy "Story" (1995) — é ✓', ("Adventure", "Children")),
                                   2: Movie(2, "No genres", ()), 3: Movie(3, None, ("Drama",))})
    scores = [float(x) for x in rng.normal(size=6).astype(np.float32)] + [1e-7, 3.0, -0.0, 1e21]
    movies = [1, 2, 3, 99, 1, 2, 7, 8, 9, 2**40]
    for cat in (catalog, Catalog()):
        for ans in (Answer("model", movies, scores), Answer("popularity", [3, 1], [12.0, 5.0]),
                    Answer("model", [], [])):
            for _ in range(2):  # second round: from the prefix cache
                assert render("u2i", 42, 10, ans, cat) == whole("u2i", 42, 10, ans, cat)
        json.loads(render("i2i", 2**60, 1000, Answer("model", movies, scores), cat))
    assert set(catalog.render_cache) == {1, 2, 3}  # only catalog movies are cached


def test_parse_and_lookup_ids():
    from recall_api.topk import lookup_ids, parse_ids

    assert parse_ids([b"318", b"1", b"0"]).tolist() == [318, 1, 0]
    assert parse_ids({b"5"}).tolist() == [5] and parse_ids([]).tolist() == [] and parse_ids([7, 8]).tolist() == [7, 8]
    assert parse_ids([b"12", b"x1", b"3"]).tolist() == [12, 3]  # not an integer: names no movie
    table = np.array([-1, 4, -1, 0], np.int32)  # raw 1 -> row 4, raw 3 -> row 0
    positions = {1: 4, 3: 0, 10**9: 2}
    got = lookup_ids(table, positions, np.array([3, 1, 2, 10**9, 10**9 + 1, -5], np.int64))
    assert got.dtype == np.int64 and got.tolist() == [0, 4, -1, 2, -1, -1]


def test_item_matrix_dense_raw_map_mirrors_raw_pos():
    from recall_api.matrix import DENSE_RAW_LIMIT

    m = ItemMatrix(2, capacity=2)
    raw = np.array([5, 3000, DENSE_RAW_LIMIT + 7, 10**9], np.int64)
    m.upsert(hash_movie_ids(raw), raw, np.ones((4, 2), np.float32), np.zeros(4, np.float32))
    snap = m.snapshot()
    table = snap.row_of_raw
    assert len(table) > 3000 and len(table) <= DENSE_RAW_LIMIT
    small = [r for r in m.raw_pos if r < len(table)]
    assert small == [5, 3000] and [int(table[r]) for r in small] == [m.raw_pos[r] for r in small]
    assert (table >= 0).sum() == 2
    # a mislabeled row moves raw 5 to another hashed id: the newest mapping wins in both maps
    m.upsert(np.array([123456789], np.int64), np.array([5]), np.ones((1, 2), np.float32), np.zeros(1, np.float32))
    assert m.raw_pos[5] == 4 and int(m.snapshot().row_of_raw[5]) == 4


def test_matrix_keeps_each_rows_count():
    """The LFM channel's log(1 + n_i) reads the rows' event counts from the snapshot: written with the row,
    overwritten with it, 0 when the writer has none; removed rows keep theirs (their score is -inf anyway)."""
    m = ItemMatrix(2)
    raw = np.array([1, 2, 3], np.int64)
    ids = hash_movie_ids(raw)
    m.upsert(ids, raw, np.ones((3, 2), np.float32), np.zeros(3, np.float32), np.array([4, 0, 9]))
    assert m.snapshot().count.tolist() == [4.0, 0.0, 9.0]
    m.upsert(ids[1:2], raw[1:2], np.ones((1, 2), np.float32), np.zeros(1, np.float32), np.array([12]))
    m.upsert(np.array([77], np.int64), np.array([7]), np.ones((1, 2), np.float32), np.zeros(1, np.float32))
    m.remove(ids[:1])
    snap = m.snapshot()
    assert snap.count.tolist() == [4.0, 12.0, 9.0, 0.0] and snap.invalid.tolist() == [0]
