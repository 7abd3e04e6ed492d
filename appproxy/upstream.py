"""The upstream HTTP/1.1 client of the data path: pooled keep-alive connections on aiohttp's own client protocol.

``aiohttp.ClientSession`` costs about a third of the proxy's CPU per request (a ``ClientRequest`` and
``ClientResponse`` per call, URL and header merging, auto headers, trace hooks, timer contexts, a payload object
and on Python < 3.12 a task for the body). The proxy needs none of that: it already has the exact header block
it wants to send and a body in memory. This client keeps the parts that matter and are hard to get right:
aiohttp's :class:`~aiohttp.client_proto.ResponseHandler` protocol with aiohttp's (C) response parser, its flow
control, its ``sock_read`` timeout and its payload ``StreamReader`` — the same objects ``ClientSession`` uses
underneath. What is ours: serialising the request head (method, target, ``Host`` and already-validated header
lines), and the pool of idle connections per ``(host, port)``.

Semantics, as with the ``ClientSession`` this replaces (``sock_connect``/``sock_read`` timeouts,
``auto_decompress=False``, no cookies, no auto headers besides ``Host`` and ``Content-Length``):

* connect: :class:`UpstreamConnectError` (refused, unreachable; ``.os_error``) or :class:`UpstreamConnectTimeout`;
* the replica silent for ``read_timeout`` before its headers, or between two reads of the body:
  ``aiohttp.ServerTimeoutError`` (``SocketTimeoutError``);
* connection closed or reset before the headers: ``aiohttp.ServerDisconnectedError``/``aiohttp.ClientOSError``;
  a malformed response: ``aiohttp.http_exceptions.HttpProcessingError``; a truncated body:
  ``aiohttp.ClientPayloadError`` from ``content``;
* an idempotent request on a pooled connection that turns out to be closed before any response byte (the
  replica's keep-alive ended while it sat idle) is sent once more on a fresh connection, as ``ClientSession``
  does; idle connections found closed are never used;
* 1xx informational responses are skipped; ``HEAD``, 204 and 304 have no body.

:class:`ReplicaProtocol` overrides ``ResponseHandler``'s timer helpers (``_reschedule_timeout``,
``_drop_timeout``, ``_read_timeout_handle``): private aiohttp API, written against aiohttp 3.14; the read-timeout
tests in ``tests/appproxy`` (idle stream cut after the timeout, a slow drip never cut) are what guard it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

READ_BUFSIZE: Final = 2**16
_METHODS_WITHOUT_BODY: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no Content-Length: 0 for these
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamConnectError(OSError):
    """The replica refused or could not be reached; ``os_error`` is the underlying error."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(os_error.errno, os_error.strerror or str(os_error))
        self.os_error = os_error


class UpstreamConnectTimeout(TimeoutError):
    """No connection within the connect timeout."""


def request_head(method: str, target: str, host_header: str, header_lines: bytes, body_size: int | None) -> bytes:
    """The request line and headers. ``header_lines`` is ``b"Name: value\\r\\n"...`` (values came out of
    aiohttp's request parser, so they hold no CR/LF). ``body_size`` None: a chunked body follows."""
    if body_size is None:
        length = b"Transfer-Encoding: chunked\r\n"
    elif body_size or method not in _METHODS_WITHOUT_BODY:
        length = b"Content-Length: %d\r\n" % body_size
    else:
        length = b""
    return b"".join((f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n".encode("latin-1"),
                     header_lines, length, b"\r\n"))


def host_header(host: str, port: int) -> str:
    """``Host`` as aiohttp's client writes it: IPv6 in brackets, the port unless it is 80."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port == 80 else f"{host}:{port}"


class BodySource(Protocol):
    """A request body sent as it arrives (:class:`appproxy.body.BodyStream`) rather than held as bytes: it calls
    ``send`` with each piece, which returns once the replica's connection can take more."""

    async def write_to(self, send: Callable[[bytes], Awaitable[None]]) -> None: ...


class ResponseListener(Protocol):
    """Who gets the response of a request sent with :meth:`UpstreamPool.send` instead of awaiting it."""

    def on_response(self, message: RawResponseMessage, payload: StreamReader) -> None: ...

    def on_error(self, exc: BaseException) -> None: ...


def is_final(message: RawResponseMessage) -> bool:
    """Not an informational (1xx) response, which is skipped; ``101`` is final."""
    code = message.code
    return code < 100 or code > 199 or code == 101


