"""Gateway API keys in the manager: what a row publishes to the app proxies, and publishing it (docs/gateway.md).

Each active key (not revoked, not expired) is one store key ``APIKEYS_PREFIX + <sha256>`` holding
:class:`common.apikeys.ApiKeyRecord`; the REST handlers publish on create/update and delete on revoke, and every
manager republishes the whole set when it starts (:func:`resync_keys`), which also removes keys the store holds
but the database no longer lists as active (a crash between commit and publish, a store restored from backup).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord, PriorityClass, month_of
from common.status import UserRole
from manager.db.models import ApiKey, User, UserKeyDefaults
from manager.prices import spent_this_month

log = logging.getLogger(__name__)


def store_key(key_hash: str) -> str:
    return APIKEYS_PREFIX + key_hash


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def is_active(key: ApiKey, now: datetime) -> bool:
    expires = aware(key.expires_at)
    return key.revoked_at is None and (expires is None or expires > now)


INHERITED = ("rpm", "tpm", "max_parallel", "budget", "priority")  # what a key takes from its owner's defaults


def effective(key: ApiKey, defaults: UserKeyDefaults | None) -> dict[str, Any]:
    """The key's limits, budget and priority as the proxies apply them: its own value, else its owner's default,
    else none (priority: standard). Pure."""
    out: dict[str, Any] = {}
    for field in INHERITED:
        value = getattr(key, field)
        if value is None and defaults is not None:
            value = getattr(defaults, field)
        out[field] = value
    out["priority"] = PriorityClass(out["priority"] or PriorityClass.STANDARD)
    return out


def build_record(key: ApiKey, owner_role: UserRole, spent: float = 0.0, now: datetime | None = None,
                 defaults: UserKeyDefaults | None = None) -> ApiKeyRecord:
    """What the proxies get; ``spent``: the key's spend in ``now``'s month (published with its budget)."""
    expires = aware(key.expires_at)
    at = (now or datetime.now(UTC)).timestamp()
    values = effective(key, defaults)
    budget = values["budget"]
    return ApiKeyRecord(key_id=key.id, key_hash=key.key_hash, name=key.name, owner_id=key.owner_id,
                        owner_all=owner_role == UserRole.SUPERADMIN, allowed_models=tuple(key.allowed_models or ()),
                        rpm=values["rpm"], tpm=values["tpm"], max_parallel=values["max_parallel"],
                        expires_at=expires.timestamp() if expires else None, priority=values["priority"],
                        budget=budget, spent=round(spent, 9) if budget is not None else 0.0,
                        spent_month=month_of(at) if budget is not None else "")


async def defaults_of(db: Any, user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, UserKeyDefaults]:
    ids = list(set(user_ids))
    if not ids:
        return {}
    rows = (await db.execute(sa.select(UserKeyDefaults).where(UserKeyDefaults.user_id.in_(ids)))).scalars()
    return {d.user_id: d for d in rows}


async def publish_key(ctx: Any, db: Any, key: ApiKey) -> None:
    """Publish the key (or remove it when it is no longer active). Raises when the store is down: the caller
    answers with an error rather than claim a revocation that did not reach the proxies."""
    now = datetime.now(UTC)
    if not is_active(key, now):
        await ctx.store.delete(store_key(key.key_hash))
        return
    owner = await db.get(User, key.owner_id)
    role = owner.role if owner is not None else UserRole.USER
    defaults = await db.get(UserKeyDefaults, key.owner_id)
    budgeted = effective(key, defaults)["budget"] is not None
    spent = (await spent_this_month(db, [key.id], now))[key.id] if budgeted else 0.0
    await ctx.store.put(store_key(key.key_hash), build_record(key, role, spent, now, defaults).model_dump_json())


async def publish_user_keys(ctx: Any, db: Any, user_id: uuid.UUID) -> int:
    """Republish every active key of a user (their defaults changed); how many."""
    now = datetime.now(UTC)
    keys = (await db.execute(sa.select(ApiKey).where(ApiKey.owner_id == user_id, ApiKey.revoked_at.is_(None))
                             )).scalars().all()
    for key in keys:
        if is_active(key, now):
            await publish_key(ctx, db, key)
    return len(keys)


async def publish_spend(ctx: Any, db: Any, key_ids: Iterable[uuid.UUID]) -> None:
    """Republish the keys among ``key_ids`` that have a budget, with what they spent this month (called after
    each usage batch is written: the proxies refuse a key over its budget within about a flush interval)."""
    now = datetime.now(UTC)
    rows = (await db.execute(sa.select(ApiKey, User.role, UserKeyDefaults)
                             .join(User, User.id == ApiKey.owner_id)
                             .outerjoin(UserKeyDefaults, UserKeyDefaults.user_id == ApiKey.owner_id)
                             .where(ApiKey.id.in_(set(key_ids)), ApiKey.revoked_at.is_(None),
                                    sa.or_(ApiKey.budget.is_not(None), UserKeyDefaults.budget.is_not(None))))).all()
    active = [(k, role, d) for k, role, d in rows if is_active(k, now)]
    spent = await spent_this_month(db, [k.id for k, _, _ in active], now)
    for key, role, defaults in active:
        await ctx.store.put(store_key(key.key_hash),
                            build_record(key, role, spent[key.id], now, defaults).model_dump_json())


async def resync_keys(ctx: Any) -> int:
    """Make the store's keys exactly the active ones; returns how many are published."""
    now = datetime.now(UTC)
    async with ctx.db() as db:
        found = (await db.execute(sa.select(ApiKey, User.role).join(User, User.id == ApiKey.owner_id)
                                  .where(ApiKey.revoked_at.is_(None)))).all()
        rows = [(k, role) for k, role in found if is_active(k, now)]
        defaults = await defaults_of(db, {k.owner_id for k, _ in rows})
        spent = await spent_this_month(db, [k.id for k, _ in rows
                                            if effective(k, defaults.get(k.owner_id))["budget"] is not None], now)
    wanted = {store_key(k.key_hash): build_record(k, role, spent.get(k.id, 0.0), now,
                                                  defaults.get(k.owner_id)).model_dump_json()
              for k, role in rows}
    stored = await ctx.store.get_prefix(APIKEYS_PREFIX)
    for key in stored.keys() - wanted.keys():
        await ctx.store.delete(key)
    for key, value in wanted.items():
        if stored.get(key) != value:
            await ctx.store.put(key, value)
    return len(wanted)
