"""Builds the manager's aiohttp application; its lifecycle (DB, HTTP client, control loop) is in cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from common.aio import cancel_and_wait
from common.errors import problem_middleware
from common.fileperms import ensure_shared_dir
from common.replay import ReplayCache
from common.signing import SignedClient, signed_request_middleware
from common.store import KVStore
from manager.api import (
    agents,
    api_keys,
    autoscaling,
    conversations,
    folder_files,
    folders,
    gql,
    internal,
    key_defaults,
    login_links,
    metrics,
    model_store,
    openapi,
    prices,
    root,
    routings,
    service_ops,
    service_update,
    services,
    tokens,
    usage,
)
from manager.api.auth import auth_middleware
from manager.apikeys import resync_keys
from manager.config import ManagerConfig
from manager.context import CTX, ManagerContext
from manager.control.agent_beats import AgentBeats
from manager.control.duties import ManagerDuties
from manager.control.leader import Candidate, make_election
from manager.control.publish_soon import PublishSoon
from manager.db import engine as db_engine
from manager.http_errors import ProblemAppRunner
from manager.secretbox import SecretBox, check_and_seal_keypairs

log = logging.getLogger(__name__)
MAX_REQUEST_BODY = 1024**4  # aiohttp's own cap; real limits are enforced per route (JSON 1 MiB, uploads config)


# The public API's route tables in match order (service_ops first: its /services/_/... paths must win over
# /services/{service_id}/...). The console serves the same tables under /api/ (manager/console/app.py).
API_ROUTE_TABLES = (root.routes, openapi.routes, service_ops.routes, services.routes, tokens.routes,
                    routings.routes, folders.routes, gql.routes, agents.routes, service_update.routes,
                    autoscaling.routes, metrics.routes, folder_files.routes, model_store.routes,
                    conversations.routes, api_keys.routes, usage.routes, prices.routes,
                    key_defaults.routes)


def build_manager_app(config: ManagerConfig, store: KVStore, run_loops: bool = True) -> web.Application:
    cluster_secret = config.cluster_secret()
    jwt_secret = config.jwt_secret()
    keypair_box = SecretBox(config.keypair_encryption_key())
    client_ssl = config.client_ssl()  # a missing or bad CA file stops the start here
    app = web.Application(
        middlewares=[problem_middleware, signed_request_middleware(cluster_secret, "/internal/"), auth_middleware],
        client_max_size=MAX_REQUEST_BODY,
    )

    async def context(app: web.Application) -> AsyncIterator[None]:
        ensure_shared_dir(config.manager.storage_root)  # 0755: replicas read model folders (manager.folders)
        if config.manager.auto_migrate:
            await db_engine.upgrade(config.db.connect_url())
        engine = db_engine.make_engine(config.db.connect_url())
        try:  # a wrong key stops the start here, rather than failing those users' requests later
            await check_and_seal_keypairs(db_engine.make_sessionmaker(engine), keypair_box)
        except BaseException:
            await engine.dispose()
            raise
        # agents' RPC and app proxies' admin ports, over HTTPS when they serve it ([manager] tls_ca_file)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100, limit_per_host=10, ssl=client_ssl))
        ctx = ManagerContext(config=config, engine=engine, db=db_engine.make_sessionmaker(engine), store=store,
                             http=http, agents=SignedClient(http, cluster_secret), cluster_secret=cluster_secret,
                             jwt_secret=jwt_secret, keypair_box=keypair_box,
                             replay=ReplayCache(config.auth.replay_cache_entries))
        app[CTX] = ctx
        ctx.agent_beats = AgentBeats(ctx.db, config.reconcile.agent_heartbeat_timeout)
        ctx.agent_beats.start()
        ctx.publish_soon = PublishSoon(ctx)
        ctx.publish_soon.start()
        try:  # gateway API keys: the store gets exactly the active ones (manager.apikeys)
            await resync_keys(ctx)
        except Exception as exc:  # store down: the keys are published again on their next change or restart
            log.warning("cannot publish the gateway API keys: %s", exc)
        # The control loops run only while this manager is the leader (alone on an in-memory store: always).
        duties_task = None
        if run_loops:
            election = make_election(store, Candidate(ctx.manager_id, config.public_url), config.leader.ttl,
                                     config.leader.step_down_margin)
            duties_task = asyncio.create_task(ManagerDuties(ctx, election).run(), name="manager-duties")
        try:
            yield
        finally:
            await cancel_and_wait(duties_task)  # stops the loops, then hands leadership over (revokes the lease)
            await ctx.agent_beats.close()  # the beats received last are written
            await ctx.publish_soon.close()
            await ctx.bgtasks.close()
            await http.close()
            await engine.dispose()

    app.cleanup_ctx.append(context)
    # keypair-signed only: not under the console's /api/ (manager.api.login_links)
    for table in (*API_ROUTE_TABLES, internal.routes, usage.internal_routes, login_links.routes):
        app.add_routes(table)
    return app


async def start_manager_site(app: web.Application, config: ManagerConfig) -> web.AppRunner:
    """Serve ``app`` on ``[manager] listen_host:listen_port``, over HTTPS when ``tls_cert_file`` is set; errors of
    aiohttp's own (malformed requests) as RFC 7807 (manager.http_errors). The caller cleans the runner up."""
    ssl_context = config.server_ssl_context()  # before the app starts: a bad certificate is a config error
    runner = ProblemAppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.manager.listen_host, config.manager.listen_port,
                          ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
