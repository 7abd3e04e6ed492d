"""Gateway API keys in the manager: what a row publishes to the app proxies, and publishing it (docs/gateway.md).

Each active key (not revoked, not expired) is one store key ``APIKEYS_PREFIX + <sha256>`` holding
:class:`common.apikeys.ApiKeyRecord`; the REST handlers publish on create/update and delete on revoke, and every
manager republishes the whole set when it starts (:func:`resync_keys`), which also removes keys the store holds
but the database no longer lists as active (a crash between commit and publish, a store restored from backup).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord
from common.status import UserRole
from manager.db.models import ApiKey, User

log = logging.getLogger(__name__)


def store_key(key_hash: str) -> str:
    return APIKEYS_PREFIX + key_hash


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def is_active(key: ApiKey, now: datetime) -> bool:
    expires = aware(key.expires_at)
    return key.revoked_at is None and (expires is None or expires > now)


def build_record(key: ApiKey, owner_role: UserRole) -> ApiKeyRecord:
    expires = aware(key.expires_at)
    return ApiKeyRecord(key_id=key.id, key_hash=key.key_hash, name=key.name, owner_id=key.owner_id,
                        owner_all=owner_role == UserRole.SUPERADMIN, allowed_models=tuple(key.allowed_models or ()),
                        rpm=key.rpm, tpm=key.tpm, max_parallel=key.max_parallel,
                        expires_at=expires.timestamp() if expires else None, priority=key.priority)


async def publish_key(ctx: Any, db: Any, key: ApiKey) -> None:
    """Publish the key (or remove it when it is no longer active). Raises when the store is down: the caller
    answers with an error rather than claim a revocation that did not reach the proxies."""
    if not is_active(key, datetime.now(UTC)):
        await ctx.store.delete(store_key(key.key_hash))
        return
    owner = await db.get(User, key.owner_id)
    role = owner.role if owner is not None else UserRole.USER
    await ctx.store.put(store_key(key.key_hash), build_record(key, role).model_dump_json())


async def resync_keys(ctx: Any) -> int:
    """Make the store's keys exactly the active ones; returns how many are published."""
    now = datetime.now(UTC)
    async with ctx.db() as db:
        rows = (await db.execute(sa.select(ApiKey, User.role).join(User, User.id == ApiKey.owner_id)
                                 .where(ApiKey.revoked_at.is_(None)))).all()
    wanted = {store_key(k.key_hash): build_record(k, role).model_dump_json() for k, role in rows if is_active(k, now)}
    stored = await ctx.store.get_prefix(APIKEYS_PREFIX)
    for key in stored.keys() - wanted.keys():
        await ctx.store.delete(key)
    for key, value in wanted.items():
        if stored.get(key) != value:
            await ctx.store.put(key, value)
    return len(wanted)
