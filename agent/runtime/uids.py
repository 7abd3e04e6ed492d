"""Host uids for replicas: each live replica runs as a uid of its own (docs/security.md, "Replica sandbox")."""

from __future__ import annotations

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
