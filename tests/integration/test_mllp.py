"""The running MLLP listener, driven with python-hl7's `mllp_send` and with our own client."""
import asyncio
import contextlib
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import (MLLP_TEST_MAX_BYTES, REPORT, attend_all, ctrl_c_in_a_finaliser, free_port, mllp_send,
                      sigint_as_at_a_terminal)

import gateway.hl7v2.sender as gateway_send
from gateway.hl7v2 import mllp
from gateway.hl7v2.sender import send_paths
from gateway.listener import listen
from gateway.storage.schema import raw_inputs

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7v2"
ANS_INS = "urn:oid:1.2.250.1.213.1.4.10|279035121518989"


def fields(ack: bytes, name: str) -> list[list[str]]:
    text = ack.decode("iso8859-15" if b"8859/15" in ack else "utf-8", "replace")
    return [s.split("|") for s in text.replace("\n", "\r").split("\r") if s.startswith(name)]


def msa(ack: bytes) -> list[str]:
    return fields(ack, "MSA")[0]


def header(message: bytes) -> tuple[str, str]:
    """(MSH-10, MSH-15/16 as sent) of a corpus message, read plainly."""
    first = message.lstrip(b"\xef\xbb\xbf").replace(b"\n", b"\r").split(b"\r")[0].decode("latin-1")
    parts = first.split("|") + [""] * 20
    return parts[9], (parts[14].strip() + "/" + parts[15].strip())


# The third-party corpus: what a correct gateway answers to each message, where it is not AA.
EXPECTED = {
    "cdcti_ACK_Natus.hl7": "AR",                        # an ACK is not a message to process
    "fr_ACK_R01_8859-15.er7": "AR",
    "cdcti_MALFORMED_empty.hl7": "AR", "cdcti_MALFORMED_msh_only_no_fields.hl7": "AR",
    "cdcti_MALFORMED_missing_msh-10.hl7": "AR", "cdcti_MALFORMED_missing_msh-9.hl7": "AR",
    "cdcti_ORM_obx-5_not_numeric.hl7": "AR", "msfc_MDM-T01-01.hl7": "AR",
    "msfc_VXU.hl7": "CR",                               # MSH-15 AL: the accept ACK stands for AR
    "fr_MDM_T02_CISIS_V1.2_message.er7": "AE",          # INS 276037510669380 has a wrong key
    "fr_MDM_T02_CR_Radio_INIT_N1_placeholder_v2.1.er7": "AE",  # OBX-5 is base64 text, not a CDA
    "msfc_ADT04-251.hl7": "AE", "v2fhir_ADT_A04_Register_v2.1.txt": "AE",  # PID-3 without authority
    "msfc_MDM-T02-01.hl7": "AE", "msfc_MDM-T10-01.hl7": "AE",  # ED declared, no data
    "msfc_MDM-T02-02.hl7": "AE", "msfc_MDM-T02-03.hl7": "CE", "v2fhir_MDM_T02_plain_text_line_breaks_v2.3.1.txt": "AE",
    "cdcti_ORU_R01_Epic_placeholders.hl7": "AE", "cdcti_ORU_R01_Oracle_Cerner_v2.3.hl7": "AE",
    "msfc_LAB-ORU-1.hl7": "AE", "msfc_LAB-ORU-2.hl7": "AE", "msfc_LRI_2.0-NG_CBC_Typ_Message.hl7": "CE",
    "msfc_ORU-R01-01.hl7": "CE", "msfc_ORU-R01-RMGEAD.hl7": "AE", "v2fhir_ORU_R01_Lab_Panel_Various_v2.3.1.txt": "AE",
    "msfc_ADT-A40-01.hl7": None, "v2fhir_MFN_M02_Provider_Master_File_v2.3.txt": None,  # MSH-15/16 NE: no ACK
}


