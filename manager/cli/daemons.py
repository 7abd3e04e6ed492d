"""Daemon and admin commands: ``moorage manager|agent|appproxy``, ``moorage db``, ``moorage admin``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from typing import TYPE_CHECKING

from common.aio import stop_on_signals
from common.config import ConfigError
from common.fileperms import private_umask
from manager.cli.connection import CLIError

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts without the server stack
    from aiohttp import web

    from manager.config import ManagerConfig
    from manager.secretbox import SecretBox


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


async def serve_until_signal(app: web.Application, config: ManagerConfig) -> None:
    """Run the manager app until SIGTERM/SIGINT, then clean up (cleanup_ctx runs)."""
    from manager.console.app import start_console_site
    from manager.console.links import console_url
    from manager.context import CTX
    from manager.server import start_manager_site

    runner = await start_manager_site(app, config)
    console = await start_console_site(app[CTX]) if config.console.enabled else None
    if console is not None:
        logging.getLogger("moorage").info("web console on %s (log in with a keypair)", console_url(config))
    m = config.manager
    logging.getLogger("moorage").info("listening on %s://%s:%s (public URL %s)",
                                      "https" if m.tls_cert_file else "http", m.listen_host, m.listen_port,
                                      config.public_url)
    if not config.public_url.startswith("https://"):
        logging.getLogger("moorage").warning(
            "the API is served over plain HTTP: set [manager] tls_cert_file and tls_key_file in production "
            "(or terminate TLS in front of it and set public_url); keys, tokens and prompts cross the network in clear")
    try:
        with stop_on_signals() as stop:
            await stop.wait()
    finally:
        if console is not None:
            await console.cleanup()
        await runner.cleanup()


def _load_manager_config(args: argparse.Namespace) -> ManagerConfig:
    from manager.config import load_manager_config

    try:
        return load_manager_config(args.config)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def run_manager(args: argparse.Namespace) -> int:
    from common.store import EtcdStore
    from manager.server import build_manager_app

    private_umask()
    _setup_logging(args.log_level)
    config = _load_manager_config(args)

    async def _main() -> None:
        config.server_ssl_context()  # certificate problems are reported before anything connects
        store = EtcdStore.from_config(config.etcd)
        try:
            await store.check()  # a wrong etcd password stops the manager here, in one line
            app = build_manager_app(config, store)
            await serve_until_signal(app, config)
        finally:
            await store.close()

    try:
        asyncio.run(_main())
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    return 0


def run_agent(args: argparse.Namespace) -> int:
    from agent.__main__ import main as agent_main

    private_umask()  # agent/__main__.py sets it too; here it also covers what is done before that
    return int(agent_main(([] if not args.config else ["--config", args.config]) + ["--log-level", args.log_level])
               or 0)


def run_appproxy(args: argparse.Namespace) -> int:
    from appproxy.__main__ import main as proxy_main

    private_umask()
    return int(proxy_main(([] if not args.config else ["--config", args.config]) + ["--log-level", args.log_level])
               or 0)


def _keypair_box(config: ManagerConfig) -> SecretBox:
    from manager.secretbox import SecretBox

    try:
        return SecretBox(config.keypair_encryption_key())
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def run_db(args: argparse.Namespace) -> int:
    from manager.db import engine

    private_umask()  # `db upgrade` of a SQLite URL may create the database file
    config = _load_manager_config(args) if not args.url or args.db_command == "downgrade" else None
    url = args.url if config is None else args.url or config.db.connect_url()
    try:
        if args.db_command == "upgrade":
            asyncio.run(engine.upgrade(url, args.revision or "head"))
        else:
            # Going below 0005 decrypts the keypairs' secret keys again, which needs the key when one is set.
            assert config is not None  # always loaded for a downgrade
            keyed = config.secrets.keypair_encryption_key or config.secrets.keypair_encryption_key_file
            box = _keypair_box(config) if keyed else None
            asyncio.run(engine.downgrade(url, args.revision or "base", keypair_box=box))
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    return 0


def run_admin_create_user(args: argparse.Namespace) -> int:
    from common.status import UserRole
    from manager.bootstrap import create_user
    from manager.db import engine as db_engine
    from manager.secretbox import check_and_seal_keypairs

    private_umask()
    config = _load_manager_config(args)
    url = args.url or config.db.connect_url()
    box = _keypair_box(config)  # the secret key is stored encrypted (manager/secretbox.py)

    async def _main() -> tuple[uuid.UUID, str, str]:
        eng = db_engine.make_engine(url)
        sessionmaker = db_engine.make_sessionmaker(eng)
        try:
            await check_and_seal_keypairs(sessionmaker, box)  # a wrong key is refused before a row is written
            return await create_user(sessionmaker, args.email, UserRole(args.role), box=box)
        finally:
            await eng.dispose()

    try:
        user_id, access, secret = asyncio.run(_main())
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    # shown once, to the operator who creates the user; only the encrypted form is kept
    print(json.dumps({"user_id": str(user_id), "email": args.email, "role": args.role,
                      "access_key": access, "secret_key": secret}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, func, help_text in (
        ("manager", run_manager, "run the manager daemon (PostgreSQL + etcd)"),
        ("agent", run_agent, "run an agent daemon on this host"),
        ("appproxy", run_appproxy, "run an app proxy daemon"),
    ):
        parser = subparsers.add_parser(name, help=help_text)
        parser.add_argument("--config", help=f"TOML config file (configs/{name}.toml); env overrides apply")
        parser.add_argument("--log-level", default="info")
        parser.set_defaults(func=func)

    db = subparsers.add_parser("db", help="database migrations")
    db.add_argument("db_command", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", help="target revision (default: head / base)")
    db.add_argument("--config", help="manager config file (for db.url)")
    db.add_argument("--url", help="database URL (overrides the config)")
    db.set_defaults(func=run_db)

    admin = subparsers.add_parser("admin", help="administration")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="ADMIN_COMMAND", required=True)
    create = admin_sub.add_parser("create-user", help="create a user with a keypair; prints the keys as JSON")
    create.add_argument("email")
    create.add_argument("--role", choices=["superadmin", "admin", "user"], default="user")
    create.add_argument("--config", help="manager config file (for db.url)")
    create.add_argument("--url", help="database URL (overrides the config)")
    create.set_defaults(func=run_admin_create_user)
