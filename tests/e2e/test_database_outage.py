"""PostgreSQL lost under a stream: the listener's connections are cut and new ones refused while
an interface engine sends ADT^A28 over MLLP, then the database comes back. Every message is
answered (AE "send it again" while the database is away, never AR, never a closed connection),
the engine resends what got AE, and in the end every message is stored exactly once. The
listener's log names no patient: database errors quote the values they were given."""
import os
import threading

from sqlalchemy import create_engine, func, select, text

from conftest import REPORT, free_port, new_postgres_database
from gateway.hl7v2 import mllp
from gateway.storage.database import make_engine
from gateway.storage.schema import raw_inputs, resources
from e2e_support import start_listener
from test_crash_safety import message

TOTAL = 300
CUT_AFTER = 100           # acknowledged messages before the database goes away
AE_WHILE_AWAY = 20        # answers the stream gets while it is away, before it comes back


def code(ack: bytes) -> str:
    return ack.split(b"\r")[1].split(b"|")[1].decode()


def test_a_database_outage_is_answered_ae_and_loses_nothing(tmp_path):
    with new_postgres_database("gateway_outage") as url:
        name = url.rsplit("/", 1)[1]
        admin = create_engine(url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + "/postgres",
                              isolation_level="AUTOCOMMIT")
        port = free_port()
        env = dict(os.environ, GATEWAY_DATABASE_URL=url, GATEWAY_MLLP_PORT=str(port), GATEWAY_HOST="127.0.0.1",
                   GATEWAY_VAR_DIR=str(tmp_path), GATEWAY_MLLP_PROCESSES="1", GATEWAY_LOG_LEVEL="INFO")
        log_path = tmp_path / "listener.log"
        listener = start_listener(env, port, log_path)
        answers: list[str] = []
        failures: list[BaseException] = []
        away = threading.Event()
        cut, resumed, enough_ae = threading.Event(), threading.Event(), threading.Event()

        def stream() -> None:
            # One connection, as an interface engine keeps it: a message answered AE is sent again.
            position, ae_while_away = 0, 0

            def messages():
                while position < TOTAL:
                    yield message(position)

            try:
                for ack in mllp.send_messages("127.0.0.1", port, messages(), timeout=60):
                    assert ack is not None, "a message went unanswered"
                    answers.append(code(ack))
                    if answers[-1] == "AA":
                        position += 1
                    elif answers[-1] == "AE" and away.is_set():
                        ae_while_away += 1
                        if ae_while_away == AE_WHILE_AWAY:
                            enough_ae.set()
                    if position == CUT_AFTER and not cut.is_set():
                        cut.set()
                        assert resumed.wait(120)   # the next message goes once the database is away
            except BaseException as failure:
                failures.append(failure)
                cut.set()
                enough_ae.set()   # nothing more will come: the waits end now

        client = threading.Thread(target=stream)
        try:
            client.start()
            assert cut.wait(120) and not failures, f"the stream did not reach the cut: {failures}"
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
            away.set()
            resumed.set()
            assert enough_ae.wait(60) and not failures, f"no AE while the database was away: {answers[-5:]}, {failures}"
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            away.clear()
            client.join(180)
            assert not client.is_alive(), "the stream did not finish once the database was back"
        finally:
            resumed.set()
            listener.terminate()
            listener.wait(30)
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            admin.dispose()
        assert not failures, failures
        assert "AR" not in answers and answers.count("AA") == TOTAL and answers.count("AE") >= AE_WHILE_AWAY
        engine = make_engine(url)
        with engine.connect() as conn:
            kept = dict(conn.execute(select(raw_inputs.c.status, func.count()).group_by(raw_inputs.c.status)).all())
            copies = conn.execute(select(func.count(func.distinct(raw_inputs.c.control_id)))).scalar_one()
            patients = conn.execute(select(func.count()).select_from(resources).where(
                resources.c.res_type == "Patient")).scalar_one()
        engine.dispose()
        assert kept == {"processed": TOTAL} and copies == TOTAL and patients == TOTAL
        log = log_path.read_text(errors="replace")
        assert "database unavailable" in log
        assert not any(f"8{n:08d}" in log or f"PATIENT{n}^" in log for n in range(TOTAL)), "the log names a patient"
        assert "MLLP connection failed" not in log, "a connection was closed instead of answered"
        REPORT.append(f"database outage: {TOTAL} ADT^A28 over MLLP, PostgreSQL cut after {CUT_AFTER}: "
                      f"{answers.count('AE')} AE (send it again), no AR, each message stored once")
