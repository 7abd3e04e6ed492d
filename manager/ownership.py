"""Who acts (:class:`Caller`, set by the API's authentication) and whose objects they may see and act on: the
ownership rules shared by the REST API, GraphQL and the domain code (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import sqlalchemy as sa

from common.status import UserRole
from manager.db.models import Endpoint, User


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    user_id: uuid.UUID
    access_key: str
    role: UserRole
    domain: str

    @property
    def is_admin(self) -> bool:
        return self.role in (UserRole.SUPERADMIN, UserRole.ADMIN)


def owner_visibility(caller: Caller, owner_column: Any) -> Any:
    """SQL condition on an owner column (endpoints, folders): the rows of users the caller may act for.
    Superadmins: everyone's. Domain admins: those of users whose ``users.domain_name`` is the admin's own (never
    a domain the object merely names, such as the ``domain`` a client sent when creating a service). Users:
    their own. Anything else reads as "not found" (docs/security.md)."""
    if caller.role == UserRole.SUPERADMIN:
        return sa.true()
    if caller.role == UserRole.ADMIN:
        return owner_column.in_(sa.select(User.id).where(User.domain_name == caller.domain))
    return owner_column == caller.user_id


def endpoint_visibility(caller: Caller) -> Any:
    """SQL condition for the endpoints a caller may see (REST and GraphQL alike): :func:`owner_visibility` of
    their owner."""
    return owner_visibility(caller, Endpoint.owner_id)


async def can_act_for(db: Any, caller: Caller, user_id: uuid.UUID) -> bool:
    """Whether the caller may see and act on objects of the user ``user_id`` (the rule of
    :func:`owner_visibility`)."""
    if caller.role == UserRole.SUPERADMIN or user_id == caller.user_id:
        return True
    if caller.role == UserRole.ADMIN:
        user = await db.get(User, user_id)
        return user is not None and user.domain_name == caller.domain
    return False


async def can_see_endpoint(db: Any, caller: Caller, endpoint: Any) -> bool:
    return await can_act_for(db, caller, endpoint.owner_id)
