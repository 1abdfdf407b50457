"""Configuration helpers shared by every entry point.

Every CLI flag that configures a server or a path can fall back to an environment variable; the
``--help`` text shows which (``env_help``).  Components keep one frozen dataclass of their own,
built from these flags; tests build the dataclasses directly.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variables shared across components.
REDIS_URL_ENV = "REDIS_URL"
KAFKA_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP"
DATA_DIR_ENV = "LFM_DATA_DIR"  # prepared shards (output of producer.prepare)
DATASET_DIR_ENV = "LFM_DATA"  # raw MovieLens datasets (e.g. ../shared/data)
NAMESPACE_ENV = "LFM_NAMESPACE"
TOPIC_ENV = "LFM_TOPIC"
CACHE_DIR_ENV = "LFM_CACHE_DIR"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "ratings"
DEFAULT_NAMESPACE = "lfm"
DEFAULT_DATA_DIR = "data/prepared"


def env_default(name: str, default: str | None = None) -> str | None:
    """Value of environment variable ``name`` when set and non-empty, else ``default``."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_help(text: str, env: str, default: object = None) -> str:
    """Help text for a flag that falls back to an environment variable: ``"<text> [env NAME; default X]"``."""
    shown = "" if default is None else f"; default: {default}"
    return f"{text} [env {env}{shown}]"


def default_data_dir() -> Path:
    """Where ``producer.prepare`` writes and the replay/learner read by default (``$LFM_DATA_DIR``)."""
    return Path(env_default(DATA_DIR_ENV, DEFAULT_DATA_DIR) or DEFAULT_DATA_DIR)


def prepared_data_dir() -> str | None:
    """The prepared data directory a reader uses unless told otherwise (learner, recall service, query tool).

    ``$LFM_DATA_DIR`` when set (a missing one is then the reader's error), else ``data/prepared`` when it exists
    (where ``producer.prepare`` writes by default), else None: the reader runs without it (no test AUC, no titles).
    """
    env = env_default(DATA_DIR_ENV)
    if env:
        return env
    return DEFAULT_DATA_DIR if Path(DEFAULT_DATA_DIR).is_dir() else None


#: ``--help`` text of the readers' ``--data-dir`` default.
PREPARED_DEFAULT_HELP = f"{DEFAULT_DATA_DIR} when it exists"


def default_cache_dir() -> Path:
    """Download cache for MovieLens zips (``$LFM_CACHE_DIR``, else ``~/.cache/lfm-stream``)."""
    env = env_default(CACHE_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "lfm-stream"


def default_redis_url() -> str:
    """``$REDIS_URL`` or the local default."""
    return env_default(REDIS_URL_ENV, DEFAULT_REDIS_URL) or DEFAULT_REDIS_URL


def default_bootstrap() -> str:
    """``$KAFKA_BOOTSTRAP`` or the local default."""
    return env_default(KAFKA_BOOTSTRAP_ENV, DEFAULT_KAFKA_BOOTSTRAP) or DEFAULT_KAFKA_BOOTSTRAP
