"""The audit trail: an AuditEvent (IHE BALP) for every access to patient data and every change,
chained by hash so that an edited or removed entry is found by `gateway audit verify`.

Each entry's hash is SHA-256 over the previous entry's hash and the AuditEvent JSON as stored;
the chain is extended under one lock (SQLite's single writer, a PostgreSQL advisory lock).
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select, text

from gateway.mapping import codes
from gateway.storage.database import is_sqlite, read_connection
from gateway.storage.schema import audit_chain, resources

from .context import EMERGENCY, REGULATION, AccessContext
from .rules import IDNATPS_SYSTEM

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
             "display": "RESTful Operation"}
SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
INTERACTIONS = {
    # interaction: (BALP profile, action)
    "read": ("PatientRead", "R"),
    "vread": ("PatientRead", "R"),
    "history-instance": ("PatientRead", "R"),
    "search-type": ("PatientQuery", "E"),
    "create": ("PatientCreate", "C"),
    "update": ("PatientUpdate", "U"),
    "patch": ("PatientUpdate", "U"),
}
PURPOSES = {"care": ("TREAT", "treatment"), EMERGENCY: ("BTG", "break the glass"),
            REGULATION: ("ETREAT", "Emergency Treatment")}
ROLE_SYSTEM = "urn:dmp-gateway:role"
GENESIS = "0" * 64
AUDIT_LOCK = 7_110_113  # PostgreSQL advisory lock key of the chain head


@dataclass(frozen=True)
class Outcome:
    code: str          # 0 success, 4 minor failure (refused, not found), 8 serious failure
    description: str | None = None


SUCCESS = Outcome("0")


def audit_event(event_id: str, recorded: str, interaction: str, access: AccessContext, *,
                patient_id: str | None, entities: list[str] = (), query: str | None = None,
                outcome: Outcome = SUCCESS) -> dict:
    """One BALP AuditEvent: who (with role, organisation, address), what, why, and the outcome."""
    profile, action = INTERACTIONS[interaction]
    event = {
        "resourceType": "AuditEvent", "id": event_id, "meta": {"profile": [BALP + profile]},
        "type": REST_TYPE,
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": action, "recorded": recorded, "outcome": outcome.code,
        "purposeOfEvent": [_purpose(access)],
        "agent": _agents(access), "source": _source(),
        "entity": _entities(patient_id, entities, query),
    }
    if outcome.description:
        event["outcomeDesc"] = outcome.description
    return event


def authorization_event(event_id: str, recorded: str, access: AccessContext, *, patient_id: str | None,
                        basis: str, outcome: Outcome) -> dict:
    """BALP AuthZconsent: the decision to grant an emergency access (no opposition on record), or
    to refuse a role outright (`basis` = AuthZ-Role)."""
    event = {
        "resourceType": "AuditEvent", "id": event_id, "meta": {"profile": [BALP + "AuthZconsent"]},
        "type": SECURITY_ALERT,
        "subtype": [{"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType", "code": basis}],
        "action": "E", "recorded": recorded, "outcome": outcome.code,
        "purposeOfEvent": [_purpose(access)],
        "agent": _agents(access), "source": _source(),
        "entity": _entities(patient_id, [], None),
    }
    if outcome.description:
        event["outcomeDesc"] = outcome.description
    return event


def _purpose(access: AccessContext) -> dict:
    code, display = PURPOSES[access.purpose]
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code,
                        "display": display}]}


def _agents(access: AccessContext) -> list[dict]:
    who: dict = {"display": access.name or access.subject}
    if access.is_professional:
        who["identifier"] = {"system": IDNATPS_SYSTEM, "value": access.subject}
    requester = {
        "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
        "role": [{"coding": [{"system": ROLE_SYSTEM, "code": access.role}]}],
        "who": who, "altId": access.subject, "name": access.name or access.subject, "requestor": True,
    }
    if access.address:
        requester["network"] = {"address": access.address, "type": "2"}
    agents = [requester]
    if access.organization:
        agents.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                                            "code": "PROV", "display": "healthcare provider"}]},
                       "who": {"identifier": {"system": codes.FINESS_SYSTEM, "value": access.organization}},
                       "requestor": False})
    agents.append({"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
                   "who": {"display": "dmp-gateway"}, "requestor": False})
    return agents


def _source() -> dict:
    return {"observer": {"display": "dmp-gateway"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                      "display": "Application Server"}]}


def _entities(patient_id: str | None, entities, query: str | None) -> list[dict]:
    out = []
    if patient_id:
        out.append({"what": {"reference": f"Patient/{patient_id}"},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
    for reference in entities:
        out.append({"what": {"reference": reference},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}})
    if query is not None:
        out.append({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                    "query": base64.b64encode(query.encode()).decode()})
    return out


def link_hash(previous_hash: str, body: str) -> str:
    return hashlib.sha256(f"{previous_hash}\n{body}".encode()).hexdigest()


def chain_head(conn: Connection) -> str:
    """The last hash of the chain, with the chain locked until this transaction ends."""
    if not is_sqlite(conn.engine):
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})
    last = conn.execute(select(audit_chain.c.hash).order_by(audit_chain.c.seq.desc()).limit(1)).scalar()
    return last or GENESIS


@dataclass(frozen=True)
class ChainReport:
    entries: int
    broken_at: int | None = None   # the sequence number of the first entry that does not verify
    event_id: str | None = None
    reason: str | None = None


def verify_chain(engine: Engine) -> ChainReport:
    previous = GENESIS
    count = 0
    with read_connection(engine) as conn:
        rows = conn.execute(select(audit_chain.c.seq, audit_chain.c.event_id, audit_chain.c.previous_hash,
                                   audit_chain.c.hash, resources.c.body)
                            .select_from(audit_chain.outerjoin(resources, (resources.c.res_type == "AuditEvent")
                                                               & (resources.c.res_id == audit_chain.c.event_id)))
                            .order_by(audit_chain.c.seq))
        for row in rows:
            count += 1
            if row.previous_hash != previous:
                return ChainReport(count, row.seq, row.event_id, "does not follow the entry before it "
                                                                 "(an entry was removed or inserted)")
            if row.body is None:
                return ChainReport(count, row.seq, row.event_id, "the AuditEvent is missing")
            if link_hash(previous, row.body) != row.hash:
                return ChainReport(count, row.seq, row.event_id, "the AuditEvent was changed after it was written")
            previous = row.hash
    return ChainReport(count)
