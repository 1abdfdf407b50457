"""``--download``: a loopback HTTP server serves a MovieLens-like zip the test builds (+ its .md5)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from producer import download
from producer.prepare import main
from tests._prepare_util import manifest, read_split

RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{i},{(u + i) % 10 / 2 + 0.5},{1000 + 10 * i + u}\n" for u in range(1, 6) for i in range(1, 9))
MOVIES = "movieId,title,genres\n" + "".join(f'{i},"Film {i}, The (199{i})",Drama\n' for i in range(1, 9))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def served(tmp_path):
    """``(base_url, root)``: an http.server on a free loopback port serving ``root``."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join(5)


def _publish(root: Path, name: str = "ml-latest-small", md5: str | None = None) -> str:
    """Write ``<name>.zip`` (folder ``<name>/`` with ratings.csv + movies.csv) and its ``.md5``; returns the md5."""
    path = root / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/ratings.csv", RATINGS)
        zf.writestr(f"{name}/movies.csv", MOVIES)
    real = hashlib.md5(path.read_bytes()).hexdigest()
    if md5 != "":
        (root / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {md5 or real}\n")
    return real


def test_download_verify_extract_prepare_and_reuse(served, tmp_path, monkeypatch):
    base, root = served
    real = _publish(root)
    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setenv("LFM_MOVIELENS_URL", base)  # the env fallback of --base-url
    assert main(["--download", "ml-latest-small", "--cache-dir", str(cache), "--out", str(out)]) == 0
    m = manifest(out)
    assert (m["train_records"], m["test_records"], m["users"]) == (30, 10, 5)
    assert m["download"] == {"name": "ml-latest-small", "base_url": base}
    assert m["source"]["path"] == str((cache / "ml-latest-small" / "ml-latest-small" / "ratings.csv").resolve())
    assert (out / "movies.csv").read_text().splitlines()[1] == '1,"Film 1, The (1991)",Drama'
    assert f"md5 {real}" in (cache / "ml-latest-small" / ".verified").read_text()
    assert hashlib.md5((cache / "ml-latest-small.zip").read_bytes()).hexdigest() == real
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small", "ml-latest-small.zip"]
    # a second run reuses the verified cache: the server no longer has the files
    for f in root.iterdir():
        f.unlink()
    assert main(["--download", "ml-latest-small", "--cache-dir", str(cache), "--out", str(tmp_path / "again")]) == 0
    assert read_split(tmp_path / "again", "test")["raw_user_id"].tolist() == read_split(out, "test")["raw_user_id"].tolist()


def test_checksum_mismatch_is_a_clear_error(served, tmp_path, capsys):
    base, root = served
    real = _publish(root, md5="0" * 32)
    cache, out = tmp_path / "cache", tmp_path / "out"
    code = main(["--download", "ml-latest-small", "--base-url", base, "--cache-dir", str(cache), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"checksum mismatch for {base}/ml-latest-small.zip" in err
    assert f"expects {'0' * 32}" in err and f"has md5 {real}" in err and "discarded" in err
    assert not out.exists() and list(cache.iterdir()) == []


def test_pinned_checksum_applies_to_the_official_server(served, tmp_path, monkeypatch):
    """From the official base URL the pinned SHA-256 must match too (our test zip is not the real one)."""
    base, root = served
    _publish(root)  # its .md5 is right, the pinned sha256 of the real ml-latest-small is not
    monkeypatch.setattr(download, "OFFICIAL_BASE_URL", base)
    with pytest.raises(download.DownloadError, match=r"sha256 \(pinned\) expects 696d65a3"):
        download.fetch("ml-latest-small", tmp_path / "cache", base)


def test_no_checksum_unknown_name_and_http_errors(served, tmp_path, capsys):
    base, root = served
    _publish(root, name="ml-1m", md5="")  # no .md5 served; not the official server, so nothing pinned applies
    with pytest.raises(download.DownloadError, match=r"no checksum for ml-1m: .*ml-1m\.zip\.md5 is not available"):
        download.fetch("ml-1m", tmp_path / "cache", base)
    with pytest.raises(download.DownloadError, match=r"unknown dataset 'ml-2m' \(expected one of ml-latest-small"):
        download.fetch("ml-2m", tmp_path / "cache", base)
    (root / "ml-100k.zip.md5").write_text("0e33842e24a9c977be4e0107933c0723  ml-100k.zip\n")
    with pytest.raises(download.DownloadError, match=r"GET .*/ml-100k\.zip failed: HTTP 404"):
        download.fetch("ml-100k", tmp_path / "cache", base)
    assert main(["--download", "ml-2m", "--base-url", base, "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "unknown dataset 'ml-2m'" in capsys.readouterr().err


def test_an_unreachable_server_is_said_as_such(tmp_path):
    """Offline (nothing listens): the error names the connection failure, not a missing checksum."""
    from lfm_local.stack import free_port

    base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(download.DownloadError, match=r"GET .*/ml-latest-small\.zip\.md5 failed: .*Connection refused"):
        download.fetch("ml-latest-small", tmp_path / "cache", base)


def test_tests_find_the_dataset_in_the_download_cache(served, tmp_path, monkeypatch):
    """tests/conftest.py: with no dataset under $LFM_DATA, the verified download cache holds ml-latest-small/."""
    from conftest import shared_data_dir

    base, root = served
    _publish(root)
    monkeypatch.setenv("LFM_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("LFM_CACHE_DIR", str(tmp_path / "cache"))
    assert shared_data_dir() == tmp_path / "none"  # nothing anywhere: the fixture's message names $LFM_DATA's path
    download.fetch("ml-latest-small", base_url=base)  # into $LFM_CACHE_DIR
    assert shared_data_dir() == tmp_path / "cache" / "ml-latest-small"
    assert (shared_data_dir() / "ml-latest-small" / "ratings.csv").read_text() == RATINGS
    (tmp_path / "none" / "ml-latest-small").mkdir(parents=True)  # $LFM_DATA with the dataset comes first
    (tmp_path / "none" / "ml-latest-small" / "ratings.csv").write_text(RATINGS)
    assert shared_data_dir() == tmp_path / "none"
