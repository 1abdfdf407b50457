"""A minimal asyncio Redis client for the u2i request path: one connection, every request pipelined.

``redis.asyncio``'s pipeline costs ~100 µs of Python per request (connection pool, retry and timeout
wrappers, response callbacks) — as much as ranking 9k movies — and its asyncio client has no client-side
caching (redis-py 8.1: ``cache_config`` is the synchronous client's only), which the user cache needs.  In a
paired run of ``bench/api.py`` the service's u2i over ``redis.asyncio`` reached a third of the saturation
throughput it reaches over this client (docs/decisions.md, "u2i Redis client").  The request path only needs
"send these few commands, give me their raw replies", so this client does just that:

* one TCP (or unix-socket) connection per event loop; callers' commands are appended to one write buffer
  that is flushed once per event-loop iteration (many concurrent requests → one ``send``), and replies are
  matched to callers in FIFO order (Redis answers a connection's commands in order);
* replies are parsed by ``hiredis`` (C) into plain Python values (bulk strings as ``bytes``, nil as None);
  an error reply raises :class:`redis.exceptions.ResponseError` in its caller only;
* a timeout (``socket_timeout``) or a lost connection fails every pending caller with
  :class:`redis.exceptions.TimeoutError` / :class:`redis.exceptions.ConnectionError` (so callers handle
  them like any redis-py error) and closes the connection; the next call reconnects;
* optionally (``on_invalidate``) the connection speaks RESP3 with ``CLIENT TRACKING ON``: Redis then
  pushes an ``invalidate`` message on this same connection whenever a key this connection read is
  modified (or evicted, flushed).  Pushes and replies share one ordered stream, so a caller that caches
  what it read — in its ``parse`` callback, which runs as its reply is taken off the stream — sees every
  later change of those keys as an invalidation after it (Redis' "client-side caching" protocol).

Only plain ``redis://`` (with optional password / db) and ``unix://`` URLs are served; :func:`supported`
tells, and the store falls back to ``redis.asyncio`` otherwise (TLS, cluster).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import redis.exceptions as rex

from ps_redis.connection import mask_url, pack

try:
    import hiredis

    _ERROR, _PUSH = hiredis.ReplyError, getattr(hiredis, "PushNotification", None)
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis] (a project dependency)
    hiredis = _ERROR = _PUSH = None


def connection_kwargs(url: str) -> dict | None:
    """``{"host", "port"} | {"path"}`` plus ``password`` / ``username`` / ``db`` of a Redis URL, or None when
    this client cannot serve it (TLS, unknown scheme, no hiredis)."""
    from redis.connection import parse_url

    if hiredis is None:
        return None
    try:
        kw = parse_url(url)
    except ValueError:
        return None
    cls = kw.pop("connection_class", None)
    if cls is not None and "path" not in kw:  # rediss:// (TLS)
        return None
    return kw


def supported(url: str) -> bool:
    """True when :class:`RespClient` can talk to ``url``."""
    return connection_kwargs(url) is not None


class _Protocol(asyncio.Protocol):
    """The connection: a write buffer flushed once per loop iteration, FIFO of waiting callers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, on_push=None):
        self.loop, self.timeout, self.on_push = loop, timeout, on_push
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiters: deque = deque()  # [future, replies still expected, replies, deadline, parse]
        self.buf: list[bytes] = []
        self.lost: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -------------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self._fail(rex.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        reader, waiters = self.reader, self.waiters
        reader.feed(data)
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if type(reply) is _PUSH:
                if self.on_push is not None:
                    self.on_push(self, reply)
                continue
            if not waiters:  # a reply nobody asked for: the stream is out of step
                self._fail(rex.ConnectionError("unexpected reply from Redis"))
                return
            w = waiters[0]
            w[2].append(reply)
            w[1] -= 1
            if w[1] == 0:
                waiters.popleft()
                fut, replies, parse = w[0], w[2], w[4]
                if fut.done():
                    continue
                for r in replies:
                    if type(r) is _ERROR:
                        fut.set_exception(rex.ResponseError(str(r)))
                        break
                else:
                    if parse is None:
                        fut.set_result(replies)
                        continue
                    try:  # right here, before any later push is read (see the module doc)
                        fut.set_result(parse(replies))
                    except Exception as exc:
                        fut.set_exception(exc)

    # ----------------------------------------------------------------------------- calls
    def request(self, payload: bytes, n_replies: int, parse=None) -> asyncio.Future:
        """Queue ``payload`` (``n_replies`` commands) and return the future of their replies (or of
        ``parse(replies)``, called as the replies arrive)."""
        if self.lost is not None:
            raise self.lost
        fut = self.loop.create_future()
        if not self.buf:
            self.loop.call_soon(self._flush)
        self.buf.append(payload)
        self.waiters.append([fut, n_replies, [], time.monotonic() + self.timeout, parse])
        if self._timer is None:
            self._timer = self.loop.call_later(self.timeout, self._check_timeout)
        return fut

    def _flush(self) -> None:
        if self.buf and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self.buf))
        self.buf.clear()

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.waiters:
            return
        late = self.waiters[0][3] - time.monotonic()
        if late <= 0:
            self._fail(rex.TimeoutError(f"Redis did not answer within {self.timeout} s"))
        else:
            self._timer = self.loop.call_later(late, self._check_timeout)

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
            if self.on_push is not None:  # whatever was tracked on this connection is no longer watched
                self.on_push(self, None)
        while self.waiters:
            fut = self.waiters.popleft()[0]
            if not fut.done():
                fut.set_exception(exc)
        self.buf.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


