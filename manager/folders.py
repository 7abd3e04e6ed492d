"""Model folders on the storage root: creation, safe paths, streamed uploads.

Path rules (ARCHITECTURE §6, field lessons on archive traversal): relative paths only, no ``..``, no empty or
``.`` components, no NUL/backslash, and the resolved parent must stay inside the folder even if someone placed a
symlink there. Files are written to a temporary name and renamed, which replaces (never follows) a symlink at
the destination.

Modes: folder directories are 0755 and files 0644 whatever the process umask (077, common/fileperms.py). The
replicas that serve a folder run as another, unprivileged uid in the agent's sandbox and must read it; they
reach it through a bind mount of the folder path set up by the agent, not through the 0700 data dir above it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath

from common.errors import InvalidAPIParameters
from common.fileperms import ensure_shared_dir

MAX_PATH_LENGTH = 1024
MAX_PATH_DEPTH = 32


def folder_relpath(folder_id: uuid.UUID) -> str:
    return folder_id.hex


def safe_relative_path(raw: str) -> PurePosixPath:
    """Validate an upload path relative to the folder root; raise 400 naming the path."""
    if not raw or len(raw) > MAX_PATH_LENGTH:
        raise InvalidAPIParameters(f"path: must be 1..{MAX_PATH_LENGTH} characters")
    if "\x00" in raw or "\\" in raw:
        raise InvalidAPIParameters(f"path {raw!r}: NUL and backslash are not allowed")
    if raw.startswith("/"):
        raise InvalidAPIParameters(f"path {raw!r}: absolute paths are not allowed")
    parts = PurePosixPath(raw).parts
    if any(part in ("..", ".", "") for part in raw.split("/")):
        raise InvalidAPIParameters(f"path {raw!r}: '..', '.' and empty components are not allowed")
    if len(parts) > MAX_PATH_DEPTH:
        raise InvalidAPIParameters(f"path {raw!r}: deeper than {MAX_PATH_DEPTH} levels")
    return PurePosixPath(*parts)


def resolve_inside(root: Path, rel: PurePosixPath) -> Path:
    """The destination for ``rel`` under ``root``; creates parent dirs; refuses symlink escapes."""
    real_root = root.resolve()
    dest = real_root.joinpath(*rel.parts)
    parent = dest.parent
    ensure_shared_dir(parent)
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
