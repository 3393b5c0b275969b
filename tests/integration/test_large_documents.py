"""A large N1 document enters by every transport: its PDF, in base64, is one text node larger
than libxml2's default 10 MB limit (which refused every PDF over about 7.5 MB although the limit
admits 20 MB documents), with the XML safety kept (no DTD, no entity, no network). `make bench`
sends 20 MB ones."""
import base64
import json
import os
import re
import tempfile
from dataclasses import replace

import pytest

from conftest import attend_all, sample
from gateway.demo import build_submission
from gateway.fhir.formats import to_xml

PDF_BYTES = 8 * 1024 * 1024   # 11.2 MB of base64 in one text node
XML = {"Content-Type": "application/xml"}


def large_cda(document_id: str, pdf_bytes: int = PDF_BYTES) -> bytes:
    cda = sample("cr-hospitalisation-lefevre.xml").decode()
    cda = cda.replace('<id root="1.2.250.1.213.1.1.9.2.2.1"/>', f'<id root="{document_id}"/>', 1)
    pdf = base64.b64encode(b"%PDF-1.4\n" + os.urandom(pdf_bytes)).decode()
    return re.sub(r'(representation="B64">)[^<]+(</text>)', lambda m: m.group(1) + pdf + m.group(2), cda, count=1).encode()


@pytest.fixture
def settings(settings):
    """The default limit of a deployed gateway (the test suite's is smaller)."""
    return replace(settings, max_document_bytes=20 * 1024 * 1024)


@pytest.fixture
def system(bearer):
    return bearer("system", sub="hospital")


def test_over_cda(client, system, database):
    cda = large_cda("1.2.250.1.213.1.1.9.2.2.901")
    answer = client.post("/cda", data=cda, headers={**XML, **system})
    assert answer.status_code == 201, answer.json
    # Stored a MiB at a time, retrieved (ITI-68) byte for byte by the médecin traitant.
    attend_all(database[0])
    assert client.get(answer.json["content"][0]["attachment"]["url"].replace("http://gateway.test", "")).data == cda


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_over_iti_65(client, system, database, fmt):
    cda = large_cda(f"1.2.250.1.213.1.1.9.2.2.90{2 if fmt == 'json' else 3}")
    bundle = build_submission(cda, 20 * 1024 * 1024)
    body, media = (json.dumps(bundle).encode(), "application/fhir+json") if fmt == "json" else (
        to_xml(bundle), "application/fhir+xml")
    answer = client.post("/fhir", data=body, headers={**system, "Content-Type": media, "Accept": "application/fhir+json"})
    assert answer.status_code == 200, answer.data[:2000]
    # The document's base64 is read apart from the rest of the JSON: the very bytes are kept.
    attend_all(database[0])
    location = answer.json["entry"][1]["response"]["location"]     # relative: DocumentReference/id/_history/1
    document = client.get("/fhir/" + location.split("/_history")[0]).json
    assert client.get(document["content"][0]["attachment"]["url"].replace("http://gateway.test", "")).data == cda


@pytest.mark.parametrize("chunked", [False, True])
def test_over_iti_65_over_http(live_server, system, chunked):
    """Read from the socket a part at a time into one buffer of the declared length; a chunked body
    (no Content-Length) is read whole."""
    import requests

    bundle = json.dumps(build_submission(large_cda(f"1.2.250.1.213.1.1.9.2.2.90{6 if chunked else 5}"),
                                         20 * 1024 * 1024)).encode()
    data = (bundle[start:start + 1_000_000] for start in range(0, len(bundle), 1_000_000)) if chunked else bundle
    answer = requests.post(f"http://127.0.0.1:{live_server.http_port}/fhir", data=data, timeout=120,
                           headers={**system, "Content-Type": "application/fhir+json"})
    assert answer.status_code == 200, answer.text[:2000]
    assert [e["response"]["status"] for e in answer.json()["entry"]][:3] == ["201 Created"] * 3


def test_over_hl7v2(client, system):
    cda = large_cda("1.2.250.1.213.1.1.9.2.2.904")
    message = sample_message().replace("1.2.250.1.213.1.1.9.2.4.1", "1.2.250.1.213.1.1.9.2.2.904")
    message = message.replace("18748-4^CR d'imagerie médicale^LN", "34112-3^CR hospitalier (séjour)^LN")
    message = re.sub(r"\^Base64\^[^|]+\|", lambda _: f"^Base64^{base64.b64encode(cda).decode()}|", message, count=1)
    answer = client.post("/hl7v2", data=message.encode(), headers={**system, "Content-Type": "x-application/hl7-v2+er7"})
    assert answer.status_code == 200 and "MSA|AA|" in answer.data.decode(), answer.data.decode()[:2000]


def sample_message() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[2] / "samples" / "hl7v2" / "mdm-1-t02-cr-imagerie-irm-lefevre.hl7").read_text()


def test_a_record_copy_holds_one_document_at_a_time(client, system, database, settings):
    """The copy of a record (the patient space's ZIP) is written into a file a document at a time,
    each a stored part (a MiB) at a time: what it holds in memory stays under 3 MiB here, whatever
    the record's or its documents' size. It was built whole in memory, every document and the ZIP
    beside them: these 10 documents of 1.4 MB took 34 MB."""
    import io
    import tracemalloc

    from gateway.access import AccessContext
    from gateway.services.export import verify_export, write_export
    from gateway.storage.repository import Repository

    largest = 0
    for n in range(10):
        cda = large_cda(f"1.2.250.1.213.1.1.9.2.2.{910 + n}", pdf_bytes=1024 * 1024).replace(
            b'<setId root="1.2.250.1.213.1.1.9.2.2"/>', f'<setId root="1.2.250.1.213.1.1.9.2.2.{910 + n}"/>'.encode())
        assert client.post("/cda", data=cda, headers={**XML, **system}).status_code == 201
        largest = max(largest, len(cda))
    lefevre = "292086938701277"
    own = Repository(database[0], AccessContext(role="patient", subject=lefevre, patient_ins=lefevre),
                     settings.public_base_url)
    with tempfile.TemporaryFile() as copy:
        tracemalloc.start()
        try:
            write_export(own, settings.fhir_base, settings.export_key.read_bytes(), settings.export_cert.read_bytes(),
                         copy)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        copy.seek(0)
        written = copy.read()
    checked = verify_export(io.BytesIO(written), [settings.demo_dir / "ca.pem"])
    assert checked.valid and checked.files == 11   # ten documents and bundle.json
    assert peak < 3 * 1024 * 1024, f"the copy held {peak / 1e6:.1f} MB ({peak / largest:.1f} times its largest document)"
