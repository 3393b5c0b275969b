"""The patient's decisions: Consents created and changed by the patient or a representative.

A Consent is completed to the shape the gateway stores (FR Core Consent, scope patient-privacy,
the kind in Consent.category) and checked before it is saved; saving it rewrites its access rules
in the same transaction, with its AuditEvent.
"""
from __future__ import annotations

from gateway.access import AccessContext
from gateway.access.rules import (
    CONSENT_KIND_SYSTEM,
    IDNATPS_SYSTEM,
    KINDS,
    KINDS_WITH_ACTOR,
    ORGANIZATION_SYSTEMS,
    actor_identifier,
    consent_actors,
    consent_kind,
    period_bounds,
    rule_actor,
)
from gateway.access.writes import Write
from gateway.refusal import Refused
from gateway.fhir.formats import check
from gateway.fhir.validation import InvalidResource, validate
from gateway.mapping import codes
from gateway.mapping.dates import InvalidTime, fhir_now, index_now
from gateway.storage import search as search_sql
from gateway.storage.repository import (IDENTIFIER_CHARS, ChangedMeanwhile, PreconditionFailed, Repository,
                                        StoredResource, UnitOfWork, new_id)

PATIENT_CONSENT_CATEGORY = {"coding": [{"system": codes.LOINC, "code": "59284-0", "display": "Patient Consent"}]}
SCOPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}
# What of a Consent's provision the access rules apply. The others (a period, exceptions in nested
# provisions, the data, classes, codes, actions or purposes it covers) were stored and ignored: an
# authorisation meant to end kept granting, one with an exception granted it too.
APPLIED_PROVISION = {"id", "extension", "type", "actor"}
# Opt-in for consents that grant, opt-out for oppositions.
POLICIES = {"permit": "OPTIN", "deny": "OPTOUT"}


def _refuse(reason: str, expression: str, status: int = 422, patient_text: str | None = None) -> Refused:
    return Refused(reason, location=expression, status=status, code="invalid" if status == 422 else "forbidden",
                           patient_text=patient_text)


def own_patient(repo: Repository) -> str:
    """The Patient id of the requester's record (patient, representative)."""
    return _known(repo.own_patient_id())


def own_record(uow: UnitOfWork, about: dict | None = None) -> str:
    """`own_patient` as the unit of work that writes to it sees it: a merge may have moved the
    record since the request looked it up. `about`: a resource of the record about to be saved (a
    Consent, a RelatedPerson), whose `patient` is made to name it."""
    patient_id = _known(uow.own_patient_id())
    if about is not None:
        about["patient"] = {"reference": f"Patient/{patient_id}"}
    return patient_id


def _known(patient_id: str | None) -> str:
    if patient_id is None:
        raise _refuse("no record is known for the patient of this token", "Consent.patient", 404,
                      "aucun dossier n'est ouvert à ce nom.")
    return patient_id


