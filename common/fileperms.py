"""File modes of what Moorage keeps at rest: private to the daemon's uid, except model folders.

Every daemon (``moorage up`` and its ``--detach`` child, ``moorage manager|agent|appproxy``, ``python -m agent``,
``python -m appproxy``) starts with :func:`private_umask`, so whatever it creates later (the SQLite database and
its WAL/SHM/journal, secrets.json, cluster.json, logs, state files) is 0600 / 0700 without each writer having to
remember. Paths that *must* be readable by another uid (model folders under the storage root, which the sandboxed
replicas read) set their modes explicitly with :func:`ensure_shared_dir` and :data:`SHARED_FILE_MODE`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
SHARED_DIR_MODE = 0o755
SHARED_FILE_MODE = 0o644


def private_umask() -> int:
    """Set the process umask to 077 (files 0600, dirs 0700 by default); returns the previous one."""
    return os.umask(PRIVATE_UMASK)


def drop_group_and_other(path: Path, log: logging.Logger, what: str) -> bool:
    """Remove group/other permission bits from ``path`` (never adds any); log and return True when it changed.
    A missing path is not an error. Symlinks are left alone (their target is not ours to change)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False
    new = mode & ~0o077
    os.chmod(path, new)
    log.warning("%s %s was readable by other users: mode %04o -> %04o", what, path, mode, new)
    return True


def ensure_shared_dir(path: Path) -> None:
    """``mkdir -p`` whose new directories are 0755 whatever the umask (existing ones are left as they are)."""
    missing: list[Path] = []
    node = path
    while not node.exists():
        missing.append(node)
        if node.parent == node:
            break
        node = node.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        os.chmod(directory, SHARED_DIR_MODE)
