"""Where a new endpoint is reached (a proxy port or a wildcard subdomain), and its race-free insertion.

Live endpoints hold unique ports and subdomains (partial unique indexes on ``endpoints``). Two concurrent creates
read the same free address; the database refuses the second INSERT. :func:`insert_endpoint` therefore retries the
whole read-choose-insert in a fresh session, building the row again from plain values (never from ORM objects a
rollback expired), and spreads retries over several free addresses so that a burst converges in a few rounds.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.errors import Conflict, ServiceUnavailable
from common.status import EndpointLifecycle
from manager.config import ManagerConfig
from manager.db.models import Endpoint

# Tunables (why): every round at least one contender commits, and from the second round on each picks among
# SPREAD free ports at random, so 24 simultaneous creates (the probe) finish in two or three rounds; 12 rounds
# leave a wide margin before a 409 "retry". The jittered pause keeps losers from colliding again in lock-step.
MAX_ATTEMPTS = 12
SPREAD = 64
RETRY_PAUSE = 0.02  # seconds, times the attempt number, times a random factor in [0.5, 1.5)


def subdomain_base(name: str) -> str:
    """A DNS label from a service name: lowercase letters, digits and dashes."""
    label = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    return (label or "svc")[:40].strip("-") or "svc"


async def allocate_subdomain(db: AsyncSession, name: str) -> str:
    used = set((await db.execute(
        sa.select(Endpoint.subdomain).where(Endpoint.lifecycle != EndpointLifecycle.DESTROYED,
                                            Endpoint.subdomain.is_not(None)))).scalars())
    base = subdomain_base(name)
    candidate = base
    while candidate in used:
        candidate = f"{base}-{secrets.token_hex(2)}"
    return candidate


def _choose_port(free: Iterable[int], attempt: int) -> int | None:
    """The lowest free port on the first attempt (stable URLs in the common, uncontended case); later a random
    one among the lowest SPREAD, so that contenders who lost a round rarely pick the same port again."""
    candidates: list[int] = []
    for port in free:
        candidates.append(port)
        if attempt == 0 or len(candidates) >= SPREAD:
            break
    return random.choice(candidates) if candidates else None


async def allocate_proxy_port(db: AsyncSession, config: ManagerConfig, attempt: int = 0) -> int:
    used = set((await db.execute(
        sa.select(Endpoint.proxy_port).where(Endpoint.lifecycle != EndpointLifecycle.DESTROYED,
                                            Endpoint.proxy_port.is_not(None))
    )).scalars())
    lo, hi = config.appproxy.port_range
    port = _choose_port((p for p in range(lo, hi + 1) if p not in used), attempt)
    if port is None:
        raise ServiceUnavailable("no free app-proxy port left in appproxy.port_range")
    return port


def endpoint_url(config: ManagerConfig, port: int) -> str:
    return f"{config.appproxy.scheme}://{config.appproxy.public_host}:{port}"


async def allocate_address(db: AsyncSession, config: ManagerConfig, name: str,
                           attempt: int = 0) -> tuple[int | None, str | None, str]:
    """(proxy port, subdomain, URL) for a new endpoint, per the configured app-proxy frontend."""
    proxy = config.appproxy
    if proxy.frontend == "wildcard":
        subdomain = await allocate_subdomain(db, name)
        port = "" if proxy.wildcard_port in (None, 80, 443) else f":{proxy.wildcard_port}"
        return None, subdomain, f"{proxy.scheme}://{subdomain}{proxy.wildcard_domain}{port}"
    port_number = await allocate_proxy_port(db, config, attempt)
    return port_number, None, endpoint_url(config, port_number)


async def name_taken(db: AsyncSession, owner_id: Any, name: str) -> bool:
    return (await db.execute(sa.select(Endpoint.id).where(
        Endpoint.owner_id == owner_id, Endpoint.name == name,
        Endpoint.lifecycle != EndpointLifecycle.DESTROYED))).first() is not None


async def insert_endpoint(sessions: async_sessionmaker[AsyncSession], config: ManagerConfig, owner_id: Any,
                          name: str, build: Callable[[int | None, str | None, str], list[Any]]) -> Endpoint:
    """Allocate an address and insert ``build(port, subdomain, url)`` (the endpoint first, then rows that go
    with it) in one transaction; on a unique-index conflict, retry in a fresh session. 409 when the owner's
    name was taken meanwhile, or (after MAX_ATTEMPTS rounds) when addresses kept colliding."""
    for attempt in range(MAX_ATTEMPTS):
        async with sessions() as db:
            if await name_taken(db, owner_id, name):
                raise Conflict(f"name: a service named {name!r} already exists")
            port, subdomain, url = await allocate_address(db, config, name, attempt)
            rows = build(port, subdomain, url)
            db.add_all(rows)
            try:
                await db.commit()
                endpoint: Endpoint = rows[0]  # build() puts the endpoint first
                return endpoint
            except IntegrityError:
                await db.rollback()
        await asyncio.sleep(RETRY_PAUSE * (attempt + 1) * random.uniform(0.5, 1.5))
    raise Conflict("could not allocate an endpoint address under contention; retry the request")