def checked_consent(consent: dict, patient_id: str, access: AccessContext, current: dict | None = None) -> dict:
    """The Consent as it will be stored, or Refused saying what is wrong with it. `current`: the
    version an update replaces."""
    if consent.get("resourceType") != "Consent":
        raise _refuse("the body is not a Consent", "Consent")
    kind = consent_kind(consent)
    if kind not in KINDS:
        raise _refuse(f"Consent.category must hold one of the kinds {', '.join(KINDS)} "
                      f"(system {CONSENT_KIND_SYSTEM})", "Consent.category")
    reference = consent.get("patient", {}).get("reference")
    if reference and reference.rsplit("/", 1)[-1] != patient_id:
        raise _refuse(f"a {access.role} decides for their own record only", "Consent.patient", 403)
    if consent.get("status") not in ("active", "inactive"):
        raise _refuse("Consent.status is active, or inactive to revoke it", "Consent.status")
    provision = consent.get("provision") or {}
    # What a feed's ZFA stated (its action, its value as a code, the record's closing date) stays as
    # it was in an update: the patient's app sends back the Consent it read.
    kept = (current or {}).get("provision", {})
    effect = provision.get("type")
    applied = APPLIED_PROVISION | ({"period"} if kind == "professional" and effect == "permit" else set())
    unapplied = sorted(name for name in set(provision) - applied if provision[name] != kept.get(name))
    if unapplied:
        raise Refused(f"Consent.provision.{unapplied[0]} is not applied here: a decision states its kind, its effect "
                      "(provision.type) and its actors, and holds until it is revoked (a PUT with status inactive); "
                      "an authorisation of professionals may be given for a period (provision.period)",
                      location=f"Consent.provision.{unapplied[0]}", status=422, code="not-supported")
    # A period is checked when it is given or changed: a decision narrowed to the others it names, or
    # sent back as read, keeps the period it had, ended or not.
    if "period" in applied and "period" in provision and provision["period"] != kept.get("period") \
            and consent.get("status") == "active":
        _check_period(provision["period"])
    if effect not in ("permit", "deny"):
        raise _refuse("Consent.provision.type is permit or deny", "Consent.provision.type")
    if kind == "attending-physician" and effect != "permit":
        raise _refuse("the attending physician is named with provision.type permit", "Consent.provision.type")
    actors = consent_actors(consent)
    if len(actors) != len(provision.get("actor", [])):
        # An actor named otherwise (a literal reference, an identifier without its system) is no
        # rule: a block of them was kept and ignored beside the others named.
        raise _refuse("each actor is named by its identifier (system and value)", "Consent.provision.actor")
    if kind in KINDS_WITH_ACTOR:
        allowed_systems = (IDNATPS_SYSTEM,) + (ORGANIZATION_SYSTEMS if kind == "professional" else ())
        if not actors or any(system not in allowed_systems for system, _ in actors):
            raise _refuse(f"a {kind} Consent names its actors by identifier ({', '.join(allowed_systems)})",
                          "Consent.provision.actor")
    elif actors:
        raise _refuse(f"a {kind} Consent names no actor", "Consent.provision.actor")
    if any(len(value) > IDENTIFIER_CHARS for _, value in actors):
        raise _refuse(f"an actor's identifier is at most {IDENTIFIER_CHARS} characters long",
                      "Consent.provision.actor.reference.identifier.value")
    stored = dict(consent)
    # FR Core 2.1.0 defines no Consent profile and PDSm none either: the Consent claims none.
    stored.pop("meta", None)
    stored["scope"] = SCOPE
    stored["patient"] = {"reference": f"Patient/{patient_id}"}
    stored["category"] = [PATIENT_CONSENT_CATEGORY, {"coding": [{"system": CONSENT_KIND_SYSTEM, "code": kind}]}]
    stored.setdefault("policyRule", {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                                 "code": POLICIES[effect]}]})
    stored.setdefault("dateTime", fhir_now())
    # As completed: FHIR's checks of what a client sends (a uri with a space, a code outside its
    # value set, an invariant) were skipped for a body without scope, and refused one without
    # policyRule (ppc-1), which the gateway gives it.
    check(stored)
    try:
        validate(stored)
    except InvalidResource as exc:
        raise _refuse(str(exc), "Consent") from None
    return stored


def _check_period(period) -> None:
    """An authorisation's period: a start or an end, each a date or a dateTime, the end not past."""
    if not isinstance(period, dict) or not ({"start", "end"} & set(period)):
        raise _refuse("an authorisation's period gives its start, its end or both", "Consent.provision.period")
    for name in ("start", "end"):
        if name in period and not isinstance(period[name], str):
            raise _refuse(f"Consent.provision.period.{name} is a date or a dateTime",
                          f"Consent.provision.period.{name}")
    try:
        _, valid_until = period_bounds(period)
    except InvalidTime as exc:
        raise _refuse(str(exc), "Consent.provision.period") from None
    if valid_until is not None and valid_until < index_now():
        raise _refuse(f"the authorisation's period ended on {period['end']}: it would authorise no one",
                      "Consent.provision.period.end")


def create(repo: Repository, consent: dict) -> tuple[StoredResource, bool]:
    """The Consent, and whether it is new: a decision already in force (an active Consent of the
    record with the same kind, effect and actors: a request retried, a form sent twice) is that
    Consent, and nothing is stored. Two were kept, and revoking one left the other in force. The
    earlier decisions a new one decides again are revoked with it (UnitOfWork.decisions_replaced_by):
    the patient's latest decision holds, whatever app or page they made it with."""
    repo.require(Write.CONSENT)
    stored = checked_consent(consent, own_patient(repo), repo.access)
    stored["id"] = new_id()
    with repo.unit_of_work(Write.CONSENT) as uow:
        patient_id = own_record(uow, stored)
        in_force = uow.decision_in_force(stored, patient_id)
        if in_force is not None:
            return in_force, False
        _revoke_replaced(uow, stored, patient_id, repo.access)
        return uow.save(stored, patient_id=patient_id, method="POST"), True


