"""A blob over BLOB_PART bytes is written a part at a time (the drivers copy a value twice while
they insert it) and read back whole, byte for byte, on both backends; a blob is stored once per
hash, and deleted with its parts."""
import hashlib
import os

from sqlalchemy import func, select

from gateway.access import AccessContext
from gateway.access.writes import Write
from gateway.storage.database import read_connection, write_transaction
from gateway.storage.repository import Repository, blob_bytes, delete_blobs
from gateway.storage.schema import BLOB_PART, blob_parts, blobs

SIZES = [0, 10, BLOB_PART - 1, BLOB_PART, BLOB_PART + 1, 2 * BLOB_PART, 5 * BLOB_PART // 2]


def parts_of(engine, sha256: str) -> list[int]:
    with read_connection(engine) as conn:
        return list(conn.execute(select(blob_parts.c.part).where(blob_parts.c.sha256 == sha256)
                                 .order_by(blob_parts.c.part)).scalars())


def test_a_blob_is_read_back_whole_whatever_its_size(database):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://gateway.test")
    stored = {os.urandom(size): size for size in SIZES}
    digests = repo.write(lambda uow: [uow.store_blob(data) for data in stored], Write.FEED)
    for (data, size), digest in zip(stored.items(), digests):
        assert digest == hashlib.sha256(data).hexdigest()
        assert repo.blob(digest) == data
        assert parts_of(engine, digest) == list(range(1, -(-size // BLOB_PART)))
        with read_connection(engine) as conn:
            assert len(conn.execute(select(blobs.c.data).where(blobs.c.sha256 == digest)).scalar_one()) == min(
                size, BLOB_PART)


def test_a_blob_is_stored_once_and_deleted_with_its_parts(database):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://gateway.test")
    data = os.urandom(3 * BLOB_PART)
    first = repo.write(lambda uow: uow.store_blob(data), Write.FEED)
    assert repo.write(lambda uow: uow.store_blob(data), Write.FEED) == first
    with read_connection(engine) as conn:
        assert conn.execute(select(func.count()).select_from(blob_parts)).scalar_one() == 2
        assert blob_bytes(conn, "0" * 64) is None
    with write_transaction(engine) as conn:
        delete_blobs(conn, [first])
    with read_connection(engine) as conn:
        assert blob_bytes(conn, first) is None
        assert conn.execute(select(func.count()).select_from(blob_parts)).scalar_one() == 0


def test_a_blob_stored_whole_before_its_parts_existed_is_still_read(database):
    """Blobs written before migration 0011 keep all their bytes in their row."""
    engine = database[0]
    size = BLOB_PART + 1
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    with engine.begin() as conn:
        conn.execute(blobs.insert().values(sha256=digest, size=size, data=data))
    with read_connection(engine) as conn:
        assert blob_bytes(conn, digest) == data
