"""What `gateway backup` and `gateway restore` refuse, each said in a line and nothing changed: a
PostgreSQL database (its own tools are named), a copy that exists, a folder that does not, a file
that is no gateway database, a damaged copy, the database restored onto itself; and a damaged
database restored, its files moved aside as they were; a restore while a gateway has the database
open, and a gateway started while a restore writes. The backup taken while messages stream, and
its restore, are in tests/e2e/test_backup.py."""
import shutil

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.cli import main
from gateway.storage import in_use
from gateway.storage.database import UnsupportedDatabase, make_engine, unavailable


@pytest.fixture
def operator(monkeypatch, tmp_path, migrated_sqlite, capsys):
    """Runs `gateway ARGS` on a SQLite database of its own; returns (exit status, what it wrote)."""
    database = tmp_path / "gateway.db"
    shutil.copyfile(migrated_sqlite, database)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("GATEWAY_VAR_DIR", str(tmp_path))
    monkeypatch.setattr("gateway.cli.configure_logging", lambda level: None)

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        told = capsys.readouterr()
        return status, told.out, told.err

    run.database = database
    return run


def test_a_postgresql_database_is_backed_up_by_its_own_tools(operator, monkeypatch, tmp_path):
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gateway@127.0.0.1:1/gateway")
    for command in ("backup", "restore"):
        status, _, told = operator(command, str(tmp_path / "copy"))
        assert status == 2 and "pg_dump -Fc" in told and "Traceback" not in told
    assert not (tmp_path / "copy").exists()


def test_a_backup_is_never_written_over_a_file_nor_into_a_missing_folder(operator, tmp_path):
    kept = tmp_path / "kept.db"
    kept.write_bytes(b"an earlier backup")
    assert operator("backup", str(kept))[0:3:2] == (2, f"gateway backup: {kept} exists: a backup is never written "
                                                       "over a file\n")
    assert kept.read_bytes() == b"an earlier backup"
    status, _, told = operator("backup", str(tmp_path / "nowhere" / "copy.db"))
    assert status == 2 and "does not exist" in told
    status, made, _ = operator("backup", str(tmp_path / "copy.db"))
    assert status == 0 and made.startswith(f"backed up to {tmp_path / 'copy.db'}: ") and "no input received" in made
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == ["copy.db"]


def test_restore_refuses_what_is_no_sound_gateway_database(operator, tmp_path):
    before = operator.database.read_bytes()
    other = tmp_path / "other.db"
    other.write_text("name,value\n")
    status, _, told = operator("restore", str(other))
    assert status == 2 and f"{other} cannot be read as a database (file is not a database)" in told, told
    assert operator("backup", str(tmp_path / "copy.db"))[0] == 0
    damaged = tmp_path / "damaged.db"
    data = bytearray((tmp_path / "copy.db").read_bytes())
    data[4096 * 3:4096 * 3 + 64] = b"\xff" * 64   # a page of a table or an index overwritten
    damaged.write_bytes(bytes(data))
    status, _, told = operator("restore", str(damaged))
    assert status == 2 and ("is damaged" in told or "cannot be read as a database" in told), told
    status, _, told = operator("restore", str(operator.database))
    assert status == 2 and "is the database itself" in told
    assert operator("restore", str(tmp_path / "missing.db"))[0] == 2
    assert operator.database.read_bytes() == before
    assert not list(tmp_path.glob("gateway.db.before-restore-*")), "a refused restore set the database aside"


def test_a_damaged_database_is_restored_its_files_moved_aside_as_they_were(operator, tmp_path):
    """A database SQLite cannot copy whole, the reason to restore, was refused as the copy of what it
    held could not be checked: the restore it needed could not be made."""
    assert operator("backup", str(tmp_path / "copy.db"))[0] == 0
    data = bytearray(operator.database.read_bytes())
    data[4096 * 3:4096 * 3 + 64] = b"\xff" * 64
    operator.database.write_bytes(bytes(data))
    status, told, _ = operator("restore", str(tmp_path / "copy.db"))
    assert status == 0 and "is moved, as its files were, to" in told, told
    # SQLite finds the page overwritten while copying ("malformed") or checking the copy ("is damaged").
    assert f"SQLite could not copy it ({operator.database} " in told and (
        "malformed" in told or "is damaged" in told), told
    [moved] = tmp_path.glob("gateway.db.before-restore-*Z")   # beside it, its -wal and -shm if any
    assert moved.read_bytes() == bytes(data)
    assert operator("audit", "verify")[0] == 0 and operator("backup", str(tmp_path / "again.db"))[0] == 0


def test_a_restore_waits_for_no_gateway_and_no_gateway_starts_under_a_restore(operator, tmp_path):
    """A restore under a running gateway went through: what it acknowledged meanwhile was in neither
    database. The gateway's processes here are an engine of this one (the e2e test's is a listener)."""
    copy = tmp_path / "copy.db"
    assert operator("backup", str(copy))[0] == 0
    before = operator.database.read_bytes()
    url = f"sqlite:///{operator.database}"
    engine = make_engine(url)
    status, _, told = operator("restore", str(copy))
    assert status == 2 and told == (f"gateway restore: a gateway process has the database {operator.database} open: "
                                    "stop every `gateway serve` and `gateway mllp`, and any command on it, first\n")
    assert operator.database.read_bytes() == before and not list(tmp_path.glob("gateway.db.before-restore-*"))

    engine.dispose()   # it lets go of the database until it connects again
    with in_use.held_alone(operator.database):   # as a restore holds it
        with pytest.raises(UnsupportedDatabase, match=f"`gateway restore` is writing the database {operator.database}"):
            make_engine(url)
        status, _, told = operator("messages", "list")
        assert status == 2 and "`gateway restore` is writing the database" in told, told
        with pytest.raises(OperationalError) as refused:
            engine.connect()
        assert unavailable(refused.value)   # asked again (ACK AE, 503), never refused for good
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert operator("restore", str(copy))[0] == 2
    engine.dispose()
    assert operator("restore", str(copy))[0] == 0
