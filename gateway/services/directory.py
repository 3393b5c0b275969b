"""The identity resources a feeding system registers: patients, and the directory of professionals
(Practitioner, PractitionerRole: specialty and organisation) and organisations. One identifier
belongs to one resource."""
from __future__ import annotations

from gateway.access.writes import Write
from gateway.refusal import Refused
from gateway.fhir.validation import InvalidResource, validate
from gateway.mapping import codes
from gateway.mapping.identity import ins_key_is_valid
from gateway.storage.repository import Repository, StoredResource, new_id

REGISTERED_TYPES = ("Patient", "Practitioner", "PractitionerRole", "Organization")


def register(repo: Repository, resource: dict) -> StoredResource:
    """Store a new identity resource; Refused when it is invalid or an identifier is taken."""
    res_type = resource["resourceType"]
    resource["id"] = new_id()
    # The server owns versionId and lastUpdated; the client's profiles are kept.
    profiles = resource.get("meta", {}).get("profile")
    resource["meta"] = {"profile": profiles} if profiles else {}
    try:
        validate(resource)
    except InvalidResource as exc:
        raise Refused(str(exc)) from None
    if res_type == "Patient":
        for identifier in resource.get("identifier", []):
            if identifier.get("system", "").removeprefix("urn:oid:") in codes.INS_OIDS and \
                    not ins_key_is_valid(str(identifier.get("value", "")).replace(" ", "")):
                raise Refused("the INS is not valid: 15 characters whose last two are 97 - (first 13 mod 97)",
                                      location="Patient.identifier")
    with repo.unit_of_work(Write.FEED) as uow:
        for identifier in resource.get("identifier", []):
            if identifier.get("system") and identifier.get("value"):
                if uow.find_by_identifier(res_type, identifier["system"], identifier["value"]):
                    # Which resource holds it is not told: the requester may not read it.
                    raise Refused(f"a {res_type} with identifier {identifier['system']}|{identifier['value']} "
                                          "is already registered", status=409, code="duplicate")
                uow.claim_identifier(res_type, identifier["system"], identifier["value"], resource["id"])
        return uow.save(resource, patient_id=resource["id"] if res_type == "Patient" else None)
