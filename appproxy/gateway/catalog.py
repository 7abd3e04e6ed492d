"""Model names → endpoint pools, and what a key may use (pure; docs/gateway.md).

An endpoint serves its service name as a model. Several endpoints with the same name (visible to one key) form
one pool: their healthy routes (a route table lists only those) are balanced together, as one synthetic
:class:`RouteTable` whose id is derived from the model name (so the forwarder's per-table plan is reused while
the tables do not change).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from common.apikeys import ApiKeyRecord
from common.protocol import RouteTable

POOL_NAMESPACE = uuid.UUID("6f1d0c3e-2b53-4c8e-9a51-1f0de1a7c6b2")  # uuid5 namespace of pool table ids


def reachable(record: ApiKeyRecord, table: RouteTable) -> bool:
    """Whether the key may use this endpoint: its owner may (a superadmin: all; else their own endpoints), and
    the key's model list, when not empty, names it."""
    if not (record.owner_all or (table.owner_id is not None and table.owner_id == record.owner_id)):
        return False
    return not record.allowed_models or table.name in record.allowed_models


def visible_models(record: ApiKeyRecord, tables: Iterable[RouteTable]) -> list[str]:
    """The model names the key may use, sorted."""
    return sorted({t.name for t in tables if reachable(record, t)})


def pool_of(record: ApiKeyRecord, model: str, tables: Iterable[RouteTable]) -> list[RouteTable]:
    """The endpoints that serve ``model`` to this key (empty: unknown, or not for this key)."""
    return sorted((t for t in tables if t.name == model and reachable(record, t)), key=lambda t: t.endpoint_id)


def pool_table(model: str, members: Sequence[RouteTable]) -> RouteTable:
    """One table over every route of the pool (a single endpoint: its own table)."""
    if len(members) == 1:
        return members[0]
    return RouteTable(endpoint_id=uuid.uuid5(POOL_NAMESPACE, model + "\0" + ",".join(
                          str(t.endpoint_id) for t in members)), name=model,
                      routes=[r for t in members for r in t.routes], hold_requests=False)
