"""``python -m agent --config agent.toml``: run one agent standalone.

Logs go to stderr. SIGTERM/SIGINT stop the agent cleanly (it deregisters from etcd); its replicas keep
running, and a restarted agent re-adopts them. A SIGKILLed agent also leaves them running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from agent.config import load_agent_config
from agent.runtime.base import RuntimeUnavailable
from agent.server import build_agent_app
from common.aio import stop_on_signals
from common.config import ConfigError
from common.fileperms import private_umask
from common.store import EtcdStore


async def serve(config_path: str | None) -> None:
    config = load_agent_config(config_path)
    ssl_context = config.server_ssl_context()  # a bad certificate stops the start here
    config.client_ssl()
    if config.etcd.host:  # a wrong etcd password stops the agent here, in one line
        store = EtcdStore.from_config(config.etcd)
        try:
            await store.check()
        finally:
            await store.close()
    app = build_agent_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        with stop_on_signals() as stop:
            site = web.TCPSite(runner, config.agent.listen_host, config.agent.listen_port, ssl_context=ssl_context)
            await site.start()
            logging.getLogger("agent").info("agent %s listening on %s://%s:%d", config.agent.id,
                                            "https" if ssl_context else "http", config.agent.listen_host,
                                            config.agent.listen_port)
            await stop.wait()
        logging.getLogger("agent").info("shutting down (replicas keep running)")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="Moorage agent")
    parser.add_argument("--config", "-c", help="agent.toml (keys can be overridden by MOORAGE_AGENT__* vars)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    private_umask()  # state files, logs: 0600 unless a writer sets a mode on purpose
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.config))
    except (ConfigError, RuntimeUnavailable) as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