def test_every_corpus_message_gets_a_correct_ack(mllp_listener, corpus_dir, backend):
    tally: dict[str, int] = {}
    # In file-name order, but a deletion after the replacement it deletes (T02, T10, T04).
    for path in sorted((corpus_dir / "hl7v2").iterdir(), key=lambda p: p.name.replace("_T04_", "_T99_")):
        data = path.read_bytes()
        expected = EXPECTED.get(path.name, "AA")
        control_id, modes = header(data)
        acks = mllp_send(mllp_listener.mllp_port, data, timeout=30 if expected else 2)
        if expected is None:
            assert acks == [], f"{path.name} asked for no acknowledgment ({modes})"
            tally["no ACK (NE/NE)"] = tally.get("no ACK (NE/NE)", 0) + 1
            continue
        assert len(acks) == 1, path.name
        code = msa(acks[0])
        assert code[1] == expected, f"{path.name}: {code} {fields(acks[0], 'ERR')}"
        if data.startswith(b"MSH") or data.startswith(b"\xef\xbb\xbfMSH"):
            assert code[2] == control_id, path.name
        if expected not in ("AA", "CA"):
            assert fields(acks[0], "ERR"), f"{path.name}: a refusal names its reason in ERR"
        tally[expected] = tally.get(expected, 0) + 1
    REPORT.append(f"HL7v2 corpus over MLLP (mllp_send, {backend}): " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))


def search(client, query, headers=None):
    """Search as the client's doctor, once the attending physician of every patient fed so far."""
    attend_all(client.application.config["ENGINE"])
    return client.get(f"/fhir/{query}", headers=headers).get_json()


def test_ans_document_messages_create_replace_delete(mllp_listener, corpus_dir, client):
    folder = corpus_dir / "hl7v2"
    query = f"DocumentReference?patient.identifier={ANS_INS}"

    def labels(resource: dict) -> set[str]:
        return {c["code"] for label in resource["securityLabel"] for c in label["coding"]}
    for name in ("fr_MDM_T02_CR_Radio_INIT_N1_Base64_v2.1.er7", "fr_MDM_T10_CR_Radio_RPLC_N1_v2.1.er7",
                 "fr_MDM_T04_CR_Radio_DEL_N1_v2.1.er7", "fr_ORU_R01_CR_Bio_INIT_N3_SEGUR_v2.1.er7"):
        acks = mllp_send(mllp_listener.mllp_port, (folder / name).read_bytes())
        assert msa(acks[0])[1] == "AA", (name, fields(acks[0], "ERR"))
        if "_T10_" in name:
            # Its flags say N to both: the hiding from legal representatives of the version it
            # replaces holds (README, "A replacement keeps the masking"); INVISIBLE_PATIENT is its own.
            replacement = search(client, f"{query}&status=current")["entry"][0]["resource"]
            assert "INVISIBLE_REPRESENTANTS_LEGAUX" in labels(replacement)
            assert "INVISIBLE_PATIENT" not in labels(replacement)
    by_id = {e["resource"]["masterIdentifier"]["value"]: e["resource"]
             for status in ("current", "superseded", "entered-in-error")
             for e in search(client, f"{query}&status={status}").get("entry", [])}
    assert by_id["urn:oid:1.2.250.1.71.4.2.2.120456789.71024000081"]["status"] == "superseded"
    assert "urn:oid:1.2.250.1.71.4.2.2.120456789.71024000082" not in by_id  # deleted: served under no status
    assert by_id["urn:oid:1.2.250.1.213.1.1.9"]["status"] == "current"  # the ORU's CR-BIO
    assert {"INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"} <= \
        labels(by_id["urn:oid:1.2.250.1.71.4.2.2.120456789.71024000081"])


