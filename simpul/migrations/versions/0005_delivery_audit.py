"""delivery audit log: hash-chained rows per event and recipient, chain heads

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-25 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("chain_id", sa.String(length=80), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ce_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("agency", sa.String(length=64), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("subject_hash", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_audit")),
        sa.UniqueConstraint("chain_id", "seq", name=op.f("uq_delivery_audit_chain_id_seq")),
    )
    op.create_index(
        "ix_delivery_audit_subject_hash", "delivery_audit", ["subject_hash"], unique=False
    )
    op.create_index("ix_delivery_audit_ce_id", "delivery_audit", ["ce_id"], unique=False)
    op.create_table(
        "delivery_audit_chains",
        sa.Column("chain_id", sa.String(length=80), nullable=False),
        sa.Column("writer", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_delivery_audit_chains")),
    )


def downgrade() -> None:
    op.drop_table("delivery_audit_chains")
    op.drop_index("ix_delivery_audit_ce_id", table_name="delivery_audit")
    op.drop_index("ix_delivery_audit_subject_hash", table_name="delivery_audit")
    op.drop_table("delivery_audit")
