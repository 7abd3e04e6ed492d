"""Gateway API keys: ``POST/GET /api-keys``, ``PATCH/DELETE /api-keys/{key_id}`` (docs/gateway.md).

A user creates keys for themselves; an admin for any user they may act for (``owner_id``,
:func:`manager.ownership.can_act_for`). The key is in the creation answer only; the database keeps its SHA-256.
Each change is published to the app proxies at once (:mod:`manager.apikeys`); a key of another user reads as
"not found".
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.apikeys import (
    MAX_ALLOWED_MODELS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_VALUE,
    ModelName,
    PriorityClass,
    hash_key,
    key_hint,
    new_key,
)
from common.errors import InvalidAPIParameters, ObjectNotFound, ServiceUnavailable
from manager.api.auth import caller_of
from manager.api.util import json_response, parse_body, parse_uuid
from manager.apikeys import aware, defaults_of, effective, publish_key
from manager.context import CTX
from manager.db.models import ApiKey, UsageRecordRow, User, UserKeyDefaults
from manager.durations import parse_duration
from manager.ownership import can_act_for, owner_visibility

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_RPM = 1_000_000  # far above any one GPU fleet; a bound so arithmetic and Redis counters stay small
MAX_TPM = 10_000_000_000
MAX_PARALLEL = 100_000
MAX_BUDGET = 1e12
MAX_KEY_LIFETIME = timedelta(days=3650)
MAX_KEYS_LISTED = 1000  # per answer, newest first


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_ENTRIES:
        raise ValueError(f"at most {MAX_METADATA_ENTRIES} entries")
    for k, v in value.items():
        if not 1 <= len(k) <= 64 or len(v) > MAX_METADATA_VALUE:
            raise ValueError(f"keys of 1 to 64 characters, values of at most {MAX_METADATA_VALUE}")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4096)

    name: str | None = Field(None, min_length=1, max_length=64)
    allowed_models: list[ModelName] | None = Field(None, max_length=MAX_ALLOWED_MODELS,
                                                   description="model names the key may use; empty: every model "
                                                               "its owner may use")
    rpm: Annotated[int, Field(ge=1, le=MAX_RPM)] | None = Field(None, description="requests per minute")
    tpm: Annotated[int, Field(ge=1, le=MAX_TPM)] | None = Field(None, description="tokens per minute")
    max_parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL)] | None = None
    budget: Annotated[float, Field(ge=0, le=MAX_BUDGET)] | None = Field(
        None, description="currency units per calendar month (UTC), at the model prices (GET /prices); over it the "
                    "gateway answers 429 budget_exceeded")
    expires_in: str | None = Field(None, max_length=32, description="lifetime: seconds or 30m, 12h, 30d, 1yr")
    expires_at: datetime | None = None
    priority: PriorityClass | None = None
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _check_metadata(value)


class NewApiKeyRequest(_Body):
    name: str = Field(min_length=1, max_length=64)
    owner_id: uuid.UUID | None = Field(None, description="admins: create the key for this user")


class UpdateApiKeyRequest(_Body):
    """Only the fields sent change; ``null`` clears a limit (unlimited) or the expiry."""


class ApiKeyInfo(BaseModel):
    id: uuid.UUID
    name: str
    owner_id: uuid.UUID
    hint: str = Field(description="the key's first characters")
    allowed_models: list[str]
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    budget: float | None
    expires_at: datetime | None
    priority: PriorityClass = Field(description="the key's own class; standard when it inherits (see effective)")
    metadata: dict[str, Any]
    created_at: datetime
    revoked_at: datetime | None
    effective: dict[str, Any] = Field(default_factory=dict, description=(
        "rpm, tpm, max_parallel, budget and priority as the gateway applies them: the key's own value, else its "
        "owner's key defaults (PUT /users/{user_id}/key-defaults)"))
    last_used_at: datetime | None = Field(None, description="the latest request recorded for the key (lists only)")
    owner_email: str | None = Field(None, description="the owner's e-mail (lists only)")


class NewApiKeyResponse(ApiKeyInfo):
    key: str = Field(description="the key itself: shown this once, never again")


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyInfo]


async def _publish(ctx: Any, db: Any, row: ApiKey, what: str) -> None:
    """Publish the change to the app proxies; 503 (the change itself is saved) when the store cannot be reached,
    so that a client retries rather than believe, say, a revocation already reached every proxy."""
    try:
        await publish_key(ctx, db, row)
    except Exception as exc:  # noqa: BLE001 - etcd down or refusing: the database already holds the change
        log.warning("API key %s %s but not published: %s", row.id, what, exc)
        raise ServiceUnavailable(f"The API key was {what} but the app proxies could not be told yet; retry the "
                                 f"request (it is idempotent) or it takes effect at the next manager start.",
                                 headers={"Retry-After": "2"}) from None


def _info(key: ApiKey, defaults: UserKeyDefaults | None = None, last_used: datetime | None = None,
          owner_email: str | None = None) -> dict[str, Any]:
    return ApiKeyInfo(id=key.id, name=key.name, owner_id=key.owner_id, hint=key.hint,
                      allowed_models=list(key.allowed_models or []), rpm=key.rpm, tpm=key.tpm,
                      max_parallel=key.max_parallel, budget=key.budget, expires_at=aware(key.expires_at),
                      priority=key.priority or PriorityClass.STANDARD, metadata=dict(key.meta or {}),
                      created_at=aware(key.created_at), revoked_at=aware(key.revoked_at),
                      effective=effective(key, defaults), last_used_at=aware(last_used),
                      owner_email=owner_email).model_dump(mode="json")


def _expiry(body: _Body, now: datetime) -> tuple[bool, datetime | None]:
    """(whether the body sets the expiry, the new expiry); 400 naming the field when it is not in the future."""
    sent = body.model_fields_set
    if "expires_in" in sent and "expires_at" in sent:
        raise InvalidAPIParameters("expires_in: give either expires_in or expires_at, not both")
    if "expires_in" in sent:
        if body.expires_in is None:
            return True, None
        try:
            seconds = parse_duration(body.expires_in)
        except ValueError as exc:
            raise InvalidAPIParameters(f"expires_in: {exc}") from None
        if seconds > MAX_KEY_LIFETIME.total_seconds():
            raise InvalidAPIParameters(f"expires_in: at most {MAX_KEY_LIFETIME.days} days")
        return True, now + timedelta(seconds=seconds)
    if "expires_at" in sent:
        if body.expires_at is None:
            return True, None
        at = aware(body.expires_at)
        assert at is not None
        if at <= now:
            raise InvalidAPIParameters("expires_at: must lie in the future")
        if at - now > MAX_KEY_LIFETIME:
            raise InvalidAPIParameters(f"expires_at: at most {MAX_KEY_LIFETIME.days} days ahead")
        return True, at
    return False, None


LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "budget")


@routes.post("/api-keys")
async def create_api_key(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, NewApiKeyRequest)
    now = datetime.now(UTC)
    _, expires_at = _expiry(body, now)
    owner_id = body.owner_id or caller.user_id
    key = new_key()
    async with ctx.db() as db:
        if not await can_act_for(db, caller, owner_id):
            raise ObjectNotFound(f"owner_id: user {owner_id} not found")
        row = ApiKey(id=uuid.uuid4(), owner_id=owner_id, name=body.name, key_hash=hash_key(key), hint=key_hint(key),
                     allowed_models=list(dict.fromkeys(body.allowed_models or [])), rpm=body.rpm, tpm=body.tpm,
                     max_parallel=body.max_parallel, budget=body.budget, expires_at=expires_at,
                     priority=body.priority, meta=body.metadata or {}, created_at=now)  # None: inherit
        db.add(row)
        await db.commit()
        await _publish(ctx, db, row, "created")
        info = _info(row, await db.get(UserKeyDefaults, owner_id))
    return json_response({**info, "key": key}, status=201)


@routes.get("/api-keys")
async def list_api_keys(request: web.Request) -> web.Response:
    """The caller's keys; admins with ``?all=true``: every key of the users they may act for."""
    caller = caller_of(request)
    everyone = request.query.get("all", "false").lower() == "true"
    condition = owner_visibility(caller, ApiKey.owner_id) if everyone else ApiKey.owner_id == caller.user_id
    async with request.app[CTX].db() as db:
        rows = (await db.execute(sa.select(ApiKey, User.email).join(User, User.id == ApiKey.owner_id)
                                 .where(condition).order_by(ApiKey.created_at.desc()).limit(MAX_KEYS_LISTED))).all()
        defaults = await defaults_of(db, {k.owner_id for k, _ in rows})
        last_used = await _last_used(db, [k.id for k, _ in rows])
        return json_response({"api_keys": [_info(k, defaults.get(k.owner_id), last_used.get(k.id), email)
                                           for k, email in rows]})


