"""The state of a record on the Patient the API serves (PDSM4DMP TD0.2): `active` false when the
record is closed (or the Patient merged into another), the closure (extension dmp-fermeture), the
attachment to the patient space (dmp-rattachement-mes) and, for a professional, whether they are the
attending physician of the DMP (dmp-medecin-traitant). Computed for each answer, never stored: the
stored Patient is the identity as the feeds gave it."""
from __future__ import annotations

import json

from gateway.storage.repository import RecordState, StoredResource

DMP = "https://interop.esante.gouv.fr/ig/fhir/dmp/StructureDefinition/"
CLOSURE_REASONS = "https://interop.esante.gouv.fr/ig/fhir/dmp/CodeSystem/dmp-motif-fermeture"


def with_state(patient: dict, state: RecordState, professional: bool) -> dict:
    out = dict(patient)
    extensions = [e for e in out.get("extension", []) if not str(e.get("url", "")).startswith(DMP)]
    if state.closed_on:
        extensions.append({"url": DMP + "dmp-fermeture", "extension": [
            {"url": "dateFermeture", "valueDate": state.closed_on},
            {"url": "motifFermeture", "valueCodeableConcept": {"coding": [
                {"system": CLOSURE_REASONS, "code": "patient-demande"}]}},
            {"url": "raisonFermeture", "valueString": "Fermeture demandée par le patient"}]})
    extensions.append({"url": DMP + "dmp-rattachement-mes", "valueBoolean": state.attached})
    if professional:
        extensions.append({"url": DMP + "dmp-medecin-traitant", "valueBoolean": state.attending})
    out["extension"] = extensions
    out["active"] = patient.get("active", True) and not state.closed_on
    return out


def patients_with_state(repository, stored: list[StoredResource]) -> dict[str, str]:
    """{Patient id: its JSON with the record's state} for the Patients among `stored`."""
    patients = [s for s in stored if s.res_type == "Patient"]
    states = repository.record_states([s.res_id for s in patients])
    professional = repository.access.is_professional
    return {s.res_id: json.dumps(with_state(s.json(), states[s.res_id], professional), ensure_ascii=False,
                                 separators=(",", ":")) for s in patients}
