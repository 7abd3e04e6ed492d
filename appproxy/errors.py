"""RFC 7807 errors the proxy itself answers with (everything else is the replica's own response)."""

from __future__ import annotations

from aiohttp import web

from common.errors import ObjectNotFound, PayloadTooLarge, ProblemError, ServiceUnavailable

__all__ = [
    "BadGateway", "BodyBuffersFull", "ColdStartTimeout", "EndpointNotFound", "EndpointOverloaded", "GatewayTimeout",
    "HoldQueueFull", "MethodNotAllowed", "NoRouteAvailable", "PayloadTooLarge", "PreflightRefused",
    "RequestBodyTimeout", "RequestHeadersTooLarge",
]


class _RetryLater(ServiceUnavailable):
    """503 with ``Retry-After`` (seconds)."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class NoRouteAvailable(_RetryLater):
    slug, title = "no-route-available", "No replica of this endpoint is available."


class EndpointOverloaded(_RetryLater):
    slug, title = "endpoint-overloaded", "Too many concurrent requests to this endpoint."


class ColdStartTimeout(_RetryLater):
    """A held request (scale from zero, :mod:`appproxy.hold`) saw no route within ``hold_timeout``."""

    slug, title = "cold-start-timeout", "No replica of this endpoint became ready in time."


class HoldQueueFull(_RetryLater):
    """``hold_max_requests`` requests already wait for this endpoint to get a route."""

    slug, title = "hold-queue-full", "Too many requests are already waiting for this endpoint to start."


class BodyBuffersFull(_RetryLater):
    """The process-wide budget of buffered request bodies (``max_buffered_body_bytes``) is spent."""

    slug, title = "body-buffers-full", "The proxy holds too many request bodies right now."

    def to_response(self) -> web.Response:
        response = super().to_response()
        response.force_close()  # the body was not read: not drained either
        return response


class RequestBodyTimeout(ProblemError):
    """The client stopped sending its request body for ``request_body_timeout`` seconds."""

    status, slug, title = 408, "request-body-timeout", "The request body did not arrive in time."

    def to_response(self) -> web.Response:
        response = super().to_response()
        response.force_close()
        return response


class EndpointNotFound(ObjectNotFound):
    slug, title = "endpoint-not-found", "No endpoint is served here."

    def to_response(self) -> web.Response:
        response = super().to_response()
        response.force_close()  # a connection to a port whose endpoint is gone is not worth keeping
        return response


class BadGateway(ProblemError):
    status, slug, title = 502, "bad-gateway", "The replica could not be reached or answered badly."


class GatewayTimeout(ProblemError):
    status, slug, title = 504, "gateway-timeout", "The replica did not answer in time."


class RequestHeadersTooLarge(ProblemError):
    status, slug, title = 431, "request-header-fields-too-large", "The request headers are too large."


class MethodNotAllowed(ProblemError):
    status, slug, title = 405, "method-not-allowed", "This method is not proxied."


class PreflightRefused(ProblemError):
    """A CORS pre-flight from an origin the endpoint does not allow (:mod:`appproxy.cors`)."""

    status, slug, title = 403, "cors-preflight-refused", "This cross-origin request is not allowed."

    def to_response(self) -> web.Response:
        response = super().to_response()
        response.force_close()  # its body (a pre-flight has none) is not drained; browsers reconnect anyway
        return response
