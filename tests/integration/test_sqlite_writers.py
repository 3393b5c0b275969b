"""Writers in two processes over one SQLite file hand over the write lock through a file lock
(storage/database.py), not through SQLite's busy handler and its sleeps."""
import fcntl
import os
import subprocess
import sys

import pytest

from gateway.storage.database import make_engine, write_transaction
from gateway.storage.migrate import upgrade

HOLDER = """
import sys
from gateway.storage.database import make_engine, write_transaction
engine = make_engine(sys.argv[1])
with write_transaction(engine) as conn:
    conn.exec_driver_sql("INSERT INTO blobs (sha256, size, data) VALUES ('held', 0, x'')")
    print("holding", flush=True)
    sys.stdin.read()   # until the test closes it
print("committed", flush=True)
"""


def test_a_write_transaction_in_another_process_holds_the_writer_file_until_it_commits(tmp_path):
    path = tmp_path / "gateway.db"
    url = f"sqlite:///{path}"
    upgrade(make_engine(url))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=os.getcwd())
    descriptor = os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.stdin.close()
        assert holder.stdout.readline().strip() == "committed"
        assert holder.wait(timeout=30) == 0
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)   # released with the commit
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        with write_transaction(make_engine(url)) as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM blobs WHERE sha256 = 'held'").scalar() == 1
    finally:
        os.close(descriptor)
        if holder.poll() is None:
            holder.kill()
            holder.wait()
