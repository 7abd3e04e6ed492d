"""The client-facing HTTP/1.1 server of the data path: a plain asyncio protocol on aiohttp's C request parser.

aiohttp's ``web.Server`` spends more CPU per request than the rest of the proxy's own code: per connection a task
that waits on a future for each message, per request a second task (Python < 3.12), and for every response a
``StreamResponse`` whose headers go through a multidict, ``_prepare_headers`` and the C serialiser. This server
keeps the parts that are hard to get right and does the rest directly:

* parsing is aiohttp's :class:`~aiohttp.http.HttpRequestParser` (the C parser, same limits, same
  ``RawRequestMessage`` and body ``StreamReader`` with flow control), so nothing here parses HTTP;
* the handler gets a real :class:`aiohttp.web.BaseRequest` (headers, body, ``writer`` for ``100 Continue``) and
  may answer with any ``web.StreamResponse``, which is written by aiohttp's own ``prepare``/``write_eof`` on
  aiohttp's ``StreamWriter``: errors, streams, large bodies, anything unusual behave exactly as before;
* the common answer — a complete body of known length relayed from a replica, :class:`SizedResponse` — is
  written here as one ``transport.write``: status line, the replica's end-to-end header lines as received,
  then what ``web.Response`` adds (``Content-Type`` when missing and the body is not empty, ``Date``, ``Server``,
  ``Connection: keep-alive``/``close`` as the request's HTTP version and keep-alive call for), the body;
* one task per burst of requests on a connection (none while a keep-alive connection is idle), started from
  ``data_received``; pipelined requests are answered in order; a client disconnect cancels that task (what
  ``handler_cancellation=True`` did), which is how an abandoned generation is stopped upstream.

Connection semantics follow aiohttp's ``RequestHandler``: 400 (``text/plain``, connection closed) for a request
the parser refuses, 500 for a handler exception, keep-alive for ``keepalive_timeout`` seconds of idleness, a
request body the handler did not read is drained for up to ``lingering_time`` seconds before the connection is
reused (else closed), at most ``MAX_QUEUED`` parsed requests buffered per connection (reading pauses beyond), a
declined ``Upgrade`` continues as plain HTTP. :meth:`HttpServer.shutdown` stops accepting, closes idle
connections, lets requests in progress finish within the timeout and then cancels them.

Slow and greedy clients (aiohttp has neither bound): a request head must be complete within ``head_timeout``
seconds of the connection's accept, or of the first byte of the next request on a kept-alive connection, else the
connection is closed (slowloris). Both deadlines share the one keep-alive timer per connection, so a request costs
nothing more. At most ``max_connections_per_client`` connections per client address are open at once; one more is
answered ``429`` and closed before anything of it is read.

TLS (``ssl_context``): every listener serves HTTPS; asyncio's TLS transport hands this protocol the decrypted bytes
and encrypts what it writes, so the parser, the fast path and the timers work unchanged. A TLS handshake must
finish within ``head_timeout`` (it precedes the head timer); a client speaking plain HTTP to a TLS port fails the
handshake and is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final, Protocol

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time, set_exception
from aiohttp.http import SERVER_SOFTWARE, HttpProcessingError, HttpRequestParser, HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_exceptions import HTTPException
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import ERROR, RequestPayloadError
from multidict import CIMultiDictProxy

log = logging.getLogger(__name__)
server_log = logging.getLogger("aiohttp.server")  # where aiohttp's server logged handler errors
access_log = logging.getLogger("aiohttp.access")

READ_BUFSIZE: Final = 2**16  # the request body StreamReader's high-water mark (aiohttp's default)
MAX_QUEUED: Final = 32  # parsed requests waiting behind the one in progress before reading pauses
KEEPALIVE_TIMEOUT: Final = 75.0  # the defaults here are appproxy.config's
HEAD_TIMEOUT: Final = 15.0
LINGERING_TIME: Final = 10.0
_SERVER_LINE: Final = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_OCTET_STREAM: Final = b"Content-Type: application/octet-stream\r\n"

Handler = Callable[[web.BaseRequest], Awaitable["web.StreamResponse | SizedResponse"]]
# The fast path: takes a complete request (True) and answers it through finish_fast/continue_with, or declines.
FastHandler = Callable[["HttpConnection", RawRequestMessage, StreamReader], bool]


class FastRequest(Protocol):
    """A request the fast path took and has not answered yet."""

    def abort(self) -> None:
        """The client went away: stop (close the upstream connection, count the disconnect)."""


class SizedResponse:
    """A complete response relayed from a replica: status, reason, the header lines to send as received
    (``b"Name: value\\r\\n"...``, hop-by-hop ones already removed), the replica's headers (to see which of
    ``Content-Type``/``Date``/``Server`` it set) and the body, whose ``Content-Length`` is among the lines."""

    __slots__ = ("body", "headers", "lines", "reason", "status")

    def __init__(self, status: int, reason: str, lines: bytes, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status, self.reason, self.lines, self.headers, self.body = status, reason, lines, headers, body

    @property
    def body_length(self) -> int:  # for the access log
        return len(self.body)

    @property
    def keep_alive(self) -> None:
        return None


class _ErrInfo:
    """A request the parser refused: answered with ``status`` and the parser's message, then closed."""

    __slots__ = ("exc", "message", "status")

    def __init__(self, status: int, exc: BaseException, message: str) -> None:
        self.status, self.exc, self.message = status, exc, message


