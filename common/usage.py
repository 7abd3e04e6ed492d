"""Gateway usage records: what an app proxy reports to the manager for each request (docs/gateway.md).

Proxies send batches to the manager's signed ``POST /internal/usage`` (:class:`UsageBatch`); the manager writes
them to ``usage_records``, ignoring a ``request_id`` it already has, so a batch resent after a lost answer is not
counted twice.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

MAX_BATCH = 1000  # records per POST /internal/usage


class UsageRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    at: float  # unix time the request arrived
    key_id: uuid.UUID
    user_id: uuid.UUID
    model: str = Field(max_length=64)
    endpoint_id: uuid.UUID | None = None
    route_id: uuid.UUID | None = None
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    ttft_ms: float | None = Field(None, ge=0)  # time to the answer's first byte
    duration_ms: float = Field(0, ge=0)
    status: int = Field(ge=100, le=599)
    estimated: bool = False  # the replica reported no usage: the tokens are the gateway's estimate


class UsageBatch(BaseModel):
    records: list[UsageRecord] = Field(max_length=MAX_BATCH)
