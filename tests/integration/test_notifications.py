""""A document was added": queued with the document, once, only when the patient may see it, sent
to the accounts that manage the record and want it, saying nothing medical."""
import email
import email.policy
import json

import pytest
from sqlalchemy import select

from conftest import GP, attend_all, free_port, sample
from gateway.access.rules import IDNATPS_SYSTEM
from gateway.demo import build_submission
from gateway.mapping import codes
from gateway.services import notifications
from gateway.services.consents import decision
from gateway.space import accounts
from gateway.space.senders import read_outbox
from gateway.storage.schema import notifications as queue

XML = {"Content-Type": "application/xml"}
FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}
MARTIN, MOREAU = "185067511204554", "212057501802305"
PASSWORD = "a long enough password"
MEDICAL_WORDS = ("biolog", "compte rendu", "imagerie", "échographie", "laboratoire", "hémato", "glyc", "moreau", "martin")


@pytest.fixture
def people(database):
    accounts.create_account(database[0], "paul", PASSWORD, "patient", [MARTIN], "Paul MARTIN", "paul@example.test")
    accounts.create_account(database[0], "sophie", PASSWORD, "representative", [MOREAU], "Sophie MOREAU",
                            "sophie@example.test")


def queued(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(queue.c.about_id)).scalars())


def mails(settings, to: str) -> list[dict]:
    return [m for m in read_outbox(settings) if m["to"] == to and m.get("code") is None]


def submit(client, bearer, name: str, labels: list[str] = ()) -> str:
    bundle = build_submission(sample(name), 10_000_000)
    docref = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    docref["securityLabel"] = [{"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": code}]} for code in labels]
    answer = client.post("/fhir", data=json.dumps(bundle), headers={**FHIR, **bearer("system", sub="hospital")})
    assert answer.status_code == 200, answer.text
    location = next(e["response"]["location"] for e in answer.json["entry"] if "DocumentReference/" in e["response"]["location"])
    return location.split("DocumentReference/")[1].split("/")[0]


def test_a_visible_document_is_announced_once_without_medical_content(client, bearer, database, settings, people):
    engine = database[0]
    docref_id = client.post("/cda", data=sample("cr-biologie-martin.xml"),
                            headers={**XML, **bearer("system", sub="hospital")}).json["id"]
    assert docref_id in queued(engine)
    # The same document sent again is a duplicate: nothing more is queued or sent.
    client.post("/cda", data=sample("cr-biologie-martin.xml"), headers={**XML, **bearer("system", sub="hospital")})
    assert notifications.send_pending(settings, engine) == 1
    assert notifications.send_pending(settings, engine) == 0
    sent = mails(settings, "paul@example.test")
    assert len(sent) == 1
    text = (sent[0]["subject"] + sent[0]["text"]).lower()
    assert "nouveau document" in text and settings.public_base_url in text
    assert not [word for word in MEDICAL_WORDS if word in text], text


def test_a_document_invisible_to_the_patient_is_announced_only_when_revealed(client, bearer, database, settings,
                                                                          people):
    engine = database[0]
    hidden = submit(client, bearer, "ldl-ses-martin.xml", ["INVISIBLE_PATIENT"])
    assert hidden not in queued(engine)
    notifications.send_pending(settings, engine)
    assert mails(settings, "paul@example.test") == []
    # The attending physician announces it (the label is removed): now it is queued, and sent.
    attend_all(engine)
    doctor = bearer("doctor", sub=GP)
    current = client.get(f"/fhir/DocumentReference/{hidden}", headers=doctor).json
    position = next(i for i, label in enumerate(current["securityLabel"])
                    if any(c["code"] == "INVISIBLE_PATIENT" for c in label["coding"]))
    revealed = client.patch(f"/fhir/DocumentReference/{hidden}", data=json.dumps([
        {"op": "remove", "path": f"/securityLabel/{position}"}]), headers={**PATCH, **doctor})
    assert revealed.status_code == 200, revealed.text
    assert hidden in queued(engine)
    assert notifications.send_pending(settings, engine) == 1
    assert len(mails(settings, "paul@example.test")) == 1


