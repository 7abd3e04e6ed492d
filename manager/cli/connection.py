"""Where the CLI finds the manager and its keypair.

Resolution, field by field (``manager_url``, ``access_key``, ``secret_key``), lowest to highest precedence:

1. ``<data-dir>/cluster.json`` — written by ``moorage up``: ``{"manager_url", "access_key", "secret_key", ...}``
   (other keys are ignored here). ``data-dir`` is ``--data-dir``, else ``$MOORAGE_DATA_DIR``, else
   ``platformdirs.user_data_dir("moorage")``.
2. ``$MOORAGE_ENDPOINT``, ``$MOORAGE_ACCESS_KEY``, ``$MOORAGE_SECRET_KEY``.
3. The global options ``--endpoint``, ``--access-key``, ``--secret-key``.

A missing or partial configuration is a :class:`CLIError` that tells the user to run ``moorage up`` or to set
the variables.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CLUSTER_FILE = "cluster.json"
ENV_DATA_DIR = "MOORAGE_DATA_DIR"
ENV_ENDPOINT = "MOORAGE_ENDPOINT"
ENV_ACCESS_KEY = "MOORAGE_ACCESS_KEY"
ENV_SECRET_KEY = "MOORAGE_SECRET_KEY"


class CLIError(Exception):
    """A user-facing failure: ``main`` prints ``error: <message>`` to stderr and exits 1."""


@dataclass(frozen=True)
class Connection:
    endpoint: str
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never show the secret in logs or tracebacks
        return f"Connection(endpoint={self.endpoint!r}, access_key={self.access_key!r}, secret_key='***')"


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("moorage"))


def resolve_data_dir(flag: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """``--data-dir`` > ``$MOORAGE_DATA_DIR`` > the platform's user data directory."""
    env = os.environ if env is None else env
    if flag:
        return Path(flag).expanduser()
    if env.get(ENV_DATA_DIR):
        return Path(env[ENV_DATA_DIR]).expanduser()
    return default_data_dir()


def read_cluster_file(data_dir: Path) -> dict[str, Any]:
    """The connection file ``moorage up`` writes; ``{}`` when it does not exist."""
    path = data_dir / CLUSTER_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} must hold a JSON object")
    return data


def validate_endpoint(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CLIError(f"invalid manager endpoint {url!r}: expected http(s)://HOST[:PORT]")
    return url


def resolve_connection(
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    data_dir: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Connection:
    """Resolve the connection: flags (the keyword arguments) > environment > ``cluster.json``."""
    env = os.environ if env is None else env
    directory = resolve_data_dir(data_dir, env)
    values = {"manager_url": endpoint or env.get(ENV_ENDPOINT) or None,
              "access_key": access_key or env.get(ENV_ACCESS_KEY) or None,
              "secret_key": secret_key or env.get(ENV_SECRET_KEY) or None}
    if not all(values.values()):
        cluster = read_cluster_file(directory)
        for key, value in values.items():
            if not value and isinstance(cluster.get(key), str) and cluster[key]:
                values[key] = cluster[key]
    missing = [name for name, key in (("endpoint", "manager_url"), ("access key", "access_key"),
                                      ("secret key", "secret_key")) if not values[key]]
    manager_url, access, secret = values["manager_url"], values["access_key"], values["secret_key"]
    if missing or not (manager_url and access and secret):  # the second test only narrows the types
        raise CLIError(
            f"no manager connection configured (missing {', '.join(missing)}; looked in "
            f"{directory / CLUSTER_FILE}). Run `moorage up` to start a local cluster, or set "
            f"{ENV_ENDPOINT}, {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} "
            "(or pass --endpoint/--access-key/--secret-key)"
        )
    return Connection(validate_endpoint(manager_url), access, secret)


def connection_from_args(args: argparse.Namespace) -> Connection:
    return resolve_connection(
        endpoint=getattr(args, "endpoint", None),
        access_key=getattr(args, "access_key", None),
        secret_key=getattr(args, "secret_key", None),
        data_dir=getattr(args, "data_dir", None),
    )


def add_connection_options(parser: argparse.ArgumentParser, *, suppress_defaults: bool = False) -> None:
    """Add ``--endpoint/--access-key/--secret-key/--data-dir``.

    The top-level parser adds them with ``None`` defaults; leaf parsers add them with ``suppress_defaults`` so
    that ``moorage service list --endpoint URL`` works too without erasing a value given before the command.
    """
    default = argparse.SUPPRESS if suppress_defaults else None
    group = parser.add_argument_group("connection")
    group.add_argument("--endpoint", default=default, metavar="URL",
                       help=f"manager URL (default: ${ENV_ENDPOINT}, else {CLUSTER_FILE})")
    group.add_argument("--access-key", default=default, metavar="KEY",
                       help=f"access key (default: ${ENV_ACCESS_KEY}, else {CLUSTER_FILE})")
    group.add_argument("--secret-key", default=default, metavar="KEY",
                       help=f"secret key (default: ${ENV_SECRET_KEY}, else {CLUSTER_FILE})")
    group.add_argument("--data-dir", default=default, metavar="DIR",
                       help=f"where {CLUSTER_FILE} lives (default: ${ENV_DATA_DIR}, else the user data dir)")


def connection_parent() -> argparse.ArgumentParser:
    """A parent parser carrying the connection options, for ``add_parser(..., parents=[connection_parent()])``."""
    parent = argparse.ArgumentParser(add_help=False)
    add_connection_options(parent, suppress_defaults=True)
    return parent
