"""Process-group helpers over ``/proc`` (Linux): who is left in a replica's group, and pid identity."""

from __future__ import annotations

import os
import signal


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fp:
            raw = fp.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22); with the pid it identifies a process."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``."""
    members: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields and len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(name))
    return members


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the group; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def is_running(pid: int, ticks: int | None = None) -> bool:
    """True when ``pid`` exists, is not a zombie and (if given) started at ``ticks``."""
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return False
    return ticks is None or start_ticks(pid) == ticks


def children(pid: int) -> list[int]:
    """Live child pids of ``pid``, oldest first."""
    found: list[tuple[int, int]] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields and len(fields) > 19 and fields[0] != "Z" and fields[1] == str(pid):
            found.append((int(fields[19]), int(name)))
    return [p for _, p in sorted(found)]


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def namespace_members(namespace: str) -> list[int]:
    """Live pids (as seen from here) whose pid namespace is ``namespace``."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit() and pid_namespace(int(name)) == namespace:
            fields = _stat_fields(name)
            if fields and fields[0] != "Z":
                members.append(int(name))
    return members
