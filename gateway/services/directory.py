"""The identity resources a feeding system registers: patients, and the directory of professionals
(Practitioner, PractitionerRole: specialty, organisation, secure messaging) and organisations. One
identifier belongs to one resource."""
from __future__ import annotations

import json

from sqlalchemy import select

from gateway.access.rules import IDNATPS_SYSTEM
from gateway.access.writes import Write
from gateway.refusal import Refused
from gateway.fhir.primitives import present
from gateway.fhir.validation import InvalidResource, keep_claimed_profiles, validate
from gateway.mapping import codes
from gateway.mapping.identity import compact_ins, ins_key_is_valid
from gateway.storage.repository import Repository, StoredResource, new_id
from gateway.storage.schema import resources, search_reference, unique_identifiers

REGISTERED_TYPES = ("Patient", "Practitioner", "PractitionerRole", "Organization")
BASE_DEFINITIONS = "http://hl7.org/fhir/StructureDefinition/"
# FR Core's type of an e-mail address (TRE_R256-TypeMessagerie): MSSANTE, the health professionals'
# secure messaging, which may carry health data; every MSSanté domain ends so.
EMAIL_TYPE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type"
MSSANTE_DOMAIN = ".mssante.fr"


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
        _link_named(uow, resource)
        for identifier in resource.get("identifier", []):
            if identifier.get("system") and identifier.get("value"):
                if uow.find_by_identifier(res_type, identifier["system"], identifier["value"]):
                    # Which resource holds it is not told: the requester may not read it.
                    raise Refused(f"a {res_type} with identifier {identifier['system']}|{identifier['value']} "
                                          "is already registered", status=409, code="duplicate")
                uow.claim_identifier(res_type, identifier["system"], identifier["value"], resource["id"])
        return uow.save(resource, patient_id=resource["id"] if res_type == "Patient" else None)


def _link_named(uow, resource: dict) -> None:
    """A role names its practitioner and organisation by identifier, as the annuaire santé and the
    demo's directory do: the reference to the one registered under it is added, which the searches
    and the space follow. A role so named was linked to no one: the space showed no specialty or
    organisation, and no address of its practitioner was found. One not registered stays as named."""
    for field, res_type in (("practitioner", "Practitioner"), ("organization", "Organization")):
        named = resource.get(field) if resource["resourceType"] == "PractitionerRole" else None
        identifier = named.get("identifier") if isinstance(named, dict) and not named.get("reference") else None
        if identifier and identifier.get("system") and identifier.get("value"):
            found = uow.find_by_identifier(res_type, identifier["system"], identifier["value"])
            if found:
                named["reference"] = f"{res_type}/{found}"


def rpps_number(idnatps: str) -> str | None:
    """The RPPS number an IdNatPs carries (8 + RPPS); None for one of another kind (0 + ADELI)."""
    return idnatps[1:] if idnatps.startswith("8") else None


def practitioner(conn, idnatps: str) -> dict | None:
    """The directory's Practitioner of an IdNatPs."""
    body = conn.execute(select(resources.c.body).where(
        resources.c.res_type == "Practitioner", resources.c.deleted.is_(False),
        resources.c.res_id == _practitioner_id(idnatps))).scalar()
    return json.loads(body) if body else None


def _practitioner_id(idnatps: str):
    return select(unique_identifiers.c.res_id).where(
        unique_identifiers.c.res_type == "Practitioner", unique_identifiers.c.system == IDNATPS_SYSTEM,
        unique_identifiers.c.value == idnatps).scalar_subquery()


def mssante_addresses(conn, idnatps: str) -> list[str]:
    """A professional's MSSanté addresses the directory gives, their roles' first (the annuaire
    santé files mailboxes under the role), then their own: an address typed MSSANTE, or of an
    MSSanté domain (an HL7v2 XTN cannot type it). Other addresses are not for health data."""
    practitioner = _practitioner_id(idnatps)
    roles = select(search_reference.c.res_id).where(
        search_reference.c.res_type == "PractitionerRole", search_reference.c.param == "practitioner",
        search_reference.c.target_id == practitioner)
    rows = conn.execute(select(resources.c.res_type, resources.c.body).where(
        resources.c.deleted.is_(False), ((resources.c.res_type == "PractitionerRole") & resources.c.res_id.in_(roles))
        | ((resources.c.res_type == "Practitioner") & (resources.c.res_id == practitioner)))
        .order_by(resources.c.res_type.desc(), resources.c.res_id)).all()
    found = []
    for row in rows:
        for telecom in json.loads(row.body).get("telecom", []):
            address = str(telecom.get("value") or "").strip()
            if telecom.get("system") == "email" and telecom.get("use") != "old" and address not in found \
                    and (_typed_mssante(telecom) or address.lower().endswith(MSSANTE_DOMAIN)):
                found.append(address)
    return found


def _typed_mssante(telecom: dict) -> bool:
    return any(extension.get("url") == EMAIL_TYPE and extension.get("valueCoding", {}).get("code") == "MSSANTE"
               for extension in telecom.get("extension", []))


def person_name(resource: dict | None) -> str | None:
    """A Patient's or a Practitioner's name as it is written to people: "Dr Camille NOEL"."""
    if not resource:
        return None
    for name in resource.get("name", []):
        prefixes = [p.capitalize() if p.isupper() else p for p in present(name.get("prefix"))]   # "DR" -> "Dr"
        parts = [*prefixes, *present(name.get("given")), name.get("family", "")]
        text = name.get("text") or " ".join(p for p in parts if p)
        if text:
            return text
    return None
