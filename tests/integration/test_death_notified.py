"""A patient's death, as PAM-FR feeds it (PID-29, PID-30): kept in the Patient (deceased[x], as the
official profiles check it), and the record closed to the patient's own accounts and their
representatives, whose mails stop; professionals read it as before. The gateway dropped both fields,
and a patient's space went on showing their record to whoever signed in with their password."""
import json
from html import unescape
from pathlib import Path

import pytest
from sqlalchemy import select

import profiles
from conftest import GP, attend_all, sample
from gateway.services import notifications
from gateway.space import accounts
from gateway.space.senders import read_outbox
from gateway.storage.schema import resources
from test_patient_space import PASSWORD, sign_in

MARTIN = "185067511204554"
XML = {"Content-Type": "application/xml"}
HL7 = {"Content-Type": "x-application/hl7-v2+er7"}
HL7V2_SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7v2"


def identity_update(sample_name: str, control: str, pid_fields: dict[int, str]) -> bytes:
    """A sample ADT of samples/hl7v2 made an identity update (ADT^A31, its ZFA left out), control id
    `control`, its PID's fields numbered as HL7 numbers them set as given."""
    text = (HL7V2_SAMPLES / sample_name).read_bytes().decode().replace("\r\n", "\r").replace("\n", "\r")
    segments = [segment for segment in text.strip().split("\r") if not segment.startswith("ZFA")]
    msh = segments[0].split("|")
    msh[8], msh[9] = "ADT^A31^ADT_A05", control   # MSH-9, MSH-10: the field separator is MSH-1
    segments[0] = "|".join(msh)
    index = next(i for i, segment in enumerate(segments) if segment.startswith("PID|"))
    pid = segments[index].split("|")
    pid += [""] * (max(pid_fields) + 1 - len(pid))
    for number, value in pid_fields.items():
        pid[number] = value
    segments[index] = "|".join(pid)
    return "\r".join(segments).encode()


def martin_a31(control: str, death_time: str = "", indicator: str = "") -> bytes:
    """Paul MARTIN's identity (ADT^A31), PID-29 and PID-30 as given."""
    return identity_update("adt-a01-martin.hl7", control, {29: death_time, 30: indicator})


def ack(answer) -> tuple[str, list[str]]:
    segments = answer.data.decode().split("\r")
    msa = next(s for s in segments if s.startswith("MSA")).split("|")
    return msa[1], [s for s in segments if s.startswith("ERR")]


def martin(client, bearer) -> dict:
    found = client.get(f"/fhir/Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{MARTIN}",
                       headers=bearer("doctor", sub=GP)).json
    return found["entry"][0]["resource"]


def test_a_death_is_kept_and_closes_the_record_to_the_patient_s_accounts(app, settings, client, bearer, database):
    engine = database[0]
    system = bearer("system", sub="GAM CH-SAINT-AUBIN")
    accounts.create_account(engine, "paul", PASSWORD, "patient", [MARTIN], "Paul MARTIN", "paul@example.test")
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), headers={**XML, **system}).status_code == 201
    attend_all(engine)
    patient, gp = bearer("patient", patient=MARTIN), bearer("doctor", sub=GP)
    while notifications.send_pending(settings, engine):
        pass
    mailed = len([m for m in read_outbox(settings) if m["to"] == "paul@example.test"])

    assert ack(client.post("/hl7v2", data=martin_a31("A31-1", "20261201103000", "Y"), headers={**system, **HL7})) \
        == ("AA", [])
    assert martin(client, bearer)["deceasedDateTime"] == "2026-12-01T10:30:00+01:00"
    refused = client.get("/fhir/DocumentReference?status=current", headers=patient)
    assert refused.status_code == 403 and refused.json["issue"][0]["diagnostics"] == (
        "the record shows its patient deceased: it is closed to their own accounts and their representatives; "
        "their heirs ask for it under CSP L1110-4 V")
    assert client.get("/fhir/DocumentReference?status=current", headers=gp).json["total"] == 1
    page = sign_in(app, settings).get("/documents")
    assert page.status_code == 403 and "indique le décès de son titulaire" in unescape(page.text)
    # A document added after the death: the patient's mailbox is told nothing.
    assert client.post("/cda", data=sample("cr-biologie-martin.xml"), headers={**XML, **system}).status_code == 201
    while notifications.send_pending(settings, engine):
        pass
    assert len([m for m in read_outbox(settings) if m["to"] == "paul@example.test"]) == mailed + 1   # the code only

    # A PID that says nothing of a death keeps it; a correction (PID-30 N) reopens the record.
    assert ack(client.post("/hl7v2", data=martin_a31("A31-2"), headers={**system, **HL7}))[0] == "AA"
    assert martin(client, bearer)["deceasedDateTime"] == "2026-12-01T10:30:00+01:00"
    assert ack(client.post("/hl7v2", data=martin_a31("A31-3", "", "N"), headers={**system, **HL7}))[0] == "AA"
    corrected = martin(client, bearer)
    assert corrected["deceasedBoolean"] is False and "deceasedDateTime" not in corrected
    assert client.get("/fhir/DocumentReference?status=current", headers=patient).json["total"] == 2

    profiles.require()
    collected = profiles.Collected()
    collected.add(martin(client, bearer))
    assert ack(client.post("/hl7v2", data=martin_a31("A31-4", "20261201", "Y"), headers={**system, **HL7}))[0] == "AA"
    collected.add(martin(client, bearer))
    assert not collected.errors(), collected.errors()


