"""Field rules shared by the request models (manager/api/schemas.py): names, environment, paths, mounts.

Each function raises ValueError with the reason; pydantic names the field in the 400 problem.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from common.mounts import mount_destination_problem
from common.protocol import MAX_CORS_ORIGINS, MAX_ORIGIN_LENGTH
from manager.folders import relative_path_problem

# Backend.AI's session-name rule, ASCII only (Python's \\w would admit look-alike letters and digits).
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*[A-Za-z0-9_]$"
SERVICE_NAME_MIN = 4
SERVICE_NAME_MAX = 24  # Backend.AI's SESSION_NAME_MAX_LENGTH
# Environment (why): names as POSIX shells accept them; values reach execve(), whose whole argument and
# environment block is bounded (ARG_MAX, often 2 MiB; one string at most 128 KiB), so keep well below.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_VARS = 256
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 32 * 1024
MAX_ENV_TOTAL = 256 * 1024
MAX_EXTRA_MOUNT_KEY = 128
# CORS origins (docs/security.md "App proxy"): what a browser sends as Origin, scheme://host[:port] with http or
# https, a DNS name or a bracketed IPv6 address; the same rule as the app proxy's (it ignores anything else).
ANY_ORIGIN = "*"
ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?$")


def check_environ(value: dict[str, str] | None) -> dict[str, str] | None:
    total = 0
    for name, text in (value or {}).items():
        if len(name) > MAX_ENV_NAME or not ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name[:MAX_ENV_NAME]!r} (use [A-Za-z_][A-Za-z0-9_]*,"
                             f" at most {MAX_ENV_NAME} characters)")
        if "\x00" in text:
            raise ValueError(f"environ.{name}: must not contain NUL")
        if len(text) > MAX_ENV_VALUE:
            raise ValueError(f"environ.{name}: at most {MAX_ENV_VALUE} characters")
        total += len(name) + len(text) + 2
    if total > MAX_ENV_TOTAL:
        raise ValueError(f"the environment is over {MAX_ENV_TOTAL} characters in all")
    return value


def check_mount(value: str) -> str:
    problem = mount_destination_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def check_extra_mounts(value: dict[str, Any]) -> dict[str, Any]:
    """``{folder: {"mount_destination": "/data", ...}}`` (or ``{folder: "/data"}``, or ``{folder: null}``)."""
    for key, option in value.items():
        if len(key) > MAX_EXTRA_MOUNT_KEY:
            raise ValueError(f"a folder key is longer than {MAX_EXTRA_MOUNT_KEY} characters")
        if isinstance(option, dict):
            dest = option.get("mount_destination", option.get("mountDestination"))
        elif isinstance(option, str) or option is None:
            dest = option
        else:
            raise ValueError(f"{key}: must be an object with mount_destination, a path, or null")
        if dest is not None:
            problem = mount_destination_problem(dest) if isinstance(dest, str) else "must be a string"
            if problem is not None:
                raise ValueError(f"{key}.mount_destination: {problem}")
    return value


def check_definition_path(value: str | None) -> str | None:
    if value is not None:
        problem = relative_path_problem(value)
        if problem is not None:
            raise ValueError(f"must be a path inside the model folder: {problem}")
    return value


def check_aliases(value: list[str] | None) -> list[str] | None:
    """Each alias once (in the order given)."""
    return None if value is None else list(dict.fromkeys(value))


def check_cors_origins(value: list[str] | None) -> list[str] | None:
    """Origins as browsers send them (lower case, no trailing ``/``), each at most once; ``"*"``: any origin."""
    if value is None:
        return None
    if len(value) > MAX_CORS_ORIGINS:
        raise ValueError(f"at most {MAX_CORS_ORIGINS} origins")
    out: list[str] = []
    for entry in value:
        if len(entry) > MAX_ORIGIN_LENGTH:
            raise ValueError(f"an origin is longer than {MAX_ORIGIN_LENGTH} characters")
        origin = entry.strip().lower()
        origin = origin[:-1] if origin.endswith("/") and origin != ANY_ORIGIN else origin
        match = ORIGIN.match(origin)
        if origin != ANY_ORIGIN and (match is None or not 0 < int((match.group(3) or ":443")[1:]) <= 65535):
            raise ValueError(f"{entry[:100]!r} is not an origin: use scheme://host[:port] with http or https "
                             "(no path), e.g. https://chat.example.com, or \"*\" for any origin")
        if origin not in out:
            out.append(origin)
    return out


def check_not_uuid(value: str) -> str:
    """Folder names must not parse as UUIDs: a UUID in a folder reference always means the folder's id."""
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise ValueError("must not look like a UUID (UUIDs refer to folders by id)")
