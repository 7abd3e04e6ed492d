"""Passive outlier ejection (Envoy-style), as a small state machine with the clock passed in.

A route is *ejected* after ``consecutive_failures`` failures in a row (connection refused/reset/timeout, a 5xx
response, a broken stream); any success in between resets the count. An ejection lasts ``base_ejection``
seconds, doubling with each further ejection up to ``max_ejection``; the route is re-admitted automatically when
it ends (no probe needed: the next real request is the probe, and if it fails the route goes straight back out
for twice as long). A route that stayed admitted for ``max_ejection`` seconds after its last ejection starts
over at ``base_ejection``.

Whether ejected routes are actually skipped is the balancer's decision (panic threshold), not this class's.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 3
    base_ejection: float = 5.0
    max_ejection: float = 60.0


@dataclass(slots=True)
class _RouteState:
    failures: int = 0  # consecutive, since the last success or ejection
    ejections: int = 0  # how many times in a row (drives the back-off)
    ejected_until: float | None = None  # end of the current or last ejection


class OutlierDetector(Generic[K]):
    def __init__(self, policy: OutlierPolicy | None = None) -> None:
        self.policy = policy or OutlierPolicy()
        self._states: dict[K, _RouteState] = {}

    def success(self, key: K, now: float) -> None:
        state = self._states.get(key)
        if state is not None:
            state.failures = 0

    def failure(self, key: K, now: float) -> float | None:
        """Record a failure; return the ejection length if this failure ejected the route, else None."""
        state = self._states.setdefault(key, _RouteState())
        if state.ejected_until is not None and now < state.ejected_until:
            return None  # already out (it got a request in panic mode); do not stack ejections
        state.failures += 1
        if state.failures < self.policy.consecutive_failures:
            return None
        if state.ejected_until is not None and now - state.ejected_until >= self.policy.max_ejection:
            state.ejections = 0  # behaved for a long while since the last ejection: back-off starts over
        duration = min(self.policy.base_ejection * (2.0 ** state.ejections), self.policy.max_ejection)
        state.ejections += 1
        state.failures = 0
        state.ejected_until = now + duration
        return duration

    def is_ejected(self, key: K, now: float) -> bool:
        state = self._states.get(key)
        return state is not None and state.ejected_until is not None and now < state.ejected_until

    def ejected(self, now: float) -> set[K]:
        return {k for k, s in self._states.items() if s.ejected_until is not None and now < s.ejected_until}

    def consecutive_failures(self, key: K) -> int:
        state = self._states.get(key)
        return 0 if state is None else state.failures

    def retain(self, keys: Iterable[K]) -> None:
        """Forget routes that are gone (a route that comes back under the same key starts clean)."""
        keep = set(keys)
        for key in [k for k in self._states if k not in keep]:
            del self._states[key]