class RespClient:
    """Pipelined Redis commands over one connection of the running event loop.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` or ``unix://path[?db=N]`` (see :func:`supported`).
        timeout: seconds a reply may take (and a connect), else :class:`redis.exceptions.TimeoutError`.
        on_invalidate: if given, the connection uses RESP3 with ``CLIENT TRACKING ON`` (Redis >= 6) and this
            is called with the list of invalidated keys (``bytes``), or with None for "forget everything"
            (a flush, a lost connection, or a server that cannot track).
    """

    def __init__(self, url: str, timeout: float = 2.0, on_invalidate=None):
        kw = connection_kwargs(url)
        if kw is None:
            raise ValueError(f"RespClient cannot serve {mask_url(url)!r} (TLS or unsupported URL, or hiredis missing)")
        self.url, self.timeout, self._kw = url, float(timeout), kw
        self.on_invalidate = on_invalidate
        self.tracking = False  # True while the connection tracks keys (RESP3 + CLIENT TRACKING ON)
        self.connections = 0  # connections opened (each starts with nothing tracked)
        self._proto: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future | None = None

    async def execute(self, payload: bytes, n_replies: int, parse=None):
        """Send ``payload`` (``n_replies`` commands packed by :func:`ps_redis.connection.pack`) and return their
        replies, or ``parse(replies)`` when given: it runs as the replies come off the connection, before any push that
        follows them (with tracking: before the invalidation of anything it read).

        Raises:
            redis.exceptions.ResponseError: one of the commands answered with an error.
            redis.exceptions.ConnectionError / TimeoutError: Redis unreachable or too slow (connection reset).
        """
        proto = self._proto
        if proto is None or proto.lost is not None or self._loop is not asyncio.get_running_loop():
            proto = await self._connect()
        return await proto.request(payload, n_replies, parse)

    @property
    def connected(self) -> bool:
        """True while a connection is open (with tracking: while invalidations can arrive)."""
        return self._proto is not None and self._proto.lost is None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._connecting is not None and self._loop is loop:
            return await asyncio.shield(self._connecting)
        self._loop = loop
        pending = self._connecting = loop.create_future()
        try:
            try:
                proto = await asyncio.wait_for(self._open(loop), self.timeout)
            except asyncio.TimeoutError:
                raise rex.TimeoutError(f"connecting to Redis at {mask_url(self.url)} timed out after {self.timeout} s") \
                    from None
            except OSError as exc:
                raise rex.ConnectionError(f"cannot connect to Redis at {mask_url(self.url)}: {exc}") from None
        except BaseException as exc:  # also a cancelled caller: the next call must try again, not wait forever
            if self._connecting is pending:
                self._connecting = None
            if not pending.done():
                pending.set_exception(exc if isinstance(exc, Exception) else rex.ConnectionError("connect cancelled"))
                pending.exception()  # retrieved: waiters re-raise it themselves
            raise
        self._proto = proto
        self.connections += 1
        if self._connecting is pending:
            self._connecting = None
        pending.set_result(proto)
        return proto

    def _on_push(self, proto: _Protocol, push) -> None:
        current = self._proto
        if current is not None and current is not proto and current.lost is None:
            return  # an old connection (of another event loop) closing: the current one tracks
        if push is None:
            self.tracking = False
            self.on_invalidate(None)
        elif len(push) >= 2 and push[0] == b"invalidate":
            self.on_invalidate(push[1])  # None: everything (FLUSHDB / FLUSHALL)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        kw = self._kw
        track = self.on_invalidate is not None and _PUSH is not None
        if track:
            self.tracking = False
            self.on_invalidate(None)  # nothing is tracked on a new connection yet

        def factory() -> _Protocol:
            return _Protocol(loop, self.timeout, self._on_push if track else None)

        if "path" in kw:
            _, proto = await loop.create_unix_connection(factory, kw["path"])
        else:
            _, proto = await loop.create_connection(factory, kw.get("host", "localhost"), kw.get("port", 6379))
        try:
            await self._setup(proto, track)
        except BaseException:
            proto._fail(rex.ConnectionError("connection setup failed"))
            raise
        return proto

    async def _setup(self, proto: _Protocol, track: bool) -> None:
        kw = self._kw
        auth = ([kw.get("username") or "default", kw["password"]] if kw.get("password") is not None else [])
        if track:
            try:
                await proto.request(pack(("HELLO", 3, *(["AUTH", *auth] if auth else []))), 1)
            except rex.ResponseError:  # Redis < 6: no RESP3, so no tracking
                track = False
                proto.on_push = None
        setup = []
        if auth and not track:
            setup.append(pack(("AUTH", *auth)) if kw.get("username") else pack(("AUTH", auth[1])))
        if kw.get("db"):
            setup.append(pack(("SELECT", int(kw["db"]))))
        if setup:
            try:
                await proto.request(b"".join(setup), len(setup))
            except rex.ResponseError as exc:
                raise rex.ConnectionError(f"Redis refused the connection setup: {exc}") from None
        if track:
            try:
                await proto.request(pack(("CLIENT", "TRACKING", "ON")), 1)
            except rex.ResponseError:  # not allowed (ACL) or not supported: serve without a cache
                track = False
        self.tracking = track

    def close(self) -> None:
        """Close the connection (pending callers get ConnectionError)."""
        if self._proto is not None:
            self._proto._fail(rex.ConnectionError("client closed"))
            self._proto = None
