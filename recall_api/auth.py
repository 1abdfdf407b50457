"""Optional bearer-token access to the recall service: ``RECALL_API_TOKEN``.

When the token is set, every request must carry ``Authorization: Bearer <token>`` but ``GET /healthz`` (what
orchestrators probe) and the dashboard's page and assets (``/dashboard``, ``/static/dashboard/...``: static files
that hold no data; the page sends the token it is given in its address's fragment, ``/dashboard#token=<token>``,
with its data requests); any other gets 401 with ``WWW-Authenticate: Bearer``.  :class:`BearerAuth`
guards the FastAPI application (routes, docs, dashboard, metrics) and the protocol-level fast path
(:mod:`recall_api.protocol`) answers only authorized requests itself, leaving the rest to it.  The comparison
takes the same time whatever the header holds (``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable

TOKEN_ENV = "RECALL_API_TOKEN"
OPEN_PATHS = frozenset({"/healthz", "/dashboard"})
OPEN_PREFIXES = ("/static/dashboard/",)  # the dashboard page's script and style
_DENIED = (b'{"detail":"missing or wrong bearer token: send Authorization: Bearer <token> '
           b'(the RECALL_API_TOKEN the service runs with)"}')


def token_from_env() -> str | None:
    """``$RECALL_API_TOKEN`` (None when unset or blank)."""
    token = (os.environ.get(TOKEN_ENV) or "").strip()
    return token or None


def expected_header(token: str) -> bytes:
    """The ``Authorization`` value that grants access."""
    return b"Bearer " + token.encode()


def authorized(headers: Iterable[tuple[bytes, bytes]], expected: bytes) -> bool:
    """Whether ``headers`` (lower-case names, as ASGI and uvicorn give them) carry the expected ``Authorization``."""
    for name, value in headers:
        if name == b"authorization":
            return hmac.compare_digest(value, expected)
    return False


def is_open(path: str) -> bool:
    """Whether ``path`` is answered without the token (:data:`OPEN_PATHS`, :data:`OPEN_PREFIXES`)."""
    return path in OPEN_PATHS or (path.startswith(OPEN_PREFIXES) and ".." not in path)


class BearerAuth:
    """Pure-ASGI middleware: 401 for a request without the token, on every path but :func:`is_open`."""

    def __init__(self, app, token: str):
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app, self.expected = app, expected_header(token)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not is_open(scope["path"]) and not authorized(scope["headers"], self.expected):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-length", b"%d" % len(_DENIED)), (b"content-type", b"application/json"),
                                    (b"www-authenticate", b'Bearer realm="lfm-recall"')]})
            await send({"type": "http.response.body", "body": _DENIED})
            return
        await self.app(scope, receive, send)
