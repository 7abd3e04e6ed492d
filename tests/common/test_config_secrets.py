"""One definition of the secret and database sections (common.config): every component reads a secret the
same way (environment or file, the file wins, private files only) and none shows it in a dump or repr."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from appproxy.config import ProxyConfig
from common.config import ConfigError, DatabaseSection, SecretsSection, load_config
from manager.config import ManagerConfig

SECRET = "s" * 40

# component config class, env prefix, a secret of its [secrets], how the component reads it
COMPONENTS = [
    (ManagerConfig, "MOORAGE_MANAGER", "jwt_secret", lambda c: c.jwt_secret()),
    (ManagerConfig, "MOORAGE_MANAGER", "cluster_secret", lambda c: c.cluster_secret()),
    (ManagerConfig, "MOORAGE_MANAGER", "keypair_encryption_key", lambda c: c.keypair_encryption_key()),
    (AgentConfig, "MOORAGE_AGENT", "cluster_secret", lambda c: c.cluster_secret()),
    (ProxyConfig, "MOORAGE_APPPROXY", "jwt_secret", lambda c: c.jwt_secret()),
]


def _private_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("model,prefix,name,read", COMPONENTS)
def test_every_component_reads_its_secrets_alike(tmp_path: Path, model: type[Any], prefix: str, name: str,
                                                read: Callable[[Any], str]) -> None:
    assert issubclass(type(model().secrets), SecretsSection)
    env_name = f"{prefix}__SECRETS__{name.upper()}"
    from_env = load_config(model, None, prefix, environ={env_name: SECRET})
    assert read(from_env) == SECRET
    assert SECRET not in repr(from_env) and SECRET not in from_env.model_dump_json()  # SecretStr: never shown
    # the file wins over the environment
    path = _private_file(tmp_path, "f" * 40)
    both = load_config(model, None, prefix, environ={env_name: SECRET, f"{env_name}_FILE": str(path)})
    assert read(both) == "f" * 40
    # a file others may read is refused, naming the setting and the fix
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=rf"secrets\.{name}.*chmod 600"):
        read(both)
    # missing or too short: refused, naming the setting
    with pytest.raises(ConfigError, match=rf"secrets\.{name} must be set"):
        read(load_config(model, None, prefix, environ={env_name: "short"}))


def test_database_password_apart_from_the_url(tmp_path: Path) -> None:
    plain = DatabaseSection(url="postgresql+asyncpg://moorage@db.example:5432/moorage")
    assert plain.connect_url() == plain.url  # nothing apart: the URL as written
    inline = load_config(ManagerConfig, None, "MOORAGE_MANAGER", environ={
        "MOORAGE_MANAGER__DB__URL": "postgresql+asyncpg://moorage@db.example:5432/moorage",
        "MOORAGE_MANAGER__DB__PASSWORD": "p@ss/word"})
    assert inline.db.connect_url() == "postgresql+asyncpg://moorage:p%40ss%2Fword@db.example:5432/moorage"
    assert "p@ss/word" not in repr(inline) and "p@ss/word" not in inline.model_dump_json()
    path = _private_file(tmp_path, "from-file")
    from_file = DatabaseSection(url="postgresql+asyncpg://moorage:old@db.example/moorage", password_file=str(path))
    assert from_file.connect_url() == "postgresql+asyncpg://moorage:from-file@db.example/moorage"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="db.password"):
        from_file.connect_url()


def test_a_secrets_section_reads_only_declared_secrets() -> None:
    with pytest.raises(KeyError, match="no secret 'nonsense'"):
        ManagerConfig().secrets.read("nonsense")
