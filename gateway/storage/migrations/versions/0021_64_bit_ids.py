"""The ids that grow with every input and every access are 64-bit on PostgreSQL: the raw inputs'
id, the audit chain's sequence number and the notifications' id were `serial` (32 bits), which a
national record's trail passes (2^31 entries is under two weeks at 2,000 audited accesses a second).
SQLite's INTEGER PRIMARY KEY is 64-bit already.

PostgreSQL rewrites each table and its indexes, under an exclusive lock: at 1,000,000 raw inputs
and 5,000,000 audit entries this took the time given in bench/MEASUREMENTS.md.

Revision ID: 0021
Revises: 0020
"""
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

SERIALS = (("raw_inputs", "id"), ("audit_chain", "seq"), ("notifications", "id"))


def _retype(type_name: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in SERIALS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {type_name}")
        # A serial's sequence has its column's type, and stops at that type's maximum.
        op.execute(f"ALTER SEQUENCE {table}_{column}_seq AS {type_name}")


def upgrade() -> None:
    _retype("bigint")


def downgrade() -> None:
    _retype("integer")
