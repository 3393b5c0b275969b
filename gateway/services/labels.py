"""Changes to a document's metadata by PATCH (PDSm flux 03/04; PDSM4DMP TD3.3a-d): one patch (a JSON
Patch, or a FHIRPath Patch, which PDSm takes too) does one kind of change, each decided by the unit
of work with the rules of gateway.access.writes:

- masking (TD3.3a, TD3.3b): the visibility labels (TRE_A07) of DocumentReference.securityLabel;
- deletion (TD3.3c): `replace /status entered-in-error`, carried out as a deletion (README, "Deletion");
- archiving (TD3.3d): the PDSm isArchived extension.

A patch is read for what it asks, not for the positions it names: PDSM4DMP replaces
`/securityLabel/0` with a visibility label to mask and with `N` to unmask, as if a document had one
label. The gateway keeps the document's confidentiality as authored and lists its visibility
labels first, so those requests mean what they say. Each change is a new version (the history
keeps the previous one) with its AuditEvent.
"""
from __future__ import annotations

import re
from typing import Callable

import jsonpatch

from gateway.access.rules import applied_labels, visibility_codes
from gateway.access.writes import Producers, Write
from gateway.refusal import Refused
from gateway.fhir.validation import InvalidResource, validate
from gateway.mapping import codes
from gateway.storage.repository import ChangedMeanwhile, PreconditionFailed, Repository, StoredResource

from .documents import delete_document

CONFIDENTIALITY_SYSTEMS = (codes.CONFIDENTIALITY_SYSTEM, "http://terminology.hl7.org/CodeSystem/v3-Confidentiality")
# PDSM4DMP TD3.3d names the extension by a FHIRPath-like step, which JSON Pointer does not have.
EXTENSION_STEP = re.compile(r"^/extension\[url:'([^']+)'\]/(value\w+)$")
# What a PATCH asks of a document: the document it makes of the current version (json_patch here,
# gateway.fhir.fhirpath_patch.patch).
Patch = Callable[[dict], object]
# Tries of a patch whose document others keep changing (ChangedMeanwhile): then 409, to be sent again.
PATCH_ATTEMPTS = 3


def _refuse(reason: str, location: str = "DocumentReference", status: int = 422, code: str = "invalid",
            patient_text: str | None = None) -> Refused:
    return Refused(reason, location=location, status=status, code=code, patient_text=patient_text)


def _pointer_paths(resource: dict, patch: list) -> list:
    """The patch with PDSM4DMP's `/extension[url:'…']/valueX` steps as JSON Pointers."""
    out = []
    for operation in patch:
        if not isinstance(operation, dict):
            raise _refuse("a JSON Patch is a list of operations (objects)")
        match = EXTENSION_STEP.match(str(operation.get("path", "")))
        if match is None:
            out.append(operation)
            continue
        url, key = match.groups()
        index = next((i for i, e in enumerate(resource.get("extension", [])) if e.get("url") == url), None)
        if index is None:
            out.append({"op": "add", "path": "/extension" if "extension" not in resource else "/extension/-",
                        "value": [{"url": url, key: operation.get("value")}] if "extension" not in resource
                        else {"url": url, key: operation.get("value")}})
        else:
            out.append({**operation, "path": f"/extension/{index}/{key}"})
    return out


def json_patch(operations: list) -> Patch:
    """A JSON Patch (RFC 6902), PDSM4DMP's extension steps read as JSON Pointers."""
    def made(before: dict) -> object:
        try:
            return jsonpatch.apply_patch(before, _pointer_paths(before, operations))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, ValueError, KeyError) as exc:
            raise _refuse(f"the JSON Patch cannot be applied: {exc}") from None
    return made


# The PATCH that deletes a document (TD3.3c), which a FHIR delete asks too.
DELETION = json_patch([{"op": "replace", "path": "/status", "value": "entered-in-error"}])


def _changed_fields(before: dict, after: dict) -> set[str]:
    keys = (set(before) | set(after)) - {"meta"}
    return {k for k in keys if before.get(k) != after.get(k)}


def patch_document(repo: Repository, docref_id: str, patch: Patch,
                   if_match: int | None = None) -> StoredResource | None:
    """Apply a patch to a document the requester sees (404 otherwise); None when the patch
    deleted it. A change is made from the version read before its unit of work: when another
    request changed the document meanwhile (the patient masks it as its author archives it), it is
    made again from the new version, so that neither change undoes the other; unless the client
    named the version it patches (`if_match`, If-Match), which then answers 412."""
    for attempt in range(1, PATCH_ATTEMPTS + 1):
        try:
            return _patch(repo, docref_id, patch, if_match)
        except ChangedMeanwhile:
            if if_match is not None:
                raise PreconditionFailed(f"DocumentReference/{docref_id}", if_match) from None
            if attempt == PATCH_ATTEMPTS:
                raise