def test_the_patient_may_switch_it_off_and_representatives_follow_their_own_labels(client, bearer, database,
                                                                                   settings, people):
    engine = database[0]
    accounts.set_notifications(engine, "paul", False)
    client.post("/cda", data=sample("cr-biologie-martin.xml"), headers={**XML, **bearer("system", sub="hospital")})
    submit(client, bearer, "cr-imagerie-echographie-moreau.xml", ["INVISIBLE_REPRESENTANTS_LEGAUX"])
    assert notifications.send_pending(settings, engine) == 2
    assert mails(settings, "paul@example.test") == []      # switched off
    assert mails(settings, "sophie@example.test") == []    # hidden from the minor's representatives
    # The patient's own documents are never announced to them.
    with engine.connect() as conn:
        assert all(row.recipients == 0 for row in conn.execute(select(queue)))


def test_a_record_s_documents_queued_together_are_one_mail_counting_what_each_account_may_see(
        client, bearer, database, settings, people, monkeypatch):
    """5,902 documents imported into a record were 5,902 mails to its patient, one per document:
    now a round sends each account one mail for the documents of a record it may see."""
    engine = database[0]
    hospital = {**XML, **bearer("system", sub="hospital")}
    for name in ("cr-biologie-martin.xml", "ldl-ses-martin.xml"):
        assert client.post("/cda", data=sample(name), headers=hospital).status_code == 201
    submit(client, bearer, "cr-imagerie-echographie-moreau.xml", ["INVISIBLE_REPRESENTANTS_LEGAUX"])
    second = sample("cr-imagerie-echographie-moreau.xml").replace(b'<id root="1.2.250.1.213.1.1.9.2.6.1"/>',
                                                                  b'<id root="1.2.250.1.213.1.1.9.2.6.2"/>', 1)
    assert client.post("/cda", data=second, headers=hospital).status_code == 201
    assert notifications.send_pending(settings, engine) == 4
    [paul] = mails(settings, "paul@example.test")
    assert paul["subject"] == "2 nouveaux documents dans votre dossier médical partagé"
    assert "ont ajouté 2 documents à votre dossier médical partagé" in paul["text"]
    [sophie] = mails(settings, "sophie@example.test")   # one of the minor's two is hidden from her
    assert sophie["subject"] == "Un nouveau document dans votre dossier médical partagé"
    assert "un document au dossier médical partagé d'un enfant" in sophie["text"]
    for text in (paul["subject"] + paul["text"], sophie["subject"] + sophie["text"]):
        assert not [word for word in MEDICAL_WORDS if word in text.lower()], text
    with engine.connect() as conn:
        assert sorted(row.recipients for row in conn.execute(select(queue))) == [1, 1, 1, 1]
    # What one mail counts is bounded: a record's notifications beyond PER_MAIL wait for the next.
    monkeypatch.setattr(notifications, "PER_MAIL", 1)
    client.post("/cda", data=sample("cr-biologie-martin.xml").replace(b"1.2.250.1.213.1.1.9.2.7.1",
                                                                     b"1.2.250.1.213.1.1.9.2.7.2"), headers=hospital)
    client.post("/cda", data=sample("cr-biologie-martin.xml").replace(b"1.2.250.1.213.1.1.9.2.7.1",
                                                                     b"1.2.250.1.213.1.1.9.2.7.3"), headers=hospital)
    assert notifications.send_pending(settings, engine) == 1
    assert notifications.send_pending(settings, engine) == 1
    assert [m["subject"][:2] for m in mails(settings, "paul@example.test")] == ["2 ", "Un", "Un"]


