"""Model names → endpoint pools, and what a key may use (pure; docs/gateway.md).

An endpoint serves its service name as a model, and its aliases. Several endpoints with the same name (visible
to one key) form one pool: their healthy routes (a route table lists only those) are balanced together, as one synthetic
:class:`RouteTable` whose id is derived from the model name (so the forwarder's per-table plan is reused while
the tables do not change).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from common.apikeys import ApiKeyRecord
from common.protocol import RouteTable

POOL_NAMESPACE = uuid.UUID("6f1d0c3e-2b53-4c8e-9a51-1f0de1a7c6b2")  # uuid5 namespace of pool table ids


def owner_reaches(record: ApiKeyRecord, table: RouteTable) -> bool:
    """Whether the key's owner may use this endpoint (a superadmin: all; else their own endpoints)."""
    return record.owner_all or (table.owner_id is not None and table.owner_id == record.owner_id)


def names_for(record: ApiKeyRecord, table: RouteTable) -> list[str]:
    """The model names under which the key may use this endpoint: its service name and aliases; a key with a
    model list gets those it names (all of them when it names the service itself)."""
    if not owner_reaches(record, table):
        return []
    names = [table.name, *table.aliases]
    if not record.allowed_models or table.name in record.allowed_models:
        return names
    return [n for n in names if n in record.allowed_models]


def reachable(record: ApiKeyRecord, table: RouteTable) -> bool:
    """Whether the key may use this endpoint under some name."""
    return bool(names_for(record, table))


def visible_models(record: ApiKeyRecord, tables: Iterable[RouteTable]) -> list[str]:
    """The model names (service names and aliases) the key may use, sorted."""
    return sorted({n for t in tables for n in names_for(record, t)})


def pool_of(record: ApiKeyRecord, model: str, tables: Iterable[RouteTable]) -> list[RouteTable]:
    """The endpoints that serve ``model`` (as their name or an alias) to this key (empty: unknown, or not for
    this key)."""
    return sorted((t for t in tables if (t.name == model or model in t.aliases) and model in names_for(record, t)),
                  key=lambda t: t.endpoint_id)


def engine_model(model: str, members: Sequence[RouteTable]) -> str | None:
    """The ``model`` to write into the body for the engine: the services' ``engine_model_name`` when every member
    of the pool sets the same one (else None: the client's name goes through as sent). Pure."""
    names = {t.engine_model_name for t in members}
    if len(names) != 1:
        return None
    name = names.pop()
    return name if name is not None and name != model else None


def pool_table(model: str, members: Sequence[RouteTable]) -> RouteTable:
    """One table over every route of the pool (a single endpoint: its own table)."""
    if len(members) == 1:
        return members[0]
    return RouteTable(endpoint_id=uuid.uuid5(POOL_NAMESPACE, model + "\0" + ",".join(
                          str(t.endpoint_id) for t in members)), name=model,
                      routes=[r for t in members for r in t.routes], hold_requests=False)
