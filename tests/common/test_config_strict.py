"""Every component's config refuses unknown keys, saying which key, where it came from and the closest valid
name (a typo such as ``reconcile.intervall`` used to be ignored silently by the manager)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_agent_config
from appproxy.config import ProxyConfig
from common.config import ConfigError, load_config
from manager.config import ManagerConfig


def test_manager_typo_in_the_file_names_the_key_the_file_and_the_closest_name(tmp_path: Path) -> None:
    path = tmp_path / "manager.toml"
    path.write_text("[reconcile]\nintervall = 0.5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(ManagerConfig, path, "MOORAGE_MANAGER", environ={})
    message = str(caught.value)
    assert "reconcile.intervall" in message and str(path) in message
    assert "did you mean 'reconcile.interval'?" in message


def test_unknown_section_lists_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "manager.toml"
    path.write_text("[nonsense]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"nonsense .*unknown key; valid keys here: .*reconcile"):
        load_config(ManagerConfig, path, "MOORAGE_MANAGER", environ={})


def test_typo_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(ManagerConfig, None, "MOORAGE_MANAGER", environ={"MOORAGE_MANAGER__LIMITS__MAX_JSON_BODDY": "1"})
    message = str(caught.value)
    assert "environment variable MOORAGE_MANAGER__LIMITS__MAX_JSON_BODDY" in message
    assert "did you mean 'limits.max_json_body'?" in message


def test_agent_and_proxy_refuse_unknown_keys_too(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[local]\nsandbx = \"bwrap\"\n")
    with pytest.raises(ConfigError, match=r"local\.sandbx .*did you mean 'local\.sandbox'"):
        load_agent_config(str(path))
    with pytest.raises(ConfigError, match=r"proxy\.bind_hst .*did you mean 'proxy\.bind_host'"):
        load_config(ProxyConfig, None, "MOORAGE_APPPROXY", overrides={"proxy": {"bind_hst": "x"}}, environ={})
    with pytest.raises(ConfigError, match=r"etcd\.pasword .*did you mean 'etcd\.password'"):
        load_config(ProxyConfig, None, "MOORAGE_APPPROXY", overrides={"etcd": {"pasword": "x"}}, environ={})


def test_the_shipped_configs_are_valid() -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    load_config(ManagerConfig, configs / "manager.toml", "MOORAGE_MANAGER", environ={})
    load_config(ProxyConfig, configs / "appproxy.toml", "MOORAGE_APPPROXY", environ={})
    load_agent_config(str(configs / "agent.toml"))
