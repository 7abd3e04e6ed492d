"""Request bodies: small ones buffered (so a request can be retried), large ones streamed, all within a budget.

* A body of at most ``retry_buffer_size`` bytes is read whole before forwarding, as before: the request can be
  sent again to another replica while no byte of the answer has reached the client (:mod:`appproxy.forward`).
* A larger one (its ``Content-Length`` says so, or a chunked body outgrows the buffer) is streamed to the replica
  as it arrives (:class:`BodyStream`), with back-pressure both ways: the proxy reads from the client only as fast as
  the replica takes it. A connect failure is still retried on another route (nothing has been read yet); once the
  first byte went to a replica, a failure is a 502.
* :class:`BodyBudget`: the bytes of buffered bodies in this proxy, plus a fixed :data:`STREAM_WINDOW` per streamed
  one, are capped process-wide at ``max_buffered_body_bytes``; beyond it a request is refused with 503 +
  ``Retry-After`` before its body is read. A single body over ``max_body_size`` is 413 (announced: before reading;
  chunked: as soon as it is over, the replica's connection closed).
* A client that stops sending its body for ``request_body_timeout`` seconds gets 408 and the connection closes.
* ``Expect: 100-continue`` is answered only when the body is about to be read (after auth, admission and, for a
  streamed body, the connection to the replica).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web

from appproxy.config import ProxySection
from appproxy.errors import BodyBuffersFull, PayloadTooLarge, RequestBodyTimeout
from appproxy.upstream import READ_BUFSIZE

# What one streamed body may hold in this process at a time: the request's StreamReader pauses reading at twice
# its limit (READ_BUFSIZE) and writes to the replica wait while its transport holds more than its high-water mark
# (64 KiB), one chunk (≤ 2 × READ_BUFSIZE) at a time. 256 KiB covers the three with room to spare.
STREAM_WINDOW: Final = 4 * READ_BUFSIZE


class BodyBudget:
    """Bytes of request bodies held by this proxy process (see the module docstring); ``used`` never exceeds
    ``limit``."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Account ``size`` more bytes; False (nothing accounted) when they would not fit."""
        used = self.used + size
        if used > self.limit:
            return False
        self.used = used
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


class BodyStream:
    """A request body sent to the replica as it arrives (``length`` None: chunked, framed as such upstream);
    ``prefix`` is what was already read (a chunked body that outgrew the buffer). ``started``: more than the
    prefix has been read from the client, so the request can no longer be sent again."""

    __slots__ = ("_cfg", "_request", "length", "prefix", "started")

    def __init__(self, request: web.BaseRequest, cfg: ProxySection, length: int | None, prefix: bytes = b"") -> None:
        self._request, self._cfg, self.length, self.prefix = request, cfg, length, prefix
        self.started = False

    async def write_to(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send the body through ``send`` (:meth:`appproxy.upstream.UpstreamPool.request`), which waits while the
        replica does not take it; so the client's body is read only as fast as the replica reads."""
        request, limit, chunked = self._request, self._cfg.max_body_size, self.length is None
        if not self.prefix:
            await continue_100(request)
        size = len(self.prefix)
        chunk = self.prefix
        while True:
            if chunk:
                await send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            self.started = True  # from here on the client's bytes are gone: no second attempt
            chunk = await read_chunk(request, self._cfg.request_body_timeout)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        if chunked:
            await send(b"0\r\n\r\n")


async def take_body(request: web.BaseRequest, cfg: ProxySection, budget: BodyBudget) -> tuple[bytes | BodyStream, int]:
    """The body to forward and the bytes accounted for it in ``budget`` (the caller gives them back when the
    request is over; this gives them back itself when it raises)."""
    limit = cfg.max_body_size
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body ({length} bytes) exceeds the limit of {limit} bytes.")
    if not request.body_exists:
        return b"", 0
    if length is not None and length > cfg.retry_buffer_size:
        return BodyStream(request, cfg, length), _take(budget, STREAM_WINDOW, cfg)
    taken = 0 if length is None else _take(budget, length, cfg)  # chunked: accounted as it arrives
    try:
        await continue_100(request)
        chunks: list[bytes] = []
        size = 0
        while chunk := await read_chunk(request, cfg.request_body_timeout):
            size += len(chunk)
            if size > limit:  # chunked (the parser stops a sized body at its Content-Length)
                raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            if length is None:
                taken += _take(budget, len(chunk), cfg)
                if size > cfg.retry_buffer_size:  # outgrew the buffer: the rest is streamed
                    taken += _take(budget, STREAM_WINDOW, cfg)
                    return BodyStream(request, cfg, None, b"".join(chunks) + chunk), taken
            chunks.append(chunk)
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), taken
    except BaseException:
        budget.give_back(taken)
        raise


def _take(budget: BodyBudget, size: int, cfg: ProxySection) -> int:
    if not budget.take(size):
        raise BodyBuffersFull("The proxy is holding as many request bodies as it may; try again shortly.",
                              retry_after=cfg.retry_after)
    return size


async def read_chunk(request: web.BaseRequest, timeout: float) -> bytes:
    """The next piece of the body (b"" at its end); :class:`RequestBodyTimeout` after ``timeout`` s of silence."""
    try:
        async with asyncio.timeout(timeout):
            return await request.content.readany()
    except TimeoutError:
        raise RequestBodyTimeout(f"No request body data for {timeout:g}s.") from None


async def continue_100(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` (deferred until now: the request is authorised and admitted)."""
    if request.version >= aiohttp.HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
