"""The folder explorer's routes under ``/folders/{name}/``: list, download, mkdir, move, delete, save a small
file, check a definition, and resumable chunked uploads (docs/console-api.md). The file operations themselves
are :mod:`manager.folder_tree` and :mod:`manager.uploads`; folders are found with ``find_folder`` (other
users' folders are a 404)."""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from aiohttp import web

from common.definitions import parse_service_definition
from common.errors import InvalidAPIParameters, ModelDefinitionInvalid, PayloadTooLarge
from manager import folder_tree, uploads
from manager.api.auth import caller_of
from manager.api.console_schemas import (
    DirListing,
    MkdirRequest,
    MoveRequest,
    OpenUploadRequest,
    UploadStatus,
    ValidateDefinitionRequest,
    ValidateDefinitionResponse,
)
from manager.api.util import VERIFIED_BODY, json_response, parse_body, parse_uuid, read_limited
from manager.context import CTX
from manager.db.models import ModelFolder
from manager.definition_check import DefinitionKind, check_definition, kind_of
from manager.endpoints import find_folder
from manager.folders import safe_relative_path

routes = web.RouteTableDef()
DEFAULT_PAGE = 200
MAX_PAGE = 1000
READ_CHUNK = 1024 * 1024


async def _folder(request: web.Request) -> tuple[ModelFolder, Path]:
    ctx = request.app[CTX]
    async with ctx.db() as db:
        folder = await find_folder(db, caller_of(request), request.match_info["name"])
    root = Path(ctx.config.manager.storage_root) / folder.host_relpath
    if not root.is_dir():
        raise InvalidAPIParameters(f"folder {folder.name!r}: its storage directory is missing")
    return folder, root


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidAPIParameters(f"{name}: must be an integer from {low} to {high}")
    return int(raw)


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false")
    if raw not in ("true", "false"):
        raise InvalidAPIParameters(f"{name}: must be true or false")
    return raw == "true"


