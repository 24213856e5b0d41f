"""operations: dead_letters table, event_log index for per-agency freshness

Revision ID: 0006
Revises: 0001
Create Date: 2026-11-25 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("agency", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ce_id", sa.String(length=255), nullable=True),
        sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", "offset", name=op.f("pk_dead_letters")),
    )
    op.create_index(
        "ix_dead_letters_agency_dead_lettered_at",
        "dead_letters",
        ["agency", "dead_lettered_at"],
    )
    # The scorecard asks "newest event of this agency" and "events of this agency since t".
    op.create_index("ix_event_log_source_stored_at", "event_log", ["source", "stored_at"])


def downgrade() -> None:
    op.drop_index("ix_event_log_source_stored_at", table_name="event_log")
    op.drop_index("ix_dead_letters_agency_dead_lettered_at", table_name="dead_letters")
    op.drop_table("dead_letters")
