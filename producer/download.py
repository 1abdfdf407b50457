"""Fetch official MovieLens zips into a cache directory, with a progress bar and checksum verification.

``python -m producer.prepare --download ml-1m`` downloads ``<base>/ml-1m.zip`` (``base`` defaults to the
GroupLens server, ``$LFM_MOVIELENS_URL`` or ``--base-url`` override it, e.g. a mirror or a test server),
verifies it, extracts it into ``<cache>/ml-1m/`` and prepares the ratings file found there.

Verification: the zip's MD5 must equal the ``<name>.zip.md5`` file served beside it (GroupLens publishes
one per zip), and, when downloading from GroupLens itself, the MD5 / SHA-256 pinned below (taken from
GroupLens' ``.md5`` files and published checksums).  At least one expected value must be available.
A zip is only moved into the cache once verified; a later run reuses the verified extraction.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from lfm_stream.config import CACHE_DIR_ENV, default_cache_dir, env_default, env_help

BASE_URL_ENV = "LFM_MOVIELENS_URL"
OFFICIAL_BASE_URL = "https://files.grouplens.org/datasets/movielens"
DATASETS = ("ml-latest-small", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m")
# Published checksums of the official zips (GroupLens .md5 files; SHA-256 where published).
PINNED: dict[str, dict[str, str]] = {
    "ml-latest-small": {"sha256": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"},
    "ml-100k": {"md5": "0e33842e24a9c977be4e0107933c0723"},
    "ml-1m": {"md5": "c4d9eecfca2ab87c1945afe126590906",
              "sha256": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"},
    "ml-10m": {"md5": "ce571fd55effeba0271552578f2648bd"},
    "ml-20m": {"md5": "cd245b17a1ae2cc31bb14903e1204af3"},
    "ml-25m": {"md5": "6b51fb2759a8657d3bfcbfc42b592ada"},
    "ml-32m": {"md5": "d472be332d4daa821edc399621853b57",
               "sha256": "e4a68655d7386b8f95f2f2424b2ff975dfdd15ffd59e0d864a14dca43e99d6ee"},
}
RATINGS_NAMES = ("ratings.csv", "ratings.dat", "u.data")
_HEX32 = re.compile(r"\b([0-9a-fA-F]{32})\b")


class DownloadError(RuntimeError):
    """The dataset could not be fetched or failed verification (message says which and why)."""


class HTTPStatusError(DownloadError):
    """The server answered with an HTTP error status (e.g. 404: the file is not there)."""


def _get(url: str, timeout: float = 60.0):
    host = urllib.parse.urlsplit(url).hostname or ""
    # a loopback server (tests, a local mirror) is never reached through an HTTP proxy from the environment
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    try:
        return urllib.request.build_opener(*handlers).open(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise HTTPStatusError(f"GET {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"GET {url} failed: {getattr(exc, 'reason', exc)}") from None


def published_md5(base_url: str, name: str) -> str | None:
    """The MD5 in ``<base>/<name>.zip.md5`` (GroupLens format ``MD5 (x.zip) = <hex>`` or ``<hex>  x.zip``); None
    when the server has no such file.

    Raises:
        DownloadError: the server cannot be reached (offline, wrong host): said as such, not as a missing checksum.
    """
    try:
        with _get(f"{base_url}/{name}.zip.md5", timeout=30) as r:
            text = r.read(4096).decode("ascii", errors="replace")
    except HTTPStatusError:
        return None
    match = _HEX32.search(text)
    return match.group(1).lower() if match else None


def _stream(url: str, dest: Path) -> dict[str, str]:
    """Download ``url`` to ``dest`` with a tqdm bar; returns its md5 and sha256."""
    from tqdm import tqdm

    md5, sha = hashlib.md5(), hashlib.sha256()
    with _get(url) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1],
                  file=sys.stderr, disable=None) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                md5.update(chunk)
                sha.update(chunk)
                bar.update(len(chunk))
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def find_ratings(directory: Path) -> Path:
    """The ratings file (ratings.csv / ratings.dat / u.data) inside an extracted MovieLens zip."""
    for name in RATINGS_NAMES:
        hits = sorted(Path(directory).rglob(name))
        if hits:
            return hits[0]
    raise DownloadError(f"no {' / '.join(RATINGS_NAMES)} found under {directory}")


def fetch(name: str, cache_dir: Path | None = None, base_url: str | None = None) -> Path:
    """Download (unless cached), verify and extract MovieLens ``name``; returns the extraction directory.

    Raises:
        DownloadError: unknown name, HTTP failure, no checksum available, checksum mismatch, bad zip.
    """
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r} (expected one of {', '.join(DATASETS)})")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    base = (base_url or env_default(BASE_URL_ENV, OFFICIAL_BASE_URL) or OFFICIAL_BASE_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise DownloadError(f"base URL must be http(s) (got {base!r})")
    target = cache / name
    if (target / ".verified").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    served = published_md5(base, name)
    if served:
        expected["md5 (" + f"{base}/{name}.zip.md5)"] = served
    if base == OFFICIAL_BASE_URL:
        for algo, value in PINNED.get(name, {}).items():
            expected[f"{algo} (pinned)"] = value
    if not expected:
        raise DownloadError(f"no checksum for {name}: {base}/{name}.zip.md5 is not available and none is pinned")
    url = f"{base}/{name}.zip"
    work = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=cache))
    try:
        part = work / f"{name}.zip"
        got = _stream(url, part)
        for source, value in expected.items():
            algo = source.split(" ", 1)[0]
            if got[algo] != value.lower():
                raise DownloadError(f"checksum mismatch for {url}: {source} expects {value}, "
                                    f"downloaded file has {algo} {got[algo]}; the file was discarded")
        try:
            with zipfile.ZipFile(part) as zf:
                zf.extractall(work / "x")
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{url}: not a valid zip ({exc})") from None
        find_ratings(work / "x")
        (work / "x" / ".verified").write_text(f"{url}\nmd5 {got['md5']}\nsha256 {got['sha256']}\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(work / "x", target)
        os.replace(part, cache / f"{name}.zip")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Download flags (shared by ``producer.prepare --download``)."""
    g = p.add_argument_group("download (with --download NAME)")
    g.add_argument("--cache-dir", default=str(default_cache_dir()),
                   help=env_help("download cache", CACHE_DIR_ENV, default_cache_dir()))
    g.add_argument("--base-url", default=env_default(BASE_URL_ENV, OFFICIAL_BASE_URL),
                   help=env_help("where the MovieLens zips are served", BASE_URL_ENV, OFFICIAL_BASE_URL))


def fetch_ratings(args: argparse.Namespace) -> Path:
    """``--download NAME`` → the ratings file of the verified, extracted dataset."""
    directory = fetch(args.download, Path(args.cache_dir), args.base_url)
    return find_ratings(directory)
