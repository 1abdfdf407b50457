"""recall_api: u2i and i2i recall served over HTTP from the Redis PS vectors, fresh and fast.

    python -m recall_api --redis-url redis://127.0.0.1:6379/0 --namespace lfm --data-dir data/prepared
    curl 'http://127.0.0.1:8000/u2i/42?k=10'
    python -m recall_api.query u2i 42            # the same from the shell (titles and scores)

Modules: :mod:`recall_api.topk` (pure top-k math), :mod:`recall_api.matrix` (the in-memory item matrix),
:mod:`recall_api.types` (config, answers, errors),
:mod:`recall_api.catalog` (titles, genres, known users), :mod:`recall_api.index` (optional Faiss),
:mod:`recall_api.store` (refresh from Redis, u2i/i2i), :mod:`recall_api.app` (FastAPI routes).
"""

from __future__ import annotations

from recall_api.catalog import Catalog
from recall_api.store import Answer, NotFound, RecallStore, StoreConfig, Unavailable

__all__ = ["Catalog", "RecallStore", "StoreConfig", "Answer", "NotFound", "Unavailable"]
