from __future__ import annotations

import time

import pytest

from common.config import ConfigError, env_overrides, load_config, read_secret
from common.errors import AuthFailed
from common.signing import sign_headers, verify_signature
from common.tokens import TokenInvalid, mint_endpoint_token, verify_endpoint_token

SECRET = "s" * 32


def test_internal_signature_roundtrip_and_rejections() -> None:
    headers = sign_headers(SECRET, "POST", "/rpc/kernels?x=1", b"{}")
    verify_signature(SECRET, "POST", "/rpc/kernels?x=1", b"{}", headers)
    for method, path, body, secret in [("GET", "/rpc/kernels?x=1", b"{}", SECRET),
                                       ("POST", "/rpc/kernels", b"{}", SECRET),
                                       ("POST", "/rpc/kernels?x=1", b"{ }", SECRET),
                                       ("POST", "/rpc/kernels?x=1", b"{}", "t" * 32)]:
        with pytest.raises(AuthFailed):
            verify_signature(secret, method, path, body, headers)
    old = sign_headers(SECRET, "GET", "/", b"", now=time.time() - 3600)
    with pytest.raises(AuthFailed, match="window"):
        verify_signature(SECRET, "GET", "/", b"", old)
    with pytest.raises(AuthFailed, match="missing"):
        verify_signature(SECRET, "GET", "/", b"", {})


def test_endpoint_tokens() -> None:
    token, jti = mint_endpoint_token(SECRET, "ep1", "user", time.time() + 60)
    assert verify_endpoint_token(SECRET, token, "ep1").token_id == jti
    with pytest.raises(TokenInvalid, match="endpoint"):
        verify_endpoint_token(SECRET, token, "ep2")
    with pytest.raises(TokenInvalid, match="revoked"):
        verify_endpoint_token(SECRET, token, "ep1", revoked={jti})
    with pytest.raises(TokenInvalid, match="invalid"):
        verify_endpoint_token("x" * 32, token, "ep1")
    expired, _ = mint_endpoint_token(SECRET, "ep1", "user", time.time() - 1)
    with pytest.raises(TokenInvalid, match="expired"):
        verify_endpoint_token(SECRET, expired, "ep1")
    with pytest.raises(TokenInvalid):
        verify_endpoint_token(SECRET, "a" * 10_000, "ep1")


def test_config_env_overrides(tmp_path) -> None:
    from manager.config import ManagerConfig

    path = tmp_path / "m.toml"
    path.write_text('[manager]\nlisten_port = 9000\n[appproxy]\nport_range = [20000, 20010]\n')
    env = {"MOORAGE_MANAGER__MANAGER__LISTEN_PORT": "9100", "MOORAGE_MANAGER__DB__URL": "sqlite+aiosqlite://",
           "MOORAGE_MANAGER__APPPROXY__PORT_RANGE": "[21000, 21010]", "OTHER": "x"}
    cfg = load_config(ManagerConfig, path, "MOORAGE_MANAGER", environ=env)
    assert cfg.manager.listen_port == 9100 and cfg.db.url == "sqlite+aiosqlite://"
    assert cfg.appproxy.port_range == (21000, 21010)
    assert env_overrides("MOORAGE_MANAGER", {"MOORAGE_MANAGER__A__B": "1"}) == {"a": {"b": "1"}}
    with pytest.raises(ConfigError, match="manager.listen_port"):
        load_config(ManagerConfig, None, "X", environ={"X__MANAGER__LISTEN_PORT": "nope"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(ManagerConfig, tmp_path / "missing.toml", "X")
    secret_file = tmp_path / "secret"
    secret_file.write_text("f" * 40 + "\n")
    secret_file.chmod(0o600)  # secret files others can read are refused (tests/security/test_files_at_rest.py)
    assert read_secret(None, str(secret_file), "x") == "f" * 40
    with pytest.raises(ConfigError):
        read_secret("short", None, "x")
