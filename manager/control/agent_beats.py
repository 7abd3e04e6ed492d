"""Agent rows for heartbeats without a write per beat: what each agent last reported, and batched
``last_heartbeat`` updates.

At 200 agents beating every 3 s, reading and updating each agent's row on every beat was a third of what the
manager's heartbeat handler cost (bench/control_plane). An agent whose report is unchanged and whose row this
manager saw alive recently only has its beat time queued; :meth:`AgentBeats.flush` writes every queued time in
one statement, once per ``FLUSH_INTERVAL``.

Why this is safe: the leader marks an agent lost only when ``last_heartbeat`` is older than
``agent_heartbeat_timeout``; queued times reach the database within ``FLUSH_INTERVAL``, far inside it. The row is
trusted as alive for at most half the timeout after it was last read, and each flush forgets the agents it finds
not alive, so an agent that was marked lost (it stopped beating for longer than the timeout) is read again, and
put back alive, at its next beat or the one after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.aio import cancel_and_wait
from common.status import AgentStatus
from manager.db.models import Agent

log = logging.getLogger(__name__)
FLUSH_INTERVAL = 1.0  # seconds a beat may wait before its time is written (lost detection waits 15 s by default)
_agents = cast(sa.Table, Agent.__table__)  # declared as a FromClause; a mapped class's table is a Table
BEAT_UPDATE = _agents.update().where(_agents.c.id == sa.bindparam("b_id")).values(last_heartbeat=sa.bindparam("b_at"))


class AgentBeats:
    def __init__(self, db: async_sessionmaker[AsyncSession], heartbeat_timeout: float) -> None:
        self._db = db
        self._trust_for = heartbeat_timeout / 2
        # agent id → (what it reported, monotonic time its row was last read or written as alive)
        self._known: dict[str, tuple[Mapping[str, Any], float]] = {}
        self._pending: dict[str, datetime] = {}  # agent id → newest beat time not yet written
        self._task: asyncio.Task[None] | None = None

    def unchanged(self, agent_id: str, reported: Mapping[str, Any]) -> bool:
        """True when the agent's row is alive and holds ``reported`` (as of a read within the trust window)."""
        known = self._known.get(agent_id)
        return known is not None and known[0] == reported and time.monotonic() - known[1] < self._trust_for

    def confirm(self, agent_id: str, reported: Mapping[str, Any]) -> None:
        """The row was just read or written: alive, holding ``reported``."""
        self._known[agent_id] = (dict(reported), time.monotonic())

    def forget(self, agent_id: str) -> None:
        self._known.pop(agent_id, None)

    def beat(self, agent_id: str, at: datetime) -> None:
        self._pending[agent_id] = at

    async def flush(self) -> None:
        """Write every queued beat time in one statement; on failure they stay queued (newer ones win)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            async with self._db() as db:
                connection = await db.connection()  # Core executemany: one prepared UPDATE for the batch
                # in id order, as every writer of several agent rows should: no deadlock between two batches
                await connection.execute(BEAT_UPDATE, [{"b_id": a, "b_at": batch[a]} for a in sorted(batch)])
                # an agent the leader marked lost meanwhile is read again on its next beat (and put back alive)
                not_alive = (await connection.execute(sa.select(_agents.c.id).where(
                    _agents.c.id.in_(list(batch)), _agents.c.status != AgentStatus.ALIVE))).scalars().all()
                await db.commit()
            for agent_id in not_alive:
                self.forget(agent_id)
        except Exception as exc:  # the database is down: keep them for the next try
            log.warning("cannot record %d agents' heartbeats: %s", len(batch), exc)
            self._pending = {**batch, **self._pending}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agent-beats-flush")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        await self.flush()
