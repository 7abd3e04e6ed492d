"""TOML configuration with environment overrides.

``load_config(Model, path, env_prefix="MOORAGE_AGENT")`` reads the TOML file (if given), then applies every
environment variable ``<PREFIX>__<SECTION>__<KEY>=value`` (double underscores separate levels, names are
case-insensitive), then validates with the pydantic model. Values from the environment are strings; pydantic
coerces them, and JSON is accepted for lists and tables (``MOORAGE_AGENT__AGENT__PORT_RANGE='[30000, 31000]'``).
Secrets belong in files or the environment, never in the repository.

Secret files (``..._SECRET_FILE``, ``..._KEY_FILE``) must be private to the daemon that reads them. Policy of
:func:`read_secret`, checked at every start:

* readable or writable by others (any ``o`` bit), or writable by the group: refused, with a ``ConfigError`` naming
  the file and the fix (``chmod 600``; on Kubernetes ``defaultMode: 0400``). Anyone on the host could read the
  secret, or replace it;
* readable by the group (e.g. ``root:moorage 0640``, a usual way to let a service user read one file): accepted,
  with a warning, since the secret then belongs to every member of that group;
* 0600 / 0400: silent.

A symlink is judged by its target (what is actually read).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from sqlalchemy.engine import make_url

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    pass


class StrictSection(BaseModel):
    """Base of every config section: an unknown key is an error (a typo such as ``reconcile.intervall`` must
    not be ignored silently); :func:`load_config` names the key, where it came from and the closest valid
    name."""

    model_config = ConfigDict(extra="forbid")


def _section_model(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the key at ``loc`` (the config's own class for a top-level key)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or not isinstance(part, str) or part not in fields:
            return None
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _where(loc: tuple[Any, ...], path: str | Path | None, env_prefix: str, from_env: dict[str, Any],
           from_overrides: Mapping[str, Any] | None) -> str:
    """Where the value at ``loc`` came from: the environment variable, the overrides, or the file."""

    def holds(tree: Mapping[str, Any] | None) -> bool:
        node: Any = tree
        for part in loc:
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True

    if holds(from_overrides):
        return "overrides"
    if holds(from_env):
        return "environment variable " + env_prefix.upper() + "__" + "__".join(str(p).upper() for p in loc)
    return str(path) if path is not None else "configuration"


def describe_errors(exc: ValidationError, model: type[BaseModel], path: str | Path | None, env_prefix: str,
                    from_env: dict[str, Any], from_overrides: Mapping[str, Any] | None) -> str:
    """One line per problem: the dotted key, where it came from, the reason, and for an unknown key the
    closest valid name."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc)
        where = _where(loc, path, env_prefix, from_env, from_overrides)
        if error["type"] == "extra_forbidden":
            section = _section_model(model, loc)
            names = sorted(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else (
                f"; valid keys here: {', '.join(names)}" if names else "")
            lines.append(f"{key} ({where}): unknown key{hint}")
        else:
            lines.append(f"{key} ({where}): {error['msg']}")
    return "; ".join(lines)


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    node = target
    for part in path[:-1]:
        existing = node.get(part)
        if not isinstance(existing, dict):
            existing = {}
            node[part] = existing
        node = existing
    node[path[-1]] = value


def _coerce_env_value(raw: str) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    return raw


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    marker = prefix.upper() + "__"
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.upper().startswith(marker):
            continue
        path = [p.lower() for p in name[len(marker):].split("__") if p]
        if path:
            _set_path(out, path, _coerce_env_value(value))
    return out


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    model: type[T],
    path: str | Path | None,
    env_prefix: str,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    from_env = env_overrides(env_prefix, environ)
    data = deep_merge(data, from_env)
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc, model, path, env_prefix, from_env, overrides)
        raise ConfigError(f"invalid configuration ({path or 'environment'}): {problems}") from None