class ReplicaProtocol(ResponseHandler):
    """aiohttp's client protocol with a lazily re-armed ``sock_read`` timer, and an optional ``listener``.

    With a ``listener`` set (:meth:`UpstreamPool.send`), the final response head (with its body
    ``StreamReader``), or the error that ends the wait for it (connection lost, read timeout, a malformed
    response), goes to the listener as soon as the parser produces it, from ``data_received`` itself: no
    future, no task wake-up. Without one, responses queue up for ``read()`` as in aiohttp.

    ``ResponseHandler`` cancels and re-creates its timer on every read and at the end of every response (a
    ``TimerHandle`` and heap operations each time). Here a read only moves the deadline and the end of a response
    only disarms it; one timer per connection, when it fires before the deadline, re-arms itself for the rest.
    Same semantics (the replica silent for ``read_timeout`` while a response is awaited or read →
    ``SocketTimeoutError``); the timer is cancelled when the connection is lost."""

    _read_deadline: float | None = None  # None: disarmed (no response being read)
    listener: ResponseListener | None = None

    def feed_data(self, data: Any, size: int = 0) -> None:  # DataQueue: a parsed (message, payload)
        listener = self.listener
        if listener is None:
            super().feed_data(data, size)
        elif is_final(data[0]):
            self.listener = None
            listener.on_response(data[0], data[1])

    def set_exception(self, exc: BaseException, *args: Any) -> None:
        super().set_exception(exc, *args)  # marks the connection for closing, stops the timer
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.on_error(exc)

    def keep_parser(self, skip_payload: bool, read_timeout: float | None) -> bool:
        """Use the response parser of the previous exchange again (True) instead of a new one per request, as
        ``set_response_params`` makes. Only on a pooled connection: the previous response was read to its end,
        so the parser stands between two messages, as with pipelined responses. Every pool's connections are
        set up with the same limits; a ``HEAD`` (no body to parse) needs a parser of its own."""
        if self._parser is None or self._tail or skip_payload != self._skip_payload:
            return False
        self._read_timeout = read_timeout
        return True

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._read_deadline = None
            return
        self._read_deadline = deadline = self._loop.time() + timeout
        if self._read_timeout_handle is None:
            self._read_timeout_handle = self._loop.call_at(deadline, self._check_read_timeout)

    def _drop_timeout(self) -> None:
        self._read_deadline = None  # the pending timer, if any, finds nothing to do

    def _check_read_timeout(self) -> None:
        self._read_timeout_handle = None
        deadline = self._read_deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._read_timeout_handle = self._loop.call_at(deadline, self._check_read_timeout)
        else:
            self._read_deadline = None
            self._on_read_timeout()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._read_deadline = None
        if self._read_timeout_handle is not None:
            self._read_timeout_handle.cancel()
            self._read_timeout_handle = None

    def resume_reading(self, resume_parser: bool = True) -> None:
        # StreamReader calls this after every read that leaves its buffer below the low-water mark, paused or not;
        # unpaused, aiohttp would re-feed the parser an empty buffer and poke the transport each time.
        if getattr(self, "_reading_paused", True):  # attribute missing in some aiohttp version: aiohttp's way
            super().resume_reading(resume_parser)


