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
