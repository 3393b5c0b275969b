"""Bodies sent compressed (Content-Encoding: gzip or deflate), over real HTTP, as FHIR clients send
them when asked to (Firely's CompressRequestBody, HAPI's GZipContentInterceptor): decoded once, within
each endpoint's limit, before any endpoint reads them."""
import gzip
import hashlib
import json
import zlib

import pytest
import requests
from sqlalchemy import func, select

from conftest import GP, attend_all, sample
from gateway.demo import build_submission
from gateway.storage.schema import blobs, raw_inputs, resources

LIMIT = 5 * 1024 * 1024
MARTIN = "urn:oid:1.2.250.1.213.1.4.10|185067511204554"


def stored(engine) -> tuple[int, int]:
    """(raw inputs, resources other than the audit trail)."""
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one(),
                conn.execute(select(func.count()).select_from(resources)
                             .where(resources.c.res_type != "AuditEvent")).scalar_one())


def raw_deflate(data: bytes) -> bytes:
    coder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return coder.compress(data) + coder.flush()


def in_pieces(data: bytes, size: int = 1000):
    """A generator body: requests sends it chunked, without Content-Length."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize("coding, encode", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("GZIP", gzip.compress),
    ("deflate", zlib.compress), ("deflate", raw_deflate),
    # gzip's members one after another (RFC 1952 §2.2), as a sender appending to a stream writes them
    ("gzip", lambda data: gzip.compress(data[:1000]) + gzip.compress(data[1000:])),
])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_cda_sent_compressed_is_kept_and_served_as_it_was_written(live_server, database, bearer, coding, encode,
                                                                     chunked):
    cda = sample("ldl-ses-martin.xml")
    body = encode(cda)
    answer = requests.post(f"{live_server.public_base_url}/cda", data=in_pieces(body) if chunked else body,
                           headers={**bearer("doctor", sub=GP), "Content-Type": "application/xml",
                                    "Content-Encoding": coding}, timeout=60)
    assert answer.status_code == 201, answer.text
    attachment = answer.json()["content"][0]["attachment"]
    assert attachment["size"] == len(cda)
    attend_all(database[0])
    served = requests.get(attachment["url"], headers=bearer("doctor", sub=GP), timeout=60)
    assert served.content == cda
    with database[0].connect() as conn:
        kept = conn.execute(select(raw_inputs.c.sha256)).scalars().all()
        assert kept == [hashlib.sha256(cda).hexdigest()]   # the raw copy is the document, not its coding
        assert conn.execute(select(func.count()).select_from(blobs)
                            .where(blobs.c.sha256 == kept[0])).scalar_one() == 1


def test_an_iti65_bundle_and_an_hl7v2_message_sent_compressed(live_server, database, bearer):
    base = live_server.public_base_url
    bundle = json.dumps(build_submission(sample("cr-biologie-martin.xml"), LIMIT)).encode()
    provided = requests.post(f"{base}/fhir", data=gzip.compress(bundle), timeout=60,
                             headers={**bearer("doctor", sub=GP), "Content-Type": "application/fhir+json",
                                      "Content-Encoding": "gzip"})
    assert provided.status_code == 200, provided.text
    assert [e["response"]["status"] for e in provided.json()["entry"]][:2] == ["201 Created", "201 Created"]
    message = sample("../hl7v2/adt-a01-martin.hl7")
    acked = requests.post(f"{base}/hl7v2", data=zlib.compress(message), timeout=60,
                          headers={**bearer("system", sub="GAM CH-SAINT-AUBIN"),
                                   "Content-Type": "x-application/hl7-v2+er7", "Content-Encoding": "deflate"})
    assert acked.status_code == 200 and acked.headers["X-HL7-Ack-Code"] == "AA", acked.text
    # a GET whose client sets the header on every request has no body to decode
    found = requests.get(f"{base}/fhir/Patient", params={"identifier": MARTIN}, timeout=60,
                         headers={**bearer("doctor", sub=GP), "Content-Encoding": "gzip"})
    assert found.status_code == 200 and found.json()["resourceType"] == "Bundle"


def outcome(answer: requests.Response, status: int, code: str, *words: str) -> None:
    assert answer.status_code == status, answer.text
    issue = answer.json()["issue"][0]
    assert issue["code"] == code, issue
    for word in words:
        assert word in issue["diagnostics"], issue


def test_a_body_its_coding_does_not_decode_is_refused_and_nothing_is_kept(live_server, database, bearer):
    cda = sample("ldl-ses-martin.xml")
    coded = gzip.compress(cda)

    def post(body, coding="gzip", path="/cda"):
        return requests.post(f"{live_server.public_base_url}{path}", data=body, timeout=60,
                             headers={**bearer("doctor", sub=GP), "Content-Type": "application/xml",
                                      "Content-Encoding": coding})

    outcome(post(cda), 400, "structure", "not gzip data")                   # labelled gzip, sent plain
    outcome(post(coded[:len(coded) // 2]), 400, "incomplete", "ends before")
    outcome(post(zlib.compress(cda) + b"more", "deflate"), 400, "structure", "after its deflate data")
    for unsupported in ("br", "zstd", "gzip, gzip"):
        refused = post(coded, unsupported)
        outcome(refused, 415, "not-supported", "gzip, deflate")
        assert refused.headers["Accept-Encoding"] == "gzip, deflate"
    assert stored(database[0]) == (0, 0)


def test_a_small_body_that_decodes_past_the_limit_is_refused_at_the_limit(live_server, database, bearer):
    """Zeros compress a thousand times: 1 GB would be a 1 MB body. Decoding stops at the endpoint's
    limit (twice the document limit on /cda, 1 MiB for a Patient), and nothing is kept."""
    base = live_server.public_base_url
    bomb = gzip.compress(b"<" + b"\0" * (2 * LIMIT + 1))
    assert len(bomb) < 20_000
    answer = requests.post(f"{base}/cda", data=bomb, timeout=60,
                           headers={**bearer("doctor", sub=GP), "Content-Type": "application/xml",
                                    "Content-Encoding": "gzip"})
    outcome(answer, 413, "too-costly", "once decoded", str(2 * LIMIT))
    patient = json.dumps({"resourceType": "Patient", "name": [{"family": "X" * (1 << 20)}]}).encode()
    answer = requests.post(f"{base}/fhir/Patient", data=gzip.compress(patient), timeout=60,
                           headers={**bearer("system", sub="GAM CH-SAINT-AUBIN"),
                                    "Content-Type": "application/fhir+json", "Content-Encoding": "gzip"})
    outcome(answer, 413, "too-costly", "once decoded", str(1 << 20))
    assert stored(database[0]) == (0, 0)


def test_a_body_there_is_no_room_to_decode_is_refused_for_now_and_taken_later(live_server, database, bearer,
                                                                             full_temporary_disk):
    """A body decoded past 1 MiB goes to a temporary file: where those go was full, and the client
    got a 500. Now a 503 with Retry-After, nothing kept; sent again once there is room, it is taken."""
    base, doctor = live_server.public_base_url, bearer("doctor", sub=GP)
    cda = sample("ldl-ses-martin.xml")
    large = cda.replace(b"</ClinicalDocument>", b"<!--" + b"-x" * (1 << 20) + b"--></ClinicalDocument>")
    body = gzip.compress(large)
    send = lambda: requests.post(f"{base}/cda", data=body, timeout=60, headers={  # noqa: E731
        **doctor, "Content-Type": "application/xml", "Content-Encoding": "gzip"})
    answer = send()
    full_temporary_disk()   # room again
    outcome(answer, 503, "transient", "no room left on its disk")
    assert answer.headers["Retry-After"].isdigit()
    assert stored(database[0]) == (0, 0)
    answer = send()
    assert answer.status_code == 201, answer.text
    assert answer.json()["content"][0]["attachment"]["size"] == len(large)