async def _last_used(db: Any, key_ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    """The time of each key's latest usage record (one indexed aggregate over at most MAX_KEYS_LISTED keys)."""
    if not key_ids:
        return {}
    rows = await db.execute(sa.select(UsageRecordRow.key_id, sa.func.max(UsageRecordRow.at))
                            .where(UsageRecordRow.key_id.in_(key_ids)).group_by(UsageRecordRow.key_id))
    return {key_id: at for key_id, at in rows if at is not None}


async def _load(db: Any, request: web.Request) -> ApiKey:
    key_id = parse_uuid(request.match_info["key_id"], "key_id")
    row: ApiKey | None = await db.get(ApiKey, key_id)
    if row is None or not await can_act_for(db, caller_of(request), row.owner_id):
        raise ObjectNotFound(f"API key {key_id} not found")
    return row


@routes.patch("/api-keys/{key_id}")
async def update_api_key(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, UpdateApiKeyRequest)
    sets_expiry, expires_at = _expiry(body, datetime.now(UTC))
    sent = body.model_fields_set
    async with ctx.db() as db:
        row = await _load(db, request)
        if row.revoked_at is not None:
            raise InvalidAPIParameters(f"key_id: API key {row.id} is revoked; create a new one")
        if "name" in sent:
            if body.name is None:
                raise InvalidAPIParameters("name: may not be null")
            row.name = body.name
        if "allowed_models" in sent:
            row.allowed_models = list(dict.fromkeys(body.allowed_models or []))
        for field in LIMIT_FIELDS:
            if field in sent:
                setattr(row, field, getattr(body, field))
        if "priority" in sent:
            row.priority = body.priority  # null: inherit the owner's default
        if "metadata" in sent:
            row.meta = body.metadata or {}
        if sets_expiry:
            row.expires_at = expires_at
        await db.commit()
        await _publish(ctx, db, row, "updated")
        return json_response(_info(row, await db.get(UserKeyDefaults, row.owner_id)))


@routes.delete("/api-keys/{key_id}")
async def revoke_api_key(request: web.Request) -> web.Response:
    """Revoke (idempotent): the key is refused by every app proxy from now on; its row stays for usage records."""
    ctx = request.app[CTX]
    async with ctx.db() as db:
        row = await _load(db, request)
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            await db.commit()
        await _publish(ctx, db, row, "revoked")  # removes it from the store (again, if a first attempt failed)
        return json_response(_info(row, await db.get(UserKeyDefaults, row.owner_id)))
