"""Who is asking, and what they may see, as SQL.

The repository is built from an AccessContext for every request; `resource_filter` returns the
condition it adds to every query (search, counts, read, vread, history, _include, Binary), so
paging and totals only ever count what the reader may see, and a hidden resource answers
exactly like a missing one. The rules are the CSP's as summarised in the README's access section.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, and_, false, not_, or_, select, true

from gateway.mapping import codes
from gateway.storage.schema import access_rules, unique_identifiers

from .rules import IDNATPS_SYSTEM, ORGANIZATION_SYSTEMS

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
DIRECTORY_TYPES = ("Practitioner", "Organization")
# The patient's decisions and the trail of accesses: the patient, the representatives and the
# attending physician read them (R1111-43), no other professional.
PRIVATE_TYPES = ("Consent", "AuditEvent")
INS_SYSTEMS = tuple(f"urn:oid:{oid}" for oid in codes.INS_OIDS)


class AccessRefused(Exception):
    """The request is not allowed at all for this role or purpose (403)."""


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

    @classmethod
    def system(cls, name: str = "gateway") -> "AccessContext":
        return cls(role=SYSTEM, subject=name, name=name)

    # -- what the requester may do ------------------------------------------------------------

    @property
    def is_professional(self) -> bool:
        return self.role in PROFESSIONS or self.role in (OCCUPATIONAL, REGULATOR)

    @property
    def acts_for_patient(self) -> bool:
        return self.role in (PATIENT, REPRESENTATIVE)

    @property
    def may_feed(self) -> bool:
        """Submit documents: feeding systems and professionals of the care team (L1111-17 II)."""
        return self.role == SYSTEM or (self.role in PROFESSIONS and self.purpose == CARE)

    @property
    def may_read_clinical(self) -> bool:
        return self.acts_for_patient or self.is_professional

    def require(self, allowed: bool, what: str) -> None:
        if not allowed:
            raise AccessRefused(f"the role {self.role} may not {what}")

    # -- what the requester may see, as SQL -----------------------------------------------------

    def resource_filter(self, resources: Table, res_type: str) -> ColumnElement[bool]:
        if res_type in DIRECTORY_TYPES:
            return true()
        if self.acts_for_patient:
            return self._patient_filter(resources)
        if self.is_professional and self.purpose == CARE:
            return self._care_filter(resources, res_type)
        if self.is_professional and self.purpose in (EMERGENCY, REGULATION):
            return self._emergency_filter(resources, res_type)
        return false()

    def own_patient_id(self):
        """The Patient resource id of the token's INS, as a subquery (it follows merges)."""
        return (select(unique_identifiers.c.res_id)
                .where(unique_identifiers.c.res_type == "Patient", unique_identifiers.c.system.in_(INS_SYSTEMS),
                       unique_identifiers.c.value == (self.patient_ins or ""))
                .limit(1).scalar_subquery())

    def _patient_filter(self, resources: Table) -> ColumnElement[bool]:
        if not self.patient_ins:
            return false()
        condition = and_(resources.c.patient_id == self.own_patient_id(), not_(resources.c.hidden_from_patient))
        if self.role == REPRESENTATIVE:
            # INVISIBLE_PATIENT is hidden from representatives too: the matrix leaves it open, the safer choice.
            condition = and_(condition, not_(resources.c.hidden_from_representatives))
        return condition

    def _me(self) -> ColumnElement[bool]:
        """A rule naming this professional, or (for authorisations) their organisation."""
        me = and_(access_rules.c.actor_system == IDNATPS_SYSTEM, access_rules.c.actor_value == self.subject)
        if self.organization and self.role != OCCUPATIONAL:
            me = or_(me, and_(access_rules.c.actor_system.in_(ORGANIZATION_SYSTEMS),
                              access_rules.c.actor_value == self.organization))
        return me

    def _patients_where(self, *conditions) -> ColumnElement:
        return select(access_rules.c.patient_id).where(*conditions)

    def _refused_patients(self, opposition_kind: str | None = None):
        """Patients who blocked this professional, opposed consultation, closed their record, or
        (emergency) opposed this kind of access."""
        kinds = ["consultation", "record"] + ([opposition_kind] if opposition_kind else [])
        blocked = and_(access_rules.c.kind == "professional", access_rules.c.actor_system == IDNATPS_SYSTEM,
                       access_rules.c.actor_value == self.subject)
        return self._patients_where(access_rules.c.effect == "deny",
                                    or_(access_rules.c.kind.in_(kinds), blocked))

    def _attending_patients(self):
        return self._patients_where(access_rules.c.kind == "attending-physician", access_rules.c.effect == "permit",
                                    access_rules.c.actor_system == IDNATPS_SYSTEM,
                                    access_rules.c.actor_value == self.subject)

    def _care_filter(self, resources: Table, res_type: str) -> ColumnElement[bool]:
        patient = resources.c.patient_id
        attending = patient.in_(self._attending_patients())
        if self.role == REGULATOR:
            return false()
        if self.role == OCCUPATIONAL:
            # Express consent naming this doctor; neither an organisation's nor the attending role.
            granted = patient.in_(self._patients_where(
                access_rules.c.kind == "professional", access_rules.c.effect == "permit",
                access_rules.c.actor_system == IDNATPS_SYSTEM, access_rules.c.actor_value == self.subject))
            attending = false()
        else:
            granted = or_(attending, patient.in_(self._patients_where(
                access_rules.c.kind == "professional", access_rules.c.effect == "permit", self._me())))
        condition = and_(granted, patient.not_in(self._refused_patients()))
        if res_type in PRIVATE_TYPES:
            return and_(condition, attending)
        return and_(condition, or_(not_(resources.c.masked), attending, self._authored(resources)))

    def _authored(self, resources: Table) -> ColumnElement[bool]:
        if not self.subject.isalnum():
            return false()
        return resources.c.authors.like(f"% {self.subject} %")

    def _emergency_filter(self, resources: Table, res_type: str) -> ColumnElement[bool]:
        """Break-the-glass and the SAMU regulator: one patient, named in the token; never masked
        documents, never the patient's decisions or trail."""
        if not self.patient_ins or res_type in PRIVATE_TYPES:
            return false()
        opposition = "emergency-access" if self.purpose == EMERGENCY else "regulation-access"
        patient = resources.c.patient_id
        return and_(patient == self.own_patient_id(), patient.not_in(self._refused_patients(opposition)),
                    not_(resources.c.masked))
