"""The folder explorer's file operations inside one model folder: list, mkdir, move, delete, open, save.

Every path comes from a client and goes through :func:`manager.folders.safe_relative_path` (no ``..``, no absolute
path, no NUL, bounded length); then the resolved location must stay inside the folder even when a symlink was
planted there (docs/security.md). Operations never follow a symlink named by the path itself: a symlink is
listed as such, moved or deleted as a link, and never downloaded. New directories are 0755 and files 0644, as in
:mod:`manager.folders`, because replicas read the folder as another uid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import shutil
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from common.errors import Conflict, InvalidAPIParameters, ObjectNotFound
from common.fileperms import SHARED_FILE_MODE, ensure_shared_dir
from manager.folders import resolve_inside, safe_relative_path

# temporary names of uploads in progress (manager/api/folders.py, save_file below): hidden from listings
_UPLOAD_TEMP = re.compile(r"^\..+\.upload-[0-9a-f]{8}$")


class EntryType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    name: str
    type: EntryType
    size: int
    mtime: datetime

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type.value, "size": self.size, "mtime": self.mtime.isoformat()}


@dataclasses.dataclass(frozen=True, slots=True)
class Listing:
    path: str
    entries: list[Entry]
    total: int
    truncated: bool  # the directory holds more than the listing read (files.max_listed_entries)


def optional_path(raw: str | None, field: str = "path") -> PurePosixPath:
    """A directory path where empty, ``.`` or ``/`` mean the folder root; otherwise a safe relative path (one
    trailing slash allowed, as in ``a/b/``)."""
    if raw is None or raw in ("", ".", "/"):
        return PurePosixPath()
    return safe_relative_path(raw[:-1] if raw.endswith("/") else raw, field)


def _type_of(mode: int) -> EntryType:
    if stat.S_ISLNK(mode):
        return EntryType.SYMLINK
    if stat.S_ISDIR(mode):
        return EntryType.DIR
    if stat.S_ISREG(mode):
        return EntryType.FILE
    return EntryType.OTHER


def _inside(real_root: Path, candidate: Path) -> bool:
    return candidate == real_root or real_root in candidate.parents


def locate(root: Path, rel: PurePosixPath, field: str = "path") -> Path:
    """The location of ``rel`` (which may not exist) whose parent, symlinks resolved, is inside the folder; the
    last component is not resolved, so a symlink there is the link itself. 400 naming ``field`` on an escape."""
    real_root = root.resolve()
    if not rel.parts:
        return real_root
    parent = real_root.joinpath(*rel.parts[:-1]).resolve()
    if not _inside(real_root, parent):
        raise InvalidAPIParameters(f"{field} {str(rel)!r}: escapes the folder through a symlink")
    return parent / rel.parts[-1]


def _lstat(path: Path, rel: PurePosixPath, field: str) -> os.stat_result:
    try:
        return path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        raise ObjectNotFound(f"{field} {str(rel)!r}: no such file or directory") from None


def list_dir(root: Path, rel: PurePosixPath, offset: int, limit: int, max_entries: int) -> Listing:
    """One page of a directory, directories first then by name; at most ``max_entries`` are read."""
    where = locate(root, rel)
    st = _lstat(where, rel, "path")
    if stat.S_ISLNK(st.st_mode):
        raise InvalidAPIParameters(f"path {str(rel)!r}: a symlink (links are not followed)")
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidAPIParameters(f"path {str(rel)!r}: not a directory")
    entries: list[Entry] = []
    truncated = False
    with os.scandir(where) as it:
        for item in it:
            if _UPLOAD_TEMP.match(item.name):
                continue
            if len(entries) >= max_entries:
                truncated = True
                break
            try:
                est = item.stat(follow_symlinks=False)
            except OSError:
                continue
            kind = _type_of(est.st_mode)
            entries.append(Entry(item.name, kind, est.st_size if kind == EntryType.FILE else 0,
                                 datetime.fromtimestamp(est.st_mtime, UTC)))
    entries.sort(key=lambda e: (e.type != EntryType.DIR, e.name))
    return Listing(str(rel) if rel.parts else "", entries[offset:offset + limit], len(entries), truncated)


def make_dir(root: Path, rel: PurePosixPath, exist_ok: bool, parents: bool = True) -> None:
    """``mkdir [-p]`` inside the folder; 409 when a file is in the way, or the directory exists and not exist_ok;
    404 when a parent is missing and not ``parents``."""
    if not rel.parts:
        raise InvalidAPIParameters("path: the folder root exists already")
    real_root = root.resolve()
    node = real_root
    for i, part in enumerate(rel.parts):
        node = node / part
        try:
            st = node.lstat()
        except FileNotFoundError:
            if not parents and i < len(rel.parts) - 1:
                raise ObjectNotFound(f"path {str(rel)!r}: its parent directory does not exist (parents=true "
                                     "creates it)") from None
            ensure_shared_dir(real_root.joinpath(*rel.parts))
            break
        if not stat.S_ISDIR(st.st_mode):
            what = "a symlink (links are not followed)" if stat.S_ISLNK(st.st_mode) else "a file"
            raise Conflict(f"path {str(PurePosixPath(*rel.parts[:i + 1]))!r}: {what} is in the way")
    else:
        if not exist_ok:
            raise Conflict(f"path {str(rel)!r}: the directory exists")
    if not _inside(real_root, real_root.joinpath(*rel.parts).resolve()):  # pragma: no cover - lstat saw no links
        raise InvalidAPIParameters(f"path {str(rel)!r}: escapes the folder through a symlink")


def move(root: Path, src: PurePosixPath, dst: PurePosixPath, overwrite: bool) -> None:
    """Rename or move a file, directory or link inside the folder; parents of ``dst`` are created. An existing
    ``dst`` is a 409 unless ``overwrite`` and both are files."""
    if not src.parts or not dst.parts:
        raise InvalidAPIParameters("src, dst: the folder root cannot be moved or replaced")
    source = locate(root, src, "src")
    st = _lstat(source, src, "src")
    if stat.S_ISDIR(st.st_mode) and (dst == src or src in dst.parents):
        raise InvalidAPIParameters(f"dst {str(dst)!r}: a directory cannot move inside itself")
    target = locate(root, dst, "dst")
    try:
        existing = target.lstat()
    except FileNotFoundError:
        existing = None
    except NotADirectoryError:
        raise Conflict(f"dst {str(dst)!r}: a file is in the way of its directory") from None
    if existing is not None:
        both_files = stat.S_ISREG(existing.st_mode) and not stat.S_ISDIR(st.st_mode)
        if not (overwrite and both_files):
            raise Conflict(f"dst {str(dst)!r}: exists" + ("" if both_files else " (only a file may replace a file)"))
    try:
        ensure_shared_dir(target.parent)
    except (FileExistsError, NotADirectoryError):
        raise Conflict(f"dst {str(dst)!r}: a file is in the way of its directory") from None
    target = locate(root, dst, "dst")  # re-checked: the parents exist now
    os.replace(source, target)


def delete(root: Path, rel: PurePosixPath, recursive: bool) -> None:
    """Delete a file, link or directory (a non-empty one only when ``recursive``); never follows a link."""
    if not rel.parts:
        raise InvalidAPIParameters("path: the folder root cannot be deleted here (DELETE /folders/{name})")
    where = locate(root, rel)
    st = _lstat(where, rel, "path")
    if not stat.S_ISDIR(st.st_mode):
        where.unlink()
        return
    if recursive:
        shutil.rmtree(where)
        return
    try:
        where.rmdir()
    except OSError:
        raise Conflict(f"path {str(rel)!r}: the directory is not empty (recursive=true deletes it)") from None


def open_file(root: Path, rel: PurePosixPath) -> tuple[int, int]:
    """(file descriptor, size) of a regular file inside the folder, opened without following a final symlink."""
    if not rel.parts:
        raise InvalidAPIParameters("path: a file path is required")
    where = locate(root, rel)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ObjectNotFound(f"path {str(rel)!r}: no such file") from None
    except OSError:  # ELOOP: a symlink; ENOTDIR; EACCES
        raise InvalidAPIParameters(f"path {str(rel)!r}: not a regular file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidAPIParameters(f"path {str(rel)!r}: not a regular file")
    return fd, st.st_size


def save_file(root: Path, rel: PurePosixPath, data: bytes) -> None:
    """Write ``data`` to ``rel`` atomically (temporary name, then rename), mode 0644; parents are created."""
    dest = resolve_inside(root, rel)
    tmp = dest.with_name(f".{dest.name}.upload-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            os.fchmod(fh.fileno(), SHARED_FILE_MODE)
            fh.write(data)
        try:
            os.replace(tmp, dest)
        except IsADirectoryError:
            raise Conflict(f"path {str(rel)!r}: a directory of that name exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