class HttpConnection(BaseProtocol):
    """One client connection (see the module docstring)."""

    __slots__ = ("_close_after", "_closed", "_counted", "_done_waiter", "_fast", "_head_started", "_idle_close_at",
                 "_idle_handle", "_in_progress", "_queue", "_read_paused_for_queue", "_request", "_server", "_tail",
                 "_task", "peername", "remote", "request_count", "scheme", "sockname", "ssl_context")

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        # auto_decompress off: a Content-Encoding body is relayed as sent, with its header (decoded, it reached the
        # replica still labelled gzip, and a small body could expand past max_body_size inside the proxy)
        parser = HttpRequestParser(self, loop, READ_BUFSIZE, max_line_size=server.max_line_size,
                                   max_field_size=server.max_field_size, max_headers=server.max_headers,
                                   payload_exception=RequestPayloadError, auto_decompress=False)
        super().__init__(loop, parser)
        self._server = server
        self._queue: deque[tuple[Any, StreamReader]] = deque()
        self._task: asyncio.Task[None] | None = None  # serving the queued requests; None while idle
        self._request: web.BaseRequest | None = None
        self._fast: FastRequest | None = None  # taken by the fast path, not answered yet
        self._in_progress = False  # a request is being handled (its response not finished)
        self._close_after = False  # close once the request in progress is answered
        self._closed = False  # closed or closing now: nothing more is read or answered
        self._read_paused_for_queue = False
        self._tail = b""  # bytes after an Upgrade request, parsed once the upgrade is declined
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_close_at = 0.0
        self._head_started = False  # a request head is on its way: the deadline is the head timeout's
        self._counted = False  # counted in the server's connections per client address
        self._done_waiter: asyncio.Future[None] | None = None  # shutdown() waiting for the request in progress
        self.request_count = 0
        self.peername: Any = None
        self.sockname: Any = None
        self.ssl_context: Any = None
        self.remote = ""  # the client's address without the port (BaseRequest.remote)
        self.scheme = "http"

    # -- what aiohttp's BaseRequest and PortFrontend read --------------------------------------------------
    @property
    def request_in_progress(self) -> bool:
        return self._in_progress or self._fast is not None

    # -- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # also TCP_NODELAY
        tr: Any = transport
        tcp_keepalive(tr)
        self.peername = tr.get_extra_info("peername")
        self.sockname = tr.get_extra_info("sockname")
        self.ssl_context = tr.get_extra_info("sslcontext")
        self.scheme = "https" if self.ssl_context else "http"
        peer = self.peername
        self.remote = str(peer[0]) if isinstance(peer, (list, tuple)) else (peer or "")
        server = self._server
        server.connections.add(self)
        if server.max_connections_per_client:
            per_client = server.per_client
            per_client[self.remote] = count = per_client.get(self.remote, 0) + 1
            self._counted = True
            if count > server.max_connections_per_client:
                self._closed = True  # nothing of it is read
                tr.write(server.too_many_connections)
                tr.close()
                return
        self._head_started = True  # the first request's head is due within the head timeout of the accept
        self._arm_timer(server.head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        server = self._server
        server.connections.discard(self)
        if self._counted:
            self._counted = False
            per_client = server.per_client
            count = per_client.get(self.remote, 0) - 1
            if count > 0:
                per_client[self.remote] = count
            else:
                per_client.pop(self.remote, None)
        super().connection_lost(exc)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        request = self._request
        if request is not None:
            set_exception(request.content, exc or ConnectionResetError("Connection lost"))
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.abort()
        task = self._task
        if task is not None:
            task.cancel()  # the client left: stop the handler (and with it the upstream request)
        self._parser = None

    def eof_received(self) -> None:  # a half-closed client still gets its answer
        return None

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._closed or parser is None:  # None: the connection is lost
            return
        if self._upgraded:  # an Upgrade request is being answered: keep what follows for later
            self._tail += data
            return
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except HttpProcessingError as exc:
            messages, upgraded, tail = [(_ErrInfo(400, exc, exc.message), EMPTY_PAYLOAD)], False, b""
        if upgraded:
            self._upgraded = True
            self._tail = tail
        if not messages:
            if not self._head_started and self._task is None and self._fast is None and not self._in_progress:
                self._head_started = True  # the first bytes of the next request: its head is due in head_timeout
                self._arm_timer(self._server.head_timeout)
            return
        self.request_count += len(messages)
        queue = self._queue
        fast = self._server.fast
        if (fast is not None and self._task is None and self._fast is None and not queue and not upgraded
                and not self._paused  # the client is not reading: the ordinary path waits for it (drain)
                and type(messages[0][0]) is not _ErrInfo and fast(self, messages[0][0], messages[0][1])):
            if len(messages) == 1:
                return
            messages = messages[1:]  # pipelined behind it: answered once it is
        queue.extend(messages)
        if self._task is None and self._fast is None:  # (with a fast request in flight, finish_fast() starts it)
            self._task = self._loop.create_task(self._serve())
        if len(queue) >= MAX_QUEUED and not self._read_paused_for_queue:
            self._read_paused_for_queue = True
            self._pause_transport()

    def _reading_paused_for_msg_queue(self) -> bool:  # BaseProtocol.resume_reading() asks this
        return self._read_paused_for_queue

    # -- closing -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close after the request in progress (at once when there is none)."""
        self._close_after = True
        if not self._in_progress and self._task is None and self._fast is None:
            self.force_close()

    def force_close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def _pause_transport(self) -> None:
        try:
            self.transport.pause_reading()  # type: ignore[union-attr]  # None raises AttributeError, caught
        except (AttributeError, NotImplementedError, RuntimeError):
            pass

    def _arm_idle(self) -> None:
        """(Re)start the keep-alive timer: one handle per connection, moved forward lazily (a pending handle fires
        no later than the new deadline, unless the keep-alive timeout is the shorter one)."""
        self._head_started = False
        server = self._server
        if server.keepalive_timeout < server.head_timeout:
            self._arm_timer(server.keepalive_timeout)
            return
        self._idle_close_at = self._loop.time() + server.keepalive_timeout
        if self._idle_handle is None:
            self._idle_handle = self._loop.call_at(self._idle_close_at, self._idle_check)

    def _arm_timer(self, delay: float) -> None:
        """Close in ``delay`` seconds unless a request is in progress then: the same handle as the keep-alive
        timer, brought forward when it would fire later."""
        self._idle_close_at = at = self._loop.time() + delay
        handle = self._idle_handle
        if handle is not None:
            if handle.when() <= at:
                return
            handle.cancel()
        self._idle_handle = self._loop.call_at(at, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_handle = None
        if self._closed:
            return
        if self._task is not None or self._in_progress or self._fast is not None:
            return  # busy; re-armed when it goes idle
        now = self._loop.time()
        if now < self._idle_close_at:
            self._idle_handle = self._loop.call_at(self._idle_close_at, self._idle_check)
        else:
            self.force_close()

    async def wait_done(self, timeout: float | None) -> None:
        """Wait (at most ``timeout``) for the request in progress to be answered (shutdown)."""
        if not self.request_in_progress:
            return
        self._done_waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._done_waiter
        except TimeoutError:
            pass
        finally:
            self._done_waiter = None

    # -- the fast path's side -------------------------------------------------------------------------------
    def fast_started(self, request: FastRequest) -> None:
        self._fast = request

    def finish_fast(self, message: RawRequestMessage, response: SizedResponse, started: float = 0.0) -> None:
        """Send the fast path's answer (``started``: loop time the request began, for the access log); then the
        next queued request, or wait for one."""
        self._fast = None
        transport = self.transport
        if transport is None or self._closed:
            return
        keep_alive = not message.should_close
        transport.write(self._sized_bytes(response, message.version, keep_alive))
        logger = self._server.access_logger
        if logger is not None:
            request = web.BaseRequest(message, EMPTY_PAYLOAD,
                                      self, StreamWriter(self, self._loop), None, self._loop)  # type: ignore[arg-type]  # as in _handle; no task
            logger.log(request, response, self._loop.time() - started)  # type: ignore[arg-type]  # duck-typed response
        if self._done_waiter is not None and not self._done_waiter.done():
            self._done_waiter.set_result(None)
        if not keep_alive or self._close_after:
            self.force_close()
        elif self._queue:
            self._task = self._loop.create_task(self._serve())
        else:
            self._arm_idle()

    def continue_with(self, message: RawRequestMessage, payload: StreamReader, handler: Handler) -> None:
        """The fast path hands its request over: ``handler`` answers it in a task, like any other request."""
        self._fast = None
        if self.transport is None or self._closed:
            return
        self._task = self._loop.create_task(self._serve((message, payload, handler)))

    # -- serving -------------------------------------------------------------------------------------------
    async def _serve(self, first: tuple[Any, StreamReader, Handler] | None = None) -> None:
        queue = self._queue
        try:
            if first is not None:
                if not await self._handle(first[0], first[1], first[2]) or self._close_after:
                    self.force_close()
                    return
            while queue and not self._closed:
                message, payload = queue.popleft()
                if self._read_paused_for_queue and len(queue) <= MAX_QUEUED // 2:
                    self._read_paused_for_queue = False
                    if not self._reading_paused:
                        self.resume_reading(resume_parser=False)
                if not await self._handle(message, payload) or self._close_after:
                    self.force_close()
                    return
                if self._upgraded:
                    self._declined_upgrade()
            if not self._closed:
                self._arm_idle()
        finally:
            self._task = None

    def _declined_upgrade(self) -> None:
        """The proxy never upgrades: what came after the Upgrade request is parsed as HTTP again."""
        self._upgraded = False
        parser = self._parser
        if parser is None:
            return
        parser.set_upgraded(False)
        tail, self._tail = self._tail, b""
        if tail:
            self.data_received(tail)

    async def _handle(self, message: Any, payload: StreamReader, handler: Handler | None = None) -> bool:
        """Answer one request; True when the connection stays open for the next one."""
        loop = self._loop
        server = self._server
        started = loop.time() if server.access_logger is not None else 0.0
        request = web.BaseRequest(message if type(message) is not _ErrInfo else ERROR, payload,
                                  self, StreamWriter(self, loop), self._task, loop)  # type: ignore[arg-type]  # self: duck-typed RequestHandler
        self._in_progress = True
        try:
            if type(message) is _ErrInfo:
                response: Any = self._error_response(request, message.status, message.exc, message.message)
            else:
                self._request = request
                try:
                    response = await (handler or server.handler)(request)
                except HTTPException as exc:
                    response = exc
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    response = self._error_response(request, 504)
                except Exception as exc:
                    response = self._error_response(request, 500, exc)
                finally:
                    self._request = None
            transport = self.transport
            if transport is None:
                return False
            if type(response) is SizedResponse:
                keep_alive = not message.should_close
                transport.write(self._sized_bytes(response, message.version, keep_alive))
                if self._paused:  # a client that does not read gets no more answers until it does
                    try:
                        await self._drain_helper()
                    except ConnectionError:
                        return False
            else:
                try:
                    await response.prepare(request)
                    await response.write_eof()
                except ConnectionError:
                    return False
                keep_alive = bool(response.keep_alive)
            if server.access_logger is not None:
                server.access_logger.log(request, response, loop.time() - started)
            if keep_alive and not payload.is_eof():
                keep_alive = await self._linger(payload)
            return keep_alive
        finally:
            request._task = None  # type: ignore[assignment]  # a cancelled task's traceback holds the request
            self._in_progress = False
            if self._done_waiter is not None and not self._done_waiter.done():
                self._done_waiter.set_result(None)

    @staticmethod
    def _sized_bytes(response: SizedResponse, version: Any, keep_alive: bool) -> bytes:
        """What ``web.Response(status, reason, headers, body)`` puts on the wire, built directly."""
        headers = response.headers
        body = response.body
        parts = [b"HTTP/%d.%d %d %s\r\n" % (version[0], version[1], response.status,
                                             response.reason.encode("utf-8", "surrogateescape")),
                 response.lines]
        if body and "Content-Type" not in headers:
            parts.append(_OCTET_STREAM)
        if "Date" not in headers:
            parts.append(b"Date: %s\r\n" % rfc822_formatted_time().encode())
        if "Server" not in headers:
            parts.append(_SERVER_LINE)
        if keep_alive:
            if version == HttpVersion10:
                parts.append(b"Connection: keep-alive\r\n")
        elif version == HttpVersion11:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        return b"".join(parts)

    async def _linger(self, payload: StreamReader) -> bool:
        """Drain a request body the handler did not read (as aiohttp does), at most ``lingering_time``;
        True when it ended in time and the connection can be reused."""
        try:
            async with asyncio.timeout(self._server.lingering_time):
                while not payload.is_eof():
                    await payload.readany()
        except Exception:  # a timeout or a broken body: the connection is not reused
            return False
        return True

    def _error_response(self, request: web.BaseRequest, status: int, exc: BaseException | None = None,
                        message: str | None = None) -> web.Response:
        """aiohttp's ``RequestHandler.handle_error``: a plain-text error, the connection closed after it."""
        if self.request_count == 1 and isinstance(exc, BadHttpMethod):
            server_log.debug("Error handling request from %s", request.remote, exc_info=exc)
        else:
            server_log.exception("Error handling request from %s", request.remote, exc_info=exc)
        content_type = "text/plain"
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            title = f"{HTTPStatus.INTERNAL_SERVER_ERROR.value} {HTTPStatus.INTERNAL_SERVER_ERROR.phrase}"
            description = HTTPStatus.INTERNAL_SERVER_ERROR.description
            if "text/html" in request.headers.get("Accept", ""):
                message = (f"<html><head><title>{title}</title></head><body>\n<h1>{title}</h1>"
                           f"\n{description}\n</body></html>\n")
                content_type = "text/html"
            else:
                message = title + "\n\n" + description
        response = web.Response(status=status, text=message, content_type=content_type)
        response.force_close()
        return response


def _too_many_connections(retry_after: int) -> bytes:
    body = b"Too many connections from this address.\n"
    return (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: %d\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (retry_after, len(body), body))


class Listener:
    """One listening socket of an :class:`HttpServer`."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @property
    def port(self) -> int | None:
        sockets = self._server.sockets
        return sockets[0].getsockname()[1] if sockets else None

    def close(self) -> None:
        """Stop accepting; connections already accepted are the server's business."""
        self._server.close()


class HttpServer:
    """Listening sockets and the connections they accepted, all answered by one ``handler``."""

    def __init__(self, handler: Handler, *, fast: FastHandler | None = None, max_line_size: int = 8190,
                 max_field_size: int = 8190, max_headers: int = 128, access_log_enabled: bool = False,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT, lingering_time: float = LINGERING_TIME,
                 head_timeout: float = HEAD_TIMEOUT, max_connections_per_client: int = 0, retry_after: int = 2,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context  # HTTPS on every listener when set (the connection sees decrypted bytes)
        self.fast = fast
        self.max_line_size, self.max_field_size, self.max_headers = max_line_size, max_field_size, max_headers
        self.keepalive_timeout = keepalive_timeout
        self.head_timeout = head_timeout
        self.max_connections_per_client = max_connections_per_client  # 0: no cap
        self.per_client: dict[str, int] = {}  # client address → connections open (only with a cap)
        self.too_many_connections = _too_many_connections(retry_after)
        self.lingering_time = lingering_time
        self.access_logger = AccessLogger(access_log, AccessLogger.LOG_FORMAT) if access_log_enabled else None
        self.connections: set[HttpConnection] = set()
        self._listeners: list[Listener] = []

    async def listen(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 128) -> Listener:
        loop = asyncio.get_running_loop()
        # The TLS handshake comes before connection_made (and so before the head timer): it gets the head timeout.
        tls = self.ssl_context
        server = await loop.create_server(lambda: HttpConnection(self, loop), host, port, family=socket.AF_UNSPEC,
                                          reuse_address=True, reuse_port=reuse_port or None, backlog=backlog,
                                          ssl=tls, ssl_handshake_timeout=self.head_timeout if tls else None)
        listener = Listener(server)
        self._listeners.append(listener)
        return listener

    async def shutdown(self, timeout: float | None) -> None:
        """Stop listening; close idle connections now and busy ones once answered (within ``timeout``, after
        which their handlers are cancelled)."""
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        connections = list(self.connections)
        for conn in connections:
            conn.close()
        busy = [conn for conn in connections if conn.request_in_progress]
        if busy:
            await asyncio.gather(*(conn.wait_done(timeout) for conn in busy))
        for conn in connections:
            task = conn._task
            conn.force_close()
            if task is not None:
                task.cancel()
        await asyncio.sleep(0)  # let the cancelled handlers run their cleanup
        self.connections.clear()
