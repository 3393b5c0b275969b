"""The Lists of an ITI-65 submission (IHE MHD, PDSm): the SubmissionSet of what one submission
registered, its source as a contained resource, with the designation and source-system extensions
PDSm requires; and the Folders a submission creates or updates (pure)."""
from __future__ import annotations

import uuid

from gateway.cda.header import Person

from . import codes
from .dates import fhir_now
from .document import UNSET_ID, author_role, contained_references

DESIGNATION_TYPE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-designationType"
SOURCE_ID = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId"
LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
FOLDER_PROFILES = (codes.PDSM_FOLDER, "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Comprehensive.Folder",
                   "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.Folder")
# A submission that does not say its content type (JDV_J03): the value is unknown, said so.
UNKNOWN_DESIGNATION = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                   "code": "unknown", "display": "Unknown"}]}
SUBMITTER_SYSTEM = "urn:dmp-gateway:submitter"
# The identifiers MHD's SubmissionSet slices by their use: their name, and how their value starts.
IDENTIFIER_SLICES = {"usual": ("uniqueId", "urn:oid:"), "official": ("entryUUID", "urn:uuid:")}
# A Folder's uniqueId is any URI (an OID or a UUID, as the ANS's annex has it).
FOLDER_IDENTIFIER_SLICES = {"official": IDENTIFIER_SLICES["official"]}
# The extensions PDSm's SubmissionSet slices at most once (the value each carries is its
# definition's: gateway.fhir.extensions).
ONCE = {DESIGNATION_TYPE, SOURCE_ID, codes.PDSM_IS_ARCHIVED}
# PDSm's Folder slices one of them.
FOLDER_ONCE = {DESIGNATION_TYPE}


def unique_id() -> str:
    """A SubmissionSet uniqueId: MHD wants an OID; one under the UUID arc 2.25 needs no registration."""
    return f"urn:oid:2.25.{uuid.uuid4().int}"


def device_source(name: str) -> dict:
    """The sending system, when no person is named as the submission's author."""
    return {"resourceType": "Device", "id": "source", "deviceName": [{"name": name, "type": "user-friendly-name"}]}


def submission_set(list_id: str, unique_id: str, subject: dict, documents: list[str], *, title: str,
                   source: list[dict], source_id: dict, designation: dict | None = None) -> dict:
    """A SubmissionSet naming `documents`; `source` is the contained resources of its author, the
    first one being the author (a PractitionerRole or a Device)."""
    return {
        "resourceType": "List", "id": list_id, "meta": {"profile": [codes.PDSM_SUBMISSION_SET]},
        "contained": source,
        "extension": [{"url": DESIGNATION_TYPE, "valueCodeableConcept": designation or UNKNOWN_DESIGNATION},
                      {"url": SOURCE_ID, "valueIdentifier": source_id}],
        "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": unique_id},
                       {"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{list_id}"}],
        "status": "current", "mode": "working", "title": title,
        "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset", "display": "Submission Set"}]},
        "subject": subject, "date": fhir_now(),
        "source": {"reference": f"#{source[0]['id']}"},
        "entry": [{"item": {"reference": ref}} for ref in documents],
    }


def unlinked_submission_set(documents: int, *, title: str, source: list[dict], source_id: dict) -> dict:
    """The SubmissionSet of `documents` documents under stand-in ids, for its caller to validate
    before the unit of work that gives their ids (`linked`)."""
    return submission_set(UNSET_ID, unique_id(), {"reference": f"Patient/{UNSET_ID}"},
                          [f"DocumentReference/{UNSET_ID}"] * documents, title=title, source=source,
                          source_id=source_id)


def linked(unlinked: dict, list_id: str, subject: dict, documents: list[str]) -> dict:
    """A SubmissionSet of `unlinked_submission_set`, validated, with the ids its unit of work gave:
    they are all that differs, so it is not validated again under the write lock (an MDM^T02's
    SubmissionSet was, 0.55 ms of CPU there)."""
    official = {**unlinked["identifier"][1], "value": f"urn:uuid:{list_id}"}
    return {**unlinked, "id": list_id, "identifier": [unlinked["identifier"][0], official], "subject": subject,
            "entry": [{"item": {"reference": reference}} for reference in documents]}


def person_source(person: Person) -> list[dict]:
    return author_role(person, "source")


