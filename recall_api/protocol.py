"""uvicorn's httptools HTTP protocol with the u2i / i2i fast path answered at the protocol level.

``python -m recall_api`` serves with :func:`fast_protocol` (uvicorn's documented ``http=<protocol class>``
option; ``--no-fast-protocol`` serves with uvicorn's own protocol and the FastAPI routes alone).  For a
well-formed ``GET /u2i/<id>[?k=N]`` / ``/i2i/<id>[?k=N]`` the protocol answers straight from the store through
:func:`recall_api.app.respond`: no ASGI scope, request cycle, middleware chain or per-message ``send`` calls,
and the status line, headers and body leave in **one** socket write (uvicorn writes headers and body
separately: two syscalls and, on a loaded machine, two wake-ups of the client).  The bytes are those of the
FastAPI routes (uvicorn's default ``server`` / ``date`` headers, then ``content-length`` and ``content-type``
as Starlette's ``Response`` sends them).  Everything else — other paths, methods or parameters, requests with a
body or ``Expect``, HTTP/1.0 or ``Connection: close``, pipelined requests while one is in flight,
``--limit-concurrency`` — goes through uvicorn and FastAPI unchanged, in order.

i2i and u2i of a cached user (:mod:`recall_api.usercache`) need no I/O and are answered inside
``data_received``; any other u2i awaits its Redis round trip in a task (tracked like uvicorn's own request
tasks, so a graceful shutdown waits for it).

The subclass uses uvicorn internals (``HttpToolsProtocol``'s parser callbacks and attributes, the request
cycle's fields), which change between releases: it is used only with the releases in :data:`TESTED_UVICORN`
(the range ``pyproject.toml`` pins; tests/test_recall_protocol.py fails when either disagrees with the installed
uvicorn), and any other uvicorn is served without it, with a warning.  Why it exists: docs/decisions.md
("Recall hot path").
"""

from __future__ import annotations

import logging
import re
import time

import uvicorn

from recall_api.app import DEFAULT_K, MAX_K, respond
from recall_api.auth import authorized, expected_header
from recall_api.prom import I2I_ROUTE, U2I_ROUTE
from recall_api.store import RecallStore

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools missing: uvicorn's own protocol and the FastAPI routes
    HttpToolsProtocol = None

TESTED_UVICORN = ((0, 29), (0, 56))  # [first, end) of the uvicorn releases the protocol is tested with

log = logging.getLogger("recall_api")