def check_secret_file_mode(path: str, what: str) -> None:
    """Refuse a secret file others may read or write, or the group may write; warn when the group may read it
    (the policy in the module docstring)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read secret file {path!r}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007 or mode & 0o020:
        who = "other users" if mode & 0o007 else "its group"
        raise ConfigError(f"{what}: secret file {path} is accessible to {who} (mode {mode:04o}); make it readable "
                          f"by its owner only: chmod 600 {path} (Kubernetes secret volumes: defaultMode: 0400)")
    if mode & 0o040:
        log.warning("%s: secret file %s is readable by its group (mode %04o, gid %d); every member of that group "
                    "can read the secret (chmod 600 makes it private to its owner)", what, path, mode, st.st_gid)


def read_secret(value: str | None, file: str | None, what: str, min_length: int = 32) -> str:
    """A secret given inline (env) or as a file path; files win. Secrets shorter than ``min_length`` (empty ones
    included) are refused, and so are files that others can read (:func:`check_secret_file_mode`)."""
    if file:
        check_secret_file_mode(file, what)
        try:
            secret = Path(file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read secret file {file!r}: {exc.strerror or exc}") from None
    else:
        secret = (value or "").strip()
    # Our own keys: HS256 keys shorter than 32 bytes are weak (PyJWT warns about them too). Passwords chosen
    # elsewhere (etcd's) pass min_length=1.
    if len(secret) < min_length:
        size = f"at least {min_length} characters" if min_length > 1 else "not empty"
        raise ConfigError(f"{what} must be set ({size}), inline via the environment or as a file")
    return secret


def read_secret_field(section: BaseModel, name: str, what: str, min_length: int = 32) -> str:
    """The secret a section holds as ``name`` (inline, a :class:`SecretStr`, usually from the environment) and
    ``name_file`` (a path; wins): :func:`read_secret` of the two. The one way every component reads a secret."""
    if name not in type(section).model_fields or f"{name}_file" not in type(section).model_fields:
        raise KeyError(f"{type(section).__name__} has no secret {name!r} (and {name}_file)")
    inline = getattr(section, name)
    value = inline.get_secret_value() if isinstance(inline, SecretStr) else inline
    return read_secret(value, getattr(section, f"{name}_file"), what, min_length)


class SecretsSection(StrictSection):
    """Base of every component's ``[secrets]``: each secret ``NAME`` is two keys, ``NAME`` inline (a
    :class:`SecretStr`, so no dump or repr shows it; set it through the environment,
    ``MOORAGE_<COMPONENT>__SECRETS__NAME``, never in a committed file) and ``NAME_file``, a path that wins (private
    file rules of :func:`read_secret`). Components subclass it with their secrets and read them with
    :meth:`read`."""

    def read(self, name: str, what: str | None = None, min_length: int = 32) -> str:
        """Secret ``name``; :class:`ConfigError` naming ``what`` (default ``secrets.<name>``) when it is missing,
        too short, or its file is readable by others."""
        return read_secret_field(self, name, what or f"secrets.{name}", min_length)


class DatabaseSection(StrictSection):
    """``[db]`` of the manager: the SQLAlchemy URL of its database (PostgreSQL with asyncpg, or SQLite).

    The password may be in the URL, or kept apart (the same rules as every secret): ``password`` (inline, from
    ``MOORAGE_MANAGER__DB__PASSWORD``) or ``password_file`` (wins); it then replaces the URL's. ``moorage config
    show`` masks both."""

    url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/moorage"
    password: SecretStr | None = None
    password_file: str | None = None

    def connect_url(self) -> str:
        """The URL to connect with: ``url`` with the separate password, if one is set, put in."""
        if self.password is None and not self.password_file:
            return self.url
        password = read_secret_field(self, "password", "db.password", min_length=1)
        return make_url(self.url).set(password=password).render_as_string(hide_password=False)


class EtcdSection(StrictSection):
    """``[etcd]`` of the manager, agent and app proxy configs: where etcd is and how to log in to it.

    With ``user`` set, every etcd client of the component logs in as that user (etcd authentication,
    docs/operations.md "etcd"); its role must allow reading and writing ``<namespace>/moorage/``. The password
    comes inline (``..._ETCD__PASSWORD``, the environment) or from ``password_file`` (which wins), under the
    same rules as the other secret files; it is never logged or printed.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=2379, ge=1, le=65535)
    namespace: str = ""  # prefix of every key, e.g. "/prod"; several clusters can share one etcd
    user: str | None = Field(default=None, min_length=1, max_length=256)
    password: SecretStr | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _login(self) -> EtcdSection:
        if (self.password is not None or self.password_file) and not self.user:
            raise ValueError("etcd password or password_file is set but user is not")
        return self

    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)``, reading the password file now; None without ``user``. Raises
        :class:`ConfigError` when the password is missing or its file is readable by others."""
        if not self.user:
            return None
        return self.user, read_secret_field(self, "password", "etcd.password", min_length=1)
