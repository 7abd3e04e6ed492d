"""A FAKE manager for the ``moorage`` CLI tests: an aiohttp app, run in a background thread with its own event
loop, that verifies each request's Backend.AI HMAC signature with ``manager.hmac_auth`` (``parse_authorization``
+ ``verify``, over the raw path with its query string, the Host header and the bare content type) and records
what it received. It implements just enough of ``/services`` and ``/folders`` for the CLI; the real manager is
covered by end-to-end tests elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from manager.hmac_auth import bare_content_type, parse_authorization, verify

ACCESS_KEY = "AKIATESTCLIKEY000001"
SECRET_KEY = "cli-test-secret-key-0123456789"
OTHER_KEYS = {"AKENVKEY": "env-secret", "AKFLAGKEY": "flag-secret", "AKFILEKEY": "file-secret"}


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": f"https://api.backend.ai/probs/{title.lower().replace(' ', '-')}",
                            "title": title, **extra}
    if detail is not None:
        body["detail"] = detail
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


@dataclass
class Recorded:
    method: str
    path_qs: str
    content_type: str
    access_key: str
    headers: dict[str, str]
    body: Any = None


@dataclass
class FakeManager:
    url: str = ""
    keys: dict[str, str] = field(default_factory=lambda: {ACCESS_KEY: SECRET_KEY, **OTHER_KEYS})
    requests: list[Recorded] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    upload_dir: Path | None = None
    token: str = "eyJhbGciOiJIUzI1NiJ9.fake.token"
    overrides: dict[tuple[str, str], web.Response] = field(default_factory=dict)

    def last(self, method: str | None = None) -> Recorded:
        for rec in reversed(self.requests):
            if method is None or rec.method == method:
                return rec
        raise AssertionError(f"no {method} request recorded")

    def add_service(self, name: str, **info: Any) -> dict[str, Any]:
        service_id = info.pop("endpoint_id", None) or str(uuid.uuid4())
        record = {
            "endpoint_id": service_id, "model_id": str(uuid.uuid4()), "extra_mounts": [], "name": name,
            "replicas": 1, "desired_session_count": 1, "model_definition_path": None, "active_routes": [],
            "service_endpoint": f"http://127.0.0.1:20000/{name}", "is_public": False,
            "runtime_variant": "custom", **info,
        }
        self.services[service_id] = record
        return record

    # -- app ------------------------------------------------------------------------------------------------

    @web.middleware
    async def auth(self, request: web.Request, handler):
        header = request.headers.get("Authorization", "")
        parsed = parse_authorization(header)
        if parsed is None:
            return problem(401, "Auth Failed", "missing or malformed Authorization header")
        alg, access_key, sig = parsed
        secret = self.keys.get(access_key)
        date = request.headers.get("Date", "")
        version = request.headers.get("X-BackendAI-Version", "")
        content_type = request.headers.get("Content-Type", "")
        if secret is None or not verify(secret, request.method, request.raw_path, date, request.host,
                                        content_type, version, alg, sig,
                                        request.headers.get("X-Moorage-Content-SHA256")):
            return problem(401, "Auth Failed", "signature mismatch")
        rec = Recorded(request.method, request.raw_path, content_type, access_key, dict(request.headers))
        if bare_content_type(content_type) == "application/json":
            rec.body = json.loads(await request.read())
        elif request.can_read_body and bare_content_type(content_type) != "multipart/form-data":
            rec.body = await request.read()
        self.requests.append(rec)
        override = self.overrides.get((request.method, request.path))
        if override is not None:
            return override
        return await handler(request)

    def _service(self, request: web.Request) -> dict[str, Any]:
        found = self.services.get(request.match_info["service_id"])
        if found is None:
            raise LookupError
        return found

    async def list_services(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        items = [
            {"id": s["endpoint_id"], "name": s["name"], "replicas": s["replicas"],
             "desired_session_count": s["replicas"], "active_route_count": len(s.get("active_routes", [])),
             "service_endpoint": s["service_endpoint"], "is_public": s["is_public"],
             **({"status": s["status"]} if "status" in s else {})}
            for s in self.services.values() if name is None or s["name"] == name
        ]
        return web.json_response(items)

    async def create_service(self, request: web.Request) -> web.Response:
        body = self.last("POST").body
        record = self.add_service(body["name"], replicas=body["replicas"],
                                  desired_session_count=body["replicas"],
                                  is_public=body.get("open_to_public", False),
                                  runtime_variant=body.get("runtime_variant", "custom"))
        return web.json_response(record, status=201)

    async def get_service(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self._service(request))
        except LookupError:
            return problem(404, "Object Not Found", "endpoint not found", error_code="endpoint_not-found")

    async def update_service(self, request: web.Request) -> web.Response:
        """PATCH: the given fields replace the record's; the answer is the record plus ``changed`` (none)."""
        try:
            service = self._service(request)
        except LookupError:
            return problem(404, "Object Not Found", "endpoint not found", error_code="endpoint_not-found")
        service.update(self.last("PATCH").body)
        return web.json_response({**service, "changed": []})

    async def delete_service(self, request: web.Request) -> web.Response:
        try:
            self._service(request)
        except LookupError:
            return problem(404, "Object Not Found", "endpoint not found")
        del self.services[request.match_info["service_id"]]
        return web.json_response({"success": True})

    async def scale_service(self, request: web.Request) -> web.Response:
        try:
            service = self._service(request)
        except LookupError:
            return problem(404, "Object Not Found", "endpoint not found")
        to = self.last("POST").body["to"]
        current = len(service.get("active_routes", []))
        service["replicas"] = to
        return web.json_response({"current_route_count": current, "target_count": to})

    async def mint_token(self, request: web.Request) -> web.Response:
        try:
            self._service(request)
        except LookupError:
            return problem(404, "Object Not Found", "endpoint not found")
        return web.json_response({"token": self.token})

    async def list_folders(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.folders.values()))

    async def create_folder(self, request: web.Request) -> web.Response:
        body = self.last("POST").body
        if body["name"] in {f["name"] for f in self.folders.values()}:
            return problem(409, "Conflict", f"a folder named {body['name']} already exists")
        folder = {"id": str(uuid.uuid4()), "name": body["name"], "usage_mode": body["usage_mode"],
                  "host": "local"}
        self.folders[folder["id"]] = folder
        return web.json_response(folder, status=201)

    async def upload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if bare_content_type(request.headers.get("Content-Type")) != "multipart/form-data":
            return problem(400, "Bad Request", "expected multipart/form-data")
        reader = await request.multipart()
        received: dict[str, dict[str, Any]] = self.uploads.setdefault(name, {})
        listing = []
        while (part := await reader.next()) is not None:
            assert part.name == "file", part.name
            dest = unquote(part.filename)  # the CLI percent-encodes filenames, like aiohttp's client
            digest = hashlib.sha256()
            size = 0
            target = (self.upload_dir / name / dest) if self.upload_dir else None
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = target.open("wb")
            try:
                while chunk := await part.read_chunk(64 * 1024):
                    digest.update(chunk)
                    size += len(chunk)
                    if target is not None:
                        handle.write(chunk)
            finally:
                if target is not None:
                    handle.close()
            received[dest] = {"size": size, "sha256": digest.hexdigest()}
            listing.append({"path": dest, "size": size})
        return web.json_response({"files": listing})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        app.router.add_get("/services", self.list_services)
        app.router.add_post("/services", self.create_service)
        app.router.add_get("/services/{service_id}", self.get_service)
        app.router.add_patch("/services/{service_id}", self.update_service)
        app.router.add_delete("/services/{service_id}", self.delete_service)
        app.router.add_post("/services/{service_id}/scale", self.scale_service)
        app.router.add_post("/services/{service_id}/token", self.mint_token)
        app.router.add_get("/folders", self.list_folders)
        app.router.add_post("/folders", self.create_folder)
        app.router.add_post("/folders/{name}/files", self.upload)
        return app


class ServerThread:
    """Runs an aiohttp app on 127.0.0.1 in a daemon thread with its own event loop (the CLI is synchronous)."""

    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-manager", daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _start(self) -> None:
        # A short shutdown timeout: after an early error answer to an upload, aiohttp may linger up to 10 s
        # reading the unread request body before it lets the connection go.
        self.runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # a started site has a server

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
