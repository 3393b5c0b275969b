"""The shell refuses, before it opens the database, an id or a count that can name no row: the
number past 2^63 - 1 was an OverflowError on SQLite, a count of 0 or less an empty or whole table.
What a command could not use (a database, a file, a gateway) is told in a line, not a traceback."""
import pytest

from conftest import TOKEN_KID, free_port
from gateway.cli import main


@pytest.mark.parametrize("argv, told", [
    (["messages", "show", str(2**63)], f"{2**63} is not from 1 to {2**63 - 1}"),
    (["messages", "show", "x"], "'x' is not a number"),
    (["messages", "reprocess", "0"], "0 is not from 1 to"),
    (["messages", "list", "--limit", "-1"], "-1 is not from 1 to 100000"),
    (["token", "issue", "--role", "doctor", "--ttl", "-5"], "-5 is not from 1 to 31622400"),
    (["send", "--port", "99999", "x.hl7"], "99999 is not from 1 to 65535"),
    (["send", "--timeout", "-1", "x.hl7"], "'-1' is not a number of seconds above 0"),
    (["retention", "run", "--now", "x"], "'x' is not a date in ISO 8601"),   # a traceback
])
def test_an_id_or_a_count_that_names_no_row_is_refused_with_its_range(argv, told, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert told in capsys.readouterr().err


def test_a_database_without_the_gateway_s_tables_or_not_reached_is_told_in_a_line(tmp_path, monkeypatch, capsys):
    """`gateway messages` before `gateway migrate`, or with a database it cannot reach: a line on
    stderr and status 2, where each was a traceback."""
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["messages", "list"]) == 2
    told = capsys.readouterr().err
    assert told.startswith("gateway messages: the database has no gateway tables (no such table: raw_inputs)")
    assert "run `gateway migrate` first" in told and "Traceback" not in told
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'not-a-database.db'}")
    (tmp_path / "not-a-database.db").write_bytes(b"x" * 4096)
    assert main(["messages", "show", "1"]) == 2
    assert capsys.readouterr().err.startswith("gateway messages: the database cannot be used: file is not a database")
    # Another database's URL, or none: a traceback from SQLAlchemy (the URL, which may hold a
    # password, is not repeated).
    for url, told in (("mysql://gateway:secret@db/gateway", "the database URL (mysql) is neither SQLite's"),
                      ("db.internal", "the database URL (no scheme) is neither SQLite's"),
                      ("postgresql://gateway@db:port/gateway", "the database URL cannot be read: invalid literal")):
        monkeypatch.setenv("GATEWAY_DATABASE_URL", url)
        assert main(["messages", "list"]) == 2
        said = capsys.readouterr().err
        assert said.startswith(f"gateway messages: {told}") and "secret" not in said


def test_gateway_send_tells_a_file_it_cannot_read_or_a_gateway_it_cannot_reach(tmp_path, capsys):
    import socket

    from gateway.hl7v2.sender import send_paths

    assert send_paths([tmp_path / "missing.hl7"], "127.0.0.1", 1) == 2

    def said() -> str:   # rich wraps its lines at the terminal's width
        return " ".join(capsys.readouterr().out.split())

    assert f"cannot read {tmp_path / 'missing.hl7'}: No such file or directory" in said()
    message = tmp_path / "a28.hl7"
    message.write_bytes(b"MSH|^~\\&|GAM|CH|GW|DMP|20260101||ADT^A28|C1|P|2.5\rPID|1||1^^^CH&1.2.3&ISO^PI||X^Y\r")
    with socket.socket() as bound:   # a port nothing listens on: bound, never listening
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        assert send_paths([message], "127.0.0.1", port) == 2
    assert f"MLLP 127.0.0.1:{port}: Connection refused (0 of 1 messages answered)" in said()