@pytest.mark.parametrize("name, consultation, feeding", [
    ("fr_PAM_A01_Consent_ConsultationOK_AlimentationOK.er7", "permit", "permit"),
    ("fr_PAM_A01_Consent_NoConsult_AlimentationOK.er7", "deny", "permit"),
    ("fr_PAM_A01_Consent_NotCollected_AlimentationOK.er7", None, "permit"),
    ("fr_PAM_A01_Consent_NotCollected_OppositionNotCollected.er7", None, None),
])
def test_pam_consent_variants_give_the_expected_consents(mllp_listener, corpus_dir, client, bearer, name,
                                                        consultation, feeding):
    acks = mllp_send(mllp_listener.mllp_port, (corpus_dir / "hl7v2" / name).read_bytes())
    assert msa(acks[0])[1] == "AA"
    # The patient reads their decisions: after an opposition to consultation no doctor may.
    as_patient = bearer("patient", patient=ANS_INS.split("|")[1])
    consents = {e["resource"]["category"][1]["coding"][0]["code"]: e["resource"]
                for e in client.get("/fhir/Consent?category=urn:hl7-france:pam-fr:zfa|consultation,"
                                    "urn:hl7-france:pam-fr:zfa|alimentation",
                                    headers=as_patient).get_json()["entry"]}
    assert consents["consultation"]["provision"].get("type") == consultation
    assert consents["alimentation"]["provision"].get("type") == feeding


def test_connections_run_side_by_side_and_each_keeps_its_order(mllp_listener, client):
    def messages(worker: int):
        for n in range(5):
            ipp = f"95{worker:02d}{n:04d}"
            for event, family in (("A28", "AVANT"), ("A08", "APRES")):
                yield (f"MSH|^~\\&|GAM|W{worker}|GW|DMP|20260101||ADT^{event}|{event}-{ipp}|P|2.5\r"
                       f"PID|1||{ipp}^^^CH&1.2.250.1.213.1.1.9.1001&ISO^PI||{family}^X\r").encode()

    results: dict[int, list] = {}

    def run(worker: int):
        results[worker] = list(mllp.send_messages("127.0.0.1", mllp_listener.mllp_port, messages(worker)))

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(len(acks) == 10 and all(msa(a)[1] == "AA" for a in acks) for acks in results.values())
    assert len(results) == 8
    found = search(client, "Patient?family=APRES&_count=100")
    assert found["total"] == 40 and search(client, "Patient?family=AVANT")["total"] == 0


def test_an_oversized_message_is_refused_and_the_connection_stays_usable(mllp_listener):
    big = (b"MSH|^~\\&|RIS|CH|GW|DMP|20260101||MDM^T02^MDM_T02|BIG1|P|2.6\rOBX|1|ED|x||^text^XML^Base64^"
           + b"A" * (MLLP_TEST_MAX_BYTES + 10) + b"\r")
    small = b"MSH|^~\\&|GAM|CH|GW|DMP|20260101||ADT^A28|SMALL1|P|2.5\rPID|1||9400001^^^CH&1.2.3&ISO^PI||X^Y\r"
    first, second = mllp.send_messages("127.0.0.1", mllp_listener.mllp_port, [big, small])
    assert msa(first)[1:3] == ["AR", "BIG1"] and fields(first, "ERR")[0][3].startswith("104^")
    assert msa(second)[1] == "AA"


def test_our_samples_through_gateway_send(mllp_listener, capsys):
    status = send_paths([SAMPLES], "127.0.0.1", mllp_listener.mllp_port)
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"AA: {len(list(SAMPLES.glob('*.hl7')))}" in out


def test_a_ctrl_c_to_gateway_send_stops_it_before_the_next_message_wherever_it_lands(mllp_listener, database,
                                                                                      monkeypatch, capsys):
    """Python's own handler raised KeyboardInterrupt wherever the run was: raised in a finaliser (or
    a module lock's callback), it was printed as ignored and lost, and every remaining message was
    sent."""
    real, read = gateway_send._ack_code, []

    def read_then_ctrl_c(ack):
        read.append(ack)
        ctrl_c_in_a_finaliser()
        return real(ack)

    monkeypatch.setattr(gateway_send, "_ack_code", read_then_ctrl_c)
    files = sorted(SAMPLES.glob("adt-*.hl7"))[:3]
    with sigint_as_at_a_terminal():
        status = send_paths(files, "127.0.0.1", mllp_listener.mllp_port)
    out = " ".join(capsys.readouterr().out.split())
    assert status == 130 and len(read) == 1, out
    assert "AA: 1 interrupted (Ctrl-C): 1 of 3 messages answered, 2 not sent" in out
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() == 1