def _required_path(request: web.Request) -> PurePosixPath:
    raw = request.query.get("path")
    if raw is None:
        raise InvalidAPIParameters("path: required (a query parameter)")
    return safe_relative_path(raw)


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in RFC 5987 form (no header injection)."""
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._- ") else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


def definition_errors(path: str, data: bytes) -> list[dict[str, object]]:
    """The errors of a definition file being saved (empty for any other file)."""
    kind = kind_of(path)
    if kind is None:
        return []
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return [{"field": "(encoding)", "reason": "not UTF-8 text", "line": None}]
    return [p.to_json() for p in check_definition(kind, text)]


def refuse_if_invalid(path: str, data: bytes) -> None:
    errors = definition_errors(path, data)
    if errors:
        detail = "; ".join(f"{e['field']}: {e['reason']}" + (f" (line {e['line']})" if e["line"] else "")
                           for e in errors)
        raise ModelDefinitionInvalid(f"{path}: {detail} (force=true stores it anyway)", data={"errors": errors})


@routes.get("/folders/{name}/files")
async def list_directory(request: web.Request) -> web.Response:
    _, root = await _folder(request)
    rel = folder_tree.optional_path(request.query.get("path"))
    offset = query_int(request, "offset", 0, 0, 10**9)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    max_entries = request.app[CTX].config.files.max_listed_entries
    listing = await asyncio.to_thread(folder_tree.list_dir, root, rel, offset, limit, max_entries)
    return json_response(DirListing(path=listing.path, entries=[e.to_json() for e in listing.entries],
                                    total=listing.total, offset=offset, limit=limit,
                                    truncated=listing.truncated).model_dump(mode="json"))


@routes.get("/folders/{name}/download")
async def download(request: web.Request) -> web.StreamResponse:
    _, root = await _folder(request)
    rel = _required_path(request)
    fd, size = folder_tree.open_file(root, rel)
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream", "Content-Disposition": content_disposition(rel.name),
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
        response.content_length = size
        await response.prepare(request)
        remaining = size if request.method != "HEAD" else 0  # aiohttp would send a HEAD's body as written
        while remaining > 0:
            chunk = await asyncio.to_thread(os.read, fd, min(READ_CHUNK, remaining))
            if not chunk:  # the file shrank meanwhile: the client sees a short body and fails
                break
            remaining -= len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(fd)


@routes.post("/folders/{name}/mkdir")
async def mkdir(request: web.Request) -> web.Response:
    _, root = await _folder(request)
    body = await parse_body(request, MkdirRequest)
    rel = safe_relative_path(body.path)
    folder_tree.make_dir(root, rel, body.exist_ok, body.parents)
    return json_response({"path": str(rel)}, status=201)


@routes.post("/folders/{name}/move-file")
async def move_file(request: web.Request) -> web.Response:
    _, root = await _folder(request)
    body = await parse_body(request, MoveRequest)
    src, dst = safe_relative_path(body.src, "src"), safe_relative_path(body.dst, "dst")
    await asyncio.to_thread(folder_tree.move, root, src, dst, body.overwrite)
    return json_response({"path": str(dst)})


@routes.delete("/folders/{name}/files")
async def delete_path(request: web.Request) -> web.Response:
    _, root = await _folder(request)
    rel = _required_path(request)
    await asyncio.to_thread(folder_tree.delete, root, rel, query_bool(request, "recursive"))
    return web.Response(status=204)


@routes.put("/folders/{name}/content")
async def save_content(request: web.Request) -> web.Response:
    """Save a small file in one request (the definition editor); definition files are checked first."""
    _, root = await _folder(request)
    rel = _required_path(request)
    force = query_bool(request, "force")
    limit = request.app[CTX].config.files.max_content_bytes
    data = request.get(VERIFIED_BODY)
    if data is None:
        data = await read_limited(request, limit)
    elif len(data) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes (files.max_content_bytes)")
    if not force:
        refuse_if_invalid(str(rel), data)
    folder_tree.save_file(root, rel, data)
    return json_response({"path": str(rel), "size": len(data)})


@routes.post("/folders/{name}/definitions/validate")
async def validate_definition(request: web.Request) -> web.Response:
    await _folder(request)
    body = await parse_body(request, ValidateDefinitionRequest)
    kind = kind_of(body.path)
    if kind is None:
        raise InvalidAPIParameters("path: must name model-definition.yaml, model-definition.yml or "
                                   "service-definition.toml")
    problems = check_definition(kind, body.content)
    definition = (parse_service_definition(body.content).model_dump(mode="json")
                  if kind is DefinitionKind.SERVICE and not problems else None)
    return json_response(ValidateDefinitionResponse(kind=kind.value, valid=not problems, definition=definition,
                                                    errors=[p.to_json() for p in problems]).model_dump(mode="json"))


# -- chunked uploads ---------------------------------------------------------------------------------------------

def _staging(request: web.Request, folder: ModelFolder) -> Path:
    return uploads.staging_root(Path(request.app[CTX].config.manager.storage_root), folder.id)


def _finish(request: web.Request, folder: ModelFolder, root: Path, upload: uploads.Upload) -> web.Response:
    staging = _staging(request, folder)
    if not upload.force and kind_of(upload.path) is not None:
        data = uploads.read_staged(staging, upload, request.app[CTX].config.files.max_content_bytes)
        try:
            refuse_if_invalid(upload.path, data)
        except ModelDefinitionInvalid:
            uploads.cancel_upload(staging, upload)  # small: the client sends it again, fixed or with force
            raise
    rel = uploads.finish_upload(staging, root, upload)
    return json_response(UploadStatus(path=str(rel), size=upload.size, offset=upload.size,
                                      complete=True).model_dump(mode="json"))


@routes.post("/folders/{name}/uploads")
async def open_upload(request: web.Request) -> web.Response:
    folder, root = await _folder(request)
    body = await parse_body(request, OpenUploadRequest)
    rel = safe_relative_path(body.path)
    where = folder_tree.locate(root, rel)
    if where.is_dir() and not where.is_symlink():
        raise InvalidAPIParameters(f"path {str(rel)!r}: a directory of that name exists")
    files = request.app[CTX].config.files
    upload = uploads.open_upload(
        _staging(request, folder), folder.id, rel, body.size, body.force,
        max_size=request.app[CTX].config.limits.max_upload_bytes, max_open=files.max_open_uploads,
        ttl=files.upload_ttl)
    if body.size == 0:
        response = _finish(request, folder, root, upload)
        response.set_status(201)
        return response
    status = upload.to_json(0) | {"max_chunk_bytes": files.max_chunk_bytes}
    return json_response(UploadStatus.model_validate(status).model_dump(mode="json"), status=201)


async def _load(request: web.Request) -> tuple[ModelFolder, Path, uploads.Upload, int]:
    folder, root = await _folder(request)
    upload_id = parse_uuid(request.match_info["upload_id"], "upload_id")
    upload, offset = uploads.load_upload(_staging(request, folder), folder.id, upload_id)
    return folder, root, upload, offset


@routes.get("/folders/{name}/uploads/{upload_id}")
async def upload_status(request: web.Request) -> web.Response:
    _, _, upload, offset = await _load(request)
    status = upload.to_json(offset) | {"max_chunk_bytes": request.app[CTX].config.files.max_chunk_bytes}
    return json_response(UploadStatus.model_validate(status).model_dump(mode="json"))


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    verified = request.get(VERIFIED_BODY)
    if verified is not None:  # auth read it to check X-Moorage-Content-SHA256
        yield verified
        return
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        yield chunk


@routes.put("/folders/{name}/uploads/{upload_id}")
async def upload_chunk(request: web.Request) -> web.Response:
    """One chunk: the raw body, starting at ``?offset=``; the last one moves the file into place."""
    folder, root, upload, _ = await _load(request)
    offset = query_int(request, "offset", -1, 0, upload.size)
    if offset < 0:
        raise InvalidAPIParameters("offset: required (a query parameter: where this chunk starts)")
    max_chunk = request.app[CTX].config.files.max_chunk_bytes
    if request.content_length is not None and request.content_length > max_chunk:
        raise PayloadTooLarge(f"chunk over {max_chunk} bytes (files.max_chunk_bytes)")
    staging = _staging(request, folder)
    new_offset = await uploads.write_chunk(staging, upload, offset, _body_chunks(request), max_chunk)
    if new_offset == upload.size:
        return _finish(request, folder, root, upload)
    return json_response(UploadStatus.model_validate(upload.to_json(new_offset)).model_dump(mode="json"))


@routes.delete("/folders/{name}/uploads/{upload_id}")
async def cancel_upload(request: web.Request) -> web.Response:
    folder, _, upload, _ = await _load(request)
    uploads.cancel_upload(_staging(request, folder), upload)
    return web.Response(status=204)
