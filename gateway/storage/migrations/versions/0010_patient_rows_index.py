"""The index of a patient's rows carries the columns the access filter and the page read: a search
driven from a reader's patients is answered from the index, without reading rows whose access
columns come after their JSON (SQLite walks a long JSON's overflow pages to reach them).

Revision ID: 0010
Revises: 0009
"""
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = ["patient_id", "res_type", "last_updated", "res_id", "deleted", "masked", "hidden_from_patient",
           "hidden_from_representatives", "authors"]


def upgrade() -> None:
    op.create_index("ix_resources_patient_rows", "resources", COLUMNS)
    op.drop_index("ix_resources_patient", "resources")


def downgrade() -> None:
    op.create_index("ix_resources_patient", "resources", ["patient_id"])
    op.drop_index("ix_resources_patient_rows", "resources")