def completed(submitted: dict, submitter_name: str, submitter_id: str) -> dict:
    """A submitted SubmissionSet with what PDSm requires and the sender left out: its source (the
    authenticated submitter, as a contained Device), the source system (the submitter's id) and a
    designation said to be unknown. What the sender gave is kept as given."""
    resource = with_designation(submitted)
    if SOURCE_ID not in {e.get("url") for e in resource["extension"]}:
        resource["extension"].append({"url": SOURCE_ID, "valueIdentifier": {"system": SUBMITTER_SYSTEM,
                                                                             "value": submitter_id}})
    if resource.get("source", {}).get("reference") not in contained_references(resource):
        resource["contained"] = [*resource.get("contained", []), device_source(submitter_name)]
        resource["source"] = {"reference": "#source"}
    return resource


def with_designation(submitted: dict) -> dict:
    """A submitted SubmissionSet or Folder with the designation PDSm requires of both said to be
    unknown when the sender left it out (XDS's contentTypeCode, codeList); the rest as given."""
    resource = dict(submitted)
    extensions = list(resource.get("extension", []))
    if DESIGNATION_TYPE not in {e.get("url") for e in extensions}:
        extensions.append({"url": DESIGNATION_TYPE, "valueCodeableConcept": UNKNOWN_DESIGNATION})
    resource["extension"] = extensions
    return resource


def is_submission_set(resource: dict) -> bool:
    codings = [c.get("code") for c in resource.get("code", {}).get("coding", [])]
    return "submissionset" in codings or codes.PDSM_SUBMISSION_SET in resource.get("meta", {}).get("profile", [])


def is_folder(resource: dict) -> bool:
    codings = [c.get("code") for c in resource.get("code", {}).get("coding", [])]
    return "folder" in codings or any(p in FOLDER_PROFILES for p in resource.get("meta", {}).get("profile", []))


def refusals(submitted: dict) -> list[tuple[str, str]]:
    """(path, what PDSm requires) of each thing a submitted SubmissionSet says that PDSm's profile
    of it refuses. A SubmissionSet is kept as submitted (then completed): such a List was
    registered, and every read of it failed the official check."""
    found = [("status", "is current (PDSm's pattern)")] if submitted.get("status") != "current" else []
    return found + _list_refusals(submitted, "submissionset", ONCE, IDENTIFIER_SLICES)


def folder_refusals(submitted: dict) -> list[tuple[str, str]]:
    """The same for a Folder, against PDSm's profile of one (as XDS, a Folder has a title and
    holds documents; its source is the SubmissionSet's)."""
    found = [("status", "is current: a submission creates or adds to a Folder in use")] \
        if submitted.get("status") != "current" else []
    found += _list_refusals(submitted, "folder", FOLDER_ONCE, FOLDER_IDENTIFIER_SLICES)
    if not submitted.get("title"):
        found.append(("title", "a Folder has a title (PDSm)"))
    if "source" in submitted:
        found.append(("source", "a Folder has no source: the SubmissionSet's names who submitted it (PDSm)"))
    if not submitted.get("entry"):
        found.append(("entry", "a Folder holds at least one document (PDSm)"))
    return found


def _list_refusals(submitted: dict, list_type: str, once: set[str], slices: dict) -> list[tuple[str, str]]:
    """What PDSm's SubmissionSet and Folder both require."""
    found = []
    if submitted.get("mode") != "working":
        found.append(("mode", "is working (PDSm's pattern)"))
    codings = (submitted.get("code") or {}).get("coding") or []
    if not any(c.get("system") == LIST_TYPES and c.get("code") == list_type for c in codings):
        found.append(("code", f"holds the coding {LIST_TYPES}|{list_type} (PDSm's pattern)"))
    if not submitted.get("date"):
        found.append(("date", f"the {'submission' if list_type == 'submissionset' else 'last update'}'s time is "
                      "required (PDSm)"))
    for index, identifier in enumerate(submitted.get("identifier") or []):
        if not identifier.get("system") or not identifier.get("value"):
            found.append((f"identifier[{index}]", "has a system and a value (MHD's uniqueId and entryUUID)"))
        elif identifier.get("use") in slices:
            name, prefix = slices[identifier["use"]]
            if identifier["system"] != "urn:ietf:rfc:3986" or not identifier["value"].startswith(prefix):
                found.append((f"identifier[{index}]", f"MHD's {name} (use {identifier['use']}) is a {prefix} URI "
                              "under the system urn:ietf:rfc:3986"))
    if sum(identifier.get("use") == "usual" for identifier in submitted.get("identifier") or []) > 1:
        found.append(("identifier", "holds one uniqueId (use usual), not several"))
    seen: set[str] = set()
    for index, extension in enumerate(submitted.get("extension") or []):
        url = extension.get("url")
        if url in once and url in seen:
            found.append((f"extension[{index}]", f"{url} is given more than once, where PDSm's "
                          f"{'SubmissionSet' if list_type == 'submissionset' else 'Folder'} takes it once"))
        seen.add(url)
    return found
