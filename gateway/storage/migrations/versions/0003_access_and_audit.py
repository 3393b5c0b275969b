"""Access control and audit: who may see a document (columns on resources), the rules each active
Consent gives (access_rules), and the hash chain of the audit trail (audit_chain).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("masked", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("hidden_from_patient", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("hidden_from_representatives", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("authors", sa.String(512)))
    op.create_table(
        "access_rules",
        sa.Column("consent_id", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("effect", sa.String(8), nullable=False),
        sa.Column("actor_system", sa.String(256), nullable=False),
        sa.Column("actor_value", sa.String(256), nullable=False),
    )
    op.create_index("ix_access_rules_patient", "access_rules", ["patient_id", "kind", "effect", "actor_value"])
    op.create_index("ix_access_rules_actor", "access_rules", ["actor_value", "kind", "effect"])
    op.create_index("ix_access_rules_consent", "access_rules", ["consent_id"])
    op.create_table(
        "audit_chain",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("previous_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_chain")
    op.drop_table("access_rules")
    with op.batch_alter_table("resources") as batch:
        for column in ("authors", "hidden_from_representatives", "hidden_from_patient", "masked"):
            batch.drop_column(column)
