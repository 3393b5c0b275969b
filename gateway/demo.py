"""`gateway demo setup`: what `make run` needs on a fresh machine, done once.

Creates the test PKI and the development token key under GATEWAY_DEMO_DIR (never in the
repository), migrates the database, (re)creates the demo patients' accounts of the patient space
(DEMO_ACCOUNTS), and loads the samples: the directory of professionals, the documents, a
replacement version, a second child of the representative (an ADT^A28), an ITI-65 submission
signed with the test PKI (also written to GATEWAY_DEMO_DIR/signed-submission.json for curl), and
the demo patients' decisions (DEMO_DECISIONS).
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from gateway.access import AccessContext
from gateway.access.tokens import make_signing_key
from gateway.access.writes import Write
from gateway.bulk import ingest_paths
from gateway.config import DEMO_TOKEN_KID, Settings
from gateway.mapping import codes
from gateway.mapping.dates import fhir_now
from gateway.mapping.document import document_uri, identifier_key, sha1_base64
from gateway.mapping.submission import LIST_TYPES, unique_id
from gateway.services import consents, directory, feeds, labels
from gateway.services.documents import read_cda
from gateway.services.ingest import Received
from gateway.services.provide import provide
from gateway.signature import make_test_pki, sign_documents
from gateway.space.accounts import create_account
from gateway.storage.database import make_engine
from gateway.storage.migrate import upgrade
from gateway.storage.repository import Repository, new_id

SAMPLES = Path(os.environ.get("GATEWAY_SAMPLES_DIR", Path(__file__).resolve().parents[1] / "samples"))

GP, INTERNIST, SURGEON, RADIOLOGIST = "899900000053", "899900000012", "899900000020", "899900000038"
# What the demo patients decided, made through the same services (and audit) as the API.
# (patient INS, Consent kind, provision type, professional IdNatPs or None)
DEMO_DECISIONS = [
    ("185067511204554", "attending-physician", "permit", GP),    # PAUL MARTIN: Dr NOEL is his GP
    ("185067511204554", "professional", "permit", INTERNIST),     # authorises Dr BERNARD
    ("185067511204554", "professional", "deny", SURGEON),         # blocks Dr ROUSSEAU
    ("292086938701277", "attending-physician", "permit", GP),    # CLAIRE DUBOIS
    ("292086938701277", "professional", "permit", RADIOLOGIST),
    ("292086938701277", "emergency-access", "deny", None),       # opposes break-the-glass
    ("161023306508977", "professional", "permit", SURGEON),      # JEAN GARNIER
    ("161023306508977", "professional", "permit", RADIOLOGIST),
    ("212057501802305", "attending-physician", "permit", GP),    # LEA MOREAU (a minor)
]
# (document sample, who changes its labels, patch): Paul Martin hides his lab results from
# professionals; Dr FAURE keeps Claire Dubois's MRI report from her until it is announced.
DEMO_LABELS = [
    ("cda/cr-biologie-martin.xml", AccessContext(role="patient", subject="185067511204554",
                                                 patient_ins="185067511204554", name="PAUL MARTIN"), "MASQUE_PS"),
    ("replacement/cr-imagerie-irm-lefevre-v2.xml", AccessContext(role="doctor", subject=RADIOLOGIST, name="Dr Isabelle FAURE"),
     "INVISIBLE_PATIENT"),
]


# Patient-space accounts of the demo (README, "Patient space"): login, password, role, records, name.
DEMO_ACCOUNTS = [
    ("paul.martin", "demo-paul-martin", "patient", ["185067511204554"], "Paul MARTIN"),
    ("claire.dubois", "demo-claire-dubois", "patient", ["292086938701277"], "Claire DUBOIS"),
    ("jean.garnier", "demo-jean-garnier", "patient", ["161023306508977"], "Jean GARNIER"),
    # Léa and Hugo Moreau are minors: their mother manages both records.
    ("sophie.moreau", "demo-sophie-moreau", "representative", ["212057501802305", "116037505612342"],
     "Sophie MOREAU"),
]


def create_accounts(engine) -> None:
    for login, password, role, records, name in DEMO_ACCOUNTS:
        create_account(engine, login, password, role, records, name, f"{login}@example.test", replace=True)


def load_directory(repo: Repository, path: Path) -> None:
    """The professionals and organisations of the demo, their specialty, where they practise and
    their MSSanté address (a FHIR Bundle whose PractitionerRoles name the others by identifier);
    those the documents already registered are kept."""
    for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
        resource = entry["resource"]
        with repo.unit_of_work(Write.FEED) as uow:
            identifier = resource["identifier"][0]
            if uow.find_by_identifier(resource["resourceType"], identifier["system"], identifier["value"]):
                continue
        directory.register(repo, resource)


def load_decisions(settings: Settings, engine) -> None:
    for ins, kind, effect, professional in DEMO_DECISIONS:
        patient = AccessContext(role="patient", subject=ins, patient_ins=ins)
        consents.create(Repository(engine, patient, settings.public_base_url), consents.decision(kind, effect, professional))
    for sample, actor, label in DEMO_LABELS:
        unique_id = read_cda((SAMPLES / sample).read_bytes(), settings.max_document_bytes).header.unique_id
        with Repository(engine, AccessContext.system("demo"), settings.public_base_url).unit_of_work(Write.FEED) as uow:
            docref_id = uow.find_by_identifier("DocumentReference", *identifier_key(unique_id))
        label_added = labels.json_patch([{"op": "add", "path": "/securityLabel/-", "value": {
            "coding": [{"system": codes.VISIBILITY_SYSTEM, "code": label}]}}])
        labels.patch_document(Repository(engine, actor, settings.public_base_url), docref_id, label_added)


def build_submission(cda: bytes, max_bytes: int, signature: bytes | None = None) -> dict:
    """An ITI-65 transaction Bundle for one CDA document, with its metadata taken from the header."""
    header = read_cda(cda, max_bytes).header
    ins = next(ii for ii in header.patient.ids if ii.root in codes.INS_OIDS)
    system, value = identifier_key(header.unique_id)
    patient_ref = f"urn:uuid:{new_id()}"
    doc_binary, doc_ref, list_ref = (f"urn:uuid:{new_id()}" for _ in range(3))
    entries = [
        {"fullUrl": list_ref, "resource": {
            "resourceType": "List", "meta": {"profile": [codes.PDSM_SUBMISSION_SET]},
            "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{new_id()}"}],
            "status": "current", "mode": "working", "title": "Soumission",
            "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
                                 "code": "submissionset"}]},
            "subject": {"reference": patient_ref}, "date": "2026-03-10T17:30:00+01:00",
            "entry": [{"item": {"reference": doc_ref}}]},
         "request": {"method": "POST", "url": "List"}},
        {"fullUrl": doc_ref, "resource": {
            "resourceType": "DocumentReference", "status": "current",
            "masterIdentifier": {"system": system, "value": value},
            "type": {"coding": [{"system": codes.LOINC, "code": header.code.code}]},
            "subject": {"reference": patient_ref},
            "content": [{"attachment": {"contentType": "text/xml", "url": doc_binary, "size": len(cda),
                                        "hash": sha1_base64(cda)}}]},
         "request": {"method": "POST", "url": "DocumentReference"}},
        {"fullUrl": doc_binary, "resource": {"resourceType": "Binary", "contentType": "text/xml",
                                             "data": base64.b64encode(cda).decode()},
         "request": {"method": "POST", "url": "Binary"}},
        {"fullUrl": patient_ref, "resource": {"resourceType": "Patient", "identifier": [
            {"system": f"urn:oid:{ins.root}", "value": ins.extension}]},
         "request": {"method": "POST", "url": "Patient"}},
    ]
    if signature is not None:
        sig_binary, sig_ref = f"urn:uuid:{new_id()}", f"urn:uuid:{new_id()}"
        entries[0]["resource"]["entry"].append({"item": {"reference": sig_ref}})
        entries += [
            {"fullUrl": sig_ref, "resource": {
                "resourceType": "DocumentReference", "status": "current",
                "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{new_id()}"},
                "type": {"coding": [{"system": codes.ASTM_SYSTEM, "code": codes.SIGNATURE_TYPE}]},
                "category": [{"coding": [{"system": codes.URN_SYSTEM, "code": codes.SIGNATURE_CLASS}]}],
                "subject": {"reference": patient_ref},
                "content": [{"attachment": {"contentType": "application/xml", "url": sig_binary},
                             "format": {"system": codes.FORMAT_IHE_SYSTEM, "code": codes.SIGNATURE_FORMAT}}]},
             "request": {"method": "POST", "url": "DocumentReference"}},
            {"fullUrl": sig_binary, "resource": {"resourceType": "Binary", "contentType": "application/xml",
                                                 "data": base64.b64encode(signature).decode()},
             "request": {"method": "POST", "url": "Binary"}},
        ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def add_folder(bundle: dict, title: str, documents: list[str]) -> None:
    """A Folder (PDSm, MHD) of `documents` added to a submission, listed by its SubmissionSet."""
    folder_url = f"urn:uuid:{new_id()}"
    bundle["entry"][0]["resource"]["entry"].append({"item": {"reference": folder_url}})
    bundle["entry"].append({"fullUrl": folder_url, "request": {"method": "POST", "url": "List"}, "resource": {
        "resourceType": "List", "meta": {"profile": [codes.PDSM_FOLDER]},
        "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": unique_id()}],
        "status": "current", "mode": "working", "title": title,
        "code": {"coding": [{"system": LIST_TYPES, "code": "folder", "display": "Folder"}]},
        "date": fhir_now(), "entry": [{"item": {"reference": reference}} for reference in documents]}})


def signed_submission(settings: Settings, cda: bytes) -> dict:
    header = read_cda(cda, settings.max_document_bytes).header
    signature = sign_documents([(document_uri(header.unique_id), cda)], (settings.demo_dir / "signer-key.pem").read_bytes(),
                               (settings.demo_dir / "signer.pem").read_bytes())
    return build_submission(cda, settings.max_document_bytes, signature)


def setup(settings: Settings, force: bool = False) -> None:
    if not (settings.demo_dir / "ca.pem").exists():
        make_test_pki(settings.demo_dir)
        print(f"test PKI created in {settings.demo_dir} (trust anchor ca.pem)")
    if not settings.demo_token_key.exists():
        make_signing_key(settings.demo_dir, DEMO_TOKEN_KID)
        print(f"development token key created in {settings.demo_dir} (gateway token issue signs with it)")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    create_accounts(engine)
    repo = Repository(engine, AccessContext.system("demo setup"), settings.public_base_url)
    # The signed submission is loaded last: once it is there, everything before it is too.
    signed_cda = (SAMPLES / "signed" / "synthese-moreau.xml").read_bytes()
    marker = read_cda(signed_cda, settings.max_document_bytes).header.unique_id
    with repo.unit_of_work(Write.FEED) as uow:
        loaded = uow.find_by_identifier("DocumentReference", *identifier_key(marker))
    if loaded and not force:
        print("demo data already loaded")
        return
    ingest_paths(settings, [SAMPLES / "cda", SAMPLES / "replacement"])
    load_directory(repo, SAMPLES / "directory" / "professionals.json")
    feeds.receive(repo, (SAMPLES / "hl7v2" / "adt-a28-moreau-hugo.hl7").read_bytes(), channel="demo",
                  max_bytes=settings.max_document_bytes)
    bundle = signed_submission(settings, signed_cda)
    # Léa Moreau's hospital files the synthesis it signs with her earlier ultrasound, in a Folder.
    ultrasound = read_cda((SAMPLES / "cda" / "cr-imagerie-echographie-moreau.xml").read_bytes(),
                          settings.max_document_bytes).header.unique_id
    with repo.unit_of_work(Write.FEED) as uow:
        ultrasound_id = uow.find_by_identifier("DocumentReference", *identifier_key(ultrasound))
    add_folder(bundle, "Suivi pédiatrique de Léa", [f"DocumentReference/{ultrasound_id}", bundle["entry"][1]["fullUrl"]])
    path = settings.demo_dir / "signed-submission.json"
    path.write_text(json.dumps(bundle, indent=1))
    load_decisions(settings, engine)
    provide(repo, Received("iti65", path.read_bytes(), "application/fhir+json", "demo setup"), settings.trust_anchors,
            settings.max_document_bytes)
    print(f"signed ITI-65 submission loaded; a copy to POST yourself: {path}")
