"""Console sessions and one-time login links, stored in the manager database (table ``console_sessions``) so
that any manager serves any session. Only the SHA-256 of each random secret is stored; expiry is checked here,
server-side, whatever the browser keeps (docs/console.md, "Security")."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from manager.db.models import ConsoleSession, KeyPair, User

SECRET_BYTES = 32  # 256 bits: unguessable
MAX_SECRET_LENGTH = 128  # anything longer is not one of ours: refused before hashing


class SessionKind(enum.StrEnum):
    SESSION = "session"
    LOGIN_LINK = "login_link"


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token(secret: str) -> str:
    """The session's CSRF token: derived from the session secret (nothing more to store), and not the secret."""
    return hmac.new(secret.encode(), b"moorage-console-csrf", hashlib.sha256).hexdigest()


async def create(db: AsyncSession, kind: SessionKind, access_key: str, ttl: float,
                 now: datetime | None = None) -> str:
    """A new session or login link for the keypair; returns its secret (shown once, stored hashed)."""
    now = now or datetime.now(UTC)
    secret = new_secret()
    db.add(ConsoleSession(id_hash=hash_secret(secret), kind=kind.value, access_key=access_key, created_at=now,
                          expires_at=now + timedelta(seconds=ttl)))
    await db.commit()
    return secret


async def mint_login_link(sessionmaker: async_sessionmaker[AsyncSession], access_key: str, ttl: float) -> str:
    async with sessionmaker() as db:
        return await create(db, SessionKind.LOGIN_LINK, access_key, ttl)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def lookup(db: AsyncSession, secret: str, now: datetime | None = None) -> tuple[KeyPair, User] | None:
    """The keypair and user of a live session (not expired, keypair and user active), or None."""
    if not secret or len(secret) > MAX_SECRET_LENGTH:
        return None
    now = now or datetime.now(UTC)
    row = (await db.execute(
        sa.select(ConsoleSession, KeyPair, User).join(KeyPair, KeyPair.access_key == ConsoleSession.access_key)
        .join(User, User.id == KeyPair.user_id)
        .where(ConsoleSession.id_hash == hash_secret(secret), ConsoleSession.kind == SessionKind.SESSION.value)
    )).first()
    if row is None:
        return None
    session, keypair, user = row
    if _aware(session.expires_at) <= now or not keypair.is_active or not user.is_active:
        return None
    return keypair, user


async def redeem_login_link(db: AsyncSession, secret: str, now: datetime | None = None) -> str | None:
    """Use up a login link: its access key, once; None when unknown, expired or already used. The row is deleted
    by a conditional DELETE, so two concurrent uses cannot both succeed."""
    if not secret or len(secret) > MAX_SECRET_LENGTH:
        return None
    now = now or datetime.now(UTC)
    digest = hash_secret(secret)
    link = (await db.execute(sa.select(ConsoleSession).where(
        ConsoleSession.id_hash == digest, ConsoleSession.kind == SessionKind.LOGIN_LINK.value))).scalar_one_or_none()
    if link is None:
        return None
    access_key, expires_at = link.access_key, _aware(link.expires_at)
    result = await db.execute(sa.delete(ConsoleSession).where(ConsoleSession.id_hash == digest))
    await db.commit()
    if getattr(result, "rowcount", 0) != 1 or expires_at <= now:
        return None
    return access_key


async def delete(db: AsyncSession, secret: str) -> None:
    if secret and len(secret) <= MAX_SECRET_LENGTH:
        await db.execute(sa.delete(ConsoleSession).where(ConsoleSession.id_hash == hash_secret(secret)))
        await db.commit()


async def purge_expired(db: AsyncSession, now: datetime | None = None) -> None:
    await db.execute(sa.delete(ConsoleSession).where(ConsoleSession.expires_at <= (now or datetime.now(UTC))))
    await db.commit()