def test_gateway_send_names_each_file_as_it_is(mllp_listener, tmp_path, capsys):
    """A file named `adt [b]1[i].hl7` was printed as `adt 1.hl7`: names were read as markup."""
    sent = tmp_path / "adt [b]1[i].hl7"
    sent.write_bytes((SAMPLES / "adt-a28-moreau-hugo.hl7").read_bytes())
    assert send_paths([sent], "127.0.0.1", mllp_listener.mllp_port) == 0
    assert f"{sent} AA" in capsys.readouterr().out.splitlines()


def test_an_hl7_batch_file_through_gateway_send(mllp_listener, tmp_path, capsys):
    """An interface engine's export: FHS, BHS, the messages, BTS, FTS. The envelope went as a message
    (AR) and with the last one; a batch cut short (BTS-1 counts more) was sent without a word."""
    messages = [(SAMPLES / name).read_bytes().replace(b"\n", b"\r").strip(b"\r") + b"\r"
                for name in ("adt-a01-martin.hl7", "adt-a28-moreau-hugo.hl7")]
    batch = tmp_path / "export.hl7"
    batch.write_bytes(b"FHS|^~\\&|GAM|CH-SAINT-AUBIN\rBHS|^~\\&|GAM|CH-SAINT-AUBIN\r" + b"".join(messages)
                      + b"BTS|3\rFTS|1\r")
    status = send_paths([batch], "127.0.0.1", mllp_listener.mllp_port)
    out = " ".join(capsys.readouterr().out.split())
    assert status == 1 and "AA: 2" in out and "AR" not in out
    assert "export.hl7: the batch says it holds 3 messages (BTS-1); it holds 2" in out


def test_an_hl7_batch_file_sent_whole_by_gateway_send(mllp_listener, database, tmp_path, capsys):
    """`--whole-batch`: the file goes in one frame, as an interface engine sends a batch, and each ACK
    of the answer is printed; one cut short is refused whole by the gateway, and said so."""
    messages = [(SAMPLES / name).read_bytes().replace(b"\n", b"\r").strip(b"\r") + b"\r"
                for name in ("adt-a01-martin.hl7", "adt-a28-moreau-hugo.hl7")]
    envelope = b"FHS|^~\\&|GAM|CH-SAINT-AUBIN\nBHS|^~\\&|GAM|CH-SAINT-AUBIN\n"
    whole, cut = tmp_path / "export.hl7", tmp_path / "cut.hl7"
    whole.write_bytes(envelope + b"".join(m.replace(b"\r", b"\n") for m in messages) + b"BTS|2\nFTS|1\n")
    cut.write_bytes(envelope + messages[0].replace(b"\r", b"\n") + b"BTS|2\nFTS|1\n")
    status = send_paths([whole], "127.0.0.1", mllp_listener.mllp_port, whole_batches=True)
    out = " ".join(capsys.readouterr().out.split())
    assert status == 0 and out.count(f"{whole} AA") == 2 and "AA: 2" in out, out
    assert [f"MSA|AA|{header(m)[0]}" in out for m in messages] == [True, True]
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() == 2   # its messages
    status = send_paths([cut], "127.0.0.1", mllp_listener.mllp_port, whole_batches=True)
    out = " ".join(capsys.readouterr().out.split())
    assert status == 1 and f"{cut} AR" in out and "AR: 1" in out, out
    assert "the batch says it holds 2 messages (BTS-1); it holds 1" in out
    # Two frames, the first a batch: each goes as it is, and the batch's answer is read as one (its
    # ACK was printed as "?", its first segment FHS).
    framed = tmp_path / "framed.hl7"
    framed.write_bytes(mllp.frame(cut.read_bytes().replace(b"\n", b"\r")) + mllp.frame(messages[1]))
    status = send_paths([framed], "127.0.0.1", mllp_listener.mllp_port, whole_batches=True)
    out = " ".join(capsys.readouterr().out.split())
    assert status == 1 and "AA: 1 AR: 1" in out, out