def test_gateway_verify_export_tells_a_file_it_cannot_read(tmp_path, capsys):
    """It was a traceback (the file read whole before anything else)."""
    assert main(["verify-export", str(tmp_path / "missing.zip")]) == 2
    assert capsys.readouterr().err == f"cannot read {tmp_path / 'missing.zip'}: No such file or directory\n"
    assert main(["verify-export", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"cannot read {tmp_path}: Is a directory\n"
    (tmp_path / "copy.zip").write_bytes(b"not a zip")
    assert main(["verify-export", str(tmp_path / "copy.zip")]) == 1
    assert capsys.readouterr().out == "NOT VALID: the file is not a ZIP archive\n"


def test_gateway_account_create_checks_what_it_is_given_and_replaces_only_when_asked(tmp_path, monkeypatch, capsys):
    """An INS `123`, a contact the codes could never reach and an empty login were taken; a login
    typed again with another INS gave its holder that other record."""
    from sqlalchemy import insert, select

    from gateway.cli import main as gateway
    from gateway.storage.database import make_engine
    from gateway.storage.migrate import upgrade
    from gateway.storage.schema import web_sessions

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    monkeypatch.setenv("GATEWAY_DATABASE_URL", url)
    monkeypatch.setenv("GATEWAY_ACCOUNT_PASSWORD", "correct-horse-battery")
    engine = make_engine(url)
    upgrade(engine)
    martin, dubois = "185067511204554", "292086938701277"

    def create(*extra, login="paul", ins=martin, contact="paul@example.test") -> tuple[int, str]:
        status = gateway(["account", "create", "--login", login, "--ins", ins, "--name", "Paul MARTIN",
                          "--contact", contact, *extra])
        printed = capsys.readouterr()
        return status, printed.out + printed.err

    assert create(ins="123") == (2, "refused: not an INS (15 characters, its key 97 - the first 13 mod 97): 123\n")
    assert create(ins=martin[:-1] + "5")[0] == 2
    assert create(contact="notanemail") == (2, "refused: the contact is the e-mail address one-time codes go to, "
                                               "not 'notanemail'\n")
    assert create(login="")[0] == 2 and create(login="paul martin")[0] == 2
    assert create() == (0, f"account paul (patient) manages the record(s) of INS {martin}\n")
    with engine.begin() as conn:
        conn.execute(insert(web_sessions).values(id_sha256="0" * 64, login="paul", expires_at="9999-01-01T00:00:00"))
    assert create(ins=dubois) == (2, f"refused: the account paul exists (it manages INS {martin}): replace it "
                                     "(its password, records, name and contact) with --reset\n")
    assert create("--reset", ins=dubois) == (0, f"account paul (patient) manages the record(s) of INS {dubois}\n")
    with engine.connect() as conn:
        assert conn.execute(select(web_sessions)).all() == []   # the session opened before the reset ended
    # An INS typed as it is printed, in groups, is the record's INS (kept as typed, it named no record).
    assert create("--reset", ins="2 92 08 69 387 012 77") == (
        0, f"account paul (patient) manages the record(s) of INS {dubois}\n")
    engine.dispose()


@pytest.mark.parametrize("variable, value, told", [
    ("GATEWAY_HTTP_PORT", "abc", "GATEWAY_HTTP_PORT is 'abc', not a whole number"),
    ("GATEWAY_HTTP_PORT", "99999", "GATEWAY_HTTP_PORT is 99999: it takes 1 to 65535"),
    ("GATEWAY_MLLP_PORT", "0", "GATEWAY_MLLP_PORT is 0: it takes 1 to 65535"),
    ("GATEWAY_MAX_DOCUMENT_BYTES", "-1", "GATEWAY_MAX_DOCUMENT_BYTES is -1: it takes 1 or more"),
    ("GATEWAY_WORKERS", "0", "GATEWAY_WORKERS is 0: it takes 1 to 256"),
    ("GATEWAY_MLLP_IDLE_TIMEOUT", "x", "GATEWAY_MLLP_IDLE_TIMEOUT is 'x': it takes a number of seconds above 0"),
    ("GATEWAY_SEARCH_TIMEOUT", "nan", "GATEWAY_SEARCH_TIMEOUT is 'nan': it takes a number of seconds above 0"),
    ("GATEWAY_HTTP_CLIENT_TIMEOUT", "0", "GATEWAY_HTTP_CLIENT_TIMEOUT is '0': it takes a number of seconds above 0"),
    ("GATEWAY_LOG_LEVEL", "verbose", "GATEWAY_LOG_LEVEL is 'VERBOSE': it takes DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("GATEWAY_PUBLIC_BASE_URL", "dmp-gateway.example.org",
     "GATEWAY_PUBLIC_BASE_URL holds 'dmp-gateway.example.org': it takes http(s)://host[:port][/path]"),
    ("GATEWAY_CORS_ORIGINS", "https://app.example.fr,*", "GATEWAY_CORS_ORIGINS holds '*': it takes scheme://host[:port]"),
    ("GATEWAY_CORS_ORIGINS", "https://app.example.fr/page", "GATEWAY_CORS_ORIGINS holds 'https://app.example.fr/page'"),
    ("GATEWAY_MLLP_SENDERS", "GAM|CH-SAINT-AUBIN,LAB^CH-SAINT-AUBIN",
     "GATEWAY_MLLP_SENDERS holds 'LAB^CH-SAINT-AUBIN': it takes MSH-3|MSH-4, optionally @address"),
    ("GATEWAY_MLLP_PROXY_PROTOCOL", "v2", "GATEWAY_MLLP_PROXY_PROTOCOL is 'v2', not a whole number"),
], ids=["port-not-a-number", "port-too-high", "mllp-port-zero", "negative-limit", "no-worker", "timeout-not-a-number",
        "timeout-nan", "client-timeout-zero", "unknown-log-level", "base-without-scheme", "any-origin", "origin-with-a-path",
        "sender-written-with-a-caret", "proxy-protocol-as-a-version"])
def test_a_setting_the_gateway_cannot_run_with_is_told_by_its_name(variable, value, told, monkeypatch, capsys):
    """Each was a traceback (a port `abc`, a log level `verbose`), or was taken: a port of 99999 failed
    later, a limit of -1 refused every document, a base URL without a scheme made every link wrong."""
    monkeypatch.setenv(variable, value)
    assert main(["messages", "list"]) == 2
    assert capsys.readouterr().err.startswith(f"gateway messages: {told}")


def test_gateway_serve_refuses_to_start_without_a_key_to_verify_tokens_or_a_known_sender(tmp_path, monkeypatch):
    """With no key, every request was answered 401; with an unknown sender, every sign-in failed."""
    from gateway.config import Settings
    from gateway.server import _unusable

    monkeypatch.setenv("GATEWAY_VAR_DIR", str(tmp_path))
    assert _unusable(Settings.from_env()) == [
        "no key to verify bearer tokens with: set GATEWAY_JWT_KEYS (PEM or JWKS files), or run `gateway demo setup` "
        "for the development one"]
    (tmp_path / "key.pem").write_text("not a key")
    monkeypatch.setenv("GATEWAY_JWT_KEYS", f"{tmp_path / 'missing.pem'}:{tmp_path / 'key.pem'}")
    monkeypatch.setenv("GATEWAY_MESSAGE_SENDER", "pigeon")
    monkeypatch.setenv("GATEWAY_MLLP_TLS_CERT", str(tmp_path / "cert.pem"))
    told = _unusable(Settings.from_env())
    assert told[0] == f"{tmp_path / 'missing.pem'} does not exist (GATEWAY_JWT_KEYS)"
    assert told[1].startswith("a key of GATEWAY_JWT_KEYS cannot be read: ")
    assert told[2:] == ["GATEWAY_MESSAGE_SENDER is 'pigeon': it takes outbox, smtp",
                        "GATEWAY_MLLP_TLS_CERT and GATEWAY_MLLP_TLS_KEY go together (GATEWAY_MLLP_TLS_CLIENT_CA with "
                        "them): without both, MLLP would be served in clear text"]
    monkeypatch.setenv("GATEWAY_MLLP_TLS_KEY", str(tmp_path / "key.pem"))
    assert _unusable(Settings.from_env())[-1] == ("the MLLP TLS files cannot be used (GATEWAY_MLLP_TLS_CERT, _KEY, "
                                                  "_CLIENT_CA): No such file or directory")
    assert main(["mllp"]) == 2   # the listener alone: it served in clear text, or was a traceback
    monkeypatch.setenv("GATEWAY_MESSAGE_SENDER", "smtp")
    monkeypatch.setenv("GATEWAY_SMTP_PORT", "submission")
    assert _unusable(Settings.from_env())[2:4] == ["GATEWAY_MESSAGE_SENDER is smtp: set GATEWAY_SMTP_HOST",
                                                   "GATEWAY_SMTP_PORT is 'submission': it takes 1 to 65535"]


def test_a_date_given_to_the_shell_keeps_its_offset():
    """`retention run --now 2026-01-01T00:00:00+02:00` was read as midnight UTC, two hours late."""
    from datetime import datetime, timezone

    from gateway.arguments import instant

    assert instant("2026-01-01T00:00:00+02:00") == datetime(2025, 12, 31, 22, tzinfo=timezone.utc)
    assert instant("2026-01-01") == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_a_list_with_nothing_in_it_says_so(tmp_path, monkeypatch, capsys):
    """`gateway retention list` and `notifications list` printed nothing at all, and `outbox --to`
    said "the outbox is empty" of an outbox holding messages to others."""
    monkeypatch.setenv("GATEWAY_VAR_DIR", str(tmp_path))
    assert main(["retention", "list"]) == 0 and capsys.readouterr().err == "no destruction request\n"
    assert main(["notifications", "list"]) == 0 and capsys.readouterr().err == "no notification\n"
    (tmp_path / "outbox.jsonl").write_text('{"sent_at": "2026-12-03T10:00:00+00:00", "to": "a@example.test", '
                                           '"subject": "Code", "code": "123456"}\n')
    assert main(["outbox", "--to", "b@example.test"]) == 0
    assert capsys.readouterr().err == "no message to b@example.test in the outbox\n"


def test_a_var_dir_that_cannot_be_made_is_told_in_a_line(tmp_path, monkeypatch, capsys, pki, token_key):
    """GATEWAY_VAR_DIR mistyped or not writable: `gateway migrate` and `gateway serve` were a
    traceback (FileNotFoundError, PermissionError). `gateway serve`'s metrics are not kept there
    (tests/e2e/test_full_disk.py): what tells it is the SQLite database's folder."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("GATEWAY_VAR_DIR", str(blocked / "var"))
    monkeypatch.setattr("gateway.cli.configure_logging", lambda level: None)
    assert main(["migrate"]) == 2
    assert capsys.readouterr().err.startswith(f"gateway migrate: the SQLite database's folder {blocked / 'var'} "
                                              "cannot be made: Not a directory")
    monkeypatch.setenv("GATEWAY_JWT_KEYS", str(pki / f"{TOKEN_KID}.pem"))
    monkeypatch.setenv("GATEWAY_HTTP_PORT", str(free_port()))
    monkeypatch.setenv("GATEWAY_MLLP_PORT", str(free_port()))
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.startswith(f"gateway serve: the SQLite database's folder {blocked / 'var'} "
                                              "cannot be made: Not a directory")
