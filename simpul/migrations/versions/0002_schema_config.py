"""schema registry compatibility configuration

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schema_config",
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("compatibility", sa.String(length=32), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_schema_config")),
    )


def downgrade() -> None:
    op.drop_table("schema_config")
