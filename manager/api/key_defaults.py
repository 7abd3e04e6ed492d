"""Per-user key defaults: ``GET /users/{user_id}/key-defaults`` and ``PUT /users/{user_id}/key-defaults``
(docs/gateway.md, Per-user defaults).

An admin sets, for a user they may act for, the rpm, tpm, max parallel requests, monthly budget and priority
class that the user's keys inherit when they have no value of their own. The change is applied to every active
key of the user at once (republished to the app proxies). Users read their own defaults; anyone else's read as
404, like every object of another user.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from common.apikeys import PriorityClass
from common.errors import Forbidden, ObjectNotFound, ServiceUnavailable
from manager.api.api_keys import MAX_BUDGET, MAX_PARALLEL, MAX_RPM, MAX_TPM
from manager.api.auth import caller_of
from manager.api.util import json_response, parse_body, parse_uuid
from manager.apikeys import publish_user_keys
from manager.context import CTX
from manager.db.models import User, UserKeyDefaults
from manager.ownership import can_act_for

routes = web.RouteTableDef()


class KeyDefaults(BaseModel):
    """``null`` (or left out): no default for that field."""

    model_config = ConfigDict(extra="forbid")

    rpm: Annotated[int, Field(ge=1, le=MAX_RPM, strict=True)] | None = Field(None, description="requests per minute")
    tpm: Annotated[int, Field(ge=1, le=MAX_TPM, strict=True)] | None = Field(None, description="tokens per minute")
    max_parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL, strict=True)] | None = None
    budget: Annotated[float, Field(ge=0, le=MAX_BUDGET, allow_inf_nan=False)] | None = Field(
        None, description="currency units per calendar month (UTC), per key")
    priority: PriorityClass | None = None


class KeyDefaultsInfo(KeyDefaults):
    user_id: uuid.UUID


def _info(user_id: uuid.UUID, row: UserKeyDefaults | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if row is not None:
        values = {f: getattr(row, f) for f in ("rpm", "tpm", "max_parallel", "budget", "priority")}
    return KeyDefaultsInfo(user_id=user_id, **values).model_dump(mode="json")


async def _user(db: Any, request: web.Request) -> uuid.UUID:
    user_id = parse_uuid(request.match_info["user_id"], "user_id")
    caller = caller_of(request)
    if await db.get(User, user_id) is None or not await can_act_for(db, caller, user_id):
        raise ObjectNotFound(f"user_id: user {user_id} not found")
    return user_id


@routes.get("/users/{user_id}/key-defaults")
async def get_key_defaults(request: web.Request) -> web.Response:
    async with request.app[CTX].db() as db:
        user_id = await _user(db, request)
        return json_response(_info(user_id, await db.get(UserKeyDefaults, user_id)))


@routes.put("/users/{user_id}/key-defaults")
async def put_key_defaults(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, KeyDefaults)
    async with ctx.db() as db:
        user_id = await _user(db, request)
        if not caller.is_admin:
            raise Forbidden("Only admins set a user's key defaults.")
        row = await db.get(UserKeyDefaults, user_id)
        if row is None:
            row = UserKeyDefaults(user_id=user_id)
            db.add(row)
        row.rpm, row.tpm, row.max_parallel, row.budget = body.rpm, body.tpm, body.max_parallel, body.budget
        row.priority = body.priority.value if body.priority is not None else None
        await db.commit()
        try:
            await publish_user_keys(ctx, db, user_id)
        except Exception:  # noqa: BLE001 - the store is down: saved, published at the next change or start
            raise ServiceUnavailable("The defaults were saved but the app proxies could not be told yet; retry the "
                                     "request (it is idempotent).", headers={"Retry-After": "2"}) from None
        return json_response(_info(user_id, row))