def test_two_senders_at_once_never_count_a_document_twice(client, bearer, database, settings, people, monkeypatch):
    """Two nodes each run the sender: a record's notifications are claimed together by one of them
    (RETURNING the rows its UPDATE took), so each document is announced once."""
    import re
    import threading

    engine = database[0]
    hospital = {**XML, **bearer("system", sub="hospital")}
    for n in range(6):
        cda = sample("cr-biologie-martin.xml").replace(b"1.2.250.1.213.1.1.9.2.7.1", f"1.2.250.1.213.1.1.9.2.7.{n + 10}".encode())
        assert client.post("/cda", data=cda, headers=hospital).status_code == 201
    sent, claiming = [], threading.Barrier(2)
    monkeypatch.setattr(notifications, "message_sender", lambda name: lambda _, mail: sent.append(mail))
    transaction = notifications.write_transaction
    first = threading.local()

    def together(*args, **kwargs):
        # Both senders have read which records wait before either claims: they claim at once.
        if not getattr(first, "passed", False):
            first.passed = True
            claiming.wait(30)
        return transaction(*args, **kwargs)

    monkeypatch.setattr(notifications, "write_transaction", together)

    def sender():
        notifications.send_pending(settings, engine)

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    counted = [int(m.subject.split()[0]) if m.subject[0].isdigit() else 1 for m in sent]
    assert sum(counted) == 6 and {m.to for m in sent} == {"paul@example.test"}, [m.subject for m in sent]
    with engine.connect() as conn:
        assert [(row.sent_at is not None, row.recipients) for row in conn.execute(select(queue))] == [(True, 1)] * 6
    assert all(re.fullmatch(r"(Un nouveau document|\d+ nouveaux documents) dans votre dossier médical partagé",
                            m.subject) for m in sent)


def test_the_e_mail_goes_through_a_real_smtp_server(client, bearer, database, settings, people, monkeypatch):
    from dataclasses import replace

    from aiosmtpd.controller import Controller

    received = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        for name, value in (("GATEWAY_SMTP_HOST", "127.0.0.1"), ("GATEWAY_SMTP_PORT", str(smtp.port)),
                            ("GATEWAY_SMTP_STARTTLS", "0"), ("GATEWAY_SMTP_FROM", "dmp@example.test")):
            monkeypatch.setenv(name, value)
        client.post("/cda", data=sample("cr-biologie-martin.xml"), headers={**XML, **bearer("system", sub="hospital")})
        assert notifications.send_pending(replace(settings, message_sender="smtp"), database[0]) == 1
    finally:
        smtp.stop()
    assert [e.rcpt_tos for e in received] == [["paul@example.test"]]
    mail = email.message_from_bytes(received[0].content, policy=email.policy.default)
    assert mail["Subject"] == "Un nouveau document dans votre dossier médical partagé"
    assert mail["From"] == "dmp@example.test" and "/documents" in mail.get_content()


def test_starttls_checks_the_mail_server_s_certificate_and_the_mail_is_dated(client, bearer, database, settings, people,
                                                                              monkeypatch, tmp_path):
    """smtplib's STARTTLS takes any certificate unless given a context that checks it: a server in
    the middle read every one-time code. The mail had no Date nor Message-ID, which RFC 5322 asks
    for and whose absence spam filters score; a sign-in code filed as spam locks its patient out."""
    import ssl
    from dataclasses import replace

    from aiosmtpd.controller import Controller

    from test_mllp_tls import issue

    ca = issue(tmp_path, "ca")
    issue(tmp_path, "smtp", ca, server=True)
    issue(tmp_path, "other-ca")
    received = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "smtp.pem", tmp_path / "smtp-key.pem")
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port(), tls_context=server_tls, require_starttls=True)
    smtp.start()
    sending = replace(settings, message_sender="smtp")
    try:
        for name, value in (("GATEWAY_SMTP_HOST", "127.0.0.1"), ("GATEWAY_SMTP_PORT", str(smtp.port)),
                            ("GATEWAY_SMTP_FROM", "dmp@example.test"), ("GATEWAY_SMTP_CA", str(tmp_path / "other-ca.pem"))):
            monkeypatch.setenv(name, value)
        client.post("/cda", data=sample("cr-biologie-martin.xml"), headers={**XML, **bearer("system", sub="hospital")})
        with pytest.raises(notifications.SenderUnavailable, match="^SSLCertVerificationError$"):
            notifications.send_pending(sending, database[0])
        assert received == []
        monkeypatch.setenv("GATEWAY_SMTP_CA", str(tmp_path / "ca.pem"))
        # The one not sent is sent at the next round, with the next document's: one mail for both.
        client.post("/cda", data=sample("ldl-ses-martin.xml"), headers={**XML, **bearer("system", sub="hospital")})
        assert notifications.send_pending(sending, database[0]) == 2
    finally:
        smtp.stop()
    mail = email.message_from_bytes(received[0].content, policy=email.policy.default)
    assert [e.rcpt_tos for e in received] == [["paul@example.test"]]
    assert mail["Subject"] == "2 nouveaux documents dans votre dossier médical partagé"
    assert mail["Date"].datetime.tzinfo is not None
    assert mail["Message-ID"].startswith("<") and mail["Message-ID"].endswith("@example.test>")


