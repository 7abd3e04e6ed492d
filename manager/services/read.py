"""Reading services: one the caller may see, its routes, the compact list, the search page, failed routes."""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from common.errors import ObjectNotFound
from common.status import EndpointLifecycle, RouteHealth, RouteLifecycle
from manager.db.models import Agent, Endpoint, Route, Session, User, route_active_clause
from manager.ownership import Caller, can_see_endpoint, endpoint_visibility
from manager.services.model import RouteAxes, RouteRow, SearchPage, ServiceSnapshot, ServiceSummary

Sessions = async_sessionmaker[AsyncSession]


async def load_endpoint(db: AsyncSession, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None
                        ) -> Endpoint:
    """A live endpoint the caller may see. Foreign or unknown ids are both 404: never leak existence.
    ``shown``: the id as the client wrote it, for the message."""
    endpoint = await db.get(Endpoint, endpoint_id)
    if (endpoint is None or endpoint.lifecycle == EndpointLifecycle.DESTROYED
            or not await can_see_endpoint(db, caller, endpoint)):
        raise ObjectNotFound(f"service {shown or endpoint_id} not found")
    return endpoint


async def route_rows(db: AsyncSession, endpoint_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[RouteRow]]:
    """The endpoints' unterminated routes (history grows) with sessions and runtimes, oldest first, by endpoint."""
    by_endpoint: dict[uuid.UUID, list[RouteRow]] = defaultdict(list)
    if not endpoint_ids:
        return by_endpoint
    rows = await db.execute(
        sa.select(Route, Session, Agent.runtime).outerjoin(Session, Session.id == Route.session_id)
        .outerjoin(Agent, Agent.id == Session.agent_id)
        .where(Route.endpoint_id.in_(endpoint_ids), Route.lifecycle != RouteLifecycle.TERMINATED)
        .order_by(Route.created_at, Route.id))
    for route, session, runtime in rows.all():
        by_endpoint[route.endpoint_id].append(RouteRow(route, session, runtime))
    return by_endpoint


async def snapshots(db: AsyncSession, endpoints: Sequence[Endpoint]) -> list[ServiceSnapshot]:
    """Each endpoint with its unterminated routes (one query for all of them)."""
    rows = await route_rows(db, [e.id for e in endpoints])
    return [ServiceSnapshot(e, rows.get(e.id, [])) for e in endpoints]


async def snapshot(db: AsyncSession, endpoint: Endpoint) -> ServiceSnapshot:
    return (await snapshots(db, [endpoint]))[0]


async def visible_endpoint(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None
                           ) -> Endpoint:
    async with sessions() as db:
        return await load_endpoint(db, caller, endpoint_id, shown)


async def get_service(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None
                      ) -> ServiceSnapshot:
    async with sessions() as db:
        return await snapshot(db, await load_endpoint(db, caller, endpoint_id, shown))


async def list_services(sessions: Sessions, caller: Caller, name: str | None, everyone: bool
                        ) -> list[ServiceSummary]:
    """The compact list: the caller's services (``everyone``: all they may see), optionally of one name. Reads only
    the columns it shows (2,000 full endpoints took 1.4 s of the manager's event loop in bench/control_plane,
    stalling the control loop and every other request)."""
    async with sessions() as db:
        query = sa.select(Endpoint.id, Endpoint.name, Endpoint.replicas, Endpoint.url, Endpoint.open_to_public,
                          Endpoint.lifecycle).where(Endpoint.lifecycle != EndpointLifecycle.DESTROYED,
                                                    Endpoint.kind == "service")
        query = query.where(endpoint_visibility(caller) if everyone else Endpoint.owner_id == caller.user_id)
        if name is not None:
            query = query.where(Endpoint.name == name)
        endpoints = (await db.execute(query.order_by(Endpoint.created_at))).all()
        routes_of: dict[uuid.UUID, list[RouteAxes]] = defaultdict(list)
        if endpoints:
            for endpoint_id, route_lifecycle, health, traffic in (await db.execute(
                    sa.select(Route.endpoint_id, Route.lifecycle, Route.health, Route.traffic).where(
                        Route.endpoint_id.in_([e.id for e in endpoints]),
                        Route.lifecycle != RouteLifecycle.TERMINATED))).all():
                routes_of[endpoint_id].append((route_lifecycle, health, traffic))
    return [ServiceSummary(endpoint_id, endpoint_name, replicas, url, is_public, lifecycle,
                           routes_of.get(endpoint_id, []))
            for endpoint_id, endpoint_name, replicas, url, is_public, lifecycle in endpoints]


