"""``python -m recall_api`` / ``lfm-recall``: run the recall service with uvicorn (one worker).

Every flag falls back to an environment variable (shown in ``--help``), so docker compose configures the
service with ``REDIS_URL``, ``LFM_NAMESPACE`` and ``LFM_DATA_DIR`` alone.  ``RECALL_API_TOKEN`` (environment
only: a command line is visible to other users) puts every route but ``/healthz`` behind a bearer token.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import sys

from lfm_stream.config import (DATA_DIR_ENV, DEFAULT_NAMESPACE, NAMESPACE_ENV, PREPARED_DEFAULT_HELP, REDIS_URL_ENV,
                               default_redis_url, env_default, env_help, prepared_data_dir)
from lfm_stream.version import add_version_flag, version
from recall_api.auth import TOKEN_ENV

HOST_ENV, PORT_ENV = "RECALL_HOST", "RECALL_PORT"


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the service."""
    p = argparse.ArgumentParser(prog="python -m recall_api", description=__doc__.split("\n\n")[0],
                                epilog=f"env {TOKEN_ENV} (environment only): when set, every route but /healthz "
                                       "answers 401 unless the request carries 'Authorization: Bearer <token>'")
    add_version_flag(p)
    p.add_argument("--host", default=env_default(HOST_ENV, "127.0.0.1"),
                   help=env_help("interface to listen on", HOST_ENV, "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env_default(PORT_ENV, "8000")),
                   help=env_help("TCP port", PORT_ENV, 8000))
    p.add_argument("--redis-url", default=default_redis_url(),
                   help=env_help("Redis URL of the parameter server", REDIS_URL_ENV, default_redis_url()))
    p.add_argument("--namespace", default=env_default(NAMESPACE_ENV, DEFAULT_NAMESPACE),
                   help=env_help("PS namespace (model) to serve", NAMESPACE_ENV, DEFAULT_NAMESPACE))
    p.add_argument("--data-dir", default=prepared_data_dir(),
                   help=env_help("prepared data directory (movies.csv for titles, manifest.json + shards "
                                 "for the known users); optional", DATA_DIR_ENV, PREPARED_DEFAULT_HELP))
    p.add_argument("--dim", type=int, default=None,
                   help="vector dimension (default: read from the namespace; the service waits for the learner)")
    p.add_argument("--refresh-interval", type=float, default=0.1,
                   help="seconds between incremental refreshes of the item matrix (default 0.1)")
    p.add_argument("--faiss", action="store_true",
                   help="rank with Faiss IVF indexes (approximate; for catalogues of >= 100k movies)")
    p.add_argument("--faiss-nprobe", type=int, default=128,
                   help="Faiss lists visited per query (default 128 of ~sqrt(n); more = slower, closer to exact)")
    p.add_argument("--channel-interval", type=float, default=5.0,
                   help="seconds between rebuilds of the score contract, item channel and popularity from Redis "
                        "(default 5)")
    p.add_argument("--user-cache", type=int, default=20_000,
                   help="users whose u2i context (row, rated movies) is kept in memory, invalidated by Redis key "
                        "tracking so answers stay exact (default 20000; 0 = read Redis on every request)")
    p.add_argument("--fast-protocol", action=argparse.BooleanOptionalAction, default=True,
                   help="answer well-formed u2i / i2i inside uvicorn's HTTP protocol (recall_api.protocol; default on, "
                        "used with the uvicorn releases it is tested with); --no-fast-protocol: FastAPI routes only")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="log level of the service and uvicorn (default warning)")
    return p


def local_url(host: str, port: int) -> str:
    """The URL a user on this machine opens for ``host:port`` (a wildcard address is reached on loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the catalog, serve until interrupted."""
    args = build_parser().parse_args(argv)
    import uvicorn

    from ps_redis import mask_url
    from recall_api.app import create_app
    from recall_api.auth import token_from_env
    from recall_api.catalog import Catalog
    from recall_api.protocol import fast_protocol
    from recall_api.store import RecallStore, StoreConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = StoreConfig(redis_url=args.redis_url, namespace=args.namespace, dim=args.dim,
                             refresh_interval=args.refresh_interval, faiss=args.faiss,
                             faiss_nprobe=args.faiss_nprobe, channel_interval=args.channel_interval,
                             user_cache=args.user_cache)
        catalog = Catalog.load(args.data_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = RecallStore(config, catalog)
    token = token_from_env()
    app = create_app(store, token=token)
    # u2i / i2i answered at the protocol level (recall_api.protocol) unless turned off or uvicorn is not a tested
    # release; uvloop is picked by uvicorn's loop="auto" when installed
    http = (fast_protocol(store, app.state.metrics, token) if args.fast_protocol else None) or "auto"
    with contextlib.suppress(ImportError):  # imported now so that the freeze below covers it
        importlib.import_module("uvloop")
    # what is loaded now (modules, catalog) lives as long as the process: keep it out of the cyclic GC, whose
    # full collections would otherwise walk it on the request thread (~25 ms pauses on a busy 2-core machine)
    gc.collect()
    gc.freeze()
    url = local_url(args.host, args.port)
    print(f"recall_api {version()}: namespace {args.namespace!r} of {mask_url(args.redis_url)}, serving {url} "
          f"(listening on {args.host}:{args.port}; API docs {url}/docs"
          + (f"; every route but /healthz needs the bearer token in {TOKEN_ENV})" if token else ")"),
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, http=http)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