def test_an_address_refused_for_good_is_counted_and_not_tried_again_and_a_refusal_for_now_waits(
        client, bearer, database, settings, people, monkeypatch, caplog, capsys):
    """A 5xx to RCPT TO (a mailbox that does not exist, an address mistyped at the account's
    creation): the notification was sent again every five minutes, for good, and each time a
    traceback logged the address. A 4xx waits for the next round."""
    from dataclasses import replace

    from aiosmtpd.controller import Controller

    from gateway.cli import main

    engine = database[0]
    # A second account of Paul's, its address mistyped.
    accounts.create_account(engine, "paul-typo", PASSWORD, "patient", [MARTIN], "Paul MARTIN", "nobody@example.test")
    received, answers = [], {"nobody@example.test": "550 5.1.1 <nobody@example.test>: mailbox unavailable"}

    class Inbox:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address in answers:
                return answers[address]
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    sending = replace(settings, message_sender="smtp")
    try:
        for name, value in (("GATEWAY_SMTP_HOST", "127.0.0.1"), ("GATEWAY_SMTP_PORT", str(smtp.port)),
                            ("GATEWAY_SMTP_STARTTLS", "0"), ("GATEWAY_SMTP_FROM", "dmp@example.test")):
            monkeypatch.setenv(name, value)
        first = client.post("/cda", data=sample("cr-biologie-martin.xml"),
                            headers={**XML, **bearer("system", sub="hospital")}).json["id"]
        assert notifications.send_pending(sending, engine) == 1
        assert [e.rcpt_tos for e in received] == [["paul@example.test"]]
        with engine.connect() as conn:
            sent = conn.execute(select(queue).where(queue.c.about_id == first)).one()
        assert sent.sent_at is not None and (sent.recipients, sent.refused) == (1, 1)
        assert notifications.send_pending(sending, engine) == 0   # not tried again
        answers["paul@example.test"] = "451 4.3.0 mailbox busy, try later"
        second = client.post("/cda", data=sample("ldl-ses-martin.xml"),
                             headers={**XML, **bearer("system", sub="hospital")}).json["id"]
        with pytest.raises(notifications.SenderUnavailable, match="^SMTPRecipientsRefused$"):
            notifications.send_pending(sending, engine)
        with engine.connect() as conn:
            waiting = conn.execute(select(queue).where(queue.c.about_id == second)).one()
        assert waiting.sent_at is None and waiting.claimed_until is None   # taken up at the next round
        del answers["paul@example.test"]
        assert notifications.send_pending(sending, engine) == 1
    finally:
        smtp.stop()
    assert [e.rcpt_tos for e in received] == [["paul@example.test"]] * 2
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database[1])
    assert main(["notifications", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"DocumentReference/{first} " in listed and "to 1 account(s), 1 address(es) refused by the mail server" in listed
    for record in caplog.records:
        assert "example.test" not in record.getMessage() and "example.test" not in str(record.__dict__)


def test_a_sender_or_a_database_that_takes_nothing_is_said_once_and_again_when_it_answers(settings, database,
                                                                                         monkeypatch, caplog):
    """A database that failed (a full disk, a restart) was a traceback at every round, with the
    statement; it is said once, in the database's own words."""
    import logging
    import threading

    import pysqlite3.dbapi2 as sqlite
    from sqlalchemy.exc import OperationalError

    stop, rounds = threading.Event(), []

    def round_of_a_mail_server_then_a_database_down(settings, engine):
        rounds.append(1)
        if len(rounds) <= 3:
            raise notifications.SenderUnavailable(ConnectionRefusedError())
        if len(rounds) <= 5:
            raise OperationalError("UPDATE notifications SET claimed_until=?", {},
                                   sqlite.OperationalError("database or disk is full"))
        if len(rounds) == 7:
            stop.set()
        return 0

    monkeypatch.setattr(notifications, "send_pending", round_of_a_mail_server_then_a_database_down)
    caplog.set_level(logging.INFO, "gateway.services.notifications")
    notifications.follow(settings, database[0], 0, stop)
    said = [(r.levelname, r.getMessage(), getattr(r, "error", None)) for r in caplog.records
            if r.name == "gateway.services.notifications"]
    assert said == [("WARNING", "notifications wait: the sender took none; trying again every round",
                     "ConnectionRefusedError"),
                    ("WARNING", "notifications wait: the database took none; trying again every round",
                     "database or disk is full"),
                    ("INFO", "notifications: the sender answers again", None),
                    ("INFO", "notifications: the database answers again", None)]
    assert not any(r.exc_info for r in caplog.records)


def test_a_document_announced_before_a_merge_is_announced_to_the_survivor_s_accounts(client, bearer, database,
                                                                                     settings, people):
    """A document stored, then its record merged into another (A40) before the next round: its
    announcement stayed with the merged patient, whose INS now names the survivor, and no account
    was found for it. It follows the record."""
    engine = database[0]
    assert client.post("/cda", data=sample("cr-biologie-martin.xml"),
                       headers={**XML, **bearer("system", sub="hospital")}).status_code == 201
    ins = "^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    merge = "\r".join([
        "MSH|^~\\&|GAM|CH-SAINT-AUBIN|GW|DMP|20260310080000||ADT^A40^ADT_A39|MERGE1|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8",
        "EVN||20260310080000", "PID|1||900000090^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI||MARTIN^PAUL^^^^^L||19850612|M",
        f"MRG|{MARTIN}{ins}"]) + "\r"
    answer = client.post("/hl7v2", data=merge.encode(), headers={"Content-Type": "x-application/hl7-v2+er7",
                                                                  **bearer("system", sub="GAM CH-SAINT-AUBIN")})
    assert b"MSA|AA" in answer.data, answer.data
    assert notifications.send_pending(settings, engine) == 1
    assert len(mails(settings, "paul@example.test")) == 1


