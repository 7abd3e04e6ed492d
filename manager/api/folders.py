"""``/folders``: model folders (vfolders of usage mode ``model``) and streamed multipart uploads."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import sqlalchemy as sa
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from sqlalchemy.exc import IntegrityError

from common.errors import Conflict, InvalidAPIParameters, PayloadTooLarge
from common.fileperms import SHARED_FILE_MODE, ensure_shared_dir
from manager.api.auth import caller_of
from manager.api.schemas import NewFolderRequest
from manager.api.util import json_response, parse_body
from manager.context import CTX
from manager.db.models import ModelFolder, User
from manager.endpoints import find_folder
from manager.folders import folder_relpath, list_files, resolve_inside, safe_relative_path
from manager.ownership import owner_visibility
from manager.uploads import staging_root

routes = web.RouteTableDef()
USAGE_MODES = ("model", "general", "data")  # as NewFolderRequest accepts them
UPLOAD_CHUNK = 1024 * 1024


@contextlib.asynccontextmanager
async def _multipart_errors() -> AsyncIterator[None]:
    """aiohttp's multipart parser reports bad input as assorted exceptions: all of them are a 400."""
    try:
        yield
    except (ValueError, AssertionError, RuntimeError, LookupError, HttpProcessingError) as exc:
        raise InvalidAPIParameters(f"body: malformed multipart request ({str(exc)[:200]})") from None


def _folder_json(folder: ModelFolder, owner_email: str | None = None) -> dict[str, object]:
    """Backend.AI's vfolder fields, plus (our extension) ``owner_email`` where the caller's listing knows it."""
    out: dict[str, object] = {
        "id": str(folder.id), "name": folder.name, "usage_mode": folder.usage_mode, "host": "local",
        "ownership_type": "user", "permission": "rw", "user": str(folder.owner_id), "status": "ready",
        "created_at": folder.created_at.isoformat() if folder.created_at else None,
    }
    if owner_email is not None:
        out["owner_email"] = owner_email
    return out


def _root(request: web.Request, folder: ModelFolder) -> Path:
    return Path(request.app[CTX].config.manager.storage_root) / folder.host_relpath


@routes.post("/folders")
async def create_folder(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, NewFolderRequest)
    folder_id = uuid.uuid4()
    folder = ModelFolder(id=folder_id, name=body.name, owner_id=caller.user_id,
                         host_relpath=folder_relpath(folder_id), usage_mode=body.usage_mode)
    async with ctx.db() as db:
        db.add(folder)
        try:
            await db.commit()
        except IntegrityError:
            raise Conflict(f"name: a folder named {body.name!r} already exists") from None
    ensure_shared_dir(_root(request, folder))  # 0755: see manager.folders
    return json_response(_folder_json(folder), status=201)


@routes.get("/folders")
async def list_folders(request: web.Request) -> web.Response:
    """The caller's folders; ``?all=true``: every folder the caller may act for (admins: others' too, with
    ``user`` naming the owner); ``?usage_mode=`` keeps one mode (model, general, data)."""
    caller = caller_of(request)
    query = sa.select(ModelFolder, User.email).join(User, User.id == ModelFolder.owner_id).where(
        owner_visibility(caller, ModelFolder.owner_id) if request.query.get("all") == "true"
        else ModelFolder.owner_id == caller.user_id)
    mode = request.query.get("usage_mode")
    if mode is not None:
        if mode not in USAGE_MODES:
            raise InvalidAPIParameters(f"usage_mode: must be one of {', '.join(USAGE_MODES)}")
        query = query.where(ModelFolder.usage_mode == mode)
    async with request.app[CTX].db() as db:
        rows = (await db.execute(query.order_by(ModelFolder.created_at))).all()
        return json_response([_folder_json(folder, email) for folder, email in rows])


@routes.get("/folders/{name}")
async def folder_info(request: web.Request) -> web.Response:
    async with request.app[CTX].db() as db:
        folder = await find_folder(db, caller_of(request), request.match_info["name"])
        owner = await db.get(User, folder.owner_id)
    info = _folder_json(folder, owner.email if owner is not None else None)
    info["files"] = list_files(_root(request, folder))
    return json_response(info)


@routes.delete("/folders/{name}")
async def delete_folder(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    async with ctx.db() as db:
        folder = await find_folder(db, caller_of(request), request.match_info["name"])
        root = _root(request, folder)
        await db.delete(folder)
        await db.commit()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(staging_root(Path(ctx.config.manager.storage_root), folder.id), ignore_errors=True)  # uploads
    return web.Response(status=204)


@routes.post("/folders/{name}/files")
async def upload_files(request: web.Request) -> web.Response:
    """Multipart upload: each part's filename is the destination path relative to the folder root."""
    ctx = request.app[CTX]
    limits = ctx.config.limits
    async with ctx.db() as db:
        folder = await find_folder(db, caller_of(request), request.match_info["name"])
    root = _root(request, folder)
    ensure_shared_dir(root)
    if not request.content_type.startswith("multipart/"):
        raise InvalidAPIParameters("body: expected multipart/form-data with one part per file")
    if request.content_length is not None and request.content_length > limits.max_upload_bytes:
        raise PayloadTooLarge(f"upload over {limits.max_upload_bytes} bytes")
    async with _multipart_errors():
        reader = await request.multipart()
    written: list[dict[str, object]] = []
    total = 0
    while True:
        async with _multipart_errors():
            part = await reader.next()
            filename = getattr(part, "filename", None) if part is not None else None
        if part is None:
            break
        if len(written) >= limits.max_upload_files:
            raise InvalidAPIParameters(f"files: at most {limits.max_upload_files} files per upload")
        if not filename or not isinstance(part, BodyPartReader):  # a nested multipart part has no filename
            raise InvalidAPIParameters("file: every part needs a filename (the path inside the folder)")
        # aiohttp (and some other clients) percent-encode the filename in Content-Disposition.
        rel = safe_relative_path(unquote(filename))
        dest = resolve_inside(root, rel)
        tmp = dest.with_name(f".{dest.name}.upload-{uuid.uuid4().hex[:8]}")
        size = 0
        try:
            with open(tmp, "wb") as fh:
                os.fchmod(fh.fileno(), SHARED_FILE_MODE)  # replicas read it as another uid (manager.folders)
                while True:
                    async with _multipart_errors():
                        chunk = await part.read_chunk(UPLOAD_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    total += len(chunk)
                    if total > limits.max_upload_bytes:
                        raise PayloadTooLarge(f"upload over {limits.max_upload_bytes} bytes")
                    fh.write(chunk)
            try:
                os.replace(tmp, dest)
            except IsADirectoryError:  # a directory appeared there meanwhile
                raise Conflict(f"path {str(rel)!r}: a directory of that name exists") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append({"path": str(rel), "size": size})
    return json_response({"files": written}, status=201)
