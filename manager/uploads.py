"""Resumable chunked uploads into a model folder (docs/console-api.md, "Chunked uploads").

An upload is opened for one file path and total size; its chunks are appended in order (each names the offset
it starts at, so a client that lost an answer asks for the offset and resumes); the last chunk renames the staged
file into place atomically. Staging lives beside the folders under ``<storage_root>/.uploads/<folder id>/``, never
inside the folder, so replicas never see a partial file, and on the same file system, so the final rename is
atomic. The staged state is only files (``<id>.json`` and ``<id>.part``), so any manager sharing the storage root
can take the next chunk; an exclusive ``flock`` on the part refuses two chunks written at once.

Stale uploads (no chunk for ``files.upload_ttl``) are swept when another upload of the folder is opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from common.errors import Conflict, ObjectNotFound, PayloadTooLarge
from common.fileperms import SHARED_FILE_MODE
from manager.folders import resolve_inside

STAGING_DIR = ".uploads"


@dataclasses.dataclass(frozen=True, slots=True)
class Upload:
    id: uuid.UUID
    folder_id: uuid.UUID
    path: str
    size: int
    force: bool

    def to_json(self, offset: int) -> dict[str, object]:
        return {"upload_id": str(self.id), "path": self.path, "size": self.size, "offset": offset,
                "complete": False}


def staging_root(storage_root: Path, folder_id: uuid.UUID) -> Path:
    return storage_root / STAGING_DIR / folder_id.hex


def _paths(staging: Path, upload_id: uuid.UUID) -> tuple[Path, Path]:
    return staging / f"{upload_id.hex}.json", staging / f"{upload_id.hex}.part"


def sweep(staging: Path, ttl: float, now: float) -> None:
    """Delete the uploads of this folder that got no chunk for ``ttl`` seconds."""
    if not staging.is_dir():
        return
    for meta in staging.glob("*.json"):
        part = meta.with_suffix(".part")
        try:
            last = max(meta.stat().st_mtime, part.stat().st_mtime if part.exists() else 0.0)
        except FileNotFoundError:
            continue
        if now - last > ttl:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            with contextlib.suppress(FileNotFoundError):
                meta.unlink()


def open_upload(staging: Path, folder_id: uuid.UUID, rel: PurePosixPath, size: int, force: bool, *,
                max_size: int, max_open: int, ttl: float) -> Upload:
    """Stage a new upload of ``size`` bytes to ``rel`` (checked by the caller); 413 over ``max_size``, 409 when
    ``max_open`` uploads of the folder are already open."""
    if size > max_size:
        raise PayloadTooLarge(f"size: over the upload limit of {max_size} bytes (limits.max_upload_bytes)")
    staging.mkdir(parents=True, exist_ok=True)  # private (umask 077): only the manager reads staged data
    sweep(staging, ttl, time.time())
    if sum(1 for _ in staging.glob("*.json")) >= max_open:
        raise Conflict(f"uploads: {max_open} uploads of this folder are open (files.max_open_uploads); finish or "
                       "cancel one first")
    upload = Upload(uuid.uuid4(), folder_id, str(rel), size, force)
    meta, part = _paths(staging, upload.id)
    with open(part, "xb") as fh:
        os.fchmod(fh.fileno(), SHARED_FILE_MODE)  # renamed into the folder at the end: replicas read it
    meta.write_text(json.dumps({"folder_id": str(folder_id), "path": upload.path, "size": size, "force": force}))
    return upload


def load_upload(staging: Path, folder_id: uuid.UUID, upload_id: uuid.UUID) -> tuple[Upload, int]:
    """The open upload and its current offset; 404 when unknown, finished, cancelled or of another folder."""
    meta, part = _paths(staging, upload_id)
    try:
        data = json.loads(meta.read_text())
        offset = part.stat().st_size
    except (FileNotFoundError, ValueError):
        raise ObjectNotFound(f"upload {upload_id} not found (finished, cancelled or expired)") from None
    if data.get("folder_id") != str(folder_id):
        raise ObjectNotFound(f"upload {upload_id} not found (finished, cancelled or expired)")
    return Upload(upload_id, folder_id, str(data["path"]), int(data["size"]), bool(data["force"])), offset


def cancel_upload(staging: Path, upload: Upload) -> None:
    meta, part = _paths(staging, upload.id)
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    with contextlib.suppress(FileNotFoundError):
        meta.unlink()


async def write_chunk(staging: Path, upload: Upload, offset: int, chunks: AsyncIterator[bytes],
                      max_chunk: int) -> int:
    """Append one chunk that starts at ``offset``; returns the new offset. 409 (with the current offset in the
    problem's ``data``) when ``offset`` is not where the staged data ends, or another chunk is being written;
    413 when the chunk is over ``max_chunk`` or goes past the declared size."""
    _, part = _paths(staging, upload.id)
    try:
        fd = os.open(part, os.O_WRONLY)
    except FileNotFoundError:
        raise ObjectNotFound(f"upload {upload.id} not found (finished, cancelled or expired)") from None
    with os.fdopen(fd, "wb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise Conflict("offset: another chunk of this upload is being written", data={"offset": None}) from None
        current = os.fstat(fh.fileno()).st_size
        if offset != current:
            raise Conflict(f"offset: the upload continues at {current}, not {offset}", data={"offset": current})
        fh.seek(current)
        written = 0
        try:
            async for chunk in chunks:
                written += len(chunk)
                if written > max_chunk:
                    raise PayloadTooLarge(f"chunk over {max_chunk} bytes (files.max_chunk_bytes)")
                if current + written > upload.size:
                    raise PayloadTooLarge(f"chunk goes past the upload's size of {upload.size} bytes")
                fh.write(chunk)
        except BaseException:
            fh.flush()
            fh.truncate(current)  # a chunk counts whole or not at all: the client resends it from `current`
            raise
        fh.flush()
        return current + written


def finish_upload(staging: Path, root: Path, upload: Upload) -> PurePosixPath:
    """Move the complete staged file into place (parents created, atomic on one file system) and forget it."""
    meta, part = _paths(staging, upload.id)
    rel = PurePosixPath(upload.path)
    dest = resolve_inside(root, rel)
    try:
        os.replace(part, dest)
    except FileNotFoundError:  # another request finished it a moment ago
        raise ObjectNotFound(f"upload {upload.id} not found (finished, cancelled or expired)") from None
    except IsADirectoryError:
        raise Conflict(f"path {upload.path!r}: a directory of that name exists") from None
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # the folder is on another file system than the staging dir: copy beside the target, then rename
        tmp = dest.with_name(f".{dest.name}.upload-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(part, tmp)
        os.chmod(tmp, SHARED_FILE_MODE)
        os.replace(tmp, dest)
        part.unlink()
    with contextlib.suppress(FileNotFoundError):
        meta.unlink()
    return rel


def read_staged(staging: Path, upload: Upload, limit: int) -> bytes:
    """The staged bytes (for checking a definition file before it goes into place); at most ``limit``."""
    _, part = _paths(staging, upload.id)
    with open(part, "rb") as fh:
        return fh.read(limit + 1)