@pytest.mark.parametrize("death_time, indicator, location, code", [
    ("", "X", "PID^1^30", "103"),
    ("20261345", "Y", "PID^1^29", "102"),
    ("20261201", "N", "PID^1^30", "103"),
])
def test_a_death_said_wrongly_is_refused_where_it_is_wrong(client, bearer, database, death_time, indicator, location,
                                                            code):
    system = bearer("system", sub="GAM CH-SAINT-AUBIN")
    answer = client.post("/hl7v2", data=martin_a31("A31-9", death_time, indicator), headers={**system, **HL7})
    status, errs = ack(answer)
    assert status == "AE" and len(errs) == 1, errs
    err = errs[0].split("|")
    assert err[2].startswith(location) and err[3].startswith(code), errs
    with database[0].connect() as conn:
        assert conn.execute(select(resources.c.res_id).where(resources.c.res_type == "Patient")).first() is None


def test_the_corpus_s_deaths_are_kept_as_their_messages_say(client, bearer, database, corpus_dir):
    """The third-party messages that carry PID-29 and PID-30 (Microsoft FHIR-Converter's samples,
    the ANS's PAM-FR examples), each read here without the gateway's reader."""
    system = bearer("system", sub="GAM CH-SAINT-AUBIN")
    checked = 0
    for path in sorted((corpus_dir / "hl7v2").iterdir()):
        text = path.read_bytes().decode("latin-1").replace("\n", "\r")
        pid = next((s.split("|") for s in text.split("\r") if s.startswith("PID|")), None)
        if not path.name.startswith(("msfc_ADT", "fr_PAM")) or pid is None or len(pid) <= 30:
            continue
        if ack(client.post("/hl7v2", data=path.read_bytes(), headers={**system, **HL7}))[0] != "AA":
            continue
        identifier = pid[3].split("~")[0].split("^")[0]
        with database[0].connect() as conn:
            stored = [json.loads(body) for body, in conn.execute(select(resources.c.body).where(
                resources.c.res_type == "Patient"))]
        patient = next(p for p in stored if identifier in [i["value"] for i in p["identifier"]])
        if pid[29]:
            stamp = pid[29]
            assert patient["deceasedDateTime"] == (
                f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}:{stamp[12:14]}"
                f"{stamp[14:17]}:{stamp[17:19]}"), path.name
        else:
            assert patient["deceasedBoolean"] is (pid[30].strip().upper() in ("Y", "YES")), path.name
        checked += 1
    assert checked >= 5


def with_death(indicator: str | None, time: str | None) -> bytes:
    """Léa MOREAU's ultrasound report, its patient given sdtc:deceasedInd and sdtc:deceasedTime."""
    cda = sample("cr-imagerie-echographie-moreau.xml").decode()
    cda = cda.replace('<ClinicalDocument xmlns="urn:hl7-org:v3"', '<ClinicalDocument xmlns="urn:hl7-org:v3" '
                      'xmlns:sdtc="urn:hl7-org:sdtc"', 1)
    death = (f'<sdtc:deceasedInd value="{indicator}"/>' if indicator else "") + (
        f'<sdtc:deceasedTime value="{time}"/>' if time else "")
    return cda.replace('<birthTime value="20120514"/>', f'<birthTime value="20120514"/>{death}').encode()


def test_a_document_s_header_gives_the_death_of_the_patient_it_makes_known(client, bearer):
    """The CI-SIS takes sdtc:deceasedInd and sdtc:deceasedTime in the patient of a document's header:
    a Patient the document makes known is made with them (one known already is the identity feed's)."""
    system = {**XML, **bearer("system", sub="lab")}
    for indicator, time, where in (("yes", None, "deceasedInd/@value"), ("false", "20261130", "deceasedInd/@value"),
                                   ("true", "2026-11-30", "deceasedTime/@value")):
        refused = client.post("/cda", data=with_death(indicator, time), headers=system)
        assert refused.status_code == 422, refused.json
        assert refused.json["issue"][0]["expression"] == [f"/ClinicalDocument/recordTarget/patientRole/patient/{where}"]
    made = client.post("/cda", data=with_death("true", "20261130"), headers=system)
    assert made.status_code == 201, made.json
    lea = bearer("patient", patient="212057501802305")
    assert client.get("/fhir/DocumentReference?status=current", headers=lea).status_code == 403
    attend_all(client.application.config["ENGINE"])
    patient = client.get(f"/fhir/{made.json['subject']['reference']}", headers=bearer("doctor", sub=GP)).json
    assert patient["deceasedDateTime"] == "2026-11-30"
