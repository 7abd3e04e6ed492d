"""A tiny signed client for tests (the product's CLI has its own; this one exposes raw responses)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from manager.hmac_auth import sign_request


class APIClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, access_key: str, secret_key: str):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.access_key = access_key
        self.secret_key = secret_key
        self.host = urlsplit(self.base_url).netloc

    async def request(self, method: str, path: str, body: Any = None, *, data: Any = None,
                      content_type: str | None = None, now: datetime | None = None,
                      secret_key: str | None = None, access_key: str | None = None) -> tuple[int, Any]:
        ct = content_type or ("application/json" if body is not None else "text/plain")
        headers = sign_request(access_key or self.access_key, secret_key or self.secret_key, method, path,
                               self.host, ct, now=now)
        payload = json.dumps(body).encode() if body is not None else data
        if data is not None and not isinstance(data, (bytes, str)):
            headers.pop("Content-Type")  # aiohttp sets multipart/form-data with its boundary
        async with self.session.request(method, self.base_url + path, data=payload, headers=headers) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw) if raw else None
            except json.JSONDecodeError:
                return resp.status, raw.decode(errors="replace")