def test_an_hl7_batch_in_one_frame_is_answered_by_a_batch_of_acks(mllp_listener):
    """python-hl7's `mllp_send` sends an engine's batch in one frame; python-hl7 reads the answer: a
    batch of the same shape holding an ACK for each message. The batch was refused AR whole."""
    import hl7

    messages = [(SAMPLES / name).read_bytes().replace(b"\n", b"\r").strip(b"\r") + b"\r"
                for name in ("adt-a01-martin.hl7", "adt-a28-moreau-hugo.hl7")]
    batch = (b"FHS|^~\\&|GAM|CH-SAINT-AUBIN|||20260310080000||||F1\rBHS|^~\\&|GAM|CH-SAINT-AUBIN|||||||B1\r"
             + b"".join(messages) + b"BTS|2\rFTS|1\r")
    replies = mllp_send(mllp_listener.mllp_port, batch)
    assert len(replies) == 1
    answered = hl7.parse_file(replies[0].decode())
    assert [(str(m.segment("MSA")[1]), str(m.segment("MSA")[2])) for m in answered[0]] == \
        [("AA", header(message)[0]) for message in messages]
    assert (str(answered.header[12]), str(answered[0].header[12]), str(answered[0].trailer[1])) == ("F1", "B1", "2")


@contextlib.contextmanager
def listener_running(live):
    """The listener `gateway mllp` runs, with these settings, in a thread until the block ends."""
    loop, state = asyncio.new_event_loop(), {"ready": threading.Event()}

    async def main():
        state["stop"], ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(listen(live, ready, state["stop"]))
        await ready.wait()
        state["ready"].set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert state["ready"].wait(30)
        yield
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(40)


def test_the_listener_holds_a_bounded_number_of_connections(settings, database):
    """Past GATEWAY_MLLP_MAX_CONNECTIONS a connection is closed as soon as it is accepted: what the
    listener may buffer is bounded by the connections times the frame limit."""
    live = replace(settings, mllp_host="127.0.0.1", mllp_port=free_port(), mllp_max_connections=2)
    opened = []
    with listener_running(live):
        try:
            for _ in range(2):
                opened.append(socket.create_connection(("127.0.0.1", live.mllp_port), timeout=10))
                opened[-1].sendall(b"\x0b")   # a frame begun: the connection is the listener's
            extra = socket.create_connection(("127.0.0.1", live.mllp_port), timeout=10)
            extra.settimeout(10)
            assert extra.recv(1) == b""        # closed at once
            extra.close()
        finally:
            for sock in opened:
                sock.close()


