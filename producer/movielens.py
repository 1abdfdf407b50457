"""MovieLens readers: ratings in the three official formats and the movie side tables.

=========  ======================================  ================================  ===========
format     files                                   line                              header
=========  ======================================  ================================  ===========
``csv``    ratings.csv (ml-latest*, ml-20m+)       ``userId,movieId,rating,timestamp``  yes
``dat``    ratings.dat (ml-1m, ml-10m)             ``UserID::MovieID::Rating::Timestamp``  no
``udata``  u.data (ml-100k)                        ``user id<TAB>item id<TAB>rating<TAB>timestamp``  no
=========  ======================================  ================================  ===========

Ratings are parsed in chunks of a few MiB with numpy only (no Python code per line): a chunk whose
lines all have 4 well-formed fields takes the vectorized path; a chunk with any anomaly is re-read line
by line, which either raises :class:`DataError` naming file, line number and field, or (with
``skip_bad_lines``) drops and counts the bad lines.  Blank lines are ignored.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("csv", "dat", "udata")
FIELDS = ("userId", "movieId", "rating", "timestamp")
_SEPARATORS = {"csv": b",", "dat": b"::", "udata": b"\t"}
_BY_NAME = {"ratings.csv": "csv", "ratings.dat": "dat", "u.data": "udata"}
MOVIES_FILES = ("movies.csv", "movies.dat", "u.item")
# ml-100k's u.item genre flags, in column order (as listed in its u.genre)
UITEM_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                "War", "Western")
CHUNK_BYTES = 8 << 20
MAX_EXAMPLES = 20


class DataError(ValueError):
    """Bad input data; the message names the file, the line number and the field."""


@dataclass
class Ratings:
    """Parsed ratings in file order (one entry per good line)."""

    user: np.ndarray  # int64 raw user ids
    movie: np.ndarray  # int64 raw movie ids
    rating: np.ndarray  # float32 stars
    timestamp: np.ndarray  # int64 seconds
    path: Path
    format: str
    sha256: str
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)


def detect_format(path: Path) -> str:
    """Format of a ratings file from its name, else from its first line (``::`` / tab / comma)."""
    path = Path(path)
    if path.name in _BY_NAME:
        return _BY_NAME[path.name]
    with open(path, "rb") as f:
        first = f.readline(4096)
    if b"::" in first:
        return "dat"
    if b"\t" in first:
        return "udata"
    if b"," in first:
        return "csv"
    raise DataError(f"{path}:1: unknown ratings format (expected one of {', '.join(FORMATS)}: "
                    f"'userId,movieId,rating,timestamp', 'u::m::r::t' or tab separated); "
                    f"first line {first[:80]!r}; pass --format")


def _is_header(line: bytes, sep: bytes) -> bool:
    head = line.split(sep, 1)[0].strip()
    return not head.isdigit()


def _fast_chunk(buf: bytes, sepbyte: int) -> tuple[np.ndarray, ...] | None:
    """Vectorized parse of complete lines ``buf`` (each ending in ``\\n``); ``None`` on any anomaly."""
    a = np.frombuffer(buf, dtype=np.uint8)
    is_nl = a == 10
    delim = np.flatnonzero(is_nl | (a == sepbyte))
    nlines = int(np.count_nonzero(is_nl))
    if len(delim) != 4 * nlines or nlines == 0:
        return None
    d = delim.reshape(nlines, 4)
    if not (is_nl[d[:, 3]].all() and not is_nl[d[:, :3]].any()):
        return None
    starts = np.empty_like(d)
    starts[:, 0] = np.concatenate([[0], d[:-1, 3] + 1])
    starts[:, 1:] = d[:, :3] + 1
    lengths = d - starts
    if (lengths < 1).any() or (lengths > 18).any():
        return None
    out = []
    for f in range(4):
        s, ln = starts[:, f], lengths[:, f]
        val = np.zeros(nlines, dtype=np.int64)
        frac = np.zeros(nlines, dtype=np.int64)
        dots = np.zeros(nlines, dtype=np.int64)
        for k in range(int(ln.max())):
            active = ln > k
            c = a[np.where(active, s + k, 0)]
            digit = c - np.uint8(48)
            isdig = active & (digit < 10)
            if f == 2:
                isdot = active & (c == 46)
                dots += isdot
                frac += isdig & (dots > 0)
                if (active & ~isdig & ~isdot).any():
                    return None
            elif (active & ~isdig).any():
                return None
            val = np.where(isdig, val * 10 + digit, val)
        if f == 2:
            if (dots > 1).any() or (ln - dots < 1).any():
                return None
            rating = val / 10.0 ** frac
            if ((rating < 0.5) | (rating > 5.0)).any():
                return None
            out.append(rating.astype(np.float32))
        else:
            out.append(val)
    return tuple(out)


def _parse_line(text: str, sep: str) -> tuple[int, int, float, int] | str:
    """One line -> values, or a problem description naming the field."""
    parts = text.split(sep)
    if len(parts) != 4:
        return f"expected 4 fields ({sep.join(FIELDS)}), got {len(parts)}"
    values: list[float | int] = []
    for name, raw in zip(FIELDS, parts):
        raw = raw.strip()
        try:
            if name == "rating":
                v = float(raw)
                if not 0.5 <= v <= 5.0:
                    return f"field {name!r}: rating {raw!r} outside [0.5, 5]"
            else:
                v = int(raw)
                if not 0 <= v < 2**63:
                    return f"field {name!r}: expected a non-negative 64-bit integer, got {raw!r}"
        except ValueError:
            return f"field {name!r}: not a number: {raw!r}"
        values.append(v)
    return int(values[0]), int(values[1]), float(values[2]), int(values[3])


def _slow_chunk(buf: bytes, sep: bytes, path: Path, first_line: int, skip: bool, result: Ratings
                ) -> tuple[np.ndarray, ...]:
    rows = []
    for i, line in enumerate(buf.split(b"\n")[:-1]):
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            continue
        parsed = _parse_line(text, sep.decode())
        if isinstance(parsed, str):
            message = f"{path}:{first_line + i}: {parsed}"
            if not skip:
                raise DataError(message + " (use --skip-bad-lines to drop such lines)")
            result.bad_lines += 1
            if len(result.bad_examples) < MAX_EXAMPLES:
                result.bad_examples.append(message)
            continue
        rows.append(parsed)
    cols = list(zip(*rows)) if rows else [(), (), (), ()]
    return (np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.int64),
            np.array(cols[2], dtype=np.float32), np.array(cols[3], dtype=np.int64))


def read_ratings(path: Path, fmt: str | None = None, skip_bad_lines: bool = False,
                 chunk_bytes: int = CHUNK_BYTES) -> Ratings:
    """Read a MovieLens ratings file (any of :data:`FORMATS`) into numpy columns, in file order.

    Args:
        path: ratings.csv / ratings.dat / u.data (or any name with ``fmt``).
        fmt: one of :data:`FORMATS`; ``None`` detects it (:func:`detect_format`).
        skip_bad_lines: drop malformed lines (counted in ``bad_lines``) instead of raising.
        chunk_bytes: parse granularity.

    Raises:
        DataError: missing file, unknown format or a malformed line (file, line number, field).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ratings file not found")
    if fmt is None:
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    sep = _SEPARATORS[fmt]
    result = Ratings(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
                     path, fmt, "")
    digest = hashlib.sha256()
    parts: list[tuple[np.ndarray, ...]] = []
    line_no = 1  # number of the first line in the pending buffer
    rest = b""
    first = True
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            digest.update(block)
            buf = rest + block
            if not block:
                if not buf:
                    break
                if not buf.endswith(b"\n"):
                    buf += b"\n"
                cut = len(buf)
            else:
                cut = buf.rfind(b"\n") + 1
                if cut == 0:
                    rest = buf
                    continue
            chunk, rest = buf[:cut], buf[cut:]
            if first:
                first = False
                header_end = chunk.index(b"\n") + 1
                if fmt == "csv" and _is_header(chunk[:header_end], sep):
                    chunk = chunk[header_end:]
                    line_no += 1
            nlines = chunk.count(b"\n")
            if chunk:
                if b"\r" in chunk:
                    chunk = chunk.replace(b"\r\n", b"\n")
                fast_buf = chunk.replace(sep, b"\x01") if len(sep) > 1 else chunk
                cols = _fast_chunk(fast_buf, 1 if len(sep) > 1 else sep[0])
                if cols is None:
                    cols = _slow_chunk(chunk, sep, path, line_no, skip_bad_lines, result)
                parts.append(cols)
            line_no += nlines
            if not block:
                break
    result.sha256 = digest.hexdigest()
    if parts:
        result.user, result.movie, result.rating, result.timestamp = (
            np.concatenate([p[i] for p in parts]) for i in range(4))
    if len(result.user) == 0:
        raise DataError(f"{path}: no ratings found" + (f" ({result.bad_lines} bad lines skipped)"
                                                       if result.bad_lines else ""))
    return result


