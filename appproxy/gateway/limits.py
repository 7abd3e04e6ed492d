"""Per-key rate limits as pure decisions (docs/gateway.md): requests and tokens per minute over a sliding
60-second window, counted separately.

The window holds one entry per admitted request: (time, request id, tokens). A request is admitted when the
entries of the last 60 s number fewer than ``rpm`` and their tokens plus the request's reservation (prompt
estimate + max_tokens) stay within ``tpm``; it then adds its entry. When the answer ends, the entry's tokens are
corrected to the real usage. This is exact (a sliding log, not a fixed window that lets 2 × rpm through
around a minute boundary), and since every admission reserves before it runs, concurrent requests cannot
overrun the TPM limit by more than what the corrections add. The same rules run in Redis as one Lua script
(:mod:`appproxy.gateway.limiter`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections import deque

WINDOW = 60.0  # seconds: "per minute"


class Refusal(enum.StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None
    tpm: int | None

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    refused: Refusal | None
    requests: int  # in the window, this request included when admitted
    tokens: int  # likewise
    reset_requests: float  # seconds until the oldest entry leaves the window (0: empty window)
    reset_tokens: float  # seconds until enough tokens leave the window for this request (refused), else as above
    retry_after: float  # refused: seconds until this request could be admitted


def decide(entries: list[tuple[float, int]], now: float, limits: Limits, reserve: int) -> Decision:
    """Admission of one request reserving ``reserve`` tokens, given the window's live entries (time, tokens),
    oldest first. Pure: the caller removes expired entries and adds the new one when admitted."""
    count = len(entries)
    total = sum(t for _, t in entries)
    oldest = entries[0][0] + WINDOW - now if entries else 0.0
    if limits.rpm is not None and count + 1 > limits.rpm:
        wait = entries[count - limits.rpm][0] + WINDOW - now  # when enough entries have left for one more
        return Decision(False, Refusal.REQUESTS, count, total, max(oldest, 0.0), max(oldest, 0.0), max(wait, 0.0))
    if limits.tpm is not None and total + reserve > limits.tpm:
        if reserve > limits.tpm:
            wait = WINDOW  # never fits: the client must ask for fewer tokens (the message says so)
        else:
            freed, wait = 0, 0.0
            for at, tokens in entries:
                freed += tokens
                if total - freed + reserve <= limits.tpm:
                    wait = at + WINDOW - now
                    break
        return Decision(False, Refusal.TOKENS, count, total, max(oldest, 0.0), max(wait, 0.0), max(wait, 0.0))
    reset = oldest if entries else WINDOW
    return Decision(True, None, count + 1, total + reserve, max(reset, 0.0), max(reset, 0.0), 0.0)


def format_reset(seconds: float) -> str:
    """OpenAI's style for the x-ratelimit-reset-* headers: ``"1s"``, ``"6m0s"``, ``"250ms"``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def headers(limits: Limits, decision: Decision) -> dict[str, str]:
    """The x-ratelimit-* headers of an answer (those of the limits the key has)."""
    out: dict[str, str] = {}
    if limits.rpm is not None:
        out["x-ratelimit-limit-requests"] = str(limits.rpm)
        out["x-ratelimit-remaining-requests"] = str(max(limits.rpm - decision.requests, 0))
        out["x-ratelimit-reset-requests"] = format_reset(decision.reset_requests)
    if limits.tpm is not None:
        out["x-ratelimit-limit-tokens"] = str(limits.tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(limits.tpm - decision.tokens, 0))
        out["x-ratelimit-reset-tokens"] = format_reset(decision.reset_tokens)
    return out


class Window:
    """One key's window in memory (``moorage up``, or a proxy without Redis): entries oldest first."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: deque[list[float | int | str]] = deque()  # [time, tokens, request id]

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries and float(entries[0][0]) + WINDOW <= now:
            entries.popleft()

    def admit(self, now: float, limits: Limits, reserve: int, request_id: str) -> Decision:
        self.expire(now)
        decision = decide([(float(e[0]), int(e[1])) for e in self.entries], now, limits, reserve)
        if decision.admitted:
            self.entries.append([now, reserve, request_id])
        return decision

    def correct(self, request_id: str, tokens: int) -> None:
        for entry in self.entries:
            if entry[2] == request_id:
                entry[1] = tokens
                return