def test_a_frame_not_ended_is_kept_refused_and_answered_while_its_sender_waits(settings, database, caplog):
    """A sender ending its frames with <FS> alone waited for its ACK until the idle timeout, then the
    connection was closed without a word and the message lost; one that closed mid-frame lost it
    too. A message sent without MLLP's framing was ignored, and nothing said why."""
    live = replace(settings, mllp_host="127.0.0.1", mllp_port=free_port(), mllp_idle_timeout=1.0)
    message = b"MSH|^~\\&|GAM|CH|GW|DMP|20260101||ADT^A28|UNENDED1|P|2.5\rPID|1||9400001^^^CH&1.2.3&ISO^PI||X^Y\r"

    def refused() -> dict:
        with database[0].connect() as conn:
            return {r.control_id: r for r in conn.execute(select(raw_inputs).where(raw_inputs.c.status == "refused"))}

    with listener_running(live):
        with socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30) as sender:
            sender.sendall(b"\x0b" + message + b"\x1c")          # <FS> alone
            answer = b""
            while not answer.endswith(b"\x1c\r"):
                answer += sender.recv(4096) or b"\x1c\r"
        ack = answer.strip(b"\x0b\x1c\r")
        assert msa(ack)[1:3] == ["AR", "UNENDED1"]
        assert fields(ack, "ERR")[0][8].startswith("the MLLP frame was not ended by <FS><CR> (0x1C 0x0D)")
        with socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30) as sender:
            sender.sendall(b"\x0b" + message.replace(b"UNENDED1", b"UNENDED2")[:70])   # then closed
        with socket.create_connection(("127.0.0.1", live.mllp_port), timeout=30) as sender:
            sender.sendall(message.replace(b"UNENDED1", b"UNFRAMED"))                  # no framing at all
            [ack] = mllp_send_on(sender, message.replace(b"UNENDED1", b"FRAMED1"))
            assert msa(ack)[1:3] == ["AA", "FRAMED1"]
        deadline = time.monotonic() + 30
        while "UNENDED2" not in refused() and time.monotonic() < deadline:
            time.sleep(0.05)
    kept = refused()
    assert kept["UNENDED1"].size == len(message) + 1 and kept["UNENDED2"].size == 70
    assert "UNFRAMED" not in kept
    told = [r for r in caplog.records if r.name == "gateway.hl7v2.mllp"]
    assert [r.getMessage() for r in told if getattr(r, "hl7v2_unframed", False)] == [
        "MLLP bytes outside a frame ignored: a message is framed <VT> message <FS><CR>"]
    assert sorted(r.why for r in told if r.getMessage() == "MLLP frame not ended by <FS><CR>") == ["closed", "idle"]


def mllp_send_on(sock: socket.socket, message: bytes) -> list[bytes]:
    sock.sendall(mllp.frame(message))
    answer = b""
    while not answer.endswith(b"\x1c\r"):
        answer += sock.recv(4096) or b"\x1c\r"
    return [answer.strip(b"\x0b\x1c\r")]


def test_of_listeners_sharing_a_socket_the_one_with_fewer_connections_takes_the_next():
    """Listener processes that share one socket (`gateway serve`'s) are each woken by a connection;
    one with connections open waits before accepting, so an idle one takes it. Two event loops in
    threads stand for two processes, each with its own descriptor; the loaded one alternates."""
    shared = socket.create_server(("127.0.0.1", 0))
    port = shared.getsockname()[1]

    def taker(loads: dict[str, int]) -> str:
        """Which of two fresh listeners with these loads accepts one connection."""
        accepted: list[str] = []
        loops: dict = {}
        stops: dict = {}
        running = threading.Event()

        def run(name: str) -> None:
            async def main():
                async def adopt(conn):
                    accepted.append(name)
                    conn.close()

                stops[name] = asyncio.Event()
                acceptor = mllp.FewestConnectionsFirst(socket.socket(fileno=os.dup(shared.fileno())),
                                                       lambda: loads[name], adopt)
                loops[name] = asyncio.get_running_loop()
                if len(loops) == len(loads):
                    running.set()
                await stops[name].wait()
                acceptor.close()
                await acceptor.wait_closed()

            asyncio.run(main())

        threads = [threading.Thread(target=run, args=(name,)) for name in loads]
        for thread in threads:
            thread.start()
        try:
            assert running.wait(30)
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
            deadline = time.monotonic() + 30
            while not accepted and time.monotonic() < deadline:
                time.sleep(0.001)
        finally:
            for name, loop in loops.items():
                loop.call_soon_threadsafe(stops[name].set)
            for thread in threads:
                thread.join(30)
        assert len(accepted) == 1
        return accepted[0]

    try:
        # 20 connections open: the loaded one waits the most, ACCEPT_DELAY_MAX, before it accepts.
        assert [taker({"a": 20, "b": 0} if n % 2 else {"a": 0, "b": 20}) for n in range(8)] == ["a", "b"] * 4
    finally:
        shared.close()
