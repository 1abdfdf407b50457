"""Optional Faiss indexes for large catalogues (``--faiss``; worth it from ~100k movies).

Two inverted-file indexes (``IndexIVFFlat``, inner-product metric) over the rows of the item matrix,
with the row position as the Faiss id:

* u2i: rows ``[v_i, b_i]`` searched with ``[q_u, 1]``, so the inner product is ``q_u · v_i + b_i``
  (the ANN path's LFM candidates, re-ranked with the contract score: :meth:`recall_api.store.RecallStore._rank_candidates`);
* i2i: unit rows ``v_i / ‖v_i‖`` searched with the unit query, so the inner product is the cosine.

The IVF search is approximate: it visits the ``nprobe`` of ``nlist`` lists whose centroids score highest
(exact when ``nprobe == nlist``).  Measured on 1M isotropic random vectors (dim 32, nlist 1000; the worst
case, real MF vectors cluster), overlap of the u2i top 50 with brute force / ms per query (one thread):
nprobe 16: 0.33 / 0.23, 32: 0.47 / 0.38, 64: 0.67 / 1.2, 128: 0.82 / 2.1, 256: 0.95 / 5.0 (brute force ~10 ms),
hence the default 128; ``bench/api.py --faiss yes`` reports the agreement on the served data.  Changed rows are
replaced in place (``remove_ids`` through a hash-table direct map, then ``add_with_ids``) so the incremental
refresh costs O(changed rows).  Excluded rows (a user's rated movies, the query movie) are removed by
over-fetching ``k + len(exclude)`` candidates.
Faiss calls release the GIL; one lock serializes updates against searches.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from recall_api.topk import normalize_rows


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a declared extra
        raise RuntimeError("--faiss needs faiss-cpu: pip install 'lfm-stream[faiss]'") from exc
    return faiss


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` rows: ``clip(round(sqrt(n)), 1, 65536)``."""
    return int(min(65536, max(1, round(math.sqrt(max(n, 1))))))


class FaissIndex:
    """u2i and i2i IVF indexes over an item matrix; ids are row positions.

    Args:
        dim: item vector dimension d.
        nprobe: inverted lists visited per query (more = slower, closer to exact).
        nlist: inverted lists; None = :func:`default_nlist` of the rows at build time.
        seed: k-means seed of the training.
        threads: OpenMP threads Faiss may use (1 keeps single queries from fighting the server).
    """

    def __init__(self, dim: int, nprobe: int = 128, nlist: int | None = None, seed: int = 0, threads: int = 1):
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1 (got {nprobe})")
        self.dim, self.nprobe, self.nlist_arg, self.seed = dim, nprobe, nlist, seed
        self.faiss = _faiss()
        self.faiss.omp_set_num_threads(threads)
        self.lock = threading.Lock()
        self.u2i = self.i2i = None
        self.nlist = 0
        self.trained_on = 0

    # ------------------------------------------------------------------------------------ build
    def _new(self, d: int, train: np.ndarray, nlist: int):
        f = self.faiss
        index = f.IndexIVFFlat(f.IndexFlatIP(d), d, nlist, f.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.cp.min_points_per_centroid = 1  # small catalogues: no "please provide more points" warning
        index.train(train)
        index.set_direct_map_type(f.DirectMap.Hashtable)
        index.nprobe = min(self.nprobe, nlist)
        return index

    def build(self, vec: np.ndarray, bias: np.ndarray, rows: np.ndarray | None = None) -> None:
        """(Re)train both indexes on ``vec``/``bias`` and add them with ids ``rows`` (default 0..n-1)."""
        n = len(vec)
        rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        nlist = self.nlist_arg or default_nlist(n)
        nlist = max(1, min(nlist, n)) if n else 1
        aug, unit = self._rows(vec, bias)
        rng = np.random.default_rng(self.seed)
        sample = rng.choice(n, size=min(n, 64 * nlist), replace=False) if n > 64 * nlist else slice(None)
        if n:
            u2i, i2i = self._new(self.dim + 1, aug[sample], nlist), self._new(self.dim, unit[sample], nlist)
            u2i.add_with_ids(aug, rows)
            i2i.add_with_ids(unit, rows)
        else:
            u2i = i2i = None
        with self.lock:
            self.u2i, self.i2i, self.nlist, self.trained_on = u2i, i2i, nlist, n

    @staticmethod
    def _rows(vec: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vec = np.ascontiguousarray(vec, dtype=np.float32)
        aug = np.ascontiguousarray(np.hstack([vec, np.asarray(bias, np.float32)[:, None]]))
        return aug, np.ascontiguousarray(normalize_rows(vec))

    @property
    def ready(self) -> bool:
        """True once built over at least one row."""
        return self.u2i is not None

    def needs_rebuild(self, n: int) -> bool:
        """True when the matrix has grown past twice the rows the lists were trained on."""
        return self.u2i is None or n > 2 * max(self.trained_on, 1)

    # ----------------------------------------------------------------------------------- update
    def upsert(self, rows: np.ndarray, vec: np.ndarray, bias: np.ndarray) -> None:
        """Replace (or add) the given row positions with new vectors and biases."""
        if self.u2i is None or not len(rows):
            return
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        aug, unit = self._rows(vec, bias)
        sel = self.faiss.IDSelectorArray(len(rows), self.faiss.swig_ptr(rows))
        with self.lock:
            for index, x in ((self.u2i, aug), (self.i2i, unit)):
                index.remove_ids(sel)
                index.add_with_ids(x, rows)

    def remove(self, rows: np.ndarray) -> None:
        """Drop row positions (items deleted from the PS)."""
        if self.u2i is None or not len(rows):
            return
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        sel = self.faiss.IDSelectorArray(len(rows), self.faiss.swig_ptr(rows))
        with self.lock:
            self.u2i.remove_ids(sel)
            self.i2i.remove_ids(sel)

    # ----------------------------------------------------------------------------------- search
    def _search(self, index, query: np.ndarray, k: int, exclude: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
        extra = 0 if exclude is None else len(exclude)
        with self.lock:
            scores, ids = index.search(query[None, :], k + extra)
        ids, scores = ids[0], scores[0]
        keep = ids >= 0
        if extra:
            keep &= ~np.isin(ids, exclude)
        return ids[keep][:k].astype(np.int64), scores[keep][:k].astype(np.float32)

    def search_u2i(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by ``q · v_i + b_i`` (approximate), excluding row positions ``exclude``."""
        q = np.append(np.asarray(query, np.float32), np.float32(1.0))
        return self._search(self.u2i, np.ascontiguousarray(q), k, exclude)

    def search_i2i(self, query_unit: np.ndarray, k: int, exclude: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by cosine to the unit query (approximate), excluding row positions ``exclude``."""
        return self._search(self.i2i, np.ascontiguousarray(query_unit, dtype=np.float32), k, exclude)

    def stats(self) -> dict:
        """Index facts for /stats."""
        return {"nlist": self.nlist, "nprobe": self.nprobe, "trained_on": self.trained_on,
                "ntotal": 0 if self.u2i is None else int(self.u2i.ntotal)}
