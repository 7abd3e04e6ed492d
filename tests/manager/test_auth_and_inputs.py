from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.errors import InvalidAPIParameters
from manager import hmac_auth
from manager.durations import parse_duration
from manager.folders import resolve_inside, safe_relative_path


def test_hmac_sign_and_verify_roundtrip() -> None:
    now = datetime(2026, 11, 22, 1, 57, 4, 887010, tzinfo=UTC)
    headers = hmac_auth.sign_request("AKIATEST", "secret", "GET", "/services?name=x", "127.0.0.1:8090",
                                     "text/plain", now=now)
    assert headers["Date"] == "2026-11-22T01:57:04.887010+00:00"
    alg, ak, sig = hmac_auth.parse_authorization(headers["Authorization"])  # type: ignore[misc]  # None only for a malformed header
    assert (alg, ak) == ("sha256", "AKIATEST")
    args = ("GET", "/services?name=x", headers["Date"], "127.0.0.1:8090", "text/plain; charset=utf-8",
            hmac_auth.API_VERSION, "sha256")
    assert hmac_auth.verify("secret", *args, sig)
    assert not hmac_auth.verify("other", *args, sig)
    assert not hmac_auth.verify("secret", "GET", "/services?name=y", *args[2:], sig)
    assert not hmac_auth.verify("secret", "GET", "/services?name=x", headers["Date"], "localhost:8090",
                                *args[4:], sig)


def test_signature_matches_the_reference_algorithm() -> None:
    """Recompute the signature by hand from Backend.AI's algorithm (manager/api/hmac_auth.py), independent of
    sign_request."""
    import hashlib
    import hmac

    date = datetime(2026, 8, 23, 2, 14, 19, 123456, tzinfo=UTC)
    text = "\n".join(["POST", "/services", date.isoformat(), "host:h:1", "content-type:application/json",
                      "x-backendai-version:v9.20250722", hashlib.sha256(b"").hexdigest()])
    k = hmac.new(hmac.new(b"sk", b"20260823", hashlib.sha256).digest(), b"h:1", hashlib.sha256).digest()
    expected = hmac.new(k, text.encode(), hashlib.sha256).hexdigest()
    headers = hmac_auth.sign_request("ak", "sk", "POST", "/services", "h:1", "application/json", now=date)
    assert headers["Authorization"].endswith(f"credential=ak:{expected}")


def test_authorization_parsing() -> None:
    assert hmac_auth.parse_authorization("Sorna signMethod=HMAC-SHA256, credential=AK:abcdef") == (
        "sha256", "AK", "abcdef")
    assert hmac_auth.parse_authorization("Bearer xyz") is None
    assert hmac_auth.parse_authorization("BackendAI signMethod=HMAC-SHA256, credential=AK") is None


@pytest.mark.parametrize("raw, seconds", [(60, 60), ("90", 90), ("30m", 1800), ("1h", 3600), ("3d", 259200),
                                          ("1w", 604800), ("1.5h", 5400), ("1yr", 365 * 86400)])
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds  # type: ignore[arg-type]  # raw config values


@pytest.mark.parametrize("raw", ["", "soon", "-1h", 0, "1x", True])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(raw)  # type: ignore[arg-type]  # invalid on purpose


@pytest.mark.parametrize("raw", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", "a\x00b", "",
                                 "x/" * 40 + "y"])
def test_unsafe_upload_paths_are_refused(raw: str) -> None:
    with pytest.raises(InvalidAPIParameters):
        safe_relative_path(raw)


def test_symlink_escape_is_refused(tmp_path) -> None:
    root = tmp_path / "folder"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert resolve_inside(root, safe_relative_path("sub/dir/file.bin")) == (root / "sub/dir/file.bin").resolve()
    with pytest.raises(InvalidAPIParameters, match="symlink"):
        resolve_inside(root, safe_relative_path("link/file.bin"))
