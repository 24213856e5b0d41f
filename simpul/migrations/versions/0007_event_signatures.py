"""event signatures: event_log keeps who signed each event and the signed bytes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = (
    ("key_id", sa.String(length=128)),
    ("signer", sa.String(length=64)),
    ("gateway", sa.String(length=64)),
    ("signature", sa.Text()),
    ("signed_headers", sa.JSON()),
    ("signed_value", sa.Text()),
)


def upgrade() -> None:
    # Nullable: events stored before signing existed have no signature to show.
    with op.batch_alter_table("event_log") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("event_log") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
