"""The audit trail: an AuditEvent (IHE BALP) for every access to patient data and every change,
chained by hash so that an edited or removed entry is found by `gateway audit verify`.

Each entry's hash is SHA-256 over the previous entry's hash in its chain and the AuditEvent JSON
as stored. There are CHAINS chains, each extended under its own lock (SQLite's single writer, a
PostgreSQL advisory lock per chain), so that writers in parallel do not queue on one lock.
"""
from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, insert, select, text

from gateway.mapping import codes
from gateway.storage.database import is_sqlite, read_connection
from gateway.storage.schema import audit_chain, resources
from gateway.storage.statements import Prebuilt

from .context import EMERGENCY, PATIENT, REGULATION, AccessContext
from .rules import IDNATPS_SYSTEM

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
             "display": "RESTful Operation"}
SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
SOURCE_ROLE = {"system": DCM, "code": "110153", "display": "Source Role ID"}
DESTINATION_ROLE = {"system": DCM, "code": "110152", "display": "Destination Role ID"}
APPLICATION_ROLE = {"system": DCM, "code": "110150", "display": "Application"}
CUSTODIAN_ROLE = {"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "custodian",
                  "display": "Custodian"}
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
# interaction: (BALP profile with a patient, without one, action, requester's agent type, gateway's).
# BALP names the agent the data leaves "Source" (110153) and the one it reaches "Destination"
# (110152): the requester is the source of a create or a query, the destination of a read. A
# deletion is asked by an application of the data's custodian.
INTERACTIONS = {
    "read": ("PatientRead", "Read", "R", DESTINATION_ROLE, SOURCE_ROLE),
    "vread": ("PatientRead", "Read", "R", DESTINATION_ROLE, SOURCE_ROLE),
    "history-instance": ("PatientRead", "Read", "R", DESTINATION_ROLE, SOURCE_ROLE),
    "search-type": ("PatientQuery", "Query", "E", SOURCE_ROLE, DESTINATION_ROLE),
    "create": ("PatientCreate", "Create", "C", SOURCE_ROLE, DESTINATION_ROLE),
    "update": ("PatientUpdate", "Update", "U", SOURCE_ROLE, DESTINATION_ROLE),
    "patch": ("PatientUpdate", "Update", "U", SOURCE_ROLE, DESTINATION_ROLE),
    "delete": ("PatientDelete", "Delete", "D", APPLICATION_ROLE, CUSTODIAN_ROLE),
}
# A history serves a resource's versions as vreads would. BALP has no profile of a history: its
# (Patient)Read takes the subtypes read and vread only, and an event naming history-instance alone
# claimed it and failed it. It names vread too, after history-instance (what the patient reads).
ALSO_NAMED = {"history-instance": ("vread",)}
PURPOSES = {"care": ("TREAT", "treatment"), EMERGENCY: ("BTG", "break the glass"),
            REGULATION: ("ETREAT", "Emergency Treatment")}
ROLE_SYSTEM = "urn:dmp-gateway:role"
# The legal basis of a decision taken without a Consent resource: emergency access is open unless
# the patient opposed it (CSP L1111-17 I), and insurers are refused whatever they hold (L1111-18).
POLICY_SYSTEM = "urn:dmp-gateway:access-policy"
GATEWAY = "dmp-gateway"
GENESIS = "0" * 64
AUDIT_LOCK = 7_110_113  # PostgreSQL advisory lock key of the chains' heads (with the chain number)
CHAINS = 16
TRY_LOCK = Prebuilt(text("SELECT pg_try_advisory_xact_lock(:key, :chain)"))
LOCK = Prebuilt(text("SELECT pg_advisory_xact_lock(:key, :chain)"))
CHAIN_HEAD = Prebuilt(select(audit_chain.c.hash).where(audit_chain.c.chain == bindparam("chain"))
                      .order_by(audit_chain.c.seq.desc()).limit(1))
INSERT_LINK = Prebuilt(insert(audit_chain))


@dataclass(frozen=True)
class Outcome:
    code: str          # 0 success, 4 minor failure (refused, not found), 8 serious failure
    description: str | None = None


SUCCESS = Outcome("0")


def audit_event(event_id: str, recorded: str, interaction: str, access: AccessContext, *,
                patient_id: str | None, entity: str | None = None, query: str | None = None,
                outcome: Outcome = SUCCESS, host: str = GATEWAY, requester_patient: str | None = None) -> dict:
    """One BALP AuditEvent: who (with role, organisation, address), what (one resource, or the
    query), about which patient, why, and the outcome. BALP allows one data entity per event.
    `requester_patient` is the Patient id of a patient who asks, by which the event names them."""
    with_patient, without_patient, action, requester_role, gateway_role = INTERACTIONS[interaction]
    event = {"resourceType": "AuditEvent", "id": event_id}
    if outcome == SUCCESS:
        # BALP's RESTful profiles describe successes only (outcome fixed to 0): a failed interaction
        # is recorded alike but claims none of them.
        event["meta"] = {"profile": [BALP + (with_patient if patient_id else without_patient)]}
    event |= {
        "type": REST_TYPE,
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": code}
                    for code in (interaction, *ALSO_NAMED.get(interaction, ()))],
        "action": action, "recorded": recorded, "outcome": outcome.code,
        "purposeOfEvent": [_purpose(access)],
        "agent": [_requester(access, requester_role, requester_patient), *_organization(access),
                  _gateway(gateway_role, host)],
        "source": _source(),
        "entity": _entities(patient_id, entity, query),
    }
    if outcome.description:
        event["outcomeDesc"] = outcome.description
    return event


