"""A copy of a record for its patient: a ZIP the patient can keep, check and give to anyone.

Inside: `bundle.json`, a FHIR document Bundle (Composition, Patient, DocumentReferences grouped as
the patient space shows them, the patient's Consents and emergency contacts); `documents/`, each
document exactly as it was received; `manifest.xml`, the SHA-256 of every other file, with an
enveloped XML-DSig signature by the gateway's certificate. `gateway verify-export` checks the
signature against a trust anchor and every file against the manifest, offline.

Everything is read through the requester's repository: the copy holds what the patient may
see, and each read is in the trail.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable, Iterator

from lxml import etree
from signxml import InvalidInput, InvalidSignature, XMLSigner, XMLVerifier, methods

from gateway.access.rules import binary_ids
from gateway.cda.parser import safe_parser
from gateway.fhir.validation import validate
from gateway.mapping import codes
from gateway.mapping.dates import fhir_now
from gateway.mapping.groups import GROUP_TITLES, grouped
from gateway.storage.repository import Repository, StoredResource, new_id

from .consents import own_patient

MANIFEST = "manifest.xml"
MANIFEST_NS = "urn:dmp-gateway:export:1"
EXTENSIONS = {"application/pdf": "pdf", "text/plain": "txt", "application/dicom": "dcm",
              "application/fhir+json": "json"}


def file_extension(media_type: str) -> str:
    """The extension of a document's file by its media type, for the programs that open it."""
    return "xml" if "xml" in media_type else EXTENSIONS.get(media_type, "bin")


def _file_name(index: int, docref: dict, media_type: str) -> str:
    title = docref.get("content", [{}])[0].get("attachment", {}).get("title") or "document"
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_title).strip("-").lower()[:60]
    return f"documents/{index:03d}-{slug or 'document'}.{file_extension(media_type)}"


# The documents read together, their reads audited in one group commit.
READ_TOGETHER = 200
COMPRESSED_SLICE = 64 * 1024


def write_export(repo: Repository, fhir_base: str, key_pem: bytes, cert_pem: bytes, out: IO[bytes]) -> None:
    """The copy, written as a ZIP into `out` (a file) a document at a time, each a stored part (a MiB)
    at a time: it holds a part in memory, and the documents' metadata. The whole copy was built in
    memory, each document then compressed beside it: a record of a hundred 5 MB PDFs would have
    taken a gigabyte."""
    patient_id = own_patient(repo)
    patient = repo.read("Patient", patient_id)
    reference = [("patient", f"Patient/{patient_id}")]
    docrefs = repo.search_all("DocumentReference", reference + [("status", "current,superseded")])
    others = repo.search_all("Consent", reference) + repo.search_all("RelatedPerson", reference + [("active", "true")])
    digests: dict[str, tuple[int, str]] = {}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        def add(name: str, parts: Iterable[bytes]) -> None:
            digest, size = hashlib.sha256(), 0
            with archive.open(name, "w") as entry:
                for part in parts:
                    # In slices: zlib gives back what it compressed in a buffer it grows, twice a
                    # MiB's size for a MiB's part.
                    with memoryview(part) as view:
                        for start in range(0, len(view), COMPRESSED_SLICE):
                            entry.write(view[start:start + COMPRESSED_SLICE])
                    digest.update(part)
                    size += len(part)
            digests[name] = (size, digest.hexdigest())

        for start in range(0, len(docrefs), READ_TOGETHER):
            together = [stored.json() for stored in docrefs[start:start + READ_TOGETHER]]
            binaries = repo.read_all("Binary", [binary_ids(docref)[0] for docref in together])
            for index, (docref, binary) in enumerate(zip(together, binaries), start + 1):
                content_type = binary.json().get("contentType", "application/octet-stream")
                add(_file_name(index, docref, content_type), repo.blob_parts(binary.blob_sha256))
        add("bundle.json", _document_bundle(fhir_base, patient, docrefs, others))
        archive.writestr(MANIFEST, _signed_manifest(digests, patient_id, key_pem, cert_pem))


