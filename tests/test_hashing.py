import numpy as np

from lfm_stream.hashing import MASK60, bkdr2hash64, hash_movie_ids, hash_user_ids, movie_hash, user_hash


def test_bkdr_hand_computed():
    # "a" -> 97; "ab" -> 97*131 + 98 = 12805
    assert bkdr2hash64("") == 0
    assert bkdr2hash64("a") == 97
    assert bkdr2hash64("ab") == 12805


def test_mask_applied_after_unbounded_arithmetic():
    text = "MovieID=193609"
    h = 0
    for c in text:
        h = h * 131 + ord(c)
    assert h > MASK60  # the mask matters for this length
    assert bkdr2hash64(text) == h & MASK60 == movie_hash(193609)


def test_vectorized_equals_scalar():
    raw = np.array([0, 1, 9, 10, 99, 100, 318, 610, 193609, 10**9, 10**15 + 3])
    assert list(hash_user_ids(raw)) == [user_hash(int(r)) for r in raw]
    assert list(hash_movie_ids(raw)) == [movie_hash(int(r)) for r in raw]
    assert hash_movie_ids(raw).dtype == np.int64
    assert (hash_movie_ids(raw) >= 0).all()
