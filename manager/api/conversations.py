"""``/conversations``: the chat page's conversations, stored per user (docs/console-api.md, "Conversations").
Another user's conversation is a 404 (admins: as for services, manager.ownership)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from common.errors import Conflict, InvalidAPIParameters, ObjectNotFound
from manager import conversations as rules
from manager.api.auth import caller_of
from manager.api.console_schemas import (
    Conversation as ConversationBody,
)
from manager.api.console_schemas import (
    ConversationList,
    ConversationSummary,
    NewConversationRequest,
    UpdateConversationRequest,
)
from manager.api.folder_files import content_disposition, query_bool, query_int
from manager.api.util import json_response, parse_body, parse_uuid
from manager.context import CTX
from manager.db.models import Conversation
from manager.ownership import Caller, owner_visibility

routes = web.RouteTableDef()
DEFAULT_PAGE = 50
MAX_PAGE = 200
# attempts at a PATCH whose row another request changed meanwhile (each re-reads and re-applies it)
WRITE_ATTEMPTS = 5


def _summary(conv: Conversation) -> dict[str, Any]:
    return ConversationSummary(id=conv.id, owner=conv.owner_id, title=conv.title, created_at=conv.created_at,
                               updated_at=conv.updated_at, message_count=conv.message_count).model_dump(mode="json")


def _full(conv: Conversation) -> dict[str, Any]:
    return ConversationBody.model_validate({
        "id": conv.id, "owner": conv.owner_id, "title": conv.title, "created_at": conv.created_at,
        "updated_at": conv.updated_at, "message_count": conv.message_count, "models": conv.models,
        "parameters": conv.parameters, "messages": conv.messages}).model_dump(mode="json", exclude_none=False)


async def _load(db: Any, caller: Caller, raw_id: str) -> Conversation:
    conv_id = parse_uuid(raw_id, "conversation_id")
    conv = (await db.execute(sa.select(Conversation).where(
        Conversation.id == conv_id, owner_visibility(caller, Conversation.owner_id)))).scalar_one_or_none()
    if conv is None:
        raise ObjectNotFound(f"conversation {raw_id} not found")
    return conv


@routes.get("/conversations")
async def list_conversations(request: web.Request) -> web.Response:
    """The caller's conversations, most recently updated first (``?all=true``: every one the caller may see)."""
    caller = caller_of(request)
    offset = query_int(request, "offset", 0, 0, 10**9)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    condition = (owner_visibility(caller, Conversation.owner_id) if query_bool(request, "all")
                 else Conversation.owner_id == caller.user_id)
    columns = (Conversation.id, Conversation.owner_id, Conversation.title, Conversation.created_at,
               Conversation.updated_at, Conversation.message_count)
    async with request.app[CTX].db() as db:
        total = (await db.execute(sa.select(sa.func.count()).select_from(Conversation).where(condition))).scalar_one()
        rows = (await db.execute(sa.select(*columns).where(condition)
                                 .order_by(Conversation.updated_at.desc(), Conversation.id)
                                 .offset(offset).limit(limit))).all()
    items = [ConversationSummary(id=r[0], owner=r[1], title=r[2], created_at=r[3], updated_at=r[4],
                                 message_count=r[5]) for r in rows]
    return json_response(ConversationList(items=items, total=total, offset=offset, limit=limit)
                         .model_dump(mode="json"))


@routes.post("/conversations")
async def create_conversation(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, NewConversationRequest)
    limits = ctx.config.conversations
    data = body.model_dump(mode="json")
    rules.check_messages(data["messages"], limits)
    rules.check_stored_size(data["models"], data["parameters"], data["messages"], limits)
    now = datetime.now(UTC)
    async with ctx.db() as db:
        count = (await db.execute(sa.select(sa.func.count()).select_from(Conversation)
                                  .where(Conversation.owner_id == caller.user_id))).scalar_one()
        if count >= limits.max_per_user:
            raise Conflict(f"conversations: at most {limits.max_per_user} per user (conversations.max_per_user); "
                           "delete old ones first")
        conv = Conversation(id=uuid.uuid4(), owner_id=caller.user_id, title=body.title, models=data["models"],
                            parameters=data["parameters"], messages=data["messages"],
                            message_count=len(data["messages"]), version=0, created_at=now, updated_at=now)
        db.add(conv)
        await db.commit()
        return json_response(_full(conv), status=201)


@routes.get("/conversations/{conversation_id}")
async def get_conversation(request: web.Request) -> web.Response:
    async with request.app[CTX].db() as db:
        conv = await _load(db, caller_of(request), request.match_info["conversation_id"])
        return json_response(_full(conv))


def _apply(conv: Conversation, data: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """The columns a PATCH sets, from the row as read and the request's given fields."""
    values: dict[str, Any] = {}
    for key in ("title", "models", "parameters"):
        if key in fields and data[key] is not None:
            values[key] = data[key]
    messages = list(conv.messages)
    if "messages" in fields and data["messages"] is not None:
        messages = data["messages"]
    if "append" in fields and data["append"] is not None:
        messages = messages + data["append"]
    if messages != conv.messages:
        values["messages"] = messages
        values["message_count"] = len(messages)
    return values


@routes.patch("/conversations/{conversation_id}")
async def update_conversation(request: web.Request) -> web.Response:
    """Rename, replace the models, parameters or messages, or append messages (applied to the latest version)."""
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, UpdateConversationRequest)
    data = body.model_dump(mode="json")
    fields = set(body.model_fields_set)
    limits = ctx.config.conversations
    for key in ("messages", "append"):
        if data[key] is not None:
            rules.check_messages(data[key], limits, key)
    for _ in range(WRITE_ATTEMPTS):
        async with ctx.db() as db:
            conv = await _load(db, caller, request.match_info["conversation_id"])
            values = _apply(conv, data, fields)
            messages = values.get("messages", conv.messages)
            rules.check_messages(messages, limits)
            rules.check_stored_size(values.get("models", conv.models), values.get("parameters", conv.parameters),
                                    messages, limits)
            values |= {"version": conv.version + 1, "updated_at": datetime.now(UTC)}
            result = await db.execute(sa.update(Conversation).where(
                Conversation.id == conv.id, Conversation.version == conv.version).values(**values))
            await db.commit()
            if getattr(result, "rowcount", 0) == 1:
                await db.refresh(conv)
                return json_response(_full(conv))
    raise Conflict("the conversation kept changing while this request applied; retry")


@routes.delete("/conversations/{conversation_id}")
async def delete_conversation(request: web.Request) -> web.Response:
    async with request.app[CTX].db() as db:
        conv = await _load(db, caller_of(request), request.match_info["conversation_id"])
        await db.execute(sa.delete(Conversation).where(Conversation.id == conv.id))
        await db.commit()
    return web.Response(status=204)


@routes.get("/conversations/{conversation_id}/export")
async def export_conversation(request: web.Request) -> web.Response:
    """The whole conversation as a download: ``?format=json`` (the GET body) or ``markdown``."""
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "markdown"):
        raise InvalidAPIParameters("format: must be json or markdown")
    async with request.app[CTX].db() as db:
        conv = _full(await _load(db, caller_of(request), request.match_info["conversation_id"]))
    if fmt == "json":
        text, ctype, ext = json.dumps(conv, indent=2, ensure_ascii=False), "application/json", "json"
    else:
        text, ctype, ext = rules.to_markdown(conv), "text/markdown", "md"
    return web.Response(text=text, content_type=ctype, charset="utf-8", headers={
        "Content-Disposition": content_disposition(rules.export_filename(conv["title"], ext)),
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
