"""Every CI-SIS document type (JDV_J07) is accepted with its class; a type outside the list is
refused. Documents of types the samples never use (anaesthesia, telemedicine, vaccination, a TRE_A05
synthesis) are ingested with their metadata equal to their header."""
import pytest

from conftest import sample
from gateway.mapping import codes
from gateway.mapping.valuesets import concepts, document_classes

XML = {"Content-Type": "application/xml"}


def as_type(code: str, system: str, n: int) -> bytes:
    text = sample("cr-operatoire-garnier.xml").decode()
    text = text.replace('code="34874-8" displayName="CR opératoire" codeSystem="2.16.840.1.113883.6.1"',
                        f'code="{code}" displayName="Document" codeSystem="{system}"')
    return text.replace("1.2.250.1.213.1.1.9.2.3.1", f"1.2.250.1.213.1.1.9.2.3.{100 + n}").encode()


def test_every_type_of_the_value_set_has_a_class():
    types = {code for (_, code) in concepts("J07")}
    assert len(types) == 114 and types == set(document_classes())
    assert {klass for klass, _ in document_classes().values()} <= set(codes.CLASS_DISPLAYS) | {codes.SIGNATURE_CLASS}


@pytest.mark.parametrize("code, system, klass", [
    ("77436-4", "2.16.840.1.113883.6.1", "10"),      # CR d'anesthésie
    ("85208-7", "2.16.840.1.113883.6.1", "10"),      # CR de télémédecine
    ("87273-9", "2.16.840.1.113883.6.1", "45"),      # Note de vaccination
    ("SYNTH", "1.2.250.1.213.1.1.4.12", "11"),       # Synthèse (TRE_A05)
])
def test_types_never_seen_are_ingested_with_their_header(client, code, system, klass):
    response = client.post("/cda", data=as_type(code, system, len(code)), headers=XML)
    assert response.status_code == 201, response.json
    doc = response.json
    assert doc["type"]["coding"][0]["code"] == code
    assert doc["type"]["coding"][0]["system"] == codes.TYPE_SYSTEMS[system]
    assert doc["type"]["coding"][0]["display"] == concepts("J07")[(system, code)]
    assert doc["category"][0]["coding"][0]["code"] == klass
    assert doc["content"][0]["format"]["code"] == "urn:ihe:iti:xds-sd:pdf:2008"


def test_a_type_outside_the_list_is_refused(client):
    response = client.post("/cda", data=as_type("18842-5", "2.16.840.1.113883.6.1", 99), headers=XML)
    assert response.status_code == 422
    assert "JDV_J07" in response.json["issue"][0]["diagnostics"]