def test_an_emergency_access_is_told_to_the_patient_once_an_hour_whatever_they_chose_of_new_documents(
        client, bearer, database, settings, people, monkeypatch):
    """R1111-48: the patient is informed, after the fact, of an emergency access to their record.
    It was in their trail, for them to come and read, and nothing told them to. One notice with the
    first access of the hour, none for a refused one, a care access or a patient's own reading; it
    names no one and no document, and goes to each account of the record, their choice on new
    documents aside."""
    from datetime import timedelta

    from gateway.storage import repository

    engine = database[0]
    accounts.set_notifications(engine, "paul", False)
    client.post("/cda", data=sample("cr-biologie-martin.xml"), headers={**XML, **bearer("system", sub="hospital")})
    notifications.send_pending(settings, engine)
    query = {"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"}
    client.get("/fhir/DocumentReference", query_string=query, headers=bearer("patient", patient=MARTIN))
    attend_all(engine)
    client.get("/fhir/DocumentReference", query_string=query, headers=bearer("doctor", sub=GP))
    assert notifications.send_pending(settings, engine) == 0
    emergency = bearer("doctor", sub="899900000020", purpose="emergency", patient=MARTIN)
    for _ in range(3):
        found = client.get("/fhir/DocumentReference", query_string=query, headers=emergency)
        assert found.status_code == 200 and found.json["total"] == 1
    assert notifications.send_pending(settings, engine) == 1
    sent = mails(settings, "paul@example.test")
    assert [mail["subject"] for mail in sent] == ["Accès en urgence à votre dossier médical partagé"]
    text = sent[0]["text"].lower()
    assert f"{settings.public_base_url}/historique" in text
    assert not [word for word in MEDICAL_WORDS + ("899900000020",) if word in text], text
    assert "médecin traitant en est informé" not in text   # the directory gives him no MSSanté address
    # The hour after: the next emergency access is told again.
    client.get("/fhir/DocumentReference", query_string=query, headers=emergency)
    assert notifications.send_pending(settings, engine) == 0
    monkeypatch.setattr(repository, "EMERGENCY_NOTICE_EVERY", timedelta(0))
    client.get("/fhir/DocumentReference", query_string=query, headers=emergency)
    assert notifications.send_pending(settings, engine) == 1
    assert len(mails(settings, "paul@example.test")) == 2
    # Refused (the patient opposed emergency access): nothing to tell but the trail's attempt.
    assert client.post("/fhir/Consent", data=json.dumps(decision("emergency-access", "deny")),
                       headers={**FHIR, **bearer("patient", patient=MARTIN)}).status_code == 201
    assert client.get("/fhir/DocumentReference", query_string=query, headers=emergency).json.get("total") == 0
    assert notifications.send_pending(settings, engine) == 0
    kinds = {(item.kind, item.sent_at is not None) for item in notifications.queued(engine)}
    assert kinds == {("new-document", True), ("emergency-access", True)}


