"""Placement of replica sessions onto agents. Pure: takes capacities, returns a choice or the reason for none.

Predicates: scaling group, architecture, free slots. Strategy (``dispersed``, the default here): spread replicas
of one endpoint across agents first, then prefer the agent with the most free room, then the lowest id (stable).
Never over-commits: a placement is only made where every requested slot fits in what is left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from decimal import Decimal

from common.slots import ResourceSlots, format_binary_size


@dataclasses.dataclass(frozen=True, slots=True)
class AgentCapacity:
    agent_id: str
    scaling_group: str
    architecture: str
    available: ResourceSlots  # total the agent offers
    occupied: ResourceSlots  # held by its live sessions
    endpoint_replicas: int = 0  # replicas of the endpoint being placed that already run there

    @property
    def free(self) -> ResourceSlots:
        return self.available - self.occupied


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    agent_id: str | None
    reason: str = ""


def _fmt(slot: str, qty: Decimal) -> str:
    return format_binary_size(qty) if slot == "mem" else format(qty.normalize(), "f")


def _room(agent: AgentCapacity) -> Decimal:
    free = agent.free
    fractions = [free.get(k, Decimal(0)) / v for k, v in agent.available.items() if v > 0]
    return min(fractions) if fractions else Decimal(0)


def select_agent(request: ResourceSlots, agents: Sequence[AgentCapacity], scaling_group: str,
                 architecture: str | None = None) -> Placement:
    in_group = [a for a in agents if a.scaling_group == scaling_group]
    if not in_group:
        return Placement(None, f"no alive agent in scaling group {scaling_group!r}")
    if architecture:
        in_group = [a for a in in_group if a.architecture == architecture]
        if not in_group:
            return Placement(None, f"no alive agent with architecture {architecture!r}")
    fitting = [a for a in in_group if request.fits_in(a.free)]
    if not fitting:
        missing = sorted({slot for a in in_group for slot in request.missing_in(a.free)})
        wanted = ", ".join(f"{_fmt(s, request[s])} {s}" for s in missing)
        return Placement(None, f"no agent with {wanted} free")
    best = min(fitting, key=lambda a: (a.endpoint_replicas, -_room(a), a.agent_id))
    return Placement(best.agent_id)
