"""Who may replace, delete, mask or archive a document: decided here, for every transport (POST
/cda, ITI-65, HL7v2 MDM^T10/T04 and ORU C/D, PATCH and the PDSM4DMP conditional PATCH, the patient
space).

A document is changed by those who produced it: one of its authors, or someone acting for its
custodian or an author's organisation. A professional's token says who they are and, optionally,
their organisation; a feeding system says nothing of itself, so what it submits must name them
(the new version's authors and custodian, or the message's PRT "send by"). Feeding a record
(adding a document) needs no such link: L1111-17 lets any professional in charge feed it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gateway.mapping import codes

from .context import CARE, PATIENT, PROFESSIONS, REPRESENTATIVE, SYSTEM, AccessContext
from .rules import INVISIBLE_PATIENT, INVISIBLE_REPRESENTATIVES, MASQUE_PS

FINESS_SYSTEMS = (codes.FINESS_SYSTEM,)
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


def changeable_labels(access: AccessContext, producer: bool = False) -> set[str]:
    """The visibility labels (TRE_A07) this requester may set or remove on a document they see:
    - the patient: MASQUE_PS (hide from professionals) and INVISIBLE_REPRESENTANTS_LEGAUX (a minor
      hiding care received in secret from the parents);
    - a representative: MASQUE_PS;
    - a professional in care: INVISIBLE_PATIENT (hidden until it is announced); and MASQUE_PS when
      they produced the document (`producer`: may_change_document), as its producer may flag it
      masked when feeding it (MetaDMPMSS, PDSM4DMP TD3.3a)."""
    if access.role == PATIENT:
        return {MASQUE_PS, INVISIBLE_REPRESENTATIVES}
    if access.role == REPRESENTATIVE:
        return {MASQUE_PS}
    if access.role in PROFESSIONS and access.purpose == CARE:
        return {INVISIBLE_PATIENT} | ({MASQUE_PS} if producer else set())
    return set()


def may_archive(access: AccessContext) -> bool:
    """Archiving (PDSm isArchived) hides nothing from anyone: it files a document away for whoever
    reads the record, the patient or a professional in care."""
    return access.acts_for_patient or (access.role in PROFESSIONS and access.purpose == CARE)
