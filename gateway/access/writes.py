"""Who may write what: decided here, for every transport (MLLP, POST /hl7v2, POST /cda, ITI-65,
ITI-105, PATCH and the PDSM4DMP conditional PATCH, Consent, the patient space).

Every unit of work is opened with the `Write` it does (Repository.write, Repository.unit_of_work),
and the repository refuses it there when the requester may not: feed a record, record a patient's
decisions, add to their own space, change or archive a document. Inside it, the unit of work
decides each change to a document against that document (UnitOfWork.document_to_change,
UnitOfWork.require_labels), with the rules below.

A document is changed by those who produced it: one of its authors, or someone acting for its
custodian or an author's organisation. A professional's token says who they are and, optionally,
their organisation; a feeding system says nothing of itself, so what it submits must name them
(the new version's authors and custodian, or the message's PRT "send by"). Feeding a record
(adding a document) needs no such link: L1111-17 lets any professional in charge feed it. Filing
documents in one of the record's Folders (ITI-65) is feeding it too; what a Folder already holds
stays (UnitOfWork.folder_to_update, gateway/services/provide.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gateway.mapping import codes

from .context import ADMIN, CARE, PATIENT, PROFESSIONS, REPRESENTATIVE, SYSTEM, AccessContext, AccessRefused
from .rules import INVISIBLE_PATIENT, INVISIBLE_REPRESENTATIVES, MASQUE_PS

FINESS_SYSTEMS = (codes.FINESS_SYSTEM,)


class Write(Enum):
    """What a unit of work does to the record, as the permission it needs (its value completes
    "the role ... may not")."""
    RECORD = "keep the gateway's records"   # raw inputs, their outcomes, the audit trail: any requester's
    FEED = "submit documents"               # documents, their patients, authors and organisations
    CONSENT = "record or change a patient's consent"
    PERSONAL = "write in a patient's own space"   # their documents and emergency contacts
    CHANGE = "change a document"            # labels or deletion, then decided per document
    ARCHIVE = "archive a document"
    REPROCESS = "reprocess a received message"   # a feeding system's message, once its cause is fixed


def in_care(access: AccessContext) -> bool:
    return access.role in PROFESSIONS and access.purpose == CARE


def may(access: AccessContext, write: Write) -> bool:
    if write is Write.RECORD:
        return True
    if write is Write.FEED:
        # Feeding systems and professionals of the care team (L1111-17 II).
        return access.role == SYSTEM or in_care(access)
    if write in (Write.CONSENT, Write.PERSONAL):
        return access.acts_for_patient
    if write is Write.CHANGE:
        return access.role == SYSTEM or access.acts_for_patient or in_care(access)
    if write is Write.REPROCESS:
        return access.role in (SYSTEM, ADMIN)
    # Archiving (PDSm isArchived) hides nothing from anyone: it files a document away for whoever
    # reads the record, the patient or a professional in care.
    return access.acts_for_patient or in_care(access)


def require(access: AccessContext, write: Write) -> None:
    if not may(access, write):
        raise AccessRefused(f"the role {access.role} may not {write.value}")


def reprocessing(operator: AccessContext) -> AccessContext:
    """Whom a message an operator reprocesses is processed as: a feeding system, as its sender was
    (HL7v2 is only taken from feeding systems), named after the operator. The operator's own role
    gives no right to change a document: a replacement (MDM^T10) reprocessed as an admin was
    refused as if the hospital had not produced the document it replaces."""
    require(operator, Write.REPROCESS)
    return AccessContext.system(f"reprocessed by {operator.subject}")


IDNATST_SYSTEM = f"urn:oid:{codes.IDNATST_OID}"


def finess(system: str, value: str) -> str | None:
    """The FINESS number an organisation identifier carries (IdNatSt "1" + FINESS, or FINESS itself)."""
    if system in FINESS_SYSTEMS:
        return value
    if system == IDNATST_SYSTEM and value.startswith("1") and len(value) == 10:
        return value[1:]
    return None


@dataclass(frozen=True)
class Producers:
    """The people (IdNatPs) and organisations (FINESS) behind a document, or named by a submission."""
    people: frozenset[str] = field(default_factory=frozenset)
    organizations: frozenset[str] = field(default_factory=frozenset)

    def meets(self, other: "Producers") -> bool:
        return bool(self.people & other.people or self.organizations & other.organizations)


def may_change_document(access: AccessContext, document: Producers, submission: Producers) -> bool:
    """Whether this requester may replace or delete a document produced by `document`, with a
    submission that names `submission`."""
    if access.role == SYSTEM:
        return document.meets(submission)
    if access.is_professional:
        requester = Producers(frozenset([access.subject]),
                              frozenset([access.organization]) if access.organization else frozenset())
        return document.meets(requester)
    return False


CHANGE_REFUSED = ("only an author of the document, or its custodian organisation, may replace or delete it; "
                  "the submission names neither")


def changeable_labels(access: AccessContext, producer: bool = False, masked_by_patient: bool = False) -> set[str]:
    """The visibility labels (TRE_A07) this requester may set or remove on a document they see:
    - the patient: MASQUE_PS (hide from professionals) and INVISIBLE_REPRESENTANTS_LEGAUX (a minor
      hiding care received in secret from the parents);
    - a representative: MASQUE_PS;
    - a professional in care: INVISIBLE_PATIENT (hidden until it is announced); and MASQUE_PS when
      they produced the document (`producer`: may_change_document), as its producer may flag it
      masked when feeding it (MetaDMPMSS, PDSM4DMP TD3.3a), unless the patient masked it
      (`masked_by_patient`): the patient decides who sees what, and only they lift their mask;
    - a feeding system: MASQUE_PS on a document it produced, as its professionals may, unless the
      patient masked it: how an HL7v2 feed, which has no PATCH, lifts its own mask (MODIF_CONF_CODE)."""
    if access.role == SYSTEM:
        return {MASQUE_PS} if producer and not masked_by_patient else set()
    if access.role == PATIENT:
        return {MASQUE_PS, INVISIBLE_REPRESENTATIVES}
    if access.role == REPRESENTATIVE:
        return {MASQUE_PS}
    if in_care(access):
        return {INVISIBLE_PATIENT} | ({MASQUE_PS} if producer and not masked_by_patient else set())
    return set()
