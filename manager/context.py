"""The manager's runtime context: everything handlers and loops share, built and torn down by cleanup_ctx."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import socket
import uuid

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from common.replay import ReplayCache
from common.signing import SignedClient
from common.store import KVStore
from manager.bgtasks import BackgroundTasks
from manager.config import ManagerConfig
from manager.control.agent_beats import AgentBeats
from manager.control.publish_soon import PublishSoon
from manager.secretbox import SecretBox


def new_manager_id() -> str:
    """Names this manager process in the leader key and in wake-ups: host, pid and a random suffix."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(2)}"


class NoCache(dict[str, str | None]):
    """A ``published`` cache that remembers nothing, for followers: the leader may have rewritten a route table
    since this manager last wrote it, so "unchanged since my last write" proves nothing and every publish writes."""

    def __setitem__(self, key: str, value: str | None) -> None:
        return None


@dataclasses.dataclass
class ManagerContext:
    config: ManagerConfig
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    store: KVStore
    http: aiohttp.ClientSession
    agents: SignedClient  # signed RPC to agents
    cluster_secret: str
    jwt_secret: str
    keypair_box: SecretBox  # opens keypairs' secret keys (manager/secretbox.py)
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    bgtasks: BackgroundTasks = dataclasses.field(default_factory=BackgroundTasks)
    # endpoints whose route table must be (re)published; filled by handlers and loops, drained by the publisher
    # what each agent last reported and its queued beat times (set up with the app; see control/agent_beats.py)
    agent_beats: AgentBeats | None = None
    # heartbeat handlers' route-table publishes, coalesced (control/publish_soon.py; set up with the app)
    publish_soon: PublishSoon | None = None
    # Publishers (handlers, the loop) do not lock each other out: one whose read is older may write last, but
    # every handler that publishes also pokes, so the loop republishes those endpoints from a fresh read after it.
    dirty_endpoints: set[uuid.UUID] = dataclasses.field(default_factory=set)

    # last value written per route-table key (None = deleted), so unchanged tables are not rewritten
    # (a NoCache while this manager follows another: see manager.control.duties)
    published: dict[str, str | None] = dataclasses.field(default_factory=dict)
    manager_id: str = dataclasses.field(default_factory=new_manager_id)
    # keypair signatures already accepted (manager/api/auth.py); per manager, sized by auth.replay_cache_entries
    replay: ReplayCache = dataclasses.field(default_factory=lambda: ReplayCache(200_000))

    def poke(self, *endpoint_ids: uuid.UUID) -> None:
        """Mark endpoints for republishing and wake the control loops now. On a follower the wake relay forwards
        both to the leader (manager.control.duties)."""
        self.dirty_endpoints.update(endpoint_ids)
        self.wake.set()


CTX: web.AppKey[ManagerContext] = web.AppKey("moorage_manager_ctx", ManagerContext)
