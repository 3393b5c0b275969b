"""A unit of work runs no statement a new resource does not need: a resource saved under an id the
unit minted reads no previous version, a Consent's first version deletes no rules, and an
identifier is looked up once. What it skips would have been found empty: the next version of each
reads its previous one and replaces its rules, as before."""
import pytest
from sqlalchemy import select

from gateway.access import AccessContext
from gateway.access.writes import Write
from gateway.mapping.hl7v2 import ZFA_SYSTEM
from gateway.storage import statements as sql
from gateway.storage.database import read_connection
from gateway.storage.repository import DuplicateIdentifier, Repository
from gateway.storage.schema import access_rules

KEY = ("Consent", "urn:test:consent-key", "p1")


def consultation(consent_id: str, effect: str) -> dict:
    return {"resourceType": "Consent", "id": consent_id, "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": ZFA_SYSTEM, "code": "consultation"}]}],
            "patient": {"reference": "Patient/p1"}, "provision": {"type": effect}}


@pytest.fixture
def run(monkeypatch) -> list:
    """The driver statements (storage/statements.py) run, in order."""
    statements = []
    execute = sql.Prebuilt.execute

    def recorded(self, conn, params):
        statements.append(self)
        return execute(self, conn, params)

    monkeypatch.setattr(sql.Prebuilt, "execute", recorded)
    return statements


def rules(engine) -> list[tuple]:
    with read_connection(engine) as conn:
        return [tuple(row) for row in conn.execute(select(access_rules.c.consent_id, access_rules.c.effect))]


def test_a_resource_under_a_minted_id_reads_no_previous_version_and_a_first_consent_deletes_no_rules(database, run):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    with repo.unit_of_work(Write.FEED) as uow:
        consent_id = uow.new_id()
        assert uow.find_by_identifier(*KEY) is None
        uow.claim_identifier(*KEY, consent_id)
        assert uow.find_by_identifier(*KEY) == consent_id
        first = uow.save(consultation(consent_id, "permit"), patient_id="p1")
        # Saved again in the same unit: the id is no longer new, and its first version is read.
        second = uow.save(consultation(consent_id, "deny"), patient_id="p1")

    assert (first.version, second.version) == (1, 2)
    assert run.count(sql.FIND_IDENTIFIER) == 1
    assert run.count(sql.INSERT_IDENTIFIER) == 1
    assert run.count(sql.PREVIOUS) == 1          # the second save's
    assert run.count(sql.DELETE_RULES) == 1      # the second version's: the first had none to delete
    assert rules(engine) == [(consent_id, "deny")]


def test_what_a_unit_skips_another_unit_still_finds(database, run):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    with repo.unit_of_work(Write.FEED) as uow:
        consent_id = uow.new_id()
        uow.claim_identifier(*KEY, consent_id)
        uow.save(consultation(consent_id, "permit"), patient_id="p1")
    run.clear()
    with repo.unit_of_work(Write.FEED) as uow:
        assert uow.find_by_identifier(*KEY) == consent_id
        with pytest.raises(DuplicateIdentifier):
            uow.claim_identifier(*KEY, "another-consent")
        assert uow.save(consultation(consent_id, "deny"), patient_id="p1").version == 2
        uow.release_identifier(*KEY)
        assert uow.find_by_identifier(*KEY) is None

    assert run.count(sql.FIND_IDENTIFIER) == 1
    assert run.count(sql.PREVIOUS) == 1 and run.count(sql.DELETE_RULES) == 1
    assert rules(engine) == [(consent_id, "deny")]
    with repo.unit_of_work(Write.FEED) as uow:
        assert uow.find_by_identifier(*KEY) is None
