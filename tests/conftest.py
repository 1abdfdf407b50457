"""Shared fixtures: real servers on free loopback ports, a uuid namespace/topic per test, dataset paths.

Tests never use the machine's own services (e.g. Redis on 6379): the ``stack`` fixture starts its
own redis-server and Tansu broker and stops them at the end of the session.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from lfm_stream.config import default_cache_dir
from lfm_local.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]


def data_dir_candidates() -> list[Path]:
    """Where the tests look for a directory holding ``ml-latest-small/``, in this order: ``$LFM_DATA``, else
    ``../shared/data`` next to the checkout; then the download cache's verified extraction
    (``$LFM_CACHE_DIR/ml-latest-small``, as ``producer.prepare --download ml-latest-small`` or ``./lfm demo`` leave it)."""
    first = Path(os.environ.get("LFM_DATA") or ROOT.parent / "shared" / "data")
    cached = default_cache_dir() / "ml-latest-small"
    return [first] + ([cached] if (cached / ".verified").is_file() else [])


def shared_data_dir() -> Path:
    """The first of :func:`data_dir_candidates` that holds ``ml-latest-small/ratings.csv`` (else the first)."""
    found = [d for d in data_dir_candidates() if (d / "ml-latest-small" / "ratings.csv").is_file()]
    return (found or data_dir_candidates())[0]


@pytest.fixture(scope="session")
def ml_small_ratings() -> Path:
    """ratings.csv of ml-latest-small (must exist: integration tests are never skipped in CI)."""
    path = shared_data_dir() / "ml-latest-small" / "ratings.csv"
    assert path.exists(), (f"MovieLens ml-latest-small not found at {path} nor in the download cache "
                           f"{default_cache_dir()}; set LFM_DATA, or run `python -m producer.prepare --download "
                           "ml-latest-small` once")
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> LocalStack:
    """A redis-server and a Tansu broker on free loopback ports for the whole test session."""
    with LocalStack(tmp_path_factory.mktemp("stack"), use_env=False) as s:
        yield s


@pytest.fixture(scope="session")
def redis_url(stack) -> str:
    return stack.redis_url


@pytest.fixture(scope="session")
def bootstrap(stack) -> str:
    return stack.bootstrap


@pytest.fixture
def namespace() -> str:
    """A fresh PS namespace per test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topic() -> str:
    """A fresh Kafka topic name per test."""
    return f"ratings-{uuid.uuid4().hex[:10]}"
