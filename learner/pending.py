"""Records consumed and not trained yet: the chunks a fetcher delivered, cut into what the loop trains next."""

from __future__ import annotations

import numpy as np

from learner.input import Decoded
from learner.kafka_io import Chunk


class Pending:
    """Consumed chunks in arrival order, and how many records they hold (``n``)."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.n = 0

    def add(self, chunk: Chunk) -> None:
        """Append a consumed chunk."""
        self.chunks.append(chunk)
        self.n += len(chunk)

    def clear(self) -> None:
        """Drop every pending record (a revocation: the next owner resumes from the PS offsets)."""
        self.chunks, self.n = [], 0

    def absorb(self, fetcher, limit: int) -> None:
        """Add the chunks ``fetcher`` has ready (without waiting; chunks of an older assignment generation are
        dropped, as the loop drops them) until ``limit`` records are pending."""
        while self.n < limit and fetcher.backlog():
            chunk = fetcher.get(timeout=0)
            if chunk is None:
                return
            if chunk.gen == fetcher.generation:
                self.add(chunk)

    def columns(self) -> dict[str, np.ndarray] | None:
        """The decoded columns of every valid pending record, in order (None if a chunk is not decoded)."""
        decs = [c.decoded for c in self.chunks]
        if not decs or any(d is None for d in decs):
            return None
        return Decoded.join(decs).parsed().columns

    def take(self, n: int) -> Chunk:
        """The first ``n`` pending records (n ≤ ``self.n``) as one chunk; a chunk cut in two keeps its tail."""
        parts, offs, seqs, vals, keys, decs, got = [], [], [], [], [], [], 0
        while got < n:
            c = self.chunks[0]
            k = min(len(c), n - got)
            parts.append(c.parts[:k])
            offs.append(c.offsets[:k])
            seqs.append(c.seqs[:k])
            vals.extend(c.values[:k])
            keys.extend(c.keys[:k] if c.keys else [None] * k)
            decs.append(c.decoded.cut(0, k) if c.decoded is not None else None)
            got += k
            if k == len(c):
                self.chunks.pop(0)
            else:
                self.chunks[0] = Chunk(c.parts[k:], c.offsets[k:], c.values[k:], c.keys[k:] if c.keys else [], c.gen,
                                       c.decoded.cut(k, len(c)) if c.decoded is not None else None,
                                       seqs=c.seqs[k:])
        self.n -= got
        decoded = Decoded.join(decs) if decs and all(d is not None for d in decs) else None
        return Chunk(np.concatenate(parts), np.concatenate(offs), vals, keys, decoded=decoded,
                     seqs=np.concatenate(seqs))