def emergency_mails(settings, to: str) -> list[dict]:
    return [m for m in mails(settings, to) if m["subject"] == "Accès en urgence à votre dossier médical partagé"]


def register_professional(client, bearer, idnatps: str, family: str, *emails: dict) -> None:
    """A Practitioner and their role in the directory, the role with the addresses given."""
    system = {**FHIR, **bearer("system", sub="hospital")}
    practitioner = {"resourceType": "Practitioner", "identifier": [{"system": IDNATPS_SYSTEM, "value": idnatps}],
                    "name": [{"family": family, "given": ["Camille"], "prefix": ["DR"]}]}
    made = client.post("/fhir/Practitioner", data=json.dumps(practitioner), headers=system)
    assert made.status_code == 201
    role = {"resourceType": "PractitionerRole", "telecom": list(emails),
            "practitioner": {"identifier": {"system": IDNATPS_SYSTEM, "value": idnatps}}}
    assert client.post("/fhir/PractitionerRole", data=json.dumps(role), headers=system).status_code == 201
    # The role names its practitioner by identifier, as the annuaire santé does: it is linked to them.
    linked = client.get("/fhir/PractitionerRole", query_string={"practitioner": f"Practitioner/{made.json['id']}"})
    assert linked.json["total"] == 1, linked.json


TYPE_MESSAGERIE = "https://mos.esante.gouv.fr/NOS/TRE_R256-TypeMessagerie/FHIR/TRE-R256-TypeMessagerie"


def mail_address(address: str, typed: bool = False) -> dict:
    extension = [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type",
                  "valueCoding": {"code": "MSSANTE", "system": TYPE_MESSAGERIE}}]
    return {"system": "email", "value": address, **({"extension": extension} if typed else {})}