class UpstreamResponse:
    """One response being read; ``release()`` (whole body read) returns the connection to the pool, ``close()``
    drops it. Attribute names follow ``aiohttp.ClientResponse`` (status, reason, headers, content, ...)."""

    __slots__ = ("_key", "_pool", "_proto", "content", "content_length", "headers", "method", "raw_headers", "reason",
                 "status")

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], proto: ResponseHandler, method: str,
                 message: RawResponseMessage, content: StreamReader) -> None:
        self._pool, self._key = pool, key
        self._proto: ResponseHandler | None = proto  # None once released or closed
        self.method = method
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers  # as received, in order
        self.content = content
        length = message.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def read(self) -> bytes:
        """The whole body (when it is already in, as small bodies usually are, without waiting)."""
        content = self.content
        if content.is_eof() and content.exception() is None:
            return content.read_nowait()
        return await content.read()

    def release(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            self._pool.release(self._key, proto, self.content)

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.close()


class UpstreamPool:
    """Idle keep-alive connections per ``(host, port)`` (most recently used first) and the request call."""

    def __init__(self, *, connect_timeout: float, read_timeout: float | None, keepalive_timeout: float,
                 max_line_size: int = 8190, max_field_size: int = 8190) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive_timeout  # <= 0: a connection per request
        self._max_line_size, self._max_field_size = max_line_size, max_field_size
        self._idle: dict[tuple[str, int], list[tuple[ResponseHandler, float]]] = {}
        self._cleanup: asyncio.TimerHandle | None = None
        self._closed = False

    # -- the pool --------------------------------------------------------------------------------------------
    def release(self, key: tuple[str, int], proto: ResponseHandler, content: StreamReader) -> None:
        """Back to the pool when the response was read to its end and the connection can be reused."""
        if content.is_eof() and not proto.should_close and proto.is_connected():
            self.put_idle(key, proto)
        else:
            proto.close()

    def put_idle(self, key: tuple[str, int], proto: ResponseHandler) -> None:
        if self._closed or self._keepalive <= 0:
            proto.close()
            return
        self._idle.setdefault(key, []).append((proto, time.monotonic() + self._keepalive))
        if self._cleanup is None:
            self._cleanup = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def _take_idle(self, key: tuple[str, int]) -> ResponseHandler | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            proto, deadline = idle.pop()
            if deadline > now and proto.is_connected() and not proto.should_close:
                return proto
            proto.close()
        return None

    def _expire(self) -> None:
        self._cleanup = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = []
            for proto, deadline in idle:
                if deadline > now and proto.is_connected():
                    keep.append((proto, deadline))
                else:
                    proto.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            self._cleanup = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def drop(self, keep: set[tuple[str, int]]) -> None:
        """Close the idle connections to addresses not in ``keep`` (routes that are gone)."""
        for key in [k for k in self._idle if k not in keep]:
            for proto, _ in self._idle.pop(key):
                proto.close()

    def close(self) -> None:
        self._closed = True
        if self._cleanup is not None:
            self._cleanup.cancel()
            self._cleanup = None
        for idle in self._idle.values():
            for proto, _ in idle:
                proto.close()
        self._idle.clear()

    async def _connect(self, host: str, port: int) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, proto = await loop.create_connection(lambda: ReplicaProtocol(loop), host, port,
                                                        family=socket.AF_UNSPEC)
        except TimeoutError:
            raise UpstreamConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise UpstreamConnectError(exc) from exc
        return proto

    # -- a request -------------------------------------------------------------------------------------------
    async def request(self, host: str, port: int, method: str, head: bytes, body: bytes | BodySource
                      ) -> UpstreamResponse:
        """Send ``head`` + ``body`` (see :func:`request_head`) and return once the response headers are in.
        A streamed body always goes on a new connection: an idle one found closed could not be retried."""
        key = (host, port)
        if not isinstance(body, bytes):
            return await self._exchange(key, await self._connect(host, port), method, head, body)
        proto = self._take_idle(key)
        if proto is None:
            proto = await self._connect(host, port)
            return await self._exchange(key, proto, method, head, body)
        try:
            return await self._exchange(key, proto, method, head, body)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if method not in IDEMPOTENT_METHODS:
                raise
        return await self.resend(host, port, method, head, body)

    async def resend(self, host: str, port: int, method: str, head: bytes, body: bytes) -> UpstreamResponse:
        """A pooled connection closed under an idempotent request before any response byte (RFC 9112 §9.3.1):
        the request is sent once more on a new connection, as ClientSession does."""
        proto = await self._connect(host, port)
        return await self._exchange((host, port), proto, method, head, body)

    def take(self, host: str, port: int) -> ReplicaProtocol | None:
        """An idle connection to ``host:port`` that looks alive, or None (never connects)."""
        return self._take_idle((host, port))  # type: ignore[return-value]  # this pool only makes ReplicaProtocols

    def send(self, proto: ReplicaProtocol, method: str, head: bytes, body: bytes, listener: ResponseListener
             ) -> None:
        """Send a request whose body fits one write on ``proto`` (from :meth:`take`) and have ``listener``
        called with the response head or the error instead of awaiting it (see :class:`ReplicaProtocol`)."""
        self._write(proto, method, head, body)
        proto.listener = listener
        proto.start_timeout()

    def _write(self, proto: ResponseHandler, method: str, head: bytes, body: bytes) -> None:
        skip_payload = method == "HEAD"
        if not (type(proto) is ReplicaProtocol and proto.keep_parser(skip_payload, self._read_timeout)):
            proto.set_response_params(
                skip_payload=skip_payload, auto_decompress=False, read_timeout=self._read_timeout,
                read_bufsize=READ_BUFSIZE, max_line_size=self._max_line_size, max_field_size=self._max_field_size)
        transport = proto.transport
        if transport is None:
            raise aiohttp.ServerDisconnectedError()
        if len(body) <= READ_BUFSIZE:
            transport.write(head + body if body else head)  # one send()
        else:
            transport.write(head)
            transport.write(body)

    @staticmethod
    async def _send(proto: ResponseHandler, data: bytes) -> None:
        """Write a piece of a streamed body; wait while the replica's connection holds more than its high-water
        mark (back-pressure: the client's body is not read meanwhile)."""
        transport = proto.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ServerDisconnectedError("the replica closed the connection during the request body")
        transport.write(data)
        if proto.writing_paused:
            try:
                await proto._drain_helper()
            except ConnectionError as exc:
                raise aiohttp.ServerDisconnectedError(f"the replica closed the connection ({exc})") from None

    async def _exchange(self, key: tuple[str, int], proto: ResponseHandler, method: str, head: bytes,
                        body: bytes | BodySource) -> UpstreamResponse:
        try:
            if isinstance(body, bytes):
                self._write(proto, method, head, body)
            else:
                self._write(proto, method, head, b"")
                await body.write_to(lambda data: self._send(proto, data))
            if proto.writing_paused:
                await proto._drain_helper()  # a large body: wait for the replica to take it
            proto.start_timeout()
            while True:
                message, payload = await proto.read()
                if is_final(message):
                    break
            return UpstreamResponse(self, key, proto, method, message, payload)
        except BaseException:
            proto.close()  # cancelled (the client left) or failed: the replica sees the connection close
            raise
