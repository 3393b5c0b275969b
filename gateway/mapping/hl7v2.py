"""Pure functions from HL7v2 segments (PAM-FR 2.11, CI-SIS "transmission de documents CDA en HL7v2")
to the gateway's model: patient identity from PID/MRG, DMP consent from ZFA, document flags from
the MetaDMPMSS OBX, the sender from PRT."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from gateway.cda.header import II, Name, Organization, PatientInfo, Person
from gateway.hl7v2.er7 import Segment

from . import codes
from .dates import InvalidTime, ts_to_fhir

_OID = re.compile(r"^[0-2](\.\d+)+$")
AUTHORITY_URN = "urn:hl7v2-assigning-authority:"

# PAM-FR has no FHIR canonical for the ZFA value tables: its codes are kept under this system.
ZFA_SYSTEM = "urn:hl7-france:pam-fr:zfa"
CONSENT_KINDS = {
    # kind: (ZFA field of the value, ZFA field of its date, consent action, policy)
    "consultation": (11, 12, "access", "OPTIN"),
    "alimentation": (9, 10, "collect", "OPTOUT"),
}
# ZFA-11 (consultation) and ZFA-9 (feeding): the provision each value grants.
CONSENT_VALUES = {"IC": "permit", "INC": "deny", "INO": "permit", "IO": "deny"}
RECORD_ACTIVE = "ACTIF"
RECORD_STATUS_URL = f"{ZFA_SYSTEM}:record-status"   # a ZFA Consent's extension: ZFA-1

# MetaDMPMSS OBX codes that become DocumentReference.securityLabel (TRE_A07) when valued Y.
# HL7v2 spells the last one INVISIBLE_REP_LEGAUX; CI-SIS 1.2 messages spelled it in full.
VISIBILITY_FLAGS = {
    "MASQUE_PS": "MASQUE_PS",
    "INVISIBLE_PATIENT": "INVISIBLE_PATIENT",
    "INVISIBLE_REP_LEGAUX": "INVISIBLE_REPRESENTANTS_LEGAUX",
    "INVISIBLE_REPRESENTANTS_LEGAUX": "INVISIBLE_REPRESENTANTS_LEGAUX",
}
# CONNEXION_SECRETE Y: the document was written in the DMP's secret connection, a minor's care kept
# from their legal representatives (CSP L1111-5): it is hidden from them, as INVISIBLE_REP_LEGAUX Y
# hides it. The volet says no more than "a transaction in connexion secrète"; it was ignored: the
# minor's legal representatives read what was written in it.
SECRET_CONNECTION = "CONNEXION_SECRETE"
# The volet's MODIF_CONF_CODE (the table's own code), and its spelling in full.
MODIF_CONF_CODES = ("MODIF_CONF_CODE", "MODIF_CONFIDENTIALITYCODE")
# The MetaDMPMSS flags that decide what is done with a document: who may see it, and whether it is
# for the shared record at all.
APPLIED_FLAGS = {*VISIBILITY_FLAGS, SECRET_CONNECTION, *MODIF_CONF_CODES, "DESTDMP"}
METADATA_TABLE = "MetaDMPMSS"
METADATA_CODES = set(VISIBILITY_FLAGS) | {
    SECRET_CONNECTION, *MODIF_CONF_CODES, "DESTDMP", "DESTMSSANTEPS",
    "DESTMSSANTEPAT", "ACK_RECEPTION", "ACK_LECTURE_MSS", "ACK_LECTURE", "CORPSMAIL_PS", "CORPSMAIL_PATIENT",
}


def assigning_authority_system(namespace: str, universal_id: str) -> str:
    """An OID when the assigning authority has one; otherwise a URN on its name, stable per sender,
    its whitespace percent-encoded (`Homerton Case Note Number`, in HL7's own v2-to-FHIR
    examples): a URI holds none, and such a Patient was served failing the official check."""
    if _OID.match(universal_id):
        return universal_id
    return AUTHORITY_URN + re.sub(r"\s", lambda space: quote(space.group(), safe=""), namespace or universal_id)


def cx_ids(segment: Segment, field_number: int) -> list[II]:
    """The identifiers of a CX field (PID-3, MRG-1), named by their assigning authority."""
    out = []
    for rep in segment.repetitions(field_number):
        value = segment.component(rep, 1).strip()
        if not value:
            continue
        namespace, universal = segment.component(rep, 4, 1), segment.component(rep, 4, 2)
        if not (namespace or universal):
            continue  # an identifier without assigning authority cannot be told apart from another
        out.append(II(assigning_authority_system(namespace, universal), value))
    return out


def _names(pid: Segment) -> list[Name]:
    names = []
    for rep in pid.repetitions(5):
        family, given, further = pid.component(rep, 1), pid.component(rep, 2), pid.component(rep, 3)
        prefix, name_type = pid.component(rep, 5), pid.component(rep, 7)
        if not (family or given):
            continue
        # PAM-FR 2.11: L is the birth name with the first birth given name and (XPN-3) the list of
        # birth given names; D is the used name.
        use = {"L": "official", "D": "usual"}.get(name_type)
        names.append(Name(family=[family] if family else [], given=[given] if given else [],
                          prefix=[prefix] if prefix else [], use=use,
                          given_list=further if name_type == "L" and further else None))
    return names


def _birthplace(pid: Segment) -> tuple[str | None, str | None]:
    for rep in pid.repetitions(11):
        if pid.component(rep, 7) == "BDL":
            return pid.component(rep, 9) or None, pid.component(rep, 3) or None
    return None, None


# PID-30, HL7 table 0136; the spelt-out answers are read too (third-party feeds send "NO").
DEATH_INDICATORS = {"Y": True, "YES": True, "N": False, "NO": False}


def patient_info(pid: Segment) -> PatientInfo:
    """The identity a PID states. A PID-30 outside DEATH_INDICATORS is read as not said: the
    service refuses it before mapping (patients.prepare_patient)."""
    code, city = _birthplace(pid)
    birth = pid.get(7)
    return PatientInfo(
        ids=cx_ids(pid, 3),
        names=_names(pid),
        gender=pid.get(8) or None,
        birth_time=birth or None,
        birthplace_code=code,
        birthplace_city=city,
        identity_reliability=pid.get(32) or None,
        death_time=pid.get(29).strip() or None,
        deceased=DEATH_INDICATORS.get(pid.get(30).strip().upper()),
    )


def _fhir_date(value: str) -> str | None:
    try:
        return ts_to_fhir(value) if value else None
    except InvalidTime:
        return None


def consents(zfa: Segment, patient_ref: str) -> dict[str, dict]:
    """The two DMP consents a ZFA states, by kind: consultation (ZFA-11) and feeding (ZFA-9).

    A value not collected (NA or empty) gives a `proposed` Consent with no provision type: nothing is
    granted or refused. A record that is not ACTIF takes no document (the feeding consent is
    inactive) and lifts no decision on consultation: made inactive too, an opposition to consultation
    stopped applying, and the professionals the patient had authorised read the record again."""
    record_status = zfa.get(1).upper()
    out = {}
    for kind, (value_field, date_field, action, policy) in CONSENT_KINDS.items():
        value = zfa.get(value_field).upper()
        provision: dict = {"action": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": action}]}]}
        if value:
            provision["code"] = [{"coding": [{"system": ZFA_SYSTEM, "code": value}]}]
        if value in CONSENT_VALUES:
            provision["type"] = CONSENT_VALUES[value]
        closed = _fhir_date(zfa.get(3))
        if closed:
            provision["period"] = {"end": closed}
        if record_status and record_status != RECORD_ACTIVE and kind == "alimentation":
            status = "inactive"
        else:
            status = "active" if value in CONSENT_VALUES else "proposed"
        consent = {
            "resourceType": "Consent",
            "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": codes.LOINC, "code": "59284-0", "display": "Patient Consent"}]},
                         {"coding": [{"system": ZFA_SYSTEM, "code": kind}]}],
            "patient": {"reference": patient_ref},
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": policy}]},
            "provision": provision,
        }
        if record_status:
            consent["extension"] = [{"url": RECORD_STATUS_URL, "valueCode": record_status}]
        when = _fhir_date(zfa.get(date_field)) or _fhir_date(zfa.get(2))
        if when:
            consent["dateTime"] = when
        out[kind] = consent
    return out


def feeding_refused(consent: dict | None) -> bool:
    """The patient opposed feeding the record (ZFA-9 IO), or the record is closed."""
    if consent is None:
        return False
    if consent.get("status") == "inactive":
        return True
    return consent.get("status") == "active" and consent.get("provision", {}).get("type") == "deny"


@dataclass
class DocumentFlags:
    visibility: list[str]
    to_dmp: bool  # DESTDMP: N means the document is not meant for the shared record
    # MODIF_CONF_CODE Y: the transaction changes the document's visibility; the labels its flags
    # answer N are to be lifted from the version it replaces, which a replacement otherwise keeps.
    lifted: frozenset[str] = frozenset()


def document_flags(obx_segments: list[Segment]) -> DocumentFlags:
    visibility: list[str] = []
    to_dmp = True
    answered_no: set[str] = set()
    modified = False
    for obx in obx_segments:
        code = obx.get(3, 1).upper()
        answer = obx.get(5, 1).upper()
        label = VISIBILITY_FLAGS["INVISIBLE_REP_LEGAUX"] if code == SECRET_CONNECTION else VISIBILITY_FLAGS.get(code)
        if label and answer == "Y" and label not in visibility:
            visibility.append(label)
        elif code in VISIBILITY_FLAGS and answer == "N":
            answered_no.add(VISIBILITY_FLAGS[code])
        elif code == "DESTDMP" and answer == "N":
            to_dmp = False
        elif code in MODIF_CONF_CODES and answer == "Y":
            modified = True
    return DocumentFlags(visibility, to_dmp, frozenset(answered_no - set(visibility)) if modified else frozenset())


def is_metadata(obx: Segment) -> bool:
    return obx.get(3, 3) == METADATA_TABLE or obx.get(3, 1).upper() in METADATA_CODES


def xcn_person(segment: Segment, value: str) -> Person | None:
    """An XCN (PRT-5, TXA-22…): id^family^given^…^assigning authority (component 9)."""
    ident = segment.component(value, 1)
    if not ident:
        return None
    universal = segment.component(value, 9, 2)
    name = Name(family=[segment.component(value, 2)] if segment.component(value, 2) else [],
                given=[segment.component(value, 3)] if segment.component(value, 3) else [])
    root = universal.strip() if _OID.match(universal.strip()) else codes.IDNATPS_OID
    return Person(ids=[II(root, ident)], name=name)


def xon_organization(segment: Segment, value: str) -> Organization | None:
    """An XON (PRT-8): name^^^^^assigning authority^type^^^id (component 10)."""
    ident = segment.component(value, 10)
    if not ident:
        return None
    universal = segment.component(value, 6, 2).strip()
    root = universal if _OID.match(universal) else codes.IDNATST_OID
    # FINESS numbers are sent bare (FINEG/FINEJ); the IdNatSt form prefixes them with 1.
    type_code = segment.component(value, 7)
    extension = f"1{ident}" if type_code in ("FINEG", "FINEJ") and len(ident) == 9 else ident
    return Organization(ids=[II(root, extension)], name=segment.component(value, 1) or None)


def sender_of(prt_segments: list[Segment]) -> Person | None:
    """The PRT whose participation (PRT-4) is SB, send by: who pushed the document."""
    for prt in prt_segments:
        if prt.get(4, 1) == "SB":
            person = xcn_person(prt, prt.repetitions(5)[0]) if prt.repetitions(5) else None
            if person is not None:
                person.organization = xon_organization(prt, prt.repetitions(8)[0]) if prt.repetitions(8) else None
            return person
    return None