def authorization_event(event_id: str, recorded: str, access: AccessContext, *, patient_id: str | None,
                        basis: str, outcome: Outcome, host: str = GATEWAY) -> dict:
    """BALP AuthZconsent: the decision to grant an emergency access (no opposition on record), or
    to refuse a role outright (`basis` = AuthZ-Role). The decision rests on the law, not on a
    Consent resource: the consent entity names that policy. A refusal that names no patient is not
    an AuthZconsent (which needs one): it is a plain AuditEvent with the same content."""
    policy = ("CSP-L1111-18", "insurers, banks and employers may not access the record") if basis == "AuthZ-Role" \
        else ("CSP-L1111-17-I", "emergency access is open unless the patient opposed it")
    user = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP", "display": "information recipient"}]},
            "role": [{"coding": [{"system": ROLE_SYSTEM, "code": access.role}]}],
            "who": _who(access), "name": access.name or access.subject, "requestor": True}
    client = {"type": {"coding": [APPLICATION_ROLE]},
              "who": {"display": f"client of {access.subject}"}, "requestor": False, "network": _network(access)}
    organization = _organization(access) or [{
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV",
                             "display": "healthcare provider"}]},
        "who": {"display": "organisation not stated in the token"}, "requestor": False}]
    authorizer = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                                       "code": "authserver", "display": "authorization server"}]},
                  "who": {"display": host}, "requestor": False}
    entities = _entities(patient_id, None, None) + [{
        "what": {"identifier": {"system": POLICY_SYSTEM, "value": policy[0]}, "display": policy[1]},
        "type": {"system": "http://hl7.org/fhir/resource-types", "code": "Consent"}}]
    event = {
        "resourceType": "AuditEvent", "id": event_id,
        "meta": {"profile": [BALP + "AuthZconsent"]} if patient_id else {},
        "type": SECURITY_ALERT,
        "subtype": [{"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType", "code": basis}],
        "action": "E", "recorded": recorded, "outcome": outcome.code,
        "purposeOfEvent": [_purpose(access)],
        "agent": [user, client, *organization, authorizer], "source": _source(),
        "entity": entities,
    }
    if outcome.description:
        event["outcomeDesc"] = outcome.description
    return event


def _purpose(access: AccessContext) -> dict:
    code, display = PURPOSES[access.purpose]
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code,
                        "display": display}]}


def _who(access: AccessContext) -> dict:
    who: dict = {"display": access.name or access.subject}
    if access.is_professional:
        who["identifier"] = {"system": IDNATPS_SYSTEM, "value": access.subject}
    return who


def _network(access: AccessContext) -> dict:
    # type 2: an IP address; type 1: a machine name (the gateway's own processes, e.g. `gateway ingest`).
    return {"address": access.address, "type": "2"} if access.address else {"address": "localhost", "type": "1"}


def _requester(access: AccessContext, role: dict, requester_patient: str | None) -> dict:
    requester = {"type": {"coding": [role]}, "role": [{"coding": [{"system": ROLE_SYSTEM, "code": access.role}]}]}
    if access.role == PATIENT:
        # A patient is named by their record, not by their INS and name: the trail outlives a
        # destroyed record (its chain hashes every entry), and each of the patient's own accesses
        # wrote both in clear. Their INS stays where a search asked for it (the query).
        requester["who"] = {"reference": f"Patient/{requester_patient}"} if requester_patient \
            else {"display": "a patient whose record was not found"}
    else:
        requester |= {"who": _who(access), "altId": access.subject, "name": access.name or access.subject}
    return requester | {"requestor": True, "network": _network(access)}


def _organization(access: AccessContext) -> list[dict]:
    if not access.organization:
        return []
    return [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV",
                                  "display": "healthcare provider"}]},
             "who": {"identifier": {"system": codes.FINESS_SYSTEM, "value": access.organization}},
             "requestor": False}]


def _gateway(role: dict, host: str) -> dict:
    return {"type": {"coding": [role]}, "who": {"display": GATEWAY}, "requestor": False,
            "network": {"address": host, "type": "1"}}


def _source() -> dict:
    return {"observer": {"display": GATEWAY},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                      "display": "Application Server"}]}