# the request target of a fast request: same language as FastPath (path, optional "?" and "k=<1..4 digits>")
_FAST_TARGET = re.compile(rb"/(u2i|i2i)/([0-9]{1,18})(?:\?(?:k=([0-9]{1,4}))?)?")
_SKIP_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
_CONTENT_LENGTH, _CONTENT_TYPE = b"content-length: ", b"\r\ncontent-type: application/json\r\n\r\n"
_500 = (b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error")


class _NoEvent:
    """``message_event`` of :class:`_InFlight`: nobody waits on it."""

    __slots__ = ()

    def set(self) -> None:
        """Nothing to wake."""


_NO_EVENT = _NoEvent()


class _InFlight:
    """Stands in for uvicorn's request cycle while a fast answer is being computed: a request that arrives
    meanwhile on the same connection is queued behind it (uvicorn's pipelining rule), and a disconnect or
    shutdown is recorded the way uvicorn records it on a cycle."""

    __slots__ = ("response_complete", "disconnected", "keep_alive", "more_body", "body", "message_event")

    def __init__(self):
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = True
        self.more_body = False
        self.body = bytearray()
        self.message_event = _NO_EVENT


def unsupported_uvicorn(version: str = uvicorn.__version__) -> str | None:
    """Why uvicorn ``version`` (default: the installed one) cannot take the fast protocol — not a release in
    :data:`TESTED_UVICORN`, or httptools missing — or None."""
    if HttpToolsProtocol is None:
        return "httptools is not installed"
    release = tuple(int(part) for part in re.findall(r"[0-9]+", version)[:2])
    first, end = TESTED_UVICORN
    if not first <= release < end:
        return f"uvicorn {version} is not in the tested range {uvicorn_pin()}"
    return None


def uvicorn_pin() -> str:
    """:data:`TESTED_UVICORN` as a requirement specifier (``>=0.29,<0.56``), as pyproject.toml pins uvicorn."""
    (a, b), (c, d) = TESTED_UVICORN
    return f">={a}.{b},<{c}.{d}"


def fast_protocol(store: RecallStore, metrics=None, token: str | None = None):
    """An ``asyncio.Protocol`` class for ``uvicorn.Config(http=...)`` that answers fast requests from ``store``,
    or None (logged) when the installed uvicorn is not supported (:func:`unsupported_uvicorn`): then serve with
    uvicorn's own protocol.  ``metrics`` (:class:`recall_api.prom.RecallMetrics`, the app's
    ``app.state.metrics``) times its answers.  With a ``token`` (:mod:`recall_api.auth`) only requests that carry
    it are answered here; the others go to the app, which answers 401."""
    problem = unsupported_uvicorn()
    if problem is not None:
        log.warning("serving u2i / i2i through the FastAPI routes (no fast protocol): %s", problem)
        return None

    class FastHttpToolsProtocol(HttpToolsProtocol):
        """:class:`HttpToolsProtocol` plus the fast path (see the module doc)."""

        _store = store
        _fast = None
        _metrics = metrics
        _auth = expected_header(token) if token else None
        _timed: tuple[str, float] | None = None  # (route, start) of the fast request in flight

        def on_message_begin(self) -> None:
            self._fast = None
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            m = _FAST_TARGET.fullmatch(self.url)
            if (m is not None and self.parser.get_method() == b"GET" and self.parser.get_http_version() == "1.1"
                    and self.parser.should_keep_alive() and not self.root_path and self.limit_concurrency is None
                    and (self.cycle is None or self.cycle.response_complete) and not self.pipeline
                    and not any(name in _SKIP_HEADERS for name, _ in self.headers)
                    and (self._auth is None or authorized(self.headers, self._auth))):
                k = int(m.group(3)) if m.group(3) is not None else DEFAULT_K
                if 1 <= k <= MAX_K:
                    self._fast = (m.group(1).decode(), int(m.group(2)), k)
                    if self._metrics is not None:
                        self._timed = (U2I_ROUTE if m.group(1) == b"u2i" else I2I_ROUTE, time.perf_counter())
                    self.cycle = _InFlight()
                    return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._fast is None:
                super().on_body(body)

        def on_message_complete(self) -> None:
            fast = self._fast
            if fast is None:
                super().on_message_complete()
                return
            self._fast = None
            kind, id_, k = fast
            cycle = self.cycle
            try:  # i2i, and u2i of a cached user: no I/O, answered right here
                done = respond(self._store, kind, id_, k)
            except Exception:
                self._fail(cycle, "/%s/%s?k=%s" % (kind, id_, k))
                return
            if isinstance(done, tuple):
                self._answer(cycle, *done)
            else:  # a u2i reading Redis
                task = self.loop.create_task(self._answer_later(cycle, done, "/u2i/%s?k=%s" % (id_, k)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

        async def _answer_later(self, cycle: _InFlight, pending, what: str) -> None:
            try:
                status, body = await pending
            except Exception:
                self._fail(cycle, what)
                return
            self._answer(cycle, status, body)

        def _fail(self, cycle: _InFlight, what: str) -> None:
            """A bug: log it, answer 500 and close, as uvicorn does for an exception in the app."""
            log.exception("fast path failed for %s", what)
            cycle.response_complete = True
            if not self.transport.is_closing():
                self.transport.write(_500)
                self.transport.close()

        def _answer(self, cycle: _InFlight, status: int, body: bytes) -> None:
            if self._timed is not None:  # one fast request at a time per connection (see on_headers_complete)
                route, t0 = self._timed
                self._timed = None
                self._metrics.observe(route, status, time.perf_counter() - t0)
            cycle.response_complete = True
            if cycle.disconnected or self.transport.is_closing():
                return
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += (name, b": ", value, b"\r\n")
            head += (_CONTENT_LENGTH, b"%d" % len(body), _CONTENT_TYPE, body)  # as Starlette orders them
            self.transport.write(b"".join(head))
            if not cycle.keep_alive:  # shutdown began meanwhile
                self.transport.close()
            self.on_response_complete()

    return FastHttpToolsProtocol
