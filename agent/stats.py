"""Per-replica utilisation, sent with the heartbeats (``KernelReport.stats``) for ``kernel`` autoscaling rules.

Every ``[agent] stats_interval`` seconds :class:`StatsCollector` asks the runtime for one :class:`UsageSample`
per live replica (``runtime.sample_usage(handles)``; a runtime without it reports no stats) and turns two
consecutive samples into::

    {"cpu_util": 37.5, "mem_util": 12.0, "mem_bytes": 52428800.0, "collected_at": 1767225600.0}

* ``cpu_util``: CPU time used over wall time between the two samples, in percent of ONE core (200 = two busy
  cores), as Backend.AI's ``cpu_util``; absent after the first sample.
* ``mem_util``: resident memory in percent of the replica's limit: the runtime's own limit (docker), else the
  ``mem`` slot the replica asked for, else the host's memory.
* ``collected_at``: the agent's wall clock (the manager stamps its own ``reported_at`` too).

Cheap by construction: the ``local`` runtime reads ``/proc`` once per round for all replicas (in a thread); the
``docker`` runtime makes one non-streaming stats call per container (``one-shot``), concurrently.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from common.slots import parse_binary_size

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UsageSample:
    cpu_seconds: float  # cumulative CPU time of the replica's processes (children they reaped included)
    mem_bytes: int  # resident memory now
    mem_limit: int | None = None  # the runtime's memory limit for the replica, when it enforces one


def utilisation(previous: tuple[float, UsageSample] | None, now: float, sample: UsageSample,
                mem_capacity: int | None, wall: float) -> dict[str, float]:
    """The stats dict from this sample and the previous one (``(monotonic time, sample)``)."""
    stats: dict[str, float] = {"mem_bytes": float(sample.mem_bytes), "collected_at": round(wall, 3)}
    capacity = sample.mem_limit or mem_capacity
    if capacity:
        stats["mem_util"] = round(100.0 * sample.mem_bytes / capacity, 2)
    if previous is not None:
        then, before = previous
        elapsed = now - then
        if elapsed > 0:
            used = max(0.0, sample.cpu_seconds - before.cpu_seconds)  # a process gone with its time: not negative
            stats["cpu_util"] = round(100.0 * used / elapsed, 2)
    return stats


@functools.cache
def host_memory() -> int | None:
    """Total memory of this host in bytes (``/proc/meminfo``), None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def requested_memory(resource_slots: dict[str, str]) -> int | None:
    raw = resource_slots.get("mem")
    if not raw:
        return None
    try:
        value = int(parse_binary_size(str(raw)))
    except (ValueError, TypeError, ArithmeticError):
        return None
    return value if value > 0 else None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def proc_group_usage(pgids: Iterable[int], proc: str = "/proc") -> dict[int, UsageSample]:
    """One pass over ``/proc``: CPU time (``utime+stime+cutime+cstime``) and RSS summed per process group.

    Counting reaped children's time (``cutime/cstime``) keeps the total steady when a worker process of the
    replica exits and is reaped by its parent inside the group."""
    wanted = {int(p) for p in pgids}
    cpu: dict[int, int] = dict.fromkeys(wanted, 0)
    rss: dict[int, int] = dict.fromkeys(wanted, 0)
    seen: set[int] = set()
    if not wanted:
        return {}
    try:
        names = os.listdir(proc)
    except OSError:
        return {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as fh:
                raw = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        try:
            pgrp = int(fields[2])
            if pgrp not in wanted or fields[0] == "Z":
                continue
            cpu[pgrp] += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            rss[pgrp] += int(fields[21]) * _PAGE_SIZE
            seen.add(pgrp)
        except (IndexError, ValueError):
            continue
    return {g: UsageSample(cpu[g] / _CLOCK_TICKS, rss[g]) for g in seen}


def docker_usage(stats: dict[str, Any]) -> UsageSample | None:
    """A sample from a Docker ``/containers/{id}/stats`` document (cgroup v1 or v2); None when it has none."""
    cpu_ns = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    if not isinstance(cpu_ns, (int, float)) or not isinstance(usage, (int, float)):
        return None
    detail = memory.get("stats") or {}
    # what `docker stats` shows: page cache that can be dropped is not the replica's working set
    cache = detail.get("inactive_file", detail.get("total_inactive_file", detail.get("cache", 0))) or 0
    limit = memory.get("limit")
    host = host_memory()
    # without a limit Docker reports the host's memory (or a huge number): that is no limit of the replica's
    real_limit = int(limit) if isinstance(limit, (int, float)) and limit > 0 and (host is None or limit < host) \
        else None
    return UsageSample(cpu_seconds=cpu_ns / 1e9, mem_bytes=max(0, int(usage - cache)), mem_limit=real_limit)


class StatsCollector:
    """Samples the registry's live replicas every ``interval`` seconds and stores ``Kernel.stats``."""

    def __init__(self, registry: Any, runtime: Any, interval: float, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._runtime = runtime
        self._interval = interval
        self._clock = clock
        self._wall = wall
        self._previous: dict[str, tuple[float, UsageSample]] = {}  # kernel id → last sample
        self._failing = False

    async def run(self) -> None:
        if self._interval <= 0 or getattr(self._runtime, "sample_usage", None) is None:
            log.info("replica utilisation sampling is off (%s)",
                     "stats_interval = 0" if self._interval <= 0 else f"runtime {self._runtime.name} cannot")
            return
        while True:
            started = self._clock()
            try:
                await self.collect_once()
                if self._failing:
                    self._failing = False
                    log.info("replica utilisation sampling works again")
            except asyncio.CancelledError:
                raise
            except Exception:  # stats are best effort; never stop the agent's other work
                if not self._failing:
                    self._failing = True
                    log.exception("sampling replica utilisation failed (logged once until it works again)")
            await asyncio.sleep(max(0.0, self._interval - (self._clock() - started)))

    async def collect_once(self) -> None:
        kernels = self._registry.live_kernels()
        sampler = getattr(self._runtime, "sample_usage", None)
        if sampler is None:
            return
        handles = [k.handle for k in kernels if k.handle is not None]
        samples: dict[str, UsageSample] = await sampler(handles) if handles else {}
        now, wall = self._clock(), self._wall()
        live = set()
        for k in kernels:
            key = str(k.spec.kernel_id)
            sample = samples.get(k.handle.ident) if k.handle is not None else None
            if sample is None:
                continue
            live.add(key)
            capacity = requested_memory(k.spec.resource_slots) or host_memory()
            k.stats = utilisation(self._previous.get(key), now, sample, capacity, wall)
            self._previous[key] = (now, sample)
        for key in [k for k in self._previous if k not in live]:
            del self._previous[key]


__all__ = ["StatsCollector", "UsageSample", "docker_usage", "host_memory", "proc_group_usage", "requested_memory",
           "utilisation"]
