"""Host uids for replicas: each live replica runs as a uid of its own (docs/security.md, "Replica sandbox")."""

from __future__ import annotations

import os
from pathlib import Path

from agent.runtime.base import RuntimeUnavailable


class UidPool:
    """Unprivileged host uids for replicas, one per live replica: ``base .. base + count - 1`` (gid = uid).
    A uid is reused only after its replica ended, so two live replicas never share one."""

    def __init__(self, base: int, count: int):
        self.base, self._count = base, count
        self._used: set[int] = set()

    def take(self) -> int:
        for uid in range(self.base, self.base + self._count):
            if uid not in self._used:
                self._used.add(uid)
                return uid
        raise RuntimeUnavailable(f"all {self._count} replica uids from {self.base} are in use")

    def hold(self, uid: int) -> None:
        self._used.add(uid)

    def release(self, uid: int | None) -> None:
        if uid is not None:
            self._used.discard(uid)


def hand_over(work: Path, launch: Path, uid: int) -> None:
    """Give a replica running as ``uid`` its work and launch dirs (and the launcher and spec in it), both
    runtimes alike. They stay traversable (0755) whatever the agent's umask: bwrap enters the work dir as root
    without CAP_DAC_OVERRIDE before it drops to ``uid``; the kernel dir above them is 0700 on the host."""
    for path in (work, launch, launch / "launcher.py", launch / "spec.json"):
        os.chown(path, uid, uid)
    for path in (work, launch):
        os.chmod(path, 0o755)
