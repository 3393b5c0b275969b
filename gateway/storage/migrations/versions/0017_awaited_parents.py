"""Parents named by identifier only, found again when they arrive: a document that arrives after the
version that replaces it (an MDM^T02 sent again after its T10) is registered superseded, not
current beside it. The replacements already stored are read for the parents they await.

Revision ID: 0017
Revises: 0016
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "awaited_parents",
        sa.Column("system", sa.String(256), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("system", "value", "res_type", "res_id"),
    )
    conn = op.get_bind()
    # The replacements 500 at a time, in key order: a database of many is read in bounded memory.
    after = ""
    while True:
        rows = conn.execute(sa.text(
            "SELECT res_id, body FROM resources WHERE res_type = 'DocumentReference' AND NOT deleted "
            "AND body LIKE '%\"relatesTo\"%' AND res_id > :after ORDER BY res_id LIMIT 500"), {"after": after}).all()
        if not rows:
            return
        awaited = [{"system": target["identifier"].get("system", ""), "value": target["identifier"]["value"],
                    "res_type": "DocumentReference", "res_id": row.res_id}
                   for row in rows
                   for relation in json.loads(row.body).get("relatesTo", [])
                   if relation.get("code") == "replaces"
                   for target in [relation.get("target", {})]
                   if "reference" not in target and target.get("identifier", {}).get("value")]
        if awaited:
            conn.execute(sa.text("INSERT INTO awaited_parents (system, value, res_type, res_id) "
                                 "VALUES (:system, :value, :res_type, :res_id)"), awaited)
        after = rows[-1].res_id


def downgrade() -> None:
    op.drop_table("awaited_parents")
