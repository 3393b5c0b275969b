"""The groups in which Mon espace santé shows a record's documents, from each document's class
(DocumentReference.category, JDV_J57) and, where a class spans several groups, its type."""
from __future__ import annotations

from gateway.mapping.codes import SIGNATURE_CLASS

GROUPS = (
    ("synthese", "Synthèses"),
    ("traitements", "Traitements et soins"),
    ("comptes-rendus", "Comptes rendus"),
    ("imagerie", "Imagerie médicale"),
    ("biologie", "Biologie"),
    ("prevention", "Prévention"),
    ("certificats", "Certificats"),
    ("espace-personnel", "Espace personnel"),
    ("autres", "Autres documents"),
)
GROUP_TITLES = dict(GROUPS)
PERSONAL = "espace-personnel"
BY_CLASS = {"11": "synthese", "42": "traitements", "43": "traitements", "44": "traitements", "45": "traitements",
            "10": "comptes-rendus", "31": "imagerie", "52": "certificats", "90": PERSONAL}
# Types whose class (10, Compte rendu) is shared with reports but that the patient looks for apart.
BY_TYPE = {"11502-2": "biologie",        # CR d'examens biologiques
           "87273-9": "prevention",      # Note de vaccination
           "11369-6": "prevention"}      # Historique des vaccinations


def classes_of(group: str) -> list[str]:
    """The classes whose documents are shown in `group` (but those a type sends to another)."""
    return [code for code, member in BY_CLASS.items() if member == group]


def _codes(concept: dict | None) -> list[str]:
    return [c.get("code") for c in (concept or {}).get("coding", []) if c.get("code")]


def group_of(docref: dict) -> str | None:
    """The group a document is shown in; None for an IHE DSG signature, which is not a document a
    patient reads but the proof that another one is authentic."""
    if any(SIGNATURE_CLASS in _codes(category) for category in docref.get("category", [])):
        return None
    for code in _codes(docref.get("type")):
        if code in BY_TYPE:
            return BY_TYPE[code]
    for category in docref.get("category", []):
        for code in _codes(category):
            if code in BY_CLASS:
                return BY_CLASS[code]
    return "autres"


def grouped(docrefs: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(group key, title, documents newest first) for each group that holds a document, in DMP order."""
    members: dict[str | None, list[dict]] = {}
    for docref in docrefs:
        members.setdefault(group_of(docref), []).append(docref)
    return [(key, title, sorted(members[key], key=lambda d: d.get("date", ""), reverse=True))
            for key, title in GROUPS if key in members]