def _document_bundle(fhir_base: str, patient: StoredResource, docrefs: list[StoredResource],
                     others: list[StoredResource]) -> Iterator[bytes]:
    """bundle.json, an entry a line: the DocumentReferences as they are stored (each validated when
    it was written), never parsed nor held whole. The Bundle was built, validated and written with
    an indent as one value: for 1,500 documents, 50 MB of parsed JSON, then 100 MB of the pure-Python
    encoder's pieces that an indent takes."""
    now = fhir_now()
    sections = [{"title": title, "code": {"coding": [{"system": "urn:dmp-gateway:document-group", "code": key}]},
                 "entry": [{"reference": f"DocumentReference/{d['id']}"} for d in members]}
                for key, title, members in grouped([_grouped_by(stored) for stored in docrefs])]
    composition = {
        "resourceType": "Composition", "id": new_id(), "status": "final",
        "type": {"coding": [{"system": codes.LOINC, "code": "11503-0", "display": "Medical records"}]},
        "subject": {"reference": patient.reference}, "date": now,
        "author": [{"display": "dmp-gateway"}], "title": "Copie du dossier médical partagé",
        "section": sections or [{"title": GROUP_TITLES["autres"], "emptyReason": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "nilknown"}]}}],
    }
    written = [{"fullUrl": f"{fhir_base}/Composition/{composition['id']}", "resource": composition}]
    written += [{"fullUrl": f"{fhir_base}/{s.reference}", "resource": s.json()} for s in [patient, *others]]
    envelope = {"resourceType": "Bundle", "id": new_id(), "type": "document", "timestamp": now,
                "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{new_id()}"}}
    validate({**envelope, "entry": written}, kept=True)
    yield json.dumps(envelope, ensure_ascii=False)[:-1].encode() + b',"entry":[\n'
    lines = itertools.chain(
        (json.dumps(entry, ensure_ascii=False) for entry in written[:2]),
        (f'{{"fullUrl":{json.dumps(f"{fhir_base}/{s.reference}")},"resource":{s.body}}}' for s in docrefs),
        (json.dumps(entry, ensure_ascii=False) for entry in written[2:]))
    for index, line in enumerate(lines):
        yield (",\n" if index else "").encode() + line.encode()
    yield b"\n]}\n"


def _grouped_by(stored: StoredResource) -> dict:
    """What the groups of a document are read from, and its id: not the whole DocumentReference."""
    docref = stored.json()
    return {key: docref[key] for key in ("id", "type", "category", "date") if key in docref}


def _signed_manifest(digests: dict[str, tuple[int, str]], patient_id: str, key_pem: bytes, cert_pem: bytes) -> bytes:
    """The manifest of the files named, each with its size and SHA-256, signed."""
    manifest = etree.Element(f"{{{MANIFEST_NS}}}manifest", nsmap={None: MANIFEST_NS},
                             created=datetime.now(timezone.utc).isoformat(timespec="seconds"), patient=patient_id)
    for name, (size, sha256) in digests.items():
        etree.SubElement(manifest, f"{{{MANIFEST_NS}}}file", name=name, size=str(size), sha256=sha256)
    signer = XMLSigner(method=methods.enveloped, signature_algorithm="rsa-sha256", digest_algorithm="sha256")
    signed = signer.sign(manifest, key=key_pem, cert=cert_pem)
    return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")


@dataclass
class ExportReport:
    signature: str | None = None             # why the signature is not valid; None when it is
    altered: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def valid(self) -> bool:
        return not (self.signature or self.altered or self.missing or self.unexpected)


# A file of a copy is hashed as it is decompressed, up to this: a crafted archive (a "ZIP bomb")
# costs a bounded amount of work and is reported altered.
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def _sha256(archive: zipfile.ZipFile, name: str) -> str | None:
    digest, size = hashlib.sha256(), 0
    with archive.open(name) as member:
        while chunk := member.read(1 << 20):
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                return None
            digest.update(chunk)
    return digest.hexdigest()


def verify_export(data: bytes | IO[bytes], trust_anchors: list[Path]) -> ExportReport:
    """Check a copy (its bytes, or a file open for reading): the manifest's signature against the
    trust anchors, then each file."""
    report = ExportReport()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, ValueError, OSError):
        report.signature = "the file is not a ZIP archive"
        return report
    names = set(archive.namelist())
    if MANIFEST not in names:
        report.signature = f"{MANIFEST} is missing"
        return report
    anchors = [p for p in trust_anchors if p.exists()]
    signed = None
    errors = ["no trust anchor was found"] if not anchors else []
    parser = safe_parser()
    if archive.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
        report.signature = f"{MANIFEST} is larger than a manifest can be"
        return report
    for anchor in anchors:
        try:
            # The entries are read from what the signature covers, never from the file as a whole.
            signed = XMLVerifier().verify(archive.read(MANIFEST), ca_pem_file=str(anchor), parser=parser,
                                          expect_references=1).signed_xml
            break
        except (InvalidSignature, InvalidInput, etree.XMLSyntaxError) as exc:
            errors.append(str(exc))
    if signed is None:
        report.signature = f"the manifest's signature is not valid: {errors[-1]}"
        return report
    listed = {f.get("name"): f.get("sha256") for f in signed.findall(f"{{{MANIFEST_NS}}}file")}
    report.files = len(listed)
    for name, sha256 in listed.items():
        if name not in names:
            report.missing.append(name)
        elif _sha256(archive, name) != sha256:
            report.altered.append(name)
    report.unexpected = sorted(n for n in names - set(listed) - {MANIFEST} if not n.endswith("/"))
    return report