def _patch(repo: Repository, docref_id: str, patch: Patch, if_match: int | None) -> StoredResource | None:
    current = repo.read("DocumentReference", docref_id)
    if if_match is not None and current.version != if_match:
        raise PreconditionFailed(current.reference, if_match)
    before = current.json()
    after = patch(before)
    if not isinstance(after, dict):
        raise _refuse("a JSON Patch may not replace the whole resource")
    changed = _changed_fields(before, after)
    if not changed:
        return current
    if changed == {"securityLabel"}:
        return _labels(repo, current, before, after)
    if changed == {"status"}:
        return _status(repo, current, after)
    if changed == {"extension"}:
        return _archived(repo, current, before, after)
    raise _refuse(f"a PATCH changes one of securityLabel, status (deletion) or the isArchived extension, "
                  f"not {', '.join(sorted(changed))}")


def _labels(repo: Repository, current: StoredResource, before: dict, after: dict) -> StoredResource:
    labels = after.get("securityLabel")
    if not isinstance(labels, list) or not all(isinstance(label, dict) for label in labels):
        raise _refuse("securityLabel is a list of CodeableConcepts", "DocumentReference.securityLabel")
    confidentiality_before = {c.get("code") for label in before.get("securityLabel", []) for c in label.get("coding", [])
                              if c.get("system") in CONFIDENTIALITY_SYSTEMS}
    confidentiality_after = {c.get("code") for label in labels for c in label.get("coding", [])
                             if isinstance(c, dict) and c.get("system") in CONFIDENTIALITY_SYSTEMS}
    # An N in the patched labels is PDSM4DMP's "no restriction" (unmasking); any other confidentiality
    # code must be the document's own.
    if not confidentiality_after - {"N"} <= confidentiality_before:
        raise _refuse("the confidentiality stays as authored; only the visibility labels (TRE_A07) may change",
                      "DocumentReference.securityLabel")
    wanted = visibility_codes({"securityLabel": applied_labels(labels, "DocumentReference.securityLabel")})
    changed = visibility_codes(before) ^ wanted
    if not changed:
        return current
    kept = [label for label in before.get("securityLabel", [])
            if not any(c.get("system") == codes.VISIBILITY_SYSTEM for c in label.get("coding", []))]
    result = dict(before, securityLabel=[
        {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": code, "display": codes.VISIBILITY_DISPLAYS[code]}]}
        for code in sorted(wanted)] + kept)
    return _save(repo, current, result, Write.CHANGE, labels_changed=changed)


def _status(repo: Repository, current: StoredResource, after: dict) -> None:
    if after.get("status") != "entered-in-error":
        raise _refuse("the status of a document changes only to entered-in-error (deletion); a replacement "
                      "supersedes it", "DocumentReference.status")
    with repo.unit_of_work(Write.CHANGE) as uow:
        stored = uow.document_to_change(current.res_id, current.patient_id, Producers(), "DocumentReference.status")
        if stored.version != current.version:
            raise ChangedMeanwhile(current.reference)
        delete_document(uow, stored)
    return None


def _archived(repo: Repository, current: StoredResource, before: dict, after: dict) -> StoredResource:
    others_before = [e for e in before.get("extension", []) if e.get("url") != codes.PDSM_IS_ARCHIVED]
    others_after = [e for e in after.get("extension", []) if isinstance(e, dict) and e.get("url") != codes.PDSM_IS_ARCHIVED]
    archived = [e for e in after.get("extension", []) if isinstance(e, dict) and e.get("url") == codes.PDSM_IS_ARCHIVED]
    if others_before != others_after or len(archived) > 1 or (archived and not isinstance(
            archived[0].get("valueBoolean"), bool)) or (archived and set(archived[0]) != {"url", "valueBoolean"}):
        raise _refuse("only the isArchived extension (valueBoolean) may change", "DocumentReference.extension")
    result = dict(before, extension=others_before + archived)
    if not result["extension"]:
        result.pop("extension")
    return _save(repo, current, result, Write.ARCHIVE)


def _save(repo: Repository, current: StoredResource, resource: dict, permission: Write,
          labels_changed: set[str] = frozenset()) -> StoredResource:
    resource["meta"] = {k: v for k, v in resource.get("meta", {}).items() if k == "profile"}
    try:
        validate(resource, kept=True)
    except InvalidResource as exc:
        raise _refuse(str(exc)) from None
    with repo.unit_of_work(permission) as uow:
        if labels_changed:
            uow.require_labels(current.json(), labels_changed)
        stored = uow.save(resource, patient_id=current.patient_id, method="PATCH", based_on=current.version)
        if labels_changed:
            # Once announced, the accesses to the document appear in the patient's trail too.
            uow.reveal_audit_of(stored.reference, stored.hidden_from_patient, stored.hidden_from_representatives)
        return stored
