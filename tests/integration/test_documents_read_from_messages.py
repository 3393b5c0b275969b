"""A CDA an MDM^T02 carries in base64 is read from the message's raw copy, on both backends: its
Binary's blob holds no bytes of its own (each message's commit wrote the document twice, once in
base64, and the database kept both). The document and the message read back byte for byte, a
retransmission adds nothing, and the record's destruction takes both."""
import base64
import hashlib
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from conftest import GP, SAMPLES, attend_all
from gateway.access.context import AccessContext
from gateway.access.writes import Write
from gateway.services import retention
from gateway.storage.database import read_connection
from gateway.storage.repository import Base64InRaw, Repository, blob_bytes
from gateway.storage.schema import blob_parts, blobs, raw_inputs, resources

LEFEVRE = "292086938701277"
FEEDER = {"Content-Type": "x-application/hl7-v2+er7"}
MESSAGE = (SAMPLES / "hl7v2" / "mdm-1-t02-cr-imagerie-irm-lefevre.hl7").read_bytes()


def carrying(cda: bytes, padded: bool = True) -> bytes:
    """The sample MDM^T02 with this CDA in OBX-5 (its final padding left out when not `padded`, as
    some of the ANS's example messages leave it)."""
    found = re.search(rb"\^Base64\^([A-Za-z0-9+/=]+)", MESSAGE)
    encoded = base64.b64encode(cda) if padded else base64.b64encode(cda).rstrip(b"=")
    return MESSAGE[:found.start(1)] + encoded + MESSAGE[found.end(1):]


def large_cda() -> bytes:
    """The sample's CDA made large by a comment: a run of over 64 Ki base64 characters, which the
    message's reading keeps in the received bytes (er7.LongRuns)."""
    found = re.search(rb"\^Base64\^([A-Za-z0-9+/=]+)", MESSAGE)
    cda = base64.b64decode(found.group(1))
    return cda.replace(b"<component>", b"<!-- " + b"compte rendu " * 4615 + b"xx -->" b"<component>", 1)


def stored_bytes(conn) -> int:
    return sum(conn.execute(select(func.coalesce(func.sum(func.length(table.c.data)), 0))).scalar_one()
               for table in (blobs, blob_parts))


@pytest.mark.parametrize("padded", [True, False])
def test_a_message_s_document_is_read_from_its_raw_copy(client, bearer, database, padded):
    engine = database[0]
    feeder = {**FEEDER, **bearer("system", sub="GAM CH-SAINT-AUBIN")}
    cda = large_cda()
    assert len(cda) % 3 == 1   # its base64 ends with "==", or short of it
    message = carrying(cda, padded)
    for _ in range(2):   # the second one a retransmission
        answer = client.post("/hl7v2", headers=feeder, data=message)
        assert answer.status_code == 200 and b"MSA|AA" in answer.data, answer.data
    with read_connection(engine) as conn:
        [raw_sha256] = conn.execute(select(raw_inputs.c.sha256)).scalars().all()
        [(binary_id, binary_sha256)] = conn.execute(select(resources.c.res_id, resources.c.blob_sha256).where(
            resources.c.res_type == "Binary")).all()
        kept = conn.execute(select(blobs.c.size, blobs.c.data, blobs.c.base64_of).where(
            blobs.c.sha256 == binary_sha256)).one()
        assert binary_sha256 == hashlib.sha256(cda).hexdigest() and kept.size == len(cda)
        assert kept.base64_of == raw_sha256 == hashlib.sha256(message).hexdigest() and len(kept.data) == 0
        assert blob_bytes(conn, raw_sha256) == message and blob_bytes(conn, binary_sha256) == cda
        assert stored_bytes(conn) == len(message)   # where it was the message and the document
    attend_all(engine)
    read = client.get(f"/fhir/Binary/{binary_id}", headers={**bearer("doctor", sub=GP), "Accept": "application/xml"})
    assert read.status_code == 200 and read.data == cda
    patient = Repository(engine, AccessContext(role="patient", subject=LEFEVRE, patient_ins=LEFEVRE, name="L",
                                               address=None), "http://gateway.test")
    retention.close_record(patient)
    retention.request_destruction(patient)
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    assert destroyed.raw_inputs == 1
    with read_connection(engine) as conn:
        assert conn.execute(select(func.count()).select_from(blobs)).scalar_one() == 0


def test_a_small_document_keeps_its_own_bytes(client, bearer, database):
    """A run of base64 under 64 Ki characters is read as text: its document is written as before."""
    feeder = {**FEEDER, **bearer("system", sub="GAM CH-SAINT-AUBIN")}
    answer = client.post("/hl7v2", headers=feeder, data=MESSAGE)
    assert answer.status_code == 200 and b"MSA|AA" in answer.data, answer.data
    with read_connection(database[0]) as conn:
        [(data, base64_of)] = conn.execute(select(blobs.c.data, blobs.c.base64_of).join(
            resources, resources.c.blob_sha256 == blobs.c.sha256).where(resources.c.res_type == "Binary")).all()
        assert len(data) > 0 and base64_of is None


def test_a_document_is_read_from_a_raw_copy_only_as_it_was_stored(database):
    """Not from a raw copy that is not there, nor one of another size, nor a document itself read
    from one: the document's bytes are written instead."""
    repo = Repository(database[0], AccessContext.system("test"), "http://gateway.test")
    document = b"<doc/>" * 20
    carrier = b"OBX|1|ED|^TEXT^XML^Base64^" + base64.b64encode(document) + b"|"
    at, length, digest = carrier.index(b"PGRv"), len(base64.b64encode(document)), hashlib.sha256(carrier).hexdigest()
    repo.write(lambda uow: uow.store_blob(carrier), Write.FEED)
    read = repo.write(lambda uow: uow.store_blob(document, None, Base64InRaw(digest, len(carrier), at, length)),
                      Write.FEED)
    written = [(b"<missing/>", Base64InRaw("0" * 64, len(carrier), at, length)),
               (b"<resized/>", Base64InRaw(digest, len(carrier) + 1, at, length)),
               (b"<chained/>", Base64InRaw(read, len(document), 0, 8))]
    stored = repo.write(lambda uow: [uow.store_blob(data, None, where) for data, where in written], Write.FEED)
    with read_connection(database[0]) as conn:
        assert conn.execute(select(blobs.c.base64_of).where(blobs.c.sha256 == read)).scalar_one() == digest
        assert blob_bytes(conn, read) == document
        assert [bytes(conn.execute(select(blobs.c.data).where(blobs.c.sha256 == sha256)).scalar_one())
                for sha256 in stored] == [data for data, _ in written]
