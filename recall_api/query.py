"""Quick looks from the shell: ``python -m recall_api.query u2i 42`` / ``python -m recall_api.query i2i 318``.

Two ways to answer, same output (rank, movie id, score, title, genres):

* default — straight from the PS: loads the item matrix once from Redis (``--redis-url``, ``--namespace``)
  and ranks it with the same code the service runs (:class:`recall_api.store.RecallStore`); no server needed;
* ``--url http://127.0.0.1:8000`` — asks a running service over HTTP (what clients see; stdlib ``urllib``).

Ids and ``-k`` follow the API's rule (:mod:`recall_api.ids`): plain ASCII digits, so ``1_0`` or ``+5`` is refused
rather than read as 10 or 5.  Exit status: 0 answered, 1 not found (404), 2 bad input, 3 unavailable (Redis /
service down).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from lfm_stream.config import (DATA_DIR_ENV, DEFAULT_NAMESPACE, NAMESPACE_ENV, PREPARED_DEFAULT_HELP, REDIS_URL_ENV,
                               default_redis_url, env_default, env_help, prepared_data_dir)
from lfm_stream.version import add_version_flag
from recall_api.auth import token_from_env
from recall_api.ids import ID_DIGITS, K_DIGITS, parse_digits

RECALL_URL_ENV = "RECALL_URL"


def _strict(max_digits: int):
    """An argparse ``type`` taking 1 to ``max_digits`` ASCII digits (:func:`recall_api.ids.parse_digits`)."""

    def parse(value: str) -> int:
        try:
            return parse_digits(value, max_digits)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Flags of the query tool."""
    p = argparse.ArgumentParser(prog="python -m recall_api.query", description=__doc__.split("\n\n")[0])
    add_version_flag(p)
    p.add_argument("kind", choices=["u2i", "i2i"], help="u2i: movies for a user; i2i: movies like a movie")
    p.add_argument("id", type=_strict(ID_DIGITS), help="raw MovieLens user id (u2i) or movie id (i2i): digits 0-9")
    p.add_argument("-k", type=_strict(K_DIGITS), default=10, help="how many movies (1..1000, default 10)")
    p.add_argument("--url", default=env_default(RECALL_URL_ENV),
                   help=env_help("ask a running recall service at this URL instead of reading the PS",
                                 RECALL_URL_ENV))
    p.add_argument("--redis-url", default=default_redis_url(),
                   help=env_help("Redis URL of the PS", REDIS_URL_ENV, default_redis_url()))
    p.add_argument("--namespace", default=env_default(NAMESPACE_ENV, DEFAULT_NAMESPACE),
                   help=env_help("PS namespace", NAMESPACE_ENV, DEFAULT_NAMESPACE))
    p.add_argument("--data-dir", default=prepared_data_dir(),
                   help=env_help("prepared data directory (titles, known users)", DATA_DIR_ENV, PREPARED_DEFAULT_HELP))
    p.add_argument("--dim", type=int, default=None, help="vector dimension (default: read from the namespace)")
    p.add_argument("--json", action="store_true", help="print the JSON answer instead of a table")
    return p


def _via_http(args: argparse.Namespace) -> tuple[int, dict]:
    url = f"{args.url.rstrip('/')}/{args.kind}/{args.id}?{urllib.parse.urlencode({'k': args.k})}"
    token = token_from_env()  # a service run with RECALL_API_TOKEN wants it back as a bearer token
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 4xx / 5xx: the service's JSON problem
        with exc:
            status, body = exc.code, exc.read()
    except OSError as exc:  # URLError (refused, DNS), timeouts
        return 503, {"detail": f"cannot reach {args.url}: {getattr(exc, 'reason', exc)}"}
    try:
        return status, json.loads(body)
    except ValueError:
        return 503 if status == 200 else status, {"detail": f"{url} answered {status} with no JSON: {body[:200]!r}"}


def _via_ps(args: argparse.Namespace) -> tuple[int, dict]:
    from recall_api.app import render
    from recall_api.catalog import Catalog
    from recall_api.store import NotFound, RecallStore, StoreConfig, Unavailable

    store = RecallStore(StoreConfig(args.redis_url, args.namespace, dim=args.dim), Catalog.load(args.data_dir))
    store.refresh_once()
    try:
        answer = (store.u2i if args.kind == "u2i" else store.i2i)(args.id, args.k)
    except NotFound as exc:
        return 404, {"detail": str(exc)}
    except Unavailable as exc:
        return 503, {"detail": str(exc)}
    return 200, json.loads(render(args.kind, args.id, args.k, answer, store.catalog))


def format_table(body: dict) -> str:
    """The answer as aligned text lines."""
    lines = [f"{body['query']} {body['id']}  (k={body['k']}, source={body['source']})",
             f"{'#':>3}  {'movie':>7}  {'score':>9}  title  [genres]"]
    for rank, it in enumerate(body["items"], start=1):
        genres = "|".join(it["genres"])
        lines.append(f"{rank:>3}  {it['movie_id']:>7}  {it['score']:>9.4f}  {it['title'] or '?'}  [{genres}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Answer one query and print it."""
    args = build_parser().parse_args(argv)
    if not 1 <= args.k <= 1000:
        print(f"error: -k must be in 1..1000 (got {args.k})", file=sys.stderr)
        return 2
    if args.url and urllib.parse.urlsplit(args.url).scheme not in ("http", "https"):
        print(f"error: --url must be an http:// or https:// URL (got {args.url!r})", file=sys.stderr)
        return 2
    status, body = _via_http(args) if args.url else _via_ps(args)
    if status != 200:
        print(f"error ({status}): {body.get('detail')}", file=sys.stderr)
        return {404: 1, 422: 2}.get(status, 3)
    print(json.dumps(body, indent=2) if args.json else format_table(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
