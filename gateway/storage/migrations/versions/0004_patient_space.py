"""The patient space: accounts, sign-in challenges, browser sessions, destruction requests.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_accounts",
        sa.Column("login", sa.String(128), primary_key=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("patient_ins", sa.String(32), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("contact", sa.String(256), nullable=False),
        sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.String(32)),
    )
    op.create_table(
        "login_challenges",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False),
        sa.Column("code_sha256", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.String(32), nullable=False),
        sa.Column("used", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id_sha256", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.String(32), nullable=False),
    )
    op.create_index("ix_web_sessions_login", "web_sessions", ["login"])
    op.create_table(
        "destruction_requests",
        sa.Column("patient_id", sa.String(64), primary_key=True),
        sa.Column("requested_at", sa.String(32), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("due_at", sa.String(32), nullable=False),
        sa.Column("carried_out_at", sa.String(32)),
    )


def downgrade() -> None:
    for table in ("destruction_requests", "web_sessions", "login_challenges", "patient_accounts"):
        op.drop_table(table)
