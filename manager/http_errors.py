"""RFC 7807 answers for the errors aiohttp's server answers itself, before any middleware runs.

A request the HTTP parser refuses (a URL over the request-line limit, a header line over the field limit, too many
headers, a method or target that is not HTTP) never reaches the application: aiohttp's
``web_protocol.RequestHandler.handle_error`` answers it with a ``text/plain`` body quoting the offending bytes,
and a handler error that escapes every middleware with ``text/plain`` or HTML (a traceback in debug mode). On the
manager these come out as ``application/problem+json`` like every other error (docs/security.md, "Service
API"), never with a traceback:

* a URL (request target) over :data:`REQUEST_LINE_LIMIT` bytes → 414;
* a header line over :data:`HEADER_LINE_LIMIT` bytes, or more than ``max_headers`` (128) header lines → 431;
* anything else the parser refuses → 400 (plain HTTP on the HTTPS port of a proxy, HTTPS on a plain port, ...);
* 500 and 504 from aiohttp itself → the same problem documents as ``common.errors.problem_middleware``'s.

The connection is closed after the answer, as aiohttp does. This overrides one private method of aiohttp
(``RequestHandler.handle_error``, through :class:`ProblemAppRunner`, which aiohttp's ``AppRunner._make_server``
builds): ``tests/security/test_manager_http_errors.py`` checks its signature and callers and fails when an aiohttp
upgrade changes them (pyproject pins ``aiohttp>=3.14,<3.15``). Use :class:`ProblemAppRunner` instead of
``web.AppRunner`` for the manager's listener.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from common.errors import ProblemError

log = logging.getLogger(__name__)

# The parser reports an over-long URL and an over-long header line with the same exception; only the limit it
# carries tells them apart, so the two limits differ (aiohttp's default for both is 8190 bytes).
REQUEST_LINE_LIMIT = 8192  # bytes of request target (URL); longer → 414
HEADER_LINE_LIMIT = 8190  # bytes of one header line (name and value); longer → 431


def _problem(status: int, slug: str, title: str, detail: str) -> ProblemError:
    problem = ProblemError(detail)
    problem.status, problem.slug, problem.title = status, slug, title
    return problem


def parser_problem(status: int, exc: BaseException | None, *, line_limit: int, field_limit: int,
                   max_headers: int) -> ProblemError:
    """The problem document for what ``handle_error`` was given; the client's bytes are never echoed back
    (aiohttp's messages quote them)."""
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return ProblemError("Internal server error; see the server log.")
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return _problem(504, "gateway-timeout", "Gateway timeout", "The request took too long to answer.")
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == line_limit and line_limit != field_limit:
            return _problem(414, "uri-too-long", "URI too long",
                            f"The request target (URL) is longer than {line_limit} bytes.")
        return _problem(431, "request-header-fields-too-large", "Request header fields too large",
                        f"A request header line is longer than {field_limit} bytes.")
    if isinstance(exc, HttpProcessingError) and "Too many headers" in (exc.message or ""):
        return _problem(431, "request-header-fields-too-large", "Request header fields too large",
                        f"The request has more than {max_headers} header lines.")
    if isinstance(exc, BadHttpMethod):
        https = "HTTPS" in (exc.message or "")
        detail = ("TLS (HTTPS) traffic reached a plain-HTTP port; use http://." if https
                  else "The request line does not start with a valid HTTP method.")
        return _problem(400, "generic-bad-request", "Bad request", detail)
    if isinstance(exc, InvalidURLError):
        return _problem(400, "generic-bad-request", "Bad request", "The request target is not a valid URL.")
    if isinstance(exc, HttpProcessingError):
        # llhttp's messages are "<reason>:\n\n  <the bytes>\n  <pointer>": keep the reason only
        reason = (exc.message or "").split(":\n", 1)[0].strip()[:120]
        detail = "The request is not valid HTTP/1.1" + (f" ({reason})." if reason else ".")
        return _problem(400, "generic-bad-request", "Bad request", detail)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _problem(status, "http-error", phrase, phrase + ".")


class ProblemRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with :meth:`handle_error` answering RFC 7807 (module docstring)."""

    __slots__ = ()  # instances are aiohttp's own RequestHandlers with this class swapped in

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        problem = parser_problem(status, exc, line_limit=self.max_line_size, field_limit=self.max_field_size,
                                 max_headers=self.max_headers)
        if problem.status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:  # a client's malformed request: one line, no traceback (the internet sends plenty of these)
            log.debug("refused a malformed request from %s: %d %s", request.remote, problem.status,
                      type(exc).__name__ if exc is not None else "")
        if request.writer.output_size > 0:  # as aiohttp: a response was already started, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = problem.to_response()
        response.force_close()
        return response


class ProblemServer(web.Server):
    """``web.Server`` whose connections are :class:`ProblemRequestHandler`."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = ProblemRequestHandler  # same layout (no slots added); keeps aiohttp's constructor
        return handler


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` for the manager: parser errors as problem documents, limits as above."""

    __slots__ = ()

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", REQUEST_LINE_LIMIT)
        kwargs.setdefault("max_field_size", HEADER_LINE_LIMIT)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer
        return server


__all__ = ["HEADER_LINE_LIMIT", "REQUEST_LINE_LIMIT", "ProblemAppRunner", "ProblemRequestHandler", "ProblemServer",
           "parser_problem"]
