"""Keypair secret keys encrypted at rest (AES-256-GCM).

The manager verifies HMAC request signatures and keypair JWTs with the secret key itself, so it cannot be hashed
like a password; it is encrypted instead, with a key that is not in the database: ``secrets.keypair_encryption_key``
of the manager config (inline through the environment or ``..._FILE``; ``moorage up`` generates one into its
secrets.json). A copy of the database alone (a dump, a backup, the SQLite file) reveals no secret key.

Every read and write of ``keypairs.secret_key`` goes through this module: :meth:`SecretBox.seal` when a keypair is
created, :meth:`SecretBox.open` when a request is verified (and when ``moorage up`` writes the admin's keys to
cluster.json), :func:`check_and_seal_keypairs` when a manager starts. The plaintext is never logged.

Stored form: ``aesgcm1:`` + base64url(nonce (12 bytes) || ciphertext || tag (16 bytes)), unpadded; 40-character
secret keys become 99 characters. The access key is the associated data, so a sealed value copied onto another
keypair's row does not open. The AES key is derived from the configured string with HKDF-SHA256, so any secret of
32+ characters (the format of the other secrets) gives a 256-bit key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.config import ConfigError

log = logging.getLogger(__name__)
PREFIX = "aesgcm1:"
NONCE_BYTES = 12
_HKDF_INFO = b"moorage keypairs.secret_key v1"
KEY_SETTING = "secrets.keypair_encryption_key"


class SecretBoxError(ValueError):
    """A stored value that this key cannot open: another key, a damaged value, or one never sealed."""


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


class SecretBox:
    __slots__ = ("_aead",)

    def __init__(self, key_material: str):
        if len(key_material) < 32:
            raise ConfigError(f"{KEY_SETTING} must be at least 32 characters")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(key_material.encode())
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(***)"

    def seal(self, access_key: str, secret_key: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._aead.encrypt(nonce, secret_key.encode(), access_key.encode())
        return PREFIX + base64.urlsafe_b64encode(blob).rstrip(b"=").decode()

    def open(self, access_key: str, stored: str) -> str:
        if not is_sealed(stored):
            raise SecretBoxError(f"keypair {access_key}: the stored secret key is not encrypted")
        text = stored[len(PREFIX):]
        try:
            blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            plain = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], access_key.encode())
            return plain.decode()
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
            raise SecretBoxError(f"keypair {access_key}: the stored secret key does not decrypt with "
                                 f"{KEY_SETTING}") from None


async def check_and_seal_keypairs(sessionmaker: async_sessionmaker[AsyncSession], box: SecretBox) -> int:
    """At start (manager, ``moorage admin create-user``): every encrypted secret key must open with ``box``, else
    :class:`ConfigError` (a wrong key would otherwise fail every request of those users, later and quietly). Rows
    still in plaintext (written before encryption existed) are encrypted; returns how many."""
    from manager.db.models import KeyPair

    async with sessionmaker() as db:
        try:
            rows = (await db.execute(sa.select(KeyPair.access_key, KeyPair.secret_key_sealed))).all()
        except sa.exc.DBAPIError as exc:
            raise ConfigError(f"cannot read the keypairs to check {KEY_SETTING} ({type(exc.orig).__name__}: "
                              f"{str(exc.orig).strip()[:200]}); is the database reachable and migrated "
                              f"(`moorage db upgrade`)?") from None
        failed = []
        plaintext = []
        for access_key, stored in rows:
            if not is_sealed(stored):
                plaintext.append((access_key, stored))
                continue
            try:
                box.open(access_key, stored)
            except SecretBoxError:
                failed.append(access_key)
        if failed:
            raise ConfigError(
                f"{KEY_SETTING} does not decrypt the secret keys stored in the database ({len(failed)} of "
                f"{len(rows)} keypairs, e.g. {failed[0]}): it must be the key they were encrypted with (a database "
                f"restored or shared without its key, or a changed secrets file?)")
        for access_key, plain in plaintext:  # the condition keeps two managers starting at once from double-sealing
            await db.execute(sa.update(KeyPair).where(KeyPair.access_key == access_key,
                                                      KeyPair.secret_key_sealed == plain)
                             .values(secret_key_sealed=box.seal(access_key, plain)))
        await db.commit()
    if plaintext:
        log.warning("encrypted the secret keys of %d keypair(s) stored in plaintext", len(plaintext))
    return len(plaintext)
