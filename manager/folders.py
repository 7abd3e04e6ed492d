"""Model folders on the storage root: creation, safe paths, streamed uploads.

Path rules (against path traversal; docs/architecture.md, Model folders and definitions): relative paths only,
no ``..``, no empty or ``.`` components, no NUL/backslash, and the resolved parent must stay inside the folder
even if someone placed a symlink there. Files are written to a temporary name and renamed, which replaces (never
follows) a symlink at the destination.

Modes: folder directories are 0755 and files 0644 whatever the process umask (077, common/fileperms.py). The
replicas that serve a folder run as another, unprivileged uid in the agent's sandbox and must read it; they
reach it through a bind mount of the folder path set up by the agent, not through the 0700 data dir above it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath

from common.errors import Conflict, InvalidAPIParameters
from common.fileperms import ensure_shared_dir

MAX_PATH_LENGTH = 1024
MAX_PATH_DEPTH = 32
# bytes per name in UTF-8: file systems allow 255, and uploads first write ".<name>.upload-<8 hex>" (16 more)
MAX_NAME_BYTES = 200


def folder_relpath(folder_id: uuid.UUID) -> str:
    return folder_id.hex


def relative_path_problem(raw: str) -> str | None:
    """Why ``raw`` is not a safe path relative to a folder root, or None."""
    if not raw or len(raw) > MAX_PATH_LENGTH:
        return f"must be 1..{MAX_PATH_LENGTH} characters"
    if "\x00" in raw or "\\" in raw:
        return "NUL and backslash are not allowed"
    if raw.startswith("/"):
        return "absolute paths are not allowed"
    parts = raw.split("/")
    if any(part in ("..", ".", "") for part in parts):
        return "'..', '.' and empty components are not allowed"
    if len(parts) > MAX_PATH_DEPTH:
        return f"deeper than {MAX_PATH_DEPTH} levels"
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in parts):
        return f"a name is longer than {MAX_NAME_BYTES} bytes"
    return None


def safe_relative_path(raw: str, field: str = "path") -> PurePosixPath:
    """Validate a path relative to the folder root; raise 400 naming ``field`` and the path."""
    problem = relative_path_problem(raw)
    if problem is not None:
        raise InvalidAPIParameters(f"{field} {raw[:100]!r}: {problem}")
    return PurePosixPath(*PurePosixPath(raw).parts)


def resolve_inside(root: Path, rel: PurePosixPath) -> Path:
    """The destination for ``rel`` under ``root``; creates parent dirs; refuses symlink escapes (400) and a file
    where a directory must go or the reverse (409)."""
    real_root = root.resolve()
    dest = real_root.joinpath(*rel.parts)
    parent = dest.parent
    try:
        ensure_shared_dir(parent)
    except (FileExistsError, NotADirectoryError):
        raise Conflict(f"path {str(rel)!r}: a file is in the way of its directory") from None
    if not parent.is_dir():
        raise Conflict(f"path {str(rel)!r}: a file is in the way of its directory")
    if dest.is_dir() and not dest.is_symlink():
        raise Conflict(f"path {str(rel)!r}: a directory of that name exists") from None
    real_parent = parent.resolve()
    if real_parent != real_root and real_root not in real_parent.parents:
        raise InvalidAPIParameters(f"path {str(rel)!r}: escapes the folder through a symlink")
    return real_parent / dest.name


def list_files(root: Path, limit: int = 1000) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    real_root = root.resolve()
    for dirpath, _dirnames, filenames in os.walk(real_root):
        for name in sorted(filenames):
            full = Path(dirpath) / name
            try:
                size = full.lstat().st_size
            except OSError:
                continue
            out.append({"path": str(full.relative_to(real_root)), "size": size})
            if len(out) >= limit:
                return out
    return out