def _entities(patient_id: str | None, entity: str | None, query: str | None) -> list[dict]:
    out = []
    if patient_id:
        out.append({"what": {"reference": f"Patient/{patient_id}"},
                    "type": {"system": ENTITY_TYPE, "code": "1"}, "role": {"system": OBJECT_ROLE, "code": "1"}})
    if entity:
        out.append({"what": {"reference": entity}, "type": {"system": ENTITY_TYPE, "code": "2"},
                    "role": {"system": OBJECT_ROLE, "code": "4"}})
    if query is not None:
        out.append({"type": {"system": ENTITY_TYPE, "code": "2"}, "role": {"system": OBJECT_ROLE, "code": "24"},
                    "query": base64.b64encode(query.encode()).decode()})
    return out


def link_hash(previous_hash: str, body: str) -> str:
    return hashlib.sha256(f"{previous_hash}\n{body}".encode()).hexdigest()


def claim_chain(conn: Connection) -> tuple[int, str]:
    """A chain to extend, locked until this transaction ends, and its last hash. SQLite has one
    writer at a time: one chain orders everything. On PostgreSQL a transaction takes whichever of
    CHAINS chains no other one holds, so concurrent writers never wait on each other's commit
    (one chain, locked through every commit's WAL flush, capped the cluster at about 100 audited
    writes a second); it waits only when all CHAINS are taken."""
    if is_sqlite(conn.engine):
        chain = 0
    else:
        order = random.sample(range(CHAINS), CHAINS)
        chain = next((c for c in order if TRY_LOCK.execute(conn, {"key": AUDIT_LOCK, "chain": c}).fetchone()[0]), None)
        if chain is None:
            chain = order[0]
            LOCK.execute(conn, {"key": AUDIT_LOCK, "chain": chain}).fetchone()
    # The head is read by a statement of its own, begun once the lock is held: under READ COMMITTED
    # a statement sees what was committed before it began, so one that took the lock and read the
    # head together could miss the link the lock's last holder committed meanwhile (tried: the
    # chains no longer verified).
    last = CHAIN_HEAD.execute(conn, {"chain": chain}).fetchone()
    return chain, last[0] if last else GENESIS


def extend_chain(conn: Connection, entries: list[tuple[str, str]]) -> None:
    """Link (AuditEvent id, JSON as stored) entries, in order, at the end of a chain this
    transaction holds."""
    if not entries:
        return
    chain, previous = claim_chain(conn)
    links = []
    for event_id, body in entries:
        link = link_hash(previous, body)
        links.append({"chain": chain, "event_id": event_id, "previous_hash": previous, "hash": link})
        previous = link
    INSERT_LINK.executemany(conn, links)


@dataclass(frozen=True)
class ChainReport:
    entries: int
    broken_at: int | None = None   # the sequence number of the first entry that does not verify
    event_id: str | None = None
    reason: str | None = None


def verify_chain(engine: Engine) -> ChainReport:
    """Walk every chain in order: each entry must follow the previous one of its chain and hash the
    AuditEvent as stored; an AuditEvent that no chain holds was inserted around it. The first
    failure, in the order entries were written, is reported."""
    previous: dict[int, str] = {}
    count = 0
    failure: ChainReport | None = None
    with read_connection(engine) as conn:
        rows = conn.execute(select(audit_chain.c.seq, audit_chain.c.chain, audit_chain.c.event_id,
                                   audit_chain.c.previous_hash, audit_chain.c.hash, resources.c.body)
                            .select_from(audit_chain.outerjoin(resources, (resources.c.res_type == "AuditEvent")
                                                               & (resources.c.res_id == audit_chain.c.event_id)))
                            .order_by(audit_chain.c.seq))
        for row in rows:
            count += 1
            if failure:
                continue
            expected = previous.get(row.chain, GENESIS)
            if row.previous_hash != expected:
                failure = ChainReport(0, row.seq, row.event_id, "does not follow the entry before it "
                                                                "(an entry was removed or inserted)")
            elif row.body is None:
                failure = ChainReport(0, row.seq, row.event_id, "the AuditEvent is missing")
            elif link_hash(expected, row.body) != row.hash:
                failure = ChainReport(0, row.seq, row.event_id, "the AuditEvent was changed after it was written")
            previous[row.chain] = row.hash
        # A set difference, which the database can only hash or sort: as NOT EXISTS, PostgreSQL
        # planned a nested loop over the chain for each AuditEvent whenever its statistics were
        # older than the trail (a burst of writes, a restored copy): 80,000 entries ran past 120 s,
        # where this takes 0.06 s.
        unchained = conn.execute(select(resources.c.res_id).where(resources.c.res_type == "AuditEvent")
                                 .except_(select(audit_chain.c.event_id)).limit(1)).scalar()
    if failure:
        return ChainReport(count, failure.broken_at, failure.event_id, failure.reason)
    if unchained:
        return ChainReport(count, None, unchained, "this AuditEvent is in no chain (it was inserted)")
    return ChainReport(count)
