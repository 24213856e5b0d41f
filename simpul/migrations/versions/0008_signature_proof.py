"""batch signatures: event_log keeps the event's path to its batch's signed Merkle root

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: an event signed alone (and every event stored before batches) has no path.
    with op.batch_alter_table("event_log") as batch:
        batch.add_column(sa.Column("signature_proof", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("event_log") as batch:
        batch.drop_column("signature_proof")
