"""Initial schema: raw inputs, blobs, resources and versions, unique identifiers, search index.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "raw_inputs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("content_type", sa.String(128)),
        sa.Column("sender", sa.String(256)),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.Text),
        sa.Column("resources", sa.Text),
    )
    op.create_index("ix_raw_inputs_status", "raw_inputs", ["status"])
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "resources",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.String(32), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("blob_sha256", sa.String(64)),
        sa.Column("body", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("res_type", "res_id"),
    )
    op.create_index("ix_resources_type_updated", "resources", ["res_type", "last_updated", "res_id"])
    op.create_index("ix_resources_patient", "resources", ["patient_id"])
    op.create_table(
        "resource_versions",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.String(32), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("res_type", "res_id", "version"),
    )
    op.create_index("ix_versions_updated", "resource_versions", ["res_type", "last_updated"])
    op.create_table(
        "unique_identifiers",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("system", sa.String(256), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("res_type", "system", "value"),
    )
    op.create_table(
        "search_token",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(256), nullable=False),
        sa.Column("code", sa.String(256), nullable=False),
    )
    op.create_index("ix_token_lookup", "search_token", ["res_type", "param", "code", "system"])
    op.create_index("ix_token_owner", "search_token", ["res_type", "res_id", "param"])
    op.create_table(
        "search_string",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("exact", sa.String(256), nullable=False),
    )
    op.create_index("ix_string_lookup", "search_string", ["res_type", "param", "value"])
    op.create_index("ix_string_owner", "search_string", ["res_type", "res_id", "param"])
    op.create_table(
        "search_date",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("low", sa.String(32), nullable=False),
        sa.Column("high", sa.String(32), nullable=False),
    )
    op.create_index("ix_date_lookup", "search_date", ["res_type", "param", "low", "high"])
    op.create_index("ix_date_owner", "search_date", ["res_type", "res_id", "param"])
    op.create_table(
        "search_reference",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(256), nullable=False),
    )
    op.create_index("ix_reference_lookup", "search_reference", ["res_type", "param", "target_id", "target_type"])
    op.create_index("ix_reference_owner", "search_reference", ["res_type", "res_id", "param"])


def downgrade() -> None:
    for table in ("search_reference", "search_date", "search_string", "search_token", "unique_identifiers",
                  "resource_versions", "resources", "blobs", "raw_inputs"):
        op.drop_table(table)
