"""Masking and unmasking: a JSON Patch on DocumentReference.securityLabel (PDSm TD3.3b).

Who may change which label (CSP, TRE_A07):
- the patient: MASQUE_PS (hide from professionals) and INVISIBLE_REPRESENTANTS_LEGAUX (a minor
  hiding care received in secret from the parents);
- a representative: MASQUE_PS;
- a professional who may see the document: INVISIBLE_PATIENT (hidden until it is announced).
Nothing else of the DocumentReference may change. Each change is a new version (the history keeps
the previous labels) with its AuditEvent.
"""
from __future__ import annotations

import jsonpatch

from gateway.access import AccessContext
from gateway.access.context import CARE, PATIENT, PROFESSIONS, REPRESENTATIVE
from gateway.access.rules import INVISIBLE_PATIENT, INVISIBLE_REPRESENTATIVES, MASQUE_PS, visibility_codes
from gateway.cda.errors import DocumentRefused
from gateway.fhir.validation import InvalidResource, validate
from gateway.mapping import codes
from gateway.storage.repository import Repository, StoredResource


def changeable_labels(access: AccessContext) -> set[str]:
    if access.role == PATIENT:
        return {MASQUE_PS, INVISIBLE_REPRESENTATIVES}
    if access.role == REPRESENTATIVE:
        return {MASQUE_PS}
    if access.role in PROFESSIONS and access.purpose == CARE:
        return {INVISIBLE_PATIENT}
    return set()


def _without_labels(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("securityLabel", "meta")}


def _refuse(reason: str, status: int = 422, code: str = "invalid") -> DocumentRefused:
    return DocumentRefused(reason, location="DocumentReference.securityLabel", status=status, code=code)


def patch_labels(repo: Repository, docref_id: str, patch: list) -> StoredResource:
    current = repo.read("DocumentReference", docref_id)   # 404 unless the requester sees it
    before = current.json()
    try:
        after = jsonpatch.apply_patch(before, patch)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, ValueError) as exc:
        raise _refuse(f"the JSON Patch cannot be applied: {exc}") from None
    if _without_labels(after) != _without_labels(before):
        raise _refuse("only DocumentReference.securityLabel may be patched")
    others_before = [lb for lb in before.get("securityLabel", []) if not _is_visibility(lb)]
    others_after = [lb for lb in after.get("securityLabel", []) if not _is_visibility(lb)]
    if others_before != others_after:
        raise _refuse("only the visibility labels (TRE_A07) may change; the confidentiality stays as authored")
    unknown = visibility_codes(after) - set(codes.VISIBILITY_DISPLAYS)
    if unknown:
        raise _refuse(f"unknown visibility label {', '.join(sorted(unknown))}")
    changed = visibility_codes(before) ^ visibility_codes(after)
    forbidden = changed - changeable_labels(repo.access)
    if forbidden:
        raise _refuse(f"the role {repo.access.role} may not change {', '.join(sorted(forbidden))}", 403, "forbidden")
    if not changed:
        return current
    after["securityLabel"] = others_after + [
        {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": code, "display": codes.VISIBILITY_DISPLAYS[code]}]}
        for code in sorted(visibility_codes(after))]
    after["meta"] = {k: v for k, v in before.get("meta", {}).items() if k == "profile"}
    try:
        validate(after)
    except InvalidResource as exc:
        raise _refuse(str(exc)) from None
    with repo.unit_of_work() as uow:
        stored = uow.save(after, patient_id=current.patient_id, method="PATCH")
        # Once announced, the accesses to the document appear in the patient's trail too.
        uow.reveal_audit_of(stored.reference, stored.hidden_from_patient, stored.hidden_from_representatives)
        return stored


def _is_visibility(label: dict) -> bool:
    return any(c.get("system") == codes.VISIBILITY_SYSTEM for c in label.get("coding", []))
