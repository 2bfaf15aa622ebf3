"""models.weights_sha256: a checksum of each model's npz bytes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Written by hand. Existing rows get the checksum of the bytes they hold (so a blob corrupted
before this revision is not detected, but none written after it goes unnoticed).
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

models = sa.table(
    "models",
    sa.column("id", sa.String(32)),
    sa.column("weights", sa.LargeBinary()),
    sa.column("weights_sha256", sa.String(64)),
)


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weights_sha256", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    ids = connection.execute(sa.select(models.c.id)).scalars().all()
    for model_id in ids:  # one blob in memory at a time
        weights = connection.execute(
            sa.select(models.c.weights).where(models.c.id == model_id)
        ).scalar_one()
        connection.execute(
            models.update()
            .where(models.c.id == model_id)
            .values(weights_sha256=hashlib.sha256(weights).hexdigest())
        )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.alter_column("weights_sha256", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("weights_sha256")
