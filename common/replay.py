"""A bounded memory of signatures already used, so that a captured signed request cannot be sent again.

Each entry lives until the signed request would be refused anyway (its timestamp plus the allowed clock skew),
so the cache holds at most the requests of one skew window. Keys are 16-byte digests (about 150 bytes per
entry with the bookkeeping). When ``max_entries`` is reached the entry closest to expiry is dropped first: a
flood of valid requests can reopen the oldest signatures for the rest of their window, but never grows memory
and never refuses fresh requests.
"""

from __future__ import annotations

import hashlib
import heapq
import time


class ReplayCache:
    """``claim(parts, expires_at)`` is True the first time and False again until ``expires_at`` passes.
    Atomic on one event loop (no await inside)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    @staticmethod
    def _key(parts: tuple[str, ...]) -> bytes:
        return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).digest()

    def _pop_oldest(self) -> None:
        _, key = heapq.heappop(self._heap)
        self._expiry.pop(key, None)

    def claim(self, parts: tuple[str, ...], expires_at: float, now: float | None = None) -> bool:
        current = time.time() if now is None else now
        while self._heap and self._heap[0][0] <= current:
            self._pop_oldest()
        key = self._key(parts)
        if key in self._expiry:
            return False
        while len(self._expiry) >= self.max_entries:
            self._pop_oldest()
        self._expiry[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        return True