@dataclasses.dataclass(frozen=True)
class NameFilter:
    """Backend.AI's StringFilter on the service name: every condition given must hold."""

    equals: str | None = None
    not_equals: str | None = None
    i_equals: str | None = None
    contains: str | None = None
    i_contains: str | None = None
    starts_with: str | None = None
    ends_with: str | None = None


def _string_conditions(column: InstrumentedAttribute[str], flt: NameFilter) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = []
    if flt.equals is not None:
        conds.append(column == flt.equals)
    if flt.not_equals is not None:
        conds.append(column != flt.not_equals)
    if flt.i_equals is not None:
        conds.append(sa.func.lower(column) == flt.i_equals.lower())
    if flt.contains is not None:
        conds.append(column.contains(flt.contains, autoescape=True))
    if flt.i_contains is not None:
        conds.append(sa.func.lower(column).contains(flt.i_contains.lower(), autoescape=True))
    if flt.starts_with is not None:
        conds.append(column.startswith(flt.starts_with, autoescape=True))
    if flt.ends_with is not None:
        conds.append(column.endswith(flt.ends_with, autoescape=True))
    return conds


async def search_services(sessions: Sessions, caller: Caller, name: NameFilter | None, offset: int, limit: int,
                          destroyed: bool = False) -> SearchPage:
    """A page of the caller's services: live ones in creation order, or (``destroyed``) destroyed ones newest
    first (the recent ones matter)."""
    conds = [Endpoint.lifecycle == EndpointLifecycle.DESTROYED if destroyed
             else Endpoint.lifecycle != EndpointLifecycle.DESTROYED, Endpoint.kind == "service",
             endpoint_visibility(caller)]
    if name is not None:
        conds.extend(_string_conditions(Endpoint.name, name))
    order = Endpoint.created_at.desc() if destroyed else Endpoint.created_at
    async with sessions() as db:
        total = (await db.execute(sa.select(sa.func.count()).select_from(Endpoint).where(*conds))).scalar_one()
        endpoints = list((await db.execute(sa.select(Endpoint).where(*conds).order_by(order, Endpoint.id)
                                           .offset(offset).limit(limit))).scalars())
        page_ids = [e.id for e in endpoints]
        rows = await db.execute(sa.select(Route.endpoint_id, sa.func.count()).where(
            Route.endpoint_id.in_(page_ids), route_active_clause()).group_by(Route.endpoint_id))
        counts = {endpoint_id: count for endpoint_id, count in rows}
        route_states: dict[uuid.UUID, list[tuple[RouteLifecycle, RouteHealth]]] = defaultdict(list)
        for endpoint_id, lifecycle, health in (await db.execute(
                sa.select(Route.endpoint_id, Route.lifecycle, Route.health).where(
                    Route.endpoint_id.in_(page_ids), Route.lifecycle != RouteLifecycle.TERMINATED))).all():
            route_states[endpoint_id].append((lifecycle, health))
        owners = {user_id: email for user_id, email in (await db.execute(sa.select(User.id, User.email).where(
            User.id.in_({e.owner_id for e in endpoints})))).all()}
    return SearchPage(endpoints, counts, total, dict(route_states), owners)


async def failed_routes(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None
                        ) -> tuple[Endpoint, list[Route]]:
    """The endpoint and its routes that failed to start, oldest first (``GET /services/{id}/errors``)."""
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        failed = list((await db.execute(sa.select(Route).where(
            Route.endpoint_id == endpoint.id, Route.lifecycle == RouteLifecycle.FAILED_TO_START)
            .order_by(Route.created_at))).scalars())
    return endpoint, failed
