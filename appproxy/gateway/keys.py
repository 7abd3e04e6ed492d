"""The API keys the manager publishes (``common.apikeys.APIKEYS_PREFIX``), watched like route tables, and how a
request presents one: ``Authorization: Bearer sk-…`` or ``X-API-Key: sk-…``.

A presented key is hashed (SHA-256) and looked up by its hash, so the lookup time does not depend on how much of
a stored key the presented one matches; the found record's hash is compared once more with
``hmac.compare_digest``. A deleted (revoked) key is gone from the cache as soon as its watch event arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Mapping

import pydantic

from appproxy.gateway.errors import OpenAIError
from common.aio import cancel_and_wait
from common.apikeys import APIKEYS_PREFIX, KEY_PREFIX, MAX_KEY_LENGTH, ApiKeyRecord, hash_key
from common.store import KVStore, WatchEvent

log = logging.getLogger(__name__)


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request carries; 401 when there is none."""
    value = headers.get("X-API-Key")
    if value is None:
        auth = headers.get("Authorization", "")
        scheme, _, rest = auth.partition(" ")
        if scheme.lower() == "bearer":
            value = rest
    value = (value or "").strip()
    if not value:
        raise OpenAIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer sk-…' or "
                               "'X-API-Key: sk-…'.", code="invalid_api_key")
    return value


class KeyCache:
    RESUBSCRIBE_MIN = 0.5  # seconds, doubled after each failure up to RESUBSCRIBE_MAX
    RESUBSCRIBE_MAX = 5.0

    def __init__(self, store: KVStore, prefix: str = APIKEYS_PREFIX) -> None:
        self._store = store
        self._prefix = prefix
        self._by_hash: dict[str, ApiKeyRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, headers: Mapping[str, str], now: float | None = None) -> ApiKeyRecord:
        """The record of the presented key; 401 (OpenAI's ``invalid_api_key``) when unknown, revoked or
        expired."""
        key = presented_key(headers)
        record = None
        if len(key) <= MAX_KEY_LENGTH and key.startswith(KEY_PREFIX):
            digest = hash_key(key)
            found = self._by_hash.get(digest)
            if found is not None and hmac.compare_digest(found.key_hash, digest):
                record = found
        if record is None:
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if record.expires_at is not None and record.expires_at <= (time.time() if now is None else now):
            raise OpenAIError(401, "The API key has expired.", code="invalid_api_key")
        return record

    # -- applying watch events -------------------------------------------------------------------------------
    def _parse(self, key: str, value: str | None) -> ApiKeyRecord | None:
        if value is None:
            return None
        try:
            record = ApiKeyRecord.model_validate_json(value)
        except pydantic.ValidationError:
            log.error("invalid API key record under %s…; ignored", key[:len(self._prefix) + 8])
            return None
        if key[len(self._prefix):] != record.key_hash:
            log.error("API key record under %s… names another hash; ignored", key[:len(self._prefix) + 8])
            return None
        return record

    def apply(self, event: WatchEvent) -> None:
        if event.type == "reset":
            records = (self._parse(k, v) for k, v in (event.items or {}).items() if k.startswith(self._prefix))
            self._by_hash = {r.key_hash: r for r in records if r is not None}
        elif event.type == "put" and event.key.startswith(self._prefix):
            record = self._parse(event.key, event.value)
            if record is None:  # an unreadable update must not leave the old limits (or a revoked key) in force
                self._by_hash.pop(event.key[len(self._prefix):], None)
            else:
                self._by_hash[record.key_hash] = record
        elif event.type == "delete":
            self._by_hash.pop(event.key[len(self._prefix):], None)

    # -- the watch loop --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-key-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        delay = self.RESUBSCRIBE_MIN
        while True:
            try:
                events = self._store.watch_prefix(self._prefix)
                try:
                    async for event in events:
                        self.apply(event)
                        if event.type == "reset":
                            self.ready.set()
                            delay = self.RESUBSCRIBE_MIN
                finally:
                    aclose = getattr(events, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any store failure: keep the last keys, re-subscribe
                log.warning("API key watch failed (%s: %s); keeping the last known keys, re-subscribing in %.1fs",
                            type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.RESUBSCRIBE_MAX)
