"""Pure decisions of the console's browser security (docs/console.md, "Security"): response headers, the CSRF
check, cookie attributes and the per-client login throttle. No I/O: the clock is passed in."""

from __future__ import annotations

import collections
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

SESSION_COOKIE = "moorage_console"
CSRF_HEADER = "X-Moorage-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Scripts and styles only from this origin (no inline script or style, no eval: ES module files only); no
# framing; no plugins; forms post only here; fetch/EventSource only to this origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def csrf_problem(method: str, headers: Mapping[str, str], expected_token: str | None, host: str,
                 require_token: bool = True) -> str | None:
    """Why a request must be refused as cross-site, or None. Safe methods pass. A state-changing request needs
    (1) no cross-site ``Sec-Fetch-Site`` (browsers send it on every request), (2) an ``Origin``, when sent, equal to
    this host's, and (3) unless ``require_token`` is False (login: there is no session yet) the session's CSRF
    token in ``X-Moorage-CSRF``, compared in constant time."""
    if method.upper() in SAFE_METHODS:
        return None
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site[:32]})"
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != host.lower():
            return "cross-origin request refused (Origin does not match this console)"
    if not require_token:
        return None
    given = headers.get(CSRF_HEADER, "")
    if not given or not expected_token or not hmac.compare_digest(given.encode(), expected_token.encode()):
        return f"missing or wrong {CSRF_HEADER} header (CSRF protection; reload the console)"
    return None


def cookie_attributes(secure: bool, max_age: int | None) -> dict[str, object]:
    """``set_cookie`` keyword arguments: HttpOnly (no script reads it), SameSite=Strict (no cross-site request
    carries it), Secure when served over TLS, scoped to the whole console."""
    attrs: dict[str, object] = {"httponly": True, "samesite": "Strict", "secure": secure, "path": "/"}
    if max_age is not None:
        attrs["max_age"] = max_age
    return attrs


class LoginThrottle:
    """Failed logins per client in a sliding window of ``window`` seconds; at most ``limit``. Memory is bounded:
    at most ``max_clients`` clients are tracked (the oldest forgotten first)."""

    def __init__(self, limit: int, window: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, client: str, now: float) -> collections.deque[float]:
        times = self._failures.get(client)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, client: str, now: float) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        times = self._recent(client, now)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - now)

    def failed(self, client: str, now: float) -> None:
        times = self._recent(client, now)
        times.append(now)
        while len(times) > self.limit:
            times.popleft()
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
