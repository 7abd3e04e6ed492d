"""Active health checks of replicas (docs/architecture.md, Active health checks).

:class:`HealthTracker` is the pure state machine (no I/O, time passed in), implementing the timing contract:

* probing starts at once, one probe every ``interval`` (fixed rate from the start);
* a replica that never passes is ``unhealthy`` (and ``gave_up``) once
  ``initial_delay + interval × (max_retries + 1)`` has elapsed since the start, whatever the probes said;
* a replica that has passed becomes ``unhealthy`` after ``max_retries + 1`` consecutive failures
  (≈ ``interval × (max_retries + 1)`` after the last pass) and ``healthy`` again on the next pass.

Definitions without a ``health_check`` get a TCP check instead: the replica is healthy as soon as its port
accepts a connection (what Backend.AI's "healthy right after start" amounts to, minus the lie when the
server is not listening yet), with the agent's ``startup_timeout``/``tcp_probe_*`` settings as the policy.

:func:`run_prober` is the thin async loop that feeds a tracker from :func:`http_probe` / :func:`tcp_probe`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import aiohttp

from common.definitions import ModelHealthCheck
from common.status import RouteHealth

TCP_CONNECT_TIMEOUT = 2.0  # seconds; a local listener answers a SYN in microseconds


@dataclass(frozen=True)
class HealthPolicy:
    interval: float
    max_retries: int
    initial_delay: float
    max_wait_time: float
    kind: Literal["http", "tcp"] = "http"
    path: str = "/health"
    expected_status_code: int = 200

    @property
    def failure_threshold(self) -> int:
        return self.max_retries + 1

    @property
    def start_deadline(self) -> float:
        """Seconds after the start by which a first pass is required."""
        return self.initial_delay + self.interval * (self.max_retries + 1)

    @classmethod
    def from_check(cls, check: ModelHealthCheck) -> HealthPolicy:
        return cls(interval=check.interval, max_retries=check.max_retries, initial_delay=check.initial_delay,
                   max_wait_time=check.max_wait_time, kind="http", path=check.path,
                   expected_status_code=check.expected_status_code)

    @classmethod
    def tcp(cls, interval: float, max_retries: int, startup_timeout: float) -> HealthPolicy:
        """Port-open check; ``startup_timeout`` is the whole start deadline (initial_delay is derived)."""
        initial = max(0.0, startup_timeout - interval * (max_retries + 1))
        return cls(interval=interval, max_retries=max_retries, initial_delay=initial,
                   max_wait_time=min(TCP_CONNECT_TIMEOUT, interval), kind="tcp")


class HealthTracker:
    """Health of one replica from probe results; ``record``/``tick`` return the new state on a transition."""

    def __init__(self, policy: HealthPolicy, started_at: float):
        self.policy = policy
        self.started_at = started_at
        self.state = RouteHealth.NOT_CHECKED
        self.ever_passed = False
        self.gave_up = False  # never passed before the start deadline: the replica failed to start
        self.consecutive_failures = 0
        self.last_pass_at: float | None = None

    @property
    def deadline(self) -> float:
        return self.started_at + self.policy.start_deadline

    def record(self, ok: bool, now: float) -> RouteHealth | None:
        if self.gave_up:
            return None
        if ok:
            self.consecutive_failures = 0
            self.ever_passed = True
            self.last_pass_at = now
            return self._set(RouteHealth.HEALTHY)
        self.consecutive_failures += 1
        if self.ever_passed:
            if self.consecutive_failures >= self.policy.failure_threshold:
                return self._set(RouteHealth.UNHEALTHY)
            return None
        return self.tick(now)

    def tick(self, now: float) -> RouteHealth | None:
        """Apply the start deadline; call it regularly (probes may hang for ``max_wait_time``)."""
        if not self.ever_passed and not self.gave_up and now >= self.deadline:
            self.gave_up = True
            return self._set(RouteHealth.UNHEALTHY)
        return None

    def next_probe_at(self, now: float) -> float:
        """The next slot of the fixed-rate schedule strictly after ``now`` (missed slots are skipped)."""
        elapsed = max(0.0, now - self.started_at)
        slot = math.floor(elapsed / self.policy.interval + 1e-9) + 1
        return self.started_at + slot * self.policy.interval

    def _set(self, state: RouteHealth) -> RouteHealth | None:
        if state == self.state:
            return None
        self.state = state
        return state


async def http_probe(session: aiohttp.ClientSession, url: str, timeout: float, expected_status: int) -> bool:
    """GET ``url``; passes iff the status equals ``expected_status`` within ``timeout`` seconds."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status == expected_status
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return False


async def tcp_probe(host: str, port: int, timeout: float) -> bool:
    """Passes iff a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


def make_probe(policy: HealthPolicy, session: aiohttp.ClientSession, host: str,
               port: int) -> Callable[[], Awaitable[bool]]:
    if policy.kind == "tcp":
        return lambda: tcp_probe(host, port, policy.max_wait_time)
    url_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"http://{url_host}:{port}{policy.path}"
    return lambda: http_probe(session, url, policy.max_wait_time, policy.expected_status_code)


async def run_prober(tracker: HealthTracker, probe: Callable[[], Awaitable[bool]],
                     on_result: Callable[[bool, float], None], clock: Callable[[], float]) -> None:
    """Probe at once, then on the tracker's fixed-rate schedule, until cancelled.

    ``on_result(ok, now)`` is expected to feed the tracker (and act on transitions); the loop itself keeps
    no state, so the owner can cancel it at any time.
    """
    while True:
        ok = await probe()
        now = clock()
        on_result(ok, now)
        delay = tracker.next_probe_at(now) - clock()
        await asyncio.sleep(max(0.0, delay))
