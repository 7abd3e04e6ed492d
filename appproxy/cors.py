"""CORS at the proxy: pre-flights answered here, never forwarded; allow headers on answers to allowed origins.

The policy is per endpoint: the route table's ``cors_allowed_origins`` (:class:`common.protocol.RouteTable`), a
list of origins such as ``"https://chat.example.com"`` or ``"http://localhost:3000"`` (scheme, host, optional
port; compared case-insensitively, a trailing ``/`` forgiven), or ``"*"`` for any origin. Entries that are not
origins (``"null"``, paths, other schemes) are ignored and logged. Empty (the default): no origin is allowed.

* A pre-flight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered by the proxy
  itself, without a token (browsers never send credentials on one) and without touching a replica or reading its
  body: 204 with ``Access-Control-Allow-Origin`` (the origin), ``-Allow-Methods`` (the requested method),
  ``-Allow-Headers`` (the requested headers) and ``-Max-Age`` when the origin is allowed; otherwise 403 (a
  problem document, no allow headers). ``CONNECT``/``TRACE`` are never granted.
* Every other request is authenticated as usual. For an endpoint with a policy, each answer (the replica's or
  the proxy's own, e.g. a 401 the page should be able to read) carries ``Vary: Origin`` and, when the request's
  ``Origin`` is allowed, ``Access-Control-Allow-Origin: <origin>``. ``Access-Control-Allow-Credentials`` is never
  sent: endpoint tokens travel in ``Authorization``, never in cookies.
* The replica's own ``Access-Control-*`` response headers are dropped (:mod:`appproxy.forward`): the endpoint's
  policy is the only one, whatever the inference server allows by default.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

from aiohttp import web

from appproxy.errors import PreflightRefused

log = logging.getLogger(__name__)

ANY: Final = "*"
_ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (a method, a header name)
_NEVER_GRANTED: Final = frozenset({"CONNECT", "TRACE"})
PREFLIGHT_VARY: Final = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


class CorsGrant(NamedTuple):
    """The CORS headers of one answer: as raw lines (the relayed sized answer) and as pairs (any other)."""

    lines: bytes
    pairs: tuple[tuple[str, str], ...]


VARY_ONLY: Final = CorsGrant(b"Vary: Origin\r\n", (("Vary", "Origin"),))


def is_cors_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers


def normalise_origin(entry: str) -> str | None:
    """``"HTTPS://Chat.Example.com/"`` → ``"https://chat.example.com"``; None when it is not an origin."""
    value = entry.strip().lower()
    if value == ANY:
        return ANY
    value = value[:-1] if value.endswith("/") else value
    return value if _ORIGIN.match(value) else None


class CorsPolicy:
    """The allowed origins of one endpoint (built once per route table, see :class:`appproxy.forward._Plan`)."""

    __slots__ = ("_any", "_grants", "origins")

    def __init__(self, origins: frozenset[str]) -> None:
        self.origins = origins
        self._any = ANY in origins
        self._grants = {o: _grant(o) for o in origins if o != ANY}  # the usual case: the origin as configured

    @classmethod
    def compile(cls, entries: Iterable[str], endpoint: str = "") -> CorsPolicy | None:
        """None when nothing is allowed (no entry, or none valid)."""
        origins = set()
        for entry in entries:
            origin = normalise_origin(entry)
            if origin is None:
                log.warning("endpoint %s: cors_allowed_origins entry %r is not an origin; ignored", endpoint, entry)
            else:
                origins.add(origin)
        return cls(frozenset(origins)) if origins else None

    def allowed(self, origin: str) -> str | None:
        """The origin to echo (as browsers serialise it: lower case) when ``origin`` is allowed, else None."""
        if origin in self._grants:
            return origin
        low = origin.lower()
        if low in self._grants or (self._any and _ORIGIN.match(low) is not None):  # "*": still an origin
            return low
        return None

    def grant(self, origin: str | None) -> CorsGrant:
        """The headers for an answer to a request with this ``Origin`` (None: none sent)."""
        if origin is None:
            return VARY_ONLY
        grant = self._grants.get(origin)
        if grant is not None:  # the usual case: one dict lookup
            return grant
        allowed = self.allowed(origin)
        return VARY_ONLY if allowed is None else self._grants.get(allowed) or _grant(allowed)

    def preflight(self, headers: Mapping[str, str], max_age: int) -> web.Response:
        """The 204 for an allowed pre-flight; :class:`PreflightRefused` otherwise."""
        origin = self.allowed(headers["Origin"])
        method = headers["Access-Control-Request-Method"].strip()
        if origin is None:
            raise PreflightRefused("This origin is not allowed to call this endpoint from a browser.")
        if not _TOKEN.match(method) or method.upper() in _NEVER_GRANTED:
            raise PreflightRefused("This request method is not allowed.")
        out = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": method,
               "Access-Control-Max-Age": str(max_age), "Vary": PREFLIGHT_VARY}
        requested = [h.strip() for h in headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()]
        if requested:
            if not all(_TOKEN.match(h) for h in requested):
                raise PreflightRefused("Access-Control-Request-Headers is not a list of header names.")
            out["Access-Control-Allow-Headers"] = ", ".join(requested)
        return web.Response(status=204, headers=out)


def answer_preflight(policy: CorsPolicy | None, headers: Mapping[str, str], max_age: int) -> web.Response:
    """The answer to a pre-flight for an endpoint with ``policy`` (None: no origin allowed → 403)."""
    if policy is None:
        raise PreflightRefused("This endpoint allows no cross-origin browser requests.")
    return policy.preflight(headers, max_age)


def _grant(origin: str) -> CorsGrant:
    return CorsGrant(b"Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n" % origin.encode("ascii"),
                     (("Access-Control-Allow-Origin", origin), ("Vary", "Origin")))
