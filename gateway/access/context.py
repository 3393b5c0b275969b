"""Who is asking, and what they may see, as SQL.

The repository is built from an AccessContext for every request; `resource_filter` returns the
condition it adds to every query (search, counts, read, vread, history, _include, Binary), so
paging and totals only ever count what the reader may see, and a hidden resource answers
exactly like a missing one. The rules are the CSP's as summarised in the README's access section.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.mapping import codes
from gateway.mapping.dates import index_now
from gateway.refusal import Refused

from .rules import IDNATPS_SYSTEM, ORGANIZATION_SYSTEMS

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Table

# Health professionals of the care team (CSP L1110-4, L1110-12): consented access, emergency access.
PROFESSIONS = ("doctor", "nurse", "pharmacist", "midwife", "physiotherapist", "dentist", "care-team")
OCCUPATIONAL = "occupational-doctor"   # médecin du travail, sapeur-pompier: express consent only
REGULATOR = "regulator"                # SAMU / Centre 15
PATIENT, REPRESENTATIVE = "patient", "representative"
SYSTEM, INSURER, ADMIN = "system", "insurer", "admin"
ROLES = (PATIENT, REPRESENTATIVE, *PROFESSIONS, OCCUPATIONAL, REGULATOR, SYSTEM, INSURER, ADMIN)
CARE, EMERGENCY, REGULATION = "care", "emergency", "regulation"
PURPOSES = (CARE, EMERGENCY, REGULATION)

# Resources outside any patient's record: the directory of professionals and organisations.
DIRECTORY_TYPES = ("Practitioner", "PractitionerRole", "Organization")
# The patient's decisions and the trail of accesses: the patient, the representatives and the
# attending physician read them (R1111-43), no other professional.
PRIVATE_TYPES = ("Consent", "AuditEvent")
INS_SYSTEMS = tuple(f"urn:oid:{oid}" for oid in codes.INS_OIDS)

# The rules as SQL over the resources row being filtered. Each is an EXISTS probing the
# access_rules (patient, kind, effect, actor) index: cheap per row, whether or not the search
# names a patient. Plain SQL with bound values because building the same conditions as SQLAlchemy
# expressions cost 0.5 ms per request, a quarter of an ITI-67 search (bench/, "search").


def _rule(condition: str) -> str:
    return f"EXISTS (SELECT 1 FROM access_rules ar WHERE ar.patient_id = resources.patient_id AND {condition})"


# An authorisation given for a period holds within it (access_rules.valid_from, valid_until).
IN_FORCE = "(ar.valid_from IS NULL OR ar.valid_from <= :now) AND (ar.valid_until IS NULL OR ar.valid_until >= :now)"
ATTENDING = _rule("ar.kind = 'attending-physician' AND ar.effect = 'permit' "
                  "AND ar.actor_system = :idnatps_system AND ar.actor_value = :reader")
NAMED_PERMIT = _rule("ar.kind = 'professional' AND ar.effect = 'permit' "
                     f"AND ar.actor_system = :idnatps_system AND ar.actor_value = :reader AND {IN_FORCE}")
ORGANIZATION_PERMIT = _rule("ar.kind = 'professional' AND ar.effect = 'permit' AND ar.actor_system IN "
                            f"(:finess_system, :idnatst_system) AND ar.actor_value = :reader_org AND {IN_FORCE}")
# Blocked by name, or through the organisation the reader acts for (a reader without one binds NULL,
# which matches no rule): a block of a hospital was kept and ignored, and its doctors the patient had
# authorised one by one still read.
_BLOCKED = ("(ar.kind = 'professional' AND (ar.actor_system = :idnatps_system AND ar.actor_value = :reader "
            "OR ar.actor_system IN (:finess_system, :idnatst_system) AND ar.actor_value = :reader_org))")
# Blocked, consultation opposed, or record closed.
REFUSED = _rule(f"ar.effect = 'deny' AND (ar.kind IN ('consultation', 'record') OR {_BLOCKED})")
# The same, or the opposition to this emergency access (break-the-glass, or the SAMU regulator).
REFUSED_OR_OPPOSED = _rule(f"ar.effect = 'deny' AND (ar.kind IN ('consultation', 'record', :opposition) OR {_BLOCKED})")
AUTHORED = "resources.authors LIKE :reader_pattern"
# The same grants as one list of patients, for a search that names none (AccessContext.lists_patients).
GRANTED_PATIENTS = ("resources.patient_id IN (SELECT ar.patient_id FROM access_rules ar WHERE ar.effect = 'permit' "
                    "AND ar.kind IN ({kinds}) AND ar.actor_system = :idnatps_system AND ar.actor_value = :reader "
                    f"AND {IN_FORCE})")
# Types whose resources name documents (an AuditEvent's entity, a List's entries): hidden from a
# reader when they name a document (or its Binary) that reader may not see.
NAMING_TYPES = ("AuditEvent", "List")
NAMES_NO_HIDDEN_DOCUMENT = (
    " AND NOT EXISTS (SELECT 1 FROM search_reference nr JOIN resources named ON named.res_type = nr.target_type"
    " AND named.res_id = nr.target_id WHERE nr.res_type = resources.res_type AND nr.res_id = resources.res_id"
    " AND nr.param IN ('entity', 'item') AND nr.target_type IN ('DocumentReference', 'Binary')"
    " AND NOT ({visible}))")
# The token's INS among a Patient's identifiers (it follows merges: the identifier moves to the survivor).
_TOKEN_INS = ("ui.res_type = 'Patient' AND ui.system IN (" + ", ".join(f"'{system}'" for system in INS_SYSTEMS)
              + ") AND ui.value = :reader_patient")
# The Patient id of the token's INS.
OWN_PATIENT = f"SELECT ui.res_id FROM unique_identifiers ui WHERE {_TOKEN_INS} LIMIT 1"
# Of the Patient {patient}: the earliest day its birth date allows (a year alone is its 1 January),
# and whether it died (the index of the Patient search parameter deceased).
_BORN = ("(SELECT bd.low FROM search_date bd WHERE bd.res_type = 'Patient' AND bd.res_id = {patient} "
         "AND bd.param = 'birthdate' LIMIT 1)")
_DIED = ("EXISTS (SELECT 1 FROM search_token dt WHERE dt.res_type = 'Patient' AND dt.res_id = {patient} "
         "AND dt.param = 'deceased' AND dt.code = 'true')")
# The record of a patient who died is closed to those who acted for them, the patient's own
# accounts and their representatives: the medical secret outlives the patient, and their heirs ask
# for what the law lets them have (CSP L1110-4 V), of the professionals who hold it.
ALIVE = "NOT " + _DIED.format(patient="ui.res_id")
# A legal representative acts for a minor: parental authority ends at the child's majority (Code
# civil art. 371-1 and 414). The record's Patient was born on or after :minor_born_after; a record
# without a birth date shows no minor.
MINOR = _BORN.format(patient="ui.res_id") + " >= :minor_born_after"
HOLDER = f"SELECT ui.res_id FROM unique_identifiers ui WHERE {_TOKEN_INS} AND {ALIVE} LIMIT 1"
REPRESENTED_MINOR = f"SELECT ui.res_id FROM unique_identifiers ui WHERE {_TOKEN_INS} AND {ALIVE} AND {MINOR} LIMIT 1"
# The token's Patient, and their birth and death as ClosedToHolder reads them, whoever may read their record.
TOKEN_PATIENT_STATE = (f"SELECT ui.res_id, {_BORN.format(patient='ui.res_id')}, {_DIED.format(patient='ui.res_id')} "
                       f"FROM unique_identifiers ui WHERE {_TOKEN_INS} LIMIT 1")
# The same of a Patient named by its id.
PATIENT_STATE = f"SELECT {_BORN.format(patient=':patient_id')}, {_DIED.format(patient=':patient_id')}"
AGE_OF_MAJORITY = 18
PARIS = ZoneInfo("Europe/Paris")


def came_of_age_on(born: date) -> date:
    """The day someone born on `born` comes of age: one born on 29 February, on 1 March."""
    try:
        return born.replace(year=born.year + AGE_OF_MAJORITY)
    except ValueError:
        return date(born.year + AGE_OF_MAJORITY, 3, 1)


def minor_born_after(today: date) -> str:
    """The first birth date of a minor on `today`: born on or after it, not of age yet."""
    try:
        last_of_age = today.replace(year=today.year - AGE_OF_MAJORITY)
    except ValueError:   # 29 February: one born on 28 February 18 years before comes of age today
        last_of_age = date(today.year - AGE_OF_MAJORITY, 2, 28)
    return (last_of_age + timedelta(days=1)).isoformat()


def _today() -> date:
    return datetime.now(PARIS).date()


def is_minor(born: str | None) -> bool:
    """Whether a Patient whose birth date starts `born` (its search_date `low`) is a minor today, as
    MINOR has it."""
    return born is not None and born[:10] >= minor_born_after(_today())


@dataclass(frozen=True)
class ClosedToHolder:
    """A record closed to a patient's own accounts or to their representative: the patient died, or
    (to a parent) came of age on `came_of_age`, or the record gives no birth date."""
    patient_id: str
    deceased: bool
    came_of_age: date | None

    @classmethod
    def of(cls, role: str, patient_id: str, born: str | None, deceased: bool,
           guardianship: bool = False) -> "ClosedToHolder | None":
        """For a patient or a representative (`role`, a guardian with `guardianship`) on the record
        of a Patient born `born` (search_date `low`): None while it is open to them."""
        if deceased:
            return cls(patient_id, True, None)
        if role != REPRESENTATIVE or guardianship or is_minor(born):
            return None
        return cls(patient_id, False, came_of_age_on(date.fromisoformat(born[:10])) if born else None)

    @property
    def reason(self) -> str:
        if self.deceased:
            return ("the record shows its patient deceased: it is closed to their own accounts and their "
                    "representatives; their heirs ask for it under CSP L1110-4 V")
        if self.came_of_age is None:
            return "the record gives no birth date of its patient: a legal representative acts for a minor only"
        return (f"the patient came of age on {self.came_of_age.isoformat()}: a legal representative no longer "
                "acts for them (Code civil art. 371-1)")


class AccessRefused(Refused):
    """The request is not allowed at all for this role or purpose."""

    def __init__(self, reason: str):
        super().__init__(reason, status=403, code="forbidden",
                         patient_text="votre compte ne permet pas cette action.")


@dataclass(frozen=True)
class AccessContext:
    """The reader or writer of one request, from a verified token (or the gateway's own processes)."""

    role: str
    subject: str
    purpose: str = CARE
    organization: str | None = None
    patient_ins: str | None = None   # the patient a patient, representative or emergency token is about
    name: str | None = None
    address: str | None = None
    # A representative who is the guardian (tutelle) of a protected adult, as a judge ordered: they
    # act for them whatever their age, where a parent's authority ends at the child's majority.
    guardianship: bool = False

    @classmethod
    def system(cls, name: str = "gateway", address: str | None = None) -> "AccessContext":
        return cls(role=SYSTEM, subject=name, name=name, address=address)

    @functools.cached_property
    def serialized(self) -> str:
        """This requester, as a raw input keeps them (raw_inputs.requester). Written once per
        context: a document's keeping writes it twice (its look-up of an unanswered copy, its raw
        copy), and a listener's context serves every message it receives."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AccessContext":
        return cls(**json.loads(text))

    # -- what the requester may do ------------------------------------------------------------

    @property
    def is_professional(self) -> bool:
        return self.role in PROFESSIONS or self.role in (OCCUPATIONAL, REGULATOR)

    @property
    def acts_for_patient(self) -> bool:
        return self.role in (PATIENT, REPRESENTATIVE)

    @property
    def lists_patients(self) -> bool:
        """Whether this reader's grants name their patients one by one (a professional in care
        without an organisation, whose permits may cover a whole hospital): few enough that a search
        naming no patient is best driven from them. Listing them costs a patient's own search more
        than probing its rows, so it is only done for the others."""
        return self.role in PROFESSIONS + (OCCUPATIONAL,) and self.purpose == CARE and not self.organization

    def require(self, allowed: bool, what: str) -> None:
        if not allowed:
            raise AccessRefused(f"the role {self.role} may not {what}")

    # -- what the requester may see, as SQL -----------------------------------------------------

    def resource_filter(self, resources: Table, res_type: str, listed: bool = False) -> ColumnElement[bool]:
        """This reader's condition on the resources table. `listed`: the grants written as the list
        of the reader's patients (`lists_patients`), for the search to be driven from it."""
        from sqlalchemy import false, true   # here: `gateway token issue` starts without SQLAlchemy

        if res_type in DIRECTORY_TYPES:
            return true()
        if resources.name != "resources":
            raise ValueError("the access filter applies to the resources table")
        condition = self._condition(res_type, listed)
        if condition is None:
            return false()
        if res_type in NAMING_TYPES:
            # A trail entry or a SubmissionSet that names a document follows that document's
            # visibility for this reader, now and whenever its labels change.
            document = self._condition("DocumentReference") or "1 = 0"
            condition += NAMES_NO_HIDDEN_DOCUMENT.format(visible=document.replace("resources.", "named."))
        return self._sql(condition)

    def _condition(self, res_type: str, listed: bool = False) -> str | None:
        """This reader's condition on a row of `resources` of this type, or None for nothing."""
        if self.acts_for_patient:
            return self._patient_filter()
        if self.is_professional and self.purpose == CARE:
            return self._care_filter(res_type, listed and self.lists_patients)
        if self.is_professional and self.purpose in (EMERGENCY, REGULATION):
            return self._emergency_filter(res_type)
        return None

    def _sql(self, condition: str) -> ColumnElement[bool]:
        from sqlalchemy import text

        values = {"idnatps_system": IDNATPS_SYSTEM, "finess_system": ORGANIZATION_SYSTEMS[0],
                  "idnatst_system": ORGANIZATION_SYSTEMS[1], "reader": self.subject, "reader_org": self.organization,
                  "reader_patient": self.patient_ins, "reader_pattern": f"% {self.subject} %" if self.subject.isalnum() else "",
                  "opposition": "emergency-access" if self.purpose == EMERGENCY else "regulation-access"}
        used = set(re.findall(r":(\w+)", condition))
        if "minor_born_after" in used:
            values["minor_born_after"] = minor_born_after(_today())
        if "now" in used:
            values["now"] = index_now()
        return text(condition).bindparams(**{k: v for k, v in values.items() if k in used})

    def own_record(self):
        """The query of the Patient id of the record a patient or representative token is about,
        while it is open to them (ClosedToHolder)."""
        return self._sql(self._own_patient())

    def _patient_filter(self) -> str | None:
        if not self.patient_ins:
            return None
        condition = f"resources.patient_id = ({self._own_patient()}) AND NOT resources.hidden_from_patient"
        if self.role == REPRESENTATIVE:
            # INVISIBLE_PATIENT is hidden from representatives too: the matrix leaves it open, the safer choice.
            condition += " AND NOT resources.hidden_from_representatives"
        return condition

    def _own_patient(self) -> str:
        """The query of the record a patient or representative acts on (ClosedToHolder)."""
        return REPRESENTED_MINOR if self.role == REPRESENTATIVE and not self.guardianship else HOLDER

    def _care_filter(self, res_type: str, listed: bool) -> str | None:
        if self.role == REGULATOR:
            return None
        if self.role == OCCUPATIONAL:
            # Express consent naming this doctor; neither an organisation's nor the attending role.
            if res_type in PRIVATE_TYPES:
                return None
            named = GRANTED_PATIENTS.format(kinds="'professional'") if listed else NAMED_PERMIT
            return (f"resources.patient_id IS NOT NULL AND {named} AND NOT {REFUSED} "
                    f"AND (NOT resources.masked OR {AUTHORED})")
        if listed:
            granted = GRANTED_PATIENTS.format(kinds="'attending-physician', 'professional'")
        else:
            granted = "(" + " OR ".join([ATTENDING, NAMED_PERMIT] + ([ORGANIZATION_PERMIT] if self.organization else [])) + ")"
        condition = f"resources.patient_id IS NOT NULL AND {granted} AND NOT {REFUSED}"
        if res_type in PRIVATE_TYPES:
            return f"{condition} AND {ATTENDING}"
        return f"{condition} AND (NOT resources.masked OR {ATTENDING} OR {AUTHORED})"

    def _emergency_filter(self, res_type: str) -> str | None:
        """Break-the-glass and the SAMU regulator: one patient, named in the token; never masked
        documents, never the patient's decisions or trail."""
        if not self.patient_ins or res_type in PRIVATE_TYPES:
            return None
        return f"resources.patient_id = ({OWN_PATIENT}) AND NOT {REFUSED_OR_OPPOSED} AND NOT resources.masked"
