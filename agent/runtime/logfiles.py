"""Bounded replica log files: the replica writes straight to files (so it survives an agent restart); the
agent keeps each stream under a size limit with copy-truncate (``stdout.log`` → ``stdout.log.1``) and reads
tails across both."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

MAX_TAIL_BYTES = 1024 * 1024  # a logs request reads at most this much per stream
MAX_ERROR_FILE_BYTES = 64 * 1024  # the launcher's error document is a short JSON object


def read_replica_file(path: Path, max_bytes: int) -> bytes:
    """Read a file in a directory the replica can write: never through a symlink it planted (O_NOFOLLOW),
    only a regular file (not a fifo that would block, not a device), at most ``max_bytes``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def tail_bytes(path: Path, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of the stream (the rotated file first, then the current one)."""
    chunks: list[bytes] = []
    remaining = max_bytes
    for candidate in (path, rotated(path)):
        if remaining <= 0:
            break
        try:
            with open(candidate, "rb") as fp:
                size = fp.seek(0, os.SEEK_END)
                fp.seek(max(0, size - remaining))
                data = fp.read(remaining)
        except OSError:
            continue
        chunks.insert(0, data)
        remaining -= len(data)
    return b"".join(chunks)


def tail_text(path: Path, max_bytes: int) -> str:
    return tail_bytes(path, max_bytes).decode(errors="replace")


def tail_lines(path: Path, lines: int, max_bytes: int = MAX_TAIL_BYTES) -> str:
    if lines <= 0:
        return ""
    data = tail_bytes(path, max_bytes)
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:]).decode(errors="replace")


def copytruncate(path: Path, max_bytes: int) -> bool:
    """When ``path`` exceeds ``max_bytes``, copy it to ``<path>.1`` and truncate it in place (the writer
    holds it with O_APPEND, so it continues at the new end). Lines written during the copy may be lost."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        shutil.copyfile(path, rotated(path))
        os.truncate(path, 0)
    except OSError:
        return False
    return True


class LaunchFiles:
    """What both runtimes read back from the files the launcher writes: its error files and the replica's
    stdout/stderr logs (bounded by copy-truncate). A runtime says where they are with :meth:`_launch_dir` and
    :meth:`_log_dir`, and sets ``_max_log_bytes``."""

    _max_log_bytes: int

    def _launch_dir(self, handle: Any) -> Path:
        raise NotImplementedError

    def _log_dir(self, handle: Any) -> Path:
        raise NotImplementedError

    def launch_error(self, handle: Any) -> dict[str, Any] | None:
        from agent.runtime import launcher

        for name in (launcher.PRESTART_ERROR_FILE, launcher.START_ERROR_FILE):
            path = self._launch_dir(handle) / name
            try:
                data = json.loads(read_replica_file(path, MAX_ERROR_FILE_BYTES))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                return {"type": "start_failed", "message": f"unreadable launcher error file {name}: {exc}"}
            if isinstance(data, dict) and data.get("message"):
                return {"type": str(data.get("type") or "start_failed"), "message": str(data["message"])}
        return None

    def logs(self, handle: Any, tail_lines_: int) -> dict[str, str]:
        base = self._log_dir(handle)
        return {"stdout": tail_lines(base / "stdout.log", tail_lines_),
                "stderr": tail_lines(base / "stderr.log", tail_lines_)}

    def stderr_tail(self, handle: Any, max_bytes: int) -> str:
        return tail_text(self._log_dir(handle) / "stderr.log", max_bytes)

    def housekeep(self, handle: Any) -> None:
        base = self._log_dir(handle)
        for name in ("stdout.log", "stderr.log"):
            copytruncate(base / name, self._max_log_bytes)
