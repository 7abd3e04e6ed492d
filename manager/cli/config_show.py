"""``moorage config show COMPONENT [--config FILE]``: the effective configuration of a component (the file with
its ``MOORAGE_<COMPONENT>__*`` environment overrides applied, defaults filled in, validated as at start), with
every secret masked. Secrets are never printed: inline secret values, passwords (also the one in a URL such as
``db.url``) and keys show as ``***``; secret *files* show their path (the secret stays in the file)."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from common.config import ConfigError
from manager.cli.connection import CLIError

MASK = "***"
# Field names whose values are secrets (paths to secret files end in "_file" and are shown).
SECRET_NAME = re.compile(r"(secret|password|encryption_key|secret_key|token)$")
# The password of a URL (``db.url = "postgresql+asyncpg://user:password@host/db"``): scheme://user: ... @
URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*@")


def masked(value: Any, name: str = "") -> Any:
    """``value`` (a config dumped to plain data) with every secret replaced by :data:`MASK`."""
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, name) for v in value]
    if value not in (None, "") and SECRET_NAME.search(name):
        return MASK
    if isinstance(value, str):
        return URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", value, count=1)
    return value


def load_component(component: str, path: str | None) -> Any:
    if component == "manager":
        from manager.config import load_manager_config

        return load_manager_config(path)
    if component == "agent":
        from agent.config import load_agent_config

        return load_agent_config(path)
    from appproxy.config import load_proxy_config

    return load_proxy_config(path)


def run_show(args: argparse.Namespace) -> int:
    try:
        config = load_component(args.component, args.config)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(masked(config.model_dump(mode="json")), indent=2, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = subparsers.add_parser("config", help="show a component's effective configuration (secrets masked)")
    sub = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = sub.add_parser("show", help="the configuration as the component would run with it, secrets masked")
    show.add_argument("component", choices=["manager", "agent", "appproxy"])
    show.add_argument("--config", "-c", help="the component's TOML file (environment overrides apply as at start)")
    show.set_defaults(func=run_show)
