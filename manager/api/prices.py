"""Model prices for the gateway's cost accounting: ``GET /prices``, ``PUT /prices/{model}``,
``DELETE /prices/{model}`` (docs/gateway.md, Prices and budgets).

Superadmins set prices (they apply to every user's usage of that model name). Anyone may read them: admins see
every price, users the prices of the model names of services they may see.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from aiohttp import web
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from common.apikeys import MAX_MODEL_NAME
from common.errors import Forbidden, InvalidAPIParameters, ObjectNotFound
from common.status import UserRole
from manager.api.auth import caller_of
from manager.api.util import json_response, parse_body
from manager.context import CTX
from manager.db.models import Endpoint, ModelPrice
from manager.ownership import Caller, endpoint_visibility

routes = web.RouteTableDef()

MAX_PRICE = 1_000_000.0  # currency units per 1M tokens: far above any real price, bounds a typo


class PriceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_1m: float = Field(ge=0, le=MAX_PRICE, allow_inf_nan=False,
                                validation_alias=AliasChoices("input_per_1m", "input"),
                                description="currency units per 1M input (prompt) tokens")
    output_per_1m: float = Field(ge=0, le=MAX_PRICE, allow_inf_nan=False,
                                 validation_alias=AliasChoices("output_per_1m", "output"),
                                 description="currency units per 1M output (completion) tokens")


class PriceInfo(BaseModel):
    model: str
    input_per_1m: float
    output_per_1m: float
    updated_at: datetime


class PriceList(BaseModel):
    prices: list[PriceInfo]


def _info(row: ModelPrice) -> dict[str, object]:
    updated = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC)
    return PriceInfo(model=row.model, input_per_1m=row.input_per_1m, output_per_1m=row.output_per_1m,
                     updated_at=updated).model_dump(mode="json")


def _model(request: web.Request) -> str:
    model = request.match_info["model"]
    if not 1 <= len(model) <= MAX_MODEL_NAME:
        raise InvalidAPIParameters(f"model: 1 to {MAX_MODEL_NAME} characters")
    return model


def _superadmin(caller: Caller) -> None:
    if caller.role != UserRole.SUPERADMIN:
        raise Forbidden("Only superadmins set model prices (they apply to every user's usage of the model).")


@routes.get("/prices")
async def list_prices(request: web.Request) -> web.Response:
    caller = caller_of(request)
    stmt = sa.select(ModelPrice).order_by(ModelPrice.model)
    if not caller.is_admin:
        stmt = stmt.where(ModelPrice.model.in_(sa.select(Endpoint.name).where(endpoint_visibility(caller))))
    async with request.app[CTX].db() as db:
        rows = (await db.execute(stmt)).scalars().all()
    return json_response({"prices": [_info(r) for r in rows]})


@routes.put("/prices/{model}")
async def set_price(request: web.Request) -> web.Response:
    caller = caller_of(request)
    _superadmin(caller)
    model = _model(request)
    body = await parse_body(request, PriceRequest)
    async with request.app[CTX].db() as db:
        row = await db.get(ModelPrice, model)
        if row is None:
            row = ModelPrice(model=model)
            db.add(row)
        row.input_per_1m, row.output_per_1m = body.input_per_1m, body.output_per_1m
        row.updated_at, row.updated_by = datetime.now(UTC), caller.user_id
        await db.commit()
        return json_response(_info(row))


@routes.delete("/prices/{model}")
async def delete_price(request: web.Request) -> web.Response:
    _superadmin(caller_of(request))
    model = _model(request)
    async with request.app[CTX].db() as db:
        row = await db.get(ModelPrice, model)
        if row is None:
            raise ObjectNotFound(f"model: no price set for {model}")
        await db.delete(row)
        await db.commit()
    return web.Response(status=204)
