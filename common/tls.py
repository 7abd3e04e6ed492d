"""TLS for the listeners (manager API, agent RPC, app proxy endpoints and admin port) and for the calls between
components (docs/security.md, "TLS").

Listeners: a certificate chain and its private key, PEM files, given together (``tls_cert_file`` and
``tls_key_file``); :func:`server_context` checks at start that both are readable, that the key is private to its
owner like every other secret file (:func:`common.config.check_secret_file_mode`), unencrypted and matches the
certificate, and raises :class:`~common.config.ConfigError` naming the file otherwise. TLS 1.2 is the minimum;
ciphers and options are Python's defaults for a server (forward secrecy, no compression, no renegotiation).

Clients: :func:`client_ssl` gives what ``aiohttp.TCPConnector(ssl=...)`` takes: the system trust store (``True``,
which also honours ``SSL_CERT_FILE``) or, with ``tls_ca_file``, a context that trusts that bundle only (a private
CA). Certificates are always verified, host names included.
"""

from __future__ import annotations

import ssl
from typing import Any

from common.config import ConfigError, check_secret_file_mode

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def check_pair(cert_file: str | None, key_file: str | None) -> None:
    """For model validators: the two files go together (raises ValueError, which pydantic reports)."""
    if bool(cert_file) != bool(key_file):
        missing = "tls_key_file" if cert_file else "tls_cert_file"
        raise ValueError(f"tls_cert_file and tls_key_file go together: {missing} is missing (set both to serve "
                         "HTTPS, neither to serve plain HTTP)")


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path!r}: {exc.strerror or exc}") from None


def _no_passphrase() -> bytes:
    raise ConfigError("encrypted private keys are not supported (a daemon cannot type the passphrase); store it "
                      "decrypted and private to the daemon's user: openssl pkey -in KEY -out KEY.plain; chmod 600")


def server_context(cert_file: str | None, key_file: str | None, what: str) -> ssl.SSLContext | None:
    """The listener's context, or None when neither file is set (plain HTTP). ``what`` names the config section
    in errors (``"manager"``, ``"proxy"``)."""
    if not cert_file and not key_file:
        return None
    try:
        check_pair(cert_file, key_file)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    assert cert_file and key_file
    _readable(cert_file, f"{what}.tls_cert_file")
    check_secret_file_mode(key_file, f"{what}.tls_key_file")
    _readable(key_file, f"{what}.tls_key_file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except ConfigError as exc:
        raise ConfigError(f"{what}.tls_key_file {key_file!r}: {exc}") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"{what}: cannot load the certificate {cert_file!r} with the key {key_file!r} "
                          f"({exc.reason or exc}); both must be PEM and the key must belong to the certificate"
                          ) from None
    return ctx


def client_ssl(ca_file: str | None, what: str) -> Any:
    """``ssl=`` for aiohttp's connector: ``True`` (system trust store) without ``ca_file``, else a context that
    trusts the certificates in ``ca_file`` (PEM bundle) only."""
    if not ca_file:
        return True
    _readable(ca_file, what)
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"{what}: {ca_file!r} holds no usable PEM certificate ({exc.reason or exc})") from None
    ctx.minimum_version = MINIMUM_VERSION
    return ctx


__all__ = ["MINIMUM_VERSION", "check_pair", "client_ssl", "server_context"]