def test_an_emergency_access_is_told_to_the_attending_physician_at_their_mssante_address(
        client, bearer, database, settings, people, caplog):
    """R1111-48: the holder *and their attending physician* are informed of an emergency access
    after the fact. The patient was; their GP, who follows them, was told nothing. The GP is told at
    the MSSanté addresses the directory gives (typed so, or of an MSSanté domain; not a personal
    one), with the patient named, since MSSanté carries health data between professionals; not of
    their own access; and the operator learns that a GP went untold, not who."""
    engine = database[0]
    client.post("/cda", data=sample("cr-biologie-martin.xml"), headers={**XML, **bearer("system", sub="hospital")})
    notifications.send_pending(settings, engine)
    register_professional(client, bearer, GP, "NOEL", mail_address("camille.noel@example.test"),
                          mail_address("cnoel@msp-acacias.example.test", typed=True),
                          mail_address("c.noel@medecin.mssante.fr"))
    register_professional(client, bearer, "899900000020", "ROUSSEAU", mail_address("m.rousseau@clinique.mssante.fr"))
    attend_all(engine)
    query = {"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"}
    reader = bearer("doctor", sub="899900000020", purpose="emergency", patient=MARTIN)
    assert client.get("/fhir/DocumentReference", query_string=query, headers=reader).json["total"] == 1
    assert notifications.send_pending(settings, engine) == 1
    told = [m for m in read_outbox(settings) if "patient·e" in m["subject"]]
    assert sorted(m["to"] for m in told) == ["c.noel@medecin.mssante.fr", "cnoel@msp-acacias.example.test"]
    assert len(emergency_mails(settings, "paul@example.test")) == 1
    # The patient learns that their GP is told, not who the GP is nor where.
    said = emergency_mails(settings, "paul@example.test")[0]["text"]
    assert "Le médecin traitant en est informé lui aussi." in said and "noel" not in said.lower()
    text = told[0]["text"]
    assert told[0]["subject"] == "Accès en urgence au dossier médical partagé de votre patient·e"
    # Whose record, when and by whom (the directory's name: the token gave none).
    for said in ("PAUL MARTIN", "né·e le 12/06/1985", MARTIN, "Dr Camille ROUSSEAU (RPPS 99900000020)",
                 "(bris de glace)", "R. 1111-48", "heure de Paris"):
        assert said in text, (said, text)
    assert [item.recipients for item in notifications.queued(engine) if item.kind == "emergency-access"] == [3]
    # The GP's own emergency access is not told to them; to the patient, it is.
    from datetime import timedelta

    from gateway.storage import repository
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repository, "EMERGENCY_NOTICE_EVERY", timedelta(0))
        client.get("/fhir/DocumentReference", query_string=query,
                   headers=bearer("doctor", sub=GP, purpose="emergency", patient=MARTIN))
        assert notifications.send_pending(settings, engine) == 1
        assert len([m for m in read_outbox(settings) if "patient·e" in m["subject"]]) == 2
        assert len(emergency_mails(settings, "paul@example.test")) == 2
        # The SAMU's regulator is said as such.
        client.get("/fhir/DocumentReference", query_string=query,
                   headers=bearer("regulator", sub="899900000099", purpose="regulation", patient=MARTIN))
        assert notifications.send_pending(settings, engine) == 1
        told = [m for m in read_outbox(settings) if "patient·e" in m["subject"]]
        assert len(told) == 4 and "(par la régulation médicale du SAMU, centre 15)" in told[-1]["text"]
        # A GP the directory gives no MSSanté address: the operator is told one went untold, not who.
        attend_all(engine, "899900000038")
        caplog.clear()
        client.get("/fhir/DocumentReference", query_string=query, headers=reader)
        assert notifications.send_pending(settings, engine) == 1
    untold = [r for r in caplog.records if "attending physician" in r.getMessage()]
    assert [(r.levelname, r.physicians) for r in untold] == [("WARNING", 1)]
    assert not [r for r in caplog.records if "899900000038" in r.getMessage() + str(r.__dict__)]
    assert len([m for m in read_outbox(settings) if "patient·e" in m["subject"]]) == 6