def _revoke_replaced(uow: UnitOfWork, decided: dict, patient_id: str, access: AccessContext) -> None:
    """Revoke the record's active decisions that `decided` decides again, but itself (an update). One
    about professionals that names others too is narrowed to them: a new version of it names only
    those `decided` does not. Kept whole, a block of two professionals kept the one the patient then
    authorised out, while the app showed the authorisation made (201)."""
    decided_actors = set(consent_actors(decided)) if consent_kind(decided) == "professional" else None
    for earlier in uow.decisions_replaced_by(decided, patient_id):
        if earlier.res_id != decided["id"]:
            remaining = without_actors(earlier, decided_actors) if decided_actors else None
            uow.save(checked_consent(remaining or inactive(earlier), patient_id, access, earlier.json()),
                     patient_id=patient_id, method="PUT")


def update(repo: Repository, consent_id: str, consent: dict, if_match: int | None = None) -> StoredResource:
    """Replace a Consent of the requester's record (revoke it with status inactive); the history
    keeps every earlier decision; one made active replaces those it decides again, as in `create`.
    `if_match` (If-Match): only if that version is still current. An update that changes nothing
    (a revocation made twice, a PUT retried) is the current version: the history showed the
    decision revoked twice. A body without dateTime, which the gateway dates, is compared as if it
    carried the stored one's."""
    repo.require(Write.CONSENT)
    current = repo.read("Consent", consent_id)   # 404 when it is not one of the requester's
    if if_match is not None and current.version != if_match:
        raise PreconditionFailed(current.reference, if_match)
    current_consent = current.json()
    stored = checked_consent(consent, current.patient_id, repo.access, current_consent)
    stored["id"] = consent_id
    try:
        with repo.unit_of_work(Write.CONSENT) as uow:
            patient_id = own_record(uow, stored)
            dated = stored if "dateTime" in consent else {**stored, "dateTime": current_consent.get("dateTime")}
            unchanged = uow.current_if_unchanged(dated, patient_id)
            if unchanged is not None and if_match in (None, unchanged.version):
                return unchanged
            # A decision made active again, or made to name other actors, replaces those it decides
            # again, as a new one does: kept in force beside it, a block outlived the authorisation
            # the patient's app re-activated.
            _revoke_replaced(uow, stored, patient_id, repo.access)
            return uow.save(stored, patient_id=patient_id, method="PUT", based_on=if_match)
    except ChangedMeanwhile:
        raise PreconditionFailed(current.reference, if_match) from None


def search_request(patient_id: str, kind: str | None = None) -> search_sql.SearchRequest:
    """The patient's active Consents (of one kind)."""
    params = [("patient", f"Patient/{patient_id}"), ("status", "active"), ("_count", "200")]
    if kind:
        params.append(("category", f"{CONSENT_KIND_SYSTEM}|{kind}"))
    return search_sql.parse_search("Consent", params)


def revoke(repo: Repository, stored: StoredResource, actors: set[tuple[str, str]] | None = None) -> StoredResource:
    """Revoke a decision; for `actors` only (system, value), when it names others too."""
    return update(repo, stored.res_id, (without_actors(stored, actors) if actors else None) or inactive(stored))


def inactive(stored: StoredResource) -> dict:
    """The same decision, inactive: it stops applying, and the history keeps it."""
    return {**_saved_again(stored), "status": "inactive"}


def without_actors(stored: StoredResource, actors: set[tuple[str, str]]) -> dict | None:
    """The same decision naming none of `actors` (system, value), each compared as the rules name it
    (`rule_actor`: a clinic by its FINESS or its IdNatSt); None when it names no one else."""
    consent = _saved_again(stored)
    provision = consent.get("provision", {})
    gone = {rule_actor(*actor) for actor in actors}
    kept = [actor for actor in provision.get("actor", [])
            if (named := actor_identifier(actor)) is None or rule_actor(*named) not in gone]
    return {**consent, "provision": {**provision, "actor": kept}} if kept else None


def _saved_again(stored: StoredResource) -> dict:
    """A stored decision as the body of its next version."""
    consent = stored.json()
    consent.pop("meta", None)
    consent.pop("patient", None)   # the record's Patient as the unit that saves it reads it: a merge may have moved it
    return consent


def decision(kind: str, effect: str, professional: str | None = None, organization: str | None = None) -> dict:
    """A Consent of one kind, naming a professional by IdNatPs, or an organisation by FINESS, when the
    kind has an actor."""
    consent = {"resourceType": "Consent", "status": "active",
               "category": [{"coding": [{"system": CONSENT_KIND_SYSTEM, "code": kind}]}],
               "provision": {"type": effect}}
    if professional or organization:
        system, value = (IDNATPS_SYSTEM, professional) if professional else (codes.FINESS_SYSTEM, organization)
        consent["provision"]["actor"] = [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "PRCP"}]},
            "reference": {"identifier": {"system": system, "value": value}}}]
    return consent
