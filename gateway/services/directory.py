"""The identity resources a feeding system registers: patients, and the directory of professionals
(Practitioner, PractitionerRole: specialty and organisation) and organisations. One identifier
belongs to one resource."""
from __future__ import annotations

from gateway.access.writes import Write
from gateway.refusal import Refused
from gateway.fhir.validation import InvalidResource, keep_claimed_profiles, validate
from gateway.mapping import codes
from gateway.mapping.identity import compact_ins, ins_key_is_valid
from gateway.storage.repository import Repository, StoredResource, new_id

REGISTERED_TYPES = ("Patient", "Practitioner", "PractitionerRole", "Organization")
BASE_DEFINITIONS = "http://hl7.org/fhir/StructureDefinition/"


def register(repo: Repository, resource: dict) -> StoredResource:
    """Store a new identity resource; Refused when it is invalid or an identifier is taken."""
    res_type = resource["resourceType"]
    resource["id"] = new_id()
    profiles = keep_claimed_profiles(resource)
    try:
        validate(resource)   # a profile no definition served here gives for the type is refused
    except InvalidResource as exc:
        raise Refused(str(exc)) from None
    # A claimed profile is kept where the gateway checks it, FHIR's own for the type; not FR Core's,
    # which it does not check: a Patient claiming fr-core-patient-ins without the identity
    # reliability that profile requires was kept with its claim, and every read of it failed the
    # official check (found by the fuzz).
    checked = [profile for profile in profiles if profile == f"{BASE_DEFINITIONS}{res_type}"]
    resource["meta"] = {"profile": checked} if checked else {}
    if res_type == "Patient":
        for identifier in resource.get("identifier", []):
            if identifier.get("system", "").removeprefix("urn:oid:") in codes.INS_OIDS:
                identifier["value"] = compact_ins(str(identifier.get("value", "")))
                if not ins_key_is_valid(identifier["value"]):
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
