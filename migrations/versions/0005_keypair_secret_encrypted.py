"""keypairs.secret_key holds the AES-GCM-encrypted secret key (manager/secretbox.py): widened to 256

Revision ID: 0005
Revises: 0004

Upgrade only widens the column: the migration does not know secrets.keypair_encryption_key, so rows still in
plaintext are encrypted by the manager when it starts (manager.secretbox.check_and_seal_keypairs), on PostgreSQL
and SQLite alike. Downgrade decrypts them back (0004's code signs with the column as it is), which needs the key:
`moorage db downgrade` passes it when the manager config has one; without it a database that holds encrypted
secret keys is refused before anything changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from common.config import ConfigError

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEALED_PREFIX = "aesgcm1:"


def upgrade() -> None:
    with op.batch_alter_table("keypairs") as batch_op:
        batch_op.alter_column("secret_key", existing_type=sa.String(length=64), type_=sa.String(length=256),
                              existing_nullable=False)


def downgrade() -> None:
    bind = op.get_bind()
    keypairs = sa.table("keypairs", sa.column("access_key", sa.String), sa.column("secret_key", sa.String))
    sealed = bind.execute(sa.select(keypairs.c.access_key, keypairs.c.secret_key)
                          .where(keypairs.c.secret_key.like(SEALED_PREFIX + "%"))).all()
    if sealed:
        unseal = context.config.attributes.get("keypair_unseal")
        if unseal is None:
            raise ConfigError(
                f"{len(sealed)} keypair secret key(s) are stored encrypted; downgrading below 0005 decrypts them and "
                f"needs secrets.keypair_encryption_key (e.g. MOORAGE_MANAGER__SECRETS__KEYPAIR_ENCRYPTION_KEY_FILE)")
        for access_key, stored in sealed:
            bind.execute(sa.update(keypairs).where(keypairs.c.access_key == access_key)
                         .values(secret_key=unseal(access_key, stored)))
    with op.batch_alter_table("keypairs") as batch_op:
        batch_op.alter_column("secret_key", existing_type=sa.String(length=256), type_=sa.String(length=64),
                              existing_nullable=False)
