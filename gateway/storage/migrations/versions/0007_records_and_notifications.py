"""The patient space: an account manages one record or, for a legal representative, several (one
per child); a session knows which record is open; new documents are announced to the record's
accounts (`notifications`), which may switch it off.

Revision ID: 0007
Revises: 0006
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_records",
        sa.Column("login", sa.String(128), primary_key=True),
        sa.Column("patient_ins", sa.String(32), primary_key=True),
    )
    op.create_index("ix_account_records_patient_ins", "account_records", ["patient_ins"])
    op.execute("INSERT INTO account_records (login, patient_ins) SELECT login, patient_ins FROM patient_accounts")
    with op.batch_alter_table("patient_accounts") as batch:
        batch.drop_column("patient_ins")
        batch.add_column(sa.Column("notify_new_documents", sa.Boolean, nullable=False, server_default=sa.true()))
    with op.batch_alter_table("web_sessions") as batch:
        batch.add_column(sa.Column("patient_ins", sa.String(32)))
        batch.add_column(sa.Column("record_name", sa.String(256)))
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("docref_id", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("queued_at", sa.String(32), nullable=False),
        sa.Column("claimed_until", sa.String(32)),
        sa.Column("sent_at", sa.String(32)),
        sa.Column("recipients", sa.Integer),
    )
    op.create_index("ix_notifications_pending", "notifications", ["sent_at", "id"])
    _index_agent_roles()


resources = sa.table("resources", sa.column("res_type"), sa.column("res_id"), sa.column("body"))
search_token = sa.table("search_token", sa.column("res_type"), sa.column("res_id"), sa.column("param"),
                        sa.column("system"), sa.column("code"))


def _index_agent_roles() -> None:
    """AuditEvent's new search parameter agent-role (the history tells the professionals' accesses
    from the patient's own), for the events already recorded."""
    conn = op.get_bind()
    rows = []
    for res_id, body in conn.execute(sa.select(resources.c.res_id, resources.c.body).where(
            resources.c.res_type == "AuditEvent")):
        for agent in json.loads(body).get("agent", []):
            for role in agent.get("role", []):
                for coding in role.get("coding", []):
                    if coding.get("code"):
                        rows.append({"res_type": "AuditEvent", "res_id": res_id, "param": "agent-role",
                                     "system": (coding.get("system") or "")[:256], "code": coding["code"][:256]})
        if len(rows) >= 1000:
            conn.execute(sa.insert(search_token), rows)
            rows = []
    if rows:
        conn.execute(sa.insert(search_token), rows)


def downgrade() -> None:
    op.execute("DELETE FROM search_token WHERE res_type = 'AuditEvent' AND param = 'agent-role'")
    op.drop_table("notifications")
    with op.batch_alter_table("web_sessions") as batch:
        batch.drop_column("record_name")
        batch.drop_column("patient_ins")
    with op.batch_alter_table("patient_accounts") as batch:
        batch.drop_column("notify_new_documents")
        batch.add_column(sa.Column("patient_ins", sa.String(32), nullable=False, server_default=""))
    op.execute("UPDATE patient_accounts SET patient_ins = (SELECT MIN(patient_ins) FROM account_records "
               "WHERE account_records.login = patient_accounts.login)")
    op.drop_table("account_records")