# --- movies side table ---------------------------------------------------------------------------------


def find_movies_file(ratings_path: Path, fmt: str | None = None) -> Path | None:
    """The movies side table next to a ratings file, if any: the one of the same release first
    (csv → movies.csv, dat → movies.dat, udata → u.item), then the others."""
    preferred = {"csv": "movies.csv", "dat": "movies.dat", "udata": "u.item"}.get(fmt or "")
    for name in ([preferred] if preferred else []) + list(MOVIES_FILES):
        candidate = Path(ratings_path).parent / name
        if candidate.is_file():
            return candidate
    return None


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # ml-1m / ml-100k side tables are ISO-8859-1
        return data.decode("latin-1")


def read_movies(path: Path) -> list[tuple[int, str, str]]:
    """Read movies.csv / movies.dat / u.item as ``(movieId, title, genres)`` rows (genres ``|``-joined).

    Raises:
        DataError: unknown file name or a malformed line (file, line number, field).
    """
    path = Path(path)
    text = _decode(path.read_bytes())
    rows: list[tuple[int, str, str]] = []

    def movie_id(raw: str, line: int) -> int:
        try:
            return int(raw)
        except ValueError:
            raise DataError(f"{path}:{line}: field 'movieId': not a number: {raw!r}") from None

    if path.name.endswith(".csv"):
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
            raise DataError(f"{path}:1: expected header movieId,title,genres, got {header!r}")
        for record in reader:
            if not record:
                continue
            if len(record) != 3:
                raise DataError(f"{path}:{reader.line_num}: expected 3 fields (movieId,title,genres), got {len(record)}")
            rows.append((movie_id(record[0], reader.line_num), record[1], record[2]))
    elif path.name.endswith(".dat"):
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            parts = raw.split("::")
            if len(parts) != 3:
                raise DataError(f"{path}:{line}: expected 3 fields (MovieID::Title::Genres), got {len(parts)}")
            rows.append((movie_id(parts[0], line), parts[1], parts[2]))
    elif path.name == "u.item":
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            parts = raw.split("|")
            if len(parts) != 5 + len(UITEM_GENRES):
                raise DataError(f"{path}:{line}: expected {5 + len(UITEM_GENRES)} '|'-separated fields, got {len(parts)}")
            genres = [g for g, flag in zip(UITEM_GENRES, parts[5:]) if flag.strip() == "1"]
            rows.append((movie_id(parts[0], line), parts[1], "|".join(genres) or "(no genres listed)"))
    else:
        raise DataError(f"{path}: unknown movies file (expected one of {', '.join(MOVIES_FILES)})")
    return rows


def write_movies_csv(rows: list[tuple[int, str, str]], path: Path) -> None:
    """Write the normalized side table ``movieId,title,genres`` (CSV quoting as in MovieLens)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows(rows)
