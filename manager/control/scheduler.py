"""Placement of replica sessions onto agents. Pure: takes capacities, returns a choice or the reason for none.

Predicates: scaling group, architecture, free slots (every requested slot must fit in what is left, so nothing
is ever over-committed) and, where the agent reports its GPUs, per-device room for ``cuda.shares``: a fraction
must fit on ONE device (the agent's allocator never splits it unless fragmentation is allowed there), whole
shares need wholly free devices.

Strategy, chosen per scaling group (``[scheduler]`` in the manager config). All of them first spread the
replicas of one endpoint across agents (fewest replicas of that endpoint first), so losing one host never takes
a whole service down when another host could hold a replica. Then:

* ``dispersed`` (default): the agent with the most free room (its scarcest slot, as a fraction) — even load.
* ``concentrated``: the agent with the least free room that still fits — bin packing, keeps whole hosts free
  for large replicas.
* ``roundrobin``: the next fitting agent after the last one chosen in the group, in id order.
Ties go to the lowest agent id, so decisions are stable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Literal

from common.slots import ResourceSlots, format_binary_size

Strategy = Literal["dispersed", "concentrated", "roundrobin"]
STRATEGIES: tuple[str, ...] = ("dispersed", "concentrated", "roundrobin")
ONE = Decimal(1)


@dataclasses.dataclass(frozen=True, slots=True)
class AgentCapacity:
    agent_id: str
    scaling_group: str
    architecture: str
    available: ResourceSlots  # total the agent offers
    occupied: ResourceSlots  # held by its live sessions
    endpoint_replicas: int = 0  # replicas of the endpoint being placed that already run there
    # free cuda.shares per GPU (uuid → 0..1) where known; None: the agent reported no devices (aggregate only)
    device_free: Mapping[str, Decimal] | None = None
    # derived once (select_agent reads them for every agent and every replica it places)
    free: ResourceSlots = dataclasses.field(init=False, repr=False, compare=False)
    room: Decimal = dataclasses.field(init=False, repr=False, compare=False)  # scarcest free slot, as a fraction

    def __post_init__(self) -> None:
        free = self.available - self.occupied
        fractions = [free.get(k, Decimal(0)) / v for k, v in self.available.items() if v > 0]
        object.__setattr__(self, "free", free)
        object.__setattr__(self, "room", min(fractions) if fractions else Decimal(0))

    def taking(self, request: ResourceSlots) -> AgentCapacity:
        """This agent once ``request`` is placed on it (its GPUs taken the way the agent's allocator would)."""
        device_free = None
        if self.device_free is not None:
            device_free = dict(self.device_free)
            reserve_devices(device_free, request)
        return dataclasses.replace(self, occupied=self.occupied + request, device_free=device_free)


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    agent_id: str | None
    reason: str = ""


ARCHITECTURE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def normalize_architecture(name: str) -> str:
    """Docker says amd64/arm64, the kernel x86_64/aarch64: compare them as one."""
    return ARCHITECTURE_ALIASES.get(name.lower(), name.lower())


def _fmt(slot: str, qty: Decimal) -> str:
    return format_binary_size(qty) if slot == "mem" else format(qty.normalize(), "f")


def place_shares(device_free: Mapping[str, Decimal], shares: Decimal) -> dict[str, Decimal] | None:
    """Where ``shares`` of GPU would go on these devices: floor(shares) wholly free devices (lowest id first)
    plus the remainder best-fit on one more device (the fullest that still fits). None if it does not fit."""
    whole, remainder = int(shares // ONE), shares % ONE
    free_devices = sorted(d for d, f in device_free.items() if f >= ONE)
    if len(free_devices) < whole:
        return None
    taken = {d: ONE for d in free_devices[:whole]}
    if remainder:
        fitting = [(f, d) for d, f in device_free.items() if d not in taken and f >= remainder]
        if not fitting:
            return None
        taken[min(fitting)[1]] = remainder
    return taken


def whole_devices_free(device_free: Mapping[str, Decimal]) -> int:
    return sum(1 for f in device_free.values() if f >= ONE)


def _fits_devices(request: ResourceSlots, agent: AgentCapacity) -> str | None:
    """None when the devices can hold the request; else the reason."""
    if agent.device_free is None:
        return None
    shares = request.get("cuda.shares", Decimal(0))
    if shares and place_shares(agent.device_free, shares) is None:
        return f"no agent with {_fmt('cuda.shares', shares)} cuda.shares free on one GPU"
    devices = request.get("cuda.device", Decimal(0))
    if devices and whole_devices_free(agent.device_free) < devices:
        return f"no agent with {_fmt('cuda.device', devices)} wholly free cuda.device"
    return None


def select_agent(request: ResourceSlots, agents: Sequence[AgentCapacity], scaling_group: str,
                 architecture: str | None = None, strategy: str = "dispersed",
                 last_agent_id: str | None = None, endpoint_replicas: Mapping[str, int] | None = None) -> Placement:
    """Pick the agent for one replica; ``last_agent_id`` is the group's previous choice (``roundrobin``).
    ``endpoint_replicas`` (agent id → replicas of this endpoint there), when given, replaces each capacity's
    ``endpoint_replicas``, so one set of capacities serves every endpoint placed in a tick."""
    in_group = [a for a in agents if a.scaling_group == scaling_group]
    if not in_group:
        return Placement(None, f"no alive agent in scaling group {scaling_group!r}")
    if architecture:
        in_group = [a for a in in_group if a.architecture == architecture]
        if not in_group:
            return Placement(None, f"no alive agent with architecture {architecture!r} in scaling group "
                                   f"{scaling_group!r}")
    fitting = [a for a in in_group if request.fits_in(a.free)]
    if not fitting:
        missing = sorted({slot for a in in_group for slot in request.missing_in(a.free)})
        wanted = ", ".join(f"{_fmt(s, request[s])} {s}" for s in missing)
        return Placement(None, f"no agent with {wanted} free")
    device_reasons = {a.agent_id: _fits_devices(request, a) for a in fitting}
    fitting = [a for a in fitting if device_reasons[a.agent_id] is None]
    if not fitting:
        return Placement(None, sorted(r for r in device_reasons.values() if r)[0] + " (fragmented)")
    replicas = {a.agent_id: a.endpoint_replicas if endpoint_replicas is None else endpoint_replicas.get(a.agent_id, 0)
                for a in fitting}
    spread = min(replicas.values())
    candidates = sorted((a for a in fitting if replicas[a.agent_id] == spread), key=lambda a: a.agent_id)
    if strategy == "concentrated":
        best = min(candidates, key=lambda a: (a.room, a.agent_id))
    elif strategy == "roundrobin":
        after = [a for a in candidates if last_agent_id is not None and a.agent_id > last_agent_id]
        best = (after or candidates)[0]
    else:
        best = min(candidates, key=lambda a: (-a.room, a.agent_id))
    return Placement(best.agent_id)


def reserve_devices(device_free: dict[str, Decimal], request: ResourceSlots) -> None:
    """Take ``request``'s GPUs out of ``device_free`` the way the agent's allocator would place them."""
    shares = request.get("cuda.shares", Decimal(0))
    if shares:
        for device, amount in (place_shares(device_free, shares) or {}).items():
            device_free[device] -= amount
    wanted = int(request.get("cuda.device", Decimal(0)))
    for device in sorted(d for d, f in device_free.items() if f >= ONE)[:wanted]:
        device_free[device] = Decimal(0)


def device_free_of(devices: Sequence[str] | None,
                   sessions: Sequence[tuple[Mapping[str, str] | None, ResourceSlots]]) -> dict[str, Decimal] | None:
    """Free share per GPU of one agent: what its live sessions reported holding, then (for sessions not yet
    reported) where the agent's best-fit allocator will put them. None when the agent has no GPUs listed."""
    if not devices:
        return None
    free = {d: ONE for d in devices}
    unreported = []
    for allocation, request in sessions:
        if allocation:
            for device, fraction in allocation.items():
                if device in free:
                    free[device] = max(Decimal(0), free[device] - Decimal(fraction))
        else:
            unreported.append(request)
    for request in unreported:
        reserve_devices(free, request)
    return free
