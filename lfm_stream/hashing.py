"""bkdr2hash64: the id hashing every component shares.

``bkdr2hash64(s)`` computes ``h = h * 131 + ord(c)`` over the characters of ``s`` and keeps the low
60 bits (``h & 0x0fffffffffffffff``).  MovieLens ids are hashed as ``"UserID=<raw id>"`` and
``"MovieID=<raw id>"``.  The 60-bit result always fits a signed int64, which is how it is stored in
the TFRecord features and passed around as numpy ``int64``.
"""

from __future__ import annotations

import numpy as np

SEED = 131
MASK60 = 0x0FFFFFFFFFFFFFFF
USER_PREFIX = "UserID="
MOVIE_PREFIX = "MovieID="


def bkdr2hash64(text: str) -> int:
    """Return the 60-bit BKDR hash of ``text`` (seed 131)."""
    h = 0
    for ch in text:
        h = h * SEED + ord(ch)
    return h & MASK60


def user_hash(raw_id: int | str) -> int:
    """Hashed id of a raw MovieLens user id: ``bkdr2hash64("UserID=<raw>")``."""
    return bkdr2hash64(f"{USER_PREFIX}{raw_id}")


def movie_hash(raw_id: int | str) -> int:
    """Hashed id of a raw MovieLens movie id: ``bkdr2hash64("MovieID=<raw>")``."""
    return bkdr2hash64(f"{MOVIE_PREFIX}{raw_id}")


def _prefix_state(prefix: str) -> np.uint64:
    h = 0
    for ch in prefix:
        h = (h * SEED + ord(ch)) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def hash_ids(prefix: str, raw_ids: np.ndarray) -> np.ndarray:
    """Vectorized ``bkdr2hash64(prefix + str(raw))`` for an array of non-negative integer ids.

    Arithmetic modulo 2**64 followed by the 60-bit mask equals the unbounded-integer definition,
    because the mask keeps only low bits.

    Args:
        prefix: ``"UserID="`` or ``"MovieID="``.
        raw_ids: integer array of raw ids (>= 0).

    Returns:
        int64 array of hashed ids, same shape as ``raw_ids``.
    """
    raw = np.asarray(raw_ids)
    if raw.size and (raw < 0).any():
        raise ValueError("raw ids must be >= 0 to hash them vectorized")
    raw = raw.astype(np.uint64)
    ndigits = np.ones(raw.shape, dtype=np.int64)
    bound = np.uint64(10)
    while True:
        more = raw >= bound
        if not more.any():
            break
        ndigits += more
        if bound > np.uint64(10**18):
            break
        bound = bound * np.uint64(10)
    h = np.full(raw.shape, _prefix_state(prefix), dtype=np.uint64)
    seed = np.uint64(SEED)
    zero = np.uint64(ord("0"))
    with np.errstate(over="ignore"):
        for pos in range(int(ndigits.max()) if raw.size else 0):
            # digit `pos` counted from the most significant one, only where the id is that long
            active = ndigits > pos
            power = (ndigits - 1 - pos).clip(min=0)
            digit = (raw // (np.uint64(10) ** power.astype(np.uint64))) % np.uint64(10)
            h = np.where(active, h * seed + zero + digit, h)
    return (h & np.uint64(MASK60)).astype(np.int64)


def hash_user_ids(raw_ids: np.ndarray) -> np.ndarray:
    """Vectorized :func:`user_hash`."""
    return hash_ids(USER_PREFIX, raw_ids)


def hash_movie_ids(raw_ids: np.ndarray) -> np.ndarray:
    """Vectorized :func:`movie_hash`."""
    return hash_ids(MOVIE_PREFIX, raw_ids)
