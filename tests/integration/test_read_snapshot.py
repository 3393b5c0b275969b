"""A read transaction sees one snapshot on both backends: a search reads its page's rows by id
after the filtered query chose them, and takes its AuditEvents' facts in the same transaction
(storage/repository.py `search`), so a write committed in between must not show."""
from sqlalchemy import func, select

from gateway.storage import statements as sql
from gateway.storage.database import read_connection, write_transaction
from gateway.storage.schema import resources


def organization(res_id: str) -> dict:
    return {"res_type": "Organization", "res_id": res_id, "version": 1, "last_updated": "2026-01-01T00:00:00.000000",
            "deleted": False, "patient_id": None, "blob_sha256": None, "body": "{}"}


def test_a_write_committed_during_a_read_transaction_is_not_seen_by_it(database):
    engine = database[0]
    count = select(func.count()).select_from(resources).where(resources.c.res_type == "Organization")
    with write_transaction(engine) as conn:
        sql.INSERT_RESOURCE.execute(conn, organization("before"))
    with read_connection(engine) as reading:
        assert reading.execute(count).scalar_one() == 1
        with write_transaction(engine) as conn:
            sql.INSERT_RESOURCE.execute(conn, organization("during"))
        assert reading.execute(count).scalar_one() == 1
    with read_connection(engine) as reading:
        assert reading.execute(count).scalar_one() == 2
