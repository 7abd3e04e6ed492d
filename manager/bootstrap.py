"""First-run data: the default domain and project, users and keypairs (the admin keypair for `moorage up`)."""

from __future__ import annotations

import secrets
import string
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.status import UserRole
from manager.db.models import Domain, KeyPair, Project, User
from manager.secretbox import SecretBox

_ALNUM = string.ascii_uppercase + string.digits


def new_access_key() -> str:
    return "AKIA" + "".join(secrets.choice(_ALNUM) for _ in range(16))


def new_secret_key() -> str:
    return secrets.token_urlsafe(30)[:40]


async def ensure_defaults(db: AsyncSession) -> None:
    if await db.get(Domain, "default") is None:
        db.add(Domain(name="default"))
        await db.flush()
    exists = (await db.execute(sa.select(Project.id).where(Project.domain_name == "default",
                                                           Project.name == "default"))).first()
    if not exists:
        db.add(Project(id=uuid.uuid4(), name="default", domain_name="default"))
        await db.flush()


async def create_user(sessionmaker: async_sessionmaker[AsyncSession], email: str,
                      role: UserRole = UserRole.USER, *, box: SecretBox) -> tuple[uuid.UUID, str, str]:
    """Create a user with one keypair; returns (user id, access key, secret key). The secret key is stored
    encrypted with ``box``; the value returned here is the only time it is shown (to its owner)."""
    async with sessionmaker() as db:
        await ensure_defaults(db)
        user = User(id=uuid.uuid4(), email=email, role=role, domain_name="default")
        db.add(user)
        await db.flush()
        access, secret = new_access_key(), new_secret_key()
        db.add(KeyPair(access_key=access, secret_key_sealed=box.seal(access, secret), user_id=user.id, role=role))
        await db.commit()
        return user.id, access, secret


async def ensure_admin(sessionmaker: async_sessionmaker[AsyncSession], box: SecretBox,
                       email: str = "admin@moorage.local") -> tuple[str, str]:
    """The admin's keypair, created on first use (``moorage up`` writes it to its 0600 cluster.json)."""
    async with sessionmaker() as db:
        row = (await db.execute(sa.select(KeyPair).join(User, User.id == KeyPair.user_id).where(
            User.email == email, KeyPair.is_active.is_(True)).limit(1))).scalar_one_or_none()
        if row is not None:
            return row.access_key, box.open(row.access_key, row.secret_key_sealed)
    _, access, secret = await create_user(sessionmaker, email, UserRole.SUPERADMIN, box=box)
    return access, secret
