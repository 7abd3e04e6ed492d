"""Gateway API keys as the manager publishes them to the app proxies (docs/gateway.md).

A key is ``sk-`` followed by 43 URL-safe characters (256 random bits). The manager stores only its SHA-256;
each active key is published under ``APIKEYS_PREFIX + <sha256 hex>`` as :class:`ApiKeyRecord` JSON, the way
route tables are (``common.store.ROUTES_PREFIX``). Revoking deletes the key from the store, so every proxy that
watches the prefix refuses it within the watch latency (well under a second).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

APIKEYS_PREFIX = "/moorage/apikeys/"
KEY_PREFIX = "sk-"
KEY_BYTES = 32  # 256 bits: guessing is hopeless, so a fast hash (SHA-256) is the right one (no key stretching)
MAX_KEY_LENGTH = 128  # a presented key longer than this is refused before hashing
MAX_ALLOWED_MODELS = 64
MAX_MODEL_NAME = 64  # = endpoints.name
MAX_METADATA_ENTRIES = 16
MAX_METADATA_VALUE = 256


class PriorityClass(enum.StrEnum):
    LOW = "low"
    STANDARD = "standard"
    HIGH = "high"


def month_of(at: float) -> str:
    """The calendar month (UTC) of a unix time, as ``YYYY-MM``: the period of a key's budget."""
    return time.strftime("%Y-%m", time.gmtime(at))


def spent_now(record: ApiKeyRecord, now: float) -> float:
    """What the key has spent in the month of ``now``: the published figure, or 0 once a new month began (pure)."""
    return record.spent if record.spent_month == month_of(now) else 0.0


def over_budget(record: ApiKeyRecord, now: float) -> bool:
    return record.budget is not None and spent_now(record, now) >= record.budget


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> str:
    """SHA-256 hex of the key: what the manager stores and the store key under which proxies find it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_hint(key: str) -> str:
    """What lists show of a key (its first 7 characters): enough to tell keys apart, useless to an attacker."""
    return key[:7] + "…"


ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME)]


class ApiKeyRecord(BaseModel):
    """One active key as the proxies see it. Limits: None means unlimited."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    key_id: uuid.UUID
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = ""
    owner_id: uuid.UUID
    # The owner may use every endpoint (a superadmin); otherwise only the endpoints they own.
    owner_all: bool = False
    allowed_models: tuple[ModelName, ...] = Field(default=(), max_length=MAX_ALLOWED_MODELS)  # empty: all
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_parallel: int | None = Field(None, ge=1)
    expires_at: float | None = None  # unix time
    priority: PriorityClass = PriorityClass.STANDARD
    # Budget in currency units per calendar month (UTC) and what the key spent in ``spent_month`` ("2026-12"),
    # as the manager last published it (docs/gateway.md, Prices and budgets). None: no budget.
    budget: float | None = Field(None, ge=0)
    spent: float = Field(0.0, ge=0)
    spent_month: str = ""
