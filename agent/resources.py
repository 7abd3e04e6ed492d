"""Resource discovery: what this host offers to replicas, as the slots dict of :class:`common.protocol.AgentInfo`.

``available_slots`` is the host's capacity minus the configured reserve (not what is free right now: the
manager tracks occupancy). CPU honours the affinity mask and a cgroup v2 quota; memory honours a cgroup v2
limit. GPUs (:mod:`agent.gpu`, NVML or fake devices) add ``cuda.device`` (whole GPUs) and ``cuda.shares``
(the same GPUs in fractions, quantum 0.01); the agent's allocator (:mod:`agent.alloc`) decides placement.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from agent.config import ResourcesSection
from agent.gpu import GpuDevice
from common.slots import parse_binary_size

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def detect_cpu_count(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Usable cores: the affinity mask, capped by a cgroup v2 ``cpu.max`` quota (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _read(cgroup_root / "cpu.max")
    if quota:
        parts = quota.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                count = min(count, max(1, math.ceil(int(parts[0]) / int(parts[1]))))
            except (ValueError, ZeroDivisionError):
                pass
    return max(1, count)


def detect_memory_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = CGROUP_ROOT) -> int:
    """Total memory: ``MemTotal`` (or sysconf), capped by a cgroup v2 ``memory.max`` limit."""
    total = 0
    text = _read(meminfo)
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                fields = line.split()
                total = int(fields[1]) * (1024 if len(fields) > 2 and fields[2].lower() == "kb" else 1)
                break
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            total = 0
    limit = _read(cgroup_root / "memory.max")
    if limit and limit != "max":
        try:
            total = min(total, int(limit)) if total else int(limit)
        except ValueError:
            pass
    return total


def accelerator_slots(gpus: Sequence[GpuDevice]) -> dict[str, Decimal]:
    """``cuda.device`` and ``cuda.shares`` (both = the GPU count) when there are GPUs, else nothing."""
    if not gpus:
        return {}
    return {"cuda.device": Decimal(len(gpus)), "cuda.shares": Decimal(len(gpus))}


def _fmt(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if text not in ("-0", "") else "0"


def available_slots(resources: ResourcesSection, gpus: Sequence[GpuDevice] = ()) -> dict[str, str]:
    """Capacity minus reserve, e.g. ``{"cpu": "2", "mem": "25769803776"}`` (strings, never negative)."""
    cpu = Decimal(str(resources.cpu)) if resources.cpu is not None else Decimal(detect_cpu_count())
    mem = parse_binary_size(resources.mem) if resources.mem is not None else Decimal(detect_memory_bytes())
    cpu = max(Decimal(0), cpu - Decimal(str(resources.reserved_cpu)))
    cpu = cpu.quantize(Decimal("0.01"), rounding=ROUND_DOWN)
    mem = max(Decimal(0), mem - parse_binary_size(resources.reserved_mem))
    slots = {"cpu": _fmt(cpu), "mem": str(int(mem))}
    for name, qty in accelerator_slots(gpus).items():
        slots[name] = _fmt(qty)
    return slots
