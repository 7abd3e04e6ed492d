"""Background tasks with progress events, streamed to clients as SSE (``GET /events/background-task``).

Wire format (what Backend.AI's client reads): ``event: bgtask_updated`` with data
``{task_id, message, current_progress, total_progress}``, then one of ``bgtask_done``, ``bgtask_failed``,
``bgtask_cancelled``, then ``event: server_close`` so the client does not reconnect. Tasks live in the memory of
the manager process that started them (a client must follow a task on the same manager); finished tasks are kept
for ``RETENTION`` seconds so a late listener still gets the whole story.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from common.aio import wait_event

TERMINAL = frozenset({"bgtask_done", "bgtask_failed", "bgtask_cancelled"})
RETENTION = 3600.0  # seconds a finished task stays replayable
MAX_TASKS = 1024  # bounds memory: oldest finished tasks are dropped first
MAX_EVENTS_PER_TASK = 256


@dataclasses.dataclass
class BackgroundTask:
    id: uuid.UUID
    owner: uuid.UUID
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    finished_at: float | None = None
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def emit(self, event: str, message: str, current: int = 0, total: int = 0, **extra: Any) -> None:
        if self.finished_at is not None:
            return
        data = {"task_id": str(self.id), "message": message, "current_progress": current,
                "total_progress": total, **extra}
        if len(self.events) >= MAX_EVENTS_PER_TASK and event not in TERMINAL:
            return
        self.events.append((event, data))
        if event in TERMINAL:
            self.finished_at = time.monotonic()
        self.changed.set()
        self.changed = asyncio.Event()


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: dict[uuid.UUID, BackgroundTask] = {}

    def start(self, owner: uuid.UUID, work: Callable[[BackgroundTask], Awaitable[None]]) -> BackgroundTask:
        self._gc()
        task = BackgroundTask(uuid.uuid4(), owner)

        async def run() -> None:
            try:
                await work(task)
            except asyncio.CancelledError:
                task.emit("bgtask_cancelled", "the task was cancelled (manager shutting down?)")
                raise
            except Exception as exc:  # reported to the client, not raised into the loop
                task.emit("bgtask_failed", f"{type(exc).__name__}: {exc}")
            else:
                task.emit("bgtask_done", "done")

        task.runner = asyncio.create_task(run(), name=f"bgtask-{task.id}")
        self._tasks[task.id] = task
        return task

    def get(self, task_id: uuid.UUID) -> BackgroundTask | None:
        return self._tasks.get(task_id)

    async def follow(self, task: BackgroundTask, keepalive: float = 15.0) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield every event (past ones first) until the terminal one; ``("", {})`` marks a keep-alive tick."""
        sent = 0
        while True:
            waiter = task.changed
            while sent < len(task.events):
                event = task.events[sent]
                sent += 1
                yield event
                if event[0] in TERMINAL:
                    return
            if not await wait_event(waiter, keepalive):
                yield "", {}

    async def close(self) -> None:
        for task in self._tasks.values():
            if task.runner is not None and not task.runner.done():
                task.runner.cancel()
        await asyncio.gather(*(t.runner for t in self._tasks.values() if t.runner), return_exceptions=True)

    def _gc(self) -> None:
        now = time.monotonic()
        for task_id, task in list(self._tasks.items()):
            if task.finished_at is not None and now - task.finished_at > RETENTION:
                del self._tasks[task_id]
        if len(self._tasks) >= MAX_TASKS:
            finished = sorted((t for t in self._tasks.values() if t.finished_at is not None),
                              key=lambda t: t.finished_at or 0)
            for task in finished[: len(self._tasks) - MAX_TASKS + 1]:
                del self._tasks[task.id]
