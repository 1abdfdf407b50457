"""Input formats (ratings.csv / ratings.dat / u.data + side tables) and every bad-input message."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from producer import movielens
from producer.movielens import DataError, read_ratings
from producer.prepare import main
from tests._prepare_util import manifest, read_split

# (user, movie, stars, timestamp) in file order; user 1 has a timestamp tie at 30 (file order decides)
EVENTS = [(1, 10, 4.0, 30), (2, 10, 2.0, 5), (1, 11, 3.5, 10), (1, 12, 5.0, 30), (2, 13, 4.5, 7),
          (1, 13, 1.0, 20), (2, 11, 0.5, 6), (3, 10, 5.0, 1)]


def _write(path: Path, fmt: str, events=EVENTS) -> Path:
    if fmt == "csv":
        lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r:.1f},{t}" for u, i, r, t in events]
    elif fmt == "dat":
        lines = [f"{u}::{i}::{r:g}::{t}" for u, i, r, t in events]
    else:
        lines = [f"{u}\t{i}\t{r:g}\t{t}" for u, i, r, t in events]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt, name", [("csv", "ratings.csv"), ("dat", "ratings.dat"), ("udata", "u.data")])
def test_formats_give_the_same_split(tmp_path, fmt, name):
    src = _write(tmp_path / name, fmt)
    r = read_ratings(src)
    assert r.format == fmt
    assert list(zip(r.user.tolist(), r.movie.tolist(), r.rating.tolist(), r.timestamp.tolist())) == EVENTS
    out = tmp_path / "out"
    assert main(["--ratings", str(src), "--out", str(out), "--test-per-user", "2", "--pos-threshold", "3.5"]) == 0
    m = manifest(out)
    assert m["source"]["format"] == fmt and m["users_dropped"] == 0
    test, train = read_split(out, "test"), read_split(out, "train")
    # user 1 by time: 11@10, 13@20, 10@30, 12@30 (tie: file order) -> test {10, 12}
    # user 2: 10@5, 11@6, 13@7 -> test {11, 13}; user 3 has one event -> test
    assert sorted(zip(test["raw_user_id"].tolist(), test["raw_movie_id"].tolist())) == [
        (1, 10), (1, 12), (2, 11), (2, 13), (3, 10)]
    assert list(zip(train["raw_user_id"].tolist(), train["timestamp"].tolist())) == [(2, 5), (1, 10), (1, 20)]
    assert train["label"].tolist() == [0.0, 1.0, 0.0] and train["rating"].tolist() == [2.0, 3.5, 1.0]
    assert test["timestamp"].tolist() == sorted(test["timestamp"].tolist())


def test_tie_order_is_file_order_for_the_holdout(tmp_path):
    # three events of one user at the same second: the last line of the file is the latest
    src = _write(tmp_path / "ratings.csv", "csv", [(7, 1, 3.0, 50), (7, 2, 3.0, 50), (7, 3, 3.0, 50)])
    out = tmp_path / "out"
    assert main(["--ratings", str(src), "--out", str(out), "--test-per-user", "1"]) == 0
    assert read_split(out, "test")["raw_movie_id"].tolist() == [3]
    assert read_split(out, "train")["raw_movie_id"].tolist() == [1, 2]


def test_max_user_ratings_drops_heavy_users(tmp_path):
    src = _write(tmp_path / "ratings.csv", "csv")
    out = tmp_path / "out"
    assert main(["--ratings", str(src), "--out", str(out), "--max-user-ratings", "3"]) == 0
    m = manifest(out)
    assert (m["users_dropped"], m["ratings_dropped"], m["users"]) == (1, 4, 2)
    assert 1 not in read_split(out, "train")["raw_user_id"].tolist() + read_split(out, "test")["raw_user_id"].tolist()


def test_chunk_boundaries_do_not_matter(tmp_path):
    rng = np.random.default_rng(3)
    events = [(int(u), int(i), float(r) / 2, int(t)) for u, i, r, t in
              zip(rng.integers(1, 50, 3000), rng.integers(1, 10**6, 3000), rng.integers(1, 11, 3000),
                  rng.integers(0, 2**31, 3000))]
    for fmt, name in (("csv", "ratings.csv"), ("dat", "ratings.dat"), ("udata", "u.data")):
        src = _write(tmp_path / name, fmt, events)
        for chunk in (7, 1000, 1 << 20):
            r = read_ratings(src, chunk_bytes=chunk)
            got = list(zip(r.user.tolist(), r.movie.tolist(), r.rating.tolist(), r.timestamp.tolist()))
            assert got == events, (fmt, chunk)


def test_crlf_blank_lines_and_no_final_newline(tmp_path):
    src = tmp_path / "ratings.csv"
    src.write_bytes(b"userId,movieId,rating,timestamp\r\n1,2,4.0,100\r\n\r\n3,4,0.5,200")
    r = read_ratings(src)
    assert r.user.tolist() == [1, 3] and r.rating.tolist() == [4.0, 0.5] and r.timestamp.tolist() == [100, 200]


def test_format_flag_overrides_detection(tmp_path):
    src = _write(tmp_path / "my_ratings.txt", "udata")
    assert movielens.detect_format(src) == "udata"
    src2 = tmp_path / "other.txt"
    src2.write_text("1;2;3;4\n")
    with pytest.raises(DataError, match=r"other\.txt:1: unknown ratings format"):
        read_ratings(src2)
    src3 = _write(tmp_path / "weird.txt", "dat")
    assert read_ratings(src3, fmt="dat").user.tolist()[:2] == [1, 2]


# --- bad input: (file content, expected message fragment) per case ---------------------------------------
BAD = {
    "wrong_field_count": ("userId,movieId,rating,timestamp\n1,2,4.0,100\n1,3,4.0\n",
                          r"ratings\.csv:3: expected 4 fields \(userId,movieId,rating,timestamp\), got 3"),
    "non_numeric": ("userId,movieId,rating,timestamp\n1,2,4.0,100\n1,x3,4.0,101\n",
                    r"ratings\.csv:3: field 'movieId': not a number: 'x3'"),
    "non_numeric_rating": ("userId,movieId,rating,timestamp\n1,2,four,100\n",
                           r"ratings\.csv:2: field 'rating': not a number: 'four'"),
    "rating_too_high": ("userId,movieId,rating,timestamp\n1,2,4.0,100\n1,3,5.5,101\n",
                        r"ratings\.csv:3: field 'rating': rating '5\.5' outside \[0\.5, 5\]"),
    "rating_too_low": ("userId,movieId,rating,timestamp\n1,2,0,100\n",
                       r"ratings\.csv:2: field 'rating': rating '0' outside \[0\.5, 5\]"),
    "negative_id": ("userId,movieId,rating,timestamp\n-1,2,3.0,100\n",
                    r"ratings\.csv:2: field 'userId': expected a non-negative 64-bit integer, got '-1'"),
    "huge_id": ("userId,movieId,rating,timestamp\n1,99999999999999999999,3.0,100\n",
                r"ratings\.csv:2: field 'movieId': expected a non-negative 64-bit integer, got '9{20}'"),
    "bad_timestamp": ("userId,movieId,rating,timestamp\n1,2,3.0,1.5e9\n",
                      r"ratings\.csv:2: field 'timestamp': not a number: '1\.5e9'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_line_message_names_file_line_field(tmp_path, capsys, case):
    content, expected = BAD[case]
    src = tmp_path / "ratings.csv"
    src.write_text(content)
    out = tmp_path / "out"
    assert main(["--ratings", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(src) in err
    assert __import__("re").search(expected, err), err
    assert not out.exists()


def test_bad_line_in_dat_and_udata(tmp_path):
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::2::3::4\n1::2::3\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected 4 fields \(userId::movieId::rating::timestamp\), got 3"):
        read_ratings(dat)
    udata = tmp_path / "u.data"
    udata.write_text("1\t2\t3\t4\n5\t6\t7\t8\n")
    with pytest.raises(DataError, match=r"u\.data:2: field 'rating': rating '7' outside"):
        read_ratings(udata)


def test_missing_file_and_unknown_format(tmp_path, capsys):
    missing = tmp_path / "nope" / "ratings.csv"
    assert main(["--ratings", str(missing), "--out", str(tmp_path / "out")]) == 1
    assert f"error: {missing}: ratings file not found" in capsys.readouterr().err
    odd = tmp_path / "ratings.txt"
    odd.write_text("1 2 3 4\n")
    assert main(["--ratings", str(odd), "--out", str(tmp_path / "out")]) == 1
    assert f"{odd}:1: unknown ratings format" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "out")]) == 2


def test_skip_bad_lines_counts_and_reports(tmp_path, capsys):
    src = tmp_path / "ratings.csv"
    good = [f"{u},{i},3.0,{100 + i}" for u in (1, 2) for i in range(1, 6)]
    lines = ["userId,movieId,rating,timestamp"] + good[:3] + ["1,7,9.0,1", "oops", "2,x,1.0,5"] + good[3:]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["--ratings", str(src), "--out", str(out), "--skip-bad-lines"]) == 0
    captured = capsys.readouterr()
    assert f"{src}:5: field 'rating'" in captured.err and f"{src}:6: expected 4 fields" in captured.err
    assert f"{src}:7: field 'movieId'" in captured.err
    assert "3 bad lines" in captured.out
    m = manifest(out)
    assert m["bad_lines"] == 3 and m["params"]["skip_bad_lines"] is True
    assert m["train_records"] + m["test_records"] == 10


def test_movies_side_tables_normalized(tmp_path):
    dat = tmp_path / "movies.dat"
    dat.write_bytes("1::Toy Story (1995)::Animation|Children's\n2::Cité des enfants perdus, La (1995)::Sci-Fi\n"
                    .encode("latin-1"))
    assert movielens.read_movies(dat) == [(1, "Toy Story (1995)", "Animation|Children's"),
                                          (2, "Cité des enfants perdus, La (1995)", "Sci-Fi")]
    item = tmp_path / "u.item"
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"
    item.write_text("|".join(["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x"] + flags) + "\n"
                    + "|".join(["2", "GoldenEye (1995)", "01-Jan-1995", "", "http://y"] + ["0"] * 19) + "\n")
    assert movielens.read_movies(item) == [(1, "Toy Story (1995)", "Animation|Comedy"),
                                           (2, "GoldenEye (1995)", "(no genres listed)")]
    # prepare writes movies.csv whatever the source format
    _write(tmp_path / "u.data", "udata")
    out = tmp_path / "out"
    assert main(["--ratings", str(tmp_path / "u.data"), "--out", str(out)]) == 0
    with open(out / "movies.csv", newline="") as f:
        assert list(csv.reader(f)) == [["movieId", "title", "genres"], ["1", "Toy Story (1995)", "Animation|Comedy"],
                                       ["2", "GoldenEye (1995)", "(no genres listed)"]]
    bad = tmp_path / "b" / "movies.csv"
    bad.parent.mkdir()
    bad.write_text('movieId,title,genres\n1,"A, The (1990)",Drama\nx,B,Drama\n')
    with pytest.raises(DataError, match=r"movies\.csv:3: field 'movieId': not a number: 'x'"):
        movielens.read_movies(bad)
